"""Parent side of the fuzz suite: run workers in subprocesses, survive their deaths, aggregate.

``run_pair`` runs ``python -m tests.fuzz.worker`` for one (op, backend). When the child dies (any
signal, a non-zero exit, the emulator's FATAL abort, a timeout), the example it was running is the
last "start" record of its log without an "end": that example is recorded as a crash (with the
child's stderr tail) and the worker is restarted after it (``--start i+1``), up to ``MAX_CRASHES``
times, so one abort cannot hide the other examples.

Environment:
    LONGATTN_FUZZ_EXAMPLES  generated examples per (op, backend): "N" (every backend) or "Kx" (K times the
                            per-backend defaults of ops.py); default "1x"
    LONGATTN_FUZZ_SEED      the hypothesis seed (default 20261129; .ci/fuzz.sh draws a random one)
    LONGATTN_FUZZ_JOBS      workers run in parallel (default: the number of CPUs)
    LONGATTN_FUZZ_TIMEOUT   seconds per worker run (default 300; the emulator build is not counted)
    LONGATTN_FUZZ_LOGDIR    where the JSON-lines logs go (default: a new temporary directory)
"""

from __future__ import annotations

import collections
import concurrent.futures as cf
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from .ops import OPS

REPO = Path(__file__).resolve().parents[2]
DEFAULT_SEED = 20261129
MAX_CRASHES = 3


def seed() -> int:
    return int(os.environ.get("LONGATTN_FUZZ_SEED", DEFAULT_SEED))


def examples_for(op: str, backend: str) -> int:
    spec = os.environ.get("LONGATTN_FUZZ_EXAMPLES", "1x").strip()
    base = OPS[op].examples.get(backend, 10)
    if spec.endswith("x"):
        return max(0, int(round(float(spec[:-1]) * base)))
    return int(spec)


def timeout() -> float:
    return float(os.environ.get("LONGATTN_FUZZ_TIMEOUT", 300))


def jobs() -> int:
    return max(1, int(os.environ.get("LONGATTN_FUZZ_JOBS", os.cpu_count() or 1)))


def child_env(extra: Optional[dict] = None) -> dict:
    env = dict(os.environ)
    env.update(extra or {})
    env.setdefault("OMP_NUM_THREADS", "1")
    env.setdefault("MKL_NUM_THREADS", "1")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env.setdefault("PYTHONFAULTHANDLER", "1")
    return env


def worker_cmd(op, backend, n, s, log, start=0, only=None) -> List[str]:
    cmd = [sys.executable, "-m", "tests.fuzz.worker", "--op", op, "--backend", backend, "--examples", str(n),
           "--seed", str(s), "--log", str(log)]  # fmt: skip
    if start:
        cmd += ["--start", str(start)]
    if only is not None:
        cmd += ["--only", str(only)]
    return cmd


def repro(op, backend, n, s, i=None) -> str:
    extra = f" --only {i}" if i is not None else ""
    return (f"python -m tests.fuzz.worker --op {op} --backend {backend} --examples {n} --seed {s} "
            f"--log fuzz-repro.jsonl{extra}")  # fmt: skip


def _describe_rc(rc: Optional[int]) -> str:
    if rc is None:
        return "timed out (killed)"
    if rc < 0:
        try:
            return f"killed by {signal.Signals(-rc).name}"
        except ValueError:
            return f"killed by signal {-rc}"
    return f"exit status {rc}"


def _read_log(path: Path) -> List[dict]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            pass  # a line cut by the death of the child
    return out


class PairResult:
    """Aggregate of every worker run of one (op, backend)."""

    def __init__(self, op, backend, n, s, log):
        self.op, self.backend, self.n, self.seed, self.log = op, backend, n, s, log
        self.unavailable: Optional[str] = None
        self.ran = self.ok = self.declined = 0
        self.decline_reasons: Dict[str, int] = collections.Counter()
        self.exercised: Dict[str, int] = collections.Counter()
        self.violations: Dict[str, dict] = {}
        self.crashes: List[dict] = []
        self.checker_errors: List[dict] = []
        self.ambiguous = 0
        self.wall = 0.0
        self.setup_secs = 0.0
        self.finished = False
        self.gave_up: Optional[str] = None

    def add_events(self, events):
        specs = {}
        for e in events:
            ev = e.get("event")
            if ev == "start":
                specs[e["i"]] = e
            elif ev == "setup":
                self.setup_secs += e.get("secs", 0.0)
            elif ev == "summary":
                if e.get("unavailable"):
                    self.unavailable = e["unavailable"]
            elif ev == "end":
                i = e["i"]
                st = e["status"]
                start = specs.get(i, {})
                if st != "checker_error" or start.get("inputs") != "(build failed)":
                    self.ran += 1
                if st == "declined":
                    self.declined += 1
                    self.decline_reasons[e.get("reason", "?")] += 1
                    continue
                if st == "checker_error":
                    self.checker_errors.append(dict(i=i, error=e.get("error"), spec=start.get("spec")))
                    continue
                self.exercised["no_exception"] += 1
                if st == "exception":
                    self._violation("no_exception", i, e.get("error", ""), start)
                    continue
                self.ok += 1
                rep = e["report"]
                self.ambiguous += rep.get("ambiguous", 0)
                for cat, k in rep["exercised"].items():
                    self.exercised[cat] += k
                for cat, msg in rep["violations"].items():
                    self._violation(cat, i, msg, start, rep.get("violation_counts", {}).get(cat, 1))

    def _violation(self, cat, i, msg, start, count=1):
        v = self.violations.setdefault(cat, dict(count=0, examples=0, first=None))
        v["count"] += count
        v["examples"] += 1
        if v["first"] is None:
            v["first"] = dict(i=i, msg=msg, spec=start.get("spec"), inputs=start.get("inputs"))

    def describe_violation(self, cat) -> str:
        v = self.violations[cat]
        f = v["first"]
        return (
            f"rule '{cat}' of {self.op} on {self.backend}: broken in {v['examples']} example(s) ({v['count']} "
            f"cells); first: example {f['i']}: {f['msg']}\n  inputs: {f['inputs']}\n  spec: {json.dumps(f['spec'])}\n"
            f"  replay: {repro(self.op, self.backend, self.n, self.seed, f['i'])}"
        )


_build_lock = threading.Lock()
_build_state: Dict[str, object] = {}


def prebuild_ascend_sim(log_dir: Path) -> Tuple[bool, str, float]:
    """Build / load the emulator extension once, in a subprocess (a build can take minutes)."""
    with _build_lock:
        if "result" in _build_state:
            return _build_state["result"]
        t0 = time.time()
        code = "from longattn.backends import ascend_sim as a\nif a.BACKEND.unavailable is None: a.extension()\n"
        try:
            p = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=child_env(), capture_output=True,
                               text=True, timeout=3600)  # fmt: skip
            ok, msg = p.returncode == 0, (p.stderr or p.stdout)[-3000:]
        except subprocess.TimeoutExpired:
            ok, msg = False, "the ascend_sim build timed out after 3600 s"
        _build_state["result"] = (ok, msg, time.time() - t0)
        return _build_state["result"]


def run_pair(
    op: str, backend: str, log_dir: Path, n: Optional[int] = None, extra_env: Optional[dict] = None
) -> PairResult:
    n = examples_for(op, backend) if n is None else n
    s = seed()
    log = log_dir / f"{op}-{backend}.jsonl"
    if log.exists():
        log.unlink()
    res = PairResult(op, backend, n, s, log)
    if backend == "ascend_sim":
        ok, msg, secs = prebuild_ascend_sim(log_dir)
        res.setup_secs += secs
        if not ok:
            res.crashes.append(
                dict(i=None, how="the emulator extension failed to build", stderr=msg, spec=None, inputs=None)
            )
            return res
    t0 = time.time()
    start = 0
    seen = 0
    while True:
        cmd = worker_cmd(op, backend, n, s, log, start)
        err_path = log_dir / f"{op}-{backend}.stderr"
        with open(err_path, "w") as err:
            try:
                p = subprocess.run(cmd, cwd=REPO, env=child_env(extra_env), stdout=err, stderr=subprocess.STDOUT,
                                   timeout=timeout())  # fmt: skip
                rc = p.returncode
            except subprocess.TimeoutExpired:
                rc = None
        events = _read_log(log)
        new = events[seen:]
        seen = len(events)
        res.add_events(new)
        summary = any(e.get("event") == "summary" for e in new)
        if rc == 0 and summary:
            res.finished = True
            break
        started = {e["i"]: e for e in new if e.get("event") == "start"}
        ended = {e["i"] for e in new if e.get("event") == "end"}
        open_ = [i for i in started if i not in ended]
        tail = err_path.read_text(errors="replace")[-4000:] if err_path.exists() else ""
        if not open_:
            res.crashes.append(dict(i=None, how=_describe_rc(rc), stderr=tail, spec=None, inputs=None))
            res.gave_up = "the worker died outside an example"
            break
        i = max(open_)
        res.crashes.append(dict(i=i, how=_describe_rc(rc), stderr=tail, spec=started[i].get("spec"),
                                inputs=started[i].get("inputs")))  # fmt: skip
        res.ran += 1
        if len(res.crashes) >= MAX_CRASHES:
            res.gave_up = f"{MAX_CRASHES} crashes: stopped"
            break
        start = i + 1
    res.wall = time.time() - t0
    return res


class Session:
    """Runs the selected (op, backend) pairs in a thread pool (each thread waits on its subprocess)."""

    def __init__(self, pairs, log_dir: Optional[Path] = None):
        self.log_dir = Path(
            log_dir or os.environ.get("LONGATTN_FUZZ_LOGDIR") or tempfile.mkdtemp(prefix="longattn-fuzz-")
        )
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.t0 = time.time()
        # slow pairs first, so that the pool's tail is short
        weight = {"triton": 0, "ascend_sim": 1, "reference": 2}
        order = sorted(pairs, key=lambda p: (weight.get(p[1], 3), p[0]))
        self.pool = cf.ThreadPoolExecutor(max_workers=jobs())
        self.futures = {p: self.pool.submit(run_pair, p[0], p[1], self.log_dir) for p in order}

    def result(self, op, backend) -> PairResult:
        return self.futures[(op, backend)].result()

    def done_results(self):
        return [f.result() for f in self.futures.values() if f.done() and not f.exception()]
