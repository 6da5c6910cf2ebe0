"""bench/cp_prefill.py: the torchrun example runs on 2 CPU ranks and reports the single-device output;
the model's numbers follow from its stated FLOPs and bytes."""

import json
import os
import subprocess
import sys
from pathlib import Path

from bench.cp_decode import MACHINES, V4
from bench.cp_prefill import PEAK_FLOPS, model_prefill, prefill_flops

REPO = Path(__file__).resolve().parents[2]


def test_torchrun_two_ranks(tmp_path):
    out = tmp_path / "cp.json"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "-m", "bench.cp_prefill",
           "--tokens", "300", "--steps", "1", "--json", str(out)]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "python"), str(REPO)])}
    r = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    res = json.loads(out.read_text())
    assert res["world"] == 2 and res["tokens"] == 300
    assert res["max_abs_out_diff"] < 1e-5  # fp32 outputs of magnitude ~1: a few roundings
    assert res["single_device_ms"] > 0 and res["cp_ms"] > 0


def test_prefill_flops_closed_form():
    # 8 tokens, ratio 4: visible counts 0,0,0,1,1,1,1,2 -> 6 scores; top-k 1 caps the 2 at 1.
    f = prefill_flops(8, topk=1)
    assert f["indexer"] == 2 * V4["index_heads"] * V4["index_dim"] * 6
    assert f["attention"] == 4 * V4["heads"] * V4["head_dim"] * (8 * V4["window"] + 5)


def test_model_is_flops_over_peak_plus_comm():
    name = "8x H200 (NVLink 4)"
    st = model_prefill(1 << 20, name)
    f, peak = st["flops"], PEAK_FLOPS[name]
    assert abs(st["single_device_s"] - (f["indexer"] / peak["indexer"] + f["attention"] / peak["attention"])) < 1e-12
    assert st["cp_s"] > st["single_device_s"] / MACHINES[name]["world"]  # communication is never free
    assert 2.0e15 < f["indexer"] < 2.5e15  # ~2.25 PFLOP per CSA layer at 1M tokens (issue 17)
