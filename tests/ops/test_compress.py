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
