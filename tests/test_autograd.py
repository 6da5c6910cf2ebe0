"""Autograd: every op either differentiates correctly or says clearly that it does not; nothing a
gradient needs is dropped silently, and a cache never joins an autograd graph.

- merge_attention_states, apply_attention_sink, compress_pool: real backward passes, checked against
  autograd through an independent float64 formula (sparse_attention: tests/ops/test_sparse_attention_backward.py);
- indexer_logits: the forward runs under grad mode, ``backward()`` raises;
- append_kv, compress_kv: inputs that require grad are refused under grad mode (the cache keeps values);
- HybridAttention (and so a DeepseekV4Attention model): the forward runs under grad mode, the caches
  stay plain tensors, ``backward()`` raises.
"""

import longattn
import pytest
import torch
from longattn.backends import registry

from tests import oracle
from tests.layers.helpers import make_manager, make_sequence, tiny_layer

BACKENDS = ["reference", "triton"]
# merge / sink also run on the Ascend C kernels (the emulator build; skipped where it cannot be built)
_SIM_UNAVAILABLE = registry.get_backend("ascend_sim").unavailable
COMBINE_BACKENDS = [
    *BACKENDS,
    pytest.param("ascend_sim", marks=pytest.mark.skipif(bool(_SIM_UNAVAILABLE), reason=str(_SIM_UNAVAILABLE))),
]


def _grads(fn, *xs):
    xs = [x.detach().clone().requires_grad_() for x in xs]
    out = fn(*xs)
    outs = out if isinstance(out, tuple) else (out,)
    g = torch.Generator().manual_seed(7)
    loss = sum((o.double() * torch.randn(o.shape, generator=g, dtype=torch.float64)).nan_to_num().sum() for o in outs)
    loss.backward()
    return [x.grad for x in xs]


def _merge64(oa, la, ob, lb):
    lse = torch.logaddexp(la, lb)
    wa = torch.exp(la - lse).nan_to_num()
    wb = torch.exp(lb - lse).nan_to_num()
    return wa.unsqueeze(-1) * oa + wb.unsqueeze(-1) * ob, lse


@pytest.mark.parametrize("backend", COMBINE_BACKENDS)
def test_merge_backward(backend):
    g = torch.Generator().manual_seed(0)
    oa, ob = torch.randn(4, 3, 8, generator=g), torch.randn(4, 3, 8, generator=g)
    la, lb = torch.randn(4, 3, generator=g), torch.randn(4, 3, generator=g)
    la[0, 0] = float("-inf")  # one empty side
    got = _grads(lambda *x: longattn.merge_attention_states(*x, backend=backend), oa, la, ob, lb)
    want = _grads(_merge64, oa.double(), la.double(), ob.double(), lb.double())
    for x, y in zip(got, want):
        torch.testing.assert_close(x.double(), y, atol=1e-5, rtol=1e-5)
    assert float(got[0][0, 0].abs().max()) == 0.0 and float(got[1][0, 0]) == 0.0  # the empty side


@pytest.mark.parametrize("backend", COMBINE_BACKENDS)
def test_sink_backward(backend):
    g = torch.Generator().manual_seed(1)
    out, lse, sink = torch.randn(5, 3, 8, generator=g), torch.randn(5, 3, generator=g), torch.randn(3, generator=g)

    def sink64(o, l, s):
        return o * torch.sigmoid(l - s).unsqueeze(-1)

    got = _grads(lambda *x: longattn.apply_attention_sink(*x, backend=backend), out, lse, sink)
    want = _grads(sink64, out.double(), lse.double(), sink.double())
    for x, y in zip(got, want):
        torch.testing.assert_close(x.double(), y, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("overlap", [True, False])
def test_compress_pool_backward(backend, overlap):
    g = torch.Generator().manual_seed(2)
    a, b = torch.randn(13, 12, generator=g), torch.randn(13, 12, generator=g)
    got = _grads(lambda x, y: longattn.compress_pool(x, y, 4, overlap, backend=backend), a, b)
    want = _grads(lambda x, y: oracle.compress_pool_autograd(x, y, 4, overlap), a.double(), b.double())
    for x, y in zip(got, want):
        torch.testing.assert_close(x.double(), y, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_compress_pool_backward_without_entries(backend):
    """S < ratio: no entry, so no token is read; the inputs get zero gradients (was: an error)."""
    a = torch.randn(3, 8, requires_grad=True)
    b = torch.randn(3, 8, requires_grad=True)
    out = longattn.compress_pool(a, b, 4, True, backend=backend)
    assert out.shape == (0, 4)
    (out.sum() + a.sum() * 0).backward()
    assert bool((a.grad == 0).all()) and b.grad is not None and bool((b.grad == 0).all())


@pytest.mark.parametrize("backend", BACKENDS)
def test_non_differentiable_ops_run_forward_and_refuse_backward(backend):
    q = torch.randn(2, 2, 16, requires_grad=True)
    logits = longattn.indexer_logits(q, torch.randn(2, 2), torch.randn(5, 16), torch.full((2,), 5), backend=backend)
    with pytest.raises(NotImplementedError, match="longattn.indexer_logits has no backward pass"):
        logits.sum().backward()
    idx, n = longattn.indexer_topk(q, torch.randn(2, 2), torch.randn(5, 16), torch.full((2,), 5), 3, backend=backend)
    assert not idx.requires_grad and not n.requires_grad  # integer results: no gradient to lose


@pytest.mark.parametrize("backend", BACKENDS)
def test_cache_writes_refuse_inputs_that_require_grad(backend):
    pool = torch.zeros(4, 8)
    rows = torch.randn(2, 8, requires_grad=True)
    slots = torch.tensor([0, 3], dtype=torch.int32)
    with pytest.raises(RuntimeError, match="append_kv: `rows` requires grad, but it writes rows into a cache"):
        longattn.append_kv(pool, rows, slots, backend=backend)
    assert not pool.requires_grad and torch.all(pool == 0)
    with pytest.raises(RuntimeError, match="append_kv: `rows` requires grad"):
        torch.ops.longattn.append_kv(pool, 0, rows, slots, backend)
    with torch.no_grad():
        longattn.append_kv(pool, rows, slots, backend=backend)
    longattn.append_kv(pool, rows.detach(), slots, backend=backend)
    assert pool.grad_fn is None and not pool.requires_grad


@pytest.mark.parametrize("kind", ["swa", "csa", "hca"])
def test_layer_runs_under_grad_mode_and_refuses_backward(kind):
    layer = tiny_layer(kind)
    m = make_manager(layer, 4)
    att = longattn.HybridAttention(layer, m, kv_dtype=torch.float32)
    m.add_sequence("a")
    x = make_sequence(layer, 9, torch.Generator().manual_seed(3))
    x = {k: v.requires_grad_() for k, v in x.items()}
    out = att(m.plan(["a"], [0, 9]), **x)
    with torch.no_grad():
        m2 = make_manager(layer, 4)
        att2 = longattn.HybridAttention(layer, m2, kv_dtype=torch.float32)
        m2.add_sequence("a")
        want = att2(m2.plan(["a"], [0, 9]), **x)
    assert torch.equal(out.detach(), want)
    for p in att.pools():
        assert p.grad_fn is None and not p.requires_grad
    with pytest.raises(NotImplementedError, match="has no backward pass"):
        out.sum().backward()


@pytest.mark.parametrize("op", ["merge_attention_states", "apply_attention_sink", "compress_pool"])
def test_opcheck_with_gradients(op):
    """The registered backward passes torch.library's checks (autograd registration, AOT dispatch of
    the forward and backward with static and dynamic shapes) on inputs that require grad."""
    g = torch.Generator().manual_seed(9)

    def r(*shape):
        return torch.randn(*shape, generator=g).requires_grad_()

    args = {
        "merge_attention_states": (r(3, 2, 8), r(3, 2), r(3, 2, 8), r(3, 2), None),
        "apply_attention_sink": (r(3, 2, 8), r(3, 2), r(2), None),
        "compress_pool": (r(13, 12), r(13, 12), 4, True, None),
    }[op]
    torch.library.opcheck(getattr(torch.ops.longattn, op).default, args)


def test_merge_and_sink_backward_formulas_pass_float64_gradcheck():
    """The registered backward formulas (ops/combine/op.py) against numerical derivatives: each wrapped
    with a float64 forward of its op's math (the ops take fp32 / bf16 / fp16 only)."""
    from types import SimpleNamespace

    from longattn.ops.combine import op as combine

    class Merge(torch.autograd.Function):
        @staticmethod
        def forward(ctx, oa, la, ob, lb):
            lse = torch.logaddexp(la, lb)
            out = torch.exp(la - lse).unsqueeze(-1) * oa + torch.exp(lb - lse).unsqueeze(-1) * ob
            ctx.save_for_backward(oa, la, ob, lb, out, lse)
            return out, lse

        @staticmethod
        def backward(ctx, g_out, g_lse):
            return combine._merge_backward(SimpleNamespace(saved_tensors=ctx.saved_tensors), g_out, g_lse)[:4]

    class Sink(torch.autograd.Function):
        @staticmethod
        def forward(ctx, out, lse, sink):
            ctx.save_for_backward(out, lse, sink)
            return out * torch.sigmoid(lse - sink.unsqueeze(0)).unsqueeze(-1)

        @staticmethod
        def backward(ctx, g):
            return combine._sink_backward(SimpleNamespace(saved_tensors=ctx.saved_tensors), g)[:3]

    g = torch.Generator().manual_seed(10)

    def r(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64).requires_grad_()

    assert torch.autograd.gradcheck(Merge.apply, (r(3, 2, 5), r(3, 2), r(3, 2, 5), r(3, 2)))
    assert torch.autograd.gradcheck(Sink.apply, (r(3, 2, 5), r(3, 2), r(2)))


@pytest.mark.parametrize("overlap", [True, False])
def test_compress_pool_backward_passes_float64_gradcheck(overlap):
    """compress_pool's backward differentiates the reference's pooling (ops/compress/op.py); that
    pooling in float64 against numerical derivatives."""
    from longattn.ops.compress.reference import compress_pool as pool_entries

    g = torch.Generator().manual_seed(11)
    a = torch.randn(13, 8, generator=g, dtype=torch.float64).requires_grad_()
    b = torch.randn(13, 8, generator=g, dtype=torch.float64).requires_grad_()
    assert torch.autograd.gradcheck(lambda x, y: pool_entries(x, y, 4, overlap), (a, b))
