"""sparse_attention on the Ascend C kernels with the keys split over the AI cores (ops/sparse_attention/
ascend.py: a decode batch smaller than the core count runs each token's key chunks as tokens of their
own in fp32, then one merge_partial_states launch merges the S partial states and applies the sink).
Forced here with small chunks and 8 emulated cores; the shared op cases are compared with the float64
oracle as the op tests do (fp32 bounds; bf16 / fp16 within the low-precision rule), and the split path
is checked to make exactly two launches (attention, then the one merge)."""

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
# (8 partials per row, chunks without any valid key, partial lengths ending in any chunk).
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
    if case.T and case.K + case.K2 >= 8:  # the split path: attention on more cores, then ONE merge (+ sink)
        assert launches[0]["block_dim"] > case.T, [l["block_dim"] for l in launches]
        assert len(launches) == 2 and launches[1]["kind"] == "vector", [(l["kind"], l["block_dim"]) for l in launches]
        rows = case.T * case.H  # the merge's rows over the 16 vector cores, in contiguous ranges
        assert launches[1]["block_dim"] == -(-rows // -(-rows // min(2 * 8, rows)))


def test_split_count_is_capped_at_the_merge_kernels_maximum():
    """S never exceeds what one merge_partial_states launch merges (meta tensors: shapes only)."""
    from types import SimpleNamespace

    from longattn.ops.combine import ascend as combine_ascend

    meta = dict(device="meta")
    inp = SimpleNamespace(q=torch.empty(1, 64, 512, dtype=torch.bfloat16, **meta), kv=torch.empty(8, 512, **meta),
                          extra_kv=None, indices=torch.empty(1, 1 << 20, dtype=torch.int32, **meta),
                          extra_indices=None)  # fmt: skip
    assert sparse_ascend.split_count(inp, 100_000) == combine_ascend.MAX_PARTIALS
    assert 1 < sparse_ascend.split_count(inp, 24) <= 24


def test_split_into_the_maximum_number_of_partials(monkeypatch):
    """One token over 64 emulated cores: 64 chunks (the merge kernel's maximum), many of them empty."""
    from longattn.ops.combine import ascend as combine_ascend

    S = combine_ascend.MAX_PARTIALS
    monkeypatch.setenv("LONGATTN_ASCEND_SIM_CORES", str(S))
    case = SparseCase("t1_64_chunks", T=1, H=3, D=64, N=400, K=300, N2=50, K2=40, lengths="partial", sink="mixed")
    args = make_sparse_inputs(case)
    ext = ascend_sim.extension()
    ext.take_launch_work()
    out, lse = longattn.sparse_attention(**args, backend=SIM)
    launches = ext.take_launch_work()
    check_sparse(out, lse, args, case.name, SIM)
    assert [l["block_dim"] for l in launches] == [S, 3], [(l["kind"], l["block_dim"]) for l in launches]
