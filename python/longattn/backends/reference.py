"""The reference backend: pure PyTorch, fp32 accumulation, any device torch runs on.

It is the ground truth every other backend is tested against, and it scales: vectorised, and
chunked under ``longattn.memory``'s budget (see each op's ``reference.py``). Every op implements it.
"""

from __future__ import annotations

from .base import Backend

BACKEND = Backend(
    name="reference",
    description="pure PyTorch, fp32 accumulation, chunked (ground truth; any device)",
    device_types=None,
)
