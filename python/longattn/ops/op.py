"""What an op is, and the one path every call takes.

    public function (ops/<op>/op.py)
      -> prepare(...): validates and normalises once  ->  Inputs (frozen dataclass)
      -> Op.run(inputs)  ->  torch.ops.longattn.<op>(schema arguments)      (torch.library custom op)
           real implementation: the same Inputs (handed over, not rebuilt), or prepare() again when
           the custom op is called directly (torch.ops.longattn.*, a compiled graph, opcheck)
      -> registry.select(op, impls, device, inputs)  ->  impls[backend].run(inputs)

So validation happens once per call, at the custom-op boundary's level of strictness, whichever way
in: a direct ``torch.ops.longattn.*`` call is checked exactly like the public function. The fake
implementations only allocate outputs (no checks: they run while tracing).

A plain eager call that nothing observes (no autograd graph or forward-mode AD level, dispatch or
torch-function mode, tensor subclass, functorch transform, profiler or meta tensor: ``_unobserved``)
skips the dispatcher: ``run`` selects and runs the backend itself, exactly what ``_real`` would,
without the custom op's Python cost. Everything else (torch.compile, autograd through the op,
FakeTensorMode, opcheck, recorders) goes through ``torch.ops.longattn.<op>`` as above.

Host synchronisation: nothing on this path up to the backend reads tensor values on the host
(validation checks shapes, dtypes and devices; index values are the kernels' business: invalid ones
are skipped), and neither do the Triton launchers (grids come from shapes), so a Triton call on a GPU
never waits for the device; tests/test_host_syncs.py asserts it for every op. The reference backend
does read values (data-dependent shapes); it is the portable fallback, not the GPU path.

Every op folder declares (``ops/<op>/op.py``): its ``Inputs`` type with ``device`` and
``to_schema()``, ``prepare(...)``, its schema string, ``from_schema(*args)`` (schema arguments ->
Inputs, through prepare), ``fake(*args)``, and an ``Op`` built from them; ``ops/<op>/support.py``
holds its per-backend ``Impl`` declarations. ``Op(...)`` registers the custom op; nothing else needs
to know the op exists.

Autograd: an op either registers a real backward (merge_attention_states, apply_attention_sink,
compress_pool) or one that raises a clear error when a gradient reaches it (the forward runs under
grad mode; ``backward()`` says what is not differentiable). Ops that write caches refuse inputs that
require grad (``refuse_grad``) and run without recording autograd, so a pool never joins a graph.
"""

from __future__ import annotations

import contextvars
import dataclasses
from typing import Callable, Dict, List, Mapping, Optional, Tuple

import torch

from ..backends import registry
from ..backends.base import Impl

NS = "longattn"
_lib = torch.library.Library(NS, "FRAGMENT")  # kept alive for the process (holds the registrations)
_OPS: Dict[str, "Op"] = {}


@dataclasses.dataclass(frozen=True)
class _Handoff:
    op: str
    args: Tuple[object, ...]
    inputs: object
    selection: Optional[registry.Selection]


_handoff: contextvars.ContextVar[Optional[_Handoff]] = contextvars.ContextVar("longattn_handoff", default=None)


def _same_args(a: Tuple[object, ...], b: Tuple[object, ...]) -> bool:
    """The custom op received exactly the arguments ``run`` passed (tensors by identity)."""
    if len(a) != len(b):
        return False
    for x, y in zip(a, b):
        if isinstance(x, torch.Tensor) or isinstance(y, torch.Tensor):
            if x is not y:
                return False
        elif x != y:
            return False
    return True


class Op:
    """One public op: its custom op (``torch.ops.longattn.<name>``), how schema arguments become
    prepared inputs, and which backends implement it.

    Args:
        name: the op name (custom op ``longattn::<name>``, ``longattn.<name>``).
        schema: the ``torch.library`` schema after the name, e.g. ``"(Tensor q, ...) -> Tensor"``;
            its last argument is ``str? backend``.
        inputs_type: the op's prepared-inputs dataclass (``inputs_type(**fields)`` builds one without
            checks: for tests and for code that already holds valid fields).
        from_schema: ``fn(*schema args without backend) -> Inputs`` (validates: calls prepare).
        fake: ``fn(*schema args) -> outputs`` that only allocates (for tracing).
        impls: backend name -> ``Impl`` (``ops/<op>/support.py``).
        mutates: the op writes some of its inputs (caches): no autograd, run under ``no_grad``.
        backward, setup_context: a real backward (``torch.library.register_autograd``); without one
            a non-mutating op gets a backward that raises.
    """

    def __init__(
        self,
        name: str,
        schema: str,
        *,
        inputs_type: type,
        from_schema: Callable[..., object],
        fake: Callable[..., object],
        impls: Mapping[str, Impl],
        mutates: bool = False,
        backward: Optional[Callable] = None,
        setup_context: Optional[Callable] = None,
    ):
        if name in _OPS:
            raise RuntimeError(f"op {name!r} is defined twice")
        self.name, self.impls, self.mutates, self.inputs_type = name, dict(impls), mutates, inputs_type
        self._from_schema = from_schema
        _lib.define(name + schema)
        _lib.impl(name, self._real, "CompositeExplicitAutograd")
        torch.library.register_fake(f"{NS}::{name}", fake, lib=_lib)
        if not mutates:
            torch.library.register_autograd(
                f"{NS}::{name}",
                backward if backward is not None else _no_backward(name),
                setup_context=setup_context if setup_context is not None else _save_nothing,
                lib=_lib,
            )
        self.custom_op = getattr(getattr(torch.ops, NS), name).default
        _OPS[name] = self

    def __repr__(self) -> str:
        return f"Op({self.name!r}, backends={list(self.impls)})"

    def add_impl(self, backend: str, impl: Impl) -> None:
        """Declare (or replace) ``backend``'s implementation of this op, e.g. from a backend that lives
        outside this package (register the backend itself with ``longattn.backends.register_backend``)."""
        self.impls[backend] = impl

    def remove_impl(self, backend: str) -> None:
        self.impls.pop(backend, None)

    # -- dispatch -----------------------------------------------------------------------------------
    def select(self, inputs, backend: Optional[str] = None) -> registry.Selection:
        """The backend that runs these prepared inputs (``backend``: force one; see registry)."""
        return registry.select(self.name, self.impls, inputs.device, inputs, backend)

    def reasons(self, backend: str, inputs, device: Optional[torch.device] = None) -> List[str]:
        """Why ``backend`` declines these prepared inputs on ``device`` (default: theirs); [] = accepts."""
        return registry.reasons(backend, self.name, self.impls, device or inputs.device, inputs)

    def run(self, inputs, backend: Optional[str] = None, selection: Optional[registry.Selection] = None):
        """Run prepared inputs through the custom op (so torch.compile and autograd see one node).

        ``selection`` (from ``select``) skips the backend choice: a layer chooses once per step.
        Inputs whose pools the schema cannot carry (pool objects other than tensors and
        ``Fp8KVPool``) go straight to the backend.
        """
        args = inputs.to_schema()
        if args is None:
            refuse_grad(self.name, inputs, what="pool objects other than tensors / Fp8KVPool carry no autograd")
            return (selection or self.select(inputs, backend)).run(inputs)
        if torch.compiler.is_compiling():  # traced: the real implementation prepares at run time
            return self.custom_op(*args, backend)
        if _unobserved(args, inputs.device):  # plain eager call: what the dispatcher would run, minus its cost
            selection = selection or self.select(inputs, backend)
            if self.mutates and torch.is_grad_enabled():
                with torch.no_grad():
                    return selection.run(inputs)
            return selection.run(inputs)
        args = tuple(args) + (backend,)
        token = _handoff.set(_Handoff(self.name, args, inputs, selection))
        try:
            return self.custom_op(*args)
        finally:
            _handoff.reset(token)

    def _real(self, *args):
        """The custom op's implementation (every device): prepared inputs -> selected backend."""
        h = _handoff.get()
        if h is not None and h.op == self.name and _same_args(h.args, args):
            inputs, selection = h.inputs, h.selection
        else:  # a direct torch.ops call, a compiled graph, opcheck: validate here
            inputs, selection = self._from_schema(*args[:-1]), None
        if selection is None:
            selection = self.select(inputs, args[-1])
        if self.mutates:
            with torch.no_grad():  # a cache write never records autograd
                return selection.run(inputs)
        return selection.run(inputs)


_PLAIN_TENSORS = (torch.Tensor, torch.nn.Parameter)


def _probes_exist() -> bool:
    """The (private) torch hooks ``_unobserved`` asks exist in this torch; else every call takes the
    dispatcher (always correct, only slower)."""
    try:
        return all(
            callable(f)
            for f in (
                torch._C._len_torch_dispatch_stack,
                torch._C._is_torch_function_mode_enabled,
                torch._C._functorch.peek_interpreter_stack,
                torch._C._autograd._profiler_enabled,
            )
        ) and isinstance(torch.autograd.forward_ad._current_level, int)
    except AttributeError:
        return False


_CAN_SKIP_DISPATCH = _probes_exist()


def _unobserved(args, device: torch.device) -> bool:
    """Nothing would see this call's custom-op node: no autograd graph (grad mode off, or no input
    requires grad), no forward-mode AD level, no dispatch mode (fake tensors, tracing, recorders), no
    torch-function mode or tensor subclass, no functorch transform, no profiler, no meta tensors. Then
    ``run`` calls the selected backend directly: the same implementation, inputs and no-grad rule as
    the custom op's, minus the dispatcher's Python cost (~15-20 us per call on a CPU; bench/host_overhead.py)."""
    if (
        not _CAN_SKIP_DISPATCH
        or torch._C._len_torch_dispatch_stack()
        or torch._C._is_torch_function_mode_enabled()
        or torch._C._functorch.peek_interpreter_stack() is not None
        or torch._C._autograd._profiler_enabled()
        or torch.autograd.forward_ad._current_level >= 0  # inside a dual_level(): forward-mode AD
        or device.type == "meta"  # (prepare put every tensor on this one device)
    ):
        return False
    grad = torch.is_grad_enabled()
    for a in args:
        if isinstance(a, torch.Tensor) and (type(a) not in _PLAIN_TENSORS or (grad and a.requires_grad)):
            return False
    return True


def get_op(name: str) -> Op:
    try:
        return _OPS[name]
    except KeyError:
        raise ValueError(f"unknown op {name!r}; ops: {', '.join(_OPS)}") from None


def all_ops() -> List[Op]:
    return list(_OPS.values())


def ops_of_backend(backend: str) -> List[str]:
    """Names of the ops a backend implements (declared in the ops' support modules)."""
    return [op.name for op in _OPS.values() if backend in op.impls]


def returns_nothing(*args) -> None:
    """The fake implementation of an op that only writes its inputs (schema ``-> ()``)."""
    return None


# -- autograd ----------------------------------------------------------------------------------------------
def _save_nothing(ctx, inputs, output) -> None:
    pass


def _no_backward(name: str):
    def backward(ctx, *grads):
        raise NotImplementedError(
            f"longattn.{name} has no backward pass (inference only): run the forward under torch.no_grad() "
            "or torch.inference_mode(), or detach its inputs"
        )

    return backward


def refuse_grad(op: str, inputs, what: str) -> None:
    """Raise when autograd would need a gradient through ``inputs`` that this call cannot give."""
    if not torch.is_grad_enabled():
        return
    for name in _field_names(type(inputs)):
        v = getattr(inputs, name)
        if isinstance(v, torch.Tensor) and v.requires_grad:
            raise RuntimeError(
                f"longattn.{op}: `{name}` requires grad, but {what}: pass `{name}.detach()` or run under "
                "torch.no_grad() / torch.inference_mode()"
            )


_FIELDS: Dict[type, Tuple[str, ...]] = {}


def _field_names(cls: type) -> Tuple[str, ...]:
    """The field names of a prepared-inputs dataclass (``dataclasses.fields`` once per type)."""
    names = _FIELDS.get(cls)
    if names is None:
        names = _FIELDS[cls] = tuple(f.name for f in dataclasses.fields(cls))
    return names
