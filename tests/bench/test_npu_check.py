"""bench/npu_check.sh is meant for an Ascend NPU host, which this project has never had: its plumbing is
checked here on the CPU (SMOKE=1: no build, the test shards only collected, the bench CLI only
listing). The shards must collect exactly the tests that run the ``ascend`` backend (not the CPU
emulator): every op x backend test of tests/ops and every hazard test, and the bench step must list the
issue's decode and indexer cases."""

import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ASCEND_PARAM = re.compile(r"\[(.*-)?ascend(-.*)?\]$")


def _node_ids(text: str) -> set:
    return set(re.findall(r"^(tests/\S+::\S+)$", text, re.M))


def test_npu_check_smoke_run(tmp_path):
    path = os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")])
    env = dict(os.environ, SMOKE="1", OUT=str(tmp_path), BUDGET_S="600", PATH=path)
    env.pop("LONGATTN_TEST_DEVICE", None)
    res = subprocess.run(["bash", "bench/npu_check.sh"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]

    collected = {}
    for shard in ("hazards", "ops"):
        text = (tmp_path / f"pytest-{shard}.log").read_text()
        assert (tmp_path / f"pytest-{shard}.rc").read_text().strip() == "0", text[-2000:]
        collected[shard] = _node_ids(text)

    everything = subprocess.run(
        [sys.executable, "-m", "pytest", "tests/ops", "tests/ascend/test_hardware_hazards.py", "--collect-only", "-q",
         "-p", "no:cacheprovider"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    nodes = _node_ids(everything.stdout)
    ops = {n for n in nodes if n.startswith("tests/ops/") and ASCEND_PARAM.search(n)}
    hazards = {n for n in nodes if n.startswith("tests/ascend/") and ASCEND_PARAM.search(n)}
    assert len(ops) > 100 and len(hazards) >= 8, everything.stdout[-2000:]
    assert collected["ops"] == ops, sorted(ops ^ collected["ops"])[:10]
    assert collected["hazards"] == hazards, sorted(hazards ^ collected["hazards"])[:10]

    listing = (tmp_path / "bench.log").read_text()
    for case in (
        "sparse_attention.decode/v4-flash/csa/ctx=1M/b=1/page=64/bf16",  # 128 + 512 = 640 keys
        "sparse_attention.decode/v4-pro/hca/ctx=1M/b=96/page=64/fp8",  # 128 + 8,192 = 8,320 keys
        "indexer_topk.decode/v4-flash/ctx=1M/b=24/page=64/bf16",  # 262,144 entries
    ):
        assert case in listing, listing[-2000:]
    summary = (tmp_path / "summary.txt").read_text()
    assert "bench rc=0" in summary and "failed=0" in summary, summary[-2000:]
