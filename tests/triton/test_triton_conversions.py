"""The kernels' float conversions (``triton_utils.cast_in`` for loaded tiles, ``cast_out`` for stored
ones): every bf16 value widens exactly and fp32 rounds to nearest even into bf16, subnormals included.
Under the interpreter Triton's own bf16 <-> fp32 conversions garble subnormals (1e-38 -> 8.3e-39,
9e-41 -> 0), so there the helpers work on the bits; on a GPU they are the native conversions (gpu_check
runs this file). The ops' end-to-end cases with bf16 subnormals: the fuzz suite (tests/fuzz) and
``test_bf16_subnormals_are_read_exactly`` in tests/ops/test_combine.py and tests/ops/test_indexer.py."""

from __future__ import annotations

import pytest
import torch

from tests.helpers.device import CAN_RUN_TRITON, DEVICE, TRITON_SKIP_REASON

pytestmark = pytest.mark.skipif(not CAN_RUN_TRITON, reason=TRITON_SKIP_REASON)

if CAN_RUN_TRITON:
    import triton
    import triton.language as tl
    from longattn.ops.triton_utils import cast_in, cast_out

    @triton.jit
    def _widen_kernel(p_in, p_out, n, BLOCK: tl.constexpr):
        o = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        tl.store(p_out + o, cast_in(tl.load(p_in + o, mask=o < n), tl.float32), mask=o < n)

    @triton.jit
    def _narrow_kernel(p_in, p_out, n, BLOCK: tl.constexpr):
        o = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        tl.store(p_out + o, cast_out(tl.load(p_in + o, mask=o < n), tl.bfloat16), mask=o < n)


BLOCK = 1024


def _launch(kernel, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    kernel[(triton.cdiv(x.numel(), BLOCK),)](x, out, x.numel(), BLOCK)
    return out.cpu()


def _same_bits(got: torch.Tensor, want: torch.Tensor, int_dtype) -> None:
    """Bit for bit, NaN by position only (NaN payloads and signs are not part of the contract)."""
    nan = torch.isnan(want)
    assert torch.equal(torch.isnan(got), nan), "NaN positions differ"
    diff = (got[~nan].view(int_dtype) != want[~nan].view(int_dtype)).nonzero()
    assert diff.numel() == 0, f"{diff.numel()} values differ, first: {got[~nan][diff[0]]} vs {want[~nan][diff[0]]}"


def test_cast_in_widens_every_bf16_value_exactly():
    x = torch.arange(-(2**15), 2**15, dtype=torch.int32).to(torch.int16).view(torch.bfloat16)
    out = torch.full(x.shape, 7.0, device=DEVICE)  # poison: an unwritten element shows
    got = _launch(_widen_kernel, x.to(DEVICE), out)
    _same_bits(got, x.float(), torch.int32)


def test_cast_out_rounds_to_nearest_even():
    g = torch.Generator().manual_seed(0)
    wide = torch.arange(-(2**15), 2**15, dtype=torch.int32).to(torch.int16).view(torch.bfloat16).float()
    bits = wide.view(torch.int32)
    x = torch.cat(
        [
            wide,  # every bf16 value: exact
            (bits + 0x8000).view(torch.float32),  # halfway between two bf16 values: to the even one
            (bits + 0x7FFF).view(torch.float32),  # just below halfway
            (bits + 0x8001).view(torch.float32),  # just above
            torch.randn(20000, generator=g) * torch.exp(torch.randn(20000, generator=g) * 40),  # all exponents
            torch.tensor([3.4028234e38, -3.4028234e38, 2.0**-149, -(2.0**-149), 2.0**-133, 1e-40, 0.0, -0.0]),
        ]
    )
    out = torch.full(x.shape, 7.0, dtype=torch.bfloat16, device=DEVICE)
    got = _launch(_narrow_kernel, x.to(DEVICE), out)
    _same_bits(got, x.to(torch.bfloat16), torch.int16)
