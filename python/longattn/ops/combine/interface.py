"""``longattn.merge_attention_states`` and ``longattn.apply_attention_sink``."""

from __future__ import annotations

from typing import Optional, Tuple

import torch

from ..._checks import ArgChecker
from ...backends import registry
from .. import custom_ops


def merge_attention_states(
    out_a: torch.Tensor,
    lse_a: torch.Tensor,
    out_b: torch.Tensor,
    lse_b: torch.Tensor,
    *,
    backend: Optional[str] = None,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Exact union of the attention states of two disjoint key sets.

    Args:
        out_a, out_b: ``[T, H, D]`` partial outputs (each normalised over its own keys, no sink).
        lse_a, lse_b: ``[T, H]`` their log-sum-exps (-inf: no keys).

    Returns:
        ``out [T, H, D]`` in out_a's dtype and ``lse [T, H]`` fp32. Rows where both lse are -inf give
        out 0 and lse -inf. Split-KV rule: merge the partials first, then apply the sink once.
    """
    chk = ArgChecker("merge_attention_states")
    chk.tensor("out_a", out_a, ("T", "H", "D"))
    chk.tensor("lse_a", lse_a, ("T", "H"))
    chk.tensor("out_b", out_b, ("T", "H", "D"))
    chk.tensor("lse_b", lse_b, ("T", "H"))
    if out_b.shape != out_a.shape:
        chk.fail(f"`out_b` has shape {list(out_b.shape)} but `out_a` has {list(out_a.shape)}")
    if out_b.dtype != out_a.dtype:
        chk.fail(f"`out_b` has dtype {out_b.dtype} but `out_a` has {out_a.dtype}", TypeError)
    for name, lse in (("lse_a", lse_a), ("lse_b", lse_b)):
        if lse.shape != out_a.shape[:2]:
            chk.fail(f"`{name}` must be [T, H] = {list(out_a.shape[:2])} (from out_a), got {list(lse.shape)}")
    if custom_ops.use_custom_op(out_a, lse_a, out_b, lse_b):
        return custom_ops.merge_attention_states(out_a, lse_a, out_b, lse_b, backend)
    args = dict(out_a=out_a, lse_a=lse_a, out_b=out_b, lse_b=lse_b)
    return registry.select("merge_attention_states", out_a.device, args, backend)(**args)


def apply_attention_sink(
    out: torch.Tensor, lse: torch.Tensor, attn_sink: torch.Tensor, *, backend: Optional[str] = None
) -> torch.Tensor:
    """Scale ``out [T, H, D]`` by ``exp(lse) / (exp(lse) + exp(attn_sink[h]))``; returns out's dtype.

    ``attn_sink [H]`` is in raw logit units. Rows with lse -inf stay 0; +inf sinks give 0; -inf sinks
    leave ``out`` unchanged.
    """
    chk = ArgChecker("apply_attention_sink")
    chk.tensor("out", out, ("T", "H", "D"))
    chk.tensor("lse", lse, ("T", "H"))
    chk.tensor("attn_sink", attn_sink, ("H",))
    if lse.shape != out.shape[:2]:
        chk.fail(f"`lse` must be [T, H] = {list(out.shape[:2])} (from out), got {list(lse.shape)}")
    chk.dim("attn_sink", attn_sink, 0, out.shape[1], "one sink per head of out")
    if custom_ops.use_custom_op(out, lse, attn_sink):
        return custom_ops.apply_attention_sink(out, lse, attn_sink, backend)
    args = dict(out=out, lse=lse, attn_sink=attn_sink)
    return registry.select("apply_attention_sink", out.device, args, backend)(**args)
