"""Triton ``compress_pool`` vs the float64 oracle and the reference.

Tolerance (the reference's own, tests/ops/test_compress.py): the entry is a convex combination of
``a`` values with softmax weights over 2 * ratio slots; exp / sum / divide add O(ratio) fp32 roundings
relative to max|a|, scaled by (1 + max|b|) for the rounding of exp's argument. The kernel computes the
same fp32 math as an online softmax over slot tiles (another summation order; tl.exp is ex2.approx on
GPUs, ~2 ulp), which this bound covers. Outputs are NaN-poisoned before the launch (tests/conftest.py
poisons torch.empty), so an unwritten element fails every comparison.
"""

from __future__ import annotations

import pytest
import torch

from tests import oracle
from tests.ops.test_compress import nonfinite_pool_inputs
from tests.tolerance import assert_close
from tests.triton import CAN_RUN, DEVICE, SKIP_REASON

pytestmark = [
    pytest.mark.skipif(not CAN_RUN, reason=SKIP_REASON),
    # inf - inf in the interpreter's numpy (the +inf score case) warns; the NaN it makes is the point
    pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning"),
]

if CAN_RUN:
    import longattn
    from longattn.ops.compress import triton_compress

U32 = 2.0**-24


def _bound(a, b, ratio):
    amax = float(a.float().abs().max()) if a.numel() else 0.0
    bmax = float(b.float().abs().max()) if b.numel() else 0.0
    return 2 * (2 * ratio + 8) * U32 * amax * (1 + bmax)


def _check(a, b, ratio, overlap, config=None):
    """Kernel vs oracle and vs reference; returns the kernel's output (on the CPU)."""
    ref = longattn.compress_pool(a, b, ratio, overlap, backend="reference")
    if config is None:
        got = longattn.compress_pool(a.to(DEVICE), b.to(DEVICE), ratio, overlap, backend="triton").cpu()
    else:
        got = triton_compress.compress_pool(a.to(DEVICE), b.to(DEVICE), ratio, overlap, config=config).cpu()
    assert got.dtype == torch.float32 and got.shape == ref.shape
    bound = _bound(a, b, ratio)
    assert_close(got, oracle.compress_pool(a, b, ratio, overlap), bound, 0.0, "triton compress_pool vs oracle")
    assert_close(got, ref, 2 * bound, 0.0, "triton compress_pool vs reference")
    return got


@pytest.mark.parametrize(
    "S,ratio,overlap,d",
    [
        (16, 4, True, 8),  # whole blocks
        (19, 4, True, 8),  # S not a multiple of the ratio: the tail is not pooled
        (3, 4, True, 8),  # S < ratio: no entry
        (4, 4, True, 8),  # one block, no previous one
        (300, 128, False, 16),  # HCA ratio, tail
        (12, 1, False, 5),  # ratio 1: identity
        (30, 3, True, 6),  # odd ratio with overlap
        (40, 8, True, 200),  # channels in two tiles, the second partial
        (17, 4, False, 33),  # odd d
    ],
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_matches_oracle(S, ratio, overlap, d, dtype):
    c = 2 if overlap else 1
    g = torch.Generator().manual_seed(S * 1000 + d)
    a = (torch.randn(S, c * d, generator=g) * 2).to(dtype)
    b = (torch.randn(S, c * d, generator=g) * 3).to(dtype)
    _check(a, b, ratio, overlap)


@pytest.mark.parametrize("block_s", [1, 2, 8])
def test_slot_tiles_and_strided_inputs(block_s):
    """Several slot tiles per entry (online rescaling) and non-contiguous a / b (column slices of a
    wider tensor, and a transposed one)."""
    S, ratio, d = 64, 8, 48
    g = torch.Generator().manual_seed(block_s)
    wide_a = torch.randn(S, 4 * d + 3, generator=g)
    b_t = torch.randn(2 * d, S, generator=g).T * 4  # [S, 2d], column-major
    a = wide_a[:, 5 : 5 + 2 * d]
    assert not a.is_contiguous() and not b_t.is_contiguous()
    _check(a, b_t, ratio, True, config=dict(BLOCK_S=block_s, BLOCK_C=16))


def test_adversarial_scores():
    """Large logits (a naive exp overflows), a channel whose slots are all -inf (pools to 0), a +inf
    score and a NaN score (IEEE softmax: exp(inf - inf) / NaN make the channel NaN, in the reference
    and the kernel alike; ops/compress/README.md), ties."""
    S, ratio, d = 16, 4, 6
    a = torch.randn(S, 2 * d)
    b = torch.randn(S, 2 * d) * 1e4
    b[:, 1] = float("-inf")
    b[:, d + 1] = float("-inf")  # channel 1: no finite slot anywhere
    b[9, d + 2] = float("inf")  # entry 2, channel 2 (own block, half B)
    b[5, 3] = float("nan")  # entry 2, channel 3 (previous block, half A)
    b[:, 4] = 7.0
    b[:, d + 4] = 7.0  # channel 4: all slots tie
    ref = longattn.compress_pool(a, b, ratio, True, backend="reference")
    got = longattn.compress_pool(a.to(DEVICE), b.to(DEVICE), ratio, True, backend="triton").cpu()
    want = oracle.compress_pool_ieee(a, b, ratio, True)
    assert torch.equal(got.isnan(), want.isnan()) and torch.equal(ref.isnan(), want.isnan())
    assert torch.all(got[:, 1] == 0) and bool(got[2, 2].isnan()) and bool(got[2, 3].isnan())
    assert torch.all(ref[:, 1] == 0) and bool(ref[2, 2].isnan()) and bool(ref[2, 3].isnan())
    finite = torch.ones_like(got, dtype=torch.bool)
    finite[2, 2:4] = False
    amax = float(a.abs().max())
    assert float((got - ref)[finite].abs().max()) <= 2 * (2 * ratio + 8) * U32 * amax * 1e4


def test_nan_value_propagates():
    S, ratio, d = 8, 4, 4
    a = torch.randn(S, d)
    b = torch.randn(S, d)
    a[5, 2] = float("nan")
    got = longattn.compress_pool(a.to(DEVICE), b.to(DEVICE), ratio, False, backend="triton").cpu()
    ref = longattn.compress_pool(a, b, ratio, False, backend="reference")
    assert torch.equal(got.isnan(), ref.isnan()) and bool(got[1, 2].isnan())


def test_v4_shapes():
    """CSA (ratio 4, overlap, d = 512) and HCA (ratio 128, d = 512) prefill chunks, bf16."""
    g = torch.Generator().manual_seed(0)
    for S, ratio, overlap in [(64, 4, True), (256, 128, False)]:
        c = 2 if overlap else 1
        a = torch.randn(S, c * 512, generator=g).bfloat16()
        b = torch.randn(S, c * 512, generator=g).bfloat16()
        _check(a, b, ratio, overlap)


@pytest.mark.filterwarnings("ignore:All-NaN slice:RuntimeWarning")  # a channel of NaN scores only
@pytest.mark.parametrize("overlap", [True, False])
def test_nonfinite_rule_vs_oracle(overlap):
    """NaN / -NaN / +inf scores, NaN values (at finite and at -inf scores), +inf values, channels of
    only -inf slots (tests/ops/test_compress.py ``nonfinite_pool_inputs``) against the float64 IEEE
    oracle, with slot tiles of 1, 2 and 8 slots (the NaN / inf in another tile than the max)."""
    a, b = nonfinite_pool_inputs()
    want = oracle.compress_pool_ieee(a, b, 4, overlap)
    for cfg in (None, dict(BLOCK_S=1, BLOCK_C=16), dict(BLOCK_S=2, BLOCK_C=16)):
        got = triton_compress.compress_pool(a.to(DEVICE), b.to(DEVICE), 4, overlap, config=cfg).cpu()
        assert torch.equal(got.isnan(), want.isnan()), f"{cfg}: NaN mask\n{got}\n{want}"
        assert torch.equal(got.isinf(), want.isinf()), f"{cfg}: inf mask"
        fin = torch.isfinite(want)
        assert float((got.double()[fin] - want[fin]).abs().max()) <= 1e-5, f"{cfg}: finite channels"
