"""Dispatch helpers for tests: what a backend says of a call given as the op's canonical fields."""

from __future__ import annotations

from typing import List, Optional

import torch
from longattn.backends import registry
from longattn.ops.op import get_op


def inputs(op: str, **fields):
    """The op's prepared-inputs object from its fields (no checks: tests pass valid fields)."""
    return get_op(op).inputs_type(**fields)


def reasons(backend: str, op: str, device: Optional[torch.device] = None, **fields) -> List[str]:
    """Why ``backend`` declines this call (empty: it accepts)."""
    return get_op(op).reasons(backend, inputs(op, **fields), device)


def selected(op: str, device: torch.device, backend: Optional[str] = None, **fields) -> str:
    """The backend the dispatcher picks for this call on ``device``."""
    o = get_op(op)
    return registry.select(op, o.impls, device, inputs(op, **fields), backend).backend
