"""Intra-op threads of the reference backend on a CPU that other processes also use.

PyTorch splits each CPU op over ``torch.get_num_threads()`` threads and joins them at the op's end. When
other processes keep the cores busy, a join waits for a descheduled thread for up to a scheduler time
slice (several ms on Linux), at every op: a decode step of ~100 ops, most of them small, then runs tens
of times slower than on one thread (measured on the 2-core CI VM with ~4 other runnable tasks,
V4-Flash CSA layer decode at 128K: 2 threads 1,320 ms, 1 thread 21 ms; idle, 2 threads: 8 ms).

So each reference op call on a CPU runs under a policy (``LONGATTN_CPU_THREADS``):

* ``auto`` (default): the caller's thread count, unless the last measurement showed our threads waiting
  for a CPU (run-queue time of this process's threads, ``/proc/self/task/*/schedstat``) for more than
  ``CONTENDED`` of the wall time in two consecutive measurements (the second taken at once: one window
  alone can be a scheduling blip, e.g. a 5 ms kernel task in a 20 ms window of an idle 2-core machine
  reads 0.25; within a contention episode one window decides); then one thread, for a back-off period
  that doubles while the contention lasts (``BACKOFF_S`` .. ``BACKOFF_MAX_S``), after which the caller's
  count is tried again. A measurement covers at least ``WINDOW_S`` of op calls and starts ``GAP_S``
  after the previous one (the calls between measurements read no file). Where the kernel exposes no
  schedstat (not Linux), ``auto`` keeps the caller's count.
* an integer N >= 1: N threads for every reference op call on a CPU.
* ``keep``: never change the thread count.

The count is restored after the call; concurrent calls from several Python threads share one override
(the first one in saves the caller's count, the last one out restores it).
"""

from __future__ import annotations

import contextlib
import functools
import os
import threading
import time
from typing import Callable, Iterator, List, Optional

import torch

ENV_VAR = "LONGATTN_CPU_THREADS"
CONTENDED = 0.25  # run-queue wait / wall time above which the CPU counts as contended
WINDOW_S = 0.02  # op-call time a measurement covers at least
GAP_S = 0.2  # time between measurements (the calls in between are not measured: no file reads)
BACKOFF_S, BACKOFF_MAX_S = 1.0, 32.0


def policy() -> Optional[int]:
    """0: auto; N >= 1: fixed; None: keep. Raises ``ValueError`` naming the variable on a bad value."""
    raw = (os.environ.get(ENV_VAR) or "auto").strip().lower()
    if raw == "auto":
        return 0
    if raw == "keep":
        return None
    try:
        n = int(raw)
    except ValueError:
        n = 0
    if n < 1:
        raise ValueError(f'{ENV_VAR} must be "auto", "keep" or an integer >= 1, got {os.environ.get(ENV_VAR)!r}')
    return n


def run_queue_wait_ns() -> Optional[int]:
    """Nanoseconds this process's threads have waited on a run queue (None: not available)."""
    total = 0
    try:
        for tid in os.listdir("/proc/self/task"):
            try:
                with open(f"/proc/self/task/{tid}/schedstat", "rb") as fh:
                    total += int(fh.read().split()[1])
            except FileNotFoundError:  # the thread ended meanwhile
                continue
    except (OSError, ValueError, IndexError):
        return None
    return total


class ContentionMonitor:
    """The ``auto`` policy's state: measures run-queue wait over windows of op calls made with the
    caller's thread count and decides when to fall back to one thread (``clock`` / ``wait_ns`` are
    injectable for tests)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, wait_ns=run_queue_wait_ns):
        self.clock, self.wait_ns = clock, wait_ns
        self.solo_until = 0.0  # clock time before which calls run on one thread
        self.backoff = BACKOFF_S
        self.window_wall = 0.0  # op-call seconds and wait ns measured in the current window
        self.window_wait = 0
        self.next_window = 0.0  # clock time from which calls are measured again
        self.history: List[float] = []  # wait ratios of the finished windows (diagnostics)
        self.contended_windows = 0  # windows that sent calls to one thread (bench records the count)
        self.suspect = False  # one contended window outside an episode: the next window confirms

    def solo(self) -> bool:
        return self.clock() < self.solo_until

    def due(self) -> bool:
        return self.clock() >= self.next_window

    @contextlib.contextmanager
    def measured(self) -> Iterator[None]:
        """Measure one op call that runs with the caller's thread count."""
        w0, t0 = self.wait_ns(), self.clock()
        try:
            yield
        finally:
            w1, t1 = self.wait_ns(), self.clock()
            if w0 is not None and w1 is not None:
                self.window_wall += t1 - t0
                self.window_wait += w1 - w0
                if self.window_wall >= WINDOW_S:
                    self._decide(t1)

    def _decide(self, now: float) -> None:
        ratio = self.window_wait / (self.window_wall * 1e9)
        self.history = (self.history + [ratio])[-16:]
        self.window_wall, self.window_wait = 0.0, 0
        self.next_window = now + GAP_S
        if ratio > CONTENDED:
            in_episode = self.backoff > BACKOFF_S  # the last decision was "contended"
            if not (in_episode or self.suspect):
                self.suspect = True
                self.next_window = now  # confirm with the very next calls
                return
            self.suspect = False
            self.contended_windows += 1
            self.solo_until = now + self.backoff
            self.backoff = min(2 * self.backoff, BACKOFF_MAX_S)
        else:
            self.suspect = False
            self.backoff = BACKOFF_S


MONITOR = ContentionMonitor()
_lock = threading.Lock()
_active = 0  # reference calls running under an override
_saved = 0  # the caller's thread count while _active > 0


@contextlib.contextmanager
def _threads(n: int) -> Iterator[None]:
    global _active, _saved
    with _lock:
        if _active == 0:
            _saved = torch.get_num_threads()
        _active += 1
        torch.set_num_threads(n)
    try:
        yield
    finally:
        with _lock:
            _active -= 1
            if _active == 0:
                torch.set_num_threads(_saved)


def shared_cpu(fn: Callable) -> Callable:
    """``fn`` (a reference op implementation) run under the thread policy above."""

    @functools.wraps(fn)
    def run(*args, **kwargs):
        p = policy()
        if p is None:
            return fn(*args, **kwargs)
        if p > 0:
            with _threads(p):
                return fn(*args, **kwargs)
        if MONITOR.solo():
            with _threads(1):
                return fn(*args, **kwargs)
        if _active or torch.get_num_threads() == 1 or not MONITOR.due():  # (nested / nothing to share)
            return fn(*args, **kwargs)
        with MONITOR.measured():
            return fn(*args, **kwargs)

    return run
