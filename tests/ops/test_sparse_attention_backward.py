"""The backward of ``sparse_attention`` (ops/sparse_attention/backward.py): gradients for q, both float
KV streams and the sink, on every backend's forward, against autograd through an independent float64
formula; float64 gradcheck; opcheck with gradients; adversarial rows (repeated, invalid and
out-of-range indices, empty rows, partial lengths, +-inf sinks, large logits); FP8 pools refused."""

import longattn
import pytest
import torch
from longattn.ops.sparse_attention.backward import sparse_attention_backward

from tests.helpers.backends import call, skip_if_emulated, skip_unless_implements
from tests.helpers.device import dev

OP = "sparse_attention"
U32 = 2.0**-24


def _keys64(rows, idx, lengths):
    """float64 keys [T, K, D] per occurrence of a valid index, and the mask [T, K]."""
    valid = (idx >= 0) & (idx < rows.shape[0])
    if lengths is not None:
        valid &= torch.arange(idx.shape[1]).unsqueeze(0) < lengths.long().unsqueeze(1)
    keys = rows[torch.where(valid, idx.long(), 0)] * valid.unsqueeze(-1)
    return keys, valid


def dense64(q, streams, sink, scale):
    """out, lse of api.md section 1 as a differentiable float64 formula (independent of backward.py)."""
    parts = [_keys64(rows, idx, lengths) for rows, idx, lengths in streams]
    k = torch.cat([p[0] for p in parts], 1)
    valid = torch.cat([p[1] for p in parts], 1).unsqueeze(1)  # [T, 1, K]
    s = scale * torch.einsum("thd,tkd->thk", q, k)
    c = torch.where(valid, s, torch.full_like(s, -1e300)).amax(-1, keepdim=True).detach()  # [T, H, 1]
    c = torch.where(c > -1e299, c, torch.zeros_like(c))
    e = torch.exp(torch.where(valid, s - c, torch.full_like(s, -1e300)))
    z = e.sum(-1)  # [T, H]
    lse = torch.where(z > 0, c.squeeze(-1) + torch.log(torch.where(z > 0, z, torch.ones_like(z))),
                      torch.full_like(z, float("-inf")))  # fmt: skip
    denom = z if sink is None else z + torch.exp(sink.unsqueeze(0) - c.squeeze(-1))
    safe = torch.where(denom > 0, denom, torch.ones_like(denom))
    out = torch.einsum("thk,tkd->thd", e, k) / safe.unsqueeze(-1)
    return out, lse


def _case(g, T=5, H=3, D=24, n1=11, n2=9, K1=4, K2=6, paged=False):
    q = torch.randn(T, H, D, generator=g)
    kv = torch.randn(n1, D, generator=g)
    extra = torch.randn(n2, D, generator=g)
    idx = torch.randint(-2, n1 + 2, (T, K1), generator=g, dtype=torch.int32)  # invalid and out-of-range
    eidx = torch.randint(0, n2, (T, K2), generator=g, dtype=torch.int32)
    eidx[:, -1] = eidx[:, 0]  # a repeated index in every row
    idx[1] = -1  # a row without window keys
    elen = torch.randint(0, K2 + 2, (T,), generator=g, dtype=torch.int32)
    elen[2] = 0
    idx[2] = -1  # token 2: no key at all (out 0, lse -inf)
    sink = torch.randn(H, generator=g)
    return q, kv, idx, extra, eidx, elen, sink


def _loss_grads(fn, xs, g_out, g_lse):
    xs = [x.detach().clone().requires_grad_() for x in xs]
    out, lse = fn(*xs)
    loss = (out.double() * g_out).sum() + (lse.double().nan_to_num(neginf=0.0) * g_lse).sum()
    loss.backward()
    return [x.grad for x in xs]


def _bound(want, K, D):
    """fp32 gradients vs float64: sums of ~(K + D) products of O(1) terms, each rounded: a relative
    error of (K + D) u, doubled for the recomputed probabilities, over the largest gradient."""
    return 4 * (K + D + 8) * U32 * (float(want.abs().max()) + 1.0)


@pytest.mark.parametrize("paged", [False, True], ids=["flat", "paged"])
def test_gradients_match_float64_autograd(backend, paged):
    skip_unless_implements(OP, backend)
    g = torch.Generator().manual_seed(3 + paged)
    q, kv, idx, extra, eidx, elen, sink = _case(g)
    g_out = torch.randn(*q.shape, generator=g, dtype=torch.float64)
    g_lse = torch.randn(q.shape[:2], generator=g, dtype=torch.float64)
    scale = q.shape[-1] ** -0.5
    kv_in = kv.view(-1, 1, kv.shape[-1]) if paged else kv  # a paged pool with page size 1

    def run(q_, kv_, extra_, sink_):
        return call(longattn.sparse_attention, q_, kv_, dev(idx)[0], extra_kv=extra_, extra_indices=dev(eidx)[0],
                    extra_topk_length=dev(elen)[0], attn_sink=sink_, backend=backend)  # fmt: skip

    got = _loss_grads(run, dev(q, kv_in, extra, sink), *dev(g_out, g_lse))
    want = _loss_grads(
        lambda q_, kv_, extra_, sink_: dense64(q_, [(kv_, idx, None), (extra_, eidx, elen)], sink_, scale),
        [x.double() for x in (q, kv, extra, sink)], g_out, g_lse,
    )  # fmt: skip
    K = idx.shape[1] + eidx.shape[1]
    for name, a, b in zip(("q", "kv", "extra_kv", "attn_sink"), got, want):
        a = a.reshape(b.shape).double().cpu()
        assert (a - b).abs().max() <= _bound(b, K, q.shape[-1]), f"d{name}: {(a - b).abs().max():.3e}"
    assert bool((got[0][2] == 0).all())  # token 2 used no key: no gradient for its q


def test_float64_gradcheck():
    """backward.py against numerical derivatives of the float64 forward (gradcheck's own test)."""
    g = torch.Generator().manual_seed(11)
    q, kv, idx, extra, eidx, elen, sink = _case(g, T=3, H=2, D=6, n1=5, n2=4, K1=3, K2=4)
    scale = 0.7

    class Fn(torch.autograd.Function):
        @staticmethod
        def forward(ctx, q_, kv_, extra_, sink_):
            with torch.no_grad():
                out, lse = dense64(q_, [(kv_, idx, None), (extra_, eidx, elen)], sink_, scale)
            ctx.save_for_backward(q_, kv_, extra_, sink_, lse)
            return out, lse

        @staticmethod
        def backward(ctx, dout, dlse):
            q_, kv_, extra_, sink_, lse = ctx.saved_tensors
            dq, drows, dsink = sparse_attention_backward(
                q_, [(kv_, idx, None), (extra_, eidx, elen)], sink_, scale, lse, dout, dlse.nan_to_num(0.0)
            )
            return dq, drows[0], drows[1], dsink

    args = [x.double().requires_grad_() for x in (q, kv, extra, sink)]
    # lse is -inf on the empty row: gradcheck perturbs only finite outputs meaningfully, so check out
    # and lse of the rows with keys (a wrapper drops the empty row's lse).
    assert torch.autograd.gradcheck(lambda *a: (Fn.apply(*a)[0], Fn.apply(*a)[1][[0, 1]]), args, eps=1e-6, atol=1e-7)


@pytest.mark.parametrize("sink_value", [float("inf"), float("-inf")])
def test_infinite_sinks(backend, sink_value):
    """+inf sink: out is 0 whatever the keys (only lse carries a gradient), dsink 0; -inf: no sink."""
    skip_unless_implements(OP, backend)
    g = torch.Generator().manual_seed(5)
    q, kv, idx, extra, eidx, elen, _ = _case(g)
    sink = torch.full((q.shape[1],), sink_value)
    g_out = torch.randn(*q.shape, generator=g, dtype=torch.float64)
    g_lse = torch.randn(q.shape[:2], generator=g, dtype=torch.float64)

    def run(q_, kv_, sink_):
        return call(longattn.sparse_attention, q_, kv_, dev(idx)[0], extra_kv=dev(extra)[0], extra_indices=dev(eidx)[0],
                    extra_topk_length=dev(elen)[0], attn_sink=sink_, backend=backend)  # fmt: skip

    got = _loss_grads(run, dev(q, kv, sink), *dev(g_out, g_lse))
    scale = q.shape[-1] ** -0.5
    use_out = 0.0 if sink_value > 0 else 1.0
    want = _loss_grads(
        lambda q_, kv_: dense64(q_, [(kv_, idx, None), (extra.double(), eidx, elen)], None, scale),
        [q.double(), kv.double()], g_out * use_out, g_lse,
    )  # fmt: skip
    for a, b in zip(got[:2], want):
        assert (a.double().cpu() - b).abs().max() <= _bound(b, 10, q.shape[-1])
    assert bool((got[2] == 0).all())


def test_large_logits_stay_finite(backend):
    skip_unless_implements(OP, backend)
    skip_if_emulated(backend, "a gradient check")
    g = torch.Generator().manual_seed(8)
    q, kv, idx, extra, eidx, elen, sink = _case(g)
    q = q * 30  # logits of several hundred: exp would overflow without the saved lse
    got = _loss_grads(
        lambda q_, kv_: call(longattn.sparse_attention, q_, kv_, dev(idx)[0], attn_sink=dev(sink)[0], backend=backend),
        dev(q, kv), *dev(torch.ones(q.shape, dtype=torch.float64), torch.zeros(q.shape[:2], dtype=torch.float64)),
    )  # fmt: skip
    assert all(bool(torch.isfinite(x).all()) for x in got)


def test_backward_is_deterministic():
    g = torch.Generator().manual_seed(2)
    q, kv, idx, extra, eidx, elen, sink = _case(g, T=40, K2=16)
    eidx.fill_(3)  # every token adds into the same row: the order of the sums must not vary

    def grads():
        return _loss_grads(
            lambda q_, e_: longattn.sparse_attention(q_, kv, idx, extra_kv=e_, extra_indices=eidx, attn_sink=sink),
            [q, extra], torch.ones(q.shape, dtype=torch.float64), torch.zeros(q.shape[:2], dtype=torch.float64),
        )  # fmt: skip

    a, b = grads(), grads()
    assert all(torch.equal(x, y) for x, y in zip(a, b))


def test_opcheck_with_gradients():
    g = torch.Generator().manual_seed(4)
    q, kv, idx, extra, eidx, elen, sink = _case(g)
    args = (q.requires_grad_(), kv.requires_grad_(), 0, idx, None, extra.requires_grad_(), 0, eidx, elen,
            sink.requires_grad_(), 0.2, "reference")  # fmt: skip
    torch.library.opcheck(torch.ops.longattn.sparse_attention.default, args)


def test_fp8_pool_refuses_backward():
    q = torch.randn(2, 2, 512, requires_grad=True)
    pool = longattn.Fp8KVPool.empty(2, 4, torch.device("cpu"))
    longattn.append_kv(pool, torch.randn(8, 512), torch.arange(8, dtype=torch.int32))
    out, _ = longattn.sparse_attention(q, pool, torch.tensor([[0, 5], [7, -1]], dtype=torch.int32))
    with pytest.raises(NotImplementedError, match="FP8 pool"):
        out.sum().backward()
