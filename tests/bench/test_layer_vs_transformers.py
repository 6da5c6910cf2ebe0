"""bench/layer_vs_transformers.py: one short run end to end (V4-Flash sizes, 130 tokens: past the
128-token window and a few CSA blocks), its JSON, and the two layers agreeing on the output."""

import json

import pytest

pytest.importorskip("transformers", reason="transformers is not installed")
try:
    from transformers.models.deepseek_v4 import modeling_deepseek_v4  # noqa: F401
except ImportError as exc:
    pytest.skip(f"this transformers has no DeepSeek-V4: {exc}", allow_module_level=True)

from bench import layer_vs_transformers as lvt  # noqa: E402


def test_one_short_run(tmp_path):
    out = tmp_path / "lvt.json"
    assert lvt.main(["--tokens", "130", "--kinds", "csa", "--repeats", "1", "--out", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [(r["kind"], r["tokens"]) for r in rows] == [("csa", 130)]
    r = rows[0]
    assert r["longattn_s"] > 0 and r["transformers_s"] > 0 and r["speedup"] == r["transformers_s"] / r["longattn_s"]
    assert r["max_abs_diff"] < 1e-4  # fp32, O(1) outputs: the parity test bounds this far tighter


def test_transformers_is_skipped_past_theirs_max(tmp_path):
    out = tmp_path / "lvt.json"
    lvt.main(["--tokens", "130", "--kinds", "hca", "--repeats", "1", "--theirs-max", "64", "--out", str(out)])
    (row,) = json.loads(out.read_text())["rows"]
    assert "transformers_s" not in row and row["longattn_us_per_token"] > 0
