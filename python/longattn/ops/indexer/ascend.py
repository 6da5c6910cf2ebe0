"""The lightning indexer on the Ascend C kernel (ascend_c/indexer_topk; one kernel computes scores and,
unless asked for the dense logits, the top-k): its limits (mirroring
ascend_c/indexer_topk/op_host/indexer_topk_tiling.h) and its arguments, for the ``ascend_sim`` and
``ascend`` backends."""

from __future__ import annotations

from typing import List

from ...backends.ascend import ai_cores, kernel_of
from ..sparse_attention.ascend import _ELEM, L1_BYTES, _al

MAX_TOPK, MAX_HEADS, MAX_ENTRIES = 1024, 128, 0x00FFFFFF


def reasons(inp) -> List[str]:
    out = []
    T, Hi, Di = inp.q.shape
    if Hi > MAX_HEADS:
        out.append(f"Hi={Hi} > {MAX_HEADS} heads (the [Hi, 128] score tile must fit L0C twice)")
    if Di % 16:
        out.append(f"Di={Di} is not a multiple of 16 (cube fractals)")
    # q and two 128-entry key tiles in L1 (mixed q / index_k dtypes run in fp32: the host widens both)
    sz = _ELEM.get(inp.q.dtype, 4) if inp.q.dtype == inp.index_k.dtype else 4
    if _al(Hi, 16) * Di * sz + 2 * 128 * Di * sz > L1_BYTES:
        out.append(f"Di={Di} with {sz}-byte elements does not fit L1 (q and two key tiles)")
    if inp.num_entries >= MAX_ENTRIES:
        out.append(f"{inp.num_entries} entries >= 2**24 - 1 (ids must be exact in fp32 sort keys)")
    if inp.topk > MAX_TOPK:
        out.append(f"topk={inp.topk} > {MAX_TOPK} (the running lists must fit UB)")
    return out


def _indexer(backend: str, inp, topk: int, logits_only: bool):
    return kernel_of(backend, "indexer")(
        inp.q, inp.weights, inp.index_k, inp.visible_end, topk, inp.block_table, inp.seq_ids,
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
    local, _ = kernel(q.repeat_interleave(S, 0), w.repeat_interleave(S, 0), pool, vis1, K, virt,
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
    pos, lengths = kernel(q, w, flat, torch.full((T,), S * K, device=dev), K, slot, torch.arange(T, device=dev),
                          False, False)  # fmt: skip
    pick = pos.long().clamp(min=0)
    out = (slot if inp.return_slots else gid).gather(1, pick)
    return torch.where(pos >= 0, out, -1).to(torch.int32), lengths


def run_logits(backend: str, inp):
    return _indexer(backend, inp, 1, True)[0]
