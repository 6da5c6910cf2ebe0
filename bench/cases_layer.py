"""Case families of one ``longattn.HybridAttention`` layer step: ``hybrid_attention.<kind>.decode`` and
``.prefill`` for kind in swa, csa, hca.

A case builds a ``CacheManager`` sized for the case (``for_layers``), one layer of the kind (the
preset's first layer of that kind; bf16 pools or ``kv_format="fp8"``, random sink and norm weights),
fills its caches with ``longattn.testing.fill_random_context`` (through the public write ops, as if the
context had been processed) up to the step, then plans the step ONCE (``CacheManager.plan``; its time
is the ``cache_plan`` family, not part of this one) and times ``layer(plan, q, kv, ...)``: append to the
window pool, the compressor(s), the CSA indexer top-k or the HCA all-visible rows, sparse attention.

Decode: ``batch`` sequences, one token each at position ``context - 1``; prefill: the last ``chunk``
tokens (``context - chunk .. context - 1``) of one sequence. Inputs are random (q, kv, compressor and
indexer inputs in bf16, indexer weights fp32 scaled ``Di^-0.5 * Hi^-0.5``).

The step is a fixed point, so that it can be timed many times and every backend sees the same caches:
the ring slots it writes already hold what it writes (``cases_cache.ring_fixed_point``); the window
rows and compressed entries it writes are then the same on every call. The HCA all-visible rows are
cached on the plan by the first call (shared by all HCA layers of a step, so not in the median).

Dense peers (``dense_sdpa``, ``dense_einsum``, ``dense_einsum_fp32``) run on the caches after the step:
per sequence ``[window rows | compressed entries 0 .. N-1]`` (FP8 rows dequantised to bf16, exact) with
the mask of the keys the layer attends (window: the last 128 positions; HCA: every visible entry; CSA:
the peer's own dense indexer over all index keys, fp32, ``torch.topk``).
"""

from __future__ import annotations

import dataclasses
from typing import Dict, Optional

import longattn
import torch
from longattn.cache import CacheManager
from longattn.configs import PRESETS
from longattn.testing import fill_random_context

from . import costs
from .cases import (
    BATCHES,
    CHUNKS,
    CONTEXTS,
    PAGES,
    PRESET_NAMES,
    Case,
    DenseView,
    Family,
    Problem,
    _geometry,
    register,
)
from .cases_cache import FILL_CHUNK, compressor_counts, ring_fixed_point, step_cu
from .inputs import FP8, generator, pool_nbytes, pool_rows, randn, row_bytes, unique_valid

LAYER_KINDS = ("swa", "csa", "hca")
LAYER_DTYPES = ("bf16", FP8)
DENSE_PEERS = ("dense_sdpa", "dense_einsum", "dense_einsum_fp32")


def layer_config(p):
    return PRESETS[p["preset"]].first_layer(p["kind"])


@dataclasses.dataclass
class LayerStep:
    """A built layer step: the layer (with filled caches), its manager, the step's plan and inputs."""

    layer: longattn.HybridAttention
    manager: CacheManager
    plan: object
    x: Dict[str, torch.Tensor]
    weights: Dict[str, torch.Tensor]  # the layer's sink and norm weights (forward arguments)
    B: int
    Tq: int


def build_layer_step(p, device, seed: int) -> LayerStep:
    Lc = layer_config(p)
    B, T, L = _geometry(p)
    page = int(p["page_size"])
    fp8 = p["dtype"] == FP8
    m = CacheManager.for_layers([Lc], max_seqs=B, max_context=L, max_step_tokens=max(FILL_CHUNK, T),
                                page_size=page, device=device)  # fmt: skip
    g = generator(device, seed)
    H, D, Hi, Di = Lc.n_heads, Lc.head_dim, Lc.index_n_heads, Lc.index_head_dim
    layer = longattn.HybridAttention(Lc, m, kv_dtype=torch.bfloat16, kv_format="fp8" if fp8 else "float")
    weights = dict(attn_sink=randn((H,), torch.float32, device, g))
    if Lc.compress_ratio:
        weights["compress_norm_weight"] = randn((D,), torch.float32, device, g, scale=0.1).add_(1.0)
    if Lc.uses_indexer:
        weights["index_norm_weight"] = randn((Di,), torch.float32, device, g, scale=0.1).add_(1.0)
    seq_ids = list(range(B))
    fill_random_context(layer, m, seq_ids, L - T // B, chunk=FILL_CHUNK, seed=seed)
    plan = m.plan(seq_ids, step_cu(B, T))
    bf = torch.bfloat16
    x = {"q": randn((T, H, D), bf, device, g), "kv": randn((T, D), bf, device, g)}
    r = Lc.compress_ratio
    if r:
        c = 2 if Lc.overlap else 1
        x["compress_a"] = randn((T, c * D), bf, device, g)
        x["compress_b"] = randn((T, c * D), bf, device, g)
    if Lc.uses_indexer:
        x["index_q"] = randn((T, Hi, Di), bf, device, g)
        x["index_weights"] = randn((T, Hi), torch.float32, device, g, scale=Di**-0.5 * Hi**-0.5)
        x["index_a"] = randn((T, 2 * Di), bf, device, g)
        x["index_b"] = randn((T, 2 * Di), bf, device, g)
    if r:  # the rings end the step as they started it (fixed point)
        pos, rows = plan.positions.cpu().tolist(), plan.token_rows.cpu().tolist()
        ring = (2 if Lc.overlap else 1) * r
        sbt = plan.compressed[r].state_block_table
        ring_fixed_point(layer.state_pool, sbt, pos, rows, torch.cat([x["compress_a"], x["compress_b"]], 1), ring)
        if Lc.uses_indexer:
            ring_fixed_point(layer.index_state_pool, sbt, pos, rows, torch.cat([x["index_a"], x["index_b"]], 1), ring)
    return LayerStep(layer, m, plan, x, weights, B, T // B)


def _call(st: LayerStep, backend: Optional[str]):
    x = dict(st.x)
    q, kv = x.pop("q"), x.pop("kv")

    def step():
        st.layer.backend = backend
        return st.layer(st.plan, q, kv, **x, **st.weights)  # (rerunning the newest plan rewrites the same slots)

    return step


def layer_stats(st: LayerStep, decode: bool) -> Dict[str, float]:
    """Exact counts of the step (see bench/costs.py, hybrid_attention). A CSA prefill chunk's union of
    selected entries comes from the indexer over the primed caches (the caller primes them)."""
    Lc, plan, layer = st.layer.layer, st.plan, st.layer
    T, B = plan.num_tokens, plan.num_seqs
    W, D = Lc.window, Lc.head_dim
    fp8 = layer.kv_format == "fp8"
    wi = plan.window_indices
    keys_w = int((wi >= 0).sum())
    s: Dict[str, float] = {
        "T": T, "B": B, "src_elt": 2, "q_elt": 2, "slot_elt": plan.window_slots.element_size(),
        "kv_elt": 1 if fp8 else 2, "kv_row_bytes": row_bytes(FP8 if fp8 else "bf16", D),
    }  # fmt: skip
    uw = keys_w if decode else unique_valid(wi)
    r = Lc.compress_ratio
    if not r:
        s.update(keys=keys_w, unique_rows=uw, index_cols=W, n_lengths=0)
        return s
    cp = plan.compressed[r]
    vis = cp.visible_end.long().cpu()
    rows = plan.token_rows.long().cpu()
    per_seq = torch.zeros(B, dtype=torch.long).scatter_reduce(0, rows, vis, reduce="amax")
    if Lc.uses_indexer:
        lens = vis.clamp(max=Lc.index_topk)
        keys_c, width = int(lens.sum()), Lc.index_topk
        if decode:
            uc = keys_c
        else:
            x = st.x
            slots, _ = longattn.indexer_topk(x["index_q"], x["index_weights"], layer.index_pool, cp.visible_end,
                                             Lc.index_topk, block_table=cp.block_table, seq_ids=plan.token_rows,
                                             return_slots=True)  # fmt: skip
            uc = unique_valid(slots)
        s.update(entries=int(vis.sum()), unique_entries=int(per_seq.sum()), k_elt=2, iq_elt=2,
                 max_pages=cp.block_table.shape[1])  # fmt: skip
    else:  # HCA: every visible entry
        keys_c, width = int(vis.sum()), int(cp.max_visible)
        uc = keys_c if decode else int(per_seq.sum())
    s.update(keys=keys_w + keys_c, unique_rows=uw + uc, index_cols=W + width, n_lengths=1)
    s.update(compressor_counts(plan.positions.cpu().tolist(), rows.tolist(), r, Lc.overlap))
    s["ring_pages"] = cp.state_block_table.shape[1]
    return s


def _prefixed(c: costs.Cost, prefix: str) -> costs.Cost:
    return costs.Cost(c.flops, c.bytes, c.formula, {f"{prefix}.{k}": v for k, v in c.terms.items()})


def layer_cost(p, s) -> costs.Cost:
    """append_kv + compressor(s) + CSA indexer + sparse attention (bench/costs.py, hybrid_attention)."""
    Lc = layer_config(p)
    T, B, D = int(s["T"]), int(s["B"]), Lc.head_dim
    rb = int(s["kv_row_bytes"])
    total = _prefixed(costs.append_kv_cost(T=T, D=D, src_elt=int(s["src_elt"]), row_bytes=rb,
                                           slot_elt=int(s["slot_elt"])), "append")  # fmt: skip
    r = Lc.compress_ratio
    if r:
        common = dict(T=T, ratio=r, overlap=Lc.overlap, emissions=int(s["emissions"]),
                      ring_read_pairs=int(s["ring_read_pairs"]), ring_rows_written=int(s["ring_rows_written"]),
                      in_elt=2, rope_dim=Lc.rope_dim, B=B, ring_pages=int(s["ring_pages"]))  # fmt: skip
        total = total + _prefixed(costs.compress_kv_cost(d=D, row_bytes=rb, **common), "compress")
        if Lc.uses_indexer:
            Di = Lc.index_head_dim
            total = total + _prefixed(costs.compress_kv_cost(d=Di, row_bytes=2 * Di, **common), "index_compress")
            total = total + _prefixed(costs.indexer_topk_cost(
                T=T, Hi=Lc.index_n_heads, Di=Di, entries=int(s["entries"]), unique_entries=int(s["unique_entries"]),
                k_elt=int(s["k_elt"]), q_elt=int(s["iq_elt"]), topk=Lc.index_topk, B=B,
                max_pages=int(s["max_pages"])), "indexer")  # fmt: skip
    total = total + _prefixed(costs.sparse_attention_cost(
        T=T, H=Lc.n_heads, D=D, keys=int(s["keys"]), unique_rows=int(s["unique_rows"]), kv_elt=int(s["kv_elt"]),
        q_elt=int(s["q_elt"]), index_cols=int(s["index_cols"]), n_lengths=int(s["n_lengths"]), kv_row_bytes=rb,
    ), "attention")  # fmt: skip
    return total


def layer_dense_view(st: LayerStep) -> DenseView:
    """The step's key set in the dense layout, from the caches as the step left them."""
    layer, plan, x = st.layer, st.plan, st.x
    Lc = layer.layer
    W, D, H = Lc.window, Lc.head_dim, Lc.n_heads
    B, Tq = st.B, st.Tq
    dev, dt = x["q"].device, x["q"].dtype
    pos = plan.positions.long().view(B, Tq)
    lo = (pos[:, 0] - W + 1).clamp(min=0)
    R = int((pos[:, -1] - lo + 1).max())
    # window slots per column (position lo + c) of each sequence, from the plan's window index rows
    wi = plan.window_indices.long().view(B, Tq, W)
    wpos = pos.unsqueeze(-1) - W + 1 + torch.arange(W, device=dev)
    ok = (wpos >= 0) & (wi >= 0)
    col = torch.where(ok, wpos - lo.view(B, 1, 1), torch.full_like(wpos, R))
    slots = torch.full((B, R + 1), -1, dtype=torch.long, device=dev)
    slots.scatter_(1, col.view(B, -1), torch.where(ok, wi, torch.full_like(wi, -1)).view(B, -1))
    slots = slots[:, :R]
    colpos = lo.view(B, 1, 1) + torch.arange(R, device=dev).view(1, 1, R)
    p = pos.unsqueeze(-1)
    window_mask = (colpos <= p) & (colpos > p - W) & (slots.unsqueeze(1) >= 0)
    r = Lc.compress_ratio
    N = int(plan.compressed[r].max_visible) if r else 0
    keys, ikeys = [], []
    for b in range(B):
        sb = slots[b]
        win = torch.zeros(R, D, dtype=dt, device=dev)
        valid = sb >= 0
        win[valid] = pool_rows(layer.window_pool, sb[valid], dt).to(dt)
        parts = [win]
        if N:
            cp = plan.compressed[r]
            j = torch.arange(N, device=dev)
            cs = cp.block_table[b].long()[j // cp.page_size] * cp.page_size + j % cp.page_size
            parts.append(pool_rows(layer.compressed_pool, cs, dt).to(dt))
            if layer.index_pool is not None:
                ikeys.append(pool_rows(layer.index_pool, cs))
        keys.append(torch.cat(parts))
    keys = torch.stack(keys)
    mask = torch.cat([window_mask, torch.zeros(B, Tq, N, dtype=torch.bool, device=dev)], dim=-1)
    window_mask = mask.clone()
    vis = plan.compressed[r].visible_end.long().view(B, Tq) if r else None
    if r and not Lc.uses_indexer:  # HCA: every visible entry
        mask[..., R:] = torch.arange(N, device=dev).view(1, 1, N) < vis.unsqueeze(-1)
    view = DenseView(q=x["q"].view(B, Tq, H, D), keys=keys, mask=mask, window_mask=window_mask,
                     sink=st.weights["attn_sink"], scale=Lc.softmax_scale, comp_offset=R,
                     topk=Lc.index_topk)  # fmt: skip
    if Lc.uses_indexer:  # CSA: the peers select with their own dense indexer (mask = window only)
        view.iq = x["index_q"].view(B, Tq, *x["index_q"].shape[1:])
        view.iw = x["index_weights"].view(B, Tq, -1)
        view.ikeys = torch.stack(ikeys)
        view.visible_end = vis
    return view


def _build_layer(case: Case, device, seed) -> Problem:
    p = case.params
    decode = "batch" in p
    st = build_layer_step(p, device, seed)
    if not decode and st.layer.layer.uses_indexer:
        _call(st, None)()  # prime: the chunk's own entries and index keys, for the selection's union
    layer = st.layer
    pools = [layer.window_pool, layer.compressed_pool, layer.index_pool, layer.state_pool, layer.index_state_pool]
    nbytes = sum(pool_nbytes(t) for t in pools if t is not None)
    nbytes += sum(t.numel() * t.element_size() for t in st.x.values())
    return Problem(
        run=lambda backend: _call(st, backend),
        output=lambda r: r,
        stats=layer_stats(st, decode),
        input_bytes=nbytes,
        dense=lambda: layer_dense_view(st),
    )


def layer_input_bytes(p) -> int:
    """Pools + step inputs (estimate before building: memory-limit skips)."""
    Lc = layer_config(p)
    B, T, L = _geometry(p)
    page = int(p["page_size"])
    D, Hi, Di, W = Lc.head_dim, Lc.index_n_heads, Lc.index_head_dim, Lc.window
    rb = row_bytes(p["dtype"], D)
    cd = lambda a, b: -(-a // b)  # noqa: E731
    n = (B * (cd(W, page) + 1) + cd(max(FILL_CHUNK, T), page) + B) * page * rb  # window pool
    n += T * (Lc.n_heads * D * 2 + D * 2)
    r = Lc.compress_ratio
    if r:
        c = 2 if Lc.overlap else 1
        ring = c * r
        s_ps = min(page, ring)
        entries = B * cd(cd(L, r), page) * page
        n += entries * rb + B * cd(ring, s_ps) * s_ps * 2 * c * D * 4 + T * 2 * c * D * 2
        if Lc.uses_indexer:
            n += entries * Di * 2 + B * cd(ring, s_ps) * s_ps * 4 * Di * 4 + T * (Hi * Di * 2 + Hi * 4 + 4 * Di * 2)
    return int(n)


def _invalid(p) -> Optional[str]:
    if p["kind"] not in PRESETS[p["preset"]].layer_kinds:  # V4-Pro has no SWA layer
        return f"{p['preset']} has no {p['kind']} layer"
    Lc = layer_config(p)
    L = int(p["context"])
    if L < max(Lc.window, Lc.compress_ratio):
        return f"context {L} shorter than the window / compress ratio"
    if "chunk" in p and int(p["chunk"]) > L:
        return f"chunk {p['chunk']} longer than the context {L}"
    return None


def _derive(p):
    Lc = layer_config(p)
    d = dict(n_heads=Lc.n_heads, head_dim=Lc.head_dim, window=Lc.window, compress_ratio=Lc.compress_ratio,
             layer_index=Lc.index)  # fmt: skip
    if Lc.uses_indexer:
        d.update(topk=Lc.index_topk, index_n_heads=Lc.index_n_heads, index_head_dim=Lc.index_head_dim)
    return d


def _ops(kind: str):
    if kind == "swa":
        return ("append_kv", "sparse_attention")
    if kind == "hca":
        return ("append_kv", "compress_kv", "sparse_attention")
    return ("append_kv", "compress_kv", "indexer_topk", "sparse_attention")


for _kind in LAYER_KINDS:
    register(Family(
        group=f"hybrid_attention.{_kind}.decode", op="hybrid_attention", ops=_ops(_kind),
        axes={"preset": PRESET_NAMES, "context": CONTEXTS, "batch": BATCHES, "page_size": PAGES, "dtype": LAYER_DTYPES},
        defaults={"preset": ("v4-flash",), "context": (8192, 131072, 1 << 20), "batch": (1,), "page_size": (64,),
                  "dtype": ("bf16",)},
        quick_defaults={"preset": ("v4-flash",), "context": (8192,), "batch": (1,), "page_size": (64,),
                        "dtype": ("bf16",)},
        build=_build_layer, cost=layer_cost, input_bytes=layer_input_bytes, peers=DENSE_PEERS,
        derive=_derive, invalid=_invalid, fixed={"kind": _kind},
        doc=f"one HybridAttention {_kind} layer decode step over a CacheManager plan (plan not timed: cache_plan)",
    ))  # fmt: skip
    register(Family(
        group=f"hybrid_attention.{_kind}.prefill", op="hybrid_attention", ops=_ops(_kind),
        axes={"preset": PRESET_NAMES, "context": CONTEXTS, "chunk": CHUNKS, "page_size": PAGES, "dtype": LAYER_DTYPES},
        defaults={"preset": ("v4-flash",), "context": (131072,), "chunk": (256,), "page_size": (64,),
                  "dtype": ("bf16",)},
        quick_defaults={"preset": ("v4-flash",), "context": (8192,), "chunk": (16,), "page_size": (64,),
                        "dtype": ("bf16",)},  # (chunk 16: keeps the emulator backend's --quick calls short)
        build=_build_layer, cost=layer_cost, input_bytes=layer_input_bytes, peers=DENSE_PEERS,
        derive=_derive, invalid=_invalid, fixed={"kind": _kind},
        doc=f"one HybridAttention {_kind} layer step for the last `chunk` tokens of one sequence",
    ))  # fmt: skip
