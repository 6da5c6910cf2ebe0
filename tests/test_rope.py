"""``longattn.rope.apply_rope``: in place (the nn module's queries, and its outputs outside autograd)
equals the copying form bit for bit, writes only the rope dims, and keeps the gradient of a product
rotated in place (the queries under grad mode)."""

from __future__ import annotations

import pytest
import torch
from longattn.configs import RopeConfig
from longattn.rope import apply_rope, inv_freq


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("inverse", [False, True])
def test_inplace_equals_copy(dtype, inverse):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(7, 3, 96, generator=g).to(dtype)
    pos = torch.randint(0, 1 << 20, (7, 1), generator=g)
    table = inv_freq(RopeConfig(theta=10000.0), 32)
    want = apply_rope(x, pos, table, inverse=inverse)
    before = x.clone()
    got = apply_rope(x, pos, table, inverse=inverse, inplace=True)
    assert got is x
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    torch.testing.assert_close(x[..., :-32], before[..., :-32], rtol=0, atol=0)  # the other dims untouched
    assert not torch.equal(x[..., -32:], before[..., -32:])
    # rope_dim 0: nothing rotated, the same tensor back
    assert apply_rope(x, pos, table[:0], inplace=True) is x


def test_inplace_keeps_autograd_of_a_fresh_product():
    """In place on the product of a mul (what the module's queries are) keeps the gradient right."""
    g = torch.Generator().manual_seed(1)
    a = torch.randn(4, 2, 64, generator=g, requires_grad=True)
    pos = torch.arange(4).unsqueeze(1)
    table = inv_freq(RopeConfig(theta=10000.0), 16)
    ref = apply_rope(a * 2.0, pos, table)
    out = apply_rope(a * 2.0, pos, table, inplace=True)
    (ga,) = torch.autograd.grad(out.square().sum(), a)
    (gr,) = torch.autograd.grad(ref.square().sum(), a)
    torch.testing.assert_close(ga, gr, rtol=0, atol=0)
