"""longattn.indexer_kl_loss (ops/indexer/training.py): the indexer's KL loss in the dense warm-up and
sparse stages, value and gradients against an independent float64 formula with autograd ([T, N]
dense, which the blockwise implementation never materialises), float64 gradcheck, edge rows."""

import longattn
import pytest
import torch
from longattn.ops.indexer import training

from tests import oracle

U32 = 2.0**-24


def _case(g, T=7, N=30, H=3, D=8, Hi=2, Di=6, K=5):
    q, kv = torch.randn(T, H, D, generator=g), torch.randn(N, D, generator=g)
    iq, iw, ik = torch.randn(T, Hi, Di, generator=g), torch.randn(T, Hi, generator=g), torch.randn(N, Di, generator=g)
    ve = torch.randint(0, N + 3, (T,), generator=g)  # beyond N: clamped
    ve[0] = 0  # a token without candidates
    ve[1] = N + 5
    idx = torch.randint(-1, N + 2, (T, K), generator=g)  # -1 and out of range are not candidates
    return q, kv, iq, iw, ik, ve, idx


@pytest.mark.parametrize("stage", ["dense", "sparse"])
def test_value_and_gradients_match_float64(stage, monkeypatch):
    monkeypatch.setattr(training, "DENSE_BLOCK", 8)  # several entry blocks
    g = torch.Generator().manual_seed(1 if stage == "dense" else 2)
    q, kv, iq, iw, ik, ve, idx = _case(g)
    indices = idx if stage == "sparse" else None
    xs = [x.clone().requires_grad_() for x in (iq, iw, ik)]
    loss = longattn.indexer_kl_loss(q, kv, *xs, ve, indices=indices, softmax_scale=0.4)
    loss.backward()
    xs64 = [x.double().requires_grad_() for x in (iq, iw, ik)]
    want = oracle.indexer_kl_loss(q, kv, *xs64, ve.clamp(0, kv.shape[0]), indices, 0.4)
    want.backward()
    # fp32 sums of <= 30 terms of O(10) magnitude (scores), logs and exps of them: ~(N + Di) u relative
    tol = 8 * (30 + 8) * U32
    assert abs(loss.item() - want.item()) <= tol * (1 + abs(want.item()))
    for name, a, b in zip(("index_q", "index_weights", "index_k"), xs, xs64):
        err = (a.grad.double() - b.grad).abs().max().item()
        assert err <= tol * (1 + b.grad.abs().max().item()), f"d{name}: {err:.3e}"


def test_float64_gradcheck():
    g = torch.Generator().manual_seed(3)
    q, kv, iq, iw, ik, ve, idx = _case(g, T=4, N=9, K=4)
    args = [x.double().requires_grad_() for x in (iq, iw, ik)]

    def fn(a, b, c):
        return longattn.indexer_kl_loss(q.double(), kv.double(), a, b, c, ve, indices=idx, softmax_scale=0.5)

    assert torch.autograd.gradcheck(fn, args, eps=1e-6, atol=1e-7)


def test_target_side_gets_no_gradient_and_empty_input_is_zero():
    g = torch.Generator().manual_seed(4)
    q, kv, iq, iw, ik, ve, _ = _case(g)
    q.requires_grad_()
    iq.requires_grad_()
    loss = longattn.indexer_kl_loss(q, kv, iq, iw, ik, ve)
    loss.backward()
    assert q.grad is None and iq.grad is not None  # the attention's distribution is the target
    none = longattn.indexer_kl_loss(q, kv, iq, iw, ik, torch.zeros_like(ve))
    assert none.item() == 0.0


def test_loss_is_zero_when_the_indexer_matches_the_attention():
    """Hi = 1, weight 1, iq = scale q, ik = kv, all logits positive: I = s exactly, so KL = 0."""
    T, N, D = 3, 6, 4
    q = torch.rand(T, 1, D) + 0.1
    kv = torch.rand(N, D) + 0.1
    loss = longattn.indexer_kl_loss(q, kv, q * 0.5, torch.ones(T, 1), kv, torch.tensor([6, 3, 1]), softmax_scale=0.5)
    assert abs(loss.item()) < 1e-6


def test_bad_arguments_are_named():
    g = torch.Generator().manual_seed(5)
    q, kv, iq, iw, ik, ve, _ = _case(g)
    with pytest.raises(ValueError, match="index_k"):
        longattn.indexer_kl_loss(q, kv, iq, iw, ik[:-1], ve)
    with pytest.raises(ValueError, match="index_weights"):
        longattn.indexer_kl_loss(q, kv, iq, iw[:, :1], ik, ve)


def test_custom_op_opcheck_with_gradients():
    g = torch.Generator().manual_seed(6)
    q, kv, iq, iw, ik, ve, idx = _case(g, T=4, N=9, K=4)
    for indices in (None, idx):
        args = (q, kv, iq.requires_grad_(), iw.requires_grad_(), ik.requires_grad_(), ve.clamp(0, 9), indices, 0.5)
        torch.library.opcheck(torch.ops.longattn.indexer_kl_loss.default, args)
