"""Decode context parallelism of one CSA layer: measured on this machine's ranks, modelled for GPUs and NPUs.

    torchrun --nproc-per-node 2 -m bench.cp_decode [--context 131072] [--topk 512] [--json PATH]
    python -m bench.cp_decode            # one process: the single-device run and the model only

Every rank builds the same layer state (one sequence of ``--context`` tokens: ``context // 4``
compressed entries with their index keys, a 128-token window) and keeps its pages (``PageShards``).
Measured, per decode step (strong scaling: every process computes with ``cores // world`` threads):
the single-device ``indexer_topk`` + ``sparse_attention`` (rank 0 alone, the others asleep) and the
CP step (``cp_indexer_topk`` + ``cp_sparse_attention`` on every rank); the ids must equal the
single-device ids bit for bit and the output agree within fp32 rounding. Modelled (``model``,
labelled as such): the same step at 128K and 1M tokens on 8 GPUs over NVLink and 16 NPUs over HCCS,
from the bytes each rank reads and receives.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from typing import Dict, List

import longattn
import torch
import torch.distributed as dist
from longattn.distributed import PageShards, cp_indexer_topk, cp_sparse_attention, decode_comm_bytes

# Assumed machine parameters of the model (public spec sheets, not measured here): HBM bandwidth,
# per-GPU/NPU link bandwidth one way, the latency of one small all-gather, and the ranks.
MACHINES = {
    "8x H200 (NVLink 4)": {"world": 8, "hbm_Bps": 4.8e12, "link_Bps": 450e9, "collective_s": 15e-6},
    "16x Ascend 910B (HCCS)": {"world": 16, "hbm_Bps": 1.6e12, "link_Bps": 196e9, "collective_s": 40e-6},
}
# V4 CSA decode shapes: 64 heads of 512 (one latent KV head), indexer 64 x 128 with FP8 keys,
# compressed entries every 4 tokens stored as 584-byte FP8 records, a 128-token window.
V4 = {"heads": 64, "head_dim": 512, "index_heads": 64, "index_dim": 128, "ratio": 4, "window": 128}
FP8_RECORD_BYTES = 584
INDEX_KEY_BYTES = 128 + 4  # FP8 key + its fp32 scale


def model_step(context: int, topk: int, machine: Dict[str, float], tokens: int = 1) -> Dict[str, float]:
    """Seconds of one CSA decode step of ``tokens`` sequences (one token each, ``context`` tokens of
    context each) on one device and on ``world`` ranks. Memory-bound model: the indexer reads every
    index key once, attention reads topk + window records; CP adds two all-gathers (latency + bytes)
    and divides the reads. Also the compressed KV each sequence holds per layer (capacity)."""
    n = context // V4["ratio"]
    read_indexer = tokens * n * INDEX_KEY_BYTES
    read_attention = tokens * (topk + V4["window"]) * FP8_RECORD_BYTES
    single = (read_indexer + read_attention) / machine["hbm_Bps"]
    w = int(machine["world"])
    comm = decode_comm_bytes(w, tokens, topk, V4["heads"], V4["head_dim"], out_bytes=2)
    per_rank = (read_indexer / w + read_attention / w) / machine["hbm_Bps"]
    cp = per_rank + 2 * machine["collective_s"] + (comm["topk_keys"] + comm["partials"]) / machine["link_Bps"]
    return {
        "single_device_s": single,
        "cp_s": cp,
        "speedup": single / cp,
        "cp_comm_bytes_received_per_rank": comm["total"],
        "compressed_kv_bytes_per_sequence_per_layer": n * (FP8_RECORD_BYTES + INDEX_KEY_BYTES),
    }


def build(context: int, page: int, seed: int = 0):
    """The layer state of one sequence (same on every rank): pools paged by ``page`` entries."""
    g = torch.Generator().manual_seed(seed)
    n = context // V4["ratio"]
    pages = -(-n // page)
    perm = torch.randperm(pages, generator=g).to(torch.int32)
    return {
        "index_k": torch.randn(pages, page, V4["index_dim"], generator=g),
        "kv": torch.randn(pages, page, V4["head_dim"], generator=g),
        "block_table": perm.view(1, pages),
        "window": torch.randn(V4["window"], V4["head_dim"], generator=g),
        "n": n,
    }


def _time(fn, steps: int, barrier: bool) -> float:
    samples: List[float] = []
    for _ in range(steps + 1):  # the first call warms up
        if barrier:
            dist.barrier()
        t0 = time.perf_counter()
        fn()
        if barrier:
            dist.barrier()
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples[1:])


def _sleep_until_all_arrive(rank: int) -> None:
    """A barrier whose waiters sleep: rank 0 times the single device alone while the other ranks
    wait here (a blocking gloo collective keeps a core busy and would slow rank 0 several times)."""
    work = dist.barrier(async_op=True)
    while rank != 0 and not work.is_completed():
        time.sleep(0.01)
    work.wait()


def init_ranks():
    """(distributed, rank, world): a gloo group when started by torchrun with several ranks, else one process."""
    distributed = "RANK" in os.environ and int(os.environ.get("WORLD_SIZE", "1")) > 1
    if distributed:
        dist.init_process_group("gloo")
    rank, world = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)
    return distributed, rank, world


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--context", type=int, default=131072, help="tokens of the sequence (default 131072)")
    ap.add_argument("--topk", type=int, default=512)
    ap.add_argument("--tokens", type=int, default=1, help="decode tokens per step (same sequence)")
    ap.add_argument("--page", type=int, default=64, help="entries per page")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--json", default=None, help="write the results here (rank 0)")
    a = ap.parse_args(argv)

    distributed, rank, world = init_ranks()
    cores = os.cpu_count() or 1
    T, H, D = a.tokens, V4["heads"], V4["head_dim"]
    g = torch.Generator().manual_seed(1)
    q = torch.randn(T, H, D, generator=g)
    q_idx = torch.randn(T, V4["index_heads"], V4["index_dim"], generator=g)
    weights = torch.randn(T, V4["index_heads"], generator=g)
    sink = torch.randn(H, generator=g)
    s = build(a.context, a.page)
    visible = torch.full((T,), s["n"], dtype=torch.int32)
    seq_ids = torch.zeros(T, dtype=torch.int32)
    window_idx = torch.arange(V4["window"], dtype=torch.int32).expand(T, -1).contiguous()
    one = PageShards(1, 0, a.page)

    def single():
        ids, lengths = longattn.indexer_topk(q_idx, weights, s["index_k"], visible, a.topk,
                                             block_table=s["block_table"], seq_ids=seq_ids)  # fmt: skip
        slots = one.local_slots(ids, s["block_table"], seq_ids)
        out, _ = longattn.sparse_attention(q, s["window"], window_idx, extra_kv=s["kv"].view(-1, D),
                                           extra_indices=slots, extra_topk_length=lengths, attn_sink=sink)  # fmt: skip
        return ids, out

    result: Dict[str, object] = {"context": a.context, "topk": a.topk, "tokens": T, "world": world,
                                 "cores": cores, "page": a.page}  # fmt: skip
    ids_1 = torch.empty(T, a.topk, dtype=torch.int32)
    out_1 = torch.empty(T, H, D)
    # Strong scaling: the single device gets one rank's share of the cores (T(1) of T(1) / T(world));
    # every rank computes with the same share.
    torch.set_num_threads(max(1, cores // world))
    if rank == 0:
        ids_1, out_1 = single()
        result["single_device_ms"] = 1e3 * _time(single, a.steps, barrier=False)
    if distributed:
        _sleep_until_all_arrive(rank)
        dist.broadcast(ids_1, 0)
        dist.broadcast(out_1, 0)
        shards = PageShards(world, rank, a.page)
        index_k, bt = shards.shard_pool(s["index_k"], s["block_table"])
        kv, _ = shards.shard_pool(s["kv"], s["block_table"])
        flat = kv.view(-1, D)

        def cp():
            ids, _ = cp_indexer_topk(q_idx, weights, index_k, visible, a.topk, shards=shards, block_table=bt,
                                     seq_ids=seq_ids)  # fmt: skip
            slots = shards.local_slots(shards.to_local(ids), bt, seq_ids)
            if rank == 0:
                out, _ = cp_sparse_attention(q, s["window"], window_idx, extra_kv=flat, extra_indices=slots,
                                             attn_sink=sink)  # fmt: skip
            else:
                out, _ = cp_sparse_attention(q, flat, slots, attn_sink=sink)
            return ids, out

        ids, out = cp()
        t_cp = _time(cp, a.steps, barrier=True)
        result.update(
            cp_ms=1e3 * t_cp,
            ids_equal_single_device=bool(torch.equal(ids, ids_1)),
            max_abs_out_diff=float((out - out_1).abs().max()),
            comm_bytes_received_per_rank=decode_comm_bytes(world, T, a.topk, H, D, out_bytes=4)["total"],
        )
        if rank == 0:
            result["cp_speedup_measured"] = result["single_device_ms"] / result["cp_ms"]  # type: ignore[operator]
    result["model"] = {
        "note": "a model from spec-sheet bandwidths (MACHINES in bench/cp_decode.py), not a measurement",
        "machines": MACHINES,
        "steps": {
            name: {
                f"context {ctx}, batch {b}": model_step(ctx, 1024, m, tokens=b)
                for ctx in (131072, 1048576)
                for b in (1, 64)
            }
            for name, m in MACHINES.items()
        },
    }
    if rank == 0:
        print(json.dumps(result, indent=2))
        if a.json:
            with open(a.json, "w") as f:
                json.dump(result, f, indent=2)
    if distributed:
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
