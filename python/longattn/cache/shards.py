"""Which rank holds which compressed entry: pages dealt round robin.

Entry ``j`` of a sequence (a compressed KV entry or its index key; one numbering for both) is on
logical page ``p = j // page_size``; page ``p`` lives on rank ``p % world`` as that rank's local page
``p // world``. So a rank's entries of a sequence are its own contiguous local numbering
``l = (p // world) * page_size + j % page_size``, in the same order as the global ids; a growing sequence
adds pages to every rank in turn (decode stays balanced to within one page per rank), and a rank's
local block table is the column slice ``block_table[:, rank::world]`` of a single-device table.
"""

from __future__ import annotations

import dataclasses
from typing import Tuple

import torch


@dataclasses.dataclass(frozen=True)
class PageShards:
    """The round-robin page layout of ``world`` ranks, seen from ``rank``.

    page_size: entries per page of the sharded pools (compressed KV and index keys share it).
    """

    world: int
    rank: int
    page_size: int

    def __post_init__(self):
        for name in ("world", "page_size"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"PageShards: `{name}` must be an int >= 1, got {v!r}")
        if not isinstance(self.rank, int) or isinstance(self.rank, bool) or not 0 <= self.rank < self.world:
            raise ValueError(f"PageShards: `rank` must be an int in [0, world={self.world}), got {self.rank!r}")

    # -- id maps (int64 tensors; entries < 0 stay -1) ---------------------------------------------------
    def owner(self, j: torch.Tensor) -> torch.Tensor:
        """Rank of each global entry id (-1 for ids < 0)."""
        j = j.long()
        return torch.where(j >= 0, (j.clamp_min(0) // self.page_size) % self.world, -1)

    def to_local(self, j: torch.Tensor) -> torch.Tensor:
        """Local id of each global id this rank owns; -1 for ids it does not own (or < 0)."""
        j = j.long()
        jc = j.clamp_min(0)
        local = (jc // self.page_size // self.world) * self.page_size + jc % self.page_size
        return torch.where((j >= 0) & (self.owner(j) == self.rank), local, -1)

    def to_global(self, local: torch.Tensor, rank: int = -1) -> torch.Tensor:
        """Global id of each local id of ``rank`` (default: this rank); -1 for local ids < 0."""
        r = self.rank if rank < 0 else rank
        lc = local.long().clamp_min(0)
        g = ((lc // self.page_size) * self.world + r) * self.page_size + lc % self.page_size
        return torch.where(local >= 0, g, -1)

    def local_count(self, n: torch.Tensor, rank: int = -1) -> torch.Tensor:
        """How many of the global entries ``[0, n)`` this rank (or ``rank``) holds, per element of
        ``n`` (int64; n <= 0 gives 0): its whole pages among the first ``n // page_size``, plus the
        partial page when it is this rank's."""
        r = self.rank if rank < 0 else rank
        n = n.long().clamp_min(0)
        full_pages, rem = n // self.page_size, n % self.page_size
        mine = (full_pages - r + self.world - 1).div(self.world, rounding_mode="floor").clamp_min(0)
        return mine * self.page_size + torch.where(full_pages % self.world == r, rem, 0)

    def local_visible_ids(self, visible_end: torch.Tensor) -> torch.Tensor:
        """``[T, L]`` this rank's local ids of the entries each token sees (``j < visible_end[t]``),
        ascending, -1 padded; ``L`` = the largest count (HCA: attend to every visible entry)."""
        counts = self.local_count(visible_end)
        n = int(counts.max()) if counts.numel() else 0
        ids = torch.arange(n, device=visible_end.device).expand(counts.shape[0], n)
        return torch.where(ids < counts.unsqueeze(1), ids, -1)

    def local_pages(self, global_pages: int) -> int:
        """How many of a sequence's first ``global_pages`` logical pages this rank holds."""
        return max(0, -(-(global_pages - self.rank) // self.world))

    # -- block tables and pools -------------------------------------------------------------------------
    def local_block_table(self, block_table: torch.Tensor) -> torch.Tensor:
        """This rank's columns of a single-device block table ``[B, max_pages]`` (same page ids)."""
        return block_table[:, self.rank :: self.world]

    def shard_pool(self, pool: torch.Tensor, block_table: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """This rank's part of a single-device paged pool: ``(local_pool, local_block_table)`` with only
        the pages its columns name, renumbered in increasing page order (page ids outside the pool stay
        -1). For moving an existing cache onto ranks and for tests; a CP cache is built sharded."""
        cols = self.local_block_table(block_table).long()
        ok = (cols >= 0) & (cols < pool.shape[0])
        pages = torch.unique(cols[ok])  # sorted
        local_pool = pool.index_select(0, pages)
        renumber = torch.full((pool.shape[0],), -1, dtype=torch.long, device=pool.device)
        renumber[pages] = torch.arange(pages.numel(), device=pool.device)
        local_bt = torch.where(ok, renumber[cols.clamp(0, max(pool.shape[0] - 1, 0))], -1)
        return local_pool, local_bt.to(block_table.dtype)

    def local_slots(self, local_ids: torch.Tensor, block_table: torch.Tensor, seq_ids: torch.Tensor) -> torch.Tensor:
        """Physical slots ``[T, K]`` of local entry ids ``[T, K]`` of token t's sequence ``seq_ids[t]`` in a
        paged local pool (``block_table`` local, ``[B, local_pages]``); -1 where the id is < 0, past the
        table or on an unused page (-1). Valid slots index the pool's ``[pages * page_size]`` rows."""
        ids = local_ids.long()
        B, cols = block_table.shape
        if B == 0 or cols == 0:
            return torch.full_like(ids, -1)
        seq = seq_ids.long().clamp(0, B - 1)
        page = ids.clamp_min(0) // self.page_size
        ok = (ids >= 0) & (page < cols) & (seq_ids.long() >= 0).unsqueeze(1) & (seq_ids.long() < B).unsqueeze(1)
        phys = torch.gather(block_table.long()[seq], 1, torch.where(ok, page, 0))
        ok = ok & (phys >= 0)
        return torch.where(ok, phys * self.page_size + ids.clamp_min(0) % self.page_size, -1)
