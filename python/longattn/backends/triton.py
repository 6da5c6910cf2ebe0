"""The Triton backend: fused GPU kernels (``ops/<op>/triton_*.py``).

Runs on CUDA tensors; with ``TRITON_INTERPRET=1`` in the environment (set before triton is first
imported) it also runs on CPU tensors through the Triton interpreter (slow; for tests). Importing
this module (e.g. from ``longattn.info()``) does not import triton: each op's ``support.py`` names
its kernel entry point, imported on the first call that selects it, and says which calls the kernels
decline (the dispatcher then falls back to the reference with a warning, or, with
``backend="triton"``, raises and says why). This module holds what every op's declarations share.
"""

from __future__ import annotations

import functools
import importlib.util
import os
from typing import List, Tuple

import torch

from ..cache import fp8
from .base import Backend

FP8_MIN_CAPABILITY = (8, 9)  # e4m3 -> float conversions in hardware (Ada / Hopper and later)
KERNEL_FLOATS = (torch.float32, torch.bfloat16, torch.float16)  # what the kernels load and store


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def _unavailable():
    if importlib.util.find_spec("triton") is None:
        return "triton is not installed (pip install 'longattn[triton]')"
    if not interpreting() and not torch.cuda.is_available():
        return "no CUDA device (set TRITON_INTERPRET=1 before importing triton to run the kernels on CPU tensors)"
    return None


def float_problem(what: str, t: torch.Tensor) -> List[str]:
    """[reason] when ``t`` is not one of the kernels' float dtypes, else []."""
    return [] if t.dtype in KERNEL_FLOATS else [f"{what} must be fp32 / bf16 / fp16, got {t.dtype}"]


@functools.lru_cache(maxsize=None)
def cuda_capability(index: int) -> Tuple[int, int]:
    """``torch.cuda.get_device_capability`` of GPU ``index``, asked once per process (a driver query
    per call otherwise: the FP8 check below runs at every op call's backend selection)."""
    return torch.cuda.get_device_capability(index)


def fp8_pool_problem(pool, *, reads: bool) -> str:
    """Why the kernels cannot use this pool object ('' when they can): the FP8 MODEL1 record of
    ``longattn.cache.Fp8KVPool``, recognised by duck typing (data / page_size / page_bytes / num_slots
    / head_dim). ``reads``: the kernel decodes e4m3 (needs the hardware conversion on a GPU); writes
    quantise with integer arithmetic and need nothing."""
    name = type(pool).__name__
    data = getattr(pool, "data", None)
    if not isinstance(data, torch.Tensor) or not all(
        hasattr(pool, a) for a in ("page_size", "page_bytes", "num_slots", "head_dim")
    ):
        return f"cannot use {name} pools (float tensor pools and FP8 pools with data/page_size/page_bytes only)"
    if data.dtype != torch.uint8 or data.dim() != 2 or not data.is_contiguous():
        return f"{name}.data must be a contiguous uint8 [num_pages, page_bytes] tensor"
    page_size, page_bytes = int(pool.page_size), int(pool.page_bytes)
    if int(pool.head_dim) != fp8.HEAD_DIM:
        return f"FP8 pools need head_dim {fp8.HEAD_DIM}, got {pool.head_dim}"
    if page_bytes % fp8.DATA_BYTES or page_bytes < page_size * fp8.RECORD_BYTES:
        return f"{name}.page_bytes={page_bytes} is not a MODEL1 page of {page_size} records"
    if data.shape[1] != page_bytes or int(pool.num_slots) > data.shape[0] * page_size:
        return f"{name}.data shape {list(data.shape)} does not match page_bytes / num_slots"
    if reads and data.device.type == "cuda" and not interpreting():
        if torch.version.hip:
            return "FP8 pools are not read on AMD GPUs (the record is e4m3fn; MI300's native FP8 is e4m3fnuz)"
        index = data.device.index if data.device.index is not None else torch.cuda.current_device()
        if cuda_capability(index) < FP8_MIN_CAPABILITY:
            return "FP8 pools need a GPU with native e4m3 conversion (compute capability >= 8.9)"
    return ""


BACKEND = Backend(
    name="triton",
    description="fused Triton kernels (CUDA; CPU tensors only under TRITON_INTERPRET=1)",
    device_types=("cuda", "cpu") if interpreting() else ("cuda",),
    unavailable=_unavailable(),
    preferred_on=("cuda",),
)
