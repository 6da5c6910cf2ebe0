"""bench/cp_decode.py: the README's torchrun example runs on 2 CPU ranks and reports ids equal to one
device; the model's numbers follow from its stated bytes."""

import json
import os
import subprocess
import sys
from pathlib import Path

from bench.cp_decode import FP8_RECORD_BYTES, INDEX_KEY_BYTES, MACHINES, V4, model_step

REPO = Path(__file__).resolve().parents[2]


def test_torchrun_two_ranks(tmp_path):
    out = tmp_path / "cp.json"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "-m", "bench.cp_decode",
           "--context", "8192", "--topk", "64", "--steps", "1", "--json", str(out)]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "python"), str(REPO)])}
    r = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    res = json.loads(out.read_text())
    assert res["world"] == 2 and res["ids_equal_single_device"] is True
    assert res["max_abs_out_diff"] < 1e-5  # fp32 outputs of magnitude ~1: a few roundings
    assert res["single_device_ms"] > 0 and res["cp_ms"] > 0


def test_model_is_bytes_over_bandwidth():
    m = MACHINES["8x H200 (NVLink 4)"]
    st = model_step(1 << 20, 1024, m)
    n = (1 << 20) // V4["ratio"]
    single = (n * INDEX_KEY_BYTES + (1024 + V4["window"]) * FP8_RECORD_BYTES) / m["hbm_Bps"]
    assert abs(st["single_device_s"] - single) < 1e-15
    assert st["cp_s"] > single / m["world"]  # communication is never free
