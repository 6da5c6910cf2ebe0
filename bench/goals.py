"""Performance goals, evaluated from a run's results (reported, never asserted).

CPU goals of the reference backend (issue: the benchmark harness):
- ``decode_1m_floor``: the 1M-token decode step of one V4-Flash CSA layer (batch 1) within 3x of the
  larger of its memory floor and its compute floor (``x_floor <= 3``).
- ``sparse_vs_dense_128k``: at 128K context, the CSA layer decode step and prefill chunk at least 10x
  faster than each dense masked formulation over the same key set, with at most a tenth of its peak
  memory (one goal per mode and peer).
- The same two goals for the real layer (``longattn.HybridAttention``, caches filled through the public
  write ops, plan not timed): ``layer_decode_1m_floor`` (``hybrid_attention.csa.decode``, 1M, batch 1)
  and ``layer_vs_dense_128k_<mode>_<peer>`` (``hybrid_attention.csa.decode`` / ``.prefill`` at 128K).
A goal whose case or peer did not run is "not measured", with the reason.
"""

from __future__ import annotations

from typing import Dict, List, Optional

K128, M1 = 131072, 1 << 20


def _find(cases, group: str, **params) -> Optional[dict]:
    for c in cases:
        if c["group"] != group:
            continue
        if all(c["params"].get(k, v) == v for k, v in params.items()):  # (a parameter the case lacks: any)
            return c
    return None


def _run(case, impl: str) -> Optional[dict]:
    for r in case.get("runs", []):
        if r["impl"] == impl:
            return r
    return None


def _goal(gid, desc, status, value, target, detail) -> Dict[str, object]:
    return {"id": gid, "description": desc, "status": status, "value": value, "target": target, "detail": detail}


def evaluate(doc: Dict[str, object], backend: str = "reference") -> List[Dict[str, object]]:
    if not str(doc.get("machine", {}).get("device", "")).startswith("cpu"):
        return []
    cases = doc.get("cases", [])
    goals: List[Dict[str, object]] = []
    _floor_goal(goals, cases, backend, "decode_1m_floor", "csa_layer.decode",
                "1M-token decode step, one V4-Flash CSA layer (indexer_topk + sparse_attention), batch 1")  # fmt: skip
    _dense_goals(goals, cases, backend, "sparse_vs_dense_128k", "csa_layer", "CSA layer (indexer + attention)")
    _floor_goal(goals, cases, backend, "layer_decode_1m_floor", "hybrid_attention.csa.decode",
                "1M-token decode step of one V4-Flash HybridAttention CSA layer (append, compressors, indexer, "
                "attention; plan not included), batch 1")  # fmt: skip
    _dense_goals(goals, cases, backend, "layer_vs_dense_128k", "hybrid_attention.csa", "HybridAttention CSA layer")
    return goals


def _floor_goal(goals, cases, backend, gid, group, what) -> None:
    desc = f"{what}, {backend}: within 3x of max(memory floor, compute floor)"
    c = _find(cases, group, preset="v4-flash", context=M1, batch=1, dtype="bf16")
    r = _run(c, backend) if c else None
    if r is None or r.get("status") != "ok":
        why = "case not in this run" if c is None else (r or {}).get("reason") or "backend did not run"
        goals.append(_goal(gid, desc, "not measured", None, "<= 3", why))
    else:
        x = r.get("x_floor")
        fl = r["floor"]
        detail = (
            f"median {r['time']['median_s'] * 1e3:.1f} ms; memory floor {fl['memory_s'] * 1e3:.2f} ms, "
            f"compute floor ({r['compute_dtype']}) {fl['compute_s'] * 1e3:.2f} ms -> {fl['bound']}-bound, "
            f"{x:.2f}x the floor"
        )
        status = "met" if x is not None and x <= 3 else "not met"
        goals.append(_goal(gid, desc, status, x, "<= 3", detail))


def _dense_goals(goals, cases, backend, prefix, group, what) -> None:
    for mode, extra in (("decode", {"batch": 1}), ("prefill", {})):
        c = _find(cases, f"{group}.{mode}", preset="v4-flash", context=K128, dtype="bf16", **extra)
        for peer in ("dense_sdpa", "dense_einsum", "dense_einsum_fp32"):
            gid = f"{prefix}_{mode}_{peer}"
            desc = (f"128K context, V4-Flash {what} {mode}: {backend} >= 10x faster than {peer} over the same key "
                    "set, with <= 1/10 of its peak memory")  # fmt: skip
            if c is None:
                goals.append(_goal(gid, desc, "not measured", None, "speedup >= 10 and mem_ratio <= 0.1",
                                   "case not in this run"))  # fmt: skip
                continue
            ratio = next((x for x in c.get("ratios", []) if x["backend"] == backend and x["peer"] == peer), None)
            if ratio is None:
                pr = _run(c, peer)
                why = (pr or {}).get("reason") or "peer did not run"
                goals.append(_goal(gid, desc, "not measured", None, "speedup >= 10 and mem_ratio <= 0.1", why))
                continue
            sp, mr = ratio["speedup"], ratio["mem_ratio"]
            ok = sp is not None and sp >= 10 and mr is not None and mr <= 0.1
            detail = f"speedup {sp:.1f}x, memory ratio {mr:.3f}" if mr is not None else f"speedup {sp:.1f}x"
            goals.append(_goal(gid, desc, "met" if ok else "not met", sp, "speedup >= 10 and mem_ratio <= 0.1", detail))
