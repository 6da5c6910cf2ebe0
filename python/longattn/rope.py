"""Interleaved-pair RoPE on the last ``rope_dim`` dims, with DeepSeek's per-layer frequency tables.

Pairs are (x[2i], x[2i+1]) of the rope slice (view_as_complex layout, vLLM ``is_neox_style=False``).
Angles are ``fp32(position) * fp32(inv_freq)`` rounded to fp32 and cos/sin taken in fp32, exactly as
DeepSeek's reference (``torch.outer`` of fp32 tensors, then ``torch.polar``), so tables agree bit for
bit with the model code. YaRN (compressed layers of V4): frequencies in the correction range
[lo, hi] are blended between f and f / factor (docs/deepseek-v4-attention.md section 3).
"""

from __future__ import annotations

import math
from typing import Optional

import torch

from .configs import RopeConfig


def _correction_dim(num_rotations: float, dim: int, base: float, max_position: int) -> float:
    return dim * math.log(max_position / (num_rotations * 2 * math.pi)) / (2 * math.log(base))


def inv_freq(rope: RopeConfig, rope_dim: int, device=None) -> torch.Tensor:
    """[rope_dim // 2] fp32 inverse frequencies of one layer's table."""
    f = 1.0 / (rope.theta ** (torch.arange(0, rope_dim, 2, dtype=torch.float32) / rope_dim))
    if rope.yarn is not None:
        y = rope.yarn
        lo = max(math.floor(_correction_dim(y.beta_fast, rope_dim, rope.theta, y.original_max_position)), 0)
        hi = min(math.ceil(_correction_dim(y.beta_slow, rope_dim, rope.theta, y.original_max_position)), rope_dim - 1)
        span = (hi - lo) if hi != lo else 0.001
        ramp = ((torch.arange(rope_dim // 2, dtype=torch.float32) - lo) / span).clamp(0, 1)
        smooth = 1 - ramp
        f = f / y.factor * (1 - smooth) + f * smooth
    return f.to(device) if device is not None else f


def cos_sin(positions: torch.Tensor, inv_freq: torch.Tensor):
    """cos, sin [..., rope_dim // 2] fp32 for integer ``positions`` [...]."""
    angles = positions.to(torch.float32).unsqueeze(-1) * inv_freq.to(torch.float32)
    return torch.cos(angles), torch.sin(angles)


def apply_rope(
    x: torch.Tensor,
    positions: torch.Tensor,
    inv_freq: torch.Tensor,
    *,
    inverse: bool = False,
    rope_dim: Optional[int] = None,
    inplace: bool = False,
) -> torch.Tensor:
    """Rotate the last ``rope_dim`` dims of ``x [..., D]`` in interleaved pairs at ``positions``.

    ``positions`` broadcasts against ``x.shape[:-1]`` (e.g. ``[T]`` with ``x [T, D]``, or ``[T, 1]``
    with ``x [T, H, D]``). ``inverse=True`` rotates by -angle (the conjugate). Returns a new tensor in
    x's dtype (``inplace=True``: x itself, its rope dims overwritten; for temporaries of inference
    steps, where the copy of the other dims is the largest cost: a prefill chunk's queries are GiBs);
    the math is fp32.
    """
    rope_dim = 2 * inv_freq.shape[-1] if rope_dim is None else rope_dim
    if rope_dim == 0:  # nothing to rotate (x[..., -0:] would be every dim)
        return x if inplace else x.clone()
    c, s = cos_sin(positions, inv_freq)
    if inverse:
        s = -s
    out = x if inplace else x.clone()
    r = x[..., -rope_dim:].to(torch.float32).unflatten(-1, (rope_dim // 2, 2))
    even, odd = r[..., 0], r[..., 1]
    rotated = torch.stack([even * c - odd * s, even * s + odd * c], dim=-1).flatten(-2)
    out[..., -rope_dim:] = rotated.to(x.dtype)
    return out
