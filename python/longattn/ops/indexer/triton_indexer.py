"""Triton kernels for the lightning indexer: ``indexer_logits`` and the fused ``indexer_topk``.

``indexer_topk`` never writes a score row: each program of ``_indexer_topk_partial_kernel`` scores a
range of entries of one query token, ``BLOCK_N`` entries per step (``Q K^T`` on the tensor cores,
relu, weighted sum over heads), packs every score with its entry id into an int64 sort key and keeps
the running top-``TOPK_P2`` keys of its range in registers. ``_indexer_topk_merge_kernel`` then
merges the per-range lists ``FANIN`` at a time (a tree of launches) and writes the indices.

Sort key (the reference's, so the order is identical): ``ordered(score) << 32 | (0xFFFFFFFF - id)``,
where ``ordered`` maps the fp32 bits to a signed int that is monotone in the float value (-0.0 is
first turned into +0.0); unusable entries (invisible, or no valid slot) get ``NO_KEY = INT64_MIN``.
Descending keys = score descending, then id ascending. A top-k of the union of disjoint ranges is the
top-k of the union of their top-k lists, so the result is exact.

Merging a chunk into the running list (both power-of-two sizes, the chunk padded with ``NO_KEY``):
``tl.topk(join(running, chunk), TOPK_P2)`` (a bitonic top-k) on GPUs. A chunk whose best key does not
beat the running list's worst key is skipped, which after the first ranks is the common case. Under
the interpreter the same merge is done by ranking (``_rank_merge``: [chunk, list] compare
matrices, vectorised in numpy, ~100x faster there than the bitonic network, which runs op by op in
Python; chunks are cut into pieces so that no matrix exceeds 2^18 elements, which makes top-k up to
2048 run there); both give the same exact result and the tests run the bitonic network on small
cases too.

Scores: relu keeps NaN (``_relu``; ``tl.maximum`` drops it on GPUs), padded heads add nothing, and
a NaN score of either sign ranks as +inf (ties by id), as in the reference.
"""

from __future__ import annotations

from typing import NamedTuple, Optional, Sequence, Tuple

import torch
import triton
import triton.language as tl

from ..._env import positive_ints
from ...cache.fp8_index import Fp8IndexKeyPool
from ..triton_utils import (
    AMD_TILES,
    TL_DTYPE,
    and_flag,
    cast_in,
    cdiv,
    dummy,
    e4m3_values,
    interpreting,
    next_power_of_2,
    tile_capability,
)
from ..triton_utils import num_sms as _num_sms

_NO_KEY = tl.constexpr(-(2**63))  # sort key of an entry that must never be selected
_SIGN_FLIP = tl.constexpr(0x7FFFFFFF)  # negative floats: flip magnitude bits -> monotone order
_HIGH = tl.constexpr(2**32)  # keys: ordered(score) * 2^32 + (2^32 - 1 - id); int64 arithmetic only
_NEG_INF = tl.constexpr(float("-inf"))
_POS_INF = tl.constexpr(float("inf"))
_RANK_NUMEL = tl.constexpr(1 << 18)  # largest compare matrix of the interpreter's rank merge
SELECT_STAGES = tl.constexpr(3)  # key blocks in flight per radix-select pass (2: ptxas spills on triton 3.7.1)

MIN_DOT = 16
FANIN = 8  # lists merged per program per merge level
WORKSPACE_BYTES = 256 << 20  # cap on the partial-list workspace (T x ranges x TOPK_P2 int64)


def compute_dtype(q: torch.Tensor, index_k) -> torch.dtype:
    """dtype of the dot operands: fp32 under the interpreter, for fp32 q or mixed dtypes; else q's. An FP8
    pool's e4m3 values are exact in bf16 and fp16, so they take q's 16-bit dtype."""
    if interpreting() or q.dtype == torch.float32:
        return torch.float32
    if isinstance(index_k, Fp8IndexKeyPool):
        return q.dtype
    return q.dtype if q.dtype == index_k.dtype else torch.float32


def default_config(Hi: int, Di: int, device: torch.device, capability: Optional[Tuple[int, int]] = None) -> dict:
    """Tile sizes (README.md). ``LONGATTN_TRITON_INDEXER_CFG`` = "BLOCK_N,num_warps,num_stages"
    overrides them for tuning. ``capability``: the GPU's (major, minor), queried from ``device`` when
    None (offline compiles pass it)."""
    block_hi = max(MIN_DOT, min(64, next_power_of_2(Hi)))
    block_di = max(MIN_DOT, min(128, next_power_of_2(Di)))
    env = positive_ints("LONGATTN_TRITON_INDEXER_CFG", "BLOCK_N,num_warps,num_stages")
    if env:
        bn, nw, ns = env
        return dict(BLOCK_HI=block_hi, BLOCK_DI=block_di, BLOCK_N=bn, num_warps=nw, num_stages=ns)
    if device.type != "cuda" or interpreting():
        return dict(BLOCK_HI=block_hi, BLOCK_DI=block_di, BLOCK_N=32, num_warps=4, num_stages=1)
    # sm_90 offline compiles: 64 heads x 128 dims x 32 entries with a running top-2048 list: 224
    # registers, no spills at 8 warps (64 entries or 4 warps spill). AMD (gfx942, offline compiles
    # only): 16 entries x 4 warps, 195 VGPRs, no VGPR spilled and no product computed twice (the
    # NVIDIA tiles there: 20 VGPRs spilled; 16 x 8 warps: the logits computed 4 times)
    if (capability or tile_capability(device)) == AMD_TILES:
        return dict(BLOCK_HI=block_hi, BLOCK_DI=block_di, BLOCK_N=16, num_warps=4, num_stages=2)
    return dict(BLOCK_HI=block_hi, BLOCK_DI=block_di, BLOCK_N=32, num_warps=8, num_stages=2)


# ---------------------------------------------------------------------------------------------------
# device helpers
# ---------------------------------------------------------------------------------------------------
@triton.jit
def _sequence_row(p_seq, i_t, num_seqs, p_bt, stride_bt_b, PAGED: tl.constexpr):
    """(block-table row of token ``i_t``'s sequence, whether that sequence id is valid); flat keys:
    (p_bt, True). An invalid id reads row 0 but masks every entry."""
    seq_ok = i_t >= 0
    p_bt_row = p_bt
    if PAGED:
        i_seq = tl.load(p_seq + i_t).to(tl.int64)
        seq_ok = (i_seq >= 0) & (i_seq < num_seqs)
        p_bt_row = p_bt + tl.where(seq_ok, i_seq, 0) * stride_bt_b
    return p_bt_row, seq_ok


@triton.jit
def _entry_rows(
    o_j,
    m_j,
    p_bt_row,
    stride_bt_p,
    seq_ok,
    page_size,
    num_pages,
    stride_kp,
    stride_ko,
    stride_kn,
    PAGED: tl.constexpr,
    KEY_FP8: tl.constexpr = False,
    K_ALIGN16: tl.constexpr = False,
    K_GROUP: tl.constexpr = 1,
    j0=0,
    BLOCK_PAGE: tl.constexpr = False,
):
    """(row offsets [BLOCK_N] int64, scale offsets [BLOCK_N] int64, whether each entry has a valid slot).

    FP8 keys (``KEY_FP8``, an ``Fp8IndexKeyPool``: ``stride_kp`` = page bytes, ``stride_ko`` = Di): the row
    offset is the byte of the entry's first e4m3 value, the scale offset the fp32 element of its scale
    (``page * stride_kp / 4 + page_size * Di / 4 + offset``); flat FP8 keys are slot j = entry j, in page
    j // page_size. The top-k kernel passes ``page_size`` as a compile-time constant (its PAGE_SIZE: one
    compile per page size in use), so there an entry's page / offset are a shift and a mask (a multiply
    for other sizes), not the emulated 64-bit divide and remainder (~25 integer instructions and a branch
    per value). ``K_ALIGN16``: every row starts 16-byte aligned (the launcher checked it; float keys:
    a multiple of ``K_GROUP`` elements, the 16-byte group). Float keys: the scale offsets are unused.
    ``BLOCK_PAGE`` (paged or FP8 keys; the launcher's promise that ``o_j`` is ``j0 + arange`` and lies in
    one page: page_size a multiple of the block, blocks aligned to it): the block's page is looked up
    once, a scalar, and the rows are that page's base plus the entries' offsets (the per-entry lookup,
    masks and 64-bit address arithmetic cost the V4 paged key kernel ~270 of its 720 SASS instructions
    per 64-entry step on sm_90)."""
    if BLOCK_PAGE and (PAGED or KEY_FP8):
        j0 = tl.zeros([], tl.int64) + j0  # int64 (the interpreter's loop counter is a Python int)
        i_page = j0 // page_size  # < the block table's width: the block holds a visible entry
        o_first = j0 % page_size
        if PAGED:
            b_page = tl.load(p_bt_row + i_page * stride_bt_p, mask=seq_ok, other=-1).to(tl.int64)
            page_ok = seq_ok & (b_page >= 0) & (b_page < num_pages)
            b_page = tl.where(page_ok, b_page, 0)
            m_row = and_flag(m_j, page_ok)
        else:
            b_page = i_page
            m_row = m_j
        b_off = o_first + (o_j - j0)  # [BLOCK_N], < page_size
        o_row = b_page * stride_kp + b_off * stride_ko
    elif PAGED:
        o_j64 = o_j.to(tl.int64)
        m_pg = and_flag(m_j, seq_ok)
        b_page = tl.load(p_bt_row + (o_j64 // page_size) * stride_bt_p, mask=m_pg, other=-1).to(tl.int64)
        m_row = m_pg & (b_page >= 0) & (b_page < num_pages)
        b_page = tl.where(m_row, b_page, 0)
        b_off = o_j64 % page_size
        o_row = b_page * stride_kp + b_off * stride_ko
    elif KEY_FP8:
        m_row = m_j
        o_j64 = tl.where(m_j, o_j, 0).to(tl.int64)
        b_page = o_j64 // page_size
        b_off = o_j64 % page_size
        o_row = b_page * stride_kp + b_off * stride_ko
    else:
        m_row = m_j
        o_row = tl.where(m_j, o_j, 0).to(tl.int64) * stride_kn
    if KEY_FP8:
        o_sc = b_page * (stride_kp // 4) + (page_size * stride_ko) // 4 + b_off  # (a scalar page with BLOCK_PAGE)
        if K_ALIGN16:
            o_row = tl.multiple_of(o_row, 16)
    else:
        o_sc = o_row
        if K_ALIGN16:
            o_row = tl.multiple_of(o_row, K_GROUP)
    return o_row, o_sc, m_row


@triton.jit
def _relu(x):
    """max(x, 0) with NaN kept (as torch.relu): ``tl.maximum`` would drop it on GPUs (maxnum)."""
    return tl.where(x < 0.0, 0.0, x)


@triton.jit
def _load_keys(
    p_k, o_row, m_row, o_d, Di, stride_kd, KEY_FP8: tl.constexpr, CDT: tl.constexpr, K_GROUP: tl.constexpr = 1
):
    """[BLOCK_N, BLOCK_DI] key values (CDT) of the rows ``o_row`` at dims ``o_d``; masked -> 0. FP8 keys:
    the e4m3 values (exact in bf16 / fp16 / fp32), not yet scaled; Di is a multiple of 16, so the dim
    mask is written per 16-byte group (the compiler keeps the loads 16 bytes wide). Float keys: with
    ``K_GROUP`` > 1 (the launcher's: the elements of 16 bytes, Di a multiple of it, unit dim stride)
    the mask is written per group of K_GROUP dims: constant across a group (chunks start at multiples
    of BLOCK_DI), so the compiler keeps the loads 16 bytes wide, and exact, as K_GROUP divides Di
    (d // G < Di // G <=> d < Di); K_GROUP = 1: the per-dim mask (any Di, any dim stride)."""
    if KEY_FP8:
        m_k = m_row[:, None] & ((o_d // 16) < (Di // 16))[None, :]
        b_raw = tl.load(p_k + o_row[:, None] + o_d[None, :], mask=m_k, other=0)
        return e4m3_values(b_raw, CDT)  # the NaN codes NaN, as the reference's
    else:
        m_k = m_row[:, None] & ((o_d // K_GROUP) < (Di // K_GROUP))[None, :]
        return cast_in(tl.load(p_k + o_row[:, None] + o_d[None, :] * stride_kd, mask=m_k, other=0.0), CDT)


@triton.jit
def _logits(b_q, b_k, DOT_PREC: tl.constexpr, ENTRIES_FIRST: tl.constexpr):
    """<q[h], k_j> of q [BLOCK_HI, BLOCK_DI] and keys [BLOCK_N, BLOCK_DI]: [BLOCK_N, BLOCK_HI] with
    ENTRIES_FIRST, else [BLOCK_HI, BLOCK_N] (fp32)."""
    if ENTRIES_FIRST:
        return tl.dot(b_k, tl.trans(b_q), input_precision=DOT_PREC)
    else:
        return tl.dot(b_q, tl.trans(b_k), input_precision=DOT_PREC)


@triton.jit
def _scaled(b_s, p_ks, o_sc, m_row, KEY_FP8: tl.constexpr, ENTRIES_FIRST: tl.constexpr):
    """Logits (``_logits``' layout) times each FP8 entry's fp32 scale (before the ReLU, so any scale,
    negative / NaN / inf included, gives the reference's result); float keys: unchanged."""
    if KEY_FP8:
        b_sc = tl.load(p_ks + o_sc, mask=m_row, other=0.0)  # [BLOCK_N] fp32
        if ENTRIES_FIRST:
            return b_s * b_sc[:, None]
        else:
            return b_s * b_sc[None, :]
    else:
        return b_s


@triton.jit
def _head_sum(b_s, b_w, m_h, ENTRIES_FIRST: tl.constexpr):
    """[BLOCK_N] sum_h w[h] * relu(logit) of scaled logits (``_logits``' layout); padded heads (m_h
    false) add nothing, not even 0 * NaN."""
    if ENTRIES_FIRST:
        return tl.sum(tl.where(m_h[None, :], b_w[None, :] * _relu(b_s), 0.0), 1)
    else:
        return tl.sum(tl.where(m_h[:, None], b_w[:, None] * _relu(b_s), 0.0), 0)


@triton.jit
def _head_mask(h0, Hi, BLOCK_HI: tl.constexpr, HEADS_FULL: tl.constexpr):
    """[BLOCK_HI] heads h0 + i that exist (< Hi); a constant true with HEADS_FULL, which the compiler
    folds out of every select it guards."""
    if HEADS_FULL:
        return tl.full([BLOCK_HI], 1, tl.int1)
    else:
        return (h0 + tl.arange(0, BLOCK_HI)) < Hi


@triton.jit
def _score_entries(
    b_q,
    b_w,
    p_q_t,
    stride_qh,
    stride_qd,
    p_w_t,
    stride_wh,
    p_k,
    p_ks,
    o_row,
    o_sc,
    m_row,
    stride_kd,
    Hi,
    Di,
    BLOCK_HI: tl.constexpr,
    BLOCK_DI: tl.constexpr,
    BLOCK_N: tl.constexpr,
    ONE_TILE: tl.constexpr,
    CDT: tl.constexpr,
    DOT_PREC: tl.constexpr,
    KEY_FP8: tl.constexpr,
    K_GROUP: tl.constexpr = 1,
    HEADS_FULL: tl.constexpr = False,
):
    """[BLOCK_N] fp32 scores sum_h w[h] * relu(<q[h], k_j>) of the rows ``o_row`` (masked rows: 0). FP8
    keys: sum_h w[h] * relu(scale_j * <q[h], e4m3 values of j>). Blocks of >= 64 entries (the select
    path's key kernel) take the logits as [entries, heads] (keys x q^T): on sm_90 the keys are wgmma's
    A operand (M = 64 rows per warp group), used from the registers they were converted in (FP8: no
    shared-memory round trip), and the head sum is a row sum (the [heads, entries] product cost 759
    SASS instructions per 64 FP8 entries at 8 warps, this one 628; 901 at 4 warps, one warp group, no
    cross-warp sum: ``select_config``). Narrower blocks (the fused and logits kernels' 32) keep heads
    as the rows, so BLOCK_HI = 64 is still wgmma's M; the tiled path (heads or dims over one tile)
    by the same rule. ``HEADS_FULL`` (the select and logits launchers': Hi a multiple of BLOCK_HI, as
    V4's 64 heads; the fused path keeps the mask: its merge dominates, 5,859 -> 5,846 SASS instructions
    per step on sm_90, and without the mask it spilled 12 B on sm_89 with triton 3.8.0): no
    padded head, so no head mask (a padded head's logit can be 0 x NaN, so the mask is needed
    otherwise). On sm_90 (triton 3.7.1) the mask cost the select path's key kernel a select per logit,
    the predicates of a thread's head columns parked in registers, and w x relu unfused from the row
    sum: per 64-entry step FP8 pool 690 -> 564 SASS instructions (167 -> 144 registers), bf16 pool
    519 -> 401 (117 -> 86), flat bf16 448 -> 334 (96 -> 63)."""
    ENTRIES_FIRST: tl.constexpr = BLOCK_N >= 64
    if ONE_TILE:
        # q [BLOCK_HI, BLOCK_DI] and w [BLOCK_HI] were loaded once per program
        o_d = tl.arange(0, BLOCK_DI)
        # [BLOCK_N, BLOCK_DI]
        b_k = _load_keys(p_k, o_row, m_row, o_d, Di, stride_kd, KEY_FP8, CDT, K_GROUP)
        b_s = _scaled(_logits(b_q, b_k, DOT_PREC, ENTRIES_FIRST), p_ks, o_sc, m_row, KEY_FP8, ENTRIES_FIRST)
        return _head_sum(b_s, b_w, _head_mask(0, Hi, BLOCK_HI, HEADS_FULL), ENTRIES_FIRST)
    else:
        b_score = tl.zeros([BLOCK_N], tl.float32)
        for h0 in range(0, Hi, BLOCK_HI):
            i_h = h0 + tl.arange(0, BLOCK_HI)
            m_h = _head_mask(h0, Hi, BLOCK_HI, HEADS_FULL)
            if ENTRIES_FIRST:
                b_s = tl.zeros([BLOCK_N, BLOCK_HI], tl.float32)
            else:
                b_s = tl.zeros([BLOCK_HI, BLOCK_N], tl.float32)
            for d0 in range(0, Di, BLOCK_DI):
                o_d = d0 + tl.arange(0, BLOCK_DI)
                m_d = (o_d // K_GROUP) < (Di // K_GROUP)  # exact: K_GROUP divides Di
                # [BLOCK_HI, BLOCK_DI]
                b_qc = cast_in(
                    tl.load(
                        p_q_t + i_h[:, None] * stride_qh + o_d[None, :] * stride_qd,
                        mask=m_h[:, None] & m_d[None, :],
                        other=0.0,
                    ),
                    CDT,
                )
                # [BLOCK_N, BLOCK_DI]
                b_k = _load_keys(p_k, o_row, m_row, o_d, Di, stride_kd, KEY_FP8, CDT, K_GROUP)
                b_s += _logits(b_qc, b_k, DOT_PREC, ENTRIES_FIRST)
            b_s = _scaled(b_s, p_ks, o_sc, m_row, KEY_FP8, ENTRIES_FIRST)
            # [BLOCK_HI]
            b_wc = cast_in(tl.load(p_w_t + i_h * stride_wh, mask=m_h, other=0.0), tl.float32)
            b_score += _head_sum(b_s, b_wc, m_h, ENTRIES_FIRST)
        return b_score


@triton.jit
def _sort_keys(b_score, o_j, m_use):
    """int64 keys whose descending order is (score desc, id asc); unusable entries -> NO_KEY. A NaN
    score (either sign bit) ranks as +inf, as in the reference."""
    b_score = tl.where(b_score != b_score, _POS_INF, b_score)
    b_bits = b_score.to(tl.int32, bitcast=True)
    b_bits = tl.where(b_score == 0.0, 0, b_bits)  # -0.0 ties with +0.0
    b_ord = tl.where(b_bits < 0, b_bits ^ _SIGN_FLIP, b_bits).to(tl.int64)
    b_key = b_ord * _HIGH + ((_HIGH - o_j.to(tl.int64)) - 1)
    return tl.where(m_use, b_key, _NO_KEY)


@triton.jit
def _rank_merge(b_run, b_new, K: tl.constexpr, C: tl.constexpr):
    """Top-K (sorted descending) of running keys [K] (sorted descending) and new keys [C] (any order),
    by ranking: new key c ranks after the running keys >= it and the new keys that beat it (equal
    keys, i.e. NO_KEY, by position, running first); output position r takes the new key of rank r
    if there is one, else running key r - #(new keys ranked before r) (a gather). [C, K], [C, C] and
    [K, C] compares: vectorised numpy in the interpreter, where tl.topk's bitonic network runs op by
    op in Python."""
    o_k = tl.arange(0, K)
    o_c = tl.arange(0, C)
    # [C, C]: new key c2 beats new key c; [C, K]: running key i beats new key c
    m_cc = (b_new[None, :] > b_new[:, None]) | ((b_new[None, :] == b_new[:, None]) & (o_c[None, :] < o_c[:, None]))
    m_rc = b_run[None, :] >= b_new[:, None]
    b_rank = tl.sum(m_cc.to(tl.int32), 1) + tl.sum(m_rc.to(tl.int32), 1)  # [C] ranks of the new keys
    # [K, C]
    m_at = b_rank[None, :] == o_k[:, None]
    m_from_new = tl.sum(m_at.to(tl.int32), 1) > 0  # [K]
    b_from_new = tl.sum(tl.where(m_at, b_new[None, :], 0), 1)
    n_before = tl.sum((b_rank[None, :] < o_k[:, None]).to(tl.int32), 1)
    b_from_run = tl.gather(b_run, o_k - n_before, 0)  # index in [0, r]: running keys keep their order
    return tl.where(m_from_new, b_from_new, b_from_run)


@triton.jit
def _merge_topk(b_run, b_new, K: tl.constexpr, C: tl.constexpr, BITONIC: tl.constexpr):
    """Top-K (sorted descending) of the union of the running keys [K] and new keys [C] (K and C powers
    of two). Bitonic: ``tl.topk`` of [running | chunk padded with NO_KEY]. Else ``_rank_merge``, with no
    compare matrix over RANK_NUMEL elements (Triton's block limit is 2^20): a wider chunk is merged in
    P pieces of C / P keys (taken out of the registers by a one-hot sum; pieces that cannot enter the
    list are skipped)."""
    if BITONIC:
        if C > K:
            b_add = tl.topk(b_new, K)
        elif C < K:
            # pad the chunk to [K] with NO_KEY: keep one replica of the broadcast rows
            b_tiled = tl.broadcast_to(b_new[None, :], [K // C, C])
            b_add = tl.reshape(tl.where(tl.arange(0, K // C)[:, None] == 0, b_tiled, _NO_KEY), [K])
        else:
            b_add = b_new
        b_both = tl.reshape(tl.join(b_run, b_add), [2 * K])
        return tl.topk(b_both, K)
    elif K * C <= _RANK_NUMEL:
        return _rank_merge(b_run, b_new, K, C)
    else:
        P: tl.constexpr = (K * C) // _RANK_NUMEL
        CP: tl.constexpr = C // P
        b_parts = tl.reshape(b_new, [P, CP])
        o_p = tl.arange(0, P)
        for i in tl.static_range(P):
            b_piece = tl.sum(tl.where(o_p[:, None] == i, b_parts, 0), 0)  # [CP]
            if tl.max(b_piece, 0) > tl.min(b_run, 0):
                b_run = _rank_merge(b_run, b_piece, K, CP)
        return b_run


@triton.jit
def _write_topk(
    b_run,
    i_t,
    p_out_idx,
    stride_oi,
    p_out_len,
    topk,
    p_bt_row,
    stride_bt_p,
    seq_ok,
    page_size,
    TO_SLOTS: tl.constexpr,
    TOPK_P2: tl.constexpr,
):
    """indices[t, :topk] (-1 padded, int32) and lengths[t] from the sorted keys [TOPK_P2]."""
    o_k = tl.arange(0, TOPK_P2)
    m_k = o_k < topk
    m_sel = (b_run != _NO_KEY) & m_k
    b_low = b_run - ((b_run >> 32) << 32)  # low 32 bits, as a non-negative int64
    b_id = (_HIGH - b_low) - 1  # [TOPK_P2] int64 entry ids
    if TO_SLOTS:
        b_page = tl.load(p_bt_row + (b_id // page_size) * stride_bt_p, mask=and_flag(m_sel, seq_ok), other=0).to(
            tl.int64
        )
        b_id = b_page * page_size + b_id % page_size
    tl.store(p_out_idx + i_t * stride_oi + o_k, tl.where(m_sel, b_id, -1).to(tl.int32), mask=m_k)
    tl.store(p_out_len + i_t, tl.sum(m_sel.to(tl.int32), 0))


# ---------------------------------------------------------------------------------------------------
# kernels
# ---------------------------------------------------------------------------------------------------
@triton.jit(
    do_not_specialize=[
        "num_seqs",
        "num_pages",
        "num_entries",
        "entries_per_prog",
        "stride_ws_t",
        "stride_ws_b",
        "stride_oi",
        "topk",
        "Hi",
        "Di",
    ]
)
def _indexer_topk_partial_kernel(
    p_q,
    stride_qt,
    stride_qh,
    stride_qd,
    p_w,
    stride_wt,
    stride_wh,
    p_k,
    p_ks,
    stride_kp,
    stride_ko,
    stride_kn,
    stride_kd,
    p_bt,
    stride_bt_b,
    stride_bt_p,
    p_seq,
    num_seqs,
    num_pages,
    PAGE_SIZE: tl.constexpr,
    p_vis,
    num_entries,
    entries_per_prog,
    p_ws,
    stride_ws_t,
    stride_ws_b,
    p_out_idx,
    stride_oi,
    p_out_len,
    topk,
    Hi,
    Di,
    PAGED: tl.constexpr,
    FINAL: tl.constexpr,
    TO_SLOTS: tl.constexpr,
    TOPK_P2: tl.constexpr,
    BLOCK_HI: tl.constexpr,
    BLOCK_DI: tl.constexpr,
    BLOCK_N: tl.constexpr,
    ONE_TILE: tl.constexpr,
    CDT: tl.constexpr,
    DOT_PREC: tl.constexpr,
    BITONIC: tl.constexpr,
    KEYS_ONLY: tl.constexpr = False,
    KEY_FP8: tl.constexpr = False,
    K_ALIGN16: tl.constexpr = False,
    K_GROUP: tl.constexpr = 1,
    BLOCK_PAGE: tl.constexpr = False,
    HEADS_FULL: tl.constexpr = False,
):
    """Program (t, b): running top-TOPK_P2 keys of entries [b * E, (b + 1) * E) of token t, or with
    ``KEYS_ONLY`` the sort key of every entry of the range (NO_KEY past visible_end) at
    ``p_ws[t, j]``, for a top-k select by the launcher. ``BLOCK_PAGE``: E and PAGE_SIZE are multiples
    of BLOCK_N (the launcher's ``block_page``), so each block of entries lies in one page."""
    i_t = tl.program_id(0).to(tl.int64)
    i_b = tl.program_id(1).to(tl.int64)
    n_vis = tl.minimum(tl.maximum(tl.load(p_vis + i_t).to(tl.int64), 0), num_entries)
    j_lo = i_b * entries_per_prog
    j_hi = tl.minimum(j_lo + entries_per_prog, n_vis)

    p_bt_row, seq_ok = _sequence_row(p_seq, i_t, num_seqs, p_bt, stride_bt_b, PAGED)

    p_q_t = p_q + i_t * stride_qt
    p_w_t = p_w + i_t * stride_wt
    i_h = tl.arange(0, BLOCK_HI)
    o_d = tl.arange(0, BLOCK_DI)
    if ONE_TILE:
        # [BLOCK_HI, BLOCK_DI], [BLOCK_HI]
        b_q = cast_in(
            tl.load(
                p_q_t + i_h[:, None] * stride_qh + o_d[None, :] * stride_qd,
                mask=(i_h < Hi)[:, None] & ((o_d // K_GROUP) < (Di // K_GROUP))[None, :],  # K_GROUP divides Di
                other=0.0,
            ),
            CDT,
        )
        b_w = cast_in(tl.load(p_w_t + i_h * stride_wh, mask=i_h < Hi, other=0.0), tl.float32)
    else:
        b_q = tl.zeros([BLOCK_HI, BLOCK_DI], CDT)
        b_w = tl.zeros([BLOCK_HI], tl.float32)

    # [TOPK_P2] running keys, sorted descending
    b_run = tl.full([TOPK_P2], _NO_KEY, tl.int64)
    for j0 in range(j_lo, j_hi, BLOCK_N):
        o_j = j0 + tl.arange(0, BLOCK_N)
        m_j = o_j < j_hi
        o_row, o_sc, m_row = _entry_rows(
            o_j,
            m_j,
            p_bt_row,
            stride_bt_p,
            seq_ok,
            PAGE_SIZE,
            num_pages,
            stride_kp,
            stride_ko,
            stride_kn,
            PAGED,
            KEY_FP8,
            K_ALIGN16,
            K_GROUP,
            j0,
            BLOCK_PAGE,
        )
        # [BLOCK_N]
        b_score = _score_entries(
            b_q,
            b_w,
            p_q_t,
            stride_qh,
            stride_qd,
            p_w_t,
            stride_wh,
            p_k,
            p_ks,
            o_row,
            o_sc,
            m_row,
            stride_kd,
            Hi,
            Di,
            BLOCK_HI,
            BLOCK_DI,
            BLOCK_N,
            ONE_TILE,
            CDT,
            DOT_PREC,
            KEY_FP8,
            K_GROUP,
            HEADS_FULL,
        )
        b_key = _sort_keys(b_score, o_j, m_row)
        if KEYS_ONLY:
            tl.store(p_ws + i_t * stride_ws_t + o_j, b_key, mask=m_j)
        elif tl.max(b_key, 0) > tl.min(b_run, 0):
            b_run = _merge_topk(b_run, b_key, TOPK_P2, BLOCK_N, BITONIC)

    if KEYS_ONLY:
        # the range's entries past visible_end: never scored, never selectable
        j_end = tl.minimum(j_lo + entries_per_prog, num_entries)
        for j0 in range(tl.maximum(j_hi, j_lo), j_end, BLOCK_N):
            o_j = j0 + tl.arange(0, BLOCK_N)
            tl.store(p_ws + i_t * stride_ws_t + o_j, tl.full([BLOCK_N], _NO_KEY, tl.int64), mask=o_j < j_end)
    elif FINAL:
        _write_topk(
            b_run,
            i_t,
            p_out_idx,
            stride_oi,
            p_out_len,
            topk,
            p_bt_row,
            stride_bt_p,
            seq_ok,
            PAGE_SIZE,
            TO_SLOTS,
            TOPK_P2,
        )
    else:
        if j_lo < n_vis:  # ranges past visible_end write nothing; the merge never reads them
            tl.store(p_ws + i_t * stride_ws_t + i_b * stride_ws_b + tl.arange(0, TOPK_P2), b_run)


@triton.jit(
    do_not_specialize=[
        "stride_in_t",
        "stride_in_b",
        "stride_out_t",
        "stride_out_b",
        "num_entries",
        "list_span",
        "num_seqs",
        "page_size",
        "stride_oi",
        "topk",
    ]
)
def _indexer_topk_merge_kernel(
    p_ws_in,
    stride_in_t,
    stride_in_b,
    p_ws_out,
    stride_out_t,
    stride_out_b,
    p_vis,
    num_entries,
    list_span,
    p_bt,
    stride_bt_b,
    stride_bt_p,
    p_seq,
    num_seqs,
    page_size,
    p_out_idx,
    stride_oi,
    p_out_len,
    topk,
    FANIN_C: tl.constexpr,
    PAGED: tl.constexpr,
    FINAL: tl.constexpr,
    TO_SLOTS: tl.constexpr,
    TOPK_P2: tl.constexpr,
    BITONIC: tl.constexpr,
):
    """Program (t, g): top-TOPK_P2 of input lists [g * FANIN, (g + 1) * FANIN) of token t. Input list b
    covers entries [b * list_span, (b + 1) * list_span); lists past visible_end do not exist."""
    i_t = tl.program_id(0).to(tl.int64)
    i_g = tl.program_id(1).to(tl.int64)
    n_vis = tl.minimum(tl.maximum(tl.load(p_vis + i_t).to(tl.int64), 0), num_entries)
    n_lists = tl.cdiv(n_vis, list_span)
    b_lo = i_g * FANIN_C
    b_hi = tl.minimum(b_lo + FANIN_C, n_lists)
    o_k = tl.arange(0, TOPK_P2)
    # [TOPK_P2]
    b_run = tl.full([TOPK_P2], _NO_KEY, tl.int64)
    for i_b in range(b_lo, b_hi):
        b_new = tl.load(p_ws_in + i_t * stride_in_t + i_b * stride_in_b + o_k)
        if FANIN_C == 1:
            b_run = b_new  # one sorted list (the select path's): its own top-k
        elif tl.max(b_new, 0) > tl.min(b_run, 0):
            b_run = _merge_topk(b_run, b_new, TOPK_P2, TOPK_P2, BITONIC)
    if FINAL:
        p_bt_row, seq_ok = _sequence_row(p_seq, i_t, num_seqs, p_bt, stride_bt_b, PAGED)
        _write_topk(
            b_run,
            i_t,
            p_out_idx,
            stride_oi,
            p_out_len,
            topk,
            p_bt_row,
            stride_bt_p,
            seq_ok,
            page_size,
            TO_SLOTS,
            TOPK_P2,
        )
    else:
        if b_lo < n_lists:
            tl.store(p_ws_out + i_t * stride_out_t + i_g * stride_out_b + o_k, b_run)


@triton.jit(
    do_not_specialize=[
        "num_entries",
        "span",
        "stride_best_t",
        "stride_best_r",
        "k_sel",
        "num_seqs",
        "page_size",
        "stride_oi",
        "topk",
    ]
)
def _select_keys_kernel(
    p_keys,
    stride_keys_t,
    p_vis,
    num_entries,
    span,
    p_best,
    stride_best_t,
    stride_best_r,
    k_sel,
    p_seq,
    num_seqs,
    p_bt,
    stride_bt_b,
    stride_bt_p,
    page_size,
    p_out_idx,
    stride_oi,
    p_out_len,
    topk,
    HAS_VIS: tl.constexpr,
    TOPK_P2: tl.constexpr,
    BLOCK: tl.constexpr,
    DIGIT_BITS: tl.constexpr,
    SORTED: tl.constexpr = True,
    FINAL: tl.constexpr = False,
    PAGED: tl.constexpr = False,
    TO_SLOTS: tl.constexpr = False,
):
    """Program (t, r): the ``k_sel`` largest sort keys of entries ``[r * span, (r + 1) * span)`` of row t,
    those below ``visible_end[t]`` (all ``num_entries`` without HAS_VIS); keys are unique but for NO_KEY,
    which is never selected. Into ``p_best[t, r, :TOPK_P2]``, NO_KEY after them: sorted descending with
    SORTED, else in entry order (a reducing stage's lists: the next stage selects from them again, so
    it skips the 512-key sort, ~1,000 of the kernel's ~6,400 SASS instructions on sm_90). FINAL (one
    program per row, SORTED): ``p_best`` is only the compaction's scratch; the sorted keys are written
    as ``indexer_topk``'s output instead (``_write_topk``: entry ids or, with TO_SLOTS, pool slots
    through the sequence's block-table row; -1 padding; ``lengths[t]``), which saves the select path a
    dependent launch.
    Radix select, most significant digit first, on the keys' unsigned order (``key ^ INT64_MIN``):
    each pass reads the row once and histograms the next ``DIGIT_BITS`` of the keys that share the
    digits chosen so far, then keeps the digit where the running count reaches ``k_sel``; it stops as
    soon as that digit's keys are all wanted (the usual case after 2-4 of the 64 / DIGIT_BITS passes
    for real scores; equal scores take every pass). The keys >= the threshold found are then compacted
    into ``p_best`` in one more pass (and sorted there: at most TOPK_P2 of them). Each pass's loads are
    software-pipelined (``SELECT_STAGES`` blocks in flight by cp.async), so a pass waits for L2 once,
    not once per block."""
    i_t = tl.program_id(0).to(tl.int64)
    i_r = tl.program_id(1).to(tl.int64)
    n_vis = num_entries
    if HAS_VIS:
        n_vis = tl.minimum(tl.maximum(tl.load(p_vis + i_t).to(tl.int64), 0), num_entries)
    n_vis = tl.minimum(tl.maximum(n_vis - i_r * span, 0), span)  # this program's entries
    p_row = p_keys + i_t * stride_keys_t + i_r * span
    NB: tl.constexpr = 1 << DIGIT_BITS
    o_b = tl.arange(0, NB)
    need = tl.minimum(k_sel, n_vis).to(tl.int32)  # keys still to place at or below the chosen digits
    prefix = tl.zeros([], tl.int64)  # chosen digits of the threshold, in unsigned-order bits
    pmask = tl.zeros([], tl.int64)  # which bits of prefix are chosen
    done = need <= 0
    for i_p in tl.static_range(64 // DIGIT_BITS):
        if not done:
            shift: tl.constexpr = 64 - DIGIT_BITS * (i_p + 1)
            b_hist = tl.zeros([NB], tl.int32)
            for j0 in tl.range(0, n_vis, BLOCK, num_stages=SELECT_STAGES):
                o_j = j0 + tl.arange(0, BLOCK)
                m_j = o_j < n_vis
                b_key = tl.load(p_row + o_j, mask=m_j, other=_NO_KEY)
                b_u = b_key ^ _NO_KEY  # unsigned order in the bits
                m_sel = m_j & (b_key != _NO_KEY) & ((b_u & pmask) == prefix)
                b_digit = ((b_u >> shift) & (NB - 1)).to(tl.int32)
                b_hist += tl.histogram(b_digit, NB, mask=m_sel)
            # keys with a digit >= d among those sharing the prefix; d* = the largest d reaching need
            b_ge = tl.sum(b_hist, 0) - tl.cumsum(b_hist, 0) + b_hist
            d_star = tl.max(tl.where(b_ge >= need, o_b, -1), 0)
            if d_star < 0:  # fewer candidates than wanted (only possible before any digit): take them all
                done = True
            else:
                h_d = tl.sum(tl.where(o_b == d_star, b_hist, 0), 0)
                need -= tl.sum(tl.where(o_b == d_star, b_ge, 0), 0) - h_d
                prefix = prefix | (d_star.to(tl.int64) << shift)
                pmask = pmask | (tl.full([], NB - 1, tl.int64) << shift)
                done = h_d == need
    # the threshold back in key order; NO_KEY excluded separately
    thr = prefix ^ _NO_KEY
    p_out = p_best + i_t * stride_best_t + i_r * stride_best_r
    o_k = tl.arange(0, TOPK_P2)
    tl.store(p_out + o_k, tl.full([TOPK_P2], _NO_KEY, tl.int64))
    tl.debug_barrier()
    base = tl.zeros([], tl.int32)
    for j0 in tl.range(0, n_vis, BLOCK, num_stages=SELECT_STAGES):
        o_j = j0 + tl.arange(0, BLOCK)
        m_j = o_j < n_vis
        b_key = tl.load(p_row + o_j, mask=m_j, other=_NO_KEY)
        m_sel = m_j & (b_key != _NO_KEY) & (b_key >= thr)
        b_pos = base + tl.cumsum(m_sel.to(tl.int32), 0) - 1
        tl.store(p_out + b_pos, b_key, mask=m_sel & (b_pos < TOPK_P2))
        base += tl.sum(m_sel.to(tl.int32), 0)
    if SORTED:
        tl.debug_barrier()
        b_best = tl.sort(tl.load(p_out + o_k), descending=True)
        if FINAL:
            p_bt_row, seq_ok = _sequence_row(p_seq, i_t, num_seqs, p_bt, stride_bt_b, PAGED)
            _write_topk(
                b_best, i_t, p_out_idx, stride_oi, p_out_len, topk, p_bt_row, stride_bt_p, seq_ok, page_size,
                TO_SLOTS, TOPK_P2,
            )  # fmt: skip
        else:
            tl.debug_barrier()
            tl.store(p_out + o_k, b_best)


@triton.jit(
    do_not_specialize=[
        "num_seqs",
        "num_pages",
        "page_size",
        "num_entries",
        "stride_out_t",
        "Hi",
        "Di",
    ]
)
def _indexer_logits_kernel(
    p_q,
    stride_qt,
    stride_qh,
    stride_qd,
    p_w,
    stride_wt,
    stride_wh,
    p_k,
    p_ks,
    stride_kp,
    stride_ko,
    stride_kn,
    stride_kd,
    p_bt,
    stride_bt_b,
    stride_bt_p,
    p_seq,
    num_seqs,
    num_pages,
    page_size,
    p_vis,
    num_entries,
    p_out,
    stride_out_t,
    Hi,
    Di,
    PAGED: tl.constexpr,
    BLOCK_HI: tl.constexpr,
    BLOCK_DI: tl.constexpr,
    BLOCK_N: tl.constexpr,
    CDT: tl.constexpr,
    DOT_PREC: tl.constexpr,
    KEY_FP8: tl.constexpr = False,
    K_ALIGN16: tl.constexpr = False,
    K_GROUP: tl.constexpr = 1,
    HEADS_FULL: tl.constexpr = False,
):
    """Program (t, c): scores of entries [c * BLOCK_N, (c + 1) * BLOCK_N) of token t; -inf if unusable."""
    i_t = tl.program_id(0).to(tl.int64)
    o_j = tl.program_id(1).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    m_out = o_j < num_entries
    n_vis = tl.minimum(tl.maximum(tl.load(p_vis + i_t).to(tl.int64), 0), num_entries)
    m_j = o_j < n_vis
    p_bt_row, seq_ok = _sequence_row(p_seq, i_t, num_seqs, p_bt, stride_bt_b, PAGED)
    o_row, o_sc, m_row = _entry_rows(
        o_j,
        m_j,
        p_bt_row,
        stride_bt_p,
        seq_ok,
        page_size,
        num_pages,
        stride_kp,
        stride_ko,
        stride_kn,
        PAGED,
        KEY_FP8,
        K_ALIGN16,
        K_GROUP,
    )
    b_q = tl.zeros([BLOCK_HI, BLOCK_DI], CDT)
    b_w = tl.zeros([BLOCK_HI], tl.float32)
    # [BLOCK_N]
    b_score = _score_entries(
        b_q,
        b_w,
        p_q + i_t * stride_qt,
        stride_qh,
        stride_qd,
        p_w + i_t * stride_wt,
        stride_wh,
        p_k,
        p_ks,
        o_row,
        o_sc,
        m_row,
        stride_kd,
        Hi,
        Di,
        BLOCK_HI,
        BLOCK_DI,
        BLOCK_N,
        False,
        CDT,
        DOT_PREC,
        KEY_FP8,
        K_GROUP,
        HEADS_FULL,
    )
    tl.store(p_out + i_t * stride_out_t + o_j, tl.where(m_row, b_score, _NEG_INF), mask=m_out)


# ---------------------------------------------------------------------------------------------------
# launchers
# ---------------------------------------------------------------------------------------------------
def _pool_args(index_k, block_table, seq_ids):
    """Uniform description of flat / paged index keys: (num_entries, stride_kp, stride_ko, stride_kn,
    stride_kd, bt, stride_bt_b, stride_bt_p, seq, num_seqs, num_pages, page_size, paged) (page_size: 1
    for flat float keys; the top-k kernel's PAGE_SIZE constexpr). An FP8 pool:
    stride_kp = page bytes, stride_ko = Di (bytes per e4m3 row); flat, entry j = slot j."""
    unused = dummy(index_k.device)  # block table / sequence ids of flat keys, an empty table: never read
    fp8 = isinstance(index_k, Fp8IndexKeyPool)
    if block_table is None:
        if fp8:
            P, page, Di = index_k.num_pages, index_k.page_size, index_k.dim
            return (P * page, index_k.page_bytes, Di, 0, 1, unused, 0, 0, unused, 0, P, page, False)
        return (index_k.shape[0], 0, 0, index_k.stride(0), index_k.stride(1), unused, 0, 0, unused, 0, 0, 1, False)
    if fp8:
        P, page = index_k.num_pages, index_k.page_size
        strides = (index_k.page_bytes, index_k.dim, 0, 1)
    else:
        P, page, _ = index_k.shape
        strides = (index_k.stride(0), index_k.stride(1), 0, index_k.stride(2))
    B, max_pages = block_table.shape
    bt = block_table if block_table.numel() else unused
    # pages of no entries (a [P, 0, Di] pool) hold no entry to divide: any page size will do
    return (max_pages * page, *strides, bt,
            block_table.stride(0) if block_table.numel() else 0, block_table.stride(1) if block_table.numel() else 0,
            seq_ids, B, P, max(page, 1), True)  # fmt: skip


def _nonempty(x: torch.Tensor) -> torch.Tensor:
    return x if x.numel() else dummy(x.device, x.dtype)


def _float_key_layout(k: torch.Tensor) -> Tuple[int, bool]:
    """(K_GROUP, K_ALIGN16) of a float key tensor ([N, Di] flat or [P, page, Di] paged). K_GROUP: the
    elements of 16 bytes (8 bf16 / fp16, 4 fp32) when Di is a multiple of it and the dims are unit
    strided (the dim mask is then exact per group and the rows can be read 16 bytes at a time); else 1
    (the per-dim mask). K_ALIGN16: with K_GROUP > 1, every row starts 16-byte aligned: the data pointer
    is, and so is every row stride in bytes (a stride of an axis of one element is never used)."""
    Di = k.shape[-1]
    group = 16 // k.element_size()
    if group <= 1 or Di % group or (Di > 1 and k.stride(-1) != 1):
        return 1, False
    rows_aligned = all(k.stride(a) % group == 0 or k.shape[a] <= 1 for a in range(k.dim() - 1))
    return group, rows_aligned and k.data_ptr() % 16 == 0


def _key_args(index_k):
    """(keys pointer, scales pointer, KEY_FP8, K_ALIGN16, K_GROUP) of index_k. An FP8 pool: its uint8 data
    and the same bytes viewed as fp32 (the scales; Di % 16 == 0 keeps them 4-byte aligned); rows are
    16-byte aligned when every page is (page bytes % 16 == 0, or one page) and so is the data pointer;
    K_GROUP = 16 (Di is a multiple of 16). Float keys: ``_float_key_layout``. The q dim masks are
    written per K_GROUP dims too (exact for any K_GROUP that divides Di, whatever q's dtype)."""
    if not isinstance(index_k, Fp8IndexKeyPool):
        if index_k.numel() == 0:  # no slot is valid: never read
            k = _nonempty(index_k)
            return k, k, False, False, 1
        group, aligned = _float_key_layout(index_k)
        return index_k, index_k, False, aligned, group
    data = index_k.data
    if data.numel() == 0:  # no slot is valid: never read
        zeros = torch.zeros(16, dtype=torch.uint8, device=data.device)
        return zeros, torch.zeros(1, device=data.device), True, False, 1
    aligned = (index_k.page_bytes % 16 == 0 or index_k.num_pages == 1) and data.data_ptr() % 16 == 0
    return data, data.view(torch.float32), True, aligned, 16


def indexer_logits(q, weights, index_k, visible_end, block_table=None, seq_ids=None, config=None):
    T, Hi, Di = q.shape
    visible_end = visible_end.contiguous()  # [T] vectors are read with unit stride
    seq_ids = seq_ids.contiguous() if seq_ids is not None else None
    pa = _pool_args(index_k, block_table, seq_ids)
    n = pa[0]
    out = torch.empty(T, n, dtype=torch.float32, device=q.device)
    if T == 0 or n == 0:
        return out
    cfg = dict(config) if config is not None else default_config(Hi, Di, q.device)
    cdt = compute_dtype(q, index_k)
    p_k, p_ks, key_fp8, align16, k_group = _key_args(index_k)
    grid = (T, cdiv(n, cfg["BLOCK_N"]))
    _indexer_logits_kernel[grid](
        q, q.stride(0), q.stride(1), q.stride(2),
        weights, weights.stride(0), weights.stride(1),
        p_k, p_ks, pa[1], pa[2], pa[3], pa[4],
        pa[5], pa[6], pa[7], pa[8], pa[9], pa[10], pa[11],
        visible_end, n, out, out.stride(0), Hi, Di,
        PAGED=pa[12], BLOCK_HI=cfg["BLOCK_HI"], BLOCK_DI=cfg["BLOCK_DI"], BLOCK_N=cfg["BLOCK_N"],
        CDT=TL_DTYPE[cdt], DOT_PREC="ieee" if cdt == torch.float32 else None,
        KEY_FP8=key_fp8, K_ALIGN16=align16, K_GROUP=k_group, HEADS_FULL=Hi % cfg["BLOCK_HI"] == 0,
        num_warps=cfg.get("num_warps", 4), num_stages=cfg.get("num_stages", 1),
    )  # fmt: skip
    return out


def block_page(pa, key_fp8: bool, per: int, block_n: int) -> bool:
    """The partial kernel's ``BLOCK_PAGE`` in the select path's key launch: paged (or FP8) keys whose
    pages and per-program ranges are whole numbers of ``block_n``-entry blocks, so that every block of
    entries lies in one page (the V4 decode: 64-entry pages and blocks). The fused path keeps the
    per-entry lookup: with its running top-512 list in registers, the block's page cost its sm_80 /
    sm_89 compiles 12-56 B of spills (triton 3.6-3.9)."""
    return bool((pa[12] or key_fp8) and pa[11] % block_n == 0 and per % block_n == 0)


def choose_entries_per_program(T: int, num_entries: int, topk_p2: int, block_n: int, device) -> int:
    """Range of entries per partial program: enough programs to fill the SMs ~4x, ranges of at least
    4 x TOPK_P2 entries (so a range really reduces its entries), and a bounded workspace."""
    sms = _num_sms(device)
    min_range = max(4 * topk_p2, 4 * block_n)
    ranges = max(1, min(cdiv(4 * sms, max(T, 1)), cdiv(num_entries, min_range)))
    ranges = min(ranges, max(1, WORKSPACE_BYTES // max(1, T * topk_p2 * 8)), 65535)
    per = cdiv(cdiv(num_entries, ranges), block_n) * block_n
    return max(block_n, per)


def indexer_topk(
    q,
    weights,
    index_k,
    visible_end,
    topk,
    block_table=None,
    seq_ids=None,
    return_slots=False,
    entries_per_program: Optional[int] = None,
    config: Optional[dict] = None,
    bitonic: Optional[bool] = None,
    method: Optional[str] = None,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Launch the kernels (canonical op args). ``method``: "select" (default: every entry's sort key
    written, a radix select over them whose last launch writes the indices: ``_select_topk``) or
    "fused" (running top-k lists in registers and a merge tree; the default when
    ``entries_per_program`` or ``bitonic`` is given, its knobs).
    ``config`` overrides the tiles of either."""
    if method is None:
        method = "fused" if entries_per_program is not None or bitonic is not None else "select"
    if method not in ("select", "fused"):
        raise ValueError(f"indexer_topk: `method` must be 'select' or 'fused', got {method!r}")
    T, Hi, Di = q.shape
    device = q.device
    indices = torch.empty(T, topk, dtype=torch.int32, device=device)
    lengths = torch.empty(T, dtype=torch.int32, device=device)
    if T == 0:
        return indices, lengths
    visible_end = visible_end.contiguous()  # [T] vectors are read with unit stride
    seq_ids = seq_ids.contiguous() if seq_ids is not None else None
    pa = _pool_args(index_k, block_table, seq_ids)
    n = pa[0]
    paged = pa[12]
    to_slots = bool(return_slots and paged)
    if method == "select":
        _select_topk(q, weights, index_k, visible_end, seq_ids, pa, topk, to_slots, config, indices, lengths)
        return indices, lengths
    cfg = dict(config) if config is not None else default_config(Hi, Di, device)
    cdt = compute_dtype(q, index_k)
    topk_p2 = max(2, next_power_of_2(topk))
    bitonic = (not interpreting()) if bitonic is None else bool(bitonic)
    block_n = cfg["BLOCK_N"]
    if entries_per_program is None:
        entries_per_program = choose_entries_per_program(T, n, topk_p2, block_n, device)
    per = max(1, int(entries_per_program))
    ranges = max(1, cdiv(n, per))
    final = ranges == 1
    one_tile = Hi <= cfg["BLOCK_HI"] and Di <= cfg["BLOCK_DI"]
    ws = torch.empty(T, ranges, topk_p2, dtype=torch.int64, device=device) if not final else indices
    p_k, p_ks, key_fp8, align16, k_group = _key_args(index_k)
    _indexer_topk_partial_kernel[(T, ranges)](
        q, q.stride(0), q.stride(1), q.stride(2),
        weights, weights.stride(0), weights.stride(1),
        p_k, p_ks, pa[1], pa[2], pa[3], pa[4],
        pa[5], pa[6], pa[7], pa[8], pa[9], pa[10], pa[11],
        visible_end, n, per,
        ws, ws.stride(0), ws.stride(1) if not final else 0,
        indices, indices.stride(0), lengths, topk, Hi, Di,
        PAGED=paged, FINAL=final, TO_SLOTS=to_slots, TOPK_P2=topk_p2,
        BLOCK_HI=cfg["BLOCK_HI"], BLOCK_DI=cfg["BLOCK_DI"], BLOCK_N=block_n, ONE_TILE=one_tile,
        CDT=TL_DTYPE[cdt], DOT_PREC="ieee" if cdt == torch.float32 else None, BITONIC=bitonic,
        KEY_FP8=key_fp8, K_ALIGN16=align16, K_GROUP=k_group,
        num_warps=cfg.get("num_warps", 4), num_stages=cfg.get("num_stages", 1),
    )  # fmt: skip
    span = per
    while not final:
        groups = cdiv(ranges, FANIN)
        final = groups == 1
        out_ws = torch.empty(T, groups, topk_p2, dtype=torch.int64, device=device) if not final else ws
        _indexer_topk_merge_kernel[(T, groups)](
            ws, ws.stride(0), ws.stride(1), out_ws, out_ws.stride(0), out_ws.stride(1),
            visible_end, n, span,
            pa[5], pa[6], pa[7], pa[8], pa[9], pa[11],
            indices, indices.stride(0), lengths, topk,
            FANIN_C=FANIN, PAGED=paged, FINAL=final, TO_SLOTS=to_slots, TOPK_P2=topk_p2, BITONIC=bitonic,
            num_warps=4,
        )  # fmt: skip
        ws, ranges, span = out_ws, groups, span * FANIN
    return indices, lengths


def select_config(Hi: int, Di: int, device: torch.device, capability: Optional[Tuple[int, int]] = None) -> dict:
    """Tiles of the "select" path's key kernel: no running list in registers, so wider entry blocks
    than the fused kernel's (``LONGATTN_TRITON_INDEXER_CFG`` overrides them as for ``default_config``).
    ``capability``: the GPU's (major, minor), queried from ``device`` when None (offline compiles pass
    it)."""
    cfg = default_config(Hi, Di, device, capability)
    if positive_ints("LONGATTN_TRITON_INDEXER_CFG", "BLOCK_N,num_warps,num_stages"):
        return cfg
    cfg.update(BLOCK_N=64)  # >= 64: the [entries, heads] logits (_score_entries), also in the interpreter
    if device.type == "cuda" and not interpreting():
        # offline compiles (triton 3.7.1) of the [entries, heads] logits, 64 heads x 128 dims x 64
        # entries. sm_90: one warp group holds all 64 heads of its 64 entries (wgmma 64x64x16), so the
        # head sum is a row sum; FP8 pool 167 registers, no spills, 690 SASS instructions per block at
        # 4 warps (901 before a block's page was looked up once; 8 warps then: 628 for 2 warp groups and
        # a cross-warp sum through shared memory, 1,256 issue clk against 901). sm_80 / sm_89 (mma.sync,
        # the logits in every warp's registers): 8 warps (4 spill 108 B on sm_89 with triton 3.8.0). AMD
        # (gfx942): 4 warps, 136 VGPRs, no VGPR spilled (8 warps compute the logits twice)
        capability = capability or tile_capability(device)
        cfg.update(num_warps=4 if capability >= (9, 0) or capability == AMD_TILES else 8, num_stages=3)
    return cfg


SELECT_BLOCK = 1024  # keys per step of _select_keys_kernel (8 warps: 4 per thread; sm_80 / sm_90: no spills)
SELECT_DIGIT_BITS = 8  # radix digit: a 256-bin histogram per pass, at most 8 passes over a row


# A further dependent launch of _select_keys_kernel costs about what one program's passes over this many
# keys do (sm_90 model, bench/sm90_model.py: ~2 us per launch against ~4 clk per key over ~4 passes)
SELECT_LAUNCH_KEYS = 1024


def choose_select_stages(T: int, n: int, topk_p2: int, device: torch.device) -> Tuple[int, ...]:
    """Programs per row of each reducing stage of ``select_keys`` (() = one program per row): the plan of
    at most two reducing stages, R_i powers of two with T x R_i within the SMs and spans of >= 4 x topk_p2
    keys (so a stage shrinks its row at least 4x), that minimises the keys one row's programs read in
    sequence (n / R_1 + R_1 x topk_p2 / R_2 + ... + the last row) plus ``SELECT_LAUNCH_KEYS`` per extra
    launch. A decode step's few rows would otherwise leave most SMs idle (T = 1, 262,144 entries, top 512:
    64 programs of 4,096 keys, then 8 of 4,096 candidates, then one of 4,096: 12,288 keys in sequence
    instead of 262,144)."""
    sms = _num_sms(device)

    def plans(m: int, r_max: int, depth: int):
        yield ()
        r = 2
        while depth and r <= r_max and r * T <= sms and cdiv(m, r) >= 4 * topk_p2:
            for rest in plans(r * topk_p2, r // 2, depth - 1):
                yield (r, *rest)
            r *= 2

    def cost(plan: Tuple[int, ...]) -> int:
        m, keys = n, 0
        for r in plan:
            keys += cdiv(m, r) + SELECT_LAUNCH_KEYS
            m = r * topk_p2
        return keys + m

    return min(plans(n, n, 2), key=lambda plan: (cost(plan), len(plan)))


class SelectWrite(NamedTuple):
    """Where ``select_keys``'s last launch writes ``indexer_topk``'s output itself (``_write_topk``)
    instead of the sorted keys: ``indices`` [T, >= topk] int32 and ``lengths`` [T] (rows of the keys'
    tokens), the sequence of each token and its block-table row (``_pool_args``' ``seq``, ``num_seqs``,
    ``bt``, ``stride_bt_b``, ``stride_bt_p``, ``page_size``, ``paged``), and whether to map entry ids
    to pool slots."""

    indices: torch.Tensor
    lengths: torch.Tensor
    topk: int
    seq: torch.Tensor
    num_seqs: int
    bt: torch.Tensor
    stride_bt_b: int
    stride_bt_p: int
    page_size: int
    paged: bool
    to_slots: bool


def select_keys(
    keys: torch.Tensor,
    visible_end: torch.Tensor,
    k_sel: int,
    topk_p2: int,
    out: Optional[torch.Tensor] = None,
    stages: Optional[Sequence[int]] = None,
    write: Optional[SelectWrite] = None,
) -> torch.Tensor:
    """The ``k_sel`` largest of each row's first ``visible_end[t]`` int64 sort keys (NO_KEY never taken),
    sorted descending into ``out`` [T, topk_p2] (NO_KEY after them), by ``_select_keys_kernel``. With
    ``stages`` (R_1, R_2, ...) (default ``choose_select_stages``: a decode step's few rows would leave
    most SMs idle) in reducing stages: R_1 programs per row each select the top ``k_sel`` of their n / R_1
    entries into a [T, R_1, topk_p2] workspace (unsorted: the next stage selects again), R_2 programs
    per row then each select from R_1 / R_2 of those lists, ..., and one program per row from the last
    stage's lists (exact: a row's top k_sel are among its sub-rows' top k_sel). With ``write``, that last
    launch writes the indices and lengths of ``write`` instead, and ``out`` is only its scratch (left
    holding the selected keys unsorted). Rows of ``keys`` and ``out`` unit-strided (any row stride)."""
    T, n = keys.shape
    if out is None:
        out = torch.empty(T, topk_p2, dtype=torch.int64, device=keys.device)
    assert keys.stride(1) == 1 and out.stride(1) == 1 and out.shape == (T, topk_p2), (keys.stride(), out.shape)
    if T == 0:
        return out
    plan = tuple(stages) if stages is not None else choose_select_stages(T, n, topk_p2, keys.device)
    # the launches that write no indices get any tensors for those arguments (never read)
    w = write or SelectWrite(indices=out, lengths=out, topk=0, seq=visible_end, num_seqs=0, bt=visible_end,
                             stride_bt_b=0, stride_bt_p=0, page_size=1, paged=False, to_slots=False)  # fmt: skip
    rows, row_len, has_vis = keys, n, True
    for i, r in enumerate(plan + (1,)):
        last = i == len(plan)  # one program per row, sorted (or written as indices)
        final = last and write is not None
        r = max(1, min(r, max(row_len, 1)))
        dst = out if last else torch.empty(T, r, topk_p2, dtype=torch.int64, device=keys.device)  # all written
        _select_keys_kernel[(T, r)](
            rows, rows.stride(0), visible_end, row_len, max(row_len, 1) if last else cdiv(row_len, r),
            dst, dst.stride(0), 0 if last else dst.stride(1), k_sel,
            w.seq, w.num_seqs, w.bt, w.stride_bt_b, w.stride_bt_p, w.page_size,
            w.indices, w.indices.stride(0), w.lengths, w.topk,
            HAS_VIS=has_vis, TOPK_P2=topk_p2, BLOCK=SELECT_BLOCK, DIGIT_BITS=SELECT_DIGIT_BITS, SORTED=last,
            FINAL=final, PAGED=final and w.paged, TO_SLOTS=final and w.to_slots, num_warps=8,
        )  # fmt: skip
        if not last:
            rows, row_len, has_vis = dst.view(T, r * topk_p2), r * topk_p2, False
    return out


def _select_topk(q, weights, index_k, visible_end, seq_ids, pa, topk, to_slots, config, indices, lengths):
    """``indexer_topk``'s select path, into ``indices`` / ``lengths`` (T >= 1; ``pa``: ``_pool_args``),
    per chunk of tokens (the key rows within WORKSPACE_BYTES):
    1. ``_indexer_topk_partial_kernel`` with KEYS_ONLY: the int64 sort key of every entry, [Tc, N]
       (each program scores a range of entries with q and w held in registers);
    2. ``_select_keys_kernel`` (``select_keys``): each row's top ``TOPK_P2`` keys by radix select, sorted
       (keys are unique per entry, so the result is exact and its order, score descending then id
       ascending, is fixed: no tie is left to the select; ``torch.topk`` did this before: 180 us of the
       620 us of a 262,144-entry decode on an H200);
       and its last launch writes the output from them (``SelectWrite``): ids or slots, -1 padding,
       lengths (a separate write launch before 2026-12-06: one dependent launch fewer per call).
    No host synchronisation: the launches are CUDA-graph capturable for fixed shapes."""
    T, Hi, Di = q.shape
    device = q.device
    n, paged = pa[0], pa[12]
    cfg = dict(config) if config is not None else select_config(Hi, Di, device)
    cdt = compute_dtype(q, index_k)
    topk_p2 = max(2, next_power_of_2(topk))
    block_n = cfg["BLOCK_N"]
    one_tile = Hi <= cfg["BLOCK_HI"] and Di <= cfg["BLOCK_DI"]
    rows = max(1, min(T, WORKSPACE_BYTES // max(1, n * 8)))
    keys = torch.empty(rows, max(n, 1), dtype=torch.int64, device=device)
    k_sel = min(topk_p2, n)
    best = torch.empty(rows, topk_p2, dtype=torch.int64, device=device)  # the last select's scratch
    p_k, p_ks, key_fp8, align16, k_group = _key_args(index_k)
    for t0 in range(0, T, rows):
        t1 = min(T, t0 + rows)
        tc = t1 - t0
        per = choose_entries_per_program(tc, n, 1, block_n, device)
        ranges = max(1, cdiv(n, per))
        if tc == T:  # one chunk (decode): the whole tensors, no views to make
            vis, seq, q_c, w_c, out_idx, out_len = (
                visible_end,
                seq_ids if paged else pa[8],
                q,
                weights,
                indices,
                lengths,
            )
        else:
            vis, seq = visible_end[t0:t1], seq_ids[t0:t1] if paged else pa[8]
            q_c, w_c, out_idx, out_len = q[t0:t1], weights[t0:t1], indices[t0:t1], lengths[t0:t1]
        if n > 0:
            _indexer_topk_partial_kernel[(tc, ranges)](
                q_c, q_c.stride(0), q_c.stride(1), q_c.stride(2),
                w_c, w_c.stride(0), w_c.stride(1),
                p_k, p_ks, pa[1], pa[2], pa[3], pa[4],
                pa[5], pa[6], pa[7], seq, pa[9], pa[10], pa[11],
                vis, n, per,
                keys, keys.stride(0), 0,
                indices, indices.stride(0), lengths, topk, Hi, Di,
                PAGED=paged, FINAL=False, TO_SLOTS=False, TOPK_P2=topk_p2,
                BLOCK_HI=cfg["BLOCK_HI"], BLOCK_DI=cfg["BLOCK_DI"], BLOCK_N=block_n, ONE_TILE=one_tile,
                CDT=TL_DTYPE[cdt], DOT_PREC="ieee" if cdt == torch.float32 else None, BITONIC=False,
                KEYS_ONLY=True, KEY_FP8=key_fp8, K_ALIGN16=align16, K_GROUP=k_group,
                BLOCK_PAGE=block_page(pa, key_fp8, per, block_n), HEADS_FULL=Hi % cfg["BLOCK_HI"] == 0,
                num_warps=cfg.get("num_warps", 4), num_stages=cfg.get("num_stages", 1),
            )  # fmt: skip
        # n = 0: no key to select, the launch writes -1 rows and zero lengths
        write = SelectWrite(out_idx, out_len, topk, seq, pa[9], pa[5], pa[6], pa[7], pa[11], paged, to_slots)
        select_keys(keys[:tc, :n], vis, k_sel, topk_p2, best[:tc], write=write)


def run_logits(inp):
    """``IndexerInputs`` -> logits [T, N], with the default tiles."""
    return indexer_logits(inp.q, inp.weights, inp.index_k, inp.visible_end, inp.block_table, inp.seq_ids)


def run_topk(inp):
    """``IndexerInputs`` -> (indices, lengths), with the default tiles."""
    return indexer_topk(inp.q, inp.weights, inp.index_k, inp.visible_end, inp.topk, inp.block_table, inp.seq_ids,
                        inp.return_slots)  # fmt: skip
