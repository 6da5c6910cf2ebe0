"""HybridAttention bad input: a clear error, and the caches are left exactly as they were."""

import dataclasses

import longattn
import pytest
import torch
from longattn.cache import StalePlanError

from tests.layers.helpers import D, H, make_manager, make_sequence, tiny_layer


def pools(att):
    out = []
    for p in (att.window_pool, att.compressed_pool, att.index_pool, att.state_pool, att.index_state_pool):
        if p is not None:
            out.append((p.data if hasattr(p, "data") and not isinstance(p, torch.Tensor) else p).clone())
    return out


def setup(kind="csa", kv_format="float"):
    layer = tiny_layer(kind)
    m = make_manager(layer, 4)
    att = longattn.HybridAttention(layer, m, kv_dtype=torch.float32, kv_format=kv_format)
    m.add_sequence("a")
    g = torch.Generator().manual_seed(0)
    seq = make_sequence(layer, 12, g)
    plan = m.plan(["a"], [0, 10])
    att(plan, seq["q"][:10], seq["kv"][:10], **{k: v[:10] for k, v in seq.items() if k not in ("q", "kv")})
    plan = m.plan(["a"], [0, 2])
    inputs = {k: v[10:12] for k, v in seq.items()}
    return layer, m, att, plan, inputs


CASES = [
    (
        "q wrong T",
        lambda i: i.update(q=torch.randn(3, H, D)),
        ValueError,
        r"`q` must be \[T, H, D\] = \[2, 3, 32\] \(T = cu_seqlens\[-1\]",
    ),
    ("kv wrong T", lambda i: i.update(kv=torch.randn(1, D)), ValueError, r"`kv` must be \[T, D\] = \[2, 32\]"),
    ("q heads", lambda i: i.update(q=torch.randn(2, H + 1, D)), ValueError, r"`q` must be \[T, H, D\] = \[2, 3, 32\]"),
    (
        "sink heads",
        lambda i: i.update(attn_sink=torch.zeros(H + 2)),
        ValueError,
        r"`attn_sink` has shape \[5\]: dim 0 must be 3",
    ),
    ("missing compressor", lambda i: i.pop("compress_a"), ValueError, r"`compress_a` is required for a csa layer"),
    (
        "compressor width",
        lambda i: i.update(compress_b=torch.randn(2, D)),
        ValueError,
        r"`compress_b` must be \[2, 64\]",
    ),
    ("missing indexer", lambda i: i.pop("index_q"), ValueError, r"`index_q` is required"),
    (
        "index weights",
        lambda i: i.update(index_weights=torch.randn(2, 5)),
        ValueError,
        r"`index_weights` must be \[2, 2\]",
    ),
    ("int kv", lambda i: i.update(kv=torch.ones(2, D, dtype=torch.int64)), TypeError, r"`kv` must have dtype"),
    (
        "compressor norm weight",  # checked only inside compress_kv once, after the first writes
        lambda i: i.update(compress_norm_weight=torch.ones(D + 1)),
        ValueError,
        r"`compress_norm_weight` has shape \[33\]: dim 0 must be 32",
    ),
    (
        "indexer norm weight dtype",
        lambda i: i.update(index_norm_weight=torch.ones(16, dtype=torch.int32)),
        TypeError,
        r"`index_norm_weight` must have dtype",
    ),
    (
        "sink dtype",
        lambda i: i.update(attn_sink=torch.ones(H, dtype=torch.int64)),
        TypeError,
        r"`attn_sink` must have dtype",
    ),
]


@pytest.mark.parametrize("name,mutate,exc,msg", CASES, ids=[c[0] for c in CASES])
def test_bad_inputs_write_nothing(name, mutate, exc, msg):
    _, _, att, plan, inputs = setup()
    mutate(inputs)
    before = pools(att)
    with pytest.raises(exc, match=msg):
        att(plan, inputs.pop("q"), inputs.pop("kv"), **inputs)
    assert_unchanged(before, att)


def assert_unchanged(before, att):
    for x, y in zip(before, pools(att)):
        assert torch.equal(x.nan_to_num(7.0), y.nan_to_num(7.0))


def test_plan_of_another_manager_is_refused():
    layer, _, att, _, inputs = setup("hca")
    other = make_manager(layer, 4)
    other.add_sequence("a")
    other.plan(["a"], [0, 10])
    plan = other.plan(["a"], [0, 2])
    inputs = {k: v for k, v in inputs.items() if not k.startswith("index")}
    before = pools(att)
    with pytest.raises(StalePlanError, match="made by another CacheManager"):
        att(plan, inputs.pop("q"), inputs.pop("kv"), **inputs)
    assert_unchanged(before, att)


def test_plan_pages_outside_the_pool():
    """A plan edited by hand whose page table points past the layer's pools is refused."""
    _, _, att, plan, inputs = setup("hca")
    plan = dataclasses.replace(plan, max_page=dict(plan.max_page, window=128))
    inputs = {k: v for k, v in inputs.items() if not k.startswith("index")}
    before = pools(att)
    with pytest.raises(ValueError, match=r"page table points outside the pool: page 128 >= 128 pages"):
        att(plan, inputs.pop("q"), inputs.pop("kv"), **inputs)
    assert_unchanged(before, att)


@pytest.mark.parametrize("kind", ["swa", "csa", "hca"])
def test_stale_plan_is_refused_and_writes_nothing(kind):
    """Rerunning an ended plan would write this step's rows into window pages that the next plan
    recycled (here: for sequence "b"): refused, before anything is written. The newest plan may be
    run again (it writes the same slots)."""
    layer, m, att, plan1, inputs = setup(kind)
    att(plan1, **dict(inputs))
    m.add_sequence("b")
    plan2 = m.plan(["a", "b"], [0, 1, 5])  # a's window slides; b takes pages a released
    g = torch.Generator().manual_seed(9)
    step2 = make_sequence(layer, 5, g)
    out2 = att(plan2, **step2)
    assert torch.equal(att(plan2, **step2), out2)  # the newest plan, again
    before = pools(att)
    with pytest.raises(StalePlanError, match=r"plan #\d+ is older than plan #\d+, which this layer already ran"):
        att(plan1, **dict(inputs))
    assert_unchanged(before, att)
    m.plan(["b"], [0, 1])
    with pytest.raises(StalePlanError, match=r"plan #\d+ has ended: this layer ran it and the manager has made"):
        att(plan2, **step2)
    assert_unchanged(before, att)


def test_plan_naming_a_freed_sequence_is_refused():
    _, m, att, plan, inputs = setup("csa")
    m.free_sequence("a")
    with pytest.raises(StalePlanError, match="sequence 'a' of the plan was freed"):
        att(plan, **inputs)


def test_plans_made_ahead_run_in_order():
    """The chunks of a long prefill: several plans made before the layer runs any, then run in order."""
    layer = tiny_layer("csa")
    m = make_manager(layer, 4)
    att = longattn.HybridAttention(layer, m, kv_dtype=torch.float32)
    m.add_sequence("a")
    seq = make_sequence(layer, 30, torch.Generator().manual_seed(1))
    plans = [m.plan(["a"], [0, 10]) for _ in range(3)]
    outs = [att(p, **{k: v[10 * i : 10 * i + 10] for k, v in seq.items()}) for i, p in enumerate(plans)]
    m2 = make_manager(layer, 4)
    att2 = longattn.HybridAttention(layer, m2, kv_dtype=torch.float32)
    m2.add_sequence("a")
    whole = att2(m2.plan(["a"], [0, 30]), **seq)
    torch.testing.assert_close(torch.cat(outs), whole, atol=1e-5, rtol=1e-5)


def test_unexpected_inputs_for_kind():
    layer, m, att, plan, inputs = setup("hca")
    inputs["index_q"] = torch.randn(2, 2, 16)
    with pytest.raises(ValueError, match=r"`index_q` is only used by layers that need it; a hca layer takes none"):
        att(plan, inputs.pop("q"), inputs.pop("kv"), **inputs)


def test_layer_construction_errors():
    layer = tiny_layer("csa")
    with pytest.raises(ValueError, match="kv_format must be"):
        longattn.HybridAttention(layer, make_manager(layer, 4), kv_format="int4")
    with pytest.raises(ValueError, match="FP8 pool holds 512-d rows"):
        longattn.HybridAttention(layer, make_manager(layer, 4), kv_format="fp8")
    with pytest.raises(ValueError, match=r"the manager serves ratios \(\)"):
        longattn.HybridAttention(layer, make_manager(tiny_layer("swa"), 4))


@pytest.fixture
def half_backend(test_backend):
    """A test-only backend 'half' that runs the cache writes (via the reference) but declines attention."""
    from longattn.backends import Impl
    from longattn.ops.op import get_op

    impls = {name: get_op(name).impls["reference"] for name in ("append_kv", "compress_kv", "indexer_topk")}
    impls["sparse_attention"] = Impl(get_op("sparse_attention").impls["reference"].run,
                                     lambda inp: ["declines every attention call"])  # fmt: skip
    test_backend("half", impls, device_types=None)


@pytest.mark.parametrize("kind", ["swa", "csa", "hca"])
def test_forced_backend_declining_a_later_op_writes_nothing(kind, half_backend):
    _, _, att, plan, inputs = setup(kind)
    att.backend = "half"
    before = pools(att)
    with pytest.raises(longattn.BackendError, match="half: declines every attention call"):
        att(plan, inputs.pop("q"), inputs.pop("kv"), **inputs)
    for x, y in zip(before, pools(att)):
        assert torch.equal(x.nan_to_num(7.0), y.nan_to_num(7.0))
