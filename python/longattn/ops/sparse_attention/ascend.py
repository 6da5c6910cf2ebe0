"""``sparse_attention`` on the Ascend C kernel (ascend_c/sparse_attention): what its tiling supports,
and the kernel's arguments. Used by both the ``ascend_sim`` (emulator) and ``ascend`` (NPU) backends,
which run the same kernel source; imports neither the extension nor torch_npu until a call runs.

The limits mirror ascend_c/sparse_attention/op_host/sparse_attention_tiling.h (tests/ascend checks
the mirror against the C++ tiling for every D and H).
"""

from __future__ import annotations

from typing import List, Optional

import torch

from ...backends.ascend import kernel_of

SA_BLOCK_KEYS = 64
SA_MAX_HEADS_PER_TASK = 64
SA_OUT_ROWS = 4
UB_BYTES = 192 * 1024 - 8 * 1024 - 256  # A2/A3 unified buffer, less the kernel's reserved bytes
L1_BYTES, L0A_BYTES, L0C_BYTES = 512 * 1024, 64 * 1024, 128 * 1024
_ELEM = {torch.float32: 4, torch.bfloat16: 2, torch.float16: 2}


def _al(x: int, a: int) -> int:
    return -(-x // a) * a


def sa_ub_bytes(mh: int, D: int, sz: int, g: int, r: int) -> int:
    mh8 = _al(max(mh, 1), 8)
    b = _al(mh * D * 4, 32) + _al(mh * SA_BLOCK_KEYS * 4, 32) + _al(mh * SA_BLOCK_KEYS * sz, 32)
    b += _al(mh * SA_BLOCK_KEYS * 4, 32) + _al(_al(mh * SA_BLOCK_KEYS, 256) // 8, 32)
    b += 10 * 64 * 4 + 3 * _al(mh8 * 8 * 4, 32)
    b += 2 * _al(r * D * 4, 32) + 2 * _al(r * D * sz, 32) + 2 * _al(mh8 * 4, 32) + 2 * _al(g * D * sz, 32)
    if sz == 4:
        b += 2 * _al(D * g * 4, 32)
    return b


def sa_l1_bytes(mp: int, D: int, sz: int) -> int:
    b = mp * D * sz + 2 * SA_BLOCK_KEYS * D * sz + mp * SA_BLOCK_KEYS * sz
    return b + (D * SA_BLOCK_KEYS * 4 if sz == 4 else 0)


def sa_heads_per_task(H: int, D: int, dtype: torch.dtype) -> int:
    """Heads per task of the sparse_attention tiling (0: no tiling fits this D)."""
    if H <= 0 or D <= 0 or D % 64 or dtype not in _ELEM:
        return 0
    sz = _ELEM[dtype]
    k_tile = d_chunk = min(D, 128 if sz == 4 else 256)
    g = 8 if sz == 4 else 16
    mg = min(SA_MAX_HEADS_PER_TASK, H)
    while True:
        mp, mh = _al(mg, 16), -(-mg // 2)
        if (
            sa_ub_bytes(mh, D, sz, g, SA_OUT_ROWS) <= UB_BYTES
            and sa_l1_bytes(mp, D, sz) <= L1_BYTES
            and 2 * mp * max(k_tile, SA_BLOCK_KEYS) * sz <= L0A_BYTES
            and 2 * mp * max(d_chunk, SA_BLOCK_KEYS) * 4 <= L0C_BYTES
        ):
            return mg
        if mg <= 16:
            return 0
        mg = (mg - 1) // 16 * 16


def _pool_problem(name: str, pool, dtype: torch.dtype) -> Optional[str]:
    if not isinstance(pool, torch.Tensor):
        return f"`{name}` is a {type(pool).__name__}: the kernel reads float tensor pools only (FP8 pools: not yet)"
    if pool.dtype != dtype:
        return f"`{name}` dtype {str(pool.dtype).replace('torch.', '')} differs from q's (the kernel takes one dtype)"
    if pool.shape[0] >= 2**31:
        return f"`{name}` has {pool.shape[0]} rows (int32 slots)"
    return None


def reasons(inp) -> List[str]:
    out = []
    T, H, D = inp.q.shape
    if D % 64:
        out.append(f"head dim D={D} is not a multiple of 64 (64-column vector repeats and 32-B rows)")
    elif sa_heads_per_task(H, D, inp.q.dtype) == 0:
        out.append(f"head dim D={D} does not fit the on-chip buffers for {str(inp.q.dtype).replace('torch.', '')}")
    for name, pool in (("kv", inp.kv), ("extra_kv", inp.extra_kv)):
        if pool is not None:
            problem = _pool_problem(name, pool, inp.q.dtype)
            if problem:
                out.append(problem)
    return out


def run(backend: str, inp):
    """Run on the kernel build of ``backend`` ("ascend_sim": the emulator; "ascend": the NPU library)."""
    out, lse = kernel_of(backend, "sparse_attention")(
        inp.q, inp.kv, inp.indices, inp.topk_length, inp.extra_kv, inp.extra_indices, inp.extra_topk_length,
        inp.attn_sink, float(inp.softmax_scale),
    )  # fmt: skip
    return out, lse
