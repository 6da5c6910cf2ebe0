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
  (op call) and, better matched, the CUDA-graph rows of ``decode_graph`` (kernel time without host
  cost). The indexer estimate is for the fused path (running top-k lists + merge tree), so it is only
  attached to ``triton-fused`` rows.
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


def _estimate(model: dict, grid_case: str, backend: Optional[str]) -> Optional[List[float]]:
    probe_case, backends = GRID_TO_PROBE.get(grid_case, (None, ()))
    if probe_case is None or (backend is not None and backend not in backends):
        return None
    est = model["estimates"].get(probe_case)
    return [est["optimistic_us"], est["pessimistic_us"]] if est else None


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
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=repo).stdout
    import triton

    doc = {
        "what": "kernel-time estimates of an offline sm_90a compile (H200: 132 SMs), optimistic and pessimistic "
        "bounds of the probe's per-SM cost model (its split-KV combine term corrected where the compiled combine "
        "has no loop: bench/sm90_model.py one_pass_combine); a model, never a measurement",
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
