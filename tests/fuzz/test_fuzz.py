"""Property / fuzz tests of every public op on every CPU backend against tests/oracle.py.

One worker process per (op, backend) runs that pair's hypothesis examples (``tests/fuzz/worker.py``);
the workers run in parallel, started by the ``fuzz_session`` fixture. Items:

- ``test_runs_clean[op-backend]``: the worker never died (signal, emulator FATAL, timeout) and the
  harness itself had no error; a death names the example that caused it and the child's stderr tail.
- ``test_rule[op-backend-rule]``: the rule (a category of the op module's check: a non-finite rule, a
  finite bound, an API contract, ...) was exercised and never broken. Known failures are
  ``xfail(strict=True)`` (``known_bugs.py``).

Budget: ``LONGATTN_FUZZ_EXAMPLES`` (see runner.py); ``.ci/fuzz.sh`` runs 10x with a fresh seed.
"""

from __future__ import annotations

import json

import pytest
import torch
from longattn.backends import registry

from . import runner
from .known_bugs import KNOWN_BUGS
from .ops import OPS, pairs

PAIRS = pairs()


def _rule_params():
    out = []
    for op, be in PAIRS:
        for rule in OPS[op].applicable(be):
            key = (op, be, rule)
            marks = [pytest.mark.xfail(strict=True, reason=KNOWN_BUGS[key])] if key in KNOWN_BUGS else []
            out.append(pytest.param(op, be, rule, marks=marks, id=f"{op}-{be}-{rule}"))
    return out


def _skip_unavailable(backend, result=None):
    why = registry.get_backend(backend).unavailable or (result.unavailable if result is not None else None)
    if why:
        pytest.skip(f"{backend} unavailable: {why}")


@pytest.mark.parametrize("op,backend", PAIRS, ids=[f"{o}-{b}" for o, b in PAIRS])
def test_runs_clean(op, backend, fuzz_session):
    _skip_unavailable(backend)
    r = fuzz_session.result(op, backend)
    _skip_unavailable(backend, r)
    msgs = []
    for c in r.crashes:
        where = f"example {c['i']}" if c["i"] is not None else "outside any example"
        msgs.append(
            f"worker for {op} on {backend} died ({c['how']}) in {where}\n  inputs: {c['inputs']}\n"
            f"  spec: {json.dumps(c['spec'])}\n  replay: {runner.repro(op, backend, r.n, r.seed, c['i'])}\n"
            f"  stderr tail:\n{c['stderr'][-2500:]}"
        )
    for e in r.checker_errors[:3]:
        msgs.append(
            f"harness error (a bug of tests/fuzz) in example {e['i']}: {e['error']}\n  spec: {json.dumps(e['spec'])}"
        )
    print(f"{op} on {backend}: {r.ran} examples ran ({r.n} generated + targeted; seed {r.seed}), {r.declined} declined "
          f"{dict(r.decline_reasons)}, {r.ambiguous} ambiguous cells skipped, {r.wall:.1f} s")  # fmt: skip
    assert not msgs, "\n\n".join(msgs)


@pytest.mark.parametrize("op,backend,rule", _rule_params())
def test_rule(op, backend, rule, fuzz_session):
    _skip_unavailable(backend)
    r = fuzz_session.result(op, backend)
    _skip_unavailable(backend, r)
    if rule in r.violations:
        pytest.fail(r.describe_violation(rule), pytrace=False)
    if r.exercised.get(rule, 0) == 0:
        died = f" (the worker died {len(r.crashes)} time(s): see test_runs_clean)" if r.crashes else ""
        pytest.fail(f"rule '{rule}' of {op} was never exercised on {backend} in {r.ran} examples{died}; "
                    f"the targeted examples of tests/fuzz/op_*.py must cover it", pytrace=False)  # fmt: skip


def test_harness_reports_a_dead_worker_and_continues(tmp_path):
    """The subprocess design itself: a worker that aborts in example 4 (as the emulator's strict checks
    do) is reported with that example, its spec and stderr, and the examples after it still run."""
    r = runner.run_pair("merge_attention_states", "reference", tmp_path, n=6, extra_env={"LONGATTN_FUZZ_CRASH_AT": "4"})
    assert [c["i"] for c in r.crashes] == [4], r.crashes
    assert "SIGABRT" in r.crashes[0]["how"] and "[longattn-emu] FATAL" in r.crashes[0]["stderr"]
    assert r.crashes[0]["spec"] is not None and r.finished
    n_targeted = len(OPS["merge_attention_states"].targeted())
    assert r.ran == n_targeted + 6 and r.ok == n_targeted + 5, (r.ran, r.ok)


def test_exact_rule_messages_name_what_differs():
    """The merge's exact rule (one side -inf) is this comparison; it says whether the out or the lse
    differs, and where: an out mismatch under an equal lse (0.0 against -0.0 compares equal) once read as
    a wrong lse."""
    from .op_combine import _first_difference

    want = torch.tensor([1.0, float("nan"), 0.0, 3.0], dtype=torch.float64)
    out = torch.tensor([1.0, float("nan"), -0.0, 2.5], dtype=torch.float64)
    msg = _first_difference(out, want, -0.0, 0.0)
    assert "lse" not in msg and "at 1 of 4 elements, first [3]: 2.5, want 3.0" in msg, msg
    msg = _first_difference(want, want, 1.0, 2.0)
    assert msg == "lse 1.0, want 2.0", msg
    assert _first_difference(want, want.clone(), 2.0, 2.0) == ""  # NaN equals NaN: no difference
    msg = _first_difference(torch.tensor([float("nan")]), torch.tensor([0.0]), 0.0, 0.0)
    assert msg.startswith("out differs at 1 of 1 elements, first [0]: nan, want 0.0"), msg
