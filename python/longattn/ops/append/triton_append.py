"""Triton kernels for ``append_kv`` (see README.md, section "Triton kernel").

One launch per call. Float pools: a program owns a ``[BLOCK_T, BLOCK_D]`` tile of rows and copies
it to the rows' slots (masked stores: a slot outside ``[0, num_slots)`` is never written and its row
never read). FP8 pools (``Fp8KVPool``, the 584-B MODEL1 record): a program owns one row and
quantises it exactly like ``longattn.cache.fp8.quantize_rows``.

Every conversion is done on the bits with integer arithmetic (``_bf16_bits``, ``_e4m3_bits``, the
UE8M0 exponent in ``_store_fp8_record``), so the bytes are identical on a GPU and under the
interpreter (which truncates fp32 -> bf16 and has no e4m3 rounding of its own), on any GPU
generation (no e4m3 conversion instruction is needed): round to nearest even, e4m3 saturating.
fp32 -> fp16 uses ``.to(tl.float16)`` (round to nearest even on GPUs and in numpy). Same-dtype
copies move the raw bits (integer views), so they are bit-identical whatever the values.

NaN payloads: a NaN becomes the canonical bf16 NaN 0x7FC0 (torch's CPU scalar path; its vectorised
path gives 0xFFFF); in e4m3 it becomes 0x7F with its sign (as torch / c10).

The jit helpers here (``_bf16_bits``, ``_e4m3_bits``, ``_store_fp8_record``) are shared with the
compressor kernel (``ops/compress/triton_compress.py``).
"""

from __future__ import annotations

import struct

import torch
import triton
import triton.language as tl

from ...cache import fp8
from ..triton_utils import and_flag, cdiv, next_power_of_2, widen_bf16

# FP8 record (FlashMLA MODEL1 / vLLM fp8_ds_mla): the facts are longattn/cache/fp8.py's
_FP8_DATA_BYTES = tl.constexpr(fp8.DATA_BYTES)
_FP8_SCALE_BYTES = tl.constexpr(fp8.SCALE_BYTES)
_FP8_NOPE = tl.constexpr(fp8.NOPE_DIM)
_FP8_TILE = tl.constexpr(fp8.TILE)
_FP8_TILES = tl.constexpr(fp8.HEAD_DIM // fp8.TILE)  # 8 = 7 nope tiles + the rope tile
_FP8_NOPE_TILES = tl.constexpr(fp8.NUM_TILES)  # 7
_UE8M0_BIAS = tl.constexpr(fp8.UE8M0_BIAS)
_MIN_EXP = tl.constexpr(fp8.MIN_EXPONENT)  # the scale floor of quantize_rows
_E4M3_MAX_BITS = tl.constexpr(struct.unpack("<i", struct.pack("<f", fp8.E4M3_MAX))[0])  # 448.0 as fp32 bits
_F32_ABS = tl.constexpr(0x7FFFFFFF)
_F32_SIGN = tl.constexpr(-(2**31))  # 0x80000000 as int32
_F32_INF_BITS = tl.constexpr(0x7F800000)
_F32_MANT = tl.constexpr(0x7FFFFF)
_MANT_1_75 = tl.constexpr(0x600000)  # mantissa field of 1.75 (448 = 1.75 * 2**8)
_BF16_NAN = tl.constexpr(fp8.BF16_NAN)

# append modes (float pools)
COPY_BITS, TO_F32, TO_BF16, TO_F16 = 0, 1, 2, 3
_INT_VIEW = {2: torch.int16, 4: torch.int32}

MAX_BLOCK_D = 1024  # float pools: row tile width (wider rows take several column programs)


# ---------------------------------------------------------------------------------------------------
# bit-exact conversions (shared with triton_compress)
# ---------------------------------------------------------------------------------------------------
@triton.jit
def _bf16_bits(x):
    """fp32 -> the 16 bits of bf16(x), round to nearest even (int32 in [0, 0xFFFF]); NaN -> 0x7FC0.
    Overflow rounds to +-inf like torch. Store with ``.to(tl.int16)`` through an int16 view."""
    u = x.to(tl.int32, bitcast=True)
    r = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16) & 0xFFFF
    return tl.where(x != x, _BF16_NAN, r)


@triton.jit
def _to_f32(x):
    """A loaded float tile -> fp32, exactly. bf16 is widened on the bits on every device (the
    interpreter's own conversion garbles subnormals; on sm_90 the shift also compiles to fewer
    instructions in the compressor's loop than the native conversion: 1,341 against 1,357)."""
    if x.dtype == tl.bfloat16:
        return widen_bf16(x)
    elif x.dtype == tl.float16:
        # cvt.f32.f16 turns every NaN into the canonical +NaN (seen on an H200): the sign bit is put
        # back from the fp16 bits (for every other value it is unchanged), so -NaN stays -NaN
        b_neg = x.to(tl.int16, bitcast=True) < 0
        b_abs = x.to(tl.float32).to(tl.int32, bitcast=True) & _F32_ABS
        return tl.where(b_neg, b_abs | _F32_SIGN, b_abs).to(tl.float32, bitcast=True)
    else:
        return x.to(tl.float32)


@triton.jit
def _e4m3_bits(v):
    """fp32 -> the byte of float8_e4m3fn(clamp(v, -448, 448)), round to nearest even (int32 in
    [0, 255]); NaN -> 0x7F | sign (c10's conversion, after quantize_rows' clamp).

    Normal results (|v| >= 2**-6): the fp32 mantissa is rounded to 3 bits on the bits (c10's
    ``+ 0x7FFFF + odd`` trick) and the exponent rebiased (127 -> 7). Subnormal results: the code is
    round_half_even(|v| * 2**9), computed as a shift of the 24-bit mantissa (shift >= 21, capped at
    31: everything below 2**-10 rounds to +-0, fp32 subnormals included)."""
    u = v.to(tl.int32, bitcast=True)
    sign = (u >> 24) & 0x80
    a = u & _F32_ABS
    is_nan = a > _F32_INF_BITS
    a = tl.minimum(a, _E4M3_MAX_BITS)  # saturate (|v| > 448 and inf -> 448): the clamp of quantize_rows
    ea = a >> 23
    normal = ((a + 0x7FFFF + ((a >> 20) & 1)) >> 20) - 960  # (127 - 7) << 3 = 960
    mant = tl.where(ea > 0, (a & _F32_MANT) | 0x800000, a)
    sh = tl.minimum(141 - tl.maximum(ea, 1), 31)  # |v| * 2**9 = mant * 2**(ea - 141)
    q = mant >> sh
    rem = mant & ((1 << sh) - 1)
    half = 1 << (sh - 1)
    q += ((rem > half) | ((rem == half) & ((q & 1) == 1))).to(tl.int32)
    code = tl.where(ea >= 121, normal, q)  # 121 - 127 = -6: the smallest e4m3 normal exponent
    code = tl.where(is_nan, 0x7F, code)
    return code | sign


@triton.jit
def _store_fp8_record(x, p_u8, p_i16, data_off, scale_off, ok):
    """Quantise one row ``x`` [8, 64] fp32 (tiles 0..6: nope dims, tile 7: the 64 rope dims) into
    its MODEL1 record: 448 e4m3 bytes at ``data_off``, 64 bf16 at ``data_off + 448`` (written through
    the int16 view ``p_i16``), 7 UE8M0 scale bytes + a zero pad at ``scale_off``. Nothing is written
    unless ``ok``. Exactly ``longattn.cache.fp8.quantize_rows``:

    e = the smallest integer with 448 * 2**e >= amax, at least -13. With amax = 1.m * 2**E (fp32 bits;
    448 = 1.75 * 2**8): e = E - 8 if 1.m <= 1.75, else E - 7 (equality at 1.75 = an exact power
    448 * 2**k gives e = k). The tile amax is the integer max of the |x| bit patterns (the same order
    as the floats for non-negative values; no NaN semantics involved). A tile holding inf / NaN gets
    e = 0 as in the reference (torch.frexp of inf / NaN returns exponent 0). x * 2**-e is exact (an
    fp32 power-of-two multiply; results below 2**-126 round to +-0 in e4m3 anyway)."""
    o_t = tl.arange(0, _FP8_TILES)
    o_c = tl.arange(0, _FP8_TILE)
    # [8, 64]
    b_abs = x.to(tl.int32, bitcast=True) & _F32_ABS
    # [8]
    m_nonfinite = tl.max(((b_abs >> 23) == 255).to(tl.int32), axis=1) > 0
    b_amax = tl.max(b_abs, axis=1)
    b_e = (b_amax >> 23) - 135 + ((b_amax & _F32_MANT) > _MANT_1_75).to(tl.int32)
    b_e = tl.where(m_nonfinite, 0, tl.maximum(b_e, _MIN_EXP))
    b_mult = ((127 - b_e) << 23).to(tl.float32, bitcast=True)  # 2**-e, e in [-13, 120]
    # [8, 64]
    # the sign is x's: the multiply keeps it for every value but NaN (a GPU returns the canonical +NaN)
    b_code = (_e4m3_bits(x * b_mult[:, None]) & 0x7F) | ((x.to(tl.int32, bitcast=True) >> 24) & 0x80)
    m_full = and_flag((o_t[:, None] >= 0) & (o_c[None, :] >= 0), ok)
    m_nope = m_full & (o_t < _FP8_NOPE_TILES)[:, None]
    m_rope = m_full & (o_t == _FP8_NOPE_TILES)[:, None]
    tl.store(p_u8 + data_off + o_t[:, None] * _FP8_TILE + o_c[None, :], b_code.to(tl.uint8), mask=m_nope)
    o_rope16 = (data_off + _FP8_NOPE) // 2  # data rows start at even byte offsets (576 * k)
    tl.store(
        p_i16 + o_rope16 + (o_t[:, None] - _FP8_NOPE_TILES) * _FP8_TILE + o_c[None, :],
        _bf16_bits(x).to(tl.int16),
        mask=m_rope,
    )
    b_scale = tl.where(o_t < _FP8_NOPE_TILES, b_e + _UE8M0_BIAS, 0)  # byte 7: pad 0
    tl.store(p_u8 + scale_off + o_t, b_scale.to(tl.uint8), mask=and_flag(o_t >= 0, ok))


@triton.jit
def _convert_row_tile(x, MODE: tl.constexpr):
    """A loaded tile -> what is stored (see the MODE constants)."""
    if MODE == 1:  # TO_F32 (from bf16 / fp16: exact)
        return _to_f32(x)
    elif MODE == 2:  # TO_BF16 (from fp32 / fp16), stored through an int16 view
        return _bf16_bits(_to_f32(x)).to(tl.int16)
    elif MODE == 3:  # TO_F16 (from fp32 / bf16; bf16 -> fp32 is exact, then one RNE rounding)
        return _to_f32(x).to(tl.float16)
    else:  # COPY_BITS: integer views of equal dtypes
        return x


# ---------------------------------------------------------------------------------------------------
# kernels
# ---------------------------------------------------------------------------------------------------
@triton.jit(do_not_specialize=["T", "D", "num_slots"])
def _append_float_kernel(
    p_rows,
    stride_rt,
    stride_rd,
    p_slots,
    stride_s,
    p_pool,
    stride_pr,
    stride_pd,
    T,
    D,
    num_slots,
    MODE: tl.constexpr,
    BLOCK_T: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    i_t = tl.program_id(0).to(tl.int64) * BLOCK_T + tl.arange(0, BLOCK_T)
    o_d = tl.program_id(1).to(tl.int64) * BLOCK_D + tl.arange(0, BLOCK_D)
    m_t = i_t < T
    # [BLOCK_T] slots; a slot outside [0, num_slots) masks its row (never read, never written)
    b_slot = tl.load(p_slots + i_t * stride_s, mask=m_t, other=-1).to(tl.int64)
    m_t = m_t & (b_slot >= 0) & (b_slot < num_slots)
    b_slot = tl.where(m_t, b_slot, 0)
    m = m_t[:, None] & (o_d < D)[None, :]
    # [BLOCK_T, BLOCK_D]
    b_x = tl.load(p_rows + i_t[:, None] * stride_rt + o_d[None, :] * stride_rd, mask=m, other=0)
    tl.store(p_pool + b_slot[:, None] * stride_pr + o_d[None, :] * stride_pd, _convert_row_tile(b_x, MODE), mask=m)


@triton.jit(do_not_specialize=["page_size", "page_bytes", "num_slots"])
def _append_fp8_kernel(
    p_rows,
    stride_rt,
    stride_rd,
    p_slots,
    stride_s,
    p_u8,
    p_i16,
    page_size,
    page_bytes,
    num_slots,
):
    i_t = tl.program_id(0).to(tl.int64)
    b_slot = tl.load(p_slots + i_t * stride_s).to(tl.int64)
    ok = (b_slot >= 0) & (b_slot < num_slots)
    b_slot = tl.where(ok, b_slot, 0)
    i_page = b_slot // page_size
    i_off = b_slot % page_size
    o_data = i_page * page_bytes + i_off * _FP8_DATA_BYTES
    o_scale = i_page * page_bytes + page_size * _FP8_DATA_BYTES + i_off * _FP8_SCALE_BYTES
    o_t = tl.arange(0, _FP8_TILES)
    o_c = tl.arange(0, _FP8_TILE)
    o_x = o_t[:, None] * _FP8_TILE + o_c[None, :]  # [8, 64]: dims of the row
    m_x = and_flag(o_x >= 0, ok)
    b_x = _to_f32(tl.load(p_rows + i_t * stride_rt + o_x * stride_rd, mask=m_x, other=0.0))
    _store_fp8_record(b_x, p_u8, p_i16, o_data, o_scale, ok)


# ---------------------------------------------------------------------------------------------------
# launcher
# ---------------------------------------------------------------------------------------------------
def float_pool_rows(pool: torch.Tensor):
    """(num_slots, stride_row, stride_d) of the flat [num_slots, D] view of a float pool, or None if
    a paged pool's pages are not evenly strided (the kernel addresses slot * stride_row)."""
    if pool.dim() == 2:
        return pool.shape[0], pool.stride(0), pool.stride(1)
    P, ps, _ = pool.shape
    if P > 1 and ps > 0 and pool.stride(0) != ps * pool.stride(1):
        return None
    return P * ps, pool.stride(1), pool.stride(2)


def append_mode(src: torch.dtype, dst: torch.dtype) -> int:
    if src == dst:
        return COPY_BITS
    return {torch.float32: TO_F32, torch.bfloat16: TO_BF16, torch.float16: TO_F16}[dst]


def _tiles(D: int):
    block_d = min(MAX_BLOCK_D, next_power_of_2(max(1, D)))
    block_t = max(1, min(64, 2048 // block_d))  # <= 16 values per thread at 4 warps (no spills)
    return block_t, block_d


def append_kv(pool, rows: torch.Tensor, slot_mapping: torch.Tensor) -> None:
    """Launch one kernel (canonical args of the op)."""
    T, D = rows.shape
    if T == 0:
        return
    if isinstance(pool, torch.Tensor):
        num_slots, stride_pr, stride_pd = float_pool_rows(pool)
        if num_slots == 0 or D == 0:
            return
        mode = append_mode(rows.dtype, pool.dtype)
        src, dst = rows, pool
        if mode == COPY_BITS:
            src, dst = rows.view(_INT_VIEW[rows.element_size()]), pool.view(_INT_VIEW[pool.element_size()])
        elif mode == TO_BF16:
            dst = pool.view(torch.int16)
        block_t, block_d = _tiles(D)
        grid = (cdiv(T, block_t), cdiv(D, block_d))
        _append_float_kernel[grid](
            src, rows.stride(0), rows.stride(1), slot_mapping, slot_mapping.stride(0),
            dst, stride_pr, stride_pd, T, D, num_slots,
            MODE=mode, BLOCK_T=block_t, BLOCK_D=block_d, num_warps=4,
        )  # fmt: skip
        return
    data = pool.data
    num_slots = int(pool.num_slots)
    if num_slots == 0 or data.numel() == 0:
        return
    _append_fp8_kernel[(T,)](
        rows, rows.stride(0), rows.stride(1), slot_mapping, slot_mapping.stride(0),
        data, data.view(-1).view(torch.int16), int(pool.page_size), int(pool.page_bytes), num_slots,
        num_warps=4,
    )  # fmt: skip


def run(inp) -> None:
    """``AppendInputs``: writes the rows."""
    append_kv(inp.pool, inp.rows, inp.slot_mapping)
