"""``compress_kv`` on the Ascend C kernel (ascend_c/compress_kv): its limits and arguments, for the
``ascend_sim`` and ``ascend`` backends (there is no Ascend ``compress_pool``)."""

from __future__ import annotations

from typing import List

import torch

from ...backends.ascend import kernel_of
from ...cache.fp8 import Fp8KVPool
from .. import pools

MAX_D = 4096  # the entry and its pooling state live in UB


def reasons(inp) -> List[str]:
    out = []
    d = inp.width
    R = 2 * inp.rope_inv_freq.shape[0]
    if d % 8:
        out.append(f"entry width d={d} is not a multiple of 8 (32-B aligned fp32 rows)")
    if d > MAX_D:
        out.append(f"entry width d={d} > {MAX_D} (UB)")
    if (d - R) % 8:
        out.append(f"the {R} rope dims must start at a multiple of 8 (d - R = {d - R})")
    if not isinstance(inp.out, (torch.Tensor, Fp8KVPool)):
        out.append(f"cannot write {type(inp.out).__name__} pools (float tensors and Fp8KVPool only)")
    for name, x in (("a", inp.a), ("b", inp.b)):
        if x.numel() >= 2**31:
            out.append(f"`{name}` has 2**31 or more elements (int32 offsets)")
    return out


def run(backend: str, inp) -> None:
    kernel_of(backend, "compress_kv")(
        inp.a, inp.b, inp.positions, inp.token_rows, int(inp.ratio), bool(inp.overlap), inp.state,
        inp.state_block_table, *pools.to_schema(inp.out), inp.out_block_table, inp.norm_weight, float(inp.eps),
        inp.rope_inv_freq,
    )  # fmt: skip
