"""The Triton ``compress_pool`` kernel with explicit slot / channel tiles.

The generic cases on every backend (odd d / ratios, tails, large and non-finite scores, V4 shapes):
tests/ops/test_compress.py. Here the same bound (tests/helpers/compress.py ``pool_bound``) with several
slot tiles per entry (online rescaling; a NaN / inf in another tile than the max) and non-contiguous
inputs. Outputs are NaN-poisoned before the launch (tests/conftest.py poisons torch.empty), so an
unwritten element fails every comparison.
"""

from __future__ import annotations

import pytest
import torch

from tests import oracle
from tests.helpers.compress import nonfinite_pool_inputs
from tests.helpers.device import CAN_RUN_TRITON, DEVICE, TRITON_SKIP_REASON
from tests.helpers.triton_kernels import check_pool_kernel

pytestmark = [
    pytest.mark.skipif(not CAN_RUN_TRITON, reason=TRITON_SKIP_REASON),
    # inf - inf in the interpreter's numpy (the +inf score case) warns; the NaN it makes is the point
    pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning"),
]

if CAN_RUN_TRITON:
    from longattn.ops.compress import triton_compress


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
    check_pool_kernel(a, b_t, ratio, True, config=dict(BLOCK_S=block_s, BLOCK_C=16))


@pytest.mark.filterwarnings("ignore:All-NaN slice:RuntimeWarning")  # a channel of NaN scores only
@pytest.mark.parametrize("overlap", [True, False])
def test_nonfinite_rule_slot_tiles(overlap):
    """NaN / -NaN / +inf scores, NaN values (at finite and at -inf scores), +inf values, channels of
    only -inf slots (``nonfinite_pool_inputs``) against the float64 IEEE oracle, with slot tiles of 1
    and 2 slots (the NaN / inf in another tile than the max; the default tiles: tests/ops)."""
    a, b = nonfinite_pool_inputs()
    want = oracle.compress_pool_ieee(a, b, 4, overlap)
    for cfg in (dict(BLOCK_S=1, BLOCK_C=16), dict(BLOCK_S=2, BLOCK_C=16)):
        got = triton_compress.compress_pool(a.to(DEVICE), b.to(DEVICE), 4, overlap, config=cfg).cpu()
        assert torch.equal(got.isnan(), want.isnan()), f"{cfg}: NaN mask\n{got}\n{want}"
        assert torch.equal(got.isinf(), want.isinf()), f"{cfg}: inf mask"
        fin = torch.isfinite(want)
        assert float((got.double()[fin] - want[fin]).abs().max()) <= 1e-5, f"{cfg}: finite channels"
