"""Reference cache write: rows into pool slots (slots outside the pool are skipped)."""

from __future__ import annotations

import torch


def append_kv(pool, rows: torch.Tensor, slot_mapping: torch.Tensor) -> None:
    num_slots = (
        pool.num_slots
        if not isinstance(pool, torch.Tensor)
        else pool.shape[0] * (pool.shape[1] if pool.dim() == 3 else 1)
    )
    slots = slot_mapping.long()
    keep = (slots >= 0) & (slots < num_slots)
    if not bool(keep.all()):
        slots, rows = slots[keep], rows[keep]
    if isinstance(pool, torch.Tensor):
        pool.view(-1, pool.shape[-1]).index_copy_(0, slots, rows.to(pool.dtype))
    else:
        pool.write_rows(slots, rows)


def run(inp) -> None:
    """``AppendInputs``: writes the rows."""
    append_kv(inp.pool, inp.rows, inp.slot_mapping)
