"""Run N hypothesis examples of one op on one backend in this process.

    python -m tests.fuzz.worker --op sparse_attention --backend triton --examples 10 --seed 1234 \
        --log fuzz.jsonl [--start K] [--only K] [--no-targeted]

Every example is appended to the log (JSON lines, flushed and fsync'ed) *before* it runs:
``{"event": "start", "i": K, "spec": ..., "inputs": ...}``; after it: ``{"event": "end", "i": K,
"status": "ok" | "declined" | "exception" | "checker_error", ...}``; at the very end
``{"event": "summary", ...}``. If the process dies (a signal, the emulator's ``[longattn-emu] FATAL``
abort, a timeout), the last "start" without an "end" is the example that killed it; the parent
(``tests/fuzz/runner.py``) reports it and restarts the worker with ``--start K+1``.

Examples are numbered in the order hypothesis runs them: the targeted (explicit) examples first, then
the generated ones. Generation is seeded (``@hypothesis.seed(S)``, no database), so the same command
line replays the same examples; ``--only K`` reruns example K alone (same --examples and --seed).
Shrinking is off: one example of an interpreted kernel can take a second, and the log already holds a
small, readable spec.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
import warnings

import torch

if not torch.cuda.is_available():  # before anything imports triton (as tests/conftest.py)
    os.environ.setdefault("TRITON_INTERPRET", "1")

_real_empty, _real_empty_like = torch.empty, torch.empty_like


def _poison(t):
    if t.is_floating_point():
        t.fill_(float("nan"))
    elif t.dtype == torch.bool:
        t.fill_(True)
    elif t.dtype == torch.uint8:
        t.fill_(0xA5)
    elif not t.is_complex():
        t.fill_(torch.iinfo(t.dtype).min)
    return t


def poison_empty():
    """As tests/conftest.py: every Python-level torch.empty / empty_like is NaN / INT_MIN filled, so an
    output element an op forgets to write shows up."""
    torch.empty = lambda *a, **k: _poison(_real_empty(*a, **k))
    torch.empty_like = lambda *a, **k: _poison(_real_empty_like(*a, **k))


class Log:
    def __init__(self, path):
        self.f = open(path, "a", buffering=1)

    def write(self, **rec):
        self.f.write(json.dumps(rec, default=str) + "\n")
        self.f.flush()
        os.fsync(self.f.fileno())


# Backend knobs varied from example to example (by index, so a replay gets the same): the emulator's
# AI-core count (work split over cores), the Triton tile overrides (tile edges at other places).
KNOBS = {
    "ascend_sim": [{"LONGATTN_ASCEND_SIM_CORES": v} for v in ("4", "1", "3", "2", "7")],
    "triton": [
        {},
        {
            "LONGATTN_TRITON_SPARSE_CFG": "16,32,4,1",
            "LONGATTN_TRITON_INDEXER_CFG": "16,4,1",
            "LONGATTN_TRITON_COMPRESS_CFG": "1,4",
        },
        {
            "LONGATTN_TRITON_SPARSE_CFG": "32,16,4,1",
            "LONGATTN_TRITON_INDEXER_CFG": "64,4,1",
            "LONGATTN_TRITON_COMPRESS_CFG": "2,4",
        },
    ],
}


def set_knobs(backend: str, i: int) -> dict:
    variants = KNOBS.get(backend)
    if not variants:
        return {}
    for v in variants:
        for k in v:
            os.environ.pop(k, None)
    knobs = variants[i % len(variants)]
    os.environ.update(knobs)
    return knobs


def decline_reason(msg: str, backend: str) -> str:
    for line in str(msg).splitlines():
        if line.strip().startswith(f"- {backend}:"):
            return line.strip()[len(f"- {backend}:") :].strip()
    return str(msg).splitlines()[0] if msg else "?"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--op", required=True)
    p.add_argument("--backend", required=True)
    p.add_argument("--examples", type=int, required=True, help="generated examples (targeted ones come on top)")
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--log", required=True)
    p.add_argument("--start", type=int, default=0, help="skip (generate but do not run) examples before this index")
    p.add_argument("--only", type=int, default=None, help="run only this example index")
    p.add_argument("--no-targeted", action="store_true")
    args = p.parse_args(argv)

    torch.set_num_threads(int(os.environ.get("LONGATTN_FUZZ_THREADS", "1")))
    warnings.simplefilter("ignore")  # numpy (the interpreter) warns on inf - inf, 0 * inf: the point here
    log = Log(args.log)
    print(f"[fuzz worker] op={args.op} backend={args.backend} seed={args.seed} examples={args.examples} "
          f"start={args.start} only={args.only} pid={os.getpid()}", flush=True)  # fmt: skip

    import longattn
    from hypothesis import HealthCheck, Phase, example, given, settings
    from hypothesis import seed as hseed

    from .common import Report, first_line
    from .ops import OPS

    op = OPS[args.op]
    be = longattn.backends.registry.get_backend(args.backend)
    if be.unavailable is not None:
        log.write(event="summary", unavailable=be.unavailable, ran=0)
        print(f"[fuzz worker] backend unavailable: {be.unavailable}", flush=True)
        return 0
    if args.backend == "ascend_sim":  # build / load the emulator before the first example
        t0 = time.time()
        from longattn.backends import ascend_sim

        ascend_sim.extension()
        log.write(event="setup", secs=round(time.time() - t0, 2))

    poison_empty()
    crash_at = os.environ.get("LONGATTN_FUZZ_CRASH_AT")  # harness self-test: die like the emulator does
    counter = [0]
    stats = dict(ran=0, ok=0, declined=0)

    def one(spec):
        i = counter[0]
        counter[0] += 1
        if i < args.start or (args.only is not None and i != args.only):
            return
        t0 = time.time()
        knobs = set_knobs(args.backend, i)
        try:
            kwargs, ctx = op.build(spec)
            inputs = op.describe(kwargs, ctx) if op.describe else op_describe_default(kwargs)
        except Exception:  # the harness's own bug: report it, never hide it
            log.write(event="start", i=i, spec=spec, inputs="(build failed)")
            log.write(event="end", i=i, status="checker_error", error=first_line(traceback.format_exc()[-1500:], 1500),
                      secs=round(time.time() - t0, 3))  # fmt: skip
            return
        if knobs:
            inputs += " | env " + " ".join(f"{k}={v}" for k, v in knobs.items())
        log.write(event="start", i=i, spec=spec, inputs=inputs)
        stats["ran"] += 1
        if crash_at is not None and i == int(crash_at):
            print(
                "[longattn-emu] FATAL: injected by LONGATTN_FUZZ_CRASH_AT (harness self-test)",
                file=sys.stderr,
                flush=True,
            )
            os.abort()
        try:
            result = op.run(kwargs, args.backend)
        except longattn.BackendError as exc:
            stats["declined"] += 1
            log.write(event="end", i=i, status="declined", reason=first_line(decline_reason(exc, args.backend), 300),
                      secs=round(time.time() - t0, 3))  # fmt: skip
            return
        except Exception as exc:
            log.write(event="end", i=i, status="exception",
                      error=first_line(f"{type(exc).__name__}: {exc} | " + traceback.format_exc()[-1200:], 1600),
                      secs=round(time.time() - t0, 3))  # fmt: skip
            return
        t_run = time.time() - t0
        report = Report()
        try:
            op.check(spec, kwargs, ctx, result, report)
        except Exception:
            log.write(event="end", i=i, status="checker_error", error=first_line(traceback.format_exc()[-1500:], 1500),
                      report=report.as_dict(), secs=round(time.time() - t0, 3))  # fmt: skip
            return
        stats["ok"] += 1
        log.write(event="end", i=i, status="ok", report=report.as_dict(), run_secs=round(t_run, 3),
                  secs=round(time.time() - t0, 3))  # fmt: skip

    phases = [Phase.explicit] + ([Phase.generate] if args.examples > 0 else [])
    test = given(spec=op.strategy(backend=args.backend))(one)
    if not args.no_targeted:
        for ex in reversed(op.targeted()):
            test = example(spec=ex)(test)
    test = settings(
        max_examples=max(args.examples, 1), deadline=None, database=None, phases=phases,
        suppress_health_check=list(HealthCheck), print_blob=False, report_multiple_bugs=False,
    )(test)  # fmt: skip
    test = hseed(args.seed)(test)
    t0 = time.time()
    test()
    log.write(event="summary", ran=stats["ran"], ok=stats["ok"], declined=stats["declined"], indices=counter[0],
              secs=round(time.time() - t0, 2))  # fmt: skip
    print(f"[fuzz worker] done: {stats} in {time.time() - t0:.1f}s", flush=True)
    return 0


def op_describe_default(kwargs):
    from .op_sparse import describe_inputs

    return describe_inputs(kwargs)


if __name__ == "__main__":
    sys.exit(main())
