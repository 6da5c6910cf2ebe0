"""bench/gpu_check.sh is run once, on a lent GPU, with no second chance inside the same task: its plumbing
is checked here on the CPU (SMOKE=1: interpreter, test shards only collected, the grid at tiny shapes,
the bench CLI only listing). The shards must collect exactly the Triton tests that can run on a GPU: the
op x backend tests of tests/ops for the triton backend (``-k triton``) and tests/triton but the offline
sm_90 compile; and the grid must produce every case and goal without an error, and its small-batch
decode sections (CUDA graphs, split sweep, layer step) their rows with the reason graphs were skipped."""

import json
import os
import re
import subprocess
import sys

import pytest

from bench import triton_grid
from tests.helpers.device import HAS_TRITON

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SM90_COMPILE = "tests/triton/test_triton_sm90_compile.py"  # offline compile: not run on the GPU itself

pytestmark = pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed")


def _node_ids(text: str) -> set:
    return set(re.findall(r"^(tests/\S+::\S+)$", text, re.M))


def test_gpu_check_smoke_run(tmp_path):
    # the script runs `python`: this interpreter, even when its environment is not activated
    path = os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")])
    env = dict(os.environ, SMOKE="1", OUT=str(tmp_path), BUDGET_S="300", PATH=path)
    res = subprocess.run(["bash", "bench/gpu_check.sh"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]

    shards = sorted(f for f in os.listdir(tmp_path) if f.startswith("pytest-") and f.endswith(".log"))
    assert shards, res.stdout[-3000:]
    collected = set()
    for log in shards:
        rc = (tmp_path / log.replace(".log", ".rc")).read_text().strip()
        text = (tmp_path / log).read_text()
        assert rc == "0", f"{log}: rc {rc}\n{text[-2000:]}"
        collected |= _node_ids(text)

    everything = subprocess.run(
        [sys.executable, "-m", "pytest", "tests/triton", "tests/ops", "--collect-only", "-q", "-p", "no:cacheprovider"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    nodes = _node_ids(everything.stdout)
    triton_dir = {n for n in nodes if n.startswith("tests/triton/") and not n.startswith(SM90_COMPILE)}
    ops = {n for n in nodes if n.startswith("tests/ops/") and re.search(r"\[(.*-)?triton(-.*)?\]$", n)}
    assert triton_dir and ops, everything.stdout[-2000:]
    expected = triton_dir | ops
    assert collected == expected, (
        f"not in any shard: {sorted(expected - collected)[:10]}; not expected: {sorted(collected - expected)[:10]}"
    )

    with open(tmp_path / "triton_grid.json") as f:
        grid = json.load(f)
    errors = [r["case"] for r in grid["results"] if "error" in r]
    assert not errors, errors
    cases = {r["case"] for r in grid["results"]}
    for name in [n for n, _ in triton_grid.sparse_cases() + triton_grid.indexer_cases() + triton_grid.backward_cases()]:
        assert name in cases
    assert [g["goal"] for g in grid["goals"]] == [g[0] for g in triton_grid.GOALS]
    assert all(g["value"] is not None for g in grid["goals"]), grid["goals"]
    # the small-batch decode sections (in detail: tests/bench/test_triton_grid.py): every case ran within the
    # budget the script passed, without CUDA graphs here (and said so), the split sweep checked
    assert grid["budget"]["grid_s"] is not None and grid["budget"]["skipped_sections"] == []
    rows = grid["decode_graph"]["rows"] + grid["layer_graph"]["rows"] + grid["split_sweep"]["cases"]
    assert rows and not [r["case"] for r in rows if "error" in r or r.get("status") == triton_grid.BUDGET_SKIP]
    assert all(
        r["graph_status"] == triton_grid.GRAPH_SKIP for r in grid["decode_graph"]["rows"] + grid["layer_graph"]["rows"]
    )
    assert all(c["checked_all"] and len(c["points"]) > 1 for c in grid["split_sweep"]["cases"])
    assert "bench rc=0" in (tmp_path / "summary.txt").read_text()
