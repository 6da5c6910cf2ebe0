"""Run a Hugging Face transformers DeepSeek-V4 model on longattn's kernels and paged caches.

    from longattn.integrations.transformers import swap_attention
    swap_attention(model)                    # every DeepseekV4Attention -> longattn.nn.DeepseekV4Attention
    out = model.generate(input_ids, max_new_tokens=32)

Needs ``transformers`` (``pip install longattn[transformers]``; DeepSeek-V4 exists from 5.8.0, parity
is tested with 5.24.0 and 5.25.0). ``import longattn`` never imports this module or transformers.

What ``swap_attention`` does:

1. replaces each transformers ``DeepseekV4Attention`` by a ``longattn.nn.DeepseekV4Attention`` that
   takes over its parameters (``load_state_dict(..., assign=True)``: same tensors, no copy);
2. makes ``generate`` create a ``LongattnCache`` (our ``CacheManager`` and paged pools, one
   sequence per batch row, sized for the batch and ``max_length``) instead of a ``DynamicCache``;
3. hooks the base model's forward so each forward is one planned step of that cache (the 2-D
   attention mask tells which positions are padding). A forward without a cache gets a new
   ``LongattnCache``: with ``use_cache`` (transformers' default) it is returned as the output's cache
   and can be continued (``model(next_ids, past_key_values=out.past_key_values)``, or passed back to
   ``generate``); with ``use_cache=False`` it serves that call only and the output has no cache (as
   transformers' own model), so ``generate(..., use_cache=False)`` works (a full forward per token).

Caches grow on demand: a ``LongattnCache`` (``generate``'s, a forward's, or one made with
``LongattnCache(model, ...)``) asked for more than its ``max_context`` re-allocates its pools with room
(at least twice the size) and copies the cached rows, so returned caches continue for any number of
turns. ``LongattnCache(..., growable=False)`` keeps ``max_context`` as a hard limit instead.

Limits (each raises a clear error rather than computing something else):

- one sequence per batch row for the cache's lifetime; the batch size is fixed by the first step;
- padding: positions with attention-mask 0 are not tokens of their row (not cached, output 0), so
  left-padded batches give each row its unpadded result; 4-D or dict masks are not supported;
- no beam search, assisted/speculative decoding (``assistant_model``, ``prompt_lookup_num_tokens``),
  contrastive search or cache cropping: ``generate`` refuses these modes, and ``reorder_cache``,
  ``crop``, ``activate_past_recording`` and batch re-indexing raise NotImplementedError; no
  ``StaticCache`` / ``torch.compile`` of generate;
- no attention weights: ``output_attentions=True`` (argument or config) raises NotImplementedError
  (longattn's kernels never materialise the attention matrix);
- a cache passed by the user must be a ``LongattnCache`` (a ``DynamicCache`` raises TypeError);
- a prompt of more than ``max_step_tokens`` tokens (default 8,192, all rows together) is prefilled in
  chunks of that many inside each layer (same result); the window pools hold a chunk, not the prompt.
"""

from __future__ import annotations

import importlib
import inspect
import types
from typing import List, Optional

import torch
from transformers.cache_utils import Cache

from ..nn import DeepseekV4Attention, PagedKVCache

# transformers >= 4.56 has a per-layer cache base class; older releases have none (looked up by name, so
# that mypy sees one definition whether or not transformers is installed)
_LayerBase: type = getattr(importlib.import_module("transformers.cache_utils"), "CacheLayerMixin", object)

__all__ = ["swap_attention", "LongattnCache", "longattn_modules"]


def longattn_modules(model) -> List[DeepseekV4Attention]:
    """The longattn attention modules of ``model`` (after ``swap_attention``), in layer order."""
    mods = [m for m in model.modules() if isinstance(m, DeepseekV4Attention)]
    return sorted(mods, key=lambda m: m.layer_idx)


class _LongattnCacheLayer(_LayerBase):
    """Per-layer placeholder seen by transformers' generic code (masks, lengths); the real state lives
    in the owning ``LongattnCache``."""

    is_sliding = False
    is_compileable = False
    is_croppable = False
    supports_early_init = False

    def __init__(self, owner: "LongattnCache"):
        if _LayerBase is not object:
            super().__init__()
        self._owner = owner
        self.is_initialized = True
        self.keys = self.values = None

    def lazy_initialization(self, key_states, value_states) -> None:  # pragma: no cover - never called
        pass

    def update(self, *args, **kwargs):
        raise NotImplementedError("LongattnCache layers hold no keys/values; the longattn attention modules use them")

    def get_seq_length(self) -> int:
        return self._owner.columns

    def get_max_length(self) -> int:
        return self._owner.get_max_length()

    def get_max_cache_shape(self) -> int:  # the name of get_max_length before transformers 5.10
        return self._owner.get_max_length()

    def get_mask_sizes(self, query_length: int):
        # The 4-D mask transformers builds is not used by longattn's layers: keep it minimal.
        return query_length, max(0, self._owner.columns - query_length)

    def reset(self) -> None:
        pass

    def offload(self):
        pass

    def prefetch(self):
        pass


_NO_ROLLBACK = "no beam search, assisted/speculative decoding, contrastive search or cache rollback"


def _unsupported(what: str):
    def method(self, *args, **kwargs):
        raise NotImplementedError(f"LongattnCache does not support {what} ({_NO_ROLLBACK})")

    return method


class LongattnCache(PagedKVCache, Cache):
    """A transformers ``Cache`` backed by longattn's paged caches (``PagedKVCache``).

    Args:
        model: a transformers DeepSeek-V4 model after ``swap_attention`` (or its base model).
        max_batch_size: batch rows (one sequence each).
        max_context: longest sequence (prompt + new tokens), e.g. ``generate``'s ``max_length``; with
            ``growable`` (the default) only the initial size: a longer step grows the cache.
        growable: grow on demand (re-allocate the pools, copy the rows) rather than refuse a step past
            ``max_context``.
        page_size, kv_format ("float" | "fp8"), index_format ("float" | "fp8"), kv_dtype, backend,
            max_step_tokens, group (context parallelism over a ``torch.distributed`` group): see
            ``PagedKVCache``.
    """

    def __init__(
        self,
        model,
        *,
        max_batch_size: int,
        max_context: int,
        page_size: int = 64,
        kv_format: str = "float",
        kv_dtype: Optional[torch.dtype] = None,
        backend: Optional[str] = None,
        max_step_tokens: Optional[int] = None,
        growable: bool = True,
        group=None,
        index_format: str = "float",
    ):
        mods = longattn_modules(model)
        if not mods:
            raise ValueError(
                "LongattnCache: the model has no longattn attention modules; call swap_attention(model) first"
            )
        device = next(mods[0].parameters()).device
        PagedKVCache.__init__(
            self,
            [m.layer for m in mods],
            max_batch_size=max_batch_size,
            max_context=max_context,
            page_size=page_size,
            max_step_tokens=max_step_tokens,
            kv_format=kv_format,
            index_format=index_format,
            kv_dtype=kv_dtype,
            backend=backend,
            device=device,
            growable=growable,
            group=group,
        )
        n_layers = max(m.layer_idx for m in mods) + 1
        Cache.__init__(self, layers=[_LongattnCacheLayer(self) for _ in range(n_layers)])

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.columns

    def get_max_length(self, layer_idx: Optional[int] = None) -> int:
        return -1 if self.growable else self.max_context  # -1: no maximum (transformers' convention)

    def get_mask_sizes(self, query_length: int, layer_idx: int = 0):
        return query_length, max(0, self.columns - query_length)

    def reset(self) -> None:
        PagedKVCache.reset(self)

    @property
    def max_batch_size(self) -> int:  # a Cache property in some transformers versions
        return self.max_seqs

    @property
    def max_cache_len(self) -> int:
        return self.max_context

    reorder_cache = _unsupported("reorder_cache (beam search)")
    crop = _unsupported("crop")
    batch_repeat_interleave = _unsupported("batch_repeat_interleave")
    batch_select_indices = _unsupported("batch_select_indices")

    # transformers calls this before assisted decoding (5.25 with ``recurrent_states_to_keep=``): a
    # generate mode that rolls the cache back, which the compressor states and paged pools cannot do.
    activate_past_recording = _unsupported("activate_past_recording (assisted decoding)")

    def __repr__(self) -> str:
        return (
            f"LongattnCache(rows={self.num_rows}, columns={self.columns}, layers={sorted(self.layer_configs)}, "
            f"page_size={self.manager.page_size}, kv_format={self.kv_format!r})"
        )


# --- the swap ----------------------------------------------------------------------------------------------


def _hf_classes():
    from transformers.models.deepseek_v4 import modeling_deepseek_v4 as hf

    return hf.DeepseekV4Attention, hf.DeepseekV4Model


def _cache_kwarg(fn) -> str:
    """transformers renamed the forward argument ``past_key_values`` to ``cache`` (5.24)."""
    params = inspect.signature(fn).parameters
    return "cache" if "cache" in params else "past_key_values"


def _use_cache(module, kwargs) -> bool:
    """``use_cache`` as transformers' ``merge_with_config_defaults`` resolves it for the base model."""
    value = kwargs.get("use_cache")
    if value is None:
        value = getattr(module.config, "use_cache", None)
    if value and getattr(module, "gradient_checkpointing", False) and module.training and torch.is_grad_enabled():
        return False
    return bool(value)


def _make_pre_hook(options: dict, key: str):
    def pre_hook(module, args, kwargs):
        # (transformers' capture_outputs reads the flag the same way; it would return empty attentions)
        if kwargs.get("output_attentions", getattr(module.config, "output_attentions", False)):
            raise NotImplementedError(
                "longattn's DeepseekV4Attention never materialises attention weights (its sparse kernels "
                "merge the softmax in blocks): output_attentions=True is not supported. Pass "
                "output_attentions=False (and leave config.output_attentions False), or use the model "
                "without swap_attention to inspect attention weights"
            )
        # the cache, under the name the caller used (past_key_values is renamed to cache from 5.24)
        name = next((k for k in ("cache", "past_key_values") if kwargs.get(k) is not None), key)
        cache = kwargs.get(name)
        ids = kwargs.get("input_ids", args[0] if args else None)
        ref = ids if ids is not None else kwargs.get("inputs_embeds")
        if ref is None:
            return None
        B, S = ref.shape[:2]
        if cache is None:
            if _use_cache(module, kwargs):  # returned with the output: continuable, grows on demand
                cache = LongattnCache(module, max_batch_size=B, max_context=max(S, 1), **options)
                kwargs[name] = cache
            else:  # this call only: the layers get it beside transformers' cache argument, not returned
                cache = LongattnCache(module, max_batch_size=B, max_context=max(S, 1), growable=False, **options)
                kwargs["longattn_cache"] = cache
        if isinstance(cache, LongattnCache):
            mask = kwargs.get("attention_mask")
            cache.begin_step(B, S, mask)
        return args, kwargs

    return pre_hook


_REFUSED_MODES = {  # generate modes that need beams or a cache rollback
    "beam_search": "beam search",
    "beam_sample": "beam search",
    "group_beam_search": "beam search",
    "constrained_beam_search": "beam search",
    "assisted_generation": "assisted / speculative decoding (assistant_model, prompt_lookup_num_tokens, ...)",
    "contrastive_search": "contrastive search",
}


def _validate_generation_mode(self, generation_mode, *args, **kwargs):
    """``generate``'s mode check, bound to a swapped model: modes that reorder or roll back the cache
    are refused here, before anything runs, on every transformers version (5.24 refuses assisted
    decoding itself with a ValueError about stateful models, 5.25 would fail in the cache)."""
    mode = str(getattr(generation_mode, "value", generation_mode))
    if mode in _REFUSED_MODES:
        raise NotImplementedError(
            f"longattn's attention (swap_attention) does not support {_REFUSED_MODES[mode]}: its paged cache "
            "cannot reorder or roll back sequences; use greedy or sampled decoding (num_beams=1, no "
            "assistant_model), or the model without swap_attention"
        )
    return type(self)._validate_generation_mode(self, generation_mode, *args, **kwargs)


def _prepare_cache_for_generation(self, *args, **kwargs):
    """``generate``'s cache set-up, bound to a swapped model: a ``LongattnCache`` where transformers
    would build a ``DynamicCache`` (a bound method, so ``copy.deepcopy(model)`` rebinds it)."""
    original = type(self)._prepare_cache_for_generation
    bound = inspect.signature(original).bind(self, *args, **kwargs)
    gen_config = bound.arguments["generation_config"]
    model_kwargs = bound.arguments["model_kwargs"]
    key = _cache_kwarg(self.forward)  # the model_kwargs name generate uses for the cache
    if (
        model_kwargs.get(key) is None
        and gen_config.use_cache is not False
        and getattr(gen_config, "cache_implementation", None) in (None, "dynamic")
    ):
        if (getattr(gen_config, "num_beams", 1) or 1) > 1:
            raise NotImplementedError("longattn's cache does not support beam search (num_beams > 1)")
        batch = bound.arguments["batch_size"] * max(1, getattr(gen_config, "num_return_sequences", 1) or 1)
        max_context = int(bound.arguments["max_cache_length"])
        model_kwargs[key] = LongattnCache(self, max_batch_size=batch, max_context=max_context, **self._longattn_options)
        return None
    return original(self, *args, **kwargs)


def swap_attention(
    model,
    *,
    page_size: int = 64,
    kv_format: str = "float",
    kv_dtype: Optional[torch.dtype] = None,
    backend: Optional[str] = None,
    group=None,
    index_format: str = "float",
):
    """Replace every transformers ``DeepseekV4Attention`` of ``model`` by longattn's, keeping weights.

    Returns ``model`` (changed in place). ``page_size``, ``kv_format``, ``index_format``, ``kv_dtype`` and ``backend``
    configure the caches that ``generate`` (and cache-less forwards) create; ``group`` (a
    ``torch.distributed`` process group, or ``"world"``) makes them context-parallel: every rank runs
    the same ``generate`` on the same inputs and holds its pages of the compressed caches.
    """
    HFAttention, HFModel = _hf_classes()
    swapped = 0
    for name, module in list(model.named_modules()):
        if isinstance(module, HFAttention):
            ours = DeepseekV4Attention(module.config, module.layer_idx)
            ours.load_state_dict(module.state_dict(), strict=True, assign=True)
            param = next(module.parameters())
            ours.rope_inv_freq = ours.rope_inv_freq.to(param.device)
            ours.train(module.training)
            parent_name, _, attr = name.rpartition(".")
            setattr(model.get_submodule(parent_name) if parent_name else model, attr, ours)
            swapped += 1
    if not swapped and not longattn_modules(model):
        raise ValueError(f"swap_attention: {type(model).__name__} has no transformers DeepseekV4Attention module")
    options = dict(page_size=page_size, kv_format=kv_format, index_format=index_format, kv_dtype=kv_dtype,
                   backend=backend, group=group)  # fmt: skip
    bases = [m for m in model.modules() if isinstance(m, HFModel)]
    for base in bases:
        if getattr(base, "_longattn_hook", None) is not None:
            base._longattn_hook.remove()
        base._longattn_hook = base.register_forward_pre_hook(
            _make_pre_hook(options, _cache_kwarg(base.forward)), with_kwargs=True
        )
    if hasattr(model, "_prepare_cache_for_generation"):  # generate: build a LongattnCache
        model._longattn_options = options
        model._prepare_cache_for_generation = types.MethodType(_prepare_cache_for_generation, model)
    if hasattr(model, "_validate_generation_mode"):  # generate: refuse beam search / assisted decoding early
        model._validate_generation_mode = types.MethodType(_validate_generation_mode, model)
    return model
