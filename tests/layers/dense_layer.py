"""Dense-mask float64 formulation of one DeepSeek-V4 attention layer, for one whole sequence.

Written independently of the layer code: every key of the sequence (all raw kv rows, all compressed
entries) is scored by every query, and boolean masks select what the layer may see:

    window mask      key position in [t - window + 1, t]
    visibility       compressed entry j < (t + 1) // ratio
    top-k mask       CSA: the index_topk visible entries with the largest float64 indexer scores
                     (ties: smaller id); HCA: all visible entries
    sink             a zero-valued key with logit sink[h] in the softmax denominator

Compressed entries come from the float64 oracle's ``compress_pool`` followed by RMSNorm and RoPE at
position j * ratio (float64 arithmetic on the RoPE tables of ``longattn.rope.cos_sin``, the spec).
"""

from __future__ import annotations

import torch
from longattn.rope import cos_sin, inv_freq

from tests import oracle


def rope64(x: torch.Tensor, positions: torch.Tensor, freqs: torch.Tensor) -> torch.Tensor:
    c, s = (v.double() for v in cos_sin(positions, freqs))  # [..., rope/2]
    r = 2 * freqs.shape[0]
    out = x.clone()
    pairs = x[..., -r:].unflatten(-1, (r // 2, 2))
    even, odd = pairs[..., 0], pairs[..., 1]
    out[..., -r:] = torch.stack([even * c - odd * s, even * s + odd * c], -1).flatten(-2)
    return out


def entries(a, b, layer, norm_weight, freqs):
    """Compressed entries [n, d] float64: pool -> RMSNorm -> RoPE at j * ratio."""
    r = layer.compress_ratio
    if a.requires_grad or b.requires_grad:  # the truth of training gradients
        c = oracle.compress_pool_autograd(a, b, r, layer.overlap)
    else:
        c = oracle.compress_pool(a, b, r, layer.overlap)
    c = c * torch.rsqrt(c.pow(2).mean(-1, keepdim=True) + layer.eps) * norm_weight.double()
    return rope64(c, torch.arange(c.shape[0]) * r, freqs)


def dense_layer(layer, seq: dict, attn_sink=None, compress_norm_weight=None, index_norm_weight=None):
    """Output [S, H, D] float64 of the layer on one sequence given all its per-token inputs."""
    q = seq["q"].double()
    kv = seq["kv"].double()
    S, H, D = q.shape
    freqs = inv_freq(layer.rope, layer.rope_dim)
    pos = torch.arange(S)
    keys = kv
    key_pos = pos
    mask = (key_pos.unsqueeze(0) <= pos.unsqueeze(1)) & (key_pos.unsqueeze(0) > pos.unsqueeze(1) - layer.window)
    if layer.compress_ratio:
        w = torch.ones(D) if compress_norm_weight is None else compress_norm_weight
        comp = entries(seq["compress_a"], seq["compress_b"], layer, w, freqs)
        n = comp.shape[0]
        visible = torch.arange(n).unsqueeze(0) < ((pos + 1) // layer.compress_ratio).unsqueeze(1)  # [S, n]
        chosen = visible
        if layer.uses_indexer:
            wi = torch.ones(layer.index_head_dim) if index_norm_weight is None else index_norm_weight
            ik = entries(seq["index_a"], seq["index_b"], layer, wi, freqs)
            scores = oracle.indexer_logits(seq["index_q"], seq["index_weights"], ik, visible.sum(1))
            chosen = torch.zeros_like(visible)
            for t in range(S):
                order = sorted(range(n), key=lambda j: (-float(scores[t, j]), j))
                for j in order[: min(layer.index_topk, int(visible[t].sum()))]:
                    chosen[t, j] = True
        keys = torch.cat([kv, comp])
        mask = torch.cat([mask, chosen], dim=1)
    logits = torch.einsum("thd,kd->thk", q, keys) * layer.softmax_scale
    logits = logits.masked_fill(~mask.unsqueeze(1), float("-inf"))
    if attn_sink is not None:
        sink = attn_sink.double().view(1, H, 1).expand(S, H, 1)
        logits = torch.cat([logits, sink], dim=-1)
        keys = torch.cat([keys, torch.zeros(1, D, dtype=torch.float64)])
    return torch.einsum("thk,kd->thd", torch.softmax(logits, dim=-1), keys)


def indexer_margin(layer, seq: dict, index_norm_weight=None) -> float:
    """Smallest relative gap, over tokens, between the k-th and (k+1)-th visible indexer scores
    (a top-k decided by a near tie would make an fp32-vs-float64 comparison meaningless). Scores that
    are exactly 0 (every head's relu clipped) tie exactly in any precision and are broken by id."""
    if not layer.uses_indexer:
        return float("inf")
    freqs = inv_freq(layer.rope, layer.rope_dim)
    wi = torch.ones(layer.index_head_dim) if index_norm_weight is None else index_norm_weight
    ik = entries(seq["index_a"], seq["index_b"], layer, wi, freqs)
    S = seq["q"].shape[0]
    vis = (torch.arange(S) + 1) // layer.compress_ratio
    scores = oracle.indexer_logits(seq["index_q"], seq["index_weights"], ik, vis)
    gap = float("inf")
    for t in range(S):
        s = sorted(scores[t, : int(vis[t])].tolist(), reverse=True)
        k = layer.index_topk
        if len(s) > k and not (s[k - 1] == 0.0 == s[k]):  # exact zeros (relu) tie exactly in fp32 too
            gap = min(gap, (s[k - 1] - s[k]) / (abs(s[k - 1]) + 1e-30))
    return gap
