"""pytest-benchmark view of a small subset of the case registry (for people who use that workflow).

Not collected by ``python -m pytest tests``; run it explicitly:

    python -m pytest bench/test_pytest_benchmark.py --benchmark-only [--benchmark-json=out.json]

Each benchmark runs the default backend of the device on one registry case (inputs built once, outside
the timing) and records the case name and its cost model in ``extra_info``. ``python -m bench`` is
the full instrument (ceilings, peers, peak memory, JSON schema); this file only times.
"""

from __future__ import annotations

import pytest
import torch

from bench import cases

pytest.importorskip("pytest_benchmark")

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")

SUBSET = [
    ("csa_layer.decode", {"preset": ("v4-flash",), "context": (131072,), "batch": (1,)}),
    ("sparse_attention.decode", {"kind": ("csa", "hca"), "context": (131072,), "batch": (1,)}),
    ("sparse_attention.prefill", {"kind": ("csa",), "context": (32768,), "chunk": (64,)}),
    ("indexer_topk.decode", {"context": (131072,), "batch": (1,)}),
    ("merge_attention_states", {"tokens": (64,)}),
    ("compress_pool", {"kind": ("csa", "hca"), "tokens": (16384,)}),
    ("append_kv.decode", {"batch": (64,), "dtype": ("bf16", "fp8")}),
    ("compress_kv.decode", {"kind": ("csa", "hca"), "context": (131072,), "batch": (64,), "emit": ("all",)}),
    ("hybrid_attention.csa.decode", {"preset": ("v4-flash",), "context": (131072,), "batch": (1,)}),
    ("hybrid_attention.hca.decode", {"preset": ("v4-flash",), "context": (131072,), "batch": (1,)}),
]  # (cache_plan is left out: each call needs a fresh manager, see bench/timing.py "prepare")
CASES = [c for group, sel in SUBSET for c in cases.REGISTRY[group].cases(sel)]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_case(benchmark, case):
    prob = case.build(DEVICE)
    fn = prob.run(None)
    if DEVICE.type == "cuda":
        inner = fn

        def fn():
            out = inner()
            torch.cuda.synchronize()
            return out

    cost = case.cost(prob.stats)
    benchmark.extra_info.update(case=case.name, flops=cost.flops, bytes=cost.bytes, threads=torch.get_num_threads())
    result = benchmark.pedantic(fn, rounds=5, iterations=1, warmup_rounds=1)
    assert torch.isfinite(prob.output(result).float()).all()
