"""torch.library custom ops: schemas and fakes (opcheck), routing of the public ops, torch.compile.

- ``torch.library.opcheck`` on every op (float and FP8 pools where an op takes a pool): schema
  (declared mutations and nothing else), fake tensors, AOT dispatch static and dynamic.
- each public op reaches the backend through its ``longattn::`` op (with or without grad mode);
  a direct ``torch.ops.longattn.*`` call is validated like the public function.
- ``torch.compile(fullgraph=True)`` over a ``longattn.nn.DeepseekV4Attention`` decode step of each
  layer kind gives exactly the eager output and cache contents (aot_eager backend: same kernels; the
  inductor run is in the slow tests, as it compiles C++).
"""

import copy

import longattn
import pytest
import torch
from longattn.cache import Fp8IndexKeyPool, Fp8KVPool, quantize_index_k_fp8
from longattn.configs import ModelConfig, RopeConfig
from longattn.nn import DeepseekV4Attention, PagedKVCache
from longattn.ops.op import all_ops, get_op
from longattn.rope import inv_freq
from torch.utils._python_dispatch import TorchDispatchMode

OPCHECK_TESTS = ("test_schema", "test_faketensor", "test_aot_dispatch_static", "test_aot_dispatch_dynamic")


def _fp8_pool(pages, page, g):
    pool = Fp8KVPool.empty(pages, page)
    pool.write_rows(torch.arange(pages * page), torch.randn(pages * page, 512, generator=g))
    return pool


def op_cases():
    g = torch.Generator().manual_seed(0)
    T, H, D = 3, 2, 16
    q = torch.randn(T, H, D, generator=g)
    kv = torch.randn(20, D, generator=g)
    idx = torch.tensor([[0, 5, -1, 19], [3, 3, 7, 25], [1, 2, 4, 8]], dtype=torch.int32)
    lens = torch.tensor([4, 2, 3], dtype=torch.int32)
    extra = torch.randn(2, 4, D, generator=g).view(-1, D)
    sink = torch.randn(H, generator=g)
    cases = {
        "sparse_attention/float": (
            "sparse_attention",
            (q, kv, 0, idx, lens, extra, 0, idx % 8, None, sink, 0.25, None),
        ),
        "sparse_attention/no_extra": ("sparse_attention", (q, kv, 0, idx, None, None, 0, None, None, None, 0.25, None)),
    }
    q512 = torch.randn(2, 2, 512, generator=g)
    pool = _fp8_pool(2, 4, g)
    idx8 = torch.tensor([[0, 7, -1], [2, 3, 5]], dtype=torch.int32)
    cases["sparse_attention/fp8"] = (
        "sparse_attention", (q512, pool.data, 4, idx8, None, pool.data, 4, idx8, None, None, 512**-0.5, None)
    )  # fmt: skip
    out_a, out_b = torch.randn(T, H, D, generator=g), torch.randn(T, H, D, generator=g)
    lse_a = torch.tensor([[0.5, float("-inf")], [1.0, 2.0], [float("-inf"), float("-inf")]])
    lse_b = torch.randn(T, H, generator=g)
    cases["merge_attention_states"] = ("merge_attention_states", (out_a, lse_a, out_b, lse_b, None))
    cases["apply_attention_sink"] = ("apply_attention_sink", (out_a, lse_b, sink, None))
    qi, w = torch.randn(T, 2, 8, generator=g), torch.randn(T, 2, generator=g)
    ik = torch.randn(12, 8, generator=g)
    vis = torch.tensor([3, 12, 0], dtype=torch.int32)
    bt = torch.tensor([[2, 0, -1], [1, 2, 0]], dtype=torch.int32)
    seq = torch.tensor([0, 1, 1], dtype=torch.int32)
    cases["indexer_logits/flat"] = ("indexer_logits", (qi, w, ik, vis, None, None, None))
    cases["indexer_logits/paged"] = ("indexer_logits", (qi, w, ik.view(3, 4, 8), vis, bt, seq, None))
    cases["indexer_topk/flat"] = ("indexer_topk", (qi, w, ik, vis, 4, None, None, False, None))
    cases["indexer_topk/paged_slots"] = ("indexer_topk", (qi, w, ik.view(3, 4, 8), vis, 5, bt, seq, True, None))
    # FP8 index-key pool: crosses the schema as its uint8 data [P, page * (Di + 4)] (Di = 16 from q)
    qi16 = torch.randn(T, 2, 16, generator=g)
    ik8 = quantize_index_k_fp8(torch.randn(3, 4, 16, generator=g)).data
    cases["indexer_logits/fp8_flat"] = ("indexer_logits", (qi16, w, ik8, vis, None, None, None))
    cases["indexer_topk/fp8_paged_slots"] = ("indexer_topk", (qi16, w, ik8, vis, 5, bt, seq, True, None))
    a, b = torch.randn(11, 2 * 8, generator=g), torch.randn(11, 2 * 8, generator=g)
    cases["compress_pool/overlap"] = ("compress_pool", (a, b, 4, True, None))
    cases["compress_pool/plain"] = ("compress_pool", (a, b, 3, False, None))
    # compress_kv: two sequences, 6 and 5 new tokens, ratio 4 with overlap, d = 8, paged out pool.
    pos = torch.tensor([0, 1, 2, 3, 4, 5, 0, 1, 2, 3, 4])
    rows = torch.tensor([0] * 6 + [1] * 5, dtype=torch.int32)
    state = torch.zeros(4, 4, 2 * 16)
    sbt = torch.tensor([[0, 1], [2, 3]], dtype=torch.int32)
    out = torch.zeros(4, 2, 8)
    obt = torch.tensor([[0, 1], [3, -1]], dtype=torch.int32)
    freqs = inv_freq(RopeConfig(10000.0), 4)
    cases["compress_kv/float"] = (
        "compress_kv", (a, b, pos, rows, 4, True, state, sbt, out, 0, obt, torch.ones(8), 1e-6, freqs, None)
    )  # fmt: skip
    a5, b5 = torch.randn(8, 512, generator=g), torch.randn(8, 512, generator=g)
    pos5 = torch.arange(8)
    rows5 = torch.zeros(8, dtype=torch.int32)
    state5 = torch.zeros(1, 4, 1024)
    fp8_out = Fp8KVPool.empty(2, 2)
    cases["compress_kv/fp8"] = (
        "compress_kv",
        (a5, b5, pos5, rows5, 4, False, state5, torch.tensor([[0]], dtype=torch.int32), fp8_out.data, 2,
         torch.tensor([[1, 0]], dtype=torch.int32), torch.ones(512), 1e-6, inv_freq(RopeConfig(10000.0), 64), None),
    )  # fmt: skip
    # compress_kv into an FP8 index-key pool: its uint8 data with page_size -2 (Di = 16 = d, from a)
    fp8_index_out = Fp8IndexKeyPool.empty(4, 2, 8 * 2)
    a16, b16 = torch.randn(11, 2 * 16, generator=g), torch.randn(11, 2 * 16, generator=g)
    cases["compress_kv/fp8_index"] = (
        "compress_kv",
        (a16, b16, pos, rows, 4, True, torch.zeros(4, 4, 4 * 16), sbt, fp8_index_out.data, -2, obt, torch.ones(16),
         1e-6, freqs, None),
    )  # fmt: skip
    slots = torch.tensor([3, -1, 17], dtype=torch.int32)
    cases["append_kv/float"] = ("append_kv", (torch.zeros(5, 4, D), 0, torch.randn(3, D, generator=g), slots, None))
    cases["append_kv/fp8"] = (
        "append_kv",
        (Fp8KVPool.empty(3, 8).data, 8, torch.randn(3, 512, generator=g), slots, None),
    )
    return cases


CASES = op_cases()


@pytest.mark.parametrize("case", sorted(CASES))
def test_opcheck(case):
    name, args = CASES[case]
    torch.library.opcheck(get_op(name).custom_op, copy.deepcopy(args), test_utils=OPCHECK_TESTS)


def test_every_public_op_has_a_custom_op():
    assert {op.name for op in all_ops()} == {
        "sparse_attention", "merge_attention_states", "apply_attention_sink", "indexer_logits", "indexer_topk",
        "compress_pool", "compress_kv", "append_kv",
    }  # fmt: skip
    for op in all_ops():
        assert str(op.custom_op) == f"longattn.{op.name}.default"
        assert hasattr(longattn, op.name)


class _Recorder(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(str(func))
        return func(*args, **(kwargs or {}))


def _public_calls():
    g = torch.Generator().manual_seed(1)
    q = torch.randn(2, 2, 16, generator=g)
    kv = torch.randn(2, 4, 16, generator=g)  # paged float pool
    idx = torch.tensor([[0, 1], [5, -1]], dtype=torch.int32)
    lse = torch.randn(2, 2, generator=g)
    fp8 = _fp8_pool(1, 4, g)
    return {
        "sparse_attention": lambda: longattn.sparse_attention(q, kv, idx, extra_kv=kv, extra_indices=idx),
        "sparse_attention(fp8)": lambda: longattn.sparse_attention(torch.randn(2, 1, 512), fp8, idx),
        "merge_attention_states": lambda: longattn.merge_attention_states(q, lse, q, lse),
        "apply_attention_sink": lambda: longattn.apply_attention_sink(q, lse, torch.zeros(2)),
        "indexer_logits": lambda: longattn.indexer_logits(
            q, lse, kv.view(8, 16), torch.tensor([3, 8], dtype=torch.int32)
        ),
        "indexer_topk": lambda: longattn.indexer_topk(
            q, lse, kv.view(8, 16), torch.tensor([3, 8], dtype=torch.int32), 2
        ),
        "compress_pool": lambda: longattn.compress_pool(torch.randn(8, 4), torch.randn(8, 4), 4, True),
        "append_kv": lambda: longattn.append_kv(kv, torch.randn(2, 16), torch.tensor([0, 7], dtype=torch.int32)),
        "append_kv(fp8)": lambda: longattn.append_kv(fp8, torch.randn(1, 512), torch.tensor([2], dtype=torch.int32)),
    }


@pytest.mark.parametrize("name", sorted(_public_calls()))
def test_public_ops_run_through_their_custom_op(name):
    with _Recorder() as rec:
        _public_calls()[name]()
    op = name.split("(")[0]
    assert f"longattn.{op}.default" in rec.ops, rec.ops[:5]


def test_compress_kv_runs_through_its_custom_op():
    att = _tiny_layers()[1]
    cache = PagedKVCache([att.layer], max_batch_size=1, max_context=16, page_size=4)
    cache.begin_step(1, 9)
    with _Recorder() as rec, torch.no_grad():
        att(torch.randn(1, 9, 32), cache=cache)
    assert rec.ops.count("longattn.compress_kv.default") == 2  # attention and indexer compressors
    assert {"longattn.append_kv.default", "longattn.indexer_topk.default", "longattn.sparse_attention.default"} <= set(
        rec.ops
    )


def test_validation_stays_in_python_and_messages_are_unchanged():
    with pytest.raises(ValueError, match=r"sparse_attention: `indices` must be 2-D \[T, K\]"):
        longattn.sparse_attention(torch.randn(2, 2, 16), torch.randn(4, 16), torch.zeros(2, dtype=torch.int32))
    with pytest.raises(ValueError, match="not a backend"):
        longattn.sparse_attention(
            torch.randn(1, 1, 8), torch.randn(4, 8), torch.zeros(1, 1, dtype=torch.int32), backend="nope"
        )


def test_public_ops_take_their_custom_op_under_grad_mode_too():
    out_a = torch.randn(2, 2, 8, requires_grad=True)
    with _Recorder() as rec:
        longattn.merge_attention_states(out_a, torch.randn(2, 2), torch.randn(2, 2, 8), torch.randn(2, 2))
    assert "longattn.merge_attention_states.default" in rec.ops


# --- torch.compile over a DeepseekV4Attention decode step --------------------------------------------------

TINY = ModelConfig(
    name="tiny", dim=32, n_layers=3, n_heads=4, q_lora_rank=16, o_groups=2, o_lora_rank=8, index_topk=3,
    compress_ratios=(0, 4, 8, 0), head_dim=32, rope_dim=8, window=8, index_n_heads=4, index_head_dim=16,
)  # fmt: skip


def _tiny_layers():
    g = torch.Generator().manual_seed(3)
    layers = []
    for i in range(3):
        m = DeepseekV4Attention(TINY, i).eval()
        with torch.no_grad():
            for p in m.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
        layers.append(m)
    return layers


def _decode_setup(att, index_format="float"):
    """Two caches with the same 21-token prefill of 2 sequences, and the plans of one decode step."""
    g = torch.Generator().manual_seed(4)
    x0, x1 = torch.randn(2, 21, 32, generator=g), torch.randn(2, 32, generator=g)
    caches = [PagedKVCache([att.layer], max_batch_size=2, max_context=32, page_size=4, index_format=index_format)
              for _ in range(2)]  # fmt: skip
    with torch.no_grad():
        for c in caches:
            c.begin_step(2, 21)
            att(x0, cache=c)
    plans = [c.begin_step(2, 1).plans[0] for c in caches]  # a decode step: one chunk
    return x1, caches, plans


def _compiled_decode_matches_eager(att, backend, index_format="float"):
    torch._dynamo.reset()
    x1, (ca, cb), (pa, pb) = _decode_setup(att, index_format)
    la, lb = ca.layer_states[att.layer_idx], cb.layer_states[att.layer_idx]
    compiled = torch.compile(att.forward_paged, fullgraph=True, backend=backend)
    with torch.no_grad():
        eager = att.forward_paged(x1, pa, la)
        out = compiled(x1, pb, lb)
    return eager, out, la, lb


@pytest.mark.parametrize("kind", [0, 1, 2], ids=["swa", "csa", "hca"])
def test_compile_fullgraph_decode_equals_eager(kind):
    att = _tiny_layers()[kind]
    eager, out, la, lb = _compiled_decode_matches_eager(att, "aot_eager")
    assert torch.equal(out, eager)
    for name in ("window_pool", "compressed_pool", "index_pool", "state_pool", "index_state_pool"):
        a, b = getattr(la, name), getattr(lb, name)
        assert (a is None) == (b is None) and (a is None or torch.equal(a, b)), name


def test_compile_fullgraph_decode_with_fp8_index_keys():
    """A CSA decode step over FP8 indexer keys (the Fp8IndexKeyPool crosses compress_kv's and the
    indexer's schemas as its uint8 data) compiles whole and equals eager, records included."""
    att = _tiny_layers()[1]
    eager, out, la, lb = _compiled_decode_matches_eager(att, "aot_eager", "fp8")
    assert torch.equal(out, eager)
    assert isinstance(la.index_pool, Fp8IndexKeyPool) and torch.equal(la.index_pool.data, lb.index_pool.data)
    for name in ("window_pool", "compressed_pool", "state_pool", "index_state_pool"):
        assert torch.equal(getattr(la, name), getattr(lb, name)), name


@pytest.mark.slow
@pytest.mark.parametrize("kind", [0, 1, 2], ids=["swa", "csa", "hca"])
def test_compile_fullgraph_inductor_decode(kind):
    att = _tiny_layers()[kind]
    eager, out, la, lb = _compiled_decode_matches_eager(att, "inductor")
    # inductor fuses and reorders the fp32 projections: a few ulps of the output's magnitude.
    torch.testing.assert_close(out, eager, atol=64 * 2**-24 * float(eager.abs().max()), rtol=0)
    torch.testing.assert_close(lb.window_pool, la.window_pool, atol=1e-6, rtol=1e-6)
