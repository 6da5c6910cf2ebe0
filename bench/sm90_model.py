"""The offline sm_90a model's estimates beside the GPU measurements of ``bench/triton_grid.py``.

No GPU has been lent often enough to tune the Triton kernels on it, so their speed is argued from the
compiled code: ``../shared/tools/triton_sass_probe.py`` (the project's probe, outside this repository)
compiles the launchers' real launches for sm_90a and estimates each V4 case's KERNEL time from the
hottest SASS loop with a per-SM cost model (an optimistic and a pessimistic bound; its assumptions are in
its source: clock, issue rate, exposed gather latency, L2 round trips of the combine, 2 us per extra
dependent launch; no host cost). This module keeps those estimates in a JSON under bench/results (with the
commit and triton release they were computed for) and attaches them to the grid's rows, so the first GPU
run checks the model as well as the kernels:

- ``python -m bench.sm90_model --probe PATH [--out JSON]``: runs the probe on this checkout and writes
  the estimates (``bench/results/sm90-model-<date>.json``).
- ``attach(doc)`` (called by triton_grid): adds ``model_us`` = [optimistic, pessimistic] and
  ``measured_over_model`` (measured / optimistic) to every grid row the model covers: the ``triton`` rows
  (op call), the CUDA-graph rows of ``decode_graph`` (kernel time without host cost, better matched) and
  the ``triton backward`` rows of the backward section (launcher call: the kernel plus a few ``[T, H]``
  PyTorch terms and the zeroing of the fp32 gradients). The probe's indexer estimate is for the fused
  path (running top-k lists + merge tree), so it is only attached to ``triton-fused`` rows; the default
  select path (key kernel -> radix select, whose last stage writes the indices) has its own estimate,
  ``select_path_model``, from the same probe's compile of its launches.

The select path's model (``select_path_model``; the probe has no case for it): its launches at the V4
decode (T = 1, 262,144 entries, 64 heads x 128 dims) are captured and compiled by the probe's own
functions (``_select_driver``, run in a subprocess) and charged with the probe's constants:
- key kernel: per SM, ``ceil(CTAs / SMS)`` programs x ``iterations`` x the MMA loop's busy clk (the
  probe's ``loop_cost``, its issue term divided by ``IPC``: optimistic 1.0, pessimistic 0.5, since
  co-resident programs share the issue slots), plus one exposed ``LAT`` per wave (the cp.async pipeline's
  fill); never less than its key bytes at ``HBM_TBS``;
- radix select, each stage: its programs run side by side (one per SM); each reads its span of the
  stage's row (the entries, then the previous stage's lists) once per pass, ``BLOCK`` keys per
  iteration: the pass loop's issue clk / ``IPC``, plus one ``L2_LAT`` (the keys were just written:
  L2-resident) per pass when its loads are pipelined by cp.async (the probe's ``has_prefetch``), per
  iteration when not; 3 passes optimistic (the kernel's usual early stop for real scores), all 8
  pessimistic; then the compaction loop once; plus the code outside the loops issued once (the passes'
  histogram scans and the last stage's 512-key sort: ``_straight_line_clk``; in the optimistic bound
  this over-counts the scans of the passes that do not run, ~200 instructions each); the last stage
  also writes the indices and lengths (FINAL: in its code outside the loops);
- every launch after the first: ``LAUNCH_US``.

The sparse backward's model (``backward_model``; the probe has no backward case): the launcher's one
launch at a V4 prefill chunk (``BACKWARD_CASES``: bf16 q / dout / pools, atomic row gradients, the sm_90
tiles of ``triton_backward.default_config``) is captured and compiled the same way
(``_backward_driver``). Its loops nest as the source does: a head-block loop around, per index stream,
a key-block loop around two head-dim loops (``s`` / ``dp`` with wgmma, then ``dq`` and the row gradient
with FMA dots). Per key block: ``ceil(D / BLOCK_D)`` iterations of each head-dim loop at its busy clk
(``loop_cost``, issue at ``IPC``), plus the key-block loop's own code between them, issued once; in
the pessimistic bound one ``L2_LAT`` per iteration of a head-dim loop that reads global memory with
plain loads (the token's fp32 ``dq`` rows: read, add, write), which the optimistic bound takes as hidden
by the other warps. Per SM: ``ceil(T / SMS)`` programs, whose busy clk add up (co-resident programs
share the SM's shared memory and issue slots). The first case is also modelled at the tiles of
``BACKWARD_SWEEP_TILES``, which triton_grid times beside the default. Not charged: the row gradients'
fp32 atomics (their bytes are reported, ``atomic_bytes``; no offline figure for the L2's atomic rate)
and the launcher's ``[T, H]`` PyTorch terms.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from typing import Dict, List, Optional, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results")

# grid case name -> (probe case name, the grid backends whose rows the estimate applies to)
GRID_TO_PROBE: Dict[str, Tuple[str, Tuple[str, ...]]] = {
    "sparse decode CSA H=128 128+1024 T=1": ("sparse CSA decode bf16 H=128 128+1024 T=1", ("triton",)),
    "sparse decode CSA H=128 128+1024 T=64": ("sparse CSA decode bf16 H=128 128+1024 T=64", ("triton",)),
    "sparse decode HCA H=128 128+8192 T=1": ("sparse HCA decode bf16 H=128 128+8192 T=1", ("triton",)),
    "sparse decode HCA H=128 128+8192 T=16": ("sparse HCA decode bf16 H=128 128+8192 T=16", ("triton",)),
    "sparse decode CSA fp8 H=128 128+1024 T=64": ("sparse CSA decode fp8-pool H=128 128+1024 T=64", ("triton",)),
    "sparse prefill V4-Flash H=64 128+512 T=4096": ("sparse prefill V4-Flash H=64 128+512 T=4096", ("triton",)),
    "sparse prefill V4-Pro H=128 128+1024 T=2048": ("sparse prefill V4-Pro H=128 128+1024 T=2048", ("triton",)),
    "indexer top-512 decode N=262144 T=1": ("indexer top-512 decode N=262144 T=1", ("triton-fused",)),
}

# grid case -> (select-path model case, backends): the default "triton" rows of the indexer cases
GRID_TO_SELECT_MODEL: Dict[str, Tuple[str, Tuple[str, ...]]] = {
    "indexer top-512 decode N=262144 T=1": ("indexer select top-512 decode bf16-flat N=262144 T=1", ("triton",)),
    "indexer top-512 decode N=262144 T=1 paged (page 64)": (
        "indexer select top-512 decode bf16-pool N=262144 T=1",
        ("triton",),
    ),
}
# the select path's modelled cases: name -> (index-key pool, entries, tokens)
SELECT_CASES: Dict[str, Tuple[str, int, int]] = {
    "indexer select top-512 decode fp8-pool N=262144 T=1": ("fp8-pool", 262144, 1),
    "indexer select top-512 decode bf16-pool N=262144 T=1": ("bf16-pool", 262144, 1),
    "indexer select top-512 decode bf16-flat N=262144 T=1": ("bf16-flat", 262144, 1),
}
# the sparse backward's modelled cases (bench/backward.py's model_h200 cases): name -> (tokens, heads,
# window keys, top-k compressed keys); D = 512, bf16, atomic row gradients
BACKWARD_CASES: Dict[str, Tuple[int, int, int, int]] = {
    "sparse backward V4-Flash prefill chunk bf16 T=4096 H=64 128+512": (4096, 64, 128, 512),
    "sparse backward V4-Pro prefill chunk bf16 T=2048 H=128 128+1024": (2048, 128, 128, 1024),
}
BACKWARD_D = 512
BACKWARD_BACKEND = "triton backward"  # triton_grid's backend name of the backward's rows
# other sm_90 tiles of the backward (BLOCK_H, BLOCK_N, BLOCK_D, num_warps), modelled for the first case
# and timed by triton_grid's backward section: the spill-free ones of an offline sweep (2026-12-06,
# triton 3.7.1: BLOCK_H 32 / 64 x BLOCK_N 16 / 32 / 64 x BLOCK_D 32 / 64 / 128 x 4 / 8 warps) that the
# model puts ahead of the default (64, 16, 64, 8)
BACKWARD_SWEEP_TILES: Tuple[Tuple[int, int, int, int], ...] = (
    (64, 16, 64, 4),
    (64, 32, 32, 4),
    (64, 32, 64, 8),
    (64, 64, 32, 8),
    (32, 32, 64, 4),
    (32, 64, 32, 4),
)


def backward_tile_case(case: str, tile: Tuple[int, int, int, int]) -> str:
    """The name of ``case`` at a swept tile (the model's key and triton_grid's row name)."""
    return f"{case} cfg={','.join(str(v) for v in tile)}"


def backward_tile_config(tile: Tuple[int, int, int, int]) -> Dict[str, int]:
    """A ``BACKWARD_SWEEP_TILES`` entry as the launcher's ``config``."""
    return dict(zip(("BLOCK_H", "BLOCK_N", "BLOCK_D", "num_warps"), tile))


def backward_model_cases() -> List[Tuple[str, str, Optional[Tuple[int, int, int, int]]]]:
    """(model / grid row name, case, swept tile or None for the launcher's default) of every modelled
    backward row: each case at its default tile, then the first case at ``BACKWARD_SWEEP_TILES``."""
    first = next(iter(BACKWARD_CASES))
    return [(c, c, None) for c in BACKWARD_CASES] + [
        (backward_tile_case(first, t), first, t) for t in BACKWARD_SWEEP_TILES
    ]


def backward_shape(name: str) -> Optional[Tuple[int, int, int, int]]:
    """(tokens, heads, window, top-k) of a backward case or of one of its swept tiles; None if neither."""
    return BACKWARD_CASES.get(name.split(" cfg=")[0])


SELECT_PASSES = (3, 8)  # radix passes charged: optimistic (usual early stop), pessimistic (every pass)

_ROW = re.compile(r"^\|\s*(?P<case>[^|]+?)\s*\|\s*(?P<bound>optimistic|pessimistic)\s*\|\s*(?P<us>[0-9.]+)\s*\|")


def parse_probe_output(text: str) -> Dict[str, Dict[str, float]]:
    """The probe's printed model table -> {probe case: {"optimistic_us", "pessimistic_us"}}."""
    out: Dict[str, Dict[str, float]] = {}
    in_model = False
    for line in text.splitlines():
        if line.startswith("model ("):
            in_model = True
            continue
        m = _ROW.match(line) if in_model else None
        if m:
            out.setdefault(m["case"], {})[f"{m['bound']}_us"] = float(m["us"])
    return {c: v for c, v in out.items() if {"optimistic_us", "pessimistic_us"} <= v.keys()}


def latest_json() -> Optional[str]:
    paths = sorted(glob.glob(os.path.join(RESULTS, "sm90-model-*.json")))
    return paths[-1] if paths else None


def load(path: Optional[str] = None) -> Optional[dict]:
    """The stored estimates (the latest JSON when ``path`` is None); None when there is none."""
    path = path or latest_json()
    if not path or not os.path.exists(path):
        return None
    with open(path) as f:
        doc = json.load(f)
    doc["path"] = os.path.relpath(path, os.path.dirname(HERE))
    return doc


# the backward's grid rows carry the model's own names (triton_grid's backward section)
GRID_TO_BACKWARD_MODEL: Dict[str, Tuple[str, Tuple[str, ...]]] = {
    name: (name, (BACKWARD_BACKEND,)) for name, _, _ in backward_model_cases()
}


def _estimate(model: dict, grid_case: str, backend: Optional[str]) -> Optional[List[float]]:
    for mapping in (GRID_TO_PROBE, GRID_TO_SELECT_MODEL, GRID_TO_BACKWARD_MODEL):
        probe_case, backends = mapping.get(grid_case, (None, ()))
        if probe_case is None or (backend is not None and backend not in backends):
            continue
        est = model["estimates"].get(probe_case)
        if est:
            return [est["optimistic_us"], est["pessimistic_us"]]
    return None


def _put(row: dict, est: List[float], measured_ms: Optional[float]) -> None:
    row["model_us"] = est
    if measured_ms:
        row["measured_over_model"] = measured_ms * 1e3 / est[0]


def attach(doc: dict, model: Optional[dict] = None) -> dict:
    """Add the estimates to ``doc``'s rows (see the module doc); returns the summary stored as
    ``doc["model"]`` (source, commit, and one line per covered case)."""
    model = model if model is not None else load()
    if model is None:
        return {"status": "no model JSON under bench/results (python -m bench.sm90_model --probe ...)"}
    lines = []
    for r in doc.get("results", []):
        est = _estimate(model, r.get("case", ""), r.get("backend"))
        if est and "ms" in r:
            _put(r, est, r["ms"])
            lines.append(dict(case=r["case"], row=r["backend"], measured_us=r["ms"] * 1e3, model_us=est))
    for r in (doc.get("decode_graph") or {}).get("rows", []):
        est = _estimate(model, r.get("case", ""), "triton" if r.get("op") == "sparse_attention" else None)
        if est and r.get("op") == "sparse_attention":
            _put(r, est, r.get("graph_ms"))
            measured = r.get("graph_ms")
            lines.append(
                dict(case=r["case"], row="graph replay", measured_us=measured and measured * 1e3, model_us=est)
            )
    for ln in lines:
        shown = "not measured" if ln["measured_us"] is None else f"{ln['measured_us']:.1f} us"
        print(f"  model {ln['case']} [{ln['row']}]: measured {shown}, model {ln['model_us'][0]}-{ln['model_us'][1]} us")
    return {"source": model["path"], "commit": model.get("commit"), "triton": model.get("triton"),
            "what": model.get("what"), "covered": lines}  # fmt: skip


def one_pass_combine(estimates: Dict[str, Dict[str, float]], summary: List[dict], l2_lat: Tuple[float, float],
                     clk: float) -> Dict[str, Dict[str, float]]:  # fmt: skip
    """The probe charges the split-KV combine ``num_splits x 512 / BLOCK_D`` serial iterations of two
    dependent L2 round trips each (``L2_LAT`` clk apiece): the loop the combine kernel had until
    2026-12-05. Where the compiled combine has no loop (the probe's ``loops_full`` is empty: one pass,
    every split loaded at once), the same rule gives one iteration, so the other ``n - 1`` are taken
    off. The probe's own figures are kept beside the result (``probe_us``, ``combine_correction_us``)."""
    out = {case: dict(v) for case, v in estimates.items()}
    for comb in summary:
        case = comb.get("case")
        if comb.get("kernel") != "_combine_splits_kernel" or comb.get("loops_full") or case not in out:
            continue
        fwd = next((r for r in summary if r.get("case") == case and r.get("kernel") == "_sparse_attn_fwd_kernel"), None)
        if fwd is None:
            continue
        n_it = fwd["grid"][2] * (512 // comb["constexprs"]["BLOCK_D"])
        delta = [round((n_it - 1) * 2 * lat / clk * 1e6, 1) for lat in l2_lat]
        est = out[case]
        est["probe_us"] = [est["optimistic_us"], est["pessimistic_us"]]
        est["combine_correction_us"] = delta
        est["optimistic_us"] = round(est["optimistic_us"] - delta[0], 1)
        est["pessimistic_us"] = round(est["pessimistic_us"] - delta[1], 1)
    return out


def _probe_constants(probe: str) -> Tuple[Tuple[float, float], float]:
    """(L2_LAT, CLK) of the probe's model, read from its source (importing it would run its argument
    parser)."""
    import ast

    with open(probe) as f:
        src = f.read()
    consts = {}
    for name in ("L2_LAT", "CLK"):
        m = re.search(rf"^{name}\s*=\s*([^#\n]+)", src, re.M)
        if m is None:
            raise RuntimeError(f"{probe}: no {name} constant")
        consts[name] = ast.literal_eval(m.group(1).strip())
    lo, hi = consts["L2_LAT"]
    return (float(lo), float(hi)), float(consts["CLK"])


def _import_probe(probe: str, outdir: str):
    """The probe as a module (only in a driver subprocess: importing it parses its arguments and sets up
    the compiler)."""
    import importlib.util

    sys.argv = [probe, "--repo", os.path.dirname(HERE), "--out", outdir]
    spec = importlib.util.spec_from_file_location("triton_sass_probe", probe)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _compile_launches(mod, case: str, module, names: List[str], call, outdir: str) -> List[dict]:
    """``call``'s launches of ``module.names`` captured, compiled and inspected by the probe, every
    compiled loop priced with its ``loop_cost``; in launch order (``launch_index``)."""
    records = []
    for i, (fn, grid, args, kwargs) in enumerate(mod.capture(module, names, call)):
        rec = mod.inspect(case, fn, grid, args, kwargs, outdir)
        rec["launch_index"] = i
        for loop in rec.get("loops_full", []):
            loop["cost"] = list(mod.loop_cost(loop, rec["num_warps"]))
        records.append(rec)
    return records


def _print_records(mod, records: List[dict]) -> None:
    consts = {k: getattr(mod, k) for k in ("CLK", "LAT", "L2_LAT", "IPC", "LAUNCH_US", "HBM_TBS", "SMS")}
    print(json.dumps({"records": records, "constants": consts}, default=str))


def _select_driver(probe: str, outdir: str) -> None:
    """(Run in a subprocess.) Captures the select path's launches for every ``SELECT_CASES`` case as the
    launcher makes them for 132 SMs, compiles and prices them (``_compile_launches``), and prints
    {"records": [...], "constants": {...}} as JSON."""
    mod = _import_probe(probe, outdir)
    import torch
    from longattn.cache import Fp8IndexKeyPool

    ti = mod.ti
    # the merge kernel is captured too: the select path no longer launches it, and the model refuses one
    names = ["_indexer_topk_partial_kernel", "_select_keys_kernel", "_indexer_topk_merge_kernel"]
    records: List[dict] = []
    for case, (pool, n, T) in SELECT_CASES.items():
        hi, di, page = 64, 128, 64
        q, w = torch.empty(T, hi, di, dtype=torch.bfloat16), torch.empty(T, hi, dtype=torch.float32)
        ve = torch.full((T,), n, dtype=torch.int32)
        kw = {}
        if pool == "bf16-flat":
            keys = torch.empty(n, di, dtype=torch.bfloat16)
        else:
            kw = dict(block_table=torch.arange(n // page, dtype=torch.int32).view(1, -1),
                      seq_ids=torch.zeros(T, dtype=torch.int32))  # fmt: skip
            keys = (Fp8IndexKeyPool.empty(n // page, page, di) if pool == "fp8-pool"
                    else torch.empty(n // page, page, di, dtype=torch.bfloat16))  # fmt: skip
        cfg = ti.select_config(hi, di, mod.CUDA)

        def call(keys=keys, ve=ve, q=q, w=w, kw=kw, cfg=cfg):
            ti.indexer_topk(q, w, keys, ve, 512, method="select", config=cfg, **kw)

        records += _compile_launches(mod, case, ti, names, call, outdir)
    _print_records(mod, records)


def _backward_driver(probe: str, outdir: str) -> None:
    """(Run in a subprocess.) The sparse backward's launch for every ``BACKWARD_CASES`` case, as the
    launcher makes it on an sm_90 GPU (its 16-bit tiles: ``default_config`` with capability (9, 0)),
    compiled and priced like ``_select_driver``'s."""
    mod = _import_probe(probe, outdir)
    from longattn.ops.sparse_attention import triton_backward as tbw

    records = []
    for name, case, tile in backward_model_cases():
        _, call = backward_call(case, tile)
        records += _compile_launches(mod, name, tbw, ["_sparse_attn_bwd_kernel"], call, outdir)
    _print_records(mod, records)


def backward_call(case: str, tile: Optional[Tuple[int, int, int, int]] = None):
    """(config, call): the launcher's call of the sparse backward at a ``BACKWARD_CASES`` case on CPU
    tensors (bf16 q / dout / pools, atomic row gradients), at ``tile`` or the sm_90 default tiles
    (``default_config`` with capability (9, 0)): for capturing its launch (no CUDA call is made), here and
    in the CI compile test (tests/triton/sm90_compile.py)."""
    import torch
    from longattn.ops.sparse_attention import triton_backward as tbw

    T, H, window, topk = BACKWARD_CASES[case]
    D, bf16 = BACKWARD_D, torch.bfloat16
    q = torch.empty(T, H, D, dtype=bf16)
    rows, entries = torch.empty(window + T, D, dtype=bf16), torch.empty(4 * topk, D, dtype=bf16)
    streams = [(rows, torch.zeros(T, window, dtype=torch.int32), None),
               (entries, torch.zeros(T, topk, dtype=torch.int32), None)]  # fmt: skip
    cfg = backward_tile_config(tile) if tile else tbw.default_config(H, D, torch.device("cuda"), (9, 0), bf16)

    def call():
        lse = torch.zeros(q.shape[:2])
        tbw.sparse_attention_backward(q, streams, torch.zeros(H), 0.04, q, lse, q, None, deterministic=False,
                                      config=cfg)  # fmt: skip

    return cfg, call


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _busy(cost, ipc: float) -> float:
    """A loop iteration's busy clk from the probe's ``loop_cost`` components, issue at ``ipc``."""
    comp = dict(cost[1])
    comp["issue_clk"] = comp["issue_clk"] / ipc
    return max(comp.values())


def _straight_line_clk(rec: dict, ipc: float) -> float:
    """Issue clk of a launch's code outside its loops (``sass_total`` minus the loops' instructions),
    each instruction once, every warp issuing it, 4 schedulers per SM at ``ipc`` (the probe's issue
    term). The radix select's passes are unrolled, so nothing there runs twice: its per-pass histogram
    scans and, in a SORTED launch, the 512-key sort (~1,000 SASS instructions)."""
    loop_instr = sum(int(lp.get("instructions", 0)) for lp in rec.get("loops_full", []))
    straight = max(0, int(rec.get("sass_total", 0)) - loop_instr)
    return straight * rec.get("num_warps", 4) / 4 / ipc


def select_key_bytes(pool: str, n: int, T: int, di: int = 128) -> int:
    """Bytes the select path must read: the index keys once per sequence (FP8: e4m3 + a 4-byte scale)."""
    return n * (di + 4 if pool == "fp8-pool" else 2 * di) + T * 64 * (di * 2 + 4)


def select_path_model(records: List[dict], constants: dict) -> Dict[str, Dict[str, object]]:
    """Estimates of the select path per ``SELECT_CASES`` case from its compiled launches (the rules in the
    module doc): {case: optimistic_us, pessimistic_us, hbm_fraction [opt, pess], parts {launch: [opt,
    pess] us}, key_bytes}."""
    clk, sms, hbm = constants["CLK"], constants["SMS"], constants["HBM_TBS"] * 1e12
    out: Dict[str, Dict[str, object]] = {}
    for case, (pool, n, T) in SELECT_CASES.items():
        recs = sorted((r for r in records if r.get("case") == case), key=lambda r: r["launch_index"])
        if not recs:
            continue
        key_bytes = select_key_bytes(pool, n, T)
        parts: Dict[str, List[float]] = {}
        for i in range(2):  # optimistic, pessimistic
            ipc, lat, l2 = constants["IPC"][i], constants["LAT"][i], constants["L2_LAT"][i]
            stage, row = 0, n  # row: the keys a radix stage's programs share (then: every list of the last)
            for r in recs:
                if r["kernel"] == "_indexer_topk_partial_kernel":
                    loop = [lp for lp in r["loops_full"] if any(k.startswith("HGMMA") for k in lp["ops"])][-1]
                    bn = r["constexprs"]["BLOCK_N"]
                    per = _cdiv(_cdiv(n, r["grid"][1]), bn) * bn  # entries per program, whole blocks
                    waves = _cdiv(r["ctas"], sms * max(1, r["occupancy"]["ctas_per_sm"]))
                    clks = _cdiv(r["ctas"], sms) * (per // bn) * _busy(loop["cost"], ipc) + waves * lat
                    name, us = "key kernel", max(clks / clk * 1e6, key_bytes / hbm * 1e6)
                elif r["kernel"] == "_select_keys_kernel":
                    stage += 1
                    loops = r["loops_full"]  # address order: one loop per radix pass, then the compaction
                    if len(loops) < 2:
                        raise RuntimeError(f"{case}: the radix select compiled without its pass loops")
                    programs = r["grid"][1]
                    iters = _cdiv(_cdiv(row, programs), r["constexprs"]["BLOCK"])  # over its span of the row
                    passes = loops[: min(SELECT_PASSES[i], len(loops) - 1)] + [loops[-1]]
                    # a pass whose loads are pipelined (cp.async: the probe's has_prefetch) waits for L2
                    # once; one without, once per block
                    clks = sum(iters * _busy(lp["cost"], ipc) + (l2 if lp["cost"][2] else iters * l2)
                               for lp in passes)  # fmt: skip
                    clks += _straight_line_clk(r, ipc)
                    name, us = f"radix select stage {stage}", clks / clk * 1e6
                    row = programs * r["constexprs"]["TOPK_P2"]  # the next stage's row: these programs' lists
                else:  # the last radix stage writes the output itself (FINAL): no other launch is modelled
                    raise RuntimeError(f"{case}: a select-path launch of {r['kernel']} has no rule")
                parts.setdefault(name, []).append(round(us, 2))
        launches = len(recs) - 1
        total = [sum(v[i] for v in parts.values()) + launches * constants["LAUNCH_US"] for i in range(2)]
        parts["launch gaps"] = [launches * constants["LAUNCH_US"]] * 2
        out[case] = {
            "optimistic_us": round(total[0], 1),
            "pessimistic_us": round(total[1], 1),
            "hbm_fraction": [round(key_bytes / (t * 1e-6) / hbm, 3) for t in total],
            "parts": parts,
            "key_bytes": key_bytes,
        }
    return out


def _key_block_loops(loops: List[dict]) -> List[Tuple[dict, List[dict]]]:
    """The backward's per-stream key-block loops with their head-dim loops, in address order:
    [(key-block loop, [s / dp loop, gradient loop])]. A head-dim loop is a loop holding no other; its
    key-block loop is the smallest loop around it."""
    span = [(int(lp["lo"], 16), int(lp["hi"], 16)) for lp in loops]

    def inside(i: int, j: int) -> bool:
        return i != j and span[j][0] <= span[i][0] and span[i][1] <= span[j][1]

    leaves = [i for i in range(len(loops)) if not any(inside(j, i) for j in range(len(loops)))]
    groups: Dict[int, List[int]] = {}
    for i in leaves:
        around = [j for j in range(len(loops)) if inside(i, j)]
        if around:
            groups.setdefault(min(around, key=lambda j: span[j][1] - span[j][0]), []).append(i)
    out = []
    for parent in sorted(groups, key=lambda j: span[j][0]):
        inner = sorted(groups[parent], key=lambda i: span[i][0])
        if len(inner) != 2 or not any(k.startswith(("HGMMA", "HMMA")) for k in loops[inner[0]]["ops"]):
            raise RuntimeError(f"a key-block loop at {loops[parent]['lo']} without its s / dp and gradient loops")
        out.append((loops[parent], [loops[i] for i in inner]))
    return out


def _plain_loads(loop: dict) -> bool:
    """The loop reads global memory with plain loads (LDG; not cp.async's LDGSTS)."""
    return any(op.split(".")[0] == "LDG" for op in loop["ops"])


def _backward_block_clk(inner: List[dict], between: int, bound: int, d_iters: int, warps: int,
                        constants: dict) -> List[float]:  # fmt: skip
    """The backward's clk per key block of one stream: [s / dp loop, gradient loop, the key-block loop's
    code between them, exposed L2], at ``bound``: 0 optimistic, 1 pessimistic, 2 issue only (IPC 1, no
    other term). ``inner``: the two head-dim loops, run ``d_iters`` times each."""
    ipc = constants["IPC"][bound] if bound < 2 else 1.0
    loops = [d_iters * (_busy(lp["cost"], ipc) if bound < 2 else lp["cost"][1]["issue_clk"]) for lp in inner]
    lat = d_iters * constants["L2_LAT"][1] * sum(map(_plain_loads, inner)) if bound == 1 else 0.0
    return [*loops, between * warps / 4 / ipc, lat]


def backward_model(records: List[dict], constants: dict) -> Dict[str, Dict[str, object]]:
    """Estimates of the sparse backward per ``BACKWARD_CASES`` case from its compiled launch (the rules in
    the module doc): {case: optimistic_us, pessimistic_us, parts {stream: [opt, pess] us},
    per_key_block_clk {stream: {loop: [opt, pess]}}, bound (the gradient loop's largest busy term),
    issue_only_us (every loop at its issue term, IPC 1: the time if shared memory kept up; the probe's
    shared-memory term counts 32 lanes' bytes per LDS, while the FMA dots' operand reads are partly
    broadcasts, which take fewer cycles), flops, fma_flops (the three products with an fp32 operand),
    fma_peak_fraction [opt, pess] (of SMS x 128 FMA lanes x CLK), atomic_bytes, tile, registers,
    spill_bytes, ctas_per_sm}."""
    clk, sms = constants["CLK"], constants["SMS"]
    fma_peak = sms * 128 * 2 * clk
    out: Dict[str, Dict[str, object]] = {}
    for rec in records:
        case = rec.get("case", "")
        shape = backward_shape(case)
        if shape is None or rec.get("kernel") != "_sparse_attn_bwd_kernel":
            continue
        T, H, window, topk = shape
        cx, warps = rec["constexprs"], rec["num_warps"]
        d_iters, head_blocks = _cdiv(BACKWARD_D, cx["BLOCK_D"]), _cdiv(H, cx["BLOCK_H"])
        streams = _key_block_loops(rec["loops_full"])
        if len(streams) != 2:
            raise RuntimeError(f"{case}: {len(streams)} key-block loops compiled, expected one per stream")
        stream_us: Dict[str, List[float]] = {}
        per_block: Dict[str, Dict[str, List[float]]] = {}
        for (parent, inner), name, keys in zip(streams, ("window", "compressed"), (window, topk)):
            between = max(0, parent["instructions"] - sum(lp["instructions"] for lp in inner))
            clks = [_backward_block_clk(inner, between, bound, d_iters, warps, constants) for bound in range(3)]
            labels = ("s / dp loop", "gradient loop", "between", "exposed L2")
            per_block[name] = {k: [round(clks[0][j], 1), round(clks[1][j], 1)] for j, k in enumerate(labels)}
            blocks_per_sm = _cdiv(T, sms) * head_blocks * _cdiv(keys, cx["BLOCK_N"])
            stream_us[name] = [round(blocks_per_sm * sum(c) / clk * 1e6, 1) for c in clks]
        parts = {name: us[:2] for name, us in stream_us.items()}
        total = [round(sum(us[bound] for us in stream_us.values()), 1) for bound in range(3)]
        grad_cost = streams[-1][1][1]["cost"][1]
        keys = window + topk
        flops = T * H * keys * BACKWARD_D * 2 * 5  # s, dp, dq, ds^T q, p^T dout
        fma_flops = T * H * keys * BACKWARD_D * 2 * 3
        out[case] = {
            "optimistic_us": total[0],
            "pessimistic_us": total[1],
            "issue_only_us": total[2],
            "parts": parts,
            "per_key_block_clk": per_block,
            "bound": max(grad_cost, key=grad_cost.get),
            "flops": flops,
            "fma_flops": fma_flops,
            "fma_peak_fraction": [round(fma_flops / (t * 1e-6) / fma_peak, 3) for t in total[:2]],
            "atomic_bytes": head_blocks * T * keys * BACKWARD_D * 4,
            "tile": [cx["BLOCK_H"], cx["BLOCK_N"], cx["BLOCK_D"], warps],
            "registers": rec.get("regs"),
            "spill_bytes": rec.get("spill_stores"),
            "ctas_per_sm": rec.get("occupancy", {}).get("ctas_per_sm"),
        }
    return out


def _run_driver(driver: str, probe: str) -> dict:
    """``driver`` (a ``_*_driver`` of this module) in a subprocess without the interpreter; its JSON."""
    repo = os.path.dirname(HERE)
    with tempfile.TemporaryDirectory() as tmp:
        code = f"from bench.sm90_model import {driver}; {driver}({probe!r}, {tmp!r})"
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.path.join(repo, "python"), repo]))
        env.pop("TRITON_INTERPRET", None)
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                              cwd=repo, env=env)  # fmt: skip
    return json.loads(proc.stdout.strip().splitlines()[-1])


def select_path_estimates(probe: str) -> Dict[str, Dict[str, object]]:
    """``select_path_model`` of the probe's compile of this checkout's select path (a subprocess)."""
    doc = _run_driver("_select_driver", probe)
    return select_path_model(doc["records"], doc["constants"])


def backward_estimates(probe: str) -> Dict[str, Dict[str, object]]:
    """``backward_model`` of the probe's compile of this checkout's sparse backward (a subprocess)."""
    doc = _run_driver("_backward_driver", probe)
    return backward_model(doc["records"], doc["constants"])


def export(probe: str, out: Optional[str] = None) -> str:
    """Run the probe on this checkout and store its estimates (the combine term as ``one_pass_combine``
    corrects it); returns the JSON path."""
    repo = os.path.dirname(HERE)
    with tempfile.TemporaryDirectory() as tmp:
        proc = subprocess.run([sys.executable, probe, "--repo", repo, "--out", tmp],
                              capture_output=True, text=True, check=True, cwd=repo)  # fmt: skip
        with open(os.path.join(tmp, "summary.json")) as f:
            summary = json.load(f)
    estimates = parse_probe_output(proc.stdout)
    if not estimates:
        raise RuntimeError("the probe printed no model table:\n" + proc.stdout[-2000:])
    l2_lat, clk = _probe_constants(probe)
    estimates = one_pass_combine(estimates, summary, l2_lat, clk)
    estimates.update(select_path_estimates(probe))
    estimates.update(backward_estimates(probe))
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=repo).stdout
    import triton

    doc = {
        "what": "kernel-time estimates of an offline sm_90a compile (H200: 132 SMs), optimistic and pessimistic "
        "bounds of the probe's per-SM cost model (its split-KV combine term corrected where the compiled combine "
        "has no loop: bench/sm90_model.py one_pass_combine), of the indexer's select path and of the sparse "
        "backward from the probe's compile of their launches (select_path_model, backward_model); a model, never a "
        "measurement",
        "tool": os.path.basename(probe),
        "commit": commit.strip(),
        "triton": triton.__version__,
        "date": time.strftime("%Y-%m-%d"),
        "estimates": estimates,
    }
    out = out or os.path.join(RESULTS, f"sm90-model-{doc['date']}.json")
    with open(out, "w") as f:
        json.dump(doc, f, indent=1)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--probe", required=True, help="path of triton_sass_probe.py")
    p.add_argument("--out", default=None)
    a = p.parse_args(argv)
    print("wrote", export(a.probe, a.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
