"""``PagedKVCache``: the paged caches of a model's DeepSeek-V4 attention layers, one sequence per batch row.

It owns one ``CacheManager`` (page bookkeeping and the per-step plan, shared by all layers) and, per
layer, the ``HybridAttention`` holding that layer's pools (created on first use, in the dtype of the
hidden states unless ``kv_dtype`` is given). Batch row b is sequence b for the cache's lifetime.

A step is one forward of the model over ``[B, S]`` new input positions. ``begin_step`` plans it once
(from the 2-D attention mask when there is padding); every layer then takes the same plan through
``layer_step``. Without an explicit ``begin_step`` (a layer used on its own) a layer call that finds
its layer already served in the current step starts the next step itself.

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
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import Dict, List, Optional, Sequence, Set, Tuple

import torch

from ..cache.manager import CacheManager, StepPlan
from ..configs import LayerConfig
from ..layers import HybridAttention

DEFAULT_STEP_TOKENS = 8192  # chunk of a long step (all rows together): bounds the window pools

# One chunk of a step: its plan and the indices of its tokens among the step's real tokens (None: all).
Chunk = Tuple[StepPlan, Optional[torch.Tensor]]


@dataclasses.dataclass
class _Step:
    batch: int
    width: int  # S: input positions per row in this step
    chunks: List[Chunk]  # in order; one unless the step has more than max_step_tokens new tokens
    rows: Optional[torch.Tensor]  # flat indices (b * S + s) of the real tokens, None when all are real
    served: Set[int] = dataclasses.field(default_factory=set)  # layer ids that consumed this step


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
            pool holds a chunk's new rows, so this bounds its size.
        kv_format: "float" or "fp8" (the 584-B FlashMLA record; head_dim 512 only).
        kv_dtype: dtype of float pools (default: the hidden states' dtype at first use).
        backend: forwarded to every op.
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
    ):
        if not layers:
            raise ValueError("PagedKVCache: needs the LayerConfig of at least one layer")
        if max_batch_size <= 0 or max_context <= 0:
            raise ValueError(
                f"PagedKVCache: max_batch_size and max_context must be > 0, got {max_batch_size}, {max_context}"
            )
        self.layer_configs = {L.index: L for L in layers}
        self.max_seqs, self.max_context = max_batch_size, max_context
        self.kv_format, self.kv_dtype, self.backend = kv_format, kv_dtype, backend
        if max_step_tokens is not None and max_step_tokens <= 0:
            raise ValueError(f"PagedKVCache: max_step_tokens must be > 0, got {max_step_tokens}")
        # a chunk takes at least one position of every row, so it may hold max_batch_size tokens
        requested = max_step_tokens or min(DEFAULT_STEP_TOKENS, max_batch_size * max_context)
        self.step_tokens = max(requested, max_batch_size)
        self.manager = CacheManager.for_layers(
            list(layers),
            max_seqs=max_batch_size,
            max_context=max_context,
            max_step_tokens=self.step_tokens,
            page_size=page_size,
            device=device,
        )
        self.layer_states: Dict[int, HybridAttention] = {}
        self.columns = 0  # input positions consumed per row, padding included (transformers' seq length)
        self.num_rows: Optional[int] = None  # batch rows served (fixed by the first step)
        self._step: Optional[_Step] = None

    # -- steps -------------------------------------------------------------------------------------------
    def begin_step(
        self, batch_size: int, num_positions: int, attention_mask: Optional[torch.Tensor] = None
    ) -> List[StepPlan]:
        """Plan one model step of ``[batch_size, num_positions]`` new input positions; returns the plans
        of its chunks, in order (one, unless the step has more than ``max_step_tokens`` new tokens).

        ``attention_mask``: ``None`` (every position is a token) or the 2-D ``[B, >= S]`` mask whose
        last S columns belong to this step (0 = padding).
        """
        B, S = batch_size, num_positions
        if self.num_rows is None:
            if B > self.max_seqs:
                raise ValueError(f"PagedKVCache: batch of {B} rows, the cache holds {self.max_seqs} sequences")
            for b in range(B):
                self.manager.add_sequence(b)
            self.num_rows = B
        elif B != self.num_rows:
            raise ValueError(f"PagedKVCache: this cache serves {self.num_rows} batch rows, the step has {B}")
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
        for b, n in enumerate(counts):  # refused before any chunk is planned
            if self.manager.seq_len(b) + n > self.max_context:
                raise ValueError(
                    f"PagedKVCache: row {b} would hold {self.manager.seq_len(b) + n} tokens, the cache was made "
                    f"for max_context={self.max_context}"
                )
        chunks = self._plan_chunks(counts)
        self._step = _Step(B, S, chunks, rows)
        self.columns += S
        return [plan for plan, _ in chunks]

    def _plan_chunks(self, counts: List[int]) -> List[Chunk]:
        """Plans of consecutive chunks of ``counts[b]`` new tokens per row: chunk k takes tokens
        [k * c, (k + 1) * c) of every row, c = max(1, max_step_tokens // rows)."""
        B = len(counts)
        per_row = max(1, self.step_tokens // max(1, B))
        n_chunks = max(1, -(-max(counts, default=0) // per_row))
        if n_chunks == 1:
            return [(self.manager.plan(list(range(B)), torch.tensor([0] + counts).cumsum(0)), None)]
        starts = [0, *itertools.accumulate(counts)][:-1]  # row b's first token among the real ones
        chunks = []
        for k in range(n_chunks):
            lo = k * per_row
            part = [max(0, min(n, lo + per_row) - lo) for n in counts]
            plan = self.manager.plan(list(range(B)), torch.tensor([0] + part).cumsum(0))
            index = torch.cat([torch.arange(s0 + lo, s0 + lo + n) for s0, n in zip(starts, part)])
            chunks.append((plan, index.to(self.manager.device)))
        return chunks

    def layer_step(self, module, batch_size: int, num_positions: int, dtype: torch.dtype):
        """(chunks [(plan, token indices among the real tokens or None)], HybridAttention of the module's
        layer, real-token rows or None) for this step."""
        idx = module.layer_idx
        if idx not in self.layer_configs:
            raise ValueError(f"PagedKVCache: layer {idx} was not declared when the cache was made")
        step = self._step
        if step is None or idx in step.served:
            self.begin_step(batch_size, num_positions)
            step = self._step
        if (step.batch, step.width) != (batch_size, num_positions):
            raise ValueError(
                f"PagedKVCache: layer {idx} got [{batch_size}, {num_positions}] positions, the step planned "
                f"[{step.batch}, {step.width}]"
            )
        step.served.add(idx)
        layer = self.layer_states.get(idx)
        if layer is None:
            layer = module.make_cache_layer(
                self.manager, kv_dtype=self.kv_dtype or dtype, kv_format=self.kv_format, backend=self.backend
            )
            self.layer_states[idx] = layer
        return step.chunks, layer, step.rows

    def seq_lengths(self):
        """Tokens cached per batch row (padding excluded)."""
        return [self.manager.seq_len(b) for b in range(self.num_rows or 0)]

    def reset(self) -> None:
        """Forget every sequence (pools are kept and reused)."""
        for b in range(self.num_rows or 0):
            self.manager.free_sequence(b)
        self.num_rows, self.columns, self._step = None, 0, None
