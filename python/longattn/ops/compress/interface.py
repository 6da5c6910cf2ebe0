"""``longattn.compress_pool``: stateless KV-compressor pooling of one sequence from position 0."""

from __future__ import annotations

from typing import Optional

import torch

from ..._checks import ArgChecker
from ...backends import registry


def compress_pool(
    a: torch.Tensor,
    b: torch.Tensor,
    ratio: int,
    overlap: bool,
    *,
    backend: Optional[str] = None,
) -> torch.Tensor:
    """Pool every complete block of ``ratio`` tokens into one entry (per-channel softmax gate).

    Args:
        a: ``[S, c*d]`` values (c = 2 if ``overlap`` else 1).
        b: ``[S, c*d]`` scores, already including the position bias ``ape[t % ratio]``.
        ratio: tokens per entry (V4: 4 for CSA with overlap, 128 for HCA without).
        overlap: entry j pools half A ``[0, d)`` of block j-1 and half B ``[d, 2d)`` of block j.

    Returns:
        ``[S // ratio, d]`` fp32 entries, before RMSNorm / RoPE / quantisation.
    """
    chk = ArgChecker("compress_pool")
    chk.tensor("a", a, ("S", "c*d"))
    chk.tensor("b", b, ("S", "c*d"))
    if b.shape != a.shape:
        chk.fail(f"`b` must have the shape of `a` {list(a.shape)}, got {list(b.shape)}")
    ratio = chk.positive_int("ratio", ratio)
    if not isinstance(overlap, bool):
        chk.fail(f"`overlap` must be a bool, got {type(overlap).__name__}", TypeError)
    if overlap and a.shape[1] % 2:
        chk.fail(f"with overlap, `a` must have an even width 2*d (halves A and B), got {a.shape[1]}")
    args = dict(a=a, b=b, ratio=ratio, overlap=overlap)
    return registry.select("compress_pool", a.device, args, backend)(**args)
