"""The offline sm_90a model's estimates: parsing the probe's table, the stored JSON, and attaching them
to triton_grid rows (the only place they are shown beside measurements)."""

import pytest

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
    for grid_case, (probe_case, _) in [*sm90_model.GRID_TO_PROBE.items(), *sm90_model.GRID_TO_SELECT_MODEL.items()]:
        est = model["estimates"][probe_case]
        assert 0 < est["optimistic_us"] <= est["pessimistic_us"], grid_case
    for case in sm90_model.SELECT_CASES:  # every select-path case, with its parts
        est = model["estimates"][case]
        assert {"key kernel", "radix select stage 1", "launch gaps"} <= est["parts"].keys(), case
        assert "write" not in est["parts"], case  # the last radix stage writes the indices (no launch)
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
            {"case": idx, "backend": "triton", "ms": 0.62},  # the select path: no select estimate in this model
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


def test_select_path_estimate_attaches_to_the_default_triton_rows():
    case = "indexer top-512 decode N=262144 T=1 paged (page 64)"
    model = {"path": "x.json", "estimates": {
        "indexer select top-512 decode bf16-pool N=262144 T=1": {"optimistic_us": 80.0, "pessimistic_us": 300.0},
        "indexer top-512 decode N=262144 T=1": {"optimistic_us": 479.0, "pessimistic_us": 952.0}}}  # fmt: skip
    doc = {"results": [{"case": case, "backend": "triton", "ms": 0.16},
                       {"case": case, "backend": "triton-fused", "ms": 1.0}]}  # fmt: skip
    sm90_model.attach(doc, model)
    assert doc["results"][0]["model_us"] == [80.0, 300.0] and doc["results"][0]["measured_over_model"] == 2.0
    assert "model_us" not in doc["results"][1]  # the fused estimate belongs to the unpaged case


def _select_records(issue_key=2506.0, smem_key=888.0, radix_grids=((1, 16), (1, 1)), radix_prefetch=False):
    """Synthetic compiled launches of the FP8 select path (T = 1, 262,144 entries): a key kernel of 512
    programs (1 per SM at a time) of 8 x 64-entry iterations; radix stages of 16 and 1 programs, each
    with 8 pass loops and a compaction loop (loads pipelined by cp.async with ``radix_prefetch``), the
    last of which writes the indices."""
    comp = {"smem_clk": smem_key, "mma_sync_clk": 0.0, "wgmma_clk": min(256.0, smem_key), "issue_clk": issue_key}
    key_cost = [max(comp.values()), comp, True]
    ops = {"LDGSTS.E.64": 4} if radix_prefetch else {"LDG.E.64": 4}
    passes = [{"ops": ops, "cost": [800.0, {"smem_clk": 16.0, "issue_clk": 800.0}, radix_prefetch]}] * 8
    compaction = {"ops": ops, "cost": [500.0, {"smem_clk": 320.0, "issue_clk": 500.0}, radix_prefetch]}
    case = "indexer select top-512 decode fp8-pool N=262144 T=1"
    radix = dict(case=case, kernel="_select_keys_kernel", loops_full=passes + [compaction],
                 constexprs={"BLOCK": 1024, "TOPK_P2": 512})  # fmt: skip
    return [
        dict(
            case=case,
            kernel="_indexer_topk_partial_kernel",
            launch_index=0,
            grid=[1, 512],
            ctas=512,
            occupancy={"ctas_per_sm": 1},
            constexprs={"BLOCK_N": 64},
            loops_full=[{"ops": {"HGMMA.64x64x16.SS": 8}, "cost": key_cost}],
        ),  # fmt: skip
        *[dict(radix, launch_index=1 + i, grid=list(g)) for i, g in enumerate(radix_grids)],
    ]


SELECT_CONSTANTS = dict(CLK=1e9, LAT=[800, 1600], L2_LAT=[300, 600], IPC=[1.0, 0.5], LAUNCH_US=2.0, HBM_TBS=4.8,
                        SMS=132)  # fmt: skip


def test_select_path_model_charges_each_launch_by_its_rule():
    """By hand, at 1 GHz: key kernel ceil(512 / 132) = 4 programs per SM x 8 iterations x 2506 clk + 4
    waves x LAT (800 / 1600; issue at IPC 1 / 0.5: 5012 clk pessimistic); radix stage 1 over 16,384
    keys (16 iterations) x (3 / 8 passes + the compaction) x (loop clk + L2_LAT), stage 2 over 16 x 512
    candidates (8 iterations), which also writes the indices; 2 launch gaps of 2 us."""
    est = sm90_model.select_path_model(_select_records(), SELECT_CONSTANTS)
    (case,) = est
    e = est[case]
    assert e["parts"]["key kernel"] == [83.39, 166.78]
    assert e["parts"]["radix select stage 1"] == [65.6, 307.2]  # 16 x (3 x 1100 + 800), 16 x (8 x 2200 + 1600)
    assert e["parts"]["radix select stage 2"] == [32.8, 153.6]
    assert e["parts"]["launch gaps"] == [4.0, 4.0] and "write" not in e["parts"]
    assert (e["optimistic_us"], e["pessimistic_us"]) == (185.8, 631.6)
    assert e["key_bytes"] == 262144 * 132 + 64 * (256 + 4)
    assert e["hbm_fraction"][0] == round(e["key_bytes"] / 185.8e-6 / 4.8e12, 3)


def test_select_path_model_refuses_a_launch_it_has_no_rule_for():
    """The select path's launches are the key kernel and the radix stages (the last one writes the
    indices); a separate write launch (the merge kernel, as before 2026-12-06) is not silently priced."""
    recs = _select_records()
    recs.append(dict(recs[-1], kernel="_indexer_topk_merge_kernel", launch_index=len(recs), loops_full=[]))
    with pytest.raises(RuntimeError, match="_indexer_topk_merge_kernel"):
        sm90_model.select_path_model(recs, SELECT_CONSTANTS)


def test_select_path_model_never_beats_the_key_bytes():
    """A key loop cheaper than the bytes it reads is charged the bytes at HBM_TBS (FP8: 34.6 MB = 7.21 us;
    the loop: 4 x 8 x 1 clk + 4 waves x LAT = 3.2 / 6.4 us)."""
    est = sm90_model.select_path_model(_select_records(issue_key=1.0, smem_key=1.0), SELECT_CONSTANTS)
    (e,) = est.values()
    assert e["parts"]["key kernel"] == [7.21, 7.21]


def test_select_path_model_reads_each_stage_span_of_its_row():
    """Three radix stages (64, 8, 1 programs): each program's span is its stage's row over its programs:
    262,144 / 64, then 64 lists x 512 / 8, then 8 x 512: 4,096 keys (4 iterations) each; 3 launch gaps."""
    recs = _select_records(radix_grids=((1, 64), (1, 8), (1, 1)))
    (e,) = sm90_model.select_path_model(recs, SELECT_CONSTANTS).values()
    for stage in (1, 2, 3):
        assert e["parts"][f"radix select stage {stage}"] == [16.4, 76.8], stage  # 4 x 4100 / 4 x 19200 clk
    assert e["parts"]["launch gaps"] == [6.0, 6.0]


def test_select_path_model_waits_for_l2_once_per_pipelined_pass():
    """Pass loops whose loads are pipelined (cp.async, the probe's has_prefetch) pay L2_LAT once per pass,
    not per iteration: each stage of 4 iterations, at 1 GHz, 3 x (4 x 800 + 300) + 4 x 500 + 300 =
    12,800 clk optimistic, 8 x (4 x 1600 + 600) + 4 x 1000 + 600 = 60,600 pessimistic (IPC 0.5); without
    the prefetch 16.4 / 76.8 us (above)."""
    recs = _select_records(radix_grids=((1, 64), (1, 8), (1, 1)), radix_prefetch=True)
    (e,) = sm90_model.select_path_model(recs, SELECT_CONSTANTS).values()
    for stage in (1, 2, 3):
        assert e["parts"][f"radix select stage {stage}"] == [12.8, 60.6], stage


def test_select_path_model_issues_code_outside_the_loops_once():
    """A radix stage's code outside its loops (``sass_total`` minus the loops' instructions: the unrolled
    passes' histogram scans, the last stage's sort) is issued once by each of its warps: 8 warps x
    (2,000 - 9 loops x 100) instructions / 4 schedulers = 2,200 clk at IPC 1 (4,400 at 0.5), on top of
    the loops' 12.8 / 60.6 us (1 GHz)."""
    recs = _select_records(radix_grids=((1, 64), (1, 8), (1, 1)), radix_prefetch=True)
    for r in recs:
        if r["kernel"] == "_select_keys_kernel":
            r.update(num_warps=8, sass_total=2000, loops_full=[dict(lp, instructions=100) for lp in r["loops_full"]])
    (e,) = sm90_model.select_path_model(recs, SELECT_CONSTANTS).values()
    for stage in (1, 2, 3):
        assert e["parts"][f"radix select stage {stage}"] == [15.0, 65.0], stage


BWD_CASE = "sparse backward V4-Flash prefill chunk bf16 T=4096 H=64 128+512"
BWD_CONSTANTS = dict(SELECT_CONSTANTS, CLK=1e9)


def _loop(lo, hi, instructions, ops, smem, issue):
    return dict(lo=hex(lo), hi=hex(hi), instructions=instructions, ops=ops,
                cost=[max(smem, issue), {"smem_clk": smem, "issue_clk": issue}, True])  # fmt: skip


def _backward_record(case=BWD_CASE, grad_ops=None):
    """A compiled backward as the source nests its loops: a head-block loop around two key-block loops
    (one per stream, 1,000 instructions each), each around an s / dp loop (wgmma; 300 smem / 200 issue
    clk) and a gradient loop (6,000 / 2,000 clk; the dq rows by a plain load unless ``grad_ops``)."""
    grad_ops = grad_ops if grad_ops is not None else {"FFMA": 700, "LDG.E.128": 4, "LDGSTS.E.BYPASS.128": 4}
    loops = [_loop(0x100, 0x9000, 2100, {"FFMA": 1}, 0, 1)]
    for base in (0x200, 0x5000):
        loops += [
            _loop(base, base + 0x3000, 1000, {"FFMA": 1}, 0, 1),
            _loop(base + 0x100, base + 0x600, 100, {"HGMMA.64x16x16.F32.BF16.SS": 8}, 300, 200),
            _loop(base + 0x700, base + 0x2F00, 800, grad_ops, 6000, 2000),
        ]
    return dict(case=case, kernel="_sparse_attn_bwd_kernel", num_warps=8, loops_full=loops, regs=113,
                spill_stores=0, occupancy={"ctas_per_sm": 2},
                constexprs={"BLOCK_H": 64, "BLOCK_N": 16, "BLOCK_D": 64})  # fmt: skip


def test_backward_model_charges_each_key_block_by_its_loops():
    """By hand, at 1 GHz: per key block 8 head-dim tiles x (s / dp loop + gradient loop) + the key-block
    loop's own 100 instructions x 8 warps / 4: optimistic 8 x 300 + 8 x 6000 + 200 = 50,600 clk;
    pessimistic (IPC 0.5) 8 x 400 + 8 x 6000 + 400 + 8 x L2_LAT 600 (the gradient loop's plain dq load)
    = 56,400; issue only 8 x 200 + 8 x 2000 + 200 = 17,800. ceil(4096 / 132) = 32 programs per SM, one
    head block, 128 / 16 = 8 window and 512 / 16 = 32 compressed key blocks."""
    (e,) = sm90_model.backward_model([_backward_record()], BWD_CONSTANTS).values()
    assert e["per_key_block_clk"]["window"] == {"s / dp loop": [2400.0, 3200.0], "gradient loop": [48000.0, 48000.0],
                                                "between": [200.0, 400.0], "exposed L2": [0.0, 4800.0]}  # fmt: skip
    assert e["parts"] == {"window": [12953.6, 14438.4], "compressed": [51814.4, 57753.6]}
    assert (e["optimistic_us"], e["pessimistic_us"], e["issue_only_us"]) == (64768.0, 72192.0, 22784.0)
    assert e["bound"] == "smem_clk" and e["tile"] == [64, 16, 64, 8]
    assert e["fma_flops"] == 4096 * 64 * 640 * 512 * 2 * 3 and e["flops"] == e["fma_flops"] // 3 * 5
    assert e["atomic_bytes"] == 4096 * 640 * 512 * 4


def test_backward_model_without_plain_loads_pays_no_l2_wait():
    rec = _backward_record(grad_ops={"FFMA": 700, "LDGSTS.E.BYPASS.128": 4})
    (e,) = sm90_model.backward_model([rec], BWD_CONSTANTS).values()
    assert e["per_key_block_clk"]["compressed"]["exposed L2"] == [0.0, 0.0]
    assert e["pessimistic_us"] == round(32 * 40 * 51600 / 1e3, 1)


def test_backward_model_names_a_tile_case_and_rejects_a_strange_nesting():
    tile = sm90_model.backward_tile_case(BWD_CASE, (32, 32, 64, 4))
    assert tile == BWD_CASE + " cfg=32,32,64,4" and sm90_model.backward_shape(tile) == (4096, 64, 128, 512)
    rec = _backward_record(case=tile)
    rec["constexprs"]["BLOCK_H"] = 32  # two head blocks: twice the time
    (e,) = sm90_model.backward_model([rec], BWD_CONSTANTS).values()
    assert e["optimistic_us"] == 2 * 64768.0
    rec["loops_full"] = [lp for lp in rec["loops_full"] if "HGMMA.64x16x16.F32.BF16.SS" not in lp["ops"]]
    try:
        sm90_model.backward_model([rec], BWD_CONSTANTS)
    except RuntimeError as exc:
        assert "without its s / dp and gradient loops" in str(exc)
    else:
        raise AssertionError("a key-block loop with one inner loop was accepted")


def test_backward_rows_get_their_own_estimates():
    model = {"path": "x.json", "estimates": {BWD_CASE: {"optimistic_us": 30000.0, "pessimistic_us": 40000.0}}}
    doc = {"results": [{"case": BWD_CASE, "backend": "triton backward", "ms": 60.0},
                       {"case": BWD_CASE, "backend": "reference backward", "ms": 900.0},
                       {"case": BWD_CASE + " cfg=32,32,64,4", "backend": "triton backward", "ms": 50.0}]}  # fmt: skip
    sm90_model.attach(doc, model)
    r = doc["results"]
    assert r[0]["model_us"] == [30000.0, 40000.0] and r[0]["measured_over_model"] == 2.0
    assert "model_us" not in r[1] and "model_us" not in r[2]  # no estimate stored for that tile here


def test_the_stored_json_models_the_backward_at_every_tile():
    est = sm90_model.load()["estimates"]
    first = next(iter(sm90_model.BACKWARD_CASES))
    names = [
        *sm90_model.BACKWARD_CASES,
        *(sm90_model.backward_tile_case(first, t) for t in sm90_model.BACKWARD_SWEEP_TILES),
    ]
    for name in names:
        e = est[name]
        assert 0 < e["issue_only_us"] <= e["optimistic_us"] <= e["pessimistic_us"], name
        assert e["spill_bytes"] == 0 and {"window", "compressed"} == e["parts"].keys(), name
