"""bench/backward.py runs at a small size: sparse and dense masked gradients agree, every figure present."""

import json

from bench.backward import main, model_h200


def test_small_run_writes_every_figure(tmp_path):
    out = tmp_path / "bwd.json"
    assert main(["--contexts", "1024", "--tokens", "4", "--heads", "2", "--topk", "16", "--repeats", "1",
                 "--json", str(out)]) == 0  # fmt: skip
    res = json.loads(out.read_text())
    (row,) = res["cpu"]
    assert row["max_abs_grad_diff"] < 1e-4  # the same function two ways, fp32
    for k in ("sparse", "dense_masked"):
        assert row[k]["seconds"] > 0 and row[k]["peak_bytes"] != 0
    assert "not a measurement" in res["model_h200_triton_backward"]["note"]


def test_model_grows_with_the_keys():
    assert model_h200(64, 64, 1024)["bytes"] > model_h200(64, 64, 512)["bytes"]
