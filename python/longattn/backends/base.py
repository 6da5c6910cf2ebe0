"""What a backend and an op implementation are.

A *backend* is a place where kernels run (``reference``: PyTorch on any device; ``triton``: CUDA;
``ascend``: an Ascend NPU; ``ascend_sim``: the Ascend C kernels on the CPU emulator). Its module in
this package declares one ``BACKEND = Backend(...)``: its name, the devices it runs on and, when it
cannot run on this machine at all, why. A backend module knows nothing about ops.

What a backend can do for one op is declared by the op, in ``ops/<op>/support.py``: an ``Impl`` per
backend, naming the function that runs the op's prepared inputs and, optionally, a ``reasons``
function that says why the backend declines a particular (valid) call. Neither imports the kernels:
``Impl.run`` is a ``"module:function"`` path imported on the first call that selects it.
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Callable, List, Optional, Tuple, Union

import torch

# Why a backend declines one call of an op, from the op's prepared inputs (empty list: it accepts).
ReasonsFn = Callable[[object], List[str]]


@dataclasses.dataclass(frozen=True)
class Backend:
    """name: what users pass as ``backend=`` or ``LONGATTN_BACKEND``.
    description: one line for ``longattn.info()``.
    device_types: torch device types it runs on (``None``: any device torch runs on).
    unavailable: why it cannot run on this machine at all (``None``: it can).
    preferred_on: device types on which it is tried before ``reference`` when no backend is forced.
    """

    name: str
    description: str
    device_types: Optional[Tuple[str, ...]]
    unavailable: Optional[str] = None
    preferred_on: Tuple[str, ...] = ()

    def device_reason(self, device: torch.device) -> Optional[str]:
        """Why this backend cannot run on ``device`` (None: it can)."""
        if self.unavailable is not None:
            return self.unavailable
        if self.device_types is not None and device.type not in self.device_types:
            return f"runs on {'/'.join(self.device_types)} tensors, got {device.type} tensors"
        return None


@dataclasses.dataclass
class Impl:
    """One backend's implementation of one op.

    run: the function ``fn(inputs) -> outputs`` taking the op's prepared inputs, or its
        ``"module:function"`` path (imported on first use, so declaring it imports nothing).
    reasons: ``fn(inputs) -> [str]``, why this backend declines a call (None: it takes every valid call).
    """

    run: Union[str, Callable]
    reasons: Optional[ReasonsFn] = None

    def function(self) -> Callable:
        if isinstance(self.run, str):
            module, _, name = self.run.partition(":")
            self.run = getattr(importlib.import_module(module), name)
        assert callable(self.run)
        return self.run

    def declines(self, inputs) -> List[str]:
        return list(self.reasons(inputs)) if self.reasons is not None else []
