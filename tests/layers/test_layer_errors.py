"""HybridAttention bad input: a clear error, and the caches are left exactly as they were."""

import longattn
import pytest
import torch

from tests.layers.test_hybrid_attention import D, H, make_manager, make_sequence, tiny_layer


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
]


@pytest.mark.parametrize("name,mutate,exc,msg", CASES, ids=[c[0] for c in CASES])
def test_bad_inputs_write_nothing(name, mutate, exc, msg):
    _, _, att, plan, inputs = setup()
    mutate(inputs)
    before = pools(att)
    with pytest.raises(exc, match=msg):
        att(plan, inputs.pop("q"), inputs.pop("kv"), **inputs)
    for x, y in zip(before, pools(att)):
        assert torch.equal(x.nan_to_num(7.0), y.nan_to_num(7.0))


def test_plan_pages_outside_the_pool():
    layer, _, att, _, inputs = setup("hca")
    big = make_manager(layer, 4, pages=4096)
    for i in range(80):  # push this plan's pages beyond the layer's 128-page pools
        big.add_sequence(i)
        big.plan([i], [0, 40])
    big.add_sequence("a")
    big.plan(["a"], [0, 10])
    plan = big.plan(["a"], [0, 2])
    inputs = {k: v for k, v in inputs.items() if not k.startswith("index")}
    before = pools(att)
    with pytest.raises(ValueError, match=r"page table points outside the pool: page \d+ >= 128 pages"):
        att(plan, inputs.pop("q"), inputs.pop("kv"), **inputs)
    for x, y in zip(before, pools(att)):
        assert torch.equal(x.nan_to_num(7.0), y.nan_to_num(7.0))


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
def half_backend(monkeypatch):
    """A test-only backend 'half' that runs the cache writes (via the reference) but declines attention."""
    import sys

    from longattn.backends import Backend, OpImpl, registry
    from longattn.backends.reference import BACKEND as REF

    ops = {name: REF.ops[name] for name in ("append_kv", "compress_kv", "indexer_topk")}
    ops["sparse_attention"] = OpImpl(REF.ops["sparse_attention"].fn, lambda **_: ["declines every attention call"])
    mod = type(sys)("half_longattn_backend")
    mod.BACKEND = Backend("half", "test double", None, ops)
    monkeypatch.setitem(sys.modules, "half_longattn_backend", mod)
    registry.register_backend("half", "half_longattn_backend")
    yield
    registry._MODULES.pop("half", None)
    registry._loaded.pop("half", None)


@pytest.mark.parametrize("kind", ["swa", "csa", "hca"])
def test_forced_backend_declining_a_later_op_writes_nothing(kind, half_backend):
    _, _, att, plan, inputs = setup(kind)
    att.backend = "half"
    before = pools(att)
    with pytest.raises(longattn.BackendError, match="half: declines every attention call"):
        att(plan, inputs.pop("q"), inputs.pop("kv"), **inputs)
    for x, y in zip(before, pools(att)):
        assert torch.equal(x.nan_to_num(7.0), y.nan_to_num(7.0))
