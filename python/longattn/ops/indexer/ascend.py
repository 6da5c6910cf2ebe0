"""The lightning indexer on the Ascend C kernel (ascend_c/indexer_topk; one kernel computes scores and,
unless asked for the dense logits, the top-k): its limits (mirroring
ascend_c/indexer_topk/op_host/indexer_topk_tiling.h) and its arguments, for the ``ascend_sim`` and
``ascend`` backends."""

from __future__ import annotations

from typing import List

from ...backends.ascend import ai_cores, kernel_of
from ..sparse_attention.ascend import _ELEM, L1_BYTES, _al

MAX_TOPK, MAX_HEADS, MAX_ENTRIES = 1024, 128, 0x00FFFFFF


# ---- native bf16 key pools under fp32 / fp16 queries -------------------------------------------------
# The cube multiplies equal types only. Instead of widening a bf16 key pool to fp32 on every call (a copy
# of the whole pool, twice its bytes for the kernel), q is split into bf16 pieces whose sum is exactly q:
# the kernel accumulates the pieces' products with the same keys into one fp32 tile, and bf16 x bf16
# products are exact in fp32, so the scores are fp32 dot products up to the summation order. The other
# mixed pairs (fp16 or fp32 keys under a q of another dtype, bf16 q over fp16 / fp32 keys) are widened to
# fp32 by the host (csrc/common/host_ops.h): a copy of the pool per call.
def piece_count(q_dtype, k_dtype) -> int:
    """bf16 pieces q is split into for the kernel: 3 for fp32 q and 2 for fp16 q over a bf16 pool, else 1
    (q passed as it is, or q and index_k both widened to fp32 by the host)."""
    import torch

    if k_dtype != torch.bfloat16:
        return 1
    return {torch.float32: 3, torch.float16: 2}.get(q_dtype, 1)


def _trunc_bf16(x):
    """fp32 x with the low 16 bits cleared: x rounded toward zero to bf16's 8 bits (exact, never overflows)."""
    import torch

    return (x.view(torch.int32) & -65536).view(torch.float32)


def bf16_pieces(q):
    """[P, *q.shape] bf16 pieces of an fp32 (P = 3) or fp16 (P = 2) tensor whose sum is q.

    Finite q: hi = q truncated to bf16 (8 significant bits, toward zero), r = q - hi (exact in fp32),
    mid = r truncated, lo = r - mid (fp32: at most 8 significant bits remain, so lo is exact in bf16; fp16
    q has 11 bits: two pieces). Every piece has q's sign and none is zero unless q is (a piece that would
    be zero is made by halving the smallest non-zero one: hi -> hi/2, hi/4, hi/4; mid -> mid/2, mid/2), so
    a piece times an infinite key is the same infinity as q times it (a zero piece would add 0 * inf =
    NaN). Non-finite q: every piece is q (inf x inf stays inf, 0-free). Underflow corner: bf16 has fp32's
    exponent range but only 8 bits, so a piece below 2^-126 must be a multiple of 2^-133 (bf16's smallest
    subnormal): fp32 q with |q| < 2^-109 (ulp(q) < 2^-133) can lose its lowest bits (an absolute error
    below 2^-134 per element) and the halving can round at that scale; fp16 q is always split exactly."""
    import torch

    P = piece_count(q.dtype, torch.bfloat16)
    if P == 1:
        raise ValueError(f"bf16_pieces: q must be float32 or float16, got {q.dtype}")
    x = q.float()
    fin = torch.isfinite(x)
    hi = _trunc_bf16(x)
    r = x - hi
    if P == 2:
        lo = r
        none = lo == 0
        pieces = [torch.where(none, hi * 0.5, hi), torch.where(none, hi * 0.5, lo)]
    else:
        mid = _trunc_bf16(r)
        lo = r - mid
        one = (mid == 0) & (lo == 0)  # q has at most 8 significant bits
        two = (mid != 0) & (lo == 0)
        pieces = [
            torch.where(one, hi * 0.5, hi),
            torch.where(one, hi * 0.25, torch.where(two, mid * 0.5, mid)),
            torch.where(one, hi * 0.25, torch.where(two, mid * 0.5, lo)),
        ]
    return torch.stack([torch.where(fin, p, x) for p in pieces]).to(torch.bfloat16)


def kernel_q(q, index_k):
    """q as the kernel takes it: bf16 pieces [P, T, Hi, Di] over a bf16 pool (fp32 / fp16 q), else q."""
    return bf16_pieces(q) if piece_count(q.dtype, index_k.dtype) > 1 else q


def reasons(inp) -> List[str]:
    if inp.fp8:
        return [
            "FP8 index-key pools (Fp8IndexKeyPool) are not read by the Ascend kernel (float index keys only; "
            "dequantize_index_k_fp8 gives a float pool)"
        ]
    out = []
    T, Hi, Di = inp.q.shape
    if Hi > MAX_HEADS:
        out.append(f"Hi={Hi} > {MAX_HEADS} heads (the [Hi, 128] score tile must fit L0C twice)")
    if Di % 16:
        out.append(f"Di={Di} is not a multiple of 16 (cube fractals)")
    # q (or its bf16 pieces) and two 128-entry key tiles in L1; other mixed q / index_k dtypes run in fp32
    # (the host widens both)
    pieces = piece_count(inp.q.dtype, inp.index_k.dtype)
    sz = _ELEM.get(inp.index_k.dtype, 4) if inp.q.dtype == inp.index_k.dtype or pieces > 1 else 4
    if pieces * _al(Hi, 16) * Di * sz + 2 * 128 * Di * sz > L1_BYTES:
        out.append(f"Di={Di} with {sz}-byte elements and {pieces} q piece(s) does not fit L1 (q and two key tiles)")
    if inp.num_entries >= MAX_ENTRIES:
        out.append(f"{inp.num_entries} entries >= 2**24 - 1 (ids must be exact in fp32 sort keys)")
    if inp.topk > MAX_TOPK:
        out.append(f"topk={inp.topk} > {MAX_TOPK} (the running lists must fit UB)")
    return out


def _indexer(backend: str, inp, topk: int, logits_only: bool):
    return kernel_of(backend, "indexer")(
        kernel_q(inp.q, inp.index_k), inp.weights, inp.index_k, inp.visible_end, topk, inp.block_table, inp.seq_ids,
        bool(inp.return_slots), logits_only,
    )  # fmt: skip


# Decode with fewer tokens than AI cores: one token is one task of the kernel, so T = 1 runs on one of
# the chip's cores. The entries are then split into chunks over the cores (two launches of the same kernel):
#   1. every (token, chunk) is a task with its own virtual block-table row (the chunk's pages; a flat pool is
#      viewed as pages), giving each chunk's exact top-k in local ids;
#   2. per token, the union of the chunks' top-k (at most S * K candidates, sorted by entry id, as pages of
#      one row each) is scored again and its top-k taken: the global top-k is contained in that union (the
#      order -- score descending, id ascending -- is total and the same in every chunk), the scores are
#      recomputed bit for bit (the same kernel and slices), ties keep the id order because the candidates
#      are laid out by id, and lengths = min(K, usable entries) as before.
# Only shapes decide the split (no host sync): S = min(cores // T, entries // SPLIT_MIN_ENTRIES).
SPLIT_MIN_ENTRIES = 4096  # a chunk rescored as K candidates should hold many more than K entries


def split_count(inp, cores: int) -> int:
    """Chunks per token for ``indexer_topk`` (1: no split)."""
    T = inp.q.shape[0]
    if T == 0 or T * 2 > cores:
        return 1
    return max(1, min(cores // T, inp.num_entries // max(SPLIT_MIN_ENTRIES, 4 * int(inp.topk))))


def run_topk(backend: str, inp):
    S = split_count(inp, ai_cores(backend))
    if S > 1:
        return _split_topk(backend, inp, S)
    indices, lengths = _indexer(backend, inp, int(inp.topk), False)
    return indices, lengths


def _split_topk(backend: str, inp, S: int):
    """``indexer_topk`` of ``inp`` with each token's entries in S chunks (see above)."""
    import torch

    kernel = kernel_of(backend, "indexer")
    q, w, K = inp.q, inp.weights, int(inp.topk)
    T, dev = q.shape[0], q.device
    if inp.paged:
        pool, page = inp.index_k, inp.index_k.shape[1]
        bt, seq = inp.block_table.long(), inp.seq_ids.long()
        ok = (seq >= 0) & (seq < bt.shape[0])
        rows = bt.index_select(0, seq.clamp(0, max(bt.shape[0] - 1, 0))) if bt.shape[0] else bt.new_full((T, 0), -1)
        rows = rows.masked_fill(~ok[:, None], -1)  # [T, cols] physical page of each logical page (-1: none)
    else:
        N = inp.index_k.shape[0]
        page = next(g for g in (128, 64, 32, 16, 8, 4, 2, 1) if N % g == 0)  # the flat pool as pages
        pool = inp.index_k.reshape(N // page, page, q.shape[2])
        rows = torch.arange(N // page, device=dev).expand(T, N // page)
    cols = rows.shape[1]
    pc = -(-cols // S)  # pages per chunk
    S = -(-cols // pc)
    chunk = pc * page
    # phase 1: (token, chunk) tasks over virtual block-table rows [T * S, pc]
    virt = torch.nn.functional.pad(rows, (0, S * pc - cols), value=-1).reshape(T * S, pc)
    starts = torch.arange(S, device=dev) * chunk
    vis = inp.visible_end.long().clamp(0, cols * page)
    vis1 = (vis[:, None] - starts[None, :]).clamp(0, chunk).reshape(T * S)
    qk = kernel_q(q, pool)  # [T, Hi, Di] or bf16 pieces [P, T, Hi, Di]
    local, _ = kernel(qk.repeat_interleave(S, -3), w.repeat_interleave(S, 0), pool, vis1, K, virt,
                      torch.arange(T * S, device=dev), False, False)  # fmt: skip
    # the candidates of each token by entry id (invalid ones last), and their physical slots
    local = local.long().view(T, S, K)
    gid = torch.where(local >= 0, local + starts[None, :, None], -1).view(T, S * K)
    key = torch.where(gid >= 0, gid, torch.iinfo(torch.int64).max).sort(dim=1).values
    valid = key != torch.iinfo(torch.int64).max
    gid = torch.where(valid, key, -1)
    phys = rows.gather(1, (gid // page).clamp(0, max(cols - 1, 0))) if cols else torch.full_like(gid, -1)
    slot = torch.where(valid & (phys >= 0), phys * page + gid % page, -1)
    # phase 2: the candidates as one-entry pages of the whole pool, in id order
    flat = pool.reshape(-1, 1, q.shape[2])
    pos, lengths = kernel(qk, w, flat, torch.full((T,), S * K, device=dev), K, slot, torch.arange(T, device=dev),
                          False, False)  # fmt: skip
    pick = pos.long().clamp(min=0)
    out = (slot if inp.return_slots else gid).gather(1, pick)
    return torch.where(pos >= 0, out, -1).to(torch.int32), lengths


def run_logits(backend: str, inp):
    return _indexer(backend, inp, 1, True)[0]
