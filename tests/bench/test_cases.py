"""The case registry: every family builds, runs on the reference, and its peers compute the same thing."""

import longattn
import pytest
import torch

from bench import cases, inputs, peers

CPU = torch.device("cpu")
TINY = {"context": (1024,), "chunk": (32,), "batch": (2,), "tokens": (256,), "page_size": (16,)}


def test_registry_names_are_unique_and_every_family_has_defaults():
    names = [c.name for c in cases.select(None, None)]
    assert len(names) == len(set(names))
    for fam in cases.REGISTRY.values():
        cs = fam.cases(fam.defaults)
        assert cs, fam.group
        assert len({c.name for c in cs}) == len(cs)
    with pytest.raises(ValueError):
        cases.register(next(iter(cases.REGISTRY.values())))


def test_default_suite_contains_the_readme_main_job():
    suite = cases.suite_cases(cases.DEFAULT_SUITE)
    names = [c.name for c, _ in suite]
    peers_on = {c.name: p for c, p in suite}
    assert "csa_layer.decode/v4-flash/ctx=1M/b=1/page=64/bf16" in names
    # the real layer: 1M CSA and HCA decode; 128K decode and prefill chunk against the dense peers
    assert "hybrid_attention.csa.decode/v4-flash/ctx=1M/b=1/page=64/bf16" in names
    assert "hybrid_attention.hca.decode/v4-flash/ctx=1M/b=1/page=64/bf16" in names
    assert peers_on["hybrid_attention.csa.decode/v4-flash/ctx=128K/b=1/page=64/bf16"]
    assert peers_on["hybrid_attention.csa.prefill/v4-flash/ctx=128K/chunk=256/page=64/bf16"]
    assert any(n.startswith("cache_plan.decode/v4-flash/ctx=1M") for n in names)
    assert any(n.startswith("append_kv.") and n.endswith("/fp8") for n in names)
    assert any(n.startswith("compress_kv.") for n in names)
    assert "sparse_attention.decode/v4-flash/csa/ctx=128K/b=1/page=64/fp8" in names


@pytest.mark.parametrize("group", list(cases.REGISTRY))
def test_every_family_builds_and_runs_on_the_reference(group):
    fam = cases.REGISTRY[group]
    sel = {a: TINY.get(a, (fam.quick_defaults[a][0],)) for a in fam.axes}
    (case,) = fam.cases(sel)
    prob = case.build(CPU)
    out = prob.output(prob.run("reference")())
    assert torch.isfinite(out.float()).all()
    cost = case.cost(prob.stats)
    assert cost.bytes > 0
    assert cost.flops > 0 or case.op in ("append_kv", "cache_plan")  # a copy / host bookkeeping: 0 FLOP
    est = case.input_bytes()
    assert 0.3 * prob.input_bytes <= est <= 3 * prob.input_bytes + (1 << 20), (est, prob.input_bytes)


@pytest.mark.parametrize(
    "group,kind,dtype",
    [("sparse_attention.decode", "csa", "bf16"), ("sparse_attention.decode", "hca", "bf16"),
     ("sparse_attention.prefill", "csa", "bf16"), ("sparse_attention.prefill", "hca", "bf16"),
     ("csa_layer.decode", "csa", "bf16"), ("csa_layer.prefill", "csa", "bf16"),
     ("sparse_attention.decode", "csa", "fp8"), ("sparse_attention.prefill", "hca", "fp8"),
     ("hybrid_attention.swa.decode", None, "bf16"), ("hybrid_attention.swa.prefill", None, "bf16"),
     ("hybrid_attention.csa.decode", None, "bf16"), ("hybrid_attention.csa.prefill", None, "bf16"),
     ("hybrid_attention.hca.decode", None, "bf16"), ("hybrid_attention.hca.prefill", None, "bf16"),
     ("hybrid_attention.csa.decode", None, "fp8"), ("hybrid_attention.hca.prefill", None, "fp8")],
)  # fmt: skip
def test_dense_peers_compute_the_same_attention(group, kind, dtype):
    fam = cases.REGISTRY[group]
    sel = {a: TINY.get(a, (fam.quick_defaults[a][0],)) for a in fam.axes}
    if "kind" in fam.axes:
        sel["kind"] = (kind,)
    sel["dtype"] = (dtype,)
    (case,) = fam.cases(sel)
    prob = case.build(CPU)
    ours = prob.output(prob.run("reference")()).float()
    view = prob.dense()
    for name in ("dense_einsum", "dense_einsum_fp32", "dense_sdpa"):
        theirs = peers.PEERS[name].setup(case, view)().float()
        torch.testing.assert_close(theirs, ours, atol=3e-2, rtol=3e-2, msg=name)


def test_dense_indexer_selects_the_same_entries():
    fam = cases.REGISTRY["indexer_topk.prefill"]
    (case,) = fam.cases({"context": (4096,), "chunk": (8,), "page_size": (16,)})
    prob = case.build(CPU)
    ours = prob.output(prob.run("reference")())
    theirs = peers.PEERS["dense_einsum"].setup(case, prob.dense())()
    for t in range(ours.shape[0]):
        assert set(ours[t].tolist()) - {-1} == set(theirs[t].tolist())


def test_random_topk_ids_are_distinct_visible_and_padded():
    g = torch.Generator().manual_seed(0)
    vis = torch.tensor([0, 3, 10, 1000], dtype=torch.int32)
    ids, lengths = inputs.random_topk_ids(vis, 8, g)
    assert lengths.tolist() == [0, 3, 8, 8]
    for t in range(4):
        row = ids[t].tolist()
        valid = [x for x in row if x >= 0]
        assert len(valid) == lengths[t] and len(set(valid)) == len(valid)
        assert all(0 <= x < vis[t] for x in valid) and row[len(valid) :] == [-1] * (8 - len(valid))
    srt, _ = inputs.random_topk_ids(vis, 8, g, order="sorted")
    assert srt[3].tolist() == sorted(srt[3].tolist())


def test_paged_slots_follow_the_block_table():
    g = torch.Generator().manual_seed(1)
    pool, bt = inputs.paged_pool(2, 10, 4, 3, torch.float32, CPU, g)
    assert pool.shape == (6, 4, 3) and bt.shape == (2, 3)
    assert sorted(bt.flatten().tolist()) == list(range(6))
    ids = torch.tensor([[0, 5, 9, -1]], dtype=torch.int32)
    slots = inputs.slots_of(bt, torch.tensor([1], dtype=torch.int32), ids, 4)
    assert slots.tolist() == [[bt[1, 0] * 4, bt[1, 1] * 4 + 1, bt[1, 2] * 4 + 1, -1]]


def test_token_counts_parse_and_print():
    assert inputs.parse_tokens("128K") == 131072 and inputs.parse_tokens("1M") == 1 << 20
    assert inputs.parse_tokens("4096") == 4096
    assert inputs.human_tokens(1 << 20) == "1M" and inputs.human_tokens(8192) == "8K"
    with pytest.raises(ValueError):
        inputs.parse_tokens("0")


def test_adding_a_family_is_one_register_call(monkeypatch):
    monkeypatch.setattr(cases, "REGISTRY", dict(cases.REGISTRY))

    def build(case, device, seed):
        x = torch.randn(int(case.params["tokens"]), 8, device=device)
        return cases.Problem(run=lambda backend: (lambda: longattn.merge_attention_states(
            x.view(-1, 1, 8), x[:, 0:1], x.view(-1, 1, 8), x[:, 0:1], backend=backend)),
            output=lambda r: r[0], stats={}, input_bytes=x.numel() * 4)  # fmt: skip

    cases.register(cases.Family(
        group="toy.decode", op="toy", ops=("merge_attention_states",), axes={"tokens": (4, 8)},
        defaults={"tokens": (4,)}, quick_defaults={"tokens": (4,)}, build=build,
        cost=lambda p, s: cases.costs.Cost(1.0, 1.0), input_bytes=lambda p: 32 * int(p["tokens"]),
    ))  # fmt: skip
    (case,) = cases.select(["toy"], None)
    assert case.name == "toy.decode/S=4"
    prob = case.build(CPU)
    assert prob.output(prob.run(None)()).shape == (4, 1, 8)


def test_fp8_cases_use_the_fp8_pool_and_count_its_records():
    fam = cases.REGISTRY["sparse_attention.decode"]
    (case,) = fam.cases(dict(TINY, kind=("csa",), dtype=("fp8",), batch=(1,)))
    prob = case.build(CPU)
    assert prob.stats["kv_row_bytes"] == 584
    bf = fam.cases(dict(TINY, kind=("csa",), dtype=("bf16",), batch=(1,)))[0].build(CPU)
    assert bf.stats["kv_row_bytes"] == 1024 and bf.stats["keys"] == prob.stats["keys"]
    # FP8 pools hold 512-d rows only: the indexer's compressor (d = 128) has no FP8 case
    assert cases.REGISTRY["compress_kv.decode"].cases(dict(TINY, kind=("csa_index",), dtype=("fp8",))) == []


def test_fixed_kinds_select_their_families_and_unknown_kinds_select_nothing():
    names = [c.name for c in cases.select(["hybrid_attention"], {"kind": ["hca"]})]
    assert names and all(n.startswith("hybrid_attention.hca.") for n in names)
    assert cases.select(["sparse_attention"], {"kind": ["swa"]}) == []
    both = {c.group for c in cases.select(["hybrid_attention", "sparse_attention.decode"], {"kind": ["csa"]})}
    assert both == {"hybrid_attention.csa.decode", "hybrid_attention.csa.prefill", "sparse_attention.decode"}
    (c,) = cases.REGISTRY["hybrid_attention.csa.decode"].cases(dict(TINY, batch=(1,)))
    assert c.params["kind"] == "csa" and c.family.mode == "decode" and "/csa/" not in c.name


@pytest.mark.parametrize("group", ["hybrid_attention.csa.prefill", "hybrid_attention.hca.decode",
                                   "compress_kv.prefill", "compress_kv.decode"])  # fmt: skip
def test_cache_writing_steps_are_fixed_points(group):
    """Timing calls the same step many times: it must leave the caches as it found them."""
    fam = cases.REGISTRY[group]
    sel = {a: TINY.get(a, (fam.quick_defaults[a][0],)) for a in fam.axes}
    (case,) = fam.cases(sel)
    prob = case.build(CPU)
    fn = prob.run("reference")
    first = prob.output(fn()).clone()
    for _ in range(2):
        again = prob.output(fn())
    assert torch.equal(first, again)


def test_layer_stats_count_the_step():
    fam = cases.REGISTRY["hybrid_attention.csa.decode"]
    (case,) = fam.cases(dict(TINY, batch=(2,)))  # ctx 1K: 256 visible entries (< top-512) per sequence
    s = case.build(CPU).stats
    assert s["keys"] == 2 * (128 + 256) and s["unique_rows"] == s["keys"]
    assert (s["emissions"], s["ring_read_pairs"], s["ring_rows_written"]) == (2, 14, 2)
    assert s["entries"] == s["unique_entries"] == 2 * 256
    (case,) = cases.REGISTRY["hybrid_attention.hca.prefill"].cases(dict(TINY, chunk=(32,)))
    s = case.build(CPU).stats
    # positions 992..1023: windows reach back to 865; every token sees 7 entries, the last one 8
    assert s["unique_rows"] == (1023 - 865 + 1) + 8 and s["keys"] == sum(128 + (p + 1) // 128 for p in range(992, 1024))
    assert (s["emissions"], s["ring_read_pairs"]) == (1, 1023 - 896 - 31)


def test_plan_cases_run_on_a_fresh_manager_each_call():
    (case,) = cases.REGISTRY["cache_plan.decode"].cases(dict(TINY, batch=(2,)))
    prob = case.build(CPU)
    fn = prob.run(None)
    outs = []
    for _ in range(3):
        fn.prepare()
        outs.append(fn().positions.tolist())
    assert outs == [[1023, 1023]] * 3
    assert prob.stats["bytes.window_indices"] == 2 * 128 * 4 and case.cost(prob.stats).flops == 0


def test_flex_attention_compiles_in_the_untimed_setup(monkeypatch):
    # The H200 run of 2026-12-04 timed flex_attention's per-shape compile (13-17 s) as its only sample:
    # the setup must make the compiling call itself. torch.compile is replaced by a counting wrapper
    # (a CPU inductor build would take minutes); eager flex_attention runs on CPU.
    pytest.importorskip("torch.nn.attention.flex_attention")
    calls = []

    from torch.nn.attention.flex_attention import flex_attention

    real_compile = torch.compile

    def fake_compile(f, **kw):
        if f is not flex_attention:  # (torch may compile its own helpers)
            return real_compile(f, **kw)

        def run(*a, **k):
            calls.append(1)
            return f(*a, **k)

        return run

    monkeypatch.setattr(torch, "compile", fake_compile)
    fam = cases.REGISTRY["sparse_attention.decode"]
    sel = {a: TINY.get(a, (fam.quick_defaults[a][0],)) for a in fam.axes}
    sel["kind"], sel["dtype"] = ("csa",), ("bf16",)
    (case,) = fam.cases(sel)
    prob = case.build(CPU)
    fn = peers.PEERS["flex_attention"].setup(case, prob.dense())
    assert len(calls) == 1 and fn.compile_s >= 0.0
    ours = prob.output(prob.run("reference")()).float()
    torch.testing.assert_close(fn().float(), ours, atol=3e-2, rtol=3e-2)
    assert len(calls) == 2
