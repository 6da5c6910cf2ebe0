"""``sparse_attention`` on the Ascend C kernel (ascend_c/sparse_attention): what its tiling supports,
and the kernel's arguments. Used by both the ``ascend_sim`` (emulator) and ``ascend`` (NPU) backends,
which run the same kernel source; imports neither the extension nor torch_npu until a call runs.

Pools: float tensors of any float dtype and ``Fp8KVPool`` (D = 512), in any mix over the two streams.
The kernel computes in q's dtype when every pool converts into it exactly (the same dtype; FP8 records
for bf16 queries), else in fp32 (q widened and out rounded once by the host: fp16 queries over FP8
records, pools of another float dtype), so the keys it uses are always the reference's fp32 values. The
split-KV path (small batches) runs in the same compute dtype and has the kernel write its partial outputs
as fp32 rows (``out_f32``).

The limits mirror ascend_c/sparse_attention/op_host/sparse_attention_tiling.h (tests/ascend checks
the mirror against the C++ tiling for every D, H and pool mix).
"""

from __future__ import annotations

from typing import List, Optional, Sequence, Tuple, Union

import torch

from ...backends.ascend import ai_cores, kernel_of
from ...cache import fp8
from .. import pools
from ..combine import ascend as combine_ascend

SA_BLOCK_KEYS = 64  # the smallest key block; the tiling takes 256 or 128 where they fit
SA_MAX_BLOCK_KEYS = 256
SA_MAX_HEADS_PER_TASK = 64
SA_OUT_ROWS = 4
SA_CVT_ROWS = 4  # rows per conversion chunk of the gather (16-bit rows -> fp32, FP8 records)
UB_BYTES = 192 * 1024 - 8 * 1024 - 256  # A2/A3 unified buffer, less the kernel's reserved bytes
L1_BYTES, L0A_BYTES, L0B_BYTES, L0C_BYTES = 512 * 1024, 64 * 1024, 64 * 1024, 128 * 1024
_ELEM = {torch.float32: 4, torch.bfloat16: 2, torch.float16: 2}
FP8 = "fp8"  # the pool kind of an Fp8KVPool (float pools: their dtype)
PoolKind = Union[torch.dtype, str]
# DataTypeCode of the kernels (ascend_c/common/longattn_types.h)
DTYPE_CODE = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2, FP8: 3}


def _al(x: int, a: int) -> int:
    return -(-x // a) * a


def fp8_dequant_ub_bytes(rows: int) -> int:
    """UB of the vector-core FP8 dequantiser (ascend_c/common/fp8_dequant.h) for chunks of ``rows``:
    raw records x2 (608 B each), split / value scratch, offsets and their permutation, the tables."""
    return 2 * rows * (448 + 32 + 128) + rows * 512 * 4 + 32 + 2 * rows * 520 * 4 + 4096


def sa_ub_bytes(
    mh: int,
    D: int,
    sz: int,
    g: int,
    r: int,
    cvt: bool = False,
    fp8_pool: bool = False,
    nb: int = SA_BLOCK_KEYS,
    out_sz: Optional[int] = None,
) -> int:
    """AIV UB of the kernel (mirrors sa_detail::UbBytes): mh rows, blocks of nb keys, g-row gather tiles,
    output chunks of out_sz-byte elements (default sz; 4 for the split-KV partials' fp32 out)."""
    osz = sz if out_sz is None else out_sz
    mh8 = _al(max(mh, 1), 8)
    b = _al(mh * D * 4, 32) + _al(mh * nb * 4, 32) + _al(mh * nb * sz, 32)
    b += _al(nb * 4, 32) + _al(_al(nb, 256) // 8, 32)
    b += 10 * 64 * 4 + 3 * _al(mh8 * 8 * 4, 32)
    b += 2 * _al(r * D * 4, 32) + 2 * _al(r * D * osz, 32) + 2 * _al(mh8 * 4, 32) + 2 * _al(g * D * sz, 32)
    if sz == 4:
        b += 2 * _al(D * g * 4, 32)
    if cvt:
        b += 2 * _al(SA_CVT_ROWS * D * 2, 32)
    if fp8_pool:
        b += fp8_dequant_ub_bytes(SA_CVT_ROWS)
    return b


def sa_l1_bytes(mp: int, D: int, sz: int, nb: int = SA_BLOCK_KEYS) -> int:
    b = mp * D * sz + 2 * nb * D * sz + mp * nb * sz
    return b + (D * nb * 4 if sz == 4 else 0)


def sa_slice(D: int, sz: int, nb: int) -> int:
    """kTile = dChunk: the D slice of one Mmad, a [nb, slice] key tile per (double-buffered) L0B buffer."""
    return min(D, L0B_BYTES // 2 // (nb * sz))


def _sa_fits(mg: int, D: int, sz: int, nb: int, g: int, cvt: bool, has_fp8: bool, osz: int) -> bool:
    mp, mh, sl = _al(mg, 16), -(-mg // 2), sa_slice(D, sz, nb)
    return (
        sa_ub_bytes(mh, D, sz, g, SA_OUT_ROWS, cvt, has_fp8, nb, osz) <= UB_BYTES
        and sa_l1_bytes(mp, D, sz, nb) <= L1_BYTES
        and 2 * mp * max(sl, nb) * sz <= L0A_BYTES
        and 2 * sl * nb * sz <= L0B_BYTES
        and 2 * mp * max(sl, nb) * 4 <= L0C_BYTES
    )


def compute_dtype(q_dtype: torch.dtype, kinds: Sequence[PoolKind]) -> torch.dtype:
    """The dtype the kernel computes in (mirrors SparseAttentionComputeDtype): q's when every pool
    converts into it exactly, else fp32."""
    fits = all(k == q_dtype or (q_dtype == torch.bfloat16 and k == FP8) for k in kinds)
    return q_dtype if fits else torch.float32


def sa_tiling(
    H: int,
    D: int,
    dtype: torch.dtype,
    kinds: Sequence[PoolKind] = (),
    max_block_keys: int = SA_MAX_BLOCK_KEYS,
    out_f32: bool = False,
) -> Optional[dict]:
    """The sparse_attention tiling's choices (mirrors SparseAttentionTilingCompute) for q of ``dtype`` over
    pools of ``kinds`` (default: one pool of q's dtype): heads_per_task (Mg, the largest that fits with
    64-key blocks), block_keys (the largest of 256 / 128 <= max_block_keys that fits at that Mg, else 64),
    gather_rows, k_tile (= d_chunk), ub_bytes, l1_bytes. ``out_f32``: out written as fp32 rows (the
    split-KV partials; fp32 output chunks in the UB). None: no tiling fits this D."""
    if H <= 0 or D <= 0 or D % 64 or dtype not in _ELEM:
        return None
    dt = compute_dtype(dtype, kinds)
    if any(k == FP8 for k in kinds) and D != fp8.HEAD_DIM:
        return None
    cvt = any(k != dt and k in (torch.bfloat16, torch.float16) for k in kinds)
    has_fp8 = any(k == FP8 for k in kinds)
    sz = _ELEM[dt]
    osz = 4 if out_f32 else sz
    g0 = 8 if sz == 4 else 16
    mg = min(SA_MAX_HEADS_PER_TASK, H)
    while not _sa_fits(mg, D, sz, SA_BLOCK_KEYS, g0, cvt, has_fp8, osz):
        if mg <= 16:
            return None
        mg = (mg - 1) // 16 * 16
    nb, g = SA_BLOCK_KEYS, g0
    for cand in (256, 128):
        fit = [gr for gr in (g0, g0 // 2) if gr >= 8 and _sa_fits(mg, D, sz, cand, gr, cvt, has_fp8, osz)]
        if cand <= max_block_keys and fit:
            nb, g = cand, fit[0]
            break
    mp, mh = _al(mg, 16), -(-mg // 2)
    return {
        "heads_per_task": mg,
        "block_keys": nb,
        "gather_rows": g,
        "k_tile": sa_slice(D, sz, nb),
        "ub_bytes": sa_ub_bytes(mh, D, sz, g, SA_OUT_ROWS, cvt, has_fp8, nb, osz),
        "l1_bytes": sa_l1_bytes(mp, D, sz, nb),
    }


def sa_heads_per_task(H: int, D: int, dtype: torch.dtype, kinds: Sequence[PoolKind] = (), out_f32: bool = False) -> int:
    """Heads per task of the sparse_attention tiling for q of ``dtype`` over pools of ``kinds``
    (default: one pool of q's dtype; ``out_f32``: fp32 out rows); 0: no tiling fits this D."""
    t = sa_tiling(H, D, dtype, kinds, out_f32=out_f32)
    return t["heads_per_task"] if t else 0


def pool_kind(pool) -> Optional[PoolKind]:
    """A pool's kind for the kernel: its dtype (float tensors), ``FP8`` (Fp8KVPool), None (other)."""
    if isinstance(pool, torch.Tensor):
        return pool.dtype
    return FP8 if isinstance(pool, fp8.Fp8KVPool) else None


def _pool_kind(name: str, pool, D: int) -> Tuple[Optional[PoolKind], Optional[str]]:
    """(kind, None) of a pool the kernel reads, or (None, why not)."""
    if isinstance(pool, torch.Tensor):
        if pool.shape[0] >= 2**31:
            return None, f"`{name}` has {pool.shape[0]} rows (int32 slots)"
        return pool.dtype, None
    if isinstance(pool, fp8.Fp8KVPool):
        if D != fp8.HEAD_DIM:
            return None, f"`{name}` is an FP8 pool of {fp8.HEAD_DIM}-dim records but q has D={D}"
        if pool.num_slots >= 2**31:
            return None, f"`{name}` has {pool.num_slots} FP8 slots (int32 slots)"
        if pool.page_bytes >= 2**31:
            return None, f"`{name}` has FP8 pages of {pool.page_bytes} bytes (int32 page sizes)"
        return FP8, None
    return None, f"`{name}` is a {type(pool).__name__}: the kernel reads float tensor pools and Fp8KVPool only"


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def reasons(inp) -> List[str]:
    out: List[str] = []
    kinds: List[PoolKind] = []
    T, H, D = inp.q.shape
    for name, pool in (("kv", inp.kv), ("extra_kv", inp.extra_kv)):
        if pool is not None:
            kind, problem = _pool_kind(name, pool, D)
            if kind is None:
                out.append(problem or f"`{name}`: unsupported pool")
            else:
                kinds.append(kind)
    if D % 64:
        out.append(f"head dim D={D} is not a multiple of 64 (64-column vector repeats and 32-B rows)")
    elif not out and sa_heads_per_task(H, D, inp.q.dtype, kinds) == 0:
        dt = compute_dtype(inp.q.dtype, kinds)
        how = "" if dt == inp.q.dtype else " (the kernel computes in fp32 for these pools)"
        out.append(f"head dim D={D} does not fit the on-chip buffers for {_dtype_name(dt)}{how}")
    return out


def run(backend: str, inp):
    """Run on the kernel build of ``backend`` ("ascend_sim": the emulator; "ascend": the NPU library)."""
    S = split_count(inp, ai_cores(backend))
    if S > 1:
        return _split_kv(backend, inp, S)
    return _launch(backend, inp.q, inp, inp.indices, inp.topk_length, inp.extra_indices, inp.extra_topk_length,
                   inp.attn_sink)  # fmt: skip


def _launch(backend: str, q, inp, indices, topk_length, extra_indices, extra_topk_length, attn_sink,
            out_f32: bool = False):  # fmt: skip
    """One kernel launch. ``out_f32``: out as fp32 rows, unrounded, whatever the compute dtype (the split-KV
    partials); else out in q's dtype."""
    kv, kv_page = pools.to_schema(inp.kv)
    extra, extra_page = pools.to_schema(inp.extra_kv)
    return kernel_of(backend, "sparse_attention")(
        q, kv, kv_page, indices, topk_length, extra, extra_page, extra_indices, extra_topk_length, attn_sink,
        float(inp.softmax_scale), out_f32,
    )  # fmt: skip


# Split-KV for small batches: a task is (token, head group), so a decode step with few tokens uses few of
# the chip's AI cores (T = 1, H = 64: 1 of 24). Each token's index rows are then cut into S column chunks,
# every (token, chunk) runs as a token of its own without the sink, in q's compute dtype (bf16 for V4: the
# unsplit path's arithmetic, P rounded for P.V, fp32 accumulation) with the out_f32 flag: the kernel writes
# fp32 partial outputs acc * factor, unrounded, [T * S, H, D], i.e. [T, S, H, D]; and one launch of the
# merge_partial_states kernel (ascend_c/combine) merges the S partial states of every row, applies the sink
# and rounds to q's dtype once. S is at most that kernel's MAX_PARTIALS (64). Shapes alone decide (no host
# sync).
SPLIT_MIN_KEYS = 1024  # keys per chunk at least: a chunk's fp32 partial [H, D] must be worth its keys


def split_count(inp, cores: int) -> int:
    """Key chunks per token for ``sparse_attention`` (1: no split)."""
    T, H, D = inp.q.shape
    kinds = [pool_kind(p) for p in (inp.kv, inp.extra_kv) if p is not None]
    mg = sa_heads_per_task(H, D, inp.q.dtype, [k for k in kinds if k is not None], out_f32=True)
    if T == 0 or mg == 0:
        return 1
    tasks = T * -(-H // mg)
    K = inp.indices.shape[1] + (inp.extra_indices.shape[1] if inp.extra_indices is not None else 0)
    return max(1, min(cores // tasks, K // SPLIT_MIN_KEYS, combine_ascend.MAX_PARTIALS))


def _chunks(idx: torch.Tensor, length: Optional[torch.Tensor], S: int):
    """Index rows [T, K] -> [T * S, c] column chunks (-1 padded) and their lengths (None: all positions)."""
    T, K = idx.shape
    c = max(1, -(-K // S))
    rows = torch.nn.functional.pad(idx, (0, S * c - K), value=-1).reshape(T * S, c)
    if length is None:
        return rows, None
    starts = torch.arange(S, device=idx.device) * c
    return rows, (length.long()[:, None] - starts[None, :]).clamp(0, c).reshape(T * S)


def _split_kv(backend: str, inp, S: int):
    T, H, D = inp.q.shape
    q = inp.q.repeat_interleave(S, 0)  # q's own dtype: the kernel computes in it where the pools allow
    idx, length = _chunks(inp.indices, inp.topk_length, S)
    eidx = elen = None
    if inp.extra_indices is not None:
        eidx, elen = _chunks(inp.extra_indices, inp.extra_topk_length, S)
    out, lse = _launch(backend, q, inp, idx, length, eidx, elen, None, out_f32=True)  # [T*S, H, D] fp32, [T*S, H]
    return combine_ascend.run_merge_partials(
        backend, out.view(T, S, H, D), lse.view(T, S, H), inp.attn_sink, inp.q.dtype
    )
