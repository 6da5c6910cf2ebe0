"""The offline sm_90a model's estimates: parsing the probe's table, the stored JSON, and attaching them
to triton_grid rows (the only place they are shown beside measurements)."""

from bench import sm90_model

PROBE_TAIL = """
| case | kernel | CTAs |
|---|---|---|
| sparse CSA decode bf16 H=128 128+1024 T=64 | _sparse_attn_fwd_kernel | 256 |

model (assumptions in the source):
| case | bound | us | TFLOP/s | GB/s | metric | vs goal | per-iteration clk components |
|---|---|---|---|---|---|---|---|
| sparse CSA decode bf16 H=128 128+1024 T=64 | optimistic | 49.7 | 388.6 | 1861 | 39.3% | 79% of goal | {} |
| sparse CSA decode bf16 H=128 128+1024 T=64 | pessimistic | 55.0 | 351.5 | 1684 | 35.5% | 71% of goal | {} |
| indexer top-512 decode N=262144 T=1 | optimistic | 479.0 | - | 140 | 2.9% | 4% of goal | {} |
"""


def test_the_probe_table_is_parsed_and_incomplete_pairs_are_dropped():
    est = sm90_model.parse_probe_output(PROBE_TAIL)
    assert est == {"sparse CSA decode bf16 H=128 128+1024 T=64": {"optimistic_us": 49.7, "pessimistic_us": 55.0}}
    assert sm90_model.parse_probe_output("no table here") == {}


def test_the_stored_json_covers_every_mapped_case():
    model = sm90_model.load()
    assert model is not None, "bench/results/sm90-model-*.json is missing"
    for grid_case, (probe_case, _) in sm90_model.GRID_TO_PROBE.items():
        est = model["estimates"][probe_case]
        assert 0 < est["optimistic_us"] <= est["pessimistic_us"], grid_case
    assert "model" in model["what"] and model["commit"]


def test_attach_puts_estimates_on_the_rows_they_describe_only():
    model = {"path": "x.json", "estimates": {
        "sparse CSA decode bf16 H=128 128+1024 T=64": {"optimistic_us": 50.0, "pessimistic_us": 55.0},
        "indexer top-512 decode N=262144 T=1": {"optimistic_us": 479.0, "pessimistic_us": 952.0}}}  # fmt: skip
    csa, idx = "sparse decode CSA H=128 128+1024 T=64", "indexer top-512 decode N=262144 T=1"
    doc = {
        "results": [
            {"case": csa, "backend": "triton", "ms": 0.172},
            {"case": csa, "backend": "reference", "ms": 13.4},
            {"case": idx, "backend": "triton", "ms": 0.62},  # the select path: the estimate is the fused one's
            {"case": idx, "backend": "triton-fused", "ms": 1.729},
            {"case": "not modelled", "backend": "triton", "ms": 1.0},
        ],
        "decode_graph": {
            "rows": [{"case": "sparse decode CSA H=128 128+1024 T=1", "op": "sparse_attention", "graph_ms": None}]
        },  # fmt: skip
    }
    out = sm90_model.attach(doc, model)
    r = doc["results"]
    assert r[0]["model_us"] == [50.0, 55.0] and abs(r[0]["measured_over_model"] - 3.44) < 1e-9
    assert "model_us" not in r[1] and "model_us" not in r[2] and "model_us" not in r[4]
    assert r[3]["model_us"] == [479.0, 952.0]
    assert "model_us" not in doc["decode_graph"]["rows"][0]  # no estimate stored for that case here
    assert [ln["row"] for ln in out["covered"]] == ["triton", "triton-fused"]
    assert sm90_model.attach({"results": []})["covered"] == []  # the stored JSON, nothing to cover


def test_a_loop_free_combine_is_charged_one_pass():
    """The probe's combine term is num_splits x 512 / BLOCK_D serial iterations of 2 L2 round trips; a
    combine compiled without a loop keeps one of them (the others are subtracted, the probe's figures
    kept); a combine that still loops, or a case without one, is left as the probe gave it."""
    est = {
        "HCA T=1": {"optimistic_us": 100.0, "pessimistic_us": 200.0},
        "looping": {"optimistic_us": 50.0, "pessimistic_us": 60.0},
        "no combine": {"optimistic_us": 10.0, "pessimistic_us": 10.0},
    }
    summary = [
        {"case": "HCA T=1", "kernel": "_sparse_attn_fwd_kernel", "grid": [1, 2, 32]},
        {"case": "HCA T=1", "kernel": "_combine_splits_kernel", "constexprs": {"BLOCK_D": 64}, "loops_full": []},
        {"case": "looping", "kernel": "_sparse_attn_fwd_kernel", "grid": [1, 2, 4]},
        {"case": "looping", "kernel": "_combine_splits_kernel", "constexprs": {"BLOCK_D": 64}, "loops_full": [{}]},
        {"case": "no combine", "kernel": "_sparse_attn_fwd_kernel", "grid": [64, 2, 1]},
    ]
    out = sm90_model.one_pass_combine(est, summary, (300, 600), 1.5e9)
    # 32 splits x 8 chunks = 256 iterations -> 1: 255 x 2 x 300 clk at 1.5 GHz = 102 us (204 pessimistic)
    assert out["HCA T=1"]["combine_correction_us"] == [102.0, 204.0]
    assert out["HCA T=1"]["optimistic_us"] == -2.0 and out["HCA T=1"]["probe_us"] == [100.0, 200.0]
    assert out["looping"] == est["looping"] and out["no combine"] == est["no combine"]
    assert est["HCA T=1"] == {"optimistic_us": 100.0, "pessimistic_us": 200.0}  # the input is not changed
