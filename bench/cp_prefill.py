"""Prefill context parallelism of one CSA layer: measured on this machine's ranks, modelled for GPUs and NPUs.

    torchrun --nproc-per-node 2 -m bench.cp_prefill [--tokens 8192] [--json PATH]
    python -m bench.cp_prefill            # one process: the single-device run and the model only

Every rank builds the same ``longattn.nn.DeepseekV4Attention`` CSA layer (V4's head and indexer dims,
fewer heads: ``LAYER``) and the same ``--tokens`` hidden states, and keeps its ``TokenShards`` (two
chunks of ``tokens / (2 * world)``). Measured (strong scaling: every process computes with
``cores // world`` threads): the single-device prefill (``forward_train`` under ``no_grad``, rank 0
alone, the others asleep) and the CP prefill (``forward_cp`` on every rank, the slowest rank's time);
the gathered CP output must equal the single-device output within fp32 rounding. Modelled (``model``,
labelled as such): one V4 CSA layer's prefill at 128K and 1M tokens on 8 GPUs over NVLink and 16 NPUs
over HCCS, compute-bound (the indexer's and attention's FLOPs at the spec-sheet peak) plus the
all-gathers (``prefill_comm_bytes``).
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Dict

import torch
import torch.distributed as dist
from longattn.configs import ModelConfig
from longattn.distributed import TokenShards, prefill_comm_bytes
from longattn.nn import DeepseekV4Attention

from bench.cp_decode import FP8_RECORD_BYTES, INDEX_KEY_BYTES, MACHINES, V4, _sleep_until_all_arrive, _time, init_ranks

# The measured layer: V4's latent head (512), indexer head (128), window (128) and ratio (4); 16
# attention and 16 indexer heads instead of 64 so that a prefill of 8K tokens takes seconds on one core.
LAYER = ModelConfig(
    name="cp-bench", dim=1024, n_layers=2, n_heads=16, q_lora_rank=256, o_groups=4, o_lora_rank=256,
    index_topk=512, compress_ratios=(0, 4, 0), head_dim=512, rope_dim=64, window=128, index_n_heads=16,
    index_head_dim=128,
)  # fmt: skip
# Dense peaks assumed by the model (spec sheets, not measured): the indexer runs in FP8 where the
# chip has it (H200), attention in bf16; 910B has no FP8 unit (both at the fp16/bf16 peak).
PEAK_FLOPS = {
    "8x H200 (NVLink 4)": {"indexer": 1979e12, "attention": 989e12},
    "16x Ascend 910B (HCCS)": {"indexer": 313e12, "attention": 313e12},
}
V4_PREFILL = {"dim": 7168, "topk": 1024}


def prefill_flops(tokens: int, topk: int) -> Dict[str, float]:
    """FLOPs of one V4 CSA layer's prefill from position 0 (its two large parts): the indexer scores
    every visible entry (token t sees (t + 1) // 4 entries: ~tokens^2 / 8 scores of Hi x Di MACs);
    attention reads window + top-k rows per head (QK and PV: 4 D FLOPs per key per head)."""
    visible = (torch.arange(tokens, dtype=torch.float64) + 1).div(V4["ratio"], rounding_mode="floor")
    keys = tokens * V4["window"] + float(visible.clamp(max=topk).sum())
    return {
        "indexer": 2.0 * V4["index_heads"] * V4["index_dim"] * float(visible.sum()),
        "attention": 4.0 * V4["heads"] * V4["head_dim"] * keys,
    }


def model_prefill(tokens: int, machine: str) -> Dict[str, float]:
    """Seconds of one V4 CSA layer's prefill on one device and on ``world`` ranks: compute at the
    peak (a lower bound: real kernels reach a fraction of it) divided evenly by the causal balance,
    plus the CP all-gathers (halo hidden states, FP8 entry records, FP8 index keys) at the link
    bandwidth with one latency each (agreement, halo, entries, keys)."""
    m, peak = MACHINES[machine], PEAK_FLOPS[machine]
    f = prefill_flops(tokens, V4_PREFILL["topk"])
    single = f["indexer"] / peak["indexer"] + f["attention"] / peak["attention"]
    w = int(m["world"])
    comm = prefill_comm_bytes(w, tokens, V4_PREFILL["dim"], V4["window"] - 1, V4["ratio"],
                              FP8_RECORD_BYTES, INDEX_KEY_BYTES)  # fmt: skip
    comm_s = 4 * m["collective_s"] + comm["total"] / m["link_Bps"]
    cp = single / w + comm_s
    return {"single_device_s": single, "cp_s": cp, "speedup": single / cp, "cp_comm_s": comm_s,
            "cp_comm_bytes_received_per_rank": comm["total"], "flops": f}  # fmt: skip


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tokens", type=int, default=8192, help="prefill tokens of the sequence (default 8192)")
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--json", default=None, help="write the results here (rank 0)")
    a = ap.parse_args(argv)

    distributed, rank, world = init_ranks()
    cores = os.cpu_count() or 1
    torch.manual_seed(0)
    m = DeepseekV4Attention(LAYER, 1).eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in m.parameters():  # O(1) activations (as tests/nn/helpers.randomize_attention)
            p.copy_(torch.randn(p.shape, generator=g) / (p.shape[-1] ** 0.5 if p.dim() == 2 else 1.0))
    x = torch.randn(a.tokens, LAYER.dim, generator=g)

    def single():
        with torch.no_grad():
            return m.forward_train(x.unsqueeze(0))[0]

    result: Dict[str, object] = {"tokens": a.tokens, "world": world, "cores": cores, "layer": LAYER.__dict__}
    out_1 = torch.empty(a.tokens, LAYER.dim)
    torch.set_num_threads(max(1, cores // world))  # strong scaling: each process gets its share
    if rank == 0:
        out_1 = single()
        result["single_device_ms"] = 1e3 * _time(single, a.steps, barrier=False)
    if distributed:
        _sleep_until_all_arrive(rank)
        dist.broadcast(out_1, 0)
        shards = TokenShards(world, rank, a.tokens)
        mine = shards.take(x)
        out = shards.gather(m.forward_cp(mine, shards))
        result.update(
            cp_ms=1e3 * _time(lambda: m.forward_cp(mine, shards), a.steps, barrier=True),
            max_abs_out_diff=float((out - out_1).abs().max()),
            comm_bytes_received_per_rank=prefill_comm_bytes(world, a.tokens, LAYER.dim, LAYER.window - 1, 4,
                                                            LAYER.head_dim * 4, LAYER.index_head_dim * 4)["total"],
        )  # fmt: skip
        if rank == 0:
            result["cp_speedup_measured"] = result["single_device_ms"] / result["cp_ms"]  # type: ignore[operator]
    result["model"] = {
        "note": "a model from spec-sheet peaks and bandwidths (PEAK_FLOPS here, MACHINES in bench/cp_decode.py), "
        "compute at 100% of peak: a lower bound on time, not a measurement",
        "peaks": PEAK_FLOPS,
        "prefill": {name: {f"{n} tokens": model_prefill(n, name) for n in (131072, 1048576)} for name in MACHINES},
    }
    if rank == 0:
        print(json.dumps(result, indent=2, default=str))
        if a.json:
            with open(a.json, "w") as f:
                json.dump(result, f, indent=2, default=str)
    if distributed:
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
