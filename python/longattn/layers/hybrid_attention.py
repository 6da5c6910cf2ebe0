"""``longattn.HybridAttention``: one DeepSeek-V4 attention layer over paged caches.

Per call (a ragged batch of prefill chunks and decode tokens, described by a ``StepPlan``):

    1. append the new kv rows to the window pool                                   (append_kv)
    2. CSA/HCA: run the attention compressor -> new compressed entries             (compress_kv)
    3. CSA: run the indexer compressor -> new index keys, then the indexer top-k   (compress_kv, indexer_topk)
       HCA: every visible compressed entry
    4. one softmax over window keys + compressed keys + sink                        (sparse_attention)

Everything is checked before anything is written, so a call that raises leaves the caches unchanged.
"""

from __future__ import annotations

from typing import Optional

import torch

from .._checks import FLOAT_DTYPES, ArgChecker
from ..backends import registry
from ..cache.fp8 import Fp8KVPool
from ..cache.manager import CacheManager, StepPlan, ring_capacity, token_chunks
from ..configs import LayerConfig
from ..ops import append_kv, compress_kv, indexer_topk, sparse_attention
from ..rope import inv_freq


class HybridAttention:
    """One attention layer (``kind`` "swa", "csa" or "hca") owning its paged pools.

    Args:
        layer: the layer's ``LayerConfig`` (e.g. ``longattn.configs.V4_FLASH.layer(2)``).
        manager: the ``CacheManager`` whose pages this layer's pools follow (shared by all layers).
        kv_dtype: dtype of the float KV pools (window, compressed), e.g. torch.bfloat16.
        kv_format: "float" or "fp8" (the 584-B FP8 record of ``longattn.cache.fp8``; D must be 512).
        index_dtype: dtype of the indexer-key pool (CSA), default ``kv_dtype``.
        attn_sink, compress_norm_weight, index_norm_weight: the layer's weights ([H], [D], [Di]);
            each may also be passed to ``forward``. Norm weights default to ones; no sink by default.
        backend: forwarded to every op (None: dispatch by device).

    Pools (attributes): ``window_pool``, ``compressed_pool``, ``index_pool`` ([pages, page, D] float
    or ``Fp8KVPool``) and the fp32 compressor rings ``state_pool`` / ``index_state_pool``
    ([pages, ring page, 2*c*d] rows ``a | b``).
    """

    def __init__(
        self,
        layer: LayerConfig,
        manager: CacheManager,
        *,
        kv_dtype: torch.dtype = torch.bfloat16,
        kv_format: str = "float",
        index_dtype: Optional[torch.dtype] = None,
        attn_sink: Optional[torch.Tensor] = None,
        compress_norm_weight: Optional[torch.Tensor] = None,
        index_norm_weight: Optional[torch.Tensor] = None,
        backend: Optional[str] = None,
    ):
        if kv_format not in ("float", "fp8"):
            raise ValueError(f"HybridAttention: kv_format must be 'float' or 'fp8', got {kv_format!r}")
        if kv_format == "fp8" and layer.head_dim != 512:
            raise ValueError(f"HybridAttention: the FP8 pool holds 512-d rows, layer has head_dim {layer.head_dim}")
        r = layer.compress_ratio
        if r and r not in manager.ratios:
            raise ValueError(
                f"HybridAttention: layer {layer.index} has ratio {r}; the manager serves ratios {manager.ratios}"
            )
        if layer.window != manager.window:
            raise ValueError(f"HybridAttention: layer window {layer.window} != manager window {manager.window}")
        self.layer, self.manager, self.backend = layer, manager, backend
        self.kv_format = kv_format
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
                self.index_pool = torch.zeros(
                    manager.compressed_alloc[r].num_pages, ps, Di, dtype=index_dtype or kv_dtype, device=dev
                )
                self.index_state_pool = torch.zeros(n_state, s_ps, 2 * 2 * Di, dtype=torch.float32, device=dev)
        self.attn_sink = attn_sink
        self.compress_norm_weight = (
            compress_norm_weight if compress_norm_weight is not None else torch.ones(D, device=dev)
        )
        self.index_norm_weight = (
            index_norm_weight if index_norm_weight is not None else torch.ones(layer.index_head_dim, device=dev)
        )
        self.rope_inv_freq = inv_freq(layer.rope, layer.rope_dim, dev)
        self._last_plan = 0  # serial of the last plan this layer ran (plans run in order, once)
        assert not r or ring_capacity(r) == (2 if layer.overlap else 1) * r

    @property
    def kind(self) -> str:
        return self.layer.kind

    # ---------------------------------------------------------------------------------------------
    def _check(
        self, plan: StepPlan, q, kv, compress_a, compress_b, index_q, index_weights, index_a, index_b, attn_sink
    ):
        L = self.layer
        chk = ArgChecker(f"HybridAttention[{L.kind}, layer {L.index}]")
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
        if attn_sink is not None:
            chk.tensor("attn_sink", attn_sink, ("H",))
            chk.dim("attn_sink", attn_sink, 0, H, "one sink per query head of q")
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
            for name, x in (
                ("index_q", index_q),
                ("index_weights", index_weights),
                ("index_a", index_a),
                ("index_b", index_b),
            ):
                absent(name, x)
        # The plan's pages must exist in this layer's pools (plans from another manager, or edited).
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
            plan: ``CacheManager.plan(...)`` of this step (shared by all layers).
            q: ``[T, H, D]`` queries after norm and RoPE. kv: ``[T, D]`` new latent rows (after RoPE).
            compress_a, compress_b: CSA/HCA ``[T, c*D]`` compressor values and scores (+ position bias).
            index_q ``[T, Hi, Di]``, index_weights ``[T, Hi]``, index_a/index_b ``[T, 2*Di]``: CSA only.
            attn_sink ``[H]`` and the norm weights override the constructor's.
        """
        L, be = self.layer, self.backend
        attn_sink = self.attn_sink if attn_sink is None else attn_sink
        self._check(plan, q, kv, compress_a, compress_b, index_q, index_weights, index_a, index_b, attn_sink)
        self._preflight(plan, q, kv, compress_a, compress_b, index_q, index_weights, index_a, index_b, attn_sink)
        if not torch.compiler.is_compiling():
            self._last_plan = plan.serial
        append_kv(self.window_pool, kv, plan.window_slots, backend=be)
        if L.kind == "swa":
            return sparse_attention(
                q, self.window_pool, plan.window_indices, attn_sink=attn_sink, softmax_scale=L.softmax_scale, backend=be
            )[0]

        r = L.compress_ratio
        cp = plan.compressed[r]
        common = dict(positions=plan.positions, token_rows=plan.token_rows, ratio=r, overlap=L.overlap, eps=L.eps)
        compress_kv(
            compress_a,
            compress_b,
            **common,
            state=self.state_pool,
            state_block_table=cp.state_block_table,
            out=self.compressed_pool,
            out_block_table=cp.block_table,
            norm_weight=self.compress_norm_weight if compress_norm_weight is None else compress_norm_weight,
            rope_inv_freq=self.rope_inv_freq,
            backend=be,
        )
        if L.kind == "csa":
            compress_kv(
                index_a,
                index_b,
                **common,
                state=self.index_state_pool,
                state_block_table=cp.state_block_table,
                out=self.index_pool,
                out_block_table=cp.block_table,
                norm_weight=self.index_norm_weight if index_norm_weight is None else index_norm_weight,
                rope_inv_freq=self.rope_inv_freq,
                backend=be,
            )
            top, lengths = indexer_topk(
                index_q,
                index_weights,
                self.index_pool,
                cp.visible_end,
                L.index_topk,
                block_table=cp.block_table,
                seq_ids=plan.token_rows,
                return_slots=True,
                backend=be,
            )
            return self._attend(q, plan, top, lengths, attn_sink)

        # HCA: every visible entry; index rows are built per token chunk to bound their memory.
        T = plan.num_tokens
        K = cp.max_visible if cp.max_visible is not None else (int(cp.visible_end.max()) if T else 0)
        chunks = token_chunks(T, 4 * (K + L.window) + 1)
        if len(chunks) <= 1:  # (no scatter into a preallocated output: keeps the step graph functional)
            rows, lengths = cp.all_visible(plan.token_rows)
            return self._attend(q, plan, rows, lengths, attn_sink)
        outs = []
        for t0, t1 in chunks:
            rows, lengths = cp.all_visible(plan.token_rows, t0, t1)
            outs.append(self._attend(q[t0:t1], plan, rows, lengths, attn_sink, t0, t1))
        return torch.cat(outs)

    __call__ = forward

    def _preflight(self, plan, q, kv, compress_a, compress_b, index_q, index_weights, index_a, index_b, attn_sink):
        """With a forced backend, make sure it accepts every op of this call before the first write.

        (Unforced dispatch falls back per op and cannot fail half-way.) The canonical arguments are
        built as the op interfaces would; the compressed stream's index rows, known only after the
        indexer ran, are represented by placeholders of their final shape and dtype.
        """
        if registry.requested_backend(self.backend) is None or torch.compiler.is_compiling():
            return
        L, T = self.layer, plan.num_tokens
        calls = [("append_kv", dict(pool=self.window_pool, rows=kv, slot_mapping=plan.window_slots))]
        attend = dict(
            q=q,
            kv=_rows(self.window_pool, L.head_dim),
            indices=plan.window_indices,
            topk_length=None,
            extra_kv=None,
            extra_indices=None,
            extra_topk_length=None,
            attn_sink=None if attn_sink is None else attn_sink.to(torch.float32),
            softmax_scale=L.softmax_scale,
        )
        if L.compress_ratio:
            cp = plan.compressed[L.compress_ratio]
            K = L.index_topk if L.uses_indexer else (cp.max_visible or 0)
            attend.update(
                extra_kv=_rows(self.compressed_pool, L.head_dim),
                extra_indices=torch.empty(T, K, dtype=torch.int32, device=q.device),
                extra_topk_length=torch.empty(T, dtype=torch.int32, device=q.device),
            )
            common = dict(
                positions=plan.positions,
                token_rows=plan.token_rows,
                ratio=L.compress_ratio,
                overlap=L.overlap,
                state_block_table=cp.state_block_table,
                out_block_table=cp.block_table,
                eps=L.eps,
                rope_inv_freq=self.rope_inv_freq,
            )
            calls.append(
                ("compress_kv", dict(common, a=compress_a, b=compress_b, state=self.state_pool,
                                     out=self.compressed_pool, norm_weight=self.compress_norm_weight))
            )  # fmt: skip
            if L.uses_indexer:
                calls.append(
                    ("compress_kv", dict(common, a=index_a, b=index_b, state=self.index_state_pool,
                                         out=self.index_pool, norm_weight=self.index_norm_weight))
                )  # fmt: skip
                calls.append(
                    ("indexer_topk", dict(q=index_q, weights=index_weights, index_k=self.index_pool,
                                          visible_end=cp.visible_end, topk=L.index_topk, block_table=cp.block_table,
                                          seq_ids=plan.token_rows, return_slots=True))
                )  # fmt: skip
        calls.append(("sparse_attention", attend))
        for op, args in calls:
            registry.select(op, q.device, args, self.backend)  # raises BackendError, nothing written yet

    def _attend(self, q, plan, comp_idx, comp_len, attn_sink, t0=0, t1=None):
        t1 = plan.num_tokens if t1 is None else t1
        out, _ = sparse_attention(
            q,
            self.window_pool,
            plan.window_indices[t0:t1],
            extra_kv=self.compressed_pool,
            extra_indices=comp_idx,
            extra_topk_length=comp_len,
            attn_sink=attn_sink,
            softmax_scale=self.layer.softmax_scale,
            backend=self.backend,
        )
        return out


def _rows(pool, head_dim: int):
    """A pool as the op interfaces hand it to backends: float pools as their flat row view."""
    return pool.view(-1, head_dim) if isinstance(pool, torch.Tensor) else pool


def _num_pages(pool) -> int:
    return pool.num_pages if isinstance(pool, Fp8KVPool) else pool.shape[0]
