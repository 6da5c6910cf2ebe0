"""The JSON results document: machine info, versions, and a schema checked by ``validate``.

The schema is documented field by field in bench/README.md ("JSON schema"); ``SCHEMA_VERSION`` goes
up whenever a field is renamed, removed or changes meaning (adding a field keeps the version).
"""

from __future__ import annotations

import datetime
import importlib.metadata
import json
import os
import platform
import subprocess
import sys
from typing import Dict, List, Optional

import torch
from longattn.backends import cpu_threads

from .device import accel, cpu_model, device_name, total_memory_bytes

SCHEMA = "longattn.bench"
SCHEMA_VERSION = 1

# field -> allowed types (None in the tuple: may be null). Nested records are checked separately.
NUM = (int, float)
TOP_FIELDS = {
    "schema": (str,),
    "schema_version": (int,),
    "created_utc": (str,),
    "command": (str,),
    "argv": (list,),
    "suite": (str,),
    "machine": (dict,),
    "backends": (list,),
    "settings": (dict,),
    "ceilings": (dict,),
    "cases": (list,),
    "goals": (list,),
    "outputs": (dict,),
}
MACHINE_FIELDS = {
    "platform": (str,),
    "python": (str,),
    "cpu_model": (str,),
    "cpu_count": (int,),
    "torch_threads": (int,),
    "memory_bytes": (int, type(None)),
    "device": (str,),
    "device_name": (str,),
    "load_avg_start": (list, type(None)),
    "load_avg_end": (list, type(None)),
    "versions": (dict,),
    "env": (dict,),
    "git": (dict,),
}
BACKEND_FIELDS = {"name": (str,), "available": (bool,), "reason": (str, type(None)), "device_types": (list, type(None)),
                  "ops": (list,)}  # fmt: skip
CEILING_FIELDS = {"device": (str,), "copy": (dict,), "matmul": (dict,)}
CASE_FIELDS = {
    "name": (str,),
    "group": (str,),
    "op": (str,),
    "mode": (str,),
    "preset": (str, type(None)),
    "params": (dict,),
    "status": (str,),
    "runs": (list,),
    "ratios": (list,),
}
CASE_OK_FIELDS = {"cost": (dict,), "stats": (dict,), "input_bytes": (int,), "build_s": NUM, "wall_s": NUM}
COST_FIELDS = {"flops": NUM, "bytes": NUM, "intensity": NUM + (type(None),), "formula": (str,), "terms": (dict,)}
RUN_FIELDS = {"kind": (str,), "impl": (str,), "status": (str,), "reason": (str, type(None))}
RUN_OK_FIELDS = {
    "time": (dict,),
    "samples_s": (list,),
    "tflops": NUM + (type(None),),
    "gbps": NUM + (type(None),),
    "compute_dtype": (str,),
    "floor": (dict,),
    "frac_of_ceiling": NUM + (type(None),),
    "x_floor": NUM + (type(None),),
    "peak_mem_bytes": (int,),
    "mem_method": (str,),
}
TIME_FIELDS = {k: NUM for k in ("median_s", "p20_s", "p80_s", "q1_s", "q3_s", "iqr_s", "min_s", "max_s", "mean_s",
                                "first_call_s")}  # fmt: skip
TIME_FIELDS.update(n=(int,), warmup=(int,))
FLOOR_FIELDS = {"memory_s": NUM + (type(None),), "compute_s": NUM + (type(None),), "floor_s": NUM + (type(None),),
                "bound": (str, type(None))}  # fmt: skip
RATIO_FIELDS = {"backend": (str,), "peer": (str,), "speedup": NUM + (type(None),), "mem_ratio": NUM + (type(None),)}
GOAL_FIELDS = {"id": (str,), "description": (str,), "status": (str,), "value": NUM + (type(None),),
               "target": (str,), "detail": (str,)}  # fmt: skip
CASE_STATUS = ("ok", "skipped", "error")
RUN_STATUS = ("ok", "skipped", "error")
RUN_KINDS = ("backend", "peer")
GOAL_STATUS = ("met", "not met", "not measured")

ALL_FIELD_SETS = {
    "top": TOP_FIELDS, "machine": MACHINE_FIELDS, "backends[]": BACKEND_FIELDS, "ceilings": CEILING_FIELDS,
    "cases[]": CASE_FIELDS, "cases[] (ok)": CASE_OK_FIELDS, "cost": COST_FIELDS, "runs[]": RUN_FIELDS,
    "runs[] (ok)": RUN_OK_FIELDS, "time": TIME_FIELDS, "floor": FLOOR_FIELDS, "ratios[]": RATIO_FIELDS,
    "goals[]": GOAL_FIELDS,
}  # fmt: skip


def _check(obj, fields: Dict[str, tuple], where: str, errors: List[str]) -> None:
    if not isinstance(obj, dict):
        errors.append(f"{where}: expected an object, got {type(obj).__name__}")
        return
    for k, types in fields.items():
        if k not in obj:
            errors.append(f"{where}: missing field {k!r}")
        elif isinstance(obj[k], bool) and bool not in types:
            errors.append(f"{where}.{k}: expected {[t.__name__ for t in types]}, got bool")
        elif not isinstance(obj[k], types):
            errors.append(f"{where}.{k}: expected {[t.__name__ for t in types]}, got {type(obj[k]).__name__}")


def validate(doc: Dict[str, object]) -> List[str]:
    """Every way ``doc`` departs from the schema (empty list: valid)."""
    errors: List[str] = []
    _check(doc, TOP_FIELDS, "$", errors)
    if errors:
        return errors
    if doc["schema"] != SCHEMA:
        errors.append(f"$.schema: expected {SCHEMA!r}, got {doc['schema']!r}")
    if doc["schema_version"] != SCHEMA_VERSION:
        errors.append(f"$.schema_version: expected {SCHEMA_VERSION}, got {doc['schema_version']}")
    _check(doc["machine"], MACHINE_FIELDS, "$.machine", errors)
    for i, b in enumerate(doc["backends"]):
        _check(b, BACKEND_FIELDS, f"$.backends[{i}]", errors)
    _check(doc["ceilings"], CEILING_FIELDS, "$.ceilings", errors)
    for i, c in enumerate(doc["cases"]):
        w = f"$.cases[{i}]"
        _check(c, CASE_FIELDS, w, errors)
        if not isinstance(c, dict) or "status" not in c:
            continue
        if c["status"] not in CASE_STATUS:
            errors.append(f"{w}.status: {c['status']!r} not in {CASE_STATUS}")
        if c["status"] == "ok":
            _check(c, CASE_OK_FIELDS, w, errors)
            if isinstance(c.get("cost"), dict):
                _check(c["cost"], COST_FIELDS, w + ".cost", errors)
        elif not isinstance(c.get("reason"), str):
            errors.append(f"{w}: a case that is not ok needs a reason")
        for j, r in enumerate(c.get("runs") or []):
            wr = f"{w}.runs[{j}]"
            _check(r, RUN_FIELDS, wr, errors)
            if not isinstance(r, dict):
                continue
            if r.get("kind") not in RUN_KINDS:
                errors.append(f"{wr}.kind: {r.get('kind')!r} not in {RUN_KINDS}")
            if r.get("status") not in RUN_STATUS:
                errors.append(f"{wr}.status: {r.get('status')!r} not in {RUN_STATUS}")
            if r.get("status") == "ok":
                _check(r, RUN_OK_FIELDS, wr, errors)
                if isinstance(r.get("time"), dict):
                    _check(r["time"], TIME_FIELDS, wr + ".time", errors)
                if isinstance(r.get("floor"), dict):
                    _check(r["floor"], FLOOR_FIELDS, wr + ".floor", errors)
            elif not isinstance(r.get("reason"), str):
                errors.append(f"{wr}: a run that is not ok needs a reason")
        for j, r in enumerate(c.get("ratios") or []):
            _check(r, RATIO_FIELDS, f"{w}.ratios[{j}]", errors)
    for i, g in enumerate(doc["goals"]):
        _check(g, GOAL_FIELDS, f"$.goals[{i}]", errors)
        if isinstance(g, dict) and g.get("status") not in GOAL_STATUS:
            errors.append(f"$.goals[{i}].status: {g.get('status')!r} not in {GOAL_STATUS}")
    return errors


def _version(dist: str) -> Optional[str]:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None
    except Exception:
        return None


def versions() -> Dict[str, Optional[str]]:
    """Installed versions (read from package metadata: nothing is imported)."""
    import longattn

    out = {
        "longattn": getattr(longattn, "__version__", None),
        "torch": torch.__version__,
        "torch_cuda": getattr(torch.version, "cuda", None),
        "torch_hip": getattr(torch.version, "hip", None),
    }
    for dist in ("numpy", "triton", "triton-ascend", "torch-npu", "matplotlib", "pytest-benchmark", "tqdm",
                 "flash-mla", "flashinfer-python"):  # fmt: skip
        out[dist] = _version(dist)
    return out


def git_info() -> Dict[str, object]:
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10)  # fmt: skip
        if commit.returncode != 0:
            return {"commit": None, "dirty": None}
        return {"commit": commit.stdout.strip(), "dirty": bool(dirty.stdout.strip())}
    except Exception:
        return {"commit": None, "dirty": None}


ENV_KEYS = ("LONGATTN_BACKEND", "LONGATTN_CHUNK_MB", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "TRITON_INTERPRET",
            "CUDA_VISIBLE_DEVICES", "ASCEND_RT_VISIBLE_DEVICES", "TORCH_DEVICE_BACKEND_AUTOLOAD")  # fmt: skip


def machine_info(device: torch.device) -> Dict[str, object]:
    try:
        load = list(os.getloadavg())
    except OSError:
        load = None
    try:
        ncpu = len(os.sched_getaffinity(0))
    except AttributeError:
        ncpu = os.cpu_count() or 1
    info: Dict[str, object] = {
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "cpu_model": cpu_model(),
        "cpu_count": int(ncpu),
        "torch_threads": int(torch.get_num_threads()),
        "cpu_threads_policy": os.environ.get(cpu_threads.ENV_VAR) or "auto",
        "memory_bytes": total_memory_bytes(),
        "device": str(device),
        "device_name": device_name(device),
        "load_avg_start": load,
        "load_avg_end": None,
        "versions": versions(),
        # the fixed keys (None when unset) and every other LONGATTN_* variable that is set (README.md,
        # "Environment variables": e.g. LONGATTN_ASCEND_SIM_CORES changes what the emulator cases measure)
        "env": {k: os.environ.get(k) for k in ENV_KEYS}
        | {k: v for k, v in sorted(os.environ.items()) if k.startswith("LONGATTN_")},
        "git": git_info(),
    }
    mod = accel(device)
    if mod is not None:
        try:
            props = mod.get_device_properties(device.index or 0)
            info["accelerator"] = {
                "name": getattr(props, "name", None),
                "total_memory_bytes": int(getattr(props, "total_memory", 0)) or None,
                "capability": [getattr(props, "major", None), getattr(props, "minor", None)],
                "multi_processor_count": getattr(props, "multi_processor_count", None),
            }
        except Exception as exc:
            info["accelerator"] = {"error": str(exc)}
    return info


def backends_info() -> List[Dict[str, object]]:
    from longattn.backends import registry
    from longattn.ops.op import ops_of_backend

    out = []
    for name in registry.backend_names():
        b = registry.get_backend(name)
        out.append({
            "name": name,
            "available": b.unavailable is None,
            "reason": b.unavailable,
            "device_types": list(b.device_types) if b.device_types is not None else None,
            "ops": ops_of_backend(name),
            "description": b.description,
        })  # fmt: skip
    return out


def now_utc() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _clean(x):
    """JSON-safe: NaN/inf -> None, tuples -> lists, tensors/numbers -> Python numbers."""
    if isinstance(x, float):
        return x if x == x and x not in (float("inf"), float("-inf")) else None
    if isinstance(x, dict):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    if isinstance(x, torch.Tensor):
        return _clean(x.tolist())
    return x


def write(doc: Dict[str, object], path: str) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(_clean(doc), f, indent=1, sort_keys=False)
        f.write("\n")
