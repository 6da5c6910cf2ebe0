"""The Triton backend: fused GPU kernels for sparse attention, the lightning indexer and the combine ops.

Runs on CUDA tensors; with ``TRITON_INTERPRET=1`` in the environment (set before triton is first
imported) it also runs on CPU tensors through the Triton interpreter (slow; for tests). The kernels
live next to their ops (``ops/*/triton_*.py``) and are imported on first use, so importing this
module (e.g. from ``longattn.info()``) does not import triton.

Each op's ``reasons`` lists what the kernels do not support for a call; the dispatcher then falls
back to the reference with a warning (or, with ``backend="triton"``, raises and says why).
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from typing import List

import torch

from .base import Backend, OpImpl

MAX_HEAD_DIM = 1024  # = triton_sparse_attention.MAX_HEAD_DIM (kept here so reasons() needs no triton)
MAX_TOPK = 2048  # = triton_indexer.MAX_TOPK
FP8_HEAD_DIM = 512
FP8_DATA_BYTES, FP8_SCALE_BYTES = 576, 8
FP8_MIN_CAPABILITY = (8, 9)  # e4m3 -> float conversions in hardware (Ada / Hopper and later)
COMPRESS_MAX_D = 1024  # = triton_compress.MAX_D (the [d] entry and its softmax state live in registers)

_KERNELS = {
    "sparse_attention": "longattn.ops.sparse_attention.triton_sparse_attention",
    "indexer": "longattn.ops.indexer.triton_indexer",
    "combine": "longattn.ops.combine.triton_combine",
    "append": "longattn.ops.append.triton_append",
    "compress": "longattn.ops.compress.triton_compress",
}


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def _unavailable():
    if importlib.util.find_spec("triton") is None:
        return "triton is not installed (pip install 'longattn[triton]')"
    if not interpreting() and not torch.cuda.is_available():
        return "no CUDA device (set TRITON_INTERPRET=1 before importing triton to run the kernels on CPU tensors)"
    return None


def _kernels(name: str):
    return importlib.import_module(_KERNELS[name])


# ---------------------------------------------------------------------------------------------------
# what the kernels cannot do
# ---------------------------------------------------------------------------------------------------
def fp8_pool_problem(kv) -> str:
    """Why the kernel cannot read this pool object ('' when it can): the FP8 MODEL1 record of
    ``longattn.cache.Fp8KVPool``, recognised by duck typing (data / page_size / page_bytes / num_slots /
    head_dim)."""
    name = type(kv).__name__
    data = getattr(kv, "data", None)
    if not isinstance(data, torch.Tensor) or not all(
        hasattr(kv, a) for a in ("page_size", "page_bytes", "num_slots", "head_dim")
    ):
        return f"cannot read {name} pools (float tensor pools and FP8 pools with data/page_size/page_bytes only)"
    if data.dtype != torch.uint8 or data.dim() != 2 or not data.is_contiguous():
        return f"{name}.data must be a contiguous uint8 [num_pages, page_bytes] tensor"
    page_size, page_bytes = int(kv.page_size), int(kv.page_bytes)
    if int(kv.head_dim) != FP8_HEAD_DIM:
        return f"FP8 pools need head_dim {FP8_HEAD_DIM}, got {kv.head_dim}"
    if page_bytes % FP8_DATA_BYTES or page_bytes < page_size * (FP8_DATA_BYTES + FP8_SCALE_BYTES):
        return f"{name}.page_bytes={page_bytes} is not a MODEL1 page of {page_size} records"
    if data.shape[1] != page_bytes or int(kv.num_slots) > data.shape[0] * page_size:
        return f"{name}.data shape {list(data.shape)} does not match page_bytes / num_slots"
    return ""


def _sparse_attention_reasons(q, kv, extra_kv=None, **_) -> List[str]:
    reasons = []
    D = q.shape[-1]
    if D > MAX_HEAD_DIM:
        reasons.append(f"head dim D={D} > {MAX_HEAD_DIM} (the [heads, D] accumulator must fit on chip)")
    for name, pool in (("kv", kv), ("extra_kv", extra_kv)):
        if pool is not None and not isinstance(pool, torch.Tensor):
            problem = fp8_pool_problem(pool)
            if not problem and q.device.type == "cuda" and not interpreting():
                if torch.cuda.get_device_capability(q.device) < FP8_MIN_CAPABILITY:
                    problem = "FP8 pools need a GPU with native e4m3 conversion (compute capability >= 8.9)"
            if problem:
                reasons.append(f"`{name}`: {problem}")
    return reasons


def _indexer_topk_reasons(topk, **_) -> List[str]:
    if topk > MAX_TOPK:
        return [f"topk={topk} > {MAX_TOPK} (the running top-k list is kept in registers)"]
    return []


KERNEL_FLOATS = (torch.float32, torch.bfloat16, torch.float16)  # what the kernels load and store


def _float_problem(what: str, t: torch.Tensor) -> List[str]:
    """[reason] when ``t`` is not one of the kernels' float dtypes, else []."""
    return [] if t.dtype in KERNEL_FLOATS else [f"{what} must be fp32 / bf16 / fp16, got {t.dtype}"]


def _append_kv_reasons(pool, rows, slot_mapping, **_) -> List[str]:
    """Float pools: any of fp32 / bf16 / fp16 rows into any of them, any strides of ``rows`` and of a
    [num_slots, D] pool; a paged pool must flatten to [num_slots, D] with one row stride. FP8 pools:
    the MODEL1 record (quantised with integer arithmetic: no e4m3 hardware needed)."""
    reasons = []
    if isinstance(pool, torch.Tensor):
        reasons += _float_problem("float pools", pool)
        if pool.dim() == 3 and pool.shape[0] > 1 and pool.stride(0) != pool.shape[1] * pool.stride(1):
            reasons.append("a paged pool's pages must be evenly strided (pool.view(-1, D) must be possible)")
    else:
        problem = fp8_pool_problem(pool)
        if problem:
            reasons.append(f"`pool`: {problem}")
    reasons += _float_problem("rows", rows)
    return reasons


def _compress_kv_reasons(a, ratio, overlap, state, out, rope_inv_freq, **_) -> List[str]:
    reasons = []
    d = a.shape[1] // (2 if overlap else 1)
    if d > COMPRESS_MAX_D:
        reasons.append(f"entry width d={d} > {COMPRESS_MAX_D} (the entry is pooled in registers)")
    if rope_inv_freq.shape[0] > 0 and d % 2:
        reasons.append(f"RoPE needs an even entry width (interleaved pairs from an even dim), got d={d}")
    reasons += _float_problem("a / b", a)
    if state.dtype != torch.float32 or not state.is_contiguous():
        reasons.append("`state` must be a contiguous fp32 tensor")
    if isinstance(out, torch.Tensor):
        reasons += _float_problem("`out` float pools", out)
        if not out.is_contiguous():
            reasons.append("`out` must be a contiguous [num_pages, page_size, d] tensor")
    else:
        problem = fp8_pool_problem(out)
        if problem:
            reasons.append(f"`out`: {problem}")
        elif d != FP8_HEAD_DIM:
            reasons.append(f"FP8 pools hold entries of d={FP8_HEAD_DIM}, got d={d}")
    return reasons


# ---------------------------------------------------------------------------------------------------
# entry points (import the kernels on first call)
# ---------------------------------------------------------------------------------------------------
def _sparse_attention(**args):
    return _kernels("sparse_attention").sparse_attention(**args)


def _merge_attention_states(**args):
    return _kernels("combine").merge_attention_states(**args)


def _apply_attention_sink(**args):
    return _kernels("combine").apply_attention_sink(**args)


def _append_kv(**args):
    return _kernels("append").append_kv(**args)


def _compress_kv(**args):
    return _kernels("compress").compress_kv(**args)


def _compress_pool(**args):
    return _kernels("compress").compress_pool(**args)


def _compress_pool_reasons(a, **_) -> List[str]:
    return _float_problem("a / b", a)


def _indexer_logits(**args):
    return _kernels("indexer").indexer_logits(**args)


def _indexer_topk(**args):
    return _kernels("indexer").indexer_topk(**args)


BACKEND = Backend(
    name="triton",
    description="fused Triton kernels (CUDA; CPU tensors only under TRITON_INTERPRET=1)",
    device_types=("cuda", "cpu") if interpreting() else ("cuda",),
    ops={
        "sparse_attention": OpImpl(_sparse_attention, _sparse_attention_reasons),
        "merge_attention_states": OpImpl(_merge_attention_states),
        "apply_attention_sink": OpImpl(_apply_attention_sink),
        "indexer_logits": OpImpl(_indexer_logits),
        "indexer_topk": OpImpl(_indexer_topk, _indexer_topk_reasons),
        "append_kv": OpImpl(_append_kv, _append_kv_reasons),
        "compress_kv": OpImpl(_compress_kv, _compress_kv_reasons),
        "compress_pool": OpImpl(_compress_pool, _compress_pool_reasons),
    },
    unavailable=_unavailable(),
)
