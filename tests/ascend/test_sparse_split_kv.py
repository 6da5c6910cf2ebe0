"""sparse_attention on the Ascend C kernels with the keys split over the AI cores (ops/sparse_attention/
ascend.py: a decode batch smaller than the core count runs each token's key chunks as tokens of their
own, in q's compute dtype (bf16 / fp16 q over pools of its dtype or, bf16, FP8: the unsplit path's
arithmetic) with the kernel's ``out_f32`` flag (fp32 partial outputs, unrounded), then one
merge_partial_states launch merges the S partial states and applies the sink).
Forced here with small chunks and 8 emulated cores; the shared op cases are compared with the float64
oracle as the op tests do (fp32, and kernels computing in fp32: the derived bounds; bf16 / fp16 computed
in q's dtype: the 2x rule against a low-precision run), low-precision splits also against the unsplit
kernel (the 2x rule with the unsplit kernel's own error as the base), and the split path is checked to
make exactly two launches (attention, then the one merge). The ``out_f32`` flag itself: the kernel-level
tests at the end."""

import longattn
import pytest
import torch
from longattn.backends import ascend_sim
from longattn.ops.sparse_attention import ascend as sparse_ascend

from tests.helpers.sparse import check_sparse, computes_in_fp32, fp8_pool, oracle_of
from tests.ops.cases import SPARSE_CASES, TILING_CASES, SparseCase, make_sparse_inputs
from tests.tolerance import assert_lowp_rule

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
    SparseCase("t1_8_chunks_bf16_empty", T=1, H=6, D=128, N=60, K=90, N2=20, K2=7, dtype=torch.bfloat16,
               lengths="partial", sink="mixed"),  # lengths end early: the later chunks hold no valid key
]  # fmt: skip


@pytest.fixture(autouse=True)
def small_chunks(monkeypatch):
    monkeypatch.setenv("LONGATTN_ASCEND_SIM_CORES", "8")
    monkeypatch.setattr(sparse_ascend, "SPLIT_MIN_KEYS", 4)


def _spy_launches(monkeypatch):
    """Record (q dtype, out_f32) of every sparse_attention kernel launch of the op."""
    calls = []
    launch = sparse_ascend._launch

    def spy(backend, q, *args, **kw):
        calls.append((q.dtype, kw.get("out_f32", False)))
        return launch(backend, q, *args, **kw)

    monkeypatch.setattr(sparse_ascend, "_launch", spy)
    return calls


def _unsplit(monkeypatch, args):
    """The same call on the unsplit path (one launch; chunks never worth their keys)."""
    with monkeypatch.context() as m:
        m.setattr(sparse_ascend, "SPLIT_MIN_KEYS", 1 << 30)
        return longattn.sparse_attention(**args, backend=SIM)


def check_split(monkeypatch, args, what):
    """Run ``args`` split (asserted: the kernel ran in q's dtype with fp32 out, or q widened where the pools
    need fp32), check it against the oracle (check_sparse's rule) and, computed in a low-precision dtype,
    against the unsplit kernel: max |split - oracle| <= 2 max |unsplit - oracle| + floor (the same
    arithmetic per key, P rounded to q's dtype against a per-chunk instead of a per-row max, partial
    outputs merged in fp32 and rounded once: no worse than the unsplit rounding errors twice over).
    Returns the launches' work counters."""
    calls = _spy_launches(monkeypatch)
    ext = ascend_sim.extension()
    ext.take_launch_work()
    out, lse = longattn.sparse_attention(**args, backend=SIM)
    launches = ext.take_launch_work()
    check_sparse(out, lse, args, what, SIM)
    q = args["q"]
    if len(launches) == 2:  # split: q passed in its own dtype, the partials written as fp32
        assert calls == [(q.dtype, True)], calls
    if len(launches) == 2 and q.dtype != torch.float32 and not computes_in_fp32(SIM, args):
        ref_out, _ = oracle_of(args)
        base, base_lse = _unsplit(monkeypatch, args)
        vmax = max(float(args["kv"].abs().max()) if isinstance(args["kv"], torch.Tensor) else 0.0, 1.0)
        assert_lowp_rule(out, ref_out, base, f"{what}: split vs unsplit", value_max=vmax)
    return launches


@pytest.mark.parametrize("case", CASES, ids=str)
def test_split_kv_matches_oracle(case, monkeypatch):
    args = make_sparse_inputs(case)
    launches = check_split(monkeypatch, args, case.name)
    if case.T and case.K + case.K2 >= 8:  # the split path: attention on more cores, then ONE merge (+ sink)
        assert launches[0]["block_dim"] > case.T, [l["block_dim"] for l in launches]
        assert len(launches) == 2 and launches[1]["kind"] == "vector", [(l["kind"], l["block_dim"]) for l in launches]
        rows = case.T * case.H  # the merge's rows over the 16 vector cores, in contiguous ranges
        assert launches[1]["block_dim"] == -(-rows // -(-rows // min(2 * 8, rows)))


@pytest.mark.parametrize("H", [64, 128])
def test_split_v4_shapes_bf16(H, monkeypatch):
    """V4's D = 512 with 64 / 128 heads, bf16 q over bf16 pools (a window and a compressed stream with a
    length, sink): split into 8 / 4 chunks of one token (8 cores, one or two head groups of 64 heads, the
    tiling of bf16, not fp32's 48), computed in bf16."""
    g = torch.Generator().manual_seed(H)
    D, N, N2 = 512, 96, 160
    args = dict(q=torch.randn(1, H, D, generator=g).bfloat16(), kv=torch.randn(N, D, generator=g).bfloat16(),
                indices=torch.randint(-1, N, (1, 48), generator=g).int(), topk_length=None,
                extra_kv=torch.randn(N2, D, generator=g).bfloat16(),
                extra_indices=torch.randint(0, N2, (1, 150), generator=g).int(),
                extra_topk_length=torch.tensor([131], dtype=torch.int32),
                attn_sink=torch.randn(H, generator=g), softmax_scale=None)  # fmt: skip
    launches = check_split(monkeypatch, args, f"v4 H={H}")
    groups = H // 64
    assert [l["block_dim"] for l in launches][:1] == [8 // groups * groups], launches[0]["block_dim"]
    assert len(launches) == 2


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_split_fp8_pool(dtype, monkeypatch):
    """An FP8 compressed pool (pages of 64 records) with a window of q's dtype, split into 8 chunks: bf16 q
    computes in bf16 (FP8 records convert into it exactly), fp16 q in fp32 (q widened by the host; the fp32
    bound)."""
    g = torch.Generator().manual_seed(5)
    H, D = 16, 512
    pool = fp8_pool(4, 64, g)
    idx = torch.randint(0, pool.num_slots, (1, 200), generator=g).int()
    idx[0, 20:60] = torch.arange(100, 140, dtype=torch.int32)  # a run of consecutive slots across a page end
    idx[0, 150:] = -1  # the last chunks hold no valid key
    args = dict(q=(torch.randn(1, H, D, generator=g) * 0.01).to(dtype), kv=pool, indices=idx, topk_length=None,
                extra_kv=torch.randn(40, D, generator=g).to(dtype),
                extra_indices=torch.tensor([[0, 1, 2, 3, 4, 5, -1, -1]], dtype=torch.int32), extra_topk_length=None,
                attn_sink=torch.randn(H, generator=g), softmax_scale=None)  # fmt: skip
    assert computes_in_fp32(SIM, args) == (dtype == torch.float16)
    assert len(check_split(monkeypatch, args, f"fp8 {dtype}")) == 2


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


def test_split_count_uses_the_compute_dtypes_tiling():
    """The task count behind S is the tiling of the dtype the kernel computes in (with fp32 out): V4-Flash
    (H = 64, D = 512) bf16 over bf16 or FP8 pools is one head group of 64 (24 chunks on 24 cores); fp32 q,
    or fp16 q over an FP8 pool (computed in fp32), has Mg <= 48: two head groups, 12 chunks."""
    from types import SimpleNamespace

    from longattn.cache import Fp8KVPool
    from longattn.cache.fp8 import page_bytes

    meta = dict(device="meta")
    fp8 = Fp8KVPool(torch.empty(4, page_bytes(64), dtype=torch.uint8, **meta), 64)
    idx = torch.empty(1, 1 << 16, dtype=torch.int32, **meta)
    for dtype, kv, want in ((torch.bfloat16, torch.empty(8, 512, dtype=torch.bfloat16, **meta), 24),
                            (torch.bfloat16, fp8, 24), (torch.float32, torch.empty(8, 512, **meta), 12),
                            (torch.float16, fp8, 12)):  # fmt: skip
        inp = SimpleNamespace(q=torch.empty(1, 64, 512, dtype=dtype, **meta), kv=kv, extra_kv=None, indices=idx,
                              extra_indices=None)  # fmt: skip
        assert sparse_ascend.split_count(inp, 24) == want, (dtype, kv)


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


# ---------------------------------------------------------------------------------------------------
# the kernel's out_f32 flag (what the split path launches with)
# ---------------------------------------------------------------------------------------------------
def _kernel(args, out_f32, cores=3):
    """The raw kernel entry (the emulator extension), as ops/sparse_attention/ascend.py calls it."""
    from longattn.ops import pools

    kv, kv_page = pools.to_schema(args["kv"])
    extra, extra_page = pools.to_schema(args.get("extra_kv"))
    D = args["q"].shape[-1]
    return ascend_sim.extension().sparse_attention(
        args["q"], kv, kv_page, args["indices"], args.get("topk_length"), extra, extra_page,
        args.get("extra_indices"), args.get("extra_topk_length"), args.get("attn_sink"), D**-0.5, out_f32, cores,
    )  # fmt: skip


def _out_f32_args(dtype, H, D, fp8=False):
    g = torch.Generator().manual_seed(H + D)
    T, N = 4, 150
    kv = fp8_pool(3, 64, g) if fp8 else torch.randn(N, D, generator=g).to(dtype)
    n = kv.num_slots if fp8 else N
    idx = torch.randint(-2, n + 2, (T, 160), generator=g).int()  # invalid entries of both kinds
    idx[2] = -1  # a token without valid keys: out 0, lse -inf
    eidx = torch.randint(0, 30, (T, 9), generator=g).int()
    eidx[2] = -1
    q = torch.randn(T, H, D, generator=g) * (0.01 if fp8 else 1.0)
    q[1, H - 1, 3] = float("nan")  # a NaN logit: that (token, head) NaN
    return dict(q=q.to(dtype), kv=kv, indices=idx, topk_length=torch.tensor([160, 97, 5, 129], dtype=torch.int32),
                extra_kv=torch.randn(30, D, generator=g).to(dtype),
                extra_indices=eidx, extra_topk_length=None, attn_sink=torch.randn(H, generator=g))  # fmt: skip


@pytest.mark.parametrize(
    "dtype,H,D,fp8",
    [(torch.bfloat16, 64, 512, False), (torch.bfloat16, 128, 512, True), (torch.float16, 20, 128, False),
     (torch.float16, 5, 512, True), (torch.float32, 7, 128, False)],
    ids=["bf16-h64-d512", "bf16-fp8-h128", "fp16-h20-d128", "fp16-fp8-fp32compute", "fp32"],
)  # fmt: skip
def test_out_f32_writes_acc_times_factor_unrounded(dtype, H, D, fp8):
    """out_f32 = True writes out as fp32 rows, every element (the host poisons out with NaN: only the NaN
    head may be NaN), and they are exactly ``acc * factor`` before the rounding: rounding them to q's dtype
    (torch's round-to-nearest-even) gives the normal launch's out bit for bit, lse identical. Why exactly:
    both launches have the same compute dtype, heads per task, key block and D slice (asserted from the
    tiling; only the UB of the output chunks grows, which may halve the gather tile, a pure row copy /
    decode), so every instruction up to End of task runs on the same values; there the normal launch
    writes Cast(acc * factor, RINT) (or, computing in fp32 for a 16-bit q, the host rounds the fp32 out
    with torch's RNE), and out_f32 writes acc * factor itself. A flag that computed in fp32, or rounded
    the fp32 rows, would break the equality (or, for a dropped row, the NaN check)."""
    args = _out_f32_args(dtype, H, D, fp8)
    ext = ascend_sim.extension()
    code = sparse_ascend.DTYPE_CODE
    kinds = [sparse_ascend.pool_kind(args["kv"]), args["extra_kv"].dtype]
    tilings = [ext.sparse_attention_tiling(4, H, D, code[dtype], code[kinds[0]], code[kinds[1]], 3, out_f32=f)
               for f in (False, True)]  # fmt: skip
    for k in ("dtype", "heads_per_task", "block_keys", "k_tile"):
        assert tilings[0][k] == tilings[1][k], k
    dt = sparse_ascend.compute_dtype(dtype, kinds)
    assert tilings[1]["out_f32"] == (dt != torch.float32) and tilings[0]["out_f32"] == 0
    out, lse = _kernel(args, False)
    out32, lse32 = _kernel(args, True)
    assert out.dtype == dtype and out32.dtype == torch.float32 and out32.shape == out.shape
    nan = torch.zeros(out.shape, dtype=torch.bool)
    nan[1, H - 1] = True
    assert torch.equal(torch.isnan(out32), nan) and torch.equal(torch.isnan(out), nan)
    assert torch.equal(out32[2], torch.zeros_like(out32[2]))  # the token without keys
    assert torch.equal(torch.isnan(lse32), torch.isnan(lse)) and torch.equal(lse32.nan_to_num(), lse.nan_to_num())
    rounded = out32.to(dtype)
    assert torch.equal(rounded[~nan], out[~nan]), float((rounded.double() - out.double()).abs().max())
    if dtype != torch.float32:  # and the fp32 rows are not already rounded values (they carry more bits)
        assert not torch.equal(rounded.float()[~nan], out32[~nan])
