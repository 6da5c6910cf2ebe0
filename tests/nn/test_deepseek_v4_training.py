"""Training DeepseekV4Attention (issue 16): under grad mode without a kept cache the module runs whole
sequences through differentiable ops (compress_pool, sparse_attention with its backward); outputs equal
the paged inference path, gradients equal float64 autograd of the spec (tests/nn/dense_v4.py, live
weights), sequence packing equals separate sequences, and the indexer (a selection) gets no gradient."""

import copy

import pytest
import torch
from longattn.nn import DeepseekV4Attention, PagedKVCache

from tests import oracle
from tests.layers.dense_layer import entries
from tests.nn.dense_v4 import _norm_weights, dense_v4_layer, layer_inputs
from tests.nn.helpers import TINY, tiny_layer

U32 = 2.0**-24
KINDS = {"swa": 0, "csa": 1, "hca": 2}
INDEXER = "compressor.indexer."


def _grads(m: DeepseekV4Attention):
    return {n: p.grad for n, p in m.named_parameters()}


def _bound(want: torch.Tensor) -> float:
    """fp32 gradients vs float64: a chain of ~4 matmul-like reductions of at most n = 64 terms (dim,
    heads x head dim / groups, keys), each within (n + 2) u of its terms' magnitude; x 8 for the
    softmax's recomputation and second-order terms; over the largest gradient of the tensor."""
    return 8 * 4 * 66 * U32 * float(want.abs().max())


@pytest.mark.parametrize("kind", list(KINDS))
def test_training_forward_equals_inference_and_gradients_equal_float64(kind):
    m = tiny_layer(KINDS[kind])
    x = torch.randn(2, 29, 32, generator=torch.Generator().manual_seed(1))
    g = torch.randn(2, 29, 32, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    with torch.no_grad():
        inference, _ = m(x)
    out, _ = m(x)  # grad mode, no cache: the training path
    assert out.grad_fn is not None
    torch.testing.assert_close(out, inference, atol=1e-6, rtol=0)  # the same function, same fp32 steps
    (out.double() * g).sum().backward()
    m64 = copy.deepcopy(m).double()
    for p in m64.parameters():
        p.grad = None
    truth = torch.stack([dense_v4_layer(m64, x[b].double(), live=True) for b in range(2)])
    (truth * g).sum().backward()
    got, want = _grads(m), _grads(m64)
    for name, w in want.items():
        if name.startswith(INDEXER):  # the top-k is a selection: no gradient in either
            assert got[name] is None and (w is None or not bool(w.any())), name
            continue
        assert w is not None and got[name] is not None, name
        err = float((got[name].double() - w).abs().max())
        assert err <= _bound(w), f"{kind} d{name}: {err:.3e} > {_bound(w):.3e}"


@pytest.mark.parametrize("kind", list(KINDS))
def test_sequence_packing_equals_separate_sequences(kind):
    m = tiny_layer(KINDS[kind], seed=3)
    g = torch.Generator().manual_seed(4)
    lengths = [13, 1, 0, 22]
    xs = [torch.randn(n, 32, generator=g) for n in lengths]
    cu = torch.tensor([0] + lengths).cumsum(0)
    packed = m.forward_train(torch.cat(xs), cu)
    packed.square().sum().backward()
    grads = {n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None}
    m.zero_grad(set_to_none=True)
    alone = [m.forward_train(x.unsqueeze(0))[0] for x in xs if len(x)]
    sum(o.square().sum() for o in alone).backward()
    torch.testing.assert_close(packed, torch.cat(alone), atol=1e-6, rtol=0)
    for n, p in m.named_parameters():
        if n in grads:
            torch.testing.assert_close(p.grad, grads[n], atol=1e-5, rtol=1e-5)


def test_forward_train_rejects_bad_cu_seqlens():
    m = tiny_layer(1)
    with pytest.raises(ValueError, match="cu_seqlens"):
        m.forward_train(torch.randn(10, 32), torch.tensor([0, 4, 3, 10]))
    with pytest.raises(ValueError, match=r"\[T, dim\]"):
        m.forward_train(torch.randn(1, 10, 32), torch.tensor([0, 10]))


@pytest.mark.parametrize("idx", [0, 1, 2], ids=["swa", "csa", "hca"])
def test_forward_train_of_empty_sequences(idx):
    """Rows of zero tokens give zero rows (the output projection used to fail reshaping 0 elements)."""
    m = tiny_layer(idx)
    assert m.forward_train(torch.randn(2, 0, 32)).shape == (2, 0, 32)
    assert m.forward_train(torch.randn(0, 32), torch.tensor([0, 0])).shape == (0, 32)


def test_a_kept_cache_stays_inference_only():
    """With a cache the caller keeps (decode, generation), the paged path runs and backward refuses
    clearly: the caches hold values, never a graph."""
    m = tiny_layer(1)
    cache = PagedKVCache([m.layer], max_batch_size=1, max_context=12, page_size=4)
    cache.begin_step(1, 12)
    out, _ = m(torch.randn(1, 12, TINY.dim), cache=cache)
    with pytest.raises(NotImplementedError, match="has no backward pass"):
        out.sum().backward()


@pytest.mark.parametrize("stage", ["dense", "sparse"])
def test_indexer_loss_trains_the_indexer_only(stage):
    """forward_train(indexer_loss=...) returns the same output and the layer's indexer KL loss; its
    gradient reaches the indexer's weights and nothing else. The dense stage's value equals the float64
    oracle on the spec's entries and keys (tests/oracle.py)."""
    m = tiny_layer(KINDS["csa"], seed=6)
    x = torch.randn(1, 29, 32, generator=torch.Generator().manual_seed(7))
    out, loss = m.forward_train(x, indexer_loss=stage)
    torch.testing.assert_close(out, m.forward_train(x), atol=0, rtol=0)
    loss.backward()
    for name, p in m.named_parameters():
        assert (p.grad is not None and bool(p.grad.any())) == name.startswith(INDEXER), name
    if stage == "dense":
        L = m.layer
        seq = layer_inputs(m, x[0])
        comp_w, idx_w = _norm_weights(m)
        ent = entries(seq["compress_a"], seq["compress_b"], L, comp_w, m.rope_inv_freq)
        keys = entries(seq["index_a"], seq["index_b"], L, idx_w, m.rope_inv_freq)
        vis = (torch.arange(29) + 1) // L.compress_ratio
        want = oracle.indexer_kl_loss(seq["q"], ent, seq["index_q"], seq["index_weights"], keys, vis, None,
                                      L.softmax_scale)  # fmt: skip
        assert abs(loss.item() - want.item()) <= 1e-5 * (1 + abs(want.item()))


def test_indexer_loss_only_on_csa_layers():
    with pytest.raises(ValueError, match="CSA"):
        tiny_layer(KINDS["hca"]).forward_train(torch.randn(1, 9, 32), indexer_loss="dense")
