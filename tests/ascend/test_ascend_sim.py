"""The Ascend C kernels on the CPU emulator (``backend="ascend_sim"``): what is specific to them.

The op x backend tests (tests/ops) run every generic case on ``ascend_sim`` too: float pools and FP8
records of append_kv, the shared sparse cases and the tiling-crossing ones vs the float64 oracle
(fp32: derived bounds; bf16 / fp16: twice the error of a run rounding like the cube unit), compress_kv
over random chunk splits vs the reference, the indexer id for id, special values. Here: what the
backend declines (``reasons``, mirrored from the C++ tiling), the tiling mirror itself, the UB limit of
compress_kv, any number of emulated AI cores, availability and laziness, and the ``ascend`` (NPU)
entry points marshalled against the emulator build. The compress_pool kernel's own checks:
test_ascend_sim_compress_pool.py.

Outputs of the extension are poisoned with NaN before the kernel runs (and the workspace with 0xFF
bytes), so an element a kernel forgets to write fails the comparison. The emulator aborts the process
on any strict-check violation; the cases here are known to pass. Configurations that may abort
(AddressSanitizer, planted faults) run in subprocesses (test_ascend_sim_asan.py).
"""

from __future__ import annotations

import itertools
from types import SimpleNamespace

import longattn
import pytest
import torch
from longattn.backends import ascend_sim
from longattn.backends.registry import BackendError
from longattn.cache import quantize_kv_fp8
from longattn.cache.fp8 import page_bytes
from longattn.ops.compress import ascend as compress_ascend
from longattn.ops.op import get_op
from longattn.ops.sparse_attention import ascend as sa_ascend

from tests.helpers.compress import Cache, check_float_run, make_steps, run_both
from tests.helpers.dispatch import inputs, reasons
from tests.helpers.indexer import int_inputs
from tests.helpers.sparse import check_against_oracle
from tests.ops.cases import SparseCase, make_sparse_inputs
from tests.tolerance import OUT_ROUNDING

pytestmark = pytest.mark.skipif(
    ascend_sim.BACKEND.unavailable is not None, reason=f"ascend_sim: {ascend_sim.BACKEND.unavailable}"
)
SIM = "ascend_sim"
FLOATS = [torch.float32, torch.bfloat16, torch.float16]


def _int_inputs(g, T, Hi, Di, N, lo=-2, hi=3, dtype=torch.float32):
    return int_inputs(T, Hi, Di, N, lo, hi, dtype, g=g)


def _both(fn, *args, **kw):
    return fn(*args, backend=SIM, **kw), fn(*args, backend="reference", **kw)


# ----------------------------------------------------------------------------------------------------
# what the kernels decline, the tiling mirror, the UB limit
# ----------------------------------------------------------------------------------------------------
def test_append_kv_reasons():
    class Pool:  # a duck-typed pool the kernel cannot write
        num_slots, head_dim, device = 4, 8, torch.device("cpu")

        def write_rows(self, slots, rows):
            pass

    why = reasons(SIM, "append_kv", pool=Pool(), rows=torch.zeros(1, 8), slot_mapping=torch.zeros(1, dtype=torch.int32))
    assert why and "Pool" in why[0]


def test_sparse_attention_reasons():
    cpu = torch.device("cpu")
    q = torch.zeros(1, 2, 96)
    base = dict(
        q=q,
        kv=torch.zeros(4, 96),
        indices=torch.zeros(1, 1, dtype=torch.int32),
        topk_length=None,
        extra_kv=None,
        extra_indices=None,
        extra_topk_length=None,
        attn_sink=None,
        softmax_scale=0.1,
    )
    assert any("multiple of 64" in r for r in reasons(SIM, "sparse_attention", cpu, **base))
    # Pools of another float dtype and FP8 pools, in any mix, are taken (widened in the gather).
    q = torch.zeros(1, 2, 64)
    mixed = dict(base, q=q, kv=torch.zeros(4, 64, dtype=torch.bfloat16))
    assert reasons(SIM, "sparse_attention", cpu, **mixed) == []
    q512 = torch.zeros(1, 2, 512, dtype=torch.float16)
    fp8 = dict(base, q=q512, kv=longattn.Fp8KVPool.empty(1, 4), extra_kv=torch.zeros(3, 512),
               extra_indices=torch.zeros(1, 2, dtype=torch.int32))  # fmt: skip
    assert reasons(SIM, "sparse_attention", cpu, **fp8) == []
    # ... unless D does not fit the compute dtype's buffers (fp32 here, for the bf16 pool), ...
    wide = dict(base, q=torch.zeros(1, 2, 1536, dtype=torch.float16), kv=torch.zeros(4, 1536, dtype=torch.bfloat16))
    assert any("computes in fp32" in r for r in reasons(SIM, "sparse_attention", cpu, **wide))
    # ... or the FP8 pool is beyond int32 slots / page sizes (meta tensors: nothing is allocated).
    for pages, page in ((2**21 + 1, 1024), (1, 3_700_000)):
        pool = longattn.Fp8KVPool(torch.empty(pages, page_bytes(page), dtype=torch.uint8, device="meta"), page)
        inp = SimpleNamespace(q=q512, kv=pool, extra_kv=None)
        assert any("int32" in r and "`kv`" in r for r in sa_ascend.reasons(inp)), (pages, page)
    with pytest.raises(BackendError, match="ascend_sim"):
        longattn.sparse_attention(
            torch.zeros(1, 2, 96), torch.zeros(4, 96), torch.zeros(1, 1, dtype=torch.int32), backend=SIM
        )
    # CPU tensors never pick the emulator by default.
    assert SIM not in longattn.backends.registry.default_order(cpu)


@pytest.mark.parametrize("cap", [64, 128, 256])
@pytest.mark.parametrize("dtype", FLOATS, ids=str)
def test_sparse_attention_tiling_mirror(monkeypatch, dtype, cap):
    """The Python reasons() mirror of the tiling agrees with the C++ tiling (ascend_c/.../op_host), for
    every mix of pool kinds (float pools of each dtype, FP8 pools; one or two streams) and key-block cap
    (LONGATTN_SA_BLOCK_KEYS), with out in the compute dtype and as fp32 rows (out_f32, the split-KV
    partials: fp32 output chunks in the UB): the compute dtype, the conversion buffers, the heads per task,
    the key block, gather tile, D slice and the UB / L1 bytes."""
    monkeypatch.setenv("LONGATTN_SA_BLOCK_KEYS", str(cap))
    ext = ascend_sim.extension()
    code = sa_ascend.DTYPE_CODE
    kinds = FLOATS + [sa_ascend.FP8]
    for kv in kinds:
        for extra in [None] + kinds:
            mix = [kv] + ([extra] if extra is not None else [])
            dt = sa_ascend.compute_dtype(dtype, mix)
            extra_code = -1 if extra is None else code[extra]
            for D, H, f32 in itertools.product((64, 128, 256, 512, 576, 640, 768, 1024, 1536),
                                               (1, 7, 16, 17, 48, 64, 128), (False, True)):  # fmt: skip
                t = ext.sparse_attention_tiling(1, H, D, code[dtype], code[kv], extra_code, 4, out_f32=f32)
                want = sa_ascend.sa_heads_per_task(H, D, dtype, mix, out_f32=f32)
                assert t["heads_per_task"] == want, (D, H, mix, f32)
                assert t["dtype"] == code[dt], mix
                assert t["has_fp8"] == (sa_ascend.FP8 in mix), mix
                assert t["out_f32"] == (f32 and dt != torch.float32), (mix, f32)
                mirror = sa_ascend.sa_tiling(H, D, dtype, mix, cap, out_f32=f32)
                if t["heads_per_task"]:
                    assert {k: t[k] for k in mirror} == mirror, (D, H, mix, f32)
                    assert t["block_keys"] <= cap and t["k_tile"] == t["d_chunk"]
                    assert t["ub_bytes"] <= sa_ascend.UB_BYTES and t["l1_bytes"] <= sa_ascend.L1_BYTES
                else:
                    assert mirror is None
    # V4 (bf16 queries over FP8 pools, D = 512) keeps the 64 heads per task of bf16 pools, with 128-key
    # blocks (two [256, 512] bf16 K tiles would fill the L1).
    assert sa_ascend.sa_heads_per_task(128, 512, torch.bfloat16, [sa_ascend.FP8, sa_ascend.FP8]) == 64
    for mix in ([torch.bfloat16], [sa_ascend.FP8, sa_ascend.FP8], [torch.bfloat16, sa_ascend.FP8]):
        assert sa_ascend.sa_tiling(128, 512, torch.bfloat16, mix, cap)["block_keys"] == min(cap, 128)
    # The split-KV partials (fp32 out rows: 2 x 4 x 512 x 2 B more UB) keep them too; over FP8 pools the gather
    # tiles halve to 8 rows at 128-key blocks (16 would need 195,904 B of the 188,160 B UB).
    for mix in ([torch.bfloat16], [sa_ascend.FP8, sa_ascend.FP8], [torch.bfloat16, sa_ascend.FP8]):
        t = sa_ascend.sa_tiling(128, 512, torch.bfloat16, mix, cap, out_f32=True)
        assert (t["heads_per_task"], t["block_keys"]) == (64, min(cap, 128)), mix
        assert t["gather_rows"] == (8 if sa_ascend.FP8 in mix and cap >= 128 else 16), mix


@pytest.mark.parametrize("overlap,dtype", [(False, torch.float32), (True, torch.float32), (False, torch.bfloat16)])
def test_compress_kv_ub_limit(overlap, dtype):
    """reasons() declines the entry widths whose buffers do not fit the UB (they used to abort the
    process with an emulator FATAL), and the widest accepted one runs. In a subprocess: a wrong mirror
    would end the process."""
    import subprocess
    import sys

    c = 2 if overlap else 1
    ub = compress_ascend.compress_ub_bytes
    fits = [d for d in range(8, 4097, 8) if ub(d, c * d, dtype.itemsize, 8, False, 4) <= sa_ascend.UB_BYTES]
    d_ok, d_bad = fits[-1], fits[-1] + 8
    assert d_bad <= 4096  # the old `d <= 4096` limit accepted it
    code = f"""
import torch, longattn, pytest
from longattn.backends import ascend_sim
from longattn.backends.registry import BackendError
from longattn.cache import quantize_kv_fp8
from longattn.cache.fp8 import page_bytes
for d in ({d_ok}, {d_bad}):
    c, T, ratio = {c}, 2, 2
    a = torch.randn(T, c * d).to({dtype}); b = torch.randn(T, c * d).to({dtype})
    kw = dict(ratio=ratio, overlap={overlap}, state=torch.zeros(1, c * ratio, 2 * c * d),
              state_block_table=torch.zeros(1, 1, dtype=torch.int32), out=torch.zeros(1, 2, d),
              out_block_table=torch.zeros(1, 1, dtype=torch.int32), norm_weight=torch.ones(d), eps=1e-6,
              rope_inv_freq=torch.ones(4))
    if d == {d_ok}:
        longattn.compress_kv(a, b, torch.arange(T), torch.zeros(T, dtype=torch.int32), backend="ascend_sim", **kw)
        assert kw["out"][0, 0].abs().sum() > 0  # entry 0 (position 1)
    else:
        with pytest.raises(BackendError, match="UB"):
            longattn.compress_kv(a, b, torch.arange(T), torch.zeros(T, dtype=torch.int32), backend="ascend_sim", **kw)
        with pytest.raises(RuntimeError, match="exceed the UB"):  # the extension's own check agrees
            ascend_sim.extension().compress_kv(
                a, b, torch.arange(T), torch.zeros(T, dtype=torch.int32), ratio, {overlap}, kw["state"],
                kw["state_block_table"], kw["out"], 0, kw["out_block_table"], kw["norm_weight"], 1e-6,
                kw["rope_inv_freq"], 4)
print("OK")
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0 and "OK" in proc.stdout, (proc.stdout + proc.stderr)[-3000:]


def test_indexer_reasons():
    cpu = torch.device("cpu")
    args = dict(
        q=torch.zeros(1, 2, 8),
        weights=torch.zeros(1, 2),
        index_k=torch.zeros(4, 8),
        visible_end=torch.zeros(1, dtype=torch.int32),
        topk=2000,
        block_table=None,
        seq_ids=None,
        return_slots=False,
    )
    why = reasons(SIM, "indexer_topk", cpu, **args)
    assert any("multiple of 16" in r for r in why) and any("topk=2000" in r for r in why)


# ----------------------------------------------------------------------------------------------------
# launch shapes: the same results for any number of emulated cores (task distribution, cross-core
# flag protocols with different interleavings)
# ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("cores", [1, 3, 7])
def test_any_core_count(cores, monkeypatch):
    monkeypatch.setenv("LONGATTN_ASCEND_SIM_CORES", str(cores))
    case = SparseCase("cores", T=5, H=20, D=64, N=150, K=140, N2=30, K2=20, lengths="partial", sink="mixed")
    args = make_sparse_inputs(case)
    out, lse = longattn.sparse_attention(**args, backend=SIM)
    check_against_oracle(out, lse, args, f"{cores} cores")
    g = torch.Generator().manual_seed(cores)
    q, w, k = _int_inputs(g, 6, 5, 32, 700, -1, 2)
    ve = torch.randint(0, 705, (6,), generator=g)
    (idx, ln), (ridx, rln) = _both(longattn.indexer_topk, q, w, k, ve, 70)
    assert torch.equal(idx, ridx) and torch.equal(ln, rln)
    seqs, steps = make_steps([29, 3, 18], 4, True, 24, seed=cores, decode_tail=True)
    ref, got = run_both(Cache(3, 4, True, 24, 3, 29, seed=cores), steps, SIM)
    check_float_run(ref, got, seqs)


# ----------------------------------------------------------------------------------------------------
# merge_attention_states / apply_attention_sink (ascend_c/combine): what the op tests (tests/ops/
# test_combine.py, tests/fuzz) do not reach with their small shapes: the row split over the vector cores,
# batches of lse values, chunks of rows, column tiles, both row-scaling forms, unread sides in runs
# ----------------------------------------------------------------------------------------------------
CODE = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2}
UB_BYTES = 192 * 1024 - 8 * 1024 - 256
INF = float("inf")


def _combine_tiling(mode, rows, H, D, dtype, cores=4):
    return ascend_sim.extension().combine_tiling(mode, rows, H, D, CODE[dtype], cores)


def test_combine_reasons():
    """Only what int32 offsets cannot address is declined (meta tensors: no memory)."""
    cpu = torch.device("cpu")

    def merge(T, H, D):
        o, lse = torch.empty(T, H, D, device="meta"), torch.empty(T, H, device="meta")
        return reasons(SIM, "merge_attention_states", cpu, out_a=o, lse_a=lse, out_b=o, lse_b=lse)

    def sink(T, H, D):
        o, lse, s = torch.empty(T, H, D, device="meta"), torch.empty(T, H, device="meta"), torch.empty(H, device="meta")
        return reasons(SIM, "apply_attention_sink", cpu, out=o, lse=lse, attn_sink=s)

    for why in (merge, sink):
        assert why(7, 3, 100000) == [] and why(0, 5, 3) == [] and why(2**20, 128, 1) == []
        assert any("2**31" in r for r in why(2**16, 128, 256))
        assert any("2**31" in r for r in why(2**24, 128, 0))  # T*H rows


@pytest.mark.parametrize("mode", [0, 1], ids=["merge", "sink"])
def test_combine_tiling_fits_the_ub(mode):
    """Every D gets a tiling within the UB (the emulator would abort otherwise) whose column tiles cover D."""
    for dtype in FLOATS:
        for D in (0, 1, 7, 16, 64, 100, 512, 576, 1000, 1024, 1025, 4096, 4097, 100000):
            t = _combine_tiling(mode, 1000, 8, D, dtype)
            assert t["block_dim"] == 8 and t["rows_per_core"] == 125
            assert t["ub_bytes"] <= UB_BYTES, (D, dtype, t)
            assert 1 <= t["chunk_rows"] <= 255 and 16 <= t["col_tile"] <= 1024 and t["col_tile"] % 16 == 0
            assert t["batch_rows"] % 64 == 0 and t["sink_table_len"] == 8 + t["batch_rows"]
            if D:
                tiles = -(-D // t["col_tile"])
                assert tiles == -(-D // 1024)  # as few column tiles as 1024-wide ones, near-equal widths


def _merge_case(T, H, D, dtype, seed, empty="runs"):
    """Random states with empty sides in runs of rows (whole chunks and single rows), both-empty rows,
    underflowing weights and NaN / +inf lse rows; the out of every side that is not read is NaN."""
    g = torch.Generator().manual_seed(seed)
    oa, ob = torch.randn(T, H, D, generator=g).to(dtype), torch.randn(T, H, D, generator=g).to(dtype)
    la, lb = torch.randn(T, H, generator=g) * 3, torch.randn(T, H, generator=g) * 3
    if empty == "runs":
        r = torch.arange(T * H).view(T, H)
        la[(r // 5) % 3 == 0] = -INF  # runs of 5 rows without keys on side a
        lb[(r // 7) % 4 == 1] = -INF  # runs of 7 on side b (some rows: both empty)
        lb[r % 11 == 3] = la[r % 11 == 3] - 200.0  # weight of b underflows to 0: never read either
        la[r % 97 == 50] = float("nan")
        lb[r % 89 == 20] = INF
        oa[torch.isneginf(la)] = float("nan")
        ob[torch.isneginf(lb) | (lb < la - 150)] = float("nan")
    return oa, la, ob, lb


def _assert_merge_matches_reference(oa, la, ob, lb, what):
    out, lse = longattn.merge_attention_states(oa, la, ob, lb, backend=SIM)
    ref, rlse = longattn.merge_attention_states(oa, la, ob, lb, backend="reference")
    rtol = 2 * OUT_ROUNDING[oa.dtype] + 4e-7  # exp / ln of the emulator's libm vs torch's
    assert torch.equal(torch.isnan(out), torch.isnan(ref)), what  # every element written (outputs are poisoned)
    torch.testing.assert_close(out.float(), ref.float(), rtol=rtol, atol=1e-6, equal_nan=True, msg=what)
    assert torch.equal(torch.isnan(lse), torch.isnan(rlse)), what
    torch.testing.assert_close(lse, rlse, rtol=1e-6, atol=1e-6, equal_nan=True, msg=what)
    return out, lse


def _assert_sink_matches_reference(out, lse, sink, what):
    got = longattn.apply_attention_sink(out, lse, sink, backend=SIM)
    ref = longattn.apply_attention_sink(out, lse, sink, backend="reference")
    rtol = 2 * OUT_ROUNDING[out.dtype] + 4e-7
    assert torch.equal(torch.isnan(got), torch.isnan(ref)), what
    torch.testing.assert_close(got.float(), ref.float(), rtol=rtol, atol=1e-6, equal_nan=True, msg=what)
    return got


# (T, H, D): rows fewer than the vector cores, one row, D = 1, rows not a multiple of the chunk (D = 200:
# 24 fp32 rows per chunk), several lse batches per core (T*H > 512 per core on 2 vector cores, H = 7:
# batches whose sink slices start at b0 mod H != 0), D over one column tile with a narrow last tile
# (the per-row scaling form), H > a batch.
SPLIT_CASES = [(1, 3, 40), (1, 1, 1), (3, 5, 1), (7, 11, 200), (160, 7, 3), (2, 3, 4097), (2, 600, 8), (9, 2, 1025)]


@pytest.mark.parametrize("cores", [1, 3, 7])
@pytest.mark.parametrize("dtype", FLOATS, ids=str)
def test_combine_row_split_and_tiles(cores, dtype, monkeypatch):
    monkeypatch.setenv("LONGATTN_ASCEND_SIM_CORES", str(cores))
    for i, (T, H, D) in enumerate(SPLIT_CASES):
        what = f"T={T} H={H} D={D} {dtype} on {2 * cores} vector cores"
        oa, la, ob, lb = _merge_case(T, H, D, dtype, seed=i)
        out, lse = _assert_merge_matches_reference(oa, la, ob, lb, what)
        g = torch.Generator().manual_seed(100 + i)
        sink = torch.randn(H, generator=g) * 2
        sink[::5] = INF
        sink[1::7] = -INF
        _assert_sink_matches_reference(out.nan_to_num(), lse, sink, what)
        # all finite, no empty side: every element of both outputs written (the host poisons them with NaN)
        oa, la, ob, lb = _merge_case(T, H, D, dtype, seed=i, empty="none")
        out, lse = longattn.merge_attention_states(oa, la, ob, lb, backend=SIM)
        assert not torch.isnan(out).any() and not torch.isnan(lse).any(), what
        got = longattn.apply_attention_sink(out, lse, torch.randn(H, generator=g), backend=SIM)
        assert not torch.isnan(got).any(), what


def test_combine_one_empty_side_is_exactly_the_other():
    """lse_b = -inf (or an underflowing weight): out is out_a bit for bit, lse is lse_a, whatever out_b
    holds; D = 4097 spans column tiles and both row-scaling forms."""
    for D, dtype in ((4097, torch.float32), (200, torch.bfloat16), (1, torch.float16)):
        g = torch.Generator().manual_seed(D)
        T, H = 40, 3
        oa = torch.randn(T, H, D, generator=g).to(dtype)
        la = torch.randn(T, H, generator=g) * 30
        lb = torch.full((T, H), -INF)
        lb[::2] = la[::2] - 120.0  # exp(-120) underflows in fp32
        ob = torch.full((T, H, D), float("nan"), dtype=dtype)
        out, lse = longattn.merge_attention_states(oa, la, ob, lb, backend=SIM)
        assert torch.equal(out, oa) and torch.equal(lse, la), (D, dtype)


def test_combine_lse_and_sink_dtypes():
    """bf16 / fp16 lse and sinks are widened exactly (as the reference does); strided inputs too."""
    g = torch.Generator().manual_seed(5)
    T, H, D = 6, 4, 72
    oa, ob = torch.randn(T, H, D, generator=g), torch.randn(T, H, D, generator=g)
    for ldt in (torch.bfloat16, torch.float16):
        la, lb = (torch.randn(T, H, generator=g) * 3).to(ldt), (torch.randn(T, H, generator=g) * 3).to(ldt)
        _assert_merge_matches_reference(
            oa.transpose(0, 1).contiguous().transpose(0, 1), la, ob, lb.t().contiguous().t(), str(ldt)
        )
        sink = torch.randn(H, generator=g).to(ldt)
        _assert_sink_matches_reference(oa, la, sink, str(ldt))


# ----------------------------------------------------------------------------------------------------
# availability, laziness
# ----------------------------------------------------------------------------------------------------
def test_unavailable_reasons_are_specific(monkeypatch, tmp_path):
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))
    assert "CXX=" in ascend_sim._unavailable() and "compiler" in ascend_sim._unavailable()
    monkeypatch.delenv("CXX")
    monkeypatch.setattr(ascend_sim.shutil, "which", lambda name: None)
    assert "no g++" in ascend_sim._unavailable()
    monkeypatch.undo()
    monkeypatch.setattr(ascend_sim, "CSRC", tmp_path)
    assert "sources are not present" in ascend_sim._unavailable()


def test_ascend_npu_backend_explains_itself_without_torch_npu():
    import importlib.util

    from longattn.backends import ascend

    if importlib.util.find_spec("torch_npu") is not None:
        pytest.skip("torch_npu is installed here")
    assert "torch_npu is not installed" in ascend.BACKEND.unavailable
    with pytest.raises(BackendError, match="torch_npu"):
        longattn.sparse_attention(
            torch.zeros(1, 1, 64), torch.zeros(2, 64), torch.zeros(1, 1, dtype=torch.int32), backend="ascend"
        )


def test_import_compiles_and_loads_nothing():
    import subprocess
    import sys

    code = (
        "import sys, longattn; longattn.info(); "
        "bad = [m for m in ('torch_npu', 'longattn_ascend_sim', 'torch.utils.cpp_extension') if m in sys.modules]; "
        "print('LOADED', bad)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "LOADED []" in proc.stdout, proc.stdout


def test_ascend_npu_entry_points_marshal_as_the_kernels_expect(monkeypatch):
    """The ``ascend`` backend's Python entry points (never run here: no NPU) against the emulator build:
    ``torch.ops.longattn_ascend.*`` (csrc/ascend_npu) takes the emulator extension's arguments minus the
    trailing AI-core count, so a shim that appends it must reproduce ``ascend_sim`` bit for bit."""
    from longattn.backends import ascend
    from longattn.cache import Fp8KVPool

    class Shim:
        def __getattr__(self, name):
            return lambda *args: getattr(ascend_sim.extension(), name)(*args, ascend_sim.num_cores())

    monkeypatch.setattr(ascend, "ops", lambda: Shim())

    def npu(op, **fields):  # the ascend backend's implementation of op, on these fields
        return get_op(op).impls["ascend"].function()(inputs(op, **fields))

    g = torch.Generator().manual_seed(0)

    args = make_sparse_inputs(SparseCase("m", T=2, H=3, D=64, N=30, K=12, N2=9, K2=5, sink="finite"))
    full = dict(topk_length=None, extra_kv=None, extra_indices=None, extra_topk_length=None, attn_sink=None)
    args["softmax_scale"] = 0.125
    got = npu("sparse_attention", **{**full, **args, "kv": args["kv"].reshape(-1, 64)})
    want = longattn.sparse_attention(**args, backend=SIM)
    assert all(torch.equal(a, b) for a, b in zip(got, want))
    # An FP8 pool crosses as (uint8 data, page size), a float pool as (tensor, 0), any mix.
    fp8_pool = quantize_kv_fp8(torch.randn(3, 5, 512, generator=g))
    idx = torch.tensor([[0, 14, -1, 3], [7, 7, 15, 2]], dtype=torch.int32)
    fp8_args = dict(full, q=torch.randn(2, 3, 512, generator=g).bfloat16(), kv=fp8_pool, indices=idx,
                    extra_kv=torch.randn(6, 512, generator=g).bfloat16(), extra_indices=idx.remainder(7),
                    softmax_scale=0.05)  # fmt: skip
    for extra in (fp8_args["extra_kv"], fp8_pool):
        got = npu("sparse_attention", **{**fp8_args, "extra_kv": extra})
        want = longattn.sparse_attention(**{**fp8_args, "extra_kv": extra}, backend=SIM)
        assert all(torch.equal(a, b) for a, b in zip(got, want)) and torch.isfinite(got[0]).all()

    q, w, k = _int_inputs(g, 3, 4, 16, 40)
    ve = torch.tensor([40, 17, 0], dtype=torch.int32)
    common = dict(q=q, weights=w, index_k=k, visible_end=ve, block_table=None, seq_ids=None)
    got = npu("indexer_topk", **common, topk=8, return_slots=False)
    want = longattn.indexer_topk(q, w, k, ve, 8, backend=SIM)
    assert all(torch.equal(a, b) for a, b in zip(got, want))
    assert torch.equal(npu("indexer_logits", **common), longattn.indexer_logits(q, w, k, ve, backend=SIM))

    for pool in (torch.zeros(2, 4, 512, dtype=torch.bfloat16), Fp8KVPool.empty(2, 4, "cpu")):
        rows = torch.randn(3, 512, generator=g)
        slots = torch.tensor([5, 0, 7])
        mine = pool.clone() if isinstance(pool, torch.Tensor) else Fp8KVPool(pool.data.clone(), pool.page_size)
        npu("append_kv", pool=mine, rows=rows, slot_mapping=slots)
        longattn.append_kv(pool, rows, slots, backend=SIM)
        assert torch.equal(*(p if isinstance(p, torch.Tensor) else p.data for p in (mine, pool)))

    oa, la, ob, lb = _merge_case(5, 7, 40, torch.bfloat16, seed=1, empty="none")
    la[0, :3], lb[1, 2:] = -INF, -INF  # empty sides (never read), no NaN rows: torch.equal compares
    got = npu("merge_attention_states", out_a=oa, lse_a=la, out_b=ob, lse_b=lb)
    want = longattn.merge_attention_states(oa, la, ob, lb, backend=SIM)
    assert all(torch.equal(a, b) for a, b in zip(got, want))  # NaN rows: the same bits (nan_to_num'd)
    sink = torch.randn(7, generator=g)
    got = npu("apply_attention_sink", out=want[0], lse=want[1], attn_sink=sink)
    assert torch.equal(got, longattn.apply_attention_sink(want[0], want[1], sink, backend=SIM))
    a, b = torch.randn(13, 2 * 40, generator=g), torch.randn(13, 2 * 40, generator=g) * 3
    got = npu("compress_pool", a=a, b=b.bfloat16(), ratio=4, overlap=True)
    assert torch.equal(got, longattn.compress_pool(a, b.bfloat16(), 4, True, backend=SIM))
    assert got.shape == (3, 40) and bool(torch.isfinite(got).all())

    from longattn.configs import RopeConfig
    from longattn.rope import inv_freq

    T, d, ratio = 9, 512, 4
    base = dict(
        a=torch.randn(T, 2 * d, generator=g), b=torch.randn(T, 2 * d, generator=g), positions=torch.arange(T),
        token_rows=torch.zeros(T, dtype=torch.int32), ratio=ratio, overlap=True,
        state_block_table=torch.zeros(1, 1, dtype=torch.int32), out_block_table=torch.tensor([[1, 0]]).int(),
        norm_weight=torch.linspace(0.5, 1.5, d), eps=1e-6, rope_inv_freq=inv_freq(RopeConfig(160000.0), 32),
    )  # fmt: skip
    for out in (torch.zeros(2, 4, d), Fp8KVPool.empty(2, 4, "cpu")):
        runs = []
        for call in (lambda **kw: npu("compress_kv", **kw), lambda **kw: longattn.compress_kv(**kw, backend=SIM)):
            state = torch.zeros(1, 2 * ratio, 4 * d)
            pool = out.clone() if isinstance(out, torch.Tensor) else Fp8KVPool(out.data.clone(), out.page_size)
            call(**base, state=state, out=pool)
            runs.append((state, pool if isinstance(pool, torch.Tensor) else pool.data))
        assert torch.equal(runs[0][0], runs[1][0]) and torch.equal(runs[0][1], runs[1][1])
        assert runs[0][1].abs().sum() > 0  # entries were written
