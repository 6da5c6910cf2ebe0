"""``longattn.append_kv``: write new rows into a KV pool (float or FP8) through a slot mapping."""

from __future__ import annotations

from typing import Optional

import torch

from ..._checks import FLOAT_DTYPES, INDEX_DTYPES, ArgChecker
from ...backends import registry
from .. import custom_ops


def append_kv(pool, rows: torch.Tensor, slot_mapping: torch.Tensor, *, backend: Optional[str] = None) -> None:
    """Write ``rows [T, D]`` into ``pool`` at ``slot_mapping [T]`` (in place).

    ``pool`` is a float tensor ``[num_slots, D]`` / paged ``[num_pages, page_size, D]`` (rows are cast
    to its dtype) or an ``Fp8KVPool`` (rows are quantised, D = 512). Slot = page * page_size + offset.
    Slots outside ``[0, num_slots)`` (e.g. -1 padding) are skipped; slots must otherwise be distinct
    (which of two writes to one slot wins is unspecified, as in vLLM's ``reshape_and_cache``).
    """
    chk = ArgChecker("append_kv")
    chk.tensor("rows", rows, ("T", "D"), FLOAT_DTYPES)
    if isinstance(pool, torch.Tensor):
        if pool.dim() not in (2, 3):
            chk.fail(f"`pool` must be [num_slots, D] or [num_pages, page_size, D], got shape {list(pool.shape)}")
        chk.tensor("pool", pool, ("slots", "D") if pool.dim() == 2 else ("pages", "page_size", "D"), FLOAT_DTYPES)
        chk.dim("pool", pool, pool.dim() - 1, rows.shape[1], "the row width D of rows")
        if not pool.is_contiguous():
            chk.fail("`pool` must be contiguous (it is written in place)")
    elif all(hasattr(pool, a) for a in ("num_slots", "head_dim", "device", "write_rows")):
        if pool.head_dim != rows.shape[1]:
            chk.fail(f"`rows` must be [T, {pool.head_dim}] for this pool, got {list(rows.shape)}")
        if pool.device != chk.device:
            chk.fail(f"all tensors must be on one device: `rows` is on {chk.device} but `pool` is on {pool.device}")
    else:
        chk.fail(f"`pool` must be a float tensor pool or a KV pool object, got {type(pool).__name__}", TypeError)
    chk.tensor("slot_mapping", slot_mapping, ("T",), INDEX_DTYPES)
    chk.dim("slot_mapping", slot_mapping, 0, rows.shape[0], "one slot per row of rows")
    if custom_ops.use_custom_op(rows, pool) and custom_ops.is_schema_pool(pool):
        pool_t, page_size = custom_ops.pool_to_schema(pool)
        custom_ops.append_kv(pool_t, page_size, rows, slot_mapping, backend)
        return
    args = dict(pool=pool, rows=rows, slot_mapping=slot_mapping)
    registry.select("append_kv", rows.device, args, backend)(**args)
