"""The Triton backward of sparse_attention (ops/sparse_attention/triton_backward.py) against the PyTorch
backward (backward.py, itself checked against float64 autograd in tests/ops) under the interpreter:
several head blocks, head-dim tiles and key blocks, both streams, repeated / invalid / out-of-range
indices, partial and zero lengths, empty rows, +-inf and absent sinks; the deterministic (workspace)
path equals the atomic one and reruns bit-identically."""

import pytest
import torch
from longattn.ops.sparse_attention import backward as ref_bwd
from longattn.ops.sparse_attention import triton_backward as tri_bwd

from tests.helpers.device import CAN_RUN_TRITON, DEVICE, TRITON_SKIP_REASON

pytestmark = pytest.mark.skipif(not CAN_RUN_TRITON, reason=TRITON_SKIP_REASON)
U32 = 2.0**-24


def _case(seed, T, H, D, n1, n2, K1, K2, sink):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(T, H, D, generator=g)
    kv, extra = torch.randn(n1, D, generator=g), torch.randn(n2, D, generator=g)
    idx = torch.randint(-2, n1 + 3, (T, K1), generator=g, dtype=torch.int32)
    eidx = torch.randint(0, n2, (T, K2), generator=g, dtype=torch.int32)
    if K2 > 1:
        eidx[:, 1] = eidx[:, 0]  # repeated
    elen = torch.randint(0, K2 + 2, (T,), generator=g, dtype=torch.int32)
    if T > 2:
        idx[1], elen[1] = -1, 0  # a token without any key
    s = {"none": None, "finite": torch.randn(H, generator=g), "+inf": torch.full((H,), float("inf")),
         "-inf": torch.full((H,), float("-inf"))}[sink]  # fmt: skip
    dout, dlse = torch.randn(T, H, D, generator=g), torch.randn(T, H, generator=g)
    return q, kv, idx, extra, eidx, elen, s, dout, dlse


def _forward(q, kv, idx, extra, eidx, elen, sink, scale):
    import longattn

    return longattn.sparse_attention(q, kv, idx, extra_kv=extra, extra_indices=eidx, extra_topk_length=elen,
                                     attn_sink=sink, softmax_scale=scale, backend="reference")  # fmt: skip


@pytest.mark.parametrize(
    "T,H,D,K1,K2,sink",
    [
        (5, 3, 24, 4, 6, "finite"),
        (4, 20, 100, 7, 40, "finite"),  # 2 head blocks, 2 head-dim tiles (64 + 36 masked), 3 key blocks
        (3, 16, 64, 0, 17, "none"),  # no window keys at all
        (4, 5, 32, 5, 5, "+inf"),
        (4, 5, 32, 5, 5, "-inf"),
    ],
)
def test_matches_the_pytorch_backward(T, H, D, K1, K2, sink):
    q, kv, idx, extra, eidx, elen, s, dout, dlse = _case(T * H + D, T, H, D, 13, 11, K1, K2, sink)
    scale = D**-0.5
    out, lse = _forward(q, kv, idx, extra, eidx, elen, s, scale)
    streams = [(kv, idx, None), (extra, eidx, elen)]
    want = ref_bwd.sparse_attention_backward(q, streams, s, scale, lse, dout, dlse)
    dev = [
        x.to(DEVICE) if isinstance(x, torch.Tensor) else x
        for x in (q, kv, idx, extra, eidx, elen, s, out, lse, dout, dlse)
    ]
    q_, kv_, idx_, extra_, eidx_, elen_, s_, out_, lse_, dout_, dlse_ = dev
    for deterministic in (False, True):
        got = tri_bwd.sparse_attention_backward(q_, [(kv_, idx_, None), (extra_, eidx_, elen_)], s_, scale, out_, lse_,
                                                dout_, dlse_, deterministic=deterministic)  # fmt: skip
        # fp32 both ways, different summation orders: sums of <= K + D products, O(10) terms
        tol = 8 * (K1 + K2 + D + 8) * U32
        for name, a, b in (("dq", got[0], want[0]), ("dkv", got[1][0], want[1][0]), ("dextra", got[1][1], want[1][1])):
            err = (a.cpu() - b).abs().max().item() if b.numel() else 0.0
            assert err <= tol * (1 + b.abs().max().item() if b.numel() else 1), f"{name} det={deterministic}: {err:.3e}"
        if want[2] is not None:
            assert torch.allclose(got[2].cpu(), want[2], atol=tol, rtol=tol)
        if T > 2:
            assert bool((got[0][1] == 0).all())  # token 1 used no key


def test_deterministic_path_reruns_bit_identically():
    q, kv, idx, extra, eidx, elen, s, dout, dlse = _case(3, 6, 4, 32, 5, 4, 6, 9, "finite")
    eidx.fill_(2)  # every token adds into one row
    out, lse = _forward(q, kv, idx, extra, eidx, elen, s, 0.3)
    args = [
        x.to(DEVICE) if isinstance(x, torch.Tensor) else x
        for x in (q, kv, idx, extra, eidx, elen, s, out, lse, dout, dlse)
    ]
    q_, kv_, idx_, extra_, eidx_, elen_, s_, out_, lse_, dout_, dlse_ = args

    def run():
        return tri_bwd.sparse_attention_backward(q_, [(kv_, idx_, None), (extra_, eidx_, elen_)], s_, 0.3, out_, lse_,
                                                 dout_, dlse_, deterministic=True)  # fmt: skip

    a, b = run(), run()
    assert torch.equal(a[0], b[0]) and all(torch.equal(x, y) for x, y in zip(a[1], b[1]))
