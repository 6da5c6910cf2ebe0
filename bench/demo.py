"""Demo: one DeepSeek-V4 CSA layer's decode step at a 1,048,576-token context on the CPU reference.

Caches are filled with random rows (bf16, paged, pages shuffled): a 128-slot sliding-window ring per
sequence, 262,144 compressed KV entries (512-d) and 262,144 indexer keys (128-d) per sequence. One
step = lightning-indexer top-k (64 heads x 128 dims over all 262,144 entries) -> sparse attention over
128 window keys + top-k compressed keys with the attention sink.

    python -m bench.demo [--context 1048576] [--batch 1] [--preset v4-flash] [--backend reference]
"""

from __future__ import annotations

import argparse
import statistics
import time

import longattn
import torch
from longattn.configs import PRESETS

from .peakmem import PeakRSS, trim_heap

MiB = 1 << 20


def build_step(cfg, context: int, batch: int, page_size: int, device: str, seed: int = 0):
    """Random paged caches and one decode token per sequence at position ``context - 1``."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    layer = cfg.first_layer("csa")
    D, H, Hi, Di, W = layer.head_dim, layer.n_heads, layer.index_n_heads, layer.index_head_dim, layer.window
    n_comp = context // layer.compress_ratio  # entries visible to the last token: (pos + 1) // 4
    pages_per_seq = -(-n_comp // page_size)
    num_pages = batch * pages_per_seq
    bf16 = torch.bfloat16

    def rand(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g) * scale).to(bf16)

    comp_kv = torch.empty(num_pages, page_size, D, dtype=bf16)
    index_k = torch.empty(num_pages, page_size, Di, dtype=bf16)
    for p0 in range(0, num_pages, 256):  # fill in slices to keep the fp32 temporaries small
        p1 = min(num_pages, p0 + 256)
        comp_kv[p0:p1] = rand(p1 - p0, page_size, D)
        index_k[p0:p1] = rand(p1 - p0, page_size, Di)
    block_table = torch.randperm(num_pages, generator=g).view(batch, pages_per_seq).to(torch.int32)
    swa = rand(batch * W, D)  # ring: token p of sequence b at slot b * W + p % W
    pos = torch.full((batch,), context - 1, dtype=torch.int64)
    window_pos = pos.unsqueeze(1) - torch.arange(W - 1, -1, -1).unsqueeze(0)  # last W positions, incl. self
    window = (torch.arange(batch).unsqueeze(1) * W + window_pos % W).to(torch.int32)
    step = dict(
        q=rand(batch, H, D),
        swa=swa,
        window=window,
        comp_kv=comp_kv,
        index_q=rand(batch, Hi, Di),
        index_w=torch.randn(batch, Hi, generator=g) * (Di**-0.5 * Hi**-0.5),
        index_k=index_k,
        visible_end=((pos + 1) // layer.compress_ratio).to(torch.int32),
        block_table=block_table,
        seq_ids=torch.arange(batch, dtype=torch.int32),
        sink=torch.randn(H, generator=g),
        topk=layer.index_topk,
    )
    return {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in step.items()}


def decode_step(s, backend=None):
    slots, lengths = longattn.indexer_topk(
        s["index_q"], s["index_w"], s["index_k"], s["visible_end"], s["topk"],
        block_table=s["block_table"], seq_ids=s["seq_ids"], return_slots=True, backend=backend,
    )  # fmt: skip
    return longattn.sparse_attention(
        s["q"], s["swa"], s["window"], extra_kv=s["comp_kv"], extra_indices=slots,
        extra_topk_length=lengths, attn_sink=s["sink"], backend=backend,
    )  # fmt: skip


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--context", type=int, default=1 << 20)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--preset", default="v4-flash", choices=sorted(PRESETS))
    p.add_argument("--page-size", type=int, default=64)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--backend", default=None)
    p.add_argument("--device", default="cpu")
    a = p.parse_args(argv)
    cfg = PRESETS[a.preset]

    t0 = time.perf_counter()
    s = build_step(cfg, a.context, a.batch, a.page_size, a.device)
    cache_bytes = sum(s[k].numel() * s[k].element_size() for k in ("comp_kv", "index_k", "swa"))
    print(
        f"{cfg.name} CSA layer decode, context {a.context:,} tokens, batch {a.batch}, page {a.page_size}: "
        f"caches {cache_bytes / MiB:.0f} MiB built in {time.perf_counter() - t0:.1f} s "
        f"({torch.get_num_threads()} threads)"
    )
    decode_step(s, a.backend)  # warm-up
    times = []
    for _ in range(a.repeats):  # timed without the RSS sampler thread (it competes for the CPUs)
        t = time.perf_counter()
        out, lse = decode_step(s, a.backend)
        times.append(time.perf_counter() - t)
    trim_heap()  # freed heap blocks reused by the step must be faulted in again to show in the RSS
    with PeakRSS() as mem:  # sets a 64 KiB mmap threshold, after the timing (it slows calls ~2x)
        out, lse = decode_step(s, a.backend)
    assert torch.isfinite(out.float()).all() and torch.isfinite(lse).all()
    print(
        f"decode step: median {statistics.median(times) * 1e3:.1f} ms "
        f"(min {min(times) * 1e3:.1f}, max {max(times) * 1e3:.1f}, n={a.repeats}); "
        f"peak temporary memory {mem.peak_delta / MiB:.1f} MiB above the caches"
    )
    print("(the full measurement instrument: python -m bench; see bench/README.md)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
