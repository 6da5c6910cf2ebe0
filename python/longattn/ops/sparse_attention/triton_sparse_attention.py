"""Triton kernels for ``sparse_attention`` (see README.md, section "Triton kernel").

One kernel serves prefill and decode: a program owns one query token, a block of ``BLOCK_H`` query
heads (the M dimension of its matmuls, like FlashMLA: every gathered KV row is loaded once per token
and head block, not once per head) and one split of the token's index rows (both streams back to
back). It gathers ``BLOCK_N`` rows per step with masked loads (an index is used iff
``0 <= idx < num_slots`` and its position is below ``topk_length``; nothing else is dereferenced),
computes ``Q K^T`` and ``P V`` with fp32 accumulation and an online softmax in base 2.

The head dim is tiled in a main power-of-two tile ``BLOCK_D0`` and an optional masked tail
``BLOCK_D1`` (576 = 512 + 64, 100 = 64 + 64 masked, 512 = 256 + 256: ``head_dim_tiles``), both for
``Q K^T`` and the ``P V`` accumulator. With one split the kernel writes the final ``out`` (sink
applied) and ``lse``; with several splits it writes fp32 partials (out, base-2 lse, no sink) to workspaces and
``_combine_splits_kernel`` merges them with the math of ``merge_attention_states`` (splits whose lse
is -inf are never read), then applies the sink.

Interpreter (``TRITON_INTERPRET=1``): bf16/fp16 arithmetic is unreliable there, so loaded values are
cast to fp32 at once and every dot runs in fp32; on a GPU low-precision inputs stay in their dtype
for the tensor-core dots (``P`` is rounded to that dtype before ``P V``, as in FlashAttention).
"""

from __future__ import annotations

import functools
import math
from typing import Optional, Tuple

import torch
import triton
import triton.language as tl

from ..._env import positive_ints
from ...cache import fp8
from ..triton_utils import (
    AMD_TILES,
    TL_DTYPE,
    cast_in,
    cdiv,
    dummy,
    e4m3_values,
    interpreting,
    nan_where,
    next_power_of_2,
    tile_capability,
)
from ..triton_utils import cast_out as _cast_out
from ..triton_utils import num_sms as _num_sms

# ---------------------------------------------------------------------------------------------------
# constants
# ---------------------------------------------------------------------------------------------------
_LOG2E = tl.constexpr(1.4426950408889634)  # log2(e): logits are scaled into base 2 once
_LN2 = tl.constexpr(0.6931471805599453)  # ln(2): base-2 lse back to the natural-log lse
_NEG_INF = tl.constexpr(float("-inf"))
_POS_INF = tl.constexpr(float("inf"))
_FP32_MAX = tl.constexpr(3.4028234663852886e38)  # the exp2 reference point once a logit is +inf
# FP8 pool record (FlashMLA MODEL1 / vLLM fp8_ds_mla; the layout is longattn/cache/fp8.py's): 448 e4m3 +
# 64 bf16 per 576-B data row, then 8-B scale rows (7 UE8M0 bytes, one per 64 nope dims) after the page's data rows.
_FP8_DATA_BYTES = tl.constexpr(fp8.DATA_BYTES)
_FP8_SCALE_BYTES = tl.constexpr(fp8.SCALE_BYTES)
_FP8_NOPE = tl.constexpr(fp8.NOPE_DIM)
_FP8_TILE = tl.constexpr(fp8.TILE)
_FP32_EXP_SHIFT = tl.constexpr(23)  # (byte << 23) as fp32 bits = 2 ** (byte - 127): the UE8M0 scale

MIN_DOT = 16  # smallest M / N / K of a tl.dot on NVIDIA GPUs
MAX_SPLITS = 64  # the combine loads every split in one tile (combine_tiles)
COMBINE_TILE = 4096  # elements of a combine program's [BLOCK_S, BLOCK_D] fp32 tile: 32 per thread (4 warps)
# Split-KV cost model (split_cost_us; README "Split-KV cost model"): H200-sized constants, not measurements.
SPLIT_BLOCK_US = 2.2  # one program's key block at 64 heads x 64 keys x D = 512: the offline sm_90a model's
# ~4,064 busy clk per hot-loop iteration (shared-memory bound) at 1.83 GHz; scaled by BLOCK_H x BLOCK_N x D
SPLIT_PROGRAM_US = 1.0  # a program's fixed cost: the q tile, the first gathers' latency, the epilogue store
SPLIT_COMBINE_US = 3.0  # the dependent combine launch (~2 us gap without CUDA graphs) + its 2 round trips
SPLIT_HBM_BYTES_PER_US = 4.8e6  # H200 HBM3e, 4.8 TB/s: the partial outputs' write + read
SPLIT_TIE = 1.1  # more splits must be > 10% cheaper (they cost workspace and partial traffic)


def _pow2_floor(x: int) -> int:
    return 1 << (max(1, x).bit_length() - 1)


def head_dim_tiles(D: int) -> Tuple[int, int]:
    """(BLOCK_D0, BLOCK_D1): main power-of-two tile and masked tail tile (0 = no tail). A power of two
    >= 512 (V4's 512) is cut into two halves: each half's key tile and [BLOCK_H, D / 2] accumulator is
    its own wgmma chain, so the gathered (or dequantised) rows are live half a row at a time. sm_90
    compile of the V4 launches (triton 3.7.1): spills 444 -> 420 B in decode (in-loop spill loads /
    stores 43 / 22 -> 27 / 6), 160 -> 80 B in prefill (36 / 25 -> 14 / 2), FP8 pool loop 64 / 55 -> 36 / 3."""
    if D >= 512 and D & (D - 1) == 0:
        return D // 2, D // 2
    d0 = max(MIN_DOT, _pow2_floor(D))
    rest = D - d0
    d1 = max(MIN_DOT, next_power_of_2(rest)) if rest > 0 else 0
    return d0, d1


def default_config(
    H: int,
    D: int,
    compute_dtype: torch.dtype,
    device: torch.device,
    fp8: bool = False,
    capability: Optional[Tuple[int, int]] = None,
) -> dict:
    """Tile sizes per problem (README.md). D = 512 / 576 on a GPU: measured on an H200 (triton 3.6.0,
    bench/results/triton-grid-h200-2026-12-04.json); other sizes from offline sm_90 compiles.
    ``LONGATTN_TRITON_SPARSE_CFG`` = "BLOCK_H,BLOCK_N,num_warps,num_stages" overrides them (for tuning
    on a GPU; bench/triton_grid.py sweeps a few). ``capability``: the GPU's (major, minor), queried
    from ``device`` when None (offline compiles pass it)."""
    env = positive_ints("LONGATTN_TRITON_SPARSE_CFG", "BLOCK_H,BLOCK_N,num_warps,num_stages")
    if env:
        bh, bn, nw, ns = env
        return dict(BLOCK_H=bh, BLOCK_N=bn, num_warps=nw, num_stages=ns)
    h_tile = max(MIN_DOT, min(64, next_power_of_2(H)))
    if device.type != "cuda" or interpreting():
        # Interpreter: small key blocks so that short test rows still span several blocks.
        return dict(BLOCK_H=h_tile, BLOCK_N=16, num_warps=4, num_stages=1)
    d_total = sum(head_dim_tiles(D))
    capability = capability or tile_capability(device)
    if capability == AMD_TILES:
        return _amd_config(h_tile, d_total, compute_dtype)
    if compute_dtype == torch.float32:
        return dict(BLOCK_H=MIN_DOT, BLOCK_N=32, num_warps=8, num_stages=1)
    if d_total <= 128:  # wgmma with M = 64 heads
        return dict(BLOCK_H=h_tile, BLOCK_N=64, num_warps=8, num_stages=2)
    if d_total <= 256:
        return dict(BLOCK_H=min(h_tile, 32), BLOCK_N=32, num_warps=4, num_stages=2)
    if capability < (9, 0):
        # sm_80 / sm_89: no wgmma, so the 64-head tiles only spill (and sm_89 has 99 KiB of
        # shared memory per block): the spill-free 32-head tiles of the offline compiles (tests/triton)
        return dict(BLOCK_H=min(h_tile, 16 if fp8 else 32), BLOCK_N=16 if fp8 else 32, num_warps=8, num_stages=1)
    # D = 512 / 576: 64-head blocks make Q.K^T a wgmma (M = 64) and 2 stages give cp.async gathers;
    # the [64, D] fp32 accumulator then spills a few hundred bytes (tests/triton/sm90_compile.py
    # budgets them), and still, on the H200 (H = 128, bf16 / FP8 compressed pool):
    #   bf16 64,64,8,2: CSA decode T=64 172 us (32,32,8,1: 336), V4-Pro prefill T=2048 3.66 ms (10.2)
    #   FP8  64,32,8,2: CSA decode T=64 624 us (32,32,8,1: 898; the former 16,16,8,1 default: 1510)
    if fp8:
        return dict(BLOCK_H=h_tile, BLOCK_N=32, num_warps=8, num_stages=2)
    return dict(BLOCK_H=h_tile, BLOCK_N=64, num_warps=8, num_stages=2)


def _amd_config(h_tile: int, d_total: int, compute_dtype: torch.dtype) -> dict:
    """AMD (gfx942, MI300X) tiles, from offline compiles only (triton 3.6.0-3.9.0, hand-written
    signature; no AMD GPU has run them). Among the tiles whose compile spills no VGPR to scratch: those that
    compute no product twice (Triton stacks the warps of a dot that feeds another, Q.K^T, along its
    rows, 16 per wave: 8 waves over 32 heads compute it 4 times, as the sm_80 tiles AMD had before
    did, besides spilling 194 VGPRs at D = 512), then the most heads per program (each gathered row is
    re-read once per head block), the most warps, the longest key block, 2 stages, on every triton
    release CI compiles (3.6.0-3.9.0). So 64 heads x 16 keys x 4 warps (one wave per SIMD: 366 VGPRs
    at D = 512; no tile within 256 is both spill- and repeat-free there), 2 stages up to D = 256
    (at 512 they spill 58 VGPRs with triton 3.6.0). D = 576: every repeat-free tile spills with
    3.6.0 (this one 74 VGPRs; none with 3.7-3.9). fp32 compute: the same up to D = 256 (1 stage);
    above it the repeat-free tiles spill with 3.6.0 or overflow the 64 KiB of LDS, so 16 heads (Q.K^T
    computed 4 times). SGPR spills (into VGPR lanes, no memory traffic) are allowed. FP8 pools are
    declined on AMD."""
    if compute_dtype == torch.float32:
        bh, ns = (64, 1) if d_total <= 256 else (MIN_DOT, 1)
    else:
        bh, ns = 64, (2 if d_total <= 256 else 1)
    return dict(BLOCK_H=min(h_tile, bh), BLOCK_N=16, num_warps=4, num_stages=ns)


def split_cost_us(
    num_splits: int, programs: int, key_blocks: int, sms: int, block_h: int = 64, block_n: int = 64, head_dim: int = 512
) -> float:
    """Modelled kernel time (us, H200-sized constants above) of a decode / prefill launch cut into
    ``num_splits``: ``programs`` (token, head block) programs per split, each token's ``key_blocks`` key
    blocks shared out evenly, one program per SM at a time (the V4 tiles' occupancy), then the
    combine. Waves x (a program's fixed cost + its blocks), plus, when split, the combine launch and
    the partial outputs written and read back once at HBM bandwidth."""
    waves = cdiv(programs * num_splits, sms)
    block_us = SPLIT_BLOCK_US * (block_h * block_n * head_dim) / (64 * 64 * 512)
    t = waves * (SPLIT_PROGRAM_US + cdiv(key_blocks, num_splits) * block_us)
    if num_splits > 1:
        partial_bytes = 2 * num_splits * programs * block_h * (head_dim + 1) * 4  # fp32 out + lse, written + read
        t += SPLIT_COMBINE_US + partial_bytes / SPLIT_HBM_BYTES_PER_US
    return t


@functools.lru_cache(maxsize=4096)
def _best_num_splits(programs: int, key_blocks: int, sms: int, block_h: int, block_n: int, head_dim: int) -> int:
    costs = [split_cost_us(s, programs, key_blocks, sms, block_h, block_n, head_dim)
             for s in range(1, min(MAX_SPLITS, key_blocks) + 1)]  # fmt: skip
    best = min(costs)
    return next(s for s, c in enumerate(costs, 1) if c <= best * SPLIT_TIE)


def choose_num_splits(
    programs: int,
    max_keys: int,
    block_n: int,
    device: torch.device,
    *,
    key_blocks: Optional[int] = None,
    block_h: int = 64,
    head_dim: int = 512,
) -> int:
    """Split-KV choice from the cost model (``split_cost_us``): the fewest splits within SPLIT_TIE of
    the cheapest count in 1..min(MAX_SPLITS, key blocks). ``programs`` = T x head blocks; ``key_blocks``
    = a token's key blocks (default cdiv(max_keys, block_n)). Cached per shape (host cost ~1 us)."""
    blocks = key_blocks if key_blocks is not None else cdiv(max(0, max_keys), block_n)
    if programs <= 0 or blocks <= 1:
        return 1
    return _best_num_splits(programs, blocks, _num_sms(device), block_h, block_n, head_dim)


def combine_tiles(num_splits: int, D: int) -> Tuple[int, int]:
    """(BLOCK_S, BLOCK_D) of ``_combine_splits_kernel``: every split in one tile, the head dim in chunks
    that keep the [BLOCK_S, BLOCK_D] fp32 partial tile within COMBINE_TILE elements."""
    block_s = max(2, next_power_of_2(num_splits))
    return block_s, max(MIN_DOT, min(next_power_of_2(D), COMBINE_TILE // block_s))


# ---------------------------------------------------------------------------------------------------
# kernels
# ---------------------------------------------------------------------------------------------------


@triton.jit
def _load_kv_rows(
    p_kv,
    p_kv16,
    i_slot,
    m_n,
    o_d,
    m_d,
    stride_row,
    stride_d,
    page_size,
    page_bytes,
    IS_FP8: tl.constexpr,
    CDT: tl.constexpr,
):
    """Rows ``i_slot`` ([BLOCK_N] int64, 0 where masked) at columns ``o_d``; masked -> 0."""
    m_nd = m_n[:, None] & m_d[None, :]
    if IS_FP8:
        # page_bytes is a whole number of 576-B data rows (cache/fp8.py): written so that the compiler
        # knows every row starts 64-B aligned and loads its 448 + 128 bytes 16 at a time
        page_bytes = (page_bytes // _FP8_DATA_BYTES) * _FP8_DATA_BYTES
        i_page = i_slot // page_size
        i_off = i_slot % page_size
        o_data = i_page * page_bytes + i_off * _FP8_DATA_BYTES  # [BLOCK_N] byte offset of the row
        o_scale = i_page * page_bytes + page_size * _FP8_DATA_BYTES + i_off * _FP8_SCALE_BYTES
        m_nope = m_nd & (o_d < _FP8_NOPE)[None, :]
        m_rope = m_nd & (o_d >= _FP8_NOPE)[None, :]
        # [BLOCK_N, BLOCK_D] e4m3 bytes and their UE8M0 scale bytes
        b_raw = tl.load(p_kv + o_data[:, None] + o_d[None, :], mask=m_nope, other=0)
        b_sc = tl.load(p_kv + o_scale[:, None] + (o_d // _FP8_TILE)[None, :], mask=m_nope, other=127)
        b_scale = (b_sc.to(tl.int32) << _FP32_EXP_SHIFT).to(tl.float32, bitcast=True)
        # e4m3fn's NaN codes (0x7F / 0xFF) give NaN (a NaN key's record makes the key NaN, as the
        # reference's does): natively on GPUs, by a fix-up under the interpreter (e4m3_values)
        b_nope = e4m3_values(b_raw, tl.float32) * b_scale
        # [BLOCK_N, BLOCK_D] bf16 rope values (bf16 view of the same bytes; data rows are even)
        o_rope16 = (o_data + _FP8_NOPE) // 2
        b_rope = tl.load(p_kv16 + o_rope16[:, None] + (o_d - _FP8_NOPE)[None, :], mask=m_rope, other=0.0)
        b_k = tl.where((o_d < _FP8_NOPE)[None, :], b_nope, cast_in(b_rope, tl.float32))
        return b_k.to(CDT)
    else:
        p_rows = p_kv + i_slot[:, None] * stride_row + o_d[None, :] * stride_d
        return cast_in(tl.load(p_rows, mask=m_nd, other=0.0), CDT)


@triton.jit
def _attend_stream(
    b_q0,
    b_q1,
    b_m,
    b_l,
    b_acc0,
    b_acc1,
    p_kv,
    p_kv16,
    stride_row,
    stride_d,
    num_slots,
    page_size,
    page_bytes,
    p_idx_row,
    stride_ik,
    n_pos,
    blk_lo,
    blk_hi,
    o_d0,
    m_d0,
    o_d1,
    m_d1,
    qk_scale,
    IS_FP8: tl.constexpr,
    HAS_TAIL: tl.constexpr,
    BLOCK_N: tl.constexpr,
    CDT: tl.constexpr,
    DOT_PREC: tl.constexpr,
):
    """Online softmax over key blocks [blk_lo, blk_hi) of one index row (positions < n_pos).

    Non-finite logits follow IEEE: a NaN logit makes p, l and acc NaN (whether or not the max dropped
    it: ``tl.maximum`` ignores NaN on GPUs, propagates it in the interpreter); once a logit is +inf
    the reference point is the largest finite fp32, so that key weighs +inf and finite ones 0 (l =
    +inf: lse +inf; the epilogue makes out NaN); -inf logits weigh 0."""
    for i_blk in range(blk_lo, blk_hi):
        o_n = i_blk * BLOCK_N + tl.arange(0, BLOCK_N)
        m_n = o_n < n_pos
        # [BLOCK_N] slots; invalid ones (out of range, -1, past topk_length) are masked, never read
        b_idx = tl.load(p_idx_row + o_n.to(tl.int64) * stride_ik, mask=m_n, other=-1).to(tl.int64)
        m_n = m_n & (b_idx >= 0) & (b_idx < num_slots)
        i_slot = tl.where(m_n, b_idx, 0)
        # [BLOCK_N, BLOCK_D0]
        b_k0 = _load_kv_rows(
            p_kv, p_kv16, i_slot, m_n, o_d0, m_d0, stride_row, stride_d, page_size, page_bytes, IS_FP8, CDT
        )
        # [BLOCK_H, BLOCK_N]
        b_s = tl.dot(b_q0, tl.trans(b_k0), input_precision=DOT_PREC)
        if HAS_TAIL:
            # [BLOCK_N, BLOCK_D1]
            b_k1 = _load_kv_rows(
                p_kv, p_kv16, i_slot, m_n, o_d1, m_d1, stride_row, stride_d, page_size, page_bytes, IS_FP8, CDT
            )
            b_s += tl.dot(b_q1, tl.trans(b_k1), input_precision=DOT_PREC)
        b_s = tl.where(m_n[None, :], b_s * qk_scale, _NEG_INF)
        # [BLOCK_H]
        b_m_new = tl.maximum(b_m, tl.max(b_s, 1))
        # reference point: 0 while every logit so far is -inf (keeps exp2 finite), FP32_MAX once one is +inf
        b_m_safe = tl.where(b_m_new == _NEG_INF, 0.0, tl.where(b_m_new == _POS_INF, _FP32_MAX, b_m_new))
        b_alpha = tl.exp2(b_m - b_m_safe)
        # [BLOCK_H, BLOCK_N]
        b_p = tl.exp2(b_s - b_m_safe[:, None])
        b_l = b_l * b_alpha + tl.sum(b_p, 1)
        b_acc0 = b_acc0 * b_alpha[:, None] + tl.dot(_cast_out(b_p, CDT), b_k0, input_precision=DOT_PREC)
        if HAS_TAIL:
            b_acc1 = b_acc1 * b_alpha[:, None] + tl.dot(_cast_out(b_p, CDT), b_k1, input_precision=DOT_PREC)
        b_m = b_m_new
    return b_m, b_l, b_acc0, b_acc1


@triton.jit(
    do_not_specialize=[
        "num_slots",
        "kv_page_size",
        "kv_page_bytes",
        "stride_it",
        "K1",
        "num_slots2",
        "ekv_page_size",
        "ekv_page_bytes",
        "stride_eit",
        "K2",
        "T",
        "H",
    ]
)
def _sparse_attn_fwd_kernel(
    p_q,
    stride_qt,
    stride_qh,
    stride_qd,
    # stream 1
    p_kv,
    p_kv16,
    stride_kv_row,
    stride_kv_d,
    num_slots,
    kv_page_size,
    kv_page_bytes,
    p_idx,
    stride_it,
    stride_ik,
    K1,
    p_len,
    # stream 2 (extra)
    p_ekv,
    p_ekv16,
    stride_ekv_row,
    stride_ekv_d,
    num_slots2,
    ekv_page_size,
    ekv_page_bytes,
    p_eidx,
    stride_eit,
    stride_eik,
    K2,
    p_elen,
    # sink, outputs, split workspaces
    p_sink,
    p_out,
    stride_ot,
    stride_oh,
    stride_od,
    p_lse,
    stride_lt,
    stride_lh,
    p_ws_out,
    p_ws_lse,
    T,
    H,
    D,
    qk_scale,
    HAS_LEN: tl.constexpr,
    HAS_EXTRA: tl.constexpr,
    HAS_ELEN: tl.constexpr,
    HAS_SINK: tl.constexpr,
    KV_FP8: tl.constexpr,
    EKV_FP8: tl.constexpr,
    SPLIT: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D0: tl.constexpr,
    BLOCK_D1: tl.constexpr,
    HAS_TAIL: tl.constexpr,
    CDT: tl.constexpr,
    DOT_PREC: tl.constexpr,
):
    i_t = tl.program_id(0).to(tl.int64)
    i_hb = tl.program_id(1)
    i_split = tl.program_id(2).to(tl.int64)
    num_splits = tl.num_programs(2)

    i_h = i_hb * BLOCK_H + tl.arange(0, BLOCK_H)
    m_h = i_h < H
    o_d0 = tl.arange(0, BLOCK_D0)
    m_d0 = o_d0 < D
    o_d1 = BLOCK_D0 + tl.arange(0, BLOCK_D1)
    m_d1 = o_d1 < D

    p_q_t = p_q + i_t * stride_qt + i_h[:, None] * stride_qh
    # [BLOCK_H, BLOCK_D0]
    b_q0 = cast_in(tl.load(p_q_t + o_d0[None, :] * stride_qd, mask=m_h[:, None] & m_d0[None, :], other=0.0), CDT)
    if HAS_TAIL:
        # [BLOCK_H, BLOCK_D1]
        b_q1 = cast_in(tl.load(p_q_t + o_d1[None, :] * stride_qd, mask=m_h[:, None] & m_d1[None, :], other=0.0), CDT)
    else:
        b_q1 = tl.zeros([BLOCK_H, BLOCK_D1], CDT)

    # Key blocks of this token: stream 1 then stream 2, split evenly over the splits.
    n1 = K1
    if HAS_LEN:
        n1 = tl.minimum(tl.maximum(tl.load(p_len + i_t).to(tl.int64), 0), K1)
    nb1 = tl.cdiv(n1, BLOCK_N)
    n2 = 0
    if HAS_EXTRA:
        n2 = K2
        if HAS_ELEN:
            n2 = tl.minimum(tl.maximum(tl.load(p_elen + i_t).to(tl.int64), 0), K2)
    nb2 = tl.cdiv(n2, BLOCK_N)
    per_split = tl.cdiv(nb1 + nb2, num_splits)
    blk_lo = i_split * per_split
    blk_hi = tl.minimum(blk_lo + per_split, nb1 + nb2)

    # [BLOCK_H]
    b_m = tl.full([BLOCK_H], _NEG_INF, tl.float32)
    b_l = tl.zeros([BLOCK_H], tl.float32)
    # [BLOCK_H, BLOCK_D0], [BLOCK_H, BLOCK_D1]
    b_acc0 = tl.zeros([BLOCK_H, BLOCK_D0], tl.float32)
    b_acc1 = tl.zeros([BLOCK_H, BLOCK_D1], tl.float32)

    b_m, b_l, b_acc0, b_acc1 = _attend_stream(
        b_q0, b_q1, b_m, b_l, b_acc0, b_acc1,
        p_kv, p_kv16, stride_kv_row, stride_kv_d, num_slots, kv_page_size, kv_page_bytes,
        p_idx + i_t * stride_it, stride_ik, n1,
        tl.minimum(blk_lo, nb1), tl.minimum(blk_hi, nb1),
        o_d0, m_d0, o_d1, m_d1, qk_scale,
        KV_FP8, HAS_TAIL, BLOCK_N, CDT, DOT_PREC,
    )  # fmt: skip
    if HAS_EXTRA:
        b_m, b_l, b_acc0, b_acc1 = _attend_stream(
            b_q0, b_q1, b_m, b_l, b_acc0, b_acc1,
            p_ekv, p_ekv16, stride_ekv_row, stride_ekv_d, num_slots2, ekv_page_size, ekv_page_bytes,
            p_eidx + i_t * stride_eit, stride_eik, n2,
            tl.maximum(blk_lo - nb1, 0), tl.maximum(blk_hi - nb1, 0),
            o_d0, m_d0, o_d1, m_d1, qk_scale,
            EKV_FP8, HAS_TAIL, BLOCK_N, CDT, DOT_PREC,
        )  # fmt: skip

    # [BLOCK_H] base-2 lse and 1 / l. l == 0 exactly when every used logit is -inf or no key was used:
    # lse -inf, out 0. l is NaN after a NaN logit (lse NaN) and +inf after a +inf one (lse +inf);
    # both make out NaN (README.md, "Edge semantics").
    m_zero = b_l == 0.0
    b_lse2 = tl.where(m_zero, _NEG_INF, b_m + tl.log2(tl.where(m_zero, 1.0, b_l)))
    m_bad = (b_lse2 != b_lse2) | (b_lse2 == _POS_INF)
    b_inv = nan_where(m_bad, 1.0 / tl.where(m_zero, 1.0, b_l))
    if SPLIT:
        # Partials (no sink): out [S, T, H, D] fp32 and base-2 lse [S, T, H]. A head whose l is exactly 0
        # (no key, or only -inf logits: lse -inf) writes only its lse; its out stays unwritten and the
        # combine never reads it. NaN / +inf l (lse NaN / +inf) is written: never "l > 0", false for NaN.
        # (The test was once a count of valid keys kept through the key loop: 320 B more spills there.)
        o_row = (i_split * T + i_t) * H + i_h  # [BLOCK_H] int64
        tl.store(p_ws_lse + o_row, b_lse2, mask=m_h)
        m_w = (m_h & ~m_zero)[:, None]
        tl.store(p_ws_out + o_row[:, None] * D + o_d0[None, :], b_acc0 * b_inv[:, None], mask=m_w & m_d0[None, :])
        if HAS_TAIL:
            tl.store(p_ws_out + o_row[:, None] * D + o_d1[None, :], b_acc1 * b_inv[:, None], mask=m_w & m_d1[None, :])
    else:
        b_g = b_inv  # rows without keys: acc = 0
        if HAS_SINK:
            # g = exp(lse) / (exp(lse) + exp(sink)) = 1 / (1 + 2^(sink * log2e - lse2)); 0 for rows with lse
            # -inf whatever the sink; a NaN sink gives NaN
            b_sink = cast_in(tl.load(p_sink + i_h, mask=m_h, other=0.0), tl.float32)
            b_lse2_safe = tl.where(m_zero, 0.0, b_lse2)
            b_g = tl.where(m_zero, 0.0, b_inv / (1.0 + tl.exp2(b_sink * _LOG2E - b_lse2_safe)))
        p_o = p_out + i_t * stride_ot + i_h[:, None] * stride_oh
        tl.store(
            p_o + o_d0[None, :] * stride_od,
            _cast_out(b_acc0 * b_g[:, None], p_out.dtype.element_ty),
            mask=m_h[:, None] & m_d0[None, :],
        )
        if HAS_TAIL:
            tl.store(
                p_o + o_d1[None, :] * stride_od,
                _cast_out(b_acc1 * b_g[:, None], p_out.dtype.element_ty),
                mask=m_h[:, None] & m_d1[None, :],
            )
        tl.store(p_lse + i_t * stride_lt + i_h * stride_lh, b_lse2 * _LN2, mask=m_h)


@triton.jit(do_not_specialize=["T", "H", "num_splits"])
def _combine_splits_kernel(
    p_ws_out,
    p_ws_lse,
    p_sink,
    p_out,
    stride_ot,
    stride_oh,
    stride_od,
    p_lse,
    stride_lt,
    stride_lh,
    T,
    H,
    D,
    num_splits,
    HAS_SINK: tl.constexpr,
    BLOCK_S: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """merge_attention_states over the splits (n-way, base 2), then the sink; one program per (token,
    head, BLOCK_D chunk of the head dim). No loop: every split's lse of the head is loaded at once
    ([BLOCK_S, 1], BLOCK_S >= num_splits), then every split's partial [BLOCK_S, BLOCK_D] at once, so a
    program waits for two dependent memory round trips whatever the split count (a loop over the splits
    waited for two per split). Splits with lse = -inf are never read; none is read where the result is
    NaN. Non-finite lse as merge_attention_states: a NaN split lse gives NaN, NaN; otherwise a +inf one
    gives +inf, NaN; all -inf gives -inf, 0. Chunk 0 writes lse."""
    i_t = tl.program_id(0).to(tl.int64)
    i_h = tl.program_id(1).to(tl.int64)
    i_d = tl.program_id(2)
    o_s = tl.arange(0, BLOCK_S).to(tl.int64)[:, None]  # [BLOCK_S, 1]
    m_s = o_s < num_splits
    o_row = (o_s * T + i_t) * H + i_h  # [BLOCK_S, 1] workspace row of (split, token, head)
    b_lse_s = tl.load(p_ws_lse + o_row, mask=m_s, other=_NEG_INF)
    # [1, 1]; NaN is tested explicitly (tl.max drops it on GPUs, keeps it in the interpreter)
    m_nan = tl.max((b_lse_s != b_lse_s).to(tl.int32), 0, keep_dims=True) > 0
    b_m = tl.max(b_lse_s, 0, keep_dims=True)
    m_bad = m_nan | (b_m == _POS_INF)  # out NaN
    m_empty = (b_m == _NEG_INF) & ~m_nan
    m_ok = ~(m_bad | m_empty)
    b_m_safe = tl.where(m_ok, b_m, 0.0)
    b_w = tl.where(m_ok, tl.exp2(b_lse_s - b_m_safe), 0.0)  # [BLOCK_S, 1]; 0 for empty splits
    b_total = tl.sum(b_w, 0, keep_dims=True)  # >= 1 where ok
    b_total_safe = tl.where(m_ok, b_total, 1.0)
    b_lse2 = tl.where(m_ok, b_m_safe + tl.log2(b_total_safe), nan_where(m_nan, b_m))
    b_g = nan_where(m_bad, 1.0 / b_total_safe)
    if HAS_SINK:
        b_sink = cast_in(tl.load(p_sink + i_h), tl.float32)
        b_lse2_safe = tl.where(m_empty, 0.0, b_lse2)
        b_g = tl.where(m_empty, 0.0, b_g / (1.0 + tl.exp2(b_sink * _LOG2E - b_lse2_safe)))
    if i_d == 0:
        tl.store(p_lse + i_t * stride_lt + i_h * stride_lh + tl.zeros([1, 1], tl.int64), b_lse2 * _LN2)
    o_d = i_d * BLOCK_D + tl.arange(0, BLOCK_D)[None, :]  # [1, BLOCK_D]
    m_d = o_d < D
    # [BLOCK_S, BLOCK_D] partial outputs of every split that has weight, summed over the splits
    b_o = tl.load(p_ws_out + o_row * D + o_d, mask=(b_w > 0.0) & m_d, other=0.0)
    b_acc = tl.sum(b_o * b_w, 0, keep_dims=True)  # [1, BLOCK_D]
    p_o = p_out + i_t * stride_ot + i_h * stride_oh + o_d * stride_od
    tl.store(p_o, _cast_out(b_acc * b_g, p_out.dtype.element_ty), mask=m_d)


# ---------------------------------------------------------------------------------------------------
# launcher
# ---------------------------------------------------------------------------------------------------
_LOG2E_HOST = math.log2(math.e)  # the softmax scale into base 2, once


def _stream_args(kv, device):
    """(p_kv, p_kv16, stride_row, stride_d, num_slots, page_size, page_bytes, is_fp8) of one pool."""
    if isinstance(kv, torch.Tensor):
        num_slots = kv.shape[0]
        if kv.numel() == 0:  # never read (no index is valid); a real pointer for the launcher
            return dummy(device, kv.dtype), None, 0, 0, 0, 1, 0, False
        stride_row, stride_d = kv.stride()
        return kv, None, stride_row, stride_d, num_slots, 1, 0, False
    data = kv.data
    if data.numel() == 0:  # an FP8 pool without pages: no index is valid
        return dummy(device, torch.float32), None, 0, 0, 0, 1, 0, False
    p16 = data.view(-1).view(torch.bfloat16)  # page_bytes is a multiple of 576: even sizes
    return data, p16, 0, 0, int(kv.num_slots), int(kv.page_size), int(kv.page_bytes), True


def _index_args(idx: torch.Tensor, device):
    if idx.numel() == 0:
        return dummy(device), 0, 0
    return (idx, *idx.stride())


def compute_dtype(q: torch.Tensor, pools) -> torch.dtype:
    """dtype of the dot operands: fp32 under the interpreter, for fp32 inputs or mixed dtypes;
    else the inputs' bf16/fp16 (an FP8 pool's rows are exact in bf16, not in fp16)."""
    if interpreting() or q.dtype == torch.float32:
        return torch.float32
    for kv in pools:
        if isinstance(kv, torch.Tensor):
            if kv.dtype != q.dtype:
                return torch.float32
        elif q.dtype != torch.bfloat16:
            return torch.float32
    return q.dtype


def sparse_attention(
    q: torch.Tensor,
    kv,
    indices: torch.Tensor,
    topk_length: Optional[torch.Tensor],
    extra_kv,
    extra_indices: Optional[torch.Tensor],
    extra_topk_length: Optional[torch.Tensor],
    attn_sink: Optional[torch.Tensor],
    softmax_scale: float,
    num_splits: Optional[int] = None,
    config: Optional[dict] = None,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Launch the kernels (canonical args of the op; ``num_splits`` / ``config`` override the
    heuristics, for tests and tuning)."""
    T, H, D = q.shape
    device = q.device
    out = torch.empty(T, H, D, dtype=q.dtype, device=device)
    lse = torch.empty(T, H, dtype=torch.float32, device=device)
    if T == 0:
        return out, lse
    has_extra = extra_indices is not None
    pools = [kv] + ([extra_kv] if has_extra else [])
    cdt = compute_dtype(q, pools)
    fp8 = any(not isinstance(p, torch.Tensor) for p in pools)
    cfg = dict(config) if config is not None else default_config(H, D, cdt, device, fp8)
    block_h, block_n = cfg["BLOCK_H"], cfg["BLOCK_N"]
    block_d0, block_d1 = head_dim_tiles(D)
    head_blocks = cdiv(H, block_h)

    K1 = indices.shape[1]
    K2 = extra_indices.shape[1] if extra_indices is not None else 0
    if num_splits is None:
        num_splits = choose_num_splits(T * head_blocks, K1 + K2, block_n, device,
                                       key_blocks=cdiv(K1, block_n) + cdiv(K2, block_n), block_h=block_h,
                                       head_dim=D)  # fmt: skip
    num_splits = max(1, min(int(num_splits), MAX_SPLITS))

    s1 = _stream_args(kv, device)
    i1 = _index_args(indices, device)
    if extra_indices is not None:
        s2 = _stream_args(extra_kv, device)
        i2 = _index_args(extra_indices, device)
    else:
        s2, i2 = s1, i1
    unused = dummy(device)  # pointers the kernel never dereferences (HAS_LEN / HAS_SINK / SPLIT off)
    s1 = (s1[0], s1[1] if s1[1] is not None else s1[0]) + s1[2:]
    s2 = (s2[0], s2[1] if s2[1] is not None else s2[0]) + s2[2:]

    split = num_splits > 1
    if split:
        ws_out = torch.empty(num_splits, T, H, D, dtype=torch.float32, device=device)
        ws_lse = torch.empty(num_splits, T, H, dtype=torch.float32, device=device)
    else:
        ws_out = ws_lse = unused
    sink = attn_sink.contiguous() if attn_sink is not None else unused
    # [T] / [H] vectors are read with unit stride
    topk_length = topk_length.contiguous() if topk_length is not None else None
    extra_topk_length = extra_topk_length.contiguous() if extra_topk_length is not None else None
    prec = "ieee" if cdt == torch.float32 else None

    grid = (T, head_blocks, num_splits)
    _sparse_attn_fwd_kernel[grid](
        q, *q.stride(),
        s1[0], s1[1], s1[2], s1[3], s1[4], s1[5], s1[6],
        i1[0], i1[1], i1[2], K1, topk_length if topk_length is not None else unused,
        s2[0], s2[1], s2[2], s2[3], s2[4], s2[5], s2[6],
        i2[0], i2[1], i2[2], K2, extra_topk_length if extra_topk_length is not None else unused,
        sink,
        out, *out.stride(),
        lse, *lse.stride(),
        ws_out, ws_lse,
        T, H, D, float(softmax_scale) * _LOG2E_HOST,
        HAS_LEN=topk_length is not None,
        HAS_EXTRA=has_extra,
        HAS_ELEN=has_extra and extra_topk_length is not None,
        HAS_SINK=attn_sink is not None,
        KV_FP8=s1[7],
        EKV_FP8=has_extra and s2[7],
        SPLIT=split,
        BLOCK_H=block_h,
        BLOCK_N=block_n,
        BLOCK_D0=block_d0,
        BLOCK_D1=max(block_d1, MIN_DOT),
        HAS_TAIL=block_d1 > 0,
        CDT=TL_DTYPE[cdt],
        DOT_PREC=prec,
        num_warps=cfg.get("num_warps", 4),
        num_stages=cfg.get("num_stages", 1),
    )  # fmt: skip
    if split:
        block_s, combine_d = combine_tiles(num_splits, D)
        _combine_splits_kernel[(T, H, cdiv(D, combine_d))](
            ws_out, ws_lse, sink,
            out, *out.stride(),
            lse, *lse.stride(),
            T, H, D, num_splits,
            HAS_SINK=attn_sink is not None,
            BLOCK_S=block_s,
            BLOCK_D=combine_d,
            num_warps=4,
        )  # fmt: skip
    return out, lse


def run(inp):
    """The op's prepared inputs (``SparseAttentionInputs``) -> (out, lse), with the default tiles."""
    return sparse_attention(inp.q, inp.kv, inp.indices, inp.topk_length, inp.extra_kv, inp.extra_indices,
                            inp.extra_topk_length, inp.attn_sink, inp.softmax_scale)  # fmt: skip
