"""bench/triton_grid.py's small-batch decode sections (decode-graph, split-sweep, layer-graph) on the CPU:
their plumbing at interpreter size (--smoke), the reasons they give where CUDA graphs and the profiler
cannot run, the split sweep's reference check (also that it flags a wrong split), the bit-for-bit
comparison a graph replay is judged by, and the time budget that skips cases."""

import json
import os
import subprocess
import sys

import pytest
import torch

from bench import sm90_model, triton_grid
from tests.helpers.device import HAS_TRITON, INTERPRET

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
NEW = ("decode-graph", "split-sweep", "layer-graph")

needs_interpreter = pytest.mark.skipif(
    not (HAS_TRITON and INTERPRET), reason="the smoke shapes run the Triton kernels in the interpreter"
)


@pytest.fixture
def smoke(monkeypatch):
    """The module in --smoke mode (its case lists and shapes), restored afterwards."""
    monkeypatch.setattr(triton_grid, "SMOKE", True)


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    """The three sections of a --smoke run, as a separate process would run them (bench/gpu_check.sh)."""
    if not HAS_TRITON:
        pytest.skip("triton is not installed")
    out = tmp_path_factory.mktemp("grid") / "grid.json"
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=os.pathsep.join([os.path.join(ROOT, "python"), ROOT]))
    cmd = [sys.executable, "bench/triton_grid.py", "--smoke", "--only", ",".join(NEW), "--out", str(out)]
    res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    with open(out) as f:
        return json.load(f)


def test_decode_graph_rows_say_why_there_is_no_graph(grid, smoke):
    sec = grid["decode_graph"]
    assert sec["graph_status"] == triton_grid.GRAPH_SKIP
    assert [r["case"] for r in sec["rows"]] == [n for n, _, _ in triton_grid.decode_graph_cases()]
    assert {r["op"] for r in sec["rows"]} == {"sparse_attention", "indexer_topk"}
    for r in sec["rows"]:
        assert "error" not in r and "status" not in r, r
        assert r["graph_status"] == triton_grid.GRAPH_SKIP and r["graph_ms"] is None
        assert r["host_overhead_ms"] is None and r["launcher_host_ms"] is None and "graph_GBps" not in r
        assert r["eager_ms"] > 0 and r["launcher_ms"] > 0
        assert r["launcher_equals_op"] is True, r["case"]


def test_split_sweep_checked_every_split_against_the_reference(grid, smoke):
    sec = grid["split_sweep"]
    assert [c["case"] for c in sec["cases"]] == [n for n, _ in triton_grid.split_sweep_cases()]
    for c in sec["cases"]:
        assert "error" not in c and c["checked_all"] is True, c
        splits = [p["num_splits"] for p in c["points"]]
        assert splits == c["candidates"] and 1 in splits and c["heuristic"] in splits
        assert max(splits) > 1 and max(splits) <= c["key_blocks"]  # the split path and its combine ran
        assert c["heuristic_equals_default_launch"] is True
        for p in c["points"]:
            assert "error" not in p, p
            assert p["matches_reference"] is True and p["max_abs_err_vs_reference"] <= c["tolerance"]
            assert p["graph_ms"] is None and p["graph_status"] == triton_grid.GRAPH_SKIP
            assert 1 <= p["effective_splits"] <= p["num_splits"]
        assert c["fastest_num_splits"] is None and c["status"] == triton_grid.GRAPH_SKIP
        assert c["combine"] == {"status": triton_grid.PROFILE_SKIP}


def test_layer_graph_rows(grid, smoke):
    sec = grid["layer_graph"]
    want = [n for n, *_ in triton_grid.layer_graph_cases(1 << 20, [1, 8])]
    assert [r["case"] for r in sec["rows"]] == want
    for r in sec["rows"]:
        assert "error" not in r and "status" not in r, r
        assert r["graph_status"] == triton_grid.GRAPH_SKIP and r["graph_ms"] is None and r["host_overhead_ms"] is None
        assert r["eager_run_ms"] > 0 and r["eager_prepare_run_ms"] > 0
        assert r["max_abs_err_vs_reference"] < 2e-2, r  # bf16 outputs of O(1)
    assert grid["budget"]["skipped_sections"] == []
    assert "results" in grid and grid["results"] == []  # --only: no op case ran


@needs_interpreter
def test_split_sweep_flags_a_wrong_split(smoke, monkeypatch):
    from longattn.ops.sparse_attention import triton_sparse_attention as tsa

    real = tsa.sparse_attention

    def off_by_a_bit_at_2(*args, num_splits=None, **kw):
        out, lse = real(*args, num_splits=num_splits, **kw)
        return (out + 0.25 if num_splits == 2 else out), lse

    monkeypatch.setattr(tsa, "sparse_attention", off_by_a_bit_at_2)
    name, kw = triton_grid.split_sweep_cases()[0]
    case = triton_grid.split_sweep_case(name, kw, torch.device("cpu"), quick=True)
    ok = {p["num_splits"]: p["matches_reference"] for p in case["points"]}
    assert ok.pop(2) is False and all(ok.values()) and ok
    assert case["checked_all"] is False


def test_same_bits_and_poison():
    x = torch.randn(3, 4, dtype=torch.bfloat16)
    assert triton_grid.same_bits(x, x.clone())
    y = x.clone()
    y.view(torch.int16)[1, 2] += 1  # one ulp
    assert not triton_grid.same_bits(x, y)
    assert not triton_grid.same_bits(x, x.float())  # same values, other dtype
    assert not triton_grid.same_bits((x, x), (x,))
    nan = torch.full((2,), float("nan"))
    assert triton_grid.same_bits(nan, nan.clone())  # equal bits, though NaN != NaN
    idx = torch.arange(6, dtype=torch.int32).view(2, 3)
    out = (x.clone(), idx.clone())
    triton_grid.poison(out)
    assert out[0].isnan().all() and (out[1] == -7).all()
    assert not triton_grid.same_bits(out, (x, idx))


def test_spent_budget_skips_every_case(smoke):
    spent = triton_grid.Deadline(seconds=0)
    assert spent.spent() and not triton_grid.Deadline().spent()
    assert triton_grid.Deadline(seconds=100).sooner(spent).spent()
    sec = triton_grid.run_decode_graphs(torch.device("cpu"), {}, True, spent)
    assert [r["status"] for r in sec["rows"]] == [triton_grid.BUDGET_SKIP] * len(triton_grid.decode_graph_cases())
    sec = triton_grid.run_split_sweep(torch.device("cpu"), spent)
    assert all(c["status"] == triton_grid.BUDGET_SKIP for c in sec["cases"]) and sec["cases"]
    sec = triton_grid.run_layer_graphs(torch.device("cpu"), True, spent, 1 << 20, [1])
    assert [r["status"] for r in sec["rows"]] == [triton_grid.BUDGET_SKIP] * 2


@needs_interpreter
def test_grid_budget_skips_sections_and_still_writes_goals(tmp_path, smoke):
    out = tmp_path / "g.json"
    rc = triton_grid.main(["--smoke", "--budget-s", "0", "--only", "ops,decode-graph", "--out", str(out)])
    assert rc == 0
    doc = json.loads(out.read_text())
    assert doc["budget"]["skipped_sections"] == ["ops", "decode-graph"]
    assert "decode_graph" not in doc and doc["results"] == []
    assert [g["goal"] for g in doc["goals"]] == [g[0] for g in triton_grid.GOALS]
    with pytest.raises(SystemExit):
        triton_grid.main(["--smoke", "--only", "nope"])


class _FakeGraph:
    """A stand-in for torch.cuda.CUDAGraph on the CPU: replay reruns the captured function into the captured
    outputs (``skip``: leaves them as they are, as a replay that wrote nothing would)."""

    def __init__(self, fn, skip=False):
        self.fn, self.skip = fn, skip
        self.out = fn()

    def replay(self):
        if not self.skip:
            for t, new in zip(triton_grid._tensors(self.out), triton_grid._tensors(self.fn())):
                t.copy_(new)


@pytest.fixture
def fake_graphs(smoke, monkeypatch):
    """The CUDA-only steps replaced by CPU stand-ins, so that the bookkeeping around them (equality of the
    replay, host overhead, fastest split, combine share) runs here; the kernels are the interpreter's."""
    state = {"skip": False}

    def capture(fn, warmup=2):
        g = _FakeGraph(fn, state["skip"])
        return g, g.out

    monkeypatch.setattr(triton_grid, "_graphs_here", lambda: True)
    monkeypatch.setattr(triton_grid, "capture", capture)
    monkeypatch.setattr(triton_grid, "sync_error", lambda fn: None)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a: None)
    kernels = {"_sparse_attn_fwd_kernel": 30.0, "_combine_splits_kernel": 10.0, "other": 5.0}
    monkeypatch.setattr(triton_grid, "kernel_device_us", lambda fn, reps=10: kernels)
    return state


@needs_interpreter
def test_split_sweep_bookkeeping(fake_graphs):
    name, kw = triton_grid.split_sweep_cases()[0]
    case = triton_grid.split_sweep_case(name, kw, torch.device("cpu"), quick=True)
    assert case["checked_all"] and all(p["replay_equals_eager"] and p["graph_ms"] > 0 for p in case["points"])
    times = {p["num_splits"]: p["graph_ms"] for p in case["points"]}
    assert case["fastest_num_splits"] == min(times, key=times.get)
    assert case["fastest_graph_ms"] == min(times.values())
    assert case["heuristic_graph_ms"] == times[case["heuristic"]] and case["heuristic_over_fastest"] >= 1
    want = {str(s) for s in {case["heuristic"], case["fastest_num_splits"]} if s > 1}
    assert set(case["combine"]) == want
    for c in case["combine"].values():
        assert c == {"status": "measured", "attn_kernel_us": 30.0, "combine_kernel_us": 10.0, "combine_share": 0.25}


@needs_interpreter
@pytest.mark.parametrize("skip", [False, True])
def test_graph_rows_bookkeeping(fake_graphs, skip):
    fake_graphs["skip"] = skip  # a replay that writes nothing must not pass for an equal one (poisoned outputs)
    ceil = {"copy_GBps": 1.0}
    for name, kind, kw in triton_grid.decode_graph_cases()[:1] + triton_grid.decode_graph_cases()[-1:]:
        row = triton_grid.decode_graph_row(name, kind, kw, torch.device("cpu"), ceil, True)
        assert row["graph_status"] == "measured" and row["graph_of"] == "op call" and row["op_call_sync"] is None
        assert row["replay_equals_eager"] is (not skip)
        assert row["host_overhead_ms"] == row["eager_ms"] - row["graph_ms"]
        assert row["launcher_host_ms"] == row["launcher_ms"] - row["graph_ms"]
        assert row["graph_GBps"] == row["bytes"] / (row["graph_ms"] * 1e-3) / 1e9
    name, kind, B, ctx = triton_grid.layer_graph_cases(1 << 20, [2])[1]  # CSA
    row = triton_grid.layer_graph_row(name, kind, B, ctx, torch.device("cpu"), True)
    assert row["graph_status"] == "measured" and row["replay_equals_eager"] is (not skip)
    assert row["host_overhead_ms"] == row["eager_run_ms"] - row["graph_ms"]


@needs_interpreter
def test_backward_rows_check_every_tile_against_the_pytorch_backward(smoke, monkeypatch):
    """The backward section at interpreter size: a row per case at the default tile and, for the first
    case, per swept tile, each checked against the PyTorch backward; a tile whose dq is wrong shows it.
    Tolerance 2^-8 of the largest gradient: the launcher's ``delta = <dout, out>`` takes the forward's
    bf16 out (2^-9 relative rounding per element), the PyTorch backward its own fp32 out."""
    from longattn.ops.sparse_attention import triton_backward as tbw

    real = tbw.sparse_attention_backward

    def wrong_at_64_keys(*args, config=None, **kw):
        dq, drows, dsink = real(*args, config=config, **kw)
        return (dq + 0.5 if config and config["BLOCK_N"] == 64 else dq), drows, dsink

    monkeypatch.setattr(tbw, "sparse_attention_backward", wrong_at_64_keys)
    res = []
    ceil = {"bf16_matmul_TFLOPs": 1.0, "copy_GBps": 1.0}
    triton_grid.run_backward(torch.device("cpu"), ceil, True, res, True, lambda section: True, lambda: None)
    (first, _), (second, _) = triton_grid.backward_cases()
    tiles = [sm90_model.backward_tile_case(first, t) for t in sm90_model.BACKWARD_SWEEP_TILES]
    assert [(r["case"], r["backend"]) for r in res] == [
        (first, "triton backward"),
        (first, "reference backward"),
        (second, "triton backward"),
        (second, "reference backward"),
        *[(n, "triton backward") for n in tiles],
    ]
    for r in res:
        assert "error" not in r and r["ms"] > 0, r
        if r["backend"] == "triton backward":
            wrong = r["config"]["BLOCK_N"] == 64
            assert (r["rel_err_vs_reference"] > 0.1) if wrong else (r["rel_err_vs_reference"] < 2**-8), r
    assert [tuple(r["config"].values()) for r in res[4:]] == list(sm90_model.BACKWARD_SWEEP_TILES)
    # a spent budget stops the section before its next row
    asked = []
    res = []
    triton_grid.run_backward(torch.device("cpu"), ceil, True, res, True, lambda s: asked.append(s) or len(asked) < 3,
                             lambda: None)  # fmt: skip
    assert [r["case"] for r in res] == [first, first, second, second] and len(asked) == 3
