"""Triton kernel for ``compress_kv``: the stateful, paged KV compressor in ONE launch per step
(see README.md, section "Triton kernel").

Grid: one program per token of the batch (``T`` programs). Tokens of one sequence form a *run*
(consecutive tokens with the same ``token_rows``; positions ``cs .. ce``). Program ``t``:

1. **own emission**: if its token emits (``(p + 1) % ratio == 0``) and its whole window
   ``p - ring + 1 .. p`` (``ring = c * ratio``) lies in its run (token ``t - ring + 1`` has the same
   row), it pools that window from the batch rows ``a, b`` only;
2. **head work** (only the program of the first token of a run, ``t = run start``): it finds the run
   end ``te`` (a ``BLOCK_K``-ary search over ``token_rows``: one vector load per round, ~log_64 T
   rounds), pools the run's *head* emissions (emitting tokens ``u`` with ``u - t <= ring - 2``: at
   most ``c`` of them, the only ones whose window starts before the run and reads the state ring),
   then, after a CTA barrier, writes the ring: the rows ``a_u | b_u`` (fp32) of the last ``ring``
   tokens of the run (``p_u > ce - ring``) to ring slot ``p_u % ring``.

Why the ring update cannot race with the reads of the old ring (proof):
- The ring of a sequence is read only by emissions whose window reaches before the run start
  (``p - ring + 1 < cs``, i.e. ``u - t <= ring - 2``): exactly the head emissions, and they are all
  computed by the head program. Own emissions (step 1) read ``a`` / ``b`` only (their whole window
  is in the batch), never ``state``.
- The ring of a sequence is written only by the head program of its run, after its head emissions:
  their loads have completed (the pooled entries were computed and stored from them) and
  ``tl.debug_barrier()`` (``bar.sync``: memory accesses before it are performed relative to all
  threads of the CTA) orders them before any thread of the CTA stores into the ring.
- Different sequences use different ring pages (as every paged cache assumes), so no other program
  touches this ring. Hence every read of the ring sees the state from before the step, as the
  reference (which pools every emission before it updates the ring).
Runs are defined exactly as in the reference (maximal stretches of equal ``token_rows``; a row must
not appear in two separate stretches of one batch, nor two rows share ring pages).

Pooling: per emission, an online softmax over the ``ring`` slots in tiles of ``BLOCK_S`` slots x
``BLOCK_D`` (= next power of two >= d) channels, fp32 (slot ``i`` of an overlapping window reads
channel half A for ``i < ratio``, half B after; positions < 0 and ring pages outside the pool are
absent: never read, score -inf, value 0; a channel whose slots all score -inf pools to 0, a NaN /
+inf score or a NaN value makes it NaN, IEEE as the reference). Then RMSNorm (fp32, correctly
rounded ``sqrt_rn`` / ``div_rn``), interleaved RoPE on the last ``2 R`` dims at position
``j * ratio`` (angle = fp32(pos) * inv_freq rounded to fp32, as ``longattn.rope``; ``tl.cos`` /
``tl.sin`` are libdevice ``cosf`` / ``sinf`` on GPUs, <= 2 ulp with full range reduction, numpy's under
the interpreter, vs torch's <= 1 ulp: the rotated values differ by <= ~3 ulp of the pair's norm),
the cast to the pool dtype (round to nearest even, on the bits) or the FP8 record
(``triton_append._store_fp8_record``, bit-identical to ``quantize_rows`` for a given fp32 entry) or
the FP8 index-key record (``_store_index_record``, bit-identical to ``Fp8IndexKeyPool.write_rows``), and
the write to ``out_block_table[row, j // page] * page + j % page`` (pages outside the pool: skipped).

Differences from the reference: summation order (online softmax over slot tiles, tree reductions),
``tl.exp`` (``ex2.approx`` on GPUs: ~2 ulp) and cos/sin ulps; a few fp32 ulps in total
(tests/ops/test_compress.py bounds them).
"""

from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from ..._env import positive_ints
from ...cache import fp8, fp8_index
from ...cache.fp8_index import Fp8IndexKeyPool
from ..append.triton_append import (
    _F32_ABS,
    _F32_MANT,
    _bf16_bits,
    _e4m3_bits,
    _store_fp8_record,
    _to_f32,
)
from ..triton_utils import and_flag, cdiv, dummy, interpreting, next_power_of_2

_NEG_INF = tl.constexpr(float("-inf"))
_FP8_DATA_BYTES = tl.constexpr(fp8.DATA_BYTES)
_FP8_SCALE_BYTES = tl.constexpr(fp8.SCALE_BYTES)

_INDEX_AMAX_FLOOR = tl.constexpr(fp8_index.AMAX_FLOOR)
_INDEX_E4M3_MAX = tl.constexpr(fp8_index.E4M3_MAX)

# OUT_FP8: the KV record (Fp8KVPool); OUT_FP8_INDEX(_PLAIN): the index-key record (Fp8IndexKeyPool,
# power-of-two scales / plain scales)
OUT_F32, OUT_BF16, OUT_F16, OUT_FP8, OUT_FP8_INDEX, OUT_FP8_INDEX_PLAIN = 0, 1, 2, 3, 4, 5
_OUT_KIND = {torch.float32: OUT_F32, torch.bfloat16: OUT_BF16, torch.float16: OUT_F16}

SEARCH_PROBES = 64  # BLOCK_K of the run-end search


@triton.jit
def _pool_init(BLOCK: tl.constexpr):
    """Running max (-inf), denominator and numerator (0) of a [BLOCK]-channel online softmax."""
    return tl.full([BLOCK], _NEG_INF, tl.float32), tl.zeros([BLOCK], tl.float32), tl.zeros([BLOCK], tl.float32)


@triton.jit
def _slot_half(o_s, RATIO: tl.constexpr, C: tl.constexpr, d):
    """[BLOCK_S] column offset of window slots ``o_s``: with overlap (C = 2) the first RATIO slots (the
    previous block) read channel half A (offset 0), the rest half B (offset d); else 0."""
    if C == 2:
        return tl.where(o_s >= RATIO, d, 0)
    else:
        return o_s * 0


@triton.jit
def _pool_step(b_s, b_v, b_m, b_l, b_acc):
    """One tile of the per-channel online softmax over the slot axis: scores / values [BLOCK_S, C]
    (absent slots: score -inf, value 0) into the running max / denominator / numerator [C]. A NaN
    score makes the denominator NaN whether or not the max dropped it (``tl.maximum`` ignores NaN on
    GPUs, propagates it in the interpreter); a +inf score makes it exp(inf - inf) = NaN."""
    b_m_new = tl.maximum(b_m, tl.max(b_s, axis=0))
    b_m_safe = tl.where(b_m_new == _NEG_INF, 0.0, b_m_new)  # no slot yet: keep exp finite
    b_alpha = tl.exp(b_m - b_m_safe)
    b_p = tl.exp(b_s - b_m_safe[None, :])
    b_l = b_l * b_alpha + tl.sum(b_p, axis=0)
    b_acc = b_acc * b_alpha + tl.sum(b_p * b_v, axis=0)
    return b_m_new, b_l, b_acc


@triton.jit
def _pool_result(b_l, b_acc, m_k):
    """numerator / denominator, IEEE (a NaN or +inf score, or a NaN value, leaves a NaN denominator
    or numerator: the channel is NaN); 0 for a channel whose slots all score -inf (absent slots
    included), i.e. a denominator of exactly 0, and outside ``m_k``. Never ``l > 0``: that is false
    for a NaN denominator too."""
    m_empty = b_l == 0.0
    return tl.where(m_k & ~m_empty, tl.div_rn(b_acc, tl.where(m_empty, 1.0, b_l)), 0.0)


@triton.jit
def _run_end(p_rows, stride_rows, t, row_t, T, BLOCK_K: tl.constexpr):
    """Index of the last token of the run starting at token ``t`` (tokens ``t .. te`` have row
    ``row_t``, token ``te + 1`` does not or is past ``T``). Membership is a prefix of ``[t, T)``, so a
    BLOCK_K-ary search: each round probes BLOCK_K evenly spaced tokens of ``(lo, hi)`` with one
    vector load and keeps the gap after the last probe inside the run."""
    lo = t
    hi = t * 0 + T
    while hi - lo > 1:
        step = (hi - lo + BLOCK_K - 1) // BLOCK_K
        o_v = lo + (1 + tl.arange(0, BLOCK_K)).to(tl.int64) * step
        m_v = o_v < hi
        b_r = tl.load(p_rows + o_v * stride_rows, mask=m_v, other=0).to(tl.int64)
        n_in = tl.sum((m_v & (b_r == row_t)).to(tl.int64), axis=0)
        hi = tl.minimum(hi, lo + (n_in + 1) * step)
        lo = lo + n_in * step
    return lo


@triton.jit
def _store_index_record(y, m_k, p_u8, page_off, page, i_off, D: tl.constexpr, UE8M0: tl.constexpr, ok):
    """Quantise entry ``y`` [BLOCK_D] fp32 (``m_k``: its D channels) into the FP8 index-key record of
    ``longattn.cache.fp8_index`` (byte-identical to ``Fp8IndexKeyPool.write_rows``): D e4m3 bytes at
    ``page_off + i_off * D``, the fp32 scale (as 4 little-endian bytes) at ``page_off + page * D + 4 *
    i_off``. amax = the integer max of the |y| bit patterns of the finite channels (the float order
    for non-negative values); scale = div_rn(max(amax, 1e-4), 448), with UE8M0 rounded up to a power of
    two on the bits (a normal fp32: a non-zero mantissa bumps the exponent); byte = e4m3(clamp(div_rn(y,
    scale))) with y's sign (a NaN keeps its sign bit). Nothing is written unless ``ok``."""
    b_abs = y.to(tl.int32, bitcast=True) & _F32_ABS
    b_fin = m_k & ((b_abs >> 23) != 255)
    b_amax = tl.max(tl.where(b_fin, b_abs, 0), axis=0).to(tl.float32, bitcast=True)
    b_scale = tl.div_rn(tl.maximum(b_amax, _INDEX_AMAX_FLOOR), _INDEX_E4M3_MAX)
    if UE8M0:
        b_sb = b_scale.to(tl.int32, bitcast=True)
        b_sb = tl.where((b_sb & _F32_MANT) != 0, ((b_sb >> 23) + 1) << 23, b_sb)
        b_scale = b_sb.to(tl.float32, bitcast=True)
    b_code = (_e4m3_bits(tl.div_rn(y, b_scale)) & 0x7F) | ((y.to(tl.int32, bitcast=True) >> 24) & 0x80)
    o_k = tl.arange(0, y.shape[0])
    tl.store(p_u8 + page_off + i_off * D + o_k, b_code.to(tl.uint8), mask=and_flag(m_k, ok))
    o_b = tl.arange(0, 4)
    b_bytes = (b_scale.to(tl.int32, bitcast=True) >> (8 * o_b)) & 0xFF
    tl.store(p_u8 + page_off + page * D + 4 * i_off + o_b, b_bytes.to(tl.uint8), mask=and_flag(o_b >= 0, ok))


@triton.jit
def _emit_entry(
    p_a,
    stride_at,
    stride_ac,
    p_b,
    stride_bt,
    stride_bc,
    p_state,
    s_pages,
    s_page,
    p_sbt,
    stride_sbt_r,
    stride_sbt_p,
    sbt_cols,
    row_s,
    row_s_ok,
    p_out,
    p_out16,
    out_pages,
    out_page,
    out_page_bytes,
    p_obt,
    stride_obt_r,
    stride_obt_p,
    obt_cols,
    row_o,
    row_o_ok,
    p_w,
    stride_w,
    p_freq,
    stride_f,
    eps,
    u_e,
    p_e,
    cs,
    RATIO: tl.constexpr,
    C: tl.constexpr,
    D: tl.constexpr,
    R: tl.constexpr,
    OUT_KIND: tl.constexpr,
    BLOCK_S: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """Entry j = p_e // RATIO of the token ``u_e`` at position ``p_e``: positions q >= cs come from
    the batch (token u_e - (p_e - q)), earlier ones from the ring; pooled, normed, rotated, written."""
    RING: tl.constexpr = C * RATIO
    W: tl.constexpr = C * D
    o_k = tl.arange(0, BLOCK_D)
    m_k = o_k < D
    b_m, b_l, b_acc = _pool_init(BLOCK_D)  # [BLOCK_D] per-channel online softmax state
    for s0 in range(0, RING, BLOCK_S):
        o_s = s0 + tl.arange(0, BLOCK_S)
        m_s = o_s < RING
        # [BLOCK_S] source positions of the slots, and where they live
        o_q = p_e - (RING - 1) + o_s
        m_bat = m_s & (o_q >= 0) & (o_q >= cs)
        m_old = and_flag(m_s & (o_q >= 0) & (o_q < cs), row_s_ok)
        i_rs = tl.where(m_old, o_q, 0) % RING  # ring slot
        i_lp = i_rs // s_page
        m_old = m_old & (i_lp < sbt_cols)
        b_pg = tl.load(p_sbt + row_s * stride_sbt_r + i_lp * stride_sbt_p, mask=m_old, other=-1).to(tl.int64)
        m_old = m_old & (b_pg >= 0) & (b_pg < s_pages)
        i_srow = tl.where(m_old, b_pg * s_page + i_rs % s_page, 0)
        i_tok = tl.where(m_bat, u_e - (p_e - o_q), 0)
        o_col = _slot_half(o_s, RATIO, C, D)[:, None] + o_k[None, :]
        m_b2 = m_bat[:, None] & m_k[None, :]
        m_o2 = m_old[:, None] & m_k[None, :]
        # [BLOCK_S, BLOCK_D] scores and values (batch rows or ring rows a | b)
        b_sb = _to_f32(tl.load(p_b + i_tok[:, None] * stride_bt + o_col * stride_bc, mask=m_b2, other=0.0))
        b_va = _to_f32(tl.load(p_a + i_tok[:, None] * stride_at + o_col * stride_ac, mask=m_b2, other=0.0))
        p_srow = p_state + i_srow[:, None] * (2 * W) + o_col
        b_sr = tl.load(p_srow + W, mask=m_o2, other=0.0)
        b_vr = tl.load(p_srow, mask=m_o2, other=0.0)
        b_s = tl.where(m_b2, b_sb, tl.where(m_o2, b_sr, _NEG_INF))
        b_v = tl.where(m_b2, b_va, tl.where(m_o2, b_vr, 0.0))
        b_m, b_l, b_acc = _pool_step(b_s, b_v, b_m, b_l, b_acc)  # online softmax over the slot axis
    b_x = _pool_result(b_l, b_acc, m_k)
    # RMSNorm (fp32): x * (1 / sqrt(mean(x^2) + eps)) * w
    b_ms = tl.div_rn(tl.sum(b_x * b_x, axis=0), D * 1.0)
    b_inv = tl.div_rn(1.0, tl.sqrt_rn(b_ms + eps))
    b_w = _to_f32(tl.load(p_w + o_k * stride_w, mask=m_k, other=0.0))
    b_y = b_x * b_inv * b_w
    j = p_e // RATIO
    if R > 0:
        # interleaved pairs (2i, 2i+1) of the last 2R dims; D is even (the backend declines odd D)
        b_y2 = tl.reshape(b_y, [BLOCK_D // 2, 2])
        b_ye, b_yo = tl.split(b_y2)
        o_i = tl.arange(0, BLOCK_D // 2) - (D // 2 - R)
        m_r = (o_i >= 0) & (o_i < R)
        b_f = _to_f32(tl.load(p_freq + tl.where(m_r, o_i, 0) * stride_f, mask=m_r, other=0.0))
        b_ang = (j * RATIO).to(tl.float32) * b_f
        b_cos = tl.cos(b_ang)
        b_sin = tl.sin(b_ang)
        b_re = tl.where(m_r, b_ye * b_cos - b_yo * b_sin, b_ye)
        b_ro = tl.where(m_r, b_ye * b_sin + b_yo * b_cos, b_yo)
        b_y = tl.reshape(tl.join(b_re, b_ro), [BLOCK_D])
    # the write of entry j (pages outside the pool: skipped)
    i_lp = j // out_page
    ok = row_o_ok & (i_lp < obt_cols)
    b_opg = tl.load(p_obt + row_o * stride_obt_r + tl.where(ok, i_lp, 0) * stride_obt_p, mask=ok, other=-1)
    b_opg = b_opg.to(tl.int64)
    ok = ok & (b_opg >= 0) & (b_opg < out_pages)
    b_opg = tl.where(ok, b_opg, 0)
    i_off = j % out_page
    if OUT_KIND == 3:
        o_data = b_opg * out_page_bytes + i_off * _FP8_DATA_BYTES
        o_scale = b_opg * out_page_bytes + out_page * _FP8_DATA_BYTES + i_off * _FP8_SCALE_BYTES
        _store_fp8_record(tl.reshape(b_y, [8, 64]), p_out, p_out16, o_data, o_scale, ok)
    elif OUT_KIND >= 4:
        _store_index_record(b_y, m_k, p_out, b_opg * out_page_bytes, out_page, i_off, D, OUT_KIND == 4, ok)
    else:
        p_o = (b_opg * out_page + i_off) * D + o_k
        if OUT_KIND == 1:
            tl.store(p_out16 + p_o, _bf16_bits(b_y).to(tl.int16), mask=and_flag(m_k, ok))
        elif OUT_KIND == 2:
            tl.store(p_out + p_o, b_y.to(tl.float16), mask=and_flag(m_k, ok))
        else:
            tl.store(p_out + p_o, b_y, mask=and_flag(m_k, ok))


@triton.jit(do_not_specialize=["T", "s_pages", "sbt_rows", "out_pages", "obt_rows"])
def _compress_kv_kernel(
    p_a,
    stride_at,
    stride_ac,
    p_b,
    stride_bt,
    stride_bc,
    p_pos,
    stride_pos,
    p_rows,
    stride_rows,
    T,
    p_state,
    s_pages,
    s_page,
    p_sbt,
    stride_sbt_r,
    stride_sbt_p,
    sbt_rows,
    sbt_cols,
    p_out,
    p_out16,
    out_pages,
    out_page,
    out_page_bytes,
    p_obt,
    stride_obt_r,
    stride_obt_p,
    obt_rows,
    obt_cols,
    p_w,
    stride_w,
    p_freq,
    stride_f,
    eps,
    RATIO: tl.constexpr,
    C: tl.constexpr,
    D: tl.constexpr,
    R: tl.constexpr,
    OUT_KIND: tl.constexpr,
    BLOCK_S: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_RW: tl.constexpr,
    BLOCK_W: tl.constexpr,
):
    RING: tl.constexpr = C * RATIO
    W: tl.constexpr = C * D
    t = tl.program_id(0).to(tl.int64)
    p_t = tl.load(p_pos + t * stride_pos).to(tl.int64)
    row_t = tl.load(p_rows + t * stride_rows).to(tl.int64)
    row_prev = tl.load(p_rows + tl.maximum(t - 1, 0) * stride_rows).to(tl.int64)
    is_head = (t == 0) | (row_prev != row_t)
    row_s_ok = (row_t >= 0) & (row_t < sbt_rows)
    row_o_ok = (row_t >= 0) & (row_t < obt_rows)
    row_s = tl.where(row_s_ok, row_t, 0)
    row_o = tl.where(row_o_ok, row_t, 0)

    # own emission: the whole window p-RING+1 .. p is in this run (token t-RING+1 has this row)
    u_first = t - (RING - 1)
    row_first = tl.load(p_rows + tl.maximum(u_first, 0) * stride_rows).to(tl.int64)
    own = (p_t >= 0) & ((p_t + 1) % RATIO == 0) & (u_first >= 0) & (row_first == row_t)

    te = t
    if is_head:
        te = _run_end(p_rows, stride_rows, t, row_t, T, BLOCK_K)
    ce = tl.load(p_pos + te * stride_pos).to(tl.int64)
    # first emitting token of the run: t + off0, at the first position >= max(p_t, 0) with
    # (p + 1) % RATIO == 0 (negative positions never emit): RATIO - 1 - p % RATIO for p >= 0, RATIO - 1 - p
    # below; min(p, p % RATIO) is both (p % RATIO <= p when p >= 0; > p when p < 0, whether % truncates
    # as on GPUs or floors as in the interpreter). p_t is clamped at -RING: any earlier start puts every
    # emission past the head's reach (u - t > RING - 2), and -p_t cannot overflow.
    p_c = tl.maximum(p_t, -RING)
    off0 = (RATIO - 1) - tl.minimum(p_c, p_c % RATIO)

    # job 0: own emission; jobs 1..C: head emissions (tokens t + off0 + (k-1)*RATIO, within RING-2)
    for k in range(0, C + 1):
        u = tl.where(k == 0, t, t + off0 + (k - 1) * RATIO)
        m_u = u <= te
        p_u = tl.load(p_pos + tl.where(m_u, u, t) * stride_pos).to(tl.int64)
        head_job = is_head & m_u & (u - t <= RING - 2) & (p_u >= 0) & ((p_u + 1) % RATIO == 0)
        active = tl.where(k == 0, own, head_job)
        cs = tl.where(k == 0, p_t - (RING - 1), p_t)
        if active:
            _emit_entry(
                p_a, stride_at, stride_ac, p_b, stride_bt, stride_bc,
                p_state, s_pages, s_page, p_sbt, stride_sbt_r, stride_sbt_p, sbt_cols, row_s, row_s_ok,
                p_out, p_out16, out_pages, out_page, out_page_bytes,
                p_obt, stride_obt_r, stride_obt_p, obt_cols, row_o, row_o_ok,
                p_w, stride_w, p_freq, stride_f, eps,
                u, p_u, cs,
                RATIO, C, D, R, OUT_KIND, BLOCK_S, BLOCK_D,
            )  # fmt: skip

    if is_head:
        # every read of this ring (the head emissions above) happened before this barrier
        tl.debug_barrier()
        w0 = tl.maximum(t, te - (RING - 1))
        for r0 in range(0, RING, BLOCK_RW):
            o_u = w0 + r0 + tl.arange(0, BLOCK_RW)
            m_u = and_flag(o_u <= te, row_s_ok)
            b_pu = tl.load(p_pos + o_u * stride_pos, mask=m_u, other=0).to(tl.int64)
            m_u = m_u & (b_pu > ce - RING)
            i_rs = ((b_pu % RING) + RING) % RING  # floor mod, as torch's
            i_lp = i_rs // s_page
            m_u = m_u & (i_lp < sbt_cols)
            b_pg = tl.load(p_sbt + row_s * stride_sbt_r + i_lp * stride_sbt_p, mask=m_u, other=-1).to(tl.int64)
            m_u = m_u & (b_pg >= 0) & (b_pg < s_pages)
            i_srow = tl.where(m_u, b_pg * s_page + i_rs % s_page, 0)
            i_tok = tl.where(m_u, o_u, 0)
            for c0 in range(0, W, BLOCK_W):
                o_c = c0 + tl.arange(0, BLOCK_W)
                m = m_u[:, None] & (o_c < W)[None, :]
                b_xa = _to_f32(tl.load(p_a + i_tok[:, None] * stride_at + o_c[None, :] * stride_ac, mask=m, other=0.0))
                b_xb = _to_f32(tl.load(p_b + i_tok[:, None] * stride_bt + o_c[None, :] * stride_bc, mask=m, other=0.0))
                p_srow = p_state + i_srow[:, None] * (2 * W) + o_c[None, :]
                tl.store(p_srow, b_xa, mask=m)
                tl.store(p_srow + W, b_xb, mask=m)


@triton.jit
def _compress_pool_kernel(
    p_a, stride_at, stride_ac, p_b, stride_bt, stride_bc, p_out, stride_oe, stride_od, d,
    RATIO: tl.constexpr, C: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_C: tl.constexpr,
):  # fmt: skip
    """``compress_pool``: program (e, channel tile) pools entry e over its C * RATIO slots. Slot i of
    an overlapping entry is token (e - 1) * RATIO + i, half A, for i < RATIO, else token
    e * RATIO + i - RATIO, half B (block -1 is absent); without overlap token e * RATIO + i."""
    RING: tl.constexpr = C * RATIO
    i_e = tl.program_id(0).to(tl.int64)
    o_k = tl.program_id(1).to(tl.int64) * BLOCK_C + tl.arange(0, BLOCK_C)
    m_k = o_k < d
    b_m, b_l, b_acc = _pool_init(BLOCK_C)
    for s0 in range(0, RING, BLOCK_S):
        o_s = s0 + tl.arange(0, BLOCK_S)
        o_t = (i_e - (C - 1)) * RATIO + o_s  # [BLOCK_S] tokens of the slots
        m_s = (o_s < RING) & (o_t >= 0)
        o_col = _slot_half(o_s, RATIO, C, d)[:, None] + o_k[None, :]
        m_2 = m_s[:, None] & m_k[None, :]
        o_t = tl.where(m_s, o_t, 0)
        b_s = _to_f32(tl.load(p_b + o_t[:, None] * stride_bt + o_col * stride_bc, mask=m_2, other=0.0))
        b_v = _to_f32(tl.load(p_a + o_t[:, None] * stride_at + o_col * stride_ac, mask=m_2, other=0.0))
        b_s = tl.where(m_2, b_s, _NEG_INF)  # absent slots
        b_m, b_l, b_acc = _pool_step(b_s, b_v, b_m, b_l, b_acc)
    tl.store(p_out + i_e * stride_oe + o_k * stride_od, _pool_result(b_l, b_acc, m_k), mask=m_k)


# ---------------------------------------------------------------------------------------------------
# launchers
# ---------------------------------------------------------------------------------------------------
def pool_config(d: int, ratio: int, c: int, device: torch.device) -> dict:
    """compress_pool tiles: BLOCK_C channels per program (coalesced along a row), BLOCK_S slots per
    step (a [BLOCK_S, BLOCK_C] tile of ~2K values on a GPU)."""
    block_c = min(128, max(16, next_power_of_2(d)))
    budget = 1024 if device.type != "cuda" or interpreting() else 2048
    block_s = max(1, min(next_power_of_2(c * ratio), budget // block_c))
    return dict(BLOCK_S=block_s, BLOCK_C=block_c, num_warps=4)


def compress_pool(a, b, ratio, overlap, config: Optional[dict] = None):
    """[S // ratio, d] fp32 entries (canonical args of the op; ``config`` overrides tiles, for tests)."""
    S, width = a.shape
    c = 2 if overlap else 1
    d = width // c
    n = S // ratio
    out = torch.empty(n, d, dtype=torch.float32, device=a.device)
    if n == 0 or d == 0:
        return out
    cfg = pool_config(d, ratio, c, a.device)
    if config:
        cfg.update(config)
    grid = (n, cdiv(d, cfg["BLOCK_C"]))
    _compress_pool_kernel[grid](
        a, a.stride(0), a.stride(1), b, b.stride(0), b.stride(1), out, out.stride(0), out.stride(1), d,
        RATIO=int(ratio), C=c, BLOCK_S=cfg["BLOCK_S"], BLOCK_C=cfg["BLOCK_C"], num_warps=cfg["num_warps"],
    )  # fmt: skip
    return out


def default_config(d: int, ratio: int, c: int, device: torch.device) -> dict:
    """Tiles: BLOCK_D covers d; BLOCK_S slots per step keep a [BLOCK_S, BLOCK_D] tile at ~4K values
    on a GPU (8 slots at d = 512, 32 at d = 128). The ring write copies [BLOCK_RW, BLOCK_W] tiles.
    ``LONGATTN_TRITON_COMPRESS_CFG`` = "BLOCK_S,num_warps" overrides (tuning)."""
    ring = c * ratio
    block_d = max(2, next_power_of_2(d))
    width = c * d
    block_w = min(1024, next_power_of_2(width))
    interp = device.type != "cuda" or interpreting()
    budget = 2048 if interp else 4096
    cfg = dict(
        BLOCK_S=max(1, min(next_power_of_2(ring), budget // block_d)),
        BLOCK_RW=max(1, min(next_power_of_2(ring), 4096 // block_w)),
        BLOCK_W=block_w,
        BLOCK_K=SEARCH_PROBES,
        num_warps=8 if block_d >= 512 else 4,
    )
    env = positive_ints("LONGATTN_TRITON_COMPRESS_CFG", "BLOCK_S,num_warps")
    if env:
        bs, nw = env
        cfg.update(BLOCK_S=bs, num_warps=nw)
    return cfg


def _or_dummy(x: torch.Tensor, dtype, device) -> torch.Tensor:
    return x if x.numel() > 0 else dummy(device, dtype)


def compress_kv(
    a,
    b,
    positions,
    token_rows,
    ratio,
    overlap,
    state,
    state_block_table,
    out,
    out_block_table,
    norm_weight,
    eps,
    rope_inv_freq,
    config: Optional[dict] = None,
):
    """Launch the kernel (canonical args of the op; ``config`` overrides the tiles, for tests)."""
    T, width = a.shape
    if T == 0:
        return
    device = a.device
    c = 2 if overlap else 1
    d = width // c
    cfg = default_config(d, ratio, c, device)
    if config:
        cfg.update(config)
    s_pages, s_page = state.shape[0], max(1, state.shape[1])
    if state.numel() == 0:
        s_pages = 0
    p_state = _or_dummy(state, torch.float32, device)
    sbt = _or_dummy(state_block_table, torch.int32, device)
    obt = _or_dummy(out_block_table, torch.int32, device)
    if isinstance(out, torch.Tensor):
        kind = _OUT_KIND[out.dtype]
        out_pages, out_page, out_page_bytes = out.shape[0], max(1, out.shape[1]), 0
        if out.numel() == 0:
            out_pages = 0
        p_out = _or_dummy(out, out.dtype, device)
        p_out16 = p_out.view(torch.int16) if out.dtype == torch.bfloat16 else p_out
    else:
        kind = OUT_FP8
        if isinstance(out, Fp8IndexKeyPool):
            kind = OUT_FP8_INDEX if out.ue8m0 else OUT_FP8_INDEX_PLAIN
        data = out.data
        out_pages, out_page, out_page_bytes = data.shape[0], int(out.page_size), int(out.page_bytes)
        if data.numel() == 0:
            out_pages = 0
        p_out = _or_dummy(data, torch.uint8, device)
        p_out16 = p_out.view(-1).view(torch.int16) if data.numel() > 0 else dummy(device, torch.int16)
    R = rope_inv_freq.shape[0]
    freq = _or_dummy(rope_inv_freq, torch.float32, device)
    _compress_kv_kernel[(T,)](
        a, a.stride(0), a.stride(1), b, b.stride(0), b.stride(1),
        positions, positions.stride(0), token_rows, token_rows.stride(0), T,
        p_state, s_pages, s_page,
        sbt, sbt.stride(0), sbt.stride(1), state_block_table.shape[0], state_block_table.shape[1],
        p_out, p_out16, out_pages, out_page, out_page_bytes,
        obt, obt.stride(0), obt.stride(1), out_block_table.shape[0], out_block_table.shape[1],
        norm_weight, norm_weight.stride(0), freq, freq.stride(0), float(eps),
        RATIO=int(ratio), C=c, D=d, R=R, OUT_KIND=kind,
        BLOCK_S=cfg["BLOCK_S"], BLOCK_D=max(2, next_power_of_2(d)), BLOCK_K=cfg["BLOCK_K"],
        BLOCK_RW=cfg["BLOCK_RW"], BLOCK_W=cfg["BLOCK_W"],
        num_warps=cfg["num_warps"], num_stages=1,
    )  # fmt: skip


def run_pool(inp):
    """``PoolInputs`` -> entries [S // ratio, d] fp32, with the default tiles."""
    return compress_pool(inp.a, inp.b, inp.ratio, inp.overlap)


def run_compress_kv(inp) -> None:
    """``CompressKVInputs``: writes the entries and the state, with the default tiles."""
    compress_kv(inp.a, inp.b, inp.positions, inp.token_rows, inp.ratio, inp.overlap, inp.state, inp.state_block_table,
                inp.out, inp.out_block_table, inp.norm_weight, inp.eps, inp.rope_inv_freq)  # fmt: skip
