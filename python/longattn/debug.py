"""Opt-in checks that look at index *values* (the ops never do: they skip bad indices by contract).

Use these while integrating: an out-of-range index is silently "no key" inside the ops, which is
safe but usually a bug in the caller's slot bookkeeping.
"""

from __future__ import annotations

import dataclasses
from typing import List, Optional, Tuple

import torch


@dataclasses.dataclass
class IndexReport:
    name: str
    num_slots: int
    counted: int  # entries inside topk_length (all entries without lengths)
    padding: int  # -1 entries among the counted ones
    negative: int  # other negative values (< -1)
    out_of_range: int  # values >= num_slots
    examples: List[Tuple[int, int, int]]  # (row, col, value) of the first offending entries

    @property
    def ok(self) -> bool:
        return self.negative == 0 and self.out_of_range == 0

    def __str__(self) -> str:
        head = (
            f"{self.name}: {self.counted} counted entries, {self.padding} padding (-1), "
            f"{self.negative} negative, {self.out_of_range} >= num_slots ({self.num_slots})"
        )
        if self.ok:
            return head + ": ok"
        return head + "; first offending (row, col, value): " + ", ".join(map(str, self.examples))


def check_indices(
    indices: torch.Tensor,
    kv_or_num_slots,
    topk_length: Optional[torch.Tensor] = None,
    *,
    name: str = "indices",
    max_examples: int = 8,
    raise_on_error: bool = False,
) -> IndexReport:
    """Report index entries that ``sparse_attention`` would skip for being invalid.

    ``kv_or_num_slots`` is the pool (float ``[num_slots, D]`` / ``[pages, page, D]``, or a pool object
    with ``num_slots``) or the slot count. Only entries inside ``topk_length`` are examined. -1 is
    counted as padding (legal); other negative values and values >= num_slots are reported.
    """
    if isinstance(kv_or_num_slots, int):
        num_slots = kv_or_num_slots
    elif isinstance(kv_or_num_slots, torch.Tensor):
        num_slots = kv_or_num_slots.shape[0] * (kv_or_num_slots.shape[1] if kv_or_num_slots.dim() == 3 else 1)
    else:
        num_slots = int(kv_or_num_slots.num_slots)
    idx = indices.long()
    counted = torch.ones_like(idx, dtype=torch.bool)
    if topk_length is not None:
        counted = torch.arange(idx.shape[1], device=idx.device).unsqueeze(0) < topk_length.long().unsqueeze(1)
    negative = counted & (idx < -1)
    too_big = counted & (idx >= num_slots)
    bad = (negative | too_big).nonzero()[:max_examples].tolist()
    report = IndexReport(
        name=name,
        num_slots=num_slots,
        counted=int(counted.sum()),
        padding=int((counted & (idx == -1)).sum()),
        negative=int(negative.sum()),
        out_of_range=int(too_big.sum()),
        examples=[(r, c, int(idx[r, c])) for r, c in bad],
    )
    if raise_on_error and not report.ok:
        raise ValueError(str(report))
    return report


def check_block_table(
    block_table: torch.Tensor, num_pages: int, *, name: str = "block_table", raise_on_error: bool = False
) -> IndexReport:
    """Report block-table entries outside [0, num_pages) other than -1 (unused page)."""
    return check_indices(block_table, num_pages, name=name, raise_on_error=raise_on_error)
