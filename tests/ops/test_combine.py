"""merge_attention_states and apply_attention_sink on every backend vs the float64 oracle.

Bounds and non-finite tables: tests/helpers/combine.py (combine/README.md, "Edge semantics").
"""

import longattn
import pytest
import torch

from tests import oracle
from tests.helpers.backends import call, skip_unless_implements
from tests.helpers.combine import (
    INF,
    check_merge_nonfinite,
    check_sink_nonfinite,
    merge_bounds,
    merge_nonfinite_inputs,
    sink_rtol,
    states,
)
from tests.helpers.device import dev
from tests.tolerance import OUT_ROUNDING, assert_close

MERGE, SINK = "merge_attention_states", "apply_attention_sink"


@pytest.mark.parametrize("shape", [(5, 4, 16), (6, 19, 200), (5, 1, 576)], ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
def test_merge_matches_oracle(backend, dtype, shape):
    skip_unless_implements(MERGE, backend)
    T, H, D = shape
    out_a, lse_a, out_b, lse_b = states(T, H, D, dtype)
    out, lse = call(longattn.merge_attention_states, *dev(out_a, lse_a, out_b, lse_b), backend=backend)
    ref_out, ref_lse = oracle.merge_attention_states(out_a, lse_a, out_b, lse_b)
    assert out.dtype == dtype and lse.dtype == torch.float32
    lse_atol, out_atol = merge_bounds(out_a, lse_a, out_b, lse_b, ref_lse)
    assert_close(lse, ref_lse, lse_atol, 0.0, "lse")
    assert_close(out, ref_out, out_atol, 2 * OUT_ROUNDING[dtype], "out")
    assert torch.all(out[2] == 0) and torch.all(torch.isneginf(lse[2]))


def test_merge_never_reads_an_empty_side(backend):
    """A side whose lse is -inf holds no keys: its out (NaN here) is never read."""
    skip_unless_implements(MERGE, backend)
    out_a, lse_a, out_b, lse_b = states()
    out_a[0] = float("nan")  # lse_a[0] = -inf
    out_b[1] = float("nan")  # lse_b[1] = -inf
    out_a[2] = out_b[2] = float("nan")  # both empty
    out, lse = call(longattn.merge_attention_states, *dev(out_a, lse_a, out_b, lse_b), backend=backend)
    assert not torch.isnan(out).any() and not torch.isnan(lse).any()
    assert torch.all(out[2] == 0)


def test_merge_is_commutative_and_associative(backend):
    skip_unless_implements(MERGE, backend)
    a, la, b, lb = dev(*states())
    c, lc = torch.randn_like(a), torch.randn_like(la)

    def merge(*xs):
        return call(longattn.merge_attention_states, *xs, backend=backend)

    ab, lab = merge(a, la, b, lb)
    ba, lba = merge(b, lb, a, la)
    torch.testing.assert_close(ab, ba)
    torch.testing.assert_close(lab, lba)
    left = merge(*merge(a, la, b, lb), c, lc)
    right = merge(a, la, *merge(b, lb, c, lc))
    torch.testing.assert_close(left[0], right[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(left[1], right[1], atol=1e-3, rtol=1e-6)  # lse up to 1e4: 1e-7 relative


def test_merge_strided_inputs(backend):
    """Non-contiguous out / lse give the contiguous inputs' result (the reference's)."""
    skip_unless_implements(MERGE, backend)
    out_a, lse_a, out_b, lse_b = states(T=5, H=6, D=32)
    oa = dev(out_a)[0].transpose(0, 1).contiguous().transpose(0, 1)  # non-contiguous [T, H, D]
    lb = dev(lse_b)[0].t().contiguous().t()
    out, lse = call(longattn.merge_attention_states, oa, *dev(lse_a, out_b), lb, backend=backend)
    ref_out, ref_lse = longattn.merge_attention_states(out_a, lse_a, out_b, lse_b, backend="reference")
    torch.testing.assert_close(out.cpu(), ref_out, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(lse.cpu(), ref_lse, atol=1e-3, rtol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("sink_kind", ["finite", "pos_inf", "neg_inf", "mixed"])
def test_apply_sink_matches_oracle(backend, sink_kind, dtype):
    skip_unless_implements(SINK, backend)
    T, H, D = 6, 5, 40
    out, lse = torch.randn(T, H, D).to(dtype), torch.randn(T, H) * 4
    lse[0] = -INF
    out[0] = 0
    lse[1, 2] = -INF  # one empty (token, head): g = 0 whatever the sink
    out[1, 2] = 0
    sink = {"finite": torch.randn(H), "pos_inf": torch.full((H,), INF), "neg_inf": torch.full((H,), -INF)}.get(
        sink_kind, torch.tensor([0.5, INF, -INF, -2.0, 30.0])
    )
    got = call(longattn.apply_attention_sink, *dev(out, lse, sink), backend=backend)
    ref = oracle.apply_attention_sink(out, lse, sink)
    assert got.dtype == dtype
    assert_close(got, ref, 1e-30, sink_rtol(lse, sink) + 2 * OUT_ROUNDING[dtype], "sink")
    assert not torch.isnan(got).any()


def test_bf16_subnormals_are_read_exactly(backend):
    """bf16 subnormal outs pass unchanged where the math is exact (Triton under the interpreter: its own
    bf16 <-> fp32 conversions garble subnormals, triton_utils.cast_in / cast_out): a merge with an empty
    side (lse -inf) is the other side, a sink of -inf (factor 1) leaves out as it is."""
    skip_unless_implements(MERGE, backend)
    g = torch.Generator().manual_seed(8)
    T, H, D = 2, 3, 40
    out_b = torch.randn(T, H, D, generator=g).bfloat16()
    sub = torch.tensor([2.0**-133, -(2.0**-130), 1e-38, -2e-39, 2.0**-127, 1.1e-38]).bfloat16()
    out_b.view(-1)[:: D // 2][: sub.numel()] = sub
    assert (out_b.float().abs() < 2.0**-126).sum() >= 5
    lse_b = torch.randn(T, H, generator=g)
    out_a = torch.randn(T, H, D, generator=g).bfloat16()
    lse_a = torch.full((T, H), -INF)
    out, lse = call(longattn.merge_attention_states, *dev(out_a, lse_a, out_b, lse_b), backend=backend)
    assert torch.equal(out.cpu(), out_b) and torch.equal(lse.cpu(), lse_b)
    skip_unless_implements(SINK, backend)
    got = call(longattn.apply_attention_sink, *dev(out_b, lse_b, torch.full((H,), -INF)), backend=backend)
    assert torch.equal(got.cpu(), out_b)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_merge_nonfinite_lse(backend, dtype):
    """NaN lse -> NaN / NaN, +inf -> +inf / NaN, both -inf -> -inf / 0 (MERGE_NONFINITE), without
    reading a side whose lse is -inf."""
    skip_unless_implements(MERGE, backend)
    out_a, lse_a, out_b, lse_b = merge_nonfinite_inputs(dtype)
    out, lse = call(longattn.merge_attention_states, *dev(out_a, lse_a, out_b, lse_b), backend=backend)
    check_merge_nonfinite(out, lse, out_a, out_b, f"{backend} {dtype}")


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # the Triton interpreter's numpy: inf - inf
def test_apply_sink_nonfinite(backend):
    """NaN sink -> NaN, lse +inf -> factor 1, NaN lse -> NaN, lse -inf -> 0 whatever the sink."""
    skip_unless_implements(SINK, backend)
    check_sink_nonfinite(lambda o, l, s: call(longattn.apply_attention_sink, *dev(o, l, s), backend=backend), backend)
