"""What the Triton kernel modules (``ops/*/triton_*.py``) share. Imports triton: import it only from
those modules, which the Triton backend loads on first use."""

from __future__ import annotations

import functools
import os
from typing import Dict, Tuple

import torch
import triton
import triton.language as tl

from ..backends.triton import cuda_capability, interpreting  # noqa: F401  (re-exported: one definition, importable without triton)

CPU_NOTIONAL_SMS = 4  # interpreter: pretend 4 SMs so long rows still exercise split-KV / multi-range paths


def num_sms(device: torch.device) -> int:
    """Streaming multiprocessors the launch heuristics plan for (CPU_NOTIONAL_SMS when interpreting)."""
    if device.type == "cuda" and not interpreting():
        return _cuda_sms(device.index if device.index is not None else torch.cuda.current_device())
    return CPU_NOTIONAL_SMS


# torch float dtype -> the Triton dtype a kernel computes in (a constexpr argument)
TL_DTYPE = {torch.float32: tl.float32, torch.bfloat16: tl.bfloat16, torch.float16: tl.float16}

AMD_TILES = (0, 0)  # what tile_capability answers on an AMD GPU: the config functions' AMD branch


def tile_capability(device: torch.device) -> Tuple[int, int]:
    """The NVIDIA compute capability tiles are chosen for; ``AMD_TILES`` on AMD GPUs (ROCm torch reports gfx
    versions there, e.g. (9, 4) for an MI300X, which must not select the Hopper tiles). Without a CUDA
    runtime (tiles planned offline, e.g. by a compile study for an H200): (9, 0)."""
    if torch.version.hip:
        return AMD_TILES
    if not torch.cuda.is_available():
        return (9, 0)
    return cuda_capability(device.index if device.index is not None else torch.cuda.current_device())


@functools.lru_cache(maxsize=None)
def _cuda_sms(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


# Host-side integer helpers of the launchers. ``triton.cdiv`` / ``triton.next_power_of_2`` are
# constexpr functions since Triton 3.5 (a few microseconds per host call: they unwrap every argument);
# these are the same formulas on plain ints.
def cdiv(x: int, y: int) -> int:
    return (x + y - 1) // y


def next_power_of_2(n: int) -> int:
    """The smallest power of 2 >= n (0 for n <= 0, as ``triton.next_power_of_2``)."""
    return 1 << (n - 1).bit_length() if n > 0 else 0


_DUMMIES: Dict[Tuple[torch.device, torch.dtype], torch.Tensor] = {}


def dummy(device: torch.device, dtype: torch.dtype = torch.int32) -> torch.Tensor:
    """A one-element zero tensor for a pointer argument the kernel never dereferences (a missing optional
    input, an unused workspace), one per (device, dtype) for the process: no allocation and no fill
    launch per call. Made outside inference mode (the interpreter copies every argument back into it)."""
    key = (device, dtype)
    t = _DUMMIES.get(key)
    if t is None:
        with torch.inference_mode(False), torch.no_grad():
            t = _DUMMIES[key] = torch.zeros(1, dtype=dtype, device=device)
    return t


_INTERPRET = tl.constexpr(os.environ.get("TRITON_INTERPRET") == "1")  # as triton itself: read at import
_BF16_ROUND_BIAS = tl.constexpr(0x7FFF)
_BF16_QNAN = tl.constexpr(0x7FC0)


@triton.jit
def cast_out(x, DST: tl.constexpr):
    """fp32 -> DST with round-to-nearest-even. The interpreter's fp32 -> bf16 conversion truncates and
    garbles subnormals, so there the bf16 bits are made from the fp32 bits (rounded to nearest even;
    NaN -> 0x7FC0) and bitcast; GPUs round natively."""
    if _INTERPRET and DST == tl.bfloat16:
        b_bits = x.to(tl.int32, bitcast=True)
        b_bits = ((b_bits + _BF16_ROUND_BIAS + ((b_bits >> 16) & 1)) >> 16) & 0xFFFF
        b_bits = tl.where(x != x, _BF16_QNAN, b_bits)
        return b_bits.to(tl.int16).to(tl.bfloat16, bitcast=True)
    return x.to(DST)


@triton.jit
def widen_bf16(x):
    """A bf16 tile -> fp32, exactly, on the bits (a 16-bit shift)."""
    return ((x.to(tl.int16, bitcast=True).to(tl.int32) & 0xFFFF) << 16).to(tl.float32, bitcast=True)


@triton.jit
def cast_in(x, DST: tl.constexpr):
    """A loaded float tile -> DST. The interpreter's own bf16 -> fp32 conversion garbles subnormals
    (1e-38 -> 8.3e-39, 9e-41 -> 0: docs/toolchain.md), so there bf16 is widened on the bits first (exact);
    GPUs convert natively, and this is ``x.to(DST)``."""
    if _INTERPRET and x.dtype == tl.bfloat16 and DST != tl.bfloat16:
        x = widen_bf16(x)
    return x.to(DST)


@triton.jit
def e4m3_values(b_raw, DST: tl.constexpr):
    """e4m3fn bytes (a uint8 block) -> their values in DST (exact: e4m3 fits fp16 / bf16 / fp32), the NaN
    codes (0x7F / 0xFF) NaN. GPUs convert natively (sm_89+, ``cvt.rn.f16x2.e4m3x2``: a NaN code gives
    a NaN, as every widening conversion; gpu_check's FP8 NaN-byte tests check it); the interpreter's
    conversion gives those codes +-480, so only there are they fixed up (on sm_90 the fix-up was a
    fifth of the FP8 indexer key loop: 925 -> 759 SASS instructions per 64-entry step without it)."""
    b_v = b_raw.to(tl.float8e4nv, bitcast=True).to(DST)
    if _INTERPRET:
        b_v = tl.where((b_raw & 0x7F) == 0x7F, float("nan"), b_v).to(DST)
    return b_v


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
