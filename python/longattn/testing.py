"""Helpers for tests and benchmarks: fill a layer's caches as if a long context had been processed.

``fill_random_context`` advances sequences through ``CacheManager.plan`` in chunks and writes random
rows through the public write op (``append_kv``) into every pool a decode step reads: the window
rows that stay in the window, every compressed entry, every indexer key and the compressor rings.
Running the real compressor over a 1M-token context would cost minutes on a CPU; the decode step
only reads the caches, so random contents exercise exactly the same code and memory traffic.
"""

from __future__ import annotations

from typing import Hashable, Sequence

import torch

from .cache.manager import ring_capacity
from .ops.append import append_kv


def _entry_slots(block_table_row: torch.Tensor, j: torch.Tensor, page_size: int) -> torch.Tensor:
    return block_table_row.long()[j // page_size] * page_size + j % page_size


def fill_random_context(
    layers,
    manager,
    seq_ids: Sequence[Hashable],
    context: int,
    *,
    chunk: int = 1 << 16,
    seed: int = 0,
) -> None:
    """Add ``seq_ids`` to ``manager`` and fill every layer's caches with ``context`` random tokens.

    ``layers`` is one ``HybridAttention`` or a list of them (all on ``manager``). Rows are standard
    normal (compressed entries and keys too: they are RMS-normalised in the model), states random.
    Sequences advance in steps of at most ``chunk`` tokens, fewer if the window pool has less room
    (a step's tokens hold window pages until the next step).
    """
    layers = list(layers) if isinstance(layers, (list, tuple)) else [layers]
    ps, held = manager.page_size, -(-manager.window // manager.page_size) + 1  # pages a sequence keeps
    room = (manager.window_alloc.num_free - held * len(seq_ids)) * ps
    if room < 1:
        raise ValueError(f"fill_random_context: the window pool has no room for {len(seq_ids)} more sequences")
    chunk = max(1, min(chunk, room))
    g = torch.Generator(device="cpu").manual_seed(seed)
    dev = manager.device

    def randn(n, d, dtype=torch.float32):
        return torch.randn(n, d, generator=g).to(dev, dtype)

    for s in seq_ids:
        manager.add_sequence(s)
        for p0 in range(0, context, chunk):
            n = min(chunk, context - p0)
            plan = manager.plan([s], [0, n])
            keep = plan.positions > p0 + n - 1 - manager.window  # window rows that survive this chunk
            for att in layers:
                L = att.layer
                append_kv(att.window_pool, randn(int(keep.sum()), L.head_dim), plan.window_slots[keep])
                r = L.compress_ratio
                if not r:
                    continue
                cp = plan.compressed[r]
                j = torch.arange(p0 // r, (p0 + n) // r, device=dev)
                slots = _entry_slots(cp.block_table[0], j, cp.page_size)
                append_kv(att.compressed_pool, randn(len(j), L.head_dim), slots)
                if att.index_pool is not None:
                    append_kv(att.index_pool, randn(len(j), L.index_head_dim), slots)
                ring = ring_capacity(r)
                s_ps = manager.state_page_size(r)
                last = torch.arange(max(p0, p0 + n - ring), p0 + n, device=dev) % ring
                state_slots = _entry_slots(cp.state_block_table[0], last, s_ps)
                for pool in (att.state_pool, att.index_state_pool):
                    if pool is not None:
                        append_kv(pool, randn(len(last), pool.shape[-1]), state_slots)
