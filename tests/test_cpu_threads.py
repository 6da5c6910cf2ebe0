"""The reference backend's thread policy on a shared CPU (longattn/backends/cpu_threads.py): the
contention monitor's decisions on an injected clock and run-queue counter, the override's set / restore
(also nested and from concurrent threads), the environment variable, and that op dispatch applies it."""

from __future__ import annotations

import sys
import threading

import pytest
import torch
from longattn.backends import cpu_threads as ct


class FakeProcess:
    """A clock and a run-queue counter that advance only when a test says so."""

    def __init__(self):
        self.now, self.wait = 100.0, 0

    def clock(self):
        return self.now

    def wait_ns(self):
        return self.wait

    def call(self, monitor, seconds, wait_ratio):
        """One measured op call lasting ``seconds`` during which our threads waited ``wait_ratio`` of it."""
        with monitor.measured():
            self.now += seconds
            self.wait += int(seconds * wait_ratio * 1e9)


W = 1.25 * ct.WINDOW_S  # one call that fills a measurement window


def test_monitor_falls_back_to_one_thread_while_contended_and_backs_off():
    p = FakeProcess()
    m = ct.ContentionMonitor(p.clock, p.wait_ns)
    assert not m.solo() and m.due()
    p.call(m, W / 2, 3.0)  # half a window: no decision yet
    assert not m.solo() and m.history == []
    p.call(m, W / 2, 3.0)  # one contended window: confirmed by the next one, measured at once
    assert m.history == [pytest.approx(3.0)] and not m.solo() and m.due()
    p.call(m, W, 3.0)
    assert m.solo() and m.contended_windows == 1
    assert m.solo_until == pytest.approx(p.now + ct.BACKOFF_S)
    p.now = m.solo_until  # back-off over: the caller's count is tried again
    assert not m.solo() and m.due()
    p.call(m, W, 0.9)  # still contended: twice the back-off
    assert m.solo() and m.solo_until == pytest.approx(p.now + 2 * ct.BACKOFF_S)
    for _ in range(10):  # doubling stops at the maximum
        p.now = m.solo_until
        p.call(m, W, 0.9)
    assert m.solo_until == pytest.approx(p.now + ct.BACKOFF_MAX_S)
    p.now = m.solo_until
    p.call(m, W, 0.0)  # contention over: full threads, back-off reset
    assert not m.solo() and m.backoff == ct.BACKOFF_S
    assert not m.due()  # the next measurement starts GAP_S later
    p.now += ct.GAP_S
    assert m.due()


def test_monitor_ignores_one_contended_window_on_an_idle_machine():
    """A single window over the threshold (a scheduling blip) between quiet ones never sends calls to
    one thread; two in a row do."""
    p = FakeProcess()
    m = ct.ContentionMonitor(p.clock, p.wait_ns)
    for _ in range(5):
        p.call(m, W, 0.3)  # blip
        assert not m.solo() and m.due()
        p.call(m, W, 0.0)  # quiet again
        assert not m.solo() and not m.due()
        p.now += ct.GAP_S
    assert m.contended_windows == 0 and m.backoff == ct.BACKOFF_S
    p.call(m, W, 0.3)
    p.call(m, W, 0.3)
    assert m.solo() and m.contended_windows == 1


def test_monitor_threshold_and_unavailable_counter():
    p = FakeProcess()
    m = ct.ContentionMonitor(p.clock, p.wait_ns)
    p.call(m, W, ct.CONTENDED * 0.9)  # below the threshold: not contended
    p.call(m, W, ct.CONTENDED * 0.9)
    assert not m.solo() and not m.suspect
    m = ct.ContentionMonitor(p.clock, lambda: None)  # no schedstat: never decides
    with m.measured():
        p.now += 10 * ct.WINDOW_S
    assert not m.solo() and m.history == []


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="schedstat is Linux's")
def test_run_queue_wait_is_read_on_linux():
    a = ct.run_queue_wait_ns()
    b = ct.run_queue_wait_ns()
    assert isinstance(a, int) and a >= 0 and b >= a


def _seen_threads(monkeypatch, value):
    if value is None:
        monkeypatch.delenv(ct.ENV_VAR, raising=False)
    else:
        monkeypatch.setenv(ct.ENV_VAR, value)
    seen = []
    ct.shared_cpu(lambda: seen.append(torch.get_num_threads()))()
    return seen[0]


def test_policy_fixed_keep_and_auto(monkeypatch):
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(3)
        assert _seen_threads(monkeypatch, "1") == 1 and torch.get_num_threads() == 3
        assert _seen_threads(monkeypatch, "5") == 5 and torch.get_num_threads() == 3
        assert _seen_threads(monkeypatch, "keep") == 3
        monkeypatch.setattr(ct.MONITOR, "solo_until", float("inf"))  # contended: auto uses one thread
        assert _seen_threads(monkeypatch, None) == 1 and torch.get_num_threads() == 3
        assert _seen_threads(monkeypatch, " AUTO ") == 1
        monkeypatch.setattr(ct.MONITOR, "solo_until", 0.0)
        monkeypatch.setattr(ct.MONITOR, "next_window", float("inf"))  # not contended, not measuring
        assert _seen_threads(monkeypatch, "auto") == 3
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("bad", ["0", "-2", "two", "1.5"])
def test_policy_rejects_a_bad_value(monkeypatch, bad):
    monkeypatch.setenv(ct.ENV_VAR, bad)
    with pytest.raises(ValueError, match=f"{ct.ENV_VAR} must be .*got '{bad}'"):
        ct.shared_cpu(lambda: None)()


def test_override_restored_after_nested_concurrent_and_failing_calls(monkeypatch):
    monkeypatch.setenv(ct.ENV_VAR, "1")
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        inner = ct.shared_cpu(lambda: torch.get_num_threads())
        assert ct.shared_cpu(lambda: (torch.get_num_threads(), inner(), torch.get_num_threads()))() == (1, 1, 1)
        assert torch.get_num_threads() == 2

        def boom():
            raise RuntimeError("inside")

        with pytest.raises(RuntimeError, match="inside"):
            ct.shared_cpu(boom)()
        assert torch.get_num_threads() == 2 and ct._active == 0

        gate, done = threading.Barrier(2), []

        def worker():
            def body():
                gate.wait(timeout=10)  # both calls inside the override at once
                return torch.get_num_threads()

            done.append(ct.shared_cpu(body)())

        ts = [threading.Thread(target=worker) for _ in range(2)]
        for t in ts:
            t.start()
        for t in ts:
            t.join(timeout=20)
        assert len(done) == 2 and ct._active == 0
        assert torch.get_num_threads() == 2  # the last one out restored the caller's count
    finally:
        torch.set_num_threads(before)


def test_reference_op_calls_on_cpu_run_under_the_policy(monkeypatch):
    import longattn
    from longattn.ops.op import get_op

    impl = get_op("merge_attention_states").impls["reference"]
    real, seen = impl.function(), []

    def spy(inputs):
        seen.append(torch.get_num_threads())
        return real(inputs)

    monkeypatch.setattr(impl, "run", spy)
    monkeypatch.setenv(ct.ENV_VAR, "1")
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        o, lse = torch.randn(3, 2, 8), torch.randn(3, 2)
        out, _ = longattn.merge_attention_states(o, lse, o, lse, backend="reference")
        assert seen == [1] and torch.get_num_threads() == 2
        torch.testing.assert_close(out, o)
    finally:
        torch.set_num_threads(before)
