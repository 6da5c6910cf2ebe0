"""``python -m bench``: the measurement instrument of longattn.

Without selection arguments it runs the default suite (a few minutes on a 2-core CPU, including the
CPU reference's 1M-token CSA decode step); ``--quick`` runs a small smoke suite; any of ``--ops``,
``--contexts``, ``--presets``, ``--batch``, ``--chunks``, ``--pages``, ``--kinds``, ``--tokens``,
``--dtypes`` selects from the full case registry (unnamed axes take each family's defaults);
``--all`` takes every value the registry knows. See bench/README.md.
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import time
from typing import List, Optional, Sequence

import torch

from . import cases as cases_mod
from . import ceilings, goals, peakmem, plots, report, results, runner
from .device import available_memory_bytes, resolve_device
from .inputs import parse_tokens
from .timing import TimingPolicy

DEFAULT_OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "out")
# The default suite takes ~3 minutes on a quiet 2-core CPU; on a busy one every case takes several
# times longer, so no case starts after this many seconds: the run (plus one case and the report)
# stays within 5 minutes, and the suite's order puts what the README and the goals read first.
DEFAULT_SUITE_BUDGET_S = 240.0
GiB = 1 << 30


def _split(values: Optional[Sequence[str]]) -> Optional[List[str]]:
    if not values:
        return None
    out: List[str] = []
    for v in values:
        out.extend(x for x in v.split(",") if x)
    return out


def _rel(path: str) -> str:
    """``path`` relative to the working directory when it lies below it (results stay portable)."""
    rel = os.path.relpath(path)
    return path if rel.startswith("..") else rel


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench",
        description="Benchmark longattn ops and layer steps against the measured machine ceilings and dense peers.",
    )
    sel = p.add_argument_group("case selection (values may be space- or comma-separated)")
    sel.add_argument("--ops", nargs="+", help="case groups or ops (fnmatch or prefix): e.g. sparse_attention, "
                     "indexer_topk.decode, csa_layer, 'merge*' (default: all)")  # fmt: skip
    sel.add_argument("--contexts", nargs="+", help="context lengths, e.g. 8K 128K 1M or 131072")
    sel.add_argument("--presets", nargs="+", help=f"model presets: {', '.join(cases_mod.PRESET_NAMES)}")
    sel.add_argument("--batch", nargs="+", help="decode batch sizes (sequences, one token each)")
    sel.add_argument("--chunks", nargs="+", help="prefill chunk sizes (tokens of one sequence)")
    sel.add_argument("--pages", nargs="+", help="page sizes of the paged pools")
    sel.add_argument("--kinds", nargs="+", help="layer kinds: csa, hca (sparse_attention); swa, csa, hca "
                     "(hybrid_attention); compressors csa, hca, csa_index (compress_pool, compress_kv)")  # fmt: skip
    sel.add_argument("--tokens", nargs="+", help="token counts of merge_attention_states / compress_pool")
    sel.add_argument("--dtypes", nargs="+", help="pool dtypes: bf16, fp8 (the FP8 pool: sparse_attention, "
                     "append_kv, compress_kv, hybrid_attention); fp32 where the op takes it")  # fmt: skip
    sel.add_argument("--emit", nargs="+", help="compress_kv decode: all (every token emits an entry), none")
    sel.add_argument("--all", action="store_true", help="every value the registry knows on unnamed axes (large!)")
    sel.add_argument("--quick", action="store_true", help="small smoke suite and short timing (seconds)")
    p.add_argument("--backends", nargs="+", help="subset of the registered backends (default: all of them but "
                   "the opt-in ascend_sim emulator, which runs only when named here or with --all)")  # fmt: skip
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda", "npu"),
                   help="where to run (auto: cuda, else npu, else cpu)")  # fmt: skip
    p.add_argument("--out", default=DEFAULT_OUT, help="output directory for JSON and plots (default: bench/out)")
    p.add_argument("--name", help="file name stem (default: <device>-<YYYY-MM-DD>)")
    p.add_argument("--no-plots", action="store_true", help="do not write PNG plots")
    p.add_argument("--no-peers", action="store_true", help="do not run dense / third-party peers")
    p.add_argument("--list", action="store_true", help="list the selected cases and exit")
    p.add_argument("--threads", type=int, help="torch.set_num_threads (CPU)")
    p.add_argument("--repeats", type=int, help="minimum timed samples per run")
    p.add_argument("--min-time", type=float, help="minimum total sampled time per run (s)")
    p.add_argument("--warm-cache", action="store_true", help="do not flush caches between samples")
    p.add_argument("--mem-limit-gb", type=float, help="skip inputs / peers above this (default: 60%% of free memory)")
    p.add_argument("--peer-max-s", type=float, help="skip a dense peer whose estimated call time is above this")
    p.add_argument("--backend-max-s", type=float, help="skip a backend whose call time, predicted from its "
                   "best x_floor on earlier cases of the op, is above this (default 60; quick 20)")  # fmt: skip
    p.add_argument("--no-rss", action="store_true", help="CPU: skip the extra sampled-RSS memory call")
    p.add_argument("--time-budget", type=float, metavar="S",
                   help="start no case after S seconds of the run; the rest are recorded as skipped (default: "
                   f"{DEFAULT_SUITE_BUDGET_S:.0f} for the default suite, none otherwise; 0: none)")  # fmt: skip
    p.add_argument("--wait-idle", type=float, default=0.0, metavar="S",
                   help="CPU: before each case wait up to S seconds for other processes to go idle "
                   "(shared machines)")  # fmt: skip
    p.add_argument("--seed", type=int, default=0)
    return p


def _axes(a) -> dict:
    ints = lambda vs: [int(v) for v in vs] if vs else None  # noqa: E731
    return {
        "context": [parse_tokens(v) for v in _split(a.contexts)] if a.contexts else None,
        "preset": _split(a.presets),
        "batch": ints(_split(a.batch)),
        "chunk": ints(_split(a.chunks)),
        "page_size": ints(_split(a.pages)),
        "kind": _split(a.kinds),
        "tokens": [parse_tokens(v) for v in _split(a.tokens)] if a.tokens else None,
        "dtype": _split(a.dtypes),
        "emit": _split(a.emit),
    }


def select(a) -> tuple:
    """(suite name, [(case, run peers)])."""
    axes = _axes(a)
    ops = _split(a.ops)
    if ops and not cases_mod.families(ops):
        raise SystemExit(f"--ops {' '.join(ops)}: no case group matches; groups: {', '.join(cases_mod.REGISTRY)}")
    for preset in axes["preset"] or ():
        if preset not in cases_mod.PRESET_NAMES:
            raise SystemExit(f"--presets: unknown preset {preset!r}; known: {', '.join(cases_mod.PRESET_NAMES)}")
    custom = bool(ops) or any(v for v in axes.values())
    if a.all:
        return "all", [(c, True) for c in cases_mod.select(ops, axes, everything=True)]
    if custom:
        return ("quick-custom" if a.quick else "custom"), [(c, True) for c in cases_mod.select(ops, axes, a.quick)]
    if a.quick:
        return "quick", [(c, True) for c in cases_mod.select(None, None, quick=True)]
    return "default", cases_mod.suite_cases(cases_mod.DEFAULT_SUITE)


def main(argv: Optional[Sequence[str]] = None) -> int:
    a = build_parser().parse_args(argv)
    argv_list = list(sys.argv[1:] if argv is None else argv)
    suite, selected = select(a)
    if a.list:
        print(f"{len(selected)} case(s) ({suite} selection):")
        for c, peers_on in selected:
            pe = ", ".join(c.family.peers) if (peers_on and c.family.peers and not a.no_peers) else "-"
            print(f"  {c.name}    [peers: {pe}]")
        print(f"groups: {', '.join(cases_mod.REGISTRY)}")
        return 0
    try:
        device = resolve_device(a.device)
    except (RuntimeError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if a.threads:
        torch.set_num_threads(a.threads)
    policy = TimingPolicy.quick() if a.quick else TimingPolicy()
    if a.repeats:
        policy.min_repeats = a.repeats
        policy.max_repeats = max(policy.max_repeats, a.repeats)
    if a.min_time is not None:
        policy.min_time_s = a.min_time
    policy.cold_cache = not a.warm_cache
    free = available_memory_bytes(device)
    mem_limit = int(a.mem_limit_gb * GiB) if a.mem_limit_gb else (int(0.6 * free) if free else None)
    budget = a.time_budget if a.time_budget is not None else (DEFAULT_SUITE_BUDGET_S if suite == "default" else None)
    cfg = runner.RunConfig(
        device=device,
        policy=policy,
        backends=_split(a.backends),
        peers=not a.no_peers,
        mem_limit_bytes=mem_limit,
        peer_max_s=a.peer_max_s if a.peer_max_s else (10.0 if a.quick else 60.0),
        seed=a.seed,
        rss=not a.no_rss,
        wait_idle_s=a.wait_idle,
        backend_max_s=a.backend_max_s if a.backend_max_s else (20.0 if a.quick else 60.0),
        probe_s=0.1,  # the before / after load probes of every case (0.25 s each cost ~12 s of a default run)
        all_backends=a.all,
        time_budget_s=budget or None,
    )
    try:
        runner.backend_names(cfg)
    except ValueError as exc:
        print(f"error: --backends: {exc}", file=sys.stderr)
        return 2

    t0 = cfg.started = time.perf_counter()
    machine = results.machine_info(device)
    names = runner.backend_names(cfg)
    left_out = [n for n in names if runner.opt_in_reason(n, cfg)]
    print(f"longattn bench: {suite} suite, {len(selected)} case(s) on {machine['device_name']} ({device}, "
          f"{torch.get_num_threads()} threads); backends: {', '.join(n for n in names if n not in left_out)}"
          + "".join(f" ({n}: only on request, --backends {n} or --all)" for n in left_out))  # fmt: skip
    if cfg.time_budget_s:
        print(f"time budget: no case starts after {cfg.time_budget_s:.0f} s (--time-budget S; 0: none)")
    busy = runner.other_cpu_cores(0.5) if device.type == "cpu" else None
    machine["other_cpu_cores_start"] = busy
    if busy is not None and busy >= 0.5:
        print(f"warning: other processes keep {busy:.1f} of {machine['cpu_count']} CPU cores busy: timings will be "
              "slower and noisier (multi-threaded kernels suffer most; --threads 1 suffers less, --wait-idle S "
              "waits for quiet moments)")  # fmt: skip
    if device.type == "cpu":
        peakmem.restore_allocator()  # fixed glibc thresholds: timings independent of what ran before
    ceil = ceilings.measure(device, quick=a.quick)
    print(report.ceilings({"ceilings": ceil, "machine": machine}))
    case_results = runner.run_all(selected, cfg, ceil)
    try:
        machine["load_avg_end"] = list(os.getloadavg())
    except OSError:
        pass

    name = a.name or f"{device.type}-{datetime.date.today().isoformat()}"
    out_dir = os.path.abspath(a.out)
    os.makedirs(out_dir, exist_ok=True)
    json_path = os.path.join(out_dir, f"{name}.json")
    doc = {
        "schema": results.SCHEMA,
        "schema_version": results.SCHEMA_VERSION,
        "created_utc": results.now_utc(),
        "command": "python -m bench " + " ".join(argv_list),
        "argv": argv_list,
        "suite": suite,
        "machine": machine,
        "backends": results.backends_info(),
        "settings": {
            "timing": policy.to_json(),
            "timer": "cpu wall clock (time.perf_counter)" if device.type == "cpu" else f"{device.type} events",
            "mem_limit_bytes": mem_limit,
            "peer_max_s": cfg.peer_max_s,
            "backend_max_s": cfg.backend_max_s,
            "peers": cfg.peers,
            "seed": a.seed,
            "wait_idle_s": a.wait_idle,
            "time_budget_s": cfg.time_budget_s,
            "malloc": "glibc mmap threshold fixed at 32 MiB and trim threshold at 64 MiB while timing "
            "(the steady state of its dynamic thresholds, independent of the run's history); "
            "64 KiB mmap threshold only during the RSS call"
            if device.type == "cpu"
            else None,
            "compute_dtype_rule": "reference: fp32 (upcasts); other backends: the input dtype",
        },
        "ceilings": ceil,
        "cases": case_results,
        "goals": [],
        "outputs": {"json": _rel(json_path), "plots": [], "plots_skipped": []},
    }
    doc["goals"] = goals.evaluate(doc)
    if not a.no_plots:
        try:
            written, skipped = plots.make_plots(doc, out_dir, name)
        except Exception as exc:  # a plotting problem never loses the measurements
            written, skipped = [], [f"plotting failed: {type(exc).__name__}: {exc}"]
        doc["outputs"]["plots"], doc["outputs"]["plots_skipped"] = [_rel(p) for p in written], skipped
    else:
        doc["outputs"]["plots_skipped"] = ["--no-plots"]
    errors = results.validate(results._clean(doc))
    if errors:
        print("warning: results do not match the schema:\n  " + "\n  ".join(errors[:20]), file=sys.stderr)
    results.write(doc, json_path)

    print()
    print(report.full(doc))
    print()
    print(f"JSON: {_rel(json_path)}")
    for path in doc["outputs"]["plots"]:
        print(f"plot: {path}")
    for why in doc["outputs"]["plots_skipped"]:
        print(f"plots skipped: {why}")
    print(f"total {time.perf_counter() - t0:.0f} s")
    return 1 if errors else 0


if __name__ == "__main__":
    raise SystemExit(main())
