"""The Triton indexer kernels with explicit entry ranges per program (partial top-k lists through one or
several levels of the merge kernel), the bitonic merge network, large top-k, the range heuristic.

The generic cases through the public API, on every backend, are in tests/ops/test_indexer.py; here the
same kinds of inputs run with small per-program entry ranges. Integer-valued inputs make every fp32
score exact, so ids, order, tie-breaks, padding, lengths and return_slots are compared exactly.
"""

from __future__ import annotations

import pytest
import torch

from tests import oracle
from tests.helpers.device import CAN_RUN_TRITON, DEVICE, TRITON_SKIP_REASON, dev
from tests.helpers.indexer import (
    INF,
    NAN,
    NEG_NAN,
    VISIBLE_CASES,
    assert_same,
    check_topk,
    int_inputs,
    nan_inputs,
    same_values,
    score_bound,
)
from tests.helpers.triton_kernels import run_topk_kernel as run_topk

pytestmark = pytest.mark.skipif(not CAN_RUN_TRITON, reason=TRITON_SKIP_REASON)

if CAN_RUN_TRITON:
    import longattn
    from longattn.ops.indexer import triton_indexer as ti


@pytest.mark.parametrize("per", [16, 32])
@pytest.mark.parametrize("visible", list(VISIBLE_CASES), ids=str)
@pytest.mark.parametrize("topk", [1, 5, 8, 64])
def test_topk_exact_on_integer_inputs(visible, topk, per):
    q, w, k = int_inputs(3, 4, 8, 40)
    k[5] = k[9]  # exact duplicate rows: ties broken by the smaller id
    k[30] = k[9]
    ve = torch.tensor(VISIBLE_CASES[visible], dtype=torch.int32)
    ref = oracle.indexer_topk(q, w, k, ve, topk)
    assert_same(run_topk(q, w, k, ve, topk, per), ref, f"{visible} topk={topk} per={per}")


@pytest.mark.parametrize("topk,per", [(4, 16), (32, 64), (64, None), (5, 40)])
def test_bitonic_merge_network(topk, per):
    """The GPU merge (tl.topk bitonic network; the interpreter defaults to the rank merge) on chunks
    larger than, equal to and smaller than the running list, and through the merge kernel."""
    q, w, k = int_inputs(2, 4, 8, 130)
    k[50] = k[7]
    ve = torch.tensor([130, 77], dtype=torch.int32)
    ref = oracle.indexer_topk(q, w, k, ve, topk)
    assert_same(run_topk(q, w, k, ve, topk, per, bitonic=True), ref, f"bitonic topk={topk} per={per}")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_topk_exact_low_precision_integers(dtype):
    q, w, k = int_inputs(4, 5, 24, 90)
    ve = torch.tensor([90, 0, 47, 3], dtype=torch.int32)
    ref = oracle.indexer_topk(q.to(dtype), w, k.to(dtype), ve, 12)
    assert_same(run_topk(q.to(dtype), w, k.to(dtype), ve, 12, per=32), ref, str(dtype))


def test_all_equal_scores_pick_smallest_ids():
    q = torch.zeros(2, 3, 4)  # every score is exactly 0
    w, k = torch.randn(2, 3), torch.randn(50, 4)
    for per in (16,):
        idx, lengths = run_topk(q, w, k, torch.tensor([50, 7]), 10, per)
        assert idx[0].tolist() == list(range(10))
        assert idx[1].tolist() == list(range(7)) + [-1] * 3 and lengths.tolist() == [10, 7]


def test_negative_zero_ties_with_positive_zero():
    """Negative weights times relu(...) = 0 give -0.0 scores; they tie with +0.0 (order by id)."""
    q = torch.zeros(2, 2, 4)
    q[:, :, 0] = 1.0
    k = torch.zeros(40, 4)
    k[::3, 0] = -1.0  # q.k = -1 -> relu 0 -> w * 0
    k[1::3, 0] = 0.0
    k[2::3, 0] = 2.0  # q.k = 2 -> w * 2
    w = torch.tensor([[-1.0, -2.0], [1.0, 0.5]])  # token 0: -0.0 scores; token 1: +0.0 scores
    ve = torch.tensor([40, 40])
    ref = oracle.indexer_topk(q, w, k, ve, 30)
    for per in (16,):
        got = run_topk(q, w, k, ve, 30, per)
        assert_same(got, ref, f"-0.0 per={per}")
        assert got[0][0, :5].tolist() == [0, 1, 3, 4, 6]  # all zero scores, ascending ids


@pytest.mark.filterwarnings("ignore:overflow encountered")
def test_overflowing_scores_stay_selectable():
    """Visible entries whose score overflows to +-inf are still candidates (inf first, -inf last), with
    ranges of 16 entries (the public API: tests/ops/test_indexer.py)."""
    q = torch.ones(1, 1, 4) * 1e20
    k = torch.zeros(6, 4)
    k[1] = 1e20  # +inf score
    k[3] = 1.0  # large finite
    w = torch.tensor([[1.0]])
    idx, lengths = run_topk(q, w, k, torch.tensor([6]), 8, per=16)
    assert idx[0].tolist() == [1, 3, 0, 2, 4, 5, -1, -1] and lengths.tolist() == [6]
    w = torch.tensor([[-1.0]])  # -inf score for entry 1
    idx, _ = run_topk(q, w, k, torch.tensor([6]), 8, per=16)
    assert idx[0].tolist() == [0, 2, 4, 5, 3, 1, -1, -1]


@pytest.mark.parametrize("per", [16])
@pytest.mark.parametrize("page", [1, 3, 5, 16])
@pytest.mark.parametrize("return_slots", [False, True])
def test_paged_exact(page, return_slots, per):
    B, max_pages, Di, Hi = 3, 6, 8, 4
    P = B * max_pages + 2
    q, w, _ = int_inputs(7, Hi, Di, 1)
    pool = torch.randint(-2, 3, (P, page, Di)).float()
    bt = torch.randperm(P)[: B * max_pages].view(B, max_pages).int()
    bt[1, -1] = -1  # unused page
    bt[2, 2] = P + 3  # page id outside the pool: its entries are skipped
    seq = torch.tensor([0, 1, 2, 2, 0, 1, 2], dtype=torch.int32)
    ve = torch.tensor([0, max_pages * page, max_pages * page, 3 * page - 1, page + 1, 2, 10**6], dtype=torch.int32)
    ref = oracle.indexer_topk(q, w, pool, ve, 9, block_table=bt, seq_ids=seq, return_slots=return_slots)
    got = run_topk(q, w, pool, ve, 9, per, block_table=bt, seq_ids=seq, return_slots=return_slots)
    assert_same(got, ref, f"paged page={page} slots={return_slots} per={per}")


def test_invalid_sequence_id_selects_nothing():
    q, w, _ = int_inputs(3, 2, 4, 1)
    pool = torch.randn(4, 2, 4)
    bt = torch.arange(4, dtype=torch.int32).view(1, 4)
    for per in (2,):
        idx, lengths = run_topk(
            q, w, pool, torch.tensor([8, 8, 8]), 3, per, block_table=bt, seq_ids=torch.tensor([0, 5, -1])
        )
        assert lengths.tolist() == [3, 0, 0] and idx[1].tolist() == [-1, -1, -1] and idx[2].tolist() == [-1] * 3


def test_strided_inputs_and_int64_metadata():
    q, w, k = int_inputs(4, 3, 16, 60)
    qs = torch.zeros(3, 4, 32)
    qs[:, :, ::2] = q.transpose(0, 1)
    q_nc = qs.transpose(0, 1)[:, :, ::2]  # [T, Hi, Di] with strides (32, 128, 2)
    k_nc = torch.zeros(60, 40)
    k_nc[:, 3:19] = k
    ve = torch.tensor([[60, 0], [0, 0], [33, 0], [12, 0]]).long()[:, 0]
    ref = oracle.indexer_topk(q, w, k, ve, 10)
    assert_same(run_topk(q_nc, w.t().contiguous().t(), k_nc[:, 3:19], ve, 10, 16), ref, "strided per=16")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_random_inputs_within_bound(dtype):
    T, Hi, Di, N = 5, 8, 32, 300
    q, w, k = torch.randn(T, Hi, Di).to(dtype), torch.randn(T, Hi), torch.randn(N, Di).to(dtype)
    ve = torch.tensor([0, 3, 100, 300, 299], dtype=torch.int32)
    ref = oracle.indexer_logits(q, w, k, ve)
    bound = score_bound(q, w, k)
    logits = longattn.indexer_logits(*dev(q, w, k, ve), backend="triton").cpu()
    fin = torch.isfinite(ref)
    assert torch.equal(torch.isfinite(logits), fin)
    assert torch.all((logits.double() - ref)[fin].abs() <= bound[fin])
    idx, lengths = run_topk(q, w, k, ve, 16, 64)
    check_topk(idx.cpu(), lengths.cpu(), ref, bound, 16, "per 64")


def test_many_heads_and_wide_dims_tiled():
    """Hi > 64 and Di > 128: the scoring loops over head and dim tiles (no single-tile fast path)."""
    q, w, k = int_inputs(2, 70, 136, 50, lo=-1, hi=2)
    ve = torch.tensor([50, 31])
    assert_same(run_topk(q, w, k, ve, 7, 32), oracle.indexer_topk(q, w, k, ve, 7), "tiled per=32")


def test_merge_tree_levels_vs_reference():
    """1,000 entries in ranges of 16: 63 partial lists -> 8 -> 1 (two merge levels), integer inputs,
    many ties; compared exactly with the reference backend."""
    q, w, k = int_inputs(3, 4, 8, 1000, lo=-1, hi=2)
    ve = torch.tensor([1000, 517, 16], dtype=torch.int32)
    ref = longattn.indexer_topk(q, w, k, ve, 16, backend="reference")
    assert_same(run_topk(q, w, k, ve, 16, per=16), ref, "tree")
    assert_same(run_topk(q, w, k, ve, 16), ref, "heuristic")


def test_entries_per_program_heuristic():
    d = torch.device(DEVICE)
    per = ti.choose_entries_per_program(T=1, num_entries=262_144, topk_p2=512, block_n=64, device=d)
    assert per % 64 == 0 and per >= 4 * 512 and -(-262_144 // per) > 1  # decode: several ranges
    assert ti.choose_entries_per_program(T=100_000, num_entries=4096, topk_p2=512, block_n=64, device=d) >= 4096


@pytest.mark.slow
def test_decode_262144_entries_vs_reference():
    """One decode token over 262,144 entries (V4 CSA at 1M tokens: 64 heads x 128 dims, bf16 keys,
    top-512), integer inputs with many ties, heuristic ranges + merge tree; exact equality with the
    reference. The interpreter (~5 ms per tile step) runs 32,768 entries (the full size takes ~90 s
    there and was checked once by hand)."""
    g = torch.Generator().manual_seed(5)
    N = 262_144 if DEVICE != "cpu" else 32_768
    q = torch.randint(-2, 3, (1, 64, 128), generator=g).bfloat16()
    w = torch.randint(-2, 3, (1, 64), generator=g).float()
    k = torch.randint(-2, 3, (N, 128), generator=g).bfloat16()
    ve = torch.tensor([N - 3], dtype=torch.int32)
    ref = longattn.indexer_topk(q, w, k, ve, 512, backend="reference")
    assert_same(run_topk(q, w, k, ve, 512), ref, "decode")


# ---------------------------------------------------------------------------------------------------
# NaN scores rank as +inf (README.md); top-k 513..2048 under the interpreter
# ---------------------------------------------------------------------------------------------------
@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # numpy: inf - inf, 0 * inf
@pytest.mark.parametrize("topk,per,bitonic", [(8, 16, None), (40, 16, None), (2, 16, True)])
def test_indexer_nan_scores_rank_as_pos_inf(topk, per, bitonic):
    """All-NaN rows (NaN in q), NaN keys, a negative NaN key, +inf scores (3 heads padded to a 16-head
    tile: padded heads must not add 0 * inf = NaN), flat keys, ranges of 16 + merges (one range: the
    public API in tests/ops/test_indexer.py)."""
    q, w, k = nan_inputs()
    ve = torch.tensor([70, 70, 26, 4], dtype=torch.int32)
    want = oracle.indexer_topk_nan_high(q, w, k, ve, topk)
    q, w, k, ve = (x.to(DEVICE) for x in (q, w, k, ve))
    got = ti.indexer_topk(q, w, k, ve, topk, entries_per_program=per, bitonic=bitonic)
    assert_same(got, want, f"topk={topk} per={per} bitonic={bitonic}")
    ref = longattn.indexer_logits(*(x.cpu() for x in (q, w, k, ve)), backend="reference")
    logits = longattn.indexer_logits(q, w, k, ve, backend="triton").cpu()
    assert torch.equal(logits.isnan(), ref.isnan()) and torch.equal(logits.nan_to_num(0.0), ref.nan_to_num(0.0))


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_indexer_nan_scores_paged():
    q, w, _ = nan_inputs()
    page, P = 8, 12
    pool = torch.randint(-2, 3, (P, page, 8)).float()
    pool[2, 3, 1] = NAN
    pool[7, 0, 4] = NEG_NAN
    pool[4, 5, 0] = INF
    bt = torch.tensor([[2, 7, 4, 0, 1, -1, 9, 11], [4, 2, 7, 3, 5, 6, 8, 10]], dtype=torch.int32)
    seq = torch.tensor([0, 1, 0, 1], dtype=torch.int32)
    ve = torch.tensor([64, 64, 30, 19], dtype=torch.int32)
    for slots, per in ((True, 16),):
        want = oracle.indexer_topk_nan_high(q, w, pool, ve, 12, block_table=bt, seq_ids=seq, return_slots=slots)
        got = ti.indexer_topk(
            *(x.to(DEVICE) for x in (q, w, pool, ve)), 12, block_table=bt.to(DEVICE), seq_ids=seq.to(DEVICE),
            return_slots=slots, entries_per_program=per,
        )  # fmt: skip
        assert_same(got, want, f"paged slots={slots} per={per}")


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize("topk,per", [(513, None), (1024, 512), (2048, None)])
def test_indexer_large_topk(topk, per):
    """V4-Pro's top-1024 and the kernel's limit 2048 (the interpreter's rank merge cuts its compare
    matrices under Triton's 2^20-element block limit): N = 2100 integer-scored entries with many ties,
    one range per token, or ranges of 512 + the merge kernel (lists of 1024 merged in pieces); a
    second token sees fewer entries than topk (-1 padding); equal to the reference."""
    g = torch.Generator().manual_seed(topk)
    T, Hi, Di, N = 2, 4, 16, 2100
    q = torch.randint(-2, 3, (T, Hi, Di), generator=g).float()
    w = torch.randint(-2, 3, (T, Hi), generator=g).float()
    k = torch.randint(-2, 3, (N, Di), generator=g).float()
    k[7, 3] = NAN  # one NaN score per token: ranked first
    ve = torch.tensor([N, 500], dtype=torch.int32)
    want = longattn.indexer_topk(q, w, k, ve, topk, backend="reference")
    dq, dw, dk, dve = (x.to(DEVICE) for x in (q, w, k, ve))
    if per is None:  # through the dispatcher: the backend accepts topk <= 2048
        got = longattn.indexer_topk(dq, dw, dk, dve, topk, backend="triton")
    else:
        got = ti.indexer_topk(dq, dw, dk, dve, topk, entries_per_program=per)
    assert_same(got, (want[0].long(), want[1].long()), f"topk={topk} per={per}")
    assert int(want[0][0, 0]) == 7 and want[1].tolist() == [min(topk, N), 500]


# ---------------------------------------------------------------------------------------------------
# the "select" path (every entry's key, a radix select whose last launch writes the indices): exact like
# the fused path
# ---------------------------------------------------------------------------------------------------
@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize("workspace", [None, 3 * 70 * 8], ids=["one_chunk", "token_chunks_of_3"])
@pytest.mark.parametrize("topk", [1, 12, 64, 100])  # 100 > the 70 entries: -1 padding after them
def test_select_path_flat_exact(topk, workspace, monkeypatch):
    """Ties (duplicate rows), NaN / +inf scores, visible_end 0 / past the keys / negative, top-k past
    the entries; tokens in chunks of 3 when the key workspace is small (the ragged last chunk too)."""
    if workspace:
        monkeypatch.setattr(ti, "WORKSPACE_BYTES", workspace)
    q, w, k = nan_inputs()  # 4 tokens, 70 entries: NaN rows, NaN / -NaN keys, +inf scores
    q, w = torch.cat([q, q.flip(0)]), torch.cat([w, w.flip(0)])  # 8 tokens
    k[11] = k[3]  # a tie
    ve = torch.tensor([70, 70, 26, 4, 0, 10**6, -5, 69], dtype=torch.int32)
    want = oracle.indexer_topk_nan_high(q, w, k, ve, topk)
    got = ti.indexer_topk(*(x.to(DEVICE) for x in (q, w, k, ve)), topk, method="select")
    assert_same(got, want, f"select topk={topk} workspace={workspace}")


@pytest.mark.parametrize("page", [1, 5, 16, 64, 128])  # 64 / 128: a 64-entry block in one page (BLOCK_PAGE)
@pytest.mark.parametrize("return_slots", [False, True])
def test_select_path_paged_exact(page, return_slots):
    """Pages -1 / past the pool, invalid sequence ids, slots: the select path equals the oracle and
    the fused path element for element."""
    B, max_pages, Di, Hi = 3, 6, 8, 4
    P = B * max_pages + 2
    q, w, _ = int_inputs(8, Hi, Di, 1)
    pool = torch.randint(-2, 3, (P, page, Di)).float()
    bt = torch.randperm(P)[: B * max_pages].view(B, max_pages).int()
    bt[1, -1] = -1
    bt[2, 2] = P + 3
    seq = torch.tensor([0, 1, 2, 2, 0, 1, 5, -1], dtype=torch.int32)
    ve = torch.tensor([0, max_pages * page, max_pages * page, 3 * page - 1, page + 1, 2, 9, 9], dtype=torch.int32)
    args = dict(block_table=bt, seq_ids=seq, return_slots=return_slots)
    ref = oracle.indexer_topk(q, w, pool, ve, 9, **args)
    dargs = {a: (v.to(DEVICE) if isinstance(v, torch.Tensor) else v) for a, v in args.items()}
    d = [x.to(DEVICE) for x in (q, w, pool, ve)]
    got = ti.indexer_topk(*d, 9, method="select", **dargs)
    assert_same(got, ref, f"select paged page={page} slots={return_slots}")
    fused = ti.indexer_topk(*d, 9, method="fused", **dargs)
    assert all(torch.equal(a.cpu(), b.cpu()) for a, b in zip(got, fused))


@pytest.mark.parametrize("page", [16, 64])  # 64: the key kernel looks each block's page up once (BLOCK_PAGE)
@pytest.mark.parametrize("stages", [(), (4,), (4, 2)], ids=["one_stage", "2_stages", "3_stages"])
def test_select_path_last_stage_writes_the_indices(monkeypatch, stages, page):
    """The select path is the key kernel and the radix select's stages, the last of which writes the
    indices (slots through the block table, -1 padding, lengths) itself: no other launch. Exact against
    the oracle after 0-2 reducing stages, with a page -1, an invalid sequence id and empty rows; the
    outputs are poisoned first, so an element the write misses shows."""
    from tests.triton.sm90_compile import captured_launches

    monkeypatch.setattr(ti, "choose_select_stages", lambda *a: stages)
    B, max_pages, Di, Hi, topk = 2, 128 // page, 8, 4, 12
    q, w, _ = int_inputs(5, Hi, Di, 1)
    pool = torch.randint(-2, 3, (B * max_pages, page, Di)).float()
    bt = torch.randperm(B * max_pages).view(B, max_pages).int()
    bt[1, -1] = -1
    seq = torch.tensor([0, 1, 1, 7, 0], dtype=torch.int32)
    ve = torch.tensor([max_pages * page, max_pages * page, 5, 9, 0], dtype=torch.int32)
    args = dict(block_table=bt, seq_ids=seq, return_slots=True)
    ref = oracle.indexer_topk(q, w, pool, ve, topk, **args)
    qd, wd, pd, ved, btd, seqd = (x.to(DEVICE) for x in (q, w, pool, ve, bt, seq))
    pa = ti._pool_args(pd, btd, seqd)

    def select(indices, lengths):
        ti._select_topk(qd, wd, pd, ved, seqd, pa, topk, True, None, indices, lengths)

    names = ["_indexer_topk_partial_kernel", "_select_keys_kernel", "_indexer_topk_merge_kernel"]
    outputs = torch.empty(5, topk, dtype=torch.int32, device=DEVICE), torch.empty(5, dtype=torch.int32, device=DEVICE)
    launches = captured_launches(ti, names, lambda: select(*outputs))
    kernels = [(fn.fn.__name__, kw.get("FINAL")) for fn, _, _, kw in launches]
    want = [("_indexer_topk_partial_kernel", False)] + [("_select_keys_kernel", False)] * len(stages)
    assert kernels == want + [("_select_keys_kernel", True)], kernels
    assert launches[0][3]["BLOCK_PAGE"] == (page % launches[0][3]["BLOCK_N"] == 0), launches[0][3]
    assert [grid[1] for _, grid, _, _ in launches[1:]] == [*stages, 1]  # R_i programs per token, then one
    got = (torch.full((5, topk), 12345, dtype=torch.int32, device=DEVICE),
           torch.full((5,), 777, dtype=torch.int32, device=DEVICE))  # fmt: skip
    select(*got)
    assert_same(got, ref, f"select, stages {stages}")


def test_select_path_rejects_unknown_method():
    q, w, k = int_inputs(1, 2, 4, 8)
    with pytest.raises(ValueError, match="`method` must be 'select' or 'fused', got 'radix'"):
        ti.indexer_topk(*(x.to(DEVICE) for x in (q, w, k, torch.tensor([8]))), 2, method="radix")


def test_select_path_no_entries():
    """A pool of zero entries: every row -1, lengths 0 (no key row, no select)."""
    q, w, _ = int_inputs(2, 2, 4, 1)
    idx, lengths = ti.indexer_topk(*(x.to(DEVICE) for x in (q, w, torch.zeros(0, 4), torch.tensor([3, 0]))), 4,
                                   method="select")  # fmt: skip
    assert idx.cpu().tolist() == [[-1] * 4] * 2 and lengths.cpu().tolist() == [0, 0]


NO_KEY = -(2**63)


def sort_keys(scores: torch.Tensor) -> torch.Tensor:
    """The indexer's int64 sort keys of fp32 scores [T, n] (the reference's packing: score desc, id asc)."""
    from longattn.ops.indexer.reference import pack_keys

    return pack_keys(scores.contiguous(), torch.arange(scores.shape[1]))


def expected_best(keys, visible, k_sel, topk_p2):
    want = torch.full((keys.shape[0], topk_p2), NO_KEY, dtype=torch.int64)
    for t in range(keys.shape[0]):
        row = keys[t, : max(0, min(int(visible[t]), keys.shape[1]))]
        row = row[row != NO_KEY]
        kk = min(k_sel, row.numel())
        want[t, :kk] = torch.sort(row, descending=True).values[:kk]
    return want


SELECT_SCORES = {
    "normal": lambda g, T, n: torch.randn(T, n, generator=g),
    "relu-like (one exponent range)": lambda g, T, n: torch.rand(T, n, generator=g) + 1.0,
    "few values (ties: id order)": lambda g, T, n: torch.randint(-2, 3, (T, n), generator=g).float(),
    "all equal (every radix pass)": lambda g, T, n: torch.zeros(T, n),
    "+-0, +-inf, extremes": lambda g, T, n: torch.tensor([0.0, -0.0, float("inf"), float("-inf"), 3.4e38, -3.4e38,
                                                          1e-45, -1e-45]).repeat(T, n // 8 + 1)[:, :n],
}  # fmt: skip


# (scores, n, topk_p2, stages): every score kind in one, two and three stages; the interpreter runs
# tl.sort's network op by op (~1 s per program at topk_p2 = 2048), so the wide lists take fewer kinds
RADIX_CASES = [
    *[(kind, n, p2, st) for kind in SELECT_SCORES for n, p2, st in [(3000, 512, ()), (3000, 512, (2,)),
                                                                     (2500, 2, ()), (2500, 2, (16,)),
                                                                     (2500, 2, (16, 4))]],
    *[(kind, 100, 512, st) for kind in ("few values (ties: id order)", "all equal (every radix pass)")
      for st in ((), (7,))],
    ("few values (ties: id order)", 1100, 2048, (2,)),
    ("normal", 3000, 512, (2, 2)),
]  # fmt: skip


@pytest.mark.parametrize("scores,n,topk_p2,stages", RADIX_CASES, ids=str)
def test_radix_select_of_sort_keys(scores, n, topk_p2, stages):
    """``select_keys`` (the select path's radix select) against a full sort: random scores, one exponent
    range, ties and all-equal scores (the select must run every pass down to the id bits), signed
    zeros / infinities / extremes (the sign flip of the keys' unsigned order), NO_KEY entries (never
    taken), visible ends 0 / inside / past the row / negative, fewer candidates than wanted; in one
    stage, in two (R programs per row, then one over their candidates; sub-rows that end inside, at or
    before a row's visible end) and in three (R_1 programs, then R_2 over their lists, then one); the
    output poisoned first, so an unwritten column shows."""
    g = torch.Generator().manual_seed(n + topk_p2)
    T = 5
    keys = sort_keys(SELECT_SCORES[scores](g, T, n))
    keys[:, ::7] = NO_KEY
    keys[1, : n // 2] = NO_KEY
    visible = torch.tensor([n, n - 3, 0, 10**7, -4], dtype=torch.int32)
    k_sel = min(topk_p2, n)
    out = torch.full((T, topk_p2 + 3), 12345, dtype=torch.int64, device=DEVICE)[:, 1:-2]  # row-strided, poisoned
    ti.select_keys(keys.to(DEVICE), visible.to(DEVICE), k_sel, topk_p2, out, stages=stages)
    assert torch.equal(out.cpu(), expected_best(keys, visible, k_sel, topk_p2)), scores


def test_radix_select_stages_choice(monkeypatch):
    """Reducing stages where a decode step's rows would leave SMs idle (132 SMs): the plan of at most two
    reducing stages (powers of two within the SMs, spans of >= 4 x topk_p2 keys) with the fewest keys
    read in sequence plus SELECT_LAUNCH_KEYS per extra launch; one stage where no plan is cheaper."""
    monkeypatch.setattr(ti, "_num_sms", lambda device: 132)
    dev = torch.device(DEVICE)
    # 64 x 4,096 keys, 8 x 4,096 candidates, 1 x 4,096: 12,288 + 2 launches (two stages, 16 then 1: 24,576 + 1)
    assert ti.choose_select_stages(1, 262144, 512, dev) == (64, 8)
    assert ti.choose_select_stages(8, 262144, 512, dev) == (16, 4)  # 8 x 16 programs: within 132 SMs
    assert ti.choose_select_stages(64, 262144, 512, dev) == (2,)  # 64 x 2 programs
    assert ti.choose_select_stages(64, 8192, 512, dev) == (2,)  # the V4 batch decode (compile test: 2 grids)
    assert ti.choose_select_stages(132, 262144, 512, dev) == ()  # no SM left for a second program per row
    assert ti.choose_select_stages(1, 4000, 512, dev) == ()  # sub-rows would be under 4 x 512 keys
    assert ti.choose_select_stages(1, 8192, 512, dev) == (4,)  # 2,048 + 1,024 (launch) + 2,048 < 8,192


def test_radix_select_boundary_keys():
    """Keys at the edges of the signed range (the select works on their unsigned order: key ^ INT64_MIN):
    INT64_MAX, INT64_MIN + 1, -1, 0, 1, and pairs differing only in the lowest bit."""
    edge = [2**63 - 1, NO_KEY + 1, -1, 0, 1, 2**32, 2**32 + 1, -(2**32), -(2**32) + 1, 5, 4]
    keys = torch.tensor([edge + [NO_KEY] * 3], dtype=torch.int64)
    for k_sel in range(1, len(edge) + 2):
        out = ti.select_keys(keys.to(DEVICE), torch.tensor([keys.shape[1]], device=DEVICE), k_sel, 16)
        assert torch.equal(out.cpu(), expected_best(keys, [keys.shape[1]], k_sel, 16)), k_sel
    assert ti.select_keys(keys[:0].to(DEVICE), torch.zeros(0, dtype=torch.int32, device=DEVICE), 4, 4).shape == (0, 4)


# ---------------------------------------------------------------------------------------------------
# FP8 index-key pools (Fp8IndexKeyPool): both paths, small entry ranges, merge trees, tiled heads / dims,
# adversarial scales, empty pools. Integer keys with ue8m0 scales: exact scores, exact ids.
# ---------------------------------------------------------------------------------------------------
def _fp8(keys, ue8m0=True):
    """keys times a power of two per key in [2^-3, 2^3] (exact ue8m0 scales that differ per entry),
    quantised into a pool on the test device."""
    g = torch.Generator().manual_seed(keys.numel())
    keys = keys * torch.exp2(torch.randint(-3, 4, keys.shape[:-1], generator=g).float()).unsqueeze(-1)
    return longattn.quantize_index_k_fp8(keys.to(DEVICE), ue8m0=ue8m0)


def _on_dev(kw):
    return {a: (v.to(DEVICE) if isinstance(v, torch.Tensor) else v) for a, v in kw.items()}


@pytest.mark.parametrize("method, per, bitonic", [("select", None, None), ("fused", 16, False), ("fused", 32, True),
                                                  ("fused", 8, False)])  # fmt: skip
@pytest.mark.parametrize("page", [1, 3, 64])
@pytest.mark.parametrize("return_slots", [False, True])
def test_fp8_paged_both_paths(method, per, bitonic, page, return_slots):
    """Shuffled pages, a page -1, a page past the pool, invalid sequence ids, visible ends 0 / partial /
    past the table; ranges of 8-32 entries (merge trees of one to several levels)."""
    B, max_pages, Di, Hi = 3, 5, 16, 3
    P = B * max_pages + 2
    g = torch.Generator().manual_seed(page)
    q, w, _ = int_inputs(7, Hi, Di, 1, g=g)
    keys = torch.randint(-2, 3, (P, page, Di), generator=g).float()
    keys.view(-1, Di)[7] = keys.view(-1, Di)[2]  # duplicate keys: ties by the smaller id
    bt = torch.randperm(P, generator=g)[: B * max_pages].view(B, max_pages).int()
    bt[1, -1] = -1
    bt[2, 2] = P + 3
    seq = torch.tensor([0, 1, 2, 2, 0, 5, -1], dtype=torch.int32)
    ve = torch.tensor([0, max_pages * page, max_pages * page, 3 * page - 1, page + 1, 9, 10**6], dtype=torch.int32)
    pool = _fp8(keys)
    kw = dict(block_table=bt, seq_ids=seq, return_slots=return_slots)
    want = oracle.indexer_topk_fp8(q, w, pool.data, page, ve, 9, **kw)
    got = ti.indexer_topk(*dev(q, w), pool, dev(ve)[0], 9, method=method, entries_per_program=per, bitonic=bitonic,
                          **_on_dev(kw))  # fmt: skip
    assert_same(got, want, f"{method} per={per} page={page}")


@pytest.mark.parametrize("method, per", [("select", None), ("fused", 16)])
def test_fp8_flat_multi_page_pool(method, per):
    """A pool of several pages used flat: entry j = slot j (page j // page_size), rows not 16-B aligned
    (page of 3 entries of 48 values: 156-B pages)."""
    g = torch.Generator().manual_seed(3)
    q, w, _ = int_inputs(3, 5, 48, 1, g=g)
    keys = torch.randint(-2, 3, (11, 3, 48), generator=g).float()
    pool = _fp8(keys)
    ve = torch.tensor([33, 32, 4], dtype=torch.int32)
    want = oracle.indexer_topk_fp8(q, w, pool.data, 3, ve, 10)
    assert_same(ti.indexer_topk(*dev(q, w), pool, dev(ve)[0], 10, method=method, entries_per_program=per), want,
                method)  # fmt: skip
    logits = ti.indexer_logits(*dev(q, w), pool, dev(ve)[0]).cpu()
    assert torch.equal(logits.double(), oracle.indexer_logits_fp8(q, w, pool.data, 3, ve))


@pytest.mark.parametrize("Hi", [70, 128])  # 70: the last head tile padded; 128: two full tiles (HEADS_FULL)
def test_fp8_tiled_heads_and_dims(Hi):
    """Hi > 64 and Di > 128 (the scoring loops over head and dim tiles; the scale applied once to the
    per-head logits summed over the dim tiles), fused and select paths and the logits kernel."""
    g = torch.Generator().manual_seed(9)
    q, w, _ = int_inputs(2, Hi, 160, 1, lo=-1, hi=2, g=g)
    keys = torch.randint(-2, 3, (2, 20, 160), generator=g).float()
    pool = _fp8(keys)
    ve = torch.tensor([40, 23], dtype=torch.int32)
    want = oracle.indexer_topk_fp8(q, w, pool.data, 20, ve, 7)
    for method, per in (("select", None), ("fused", 16)):
        assert_same(ti.indexer_topk(*dev(q, w), pool, dev(ve)[0], 7, method=method, entries_per_program=per), want,
                    method)  # fmt: skip
    logits = ti.indexer_logits(*dev(q, w), pool, dev(ve)[0]).cpu()
    assert torch.equal(logits.double(), oracle.indexer_logits_fp8(q, w, pool.data, 20, ve))


@pytest.mark.parametrize("Hi", [3, 16, 48, 64, 70, 128])
def test_head_mask_dropped_only_for_whole_head_tiles(Hi):
    """The select path's key kernel and the logits kernel pass HEADS_FULL exactly when Hi is a multiple of
    their BLOCK_HI: then they drop the head mask (on sm_90 the FP8 select key kernel's step 690 -> 564
    SASS instructions); a padded head must keep it (the adversarial tests below: a padded head's logit
    can be NaN). The fused path's kernel always keeps it (its merge dominates)."""
    from tests.triton.sm90_compile import captured_launches

    q, w, k = (x.to(DEVICE) for x in int_inputs(2, Hi, 16, 40))
    ve = torch.tensor([40, 7], dtype=torch.int32, device=DEVICE)
    names = ["_indexer_topk_partial_kernel", "_select_keys_kernel", "_indexer_topk_merge_kernel",
             "_indexer_logits_kernel"]  # fmt: skip

    def calls():
        for method in ("select", "fused"):
            ti.indexer_topk(q, w, k, ve, 4, method=method)
        ti.indexer_logits(q, w, k, ve)

    scoring = [(fn.fn.__name__, kw) for fn, _, _, kw in captured_launches(ti, names, calls)
               if "BLOCK_HI" in kw]  # fmt: skip
    assert len(scoring) == 3, scoring
    for name, kw in scoring:
        fused = name == "_indexer_topk_partial_kernel" and not kw.get("KEYS_ONLY")
        assert kw.get("HEADS_FULL", False) == (not fused and Hi % kw["BLOCK_HI"] == 0), (name, Hi, kw["BLOCK_HI"])


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize("q_dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("method, per, bitonic", [("select", None, None), ("fused", 8, False), ("fused", 16, True)])
@pytest.mark.parametrize("Hi", [2, 16])  # 2: 14 padded heads of a 16-head tile; 16: none (HEADS_FULL, no mask)
def test_fp8_adversarial_scales_and_nan_bytes(method, per, bitonic, q_dtype, Hi):
    """Scales 0 / negative / NaN / +-inf and e4m3 NaN bytes (0x7F, 0xFF) written into the pool: the scale
    multiplies the per-head logits before the ReLU, NaN scores rank as +inf (ties by id). bf16 q: the
    e4m3 values are converted to bf16 (V4's path; on a GPU this checks that the hardware conversion
    makes the NaN codes NaN, which the kernels rely on outside the interpreter). A padded head's
    logit is 0 x NaN or 0 x inf = NaN here, so with Hi = 2 a kernel that skips the head mask fails."""
    page, Di = 8, 16
    g = torch.Generator().manual_seed(31)
    q = torch.randint(-2, 3, (3, Hi, Di), generator=g).float().to(q_dtype)  # small integers: exact in bf16
    w = torch.randint(1, 3, (3, Hi), generator=g).float()
    keys = torch.randint(-2, 3, (4, page, Di), generator=g).float()
    keys[1, 2] = 0.0
    pool = _fp8(keys)
    sc = pool.data[:, page * Di :].view(torch.float32)
    sc[0, 1], sc[0, 5], sc[1, 0], sc[1, 2], sc[2, 7], sc[3, 3] = (
        0.0,
        -0.5,
        float("nan"),
        float("inf"),
        -float("inf"),
        -1,
    )
    pool.data[2, 3 * Di + 4] = 0x7F  # e4m3 NaN
    pool.data[3, 6 * Di] = 0xFF  # e4m3 -NaN
    ve = torch.tensor([32, 20, 9], dtype=torch.int32)
    got_logits = ti.indexer_logits(*dev(q, w), pool, dev(ve)[0]).cpu()
    want_logits = oracle.indexer_logits_fp8(q, w, pool.data, page, ve)
    nan = torch.isnan(want_logits)
    assert nan.any() and torch.isinf(want_logits[:, :32]).any()
    assert torch.equal(torch.isnan(got_logits), nan) and torch.equal(got_logits[~nan].double(), want_logits[~nan])
    want = oracle.indexer_topk_fp8(q, w, pool.data, page, ve, 12)
    got = ti.indexer_topk(*dev(q, w), pool, dev(ve)[0], 12, method=method, entries_per_program=per, bitonic=bitonic)
    assert_same(got, want, f"{method} per={per}")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_fp8_low_precision_q(dtype):
    """bf16 / fp16 q over an FP8 pool (on a GPU the e4m3 values are converted to q's dtype, exactly)."""
    g = torch.Generator().manual_seed(4)
    q, w, _ = int_inputs(3, 4, 32, 1, g=g)
    pool = _fp8(torch.randint(-2, 3, (90, 32), generator=g).float())
    ve = torch.tensor([90, 45, 1], dtype=torch.int32)
    want = oracle.indexer_topk_fp8(q.to(dtype), w, pool.data, 90, ve, 12)
    d = dev(q.to(dtype), w)
    assert_same(ti.indexer_topk(*d, pool, dev(ve)[0], 12, entries_per_program=32), want, str(dtype))
    assert_same(longattn.indexer_topk(*d, pool, dev(ve)[0], 12, backend="triton"), want, f"{dtype} select")


def test_fp8_pool_without_pages_reads_nothing():
    q, w, _ = int_inputs(2, 2, 16, 1)
    pool = longattn.Fp8IndexKeyPool.empty(0, 4, 16, device=DEVICE)
    bt = torch.tensor([[0, 1]], dtype=torch.int32)
    ve = torch.tensor([8, 3], dtype=torch.int32)
    for method in ("select", "fused"):
        idx, lengths = ti.indexer_topk(*dev(q, w), pool, dev(ve)[0], 4, method=method,
                                       **_on_dev(dict(block_table=bt, seq_ids=torch.zeros(2).int())))  # fmt: skip
        assert idx.cpu().tolist() == [[-1] * 4] * 2 and lengths.cpu().tolist() == [0, 0]
        idx, lengths = ti.indexer_topk(*dev(q, w), pool, dev(ve)[0], 4, method=method)
        assert idx.cpu().tolist() == [[-1] * 4] * 2 and lengths.cpu().tolist() == [0, 0]


# ---------------------------------------------------------------------------------------------------
# float key pools read 16 bytes at a time: the dim masks are written per 16-byte group (K_GROUP dims,
# 8 bf16 / fp16 or 4 fp32) when Di is a multiple of it, with a 16-byte row alignment hint (K_ALIGN16);
# the per-dim mask otherwise. Keys and q live inside NaN-filled storage (rows wider than Di, an offset):
# a read past Di, or before the row, makes a NaN score (q, 0 there, times NaN) that ranks first.
# ---------------------------------------------------------------------------------------------------
def _in_nan_storage(x, pad, off=0):
    """x copied into a NaN-filled tensor on the test device whose last dim is wider by ``off`` before and
    ``pad`` after: a view with the values of x, strided rows, NaN around every row."""
    store = torch.full((*x.shape[:-1], off + x.shape[-1] + pad), NAN, dtype=x.dtype, device=DEVICE)
    view = store[..., off : off + x.shape[-1]]
    view.copy_(x.to(DEVICE))
    return view


def _all_paths(q, w, k, ve, topk, **kw):
    """(select, fused with ranges of 16 entries, logits) of the Triton kernels on the test device."""
    kw = _on_dev(kw)
    sel = ti.indexer_topk(q, w, k, ve, topk, method="select", **kw)
    fused = ti.indexer_topk(q, w, k, ve, topk, entries_per_program=16, **kw)
    logits = ti.indexer_logits(q, w, k, ve, kw.get("block_table"), kw.get("seq_ids"))
    return sel, fused, logits


@pytest.mark.parametrize(
    "k, group, aligned",
    [
        (torch.empty(9, 128, dtype=torch.bfloat16), 8, True),  # the V4 flat keys
        (torch.empty(3, 64, 128, dtype=torch.bfloat16), 8, True),  # the V4 paged pool
        (torch.empty(9, 24, dtype=torch.bfloat16), 8, True),  # rows of 48 bytes
        (torch.empty(9, 20, dtype=torch.bfloat16), 1, False),  # Di not a multiple of 8: per-dim mask
        (torch.empty(9, 20, dtype=torch.float32), 4, True),
        (torch.empty(9, 18, dtype=torch.float32), 1, False),
        (torch.empty(9, 40, dtype=torch.float16)[:, :24], 8, True),  # row stride 40 != Di
        (torch.empty(9, 40, dtype=torch.float32)[:, 3:19], 4, False),  # base 12 bytes off: group, no hint
        (torch.empty(9, 44, dtype=torch.float32)[:, :16], 4, True),  # row stride 176 bytes
        (torch.empty(9, 42, dtype=torch.float32)[:, :16], 4, False),  # row stride 168 bytes
        (torch.empty(9, 32, dtype=torch.bfloat16)[:, ::2], 1, False),  # dim stride 2
        (torch.empty(3, 5, 44, dtype=torch.bfloat16)[..., :16], 8, False),  # slot stride 88 bytes
        (torch.empty(3, 5, 48, dtype=torch.bfloat16)[..., :16], 8, True),
        (torch.empty(3, 1, 36, dtype=torch.bfloat16)[..., :16], 8, False),  # page stride 72 bytes
        (torch.empty(1, 5, 40, dtype=torch.bfloat16)[..., :16], 8, True),  # one page: its stride unused
    ],
    ids=lambda v: (
        f"{str(v.dtype)[6:]}{tuple(v.shape)}/{tuple(v.stride())}/+{v.storage_offset()}"
        if isinstance(v, torch.Tensor)
        else str(v)
    ),
)
def test_float_key_layout(k, group, aligned):
    """K_GROUP / K_ALIGN16 of float keys: the 16-byte group only when it divides Di and dims are unit
    strided; the alignment hint only when the base pointer and every used row stride are 16-byte aligned."""
    assert ti._float_key_layout(k) == (group, aligned)


def test_float_key_layout_reaches_every_kernel():
    """The key kernels' launches (select, fused, logits; flat and paged) carry the pool's K_GROUP and
    K_ALIGN16 (an FP8 pool: 16, aligned)."""
    from tests.triton.sm90_compile import captured_launches

    q, w, k = int_inputs(2, 3, 24, 40)
    ve = torch.tensor([40, 7]).to(DEVICE)
    bt = torch.arange(5, dtype=torch.int32).view(1, 5).to(DEVICE)
    seq = torch.zeros(2, dtype=torch.int32, device=DEVICE)
    names = ["_indexer_topk_partial_kernel", "_indexer_topk_merge_kernel", "_indexer_logits_kernel"]
    cases = [
        (_in_nan_storage(k.bfloat16(), 8), 24, False, (8, True)),
        (_in_nan_storage(k, 3), 24, False, (4, False)),
        (k[:, :20].contiguous().to(DEVICE), 20, False, (4, True)),
        (k[:, :20].bfloat16().to(DEVICE), 20, False, (1, False)),
        (_in_nan_storage(k.view(5, 8, 24).half(), 8), 24, True, (8, True)),
        (_fp8(k.view(5, 8, 24)[..., :16].contiguous()), 16, True, (16, True)),
    ]
    for keys, Di, paged, want in cases:
        qd, wd = q[..., :Di].contiguous().to(DEVICE), w.to(DEVICE)
        table = dict(block_table=bt, seq_ids=seq) if paged else {}

        def call(keys=keys, qd=qd, wd=wd, table=table):
            ti.indexer_topk(qd, wd, keys, ve, 4, method="select", **table)
            ti.indexer_topk(qd, wd, keys, ve, 4, entries_per_program=16, **table)
            ti.indexer_logits(qd, wd, keys, ve, table.get("block_table"), table.get("seq_ids"))

        launches = captured_launches(ti, names, call)
        got = [(fn.fn.__name__, kw["K_GROUP"], kw["K_ALIGN16"]) for fn, _, _, kw in launches if "K_GROUP" in kw]
        kernels = ["_indexer_topk_partial_kernel"] * 2 + ["_indexer_logits_kernel"]
        assert got == [(n, *want) for n in kernels], (Di, paged, got)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("Di", [16, 20, 24, 36, 48, 64, 128, 144])
def test_float_pool_dims_exact(Di, dtype):
    """Flat keys of every Di (multiples of the 16-byte group: grouped mask; 20 and 36 in bf16 / fp16 and
    every non multiple of 4: the per-dim mask; 144: two dim tiles) in NaN-filled storage (row stride
    != Di, some at a misaligned base), q too: the select, fused and logits kernels equal the oracle
    exactly; visible ends cross the 32-entry blocks."""
    T, Hi, N = 5, 3, 70
    q, w, k = int_inputs(T, Hi, Di, N, dtype=dtype, g=torch.Generator().manual_seed(Di))
    k[11] = k[3]  # a tie
    ve = torch.tensor([70, 33, 31, 64, 0], dtype=torch.int32)
    want_idx = oracle.indexer_topk(q, w, k, ve, 12)
    want_logits = oracle.indexer_logits(q, w, k, ve)
    for off in (0, 3):
        kd, qd = _in_nan_storage(k, 8 + off, off), _in_nan_storage(q, 5, off)
        sel, fused, logits = _all_paths(qd, w.to(DEVICE), kd, ve.to(DEVICE), 12)
        assert_same(sel, want_idx, f"select Di={Di} off={off}")
        assert_same(fused, want_idx, f"fused Di={Di} off={off}")
        assert same_values(logits, want_logits.float()), f"logits Di={Di} off={off}"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("Di", [20, 24, 48, 144])
@pytest.mark.parametrize("page", [3, 5])
def test_float_pool_paged_odd_pages_exact(page, Di, dtype):
    """Paged float pools with odd page sizes inside NaN-filled storage (slot stride != Di): shuffled
    pages, a page -1, a page past the pool, invalid sequence ids, visible ends inside and across pages
    and entry blocks; the three kernels equal the oracle, slots too."""
    B, max_pages, Hi = 3, 14, 3
    P = B * max_pages + 2
    g = torch.Generator().manual_seed(page * Di)
    q, w, _ = int_inputs(8, Hi, Di, 1, dtype=dtype, g=g)
    pool = torch.randint(-2, 3, (P, page, Di), generator=g).to(dtype)
    bt = torch.randperm(P, generator=g)[: B * max_pages].view(B, max_pages).int()
    bt[1, -1] = -1
    bt[2, 2] = P + 3
    seq = torch.tensor([0, 1, 2, 2, 0, 1, 5, -1], dtype=torch.int32)
    n = max_pages * page
    ve = torch.tensor([n, n, 33, 3 * page - 1, 31, 2, 9, 9], dtype=torch.int32)
    args = dict(block_table=bt, seq_ids=seq)
    want_logits = oracle.indexer_logits(q, w, pool, ve, **args)
    pd = _in_nan_storage(pool, 8)
    for slots in (False, True):
        want = oracle.indexer_topk(q, w, pool, ve, 10, return_slots=slots, **args)
        sel, fused, logits = _all_paths(q.to(DEVICE), w.to(DEVICE), pd, ve.to(DEVICE), 10, return_slots=slots, **args)
        assert_same(sel, want, f"select page={page} Di={Di} slots={slots}")
        assert_same(fused, want, f"fused page={page} Di={Di} slots={slots}")
        assert same_values(logits, want_logits.float()), f"logits page={page} Di={Di}"
