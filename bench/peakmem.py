"""Peak resident memory of a block of code, measured by sampling the process RSS.

``torch`` CPU allocations do not show in ``tracemalloc``; the process RSS does. A background thread
samples ``/proc/self/statm`` every ``interval`` seconds; the peak over the block minus the RSS at its
start is the block's temporary memory (allocations it freed before returning included). Where
``/proc`` is absent (macOS), ``ru_maxrss`` gives a coarser process-lifetime peak.

RSS only falls when the allocator returns freed blocks to the OS. glibc keeps large freed blocks once
its dynamic mmap threshold has grown, which would hide the temporaries of a repeated call; so
``PeakRSS`` first fixes the threshold (``mallopt(M_MMAP_THRESHOLD, 64 KiB)``): every block of 64 KiB
or more is then mapped on allocation and unmapped on free.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import resource
import sys
import threading
import time

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


_M_MMAP_THRESHOLD = -3
_allocator_fixed = False


def return_large_blocks_to_os(threshold: int = 64 << 10) -> bool:
    """Make glibc map every block >= ``threshold`` bytes separately (freed at once). False if not glibc."""
    global _allocator_fixed
    if _allocator_fixed:
        return True
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        _allocator_fixed = bool(libc.mallopt(_M_MMAP_THRESHOLD, threshold))
    except (OSError, AttributeError):
        _allocator_fixed = False
    return _allocator_fixed


_DEFAULT_MAX_MMAP_THRESHOLD = 32 << 20  # glibc's dynamic threshold never grows past this on 64-bit
_M_TRIM_THRESHOLD = -1


def restore_allocator(threshold: int = _DEFAULT_MAX_MMAP_THRESHOLD) -> bool:
    """Put glibc in the steady state its dynamic thresholds reach, fixed: blocks below ``threshold``
    come from the heap and are reused without page faults, larger ones are mapped per allocation, and
    the heap keeps up to ``2 * threshold`` free bytes at its top instead of returning them to the OS.

    Fixed rather than dynamic so that a case's timing does not depend on what ran before it in the
    process (measured here: the same compress_kv case took 22 ms or 45 ms depending on whether the
    thresholds had grown before it). Also undoes ``return_large_blocks_to_os``: with the 64 KiB
    threshold left on, the 1M-token decode step of the reference runs ~2x slower (every 1-2 MiB
    temporary is mapped and faulted in again). The bench calls this before the first case and after
    each RSS measurement. False if not glibc."""
    global _allocator_fixed
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        ok = bool(libc.mallopt(_M_MMAP_THRESHOLD, threshold))
        ok = bool(libc.mallopt(_M_TRIM_THRESHOLD, 2 * threshold)) and ok
    except (OSError, AttributeError):
        return False
    _allocator_fixed = False
    return ok


def trim_heap() -> None:
    """Return the free heap memory to the OS (glibc ``malloc_trim(0)``), so that blocks reused from
    the heap during a measurement are faulted in, and counted in the RSS, again."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.malloc_trim(0)
    except (OSError, AttributeError):
        pass


def rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * _PAGE
    except OSError:
        scale = 1 if sys.platform == "darwin" else 1024
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


class PeakRSS:
    """``with PeakRSS() as m: ...`` then ``m.peak_delta`` (bytes above the RSS at entry)."""

    def __init__(self, interval: float = 0.0005):
        self.interval = interval
        self.start = self.peak = 0
        self._stop = threading.Event()

    def _sample(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_bytes())
            time.sleep(self.interval)

    def __enter__(self):
        return_large_blocks_to_os()
        self.start = self.peak = rss_bytes()
        self._stop.clear()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes())
        return False

    @property
    def peak_delta(self) -> int:
        return max(0, self.peak - self.start)
