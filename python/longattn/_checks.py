"""Argument checks shared by the op interfaces.

Every public op validates its inputs here, before any backend runs, so that all backends see the same
well-formed problem and a user gets one clear message that names the op, the argument, what was
expected and what was given. Shape/rank/device problems raise ``ValueError``; dtype problems raise
``TypeError``. Index *values* are never checked here (that would need a device sync): out-of-range
indices are defined to be skipped; ``longattn.debug.check_indices`` reports them on request.
"""

from __future__ import annotations

import math
from typing import Iterable, Optional, Sequence

import torch

FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
INDEX_DTYPES = (torch.int32, torch.int64)


def _dtype_names(dtypes: Iterable[torch.dtype]) -> str:
    return " or ".join(str(d).replace("torch.", "") for d in dtypes)


def _layout(layout: Sequence[str]) -> str:
    return "[" + ", ".join(layout) + "]"


def _shape(x: torch.Tensor) -> str:
    return "[" + ", ".join(str(s) for s in x.shape) + "]"


class ArgChecker:
    """Collects the checks of one op call; ``op`` prefixes every message."""

    def __init__(self, op: str):
        self.op = op
        self.device: Optional[torch.device] = None
        self._device_arg: Optional[str] = None

    def fail(self, msg: str, exc: type = ValueError):
        raise exc(f"{self.op}: {msg}")

    def tensor(
        self,
        name: str,
        x,
        layout: Sequence[str],
        dtypes: Sequence[torch.dtype] = FLOAT_DTYPES,
        *,
        same_device: bool = True,
    ) -> torch.Tensor:
        """Check that ``x`` is a tensor of rank ``len(layout)`` with one of ``dtypes``.

        ``layout`` names the dims, e.g. ``("T", "H", "D")``; it only appears in messages.
        """
        if not isinstance(x, torch.Tensor):
            self.fail(f"`{name}` must be a torch.Tensor {_layout(layout)}, got {type(x).__name__}", TypeError)
        if x.dim() != len(layout):
            self.fail(f"`{name}` must be {len(layout)}-D {_layout(layout)}, got {x.dim()}-D shape {_shape(x)}")
        if x.dtype not in dtypes:
            self.fail(
                f"`{name}` must have dtype {_dtype_names(dtypes)}, got {str(x.dtype).replace('torch.', '')}",
                TypeError,
            )
        if same_device:
            self.on_device(name, x)
        return x

    def on_device(self, name: str, x: torch.Tensor) -> None:
        if self.device is None:
            self.device, self._device_arg = x.device, name
        elif x.device != self.device:
            self.fail(
                f"all tensors must be on one device: `{self._device_arg}` is on {self.device} "
                f"but `{name}` is on {x.device}"
            )

    def dim(self, name: str, x: torch.Tensor, axis: int, expected: int, what: str) -> None:
        """Check ``x.shape[axis] == expected``; ``what`` says where ``expected`` comes from."""
        if x.shape[axis] != expected:
            self.fail(f"`{name}` has shape {_shape(x)}: dim {axis} must be {expected} ({what}), got {x.shape[axis]}")

    def positive_int(self, name: str, value) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            self.fail(f"`{name}` must be an int, got {type(value).__name__}", TypeError)
        if value <= 0:
            self.fail(f"`{name}` must be > 0, got {value}")
        return value

    def finite_scale(self, name: str, value) -> float:
        if isinstance(value, torch.Tensor):
            self.fail(f"`{name}` must be a Python float, got a tensor", TypeError)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            self.fail(f"`{name}` must be a float, got {type(value).__name__}", TypeError)
        if not math.isfinite(value):
            self.fail(f"`{name}` must be finite, got {value}")
        return float(value)
