"""sparse_attention on the Ascend C kernels with the keys split over the AI cores (ops/sparse_attention/
ascend.py: a decode batch smaller than the core count runs each token's key chunks as tokens of their
own in fp32, merges the partial states with the merge kernel and applies the sink once). Forced here with
small chunks and 8 emulated cores; the shared op cases are compared with the float64 oracle as the op
tests do (fp32 bounds; bf16 / fp16 within the low-precision rule)."""

import longattn
import pytest
import torch
from longattn.backends import ascend_sim
from longattn.ops.sparse_attention import ascend as sparse_ascend

from tests.helpers.sparse import check_sparse
from tests.ops.cases import SPARSE_CASES, TILING_CASES, SparseCase, make_sparse_inputs

pytestmark = pytest.mark.skipif(
    ascend_sim.BACKEND.unavailable is not None, reason=f"ascend_sim: {ascend_sim.BACKEND.unavailable}"
)
SIM = "ascend_sim"
# The shared cases of up to 3 tokens (2 chunks each on 8 cores), and single tokens cut into 8 chunks
# (three merge levels, chunks without any valid key, partial lengths ending in any chunk).
CASES = [c for c in SPARSE_CASES + TILING_CASES if c.T <= 3 and c.D <= 256] + [
    SparseCase("t1_8_chunks", T=1, H=5, D=64, N=300, K=250, N2=40, K2=37, lengths="partial", sink="mixed"),
    SparseCase("t1_8_chunks_fp16", T=1, H=3, D=128, N=90, K=70, N2=30, K2=12, dtype=torch.float16, sink="finite"),
    SparseCase("t1_8_chunks_invalid", T=1, H=2, D=64, N=50, K=64, pattern="all_invalid", N2=20, K2=9),
    SparseCase("t2_d512_bf16", T=2, H=4, D=512, N=80, K=70, N2=40, K2=33, dtype=torch.bfloat16, lengths="partial",
               sink="finite"),
]  # fmt: skip


@pytest.fixture(autouse=True)
def small_chunks(monkeypatch):
    monkeypatch.setenv("LONGATTN_ASCEND_SIM_CORES", "8")
    monkeypatch.setattr(sparse_ascend, "SPLIT_MIN_KEYS", 4)


@pytest.mark.parametrize("case", CASES, ids=str)
def test_split_kv_matches_oracle(case):
    args = make_sparse_inputs(case)
    ext = ascend_sim.extension()
    ext.take_launch_work()
    out, lse = longattn.sparse_attention(**args, backend=SIM)
    launches = ext.take_launch_work()
    check_sparse(out, lse, args, case.name, SIM)
    if case.T and case.K + case.K2 >= 8:  # the split path: attention on more cores, then merges (+ sink)
        assert launches[0]["block_dim"] > case.T and len(launches) >= 2, [l["block_dim"] for l in launches]
