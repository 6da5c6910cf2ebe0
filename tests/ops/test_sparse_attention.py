"""Reference sparse_attention vs the float64 oracle, and its algebraic properties."""

import math

import longattn
import pytest
import torch
from longattn.memory import chunk_budget

from tests import oracle
from tests.ops.cases import SPARSE_CASES, SparseCase, make_sparse_inputs
from tests.tolerance import assert_close, attention_bounds


def oracle_of(args):
    return oracle.sparse_attention(
        args["q"],
        args["kv"].reshape(-1, args["q"].shape[-1]),
        args["indices"],
        topk_length=args["topk_length"],
        extra_kv_rows=args.get("extra_kv"),
        extra_indices=args.get("extra_indices"),
        extra_topk_length=args.get("extra_topk_length"),
        attn_sink=args["attn_sink"],
        softmax_scale=args["softmax_scale"],
    )


def check_against_oracle(out, lse, args, what):
    """Compare one backend's (out, lse) with the oracle under the derived fp32 error bound."""
    q = args["q"]
    rows = [args["kv"].reshape(-1, q.shape[-1])]
    if args.get("extra_kv") is not None:
        rows.append(args["extra_kv"])
    rows = torch.cat([r.double() for r in rows])
    num_keys = args["indices"].shape[1] + (args["extra_indices"].shape[1] if args.get("extra_kv") is not None else 0)
    scale = args["softmax_scale"] or q.shape[-1] ** -0.5
    out_atol, out_rtol, lse_atol = attention_bounds(
        q, rows, scale, num_keys, q.dtype, sink_factor=args["attn_sink"] is not None
    )
    ref_out, ref_lse = oracle_of(args)
    assert out.dtype == q.dtype and out.shape == q.shape
    assert lse.dtype == torch.float32 and lse.shape == q.shape[:2]
    assert_close(lse, ref_lse, lse_atol, 0.0, f"{what}: lse")
    assert_close(out, ref_out.to(q.dtype) if q.dtype != torch.float32 else ref_out, out_atol, out_rtol, f"{what}: out")


@pytest.mark.parametrize("case", SPARSE_CASES, ids=str)
def test_reference_matches_oracle(case: SparseCase):
    args = make_sparse_inputs(case)
    out, lse = longattn.sparse_attention(**args, backend="reference")
    check_against_oracle(out, lse, args, case.name)


@pytest.mark.parametrize("case", SPARSE_CASES[:14], ids=str)
def test_reference_chunked_equals_unchunked(case: SparseCase):
    """A tiny chunk budget (one key per chunk) changes only rounding: chunks merge exactly, so the
    chunked result meets the same oracle bound and has the same empty rows."""
    args = make_sparse_inputs(case)
    _, lse = longattn.sparse_attention(**args)
    with chunk_budget(1):
        out_c, lse_c = longattn.sparse_attention(**args)
    check_against_oracle(out_c, lse_c, args, case.name + " (chunked)")
    assert torch.equal(torch.isneginf(lse), torch.isneginf(lse_c))


def test_empty_rows_give_zero_and_neg_inf():
    args = make_sparse_inputs(SparseCase("e", pattern="all_invalid", N2=6, K2=4, sink="finite"))
    out, lse = longattn.sparse_attention(**args)
    assert torch.all(out == 0) and torch.all(torch.isneginf(lse))


def test_pos_inf_sink_gives_zero_output_but_keeps_lse():
    args = make_sparse_inputs(SparseCase("s", sink="pos_inf", pattern="in_range"))
    out, lse = longattn.sparse_attention(**args)
    assert torch.all(out == 0) and torch.all(torch.isfinite(lse))


def test_huge_logits_no_overflow():
    args = make_sparse_inputs(SparseCase("h", magnitude=300.0, pattern="in_range", sink="finite"))
    out, lse = longattn.sparse_attention(**args)
    assert torch.isfinite(out).all() and torch.isfinite(lse).all()
    assert float(lse.abs().max()) > 1e4  # really huge


@pytest.mark.parametrize("H,D", [(1, 64), (3, 64), (16, 128), (4, 512)])
def test_full_index_set_equals_dense_sdpa(H, D):
    """All N slots indexed for every token == ordinary dense softmax attention (torch SDPA, MQA)."""
    T, N = 5, 33
    q, kv = torch.randn(T, H, D, dtype=torch.float64), torch.randn(N, D, dtype=torch.float64)
    idx = torch.arange(N, dtype=torch.int32).repeat(T, 1)
    out, lse = longattn.sparse_attention(q.float(), kv.float(), idx)
    k = kv.expand(H, N, D)
    dense = torch.nn.functional.scaled_dot_product_attention(q.transpose(0, 1), k, k).transpose(0, 1)
    dense_lse = torch.logsumexp(torch.einsum("thd,nd->thn", q, kv) * D**-0.5, dim=-1)
    torch.testing.assert_close(out.double(), dense, atol=2e-5, rtol=2e-5)
    torch.testing.assert_close(lse.double(), dense_lse, atol=2e-5, rtol=2e-5)


def test_merge_of_split_equals_whole_and_sink_after_merge():
    """Split the key set of every row in two disjoint parts: merge(parts) == whole, then sink once."""
    T, H, D, N, K = 4, 6, 64, 40, 24
    q, kv = torch.randn(T, H, D), torch.randn(N, D)
    idx = torch.stack([torch.randperm(N)[:K] for _ in range(T)]).int()
    idx[1, :] = -1  # a row with no keys at all
    idx[2, :12] = -1  # a row whose first half is empty
    sink = torch.randn(H)
    whole, lse_whole = longattn.sparse_attention(q, kv, idx, attn_sink=sink)
    a, lse_a = longattn.sparse_attention(q, kv, idx[:, :12])
    b, lse_b = longattn.sparse_attention(q, kv, idx[:, 12:])
    merged, lse_m = longattn.merge_attention_states(a, lse_a, b, lse_b)
    torch.testing.assert_close(lse_m, lse_whole, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(longattn.apply_attention_sink(merged, lse_m, sink), whole, atol=1e-5, rtol=1e-5)
    # the two-stream form is the same union
    two, lse_two = longattn.sparse_attention(q, kv, idx[:, :12], extra_kv=kv, extra_indices=idx[:, 12:], attn_sink=sink)
    torch.testing.assert_close(two, whole, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(lse_two, lse_whole, atol=1e-5, rtol=1e-5)


def test_paged_pool_equals_flat_pool():
    args = make_sparse_inputs(SparseCase("p", N=36, page=6, N2=9, K2=5, sink="finite"))
    out, lse = longattn.sparse_attention(**args)
    flat = dict(args, kv=args["kv"].reshape(-1, args["q"].shape[-1]))
    out_f, lse_f = longattn.sparse_attention(**flat)
    assert torch.equal(out, out_f) and torch.equal(lse, lse_f)


def test_int64_indices_equal_int32():
    args = make_sparse_inputs(SparseCase("i", N2=9, K2=5, lengths="partial"))
    out, lse = longattn.sparse_attention(**args)
    args64 = {
        k: (v.long() if isinstance(v, torch.Tensor) and not v.is_floating_point() else v) for k, v in args.items()
    }
    out64, lse64 = longattn.sparse_attention(**args64)
    assert torch.equal(out, out64) and torch.equal(lse, lse64)


def test_sink_is_a_zero_valued_key():
    """The sink equals an extra key with logit sink[h] and value 0 in the softmax denominator."""
    T, H, D, N = 3, 4, 32, 10
    q, kv = torch.randn(T, H, D, dtype=torch.float64), torch.randn(N, D, dtype=torch.float64)
    sink = torch.randn(H, dtype=torch.float64)
    idx = torch.arange(N, dtype=torch.int32).repeat(T, 1)
    out, _ = longattn.sparse_attention(q.float(), kv.float(), idx, attn_sink=sink.float())
    logits = torch.einsum("thd,nd->thn", q, kv) * D**-0.5
    logits = torch.cat([logits, sink.view(1, H, 1).expand(T, H, 1)], dim=-1)
    p = torch.softmax(logits, dim=-1)[..., :N]
    torch.testing.assert_close(out.double(), torch.einsum("thn,nd->thd", p, kv), atol=1e-5, rtol=1e-5)


def test_large_k_hca_decode_shape():
    """K = 128 window + 8192 compressed keys per token runs (V4 HCA at 1M) and matches a direct
    computation on the union of keys."""
    T, H, D = 2, 8, 512
    kv, comp = torch.randn(256, D).bfloat16(), torch.randn(9000, D).bfloat16()
    q = torch.randn(T, H, D).bfloat16()
    win = torch.randint(0, 256, (T, 128)).int()
    cidx = torch.randint(0, 9000, (T, 8192)).int()
    with chunk_budget(8 << 20):  # force several key chunks
        out, lse = longattn.sparse_attention(q, kv, win, extra_kv=comp, extra_indices=cidx)
    keys = torch.cat([kv.float()[win.long()], comp.float()[cidx.long()]], dim=1)  # [T, K, D]
    logits = torch.einsum("thd,tkd->thk", q.float(), keys) * D**-0.5
    ref = torch.einsum("thk,tkd->thd", torch.softmax(logits, -1), keys)
    torch.testing.assert_close(lse, torch.logsumexp(logits, -1), atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(out.float(), ref, atol=2e-2, rtol=1e-2)  # bf16 output: 2**-8 relative
    assert math.isfinite(float(out.float().abs().max()))


CPU_BACKENDS = ["reference", "triton", "ascend_sim"]


def _run_or_skip(fn, *args, backend, **kwargs):
    try:
        return fn(*args, backend=backend, **kwargs)
    except longattn.BackendError as exc:
        pytest.skip(f"{backend}: {str(exc).splitlines()[0]}")


@pytest.mark.parametrize("backend", CPU_BACKENDS)
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
    clean = quantize_kv_fp8(kv) if pool == "fp8" else kv
    want = _run_or_skip(longattn.sparse_attention, q, clean, idx, topk_length=lengths, backend=backend)
    for poison in (float("nan"), float("inf")):
        bad = kv.clone()
        bad[0, 0] = poison  # slot 0: only token 2 names it, beyond its topk_length
        bad[1, 15] = poison  # slot 31: named by nobody
        bad_pool = quantize_kv_fp8(bad) if pool == "fp8" else bad
        got = longattn.sparse_attention(q, bad_pool, idx, topk_length=lengths, backend=backend)
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1]), (backend, pool, poison)
