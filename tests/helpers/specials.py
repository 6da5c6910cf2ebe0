"""Special float values for the non-finite tests."""

from __future__ import annotations

import torch

NAN, INF = float("nan"), float("inf")
NEG_NAN = -float("nan")  # sign bit set (Python's negation flips it; torch keeps it on assignment)


def neg_nan(shape=()) -> torch.Tensor:
    """fp32 NaNs with the sign bit set (0xFFC00000)."""
    return torch.full(shape, -1, dtype=torch.int32).mul_(1 << 22).view(torch.float32)
