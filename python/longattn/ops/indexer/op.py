"""``longattn.indexer_logits`` and ``longattn.indexer_topk`` (the lightning indexer): public functions,
prepared inputs and custom ops."""

from __future__ import annotations

import dataclasses
from typing import Optional, Tuple, Union

import torch

from ..._checks import FLOAT_DTYPES, INDEX_DTYPES, ArgChecker
from ...cache.fp8_index import Fp8IndexKeyPool
from ..op import Op
from .support import LOGITS_IMPLS, TOPK_IMPLS


@dataclasses.dataclass(frozen=True)
class IndexerInputs:
    """A validated indexer call.

    q ``[T, Hi, Di]``, weights ``[T, Hi]`` float, index_k ``[N, Di]`` or paged ``[P, page, Di]``
    (with block_table ``[B, max_pages]`` and seq_ids ``[T]``), or an ``Fp8IndexKeyPool`` of dim Di
    (flat: entry j = slot j; paged: the same slot numbering as a float pool), visible_end ``[T]`` int.
    topk (> 0) and return_slots only for ``indexer_topk`` (topk 0 for ``indexer_logits``).
    """

    q: torch.Tensor
    weights: torch.Tensor
    index_k: Union[torch.Tensor, Fp8IndexKeyPool]
    visible_end: torch.Tensor
    block_table: Optional[torch.Tensor]
    seq_ids: Optional[torch.Tensor]
    topk: int = 0
    return_slots: bool = False

    @property
    def device(self) -> torch.device:
        return self.q.device

    @property
    def paged(self) -> bool:
        return self.block_table is not None

    @property
    def fp8(self) -> bool:
        """index_k is an ``Fp8IndexKeyPool``."""
        return isinstance(self.index_k, Fp8IndexKeyPool)

    @property
    def page_size(self) -> int:
        """Entries per page of index_k (a flat float pool: 1 entry per "page")."""
        if isinstance(self.index_k, Fp8IndexKeyPool):
            return self.index_k.page_size
        return self.index_k.shape[1] if self.block_table is not None else 1

    @property
    def num_entries(self) -> int:
        """Logical entries per sequence: rows (slots) of a flat pool, or max_pages * page_size."""
        if self.block_table is None:
            return num_slots(self.index_k)
        return self.block_table.shape[1] * self.page_size

    def to_schema(self):
        base = (self.q, self.weights, schema_index_k(self.index_k), self.visible_end)
        if self.topk == 0:
            return base + (self.block_table, self.seq_ids)
        return base + (self.topk, self.block_table, self.seq_ids, self.return_slots)


def num_slots(index_k) -> int:
    return (
        index_k.num_slots
        if isinstance(index_k, Fp8IndexKeyPool)
        else index_k.shape[0] * (index_k.shape[1] if index_k.dim() == 3 else 1)
    )


def schema_index_k(index_k) -> torch.Tensor:
    """index_k as a schema tensor: an ``Fp8IndexKeyPool`` crosses as its uint8 ``data``."""
    return index_k.data if isinstance(index_k, Fp8IndexKeyPool) else index_k


def from_schema_index_k(op: str, index_k: torch.Tensor, q: torch.Tensor):
    """The index_k a schema tensor stands for: uint8 ``[P, page * (Di + 4)]`` is an ``Fp8IndexKeyPool``
    (Di from q), any other tensor itself."""
    if not isinstance(index_k, torch.Tensor) or index_k.dtype != torch.uint8 or not isinstance(q, torch.Tensor):
        return index_k
    Di = q.shape[-1] if q.dim() else 0
    if index_k.dim() != 2 or Di <= 0 or index_k.shape[1] % (Di + 4) or index_k.shape[1] == 0:
        raise ValueError(
            f"{op}: a uint8 `index_k` must be the data of an Fp8IndexKeyPool [num_pages, page_size * (Di + 4)] "
            f"with Di = {Di} (from q), got shape {list(index_k.shape)}"
        )
    try:
        return Fp8IndexKeyPool(index_k, index_k.shape[1] // (Di + 4), Di)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{op}: `index_k`: {exc}") from None


def _check_fp8_pool(chk: ArgChecker, index_k: Fp8IndexKeyPool, Di: int) -> None:
    chk.on_device("index_k", index_k.data)
    if index_k.dim != Di:
        chk.fail(f"`index_k` is an Fp8IndexKeyPool of dim {index_k.dim}, but q has Di={Di} (they must be equal)")


def prepare(op, q, weights, index_k, visible_end, block_table=None, seq_ids=None, topk=None, return_slots=False):
    """Validate one call of ``op`` ("indexer_logits" or "indexer_topk") and normalise it."""
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
    fp8 = isinstance(index_k, Fp8IndexKeyPool)
    if fp8:
        _check_fp8_pool(chk, index_k, Di)
    elif block_table is None:
        chk.tensor("index_k", index_k, ("N", "Di"))
    else:
        chk.tensor("index_k", index_k, ("num_pages", "page_size", "Di"))
    if block_table is not None:
        chk.tensor("block_table", block_table, ("B", "max_pages"), INDEX_DTYPES)
        chk.tensor("seq_ids", seq_ids, ("T",), INDEX_DTYPES)
        chk.dim("seq_ids", seq_ids, 0, T, "one sequence id per query token of q")
        if not fp8 and index_k.shape[1] == 0:
            chk.fail("`index_k` pages must hold at least one entry (page_size >= 1)")
    if not fp8:
        chk.dim("index_k", index_k, -1 + index_k.dim(), Di, "the indexer head dim Di of q")
    chk.tensor("visible_end", visible_end, ("T",), INDEX_DTYPES)
    chk.dim("visible_end", visible_end, 0, T, "one visible_end per query token of q")
    if topk is None:
        return IndexerInputs(q, weights, index_k, visible_end, block_table, seq_ids)
    topk = chk.positive_int("topk", topk)
    if not isinstance(return_slots, bool):
        chk.fail(f"`return_slots` must be a bool, got {type(return_slots).__name__}", TypeError)
    return IndexerInputs(q, weights, index_k, visible_end, block_table, seq_ids, topk, return_slots)


# --- indexer_logits ----------------------------------------------------------------------------------------
def _logits_from_schema(q, weights, index_k, visible_end, block_table, seq_ids):
    index_k = from_schema_index_k("indexer_logits", index_k, q)
    return prepare("indexer_logits", q, weights, index_k, visible_end, block_table, seq_ids)


def _schema_entries(q, index_k, block_table) -> int:
    """Logical entries per sequence of schema arguments (a uint8 index_k: FP8 pool data, Di from q)."""
    if index_k.dtype == torch.uint8:
        page = index_k.shape[1] // (q.shape[-1] + 4)
        return index_k.shape[0] * page if block_table is None else block_table.shape[1] * page
    return index_k.shape[0] if block_table is None else block_table.shape[1] * index_k.shape[1]


def _logits_fake(q, weights, index_k, visible_end, block_table, seq_ids, backend):
    n = _schema_entries(q, index_k, block_table)
    return q.new_empty((q.shape[0], n), dtype=torch.float32)


LOGITS_OP = Op(
    "indexer_logits",
    "(Tensor q, Tensor weights, Tensor index_k, Tensor visible_end, Tensor? block_table, Tensor? seq_ids, "
    "str? backend) -> Tensor",
    inputs_type=IndexerInputs,
    from_schema=_logits_from_schema,
    fake=_logits_fake,
    impls=LOGITS_IMPLS,
)


def indexer_logits(
    q: torch.Tensor,
    weights: torch.Tensor,
    index_k: Union[torch.Tensor, Fp8IndexKeyPool],
    visible_end: torch.Tensor,
    *,
    block_table: Optional[torch.Tensor] = None,
    seq_ids: Optional[torch.Tensor] = None,
    backend: Optional[str] = None,
) -> torch.Tensor:
    """Dense indexer scores ``[T, N]`` fp32 (for small problems and tests; use ``indexer_topk`` at scale).

    ``score(t, j) = sum_h weights[t, h] * relu(<q[t, h], index_k[j]>)`` for visible entries
    ``j < visible_end[t]``; -inf elsewhere. N = rows of ``index_k``, or ``max_pages * page_size`` when
    paged. See ``indexer_topk`` for the arguments. Not differentiable (``backward()`` raises).
    """
    inputs = prepare("indexer_logits", q, weights, index_k, visible_end, block_table, seq_ids)
    return LOGITS_OP.run(inputs, backend)


# --- indexer_topk ------------------------------------------------------------------------------------------
def _topk_from_schema(q, weights, index_k, visible_end, topk, block_table, seq_ids, return_slots):
    index_k = from_schema_index_k("indexer_topk", index_k, q)
    return prepare("indexer_topk", q, weights, index_k, visible_end, block_table, seq_ids, topk, return_slots)


def _topk_fake(q, weights, index_k, visible_end, topk, block_table, seq_ids, return_slots, backend):
    T = q.shape[0]
    return q.new_empty((T, topk), dtype=torch.int32), q.new_empty((T,), dtype=torch.int32)


TOPK_OP = Op(
    "indexer_topk",
    "(Tensor q, Tensor weights, Tensor index_k, Tensor visible_end, int topk, Tensor? block_table, Tensor? seq_ids, "
    "bool return_slots, str? backend) -> (Tensor, Tensor)",
    inputs_type=IndexerInputs,
    from_schema=_topk_from_schema,
    fake=_topk_fake,
    impls=TOPK_IMPLS,
)


def indexer_topk(
    q: torch.Tensor,
    weights: torch.Tensor,
    index_k: Union[torch.Tensor, Fp8IndexKeyPool],
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
            [0, P) (or whose sequence id is outside [0, B)) are skipped, never read. Or an
            ``longattn.cache.Fp8IndexKeyPool`` of dim Di (vLLM's FP8 indexer K cache record), flat
            (entry j = slot j) or paged with the same slot numbering: the logit of head h is then
            ``scale_j * <q[t, h], e4m3 values of j>`` (= ``<q, dequantised key>`` for finite scales).
        visible_end: ``[T]`` int: token t sees entries ``j < visible_end[t]`` (V4 CSA: (pos + 1) // 4).
        topk: number of entries to select (> 0).
        return_slots: return physical slots (for ``sparse_attention(extra_indices=...)``) instead of
            logical entry ids.

    Returns:
        ``indices [T, topk]`` int32 sorted by descending score, ties broken by the smaller entry id,
        padded with -1; ``lengths [T]`` int32 = number of selected entries
        (= min(topk, visible_end) when every visible entry has a valid slot). A NaN score ranks as +inf.
    """
    inputs = prepare("indexer_topk", q, weights, index_k, visible_end, block_table, seq_ids, topk, return_slots)
    return TOPK_OP.run(inputs, backend)
