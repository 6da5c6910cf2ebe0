"""``compress_kv`` on the Ascend C kernel (ascend_c/compress_kv): its limits and arguments, for the
``ascend_sim`` and ``ascend`` backends (there is no Ascend ``compress_pool``)."""

from __future__ import annotations

from typing import List

import torch

from ...backends.ascend import kernel_of
from ...cache.fp8 import Fp8KVPool
from .. import pools
from ..sparse_attention.ascend import UB_BYTES

MAX_D = 4096  # the entry and its pooling state live in UB
FP8_QUANTIZER_UB = 16512  # kFp8QuantizerUbBytes (ascend_c/common/longattn_types.h)


def _al(x: int, a: int) -> int:
    return -(-x // a) * a


def compress_ub_bytes(d: int, W: int, in_size: int, R: int, fp8: bool, out_size: int) -> int:
    """UB bytes of a compress_kv AIV (mirrors CompressKvUbBytes in ascend_c/compress_kv/op_host)."""
    d_pad, d_v, w_pad = _al(d, 16), _al(d, 64), _al(W, 16)
    b = 2 * _al(2 * d_pad * in_size, 32) + 2 * _al(2 * d_pad * 4, 32)
    b += _al(8 * d_v * 4, 32) + _al(d_v // 8, 32) + _al(d_pad * 4, 32) + 512
    b += _al(2 * _al(max(R // 2, 1), 8) * 4, 32) + _al(5 * _al(max(R, 8), 8) * 4, 32)
    b += _al(2 * w_pad * in_size, 32) + _al(2 * W * 4, 32)
    b += 2 * _al(576 + 32, 32) + FP8_QUANTIZER_UB if fp8 else 2 * _al(d_pad * out_size, 32)
    return b


def reasons(inp) -> List[str]:
    out = []
    d = inp.width
    R = 2 * inp.rope_inv_freq.shape[0]
    if d % 8:
        out.append(f"entry width d={d} is not a multiple of 8 (32-B aligned fp32 rows)")
    if d > MAX_D:
        out.append(f"entry width d={d} > {MAX_D} (UB)")
    elif not out:
        a, b = inp.a, inp.b
        in_size = a.element_size() if a.dtype == b.dtype else 4
        fp8 = not isinstance(inp.out, torch.Tensor)
        ub = compress_ub_bytes(d, a.shape[1], in_size, R, fp8, 1 if fp8 else inp.out.element_size())
        if ub > UB_BYTES:
            out.append(f"entry width d={d} needs {ub} bytes of UB per AIV (> {UB_BYTES})")
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
