"""The temporary-memory budget of the reference backend.

The reference ops work in chunks (of query tokens, of keys, of index entries) sized so that the
temporaries of one chunk stay under a byte budget, never proportional to T * N. The budget is

- ``LONGATTN_CHUNK_MB`` from the environment (MiB), else 256 MiB;
- overridable in code with ``set_chunk_budget(bytes)`` or, scoped, ``with chunk_budget(bytes): ...``.

Each op documents what one "row" of its chunk costs; ``rows_per_chunk`` turns that into a row count.
Peak temporary memory of an op is about one budget plus the op's inputs and outputs (plus the running
top-k / softmax state, which is O(T * topk) or O(T * H * D), the size of the outputs).
"""

from __future__ import annotations

import contextlib
import os
from typing import Iterator, Optional

DEFAULT_CHUNK_BYTES = 256 << 20

_override: Optional[int] = None


def chunk_budget_bytes() -> int:
    """The current per-chunk temporary-memory budget in bytes."""
    if _override is not None:
        return _override
    env = os.environ.get("LONGATTN_CHUNK_MB")
    if env:
        try:
            mb = float(env)
        except ValueError:
            raise ValueError(f"LONGATTN_CHUNK_MB must be a number of MiB, got {env!r}") from None
        if mb <= 0:
            raise ValueError(f"LONGATTN_CHUNK_MB must be > 0, got {env!r}")
        return max(1, int(mb * (1 << 20)))
    return DEFAULT_CHUNK_BYTES


def set_chunk_budget(num_bytes: Optional[int]) -> None:
    """Set the budget in bytes (``None`` restores the environment/default value)."""
    global _override
    if num_bytes is not None and num_bytes <= 0:
        raise ValueError(f"chunk budget must be > 0 bytes, got {num_bytes}")
    _override = num_bytes


@contextlib.contextmanager
def chunk_budget(num_bytes: int) -> Iterator[None]:
    """Temporarily use ``num_bytes`` as the chunk budget (tests use tiny budgets to force chunking)."""
    global _override
    previous = _override
    set_chunk_budget(num_bytes)
    try:
        yield
    finally:
        _override = previous


def rows_per_chunk(bytes_per_row: int, total_rows: int, budget: Optional[int] = None) -> int:
    """How many rows of ``bytes_per_row`` fit in the budget (at least 1, at most ``total_rows``)."""
    budget = chunk_budget_bytes() if budget is None else budget
    rows = budget // max(1, bytes_per_row)
    return int(max(1, min(rows, max(1, total_rows))))
