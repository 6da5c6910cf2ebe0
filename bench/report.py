"""Terminal report: one table row per measured run, then what did not run and why, then the goals."""

from __future__ import annotations

from collections import defaultdict
from typing import Dict, List

MiB = 1 << 20


def _ms(s) -> str:
    if s is None:
        return "-"
    if s >= 1:
        return f"{s:.2f} s"
    if s >= 1e-3:
        return f"{s * 1e3:.2f} ms"
    return f"{s * 1e6:.1f} us"


def _num(x, fmt="{:.2f}") -> str:
    return "-" if x is None else fmt.format(x)


def short_name(name: str) -> str:
    return name.replace("/page=", "/p").replace("/bf16", "").replace("/fp32", "/f32")


def table(doc: Dict[str, object]) -> str:
    head = ["case", "impl", "median", "p20..p80", "TFLOP/s", "GB/s", "bound", "%ceil", "x floor", "peak MiB",
            "speedup", "mem ratio", "others"]  # fmt: skip
    rows: List[List[str]] = []
    for c in doc["cases"]:
        ratios = {(r["backend"], r["peer"]): r for r in c.get("ratios", [])}
        first = True
        for r in c.get("runs", []):
            if r.get("status") != "ok":
                continue
            t = r["time"]
            sp = mr = "-"
            if r["kind"] == "peer":
                # our time / memory relative to this peer (speedup > 1: we are faster)
                mine = [v for (b, p), v in ratios.items() if p == r["impl"]]
                if mine:
                    sp = _num(mine[0]["speedup"], "{:.1f}x")
                    mr = _num(mine[0]["mem_ratio"], "{:.3f}")
            frac = r.get("frac_of_ceiling")
            rows.append([
                short_name(c["name"]) if first else "",
                r["impl"] + ("*" if r["kind"] == "peer" else ""),
                _ms(t["median_s"]),
                f"{_ms(t['p20_s'])}..{_ms(t['p80_s'])}",
                _num(r.get("tflops"), "{:.4f}"),
                _num(r.get("gbps"), "{:.2f}"),
                (r.get("floor") or {}).get("bound") or "-",
                "-" if frac is None else f"{frac * 100:.1f}",
                _num(r.get("x_floor"), "{:.1f}"),
                _num((r.get("peak_mem_bytes") or 0) / MiB, "{:.1f}"),
                sp,
                mr,
                _num(c.get("other_cpu_cores_before"), "{:.1f}") if first else "",
            ])  # fmt: skip
            first = False
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(head)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(head, widths)), "  ".join("-" * w for w in widths)]
    for r in rows:
        lines.append("  ".join(v.ljust(w) for v, w in zip(r, widths)))
    lines.append(
        "* = peer (dense formulation on the same inputs); speedup = peer median / ours, mem ratio = our peak / "
        "peer peak. FLOP/s and GB/s count the sparse cost model (useful work). %ceil = floor / median, where "
        "floor = max(bytes / copy bandwidth, FLOPs / matmul rate of the compute dtype). others = CPU cores "
        "other processes kept busy just before the case (> 0.5: disturbed timings)."
    )
    return "\n".join(lines)


def not_run(doc: Dict[str, object]) -> str:
    groups = defaultdict(list)
    for c in doc["cases"]:
        if c.get("status") != "ok":
            groups[(c["status"], "(case)", c.get("reason") or "")].append(c["name"])
            continue
        for r in c.get("runs", []):
            if r.get("status") != "ok":
                groups[(r["status"], r["impl"], r.get("reason") or "")].append(c["name"])
    if not groups:
        return ""
    lines = ["Not run:"]
    for (status, impl, reason), names in sorted(groups.items()):
        where = short_name(names[0]) if len(names) == 1 else f"{len(names)} cases"
        reason = reason if len(reason) <= 160 else reason[:157] + "..."
        lines.append(f"  {status:7} {impl:15} {where}: {reason}")
    return "\n".join(lines)


def goals(doc: Dict[str, object]) -> str:
    gs = doc.get("goals") or []
    if not gs:
        return ""
    lines = ["Goals (measured, not asserted):"]
    for g in gs:
        lines.append(f"  [{g['status'].upper():12}] {g['id']}: {g['detail']}")
    return "\n".join(lines)


def ceilings(doc: Dict[str, object]) -> str:
    c = doc["ceilings"]
    parts = [f"copy {c['copy']['bytes_per_s'] / 1e9:.1f} GB/s ({c['copy']['buffer_bytes'] / MiB:.0f} MiB)"]
    for dt, m in c.get("matmul", {}).items():
        if "flops_per_s" in m:
            parts.append(f"{dt} matmul {m['flops_per_s'] / 1e12:.3f} TFLOP/s (n={m['shape'][0]})")
        else:
            parts.append(f"{dt} matmul: {m.get('error')}")
    m = doc["machine"]
    load = m.get("load_avg_start")
    loadtxt = f", load avg {load[0]:.2f}" if load else ""
    return (f"Ceilings on {m['device_name']} ({m['device']}, {m['torch_threads']} threads{loadtxt}): "
            + "; ".join(parts))  # fmt: skip


def full(doc: Dict[str, object]) -> str:
    parts = [ceilings(doc), "", table(doc)]
    nr = not_run(doc)
    if nr:
        parts += ["", nr]
    g = goals(doc)
    if g:
        parts += ["", g]
    return "\n".join(parts)
