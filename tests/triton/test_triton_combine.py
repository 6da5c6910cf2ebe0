"""Triton merge_attention_states / apply_attention_sink vs the float64 oracle.

Bounds (fp32 math on exact inputs; u = 2**-24): a GPU computes exp(x) as exp2(x * log2 e), whose
relative error grows like |x| u (the rounding of the product), so the weight of a side is off by
~(|lse_a - lse_b| + 4) u relative and a sink factor sigmoid(lse - sink) by ~(|lse - sink| + 4) u; a
factor 2 covers the rest. lse = m + log(total) is off by a few u * (1 + |lse|).
"""

from __future__ import annotations

import pytest
import torch

from tests import oracle
from tests.ops.test_combine import (
    _states,
    check_merge_nonfinite,
    check_sink_nonfinite,
    merge_nonfinite_inputs,
)
from tests.tolerance import OUT_ROUNDING, assert_close
from tests.triton import CAN_RUN, DEVICE, SKIP_REASON

pytestmark = pytest.mark.skipif(not CAN_RUN, reason=SKIP_REASON)

if CAN_RUN:
    import longattn

INF = float("inf")
U = 2.0**-24


def dev(*xs):
    return [x.to(DEVICE) for x in xs]


@pytest.mark.parametrize("shape", [(5, 4, 16), (6, 19, 200), (5, 1, 576)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_merge_matches_oracle(dtype, shape):
    T, H, D = shape
    out_a, lse_a, out_b, lse_b = _states(T, H, D, dtype)
    out, lse = longattn.merge_attention_states(*dev(out_a, lse_a, out_b, lse_b), backend="triton")
    ref_out, ref_lse = oracle.merge_attention_states(out_a, lse_a, out_b, lse_b)
    assert out.dtype == dtype and lse.dtype == torch.float32
    assert_close(lse, ref_lse, 8 * U * (1 + float(ref_lse[torch.isfinite(ref_lse)].abs().max())), 0.0, "lse")
    both = torch.isfinite(lse_a) & torch.isfinite(lse_b)
    dlse = float((lse_a - lse_b)[both].abs().max())
    omax = float(torch.maximum(out_a.float().abs(), out_b.float().abs()).max())
    assert_close(out, ref_out, 2 * (dlse + 8) * U * omax, 2 * OUT_ROUNDING[dtype], "out")
    assert torch.all(out[2] == 0) and torch.all(torch.isneginf(lse[2]))


def test_merge_never_reads_an_empty_side():
    out_a, lse_a, out_b, lse_b = _states()
    out_a[0] = float("nan")  # lse_a[0] = -inf: never read
    out_b[1] = float("nan")  # lse_b[1] = -inf
    out_a[2] = out_b[2] = float("nan")  # both empty
    out, lse = longattn.merge_attention_states(*dev(out_a, lse_a, out_b, lse_b), backend="triton")
    assert not torch.isnan(out).any() and not torch.isnan(lse).any()
    assert torch.all(out[2] == 0)


def test_merge_strided_inputs():
    out_a, lse_a, out_b, lse_b = _states(T=5, H=6, D=32)
    oa = out_a.transpose(0, 1).contiguous().transpose(0, 1)  # non-contiguous [T, H, D]
    lb = lse_b.t().contiguous().t()
    out, lse = longattn.merge_attention_states(*dev(oa, lse_a, out_b, lb), backend="triton")
    ref_out, ref_lse = longattn.merge_attention_states(out_a, lse_a, out_b, lse_b, backend="reference")
    torch.testing.assert_close(out.cpu(), ref_out, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(lse.cpu(), ref_lse, atol=1e-3, rtol=1e-6)


@pytest.mark.parametrize("sink_kind", ["finite", "pos_inf", "neg_inf", "mixed"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_apply_sink_matches_oracle(sink_kind, dtype):
    T, H, D = 6, 5, 40
    out, lse = torch.randn(T, H, D).to(dtype), torch.randn(T, H) * 4
    lse[0] = -INF
    out[0] = 0
    lse[1, 2] = -INF  # one empty (token, head): g = 0 whatever the sink
    out[1, 2] = 0
    sink = {"finite": torch.randn(H), "pos_inf": torch.full((H,), INF), "neg_inf": torch.full((H,), -INF)}.get(
        sink_kind, torch.tensor([0.5, INF, -INF, -2.0, 30.0])
    )
    got = longattn.apply_attention_sink(*dev(out, lse, sink), backend="triton")
    ref = oracle.apply_attention_sink(out, lse, sink)
    z = (sink.unsqueeze(0) - lse)[torch.isfinite(sink.unsqueeze(0) - lse)]
    zmax = float(z.abs().max()) if z.numel() else 0.0
    assert got.dtype == dtype
    assert_close(got, ref, 1e-30, 2 * (zmax + 8) * U + 2 * OUT_ROUNDING[dtype], "sink")
    assert not torch.isnan(got).any()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_merge_nonfinite_lse(dtype):
    """NaN lse -> NaN / NaN, +inf -> +inf / NaN, both -inf -> -inf / 0 (tests/ops/test_combine.py's
    table), without reading a side whose lse is -inf."""
    out_a, lse_a, out_b, lse_b = merge_nonfinite_inputs(dtype)
    out, lse = longattn.merge_attention_states(*dev(out_a, lse_a, out_b, lse_b), backend="triton")
    check_merge_nonfinite(out, lse, out_a, out_b, f"triton {dtype}")


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # numpy: inf - inf (the NaN is the point)
def test_apply_sink_nonfinite():
    """NaN sink -> NaN, lse +inf -> factor 1, NaN lse -> NaN, lse -inf -> 0 whatever the sink."""
    check_sink_nonfinite(lambda o, l, s: longattn.apply_attention_sink(*dev(o, l, s), backend="triton"), "triton")
