"""Session fixture that runs the fuzz workers (in parallel subprocesses) and a terminal summary."""

from __future__ import annotations

import json
import os
import time

import pytest

from . import runner

_SESSION = None


@pytest.fixture(scope="session")
def fuzz_session(request):
    """Starts every selected (op, backend) worker at the first use; items then wait for their pair."""
    global _SESSION
    if _SESSION is None:
        pairs = set()
        for item in request.session.items:
            cs = getattr(item, "callspec", None)
            if cs is not None and item.module.__name__.endswith("fuzz.test_fuzz") and "backend" in cs.params:
                pairs.add((cs.params["op"], cs.params["backend"]))
        _SESSION = runner.Session(sorted(pairs))
    return _SESSION


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if _SESSION is None:
        return
    tr = terminalreporter
    results = sorted(_SESSION.done_results(), key=lambda r: (r.op, r.backend))
    tr.section("longattn fuzz")
    spec = os.environ.get("LONGATTN_FUZZ_EXAMPLES", "1x")
    tr.write_line(f"seed {runner.seed()}, LONGATTN_FUZZ_EXAMPLES={spec}, {runner.jobs()} parallel workers, "
                  f"wall {time.time() - _SESSION.t0:.0f} s, logs in {_SESSION.log_dir}")  # fmt: skip
    tr.write_line(f"{'op':24s} {'backend':11s} {'gen':>4s} {'ran':>4s} {'ok':>4s} {'declined':>8s} {'crash':>5s} "
                  f"{'amb':>4s} {'wall s':>6s}  broken rules")  # fmt: skip
    declines = []
    for r in results:
        if r.unavailable:
            tr.write_line(f"{r.op:24s} {r.backend:11s} unavailable: {r.unavailable}")
            continue
        broken = ", ".join(f"{c}({v['examples']})" for c, v in sorted(r.violations.items())) or "-"
        tr.write_line(f"{r.op:24s} {r.backend:11s} {r.n:4d} {r.ran:4d} {r.ok:4d} {r.declined:8d} {len(r.crashes):5d} "
                      f"{r.ambiguous:4d} {r.wall:6.1f}  {broken}")  # fmt: skip
        for reason, k in sorted(r.decline_reasons.items(), key=lambda x: -x[1]):
            declines.append(f"  {r.op} / {r.backend}: {k} x {reason}")
    setup = [r.setup_secs for r in results if r.backend == "ascend_sim"]
    if setup:
        tr.write_line(f"ascend_sim extension build / load: {max(setup):.0f} s (not part of the fuzz budget)")
    if declines:
        tr.write_line("declined calls (BackendError: a skip of that example):")
        for line in declines:
            tr.write_line(line)
    crashes = [(r, c) for r in results for c in r.crashes]
    for r, c in crashes:
        tr.write_line(f"CRASH {r.op} / {r.backend} example {c['i']}: {c['how']}; spec {json.dumps(c['spec'])}")
