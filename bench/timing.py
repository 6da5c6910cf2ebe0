"""Timing and memory measurement of one zero-argument callable.

Timing (``time_fn``):
- Warm-up calls first (compilation, allocator and page first-touch happen there, not in the samples).
- CPU: wall clock (``time.perf_counter``) around each call; the thread count is recorded by the run.
- CUDA / NPU: device events recorded around each call; nothing else is timed.
- Cold cache between samples (default): before every timed call a flush buffer larger than the last
  level cache is rewritten (``+= 1``: plain loads and stores, not streaming), outside the timed region.
  On GPUs this is the usual L2 flush (FlashMLA, triton ``do_bench``, FlashInfer ``cold_l2_cache``); on
  CPUs it keeps a 64 MiB index cache from sitting in a 260 MiB L3 between samples, which a real decode
  step over 40+ layers never sees.
- Samples: at least ``min_repeats`` and until ``min_time_s`` of samples, at most ``max_repeats`` and
  ``max_time_s``; a call slower than ``long_call_s`` (default 0.5 s) in its first and its second
  (warm) call gets only ``long_repeats`` samples (and no warm-up beyond those two); a first call
  longer than ``max_time_s`` is the only sample (n = 1, warm-up 0: on such calls warm-up effects are
  negligible and another call would cost too much). Statistics: median with p20/p80 and the quartiles (IQR).

Memory (``peak_memory``): the peak bytes allocated above the level at the start of one call
(temporaries + outputs).
- CPU: the torch allocator's own events (``torch.profiler`` with ``profile_memory``): exact, every
  tensor allocation and free in order, no sampling. Plus the process RSS peak sampled by
  ``bench.peakmem.PeakRSS`` in a separate call (it also sees memory outside torch's allocator, but a
  sampler can miss short-lived blocks; and the sampler thread steals CPU, so it never runs while
  timing). The heap is trimmed before that call and glibc's mmap threshold, lowered by PeakRSS,
  is restored after it: left at 64 KiB it made the timed 1M-token decode step ~2x slower.
- CUDA / NPU: ``max_memory_allocated`` minus ``memory_allocated`` before the call.

A callable with a ``prepare`` attribute (a zero-argument function) gets it called before every call
made here (first call, warm-ups, samples, memory calls), outside the timed region: e.g. a fresh copy of
the cache manager for each ``CacheManager.plan`` call, which changes the manager it runs on.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import sys
import time
from typing import Callable, Dict, List, Optional

import torch

from .device import accel, last_level_cache_bytes, synchronize

MiB = 1 << 20


def prepare(fn: Callable[[], object]) -> None:
    """Call ``fn.prepare()`` when ``fn`` has one (untimed per-call setup)."""
    p = getattr(fn, "prepare", None)
    if p is not None:
        p()


@dataclasses.dataclass
class TimingPolicy:
    warmup: int = 2
    min_repeats: int = 5
    max_repeats: int = 20
    min_time_s: float = 0.5
    max_time_s: float = 10.0
    # 0.5 s: calls of about a second (the dense peers at 1M tokens) take 3 calls instead of 8, which
    # keeps the default suite within a few minutes on a 2-core CPU (2.0 s before).
    long_call_s: float = 0.5
    long_repeats: int = 2
    cold_cache: bool = True

    @classmethod
    def quick(cls) -> "TimingPolicy":
        return cls(warmup=1, min_repeats=3, max_repeats=5, min_time_s=0.0, max_time_s=2.0, long_call_s=1.0)

    def to_json(self) -> Dict[str, object]:
        return dataclasses.asdict(self)


def percentile(sorted_xs: List[float], p: float) -> float:
    """Linear-interpolated percentile (p in [0, 100]) of an already sorted list."""
    if not sorted_xs:
        return float("nan")
    if len(sorted_xs) == 1:
        return sorted_xs[0]
    pos = (len(sorted_xs) - 1) * p / 100.0
    lo = int(math.floor(pos))
    hi = min(lo + 1, len(sorted_xs) - 1)
    return sorted_xs[lo] + (sorted_xs[hi] - sorted_xs[lo]) * (pos - lo)


def summarize(samples: List[float]) -> Dict[str, float]:
    xs = sorted(samples)
    q1, q3 = percentile(xs, 25), percentile(xs, 75)
    return {
        "median_s": percentile(xs, 50),
        "p20_s": percentile(xs, 20),
        "p80_s": percentile(xs, 80),
        "q1_s": q1,
        "q3_s": q3,
        "iqr_s": q3 - q1,
        "min_s": xs[0] if xs else float("nan"),
        "max_s": xs[-1] if xs else float("nan"),
        "mean_s": sum(xs) / len(xs) if xs else float("nan"),
        "n": len(xs),
    }


class CacheFlusher:
    """Rewrites a buffer larger than the last-level cache (CPU) or the L2 (GPU) before each sample."""

    def __init__(self, device: torch.device, enabled: bool = True):
        self.nbytes = 0
        self.buf = None
        if not enabled:
            return
        if device.type == "cpu":
            llc = last_level_cache_bytes() or (32 * MiB)
            self.nbytes = int(min(max(2 * llc, 64 * MiB), 1024 * MiB))
        else:
            self.nbytes = 256 * MiB  # > 2x the L2 of any current GPU (H100/H200: 50 MiB)
        self.buf = torch.ones(self.nbytes // 4, dtype=torch.float32, device=device)

    def __call__(self) -> None:
        if self.buf is not None:
            self.buf += 1.0


def time_fn(
    fn: Callable[[], object],
    device: torch.device,
    policy: TimingPolicy,
    flusher: Optional[CacheFlusher] = None,
    prior_call_s: Optional[float] = None,
) -> Dict[str, object]:
    """Time ``fn``; returns the summary plus the raw samples (seconds) and the warm-up count.

    ``prior_call_s``: the caller already made one (untimed) call that took this long; it counts as
    the first warm-up call."""
    mod = accel(device)
    if prior_call_s is None:
        prepare(fn)
        t0 = time.perf_counter()
        fn()
        synchronize(device)
        prior_call_s = time.perf_counter() - t0
    first = prior_call_s
    if first > policy.max_time_s:  # one call already took the whole budget: it is the only sample
        out = summarize([first])
        out.update(warmup=0, first_call_s=first, samples_s=[first], note="single sample: the first call")
        return out
    warm = 1
    long_call = first > policy.long_call_s
    if long_call:
        # A first call can be slow for one-time reasons (page first-touch of a 1 GiB pool, lazy
        # initialisation): a 4 ms call whose first call took 1.2 s must not be sampled twice as a
        # "long" call. Judge by a second, warm call (it counts as a warm-up).
        prepare(fn)
        t0 = time.perf_counter()
        fn()
        synchronize(device)
        long_call = time.perf_counter() - t0 > policy.long_call_s
        warm += 1
    while warm < policy.warmup and not long_call:
        prepare(fn)
        fn()
        warm += 1
    synchronize(device)
    max_n = policy.long_repeats if long_call else policy.max_repeats
    min_n = min(policy.min_repeats, max_n)
    samples: List[float] = []
    start = time.perf_counter()
    while True:
        prepare(fn)
        if flusher is not None:
            flusher()
        if mod is not None:
            synchronize(device)
            e0, e1 = mod.Event(enable_timing=True), mod.Event(enable_timing=True)
            e0.record()
            fn()
            e1.record()
            e1.synchronize()
            samples.append(e0.elapsed_time(e1) / 1e3)
        else:
            t = time.perf_counter()
            fn()
            samples.append(time.perf_counter() - t)
        n = len(samples)
        spent = time.perf_counter() - start
        if n >= max_n:
            break
        if n >= min_n and (sum(samples) >= policy.min_time_s or spent >= policy.max_time_s):
            break
    out = summarize(samples)
    out["warmup"] = warm
    out["first_call_s"] = first
    out["samples_s"] = samples
    return out


@contextlib.contextmanager
def _quiet_stderr():
    """Send file descriptor 2 to /dev/null for the block (C++ log lines included)."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
        devnull = os.open(os.devnull, os.O_WRONLY)
    except (OSError, AttributeError, ValueError):
        yield
        return
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def cpu_alloc_peak_call(fn: Callable[[], object]):
    """Call ``fn`` once under the profiler's memory events: (result, exact peak of live
    torch-allocated CPU bytes above the start, or None if the profiler could not record them).
    The result is kept alive past the peak computation (it is part of the peak)."""
    try:
        from torch.profiler import ProfilerActivity, profile

        prof = profile(activities=[ProfilerActivity.CPU], profile_memory=True)
        with _quiet_stderr():  # kineto prints a "profiler_start/stop" line to fd 2 that no setting silences
            prof.__enter__()
    except Exception:
        return fn(), None
    try:
        r = fn()
    finally:
        with _quiet_stderr():
            prof.__exit__(None, None, None)
    try:
        events = sorted(
            (e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"
        )
    except Exception:
        return r, None
    cur = peak = 0
    for _, n in events:
        cur += n
        peak = max(peak, cur)
    return r, int(peak)


def first_call(fn: Callable[[], object], device: torch.device):
    """The first (dispatch / warm-up) call: (result, seconds, memory record or {}). On the CPU the
    call runs under the allocator-event profiler, so its exact peak memory comes for free; on
    accelerators memory is measured after warm-up instead (lazy init and autotuning allocate)."""
    prepare(fn)
    t0 = time.perf_counter()
    if device.type == "cpu":
        r, peak = cpu_alloc_peak_call(fn)
        mem = {} if peak is None else {"peak_mem_bytes": peak, "mem_method": "torch_cpu_allocator_events"}
    else:
        r = fn()
        mem = {}
    synchronize(device)
    return r, time.perf_counter() - t0, mem


def peak_memory(
    fn: Callable[[], object], device: torch.device, rss: bool = True, alloc: bool = True
) -> Dict[str, object]:
    """Peak memory of one call of ``fn`` above the level before it (see the module docstring).
    ``alloc=False`` skips the CPU allocator-event measurement (already taken on the first call)."""
    mod = accel(device)
    if mod is not None:
        synchronize(device)
        prepare(fn)
        mod.reset_peak_memory_stats()
        base = mod.memory_allocated()
        r = fn()
        synchronize(device)
        peak = mod.max_memory_allocated() - base
        del r
        return {"peak_mem_bytes": int(max(0, peak)), "mem_method": f"{device.type}.max_memory_allocated"}
    out: Dict[str, object] = {}
    if alloc:
        prepare(fn)
        r, peak = cpu_alloc_peak_call(fn)
        del r
        if peak is not None:
            out.update(peak_mem_bytes=peak, mem_method="torch_cpu_allocator_events")
    if rss:
        from .peakmem import PeakRSS, restore_allocator, trim_heap

        prepare(fn)
        trim_heap()  # heap blocks reused by the call must be faulted in again to show in the RSS
        try:
            with PeakRSS() as m:  # sets a 64 KiB mmap threshold for the call...
                r = fn()
                del r
        finally:
            restore_allocator()  # ...which must not slow down the timings that follow
        out["peak_rss_bytes"] = int(m.peak_delta)
        if alloc and "peak_mem_bytes" not in out:  # the allocator events were asked for but unavailable
            out.update(peak_mem_bytes=int(m.peak_delta), mem_method="rss_sampled")
    return out
