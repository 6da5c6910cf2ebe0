"""Backend registry and dispatch.

Selection for one op call (``select``), given the op's per-backend ``Impl`` declarations:

1. ``backend="name"`` wins, else the environment variable ``LONGATTN_BACKEND``; a forced backend
   either runs the call or raises.
2. Otherwise the device decides the order: the backends that declare the device type in
   ``preferred_on`` (registration order), then ``reference``. The first backend that accepts the
   call runs it; if a preferred backend that implements the op declines the call, a warning (once
   per reason) says why.
3. When no backend can run a call, ``BackendError`` lists every registered backend with its reasons.

Backends are registered by module path and imported on first use, so ``import longattn`` imports no
backend code (and never triton or torch_npu). This module knows nothing about ops: an op passes its
own declarations (``ops/<op>/support.py``).
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import threading
import warnings
from typing import Callable, Dict, List, Mapping, Optional, Tuple

import torch

from .base import Backend, Impl
from .cpu_threads import shared_cpu

ENV_VAR = "LONGATTN_BACKEND"
FALLBACK = "reference"

# name -> module that defines ``BACKEND: Backend`` (imported on first use), in preference order.
_MODULES: Dict[str, str] = {
    "reference": "longattn.backends.reference",
    "triton": "longattn.backends.triton",
    "ascend_sim": "longattn.backends.ascend_sim",
    "ascend": "longattn.backends.ascend",
}

_loaded: Dict[str, Backend] = {}
_lock = threading.Lock()
_warned: set = set()


class BackendError(NotImplementedError):
    """No backend can run this call (the message lists every backend and why it declined)."""


@dataclasses.dataclass(frozen=True)
class Selection:
    """The backend chosen for one call and the function that runs the op's prepared inputs there."""

    backend: str
    run: Callable


def register_backend(name: str, module: str) -> None:
    """Register (or re-point) a backend implemented in ``module`` (which defines ``BACKEND``)."""
    with _lock:
        _MODULES[name] = module
        _loaded.pop(name, None)


def unregister_backend(name: str) -> None:
    with _lock:
        _MODULES.pop(name, None)
        _loaded.pop(name, None)


def backend_names() -> List[str]:
    return list(_MODULES)


def get_backend(name: str) -> Backend:
    """Import and return a registered backend. A backend whose module fails to import is returned as
    an unavailable placeholder carrying the import error as its reason."""
    backend = _loaded.get(name)  # loaded (and still registered: unregistering drops it): no lock needed
    if backend is not None:
        return backend
    if name not in _MODULES:
        raise ValueError(f"unknown backend {name!r}; registered backends: {', '.join(_MODULES)}")
    with _lock:
        if name not in _loaded:
            try:
                backend = importlib.import_module(_MODULES[name]).BACKEND
            except Exception as exc:  # an optional backend may fail to import; say why, don't crash
                backend = Backend(
                    name=name,
                    description=f"(failed to load {_MODULES[name]})",
                    device_types=None,
                    unavailable=f"failed to load: {type(exc).__name__}: {exc}",
                )
            _loaded[name] = backend
        return _loaded[name]


def requested_backend(backend: Optional[str]) -> Optional[str]:
    """The explicitly requested backend name (argument first, then the environment), or None."""
    name = backend if backend is not None else os.environ.get(ENV_VAR) or None
    if name is not None and name not in _MODULES:
        source = "backend=" if backend is not None else f"{ENV_VAR}="
        raise ValueError(f"{source}{name!r} is not a backend; registered backends: {', '.join(_MODULES)}")
    return name


def default_order(device: torch.device) -> Tuple[str, ...]:
    """Backends tried, in order, for an unforced call on ``device``."""
    preferred = [n for n in _MODULES if n != FALLBACK and device.type in get_backend(n).preferred_on]
    return tuple(preferred) + ((FALLBACK,) if FALLBACK in _MODULES else ())


def reasons(name: str, op: str, impls: Mapping[str, Impl], device: torch.device, inputs) -> List[str]:
    """Why backend ``name`` declines this call of ``op`` (empty list: it accepts)."""
    problem = get_backend(name).device_reason(device)
    if problem is not None:
        return [problem]
    impl = impls.get(name)
    if impl is None:
        return [f"does not implement {op}"]
    return impl.declines(inputs)


def select(
    op: str, impls: Mapping[str, Impl], device: torch.device, inputs, backend: Optional[str] = None
) -> Selection:
    """The backend that runs this call of ``op`` (prepared ``inputs`` on ``device``)."""
    forced = requested_backend(backend)
    order = (forced,) if forced is not None else default_order(device)
    declined: List[Tuple[str, List[str]]] = []
    for name in order:
        why = reasons(name, op, impls, device, inputs)
        if not why:
            if declined and declined[0][0] in impls:
                _warn_fallback(op, name, declined[0])
            return _selection(name, impls[name].function(), name == FALLBACK and device.type == "cpu")
        declined.append((name, why))
    raise BackendError(_explain(op, impls, device, inputs, order, forced))


_SELECTIONS: Dict[Tuple[str, Callable, bool], Selection] = {}


def _selection(name: str, fn: Callable, shared: bool) -> Selection:
    """``Selection(name, fn)`` (``fn`` under the shared-CPU thread policy when ``shared``: see
    cpu_threads), made once per implementation: a selection is immutable and the wrapper stateless."""
    key = (name, fn, shared)
    sel = _SELECTIONS.get(key)
    if sel is None:
        sel = _SELECTIONS[key] = Selection(name, shared_cpu(fn) if shared else fn)
    return sel


def _warn_fallback(op: str, chosen: str, declined: Tuple[str, List[str]]) -> None:
    msg = f"longattn.{op}: backend {declined[0]!r} declined ({'; '.join(declined[1])}); using {chosen!r}"
    if msg not in _warned:
        _warned.add(msg)
        warnings.warn(msg, RuntimeWarning, stacklevel=5)


def describe_inputs(inputs) -> str:
    """One line naming the shapes and dtypes of a call (for error messages)."""
    fields = dataclasses.fields(inputs) if dataclasses.is_dataclass(inputs) else ()
    parts = []
    for f in fields:
        v = getattr(inputs, f.name)
        if isinstance(v, torch.Tensor):
            parts.append(f"{f.name}={list(v.shape)} {str(v.dtype).replace('torch.', '')}")
        elif v is not None and not callable(v):
            parts.append(f"{f.name}={v!r}")
    return ", ".join(parts)


def _explain(op, impls, device, inputs, order, forced) -> str:
    how = f"backend {forced!r} was requested" if forced else f"default order for {device.type}: {', '.join(order)}"
    lines = [f"longattn.{op}: no backend can run this call ({how}).", f"  call: {describe_inputs(inputs)}"]
    for name in _MODULES:
        why = reasons(name, op, impls, device, inputs)
        if not why:
            why = [f"not tried ({how}); select it with backend={name!r}"]
        lines.append(f"  - {name}: " + "; ".join(why))
    return "\n".join(lines)
