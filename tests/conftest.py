# Without a GPU, Triton kernels run in the interpreter, which must be selected before anything
# imports triton (toolchain.md). `import torch` does not import triton; the first op call may (through
# torch._dynamo), so this has to happen here. On a CUDA machine the kernels run natively unless
# TRITON_INTERPRET is set explicitly.
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import random  # noqa: E402

import pytest  # noqa: E402

from tests.helpers import backends as _backends  # noqa: E402  (after TRITON_INTERPRET is set)

_real_empty = torch.empty
_real_empty_like = torch.empty_like


def _poison(t: torch.Tensor) -> torch.Tensor:
    if t.is_floating_point():
        t.fill_(float("nan"))
    elif t.dtype == torch.bool:
        t.fill_(True)
    elif t.dtype in (torch.uint8,):
        t.fill_(0xA5)
    elif not t.is_complex():
        t.fill_(torch.iinfo(t.dtype).min)
    return t


def _poisoned_empty(*args, **kwargs):
    return _poison(_real_empty(*args, **kwargs))


def _poisoned_empty_like(*args, **kwargs):
    return _poison(_real_empty_like(*args, **kwargs))


@pytest.fixture(autouse=True)
def poison_empty(monkeypatch):
    """Every ``torch.empty``/``empty_like`` made through Python is filled with NaN (ints: their minimum),
    so an output element that an op forgets to write shows up as a failure."""
    monkeypatch.setattr(torch, "empty", _poisoned_empty)
    monkeypatch.setattr(torch, "empty_like", _poisoned_empty_like)
    yield


@pytest.fixture(autouse=True)
def seed():
    random.seed(0)
    torch.manual_seed(0)
    yield


@pytest.fixture
def test_backend(monkeypatch):
    """``test_backend(name, impls, device_types=("cpu",))`` registers a test-only backend with the given
    ``{op name: Impl}`` implementations for one test (removed afterwards)."""
    import sys

    from longattn.backends import Backend, registry
    from longattn.ops.op import get_op

    added = []

    def register(name, impls, device_types=("cpu",), preferred_on=()):
        mod = type(sys)(f"{name}_longattn_test_backend")
        mod.BACKEND = Backend(name, "test double", device_types, preferred_on=preferred_on)
        monkeypatch.setitem(sys.modules, mod.__name__, mod)
        registry.register_backend(name, mod.__name__)
        for op, impl in impls.items():
            get_op(op).add_impl(name, impl)
        added.append((name, list(impls)))

    yield register
    for name, ops in added:
        for op in ops:
            get_op(op).remove_impl(name)
        registry.unregister_backend(name)


@pytest.fixture(params=_backends.backend_names())
def backend(request):
    """Every registered backend (``registry.backend_names()`` at collection time), one test each: a
    backend that cannot run on the test device (tests/helpers/device.py) is skipped with its own reason.
    Run the op with ``tests.helpers.backends.call(fn, ..., backend=backend)``: a call the backend
    declines is skipped with its declared reasons."""
    name = request.param
    why = _backends.device_reason(name)
    if why is not None:
        pytest.skip(f"{name}: {why}")
    return name
