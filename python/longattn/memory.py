"""The temporary-memory budget of the reference backend.

The reference ops work in chunks (of query tokens, of keys, of index entries) sized so that the
temporaries of one chunk stay under a byte budget, never proportional to T * N. The budget is, first
match wins:

- the innermost ``with chunk_budget(bytes): ...`` of the calling thread (scoped, per thread);
- ``set_chunk_budget(bytes)`` (process-wide);
- ``LONGATTN_CHUNK_MB`` from the environment (MiB, a finite number > 0);
- 256 MiB.

Each op documents what one "row" of its chunk costs; ``rows_per_chunk`` turns that into a row count.
Peak temporary memory of an op is about one budget plus the op's inputs and outputs (plus the running
top-k / softmax state, which is O(T * topk) or O(T * H * D), the size of the outputs).
"""

from __future__ import annotations

import contextlib
import math
import os
import threading
from typing import Iterator, Optional

DEFAULT_CHUNK_BYTES = 256 << 20
ENV_VAR = "LONGATTN_CHUNK_MB"

_process_budget: Optional[int] = None  # set_chunk_budget
_scoped = threading.local()  # .stack: the calling thread's chunk_budget() values, innermost last


def chunk_budget_bytes() -> int:
    """The current per-chunk temporary-memory budget in bytes (of the calling thread)."""
    stack = getattr(_scoped, "stack", None)
    if stack:
        return stack[-1]
    if _process_budget is not None:
        return _process_budget
    env = os.environ.get(ENV_VAR)
    if env:
        try:
            mb = float(env)
        except ValueError:
            raise ValueError(f"{ENV_VAR} must be a number of MiB, got {env!r}") from None
        if not math.isfinite(mb) or mb <= 0:
            raise ValueError(f"{ENV_VAR} must be a finite number of MiB > 0, got {env!r}")
        return max(1, int(mb * (1 << 20)))
    return DEFAULT_CHUNK_BYTES


def _checked(num_bytes) -> int:
    if isinstance(num_bytes, bool) or not isinstance(num_bytes, int):
        raise TypeError(f"chunk budget must be an int number of bytes, got {type(num_bytes).__name__}")
    if num_bytes <= 0:
        raise ValueError(f"chunk budget must be > 0 bytes, got {num_bytes}")
    return num_bytes


def set_chunk_budget(num_bytes: Optional[int]) -> None:
    """Set the process-wide budget in bytes (``None`` restores the environment/default value)."""
    global _process_budget
    _process_budget = None if num_bytes is None else _checked(num_bytes)


@contextlib.contextmanager
def chunk_budget(num_bytes: int) -> Iterator[None]:
    """Use ``num_bytes`` as the chunk budget of the calling thread inside the block (other threads
    are not affected; tests use tiny budgets to force chunking)."""
    value = _checked(num_bytes)
    if not hasattr(_scoped, "stack"):
        _scoped.stack = []
    _scoped.stack.append(value)
    try:
        yield
    finally:
        _scoped.stack.pop()


def rows_per_chunk(bytes_per_row: int, total_rows: int, budget: Optional[int] = None) -> int:
    """How many rows of ``bytes_per_row`` fit in the budget (at least 1, at most ``total_rows``)."""
    budget = chunk_budget_bytes() if budget is None else budget
    rows = budget // max(1, bytes_per_row)
    return int(max(1, min(rows, max(1, total_rows))))
