"""``PagedKVCache``: the paged caches of a model's DeepSeek-V4 attention layers, one sequence per batch row.

It owns one ``CacheManager`` (page bookkeeping and the per-step plan, shared by all layers) and, per
layer, the ``HybridAttention`` holding that layer's pools (created on first use, in the dtype of the
hidden states unless ``kv_dtype`` is given). Batch row b is sequence b for the cache's lifetime.

A step is one forward of the model over ``[B, S]`` new input positions. It starts only by an explicit
``begin_step`` (from the 2-D attention mask when there is padding), which plans it once and returns it
as a ``Step``; every layer then takes that step through ``layer_step`` (a layer that already ran it,
or a call without a step begun, is refused). The cache builds each layer's ``HybridAttention`` (its
pools) from its own ``LayerConfig`` on first use; the layer's weights stay with the module.

Chunked prefill: a step with more than ``max_step_tokens`` new tokens (all rows together) is planned as
consecutive chunks of at most that many tokens (the same number of positions from every row), and each
layer runs its chunks in order. The result is the same as one big step (the layer's chunk / decode
equivalence), but the window pools hold ``window + chunk`` rows per sequence instead of the whole
prompt: with the default chunk of 8,192 tokens a 1M-token prompt needs no window pool of 1M rows.
Chunk k of every layer runs before chunk k + 1 of the same layer, which is all the plans need: a
later chunk's plan may recycle window pages of an earlier chunk only once no later position reads them.

Padding: positions whose attention-mask value is 0 are not tokens of their row's sequence: they are
neither cached nor attended, and their outputs are 0. So a left-padded batch gives every row exactly
what that row gives alone (transformers' eager implementation instead pools pad positions into its
compressed entries). Rows must continue their own sequence: positions come from the cache (each row
counts its real tokens), not from ``position_ids``.

Growth: a cache made with ``growable=True`` that is asked for a step past ``max_context`` grows first
(before anything is planned): ``max_context`` becomes at least twice the old one, the page allocators
get the new pages (page ids kept) and every layer's pools are re-allocated with their rows copied, so
the cached sequences continue unchanged. Without ``growable`` such a step is refused, naming the
arguments that fix it.
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import Dict, List, Optional, Sequence, Set, Tuple

import torch

from ..cache.manager import CacheManager, StepPlan
from ..cache.shards import PageShards
from ..configs import LayerConfig
from ..layers import HybridAttention

DEFAULT_STEP_TOKENS = 8192  # chunk of a long step (all rows together): bounds the window pools

# One chunk of a step: its plan and the indices of its tokens among the step's real tokens (None: all).
Chunk = Tuple[StepPlan, Optional[torch.Tensor]]


@dataclasses.dataclass
class Step:
    """One planned model step (``PagedKVCache.begin_step``): ``[batch, width]`` input positions."""

    batch: int
    width: int  # S: input positions per row in this step
    chunks: List[Chunk]  # in order; one unless the step has more than max_step_tokens new tokens
    rows: Optional[torch.Tensor]  # flat indices (b * S + s) of the real tokens, None when all are real
    served: Set[int] = dataclasses.field(default_factory=set)  # layer ids that consumed this step

    @property
    def plans(self) -> List[StepPlan]:
        """The plans of the step's chunks, in order."""
        return [plan for plan, _ in self.chunks]


class PagedKVCache:
    """Paged caches for the DeepSeek-V4 attention layers of one model.

    Args:
        layers: the ``LayerConfig`` of every layer that will use the cache (``module.layer``).
        max_batch_size: batch rows (= sequences).
        max_context: the longest sequence (prompt + generated tokens).
        page_size: rows per page of every pool.
        max_step_tokens: most new tokens one chunk of a step plans, all rows together (default
            ``min(8192, max_batch_size * max_context)``; never below ``max_batch_size``: a chunk takes
            at least one position of every row); longer steps run as consecutive chunks. The window
            pool holds a chunk's new rows, so this bounds its size. The default follows the cache's
            size when a growable cache grows.
        kv_format: "float" or "fp8" (the 584-B FlashMLA record; head_dim 512 only).
        index_format: indexer keys of CSA layers: "float" (pools in ``kv_dtype``) or "fp8" (vLLM's
            132-B FP8 indexer K record, ``longattn.cache.Fp8IndexKeyPool``; index head dim a multiple of 16).
        kv_dtype: dtype of float pools (default: the hidden states' dtype at first use).
        backend: forwarded to every op.
        growable: grow (re-allocate the pools and copy the cached rows) when a step would take a row
            past ``max_context``, instead of refusing the step. ``max_context`` is then only the
            initial size.
        group: context parallelism over this ``torch.distributed`` process group (``"world"``: the
            default group): each rank holds its pages of the compressed KV and index keys
            (``longattn.distributed``); every rank runs the same steps on the same inputs and gets
            the whole output.
    """

    def __init__(
        self,
        layers: Sequence[LayerConfig],
        *,
        max_batch_size: int,
        max_context: int,
        page_size: int = 64,
        max_step_tokens: Optional[int] = None,
        kv_format: str = "float",
        kv_dtype: Optional[torch.dtype] = None,
        backend: Optional[str] = None,
        device=None,
        index_format: str = "float",
        growable: bool = False,
        group=None,
    ):
        if not layers:
            raise ValueError("PagedKVCache: needs the LayerConfig of at least one layer")
        if max_batch_size <= 0 or max_context <= 0:
            raise ValueError(
                f"PagedKVCache: max_batch_size and max_context must be > 0, got {max_batch_size}, {max_context}"
            )
        self.layer_configs = {L.index: L for L in layers}
        self.max_seqs, self.max_context = max_batch_size, max_context
        if index_format not in ("float", "fp8"):
            raise ValueError(f"PagedKVCache: index_format must be 'float' or 'fp8', got {index_format!r}")
        self.kv_format, self.kv_dtype, self.backend = kv_format, kv_dtype, backend
        self.index_format = index_format
        self.growable = bool(growable)
        if max_step_tokens is not None and max_step_tokens <= 0:
            raise ValueError(f"PagedKVCache: max_step_tokens must be > 0, got {max_step_tokens}")
        self._requested_step_tokens = max_step_tokens
        self.group, self.shards = _context_parallel(group, page_size)
        self.step_tokens = self._default_step_tokens(max_context)
        self.manager = self._sized_manager(max_context, page_size, device)
        self.layer_states: Dict[int, HybridAttention] = {}
        self.columns = 0  # input positions consumed per row, padding included (transformers' seq length)
        self.num_rows: Optional[int] = None  # batch rows served (fixed by the first step)
        self._step: Optional[Step] = None

    def _default_step_tokens(self, max_context: int) -> int:
        # a chunk takes at least one position of every row, so it may hold max_batch_size tokens
        requested = self._requested_step_tokens or min(DEFAULT_STEP_TOKENS, self.max_seqs * max_context)
        return max(requested, self.max_seqs)

    def _sized_manager(self, max_context: int, page_size: int, device) -> CacheManager:
        return CacheManager.for_layers(
            list(self.layer_configs.values()),
            max_seqs=self.max_seqs,
            max_context=max_context,
            max_step_tokens=self.step_tokens,
            page_size=page_size,
            device=device,
            shards=self.shards,
        )

    # -- growth ------------------------------------------------------------------------------------------
    def grow(self, max_context: int) -> None:
        """Make room for sequences of ``max_context`` tokens (no-op if there is room already).

        The pools that depend on the length (compressed entries and, through the default chunk size,
        the window pool) are re-allocated with more pages and their rows copied; page ids, sequences
        and the state rings stay as they are, so the cached sequences continue unchanged. Call it
        between steps (``begin_step`` calls it for a growable cache)."""
        if max_context <= self.max_context:
            return
        m = self.manager
        self.step_tokens = max(self.step_tokens, self._default_step_tokens(max_context))
        sized = self._sized_manager(max_context, m.page_size, m.device)  # the page counts of the new size
        m.window_alloc.grow(sized.window_alloc.num_pages)
        for r in m.ratios:
            m.compressed_alloc[r].grow(sized.compressed_alloc[r].num_pages)
        for layer in self.layer_states.values():
            layer.fit_pools()
        self.max_context = max_context

    # -- steps -------------------------------------------------------------------------------------------
    def begin_step(self, batch_size: int, num_positions: int, attention_mask: Optional[torch.Tensor] = None) -> Step:
        """Plan one model step of ``[batch_size, num_positions]`` new input positions and make it the
        current step; its ``plans`` are those of its chunks, in order (one, unless the step has more than
        ``max_step_tokens`` new tokens).

        ``attention_mask``: ``None`` (every position is a token) or the 2-D ``[B, >= S]`` mask whose
        last S columns belong to this step (0 = padding).
        """
        B, S = batch_size, num_positions
        if self.num_rows is None:
            if B > self.max_seqs:
                raise ValueError(
                    f"PagedKVCache: batch of {B} rows, the cache holds {self.max_seqs} sequences; make the cache "
                    f"with max_batch_size={B} (or more)"
                )
            for b in range(B):
                self.manager.add_sequence(b)
            self.num_rows = B
        elif B != self.num_rows:
            raise ValueError(
                f"PagedKVCache: this cache serves {self.num_rows} batch rows, the step has {B} (one sequence per "
                "row for the cache's lifetime: continue with the same batch, or start a new cache / reset())"
            )
        rows = None
        counts = [S] * B
        if attention_mask is not None:
            if (
                not isinstance(attention_mask, torch.Tensor)
                or attention_mask.dim() != 2
                or attention_mask.shape[0] != B
            ):
                raise NotImplementedError(
                    "PagedKVCache: the attention mask must be None or a 2-D [batch, length] padding mask, got "
                    + (
                        f"shape {list(attention_mask.shape)}"
                        if isinstance(attention_mask, torch.Tensor)
                        else type(attention_mask).__name__
                    )
                )
            if attention_mask.shape[1] < S:
                raise ValueError(f"PagedKVCache: attention mask of {attention_mask.shape[1]} columns for a step of {S}")
            real = attention_mask[:, attention_mask.shape[1] - S :].to("cpu") != 0
            if not bool(real.all()):
                rows = real.reshape(-1).nonzero().squeeze(1).to(self.manager.device)
                counts = real.sum(1).tolist()
        need = max(self.manager.seq_len(b) + n for b, n in enumerate(counts)) if counts else 0
        if need > self.max_context:  # grown or refused before any chunk is planned
            if not self.growable:
                b = max(range(B), key=lambda i: self.manager.seq_len(i) + counts[i])
                raise ValueError(
                    f"PagedKVCache: row {b} would hold {need} tokens, the cache was made for "
                    f"max_context={self.max_context}; make the cache with a larger max_context= (or with "
                    "growable=True to grow it on demand)"
                )
            self.grow(max(need, 2 * self.max_context))
        chunks = self._plan_chunks(counts)
        self._step = Step(B, S, chunks, rows)
        self.columns += S
        return self._step

    def _plan_chunks(self, counts: List[int]) -> List[Chunk]:
        """Plans of consecutive chunks of ``counts[b]`` new tokens per row: chunk k takes tokens
        [k * c, (k + 1) * c) of every row, c = max(1, max_step_tokens // rows)."""
        B = len(counts)
        per_row = max(1, self.step_tokens // max(1, B))
        n_chunks = max(1, -(-max(counts, default=0) // per_row))
        if n_chunks == 1:
            return [(self.manager.plan(list(range(B)), torch.tensor([0] + counts).cumsum(0)), None)]
        starts = [0, *itertools.accumulate(counts)][:-1]  # row b's first token among the real ones
        chunks: List[Chunk] = []
        for k in range(n_chunks):
            lo = k * per_row
            part = [max(0, min(n, lo + per_row) - lo) for n in counts]
            plan = self.manager.plan(list(range(B)), torch.tensor([0] + part).cumsum(0))
            index = torch.cat([torch.arange(s0 + lo, s0 + lo + n) for s0, n in zip(starts, part)])
            chunks.append((plan, index.to(self.manager.device)))
        return chunks

    def layer_step(self, layer_idx: int, batch_size: int, num_positions: int) -> Step:
        """The current step, for layer ``layer_idx`` over ``[batch_size, num_positions]`` positions.

        Refused unless ``begin_step`` planned a step of that shape that this layer has not run yet."""
        if layer_idx not in self.layer_configs:
            raise ValueError(f"PagedKVCache: layer {layer_idx} was not declared when the cache was made")
        step = self._step
        if step is None or layer_idx in step.served:
            raise RuntimeError(
                f"PagedKVCache: layer {layer_idx} has no step to run: call cache.begin_step(batch, positions[, "
                "attention_mask]) once before each forward of the layers (the transformers integration does)"
            )
        if (step.batch, step.width) != (batch_size, num_positions):
            raise ValueError(
                f"PagedKVCache: layer {layer_idx} got [{batch_size}, {num_positions}] positions, the step planned "
                f"[{step.batch}, {step.width}]"
            )
        step.served.add(layer_idx)
        return step

    def layer(self, layer_idx: int, dtype: torch.dtype = torch.bfloat16) -> HybridAttention:
        """Layer ``layer_idx``'s pools, made from its ``LayerConfig`` on first use (float pools in
        ``kv_dtype``, else in ``dtype``: the hidden states' dtype)."""
        layer = self.layer_states.get(layer_idx)
        if layer is None:
            layer = HybridAttention(
                self.layer_configs[layer_idx], self.manager, kv_dtype=self.kv_dtype or dtype,
                kv_format=self.kv_format, index_format=self.index_format, backend=self.backend, group=self.group,
            )  # fmt: skip
            self.layer_states[layer_idx] = layer
        return layer

    def seq_lengths(self):
        """Tokens cached per batch row (padding excluded)."""
        return [self.manager.seq_len(b) for b in range(self.num_rows or 0)]

    def reset(self) -> None:
        """Forget every sequence (pools are kept and reused)."""
        for b in range(self.num_rows or 0):
            self.manager.free_sequence(b)
        self.num_rows, self.columns, self._step = None, 0, None


def _context_parallel(group, page_size: int):
    """(process group, this rank's PageShards) for ``group`` (None: no context parallelism)."""
    if group is None:
        return None, None
    import torch.distributed as dist

    pg = None if isinstance(group, str) and group == "world" else group
    if not dist.is_available() or not dist.is_initialized():
        raise ValueError("PagedKVCache: `group` needs torch.distributed initialised (init_process_group)")
    return pg, PageShards(dist.get_world_size(pg), dist.get_rank(pg), page_size)
