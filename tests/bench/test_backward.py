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


def test_the_compiled_model_of_both_cases_is_in_the_output():
    from bench.backward import compiled_model

    m = compiled_model()
    names = [n for n in m["cases"] if " cfg=" not in n]
    assert names == ["sparse backward V4-Flash prefill chunk bf16 T=4096 H=64 128+512",
                     "sparse backward V4-Pro prefill chunk bf16 T=2048 H=128 128+1024"], m  # fmt: skip
    for c in m["cases"].values():
        assert 0 < c["issue_only_seconds"] <= c["seconds"][0] <= c["seconds"][1]
    # the spec-sheet bound is below what the compiled loops give (it assumes the FMA peak)
    assert model_h200(4096, 64, 512)["seconds"] < m["cases"][names[0]]["seconds"][0]
