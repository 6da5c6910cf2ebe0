"""The CLI end to end at tiny sizes (--quick, contexts of 1K): JSON schema, table, plots, skips."""

import json
import os

import pytest
import torch
from longattn.backends import registry

from bench import cli, goals, plots, results

# Only the reference backend (plus the test's fake one): under the test suite's TRITON_INTERPRET=1 the
# triton backend would accept CPU tensors and run in the (slow) interpreter.
FAST = ["--quick", "--warm-cache", "--no-rss", "--contexts", "1K", "--chunks", "16", "--batch", "1",
        "--tokens", "256", "--backends", "reference"]  # fmt: skip


def _run(tmp_path, *extra, name="t"):
    rc = cli.main(FAST + ["--out", str(tmp_path), "--name", name, *extra])
    with open(os.path.join(tmp_path, f"{name}.json")) as f:
        return rc, json.load(f)


def test_list_shows_the_default_suite(capsys):
    assert cli.main(["--list"]) == 0
    out = capsys.readouterr().out
    assert "csa_layer.decode/v4-flash/ctx=1M/b=1/page=64/bf16" in out and "(default selection)" in out


def test_list_of_every_case_skips_layer_kinds_a_preset_lacks(capsys):
    assert cli.main(["--list", "--all", "--ops", "hybrid_attention.swa"]) == 0
    out = capsys.readouterr().out
    assert "hybrid_attention.swa.decode/v4-flash/" in out and "/v4-pro/" not in out  # V4-Pro has no SWA layer


def test_tiny_run_writes_a_valid_document(tmp_path, capsys, monkeypatch):
    # a backend whose module cannot be imported is discovered through the registry and recorded
    monkeypatch.setitem(registry._MODULES, "broken_test_backend", "bench_tests_no_such_module")
    monkeypatch.delitem(registry._loaded, "broken_test_backend", raising=False)
    rc, doc = _run(tmp_path, "--ops", "sparse_attention.decode", "csa_layer.prefill", "merge*", "compress_pool",
                   "--kinds", "csa", "--backends", "reference", "broken_test_backend")  # fmt: skip
    assert rc == 0
    assert results.validate(doc) == []
    assert doc["schema_version"] == results.SCHEMA_VERSION and doc["suite"] == "quick-custom"
    groups = {c["group"] for c in doc["cases"]}
    assert groups == {"sparse_attention.decode", "csa_layer.prefill", "merge_attention_states", "compress_pool"}
    for c in doc["cases"]:
        assert c["status"] == "ok", c
        impls = {r["impl"]: r for r in c["runs"]}
        assert impls["reference"]["status"] == "ok"
        assert impls["broken_test_backend"]["status"] == "skipped"
        assert "failed to load" in impls["broken_test_backend"]["reason"]
        ref = impls["reference"]
        assert ref["time"]["n"] >= 1 and ref["peak_mem_bytes"] >= 0 and ref["floor"]["bound"] in ("memory", "compute")
    dec = next(c for c in doc["cases"] if c["group"] == "sparse_attention.decode")
    runs = {r["impl"]: r for r in dec["runs"]}
    assert runs["dense_sdpa"]["status"] == "ok" and runs["dense_sdpa"]["check"]["value"] < 0.05
    assert {r["peer"] for r in dec["ratios"]} >= {"dense_sdpa", "dense_einsum"}
    assert runs["flex_attention"]["status"] == "skipped" and runs["flex_attention"]["reason"]
    out = capsys.readouterr().out
    assert "median" in out and "JSON:" in out and "reference" in out
    ok, why = plots.available()
    if ok:
        assert len(doc["outputs"]["plots"]) >= 1 and all(os.path.exists(p) for p in doc["outputs"]["plots"])
    else:
        assert "matplotlib" in doc["outputs"]["plots_skipped"][0] and "plots skipped" in out


def test_plots_are_skipped_with_a_reason_without_matplotlib(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(plots, "available", lambda: (False, "matplotlib is not installed (test)"))
    rc, doc = _run(tmp_path, "--ops", "merge*", "--no-peers", name="np")
    assert rc == 0 and doc["outputs"]["plots"] == []
    assert doc["outputs"]["plots_skipped"] == ["matplotlib is not installed (test)"]
    assert "plots skipped: matplotlib is not installed (test)" in capsys.readouterr().out


def test_peers_over_the_limits_are_skipped_with_the_reason(tmp_path):
    rc, doc = _run(tmp_path, "--ops", "sparse_attention.decode", "--kinds", "hca", "--peer-max-s", "1e-9",
                   "--no-plots", name="lim")  # fmt: skip
    assert rc == 0 and results.validate(doc) == []
    (case,) = doc["cases"]
    runs = {r["impl"]: r for r in case["runs"]}
    assert runs["dense_einsum"]["status"] == "skipped" and "estimated" in runs["dense_einsum"]["reason"]
    rc, doc = _run(tmp_path, "--ops", "sparse_attention.decode", "--kinds", "hca", "--mem-limit-gb", "1e-6",
                   "--no-plots", name="mem")  # fmt: skip
    (case,) = doc["cases"]
    assert case["status"] == "skipped" and "memory limit" in case["reason"]
    assert results.validate(doc) == []


def test_bad_arguments_fail_cleanly(capsys, tmp_path):
    with pytest.raises(SystemExit):
        cli.main(["--ops", "no_such_op", "--list"])
    argv = ["--backends", "no_such_backend", "--ops", "merge*", "--quick", "--no-plots", "--out", str(tmp_path)]
    assert cli.main(argv) == 2


def test_schema_rejects_broken_documents():
    assert results.validate({}) and results.validate({"schema": "x"})
    doc = {k: t[0]() for k, t in results.TOP_FIELDS.items()}
    doc.update(schema=results.SCHEMA, schema_version=results.SCHEMA_VERSION)
    errors = results.validate(doc)
    assert any("machine" in e for e in errors)


def test_readme_documents_every_schema_field():
    readme = open(os.path.join(os.path.dirname(cli.__file__), "README.md")).read()
    assert f"`schema_version`: {results.SCHEMA_VERSION}" in readme
    missing = [f"{where}.{k}" for where, fields in results.ALL_FIELD_SETS.items() for k in fields
               if f"`{k}`" not in readme]  # fmt: skip
    assert not missing, missing


def test_goals_are_evaluated_from_results():
    def run(impl, kind, t, mem, x=None):
        floor = {"memory_s": 0.004, "compute_s": 0.02, "bound": "compute"}
        return {"impl": impl, "kind": kind, "status": "ok", "time": {"median_s": t}, "peak_mem_bytes": mem,
                "x_floor": x, "compute_dtype": "fp32", "floor": floor}  # fmt: skip

    dec1m = {"group": "csa_layer.decode", "params": {"preset": "v4-flash", "context": 1 << 20, "batch": 1},
             "runs": [run("reference", "backend", 0.05, 1, x=2.5)], "ratios": []}  # fmt: skip
    ratios = [{"backend": "reference", "peer": "dense_sdpa", "speedup": 12.0, "mem_ratio": 0.05},
              {"backend": "reference", "peer": "dense_einsum", "speedup": 8.0, "mem_ratio": 0.01}]  # fmt: skip
    dec128 = {"group": "csa_layer.decode", "params": {"preset": "v4-flash", "context": 131072, "batch": 1},
              "runs": [], "ratios": ratios}  # fmt: skip
    doc = {"machine": {"device": "cpu"}, "cases": [dec1m, dec128]}
    g = {x["id"]: x for x in goals.evaluate(doc)}
    assert g["decode_1m_floor"]["status"] == "met"
    assert g["sparse_vs_dense_128k_decode_dense_sdpa"]["status"] == "met"
    assert g["sparse_vs_dense_128k_decode_dense_einsum"]["status"] == "not met"
    assert g["sparse_vs_dense_128k_prefill_dense_sdpa"]["status"] == "not measured"
    assert goals.evaluate({"machine": {"device": "cuda"}, "cases": []}) == []


NEW_GROUPS = {"append_kv.decode", "append_kv.prefill", "compress_kv.decode", "compress_kv.prefill", "cache_plan.decode",
              "cache_plan.prefill"} | {f"hybrid_attention.{k}.{m}" for k in ("swa", "csa", "hca")
                                       for m in ("decode", "prefill")}  # fmt: skip


def test_tiny_run_of_the_cache_op_and_layer_families(tmp_path):
    rc, doc = _run(tmp_path, "--ops", "append_kv*", "compress_kv*", "cache_plan*", "hybrid_attention*",
                   "--dtypes", "bf16", "fp8", "--no-plots", name="layer")  # fmt: skip
    assert rc == 0 and results.validate(doc) == []
    assert {c["group"] for c in doc["cases"]} == NEW_GROUPS
    assert {c["params"].get("dtype") for c in doc["cases"]} == {"bf16", "fp8", None}  # (cache_plan: no dtype)
    for c in doc["cases"]:
        assert c["status"] == "ok", c
        runs = {r["impl"]: r for r in c["runs"]}
        if c["op"] == "cache_plan":  # host bookkeeping: one run, whatever --backends says
            assert [r["impl"] for r in c["runs"]] == ["host"] and runs["host"]["status"] == "ok"
            assert c["cost"]["flops"] == 0 and runs["host"]["floor"]["bound"] == "memory"
            continue
        assert runs["reference"]["status"] == "ok" and c["cost"]["bytes"] > 0
        if c["op"] == "compress_kv":
            assert runs["reference"]["compute_dtype"] == "fp32"
        if c["op"] == "hybrid_attention":
            assert c["mode"] == c["group"].rsplit(".", 1)[1] and c["params"]["kind"] == c["group"].split(".")[1]
            for peer in ("dense_sdpa", "dense_einsum", "dense_einsum_fp32"):
                assert runs[peer]["status"] == "ok" and runs[peer]["check"]["value"] < 0.05, (c["name"], peer)
            assert {r["peer"] for r in c["ratios"]} == {"dense_sdpa", "dense_einsum", "dense_einsum_fp32"}


def test_triton_on_cpu_is_skipped_with_its_reason_without_the_interpreter(tmp_path):
    """Without TRITON_INTERPRET=1 (which this test session sets), the triton backend is tried on CPU cases
    and recorded as skipped with the reason; the reference runs."""
    import subprocess
    import sys

    if torch.cuda.is_available():
        pytest.skip("a CUDA device: triton runs natively")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    root = os.path.dirname(os.path.dirname(cli.__file__))
    out = subprocess.run(
        [sys.executable, "-m", "bench", *FAST, "--backends", "reference", "triton", "--ops", "append_kv.decode",
         "--no-plots", "--no-peers", "--out", str(tmp_path), "--name", "tr"],
        cwd=root, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    with open(os.path.join(tmp_path, "tr.json")) as f:
        doc = json.load(f)
    (case,) = doc["cases"]
    runs = {r["impl"]: r for r in case["runs"]}
    assert runs["reference"]["status"] == "ok"
    if runs["triton"]["status"] == "skipped":
        assert "TRITON_INTERPRET" in runs["triton"]["reason"] or "not installed" in runs["triton"]["reason"]
    else:  # pragma: no cover - only where triton is importable without CUDA and interprets by default
        raise AssertionError(runs["triton"])


def test_layer_goals_are_evaluated_from_the_hybrid_attention_cases():
    def run(impl, t, x=None):
        floor = {"memory_s": 0.004, "compute_s": 0.02, "bound": "compute"}
        return {"impl": impl, "kind": "backend", "status": "ok", "time": {"median_s": t}, "peak_mem_bytes": 1,
                "x_floor": x, "compute_dtype": "fp32", "floor": floor}  # fmt: skip

    p1m = {"preset": "v4-flash", "context": 1 << 20, "batch": 1, "dtype": "bf16", "kind": "csa"}
    dec1m = {"group": "hybrid_attention.csa.decode", "params": p1m, "runs": [run("reference", 0.08, x=3.5)],
             "ratios": []}  # fmt: skip
    fp8 = {"group": "hybrid_attention.csa.decode", "params": dict(p1m, dtype="fp8"),
           "runs": [run("reference", 0.05, x=2.0)], "ratios": []}  # fmt: skip
    ratios = [{"backend": "reference", "peer": "dense_einsum", "speedup": 15.0, "mem_ratio": 0.04}]
    pre = {"group": "hybrid_attention.csa.prefill", "params": {"preset": "v4-flash", "context": 131072, "chunk": 256,
           "dtype": "bf16"}, "runs": [], "ratios": ratios}  # fmt: skip
    g = {x["id"]: x for x in goals.evaluate({"machine": {"device": "cpu"}, "cases": [fp8, dec1m, pre]})}
    assert g["layer_decode_1m_floor"]["status"] == "not met" and g["layer_decode_1m_floor"]["value"] == 3.5
    assert g["layer_vs_dense_128k_prefill_dense_einsum"]["status"] == "met"
    assert g["layer_vs_dense_128k_decode_dense_sdpa"]["status"] == "not measured"
    assert g["decode_1m_floor"]["status"] == "not measured"  # the csa_layer composite is a separate goal


def test_cases_after_the_time_budget_are_recorded_as_skipped(tmp_path, capsys):
    rc, doc = _run(tmp_path, "--ops", "merge*", "--no-peers", "--no-plots", "--time-budget", "1e-6", name="tb")
    assert rc == 0 and results.validate(doc) == [] and doc["settings"]["time_budget_s"] == 1e-6
    assert doc["cases"] and all(c["status"] == "skipped" and "time budget" in c["reason"] for c in doc["cases"])
    assert "time budget of 0 s spent" in capsys.readouterr().out
    rc, doc = _run(tmp_path, "--ops", "merge*", "--no-peers", "--no-plots", name="nb")  # none outside the default suite
    assert doc["settings"]["time_budget_s"] is None and all(c["status"] == "ok" for c in doc["cases"])


def test_the_default_suite_has_a_time_budget_and_starts_with_the_main_job():
    assert cli.build_parser().parse_args([]).time_budget is None and cli.DEFAULT_SUITE_BUDGET_S < 300
    suite, selected = cli.select(cli.build_parser().parse_args([]))
    assert suite == "default" and selected[0][0].name.startswith("csa_layer.decode/v4-flash/")
    assert any(c.name == "csa_layer.decode/v4-flash/ctx=1M/b=1/page=64/bf16" for c, _ in selected[:2])
