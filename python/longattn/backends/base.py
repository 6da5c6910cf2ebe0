"""What a backend is: a name, where it runs, and one implementation per op it supports.

A backend never validates the generic contract (the op interface already did); it only says why it
cannot run a particular, valid call (head dim it has no kernel for, dtype it does not take, ...).
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Dict, List, Mapping, Optional, Tuple

import torch

# An op implementation takes the op's canonical keyword arguments (see each op's interface.py).
OpFn = Callable[..., object]
# Returns the reasons (human readable, empty list = can run) for one call's canonical arguments.
ReasonsFn = Callable[..., List[str]]


@dataclasses.dataclass(frozen=True)
class OpImpl:
    fn: OpFn
    reasons: Optional[ReasonsFn] = None


@dataclasses.dataclass
class Backend:
    """A set of op implementations.

    name:        what users pass as ``backend=`` or ``LONGATTN_BACKEND``.
    description: one line for ``longattn.info()``.
    device_types: torch device types it runs on (``None`` = any device torch runs on).
    ops:         op name -> implementation.
    unavailable: why the backend cannot run on this machine at all (``None`` = it can).
    """

    name: str
    description: str
    device_types: Optional[Tuple[str, ...]]
    ops: Mapping[str, OpImpl]
    unavailable: Optional[str] = None

    def reasons(self, op: str, device: torch.device, args: Dict[str, object]) -> List[str]:
        """Why this backend declines ``op`` on these arguments (empty list: it accepts)."""
        if self.unavailable is not None:
            return [self.unavailable]
        if self.device_types is not None and device.type not in self.device_types:
            return [f"runs on {'/'.join(self.device_types)} tensors, got {device.type} tensors"]
        impl = self.ops.get(op)
        if impl is None:
            return [f"does not implement {op}"]
        return list(impl.reasons(**args)) if impl.reasons is not None else []
