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
