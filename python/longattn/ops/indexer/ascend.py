"""The lightning indexer on the Ascend C kernel (ascend_c/indexer_topk; one kernel computes scores and,
unless asked for the dense logits, the top-k): its limits (mirroring
ascend_c/indexer_topk/op_host/indexer_topk_tiling.h) and its arguments, for the ``ascend_sim`` and
``ascend`` backends."""

from __future__ import annotations

from typing import List

from ...backends.ascend import kernel_of
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


def run_topk(backend: str, inp):
    indices, lengths = _indexer(backend, inp, int(inp.topk), False)
    return indices, lengths


def run_logits(backend: str, inp):
    return _indexer(backend, inp, 1, True)[0]
