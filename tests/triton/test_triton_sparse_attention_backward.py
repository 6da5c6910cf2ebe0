"""The Triton backward of sparse_attention (ops/sparse_attention/triton_backward.py) against the PyTorch
backward (backward.py, itself checked against float64 autograd in tests/ops) under the interpreter:
several head blocks, head-dim tiles and key blocks, both streams, repeated / invalid / out-of-range
indices, partial and zero lengths, empty rows, +-inf and absent sinks; the deterministic (workspace)
path equals the atomic one and reruns bit-identically."""

import pytest
import torch
from longattn.ops.sparse_attention import triton_backward as tri_bwd

from tests.helpers.device import CAN_RUN_TRITON, DEVICE, INTERPRET, TRITON_SKIP_REASON
from tests.helpers.sparse import backward_case, check_triton_backward, forward_for_backward

pytestmark = pytest.mark.skipif(not CAN_RUN_TRITON, reason=TRITON_SKIP_REASON)


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
    check_triton_backward(backward_case(T * H + D, T, H, D, 13, 11, K1, K2, sink))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_16bit_inputs(dtype):
    """q, pools and dout in one 16-bit dtype: on a GPU q.k^T and dout.k^T run on those inputs (tensor
    cores; triton_backward.compute_dtype), the other products in fp32; the interpreter widens them
    all (its bf16 dots are wrong), so there this checks the 16-bit loads and the 16-bit tiles."""
    from longattn.ops.sparse_attention.triton_backward import compute_dtype

    q, kv = torch.zeros(1, 1, 8, dtype=dtype), torch.zeros(3, 8, dtype=dtype)
    assert compute_dtype(q, q, [kv, kv]) == (torch.float32 if INTERPRET else dtype)
    assert compute_dtype(q, q, [kv, kv.float()]) == torch.float32  # mixed: widened
    assert compute_dtype(q.float(), q.float(), [kv.float()]) == torch.float32
    check_triton_backward(backward_case(11, 4, 20, 100, 13, 11, 7, 40, "finite"), dtype=dtype)


def test_deterministic_path_reruns_bit_identically():
    q, kv, idx, extra, eidx, elen, s, dout, dlse = backward_case(3, 6, 4, 32, 5, 4, 6, 9, "finite")
    eidx.fill_(2)  # every token adds into one row
    out, lse = forward_for_backward(q, kv, idx, extra, eidx, elen, s, 0.3)
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
