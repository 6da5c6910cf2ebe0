"""What the compiled code of every Triton kernel shows, per architecture, from offline compiles (no GPU).

``python -m bench.compiled_report [--out JSON]`` compiles every kernel configuration of
``tests/triton/sm90_compile.compile_all`` (the launchers' tiles for each architecture; on sm_90a also the
V4 launches as the JIT specialises them) for sm_90a (H100 / H200), sm_89 (L40S / RTX 4090), sm_80 (A100)
and gfx942 (MI300X), each in a subprocess without TRITON_INTERPRET, and prints one markdown table: per
kernel configuration and architecture the matrix instructions (wgmma / mma.sync / MFMA), asynchronous
copies (cp.async, TMA), spilled bytes and shared memory, and for the sm_90a V4 launches the offline
model's kernel-time estimate (``bench/sm90_model.py``; a model, never a measurement). The README's
"Compiled code per kernel and architecture" table is this output; CI asserts the same properties
(tests/triton/test_triton_sm90_compile.py).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from typing import Dict, List, Optional, Sequence

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
ARCHS = (90, 89, 80, "gfx942")
ARCH_NAMES = {90: "sm_90a", 89: "sm_89", 80: "sm_80", "gfx942": "gfx942"}


def compile_arch(arch) -> List[dict]:
    """compile_all(arch) in a subprocess without TRITON_INTERPRET (as the CI test runs it)."""
    env = dict(os.environ)
    env.pop("TRITON_INTERPRET", None)
    env["PYTHONPATH"] = os.pathsep.join([os.path.join(ROOT, "python"), ROOT, env.get("PYTHONPATH", "")])
    code = f"import json; from tests.triton.sm90_compile import compile_all; print(json.dumps(compile_all({arch!r})))"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT, timeout=1800)
    if res.returncode != 0:
        raise RuntimeError(f"compile_all({arch!r}) failed:\n{res.stderr[-2000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def kernel_key(name: str) -> str:
    """A record's configuration name without its tile dict (tiles differ per architecture)."""
    return name.split(" {")[0].strip()


def spilled(rec: dict) -> Optional[int]:
    """NVIDIA: spilled bytes (ptxas spill stores); None when not reported."""
    m = re.search(r"(\d+) bytes spill stores", rec.get("ptxas", ""))
    return int(m.group(1)) if m else None


def cell(rec: Optional[dict], amd: bool) -> str:
    if rec is None:
        return "-"  # not compiled there: FP8 pools are declined below sm_89 and on AMD; JIT launches: sm_90a only
    if "skipped" in rec:
        return "not compiled (" + rec["skipped"] + ")"
    if not rec.get("ok"):
        return "FAILS: " + rec.get("error", "")[:60]
    if rec.get("wgmma"):
        mma = "wgmma"
    elif rec.get("mma_sync"):
        mma = "mma.sync"
    elif rec.get("mfma"):
        mma = "MFMA"
    else:
        mma = "no MMA"
    parts = [mma]
    if rec.get("dot_replication", 1) > 1:  # warps computing the same product elements (sm90_compile.dot_replication)
        parts.append(f"{rec['dot_replication']}x MMA work")
    if rec.get("cp_async"):
        parts.append("cp.async")
    if rec.get("tma"):
        parts.append("TMA")
    if amd and "vgpr_spills" in rec:  # VGPRs to scratch memory; SGPRs into VGPR lanes (no memory traffic)
        parts.append(f"{rec['vgpr_spills']} VGPR spills ({rec['vgprs']} VGPRs), {rec['sgpr_spills']} SGPR spills")
    elif not amd and (spill_bytes := spilled(rec)) is not None:
        parts.append(f"{spill_bytes} B spill")
    if rec.get("shared") is not None:
        parts.append(f"{rec['shared'] / 1024:.0f} KiB smem")
    return ", ".join(parts)


def table(by_arch: Dict, model: Optional[dict] = None, archs: Sequence = ARCHS) -> str:
    """The markdown table: a row per kernel configuration (first-seen order across architectures)."""
    rows: Dict[str, Dict] = {}
    for arch in archs:
        for rec in by_arch.get(arch, []):
            rows.setdefault(kernel_key(rec["name"]), {})[arch] = rec
    estimates = (model or {}).get("estimates", {})
    head = "| kernel configuration | " + " | ".join(ARCH_NAMES[a] for a in archs) + " | sm_90a model (H200) |"
    lines = [head, "|" + "---|" * (len(archs) + 2)]
    for key, recs in rows.items():
        case = key[len("jit ") :] if key.startswith("jit ") else None
        est = estimates.get(case) if case else None
        lo, hi = (est["optimistic_us"], est["pessimistic_us"]) if est else (None, None)
        shown = "" if est is None else f"{lo} us" if lo == hi else f"{lo}-{hi} us"
        cells = [cell(recs.get(a), a == "gfx942") for a in archs]
        lines.append(f"| {key} | " + " | ".join(cells) + f" | {shown} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=None, help="JSON of the records (default: print the table only)")
    a = p.parse_args(argv)
    from bench import sm90_model

    by_arch = {arch: compile_arch(arch) for arch in ARCHS}
    import triton

    print(f"triton {triton.__version__}, {time.strftime('%Y-%m-%d')}\n")
    print(table(by_arch, sm90_model.load()))
    if a.out:
        with open(a.out, "w") as f:
            json.dump({"triton": triton.__version__, "date": time.strftime("%Y-%m-%d"),
                       "records": {ARCH_NAMES[k]: v for k, v in by_arch.items()}}, f, indent=1)  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
