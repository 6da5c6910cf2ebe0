"""``HybridAttention.warmup``: argument errors, the reference backend (nothing runs), and a real run
under the Triton backend that leaves the layer's own caches as they were. Which variants the warm-up
launches: tests/triton/test_triton_warmup.py."""

import longattn
import pytest
import torch

from tests.helpers.device import CAN_RUN_TRITON, TRITON_SKIP_REASON
from tests.layers.helpers import layer_weights, make_manager, make_sequence, tiny_layer


def snapshot(att):
    m = att.manager
    pools = [(p if isinstance(p, torch.Tensor) else p.data).clone() for p in att.pools()]
    free = [m.window_alloc.num_free] + [a.num_free for a in m.compressed_alloc.values()]
    return pools, free + [m._plans_made, len(m._seqs)]


def assert_unchanged(att, before):
    pools, book = snapshot(att)
    assert all(torch.equal(a, b) for a, b in zip(before[0], pools)), "the warm-up wrote into the layer's pools"
    assert book == before[1], "the warm-up changed the layer's manager"


def prefilled(kind, backend=None):
    """A layer (bf16 pools) whose manager holds a sequence of 10 tokens."""
    L = tiny_layer(kind)
    att = longattn.HybridAttention(L, make_manager(L, 4, pages=40), kv_dtype=torch.bfloat16, backend=backend)
    g = torch.Generator().manual_seed(0)
    seq = make_sequence(L, 12, g)
    att.manager.add_sequence("a")
    x = {k: v[:10].to(torch.bfloat16) for k, v in seq.items()}
    att(att.manager.plan(["a"], [0, 10]), **x, **layer_weights(L, g))
    return att, seq, g


@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        (dict(max_batch=4, batch_sizes=(1, 2)), ValueError, r"give `max_batch` .* or `batch_sizes` .*, not both"),
        (dict(max_batch=0), ValueError, r"`max_batch` must be a positive int, got 0"),
        (dict(max_batch=True), ValueError, r"`max_batch` must be a positive int"),
        (dict(batch_sizes=(1, 0)), ValueError, r"`batch_sizes` must hold positive ints, got 0"),
        (dict(batch_sizes=()), ValueError, r"`batch_sizes` must not be empty"),
        (dict(batch_sizes=4), TypeError, r"`batch_sizes` must be a sequence of positive ints, got int"),
        (dict(prefill_chunks=(16, 2.5)), ValueError, r"`prefill_chunks` must hold positive ints, got 2.5"),
        (dict(prefill_chunks="16"), TypeError, r"`prefill_chunks` must be a sequence"),
        (dict(max_context=-1), ValueError, r"`max_context` must be a positive int \(tokens\), got -1"),
        (dict(dtype=torch.int32), ValueError, r"`dtype` must be one of"),
        (dict(dtypes=[torch.float32]), TypeError, r"`dtypes` must be a dict"),
        (dict(dtypes={"index_q": torch.float32}), ValueError, r"`dtypes` names 'index_q', which a hca layer"),
        (dict(dtypes={"q": torch.int8}), ValueError, r"`dtypes\['q'\]` must be one of"),
        (dict(attn_sink=None), TypeError, r"`attn_sink` must be a bool, got NoneType"),
    ],
)
def test_argument_errors(kwargs, error, match):
    att, _, _ = prefilled("hca")
    before = snapshot(att)
    with pytest.raises(error, match=r"HybridAttention\[hca, layer 0\]\.warmup: " + match):
        att.warmup(**kwargs)
    assert_unchanged(att, before)


def test_reference_backend_runs_nothing():
    att, _, _ = prefilled("csa", backend="reference")
    before = snapshot(att)
    report = att.warmup(max_batch=4, prefill_chunks=(8,), max_context=64)
    assert report.steps == report.launches == report.variants == 0 and report.backends == ("reference",)
    assert report.skipped and "Triton" in report.skipped
    assert_unchanged(att, before)


@pytest.mark.skipif(not CAN_RUN_TRITON, reason=TRITON_SKIP_REASON)
@pytest.mark.parametrize("kind", ["swa", "csa", "hca"])
def test_triton_warmup_runs_and_leaves_the_caches_alone(kind):
    att, seq, g = prefilled(kind, backend="triton")
    before = snapshot(att)
    report = att.warmup(batch_sizes=(1, 3), prefill_chunks=(5,), max_context=40)
    assert_unchanged(att, before)
    assert report.skipped is None and report.backends == ("triton",)
    contexts = {"swa": (1, 16), "csa": (1, 16, 32, 48), "hca": (1, 32, 64)}[kind]  # 4-row pages, ratio 4 / 8
    assert report.contexts == contexts and report.batch_sizes == (1, 3) and report.prefill_chunks == (5,)
    # every end context: the decode steps of both sizes and the chunk, each after the prefill of its
    # longest sequence (none at the 1-token context: there all sequences are new)
    assert report.steps == 3 * len(contexts) + 3 * (len(contexts) - 1)
    kernels = {"swa": 2, "csa": 5, "hca": 3}[kind]  # per step: append, (compress, index compress + 2 top-k,) attend
    assert report.launches >= kernels * report.steps and report.variants >= kernels
    assert report.compiled is None and report.seconds > 0  # the interpreter compiles nothing
    # the layer goes on serving: the next step equals the one of a layer that never warmed up
    fresh, _, _ = prefilled(kind, backend="triton")
    x = {k: v[10:12].to(torch.bfloat16) for k, v in seq.items()}
    w = layer_weights(att.layer, torch.Generator().manual_seed(0))
    outs = [a(a.manager.plan(["a"], [0, 2]), **x, **w) for a in (att, fresh)]
    assert torch.equal(outs[0], outs[1])


def test_module_warmup_argument_errors():
    from longattn.nn import DeepseekV4Attention

    from tests.nn.helpers import TINY

    module = DeepseekV4Attention(TINY, 1)  # CSA, ratio 4
    m = longattn.CacheManager(ratios=(4, 8), page_size=4, num_window_pages=8, num_compressed_pages={4: 8, 8: 8},
                              num_state_pages={4: 8, 8: 8}, window=TINY.window)  # fmt: skip
    who = r"DeepseekV4Attention\[layer 1\]\.warmup: "
    with pytest.raises(TypeError, match=who + r"`cache_layer` must be a HybridAttention, got str"):
        module.warmup("layer 1")
    with pytest.raises(ValueError, match=who + r"`cache_layer` serves another layer config"):
        module.warmup(longattn.HybridAttention(TINY.layer(2), m))
    with pytest.raises(ValueError, match=who + r"`max_batch` must be a positive int, got 0"):
        module.warmup(longattn.HybridAttention(TINY.layer(1), m), max_batch=0)
    assert not m._seqs and m.window_alloc.num_free == 8
