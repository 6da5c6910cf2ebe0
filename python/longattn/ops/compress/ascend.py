"""``compress_kv`` and ``compress_pool`` on the Ascend C kernels (ascend_c/compress_kv,
ascend_c/compress_pool): their limits and arguments, for the ``ascend_sim`` and ``ascend`` backends.

The UB budgets mirror the C++ op_host code (``CompressKvUbBytes``, ``CompressPoolUbBytes`` and
``CompressPoolTilingCompute``); tests/ascend checks the mirrors against the extension's tiling."""

from __future__ import annotations

from typing import List

import torch

from ...backends.ascend import kernel_of
from ...cache.fp8 import Fp8KVPool
from ...cache.fp8_index import Fp8IndexKeyPool
from .. import pools
from ..sparse_attention.ascend import UB_BYTES

# --- compress_kv (ascend_c/compress_kv) -----------------------------------------------------------------
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
    if isinstance(inp.out, Fp8IndexKeyPool):
        out.append("the Ascend kernels do not write the FP8 index-key record (Fp8IndexKeyPool; reference / triton do)")
    elif not isinstance(inp.out, (torch.Tensor, Fp8KVPool)):
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


# --- compress_pool (ascend_c/compress_pool) -------------------------------------------------------------
POOL_MAX_TILE, POOL_MIN_TILE, POOL_TILE_ALIGN, POOL_MAX_ROWS = 512, 64, 64, 4095  # kPool* of the tiling header


def compress_pool_ub_bytes(tile: int, rows: int, in_size: int) -> int:
    """UB bytes of a compress_pool AIV (mirrors CompressPoolUbBytes in ascend_c/compress_pool/op_host)."""
    row_elems, d_v = _al(tile, 32 // in_size), _al(tile, 64)
    b = 2 * _al(2 * rows * row_elems * in_size, 32)
    if in_size != 4:
        b += _al(2 * rows * row_elems * 4, 32)
    return b + _al(6 * d_v * 4, 32) + _al(d_v // 8, 32) + 2 * _al(tile * 4, 32)


def pool_tiling(S: int, width: int, ratio: int, overlap: bool, in_size: int, vector_cores: int) -> dict:
    """The compress_pool tiling (mirrors CompressPoolTilingCompute): channel tiles, chunk rows, tasks,
    launched AIV cores and UB bytes; ``block_dim`` 0 when there is no entry."""
    d = width // 2 if overlap else width
    n = S // ratio
    if n == 0 or d == 0 or vector_cores == 0:
        return dict(block_dim=0, tile_dim=0, num_tiles=0, chunk_rows=0, num_tasks=0, ub_bytes=0)
    tiles = -(-d // POOL_MAX_TILE)
    if n < vector_cores:
        tiles = max(tiles, min(-(-vector_cores // n), -(-d // POOL_MIN_TILE)))
    tile = d if tiles == 1 else _al(-(-d // tiles), POOL_TILE_ALIGN)
    num_tiles = -(-d // tile)
    fixed = compress_pool_ub_bytes(tile, 0, in_size)
    per_row = compress_pool_ub_bytes(tile, 1, in_size) - fixed
    fit = (UB_BYTES - fixed) // per_row if UB_BYTES > fixed else 0
    rows = max(1, min((2 if overlap else 1) * ratio, POOL_MAX_ROWS, fit))
    tasks = n * num_tiles
    return dict(block_dim=min(vector_cores, tasks), tile_dim=tile, num_tiles=num_tiles, chunk_rows=rows,
                num_tasks=tasks, ub_bytes=compress_pool_ub_bytes(tile, rows, in_size))  # fmt: skip


def pool_reasons(inp) -> List[str]:
    """What the compress_pool kernel declines. Every d and ratio fits the UB (channel tiles of at most
    512, chunks of as many slots as fit); a, b of any strides (rows read in place or copied) and dtypes
    (different ones widened to fp32)."""
    out = []
    for name, x in (("a", inp.a), ("b", inp.b)):
        if x.numel() >= 2**31:
            out.append(f"`{name}` has 2**31 or more elements (32-bit sizes in the tiling)")
    return out


def run_pool(backend: str, inp) -> torch.Tensor:
    return kernel_of(backend, "compress_pool")(inp.a, inp.b, int(inp.ratio), bool(inp.overlap))
