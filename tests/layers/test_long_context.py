"""Decode steps at long context on the CPU reference, caches filled through the public write ops.

The CI test runs a 64K-token context; the 1M-token one (262,144 CSA / 8,192 HCA entries per
sequence, batch 4) is marked slow. Temporary memory is bounded by the chunk budget.
"""

import longattn
import pytest
import torch
from longattn.cache import CacheManager
from longattn.configs import V4_FLASH
from longattn.memory import chunk_budget
from longattn.testing import fill_random_context

from bench.peakmem import PeakRSS

MiB = 1 << 20


def decode_inputs(layer, B, g):
    L = layer.layer
    c = 2 if L.overlap else 1
    x = dict(
        q=torch.randn(B, L.n_heads, L.head_dim, generator=g).bfloat16(),
        kv=torch.randn(B, L.head_dim, generator=g).bfloat16(),
        compress_a=torch.randn(B, c * L.head_dim, generator=g),
        compress_b=torch.randn(B, c * L.head_dim, generator=g),
    )
    if L.uses_indexer:
        x.update(
            index_q=torch.randn(B, L.index_n_heads, L.index_head_dim, generator=g).bfloat16(),
            index_weights=torch.randn(B, L.index_n_heads, generator=g),
            index_a=torch.randn(B, 2 * L.index_head_dim, generator=g),
            index_b=torch.randn(B, 2 * L.index_head_dim, generator=g),
        )
    return x


def run_decode(context, batch=4, kinds=("csa", "hca"), kv_format="float"):
    cfgs = [V4_FLASH.first_layer(k) for k in kinds]
    m = CacheManager.for_layers(cfgs, max_seqs=batch, max_context=context + 8, max_step_tokens=1 << 16, page_size=64)
    layers = [longattn.HybridAttention(c, m, kv_format=kv_format) for c in cfgs]
    fill_random_context(layers, m, list(range(batch)), context)
    plan = m.plan(list(range(batch)), torch.arange(batch + 1))
    g = torch.Generator().manual_seed(1)
    results = {}
    for att in layers:
        x = decode_inputs(att, batch, g)
        with PeakRSS() as mem:
            out = att(plan, x.pop("q"), x.pop("kv"), **x, attn_sink=torch.zeros(att.layer.n_heads))
        assert out.shape == (batch, att.layer.n_heads, att.layer.head_dim)
        assert torch.isfinite(out.float()).all()
        results[att.kind] = mem.peak_delta
    return results


@pytest.mark.parametrize("kv_format", ["float", "fp8"])
def test_decode_at_64k_context_bounded_memory(kv_format):
    with chunk_budget(16 * MiB):
        peaks = run_decode(1 << 16, kv_format=kv_format)
    for kind, peak in peaks.items():
        assert peak < 64 * MiB, f"{kind}: {peak / MiB:.1f} MiB"


@pytest.mark.slow
def test_decode_at_1m_context_batch4():
    with chunk_budget(64 * MiB):
        peaks = run_decode(1 << 20)
    for kind, peak in peaks.items():
        assert peak < 256 * MiB, f"{kind}: {peak / MiB:.1f} MiB"
