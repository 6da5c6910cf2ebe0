"""Float64 evaluation of one whole DeepSeek-V4 attention layer on one sequence (the parity tests' truth).

Written from the spec (docs/deepseek-v4-attention.md section 2), independently of both implementations
under test: every projection, norm and RoPE rotation in float64 on the module's weights, then the
dense-mask float64 layer of ``tests/layers/dense_layer.py`` (window mask, visibility, float64 indexer
top-k, sink) for the attention itself, then the inverse RoPE and the grouped output projection.
RoPE angles are fp32(position) * fp32(inv_freq) rounded to fp32, the definition both DeepSeek's code
and transformers use (``longattn.rope.cos_sin``); everything after that is float64. A table with an
attention factor s (transformers multiplies its cos and sin by s) scales every rotated vector's rope
dims by s: q, kv, compressed entries and indexer keys (through their norm weights' rope dims: the
rotation is linear), indexer queries, and the output's inverse rotation.

``live=True`` uses the module's parameters as they are (a float64 copy of the module, e.g.
``copy.deepcopy(m).double()``): the result is then differentiable in them, the float64 truth of the
training gradients (the indexer's top-k is a selection: no gradient flows through it).
"""

from __future__ import annotations

import torch

from tests import oracle
from tests.layers.dense_layer import dense_layer, entries, rope64


def _rms(x, weight, eps):
    x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
    return x if weight is None else x * weight.double()


def _scaled(module, x: torch.Tensor) -> torch.Tensor:
    """x (float64) with its last rope_dim dims times the layer's RoPE attention factor."""
    s, r = module.rope_attention_factor, module.layer.rope_dim
    return torch.cat([x[..., :-r], x[..., -r:] * s], dim=-1)


def _w(t: torch.Tensor, live: bool) -> torch.Tensor:
    return t.double() if live else t.detach().double()


def layer_inputs(module, x: torch.Tensor, live: bool = False) -> dict:
    """Per-token inputs of the attention core, float64: q, kv (normed, rotated), compressor and indexer
    inputs, for ``x [S, dim]`` of one sequence starting at position 0."""
    L = module.layer
    W = {k: _w(v, live) for k, v in module.state_dict(keep_vars=True).items()}
    x = x.double()
    S = x.shape[0]
    pos = torch.arange(S)
    freqs = module.rope_inv_freq
    cq = _rms(x @ W["q_a_proj.weight"].T, W["q_a_norm.weight"], L.eps)
    q = (cq @ W["q_b_proj.weight"].T).view(S, L.n_heads, L.head_dim)
    q = _scaled(module, rope64(_rms(q, None, L.eps), pos.unsqueeze(1), freqs))
    kv = _scaled(module, rope64(_rms(x @ W["kv_proj.weight"].T, W["kv_norm.weight"], L.eps), pos, freqs))
    seq = dict(q=q, kv=kv)
    if L.compress_ratio:
        r = L.compress_ratio
        seq["compress_a"] = x @ W["compressor.kv_proj.weight"].T
        seq["compress_b"] = x @ W["compressor.gate_proj.weight"].T + W["compressor.position_bias"][pos % r]
    if L.kind == "csa":
        p = "compressor.indexer."
        Hi, Di = L.index_n_heads, L.index_head_dim
        seq["index_a"] = x @ W[p + "kv_proj.weight"].T
        seq["index_b"] = x @ W[p + "gate_proj.weight"].T + W[p + "position_bias"][pos % 4]
        seq["index_q"] = _scaled(
            module, rope64((cq @ W[p + "q_b_proj.weight"].T).view(S, Hi, Di), pos.unsqueeze(1), freqs)
        )
        seq["index_weights"] = (x @ W[p + "scorer.weights_proj.weight"].T) * (Hi**-0.5 * Di**-0.5)
    return seq


def _norm_weights(module, live: bool = False):
    """Compressor / indexer norm weights, float64, with the attention factor on their rope dims."""
    c = module.compressor
    comp = None if c is None else _scaled(module, _w(c.kv_norm.weight, live))
    idx = _scaled(module, _w(c.indexer.kv_norm.weight, live)) if module.kind == "csa" else None
    return comp, idx


def dense_v4_layer(module, x: torch.Tensor, live: bool = False) -> torch.Tensor:
    """Layer output ``[S, dim]`` float64 for ``x [S, dim]`` (one sequence from position 0)."""
    L = module.layer
    seq = layer_inputs(module, x, live)
    comp_w, idx_w = _norm_weights(module, live)
    sinks = _w(module.sinks, live)
    o = dense_layer(L, seq, sinks, comp_w, idx_w)  # [S, H, D] float64
    S = o.shape[0]
    o = _scaled(module, rope64(o, torch.arange(S).unsqueeze(1), -module.rope_inv_freq))  # conjugate (-angle)
    G = module.o_groups
    wa = _w(module.o_a_proj.weight, live).view(G, -1, L.n_heads * L.head_dim // G)
    z = torch.einsum("sgi,gri->sgr", o.reshape(S, G, -1), wa).reshape(S, -1)
    return z @ _w(module.o_b_proj.weight, live).T


def topk_margin(module, x: torch.Tensor) -> float:
    """Smallest relative gap between the k-th and (k+1)-th visible float64 indexer scores over the
    tokens of ``x`` (inf for SWA/HCA layers). Exact ties count as a gap of 0: implementations may break
    them differently (longattn: smaller entry id; transformers: ``torch.topk``, unspecified)."""
    if module.kind != "csa":
        return float("inf")
    L = module.layer
    seq = layer_inputs(module, x)
    ik = entries(seq["index_a"], seq["index_b"], L, _norm_weights(module)[1], module.rope_inv_freq)
    vis = (torch.arange(x.shape[0]) + 1) // L.compress_ratio
    scores = oracle.indexer_logits(seq["index_q"], seq["index_weights"], ik, vis)
    gap, k = float("inf"), L.index_topk
    for t in range(x.shape[0]):
        s = sorted(scores[t, : int(vis[t])].tolist(), reverse=True)
        if len(s) > k:
            gap = min(gap, (s[k - 1] - s[k]) / (abs(s[k - 1]) + 1e-300))
    return gap
