"""merge_attention_states and apply_attention_sink (reference) vs the float64 oracle."""

import longattn
import pytest
import torch

from tests import oracle
from tests.tolerance import assert_close

INF = float("inf")


def _states(T=5, H=4, D=16, dtype=torch.float32):
    out_a, out_b = torch.randn(T, H, D).to(dtype), torch.randn(T, H, D).to(dtype)
    lse_a, lse_b = torch.randn(T, H) * 3, torch.randn(T, H) * 3
    # adversarial rows: one side empty, both empty, huge lse, equal lse
    lse_a[0, :] = -INF
    lse_b[1, :] = -INF
    lse_a[2, :] = -INF
    lse_b[2, :] = -INF
    out_a[2] = 0
    out_b[2] = 0
    lse_a[3, 0], lse_b[3, 0] = 1e4, 1e4 - 3
    lse_b[4, :] = lse_a[4, :]
    return out_a, lse_a, out_b, lse_b


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_merge_matches_oracle(dtype):
    out_a, lse_a, out_b, lse_b = _states(dtype=dtype)
    out, lse = longattn.merge_attention_states(out_a, lse_a, out_b, lse_b)
    ref_out, ref_lse = oracle.merge_attention_states(out_a, lse_a, out_b, lse_b)
    assert out.dtype == dtype and lse.dtype == torch.float32
    # fp32 math on exact inputs: a few roundings of |lse| (exp/log) and of the convex combination.
    u = 2.0**-24
    assert_close(lse, ref_lse, 8 * u * (1 + float(ref_lse[torch.isfinite(ref_lse)].abs().max())), 0.0, "lse")
    out_round = {torch.float32: 2.0**-24, torch.bfloat16: 2.0**-8, torch.float16: 2.0**-11}[dtype]
    # The weights exp(lse_x - m) carry a relative error of a few u * (1 + |lse_a - lse_b|) (the
    # subtraction is exact up to one rounding of the difference), so out is off by that times max|out|.
    both = torch.isfinite(lse_a) & torch.isfinite(lse_b)
    dlse = float((lse_a - lse_b)[both].abs().max())
    omax = float(torch.maximum(out_a.float().abs(), out_b.float().abs()).max())
    assert_close(out, ref_out, 8 * u * (1 + dlse) * omax, 2 * out_round, "out")
    assert torch.all(out[2] == 0) and torch.all(torch.isneginf(lse[2]))


def test_merge_never_nan_even_with_nan_in_empty_side():
    out_a, lse_a, out_b, lse_b = _states()
    out_a[0] = float("nan")  # lse_a[0] is -inf: that side holds no keys and must not be read
    out, lse = longattn.merge_attention_states(out_a, lse_a, out_b, lse_b)
    assert not torch.isnan(out).any() and not torch.isnan(lse).any()


def test_merge_is_commutative_and_associative():
    a, la, b, lb = _states()
    c, lc = torch.randn_like(a), torch.randn_like(la)
    ab, lab = longattn.merge_attention_states(a, la, b, lb)
    ba, lba = longattn.merge_attention_states(b, lb, a, la)
    torch.testing.assert_close(ab, ba)
    torch.testing.assert_close(lab, lba)
    left = longattn.merge_attention_states(*longattn.merge_attention_states(a, la, b, lb), c, lc)
    right = longattn.merge_attention_states(a, la, *longattn.merge_attention_states(b, lb, c, lc))
    torch.testing.assert_close(left[0], right[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(left[1], right[1], atol=1e-3, rtol=1e-6)  # lse up to 1e4: 1e-7 relative


@pytest.mark.parametrize("sink_kind", ["finite", "pos_inf", "neg_inf", "mixed"])
def test_apply_sink_matches_oracle(sink_kind):
    T, H, D = 6, 5, 8
    out, lse = torch.randn(T, H, D), torch.randn(T, H) * 4
    lse[0] = -INF
    out[0] = 0
    sink = {"finite": torch.randn(H), "pos_inf": torch.full((H,), INF), "neg_inf": torch.full((H,), -INF)}.get(
        sink_kind, torch.tensor([0.5, INF, -INF, -2.0, 30.0])
    )
    got = longattn.apply_attention_sink(out, lse, sink)
    ref = oracle.apply_attention_sink(out, lse, sink)
    assert_close(got, ref, 1e-30, 4 * 2.0**-24 * 4, "sink")  # sigmoid + one product: a few ulps relative
    assert not torch.isnan(got).any()
