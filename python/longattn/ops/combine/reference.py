"""Reference (pure PyTorch, fp32) merge of attention states and sink scaling. See README.md."""

from __future__ import annotations

from typing import Tuple

import torch

NEG_INF = float("-inf")


def merge_states_fp32(
    out_a: torch.Tensor, lse_a: torch.Tensor, out_b: torch.Tensor, lse_b: torch.Tensor
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Exact union of two disjoint key sets, all fp32: out_* [T, H, D], lse_* [T, H] -> same shapes.

    With m = max(lse_a, lse_b): w_x = exp(lse_x - m), lse = m + log(w_a + w_b),
    out = (w_a * out_a + w_b * out_b) / (w_a + w_b). Rows where both are empty (-inf) give 0, -inf,
    and the out of an empty side is never read.
    """
    m = torch.maximum(lse_a, lse_b)
    empty = torch.isneginf(m)
    m_safe = torch.where(empty, torch.zeros_like(m), m)
    w_a = torch.exp(lse_a - m_safe)  # exp(-inf) = 0 for an empty side
    w_b = torch.exp(lse_b - m_safe)
    total = w_a + w_b  # >= 1 unless both empty
    total_safe = torch.where(empty, torch.ones_like(total), total)
    # A side with no keys (weight 0) is never read, so its out may hold anything (e.g. an unwritten
    # split-KV partial) without leaking NaN into the result.
    part_a = torch.where((w_a > 0).unsqueeze(-1), out_a * (w_a / total_safe).unsqueeze(-1), 0.0)
    part_b = torch.where((w_b > 0).unsqueeze(-1), out_b * (w_b / total_safe).unsqueeze(-1), 0.0)
    out = part_a + part_b
    lse = torch.where(empty, m, m_safe + torch.log(total_safe))
    return out, lse


def sink_factor(lse: torch.Tensor, attn_sink: torch.Tensor) -> torch.Tensor:
    """g = exp(lse) / (exp(lse) + exp(sink)) = sigmoid(lse - sink), [T, H] fp32.

    Rows with lse = -inf (no keys) get g = 0 whatever the sink (their output is 0 anyway); a sink of
    +inf gives 0, a sink of -inf gives 1.
    """
    g = torch.sigmoid(lse - attn_sink.to(torch.float32).unsqueeze(0))
    return torch.where(torch.isneginf(lse), torch.zeros_like(g), g)


def merge_attention_states(out_a, lse_a, out_b, lse_b):
    out, lse = merge_states_fp32(out_a.float(), lse_a.float(), out_b.float(), lse_b.float())
    return out.to(out_a.dtype), lse


def apply_attention_sink(out, lse, attn_sink):
    g = sink_factor(lse.float(), attn_sink)
    return (out.float() * g.unsqueeze(-1)).to(out.dtype)
