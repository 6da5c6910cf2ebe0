"""Layers, managers and random sequences for the HybridAttention tests (shared by several modules)."""

import longattn
import torch
from longattn.cache import CacheManager
from longattn.configs import LayerConfig, RopeConfig, YarnConfig

RATIO = {"swa": 0, "csa": 4, "hca": 8}
D, H, W = 32, 3, 8


def tiny_layer(kind, topk=3):
    rope = RopeConfig(10000.0) if kind == "swa" else RopeConfig(160000.0, YarnConfig(16, 64, 32, 1))
    return LayerConfig(
        index=0, kind=kind, compress_ratio=RATIO[kind], n_heads=H, head_dim=D, rope_dim=8, window=W,
        index_n_heads=2, index_head_dim=16, index_topk=topk, rope=rope, eps=1e-6,
    )  # fmt: skip


def make_manager(layer, page_size, pages=128, shards=None):
    r = layer.compress_ratio
    return CacheManager(
        ratios=(r,) if r else (),
        page_size=page_size,
        num_window_pages=pages,
        num_compressed_pages={r: pages} if r else {},
        num_state_pages={r: pages} if r else {},
        window=layer.window,
        shards=shards,
    )


def make_sequence(layer, S, g, monotone_index=False):
    """Per-token inputs of one sequence of ``layer``. ``monotone_index``: indexer keys whose direction
    turns toward a fixed vector u as the position grows (non-rope dims), and queries along u with
    positive weights, so that the indexer score grows with the entry id (the newest visible entry
    ranks first)."""
    H, D = layer.n_heads, layer.head_dim
    c = 2 if layer.overlap else 1
    seq = dict(q=torch.randn(S, H, D, generator=g), kv=torch.randn(S, D, generator=g))
    if layer.compress_ratio:
        seq.update(compress_a=torch.randn(S, c * D, generator=g), compress_b=torch.randn(S, c * D, generator=g) * 2)
    if layer.uses_indexer:
        Hi, Di = layer.index_n_heads, layer.index_head_dim
        seq.update(
            index_q=torch.randn(S, Hi, Di, generator=g),
            index_weights=torch.randn(S, Hi, generator=g),
            index_a=torch.randn(S, 2 * Di, generator=g),
            index_b=torch.randn(S, 2 * Di, generator=g) * 2,
        )
        if monotone_index:
            free = Di - layer.rope_dim  # RoPE rotates the last rope_dim dims of each key
            u = torch.zeros(Di)
            u[: free // 2] = 1.0
            v = torch.zeros(Di)
            v[free // 2 : free] = 1.0
            t = torch.arange(S, dtype=torch.float32).unsqueeze(1)
            a = v + 0.25 * t * u  # pooled entry j ~ v + t_j u: its angle to u shrinks as j grows
            seq["index_a"] = torch.cat([a, a], 1) + 0.01 * torch.randn(S, 2 * Di, generator=g)
            seq["index_b"] = 0.1 * torch.randn(S, 2 * Di, generator=g)
            seq["index_q"] = u.expand(S, Hi, Di) + 0.01 * torch.randn(S, Hi, Di, generator=g)
            seq["index_weights"] = 1.0 + torch.rand(S, Hi, generator=g)
    return seq


def layer_weights(layer, g):
    """The weights a layer step takes (sink, compressor and indexer norm weights), O(1) and random."""
    return dict(
        attn_sink=torch.randn(layer.n_heads, generator=g),
        compress_norm_weight=1 + 0.1 * torch.randn(layer.head_dim, generator=g),
        index_norm_weight=1 + 0.1 * torch.randn(layer.index_head_dim, generator=g),
    )


def schedules(lengths, rng):
    """Three ways to feed sequences ``lengths`` (name -> tokens) to a layer: one prefill, random
    chunked prefill mixed across sequences, and prefill then interleaved one-token decode. Each is a list
    of steps, a step a list of (sequence name, tokens)."""
    names = list(lengths)
    one_prefill = [[(nm, lengths[nm]) for nm in names]]
    # random chunked prefill, sequences mixed in each step
    left, chunked = dict(lengths), []
    while any(left.values()):
        step = []
        for nm in rng.sample(names, len(names)):
            if left[nm] and rng.random() < 0.8:
                n = min(left[nm], rng.randint(1, 11))
                step.append((nm, n))
                left[nm] -= n
        if step:
            chunked.append(step)
    # prefill then token-by-token decode, interleaved (sequences start decoding at different times)
    left, decode = dict(lengths), []
    first = {nm: rng.randint(1, lengths[nm]) for nm in names}
    while any(left.values()):
        step = []
        for nm in names:
            if not left[nm] or rng.random() < 0.3:
                continue
            n = first.pop(nm) if nm in first else 1
            step.append((nm, n))
            left[nm] -= n
        if step:
            decode.append(step)
    return {"one_prefill": one_prefill, "chunked": chunked, "decode": decode}


def run_schedule(layer, page_size, seqs, schedule, weights, make_layer=None, plans=None):
    """schedule: list of steps, each a list of (seq name, n tokens). Returns outputs per sequence.
    ``make_layer(layer, page_size) -> HybridAttention`` (default: an fp32 layer over ``make_manager``);
    ``plans``: a list that receives each step's plan."""
    if make_layer is None:
        att = longattn.HybridAttention(layer, make_manager(layer, page_size), kv_dtype=torch.float32)
    else:
        att = make_layer(layer, page_size)
    m = att.manager
    done = {name: 0 for name in seqs}
    outs = {name: torch.full_like(s["q"], float("nan")) for name, s in seqs.items()}
    for step in schedule:
        for name, _ in step:
            if name not in m:
                m.add_sequence(name)
        ids = [name for name, _ in step]
        counts = [n for _, n in step]
        cu = torch.tensor([0] + counts).cumsum(0)
        plan = m.plan(ids, cu)
        if plans is not None:
            plans.append(plan)
        inputs = {k: torch.cat([seqs[nm][k][done[nm] : done[nm] + n] for nm, n in step]) for k in seqs[ids[0]]}
        out = att(plan, inputs.pop("q"), inputs.pop("kv"), **inputs, **weights)
        for (nm, n), t0 in zip(step, cu[:-1].tolist()):
            outs[nm][done[nm] : done[nm] + n] = out[t0 : t0 + n]
            done[nm] += n
    return outs
