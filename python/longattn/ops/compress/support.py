"""What each backend can do for ``compress_pool`` / ``compress_kv`` (declarations only).

reference: every valid call. triton: entries up to ``MAX_D`` wide (pooled in registers), RoPE on an
even width, FP8 KV pools with 512-d entries, FP8 index-key pools (``Fp8IndexKeyPool``, the 132-B
record written in the kernel, either scale rule). ascend_sim / ascend: ``compress_kv`` and ``compress_pool``
within ``ascend.py``'s limits.
"""

from __future__ import annotations

import functools
from typing import List

import torch

from ...backends import triton
from ...backends.base import Impl
from ...cache import fp8
from ...cache.fp8_index import Fp8IndexKeyPool
from . import ascend

MAX_D = 1024  # Triton: the [d] entry and its softmax state live in registers (read by the kernels)


def triton_compress_kv_reasons(inp) -> List[str]:
    reasons = []
    d = inp.width
    if d > MAX_D:
        reasons.append(f"entry width d={d} > {MAX_D} (the entry is pooled in registers)")
    if inp.rope_inv_freq.shape[0] > 0 and d % 2:
        reasons.append(f"RoPE needs an even entry width (interleaved pairs from an even dim), got d={d}")
    if isinstance(inp.out, Fp8IndexKeyPool):
        data = inp.out.data
        if not (data.dtype == torch.uint8 and data.dim() == 2 and data.is_contiguous()):
            reasons.append(f"`out`: Fp8IndexKeyPool.data must be a contiguous uint8 [num_pages, page_bytes], got "
                           f"{str(data.dtype).replace('torch.', '')} {list(data.shape)}")  # fmt: skip
    elif not isinstance(inp.out, torch.Tensor):
        problem = triton.fp8_pool_problem(inp.out, reads=False)
        if problem:
            reasons.append(f"`out`: {problem}")
        elif d != fp8.HEAD_DIM:
            reasons.append(f"FP8 pools hold entries of d={fp8.HEAD_DIM}, got d={d}")
    return reasons


_KERNELS = "longattn.ops.compress."
POOL_IMPLS = {
    "reference": Impl(_KERNELS + "reference:run_pool"),
    "triton": Impl(_KERNELS + "triton_compress:run_pool"),
    "ascend_sim": Impl(functools.partial(ascend.run_pool, "ascend_sim"), ascend.pool_reasons),
    "ascend": Impl(functools.partial(ascend.run_pool, "ascend"), ascend.pool_reasons),
}
COMPRESS_KV_IMPLS = {
    "reference": Impl(_KERNELS + "reference:run_compress_kv"),
    "triton": Impl(_KERNELS + "triton_compress:run_compress_kv", triton_compress_kv_reasons),
    "ascend_sim": Impl(functools.partial(ascend.run, "ascend_sim"), ascend.reasons),
    "ascend": Impl(functools.partial(ascend.run, "ascend"), ascend.reasons),
}
