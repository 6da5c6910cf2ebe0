"""``longattn.nn.DeepseekV4Attention``: one DeepSeek-V4 attention layer (SWA, CSA or HCA) as an nn.Module.

The full layer math around the package's kernels (docs/deepseek-v4-attention.md section 2, README.md here):

    cq  = RMSNorm_w(q_a_proj(x))                          q low-rank projection + norm
    q   = rope(rms(q_b_proj(cq).view(H, D)))              weightless per-head RMS norm, RoPE on the last dims
    kv  = rope(RMSNorm_w(kv_proj(x)))                     the one latent K = V row
    a,b = compressor.kv_proj(x), compressor.gate_proj(x) + position_bias[p % ratio]      CSA / HCA
    indexer (CSA): q_I = rope(indexer.q_b_proj(cq)), w = weights_proj(x) / sqrt(Hi * Di),
                   indexer compressor a_I, b_I                                            CSA
    o   = HybridAttention(...)                            window + compressed + sink, one softmax (paged)
    y   = o_b_proj(grouped o_a_proj(rope^-1(o)))          inverse RoPE, grouped low-rank output projection

Parameter names and shapes are those of the Hugging Face transformers ``DeepseekV4Attention`` state
dict (``q_a_proj``, ``q_a_norm``, ``q_b_proj``, ``kv_proj``, ``kv_norm``, ``o_a_proj``, ``o_b_proj``,
``sinks``, ``compressor.{kv_proj, gate_proj, position_bias, kv_norm}``,
``compressor.indexer.{kv_proj, gate_proj, position_bias, kv_norm, q_b_proj, scorer.weights_proj}``), so
``module.load_state_dict(hf_attention.state_dict())`` works. The caches are the package's paged pools:
a ``PagedKVCache`` (one ``CacheManager`` and one ``HybridAttention`` per layer) maps batch rows to
sequences. Numerics follow transformers' eager implementation; README.md lists where that differs from
DeepSeek's reference code and what we do.
"""

from __future__ import annotations

import math
from typing import Dict, Optional, Sequence, Tuple

import torch
from torch import nn

from ..cache.manager import StepPlan
from ..configs import CSA_RATIO, LayerConfig, ModelConfig, RopeConfig, YarnConfig, kind_of_ratio
from ..layers import HybridAttention
from ..layers.warmup import DEFAULT_PREFILL_CHUNKS, WarmupReport
from ..rope import apply_rope, inv_freq

_LAYER_TYPES = {
    "sliding_attention": "swa",
    "compressed_sparse_attention": "csa",
    "heavily_compressed_attention": "hca",
}


# --- configuration --------------------------------------------------------------------------------------


def _no_grad() -> bool:
    """Attention outputs may be rotated in place only when no autograd graph records them (their
    backward formulas keep the output)."""
    return not torch.is_grad_enabled()


def _rope_from_params(params: dict, what: str, default_theta=None) -> RopeConfig:
    """A transformers rope-parameters dict ({"rope_type", "rope_theta", "factor", ...}) as a RopeConfig
    (the frequency table; the YaRN cos/sin scale is ``_rope_attention_factor``'s)."""
    rope_type = params.get("rope_type", params.get("type", "default"))
    theta = params.get("rope_theta", default_theta)
    if theta is None:
        raise ValueError(f"DeepseekV4Attention: the {what} RoPE parameters have no rope_theta")
    theta = float(theta)
    if rope_type == "default":
        return RopeConfig(theta)
    if rope_type != "yarn":
        raise NotImplementedError(
            f"DeepseekV4Attention: {what} RoPE type {rope_type!r} is not supported (default, yarn)"
        )
    if params.get("factor") is None:
        raise NotImplementedError(f"DeepseekV4Attention: {what} YaRN parameters without a factor are not supported")
    return RopeConfig(
        theta,
        YarnConfig(
            factor=float(params["factor"]),
            original_max_position=int(params["original_max_position_embeddings"]),
            beta_fast=float(params.get("beta_fast") or 32),
            beta_slow=float(params.get("beta_slow") or 1),
        ),
    )


def _yarn_mscale(scale: float, mscale: float = 1.0) -> float:
    return 1.0 if scale <= 1 else 0.1 * mscale * math.log(scale) + 1.0


def _rope_attention_factor(params: dict, flat: bool) -> float:
    """The factor transformers multiplies a table's cos and sin by (``attention_scaling`` of its rotary
    embedding; 1 for the default type). For YaRN without ``attention_factor``, transformers
    (``modeling_rope_utils._compute_yarn_parameters``, 5.9 - 5.25) derives
    ``0.1 * ln(factor) + 1`` (or the ratio of the ``mscale`` / ``mscale_all_dim`` values when both are
    given): 1.277 for factor 16. ``DeepseekV4Config`` sets ``attention_factor: 1.0`` (DeepSeek's
    reference: no mscale) only when it builds the nested dict itself from flat parameters (``flat``);
    a nested ``rope_parameters`` given by the user keeps whatever it says."""
    if params.get("rope_type", params.get("type", "default")) != "yarn":
        return 1.0
    if flat and "attention_factor" not in params:
        return 1.0
    factor = params.get("attention_factor")
    if factor is not None:
        return float(factor)
    scale, mscale, mscale_all_dim = float(params["factor"]), params.get("mscale"), params.get("mscale_all_dim")
    if mscale and mscale_all_dim:
        return float(_yarn_mscale(scale, mscale) / _yarn_mscale(scale, mscale_all_dim))
    return float(_yarn_mscale(scale))


def _rope_params(config, kind: str):
    """(rope-parameters dict of the layer's table or None, flat?, default theta) of a config."""
    params = getattr(config, "rope_parameters", None) or {}
    if isinstance(params.get("main"), dict) and isinstance(params.get("compress"), dict):
        # transformers fills a missing rope_theta of either table with config.rope_theta
        return params["main" if kind == "swa" else "compress"], False, getattr(config, "rope_theta", None)
    if kind == "swa":
        return None, True, float(config.rope_theta)  # ratio-0 layers: plain RoPE (section 3)
    theta = float(getattr(config, "compress_rope_theta", config.rope_theta))
    scaling = getattr(config, "rope_scaling", None) or params
    return ({**scaling, "rope_theta": theta} if scaling else None), True, theta


def rope_attention_factor(config, layer_idx: int) -> float:
    """The factor on the cos / sin of layer ``layer_idx``'s RoPE table (1 unless a YaRN table says or,
    in transformers' rules, implies otherwise; see ``_rope_attention_factor``). DeepSeek's reference
    and ``longattn.configs.ModelConfig`` use none."""
    if isinstance(config, ModelConfig):
        return 1.0
    params, flat, _ = _rope_params(config, layer_config(config, layer_idx).kind)
    return 1.0 if params is None else _rope_attention_factor(params, flat)


def layer_config(config, layer_idx: int) -> LayerConfig:
    """The ``LayerConfig`` of decoder layer ``layer_idx`` of a DeepSeek-V4 config.

    ``config`` is a transformers ``DeepseekV4Config`` (or any object with its attribute names:
    ``layer_types``/``compress_rates`` or a per-layer ``compress_ratios`` list, ``rope_parameters`` or
    ``rope_theta``/``compress_rope_theta``/``rope_scaling``) or a ``longattn.configs.ModelConfig``.
    """
    if isinstance(config, ModelConfig):
        return config.layer(layer_idx)
    head_dim = int(config.head_dim)
    rope_dim = getattr(config, "qk_rope_head_dim", None)
    if rope_dim is None:
        rope_dim = int(head_dim * (getattr(config, "partial_rotary_factor", None) or 64 / 512))
    layer_types = getattr(config, "layer_types", None)
    if layer_types is not None:
        kind = _LAYER_TYPES.get(layer_types[layer_idx])
        if kind is None:
            raise ValueError(f"DeepseekV4Attention: unknown layer type {layer_types[layer_idx]!r}")
        ratio = 0 if kind == "swa" else int(config.compress_rates[layer_types[layer_idx]])
    else:
        ratio = int(config.compress_ratios[layer_idx])
        kind = kind_of_ratio(ratio)
    if kind == "csa" and ratio != CSA_RATIO:
        raise NotImplementedError(f"DeepseekV4Attention: CSA layers with compress rate {ratio} (only {CSA_RATIO})")
    if kind == "hca" and ratio in (0, CSA_RATIO):
        raise NotImplementedError(f"DeepseekV4Attention: HCA layers with compress rate {ratio} (4 means CSA here)")

    params, flat, theta = _rope_params(config, kind)
    what = "main" if kind == "swa" else "compress"
    rope = RopeConfig(theta) if params is None else _rope_from_params(params, what, theta)
    table_factor = None if flat or params is None else params.get("partial_rotary_factor")
    if table_factor is not None and int(head_dim * float(table_factor)) != int(rope_dim):
        raise NotImplementedError(
            f"DeepseekV4Attention: the {what} RoPE table rotates {int(head_dim * float(table_factor))} dims "
            f"(partial_rotary_factor {table_factor}), the layer {int(rope_dim)}: one rope dim per model only"
        )
    return LayerConfig(
        index=layer_idx,
        kind=kind,
        compress_ratio=ratio,
        n_heads=int(config.num_attention_heads),
        head_dim=head_dim,
        rope_dim=int(rope_dim),
        window=int(config.sliding_window),
        index_n_heads=int(config.index_n_heads),
        index_head_dim=int(config.index_head_dim),
        index_topk=int(config.index_topk),
        rope=rope,
        eps=float(config.rms_norm_eps),
    )


def _dims(config):
    if isinstance(config, ModelConfig):
        return config.dim, config.q_lora_rank, config.o_groups, config.o_lora_rank
    return int(config.hidden_size), int(config.q_lora_rank), int(config.o_groups), int(config.o_lora_rank)


# --- building blocks --------------------------------------------------------------------------------------


class RMSNorm(nn.Module):
    """Weighted RMSNorm computed in fp32 (weight kept in fp32), cast back to the input dtype."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim, dtype=torch.float32))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.to(torch.float32)
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return (self.weight * x).to(dtype)


def all_visible(visible: torch.Tensor, num_entries: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """HCA's selection: every visible entry. ``visible [T]`` -> (ids ``[T, num_entries]`` int32, entry j
    where j < visible else -1; lengths ``[T]`` int32)."""
    j = torch.arange(num_entries, device=visible.device)
    ids = torch.where(j.unsqueeze(0) < visible.unsqueeze(1), j, -1).to(torch.int32)
    return ids, visible.to(torch.int32)


def _linear(n_in: int, n_out: int) -> nn.Linear:
    return nn.Linear(n_in, n_out, bias=False)


class Compressor(nn.Module):
    """The attention compressor's weights (``kv_proj``, ``gate_proj`` ``[c*D, dim]``, ``position_bias``
    ``[ratio, c*D]`` fp32, ``kv_norm`` ``[D]``); c = 2 for the overlapping CSA compressor."""

    def __init__(self, dim: int, head_dim: int, ratio: int, overlap: bool, eps: float):
        super().__init__()
        width = (2 if overlap else 1) * head_dim
        self.ratio, self.overlap = ratio, overlap
        self.kv_proj = _linear(dim, width)
        self.gate_proj = _linear(dim, width)
        self.position_bias = nn.Parameter(torch.zeros(ratio, width, dtype=torch.float32))
        self.kv_norm = RMSNorm(head_dim, eps)

    def inputs(self, x: torch.Tensor, positions: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Per-token compressor values ``a`` and scores ``b`` (+ position bias ``APE[p % ratio]``), fp32."""
        x = x.to(self.kv_proj.weight.dtype)  # checkpoints keep the compressor projections in fp32
        a = self.kv_proj(x).to(torch.float32)
        b = self.gate_proj(x).to(torch.float32) + self.position_bias.to(torch.float32)[positions % self.ratio]
        return a, b


class IndexerScorer(nn.Module):
    def __init__(self, dim: int, n_heads: int):
        super().__init__()
        self.weights_proj = _linear(dim, n_heads)


class Indexer(Compressor):
    """The lightning indexer of a CSA layer: its compressor (``kv_proj``, ``gate_proj``,
    ``position_bias``, ``kv_norm`` at ``index_head_dim``), ``q_b_proj`` and ``scorer.weights_proj``."""

    def __init__(self, dim: int, q_lora_rank: int, n_heads: int, head_dim: int, eps: float):
        super().__init__(dim, head_dim, CSA_RATIO, True, eps)
        self.n_heads, self.head_dim = n_heads, head_dim
        self.q_b_proj = _linear(q_lora_rank, n_heads * head_dim)
        self.scorer = IndexerScorer(dim, n_heads)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # transformers 5.8 / 5.9 kept the head weights at ``indexer.weights_proj`` (later ``scorer.``).
        old = prefix + "weights_proj.weight"
        if old in state_dict and prefix + "scorer.weights_proj.weight" not in state_dict:
            state_dict[prefix + "scorer.weights_proj.weight"] = state_dict.pop(old)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


class CSACompressor(Compressor):
    def __init__(self, dim, q_lora_rank, L: LayerConfig):
        super().__init__(dim, L.head_dim, L.compress_ratio, True, L.eps)
        self.indexer = Indexer(dim, q_lora_rank, L.index_n_heads, L.index_head_dim, L.eps)


# --- the layer ----------------------------------------------------------------------------------------------


class DeepseekV4Attention(nn.Module):
    """One DeepSeek-V4 attention layer over the package's paged caches.

    Args:
        config: a transformers ``DeepseekV4Config`` (or an object with its attributes) or a
            ``longattn.configs.ModelConfig`` (e.g. ``longattn.configs.V4_FLASH``).
        layer_idx: the decoder layer; its type (SWA / CSA / HCA) and RoPE table come from the config.

    Two entry points:

    - ``forward(hidden_states [B, S, dim], position_embeddings=None, position_ids=None,
      attention_mask=None, cache=None, **kwargs) -> (out [B, S, dim], None)``: the transformers
      attention-module signature (``position_embeddings`` and the 4-D mask are not used: RoPE tables
      and visibility are the layer's own). ``cache`` is a ``PagedKVCache`` (one sequence per batch
      row); ``None`` runs a one-shot prefill from position 0, or uses ``longattn_cache=`` (a cache
      for this call that the caller keeps out of the model's outputs: the transformers integration's
      forwards with ``use_cache=False``).
    - ``forward_paged(hidden_states [T, dim], plan, cache_layer) -> [T, dim]``: a ragged batch
      (prefill chunks and decode tokens of many sequences) with a ``CacheManager`` plan and this
      layer's ``HybridAttention`` (``PagedKVCache.layer(layer_idx)``, or one made directly on a
      ``CacheManager``). This is what ``torch.compile`` can take whole.
    """

    def __init__(self, config, layer_idx: int):
        super().__init__()
        L = layer_config(config, layer_idx)
        dim, q_lora_rank, o_groups, o_lora_rank = _dims(config)
        if L.n_heads % o_groups:
            raise ValueError(f"DeepseekV4Attention: {L.n_heads} heads are not a multiple of o_groups={o_groups}")
        if L.rope_dim % 2 or L.rope_dim > min(L.head_dim, L.index_head_dim):
            raise ValueError(f"DeepseekV4Attention: rope dim {L.rope_dim} must be even and fit the head dims")
        self.config, self.layer_idx, self.layer = config, layer_idx, L
        self.layer_type = {
            "swa": "sliding_attention",
            "csa": "compressed_sparse_attention",
            "hca": "heavily_compressed_attention",
        }[L.kind]
        self.num_heads, self.head_dim, self.o_groups, self.eps = L.n_heads, L.head_dim, o_groups, L.eps
        self.scaling = L.softmax_scale

        self.q_a_proj = _linear(dim, q_lora_rank)
        self.q_a_norm = RMSNorm(q_lora_rank, L.eps)
        self.q_b_proj = _linear(q_lora_rank, L.n_heads * L.head_dim)
        self.kv_proj = _linear(dim, L.head_dim)
        self.kv_norm = RMSNorm(L.head_dim, L.eps)
        self.o_a_proj = _linear(L.n_heads * L.head_dim // o_groups, o_groups * o_lora_rank)  # grouped
        self.o_b_proj = _linear(o_groups * o_lora_rank, dim)
        self.sinks = nn.Parameter(torch.zeros(L.n_heads, dtype=torch.float32))
        self.compressor: Optional[Compressor]
        if L.kind == "csa":
            self.compressor = CSACompressor(dim, q_lora_rank, L)
        elif L.kind == "hca":
            self.compressor = Compressor(dim, L.head_dim, L.compress_ratio, False, L.eps)
        else:
            self.compressor = None
        # The layer's RoPE table (theta 10000 plain for SWA, 160000 + YaRN for CSA/HCA in V4), and the
        # factor on its cos / sin (1 for V4; transformers derives YaRN's mscale for some configs).
        self.register_buffer("rope_inv_freq", inv_freq(L.rope, L.rope_dim), persistent=False)
        self.rope_attention_factor = rope_attention_factor(config, layer_idx)

    @property
    def kind(self) -> str:
        return self.layer.kind

    def extra_repr(self) -> str:
        extra = "" if self.rope_attention_factor == 1.0 else f", rope_attention_factor={self.rope_attention_factor:g}"
        return f"layer_idx={self.layer_idx}, kind={self.kind}, ratio={self.layer.compress_ratio}{extra}"

    def _rope_scaled(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` with its rope dims times the table's attention factor (transformers multiplies cos and
        sin by it, so every rotated vector carries it: q, kv, compressed entries, indexer q and keys,
        and the inverse rotation of the output). Identity when the factor is 1."""
        s, r = self.rope_attention_factor, self.layer.rope_dim
        if s == 1.0:
            return x
        return torch.cat([x[..., :-r], (x[..., -r:].to(torch.float32) * s).to(x.dtype)], dim=-1)

    def _entry_norm(self, norm: RMSNorm) -> torch.Tensor:
        """The RMSNorm weight ``compress_kv`` applies to a compressed entry before rotating it, with the
        attention factor on its rope dims (fp32; rotation is linear, so the entry's rope dims carry it)."""
        if self.rope_attention_factor == 1.0:
            return norm.weight
        return self._rope_scaled(norm.weight.to(torch.float32))

    def _rope_table(self) -> torch.Tensor:
        table = self.rope_inv_freq  # a buffer (typed as a Module attribute)
        assert isinstance(table, torch.Tensor)
        return table

    # -- the math ------------------------------------------------------------------------------------------
    def forward_paged(self, hidden_states: torch.Tensor, plan: StepPlan, cache_layer: HybridAttention) -> torch.Tensor:
        """Ragged batch ``hidden_states [T, dim]`` (tokens in ``plan`` order) -> ``[T, dim]``.

        Writes the step's rows into ``cache_layer``'s pools (window, compressed, indexer keys,
        compressor states) and attends; ``plan`` is the ``CacheManager.plan`` of the step.
        """
        x = hidden_states
        pos = plan.positions
        head_pos = pos.unsqueeze(1)  # broadcast over heads
        cq = self.q_a_norm(self.q_a_proj(x))
        q = self._queries(cq, head_pos)
        kv = self._window_rows(x, pos)

        # Compressed entries and indexer keys are rotated inside compress_kv after their RMSNorm weight:
        # the attention factor rides on the weight's rope dims (rotation is linear).
        extra: Dict[str, torch.Tensor] = {}
        if self.compressor is not None:
            a, b = self.compressor.inputs(x, pos)
            extra.update(compress_a=a, compress_b=b, compress_norm_weight=self._entry_norm(self.compressor.kv_norm))
        if isinstance(self.compressor, CSACompressor):  # (CSA)
            idx: Indexer = self.compressor.indexer
            ia, ib = idx.inputs(x, pos)
            iq, iw = self._index_queries(idx, cq, x, head_pos)
            extra.update(
                index_q=iq, index_weights=iw, index_a=ia, index_b=ib, index_norm_weight=self._entry_norm(idx.kv_norm)
            )

        o = cache_layer(plan, q, kv, attn_sink=self.sinks, **extra)  # [T, H, D]
        o = self._rope_scaled(apply_rope(o, head_pos, self._rope_table(), inverse=True, inplace=_no_grad()))
        return self._output_projection(o)

    def warmup(
        self,
        cache_layer: HybridAttention,
        *,
        max_batch: Optional[int] = None,
        batch_sizes: Optional[Sequence[int]] = None,
        prefill_chunks: Sequence[int] = DEFAULT_PREFILL_CHUNKS,
        max_context: Optional[int] = None,
    ) -> WarmupReport:
        """JIT warm-up of ``forward_paged`` over ``cache_layer`` (this layer's ``HybridAttention``, e.g.
        ``PagedKVCache.layer(layer_idx, dtype)``): ``HybridAttention.warmup``'s steps, each run through
        this module's own ``forward_paged`` (its projections make the layer's inputs, so their dtypes and
        the norm weights' are the ones serving passes) on scratch caches like ``cache_layer``'s, which
        is not touched. Arguments and report as ``HybridAttention.warmup``."""
        from ..layers import warmup as w

        who = f"DeepseekV4Attention[layer {self.layer_idx}].warmup"
        if not isinstance(cache_layer, HybridAttention):
            raise TypeError(f"{who}: `cache_layer` must be a HybridAttention, got {type(cache_layer).__name__}")
        if cache_layer.layer != self.layer:
            raise ValueError(
                f"{who}: `cache_layer` serves another layer config ({cache_layer.layer}) than {self.layer}"
            )
        weight = self.q_a_proj.weight
        if cache_layer.manager.device != weight.device:
            raise ValueError(
                f"{who}: `cache_layer` is on {cache_layer.manager.device}, the module's weights on {weight.device}"
            )
        default_context = w.default_max_context(cache_layer)
        sizes, chunks, ctx = w.check_sizes(who, max_batch, batch_sizes, prefill_chunks, max_context, default_context)
        per_input = w.check_dtypes(who, self.kind, weight.dtype, None)

        def probe(scratch, plan):
            return scratch.prepare(plan, **w.layer_inputs(scratch, plan.num_tokens, weight.dtype, per_input, True))

        def step(scratch, plan):
            x = torch.zeros(plan.num_tokens, self.q_a_proj.in_features, dtype=weight.dtype, device=weight.device)
            return self.forward_paged(x, plan, scratch)

        return w.run_warmup(cache_layer, who, step, probe, sizes, chunks, ctx)

    # -- training: whole sequences, no cache, differentiable -----------------------------------------------
    def forward_train(
        self, hidden_states: torch.Tensor, cu_seqlens: Optional[torch.Tensor] = None, indexer_loss: Optional[str] = None
    ):
        """Whole sequences from position 0 without a cache, differentiable: ``[B, S, dim]`` (each row a
        sequence), or sequence-packed ``[T, dim]`` with ``cu_seqlens [N+1]`` (varlen). Same function as
        the paged path: compressed entries and indexer keys by ``compress_pool`` + RMSNorm + RoPE (what
        ``compress_kv`` computes), the indexer's top-k (a selection: no gradient reaches the indexer
        through it), then one ``sparse_attention`` over the window and the selected entries.

        Gradients reach every weight except the indexer's (q_b_proj, weights_proj and its compressor):
        the top-k is a selection. DeepSeek trains the indexer with its own loss: ``indexer_loss="dense"``
        (warm-up: over every visible entry) or ``"sparse"`` (over the selected entries) also returns
        ``longattn.indexer_kl_loss`` of the layer (CSA only), averaged over the tokens that have a
        candidate: ``(out, loss)``; its gradient reaches only the indexer's weights (the indexer's
        inputs are detached, as in DeepSeek-V3.2's recipe)."""
        if indexer_loss not in (None, "dense", "sparse"):
            raise ValueError(f"forward_train: indexer_loss must be None, 'dense' or 'sparse', got {indexer_loss!r}")
        if indexer_loss is not None and self.kind != "csa":
            raise ValueError(f"forward_train: indexer_loss applies to CSA layers (this one is {self.kind})")
        x = hidden_states
        if cu_seqlens is None:
            if x.dim() != 3:
                raise ValueError(f"forward_train: hidden_states must be [B, S, dim], got {list(x.shape)}")
            rows = [self._train_sequence(row, indexer_loss) for row in x]
            out = torch.stack([r[0] for r in rows]) if rows else x.new_zeros(x.shape)
        else:
            if x.dim() != 2:
                raise ValueError(f"forward_train: with cu_seqlens, hidden_states must be [T, dim], got {list(x.shape)}")
            cu = [int(v) for v in cu_seqlens.tolist()]
            if cu[0] != 0 or cu[-1] != x.shape[0] or any(b < a for a, b in zip(cu, cu[1:])):
                raise ValueError(
                    f"forward_train: cu_seqlens must go from 0 to T={x.shape[0]} without decreasing, got {cu}"
                )
            rows = [self._train_sequence(x[a:b], indexer_loss) for a, b in zip(cu, cu[1:]) if b > a]
            out = torch.cat([r[0] for r in rows]) if rows else x.new_zeros(0, self.o_b_proj.weight.shape[0])
        if indexer_loss is None:
            return out
        counted = sum(r[2] for r in rows)  # token-weighted mean over the sequences
        loss = sum(r[1] * r[2] for r in rows) / max(counted, 1) if rows else x.new_zeros(())
        return out, loss

    def _train_step(self, hidden_states: torch.Tensor, cache) -> torch.Tensor:
        """``forward`` under grad mode without a kept cache: every row a sequence from position 0
        (``forward_train``); with a call-only cache whose step has padding, only each row's real tokens
        (their count per row from the step) form its sequence, padding rows give 0."""
        B, S, dim = hidden_states.shape
        if cache is None:
            return self.forward_train(hidden_states)
        rows = cache.layer_step(self.layer_idx, B, S).rows
        if rows is None:
            return self.forward_train(hidden_states)
        x = hidden_states.reshape(B * S, dim).index_select(0, rows)
        counts = torch.bincount(rows // S, minlength=B)
        cu = torch.cat([counts.new_zeros(1), counts.cumsum(0)])
        y = self.forward_train(x, cu)
        return y.new_zeros(B * S, y.shape[-1]).index_copy(0, rows, y).view(B, S, -1)

    def _train_entries(self, comp: "Compressor", x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """``[len(pos) // ratio, d]`` compressed entries (fp32, differentiable) of the tokens ``x`` at the
        consecutive positions ``pos``, which start at a multiple of the ratio (0 for a whole sequence):
        entry ``i`` is global entry ``pos[0] // ratio + i``. With overlap (CSA) the first entry of a
        range starting after 0 lacks its previous block: the caller drops it (context parallelism)."""
        from ..ops.compress import compress_pool

        a, b = comp.inputs(x, pos)
        pooled = compress_pool(a, b, comp.ratio, comp.overlap)
        w = self._entry_norm(comp.kv_norm).to(torch.float32)
        normed = pooled * torch.rsqrt(pooled.pow(2).mean(-1, keepdim=True) + self.eps) * w
        first = int(pos[0]) // comp.ratio if len(pos) else 0
        starts = (first + torch.arange(pooled.shape[0], device=x.device)) * comp.ratio  # entry j at j * ratio
        return apply_rope(normed, starts, self._rope_table())

    def _queries(self, cq: torch.Tensor, head_pos: torch.Tensor) -> torch.Tensor:
        """Attention queries ``[T, H, D]`` from the q LoRA activations ``cq [T, q_lora_rank]``."""
        L = self.layer
        q = self.q_b_proj(cq).view(cq.shape[0], L.n_heads, L.head_dim)
        scale = torch.rsqrt(q.to(torch.float32).square().mean(-1, keepdim=True) + self.eps).to(q.dtype)
        # in place outside autograd (q [T, H, D] is GiBs in a long prefill chunk); with a graph, q is saved
        q = q.mul_(scale) if _no_grad() else q * scale
        return self._rope_scaled(apply_rope(q, head_pos, self._rope_table(), inplace=True))  # q: a new tensor

    def _window_rows(self, x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """The window's KV rows ``[T, D]`` of tokens ``x`` at positions ``pos``."""
        return self._rope_scaled(apply_rope(self.kv_norm(self.kv_proj(x)), pos, self._rope_table()))

    def _index_queries(self, idx: "Indexer", cq: torch.Tensor, x: torch.Tensor, head_pos: torch.Tensor):
        """The indexer's queries ``[T, Hi, Di]`` and fp32 head weights ``[T, Hi]``: score =
        sum_h w_h relu(q_h . k) with w = weights_proj(x) * Hi^-1/2 * Di^-1/2 (section 6)."""
        iq = idx.q_b_proj(cq).view(cq.shape[0], idx.n_heads, idx.head_dim)
        iq = self._rope_scaled(apply_rope(iq, head_pos, self._rope_table(), inplace=True))  # the matmul's output
        wp = idx.scorer.weights_proj
        iw = wp(x.to(wp.weight.dtype)).to(torch.float32) * (idx.n_heads**-0.5 * idx.head_dim**-0.5)
        return iq, iw

    def _attend(self, q, kv, window, entries, ids, lengths, head_pos) -> torch.Tensor:
        """One ``sparse_attention`` over the window rows and the selected entries, with the sink, then
        the inverse rotation of the output and the output projection: ``[T, dim]``."""
        from ..ops.sparse_attention import sparse_attention

        o, _ = sparse_attention(q, kv, window, extra_kv=entries, extra_indices=ids, extra_topk_length=lengths,
                                attn_sink=self.sinks, softmax_scale=self.scaling)  # fmt: skip
        o = self._rope_scaled(apply_rope(o, head_pos, self._rope_table(), inverse=True, inplace=_no_grad()))
        return self._output_projection(o)

    def _train_sequence(self, x: torch.Tensor, indexer_loss: Optional[str] = None):
        """One sequence ``x [S, dim]`` from position 0 -> (``[S, dim]``, its indexer loss or 0, the tokens
        that loss averages over) (see ``forward_train``)."""
        from ..ops.indexer import indexer_kl_loss, indexer_topk

        L = self.layer
        S = x.shape[0]
        pos = torch.arange(S, device=x.device)
        head_pos = pos.unsqueeze(1)
        cq = self.q_a_norm(self.q_a_proj(x))
        q = self._queries(cq, head_pos)
        kv = self._window_rows(x, pos)
        window = (pos.unsqueeze(1) - (L.window - 1) + torch.arange(L.window, device=x.device)).to(torch.int32)
        entries = ids = lengths = None
        aux, n_aux = x.new_zeros(()), 0
        if self.compressor is not None:
            r = L.compress_ratio
            entries = self._train_entries(self.compressor, x, pos).to(kv.dtype)
            visible = ((pos + 1) // r).to(torch.int32)
            if isinstance(self.compressor, CSACompressor):
                idx: Indexer = self.compressor.indexer
                # The indexer's inputs are detached (DeepSeek-V3.2: its loss trains the indexer only)
                xi, cqi = x.detach(), cq.detach()
                with torch.set_grad_enabled(indexer_loss is not None and torch.is_grad_enabled()):
                    keys = self._train_entries(idx, xi, pos)
                    iq, iw = self._index_queries(idx, cqi, xi, head_pos)
                ids, lengths = indexer_topk(iq.detach(), iw.detach(), keys.detach(), visible, L.index_topk)
                if indexer_loss is not None:
                    cand = None if indexer_loss == "dense" else ids
                    aux = indexer_kl_loss(q, entries, iq, iw, keys, visible, indices=cand, softmax_scale=self.scaling)
                    n_aux = int((visible > 0).sum()) if cand is None else int((lengths > 0).sum())
            else:  # HCA: every visible entry
                ids, lengths = all_visible(visible, entries.shape[0])
        return self._attend(q, kv, window, entries, ids, lengths, head_pos), aux, n_aux

    # -- context parallelism: one sequence's query tokens sharded over ranks (prefill) ----------------------
    def forward_cp(
        self, hidden_states: torch.Tensor, shards, group=None, plan: Optional[StepPlan] = None,
        cache_layer: Optional[HybridAttention] = None,
    ) -> torch.Tensor:  # fmt: skip
        """Context-parallel prefill of one sequence from position 0 (inference; no autograd through the
        collectives): this rank's tokens ``hidden_states [shards.count(), dim]`` (``TokenShards``
        order: ``shards.take(x)`` of the whole sequence) -> their outputs ``[shards.count(), dim]``, the
        rows ``forward_train`` gives those tokens on one device. Call on every rank of ``group``.

        Each rank projects its own tokens and the halo before each of its chunks (the window's rows and
        the compressor blocks that cross into the chunk), emits the entries (and index keys) whose
        last token is in its chunks, all-gathers them, and runs the indexer and attention for its own
        tokens only (``longattn.distributed.prefill``). A malformed input on one rank raises
        ``CPError`` on every rank.

        With ``plan`` (``CacheManager.plan_prefilled`` of a new sequence of ``shards.num_tokens``
        tokens) and this layer's ``cache_layer`` (``HybridAttention`` over that manager, sharded with
        ``PageShards`` like a decode-CP cache or not), the prefill also leaves the caches as a
        single-device prefill would: every rank writes its pages of the gathered entries and index
        keys, and the tail (the last window rows and compressor-ring tokens, from the same halo
        all-gather); decode continues with ``forward_paged``."""
        from ..distributed.decode import agree, check_group
        from ..distributed.prefill import entry_range, gather_entries, left_halo
        from ..ops.indexer import indexer_topk

        L, x, comp = self.layer, hidden_states, self.compressor
        dim = self.q_a_proj.weight.shape[1]

        def check():
            check_group("forward_cp", shards, group)
            if x.dim() != 2 or x.shape[0] != shards.count() or x.shape[1] != dim:
                raise ValueError(
                    f"forward_cp: hidden_states must be [{shards.count()}, {dim}] (this rank's tokens of "
                    f"{shards.num_tokens}), got {list(x.shape)}"
                )
            if (plan is None) != (cache_layer is None):
                raise ValueError("forward_cp: pass both `plan` and `cache_layer` (to fill the caches) or neither")
            if plan is not None and cache_layer is not None:
                end = int(plan.positions[-1]) + 1 if plan.positions.numel() else 0
                if len(plan.seq_ids) != 1 or end != shards.num_tokens:
                    raise ValueError(
                        f"forward_cp: `plan` must be CacheManager.plan_prefilled(seq, {shards.num_tokens}, tail) "
                        f"of one sequence, got a plan of {len(plan.seq_ids)} sequence(s) ending at {end} tokens"
                    )
                if cache_layer.layer != L:
                    raise ValueError("forward_cp: `cache_layer` was built for another layer config than this module's")

        tail = 0 if plan is None else int(plan.positions.numel())
        agree("forward_cp", group, x.device, check, lambda: (shards.num_tokens, dim, x.dtype, tail))
        r = L.compress_ratio
        span = 0 if comp is None else (2 if comp.overlap else 1) * r  # tokens one entry pools
        with torch.no_grad():
            halos = left_halo(x, shards, max(L.window - 1, span - 1, tail), group, tail=plan is not None)
            q, kv, window, entries, keys, iq, iw = ([] for _ in range(7))
            row, row0 = 0, 0  # this rank's next own row; the first local kv row of the chunk
            for (s, e), hx in zip(shards.chunks, halos[:2]):
                own, row = x[row : row + e - s], row + e - s
                ext, ext_pos = torch.cat([hx, own]), torch.arange(s - hx.shape[0], e, device=x.device)
                pos = ext_pos[hx.shape[0] :]
                cq = self.q_a_norm(self.q_a_proj(own))
                q.append(self._queries(cq, pos.unsqueeze(1)))
                kv.append(self._window_rows(ext, ext_pos))
                w = pos.unsqueeze(1) - (L.window - 1) + torch.arange(L.window, device=x.device)
                window.append(torch.where(w >= 0, w - (s - hx.shape[0]) + row0, -1))  # local kv rows
                row0 += ext.shape[0]
                if comp is None:
                    continue
                a, b = entry_range(s, e, r)
                first = max(0, a - (span // r - 1))  # the first block entry a pools (CSA: the one before)
                sub = slice(first * r - (s - hx.shape[0]), None)  # from that block's first token
                entries.append(self._train_entries(comp, ext[sub], ext_pos[sub])[a - first : b - first])
                if isinstance(comp, CSACompressor):
                    keys.append(self._train_entries(comp.indexer, ext[sub], ext_pos[sub])[a - first : b - first])
                    iq_i, iw_i = self._index_queries(comp.indexer, cq, own, pos.unsqueeze(1))
                    iq.append(iq_i)
                    iw.append(iw_i)
            kv_rows = torch.cat(kv)
            ids = lengths = all_entries = None
            pos = shards.positions.to(x.device)
            all_keys = None
            if comp is not None:
                all_entries = gather_entries(entries, shards, r, group)  # fp32
                visible = ((pos + 1) // r).to(torch.int32)
                if isinstance(comp, CSACompressor):
                    all_keys = gather_entries(keys, shards, r, group)
                    ids, lengths = indexer_topk(torch.cat(iq), torch.cat(iw), all_keys, visible, L.index_topk)
                else:
                    ids, lengths = all_visible(visible, all_entries.shape[0])
            if plan is not None and cache_layer is not None:
                self._fill_cache(plan, cache_layer, halos[2][halos[2].shape[0] - tail :], all_entries, all_keys)
            if all_entries is not None:
                all_entries = all_entries.to(kv_rows.dtype)
            win = torch.cat(window).to(torch.int32)
            return self._attend(torch.cat(q), kv_rows, win, all_entries, ids, lengths, pos.unsqueeze(1))

    def _fill_cache(self, plan: StepPlan, cache_layer: HybridAttention, x_tail, entries, keys) -> None:
        """Write a context-parallel prefill into ``cache_layer`` (see ``forward_cp``): the tail's window
        rows and compressor-ring rows (``x_tail``: the hidden states of ``plan``'s positions), and
        the entries and index keys (all ``S // ratio``, fp32) of the pages this rank holds."""
        from ..ops.append import append_kv

        pos = plan.positions.long()
        append_kv(cache_layer.window_pool, self._window_rows(x_tail, pos), plan.window_slots)
        comp = self.compressor
        if comp is None:
            return
        r = self.layer.compress_ratio
        cp = plan.compressed[r]
        ps = cp.page_size
        j = torch.arange(entries.shape[0], device=entries.device)
        lp = j // ps
        page = cp.block_table[0, lp.clamp_max(cp.block_table.shape[1] - 1)].long()
        mine = (lp < cp.block_table.shape[1]) & (page >= 0)  # this rank's pages (-1: another rank's)
        slots = page * ps + j % ps

        def write_ring(ring_pool, compressor):  # ring slot p % ring of the last `ring` positions
            a, b = compressor.inputs(x_tail, pos)
            ring = (2 if compressor.overlap else 1) * r
            keep = pos >= int(pos[-1]) + 1 - ring if pos.numel() else pos.bool()
            k = pos % ring
            s_page = ring_pool.shape[1]
            ring_slots = cp.state_block_table[0, k // s_page].long() * s_page + k % s_page
            rows = torch.cat([a, b], dim=1).to(torch.float32)
            ring_pool.view(-1, ring_pool.shape[-1]).index_copy_(0, ring_slots[keep], rows[keep])

        write_ring(cache_layer.state_pool, comp)
        append_kv(cache_layer.compressed_pool, entries[mine], slots[mine].to(torch.int32))
        if isinstance(comp, CSACompressor):
            write_ring(cache_layer.index_state_pool, comp.indexer)
            append_kv(cache_layer.index_pool, keys[mine], slots[mine].to(torch.int32))

    def _output_projection(self, o: torch.Tensor) -> torch.Tensor:
        """Grouped low-rank projection: group g of heads -> o_a_proj block g -> concat -> o_b_proj."""
        T, G = o.shape[0], self.o_groups
        grouped = o.reshape(T, G, self.num_heads // G * self.head_dim).transpose(0, 1)  # [G, T, H/G * D]
        w = self.o_a_proj.weight.view(G, -1, grouped.shape[-1]).transpose(1, 2)  # [G, H/G * D, r]
        z = torch.bmm(grouped.to(w.dtype), w).transpose(0, 1).reshape(T, G * w.shape[2])  # [T, G * r]
        return self.o_b_proj(z)

    # -- transformers-compatible entry point ---------------------------------------------------------------
    def forward(
        self,
        hidden_states: torch.Tensor,
        position_embeddings=None,
        position_ids: Optional[torch.Tensor] = None,
        attention_mask=None,
        cache=None,
        past_key_values=None,
        longattn_cache=None,
        **kwargs,
    ):
        from .paged_cache import PagedKVCache

        cache = cache if cache is not None else past_key_values
        call_only = cache is None  # nothing is kept after this call
        if cache is None:  # a cache for this call only (the transformers integration's cache-less forwards)
            cache = longattn_cache
        if hidden_states.dim() != 3:
            raise ValueError(f"DeepseekV4Attention: hidden_states must be [B, S, dim], got {list(hidden_states.shape)}")
        B, S, dim = hidden_states.shape
        if call_only and torch.is_grad_enabled():
            if hidden_states.requires_grad or any(p.requires_grad for p in self.parameters()):
                return self._train_step(hidden_states, cache), None  # training: differentiable, no cache
        if cache is None:  # one-shot prefill from position 0, nothing kept
            cache = PagedKVCache([self.layer], max_batch_size=B, max_context=max(S, 1), device=hidden_states.device)
            cache.begin_step(B, S)
        if not isinstance(cache, PagedKVCache):
            raise TypeError(
                f"DeepseekV4Attention (longattn) runs on a longattn.nn.PagedKVCache, got {type(cache).__name__}; "
                "with transformers use longattn.integrations.transformers.swap_attention(model), which makes "
                "generate create one (or pass cache=LongattnCache(model, ...))"
            )
        step = cache.layer_step(self.layer_idx, B, S)
        layer = cache.layer(self.layer_idx, hidden_states.dtype)
        chunks, rows = step.chunks, step.rows
        x = hidden_states.reshape(B * S, dim)
        if rows is not None:  # padding: only the real tokens are sequence tokens
            x = x.index_select(0, rows)
        if len(chunks) == 1:
            y = self.forward_paged(x, chunks[0][0], layer)
        else:  # a long step: its chunks in order (chunked prefill)
            y = x.new_empty(x.shape[0], dim)
            for plan, index in chunks:
                assert index is not None  # (chunks of a long step always carry their token indices)
                y.index_copy_(0, index, self.forward_paged(x.index_select(0, index), plan, layer))
        if rows is not None:
            y = y.new_zeros(B * S, y.shape[-1]).index_copy_(0, rows, y)
        return y.view(B, S, -1), None
