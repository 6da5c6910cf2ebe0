"""Page bookkeeping for a model's paged caches, and the per-step plan every layer reuses.

One ``CacheManager`` serves all layers of a model (or any subset): layers of one kind see the same
pages, so the metadata of a step (slot mappings, window index rows, block tables, visibility) is
computed once by ``plan`` and reused by every layer (the FlashInfer plan/run split). Each
``HybridAttention`` layer owns only its pool tensors, sized from the manager.

Pool groups and their pages (one ``page_size`` for all, the state rings capped at their capacity):

- ``window``: raw token rows of the sliding window. Position p of a sequence lives at logical page
  ``p // page_size``; pages are allocated as tokens arrive and recycled once no current or future
  token's window (the last ``window`` positions) reaches them, so a sequence holds
  ``ceil(window / page_size) + 1`` pages between steps and a prefill chunk of L tokens temporarily
  needs ``ceil(L / page_size)`` more (the ring, page-granular, so chunks of any length work).
- ``compressed[r]`` for every compress ratio r: entry j of a sequence lives at logical page
  ``j // page_size``; the attention pool (512-d) and, for CSA, the indexer-key pool (128-d) share
  these pages, so ``indexer_topk(return_slots=True)`` slots address the compressed KV pool directly.
- ``state[r]``: each sequence's compressor ring of the last ``c * r`` positions (c = 2 for the
  overlapping CSA compressor), ring slot ``p % (c * r)``; the attention and indexer compressors of a
  CSA layer share these pages.
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import Dict, Hashable, List, Optional, Sequence, Tuple

import torch

from ..configs import CSA_RATIO, LayerConfig
from ..memory import rows_per_chunk
from .allocator import PageAllocator
from .errors import CacheError, StalePlanError, UnknownSequenceError
from .shards import PageShards

_MANAGER_IDS = itertools.count(1)


def ring_capacity(ratio: int) -> int:
    """Positions a compressor must remember: c * ratio (c = 2 when blocks overlap, i.e. CSA)."""
    return (2 if ratio == CSA_RATIO else 1) * ratio


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


@dataclasses.dataclass
class _Sequence:
    length: int = 0  # tokens written so far (= next position)
    window_pages: Dict[int, int] = dataclasses.field(default_factory=dict)  # logical page -> page
    compressed_pages: Dict[int, List[int]] = dataclasses.field(default_factory=dict)  # ratio -> pages
    state_pages: Dict[int, List[int]] = dataclasses.field(default_factory=dict)  # ratio -> ring pages


@dataclasses.dataclass
class CompressedPlan:
    """Per-step metadata of the compressed stream of one ratio."""

    ratio: int
    visible_end: torch.Tensor  # [T] int32: token t sees entries j < (p + 1) // ratio
    block_table: torch.Tensor  # [B, max_pages] int32 (-1: no page); compressed + indexer pools
    state_block_table: torch.Tensor  # [B, ring_pages] int32: compressor ring pages
    page_size: int
    # Largest visible_end of the step (a Python int, known when the plan is built on the host, so
    # that no layer needs a device sync or a data-dependent shape to size its index rows).
    max_visible: Optional[int] = None
    # Context parallelism (a manager with ``shards``): ``block_table`` above is in the sequence's
    # logical page numbering with -1 for the pages other ranks hold (compress_kv writes only this
    # rank's entries); ``local_block_table [B, local_pages]`` numbers this rank's pages compactly
    # (local entry l: ``PageShards``), what the indexer and attention read.
    shards: Optional[PageShards] = None
    local_block_table: Optional[torch.Tensor] = None
    _all_rows: Optional[Tuple[torch.Tensor, torch.Tensor]] = None

    def all_visible(self, token_rows: torch.Tensor, t0: int = 0, t1: Optional[int] = None):
        """(indices [t1-t0, K] int32 slots of every visible entry, lengths [t1-t0] int32) for HCA.

        K = ``max_visible`` (the largest visible count of the step; else of the range); rows are -1
        padded. The full range is cached. With ``shards``: the entries this rank holds, as slots of its
        own pool (K and lengths count them).
        """
        full = t0 == 0 and (t1 is None or t1 == token_rows.shape[0])
        if full and self._all_rows is not None:
            return self._all_rows
        t1 = token_rows.shape[0] if t1 is None else t1
        vis = self.visible_end[t0:t1]
        if self.max_visible is not None:
            K = self.max_visible
        else:
            K = int(vis.max()) if vis.numel() else 0
        table = self.block_table
        if self.shards is not None:
            assert self.local_block_table is not None
            vis = self.shards.local_count(vis).to(torch.int32)
            K = int(self.shards.local_count(torch.tensor(K)))
            table = self.local_block_table
        j = torch.arange(K, device=vis.device)
        rows = token_rows[t0:t1].long()
        pages = table.long()[rows][:, j // self.page_size] if K else vis.new_zeros(t1 - t0, 0).long()
        slots = pages * self.page_size + j % self.page_size
        ok = (j.unsqueeze(0) < vis.unsqueeze(1)) & (pages >= 0)
        out = (torch.where(ok, slots, torch.full_like(slots, -1)).to(torch.int32), vis.to(torch.int32))
        if full:
            self._all_rows = out
        return out


@dataclasses.dataclass
class StepPlan:
    """Everything about one step's ragged batch that does not depend on the layer (built once)."""

    seq_ids: Tuple[Hashable, ...]
    cu_seqlens: torch.Tensor  # [B+1] int32
    positions: torch.Tensor  # [T] int64 absolute positions
    token_rows: torch.Tensor  # [T] int32: batch row b of each token
    window: int
    page_size: int
    window_slots: torch.Tensor  # [T] int32: where each new token's row goes in the window pools
    window_indices: torch.Tensor  # [T, window] int32: slots of positions p-window+1..p (-1 if < 0)
    compressed: Dict[int, CompressedPlan]
    max_page: Dict[str, int]  # largest page id used per group ("window", "compressed:4", "state:4", ...)
    # Which manager made the plan, and its number among that manager's plans (1, 2, ...): a layer
    # runs plans in this order, each once (``CacheManager.check_plan``).
    manager_id: int = 0
    serial: int = 0
    _sequences: Tuple[object, ...] = ()  # the manager's records of seq_ids (identity: freed or not)

    @property
    def num_tokens(self) -> int:
        return int(self.positions.shape[0])

    @property
    def num_seqs(self) -> int:
        return len(self.seq_ids)


class CacheManager:
    """Allocates pages of the window / compressed / compressor-state pools for many sequences.

    Args:
        ratios: the compress ratios of the layers it serves (e.g. (4, 128) for V4; () for SWA only).
        page_size: rows per page of every pool (state rings use ``min(page_size, ring capacity)``).
        num_window_pages, num_compressed_pages[r], num_state_pages[r]: pool sizes in pages.
        window: sliding-window length (128 for V4).
        shards: context parallelism (``PageShards(world, rank, page_size)``): this manager is one
            rank's. Compressed pages are taken only for the logical pages this rank holds
            (``num_compressed_pages`` counts this rank's pool); the window and the compressor rings
            are replicated (every rank runs every step's plan in the same order, so all ranks' plans
            agree). See ``longattn.distributed``.
    """

    def __init__(
        self,
        *,
        ratios: Sequence[int],
        page_size: int,
        num_window_pages: int,
        num_compressed_pages: Dict[int, int],
        num_state_pages: Dict[int, int],
        window: int = 128,
        device=None,
        shards: Optional[PageShards] = None,
    ):
        if page_size <= 0 or window <= 0:
            raise ValueError(f"page_size and window must be > 0, got {page_size}, {window}")
        if shards is not None and shards.page_size != page_size:
            raise ValueError(f"shards.page_size {shards.page_size} != page_size {page_size}")
        self.shards = shards
        self.ratios = tuple(sorted(set(ratios)))
        for r in self.ratios:
            if r <= 0 or r not in num_compressed_pages or r not in num_state_pages:
                raise ValueError(f"ratio {r}: needs num_compressed_pages[{r}] and num_state_pages[{r}]")
        self.page_size = page_size
        self.window = window
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.window_alloc = PageAllocator(num_window_pages, "window pool")
        self.compressed_alloc = {
            r: PageAllocator(num_compressed_pages[r], f"compressed pool (ratio {r})") for r in self.ratios
        }
        self.state_alloc = {
            r: PageAllocator(num_state_pages[r], f"compressor state pool (ratio {r})") for r in self.ratios
        }
        self._seqs: Dict[Hashable, _Sequence] = {}
        self._plans_made = 0
        self._id = next(_MANAGER_IDS)  # (not id(self): ids of collected objects are reused)

    # -- sizing ----------------------------------------------------------------------------------
    def state_page_size(self, ratio: int) -> int:
        return min(self.page_size, ring_capacity(ratio))

    def ring_pages(self, ratio: int) -> int:
        return _cdiv(ring_capacity(ratio), self.state_page_size(ratio))

    @classmethod
    def for_layers(
        cls,
        layers: Sequence[LayerConfig],
        *,
        max_seqs: int,
        max_context: int,
        max_step_tokens: int,
        page_size: int = 64,
        device=None,
        shards: Optional[PageShards] = None,
    ) -> "CacheManager":
        """Size every pool for ``max_seqs`` sequences of up to ``max_context`` tokens, with at most
        ``max_step_tokens`` new tokens per step (all sequences together). With ``shards`` the
        compressed pools hold this rank's pages only."""
        window = layers[0].window if layers else 128
        ratios = sorted({l.compress_ratio for l in layers if l.compress_ratio > 0})
        per_seq_window = _cdiv(window, page_size) + 1
        num_window = max_seqs * per_seq_window + _cdiv(max_step_tokens, page_size) + max_seqs
        pages_of = (lambda n: n) if shards is None else shards.local_pages  # noqa: E731
        comp = {r: max_seqs * pages_of(_cdiv(_cdiv(max_context, r), page_size)) for r in ratios}
        state = {r: max_seqs * _cdiv(ring_capacity(r), min(page_size, ring_capacity(r))) for r in ratios}
        return cls(
            ratios=ratios,
            page_size=page_size,
            num_window_pages=num_window,
            num_compressed_pages=comp,
            num_state_pages=state,
            window=window,
            device=device,
            shards=shards,
        )

    # -- sequences -------------------------------------------------------------------------------
    def _get(self, seq_id) -> _Sequence:
        try:
            return self._seqs[seq_id]
        except KeyError:
            raise UnknownSequenceError(f"sequence {seq_id!r} is not in the cache (never added, or freed)") from None

    def add_sequence(self, seq_id: Hashable) -> None:
        """Register a new sequence (position 0) and take its compressor-state pages."""
        if seq_id in self._seqs:
            raise CacheError(f"sequence {seq_id!r} is already in the cache")
        for r in self.ratios:
            self.state_alloc[r].check(self.ring_pages(r))
        seq = _Sequence()
        for r in self.ratios:
            seq.state_pages[r] = self.state_alloc[r].allocate(self.ring_pages(r))
            seq.compressed_pages[r] = []
        self._seqs[seq_id] = seq

    def free_sequence(self, seq_id: Hashable) -> None:
        """Return every page of a sequence. Unknown or already freed ids raise UnknownSequenceError."""
        seq = self._get(seq_id)
        self.window_alloc.release(list(seq.window_pages.values()))
        for r in self.ratios:
            self.compressed_alloc[r].release(seq.compressed_pages[r])
            self.state_alloc[r].release(seq.state_pages[r])
        del self._seqs[seq_id]

    def seq_len(self, seq_id: Hashable) -> int:
        return self._get(seq_id).length

    def __contains__(self, seq_id) -> bool:
        return seq_id in self._seqs

    # -- a step ----------------------------------------------------------------------------------
    def plan(self, seq_ids: Sequence[Hashable], cu_seqlens, positions: Optional[torch.Tensor] = None) -> StepPlan:
        """Check a ragged batch, take the pages its new tokens need, and build its ``StepPlan``.

        ``seq_ids[b]`` owns tokens ``cu_seqlens[b]:cu_seqlens[b+1]`` (``[B+1]`` ints from 0), which must
        continue the sequence: positions ``seq_len(seq) + 0, 1, ...``. ``positions`` [T] may be given
        to have that checked. On any error (unknown sequence, duplicate, bad cu_seqlens, positions
        that skip or go backwards, not enough pages) nothing changes.

        A plan is one step of every layer: each layer must run the manager's plans in the order they
        were made (a layer that reran an older plan would write rows into window pages that a later
        plan recycled, possibly for another sequence). ``HybridAttention`` enforces this through
        ``check_plan``. Consecutive plans made before any layer runs (the chunks of a long prefill)
        are fine as long as every layer runs them in order; the newest plan may be run again.
        """
        seq_ids = tuple(seq_ids)
        seqs = [self._get(s) for s in seq_ids]
        if len(set(seq_ids)) != len(seq_ids):
            raise CacheError(f"plan: a sequence appears twice in one batch: {list(seq_ids)}")
        cu = _int_tensor("cu_seqlens", cu_seqlens)
        if cu.dim() != 1 or cu.shape[0] != len(seq_ids) + 1:
            raise ValueError(
                f"plan: `cu_seqlens` must be [B+1] = [{len(seq_ids) + 1}] for B={len(seq_ids)} sequences, "
                f"got shape {list(cu.shape)}"
            )
        counts = (cu[1:] - cu[:-1]).tolist()
        if int(cu[0]) != 0 or any(n < 0 for n in counts):
            raise ValueError(f"plan: `cu_seqlens` must start at 0 and never decrease, got {cu.tolist()}")
        starts = [s.length for s in seqs]
        expected = (
            torch.cat([torch.arange(p0, p0 + n) for p0, n in zip(starts, counts)])
            if counts
            else torch.zeros(0, dtype=torch.int64)
        )
        if positions is not None:
            pos = _int_tensor("positions", positions)
            if pos.shape != expected.shape:
                raise ValueError(
                    f"plan: `positions` must be [T] = [{expected.shape[0]}] (cu_seqlens[-1]), got {list(pos.shape)}"
                )
            bad = (pos != expected).nonzero()
            if bad.numel():
                t = int(bad[0])
                b = int(torch.searchsorted(cu[1:], torch.tensor(t), right=True))
                raise ValueError(
                    f"plan: positions of sequence {seq_ids[b]!r} must continue at {starts[b]} and increase by 1 "
                    f"(token {t} has position {int(pos[t])}, expected {int(expected[t])}): positions may not "
                    "skip or go backwards"
                )

        # Page needs of every group, checked before anything changes. A new plan ends the previous
        # step, so window pages that no current or future token reaches (every position below
        # length - window + 1, for every sequence) are recycled first.
        W, ps = self.window, self.page_size
        stale = {
            sid: [lp for lp in s.window_pages if (lp + 1) * ps <= s.length - W + 1] for sid, s in self._seqs.items()
        }
        window_new = [
            [lp for lp in range(max(0, p0 - W + 1) // ps, (p0 + n - 1) // ps + 1) if lp not in s.window_pages]
            if n
            else []
            for s, p0, n in zip(seqs, starts, counts)
        ]
        self.window_alloc.check(sum(map(len, window_new)) - sum(map(len, stale.values())))
        comp_new = {}
        for r in self.ratios:
            comp_new[r] = [
                self._pages_held(_cdiv((p0 + n) // r, ps)) - len(s.compressed_pages[r])
                for s, p0, n in zip(seqs, starts, counts)
            ]
            self.compressed_alloc[r].check(sum(comp_new[r]))

        # Commit: recycle the stale window pages, then take the new pages.
        for sid, free in stale.items():
            self.window_alloc.release([self._seqs[sid].window_pages.pop(lp) for lp in free])
        for s, new in zip(seqs, window_new):
            for lp, page in zip(new, self.window_alloc.allocate(len(new))):
                s.window_pages[lp] = page
        for r in self.ratios:
            for s, k in zip(seqs, comp_new[r]):
                s.compressed_pages[r].extend(self.compressed_alloc[r].allocate(k))
        for s, n in zip(seqs, counts):
            s.length += n
        self._plans_made += 1
        return self._build_plan(seq_ids, seqs, cu, expected, counts)

    def plan_prefilled(self, seq_id: Hashable, num_tokens: int, tail: int) -> "StepPlan":
        """A new sequence whose first ``num_tokens`` tokens were computed elsewhere (a context-parallel
        prefill): the plan of writing its last ``tail`` tokens only. The tokens before the tail take
        no window pages; the plan's compressed block tables cover all ``num_tokens // ratio`` entries
        (the caller writes them) and its window and ring slots the tail's rows. ``tail`` must cover
        what later tokens read: the last ``window - 1`` rows and every compressor ring."""
        seq = self._seqs.get(seq_id)
        if seq is None:
            raise UnknownSequenceError(f"plan_prefilled: sequence {seq_id!r} is not in the cache (add_sequence first)")
        if seq.length != 0:
            raise CacheError(f"plan_prefilled: sequence {seq_id!r} already holds {seq.length} tokens (it must be new)")
        need = min(num_tokens, max([self.window - 1] + [ring_capacity(r) for r in self.ratios]))
        if not need <= tail <= num_tokens:
            raise ValueError(
                f"plan_prefilled: `tail` must be in [{need}, num_tokens={num_tokens}] (the window and the "
                f"compressor rings), got {tail}"
            )
        seq.length = num_tokens - tail
        try:
            return self.plan([seq_id], [0, tail])
        except Exception:
            seq.length = 0
            raise

    def _pages_held(self, logical_pages: int) -> int:
        """Pages of a sequence's first ``logical_pages`` compressed pages that this manager holds."""
        return logical_pages if self.shards is None else self.shards.local_pages(logical_pages)

    def check_plan(self, plan: StepPlan, last_serial: int, who: str) -> None:
        """Raise ``StalePlanError`` unless ``plan`` may be run now by a layer whose last plan had
        number ``last_serial`` (0: none yet): made by this manager, not older than ``last_serial``,
        not rerun once the manager has made a newer plan (it has ended), and none of its sequences
        freed since. Rerunning the newest plan is allowed: it writes the same slots again."""
        if plan.manager_id != self._id:
            raise StalePlanError(f"{who}: the plan was made by another CacheManager than this layer's")
        if plan.serial < last_serial:
            raise StalePlanError(
                f"{who}: plan #{plan.serial} is older than plan #{last_serial}, which this layer already ran: "
                "a layer runs the manager's plans in the order they were made (one plan per step)"
            )
        if plan.serial == last_serial and self._plans_made > plan.serial:
            raise StalePlanError(
                f"{who}: plan #{plan.serial} has ended: this layer ran it and the manager has made plan "
                f"#{self._plans_made} since (its window pages may now hold other rows); make a new plan per step"
            )
        for sid, seq in zip(plan.seq_ids, plan._sequences):
            if self._seqs.get(sid) is not seq:
                raise StalePlanError(f"{who}: sequence {sid!r} of the plan was freed after the plan was made")

    def _build_plan(self, seq_ids, seqs, cu, positions, counts) -> StepPlan:
        dev, W, ps = self.device, self.window, self.page_size
        B = len(seqs)
        token_rows = (
            torch.repeat_interleave(torch.arange(B), torch.tensor(counts, dtype=torch.int64))
            if B
            else torch.zeros(0, dtype=torch.int64)
        )
        # Window pages as a small table per row: logical pages [base_b, base_b + width).
        bases = [min(s.window_pages) if s.window_pages else 0 for s in seqs]
        width = max([max(s.window_pages) - b + 1 for s, b in zip(seqs, bases) if s.window_pages] or [1])
        table = torch.full((max(B, 1), width), -1, dtype=torch.int64)
        for i, (s, b) in enumerate(zip(seqs, bases)):
            for lp, page in s.window_pages.items():
                table[i, lp - b] = page
        base = torch.tensor(bases + [0] * (B == 0), dtype=torch.int64)

        def window_slot(pos, rows):  # slots of positions pos [...] of batch rows rows [...]; -1 if absent
            lp = pos // ps - base[rows]
            ok = (pos >= 0) & (lp >= 0) & (lp < width)
            page = table[rows, lp.clamp(0, width - 1)]
            return torch.where(ok & (page >= 0), page * ps + pos % ps, torch.full_like(pos, -1))

        window_slots = window_slot(positions, token_rows)
        win_pos = positions.unsqueeze(1) - W + 1 + torch.arange(W).unsqueeze(0)  # [T, W], oldest first
        window_indices = window_slot(win_pos, token_rows.unsqueeze(1).expand_as(win_pos))

        compressed, max_page = (
            {},
            {"window": max(max(s.window_pages.values(), default=-1) for s in seqs) if seqs else -1},
        )
        sh = self.shards
        for r in self.ratios:
            max_held = max([len(s.compressed_pages[r]) for s in seqs] + [1])
            held = torch.full((max(B, 1), max_held), -1, dtype=torch.int32)  # the pages this manager holds
            sbt = torch.full((max(B, 1), self.ring_pages(r)), -1, dtype=torch.int32)
            for i, s in enumerate(seqs):
                held[i, : len(s.compressed_pages[r])] = torch.tensor(s.compressed_pages[r], dtype=torch.int32)
                sbt[i] = torch.tensor(s.state_pages[r], dtype=torch.int32)
            if sh is None:
                bt, local_bt = held, None
            else:  # logical numbering with holes: local page k is logical page k * world + rank
                logical = [_cdiv(s.length // r, ps) for s in seqs]
                bt = torch.full((max(B, 1), max(logical + [1])), -1, dtype=torch.int32)
                bt[:, sh.rank :: sh.world] = held[:, : bt[:, sh.rank :: sh.world].shape[1]]
                local_bt = held.to(dev)
            visible_end = ((positions + 1) // r).to(torch.int32)  # positions are on the host here
            compressed[r] = CompressedPlan(
                ratio=r,
                visible_end=visible_end.to(dev),
                block_table=bt.to(dev),
                state_block_table=sbt.to(dev),
                page_size=ps,
                max_visible=int(visible_end.max()) if visible_end.numel() else 0,
                shards=sh,
                local_block_table=local_bt,
            )
            max_page[f"compressed:{r}"] = int(held.max())
            max_page[f"state:{r}"] = int(sbt.max())
        return StepPlan(
            seq_ids=seq_ids,
            cu_seqlens=cu.to(torch.int32).to(dev),
            positions=positions.to(dev),
            token_rows=token_rows.to(torch.int32).to(dev),
            window=W,
            page_size=ps,
            window_slots=window_slots.to(torch.int32).to(dev),
            window_indices=window_indices.to(torch.int32).to(dev),
            compressed=compressed,
            max_page=max_page,
            manager_id=self._id,
            serial=self._plans_made,
            _sequences=tuple(seqs),
        )


def _int_tensor(name: str, x) -> torch.Tensor:
    """``x`` (an integer tensor or a sequence of ints) as a CPU int64 tensor; bools, floats (even
    integral ones) and other types are refused, never truncated."""
    try:
        t = torch.as_tensor(x)
    except (TypeError, ValueError, RuntimeError):
        raise TypeError(
            f"plan: `{name}` must be an integer tensor or a sequence of ints, got {type(x).__name__}"
        ) from None
    if t.dtype == torch.bool or t.is_floating_point() or t.is_complex():
        raise TypeError(f"plan: `{name}` must hold integers, got dtype {str(t.dtype).replace('torch.', '')}")
    return t.to("cpu", torch.int64)


def token_chunks(num_tokens: int, bytes_per_token: int):
    """(t0, t1) ranges of at most the chunk budget's worth of tokens."""
    step = rows_per_chunk(bytes_per_token, max(1, num_tokens))
    return [(t0, min(num_tokens, t0 + step)) for t0 in range(0, num_tokens, step)]
