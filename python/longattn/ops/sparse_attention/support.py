"""What each backend can do for ``sparse_attention`` (declarations only: imports no kernels).

reference: every valid call. triton: head dims up to ``MAX_HEAD_DIM``; FP8 pools need e4m3 hardware
on a GPU. ascend_sim / ascend: the tiling limits of ``ascend.py`` (D a multiple of 64 that fits the
on-chip buffers of the compute dtype; float pools of any float dtype and FP8 pools (D = 512), in any
mix; int32 slots).
"""

from __future__ import annotations

import functools
from typing import List

import torch

from ...backends import triton
from ...backends.base import Impl
from . import ascend

MAX_HEAD_DIM = 1024  # Triton: the [heads, D] fp32 accumulator must fit on chip (read by the kernel)


def triton_reasons(inp) -> List[str]:
    reasons = []
    D = inp.q.shape[-1]
    if D > MAX_HEAD_DIM:
        reasons.append(f"head dim D={D} > {MAX_HEAD_DIM} (the [heads, D] accumulator must fit on chip)")
    for name, pool in (("kv", inp.kv), ("extra_kv", inp.extra_kv)):
        if pool is not None and not isinstance(pool, torch.Tensor):
            problem = triton.fp8_pool_problem(pool, reads=True)
            if problem:
                reasons.append(f"`{name}`: {problem}")
    return reasons


_KERNELS = "longattn.ops.sparse_attention."
IMPLS = {
    "reference": Impl(_KERNELS + "reference:run"),
    "triton": Impl(_KERNELS + "triton_sparse_attention:run", triton_reasons),
    "ascend_sim": Impl(functools.partial(ascend.run, "ascend_sim"), ascend.reasons),
    "ascend": Impl(functools.partial(ascend.run, "ascend"), ascend.reasons),
}
