"""Index rows that make the Ascend sparse-attention gather's runs of consecutive slots break in every way,
and the number of MTE2 DMAs the gather issues for them, derived from its documented structure
(ascend_c/sparse_attention/README.md, "V0 gather" and "Gather conversions"), not from the kernel.

The gather of one task (token, head group) walks the token's valid keys in order (stream 0's valid
positions, then stream 1's) in blocks of ``block_keys``; each of the two AIVs takes half of a block's rows
in tiles of ``gather_rows``; a tile splits into runs of rows of one stream. Per run:

* rows of the compute dtype: one DMA per run of consecutive slots;
* converted rows (16-bit rows under an fp32 computation, FP8 records), in chunks of ``cvt_rows`` rows from
  the start of the stream's run: per run of consecutive slots inside a chunk (for FP8 pools also inside
  one page: slot s is in page s // page_size), one DMA for a 16-bit run, three for an FP8 run (nope bytes,
  rope bytes, scale bytes).

A run of consecutive slots: each slot its predecessor + 1 (a repeated or a descending slot ends it).

The emulator's MTE2 operation count also holds the MTE2-side queue and flag operations: the gather tile's
(the same for every order of the same keys) and one ``EnQue`` per conversion chunk; the functions below
return the chunks beside the DMAs.
"""

from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import torch

# How a stream's rows reach the tile: ("same", None) rows of the compute dtype, ("widen", None) 16-bit
# rows widened to fp32, ("fp8", page_size) FP8 records.
PoolWay = Tuple[str, Optional[int]]


def pool_way(pool, compute_dtype: torch.dtype) -> PoolWay:
    if isinstance(pool, torch.Tensor):
        return ("same", None) if pool.dtype == compute_dtype else ("widen", None)
    return ("fp8", pool.page_size)


def slot_runs(slots: Sequence[int], page: Optional[int] = None) -> int:
    """Runs of consecutive slots in ``slots`` (with ``page``: runs also end where a page starts)."""
    if not slots:
        return 0
    n = 1
    for a, b in zip(slots, slots[1:]):
        if not (b == a + 1 and (page is None or b % page != 0)):
            n += 1
    return n


def valid_keys(idx_row: torch.Tensor, num_slots: int, length: Optional[int] = None) -> List[int]:
    """The slots of the valid entries of one index row (positions < length, 0 <= slot < num_slots)."""
    row = idx_row.tolist()[: length if length is not None else len(idx_row)]
    return [s for s in row if 0 <= s < num_slots]


def task_gather_dmas(
    keys: Sequence[Tuple[int, int]], ways: Sequence[PoolWay], tiling: dict, block_keys: int
) -> Tuple[int, int]:
    """(MTE2 DMAs, conversion chunks) of the gather of one task over ``keys`` [(stream, slot)] (both AIVs
    together)."""
    g, cvt, half = tiling["gather_rows"], tiling["cvt_rows"], block_keys // 2
    dmas = chunks = 0
    for b0 in range(0, len(keys), block_keys):
        block = keys[b0 : b0 + block_keys]
        nb = len(block)
        for sub in (0, 1):
            lo = min(nb, sub * half)
            hi = min(nb, lo + half)
            for r0 in range(lo, hi, g):
                tile = block[r0 : min(hi, r0 + g)]
                r = 0
                while r < len(tile):
                    s = tile[r][0]
                    e = r
                    while e < len(tile) and tile[e][0] == s:
                        e += 1
                    slots = [slot for _, slot in tile[r:e]]
                    kind, page = ways[s]
                    if kind == "same":
                        dmas += slot_runs(slots)
                    else:
                        per_run = 3 if kind == "fp8" else 1
                        for c in range(0, len(slots), cvt):
                            dmas += per_run * slot_runs(slots[c : c + cvt], page if kind == "fp8" else None)
                            chunks += 1
                    r = e
    return dmas, chunks


def launch_gather_dmas(index_rows, pools, tiling: dict, block_keys: int, compute_dtype: torch.dtype) -> Tuple[int, int]:
    """(MTE2 DMAs, conversion chunks) of the gathers of a launch: ``index_rows`` [idx [T, K]] (one per
    stream, all positions used), ``pools`` the streams' pools; every head group of a token gathers the
    token's keys."""
    ways = [pool_way(p, compute_dtype) for p in pools]
    sizes = [p.shape[0] if isinstance(p, torch.Tensor) else p.num_slots for p in pools]
    dmas = chunks = 0
    for t in range(index_rows[0].shape[0]):
        keys = [(s, slot) for s, idx in enumerate(index_rows) for slot in valid_keys(idx[t], sizes[s])]
        d, c = task_gather_dmas(keys, ways, tiling, block_keys)
        dmas, chunks = dmas + tiling["head_groups"] * d, chunks + tiling["head_groups"] * c
    return dmas, chunks


def broken_runs(num_slots: int, page: int, seed: int = 0) -> torch.Tensor:
    """One index row (int64) whose valid slots form runs that break in every way the gather knows: runs
    across one and two page ends, a run ending at the pool's last slot, invalid entries (-1, one past the
    end, a page past the pool) between runs, repeated slots (also inside a run), descending slots, runs
    of every length from 1 to 9 at offsets that are not multiples of the decode chunk, and a shuffled tail."""
    N, p = num_slots, page
    g = torch.Generator().manual_seed(seed)
    segs = [
        list(range(max(p - 3, 0), min(p + 6, N))),  # across the first page end
        [-1],
        list(range(max(N - 7, 0), N)),  # ends at the pool's last slot
        [N],
        list(range(max(2 * p - 2, 0), min(4 * p + 2, N))),  # across two or more page ends
        [5 % N] * 3,  # repeated
        [min(12, N - 1) - i for i in range(min(5, N))],  # descending
        [N + p, -(2**31)],
        [1 % N, 2 % N, 2 % N, 3 % N, 4 % N, 5 % N],  # a run, a repeat, a run
    ]
    start = 3
    for length in range(1, 10):  # runs of every length, each after an invalid entry
        if start + length <= N:
            segs.append(list(range(start, start + length)))
            segs.append([-1])
        start = (start + 2 * length + 1) % max(N - 10, 1)
    segs.append(torch.randint(0, N, (11,), generator=g).tolist())
    return torch.tensor([s for seg in segs for s in seg], dtype=torch.int64)
