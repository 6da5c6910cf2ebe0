"""``longattn.HybridAttention``: one DeepSeek-V4 attention layer over paged caches.

Per call (a ragged batch of prefill chunks and decode tokens, described by a ``StepPlan``):

    1. append the new kv rows to the window pool                                   (append_kv)
    2. CSA/HCA: run the attention compressor -> new compressed entries             (compress_kv)
    3. CSA: run the indexer compressor -> new index keys, then the indexer top-k   (compress_kv, indexer_topk)
       HCA: every visible compressed entry
    4. one softmax over window keys + compressed keys + sink                        (sparse_attention)

``prepare`` checks the whole step first: the layer's own contract (plan, shapes per layer kind), then
every op's inputs through that op's own ``prepare`` (the same checks as the public ops) and one
backend choice per op. Only then does anything run, so a call that raises leaves the caches
unchanged, and no op validates or selects again while the step runs.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch

from .._checks import FLOAT_DTYPES, ArgChecker
from ..backends.registry import Selection
from ..cache.fp8 import Fp8KVPool
from ..cache.fp8_index import DIM_MULTIPLE as FP8_INDEX_DIM_MULTIPLE
from ..cache.fp8_index import Fp8IndexKeyPool
from ..cache.manager import CacheManager, StepPlan, ring_capacity, token_chunks
from ..configs import LayerConfig
from ..ops.append import op as append_op
from ..ops.compress import op as compress_op
from ..ops.indexer import op as indexer_op
from ..ops.op import Op
from ..ops.sparse_attention import op as attention_op
from ..rope import inv_freq
from . import warmup as _warmup
from .warmup import DEFAULT_PREFILL_CHUNKS, WarmupReport


@dataclasses.dataclass
class _Call:
    """One op of a step: its prepared inputs and the backend chosen for them (None while tracing)."""

    op: Op
    inputs: Any  # the op's prepared-inputs dataclass
    selection: Optional[Selection]

    def run(self, backend: Optional[str], **changes):
        """Run the op; ``changes`` replace inputs known only now (same shapes and dtypes by construction:
        the indexer's output, a token chunk), without validating again."""
        inputs = dataclasses.replace(self.inputs, **changes) if changes else self.inputs
        return self.op.run(inputs, backend, self.selection)


@dataclasses.dataclass
class LayerStep:
    """A checked step of one layer: every op call prepared, nothing run yet."""

    plan: StepPlan
    q: torch.Tensor
    append: _Call
    attend: Optional[_Call]
    compress: Optional[_Call] = None
    index_compress: Optional[_Call] = None
    topk: Optional[_Call] = None
    hca_chunks: Optional[List[Tuple[int, int]]] = None  # token ranges of the HCA attention
    grad_inputs: Tuple[str, ...] = ()  # inputs that require grad (the output refuses backward)
    cp_sink: Optional[torch.Tensor] = None  # context parallelism: the sink, applied after the merge


class HybridAttention:
    """One attention layer (``kind`` "swa", "csa" or "hca") owning its paged pools.

    Args:
        layer: the layer's ``LayerConfig`` (e.g. ``longattn.configs.V4_FLASH.layer(2)``).
        manager: the ``CacheManager`` whose pages this layer's pools follow (shared by all layers).
        kv_dtype: dtype of the float KV pools (window, compressed), e.g. torch.bfloat16.
        kv_format: "float" or "fp8" (the 584-B FP8 record of ``longattn.cache.fp8``; D must be 512).
        index_dtype: dtype of the float indexer-key pool (CSA), default ``kv_dtype``.
        index_format: "float" (an ``index_dtype`` pool) or "fp8" (an ``Fp8IndexKeyPool``: vLLM's
            132-B indexer K record, e4m3 keys + one fp32 power-of-two scale per entry; the index head
            dim must be a multiple of 16). The indexer compressor writes each key as its fp32 entry
            (after norm and RoPE) quantised by the pool's rule; the indexer reads the pool as it is.
        backend: forwarded to every op (None: dispatch by device).
        group: context parallelism, when ``manager`` has ``shards``: the ``torch.distributed`` process
            group of the ranks (None: the default group). Every rank runs the same steps with the same
            inputs; each holds its pages of the compressed KV and index keys, and every rank returns the
            whole output (``longattn.distributed``). The window and compressor rings are replicated.

    The layer holds caches only; its weights (sink, compressor norms) belong to the caller (e.g.
    ``longattn.nn.DeepseekV4Attention``) and are passed to ``forward`` on every call.

    Pools (attributes): ``window_pool``, ``compressed_pool`` ([pages, page, D] float or ``Fp8KVPool``),
    ``index_pool`` ([pages, page, Di] float or ``Fp8IndexKeyPool``) and the fp32 compressor rings
    ``state_pool`` / ``index_state_pool`` ([pages, ring page, 2*c*d] rows ``a | b``).
    """

    def __init__(
        self,
        layer: LayerConfig,
        manager: CacheManager,
        *,
        kv_dtype: torch.dtype = torch.bfloat16,
        kv_format: str = "float",
        index_dtype: Optional[torch.dtype] = None,
        index_format: str = "float",
        backend: Optional[str] = None,
        group=None,
    ):
        if kv_format not in ("float", "fp8"):
            raise ValueError(f"HybridAttention: kv_format must be 'float' or 'fp8', got {kv_format!r}")
        if kv_format == "fp8" and layer.head_dim != 512:
            raise ValueError(f"HybridAttention: the FP8 pool holds 512-d rows, layer has head_dim {layer.head_dim}")
        if index_format not in ("float", "fp8"):
            raise ValueError(f"HybridAttention: index_format must be 'float' or 'fp8', got {index_format!r}")
        if index_format == "fp8" and layer.uses_indexer and layer.index_head_dim % FP8_INDEX_DIM_MULTIPLE:
            raise ValueError(
                f"HybridAttention: index_format 'fp8' needs an index head dim that is a multiple of "
                f"{FP8_INDEX_DIM_MULTIPLE}, layer has index_head_dim {layer.index_head_dim}"
            )
        r = layer.compress_ratio
        if r and r not in manager.ratios:
            raise ValueError(
                f"HybridAttention: layer {layer.index} has ratio {r}; the manager serves ratios {manager.ratios}"
            )
        if layer.window != manager.window:
            raise ValueError(f"HybridAttention: layer window {layer.window} != manager window {manager.window}")
        self.layer, self.manager, self.backend = layer, manager, backend
        self.shards, self.group = manager.shards, group
        if self.shards is not None:
            _check_group(self.shards, group)
        self.kv_format, self.index_format = kv_format, index_format
        dev, ps, D = manager.device, manager.page_size, layer.head_dim

        def kv_pool(num_pages):
            if kv_format == "fp8":
                return Fp8KVPool.empty(num_pages, ps, dev)
            return torch.zeros(num_pages, ps, D, dtype=kv_dtype, device=dev)

        self.window_pool = kv_pool(manager.window_alloc.num_pages)
        self.compressed_pool = self.index_pool = self.state_pool = self.index_state_pool = None
        if r:
            c = 2 if layer.overlap else 1
            n_state, s_ps = manager.state_alloc[r].num_pages, manager.state_page_size(r)
            self.compressed_pool = kv_pool(manager.compressed_alloc[r].num_pages)
            self.state_pool = torch.zeros(n_state, s_ps, 2 * c * D, dtype=torch.float32, device=dev)
            if layer.uses_indexer:
                Di = layer.index_head_dim
                n_index = manager.compressed_alloc[r].num_pages
                if index_format == "fp8":
                    self.index_pool = Fp8IndexKeyPool.empty(n_index, ps, Di, dev)
                else:
                    self.index_pool = torch.zeros(n_index, ps, Di, dtype=index_dtype or kv_dtype, device=dev)
                self.index_state_pool = torch.zeros(n_state, s_ps, 2 * 2 * Di, dtype=torch.float32, device=dev)
        # Norm weights used when the caller passes none (RMSNorm without a learned scale).
        self._unit_norm = torch.ones(D, device=dev)
        self._unit_index_norm = torch.ones(layer.index_head_dim, device=dev)
        self.rope_inv_freq = inv_freq(layer.rope, layer.rope_dim, dev)
        self._last_plan = 0  # serial of the last plan this layer ran (plans run in order, once)
        assert not r or ring_capacity(r) == (2 if layer.overlap else 1) * r

    @property
    def kind(self) -> str:
        return self.layer.kind

    def pools(self) -> List[object]:
        """The layer's cache tensors / pool objects that exist for its kind."""
        all_ = (self.window_pool, self.compressed_pool, self.index_pool, self.state_pool, self.index_state_pool)
        return [p for p in all_ if p is not None]

    def fit_pools(self) -> None:
        """Grow the pools to the manager's page counts (after its allocators grew), rows copied."""
        m, r = self.manager, self.layer.compress_ratio
        self.window_pool = _grown(self.window_pool, m.window_alloc.num_pages)
        if r:
            self.compressed_pool = _grown(self.compressed_pool, m.compressed_alloc[r].num_pages)
            if self.index_pool is not None:
                self.index_pool = _grown(self.index_pool, m.compressed_alloc[r].num_pages)

    # ---------------------------------------------------------------------------------------------
    def forward(
        self,
        plan: StepPlan,
        q: torch.Tensor,
        kv: torch.Tensor,
        *,
        compress_a: Optional[torch.Tensor] = None,
        compress_b: Optional[torch.Tensor] = None,
        index_q: Optional[torch.Tensor] = None,
        index_weights: Optional[torch.Tensor] = None,
        index_a: Optional[torch.Tensor] = None,
        index_b: Optional[torch.Tensor] = None,
        attn_sink: Optional[torch.Tensor] = None,
        compress_norm_weight: Optional[torch.Tensor] = None,
        index_norm_weight: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """Write the step's new rows into the caches and attend. Returns ``[T, H, D]`` in q's dtype.

        Args:
            plan: ``CacheManager.plan(...)`` of this step (shared by all layers; each layer runs the
                manager's plans in order, once).
            q: ``[T, H, D]`` queries after norm and RoPE. kv: ``[T, D]`` new latent rows (after RoPE).
            compress_a, compress_b: CSA/HCA ``[T, c*D]`` compressor values and scores (+ position bias).
            index_q ``[T, Hi, Di]``, index_weights ``[T, Hi]``, index_a/index_b ``[T, 2*Di]``: CSA only.
            attn_sink: ``[H]`` sink logits (None: no sink).
            compress_norm_weight ``[D]``, index_norm_weight ``[Di]``: the compressors' RMSNorm weights
                (None: ones).

        Not differentiable: under grad mode the forward runs (the rows written to the caches are
        stored detached) and ``backward()`` through the output raises.
        """
        step = self.prepare(
            plan, q, kv, compress_a=compress_a, compress_b=compress_b, index_q=index_q,
            index_weights=index_weights, index_a=index_a, index_b=index_b, attn_sink=attn_sink,
            compress_norm_weight=compress_norm_weight, index_norm_weight=index_norm_weight,
        )  # fmt: skip
        return self.run(step)

    __call__ = forward

    def prepare(
        self,
        plan: StepPlan,
        q: torch.Tensor,
        kv: torch.Tensor,
        *,
        compress_a=None,
        compress_b=None,
        index_q=None,
        index_weights=None,
        index_a=None,
        index_b=None,
        attn_sink=None,
        compress_norm_weight=None,
        index_norm_weight=None,
    ) -> LayerStep:
        """Check every argument of the step and prepare every op call (see ``forward``); writes nothing.
        With context parallelism the ranks agree on the outcome first: a bad argument on any rank
        raises ``CPError`` on every rank."""
        args = dict(compress_a=compress_a, compress_b=compress_b, index_q=index_q, index_weights=index_weights,
                    index_a=index_a, index_b=index_b, attn_sink=attn_sink,
                    compress_norm_weight=compress_norm_weight, index_norm_weight=index_norm_weight)  # fmt: skip
        if self.shards is None:
            return self._prepare(plan, q, kv, **args)
        from ..distributed.decode import agree

        return agree(
            f"HybridAttention[{self.kind}, layer {self.layer.index}]",
            self.group,
            q.device if isinstance(q, torch.Tensor) else torch.device("cpu"),
            lambda: self._prepare(plan, q, kv, **args),
            lambda: (plan.serial, plan.num_tokens, tuple(q.shape), q.dtype),
        )

    def _prepare(self, plan, q, kv, *, compress_a, compress_b, index_q, index_weights, index_a, index_b,
                 attn_sink, compress_norm_weight, index_norm_weight) -> LayerStep:  # fmt: skip
        L = self.layer
        chk = ArgChecker(f"HybridAttention[{L.kind}, layer {L.index}]")
        self._check(chk, plan, q, kv, compress_a, compress_b, index_q, index_weights, index_a, index_b)
        for name, w, n in (("compress_norm_weight", compress_norm_weight, L.head_dim),
                           ("index_norm_weight", index_norm_weight, L.index_head_dim)):  # fmt: skip
            if w is not None:  # (named as the layer takes them; the ops check them again as `norm_weight`)
                chk.tensor(name, w, ("d",))
                chk.dim(name, w, 0, n, "the entry width of that compressor")
        written = dict(kv=kv, compress_a=compress_a, compress_b=compress_b, index_a=index_a, index_b=index_b)
        grad_inputs: Tuple[str, ...] = ()
        if torch.is_grad_enabled():
            every = dict(written, q=q, index_q=index_q, index_weights=index_weights, attn_sink=attn_sink,
                         compress_norm_weight=compress_norm_weight, index_norm_weight=index_norm_weight)  # fmt: skip
            grad_inputs = tuple(k for k, v in every.items() if isinstance(v, torch.Tensor) and v.requires_grad)
            if grad_inputs:  # the caches keep values, never a graph (the norm weights shape stored entries)
                kv = kv.detach()
                compress_a, compress_b, index_a, index_b, compress_norm_weight, index_norm_weight = (
                    None if x is None else x.detach()
                    for x in (compress_a, compress_b, index_a, index_b, compress_norm_weight, index_norm_weight)
                )

        def call(op: Op, inputs) -> _Call:
            selection = None if torch.compiler.is_compiling() else op.select(inputs, self.backend)
            return _Call(op, inputs, selection)

        T = plan.num_tokens
        append = call(append_op.OP, append_op.prepare(self.window_pool, kv, plan.window_slots))
        if L.kind == "swa":
            attend = attention_op.prepare(q, self.window_pool, plan.window_indices, attn_sink=attn_sink,
                                          softmax_scale=L.softmax_scale)  # fmt: skip
            return LayerStep(plan, q, append, call(attention_op.OP, attend), grad_inputs=grad_inputs)

        r = L.compress_ratio
        cp = plan.compressed[r]
        common = dict(positions=plan.positions, token_rows=plan.token_rows, ratio=r, overlap=L.overlap,
                      state_block_table=cp.state_block_table, out_block_table=cp.block_table, eps=L.eps,
                      rope_inv_freq=self.rope_inv_freq)  # fmt: skip
        norm = self._unit_norm if compress_norm_weight is None else compress_norm_weight
        compress = call(
            compress_op.COMPRESS_KV_OP,
            compress_op.prepare_compress_kv(a=compress_a, b=compress_b, state=self.state_pool,
                                            out=self.compressed_pool, norm_weight=norm, **common),
        )  # fmt: skip
        step = LayerStep(plan, q, append, None, compress=compress, grad_inputs=grad_inputs)
        shards = self.shards
        if shards is not None:  # partials without the sink (applied once after the merge); the window on rank 0
            step.cp_sink, attn_sink = attn_sink, None
        window_indices = plan.window_indices[:, :0] if shards is not None and shards.rank != 0 else plan.window_indices
        if L.kind == "csa":
            index_norm = self._unit_index_norm if index_norm_weight is None else index_norm_weight
            step.index_compress = call(
                compress_op.COMPRESS_KV_OP,
                compress_op.prepare_compress_kv(a=index_a, b=index_b, state=self.index_state_pool,
                                                out=self.index_pool, norm_weight=index_norm, **common),
            )  # fmt: skip
            if shards is not None:  # this rank's top-k among its entries, as local ids (merged in run)
                topk_inputs = indexer_op.prepare("indexer_topk", index_q, index_weights, self.index_pool,
                                                 shards.local_count(cp.visible_end), cp.local_block_table,
                                                 plan.token_rows, L.index_topk, False)  # fmt: skip
            else:
                topk_inputs = indexer_op.prepare("indexer_topk", index_q, index_weights, self.index_pool,
                                                 cp.visible_end, cp.block_table, plan.token_rows, L.index_topk,
                                                 True)  # fmt: skip
            step.topk = call(indexer_op.TOPK_OP, topk_inputs)
            # The compressed stream's rows come from the indexer: placeholders of their final shape here.
            rows = torch.empty(T, L.index_topk, dtype=torch.int32, device=q.device)
            lengths = torch.empty(T, dtype=torch.int32, device=q.device)
            t1 = T
        else:  # HCA: every visible entry; index rows are built per token chunk to bound their memory
            K = cp.max_visible if cp.max_visible is not None else (int(cp.visible_end.max()) if T else 0)
            chunks = token_chunks(T, 4 * (K + L.window) + 1)
            step.hca_chunks = chunks if len(chunks) > 1 else None
            t1 = chunks[0][1] if chunks else T
            rows, lengths = cp.all_visible(plan.token_rows, 0, t1)
        attend = attention_op.prepare(q[:t1], self.window_pool, window_indices[:t1],
                                      extra_kv=self.compressed_pool, extra_indices=rows, extra_topk_length=lengths,
                                      attn_sink=attn_sink, softmax_scale=L.softmax_scale)  # fmt: skip
        step.attend = call(attention_op.OP, attend)
        return step

    def run(self, step: LayerStep) -> torch.Tensor:
        """Run a prepared step: write the caches, then attend. Returns ``[T, H, D]``."""
        plan, be = step.plan, self.backend
        attend = step.attend
        assert attend is not None  # (prepare always sets it)
        if not torch.compiler.is_compiling():
            self.manager.check_plan(plan, self._last_plan, f"HybridAttention[{self.kind}, layer {self.layer.index}]")
            self._last_plan = plan.serial
        step.append.run(be)
        if step.compress is not None:
            step.compress.run(be)
        merged = self._merged if self.shards is not None and self.kind != "swa" else _first
        if step.topk is not None and step.index_compress is not None:
            step.index_compress.run(be)
            top, lengths = step.topk.run(be)
            if self.shards is not None:  # local top-k -> the global top-k -> this rank's slots of it
                top, lengths = self._global_topk(step, top, plan)
            out = merged(step, attend.run(be, extra_indices=top, extra_topk_length=lengths))
        elif step.hca_chunks is None:
            out = merged(step, attend.run(be))
        else:  # HCA in token chunks (no scatter into a preallocated output: keeps the step graph functional)
            cp = plan.compressed[self.layer.compress_ratio]
            outs = [merged(step, attend.run(be))]
            window = attend.inputs.indices.shape[1]
            for t0, t1 in step.hca_chunks[1:]:
                rows, lengths = cp.all_visible(plan.token_rows, t0, t1)
                part = attend.run(be, q=step.q[t0:t1], indices=plan.window_indices[t0:t1, :window],
                                  extra_indices=rows, extra_topk_length=lengths)  # fmt: skip
                outs.append(merged(step, part))
            out = torch.cat(outs)
        if step.grad_inputs:
            out = _NoGradientThroughCaches.apply(out, step.grad_inputs)
        return out

    # -- JIT warm-up -----------------------------------------------------------------------------
    def warmup(
        self,
        *,
        max_batch: Optional[int] = None,
        batch_sizes: Optional[Sequence[int]] = None,
        prefill_chunks: Sequence[int] = DEFAULT_PREFILL_CHUNKS,
        max_context: Optional[int] = None,
        dtype: torch.dtype = torch.bfloat16,
        dtypes: Optional[Dict[str, torch.dtype]] = None,
        attn_sink: bool = True,
    ) -> WarmupReport:
        """Launch every kernel variant that steps of this layer will need, so that the JIT compiles
        them now and not during the first requests. Runs this layer's own ``prepare`` / ``run`` on
        scratch caches of its page size, window, pool formats and dtypes and backend (this layer's
        manager and pools are not touched), for each decode batch size and prefill chunk size, each
        at a ladder of context lengths up to ``max_context`` (``longattn/layers/warmup.py``).

        Args:
            max_batch: decode batch sizes 1, 2, 3, 4, 6, 8, 12, ... up to ``max_batch`` (default 64).
            batch_sizes: the exact decode sizes instead (e.g. an engine's CUDA-graph buckets).
            prefill_chunks: prefill chunk lengths in tokens (default (512, 2048)).
            max_context: the longest context served (default: one sequence's share of this layer's
                compressed pool, at most the YaRN range of its RoPE table). Scratch memory is about
                one sequence of ``max_context`` in this layer's pools plus one step's inputs.
            dtype: dtype of the per-token inputs ``forward`` will get (q, kv, compressor and indexer
                inputs); ``dtypes`` ({input name: dtype}) overrides single inputs, and naming
                ``compress_norm_weight`` / ``index_norm_weight`` passes norm weights of that dtype
                (else none: the layer's fp32 unit norms, as ``forward`` without them).
            attn_sink: whether ``forward`` gets an ``attn_sink``.

        Returns a ``WarmupReport`` (steps, launches, variants, compiled kernels, seconds). Where no op
        of the layer runs on the Triton backend (CPU tensors on the reference backend, Ascend) it runs
        nothing and says so in ``skipped``. Not thread-safe with other launches of the package's
        kernels (they would be counted in the report). Context-parallel layers: not supported.
        """
        who = f"HybridAttention[{self.kind}, layer {self.layer.index}].warmup"
        if not isinstance(attn_sink, bool):
            raise TypeError(f"{who}: `attn_sink` must be a bool, got {type(attn_sink).__name__}")
        default_context = _warmup.default_max_context(self)
        sizes, chunks, ctx = _warmup.check_sizes(
            who, max_batch, batch_sizes, prefill_chunks, max_context, default_context
        )
        per_input = _warmup.check_dtypes(who, self.kind, dtype, dtypes)

        def probe(scratch, plan):
            return scratch.prepare(plan, **_warmup.layer_inputs(scratch, plan.num_tokens, dtype, per_input, attn_sink))

        def step(scratch, plan):
            return scratch(plan, **_warmup.layer_inputs(scratch, plan.num_tokens, dtype, per_input, attn_sink))

        return _warmup.run_warmup(self, who, step, probe, sizes, chunks, ctx)

    # -- context parallelism ---------------------------------------------------------------------
    def _global_topk(self, step: LayerStep, local_ids: torch.Tensor, plan: StepPlan):
        """This rank's local top-k ids -> (its slots of the global top-k [T, topk], lengths [T])."""
        from ..distributed.decode import local_topk_keys, merge_topk_keys

        assert self.shards is not None and step.topk is not None
        inp, cp = step.topk.inputs, plan.compressed[self.layer.compress_ratio]
        assert cp.local_block_table is not None
        keys = local_topk_keys(inp.q, inp.weights, self.index_pool, local_ids, self.shards, cp.local_block_table,
                               plan.token_rows)  # fmt: skip
        ids, lengths = merge_topk_keys(keys, self.layer.index_topk, self.group)
        slots = self.shards.local_slots(self.shards.to_local(ids), cp.local_block_table, plan.token_rows)
        return slots.to(torch.int32), lengths

    def _merged(self, step: LayerStep, partial) -> torch.Tensor:
        """The ranks' partials of a token range -> its output (sink applied once, after the merge)."""
        from ..distributed.decode import merge_partials

        return merge_partials(partial[0], partial[1], step.cp_sink, self.group, self.backend)[0]

    # ---------------------------------------------------------------------------------------------
    def _check(self, chk, plan, q, kv, compress_a, compress_b, index_q, index_weights, index_a, index_b):
        """The layer's own contract: the plan, and which inputs a layer of this kind takes, at which shapes."""
        L = self.layer
        if not isinstance(plan, StepPlan):
            chk.fail(f"`plan` must be a StepPlan from CacheManager.plan, got {type(plan).__name__}", TypeError)
        if not torch.compiler.is_compiling():  # (a traced step is checked when traced)
            self.manager.check_plan(plan, self._last_plan, chk.op)
        T, H, D = plan.num_tokens, L.n_heads, L.head_dim
        chk.tensor("q", q, ("T", "H", "D"))
        if tuple(q.shape) != (T, H, D):
            chk.fail(f"`q` must be [T, H, D] = {[T, H, D]} (T = cu_seqlens[-1] of the plan), got {list(q.shape)}")
        chk.tensor("kv", kv, ("T", "D"))
        if tuple(kv.shape) != (T, D):
            chk.fail(f"`kv` must be [T, D] = {[T, D]} (T = cu_seqlens[-1] of the plan), got {list(kv.shape)}")
        if plan.positions.device != chk.device:
            chk.fail(
                f"all tensors must be on one device: `q` is on {chk.device} but the plan is on {plan.positions.device}"
            )
        r = L.compress_ratio

        def need(name, x, shape, what):
            if x is None:
                chk.fail(f"`{name}` is required for a {L.kind} layer ({what})")
            chk.tensor(name, x, ("T", "...")[: len(shape)] if len(shape) <= 2 else ("T", "Hi", "Di"), FLOAT_DTYPES)
            if tuple(x.shape) != tuple(shape):
                chk.fail(f"`{name}` must be {list(shape)} ({what}), got {list(x.shape)}")

        def absent(name, x):
            if x is not None:
                chk.fail(f"`{name}` is only used by layers that need it; a {L.kind} layer takes none")

        if r:
            c = 2 if L.overlap else 1
            need("compress_a", compress_a, (T, c * D), "compressor values, c*D wide")
            need("compress_b", compress_b, (T, c * D), "compressor scores incl. position bias")
        else:
            absent("compress_a", compress_a)
            absent("compress_b", compress_b)
        if L.uses_indexer:
            Hi, Di = L.index_n_heads, L.index_head_dim
            need("index_q", index_q, (T, Hi, Di), "indexer queries")
            need("index_weights", index_weights, (T, Hi), "indexer head weights")
            need("index_a", index_a, (T, 2 * Di), "indexer compressor values")
            need("index_b", index_b, (T, 2 * Di), "indexer compressor scores")
        else:
            for name, x in (("index_q", index_q), ("index_weights", index_weights), ("index_a", index_a),
                            ("index_b", index_b)):  # fmt: skip
                absent(name, x)
        # The plan's pages must exist in this layer's pools (e.g. a plan edited by hand).
        sizes = {"window": self.manager.window_alloc.num_pages}
        if r:
            if r not in plan.compressed:
                chk.fail(f"the plan has no compressed stream of ratio {r} (its ratios: {sorted(plan.compressed)})")
            sizes[f"compressed:{r}"] = _num_pages(self.compressed_pool)
            sizes[f"state:{r}"] = self.state_pool.shape[0]
        for group, num_pages in sizes.items():
            if plan.max_page.get(group, -1) >= num_pages:
                chk.fail(
                    f"the plan's {group} page table points outside the pool: page {plan.max_page[group]} "
                    f">= {num_pages} pages"
                )
        if plan.page_size != self.manager.page_size:
            chk.fail(f"the plan has page_size {plan.page_size}, the pools {self.manager.page_size}")


class _NoGradientThroughCaches(torch.autograd.Function):
    """The layer's output under grad mode: the rows it wrote into the caches were stored detached, so
    a gradient would silently miss them; backward refuses instead."""

    @staticmethod
    def forward(ctx, out, names):
        ctx.names = names
        return out.view_as(out)

    @staticmethod
    def backward(ctx, grad, *_):
        raise NotImplementedError(
            "HybridAttention has no backward pass (inference only): the rows it writes into the caches ("
            + ", ".join(ctx.names)
            + " require grad) are stored as values. Run the layer under torch.no_grad() or torch.inference_mode()."
        )


def _first(step: LayerStep, result) -> torch.Tensor:
    return result[0]


def _check_group(shards, group) -> None:
    """A sharded manager's ranks must be this process group's."""
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_initialized():
        raise ValueError("HybridAttention: the manager has shards (context parallelism) but torch.distributed "
                         "is not initialised (call torch.distributed.init_process_group first)")  # fmt: skip
    rank, world = dist.get_rank(group), dist.get_world_size(group)
    if (shards.rank, shards.world) != (rank, world):
        raise ValueError(f"HybridAttention: the manager's shards are rank {shards.rank} of {shards.world} but "
                         f"this process is rank {rank} of {world} in the group")  # fmt: skip


def _grown(pool, num_pages: int):
    """``pool`` ([pages, ...] float tensor, ``Fp8KVPool`` or ``Fp8IndexKeyPool``) with ``num_pages``
    pages, rows copied (new pages zero)."""
    if _num_pages(pool) >= num_pages:
        return pool
    data = pool if isinstance(pool, torch.Tensor) else pool.data
    grown = data.new_zeros(num_pages, *data.shape[1:])
    grown[: data.shape[0]].copy_(data)
    if isinstance(pool, Fp8KVPool):
        return Fp8KVPool(grown, pool.page_size)
    if isinstance(pool, Fp8IndexKeyPool):
        return Fp8IndexKeyPool(grown, pool.page_size, pool.dim, pool.ue8m0)
    return grown


def _num_pages(pool) -> int:
    return pool.shape[0] if isinstance(pool, torch.Tensor) else pool.num_pages
