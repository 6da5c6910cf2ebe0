"""PNG plots of a results document (matplotlib, optional).

- ``<name>-time_vs_context.png``: median time vs context length, one panel per case series (same op,
  preset, kind, batch or chunk, page, dtype), one line per backend and peer (log-log).
- ``<name>-ceiling_vs_context.png``: fraction of the applicable ceiling vs context length, backends.
- ``<name>-roofline.png``: achieved FLOP/s vs arithmetic intensity of every measured run, under the
  measured roofline (copy bandwidth x intensity, capped by each measured matmul rate).

Without matplotlib, ``make_plots`` returns the reason and writes nothing.
"""

from __future__ import annotations

import math
import os
from collections import defaultdict
from typing import Dict, List, Tuple


def available() -> Tuple[bool, str]:
    try:
        import matplotlib  # noqa: F401
    except Exception as exc:
        return False, f"matplotlib is not installed ({type(exc).__name__}); pip install matplotlib (or .[bench])"
    return True, ""


def _series(doc) -> Dict[Tuple, Dict[str, List[Tuple[int, dict]]]]:
    """series key (case name without the context) -> impl -> [(context, run)]."""
    out: Dict[Tuple, Dict[str, List[Tuple[int, dict]]]] = defaultdict(lambda: defaultdict(list))
    for c in doc["cases"]:
        ctx = c["params"].get("context")
        if ctx is None:
            continue
        key = tuple(p for p in c["name"].split("/") if not p.startswith("ctx="))
        for r in c.get("runs", []):
            if r.get("status") == "ok":
                out[key][(r["impl"], r["kind"])].append((int(ctx), r))
    return {k: v for k, v in out.items() if len({x for runs in v.values() for x, _ in runs}) >= 2}


def _grid(n: int):
    cols = min(3, n)
    rows = int(math.ceil(n / cols))
    return rows, cols


def make_plots(doc: Dict[str, object], out_dir: str, name: str) -> Tuple[List[str], List[str]]:
    """Write the plots; returns (paths written, reasons for plots not written)."""
    ok, why = available()
    if not ok:
        return [], [why]
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written, skipped = [], []
    series = _series(doc)
    palette = plt.rcParams["axes.prop_cycle"].by_key()["color"] + ["#444444", "#aa6600", "#0066aa"]
    impls = sorted({r["impl"] for c in doc["cases"] for r in c.get("runs", [])})
    color = {impl: palette[i % len(palette)] for i, impl in enumerate(impls)}
    dev = doc["machine"]["device_name"]
    if not series:
        skipped.append("time/ceiling vs context: no case series with two or more context lengths in this run")
    else:
        for metric, fname, ylabel in (
            ("time", "time_vs_context", "median time (s)"),
            ("frac", "ceiling_vs_context", "fraction of ceiling"),
        ):
            keys = sorted(series)
            rows, cols = _grid(len(keys))
            fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 3.8 * rows), squeeze=False)
            for ax, key in zip(axes.flat, keys):
                for (impl, kind), pts in sorted(series[key].items()):
                    if metric == "frac" and kind != "backend":
                        continue
                    pts = sorted(pts, key=lambda x: x[0])
                    xs = [p[0] for p in pts]
                    if metric == "time":
                        ys = [p[1]["time"]["median_s"] for p in pts]
                        lo = [p[1]["time"]["p20_s"] for p in pts]
                        hi = [p[1]["time"]["p80_s"] for p in pts]
                    else:
                        ys = [p[1].get("frac_of_ceiling") or float("nan") for p in pts]
                        lo = hi = None
                    style = "-o" if kind == "backend" else "--s"
                    ax.plot(xs, ys, style, label=impl + ("" if kind == "backend" else " (peer)"), markersize=4,
                            color=color[impl])  # fmt: skip
                    if lo is not None:
                        ax.fill_between(xs, lo, hi, alpha=0.15, color=color[impl])
                ax.set_xscale("log", base=2)
                ax.set_yscale("log")
                ax.set_title("/".join(key), fontsize=7)
                ax.set_xlabel("context (tokens)")
                ax.set_ylabel(ylabel)
                ax.grid(True, which="both", alpha=0.3)
                ax.legend(fontsize=6)
            for ax in list(axes.flat)[len(keys) :]:
                ax.axis("off")
            fig.suptitle(f"{ylabel} vs context on {dev}", fontsize=9)
            fig.tight_layout()
            path = os.path.join(out_dir, f"{name}-{fname}.png")
            fig.savefig(path, dpi=110)
            plt.close(fig)
            written.append(path)

    pts = []
    for c in doc["cases"]:
        cost = c.get("cost") or {}
        if not cost.get("bytes"):
            continue
        for r in c.get("runs", []):
            if r.get("status") == "ok" and r.get("tflops"):
                pts.append((cost["flops"] / cost["bytes"], r["tflops"] * 1e12, c["group"], r["kind"], r["impl"]))
    if not pts:
        skipped.append("roofline: no measured run with a cost model")
        return written, skipped
    ceil = doc["ceilings"]
    bw = ceil["copy"]["bytes_per_s"]
    fig, ax = plt.subplots(figsize=(8, 5.5))
    peaks = [m["flops_per_s"] for m in ceil.get("matmul", {}).values() if "flops_per_s" in m]
    ridge = min(peaks) / bw if peaks else 1.0
    xmin = min(min(p[0] for p in pts) / 2, ridge / 8)
    xmax = max(max(p[0] for p in pts) * 2, ridge * 8)
    xs = [xmin * (xmax / xmin) ** (i / 200) for i in range(201)]
    for dt, m in ceil.get("matmul", {}).items():
        if "flops_per_s" in m:
            ax.plot(xs, [min(bw * x, m["flops_per_s"]) for x in xs], "-", lw=1.2, label=f"roofline ({dt} matmul)")
    groups = sorted({p[2] for p in pts})
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for gi, g in enumerate(groups):
        col = colors[gi % len(colors)]
        for kind, marker, face in (("backend", "o", col), ("peer", "s", "none")):
            sel = [p for p in pts if p[2] == g and p[3] == kind]
            if sel:
                ax.scatter([p[0] for p in sel], [p[1] for p in sel], marker=marker, facecolors=face, edgecolors=col,
                           label=f"{g} ({'ours' if kind == 'backend' else 'peers'})", s=22)  # fmt: skip
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("arithmetic intensity of the sparse cost model (FLOP/byte)")
    ax.set_ylabel("achieved FLOP/s (useful work)")
    ax.set_title(f"roofline on {dev} (copy {bw / 1e9:.1f} GB/s)", fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=6, loc="lower right")
    fig.tight_layout()
    path = os.path.join(out_dir, f"{name}-roofline.png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    written.append(path)
    return written, skipped
