"""Reference lightning indexer (pure PyTorch, fp32). See README.md for the math and the ordering.

Scores are produced span by span: a span is (a group of query tokens of one sequence) x (a range of
entries), so no [T, N] tensor is ever held by ``indexer_topk`` beyond what the budget allows. One
(token, entry) pair of a span costs ~45 bytes (its score, mask and sort key and their temporaries);
spans are as wide as ``longattn.memory.chunk_budget_bytes()`` allows, and inside a span keys are scored
in tiles of (tokens x entries) whose per-head relu(q.k) values are ~``CACHE_TILE_BYTES`` (fast on CPU
caches). Entries no token of a tile sees are never scored, so decode cost follows the visible
context, not the pool size, and a prefill chunk pays little for its causal triangle.

Top-k is exact and deterministic: each score is packed with its entry id into one int64 sort key
(order-preserving float bits in the high 32 bits, ``0xFFFFFFFF - id`` in the low 32 bits), so
``torch.topk`` over keys sorts by score descending, then id ascending, and the running top-k of the
blocks merges by a second ``topk`` over [running | block]. A NaN score (either sign bit) ranks as
+inf: it ties with +inf and with other NaN scores, the smaller id first.
"""

from __future__ import annotations

from typing import Iterator, Optional, Tuple

import torch

from ...cache.fp8_index import Fp8IndexKeyPool, e4m3_values
from ...memory import chunk_budget_bytes, rows_per_chunk

NEG_INF = float("-inf")
NO_KEY = torch.iinfo(torch.int64).min  # sort key of an entry that must never be selected
_LOW32 = 0xFFFFFFFF
CACHE_TILE_BYTES = 1 << 19  # per-head scores of one block; measured fastest on a 2-core x86 CPU
MIN_ENTRIES = 256


class _Entries:
    """Where entry j of a query token lives: a flat pool (entry j = row j) or a block table.

    ``sequence(seq, n_vis, width)`` prepares one sequence; its ``rows(j0, j1, out)`` writes the fp32
    key rows of entries [j0, j1) into ``out`` and ``ok(s0, s1)`` says which of them have a valid slot.
    Paged pools are gathered a whole page at a time (one ``index_select`` per block into a reused
    buffer); rows without a valid slot hold whatever page 0 holds and must be masked by the caller."""

    def __init__(self, index_k, block_table, seq_ids):
        self.paged = block_table is not None
        self.fp8 = isinstance(index_k, Fp8IndexKeyPool)
        self.device = index_k.device
        if self.fp8:  # rows are gathered slot by slot (e4m3 values) with their scales
            self.pool = index_k
            self.num_pages, self.page_size, self.di = index_k.num_pages, index_k.page_size, index_k.dim
            self.rows_dtype = torch.uint8
        else:
            self.rows_dtype = index_k.dtype
        if self.paged:
            if not self.fp8:
                self.num_pages, self.page_size, self.di = index_k.shape
                self.pages = index_k
            self.block_table = block_table
            self.seq_ids = seq_ids.long()
            self.num_entries = block_table.shape[1] * self.page_size
        elif self.fp8:
            self.num_entries = index_k.num_slots
        else:
            self.flat = index_k
            self.di = index_k.shape[1]
            self.num_entries = index_k.shape[0]

    @property
    def row_bytes(self) -> int:
        """Bytes of one key row as gathered (an FP8 row: its e4m3 bytes and fp32 scale)."""
        return self.di + 4 if self.fp8 else self.di * torch.empty(0, dtype=self.rows_dtype).element_size()

    def groups(self, t0: int, t1: int) -> Iterator[Tuple[torch.Tensor, Optional[int]]]:
        """Token ids of [t0, t1) grouped by sequence (one group when not paged)."""
        tokens = torch.arange(t0, t1, device=self.seq_ids.device if self.paged else self.device)
        if not self.paged:
            yield tokens, None
            return
        seqs = self.seq_ids[t0:t1]
        for s in torch.unique(seqs).tolist():
            yield tokens[seqs == s], int(s)

    def block_width(self, width: int) -> int:
        """``width`` rounded down to whole pages (blocks then start on page boundaries)."""
        return max(self.page_size, width - width % self.page_size) if self.paged else width

    def sequence(self, seq: Optional[int], n_vis: int, width: int, scratch=None) -> "_SequenceRows":
        return _SequenceRows(self, seq, n_vis, width, scratch)


class _SequenceRows:
    """Key rows of one sequence's first ``n_vis`` entries, gathered block by block (see _Entries)."""

    def __init__(self, entries: _Entries, seq: Optional[int], n_vis: int, width: int, scratch=None):
        self.e = entries
        if not entries.paged:
            return
        ps = entries.page_size
        n_pages = -(-n_vis // ps)
        if seq is None or not (0 <= seq < entries.block_table.shape[0]):
            pages = torch.full((n_pages,), -1, dtype=torch.long, device=entries.device)
        else:
            pages = entries.block_table[seq, :n_pages].long()
        ok_pages = (pages >= 0) & (pages < entries.num_pages)
        self.ok_rows = ok_pages.repeat_interleave(ps)  # [n_pages * ps]
        self.safe_pages = torch.where(ok_pages, pages, torch.zeros_like(pages))  # never out of range
        if entries.fp8:
            return
        shape = (-(-width // ps), ps, entries.di)
        nbytes = shape[0] * ps * entries.di * entries.pages.element_size()
        if scratch is not None and scratch.is_contiguous() and scratch.numel() * scratch.element_size() >= nbytes:
            # The rows are gathered into the caller's per-head score buffer, which the block's matmul
            # overwrites only after they were converted to fp32: one buffer fewer.
            raw = scratch.view(-1).view(torch.uint8)[:nbytes]
            self.gathered = raw.view(entries.rows_dtype).view(shape)
        else:
            self.gathered = torch.empty(shape, dtype=entries.rows_dtype, device=entries.pages.device)

    def ok(self, s0: int, s1: int) -> torch.Tensor:
        if not self.e.paged:
            return torch.ones(s1 - s0, dtype=torch.bool, device=self.e.device)
        return self.ok_rows[s0:s1]

    def release(self) -> None:
        self.gathered = None

    def rows(self, j0: int, j1: int, out: torch.Tensor) -> Optional[torch.Tensor]:
        """fp32 key rows of entries [j0, j1) into out[: j1 - j0]; paged blocks start on a page. An FP8
        pool: its e4m3 values, and the rows' fp32 scales are returned (else None)."""
        n = j1 - j0
        if self.e.fp8:
            return self._fp8_rows(j0, j1, out)
        if not self.e.paged:
            out[:n].copy_(self.e.flat[j0:j1])
            return None
        ps = self.e.page_size
        if self.e.num_pages == 0:  # nothing to gather (every row is masked)
            out[:n].zero_()
            return None
        p0, p1 = j0 // ps, (j1 - 1) // ps + 1
        g = torch.index_select(self.e.pages, 0, self.safe_pages[p0:p1], out=self.gathered[: p1 - p0])
        out[:n].copy_(g.view(-1, g.shape[-1])[j0 - p0 * ps : j1 - p0 * ps])
        return None

    def _fp8_rows(self, j0: int, j1: int, out: torch.Tensor) -> torch.Tensor:
        """The e4m3 values (fp32) of entries [j0, j1) into out, their scales returned ([j1 - j0] fp32),
        gathered a whole page at a time (flat: entry j = slot j, pages j0 // page ..). Entries without a
        valid slot read page 0 (masked by the caller); a pool without slots reads nothing (values and
        scales 0)."""
        n = j1 - j0
        e = self.e
        if e.pool.num_slots == 0:
            out[:n].zero_()
            return torch.zeros(n, dtype=torch.float32, device=e.device)
        ps = e.page_size
        p0, p1 = j0 // ps, (j1 - 1) // ps + 1
        if e.paged:
            pages = self.safe_pages[p0:p1]
        else:
            pages = torch.arange(p0, p1, device=e.device)
        values, scales = e.pool.page_parts(pages)  # [p1 - p0, ps, Di] uint8, [p1 - p0, ps] fp32
        lo = j0 - p0 * ps
        out[:n].copy_(e4m3_values(values.view(-1, e.di)[lo : lo + n]))
        return scales.view(-1)[lo : lo + n]


def score_blocks(q, weights, index_k, visible_end, block_table=None, seq_ids=None, pair_bytes: int = 0):
    """Yield (tokens [Tg] long, j0, j1, scores [Tg, j1-j0] fp32, usable [Tg, j1-j0] bool) spans.

    ``usable`` is False for entries that are invisible (j >= visible_end) or have no valid slot; their
    score is -inf. Usable entries keep whatever score they have (possibly -inf from overflow).

    A span is as wide as the budget allows (``pair_bytes`` = what the consumer adds per pair); inside
    it, keys are scored in cache-sized blocks written into the span's score buffer, so the consumer's
    per-span work (masking, sort keys, top-k merge) runs once per span, not once per block.
    """
    T, Hi, Di = q.shape
    entries = _Entries(index_k, block_table, seq_ids)
    vis = visible_end.long().clamp(0, entries.num_entries)
    per_pair = 4 + 1 + 24 + pair_bytes  # span scores, mask, arange/compare temporaries, consumer's keys
    budget = chunk_budget_bytes()
    row_bytes = Di * 4 + entries.row_bytes  # a key row in fp32 + as gathered
    # Token chunks leave room for a span of at least MIN_ENTRIES entries within the budget.
    tokens_per_step = rows_per_chunk(per_pair * MIN_ENTRIES + Hi * Di * 4 + MIN_ENTRIES * Hi * 4, T, budget)
    for t0 in range(0, T, tokens_per_step):
        t1 = min(T, t0 + tokens_per_step)
        for tokens, seq in entries.groups(t0, t1):
            n_vis = int(vis[tokens].max()) if tokens.numel() else 0
            if n_vis == 0:
                continue
            tg = len(tokens)
            # Tile: `tile` tokens x `width` entries whose per-head scores are ~CACHE_TILE_BYTES, so the
            # matmul's output, its relu and the head sum stay in the CPU's cache. Entries first (a
            # block's keys are gathered once for all the group's tokens): up to CACHE_TILE_BYTES of one
            # token's per-head scores (2,048 entries at 64 heads), whole pages, at most a quarter of
            # the budget in keys and a one-block span in the rest (>= MIN_ENTRIES: the token step
            # leaves room for them); then as many tokens as fit. Span: as many blocks as the rest of
            # the budget holds. (One [entries, Tg * heads] product per block, the layout before, wrote
            # 128 MiB per block at 2,048 tokens: 52 useful GFLOP/s on a 2-thread AMD EPYC against 77.)
            width = min(max(MIN_ENTRIES, CACHE_TILE_BYTES // (Hi * 4)), n_vis)
            width = min(width, max(1, budget // 4 // row_bytes), max(MIN_ENTRIES, budget * 3 // 4 // (tg * per_pair)))
            width = entries.block_width(width)
            tile = max(1, min(tg, CACHE_TILE_BYTES // (width * Hi * 4)))
            block_bytes = width * (row_bytes + tile * (Hi + 1) * 4)  # keys, per-head and weighted scores
            span = max(1, (budget - block_bytes) // (tg * per_pair) // width) * width
            # Per tile, logits as [entries, tile*Hi] (keys x q^T), a taller GEMM than q x keys^T
            # (AMD EPYC, 64 heads x 128 dims x 2,048 entries, 2 threads: 140 vs 88 GFLOP/s)
            q_rows = q[tokens].to(torch.float32).reshape(-1, Di)  # [Tg*Hi, Di]; a tile's q^T is a view
            w_g = weights[tokens].to(torch.float32).unsqueeze(2)  # [Tg, Hi, 1]
            vis_g = vis[tokens].unsqueeze(1)  # [Tg, 1]
            # A tile scores only the entries one of its tokens sees (a prefill group's causal triangle
            # costs nothing at one token per tile); the unwritten scores are masked below.
            tile_vis = torch.nn.functional.pad(vis_g[:, 0], (0, -tg % tile)).view(-1, tile).amax(1).tolist()
            keys = torch.empty(width, Di, dtype=torch.float32, device=q.device)  # reused block buffers
            per_head = torch.empty(width, tile * Hi, dtype=torch.float32, device=q.device)
            weighted = torch.empty(tile if tile > 1 else 0, width, dtype=torch.float32, device=q.device)
            rows = entries.sequence(seq, n_vis, width, scratch=per_head)
            for s0 in range(0, n_vis, span):
                s1 = min(n_vis, s0 + span)
                scores = torch.empty(tg, s1 - s0, dtype=torch.float32, device=q.device)
                for j0 in range(s0, s1, width):
                    j1 = min(s1, j0 + width)
                    key_scales = rows.rows(j0, j1, keys)  # keys[:Nc] fp32 [Nc, Di]
                    for a, seen in zip(range(0, tg, tile), tile_vis):
                        nv = min(j1, seen) - j0  # the block's first nv entries are seen by the tile
                        if nv <= 0:
                            continue
                        nt = min(tile, tg - a)  # tokens in this tile
                        ph = per_head.view(-1)[: nv * nt * Hi].view(nv, nt * Hi)
                        torch.mm(keys[:nv], q_rows[a * Hi : (a + nt) * Hi].T, out=ph)
                        if key_scales is not None:  # FP8 keys: the entry's scale times <q, e4m3 values>
                            ph.mul_(key_scales[:nv].unsqueeze(1))
                        ph = torch.relu_(ph)
                        dst = scores[a : a + nt, j0 - s0 : j0 - s0 + nv]  # [nt, nv]
                        if nt == 1:  # a contiguous row: mv writes it directly
                            torch.mv(ph, w_g[a, :, 0], out=dst[0])
                        else:  # [nt, nv, Hi] x [nt, Hi, 1]; bmm into a strided out would go token by token
                            per_token = ph.view(nv, nt, Hi).transpose(0, 1)
                            buf = weighted.view(-1)[: dst.numel()].view(nt, nv, 1)
                            dst.copy_(torch.bmm(per_token, w_g[a : a + nt], out=buf)[..., 0])
                if s1 == n_vis:  # last span: free the block buffers before the consumer's work
                    del keys, per_head, weighted
                    rows.release()
                j = torch.arange(s1 - s0, dtype=torch.int32, device=q.device)
                usable = (j.unsqueeze(0) < vis_g - s0) & rows.ok(s0, s1).unsqueeze(0)
                yield tokens, s0, s1, scores.masked_fill_(~usable, NEG_INF), usable


def rank_scores(scores: torch.Tensor) -> torch.Tensor:
    """The scores as they are ranked: NaN (whatever its sign bit) as +inf, -0.0 as +0.0 (a tie)."""
    if bool(torch.isnan(scores).any()):
        scores = scores.nan_to_num(nan=float("inf"), posinf=float("inf"), neginf=NEG_INF)
    return scores + 0.0  # + 0.0 turns -0.0 into +0.0


def pack_keys(scores: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """int64 keys whose descending order is (score desc, id asc), scores ranked by ``rank_scores``."""
    bits = rank_scores(scores).view(torch.int32).to(torch.int64)
    ordered = torch.where(bits < 0, bits ^ 0x7FFFFFFF, bits)  # monotone in the float value
    return ordered * (1 << 32) + (_LOW32 - ids)


def sort_keys(scores: torch.Tensor, usable: torch.Tensor, j0: int) -> torch.Tensor:
    """int64 keys [Tg, n] of a span's entries j0.. ; unusable entries get NO_KEY."""
    ids = torch.arange(j0, j0 + scores.shape[1], device=scores.device)
    return pack_keys(scores, ids).masked_fill_(~usable, NO_KEY)


def _num_entries(index_k, block_table) -> int:
    if isinstance(index_k, Fp8IndexKeyPool):
        return index_k.num_slots if block_table is None else block_table.shape[1] * index_k.page_size
    return index_k.shape[0] if block_table is None else block_table.shape[1] * index_k.shape[1]


def indexer_logits(q, weights, index_k, visible_end, block_table=None, seq_ids=None):
    T = q.shape[0]
    n = _num_entries(index_k, block_table)
    out = torch.full((T, n), NEG_INF, dtype=torch.float32, device=q.device)
    for tokens, j0, j1, scores, _ in score_blocks(q, weights, index_k, visible_end, block_table, seq_ids):
        out[tokens, j0:j1] = scores
    return out


def candidate_keys(scores: torch.Tensor, usable: torch.Tensor, j0: int, k: int) -> torch.Tensor:
    """Sort keys [Tg, C] (NO_KEY padded) of the only entries of a span that can be in its top-k.

    Exact: every usable entry scoring below the k-th largest score of its row is beaten by k usable
    entries on the score alone (unusable entries score -inf, so any score above -inf is usable; if the
    k-th largest is -inf every usable entry is kept), so only entries >= that score need ordering,
    ties included. Scores are compared as ranked (NaN = +inf). Spans too narrow to gain get keys for
    every entry.
    """
    Tg, n = scores.shape
    if n <= 4 * k:
        return sort_keys(scores, usable, j0)
    scores = rank_scores(scores)
    kth = torch.topk(scores, k, dim=1, sorted=False).values.amin(dim=1, keepdim=True)  # [Tg, 1]
    r, c = (usable & (scores >= kth)).nonzero(as_tuple=True)  # row-major: rows in order
    counts = torch.bincount(r, minlength=Tg)
    first = torch.cumsum(counts, 0) - counts
    keys = torch.full((Tg, max(1, int(counts.max()))), NO_KEY, dtype=torch.int64, device=scores.device)
    keys[r, torch.arange(r.numel(), device=r.device) - first[r]] = pack_keys(scores[r, c], c + j0)
    return keys


def indexer_topk(q, weights, index_k, visible_end, topk, block_table=None, seq_ids=None, return_slots=False):
    T = q.shape[0]
    best = torch.full((T, topk), NO_KEY, dtype=torch.int64, device=q.device)  # running top-k keys
    for tokens, j0, _, scores, usable in score_blocks(
        q, weights, index_k, visible_end, block_table, seq_ids, pair_bytes=16
    ):
        merged = torch.cat([best[tokens], candidate_keys(scores, usable, j0, topk)], dim=1)
        best[tokens] = torch.topk(merged, topk, dim=1, sorted=True).values
    selected = best != NO_KEY
    ids = _LOW32 - (best & _LOW32)
    lengths = selected.sum(dim=1).to(torch.int32)
    if return_slots and block_table is not None and block_table.shape[0] > 0:
        page_size = index_k.page_size if isinstance(index_k, Fp8IndexKeyPool) else index_k.shape[1]
        rows = block_table.long()[seq_ids.long().clamp(0, block_table.shape[0] - 1)]  # [T, max_pages]
        pages = torch.gather(rows, 1, torch.where(selected, ids // page_size, torch.zeros_like(ids)))
        ids = pages * page_size + ids % page_size
    indices = torch.where(selected, ids, torch.full_like(ids, -1)).to(torch.int32)
    return indices, lengths


def run_logits(inp):
    """``IndexerInputs`` -> logits [T, N]."""
    return indexer_logits(inp.q, inp.weights, inp.index_k, inp.visible_end, inp.block_table, inp.seq_ids)


def run_topk(inp):
    """``IndexerInputs`` -> (indices, lengths)."""
    return indexer_topk(inp.q, inp.weights, inp.index_k, inp.visible_end, inp.topk, inp.block_table, inp.seq_ids,
                        inp.return_slots)  # fmt: skip
