"""``append_kv`` on the Ascend C kernel (ascend_c/append_kv): its limits and arguments, for the
``ascend_sim`` and ``ascend`` backends."""

from __future__ import annotations

from typing import List

import torch

from ...backends.ascend import kernel_of
from ...cache import fp8
from .. import pools


def reasons(inp) -> List[str]:
    if isinstance(inp.pool, torch.Tensor):
        return [] if inp.pool.numel() < 2**31 else ["the pool has 2**31 or more elements (int32 offsets)"]
    if isinstance(inp.pool, fp8.Fp8KVPool):
        return [] if inp.rows.shape[1] == fp8.HEAD_DIM else [f"FP8 pools take rows of {fp8.HEAD_DIM}"]
    return [f"cannot write {type(inp.pool).__name__} pools (float tensors and Fp8KVPool only)"]


def run(backend: str, inp) -> None:
    kernel_of(backend, "append_kv")(*pools.to_schema(inp.pool), inp.rows, inp.slot_mapping)
