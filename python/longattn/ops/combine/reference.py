"""Reference (pure PyTorch, fp32) merge of attention states and sink scaling. See README.md.

The public ops work in token chunks whose fp32 temporaries stay within ``longattn.memory``'s budget.
"""

from __future__ import annotations

from typing import Tuple

import torch

from ...memory import rows_per_chunk

NEG_INF = float("-inf")


def merge_states_fp32(
    out_a: torch.Tensor, lse_a: torch.Tensor, out_b: torch.Tensor, lse_b: torch.Tensor
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Exact union of two disjoint key sets: out_* [T, H, D] (any float dtype), lse_* [T, H] fp32 ->
    out [T, H, D] fp32, lse [T, H] fp32.

    With m = max(lse_a, lse_b): w_x = exp(lse_x - m), lse = m + log(w_a + w_b),
    out = (w_a * out_a + w_b * out_b) / (w_a + w_b). Non-finite lse (README.md, "Edge semantics"):
    both -inf (no keys) gives 0, -inf; a NaN lse on either side gives NaN, NaN; otherwise a +inf lse
    gives +inf, NaN. The out of a side with lse -inf is never read (it may hold anything, e.g. an
    unwritten split); neither out is read where the result is NaN.
    """
    m = torch.maximum(lse_a, lse_b)  # NaN if either is NaN
    empty = torch.isneginf(m)
    bad = torch.isnan(m) | torch.isposinf(m)  # NaN / +inf lse: out NaN, lse m
    ok = ~(empty | bad)
    m_safe = torch.where(ok, m, torch.zeros_like(m))
    w_a = torch.exp(lse_a - m_safe).masked_fill_(~ok, 0.0)  # exp(-inf) = 0 for an empty side
    w_b = torch.exp(lse_b - m_safe).masked_fill_(~ok, 0.0)
    total = w_a + w_b  # >= 1 where ok
    total_safe = torch.where(ok, total, torch.ones_like(total))
    out = _weighted(out_a, w_a / total_safe)
    out.add_(_weighted(out_b, w_b / total_safe))
    if bool(bad.any()):
        out.masked_fill_(bad.unsqueeze(-1), float("nan"))
    lse = torch.where(ok, m_safe + torch.log(total_safe), m)
    return out, lse


def _weighted(out: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """fp32 ``out * f[..., None]``; rows with f == 0 are 0 without reading out (NaN-safe)."""
    res = out.to(torch.float32, copy=True)
    zero = f == 0
    if bool(zero.any()):
        res.masked_fill_(zero.unsqueeze(-1), 0.0)
    return res.mul_(f.unsqueeze(-1))


def sink_factor(lse: torch.Tensor, attn_sink: torch.Tensor) -> torch.Tensor:
    """g = exp(lse) / (exp(lse) + exp(sink)) = sigmoid(lse - sink), [T, H] fp32.

    Rows with lse = -inf (no keys) get g = 0 whatever the sink (their output is 0 anyway); a sink of
    +inf gives 0, a sink of -inf gives 1; lse = +inf gives 1 (against a finite or -inf sink); a NaN
    lse or sink gives NaN (IEEE sigmoid; lse +inf against sink +inf is NaN too).
    """
    g = torch.sigmoid(lse - attn_sink.to(torch.float32).unsqueeze(0))
    return torch.where(torch.isneginf(lse), torch.zeros_like(g), g)


def _token_steps(out: torch.Tensor):
    """Token ranges whose fp32 temporaries (~6 copies of [t, H, D]) fit the chunk budget."""
    T, H, D = out.shape
    step = rows_per_chunk(6 * H * D * 4, T)
    return [(t0, min(T, t0 + step)) for t0 in range(0, T, step)]


def merge_attention_states(out_a, lse_a, out_b, lse_b):
    out = torch.empty_like(out_a)
    lse = torch.empty(lse_a.shape, dtype=torch.float32, device=lse_a.device)
    for t0, t1 in _token_steps(out_a):
        o, l = merge_states_fp32(out_a[t0:t1].float(), lse_a[t0:t1].float(), out_b[t0:t1].float(), lse_b[t0:t1].float())
        out[t0:t1] = o
        lse[t0:t1] = l
    return out, lse


def apply_attention_sink(out, lse, attn_sink):
    res = torch.empty_like(out)
    for t0, t1 in _token_steps(out):
        g = sink_factor(lse[t0:t1].float(), attn_sink)
        res[t0:t1] = out[t0:t1].float() * g.unsqueeze(-1)
    return res


def run_merge(inp):
    """``MergeInputs`` -> (out, lse)."""
    return merge_attention_states(inp.out_a, inp.lse_a, inp.out_b, inp.lse_b)


def run_sink(inp):
    """``SinkInputs`` -> out."""
    return apply_attention_sink(inp.out, inp.lse, inp.attn_sink)
