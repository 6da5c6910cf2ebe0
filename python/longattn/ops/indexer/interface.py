"""``longattn.indexer_logits`` and ``longattn.indexer_topk`` (the lightning indexer)."""

from __future__ import annotations

from typing import Optional, Tuple

import torch

from ..._checks import FLOAT_DTYPES, INDEX_DTYPES, ArgChecker
from ...backends import registry
from .. import custom_ops


def _check(op, q, weights, index_k, visible_end, block_table, seq_ids) -> ArgChecker:
    chk = ArgChecker(op)
    chk.tensor("q", q, ("T", "Hi", "Di"))
    T, Hi, Di = q.shape
    if Hi == 0 or Di == 0:
        chk.fail(f"`q` must have Hi >= 1 and Di >= 1, got shape {list(q.shape)}")
    chk.tensor("weights", weights, ("T", "Hi"), FLOAT_DTYPES)
    if weights.shape != (T, Hi):
        chk.fail(f"`weights` must be [T, Hi] = {[T, Hi]} (from q), got {list(weights.shape)}")
    if (block_table is None) != (seq_ids is None):
        chk.fail("`block_table` and `seq_ids` must be given together (paged index keys)")
    if block_table is None:
        chk.tensor("index_k", index_k, ("N", "Di"))
    else:
        chk.tensor("index_k", index_k, ("num_pages", "page_size", "Di"))
        chk.tensor("block_table", block_table, ("B", "max_pages"), INDEX_DTYPES)
        chk.tensor("seq_ids", seq_ids, ("T",), INDEX_DTYPES)
        chk.dim("seq_ids", seq_ids, 0, T, "one sequence id per query token of q")
        if index_k.shape[1] == 0:
            chk.fail("`index_k` pages must hold at least one entry (page_size >= 1)")
    chk.dim("index_k", index_k, -1 + index_k.dim(), Di, "the indexer head dim Di of q")
    chk.tensor("visible_end", visible_end, ("T",), INDEX_DTYPES)
    chk.dim("visible_end", visible_end, 0, T, "one visible_end per query token of q")
    return chk


def indexer_logits(
    q: torch.Tensor,
    weights: torch.Tensor,
    index_k: torch.Tensor,
    visible_end: torch.Tensor,
    *,
    block_table: Optional[torch.Tensor] = None,
    seq_ids: Optional[torch.Tensor] = None,
    backend: Optional[str] = None,
) -> torch.Tensor:
    """Dense indexer scores ``[T, N]`` fp32 (for small problems and tests; use ``indexer_topk`` at scale).

    ``score(t, j) = sum_h weights[t, h] * relu(<q[t, h], index_k[j]>)`` for visible entries
    ``j < visible_end[t]``; -inf elsewhere. N = rows of ``index_k``, or ``max_pages * page_size`` when
    paged. See ``indexer_topk`` for the arguments.
    """
    _check("indexer_logits", q, weights, index_k, visible_end, block_table, seq_ids)
    if custom_ops.use_custom_op(q, weights, index_k):
        return custom_ops.indexer_logits(q, weights, index_k, visible_end, block_table, seq_ids, backend)
    args = dict(
        q=q, weights=weights, index_k=index_k, visible_end=visible_end, block_table=block_table, seq_ids=seq_ids
    )
    return registry.select("indexer_logits", q.device, args, backend)(**args)


def indexer_topk(
    q: torch.Tensor,
    weights: torch.Tensor,
    index_k: torch.Tensor,
    visible_end: torch.Tensor,
    topk: int,
    *,
    block_table: Optional[torch.Tensor] = None,
    seq_ids: Optional[torch.Tensor] = None,
    return_slots: bool = False,
    backend: Optional[str] = None,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Top-k compressed entries per query token by lightning-indexer score.

    Args:
        q: ``[T, Hi, Di]`` indexer queries (V4: 64 x 128).
        weights: ``[T, Hi]`` per-head weights (may be negative).
        index_k: ``[N, Di]`` index keys (entry j = row j), or the paged view ``[P, page, Di]`` with
            ``block_table [B, max_pages]`` and ``seq_ids [T]``: entry j of token t lives at slot
            ``block_table[seq_ids[t], j // page] * page + j % page``. Entries whose page id is outside
            [0, P) (or whose sequence id is outside [0, B)) are skipped, never read.
        visible_end: ``[T]`` int: token t sees entries ``j < visible_end[t]`` (V4 CSA: (pos + 1) // 4).
        topk: number of entries to select (> 0).
        return_slots: return physical slots (for ``sparse_attention(extra_indices=...)``) instead of
            logical entry ids.

    Returns:
        ``indices [T, topk]`` int32 sorted by descending score, ties broken by the smaller entry id,
        padded with -1; ``lengths [T]`` int32 = number of selected entries
        (= min(topk, visible_end) when every visible entry has a valid slot).
    """
    chk = _check("indexer_topk", q, weights, index_k, visible_end, block_table, seq_ids)
    topk = chk.positive_int("topk", topk)
    if not isinstance(return_slots, bool):
        chk.fail(f"`return_slots` must be a bool, got {type(return_slots).__name__}", TypeError)
    if custom_ops.use_custom_op(q, weights, index_k):
        return custom_ops.indexer_topk(
            q, weights, index_k, visible_end, topk, block_table, seq_ids, return_slots, backend
        )
    args = dict(
        q=q,
        weights=weights,
        index_k=index_k,
        visible_end=visible_end,
        topk=topk,
        block_table=block_table,
        seq_ids=seq_ids,
        return_slots=return_slots,
    )
    return registry.select("indexer_topk", q.device, args, backend)(**args)
