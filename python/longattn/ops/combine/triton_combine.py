"""Triton kernels for ``merge_attention_states`` and ``apply_attention_sink`` (elementwise).

One program per (token, block of BLOCK_H heads); the head dim is walked in BLOCK_D chunks. All math
is fp32, exactly the reference formulas and non-finite rules (README.md); a side whose lse is -inf is
never read, and neither side is read where the result is NaN (a NaN or +inf lse).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..triton_utils import cast_in, cdiv, nan_where, next_power_of_2
from ..triton_utils import cast_out as _cast_out

_NEG_INF = tl.constexpr(float("-inf"))
_POS_INF = tl.constexpr(float("inf"))
BLOCK_H_MAX = 16
BLOCK_D_MAX = 128


@triton.jit(do_not_specialize=["H"])
def _merge_states_kernel(
    p_oa,
    stride_oa_t,
    stride_oa_h,
    stride_oa_d,
    p_la,
    stride_la_t,
    stride_la_h,
    p_ob,
    stride_ob_t,
    stride_ob_h,
    stride_ob_d,
    p_lb,
    stride_lb_t,
    stride_lb_h,
    p_out,
    stride_o_t,
    stride_o_h,
    stride_o_d,
    p_lse,
    stride_l_t,
    stride_l_h,
    H,
    D,
    BLOCK_H: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    i_t = tl.program_id(0).to(tl.int64)
    i_h = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    m_h = i_h < H
    # [BLOCK_H]
    b_la = cast_in(tl.load(p_la + i_t * stride_la_t + i_h * stride_la_h, mask=m_h, other=_NEG_INF), tl.float32)
    b_lb = cast_in(tl.load(p_lb + i_t * stride_lb_t + i_h * stride_lb_h, mask=m_h, other=_NEG_INF), tl.float32)
    # Non-finite lse (README.md): NaN on either side -> NaN, NaN; else +inf -> +inf, NaN; both -inf
    # -> -inf, 0. Explicit tests: tl.maximum drops NaN on GPUs (maxnum) but not in the interpreter.
    m_nan = (b_la != b_la) | (b_lb != b_lb)
    b_m = tl.maximum(b_la, b_lb)
    m_bad = m_nan | (b_m == _POS_INF)  # out NaN, neither side read
    m_empty = (b_m == _NEG_INF) & ~m_nan
    m_ok = ~(m_bad | m_empty)
    b_m_safe = tl.where(m_ok, b_m, 0.0)
    b_wa = tl.where(m_ok, tl.exp(b_la - b_m_safe), 0.0)  # exp(-inf) = 0: an empty side weighs nothing
    b_wb = tl.where(m_ok, tl.exp(b_lb - b_m_safe), 0.0)
    b_total = tl.where(m_ok, b_wa + b_wb, 1.0)
    b_ca = nan_where(m_bad, b_wa / b_total)
    b_cb = nan_where(m_bad, b_wb / b_total)
    m_a = m_h & (b_wa > 0.0)
    m_b = m_h & (b_wb > 0.0)
    b_lse = tl.where(m_ok, b_m_safe + tl.log(b_total), nan_where(m_nan, b_m))
    tl.store(p_lse + i_t * stride_l_t + i_h * stride_l_h, b_lse, mask=m_h)
    for d0 in range(0, D, BLOCK_D):
        o_d = d0 + tl.arange(0, BLOCK_D)
        m_d = o_d < D
        # [BLOCK_H, BLOCK_D]; a side with weight 0 is not loaded
        b_oa = cast_in(
            tl.load(
                p_oa + i_t * stride_oa_t + i_h[:, None] * stride_oa_h + o_d[None, :] * stride_oa_d,
                mask=m_a[:, None] & m_d[None, :],
                other=0.0,
            ),
            tl.float32,
        )
        b_ob = cast_in(
            tl.load(
                p_ob + i_t * stride_ob_t + i_h[:, None] * stride_ob_h + o_d[None, :] * stride_ob_d,
                mask=m_b[:, None] & m_d[None, :],
                other=0.0,
            ),
            tl.float32,
        )
        b_o = b_oa * b_ca[:, None] + b_ob * b_cb[:, None]
        tl.store(
            p_out + i_t * stride_o_t + i_h[:, None] * stride_o_h + o_d[None, :] * stride_o_d,
            _cast_out(b_o, p_out.dtype.element_ty),
            mask=m_h[:, None] & m_d[None, :],
        )


@triton.jit(do_not_specialize=["H"])
def _apply_sink_kernel(
    p_o,
    stride_o_t,
    stride_o_h,
    stride_o_d,
    p_lse,
    stride_l_t,
    stride_l_h,
    p_sink,
    stride_s,
    p_out,
    stride_r_t,
    stride_r_h,
    stride_r_d,
    H,
    D,
    BLOCK_H: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    i_t = tl.program_id(0).to(tl.int64)
    i_h = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    m_h = i_h < H
    # [BLOCK_H]: g = sigmoid(lse - sink) = 1 / (1 + exp(sink - lse)); 0 where lse = -inf (whatever the
    # sink); IEEE elsewhere: lse +inf -> 1 (sink finite / -inf), NaN lse or sink -> NaN
    b_lse = cast_in(tl.load(p_lse + i_t * stride_l_t + i_h * stride_l_h, mask=m_h, other=_NEG_INF), tl.float32)
    b_sink = cast_in(tl.load(p_sink + i_h * stride_s, mask=m_h, other=0.0), tl.float32)
    m_empty = b_lse == _NEG_INF
    b_g = tl.where(m_empty, 0.0, 1.0 / (1.0 + tl.exp(b_sink - tl.where(m_empty, 0.0, b_lse))))
    for d0 in range(0, D, BLOCK_D):
        o_d = d0 + tl.arange(0, BLOCK_D)
        m_hd = m_h[:, None] & (o_d < D)[None, :]
        # [BLOCK_H, BLOCK_D]
        b_o = cast_in(
            tl.load(
                p_o + i_t * stride_o_t + i_h[:, None] * stride_o_h + o_d[None, :] * stride_o_d, mask=m_hd, other=0.0
            ),
            tl.float32,
        )
        tl.store(
            p_out + i_t * stride_r_t + i_h[:, None] * stride_r_h + o_d[None, :] * stride_r_d,
            _cast_out(b_o * b_g[:, None], p_out.dtype.element_ty),
            mask=m_hd,
        )


def _blocks(H: int, D: int):
    return min(BLOCK_H_MAX, next_power_of_2(max(H, 1))), min(BLOCK_D_MAX, next_power_of_2(max(D, 1)))


def merge_attention_states(out_a, lse_a, out_b, lse_b):
    T, H, D = out_a.shape
    out = torch.empty(T, H, D, dtype=out_a.dtype, device=out_a.device)
    lse = torch.empty(T, H, dtype=torch.float32, device=out_a.device)
    if out.numel() == 0:
        if T * H:  # D == 0: only the lse is defined
            from .reference import merge_states_fp32

            lse.copy_(merge_states_fp32(out_a.float(), lse_a.float(), out_b.float(), lse_b.float())[1])
        return out, lse
    bh, bd = _blocks(H, D)
    _merge_states_kernel[(T, cdiv(H, bh))](
        out_a, *out_a.stride(), lse_a, *lse_a.stride(),
        out_b, *out_b.stride(), lse_b, *lse_b.stride(),
        out, *out.stride(), lse, *lse.stride(),
        H, D, BLOCK_H=bh, BLOCK_D=bd,
    )  # fmt: skip
    return out, lse


def apply_attention_sink(out, lse, attn_sink):
    T, H, D = out.shape
    res = torch.empty(T, H, D, dtype=out.dtype, device=out.device)
    if res.numel() == 0:
        return res
    bh, bd = _blocks(H, D)
    _apply_sink_kernel[(T, cdiv(H, bh))](
        out, *out.stride(), lse, *lse.stride(), attn_sink, attn_sink.stride(0),
        res, *res.stride(), H, D, BLOCK_H=bh, BLOCK_D=bd,
    )  # fmt: skip
    return res


def run_merge(inp):
    """``MergeInputs`` -> (out, lse)."""
    return merge_attention_states(inp.out_a, inp.lse_a, inp.out_b, inp.lse_b)


def run_sink(inp):
    """``SinkInputs`` -> out."""
    return apply_attention_sink(inp.out, inp.lse, inp.attn_sink)
