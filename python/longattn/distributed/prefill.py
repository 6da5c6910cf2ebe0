"""Prefill context parallelism: the query tokens of one sequence sharded over the ranks of a group.

The sequence's ``S`` tokens are cut into ``2 * world`` contiguous chunks of near-equal length; rank
``r`` holds chunks ``r`` and ``2 * world - 1 - r`` (causal load balancing: the work of a token grows
with its position, through the indexer and, for HCA, the visible entries, and each pair of chunks sums
to the same total). A rank computes its own tokens' queries, window rows and compressor inputs, and
the layer then needs only three small exchanges:

1. ``left_halo``: the ``halo`` tokens before each of its chunks (the window's ``window - 1`` rows and
   the compressor windows that cross a chunk boundary: up to ``2 * ratio - 1`` tokens for CSA's
   overlapping blocks); one all-gather of every chunk's last ``halo`` hidden states. The halo tokens'
   rows are recomputed locally from them (per-token projections), so a compressor window that crosses a
   rank boundary is pooled from exactly the tokens one device pools: the same entry.
2. ``gather_entries``: each rank emits the compressed entries (and, for CSA, index keys) whose last
   token is in its chunks; one all-gather each gives every rank all ``S // ratio`` of them in order
   (they are ``ratio`` times fewer than the tokens, ``dim / index_dim`` times smaller again for keys).
3. nothing else: each rank's indexer top-k and attention read only its tokens' queries, its halo and
   chunk rows, and the gathered entries. Outputs stay on the rank that owns the token
   (``TokenShards.gather`` reassembles the sequence where a caller needs it).

Before the first collective every rank checks its inputs and agrees on the outcome (``agree``): a
malformed argument on one rank raises ``CPError`` on every rank.
"""

from __future__ import annotations

import dataclasses
from typing import List, Sequence, Tuple

import torch

from .decode import _all_gather


@dataclasses.dataclass(frozen=True)
class TokenShards:
    """One ``num_tokens``-token sequence's tokens dealt over ``world`` ranks, seen from ``rank``:
    ``2 * world`` chunks (chunk ``c`` is ``[c * S // (2w), (c + 1) * S // (2w))``), rank ``r`` holding
    chunks ``r`` and ``2w - 1 - r``. A rank's tokens are its first chunk's, then its second's."""

    world: int
    rank: int
    num_tokens: int

    def __post_init__(self):
        for name, low in (("world", 1), ("num_tokens", 0)):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < low:
                raise ValueError(f"TokenShards: `{name}` must be an int >= {low}, got {v!r}")
        if not isinstance(self.rank, int) or isinstance(self.rank, bool) or not 0 <= self.rank < self.world:
            raise ValueError(f"TokenShards: `rank` must be an int in [0, world={self.world}), got {self.rank!r}")

    def bounds(self, chunk: int) -> Tuple[int, int]:
        """Token range ``[start, end)`` of chunk ``chunk`` (of ``2 * world``)."""
        n = 2 * self.world
        return chunk * self.num_tokens // n, (chunk + 1) * self.num_tokens // n

    def chunks_of(self, rank: int) -> Tuple[int, int]:
        return rank, 2 * self.world - 1 - rank

    @property
    def chunks(self) -> List[Tuple[int, int]]:
        """This rank's two token ranges, in the order its rows are held."""
        return [self.bounds(c) for c in self.chunks_of(self.rank)]

    def count(self, rank: int = -1) -> int:
        """Tokens held by ``rank`` (default: this rank)."""
        r = self.rank if rank < 0 else rank
        return sum(e - s for s, e in (self.bounds(c) for c in self.chunks_of(r)))

    @property
    def positions(self) -> torch.Tensor:
        """int64 ``[count]``: the sequence position of each of this rank's rows."""
        return torch.cat([torch.arange(s, e) for s, e in self.chunks])

    def take(self, x: torch.Tensor) -> torch.Tensor:
        """This rank's rows of a whole-sequence tensor ``x [S, ...]`` (a caller that holds it all)."""
        if x.shape[0] != self.num_tokens:
            raise ValueError(f"TokenShards.take: x has {x.shape[0]} rows, expected num_tokens={self.num_tokens}")
        return torch.cat([x[s:e] for s, e in self.chunks])

    def gather(self, rows: torch.Tensor, group=None) -> torch.Tensor:
        """Every rank's rows ``[count, ...]`` -> the whole sequence ``[S, ...]`` on every rank (one
        all-gather; call on every rank)."""
        n0 = self.chunks[0][1] - self.chunks[0][0]
        return gather_entries([rows[:n0], rows[n0:]], self, 1, group)  # one token per "entry"


def left_halo(
    rows: torch.Tensor, shards: TokenShards, halo: int, group=None, *, tail: bool = False
) -> List[torch.Tensor]:
    """The up to ``halo`` rows before each of this rank's chunks (fewer at the start of the sequence).

    ``rows [count, ...]``: this rank's rows (``TokenShards`` order). Every rank sends the last
    ``min(halo, len)`` rows of each of its chunks (one all-gather of ``[2, halo, ...]``); the halo of a
    chunk is the tail of the tails of the chunks before it, so chunks shorter than the halo work too.
    Returns one ``[h_i, ...]`` tensor per chunk, ``h_i = min(halo, start_i)``; with ``tail=True`` a
    third: the sequence's last ``min(halo, S)`` rows (what a cache keeps after the prefill).
    """
    tails = rows.new_zeros(2, halo, *rows.shape[1:])
    i = 0
    for k, (s, e) in enumerate(shards.chunks):
        n = min(halo, e - s)
        if n:
            tails[k, halo - n :] = rows[i + e - s - n : i + e - s]
        i += e - s
    gathered = _all_gather(tails, group)
    tail_of = {}  # chunk -> its last min(halo, len) rows
    for r, got in enumerate(gathered):
        for k, c in enumerate(shards.chunks_of(r)):
            s, e = shards.bounds(c)
            tail_of[c] = got[k, halo - min(halo, e - s) :]

    def before(chunk: int) -> torch.Tensor:
        start = shards.bounds(chunk)[0]
        rows_before = torch.cat([tail_of[p] for p in range(chunk)]) if chunk else rows.new_zeros(0, *rows.shape[1:])
        return rows_before[rows_before.shape[0] - min(halo, start) :]

    return [before(c) for c in shards.chunks_of(shards.rank)] + ([before(2 * shards.world)] if tail else [])


def entry_range(start: int, end: int, ratio: int) -> Tuple[int, int]:
    """Compressed entries whose last token is in ``[start, end)``: ``[start // ratio, end // ratio)``
    (entry ``j`` is emitted by token ``(j + 1) * ratio - 1``). The chunks partition the tokens, so these
    ranges partition the sequence's ``S // ratio`` entries."""
    return start // ratio, end // ratio


def gather_entries(entries: Sequence[torch.Tensor], shards: TokenShards, ratio: int, group=None) -> torch.Tensor:
    """Every rank's emitted entries -> all ``S // ratio`` entries, in order, on every rank.

    ``entries``: per chunk of this rank, ``[n_i, ...]`` with ``n_i`` the size of its ``entry_range``.
    One all-gather (padded to the largest chunk's count)."""
    width = max(len(range(*entry_range(*shards.bounds(c), ratio))) for c in range(2 * shards.world))
    like = entries[0]
    padded = like.new_zeros(2, width, *like.shape[1:])
    for k, e in enumerate(entries):
        padded[k, : e.shape[0]] = e
    out = like.new_empty(shards.num_tokens // ratio, *like.shape[1:])
    for r, got in enumerate(_all_gather(padded, group)):
        for k, c in enumerate(shards.chunks_of(r)):
            a, b = entry_range(*shards.bounds(c), ratio)
            out[a:b] = got[k, : b - a]
    return out


def prefill_comm_bytes(world: int, tokens: int, dim: int, halo: int, ratio: int = 0, entry_bytes: int = 0,
                       key_bytes: int = 0, elem: int = 2) -> dict:  # fmt: skip
    """Bytes one rank receives in one CP prefill of one layer (all-gathers, padding ignored): the
    halo tails (``2 * halo`` hidden states of ``dim * elem`` bytes per other rank), the other ranks'
    compressed entries and index keys (``entry_bytes`` / ``key_bytes`` each), and the agreement."""
    halo_b = (world - 1) * 2 * halo * dim * elem
    n = tokens // ratio if ratio else 0
    others = n - n // world
    entries, keys = others * entry_bytes, others * key_bytes
    return {"halo": halo_b, "entries": entries, "index_keys": keys, "agreement": 32,
            "total": halo_b + entries + keys + 32}  # fmt: skip
