"""sparse_attention on every backend vs the float64 oracle, and its algebraic properties.

Tolerances: tests/helpers/sparse.py (fp32: the derived bound of tests/tolerance.py; bf16 / fp16 on a
kernel backend: the low-precision 2x rule). Backend-specific checks (split-KV counts, launch tiles,
tiling mirrors): tests/triton, tests/ascend.
"""

import math

import longattn
import pytest
import torch
from longattn.memory import chunk_budget
from longattn.ops.sparse_attention import reference as sparse_ref

from tests import oracle
from tests.helpers.backends import call, declines, device_reason, other_or_reference, skip_if_emulated
from tests.helpers.device import DEVICE, dev, to_device
from tests.helpers.dispatch import inputs
from tests.helpers.sparse import (
    NAN,
    assert_rule_cells,
    attention_rule,
    check_against_oracle,
    check_sparse,
    check_sparse_nonfinite,
    fp8_pool_inputs,
    oracle_of,
    sparse_nonfinite_inputs,
)
from tests.ops.cases import SPARSE_CASES, TILING_CASES, SparseCase, make_sparse_inputs

OP = "sparse_attention"


def run(args, backend):
    """sparse_attention on ``backend`` with ``args`` (built on the CPU) on the test device."""
    return call(longattn.sparse_attention, **to_device(args), backend=backend)


@pytest.mark.parametrize("case", SPARSE_CASES + TILING_CASES, ids=str)
def test_matches_oracle(backend, case: SparseCase):
    args = make_sparse_inputs(case)
    out, lse = run(args, backend)
    check_sparse(out, lse, args, case.name, backend)
    # Rows without keys: exactly 0 and -inf (never NaN), like the reference.
    ref_out, ref_lse = longattn.sparse_attention(**args, backend="reference")
    out, lse = out.cpu(), lse.cpu()
    assert torch.equal(torch.isneginf(lse), torch.isneginf(ref_lse))
    assert torch.equal(out[torch.isneginf(lse)], ref_out[torch.isneginf(ref_lse)])


def test_declared_support_of_the_shared_cases():
    """The op x backend tests skip a case a backend declines: pin that the kernels accept every shared
    case, so that a stricter declaration fails here instead of turning into silent skips."""
    for case in SPARSE_CASES + TILING_CASES:
        inp = inputs(OP, **_canonical(make_sparse_inputs(case)))
        for name in ("reference", "triton", "ascend_sim"):
            if device_reason(name) is None:
                assert declines(OP, name, inp, DEVICE) == [], (name, case.name)


def _canonical(args):
    """The op's canonical fields from make_sparse_inputs' keyword arguments."""
    a = dict(args)
    D = a["q"].shape[-1]
    a["kv"] = a["kv"].reshape(-1, D)
    for k in ("extra_kv", "extra_indices", "extra_topk_length"):
        a.setdefault(k, None)
    a["softmax_scale"] = a.get("softmax_scale") or D**-0.5
    return a


@pytest.mark.parametrize("case", SPARSE_CASES[:14], ids=str)
def test_reference_chunked_equals_unchunked(case: SparseCase):
    """The reference's key chunks: a tiny chunk budget (one key per chunk) changes only rounding
    (chunks merge exactly), so the chunked result meets the same oracle bound and has the same empty
    rows."""
    args = make_sparse_inputs(case)
    _, lse = longattn.sparse_attention(**args, backend="reference")
    with chunk_budget(1):
        out_c, lse_c = longattn.sparse_attention(**args, backend="reference")
    check_against_oracle(out_c, lse_c, args, case.name + " (chunked)")
    assert torch.equal(torch.isneginf(lse), torch.isneginf(lse_c))


def test_empty_rows_give_zero_and_neg_inf(backend):
    args = make_sparse_inputs(SparseCase("e", pattern="all_invalid", N2=6, K2=4, sink="finite"))
    out, lse = run(args, backend)
    assert torch.all(out == 0) and torch.all(torch.isneginf(lse))


def test_pos_inf_sink_gives_zero_output_but_keeps_lse(backend):
    args = make_sparse_inputs(SparseCase("s", sink="pos_inf", pattern="in_range"))
    out, lse = run(args, backend)
    assert torch.all(out == 0) and torch.all(torch.isfinite(lse))


def test_huge_logits_no_overflow(backend):
    args = make_sparse_inputs(SparseCase("h", magnitude=300.0, pattern="in_range", sink="finite"))
    out, lse = run(args, backend)
    assert torch.isfinite(out).all() and torch.isfinite(lse).all()
    assert float(lse.abs().max()) > 1e4  # really huge


@pytest.mark.parametrize("H,D", [(1, 64), (3, 64), (16, 128), (4, 512)])
def test_full_index_set_equals_dense_sdpa(backend, H, D):
    """All N slots indexed for every token == ordinary dense softmax attention (torch SDPA, MQA)."""
    T, N = 5, 33
    q, kv = torch.randn(T, H, D, dtype=torch.float64), torch.randn(N, D, dtype=torch.float64)
    idx = torch.arange(N, dtype=torch.int32).repeat(T, 1)
    out, lse = call(longattn.sparse_attention, *dev(q.float(), kv.float(), idx), backend=backend)
    k = kv.expand(H, N, D)
    dense = torch.nn.functional.scaled_dot_product_attention(q.transpose(0, 1), k, k).transpose(0, 1)
    dense_lse = torch.logsumexp(torch.einsum("thd,nd->thn", q, kv) * D**-0.5, dim=-1)
    torch.testing.assert_close(out.cpu().double(), dense, atol=2e-5, rtol=2e-5)
    torch.testing.assert_close(lse.cpu().double(), dense_lse, atol=2e-5, rtol=2e-5)


def _split_inputs(kind):
    if kind == "mixed_invalid":  # random invalid indices of every kind
        args = make_sparse_inputs(SparseCase("split", T=3, H=5, D=64, N=80, K=40, sink="finite", seed=4))
        return args["q"], args["kv"], args["indices"], args["attn_sink"], 20
    T, H, D, N, K = 4, 6, 64, 40, 24
    q, kv = torch.randn(T, H, D), torch.randn(N, D)
    idx = torch.stack([torch.randperm(N)[:K] for _ in range(T)]).int()
    idx[1, :] = -1  # a row with no keys at all
    idx[2, :12] = -1  # a row whose first half is empty
    return q, kv, idx, torch.randn(H), 12


@pytest.mark.parametrize("kind", ["empty_rows", "mixed_invalid"])
def test_merge_of_split_equals_whole_and_sink_after_merge(backend, kind):
    """Split the key set of every row in two disjoint parts: merge(parts) == whole, then the sink once
    (the backend's own merge / sink where it has them, else the reference's); the two-stream form is
    the same union."""
    q, kv, idx, sink, cut = dev(*_split_inputs(kind))
    combine = other_or_reference("merge_attention_states", backend)

    def attend(*a, **kw):
        return call(longattn.sparse_attention, *a, backend=backend, **kw)

    whole, lse_whole = attend(q, kv, idx, attn_sink=sink)
    a, lse_a = attend(q, kv, idx[:, :cut])
    b, lse_b = attend(q, kv, idx[:, cut:])
    merged, lse_m = longattn.merge_attention_states(*dev(a, lse_a, b, lse_b), backend=combine)
    torch.testing.assert_close(lse_m, lse_whole, atol=1e-5, rtol=1e-5)
    sunk = longattn.apply_attention_sink(merged, lse_m, sink, backend=combine)
    torch.testing.assert_close(sunk, whole, atol=1e-5, rtol=1e-5)
    two, lse_two = attend(q, kv, idx[:, :cut], extra_kv=kv, extra_indices=idx[:, cut:], attn_sink=sink)
    torch.testing.assert_close(two, whole, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(lse_two, lse_whole, atol=1e-5, rtol=1e-5)


def test_paged_pool_equals_flat_pool(backend):
    args = make_sparse_inputs(SparseCase("p", N=36, page=6, N2=9, K2=5, sink="finite"))
    out, lse = run(args, backend)
    out_f, lse_f = run(dict(args, kv=args["kv"].reshape(-1, args["q"].shape[-1])), backend)
    assert torch.equal(out, out_f) and torch.equal(lse, lse_f)


def test_int64_indices_equal_int32(backend):
    args = make_sparse_inputs(SparseCase("i", N2=9, K2=5, lengths="partial"))
    out, lse = run(args, backend)
    args64 = {
        k: (v.long() if isinstance(v, torch.Tensor) and not v.is_floating_point() else v) for k, v in args.items()
    }
    out64, lse64 = run(args64, backend)
    assert torch.equal(out, out64) and torch.equal(lse, lse64)


def test_sink_is_a_zero_valued_key(backend):
    """The sink equals an extra key with logit sink[h] and value 0 in the softmax denominator."""
    T, H, D, N = 3, 4, 32, 10
    q, kv = torch.randn(T, H, D, dtype=torch.float64), torch.randn(N, D, dtype=torch.float64)
    sink = torch.randn(H, dtype=torch.float64)
    idx = torch.arange(N, dtype=torch.int32).repeat(T, 1)
    out, _ = call(longattn.sparse_attention, *dev(q.float(), kv.float(), idx), attn_sink=dev(sink.float())[0],
                  backend=backend)  # fmt: skip
    logits = torch.einsum("thd,nd->thn", q, kv) * D**-0.5
    logits = torch.cat([logits, sink.view(1, H, 1).expand(T, H, 1)], dim=-1)
    p = torch.softmax(logits, dim=-1)[..., :N]
    torch.testing.assert_close(out.cpu().double(), torch.einsum("thn,nd->thd", p, kv), atol=1e-5, rtol=1e-5)


def test_strided_and_noncontiguous_inputs(backend):
    """q with arbitrary strides, a pool whose rows are strided (a column slice of a wider tensor),
    int64 indices and lengths with a non-unit stride."""
    T, H, D, N = 3, 5, 64, 40
    q = torch.randn(H, T, D).to(DEVICE).transpose(0, 1)  # [T, H, D], non-contiguous
    wide = torch.randn(N, 3 * D).to(DEVICE)
    kv = wide[:, D : 2 * D]  # row stride 3D
    idx = torch.randint(-2, N + 2, (T, 2 * 20)).long().to(DEVICE)[:, ::2]  # column stride 2
    lengths = torch.tensor([[20, 0], [7, 0], [15, 0]]).long().to(DEVICE)[:, 0]
    args = dict(q=q, kv=kv, indices=idx, topk_length=lengths, attn_sink=None, softmax_scale=0.2)
    out, lse = call(longattn.sparse_attention, **args, backend=backend)
    check_against_oracle(out, lse, args, "strided")


def test_large_k_hca_decode_shape(backend):
    """K = 128 window + 8192 compressed keys per token runs (V4 HCA at 1M) and matches a direct
    computation on the union of keys (the reference in several key chunks)."""
    skip_if_emulated(backend, "8,320 keys per token")
    T, H, D = 2, 8, 512
    kv, comp = torch.randn(256, D).bfloat16(), torch.randn(9000, D).bfloat16()
    q = torch.randn(T, H, D).bfloat16()
    win = torch.randint(0, 256, (T, 128)).int()
    cidx = torch.randint(0, 9000, (T, 8192)).int()
    with chunk_budget(8 << 20):  # force several key chunks (the reference)
        out, lse = call(longattn.sparse_attention, *dev(q, kv, win), extra_kv=dev(comp)[0],
                        extra_indices=dev(cidx)[0], backend=backend)  # fmt: skip
    out, lse = out.cpu(), lse.cpu()
    keys = torch.cat([kv.float()[win.long()], comp.float()[cidx.long()]], dim=1)  # [T, K, D]
    logits = torch.einsum("thd,tkd->thk", q.float(), keys) * D**-0.5
    ref = torch.einsum("thk,tkd->thd", torch.softmax(logits, -1), keys)
    torch.testing.assert_close(lse, torch.logsumexp(logits, -1), atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(out.float(), ref, atol=2e-2, rtol=1e-2)  # bf16 output: 2**-8 relative
    assert math.isfinite(float(out.float().abs().max()))


@pytest.mark.parametrize("pool", ["float", "fp8"])
def test_skipped_entries_never_read_the_pool(backend, pool):
    """A NaN / inf row at slot 0 (or any slot no valid index names) cannot reach a result: -1,
    out-of-range and length-masked entries are never read, so they cannot contribute 0 * NaN."""
    from longattn.cache import quantize_kv_fp8

    T, H, D = 3, 2, 512
    g = torch.Generator().manual_seed(3)
    kv = torch.randn(2, 16, D, generator=g)
    q = torch.randn(T, H, D, generator=g)
    idx = torch.tensor([[3, -1, 40, 5], [7, 8, -1, 32], [9, 0, 1, 2]], dtype=torch.int32)
    lengths = torch.tensor([4, 4, 1], dtype=torch.int32)  # token 2 uses slot 9 only
    q, idx, lengths = dev(q, idx, lengths)

    def pool_of(x):
        return quantize_kv_fp8(x.to(DEVICE)) if pool == "fp8" else x.to(DEVICE)

    want = call(longattn.sparse_attention, q, pool_of(kv), idx, topk_length=lengths, backend=backend)
    for poison in (float("nan"), float("inf")):
        bad = kv.clone()
        bad[0, 0] = poison  # slot 0: only token 2 names it, beyond its topk_length
        bad[1, 15] = poison  # slot 31: named by nobody
        got = longattn.sparse_attention(q, pool_of(bad), idx, topk_length=lengths, backend=backend)
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1]), (backend, pool, poison)


# ---------------------------------------------------------------------------------------------------
# FP8 pools (longattn.cache.Fp8KVPool)
# ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("page", [1, 7, 64])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
def test_fp8_pool(backend, dtype, page):
    """An FP8 pool (inside a buffer of e4m3-NaN pages) and a float second stream, indices of every
    invalid kind: the oracle of the dequantised rows."""
    args = fp8_pool_inputs(page, dtype, DEVICE)
    out, lse = run(args, backend)
    assert torch.isfinite(out).all()
    check_sparse(out, lse, args, f"fp8 page={page} {dtype}", backend)


def test_fp8_pool_without_pages(backend):
    from longattn.cache import Fp8KVPool

    g = torch.Generator().manual_seed(4)
    idx = torch.tensor([[0, -1, 5], [3, 2, 1]], dtype=torch.int32)
    args = dict(q=torch.randn(2, 3, 512, generator=g), kv=Fp8KVPool.empty(0, 4, device=DEVICE), indices=idx,
                topk_length=None, extra_kv=torch.randn(5, 512, generator=g), extra_indices=idx,
                extra_topk_length=None, attn_sink=None, softmax_scale=None)  # fmt: skip
    out, lse = run(args, backend)
    check_against_oracle(out, lse, dict(args, kv=torch.zeros(0, 512)), "empty fp8 pool")


def test_fp8_pool_reads_like_its_dequantised_rows(backend):
    """An FP8 pool gives the result of its dequantised rows (paged and as the second stream)."""
    from longattn.cache import dequantize_kv_fp8, quantize_kv_fp8

    g = torch.Generator().manual_seed(3)
    kv = torch.randn(5, 7, 512, generator=g)
    pool = quantize_kv_fp8(kv.to(DEVICE))
    deq = dequantize_kv_fp8(pool)
    q = torch.randn(4, 3, 512, generator=g)
    idx = torch.randint(-2, 40, (4, 9), generator=g, dtype=torch.int32)
    sink = torch.randn(3, generator=g)
    q, idx, sink = dev(q, idx, sink)
    out, lse = call(longattn.sparse_attention, q, pool, idx, extra_kv=pool, extra_indices=idx.flip(1),
                    attn_sink=sink, backend=backend)  # fmt: skip
    ref_out, ref_lse = call(longattn.sparse_attention, q, deq, idx, extra_kv=deq, extra_indices=idx.flip(1),
                            attn_sink=sink, backend=backend)  # fmt: skip
    torch.testing.assert_close(out, ref_out, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(lse, ref_lse, atol=1e-6, rtol=1e-6)
    args = dict(q=q, kv=deq, indices=idx, topk_length=None, attn_sink=sink, softmax_scale=None,
                extra_kv=deq.view(-1, 512), extra_indices=idx.flip(1), extra_topk_length=None)  # fmt: skip
    check_against_oracle(out, lse, args, "fp8 pool")


def test_bf16_subnormals_are_read_exactly(backend):
    """bf16 subnormal values pass unchanged where the math is exact: a token attending to one key gets
    that key's row (Triton under the interpreter: its own bf16 <-> fp32 conversions garble subnormals,
    triton_utils.cast_in / cast_out); a subnormal q against a 2**100 key is a logit of 2**-33 (not 0)."""
    g = torch.Generator().manual_seed(9)
    T, H, D, N = 3, 4, 64, 6
    kv = torch.randn(N, D, generator=g)
    kv[:, ::7] = torch.tensor([2.0**-133, -(2.0**-130), 1e-38, -2e-39, 2.0**-127, 1.1e-38, 3e-39, -1e-40, 5e-39, 2e-40])
    kv = kv.bfloat16()
    q = torch.randn(T, H, D, generator=g).bfloat16()
    idx = torch.tensor([[2, -1], [0, -1], [5, -1]], dtype=torch.int32)
    q_d, kv_d, idx_d = dev(q, kv, idx)
    out, _ = call(longattn.sparse_attention, q_d, kv_d, idx_d, backend=backend)
    assert torch.equal(out.cpu(), kv[idx[:, 0]].unsqueeze(1).expand(T, H, D))
    # q = 2**-133 against a key of 2**100 (and a zero key), scale 2**33: logits 1 and 0 (0 and 0 if the
    # subnormal were lost): lse = log(e + 1), out = e / (e + 1) * 2**100 in dim 0
    q2 = torch.zeros(1, 1, D)
    q2[0, 0, 0] = 2.0**-133
    kv2 = torch.zeros(2, D)
    kv2[0, 0] = 2.0**100
    args2 = dev(q2.bfloat16(), kv2.bfloat16(), torch.tensor([[0, 1]], dtype=torch.int32))
    out2, lse2 = call(longattn.sparse_attention, *args2, softmax_scale=2.0**33, backend=backend)
    p0 = math.e / (math.e + 1)
    assert abs(float(lse2) - math.log(math.e + 1)) < 1e-6
    assert abs(float(out2[0, 0, 0]) / 2.0**100 - p0) < 2.0**-8  # bf16 out


def test_fp8_pool_nan_codes_make_the_key_nan(backend):
    """A record whose e4m3 bytes hold a NaN code (0x7F, 0xFF) reads as a NaN key, as its dequantised row:
    the rows that select it are NaN, the others finite. (The Triton kernel converts e4m3 natively on
    GPUs, where the conversion itself must give the NaN; gpu_check runs this test there.)"""
    from longattn.cache import dequantize_kv_fp8, quantize_kv_fp8

    g = torch.Generator().manual_seed(5)
    pool = quantize_kv_fp8(torch.randn(3, 4, 512, generator=g).to(DEVICE))
    for slot, dim, code in ((1, 5, 0x7F), (6, 300, 0xFF)):  # nope dims: e4m3 bytes of the record
        p, o = divmod(slot, pool.page_size)
        pool.data[p, o * 576 + dim] = code
    deq = dequantize_kv_fp8(pool)
    q = torch.randn(3, 4, 512, generator=g)
    idx = torch.tensor([[0, 1, 2, 3], [6, 7, -1, 4], [0, 2, 3, 11]], dtype=torch.int32)
    q, idx = dev(q, idx)
    out, lse = call(longattn.sparse_attention, q, pool, idx, backend=backend)
    ref_out, ref_lse = call(longattn.sparse_attention, q, deq, idx, backend=backend)
    assert out[:2].isnan().all() and lse[:2].isnan().all(), "a NaN-coded key must make its rows NaN"
    assert torch.isfinite(out[2]).all() and torch.isfinite(lse[2]).all()
    torch.testing.assert_close(out, ref_out, atol=1e-6, rtol=1e-6, equal_nan=True)
    torch.testing.assert_close(lse, ref_lse, atol=1e-6, rtol=1e-6, equal_nan=True)


# ---------------------------------------------------------------------------------------------------
# non-finite logits (README.md "Edge semantics")
# ---------------------------------------------------------------------------------------------------
def _nonfinite_run(backend, sink, budget=None):
    args, want = sparse_nonfinite_inputs()
    if sink:
        args["attn_sink"] = torch.tensor([0.5, -1.0, 2.0, NAN])
    if budget is None:
        out, lse = run(args, backend)
    else:
        with chunk_budget(budget):
            out, lse = run(args, backend)
    ref_out, ref_lse = oracle.sparse_attention(**{k: v for k, v in args.items() if k != "kv"}, kv_rows=args["kv"])
    check_sparse_nonfinite(out, lse, want, ref_out, ref_lse, sink_nan_heads=(3,) if sink else (),
                           what=f"{backend} budget={budget}")  # fmt: skip


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # the Triton interpreter's numpy: inf - inf
@pytest.mark.parametrize("sink", [False, True])
def test_nonfinite_logits(backend, sink):
    """NaN keys in the first / a middle / the last block, NaN in q, +inf / -inf logits early or late, a
    row of only -inf logits, NaN keys past topk_length, a NaN sink: the classes of the rule
    (NaN / +inf / -inf / finite), finite cells as the oracle."""
    _nonfinite_run(backend, sink)


@pytest.mark.parametrize("sink", [False, True])
def test_reference_nonfinite_logits_chunked(sink):
    """The rule holds when the reference's key chunks are merged with merge_states_fp32 (a 9,000-B
    budget: 16 keys per chunk)."""
    _nonfinite_run("reference", sink, budget=9000)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize("sink", [None, "finite"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_nonfinite_logits_across_key_blocks(backend, dtype, sink):
    """A NaN logit -> out NaN, lse NaN; a +inf logit -> lse +inf, out NaN; -inf logits weigh 0; all
    used logits -inf -> out 0, lse -inf; a first block of -inf logits, then finite ones (100 keys: two
    64-key blocks), against the rule in float64."""
    T, H, D, N = 7, 4, 64, 160
    g = torch.Generator().manual_seed(51)
    kv = torch.randn(N, D, generator=g)
    kv[:140, :4] = 0.0  # ordinary keys: q rows of 1e19 in dims 0..3 give them ordinary logits
    kv[150, 3] = NAN  # a NaN key
    kv[151] = 1e19  # with q[:4] = 1e19: +inf logit (4 products of 1e38 overflow); -inf with -1e19
    kv[152] = -1e19
    q = torch.randn(T, H, D, generator=g)
    idx = torch.randint(0, 140, (T, 100), generator=g)  # two 64-key blocks
    q[1, 0, 7] = NAN  # token 1 head 0: NaN
    idx[2, 80] = 150  # token 2: the NaN key in the second block: every head NaN
    q[3, 1, :4] = 1e19  # token 3 head 1: +inf logit with key 151 (first block), -inf with 152
    q[3, 2, :4] = -1e19  # head 2: +inf with 152 (second block), -inf with 151
    idx[3, 10], idx[3, 90] = 151, 152
    q[4, 0, :4] = 1e19  # token 4 head 0: every used logit -inf (key 152 only): out 0, lse -inf
    idx[4, :] = 152
    idx[4, 50:] = -1
    q[5, 0, :4] = 1e19  # token 5 head 0: a first block of -inf logits, then ordinary ones
    idx[5, :64] = 152
    sink_t = torch.randn(H, generator=g) if sink else None
    q, kv = q.to(dtype), kv.to(dtype)
    scale = D**-0.5
    out, lse = call(longattn.sparse_attention, *dev(q, kv, idx), attn_sink=dev(sink_t)[0], softmax_scale=scale,
                    backend=backend)  # fmt: skip
    out, lse = out.cpu(), lse.cpu()
    want_out, want_lse = attention_rule(q, kv, idx, scale, sink_t)
    assert_rule_cells(want_out, want_lse, [(1, 0, "nan"), (2, 3, "nan"), (3, 1, "inf"), (3, 2, "inf"), (4, 0, "empty")])
    assert torch.isfinite(want_lse[5, 0])  # the -inf block, then finite logits
    assert torch.equal(torch.isnan(lse), torch.isnan(want_lse)), (lse, want_lse)
    assert torch.equal(torch.isinf(lse), torch.isinf(want_lse.float())) and torch.equal(
        lse[torch.isinf(lse)], want_lse.float()[torch.isinf(lse)]
    )
    assert torch.equal(torch.isnan(out), torch.isnan(want_out)), "NaN rows of out"
    assert bool(torch.isfinite(lse[~torch.isnan(want_lse) & ~torch.isinf(want_lse)]).all())
    # values: rows of ordinary keys (tokens with keys 151 / 152 have huge finite logits elsewhere)
    fin = torch.isfinite(want_lse)
    fin[3:6] = False
    fin[5, 0] = True
    tol = 1e-4 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(lse[fin].double(), want_lse[fin], atol=tol, rtol=0)
    torch.testing.assert_close(out[fin].double(), want_out[fin], atol=tol, rtol=tol)
    assert (out[4, 0] == 0).all()


# ---------------------------------------------------------------------------------------------------
# the reference's shared rows (reference.attend_shared): a chunk's tokens that select overlapping rows
# (prefill windows, HCA prefixes) have each row gathered once and all their logits in one GEMM
# ---------------------------------------------------------------------------------------------------
@pytest.fixture
def shared_calls(monkeypatch):
    """The results of the reference's attend_shared calls (one per key group of a token chunk): True
    where it used shared rows."""
    used = []
    real = sparse_ref.attend_shared

    def spy(*a, **kw):
        res = real(*a, **kw)
        used.append(res is not None)
        return res

    monkeypatch.setattr(sparse_ref, "attend_shared", spy)
    return used


@pytest.fixture
def always_shared(monkeypatch):
    """Shared rows for every chunk of any size, whatever the growth (only unsafe rows fall back)."""
    monkeypatch.setattr(sparse_ref, "SHARED_MIN_TOKENS", 1)
    monkeypatch.setattr(sparse_ref, "SHARED_MAX_GROWTH", math.inf)


@pytest.mark.parametrize("case", SPARSE_CASES + TILING_CASES, ids=str)
def test_reference_shared_rows_on_every_case(case: SparseCase, always_shared, shared_calls):
    """Every case with the shared-row path forced on every chunk meets the oracle bound and has the
    per-token path's empty rows; it really ran wherever a token has a valid key."""
    args = make_sparse_inputs(case)
    out, lse = longattn.sparse_attention(**args, backend="reference")
    check_against_oracle(out, lse, args, case.name + " (shared rows)")
    _, oracle_lse = oracle_of(args)
    assert torch.equal(torch.isneginf(lse), torch.isneginf(oracle_lse.float()))
    if bool(torch.isfinite(oracle_lse).any()):
        assert any(shared_calls), "attend_shared never used shared rows"


def test_reference_shares_rows_of_prefill_chunks(shared_calls):
    """With the default thresholds, a prefill chunk's window and HCA prefix rows are shared, a decode
    batch (tokens of different sequences, random rows) is not looked at, and a chunk of unrelated random
    rows falls back to the per-token path."""
    by_name = {c.name: c for c in SPARSE_CASES}
    longattn.sparse_attention(**make_sparse_inputs(by_name["window_and_prefix_paged"]), backend="reference")
    assert shared_calls == [True]  # both streams: one softmax over their shared rows
    shared_calls.clear()
    longattn.sparse_attention(**make_sparse_inputs(by_name["two_streams"]), backend="reference")  # T = 3
    assert shared_calls == []
    case = SparseCase("unrelated", T=16, H=2, D=64, N=4000, K=32, pattern="in_range")
    args = make_sparse_inputs(case)
    out, lse = longattn.sparse_attention(**args, backend="reference")
    assert shared_calls == [False]
    check_against_oracle(out, lse, args, "unrelated rows")


@pytest.mark.parametrize("sink", [False, True])
def test_reference_shared_rows_nonfinite(sink, always_shared, shared_calls):
    """The non-finite rule through the shared rows: a NaN key row makes the chunk fall back (a NaN row
    gathered once would reach, as 0 * NaN, tokens that do not select it); without NaN rows the +inf /
    -inf logits of overflowing q.k run on the shared rows and keep their classes."""
    _nonfinite_run("reference", sink)
    assert shared_calls and not any(shared_calls)  # every chunk holds the NaN row
    shared_calls.clear()
    args, want = sparse_nonfinite_inputs()
    args["indices"] = torch.where(args["indices"] == 7, 8, args["indices"])  # no NaN row any more
    for t in (0, 1, 2):
        want[t] = ["fin"] * 4
    for t in (6, 7):  # (the NaN key and an overflowing logit: now only the overflow in head 0)
        want[t] = ["+inf", "fin", "fin", "fin"]
    if sink:
        args["attn_sink"] = torch.tensor([0.5, -1.0, 2.0, -3.0])
    out, lse = longattn.sparse_attention(**args, backend="reference")
    assert shared_calls and all(shared_calls)
    ref_out, ref_lse = oracle_of(args)
    check_sparse_nonfinite(out, lse, want, ref_out, ref_lse, what=f"shared rows, sink={sink}")


@pytest.mark.parametrize("page", [1, 7, 64])
def test_reference_shared_rows_fp8_pool(page, always_shared, shared_calls):
    """An FP8 pool inside e4m3-NaN pages through the shared rows: only rows some token validly selects
    are decoded (a NaN page would make the chunk fall back, and the check would see the fallback)."""
    args = fp8_pool_inputs(page, torch.bfloat16)
    out, lse = longattn.sparse_attention(**args, backend="reference")
    assert shared_calls and all(shared_calls)
    check_sparse(out, lse, args, f"fp8 page={page} (shared rows)", "reference")


@pytest.mark.parametrize("pool", ["float", "fp8"])
def test_reference_shared_rows_never_read_skipped_entries(pool, always_shared, shared_calls):
    """test_skipped_entries_never_read_the_pool through the shared rows (poison in rows nobody
    validly selects leaves every result bit-identical)."""
    test_skipped_entries_never_read_the_pool("reference", pool)
    assert shared_calls and all(shared_calls)


@pytest.mark.parametrize("case", [c for c in SPARSE_CASES + TILING_CASES if c.K + c.K2 > 32], ids=str)
def test_reference_gather_pieces_change_nothing(case: SparseCase, monkeypatch):
    """Rows gathered in pieces of 32 keys (GATHER_PIECE_BYTES = 1) give bit-identical results: the
    pieces only bound the pool-dtype copy."""
    args = make_sparse_inputs(case)
    whole = longattn.sparse_attention(**args, backend="reference")
    monkeypatch.setattr(sparse_ref, "GATHER_PIECE_BYTES", 1)
    pieces = longattn.sparse_attention(**args, backend="reference")
    assert torch.equal(whole[0], pieces[0]) and torch.equal(whole[1], pieces[1])
