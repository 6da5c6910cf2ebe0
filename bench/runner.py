"""Run cases: every registered backend that accepts the case on the device, then the peers.

For each case: build the inputs once (random, on the device), compute the cost model from exact
counts, then for each backend of ``longattn.backends.registry`` (or the ``--backends`` subset):
skip it with the reason when it is unavailable, runs on other devices, lacks one of the case's ops
or declines the call (``BackendError`` on the first call); otherwise time it, measure its peak
memory, and compare its output with the first backend that ran (normally ``reference``). Then each
peer: skipped with a reason when it cannot run here, does not apply, or would not fit the memory or
time limit; otherwise timed and measured the same way and compared with our output. Nothing here
raises for one case: errors are recorded and the run goes on.

Host cases (a family with no longattn ops, e.g. ``cache_plan``: Python bookkeeping that no backend
dispatches) run once, recorded as the implementation ``host``.

Opt-in backends: a backend that dispatch never picks unless forced (no ``preferred_on`` device and not
the fallback, i.e. ``ascend_sim``, the CPU emulator: a correctness vehicle, minutes per large case)
runs only when named in ``--backends`` or with ``--all``; otherwise every case records it as skipped
with that reason.
"""

from __future__ import annotations

import dataclasses
import gc
import os
import time
import traceback
from typing import Dict, List, Optional, Sequence, Tuple

import longattn
import torch
from longattn.backends import cpu_threads, registry
from longattn.ops.op import ops_of_backend

from . import ceilings as ceil_mod
from . import costs, peers
from .cases import Case, Problem
from .timing import CacheFlusher, TimingPolicy, first_call, peak_memory, time_fn

MiB = 1 << 20
HOST = "host"  # the implementation name of host cases (families with ops=())


@dataclasses.dataclass
class RunConfig:
    device: torch.device
    policy: TimingPolicy
    backends: Optional[Sequence[str]] = None  # None: every registered backend
    peers: bool = True
    mem_limit_bytes: Optional[int] = None
    peer_max_s: float = 60.0
    seed: int = 0
    rss: bool = True
    wait_idle_s: float = 0.0  # before each case, wait up to this long for other processes to go idle
    backend_max_s: float = 60.0  # skip a backend whose predicted call time (see _predict) exceeds this
    all_backends: bool = False  # --all: opt-in backends (see opt_in_backends) run without being named
    time_budget_s: Optional[float] = None  # --time-budget: no case starts after this many seconds ...
    started: Optional[float] = None  # ... counted from this time.perf_counter() (default: run_all's start)
    probe_s: float = 0.25  # CPU: seconds over which other processes' load is sampled before / after a case


def compute_dtype(backend: str, case: Case) -> str:
    """The dtype a backend multiplies in, which picks the compute ceiling: the family's own rule when it
    has one (the compressor pools in fp32 everywhere); the reference upcasts every operand to fp32 (its
    contract: fp32 accumulation); other backends are assumed to compute in the input dtype (bf16
    pools -> bf16 tensor-core / AMX rate; FP8 pools are dequantised to bf16 before the matmuls)."""
    if case.family.compute_dtype:
        return case.family.compute_dtype
    if backend == "reference":
        return "fp32"
    dt = str(case.params.get("dtype", "fp32"))
    return "bf16" if dt == "fp8" else dt


def _load():
    try:
        return list(os.getloadavg())
    except OSError:
        return None


def _cpu_busy_s() -> Optional[float]:
    """Seconds of busy CPU time of the whole machine so far (Linux /proc/stat), or None."""
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def other_cpu_cores(interval: float = 0.25) -> Optional[float]:
    """CPU cores kept busy by OTHER processes over ``interval`` seconds (machine busy time minus this
    process's own CPU time), or None where /proc/stat is missing."""
    b0, t0 = _cpu_busy_s(), os.times()
    if b0 is None:
        return None
    time.sleep(interval)
    b1, t1 = _cpu_busy_s(), os.times()
    mine = (t1.user - t0.user) + (t1.system - t0.system)
    return max(0.0, (b1 - b0) - mine) / interval


def wait_idle(max_wait_s: float, threshold: float = 0.25, log=print) -> Tuple[Optional[float], float]:
    """Wait up to ``max_wait_s`` until other processes use less than ``threshold`` cores; returns
    (the last measurement, seconds waited)."""
    start = time.perf_counter()
    busy = other_cpu_cores()
    told = False
    while busy is not None and busy >= threshold and time.perf_counter() - start < max_wait_s:
        if not told:
            log(f"    waiting for other processes to go idle ({busy:.2f} cores busy; up to {max_wait_s:.0f} s)")
            told = True
        time.sleep(1.0)
        busy = other_cpu_cores()
    return busy, time.perf_counter() - start


def _compare(kind: str, ours: torch.Tensor, theirs: torch.Tensor) -> Dict[str, object]:
    try:
        if kind == "topk_agreement":
            a, b = ours.long().reshape(ours.shape[0], -1), theirs.long().reshape(theirs.shape[0], -1)
            k = min(a.shape[1], b.shape[1])
            hits = total = 0
            for t in range(a.shape[0]):
                sa = set(x for x in a[t].tolist() if x >= 0)
                sb = set(x for x in b[t, :k].tolist() if x >= 0)
                hits += len(sa & sb)
                total += len(sa)
            return {"metric": "topk_agreement", "value": hits / total if total else 1.0}
        x, y = ours.float(), theirs.float().reshape(ours.shape)
        return {
            "metric": "max_abs_diff",
            "value": float((x - y).abs().max()) if x.numel() else 0.0,
            "ref_max_abs": float(x.abs().max()) if x.numel() else 0.0,
        }
    except Exception as exc:
        return {"metric": "error", "value": None, "error": f"{type(exc).__name__}: {exc}"}


def _perf(run: Dict[str, object], cost: costs.Cost, ceil: Dict[str, object], dtype_name: str) -> None:
    t = run["time"]["median_s"]
    bw = ceil_mod.bandwidth(ceil)
    pk = ceil_mod.peak_flops(ceil, dtype_name)
    fl = costs.floors(cost, bw, pk)
    run["compute_dtype"] = dtype_name
    run["tflops"] = cost.flops / t / 1e12 if t > 0 else None
    run["gbps"] = cost.bytes / t / 1e9 if t > 0 else None
    run["floor"] = fl
    run["frac_of_ceiling"] = fl["floor_s"] / t if (fl["floor_s"] and t > 0) else None
    run["x_floor"] = t / fl["floor_s"] if fl["floor_s"] else None


def _measure(fn, cfg: RunConfig, flusher, first_s: float, first_mem: Dict[str, object], peer: bool = False):
    """Time ``fn`` (its first call, ``first_s`` long, already happened) and complete its memory record:
    accelerators measure after warm-up; the CPU took the allocator peak on the first call and adds
    the sampled RSS peak unless calls are long (one more call would cost too much). A dense peer whose
    calls are long (over ``long_call_s``: seconds each at 1M tokens on a CPU) gets one timed sample
    after its first call instead of ``long_repeats``: the baseline of a comparison, not the subject."""
    policy = dataclasses.replace(cfg.policy, long_repeats=1) if peer else cfg.policy
    st = time_fn(fn, cfg.device, policy, flusher, prior_call_s=first_s)
    samples = st.pop("samples_s")
    out: Dict[str, object] = {"time": st, "samples_s": samples}
    out.update(first_mem)
    long_call = st["median_s"] > cfg.policy.long_call_s
    if cfg.device.type != "cpu" or "peak_mem_bytes" not in first_mem:
        out.update(peak_memory(fn, cfg.device, rss=cfg.rss and not long_call))
    elif cfg.rss and not long_call:
        out.update(peak_memory(fn, cfg.device, rss=True, alloc=False))
    return out


def _skip(kind: str, impl: str, reason: str, status: str = "skipped") -> Dict[str, object]:
    return {"kind": kind, "impl": impl, "status": status, "reason": reason}


def backend_names(cfg: RunConfig) -> List[str]:
    names = registry.backend_names()
    if cfg.backends:
        unknown = [b for b in cfg.backends if b not in names]
        if unknown:
            raise ValueError(f"unknown backend(s) {unknown}; registered: {', '.join(names)}")
        names = [b for b in names if b in cfg.backends]
    return names


def opt_in_backends() -> List[str]:
    """Registered backends that run only when asked for: the ones dispatch never picks unforced (no
    ``preferred_on`` device, not the fallback): ``ascend_sim``, the Ascend C kernels on the CPU emulator."""
    return [n for n in registry.backend_names() if n != registry.FALLBACK and not registry.get_backend(n).preferred_on]


def opt_in_reason(name: str, cfg: RunConfig) -> Optional[str]:
    """Why an opt-in backend is left out of this run (None: it runs, or it is not opt-in)."""
    if cfg.all_backends or (cfg.backends and name in cfg.backends) or name not in opt_in_backends():
        return None
    return f"runs only when asked for (--backends {name}, or --all): dispatch never picks it unforced"


def _static_decline(name: str, case: Case, cfg: RunConfig) -> Optional[str]:
    """Why a backend cannot, or does not, run this case (before building inputs), or None."""
    b = registry.get_backend(name)
    if b.unavailable is not None:
        return b.unavailable
    if b.device_types is not None and cfg.device.type not in b.device_types:
        return f"runs on {'/'.join(b.device_types)}, not {cfg.device.type}"
    missing = [op for op in case.family.ops if op not in ops_of_backend(name)]
    if missing:
        return f"does not implement {', '.join(missing)}"
    return opt_in_reason(name, cfg)


def _rate_key(name: str, case: Case):
    """Which earlier cases predict this one: same backend, op and fixed parameters (a layer kind)."""
    return (name, case.op) + tuple(sorted((k, str(v)) for k, v in case.family.fixed.items()))


def _predict(rates, name: str, case: Case, cost: costs.Cost, ceil) -> Optional[float]:
    """Seconds a backend should need on this case at best: the smallest ``x_floor`` it showed on
    earlier cases of the same op (and layer kind) in this run times this case's floor (optimistic on
    purpose: a run disturbed by other processes never makes it skip); None when no earlier case goes by."""
    seen = rates.get(_rate_key(name, case))
    if seen is None:
        return None
    fl = costs.floors(cost, ceil_mod.bandwidth(ceil), ceil_mod.peak_flops(ceil, compute_dtype(name, case)))
    return seen * fl["floor_s"] if fl["floor_s"] else None


def run_case(case: Case, cfg: RunConfig, ceil: Dict[str, object], flusher, log=print, use_peers=True, rates=None):
    """Run one case; returns its result record (see bench/README.md, "JSON schema"). ``rates`` maps
    (backend, op) to its smallest ``x_floor`` so far (updated here; used to skip a backend whose
    predicted time exceeds ``cfg.backend_max_s``, e.g. a CPU emulator on a large prefill)."""
    rates = {} if rates is None else rates
    rec: Dict[str, object] = case.to_json()
    rec["runs"] = []
    rec["ratios"] = []
    rec["load_avg_before"] = _load()
    if cfg.device.type == "cpu":
        if cfg.wait_idle_s > 0:
            busy, waited = wait_idle(cfg.wait_idle_s, log=log)
        else:
            busy, waited = other_cpu_cores(cfg.probe_s), 0.0
        rec["other_cpu_cores_before"] = busy
        contended0 = cpu_threads.MONITOR.contended_windows
        rec["idle_wait_s"] = waited
        if busy is not None and busy >= 0.5:
            log(f"    note: other processes keep {busy:.1f} cores busy: this case's timings are disturbed")
    host = not case.family.ops
    names = [HOST] if host else backend_names(cfg)
    need = case.input_bytes()
    if cfg.mem_limit_bytes and need > cfg.mem_limit_bytes:
        reason = f"inputs need ~{need / MiB:.0f} MiB > memory limit {cfg.mem_limit_bytes / MiB:.0f} MiB"
        rec["status"] = "skipped"
        rec["reason"] = reason
        rec["runs"] = [_skip("backend", n, reason) for n in names]
        return rec
    t0 = time.perf_counter()
    try:
        problem: Problem = case.build(cfg.device, cfg.seed)
    except Exception as exc:
        rec["status"] = "error"
        rec["reason"] = f"building inputs failed: {type(exc).__name__}: {exc}"
        log("    " + rec["reason"])
        return rec
    rec["build_s"] = time.perf_counter() - t0
    rec["input_bytes"] = problem.input_bytes
    rec["stats"] = {k: (float(v) if isinstance(v, float) else int(v)) for k, v in problem.stats.items()}
    cost = case.cost(problem.stats)
    rec["cost"] = cost.to_json()
    rec["status"] = "ok"

    ours: Optional[Tuple[str, torch.Tensor, Dict[str, object]]] = None
    for name in names:
        reason = None if host else _static_decline(name, case, cfg)
        if reason:
            rec["runs"].append(_skip("backend", name, reason))
            continue
        pred = None if host else _predict(rates, name, case, cost, ceil)
        if pred is not None and pred > cfg.backend_max_s:
            rec["runs"].append(
                _skip(
                    "backend",
                    name,
                    f"predicted ~{pred:.0f} s per call (its x_floor on earlier "
                    f"{case.op} cases) > --backend-max-s {cfg.backend_max_s:.0f} s",
                )
            )
            log(f"    {name}: skipped, predicted ~{pred:.0f} s per call")
            continue
        fn = problem.run(None if host else name)
        try:
            result, first_s, first_mem = first_call(fn, cfg.device)  # dispatch decides (BackendError = declined)
        except longattn.BackendError as exc:
            rec["runs"].append(_skip("backend", name, " ".join(str(exc).split())))
            continue
        except Exception as exc:
            rec["runs"].append(_skip("backend", name, f"{type(exc).__name__}: {exc}", "error"))
            log(f"    {name}: ERROR {type(exc).__name__}: {exc}")
            continue
        out = problem.output(result).detach().clone()
        del result
        try:
            run = {"kind": "backend", "impl": name, "status": "ok", "reason": None}
            run.update(_measure(fn, cfg, flusher, first_s, first_mem))
        except Exception as exc:
            rec["runs"].append(_skip("backend", name, f"{type(exc).__name__}: {exc}", "error"))
            log(f"    {name}: ERROR {type(exc).__name__}: {exc}\n{traceback.format_exc()}")
            continue
        _perf(run, cost, ceil, compute_dtype(name, case))
        if run.get("x_floor"):
            key = _rate_key(name, case)
            rates[key] = min(rates.get(key, float("inf")), run["x_floor"])
        if ours is None:
            ours = (name, out, run)
        else:
            run["check"] = dict(_compare(problem.compare, ours[1], out), vs=ours[0])
        rec["runs"].append(run)
        log("    " + _line(run))

    if use_peers and cfg.peers and case.family.peers:
        _run_peers(case, cfg, ceil, flusher, problem, ours, rec, log)
    rec["wall_s"] = time.perf_counter() - t0
    rec["load_avg_after"] = _load()
    if cfg.device.type == "cpu":
        rec["other_cpu_cores_after"] = other_cpu_cores(cfg.probe_s)
        rec["reference_contended_windows"] = cpu_threads.MONITOR.contended_windows - contended0
    del problem
    gc.collect()
    return rec


def _run_peers(case, cfg, ceil, flusher, problem, ours, rec, log):
    view = None
    bw = ceil_mod.bandwidth(ceil)
    lowp = ceil_mod.peak_flops(ceil, peers.compute_dtype(case, "dense_einsum"))
    fp32 = ceil_mod.peak_flops(ceil, "fp32")
    for pname in case.family.peers:
        peer = peers.PEERS[pname]
        reason = peer.unavailable(cfg.device)
        if reason:
            rec["runs"].append(_skip("peer", pname, reason))
            continue
        if peer.dense:
            mem, secs = peers.estimate(case, pname, bw, lowp, fp32)
            if cfg.mem_limit_bytes and mem > cfg.mem_limit_bytes:
                rec["runs"].append(
                    _skip(
                        "peer",
                        pname,
                        f"would need ~{mem / 2**30:.1f} GiB (dense [B, Tq, H, keys] "
                        f"scores + cache copy) > memory limit {cfg.mem_limit_bytes / 2**30:.1f} GiB",
                    )
                )
                continue
            if secs > cfg.peer_max_s:
                rec["runs"].append(
                    _skip("peer", pname, f"estimated ~{secs:.0f} s per call > --peer-max-s {cfg.peer_max_s:.0f} s")
                )
                continue
        try:
            if view is None:
                view = problem.dense()
            fn = peer.setup(case, view)
            if fn is None:
                raise peers._NotApplicable("no adapter")
            result, first_s, first_mem = first_call(fn, cfg.device)
        except peers._NotApplicable as exc:
            rec["runs"].append(_skip("peer", pname, str(exc)))
            continue
        except Exception as exc:
            rec["runs"].append(_skip("peer", pname, f"{type(exc).__name__}: {exc}", "error"))
            log(f"    {pname}: ERROR {type(exc).__name__}: {exc}")
            continue
        run = {"kind": "peer", "impl": pname, "status": "ok", "reason": None}
        if getattr(fn, "compile_s", None) is not None:  # compiled in the untimed setup (flex_attention)
            run["setup_compile_s"] = fn.compile_s
        try:
            run.update(_measure(fn, cfg, flusher, first_s, first_mem, peer=True))
        except Exception as exc:
            rec["runs"].append(_skip("peer", pname, f"{type(exc).__name__}: {exc}", "error"))
            continue
        _perf(run, case.cost(problem.stats), ceil, peers.compute_dtype(case, pname))
        run["note"] = "FLOP/s and GB/s use the SPARSE cost model (useful work), not the dense work done"
        if ours is not None:
            run["check"] = dict(_compare(problem.compare, ours[1], result), vs=ours[0])
        del result
        rec["runs"].append(run)
        log("    " + _line(run))
        for mine in rec["runs"]:
            if mine["kind"] == "backend" and mine["status"] == "ok":
                rec["ratios"].append(_ratio(mine, run))
    del view


def _ratio(mine, peer) -> Dict[str, object]:
    t_m, t_p = mine["time"]["median_s"], peer["time"]["median_s"]
    m_m, m_p = mine.get("peak_mem_bytes"), peer.get("peak_mem_bytes")
    return {
        "backend": mine["impl"],
        "peer": peer["impl"],
        "speedup": t_p / t_m if t_m > 0 else None,
        "mem_ratio": (m_m / m_p) if (m_m is not None and m_p) else None,
    }


def _line(run) -> str:
    t = run["time"]
    s = f"{run['impl']:>16}: {t['median_s'] * 1e3:10.3f} ms [{t['p20_s'] * 1e3:.3f}-{t['p80_s'] * 1e3:.3f}] n={t['n']}"
    if run.get("frac_of_ceiling") is not None:
        s += f"  {run['frac_of_ceiling'] * 100:5.1f}% of {run['floor']['bound']} ceiling"
    if run.get("peak_mem_bytes") is not None:
        s += f"  peak {run['peak_mem_bytes'] / MiB:.1f} MiB"
    return s


def _over_budget(case: Case, cfg: RunConfig) -> Dict[str, object]:
    """The record of a case not started because the run's time budget was spent."""
    rec: Dict[str, object] = case.to_json()
    reason = f"not started: the run's time budget of {cfg.time_budget_s:.0f} s was spent (--time-budget)"
    names = [HOST] if not case.family.ops else backend_names(cfg)
    rec.update(status="skipped", reason=reason, runs=[_skip("backend", n, reason) for n in names], ratios=[])
    return rec


def run_all(cases: Sequence[Tuple[Case, bool]], cfg: RunConfig, ceil, log=print) -> List[Dict[str, object]]:
    """Run the cases in order. With ``cfg.time_budget_s``, a case that would start after that many
    seconds (from ``cfg.started``) is recorded as skipped instead: a busy machine, on which every case
    takes several times longer, still ends the run in bounded time, with the first cases measured."""
    flusher = CacheFlusher(cfg.device, cfg.policy.cold_cache)
    rates: Dict[Tuple[str, str], float] = {}
    out = []
    n = len(cases)
    t_start = time.perf_counter()
    started = cfg.started if cfg.started is not None else t_start
    spent = False
    for i, (case, use_peers) in enumerate(cases, 1):
        if cfg.time_budget_s and (spent or time.perf_counter() - started >= cfg.time_budget_s):
            if not spent:
                log(f"time budget of {cfg.time_budget_s:.0f} s spent: the remaining {n - i + 1} case(s) are recorded "
                    "as skipped (--time-budget 0 runs them all)")  # fmt: skip
                spent = True
            out.append(_over_budget(case, cfg))
            continue
        log(f"[{i}/{n}] {case.name}  (elapsed {time.perf_counter() - t_start:.0f} s)")
        out.append(run_case(case, cfg, ceil, flusher, log, use_peers, rates))
    del flusher
    return out
