"""Reading ``LONGATTN_*`` environment variables: a malformed value raises ``ValueError`` naming the
variable, the expected form and what it holds (never a bare ``int()`` error)."""

from __future__ import annotations

import os
from typing import List, Optional


def positive_ints(name: str, fields: str) -> Optional[List[int]]:
    """``name`` as comma-separated integers >= 1, one per word of ``fields`` (e.g. "BLOCK_N,num_warps");
    None when unset or empty."""
    raw = os.environ.get(name)
    if not raw:
        return None
    want = fields.split(",")
    parts = [p.strip() for p in raw.split(",")]
    try:
        values = [int(p) for p in parts]
    except ValueError:
        values = []
    if len(values) != len(want) or any(v < 1 for v in values):
        raise ValueError(f'{name} must be "{fields}" ({len(want)} integers >= 1, comma-separated), got {raw!r}')
    return values


def positive_int(name: str, default: int) -> int:
    """``name`` as one integer >= 1 (``default`` when unset or empty)."""
    raw = os.environ.get(name)
    if not raw:
        return default
    try:
        value = int(raw.strip())
    except ValueError:
        value = 0
    if value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {raw!r}")
    return value
