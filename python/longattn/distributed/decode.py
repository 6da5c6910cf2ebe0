"""Decode context parallelism: the compressed entries sharded over the ranks of a process group.

Every rank holds the same decode query tokens (q, indexer q / weights, visible_end, sink) and its own
pages of the compressed KV and index-key pools (``PageShards``). Per step:

1. ``cp_indexer_topk``: each rank ranks its shard with ``indexer_topk`` (any backend), scores its
   ``topk`` winners once more in fp32 and exports them as int64 sort keys (score bits, then
   ``2^32 - 1 - global id``; padding ``NO_KEY``); one all-gather and one ``topk`` over the
   ``world * topk`` keys give every rank the same global ids, ordered by score descending, smaller
   id first on ties, exactly the single-device order whenever the scores are (always for the
   reference backend: one fp32 formula).
2. ``cp_sparse_attention``: each rank attends to the entries it holds (its local slots of the selected
   ids, plus the window on the rank that holds it) without the sink; the ``(out, lse)`` partials are
   all-gathered and merged in rank order in fp32, then the sink is applied once: every rank gets the
   same bits, equal to the single-device result within float tolerance.

Before any collective, every call agrees across ranks with one small all-reduce: a rank whose
arguments are malformed (or whose replicated arguments differ from rank 0's in shape, dtype or
``topk``) makes every rank raise ``CPError`` naming it, instead of leaving the others blocked in a
collective. Set a timeout on the process group for anything else that can hang (a dead rank).

Communication per step (``decode_comm_bytes``): each rank receives ``(world - 1) * T * topk * 8``
bytes of keys and ``(world - 1) * T * H * (D * elem + 4)`` bytes of partials.
"""

from __future__ import annotations

import zlib
from typing import Callable, List, Optional, Tuple, TypeVar, Union

import torch
import torch.distributed as dist

from ..cache.fp8_index import Fp8IndexKeyPool
from ..cache.shards import PageShards
from ..ops.combine import apply_attention_sink, merge_attention_states
from ..ops.indexer import indexer_topk
from ..ops.indexer.reference import _LOW32, NO_KEY, pack_keys
from ..ops.sparse_attention import sparse_attention

R = TypeVar("R")


class CPError(RuntimeError):
    """A context-parallel call failed on some rank; raised on every rank of the group."""

    def __init__(self, op: str, rank: int, message: str):
        super().__init__(f"{op}: rank {rank} failed: {message}")
        self.op, self.rank, self.message = op, rank, message


def _comm_device(group, like: torch.device) -> torch.device:
    """Where the collectives' tensors live: CPU for gloo, the data's device otherwise (NCCL, HCCL)."""
    return torch.device("cpu") if dist.get_backend(group) == "gloo" else like


def _signature(*parts) -> int:
    """A 62-bit digest of the arguments every rank must hold alike (shapes, dtypes, sizes)."""
    return zlib.crc32(repr(parts).encode()) & ((1 << 62) - 1)


def agree(op: str, group, device: torch.device, local: Callable[[], R], signature: Callable[[], object]) -> R:
    """Run ``local`` (the rank's checks and work before any collective) and agree on the outcome:
    one all-reduce of [failed, -failed rank, signature, -signature] (MAX). On a failure, or when the
    signature differs across ranks, every rank raises ``CPError`` naming the first bad rank."""
    rank = dist.get_rank(group)
    result: Optional[R] = None
    error: Optional[BaseException] = None
    sig = 0
    try:
        result = local()
        sig = _signature(signature())
    except Exception as exc:  # noqa: BLE001  (reported to every rank, re-raised here)
        error = exc
    flags = torch.tensor(
        [1 if error is not None else 0, -rank if error is not None else -(1 << 40), sig, -sig],
        dtype=torch.int64,
        device=_comm_device(group, device),
    )
    dist.all_reduce(flags, op=dist.ReduceOp.MAX, group=group)
    failed, neg_rank, sig_max, neg_sig_min = flags.tolist()
    if failed:
        bad = -neg_rank
        msgs: List[Optional[str]] = [None] * dist.get_world_size(group)
        dist.all_gather_object(msgs, f"{type(error).__name__}: {error}" if error is not None else None, group=group)
        raise CPError(op, bad, msgs[bad] or "unknown error") from error
    if sig_max != -neg_sig_min:
        sigs = [torch.zeros((), dtype=torch.int64, device=flags.device) for _ in range(dist.get_world_size(group))]
        dist.all_gather(sigs, torch.tensor(sig, dtype=torch.int64, device=flags.device), group=group)
        bad = next(r for r, s in enumerate(sigs) if int(s) != int(sigs[0]))
        raise CPError(op, bad, "its replicated arguments (shapes, dtypes, sizes) differ from rank 0's")
    return result  # type: ignore[return-value]


def check_group(op: str, shards, group) -> None:
    """``shards`` (``PageShards`` or ``TokenShards``) must describe this process in ``group``."""
    rank, world = dist.get_rank(group), dist.get_world_size(group)
    if (shards.rank, shards.world) != (rank, world):
        raise ValueError(
            f"{op}: `shards` is for rank {shards.rank} of {shards.world} but this process is rank {rank} of {world}"
        )


def _all_gather(x: torch.Tensor, group) -> List[torch.Tensor]:
    """All ranks' ``x`` (same shape and dtype everywhere), in rank order, on ``x``'s device."""
    dev = _comm_device(group, x.device)
    xs = x.to(dev).contiguous()
    out = [torch.empty_like(xs) for _ in range(dist.get_world_size(group))]
    dist.all_gather(out, xs, group=group)
    return [t.to(x.device) for t in out]


def _index_rows(
    index_k: Union[torch.Tensor, Fp8IndexKeyPool], local_ids, shards: PageShards, block_table, seq_ids
) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """fp32 key rows ``[T, K, Di]`` of local entry ids ``[T, K]`` (rows of ids < 0: zeros), and for an FP8
    index-key pool the entries' scales ``[T, K]`` (the rows are then the e4m3 values; else None)."""
    if isinstance(index_k, Fp8IndexKeyPool):
        num_slots, di = index_k.num_slots, index_k.dim
    else:
        num_slots, di = index_k.reshape(-1, index_k.shape[-1]).shape
    if block_table is None:
        slots = torch.where((local_ids >= 0) & (local_ids < num_slots), local_ids.long(), -1)
    else:
        slots = shards.local_slots(local_ids, block_table, seq_ids)
    ok = slots >= 0
    if isinstance(index_k, Fp8IndexKeyPool):
        if num_slots == 0:
            rows = torch.zeros(*slots.shape, di, dtype=torch.float32, device=index_k.device)
            return rows, torch.zeros(slots.shape, dtype=torch.float32, device=index_k.device)
        values, scales = index_k.gather_parts(slots.clamp_min(0).reshape(-1))
        rows = values.view(*slots.shape, di).masked_fill_(~ok.unsqueeze(-1), 0.0)
        return rows, scales.view(slots.shape).masked_fill_(~ok, 0.0)
    if num_slots == 0:
        return torch.zeros(*slots.shape, di, dtype=torch.float32, device=index_k.device), None
    flat = index_k.reshape(-1, di)
    rows = flat[slots.clamp_min(0)].to(torch.float32)
    return rows.masked_fill_(~ok.unsqueeze(-1), 0.0), None


def _scores(
    q: torch.Tensor, weights: torch.Tensor, rows: torch.Tensor, scales: Optional[torch.Tensor] = None
) -> torch.Tensor:
    """``sum_h weights[t, h] relu(<q[t, h], rows[t, k]>)`` in fp32 ``[T, K]``: the indexer's formula,
    as the reference computes it (per-head products by one matmul, then the weighted head sum); FP8
    index keys: each product times the entry's scale before the relu."""
    per_head = torch.bmm(q.to(torch.float32), rows.transpose(1, 2))  # [T, Hi, K]
    if scales is not None:
        per_head = per_head * scales.unsqueeze(1)
    per_head = torch.relu(per_head)
    return torch.bmm(weights.to(torch.float32).unsqueeze(1), per_head).squeeze(1)


def cp_indexer_topk(
    q: torch.Tensor,
    weights: torch.Tensor,
    index_k: Union[torch.Tensor, Fp8IndexKeyPool],
    visible_end: torch.Tensor,
    topk: int,
    *,
    shards: PageShards,
    block_table: Optional[torch.Tensor] = None,
    seq_ids: Optional[torch.Tensor] = None,
    group=None,
    backend: Optional[str] = None,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Top-k over the compressed entries of all ranks: the global ids, identical on every rank.

    Args:
        q, weights, visible_end, topk: as ``longattn.indexer_topk``, the same on every rank
            (``visible_end`` in global entries).
        index_k: this rank's index keys: local entry ``l`` at row ``l`` (``[N_local, Di]``), or paged
            ``[P_local, page_size, Di]`` with this rank's ``block_table [B, local_pages]`` and ``seq_ids``;
            or this rank's ``Fp8IndexKeyPool`` (flat: local entry l = slot l; paged: as a float pool).
        shards: the page layout (``PageShards(world, rank, page_size)``).
        group: the process group (default: the world).

    Returns:
        ``ids [T, topk]`` int32 global entry ids, score descending, smaller id first on ties, -1
        padded; ``lengths [T]`` int32. Use ``shards.to_local`` / ``local_slots`` for this rank's part.
    """
    check_group("cp_indexer_topk", shards, group)

    def local():
        local_end = shards.local_count(visible_end.long())
        ids_l, _ = indexer_topk(
            q, weights, index_k, local_end, topk, block_table=block_table, seq_ids=seq_ids, backend=backend
        )
        return local_topk_keys(q, weights, index_k, ids_l, shards, block_table, seq_ids)

    keys = agree(
        "cp_indexer_topk",
        group,
        q.device,
        local,
        lambda: (tuple(q.shape), q.dtype, tuple(weights.shape), tuple(visible_end.shape), int(topk)),
    )
    return merge_topk_keys(keys, topk, group)


def local_topk_keys(q, weights, index_k, local_ids, shards: PageShards, block_table=None, seq_ids=None):
    """int64 sort keys ``[T, K]`` of this rank's top-k (local ids ``[T, K]``, -1 padded): the fp32
    score of each, then ``2^32 - 1 - global id``; ``NO_KEY`` for padding."""
    gids = shards.to_global(local_ids.long())
    if bool((gids > _LOW32 - 1).any()):
        raise ValueError("cp_indexer_topk: global entry ids must be < 2**32 - 1")
    rows, scales = _index_rows(index_k, local_ids, shards, block_table, seq_ids)
    keys = pack_keys(_scores(q, weights, rows, scales), gids.clamp_min(0))
    return keys.masked_fill_(local_ids < 0, NO_KEY)


def merge_topk_keys(keys: torch.Tensor, topk: int, group=None) -> Tuple[torch.Tensor, torch.Tensor]:
    """All ranks' keys ``[T, K]`` -> the global top-``topk`` ``(ids [T, topk] int32, lengths [T] int32)``,
    the same on every rank (one all-gather; call on every rank)."""
    merged = torch.topk(torch.cat(_all_gather(keys, group), dim=1), topk, dim=1, sorted=True).values
    selected = merged != NO_KEY
    ids = torch.where(selected, _LOW32 - (merged & _LOW32), -1).to(torch.int32)
    return ids, selected.sum(dim=1).to(torch.int32)


def cp_sparse_attention(
    q: torch.Tensor,
    kv,
    indices: torch.Tensor,
    *,
    topk_length: Optional[torch.Tensor] = None,
    extra_kv=None,
    extra_indices: Optional[torch.Tensor] = None,
    extra_topk_length: Optional[torch.Tensor] = None,
    attn_sink: Optional[torch.Tensor] = None,
    softmax_scale: Optional[float] = None,
    group=None,
    backend: Optional[str] = None,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """``sparse_attention`` over keys spread across ranks: each rank passes the streams it holds
    (its indices into its own pools: e.g. the window on one rank, ``shards.local_slots`` of the
    selected ids on every rank), and every rank gets the attention over the union of all ranks' keys.

    The partials are computed without the sink, all-gathered and merged in rank order in fp32, then
    ``attn_sink`` (the same on every rank) is applied once. ``q``, ``attn_sink`` and ``softmax_scale``
    must be the same on every rank. Returns ``out [T, H, D]`` in q's dtype and ``lse [T, H]`` fp32.
    """

    def local():
        return sparse_attention(
            q,
            kv,
            indices,
            topk_length=topk_length,
            extra_kv=extra_kv,
            extra_indices=extra_indices,
            extra_topk_length=extra_topk_length,
            softmax_scale=softmax_scale,
            backend=backend,
        )

    out, lse = agree(
        "cp_sparse_attention",
        group,
        q.device,
        local,
        lambda: (tuple(q.shape), q.dtype, softmax_scale, None if attn_sink is None else tuple(attn_sink.shape)),
    )
    return merge_partials(out, lse, attn_sink, group, backend)


def merge_partials(out: torch.Tensor, lse: torch.Tensor, attn_sink=None, group=None, backend=None):
    """Every rank's attention partial ``(out [T, H, D], lse [T, H])`` (no sink) -> the attention over
    all their keys: all-gathered, merged in rank order in fp32, then ``attn_sink`` applied once.
    Returns ``(out in out's dtype, lse fp32)``, the same bits on every rank (call on every rank)."""
    outs, lses = _all_gather(out, group), _all_gather(lse, group)
    acc_out, acc_lse = outs[0].to(torch.float32), lses[0]
    for o, s in zip(outs[1:], lses[1:]):
        acc_out, acc_lse = merge_attention_states(acc_out, acc_lse, o.to(torch.float32), s, backend=backend)
    if attn_sink is not None:
        acc_out = apply_attention_sink(acc_out, acc_lse, attn_sink, backend=backend)
    return acc_out.to(out.dtype), acc_lse


def decode_comm_bytes(world: int, tokens: int, topk: int, heads: int, head_dim: int, out_bytes: int = 2) -> dict:
    """Bytes one rank receives per decode step of one CSA layer (HCA: ``topk`` = 0): the top-k keys
    and the attention partials (``out_bytes`` per output element, fp32 lse), plus the agreement."""
    keys = (world - 1) * tokens * topk * 8
    partials = (world - 1) * tokens * heads * (head_dim * out_bytes + 4)
    return {"topk_keys": keys, "partials": partials, "agreement": 4 * 8, "total": keys + partials + 32}
