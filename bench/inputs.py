"""Random, realistic benchmark inputs (never zeros).

- Float tensors: normal samples (scaled like the model's: unit-RMS latent rows, indexer weights scaled
  by Di^-0.5 * Hi^-0.5), generated on the target device in slices so that large bf16 pools never need
  an fp32 copy of themselves.
- Paged pools: every sequence owns ``ceil(entries / page)`` pages; page ids come from a random
  permutation (a long-running server's free list is shuffled), so consecutive entries are not
  adjacent in memory across pages.
- Window indices: the valid ring slots of the last ``window`` positions, in position order.
- Compressed top-k indices: distinct random visible entries in random order (what a top-k sorted by
  score over random keys returns), mapped through the block table to physical slots; ``-1`` padding
  only where a token sees fewer than ``topk`` entries. HCA rows list every visible entry in order.
"""

from __future__ import annotations

import math
from typing import Optional, Tuple

import torch

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
MiB = 1 << 20
FP8 = "fp8"  # pool dtype name of the FP8 KV pool (longattn.Fp8KVPool, 584-B records, D = 512)
FP8_ROW_BYTES = 584


def float_dtype(name: str) -> torch.dtype:
    """The float dtype of a case's activations (q, new rows): the pool dtype, bf16 next to an FP8 pool."""
    return torch.bfloat16 if name == FP8 else DTYPES[name]


def row_bytes(name: str, dim: int) -> int:
    """Bytes of one pool row of ``dim`` values in pool dtype ``name`` (FP8: the 584-B record)."""
    return FP8_ROW_BYTES if name == FP8 else dim * DTYPES[name].itemsize


def is_fp8_pool(pool) -> bool:
    return not isinstance(pool, torch.Tensor) and hasattr(pool, "gather_rows")


def pool_page_size(pool) -> int:
    return int(pool.page_size) if is_fp8_pool(pool) else int(pool.shape[1])


def pool_num_pages(pool) -> int:
    return int(pool.num_pages) if is_fp8_pool(pool) else int(pool.shape[0])


def pool_nbytes(pool) -> int:
    t = pool.data if is_fp8_pool(pool) else pool
    return t.numel() * t.element_size()


def pool_rows(pool, slots: torch.Tensor, dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    """Rows ``[n, D]`` of valid ``slots`` of a float pool (its dtype) or an FP8 pool (dequantised, exact
    in bf16: e4m3 values times a power of two, bf16 rope values)."""
    if is_fp8_pool(pool):
        return pool.gather_rows(slots).to(dtype)
    return pool.reshape(-1, pool.shape[-1]).index_select(0, slots.long())


def fp8_pool_like(num_pages: int, page_size: int, device, g, rows: Optional[torch.Tensor] = None, scale=1.0):
    """An ``Fp8KVPool`` of ``num_pages`` pages; every slot holds a quantised random row (or ``rows``
    [num_pages * page_size, 512] when given), written in slices of 64K rows."""
    from longattn.cache.fp8 import HEAD_DIM, Fp8KVPool

    pool = Fp8KVPool.empty(num_pages, page_size, device)
    n = num_pages * page_size
    step = 1 << 16
    for s0 in range(0, n, step):
        s1 = min(n, s0 + step)
        src = rows[s0:s1] if rows is not None else randn((s1 - s0, HEAD_DIM), torch.float32, device, g, scale)
        pool.write_rows(torch.arange(s0, s1, device=device), src)
    return pool


def generator(device: torch.device, seed: int) -> torch.Generator:
    try:
        return torch.Generator(device=device).manual_seed(seed)
    except RuntimeError:  # a device without its own generator type
        return torch.Generator().manual_seed(seed)


def _gen_device(g: torch.Generator) -> torch.device:
    return torch.device(g.device.type) if hasattr(g, "device") else torch.device("cpu")


def randn(shape, dtype: torch.dtype, device: torch.device, g: torch.Generator, scale: float = 1.0) -> torch.Tensor:
    """Normal samples in ``dtype``, generated in slices of at most 16 Mi elements along dim 0."""
    out = torch.empty(shape, dtype=dtype, device=device)
    if out.numel() == 0:
        return out
    gdev = _gen_device(g)
    flat = out.view(out.shape[0], -1) if out.dim() > 1 else out.view(-1, 1)
    rows = max(1, (16 << 20) // max(1, flat.shape[1]))
    for r0 in range(0, flat.shape[0], rows):
        r1 = min(flat.shape[0], r0 + rows)
        x = torch.randn(r1 - r0, flat.shape[1], generator=g, device=gdev)
        if scale != 1.0:
            x.mul_(scale)
        flat[r0:r1] = x.to(device=device, dtype=dtype)
    return out


def randperm(n: int, device: torch.device, g: torch.Generator) -> torch.Tensor:
    return torch.randperm(n, generator=g, device=_gen_device(g)).to(device)


def paged_pool(
    num_seqs: int, entries: int, page_size: int, dim: int, dtype: torch.dtype, device, g, scale: float = 1.0
) -> Tuple[torch.Tensor, torch.Tensor]:
    """A pool ``[num_seqs * pages_per_seq, page_size, dim]`` and a shuffled block table
    ``[num_seqs, pages_per_seq]`` int32 (entry j of sequence b at slot bt[b, j // page] * page + j % page)."""
    pages_per_seq = max(1, -(-entries // page_size))
    num_pages = num_seqs * pages_per_seq
    pool = randn((num_pages, page_size, dim), dtype, device, g, scale)
    block_table = randperm(num_pages, device, g).view(num_seqs, pages_per_seq).to(torch.int32)
    return pool, block_table


def paged_kv_pool(
    num_seqs: int, entries: int, page_size: int, dim: int, dtype_name: str, device, g, scale: float = 1.0
):
    """``paged_pool`` for a pool dtype name: a float pool, or an ``Fp8KVPool`` (dim 512) for "fp8"."""
    if dtype_name != FP8:
        return paged_pool(num_seqs, entries, page_size, dim, DTYPES[dtype_name], device, g, scale)
    pages_per_seq = max(1, -(-entries // page_size))
    num_pages = num_seqs * pages_per_seq
    pool = fp8_pool_like(num_pages, page_size, device, g, scale=scale)
    block_table = randperm(num_pages, device, g).view(num_seqs, pages_per_seq).to(torch.int32)
    return pool, block_table


def slots_of(block_table: torch.Tensor, seq_ids: torch.Tensor, ids: torch.Tensor, page_size: int) -> torch.Tensor:
    """Physical slots of logical entry ids ``[T, K]`` (-1 stays -1)."""
    ids64 = ids.long()
    valid = ids64 >= 0
    safe = torch.where(valid, ids64, torch.zeros_like(ids64))
    rows = block_table.long()[seq_ids.long()]  # [T, pages]
    pages = torch.gather(rows, 1, safe // page_size)
    slots = pages * page_size + safe % page_size
    return torch.where(valid, slots, torch.full_like(slots, -1)).to(torch.int32)


def random_topk_ids(
    visible: torch.Tensor, topk: int, g: torch.Generator, order: str = "score", budget_bytes: int = 64 * MiB
) -> Tuple[torch.Tensor, torch.Tensor]:
    """For each token t: ``min(topk, visible[t])`` distinct ids in [0, visible[t]) (random order when
    ``order == "score"``, ascending when ``"sorted"``), -1 padded. Returns (ids [T, topk] int32,
    lengths [T] int32). Works in token slices of at most ``budget_bytes`` of random keys."""
    device = visible.device
    T = visible.shape[0]
    vis = visible.long()
    n_max = int(vis.max()) if T else 0
    ids = torch.full((T, topk), -1, dtype=torch.int64, device=device)
    lengths = torch.minimum(vis, torch.full_like(vis, topk)).to(torch.int32)
    if T == 0 or n_max == 0:
        return ids.to(torch.int32), lengths
    gdev = _gen_device(g)
    rows = max(1, budget_bytes // (4 * n_max))
    cols = torch.arange(n_max, device=device)
    k = min(topk, n_max)
    for t0 in range(0, T, rows):
        t1 = min(T, t0 + rows)
        keys = torch.rand(t1 - t0, n_max, generator=g, device=gdev).to(device)
        keys.masked_fill_(cols.unsqueeze(0) >= vis[t0:t1].unsqueeze(1), -1.0)  # invisible: never chosen first
        val, idx = torch.topk(keys, k, dim=1)  # random order among the visible ones
        idx = torch.where(val >= 0, idx, torch.full_like(idx, -1))
        if order == "sorted":
            idx = torch.where(idx >= 0, idx, torch.full_like(idx, n_max + 1)).sort(dim=1).values
            idx = torch.where(idx > n_max, torch.full_like(idx, -1), idx)
        ids[t0:t1, :k] = idx
    return ids.to(torch.int32), lengths


def all_visible_ids(visible: torch.Tensor, width: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """HCA: every visible entry, ascending: ids [T, width] (-1 beyond visible[t]) and lengths."""
    cols = torch.arange(width, device=visible.device).unsqueeze(0)
    ids = torch.where(cols < visible.long().unsqueeze(1), cols, torch.full_like(cols, -1))
    return ids.to(torch.int32), visible.long().clamp(max=width).to(torch.int32)


def unique_valid(x: torch.Tensor) -> int:
    """Number of distinct non-negative values of an index tensor."""
    v = x[x >= 0]
    return int(torch.unique(v).numel()) if v.numel() else 0


def human_tokens(n: int) -> str:
    """1048576 -> '1M', 131072 -> '128K', 1000 -> '1000'."""
    if n >= (1 << 20) and n % (1 << 20) == 0:
        return f"{n >> 20}M"
    if n >= 1024 and n % 1024 == 0:
        return f"{n >> 10}K"
    return str(n)


def parse_tokens(s: str) -> int:
    """'128K' -> 131072, '1M' -> 1048576, '4096' -> 4096."""
    s = s.strip().upper()
    mult = 1
    if s.endswith("K"):
        mult, s = 1 << 10, s[:-1]
    elif s.endswith("M"):
        mult, s = 1 << 20, s[:-1]
    val = float(s) * mult
    if val <= 0 or not math.isfinite(val) or val != int(val):
        raise ValueError(f"not a positive token count: {s!r}")
    return int(val)


def check_finite(x: Optional[torch.Tensor]) -> bool:
    return x is None or bool(torch.isfinite(x.float()).all())
