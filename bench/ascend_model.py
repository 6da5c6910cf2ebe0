"""Work counts of the Ascend C kernels from the CPU emulator, and a roofline **model** for a 910B2.

No NPU has ever run these kernels. What this reports is (1) counted by the emulator while it runs the
real kernel source on V4 decode shapes: API operations per pipe (S, V, M, MTE1, MTE2, MTE3, FIX), GM
bytes moved per pipe, UB bytes read / written by the vector pipe, cube MACs and 16 x 16 x 32-B fractal
steps, per AI core; and (2) a roofline model built on those counts and the published 910B2 figures
(docs: ../shared/docs/ascend.md): per AI core, cube time = fractal steps at one per cycle, vector time
= max(UB bytes read / 512, UB bytes written / 256, vector ops) cycles per AIV, at 1.85 GHz; the chip
time = max(the slowest AI core (cube and vector overlapped), the op's own tensor bytes / 1.6 TB/s). The
kernels also move data through their GM workspaces (gathered rows, logits, probabilities, partial
outputs: a few hundred KB per core, likely L2-resident on the device): reported as ``gm_bytes`` and as
a pessimistic bound (``gm_all_us``: every GM byte at HBM speed), not in the model time. The model
leaves out DMA start-up per transfer, scalar-pipe latency (the gather's index reads), cross-core flag
latency and launch cost, so it is a lower bound: bench/npu_check.sh measures the real time.

    python -m bench.ascend_model [--cores 24] [--batch 1 24] [--out FILE.json] [--smoke] [--only TEXT]

``--only sparse_attention`` runs the cases whose name contains the text; LONGATTN_SA_BLOCK_KEYS=64 runs
sparse_attention with the 64-key blocks of before the 128-256-key blocks (the "before" column).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time
from typing import Callable, Dict, List, Tuple

import torch

PIPES = ("S", "V", "M", "MTE1", "MTE2", "MTE3", "FIX")
# 910B2 (A2), from ../shared/docs/ascend.md: 24 AI cores (1 AIC + 2 AIV each), cube 4096 bf16 MAC per
# cycle per core (one 16 x 16 x 16 fractal step), 1.85 GHz, ~1.6 TB/s HBM (unverified figure).
CHIP = {
    "name": "Ascend 910B2 (model)",
    "ai_cores": 24,
    "clock_hz": 1.85e9,
    "cube_fractals_per_cycle": 1,
    "cube_macs_per_cycle_bf16": 4096,
    "vector_ub_read_bytes_per_cycle": 512,  # two 256-B source operands per repeat
    "vector_ub_write_bytes_per_cycle": 256,  # one 256-B result per repeat
    "hbm_bytes_per_s": 1.6e12,
}


def extension():
    from longattn.backends import ascend_sim

    return ascend_sim.extension()


def counted(fn: Callable[[], object]) -> Tuple[List[dict], float]:
    """Run ``fn`` on the emulator; (the work counters of its launches, wall seconds)."""
    ext = extension()
    ext.take_launch_work()
    t0 = time.perf_counter()
    fn()
    return ext.take_launch_work(), time.perf_counter() - t0


def model(launch: dict, tensor_bytes: int, chip: dict = CHIP) -> Dict[str, object]:
    """The roofline model of one launch (see the module docstring): times in us and the binding term."""
    clock = chip["clock_hz"]
    per_core: Dict[int, Dict[str, float]] = {}
    gm_bytes = 0
    for c in launch["cores"]:
        gm_bytes += sum(v for p, v in c["gm_read"].items() if p != "S") + sum(
            v for p, v in c["gm_write"].items() if p != "S"
        )
        t = per_core.setdefault(c["group"], {"cube": 0.0, "vector": 0.0})
        if c["aic"]:
            t["cube"] += c["fractals"] / chip["cube_fractals_per_cycle"] / clock
        else:
            v = max(
                c["ub_read"] / chip["vector_ub_read_bytes_per_cycle"],
                c["ub_write"] / chip["vector_ub_write_bytes_per_cycle"],
                c["ops"]["V"],
            )
            t["vector"] = max(t["vector"], v / clock)  # the AI core's two AIVs run side by side
    cube = max((t["cube"] for t in per_core.values()), default=0.0)
    vector = max((t["vector"] for t in per_core.values()), default=0.0)
    hbm = tensor_bytes / chip["hbm_bytes_per_s"]
    total = max(cube, vector, hbm)
    bound = max((("cube", cube), ("vector", vector), ("hbm", hbm)), key=lambda kv: kv[1])[0]
    return {"cube_us": cube * 1e6, "vector_us": vector * 1e6, "hbm_us": hbm * 1e6, "model_us": total * 1e6,
            "bound": bound, "tensor_bytes": tensor_bytes, "gm_bytes": gm_bytes,
            "gm_all_us": max(total, gm_bytes / chip["hbm_bytes_per_s"]) * 1e6}  # fmt: skip


def totals(launch: dict) -> Dict[str, object]:
    """Per-pipe operation counts and GM bytes summed over the cores, the busiest core's counts, MACs."""
    ops = {p: sum(c["ops"][p] for c in launch["cores"]) for p in PIPES}
    busiest = max(launch["cores"], key=lambda c: sum(c["ops"].values()))
    return {
        "kind": launch["kind"],
        "block_dim": launch["block_dim"],
        "ops": ops,
        "ops_busiest_core": dict(busiest["ops"]),
        "gm_read": {p: sum(c["gm_read"][p] for c in launch["cores"]) for p in PIPES},
        "gm_write": {p: sum(c["gm_write"][p] for c in launch["cores"]) for p in PIPES},
        "ub_read": sum(c["ub_read"] for c in launch["cores"]),
        "ub_write": sum(c["ub_write"] for c in launch["cores"]),
        "macs": sum(c["macs"] for c in launch["cores"]),
        "fractals": sum(c["fractals"] for c in launch["cores"]),
    }


# ---------------------------------------------------------------------------------------------------
# cases: V4 decode on the ascend_sim backend (bf16; random values: the counts depend on shapes only,
# and on how many index entries are valid: all are here)
# ---------------------------------------------------------------------------------------------------
def sparse_case(T: int, H: int, window: int, comp: int, D: int = 512, fp8: bool = False):
    """bf16 q and window rows; the compressed stream bf16 or an FP8 pool (pages of 64 records)."""

    def run():
        import longattn
        from longattn.cache import quantize_kv_fp8

        g = torch.Generator().manual_seed(0)
        q = torch.randn(T, H, D, generator=g).bfloat16()
        kv = torch.randn(T * window, D, generator=g).bfloat16()
        rows = -(-max(comp, 1) * 2 // 64) * 64
        pool = torch.randn(rows, D, generator=g).bfloat16()
        if fp8:
            pool = quantize_kv_fp8(pool.view(rows // 64, 64, D))
        win = torch.arange(T * window, dtype=torch.int32).view(T, window)
        idx = torch.stack([torch.randperm(rows, generator=g)[:comp] for _ in range(T)]).int()
        longattn.sparse_attention(q, kv, win, extra_kv=pool, extra_indices=idx, attn_sink=torch.zeros(H),
                                  backend="ascend_sim")  # fmt: skip

    return run


def indexer_case(T: int, N: int, Hi: int = 64, Di: int = 128, topk: int = 512):
    def run():
        import longattn

        g = torch.Generator().manual_seed(0)
        q = torch.randn(T, Hi, Di, generator=g).bfloat16()
        w = torch.randn(T, Hi, generator=g)
        k = torch.randn(N, Di, generator=g).bfloat16()
        longattn.indexer_topk(q, w, k, torch.full((T,), N), topk, backend="ascend_sim")

    return run


def append_case(T: int, D: int = 512):
    def run():
        import longattn

        pool = torch.zeros(T * 4, D, dtype=torch.bfloat16)
        longattn.append_kv(pool, torch.randn(T, D).bfloat16(), torch.arange(T) * 2, backend="ascend_sim")

    return run


def combine_case(T: int, H: int, D: int = 512):
    """merge_attention_states then apply_attention_sink of two bf16 partial states (split-KV decode)."""

    def run():
        import longattn

        g = torch.Generator().manual_seed(0)
        oa, ob = torch.randn(T, H, D, generator=g).bfloat16(), torch.randn(T, H, D, generator=g).bfloat16()
        la, lb = torch.randn(T, H, generator=g), torch.randn(T, H, generator=g)
        out, lse = longattn.merge_attention_states(oa, la, ob, lb, backend="ascend_sim")
        longattn.apply_attention_sink(out, lse, torch.zeros(H), backend="ascend_sim")

    return run


def pool_case(S: int, ratio: int, overlap: bool, d: int = 512):
    """compress_pool of S bf16 token rows (CSA: ratio 4 overlapped; HCA: ratio 128)."""

    def run():
        import longattn

        c = 2 if overlap else 1
        g = torch.Generator().manual_seed(0)
        a, b = torch.randn(S, c * d, generator=g).bfloat16(), torch.randn(S, c * d, generator=g).bfloat16()
        longattn.compress_pool(a, b, ratio, overlap, backend="ascend_sim")

    return run


def sparse_work(T: int, H: int, keys: int, D: int, fp8_keys: int = 0) -> Dict[str, int]:
    """Useful MACs (Q.K^T and P.V over the valid keys) and the op's tensor bytes (bf16 q, key rows (584-B
    records for the last ``fp8_keys`` of each token), out; int32 indices; fp32 lse)."""
    rows = T * ((keys - fp8_keys) * 2 * D + fp8_keys * 584)
    return {"macs": 2 * T * H * keys * D, "bytes": 2 * 2 * T * H * D + rows + 4 * (T * keys + T * H)}


def indexer_work(T: int, N: int, Hi: int, Di: int, topk: int) -> Dict[str, int]:
    """Useful MACs (scores of every entry) and tensor bytes (bf16 q and keys, fp32 weights, int32 top-k)."""
    return {"macs": T * Hi * Di * N, "bytes": 2 * (T * Hi * Di + N * Di) + 4 * (T * Hi + T * topk + T)}


def cases(batches: List[int], smoke: bool) -> List[Tuple[str, Callable[[], None], Dict[str, float]]]:
    """(name, run, work) per case; work: useful MACs (attention / indexer over the valid keys) and the
    op's tensor bytes (what the model's HBM term moves)."""
    if smoke:
        return [
            ("sparse_attention decode H=16 16+48 keys T=1 (smoke)", sparse_case(1, 16, 16, 48, D=64),
             sparse_work(1, 16, 64, 64)),
            ("indexer_topk decode N=4096 T=1 (smoke)", indexer_case(1, 4096, Hi=4, Di=64, topk=64),
             indexer_work(1, 4096, 4, 64, 64)),
            ("append_kv T=4 (smoke)", append_case(4, D=64), {"bytes": 2 * 4 * 64 * 2 + 4 * 8}),
        ]  # fmt: skip
    out = []
    for T in batches:
        for preset, H in (("V4-Flash", 64), ("V4-Pro", 128)):
            for kind, comp in (("CSA", 512), ("HCA", 8192)):
                keys = 128 + comp
                out.append((f"sparse_attention decode {preset} {kind} H={H} {keys} keys T={T}",
                            sparse_case(T, H, 128, comp), sparse_work(T, H, keys, 512)))  # fmt: skip
    for T in batches:  # the FP8 pool V4 deploys (584-B records, dequantised in the gather)
        for kind, comp in (("CSA", 512), ("HCA", 8192)):
            keys = 128 + comp
            work = sparse_work(T, 64, keys, 512, fp8_keys=comp)
            name = f"sparse_attention decode V4-Flash {kind} H=64 {keys} keys T={T} FP8 compressed pool"
            out.append((name, sparse_case(T, 64, 128, comp, fp8=True), work))
    out.append(("indexer_topk decode N=262144 T=1", indexer_case(1, 262144), indexer_work(1, 262144, 64, 128, 512)))
    B = max(batches)
    out.append((f"append_kv T={B} D=512", append_case(B), {"bytes": 2 * B * 512 * 2 + 8 * B}))
    # merge + sink: two launches; the bytes of the first (merge: two partial states in, one out)
    out.append((f"merge_attention_states + apply_attention_sink T={B} H=128 D=512", combine_case(B, 128),
                {"bytes": 3 * B * 128 * 512 * 2 + 3 * B * 128 * 4}))  # fmt: skip
    for name, ratio, overlap in (("CSA", 4, True), ("HCA", 128, False)):
        c = 2 if overlap else 1
        out.append((f"compress_pool {name} prefill S=4096 d=512", pool_case(4096, ratio, overlap),
                    {"bytes": 2 * 4096 * c * 512 * 2 + 4096 // ratio * 512 * 4}))  # fmt: skip
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cores", type=int, default=CHIP["ai_cores"], help="emulated AI cores (910B2: 24)")
    p.add_argument("--batch", type=int, nargs="+", default=[1, 24], help="decode tokens per case")
    p.add_argument("--smoke", action="store_true", help="tiny shapes (checks the plumbing)")
    p.add_argument("--only", help="run only the cases whose name contains this text")
    p.add_argument("--out", help="JSON file (default bench/results/ascend-model-910b2-<date>.json)")
    a = p.parse_args(argv)
    os.environ["LONGATTN_ASCEND_SIM_CORES"] = str(a.cores)
    chip = dict(CHIP, ai_cores=a.cores)
    rows = []
    peak = chip["ai_cores"] * chip["cube_macs_per_cycle_bf16"] * chip["clock_hz"]
    for name, run, useful in cases(a.batch, a.smoke):
        if a.only and a.only not in name:
            continue
        launches, wall = counted(run)
        case_us = 0.0
        for i, launch in enumerate(launches):
            m = model(launch, useful.get("bytes", 0) if i == 0 else 0, chip)
            case_us += m["model_us"]
            row = {"case": name, "launch": i, "emulator_wall_s": round(wall, 2), **totals(launch), "model": m}
            rows.append(row)
        # the case: its launches back to back (launch gaps not modelled)
        summary = {"case_model_us": case_us, "launches": len(launches)}
        if useful.get("macs"):
            summary["useful_macs_fraction_of_peak"] = useful["macs"] / (case_us * 1e-6 * peak)
        for row in rows[len(rows) - len(launches) :]:
            row["case_total"] = summary
            print(f"{name} [{i}] {launch['kind']} x{launch['block_dim']}: model {m['model_us']:.2f} us "
                  f"({m['bound']}: cube {m['cube_us']:.2f}, vector {m['vector_us']:.2f}, hbm {m['hbm_us']:.2f}); "
                  f"ops {row['ops']}; GM {m['gm_bytes'] / 1e6:.2f} MB", flush=True)  # fmt: skip
    out = a.out or os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                                f"ascend-model-910b2-{datetime.date.today().isoformat()}.json")  # fmt: skip
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w") as f:
        json.dump({"what": "emulator work counts + roofline model (not a measurement)", "chip": chip,
                   "model": __doc__, "results": rows}, f, indent=1)  # fmt: skip
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
