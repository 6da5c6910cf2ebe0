"""``PagedKVCache``: the paged caches of a model's DeepSeek-V4 attention layers, one sequence per batch row.

It owns one ``CacheManager`` (page bookkeeping and the per-step plan, shared by all layers) and, per
layer, the ``HybridAttention`` holding that layer's pools (created on first use, in the dtype of the
hidden states unless ``kv_dtype`` is given). Batch row b is sequence b for the cache's lifetime.

A step is one forward of the model over ``[B, S]`` new input positions. ``begin_step`` plans it once
(from the 2-D attention mask when there is padding); every layer then takes the same plan through
``layer_step``. Without an explicit ``begin_step`` (a layer used on its own) a layer call that finds
its layer already served in the current step starts the next step itself.

Padding: positions whose attention-mask value is 0 are not tokens of their row's sequence: they are
neither cached nor attended, and their outputs are 0. So a left-padded batch gives every row exactly
what that row gives alone (transformers' eager implementation instead pools pad positions into its
compressed entries). Rows must continue their own sequence: positions come from the cache (each row
counts its real tokens), not from ``position_ids``.
"""

from __future__ import annotations

import dataclasses
from typing import Dict, Optional, Sequence, Set

import torch

from ..cache.manager import CacheManager, StepPlan
from ..configs import LayerConfig
from ..layers import HybridAttention


@dataclasses.dataclass
class _Step:
    batch: int
    width: int  # S: input positions per row in this step
    plan: StepPlan
    rows: Optional[torch.Tensor]  # flat indices (b * S + s) of the real tokens, None when all are real
    served: Set[int] = dataclasses.field(default_factory=set)  # layer ids that consumed this step


class PagedKVCache:
    """Paged caches for the DeepSeek-V4 attention layers of one model.

    Args:
        layers: the ``LayerConfig`` of every layer that will use the cache (``module.layer``).
        max_batch_size: batch rows (= sequences).
        max_context: the longest sequence (prompt + generated tokens).
        page_size: rows per page of every pool.
        max_step_tokens: most new tokens of one step, all rows together (default
            ``max_batch_size * max_context``: a whole-prompt prefill). The window pool holds a step's
            new rows, so this bounds its size.
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
        self.manager = CacheManager.for_layers(
            list(layers),
            max_seqs=max_batch_size,
            max_context=max_context,
            max_step_tokens=max_step_tokens or max_batch_size * max_context,
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
    ) -> StepPlan:
        """Plan one model step of ``[batch_size, num_positions]`` new input positions.

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
        cu = torch.tensor([0] + counts).cumsum(0)
        plan = self.manager.plan(list(range(B)), cu)
        self._step = _Step(B, S, plan, rows)
        self.columns += S
        return plan

    def layer_step(self, module, batch_size: int, num_positions: int, dtype: torch.dtype):
        """(plan, HybridAttention of the module's layer, real-token rows or None) for this step."""
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
        return step.plan, layer, step.rows

    def seq_lengths(self):
        """Tokens cached per batch row (padding excluded)."""
        return [self.manager.seq_len(b) for b in range(self.num_rows or 0)]

    def reset(self) -> None:
        """Forget every sequence (pools are kept and reused)."""
        for b in range(self.num_rows or 0):
            self.manager.free_sequence(b)
        self.num_rows, self.columns, self._step = None, 0, None
