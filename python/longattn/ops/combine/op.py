"""``longattn.merge_attention_states`` and ``longattn.apply_attention_sink``: public functions, prepared
inputs, custom ops and their backward (both are differentiable on every backend)."""

from __future__ import annotations

import dataclasses
from typing import Optional, Tuple

import torch

from ..._checks import ArgChecker
from ..op import Op
from .support import MERGE_IMPLS, SINK_IMPLS


# --- merge_attention_states --------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class MergeInputs:
    """out_a, out_b ``[T, H, D]`` (one float dtype); lse_a, lse_b ``[T, H]`` float."""

    out_a: torch.Tensor
    lse_a: torch.Tensor
    out_b: torch.Tensor
    lse_b: torch.Tensor

    @property
    def device(self) -> torch.device:
        return self.out_a.device

    def to_schema(self):
        return (self.out_a, self.lse_a, self.out_b, self.lse_b)


def prepare_merge(out_a, lse_a, out_b, lse_b) -> MergeInputs:
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
    return MergeInputs(out_a, lse_a, out_b, lse_b)


def _merge_fake(out_a, lse_a, out_b, lse_b, backend):
    return torch.empty_like(out_a), lse_a.new_empty(lse_a.shape, dtype=torch.float32)


def _compute_dtype(*xs: torch.Tensor) -> torch.dtype:
    """fp32 for the backward formulas; float64 when the saved tensors are (to gradcheck them)."""
    return torch.float64 if all(x.dtype == torch.float64 for x in xs) else torch.float32


def _merge_setup(ctx, inputs, output):
    out_a, lse_a, out_b, lse_b, _ = inputs
    ctx.save_for_backward(out_a, lse_a, out_b, lse_b, output[0], output[1])


def _merge_backward(ctx, grad_out, grad_lse):
    """out = w_a out_a + w_b out_b, lse = log(e^lse_a + e^lse_b), w_x = e^(lse_x - lse):
    d out_x = g w_x;  d lse_x = w_x (<g, out_x - out> + g_lse). An empty side (w_x = 0) gets 0."""
    out_a, lse_a, out_b, lse_b, out, lse = ctx.saved_tensors
    cdt = _compute_dtype(out_a, lse_a)
    g = grad_out.to(cdt) if grad_out is not None else torch.zeros_like(out, dtype=cdt)
    gl = grad_lse.to(cdt) if grad_lse is not None else torch.zeros_like(lse, dtype=cdt)
    grads = []
    for o_x, l_x in ((out_a, lse_a), (out_b, lse_b)):
        w = torch.exp(l_x.to(cdt) - lse.to(cdt))
        w = torch.where(torch.isneginf(l_x), torch.zeros_like(w), w)  # an empty side: exactly 0
        d_out = g * w.unsqueeze(-1)
        diff = torch.where((w > 0).unsqueeze(-1), o_x.to(cdt) - out.to(cdt), torch.zeros_like(g))
        d_lse = w * ((g * diff).sum(-1) + gl)
        grads += [d_out.to(o_x.dtype), d_lse.to(l_x.dtype)]
    return grads[0], grads[1], grads[2], grads[3], None


MERGE_OP = Op(
    "merge_attention_states",
    "(Tensor out_a, Tensor lse_a, Tensor out_b, Tensor lse_b, str? backend) -> (Tensor, Tensor)",
    inputs_type=MergeInputs,
    from_schema=prepare_merge,
    fake=_merge_fake,
    impls=MERGE_IMPLS,
    backward=_merge_backward,
    setup_context=_merge_setup,
)


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
        out 0 and lse -inf. Split-KV rule: merge the partials first, then apply the sink once. An lse
        of +inf gives lse +inf and out NaN; NaN gives NaN. Differentiable.
    """
    return MERGE_OP.run(prepare_merge(out_a, lse_a, out_b, lse_b), backend)


# --- apply_attention_sink ----------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class SinkInputs:
    """out ``[T, H, D]``, lse ``[T, H]``, attn_sink ``[H]`` (floats)."""

    out: torch.Tensor
    lse: torch.Tensor
    attn_sink: torch.Tensor

    @property
    def device(self) -> torch.device:
        return self.out.device

    def to_schema(self):
        return (self.out, self.lse, self.attn_sink)


def prepare_sink(out, lse, attn_sink) -> SinkInputs:
    chk = ArgChecker("apply_attention_sink")
    chk.tensor("out", out, ("T", "H", "D"))
    chk.tensor("lse", lse, ("T", "H"))
    chk.tensor("attn_sink", attn_sink, ("H",))
    if lse.shape != out.shape[:2]:
        chk.fail(f"`lse` must be [T, H] = {list(out.shape[:2])} (from out), got {list(lse.shape)}")
    chk.dim("attn_sink", attn_sink, 0, out.shape[1], "one sink per head of out")
    return SinkInputs(out, lse, attn_sink)


def _sink_fake(out, lse, attn_sink, backend):
    return torch.empty_like(out)


def _sink_setup(ctx, inputs, output):
    out, lse, attn_sink, _ = inputs
    ctx.save_for_backward(out, lse, attn_sink)


def _sink_backward(ctx, grad):
    """y = out * f, f = sigmoid(lse - sink) (0 where lse = -inf): d out = g f;
    d lse = <g, out> f (1 - f); d sink = -sum over tokens of <g, out> f (1 - f)."""
    out, lse, attn_sink = ctx.saved_tensors
    cdt = _compute_dtype(out, lse)
    f = torch.sigmoid(lse.to(cdt) - attn_sink.to(cdt).unsqueeze(0))
    f = torch.where(torch.isneginf(lse), torch.zeros_like(f), f)
    g = grad.to(cdt)
    d_out = g * f.unsqueeze(-1)
    slope = (g * out.to(cdt)).sum(-1) * f * (1 - f)  # [T, H]
    return d_out.to(out.dtype), slope.to(lse.dtype), (-slope.sum(0)).to(attn_sink.dtype), None


SINK_OP = Op(
    "apply_attention_sink",
    "(Tensor out, Tensor lse, Tensor attn_sink, str? backend) -> Tensor",
    inputs_type=SinkInputs,
    from_schema=prepare_sink,
    fake=_sink_fake,
    impls=SINK_IMPLS,
    backward=_sink_backward,
    setup_context=_sink_setup,
)


def apply_attention_sink(
    out: torch.Tensor, lse: torch.Tensor, attn_sink: torch.Tensor, *, backend: Optional[str] = None
) -> torch.Tensor:
    """Scale ``out [T, H, D]`` by ``exp(lse) / (exp(lse) + exp(attn_sink[h]))``; returns out's dtype.

    ``attn_sink [H]`` is in raw logit units. Rows with lse -inf stay 0; +inf sinks give 0; -inf sinks
    leave ``out`` unchanged. Differentiable.
    """
    return SINK_OP.run(prepare_sink(out, lse, attn_sink), backend)
