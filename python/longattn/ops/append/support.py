"""What each backend can do for ``append_kv`` (declarations only).

reference: every valid call. triton: float pools of the kernels' dtypes whose pages flatten to one
row stride, and FP8 (MODEL1) pools, quantised with integer arithmetic. ascend_sim / ascend: float
pools under 2**31 elements and FP8 pools of 512-d rows.
"""

from __future__ import annotations

import functools
from typing import List

import torch

from ...backends import triton
from ...backends.base import Impl
from . import ascend


def triton_reasons(inp) -> List[str]:
    reasons = []
    pool = inp.pool
    if isinstance(pool, torch.Tensor):
        if pool.dim() == 3 and pool.shape[0] > 1 and pool.stride(0) != pool.shape[1] * pool.stride(1):
            reasons.append("a paged pool's pages must be evenly strided (pool.view(-1, D) must be possible)")
    else:
        problem = triton.fp8_pool_problem(pool, reads=False)
        if problem:
            reasons.append(f"`pool`: {problem}")
    return reasons


IMPLS = {
    "reference": Impl("longattn.ops.append.reference:run"),
    "triton": Impl("longattn.ops.append.triton_append:run", triton_reasons),
    "ascend_sim": Impl(functools.partial(ascend.run, "ascend_sim"), ascend.reasons),
    "ascend": Impl(functools.partial(ascend.run, "ascend"), ascend.reasons),
}
