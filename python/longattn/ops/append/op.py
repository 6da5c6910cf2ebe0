"""``longattn.append_kv``: the public function, its prepared inputs and its custom op."""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

import torch

from ..._checks import FLOAT_DTYPES, INDEX_DTYPES, ArgChecker
from .. import pools
from ..op import Op, refuse_grad, returns_nothing
from .support import IMPLS

NAME = "append_kv"


@dataclasses.dataclass(frozen=True)
class AppendInputs:
    """pool: a contiguous float pool ``[num_slots, D]`` / ``[num_pages, page_size, D]`` (as given: it is
    written) or a pool object; rows ``[T, D]`` float; slot_mapping ``[T]`` int."""

    pool: Any  # a float tensor or a pool object
    rows: torch.Tensor
    slot_mapping: torch.Tensor

    @property
    def device(self) -> torch.device:
        return self.rows.device

    @property
    def num_slots(self) -> int:
        if isinstance(self.pool, torch.Tensor):
            return self.pool.shape[0] * (self.pool.shape[1] if self.pool.dim() == 3 else 1)
        return int(self.pool.num_slots)

    def to_schema(self):
        if not pools.crosses_schema(self.pool):
            return None
        pool, page_size = pools.to_schema(self.pool)
        return (pool, page_size, self.rows, self.slot_mapping)


def prepare(pool, rows, slot_mapping) -> AppendInputs:
    chk = ArgChecker(NAME)
    chk.tensor("rows", rows, ("T", "D"), FLOAT_DTYPES)
    if isinstance(pool, torch.Tensor):
        pools.float_pool_rows(chk, "pool", pool, rows.shape[1], "the row width D of rows")
        if not pool.is_contiguous():
            chk.fail("`pool` must be contiguous (it is written in place)")
    else:
        if getattr(pool, "head_dim", rows.shape[1]) != rows.shape[1]:
            chk.fail(f"`rows` must be [T, {pool.head_dim}] for this pool, got {list(rows.shape)}")
        pools.pool_object(chk, "pool", pool, rows.shape[1], pools.WRITE_ATTRS)
    chk.tensor("slot_mapping", slot_mapping, ("T",), INDEX_DTYPES)
    chk.dim("slot_mapping", slot_mapping, 0, rows.shape[0], "one slot per row of rows")
    inputs = AppendInputs(pool, rows, slot_mapping)
    refuse_grad(NAME, inputs, "it writes rows into a cache (not differentiable)")
    return inputs


def _from_schema(pool, page_size, rows, slot_mapping):
    return prepare(pools.from_schema(pool, page_size), rows, slot_mapping)


OP = Op(
    NAME,
    "(Tensor(a!) pool, int page_size, Tensor rows, Tensor slot_mapping, str? backend) -> ()",
    inputs_type=AppendInputs,
    from_schema=_from_schema,
    fake=returns_nothing,
    impls=IMPLS,
    mutates=True,
)


def append_kv(pool, rows: torch.Tensor, slot_mapping: torch.Tensor, *, backend: Optional[str] = None) -> None:
    """Write ``rows [T, D]`` into ``pool`` at ``slot_mapping [T]`` (in place).

    ``pool`` is a float tensor ``[num_slots, D]`` / paged ``[num_pages, page_size, D]`` (rows are cast
    to its dtype) or an ``Fp8KVPool`` (rows are quantised, D = 512). Slot = page * page_size + offset.
    Slots outside ``[0, num_slots)`` (e.g. -1 padding) are skipped; slots must otherwise be distinct
    (which of two writes to one slot wins is unspecified, as in vLLM's ``reshape_and_cache``).
    Not differentiable: rows that require grad are refused under grad mode (the cache keeps values).
    """
    OP.run(prepare(pool, rows, slot_mapping), backend)
