"""What the Triton kernel modules (``ops/*/triton_*.py``) share. Imports triton: import it only from
those modules, which the Triton backend loads on first use."""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from ..backends.triton import interpreting  # noqa: F401  (re-exported: one definition, importable without triton)

CPU_NOTIONAL_SMS = 4  # interpreter: pretend 4 SMs so long rows still exercise split-KV / multi-range paths


def num_sms(device: torch.device) -> int:
    """Streaming multiprocessors the launch heuristics plan for (CPU_NOTIONAL_SMS when interpreting)."""
    if device.type == "cuda" and not interpreting():
        return torch.cuda.get_device_properties(device).multi_processor_count
    return CPU_NOTIONAL_SMS


_INTERPRET = tl.constexpr(os.environ.get("TRITON_INTERPRET") == "1")  # as triton itself: read at import
_BF16_ROUND_BIAS = tl.constexpr(0x7FFF)
_BF16_KEEP = tl.constexpr(-65536)  # 0xFFFF0000 as int32


@triton.jit
def cast_out(x, DST: tl.constexpr):
    """fp32 -> DST with round-to-nearest-even. The interpreter truncates fp32 -> bf16, so there the
    rounding is done on the bits first (the final cast is then exact); GPUs round natively."""
    if _INTERPRET and DST == tl.bfloat16:
        b_bits = x.to(tl.int32, bitcast=True)
        b_bits = (b_bits + _BF16_ROUND_BIAS + ((b_bits >> 16) & 1)) & _BF16_KEEP
        x = b_bits.to(tl.float32, bitcast=True)
    return x.to(DST)


_F32_QNAN_BITS = tl.constexpr(0x7FC00000)


@triton.jit
def nan_where(cond, x):
    """``tl.where(cond, NaN, x)`` for an fp32 block ``x``. The NaN is made from its bits: a NaN global
    constexpr fails Triton 3.6's check that a kernel's globals are unchanged since it was compiled
    (nan != nan), so every launch after the first would raise."""
    return tl.where(cond, tl.full(x.shape, _F32_QNAN_BITS, tl.int32).to(tl.float32, bitcast=True), x)


@triton.jit
def and_flag(mask, flag):
    """``mask & flag`` for a block mask and a scalar flag, written as a select. Triton 3.9's interpreter
    splats a scalar comparison result with its operands' integer dtype, so ``mask & flag`` becomes an
    integer array there and ``tl.load`` rejects it as a mask; compiled kernels are the same either way."""
    return tl.where(flag, mask, False)
