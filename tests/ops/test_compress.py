"""compress_pool (reference) vs the float64 oracle."""

import longattn
import pytest
import torch
from longattn.memory import chunk_budget

from tests import oracle
from tests.tolerance import assert_close

U32 = 2.0**-24


@pytest.mark.parametrize(
    "S,ratio,overlap,d",
    [
        (16, 4, True, 8),  # whole blocks
        (19, 4, True, 8),  # S not a multiple of the ratio: the tail is not pooled
        (3, 4, True, 8),  # S < ratio: no entry
        (4, 4, True, 8),  # exactly one block (no previous block)
        (256, 128, False, 16),
        (300, 128, False, 16),  # tail
        (100, 128, False, 16),  # S < ratio
        (12, 1, False, 5),  # ratio 1: identity
        (30, 3, True, 6),  # odd ratio with overlap
    ],
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_compress_pool_matches_oracle(S, ratio, overlap, d, dtype):
    c = 2 if overlap else 1
    a = (torch.randn(S, c * d) * 2).to(dtype)
    b = (torch.randn(S, c * d) * 3).to(dtype)
    got = longattn.compress_pool(a, b, ratio, overlap)
    ref = oracle.compress_pool(a, b, ratio, overlap)
    assert got.dtype == torch.float32 and got.shape == (S // ratio, d)
    # Softmax over 2*ratio slots of fp32 values: exp/sum/divide add O(ratio) roundings relative to the
    # largest |a| (the result is a convex combination of a values).
    amax = float(a.float().abs().max()) if a.numel() else 0.0
    bmax = float(b.float().abs().max()) if b.numel() else 0.0
    assert_close(got, ref, 2 * (2 * ratio + 8) * U32 * amax * (1 + bmax), 0.0, "compress_pool")
    with chunk_budget(1):
        assert torch.equal(longattn.compress_pool(a, b, ratio, overlap), got)


def test_overlap_first_entry_uses_only_own_block():
    """Entry 0 has no previous block: it equals pooling half B of block 0 alone."""
    d, ratio = 4, 4
    a, b = torch.randn(8, 2 * d), torch.randn(8, 2 * d)
    got = longattn.compress_pool(a, b, ratio, True)
    w = torch.softmax(b[:4, d:], dim=0)
    torch.testing.assert_close(got[0], (w * a[:4, d:]).sum(0))
    # entry 1: half A of block 0 and half B of block 1 (8 slots)
    sc = torch.cat([b[:4, :d], b[4:8, d:]])
    va = torch.cat([a[:4, :d], a[4:8, d:]])
    torch.testing.assert_close(got[1], (torch.softmax(sc, 0) * va).sum(0))


def test_large_scores_no_overflow():
    a, b = torch.randn(8, 6), torch.randn(8, 6) * 1e4
    got = longattn.compress_pool(a, b, 4, True)
    assert torch.isfinite(got).all()
    assert_close(got, oracle.compress_pool(a, b, 4, True), 1e-3, 0.0, "large scores")


NAN, INF = float("nan"), float("inf")
NEG_NAN = -float("nan")  # sign bit set (Python's negation flips it; torch keeps it on assignment)


def nonfinite_pool_inputs():
    """a, b [16, 2 * 6] (ratio 4, overlap) with every non-finite case of the pooling rule, one per
    (entry, channel): all slots -inf (with a NaN value: still 0), a NaN score, a negative NaN score, a
    +inf score, a NaN value at a finite / at a -inf score, +-inf values, -inf scores beside finite ones,
    and block -1 of entry 0 (absent: nothing there is read)."""
    g = torch.Generator().manual_seed(11)
    d = 6
    a, b = torch.randn(16, 2 * d, generator=g), torch.randn(16, 2 * d, generator=g) * 3
    b[:, 0] = -INF
    b[:, d] = -INF  # channel 0: every slot -inf -> 0 ...
    a[6, 0] = NAN  # ... even with a NaN value in a present slot
    b[5, 1] = NAN  # entry 2 (previous block, half A), channel 1: NaN score
    b[9, d + 1] = NEG_NAN  # entry 2 (own block), channel 1 too
    b[13, d + 2] = NEG_NAN  # entry 3, channel 2: negative NaN score
    b[2, d + 3] = INF  # entry 0, channel 3: +inf score
    a[9, d + 4] = NAN  # entry 2, channel 4: NaN value at a finite score
    b[4, 5], a[4, 5] = -INF, NAN  # entry 2, channel 5: NaN value at a -inf score (0 * NaN)
    a[14, d + 5] = INF  # entry 3, channel 5: +inf value
    b[1, d + 2], b[3, d + 2] = -INF, -INF  # entry 0, channel 2: -inf beside finite scores
    return a, b


def test_pool_nonfinite_rule_vs_oracle():
    """IEEE softmax pooling (ops/compress/README.md): NaN / +inf scores and NaN values make their
    channel NaN, -inf scores weigh 0, a channel with only -inf slots pools to 0."""
    a, b = nonfinite_pool_inputs()
    assert int(b[13, 8].view(torch.int32)) < 0  # the negative NaN really has its sign bit
    got = longattn.compress_pool(a, b, 4, True)
    want = oracle.compress_pool_ieee(a, b, 4, True)
    assert torch.equal(got.isnan(), want.isnan()), f"NaN mask\n{got}\n{want}"
    assert torch.equal(got.isinf(), want.isinf()) and torch.equal(got[got.isinf()], want[want.isinf()].float())
    assert torch.all(got[:, 0] == 0)
    assert bool(got[2, 1].isnan() and got[3, 2].isnan() and got[0, 3].isnan() and got[2, 4].isnan())
    assert bool(got[2, 5].isnan()) and got[3, 5] == INF
    fin = torch.isfinite(want)
    assert_close(got[fin], want[fin], 2 * 16 * U32 * float(a[a.isfinite()].abs().max()) * 10, 0.0, "finite channels")
    # no overlap (HCA): the same values, one block per entry
    got1 = longattn.compress_pool(a, b, 4, False)
    want1 = oracle.compress_pool_ieee(a, b, 4, False)
    assert torch.equal(got1.isnan(), want1.isnan()) and torch.equal(got1.isinf(), want1.isinf())
