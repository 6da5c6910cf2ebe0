"""Timing statistics and memory measurement (no timing assertions: counts and exact byte peaks only)."""

import time

import pytest
import torch

from bench import runner, timing

CPU = torch.device("cpu")


def test_summary_statistics():
    s = timing.summarize([5.0, 1.0, 3.0, 2.0, 4.0])
    assert (s["median_s"], s["min_s"], s["max_s"], s["n"]) == (3.0, 1.0, 5.0, 5)
    assert s["p20_s"] == pytest.approx(1.8) and s["p80_s"] == pytest.approx(4.2)
    assert s["q1_s"] == 2.0 and s["q3_s"] == 4.0 and s["iqr_s"] == 2.0
    assert timing.summarize([7.0])["median_s"] == 7.0


def test_time_fn_respects_the_sample_policy():
    calls = []
    pol = timing.TimingPolicy(warmup=3, min_repeats=4, max_repeats=6, min_time_s=0.0, max_time_s=10.0)
    st = timing.time_fn(lambda: calls.append(1), CPU, pol)
    assert st["warmup"] == 3 and st["n"] == 4 and len(st["samples_s"]) == 4 and len(calls) == 7
    # a long first call but a short second one (one-time costs): the full policy
    calls.clear()
    pol = timing.TimingPolicy(
        warmup=3, min_repeats=4, max_repeats=6, min_time_s=0.0, max_time_s=10.0, long_call_s=0.5, long_repeats=2
    )
    st = timing.time_fn(lambda: calls.append(1), CPU, pol, prior_call_s=1.0)
    assert st["warmup"] == 3 and st["n"] == 4 and len(calls) == 6


def test_a_long_call_gets_long_repeats_samples():
    # first and second (warm) call both long: no more warm-up, long_repeats samples
    calls = []

    def slow():
        calls.append(1)
        time.sleep(0.03)

    pol = timing.TimingPolicy(warmup=3, min_repeats=4, max_repeats=6, long_call_s=0.02, long_repeats=2)
    st = timing.time_fn(slow, CPU, pol, prior_call_s=1.0)
    assert st["warmup"] == 2 and st["n"] == 2 and len(calls) == 3


def _two_buffers():
    a = torch.ones(1 << 20)  # 4 MiB
    b = a + 1  # 4 MiB more while a is alive
    del a
    return b.sum()


def test_cpu_peak_memory_is_the_exact_allocator_peak():
    r, peak = timing.cpu_alloc_peak_call(_two_buffers)
    assert float(r) == 2 * (1 << 20)
    assert (8 << 20) <= peak < (8 << 20) + 4096
    m = timing.peak_memory(_two_buffers, CPU, rss=True)
    assert m["mem_method"] == "torch_cpu_allocator_events" and (8 << 20) <= m["peak_mem_bytes"] < (8 << 20) + 4096
    assert "peak_rss_bytes" in m
    m = timing.peak_memory(_two_buffers, CPU, rss=True, alloc=False)
    assert "peak_mem_bytes" not in m and "peak_rss_bytes" in m


def test_a_run_keeps_the_allocator_peak_when_rss_is_sampled_too():
    cfg = runner.RunConfig(device=CPU, policy=timing.TimingPolicy.quick(), rss=True)
    r, first_s, first_mem = timing.first_call(_two_buffers, CPU)
    out = runner._measure(_two_buffers, cfg, None, first_s, first_mem)
    assert out["mem_method"] == "torch_cpu_allocator_events"
    assert (8 << 20) <= out["peak_mem_bytes"] < (8 << 20) + 4096 and "peak_rss_bytes" in out


def test_a_first_call_longer_than_the_budget_is_the_only_sample():
    calls = []
    pol = timing.TimingPolicy(max_time_s=0.5)
    st = timing.time_fn(lambda: calls.append(1), CPU, pol, prior_call_s=2.0)
    assert calls == [] and st["n"] == 1 and st["median_s"] == 2.0 and st["warmup"] == 0


def test_a_backend_predicted_too_slow_is_skipped_with_the_reason():
    from bench import cases, ceilings

    case = cases.REGISTRY["merge_attention_states"].case(preset="v4-flash", tokens=16, dtype="bf16")
    ceil = {"copy": {"bytes_per_s": 1e10}, "matmul": {"fp32": {"flops_per_s": 1e11}, "bf16": {"flops_per_s": 1e11}}}
    assert ceilings.bandwidth(ceil) == 1e10
    cfg = runner.RunConfig(device=CPU, policy=timing.TimingPolicy.quick(), backends=["reference"], peers=False,
                           rss=False, backend_max_s=1.0)  # fmt: skip
    rates = {("reference", "merge_attention_states"): 1e12}  # an earlier case ran at 1e12 x its floor
    rec = runner.run_case(case, cfg, ceil, None, log=lambda *a: None, rates=rates)
    (run,) = rec["runs"]
    assert run["status"] == "skipped" and "predicted" in run["reason"]
    rec = runner.run_case(case, cfg, ceil, None, log=lambda *a: None, rates={})
    assert rec["runs"][0]["status"] == "ok"


def test_prepare_runs_before_every_call_outside_the_timed_region():
    """A callable with ``prepare`` (e.g. a fresh cache manager for CacheManager.plan) gets it before each
    first, warm-up, sampled and memory call."""
    log = []

    def fn():
        log.append("call")
        return torch.ones(4)

    fn.prepare = lambda: log.append("prep")
    timing.first_call(fn, CPU)
    pol = timing.TimingPolicy(warmup=2, min_repeats=3, max_repeats=3, min_time_s=0.0)
    timing.time_fn(fn, CPU, pol, prior_call_s=0.0)
    timing.peak_memory(fn, CPU, rss=True)
    assert log == ["prep", "call"] * (len(log) // 2) and len(log) == 2 * (1 + 1 + 3 + 2)


def test_the_emulator_backend_runs_only_when_asked_for(monkeypatch):
    """ascend_sim (dispatch never picks it unforced) is left out of a run unless --backends names it or
    --all is given; a case then records it as skipped with that reason."""
    from longattn.backends import registry

    from bench import cases

    assert "ascend_sim" in runner.opt_in_backends()
    assert not {"reference", "triton", "ascend"} & set(runner.opt_in_backends())
    base = dict(device=CPU, policy=timing.TimingPolicy.quick(), peers=False, rss=False)
    assert "--backends ascend_sim" in runner.opt_in_reason("ascend_sim", runner.RunConfig(**base))
    assert runner.opt_in_reason("ascend_sim", runner.RunConfig(**base, backends=["reference", "ascend_sim"])) is None
    assert runner.opt_in_reason("ascend_sim", runner.RunConfig(**base, all_backends=True)) is None
    assert runner.opt_in_reason("reference", runner.RunConfig(**base)) is None

    monkeypatch.setattr(registry, "_MODULES", {k: registry._MODULES[k] for k in ("reference", "ascend_sim")})
    case = cases.REGISTRY["append_kv.decode"].case(batch=2, page_size=16, dtype="bf16")
    ceil = {"copy": {"bytes_per_s": 1e10}, "matmul": {"fp32": {"flops_per_s": 1e11}, "bf16": {"flops_per_s": 1e11}}}
    rec = runner.run_case(case, runner.RunConfig(**base), ceil, None, log=lambda *a: None)
    runs = {r["impl"]: r for r in rec["runs"]}
    assert runs["reference"]["status"] == "ok" and runs["ascend_sim"]["status"] == "skipped"
    unavailable = registry.get_backend("ascend_sim").unavailable
    assert runs["ascend_sim"]["reason"] == (unavailable or runner.opt_in_reason("ascend_sim", runner.RunConfig(**base)))
