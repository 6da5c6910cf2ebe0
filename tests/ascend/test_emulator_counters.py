"""The emulator's work counters (per launch and core: operations per pipe, GM bytes per pipe, vector UB
bytes, cube MACs and fractal steps), which bench/ascend_model.py turns into a 910B2 roofline model:
checked against counts derived by hand from the kernels' documented data flow."""

import longattn
import pytest
import torch
from longattn.backends import ascend_sim

pytestmark = pytest.mark.skipif(
    ascend_sim.BACKEND.unavailable is not None, reason=f"ascend_sim: {ascend_sim.BACKEND.unavailable}"
)


def launches(fn):
    ext = ascend_sim.extension()
    ext.take_launch_work()
    fn()
    return ext.take_launch_work()


def total(launch, field, pipe=None):
    return sum(c[field][pipe] if pipe else c[field] for c in launch["cores"])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_append_kv_moves_each_row_once(dtype):
    """append_kv (AIV only): MTE2 reads every row and its slot once, MTE3 writes every row in the pool
    once; no cube work. Rows whose slot is outside the pool are neither read nor written."""
    D, T = 96, 10
    pool = torch.zeros(16, D, dtype=dtype)
    slots = torch.arange(T)
    slots[3] = -1
    (launch,) = launches(lambda: longattn.append_kv(pool, torch.randn(T, D).to(dtype), slots, backend="ascend_sim"))
    row = D * dtype.itemsize
    assert launch["kind"] == "vector" and all(not c["aic"] for c in launch["cores"])
    assert total(launch, "gm_write", "MTE3") == (T - 1) * row
    assert total(launch, "gm_read", "MTE2") == (T - 1) * row + 4 * T  # rows + the int32 slots
    assert total(launch, "macs") == 0 and total(launch, "ops", "M") == 0


@pytest.mark.parametrize("nb", [64, 128, 256])
def test_sparse_attention_cube_work_per_key_block(monkeypatch, nb):
    """One token, H heads, 100 valid keys = ceil(100 / nb) blocks of nb keys (LONGATTN_SA_BLOCK_KEYS caps
    the block; at D = 64, fp32, every size fits): Q.K^T and P.V issue H x nb x D MACs each per block, in
    16 x 16 x 8 fp32 fractal steps (m padded to 16; a one-head group computes 16 rows: the GEMV
    workaround). The gathered rows come in by MTE2 once per AIV half and the output leaves by MTE3."""
    monkeypatch.setenv("LONGATTN_SA_BLOCK_KEYS", str(nb))
    D, g = 64, torch.Generator().manual_seed(0)
    kv = torch.randn(200, D, generator=g)
    idx = torch.randperm(200, generator=g)[:100].view(1, 100).int()
    assert ascend_sim.extension().sparse_attention_tiling(1, 4, D, 0, 0, -1, 1)["block_keys"] == nb
    blocks = -(-100 // nb)
    for H, rows in [(4, 4), (1, 16)]:
        q = torch.randn(1, H, D, generator=g)
        (launch,) = launches(lambda q=q: longattn.sparse_attention(q, kv, idx, backend="ascend_sim"))
        assert launch["kind"] == "mix"
        assert total(launch, "macs") == blocks * 2 * rows * nb * D
        assert total(launch, "fractals") == blocks * 2 * (nb // 16) * (D // 8)  # m < 16: one fractal row
        assert total(launch, "gm_read", "MTE2") >= 100 * D * 4  # every valid key row at least once
        assert total(launch, "gm_write", "MTE3") >= H * D * 4  # the output


def _aic(launch, field, pipe):
    return sum(c[field][pipe] for c in launch["cores"] if c["aic"])


def _aiv(launch, field, pipe):
    return sum(c[field][pipe] for c in launch["cores"] if not c["aic"])


@pytest.mark.parametrize("D,dtype", [(128, torch.bfloat16), (512, torch.bfloat16)], ids=str)
def test_sparse_attention_o_round_trip_once_per_block(monkeypatch, D, dtype):
    """The fp32 P.V partial O [Mg, D] goes to GM (FIX) and back (AIV MTE2) once per key block: with 1,024
    valid keys, blocks of 256 (D = 128) or 128 (D = 512, bf16: the largest that fits) instead of 64 cut
    that traffic per key by the block factor. Exact counts: FIX writes S [H, nb] and O [H, D] fp32 per
    block; the AIVs' MTE2 reads differ only by the O reads (the gathered rows, S, the sink are the same
    bytes)."""
    H, N, nv = 16, 1500, 1024
    g = torch.Generator().manual_seed(3)
    kv = torch.randn(N, D, generator=g).to(dtype)
    idx = torch.randperm(N, generator=g)[:nv].view(1, nv).int()
    q = torch.randn(1, H, D, generator=g).to(dtype)
    ext = ascend_sim.extension()
    work, outs = {}, {}
    for cap in (64, 256):
        monkeypatch.setenv("LONGATTN_SA_BLOCK_KEYS", str(cap))
        nb = ext.sparse_attention_tiling(1, H, D, 1, 1, -1, 1)["block_keys"]
        (launch,) = launches(
            lambda c=cap: outs.setdefault(c, longattn.sparse_attention(q, kv, idx, backend="ascend_sim"))
        )
        blocks = nv // nb
        o_bytes = blocks * H * D * 4
        assert _aic(launch, "gm_write", "FIX") == blocks * H * nb * 4 + o_bytes, (cap, nb)
        work[cap] = (nb, o_bytes, _aiv(launch, "gm_read", "MTE2"))
    (nb64, o64, rd64), (nb_big, o_big, rd_big) = work[64], work[256]
    assert nb64 == 64 and nb_big == (256 if D == 128 else 128)
    assert o64 == (nb_big // 64) * o_big  # O bytes per key drop by the block factor
    assert rd64 - rd_big == o64 - o_big  # ... and so do the AIVs' O reads; nothing else changes
    for (o_a, l_a), (o_b, l_b) in [(outs[64], outs[256])]:  # same result up to fp32 summation order
        torch.testing.assert_close(l_a, l_b, atol=1e-5, rtol=0)
        torch.testing.assert_close(o_a.float(), o_b.float(), atol=2e-2, rtol=0)


def test_counters_are_per_launch_and_taken_once():
    ext = ascend_sim.extension()
    ext.take_launch_work()
    pool = torch.zeros(8, 32)
    for _ in range(3):
        longattn.append_kv(pool, torch.randn(2, 32), torch.tensor([0, 5]), backend="ascend_sim")
    work = ext.take_launch_work()
    assert len(work) == 3 and ext.take_launch_work() == []
    assert [total(w, "gm_write", "MTE3") for w in work] == [2 * 32 * 4] * 3


def test_model_smoke_run(tmp_path):
    """bench/ascend_model.py --smoke: every case is counted and modelled, and the JSON holds them."""
    import json

    from bench import ascend_model

    out = tmp_path / "model.json"
    assert ascend_model.main(["--smoke", "--cores", "2", "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    assert "not a measurement" in data["what"]
    cases = {r["case"] for r in data["results"]}
    assert len(cases) == 3
    for r in data["results"]:
        assert r["model"]["model_us"] > 0 and r["model"]["bound"] in ("cube", "vector", "hbm"), r
        assert sum(r["ops"].values()) > 0 and r["case_total"]["case_model_us"] >= r["model"]["model_us"]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_gather_one_dma_per_run_of_consecutive_slots(dtype):
    """A window's keys are consecutive slots: the gather copies each run within a tile with one DMA.
    Runs that break inside a tile, end at the pool's last row, repeat a slot or step back must still
    read exactly the named rows (vs the float64 oracle), and consecutive slots need far fewer DMAs than
    the same keys shuffled."""
    from tests.helpers.sparse import check_sparse

    D, N, g = 64, 200, torch.Generator().manual_seed(0)
    kv = torch.randn(N, D, generator=g).to(dtype)
    q = torch.randn(2, 3, D, generator=g).to(dtype)
    runs = torch.cat([torch.arange(10, 75), torch.tensor([75, 75, 74, 3]), torch.arange(N - 37, N)]).view(1, -1)
    idx = torch.cat([runs, runs.flip(1)]).int()  # token 1: the same keys in descending order (no runs)
    args = dict(q=q, kv=kv, indices=idx)
    (launch,) = launches(lambda: longattn.sparse_attention(**args, backend="ascend_sim"))
    out, lse = longattn.sparse_attention(**args, backend="ascend_sim")
    check_sparse(out, lse, args, f"runs {dtype}", "ascend_sim")
    mte2 = {}
    for name, rows in (("runs", runs), ("shuffled", runs[:, torch.randperm(runs.shape[1], generator=g)])):
        (w,) = launches(lambda rows=rows: longattn.sparse_attention(q[:1], kv, rows.int(), backend="ascend_sim"))
        mte2[name] = total(w, "ops", "MTE2")
    assert mte2["runs"] < mte2["shuffled"] - 60, mte2


def _aiv_mte2(fn) -> int:
    """MTE2 operations (DMAs) of the AIVs over the launches of ``fn``."""
    return sum(c["ops"]["MTE2"] for w in launches(fn) for c in w["cores"] if not c["aic"])


def _tiling(q_dtype, pools, T):
    """The kernel's tiling for q_dtype over ``pools`` (one or two streams) and T tokens."""
    from longattn.ops.sparse_attention import ascend as sa_ascend

    code = sa_ascend.DTYPE_CODE
    codes = [code[p.dtype] if isinstance(p, torch.Tensor) else code[sa_ascend.FP8] for p in pools]
    D = pools[0].shape[1] if isinstance(pools[0], torch.Tensor) else 512
    t = ascend_sim.extension().sparse_attention_tiling(
        T, 3, D, code[q_dtype], codes[0], codes[1] if len(codes) > 1 else -1, ascend_sim.num_cores()
    )
    compute = next(dt for dt, c in code.items() if isinstance(dt, torch.dtype) and c == t["dtype"])
    return t, t.get("block_keys", sa_ascend.SA_BLOCK_KEYS), compute


def _exact(pool, dtype):
    """A pool's exact rows in ``dtype`` (the compute dtype: read without conversion by the gather)."""
    from longattn.cache import Fp8KVPool, dequantize_kv_fp8

    return (dequantize_kv_fp8(pool).reshape(-1, 512) if isinstance(pool, Fp8KVPool) else pool).to(dtype)


def _gather_dmas_measured(q, pools, rows):
    """The gather's DMAs of the launch over index ``rows`` (one per stream) and ``pools``, measured twice
    against launches with the same valid keys per stream and token (so the same non-gather operations:
    logits, P.V partials; one head group: H = 3) whose gather the model gives: the launch's AIV MTE2
    operations minus the baseline's, plus the baseline's DMAs, minus the difference in conversion chunks
    (one MTE2 EnQue each; tests/helpers/gather_runs.py). Baselines: the rows reversed (runs broken), and
    the same rows over the pools' exact rows in the compute dtype (the unconverted path). Returns
    (measured vs reversed rows, measured vs unconverted pools, the model's DMAs)."""
    from tests.helpers.gather_runs import launch_gather_dmas

    def mte2(pools, idx):
        extra = dict(extra_kv=pools[1], extra_indices=idx[1].int()) if len(pools) > 1 else {}
        return _aiv_mte2(lambda: longattn.sparse_attention(q, pools[0], idx[0].int(), **extra, backend="ascend_sim"))

    t, block_keys, compute = _tiling(q.dtype, pools, q.shape[0])
    assert t["head_groups"] == 1
    got = mte2(pools, rows)
    dmas, chunks = launch_gather_dmas(rows, pools, t, block_keys, compute)
    measured = []
    for base_pools, base_rows in ((pools, [r.flip(1) for r in rows]), ([_exact(p, compute) for p in pools], rows)):
        base_dmas, base_chunks = launch_gather_dmas(base_rows, base_pools, t, block_keys, compute)
        measured.append(got - mte2(base_pools, base_rows) + base_dmas - (chunks - base_chunks))
    return measured[0], measured[1], dmas


@pytest.mark.parametrize(
    "q_dtype,pool",
    [(torch.float32, "bf16"), (torch.float32, "fp16"), (torch.bfloat16, "fp8"), (torch.float32, "fp8"),
     (torch.float16, "fp8")],
    ids=str,
)  # fmt: skip
def test_gather_one_dma_per_run_of_converted_slots(q_dtype, pool):
    """128 consecutive slots of a pool the gather converts (16-bit rows under an fp32 computation, FP8
    records in pages of 64): one DMA per decode chunk of 4 rows (all consecutive) for 16-bit rows, 32
    instead of 128; three per chunk for FP8 records (nope, rope and scale bytes), 96 instead of 384. The
    same keys in descending order take one DMA (three) per row. Starting at slot 62, two chunks cross a
    page end: one more run (three DMAs) each (FP8 only)."""
    from longattn.cache import quantize_kv_fp8

    g = torch.Generator().manual_seed(1)
    if pool == "fp8":
        kv, per_row = quantize_kv_fp8(torch.randn(3, 64, 512, generator=g)), 3
    else:
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[pool]
        kv, per_row = torch.randn(200, 128, generator=g).to(dtype), 1
    D = 512 if pool == "fp8" else 128
    q = torch.randn(1, 3, D, generator=g).to(q_dtype)
    for start in (0, 62):
        idx = torch.arange(start, start + 128).view(1, 128)
        # from slot 62, pages start at slots 64 and 128, inside the chunks [62, 66) and [126, 130)
        crossings = 2 if (pool == "fp8" and start == 62) else 0
        want = per_row * (128 // 4 + crossings)
        assert _gather_dmas_measured(q, [kv], [idx]) == (want, want, want), start
        assert _gather_dmas_measured(q, [kv], [idx.flip(1)])[1:] == (per_row * 128,) * 2, start


MIXES = [
    (torch.bfloat16, "fp8", torch.bfloat16),  # V4: FP8 compressed pool, bf16 window rows (not converted)
    (torch.float32, "fp8", torch.bfloat16),  # split-KV partials: fp32, both streams converted
    (torch.float16, "fp8", torch.float16),  # fp16 q: fp32 computation, both streams converted
    (torch.float32, torch.bfloat16, "fp8"),  # 16-bit rows first, FP8 second
    (torch.float16, torch.bfloat16, torch.float32),  # 16-bit rows of another dtype, no FP8
    (torch.bfloat16, "fp8", "fp8"),  # both FP8, pages of different sizes
]


@pytest.mark.parametrize("mix", MIXES, ids=lambda m: "-".join(str(k).replace("torch.", "") for k in m))
def test_gather_dma_count_of_broken_runs(mix):
    """Runs of consecutive slots that break inside decode chunks, at page ends (pages of 1, 3, 5, 13, 64
    records), at the pool's last slot, at invalid entries, repeated and descending slots, with rows of
    both streams in one gather tile (90-152 and about 35 valid keys per stream and token, two or three
    key blocks): the gather's MTE2 DMA count is the one derived from the run structure
    (tests/helpers/gather_runs.py)."""
    from longattn.cache import quantize_kv_fp8

    from tests.helpers.gather_runs import broken_runs

    q_dtype, kind0, kind1 = mix
    g = torch.Generator().manual_seed(2)
    for page in (1, 3, 5, 13, 64):

        def pool(kind, page):
            if kind == "fp8":
                return quantize_kv_fp8(torch.randn(-(-150 // page), page, 512, generator=g))
            return torch.randn(150, 512, generator=g).to(kind)

        pools = [pool(kind0, page), pool(kind1, 7)]
        sizes = [p.shape[0] if isinstance(p, torch.Tensor) else p.num_slots for p in pools]
        rows = [
            torch.stack([broken_runs(sizes[0], page, seed=t) for t in range(2)]),
            torch.stack([broken_runs(sizes[1], 7, seed=10 + t)[:40] for t in range(2)]),
        ]
        q = torch.randn(2, 3, 512, generator=g).to(q_dtype)
        vs_flipped, vs_exact, model = _gather_dmas_measured(q, pools, rows)
        assert vs_flipped == vs_exact == model, (page, vs_flipped, vs_exact, model)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=str)
def test_sparse_attention_shared_gather_halves_gather_bytes(monkeypatch, dtype):
    """H = 128 = two head groups: with the shared gather (8 tokens on 4 cores, groups of a token back to
    back) a token's rows are read from the pool once instead of once per group: the AIVs' MTE2 bytes drop
    by exactly one gather (the valid keys x D x dtype size per token within the cap), i.e. the gather's
    MTE2 bytes halve; a token past the cap (LONGATTN_SA_SHARE_CAP = 512 here) still gathers per group."""
    monkeypatch.setenv("LONGATTN_ASCEND_SIM_CORES", "4")
    monkeypatch.setenv("LONGATTN_SA_SHARE_CAP", "512")
    H, D, N, T = 128, 128, 2000, 8
    g = torch.Generator().manual_seed(9)
    kv = torch.randn(N, D, generator=g).to(dtype)
    q = torch.randn(T, H, D, generator=g).to(dtype)
    counts = [300, 1, 512, 513, 0, 129, 700, 256]
    idx = torch.full((T, 760), -1, dtype=torch.int32)
    for t, n in enumerate(counts):
        idx[t, torch.randperm(760, generator=g)[:n]] = torch.randint(0, N, (n,), generator=g, dtype=torch.int32)
    reads = {}
    for cap in ("512", "0"):
        monkeypatch.setenv("LONGATTN_SA_SHARE_CAP", cap)
        (launch,) = launches(lambda: longattn.sparse_attention(q, kv, idx, backend="ascend_sim"))
        reads[cap] = _aiv(launch, "gm_read", "MTE2")
    row = D * dtype.itemsize
    kept = sum(n for n in counts if n <= 512)
    assert reads["0"] - reads["512"] == kept * row  # one of the two gathers of every kept token
