"""indexer_logits / indexer_topk (reference) vs the float64 oracle.

Integer-valued inputs make every fp32 score exact, so ids, order and tie-breaks are compared exactly.
Random real inputs are compared under a derived score bound, with a top-k check that tolerates swaps
only between entries whose scores are within that bound.
"""

import longattn
import pytest
import torch
from longattn.memory import chunk_budget

from tests import oracle
from tests.tolerance import U32, assert_close


def score_bound(q, weights, rows) -> torch.Tensor:
    """[T, N] bound on |fp32 score - exact score|: (Di + Hi + 4) u sum_h |w_h| sum_d |q_hd k_d|."""
    T, Hi, Di = q.shape
    mag = torch.einsum("th,thd,nd->tn", weights.double().abs(), q.double().abs(), rows.double().abs())
    return 2 * (Di + Hi + 4) * U32 * mag


def check_topk(indices, lengths, scores, bound, topk, what):
    """indices [T, topk] / lengths [T] are a valid top-k of the oracle ``scores`` [T, N] (-inf:
    unselectable) up to ``bound`` [T, N]: right count, distinct selectable ids, sorted, and nothing left
    out that beats a selected entry by more than the bound."""
    for t in range(scores.shape[0]):
        selectable = torch.isfinite(scores[t]) | (scores[t] == float("inf"))
        n = int(lengths[t])
        assert n == min(topk, int(selectable.sum())), f"{what}: token {t}: length {n}"
        sel = indices[t, :n].long()
        assert torch.all(indices[t, n:] == -1), f"{what}: token {t}: padding is not -1"
        assert len(set(sel.tolist())) == n and bool(selectable[sel].all()), f"{what}: token {t}: bad ids"
        s, b = scores[t, sel], bound[t, sel]
        assert torch.all(s[:-1] >= s[1:] - b[:-1] - b[1:]), f"{what}: token {t}: not sorted"
        rest = selectable.clone()
        rest[sel] = False
        if n and bool(rest.any()):
            worst = int(torch.argmin(s))
            best_left = torch.max(scores[t][rest] - bound[t][rest])
            assert s[worst] + b[worst] >= best_left, f"{what}: token {t}: a better entry was left out"


def int_inputs(T, Hi, Di, N, lo=-2, hi=3):
    q = torch.randint(lo, hi, (T, Hi, Di)).float()
    w = torch.randint(-2, 3, (T, Hi)).float()
    k = torch.randint(lo, hi, (N, Di)).float()
    return q, w, k


VISIBLE_CASES = {
    "decode_like": [40, 40, 40],
    "fewer_than_topk": [0, 1, 5],
    "beyond_pool": [1000, 39, 41],
    "mixed": [0, 17, 40],
}


@pytest.mark.parametrize("visible", list(VISIBLE_CASES), ids=str)
@pytest.mark.parametrize("topk", [1, 8, 64])
def test_topk_exact_on_integer_inputs(visible, topk):
    q, w, k = int_inputs(3, 4, 8, 40)
    k[5] = k[9]  # exact duplicate rows: ties broken by the smaller id
    k[30] = k[9]
    ve = torch.tensor(VISIBLE_CASES[visible], dtype=torch.int32)
    idx, lengths = longattn.indexer_topk(q, w, k, ve, topk)
    ref_idx, ref_len = oracle.indexer_topk(q, w, k, ve, topk)
    assert idx.dtype == torch.int32 and lengths.dtype == torch.int32
    assert torch.equal(idx.long(), ref_idx) and torch.equal(lengths.long(), ref_len)
    with chunk_budget(1):
        idx_c, len_c = longattn.indexer_topk(q, w, k, ve, topk)
    assert torch.equal(idx_c, idx) and torch.equal(len_c, lengths)


def test_all_equal_scores_pick_smallest_ids():
    q = torch.zeros(2, 3, 4)  # every score is exactly 0
    w, k = torch.randn(2, 3), torch.randn(50, 4)
    idx, lengths = longattn.indexer_topk(q, w, k, torch.tensor([50, 7]), 10)
    assert idx[0].tolist() == list(range(10))
    assert idx[1].tolist() == list(range(7)) + [-1] * 3 and lengths.tolist() == [10, 7]


def test_negative_weights_rank_below_zero():
    q = torch.ones(1, 2, 4)
    k = torch.tensor([[1.0] * 4, [-1.0] * 4, [2.0] * 4])  # q.k = 4, -4 (relu 0), 8
    w = torch.tensor([[-1.0, -1.0]])
    idx, _ = longattn.indexer_topk(q, w, k, torch.tensor([3]), 3)
    assert idx[0].tolist() == [1, 0, 2]  # scores 0, -8, -16


@pytest.mark.parametrize("page", [1, 3, 5, 16])
@pytest.mark.parametrize("return_slots", [False, True])
def test_paged_exact(page, return_slots):
    B, max_pages, Di, Hi = 3, 6, 8, 4
    P = B * max_pages + 2
    q, w, _ = int_inputs(7, Hi, Di, 1)
    pool = torch.randint(-2, 3, (P, page, Di)).float()
    bt = torch.randperm(P)[: B * max_pages].view(B, max_pages).int()
    bt[1, -1] = -1  # unused page
    bt[2, 2] = P + 3  # page id outside the pool: its entries are skipped
    seq = torch.tensor([0, 1, 2, 2, 0, 1, 2], dtype=torch.int32)
    ve = torch.tensor([0, max_pages * page, max_pages * page, 3 * page - 1, page + 1, 2, 10**6], dtype=torch.int32)
    idx, lengths = longattn.indexer_topk(q, w, pool, ve, 9, block_table=bt, seq_ids=seq, return_slots=return_slots)
    ref_idx, ref_len = oracle.indexer_topk(q, w, pool, ve, 9, block_table=bt, seq_ids=seq, return_slots=return_slots)
    assert torch.equal(idx.long(), ref_idx) and torch.equal(lengths.long(), ref_len)
    logits = longattn.indexer_logits(q, w, pool, ve, block_table=bt, seq_ids=seq)
    assert torch.equal(logits.double(), oracle.indexer_logits(q, w, pool, ve, block_table=bt, seq_ids=seq))


def test_invalid_sequence_id_selects_nothing():
    q, w, _ = int_inputs(2, 2, 4, 1)
    pool = torch.randn(4, 2, 4)
    bt = torch.arange(4, dtype=torch.int32).view(1, 4)
    seq = torch.tensor([0, 5])
    idx, lengths = longattn.indexer_topk(q, w, pool, torch.tensor([8, 8]), 3, block_table=bt, seq_ids=seq)
    assert lengths.tolist() == [3, 0] and idx[1].tolist() == [-1, -1, -1]
    ref_idx, ref_len = oracle.indexer_topk(q, w, pool, torch.tensor([8, 8]), 3, block_table=bt, seq_ids=seq)
    assert torch.equal(idx.long(), ref_idx) and torch.equal(lengths.long(), ref_len)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_random_inputs_within_bound(dtype):
    T, Hi, Di, N = 5, 8, 32, 300
    q, w, k = torch.randn(T, Hi, Di).to(dtype), torch.randn(T, Hi), torch.randn(N, Di).to(dtype)
    ve = torch.tensor([0, 3, 100, 300, 299], dtype=torch.int32)
    ref = oracle.indexer_logits(q, w, k, ve)
    bound = score_bound(q, w, k)
    logits = longattn.indexer_logits(q, w, k, ve)
    fin = torch.isfinite(ref)
    assert torch.equal(torch.isfinite(logits), fin)
    assert torch.all((logits.double() - ref)[fin].abs() <= bound[fin])
    for budget in (None, 1):
        if budget is None:
            idx, lengths = longattn.indexer_topk(q, w, k, ve, 16)
        else:
            with chunk_budget(budget):
                idx, lengths = longattn.indexer_topk(q, w, k, ve, 16)
        check_topk(idx, lengths, ref, bound, 16, f"budget {budget}")


def test_logits_chunked_equal_unchunked_on_integers():
    q, w, k = int_inputs(4, 3, 6, 70)
    ve = torch.tensor([70, 0, 33, 12])
    full = longattn.indexer_logits(q, w, k, ve)
    with chunk_budget(1):
        assert torch.equal(longattn.indexer_logits(q, w, k, ve), full)
    assert_close(full, oracle.indexer_logits(q, w, k, ve), 0.0, 0.0, "integer logits are exact")


@pytest.mark.parametrize("seed", range(5))
def test_candidate_prefilter_is_exact(seed):
    """The span prefilter keeps exactly what a full sort would select: ties at the k-th score, usable
    -inf / +inf scores, -0.0 vs +0.0, rows with fewer usable entries than k."""
    from longattn.ops.indexer.reference import candidate_keys, sort_keys

    g = torch.Generator().manual_seed(seed)
    Tg, n, k = 5, 400, 16
    scores = torch.randint(-3, 4, (Tg, n), generator=g).float()  # heavy ties
    scores[0, ::7] = float("inf")
    scores[1, ::3] = float("-inf")  # usable but -inf
    scores[2] = -0.0
    scores[2, ::5] = 0.0
    usable = torch.rand(Tg, n, generator=g) < 0.9
    usable[3] = False
    usable[3, :5] = True  # fewer usable than k
    scores = scores.masked_fill(~usable, float("-inf"))
    full = torch.topk(sort_keys(scores, usable, 100), k, dim=1).values
    cand = candidate_keys(scores, usable, 100, k)
    pad = torch.full((Tg, k), torch.iinfo(torch.int64).min)
    assert torch.equal(torch.topk(torch.cat([cand, pad], 1), k, dim=1).values, full)


NAN, INF = float("nan"), float("inf")
NEG_NAN = -float("nan")  # sign bit set


def nan_inputs(T=4, Hi=3, Di=8, N=70):
    """Integer inputs with NaN / +inf scores (ops/indexer/README.md: NaN ranks as +inf, ties by id):
    token 0 has a NaN in q (every score NaN); key rows 3, 40 hold a NaN, row 25 a negative NaN (its
    scores are NaN with the sign bit set), rows 5, 30, 60 a +inf (positive q[..., 0] and weights:
    +inf scores on every other token)."""
    q, w, k = int_inputs(T, Hi, Di, N)
    w = w.abs() + 1
    q[..., 0] = q[..., 0].abs() + 1
    q[0, 1, 2] = NAN
    k[3, 1] = NAN
    k[40, 7] = NAN
    k[25, 4] = NEG_NAN
    k[[5, 30, 60], 0] = INF
    return q, w, k


def _assert_same(got, want, what):
    assert torch.equal(got[0].long(), want[0]), f"{what}: indices\n{got[0]}\n{want[0]}"
    assert torch.equal(got[1].long(), want[1]), f"{what}: lengths {got[1]} vs {want[1]}"


@pytest.mark.parametrize("topk", [2, 8, 40])
def test_topk_nan_scores_rank_as_pos_inf(topk):
    q, w, k = nan_inputs()
    ve = torch.tensor([70, 70, 26, 4], dtype=torch.int32)
    scores = longattn.indexer_logits(q, w, k, ve)
    assert bool(torch.isnan(scores[0, :70]).all())
    assert int(scores[1, 25].view(torch.int32)) < 0 and bool(scores[1, 25].isnan())  # a negative NaN
    assert bool((scores[1, [5, 30, 60]] == INF).all())
    want = oracle.indexer_topk_nan_high(q, w, k, ve, topk)
    _assert_same(longattn.indexer_topk(q, w, k, ve, topk), want, f"topk={topk}")
    with chunk_budget(1):
        _assert_same(longattn.indexer_topk(q, w, k, ve, topk), want, f"chunked topk={topk}")
    # token 0 (all NaN) takes the smallest ids; token 1: +inf and NaN scores tie, smaller id first
    assert want[0][0, : min(topk, 70)].tolist() == list(range(min(topk, 70)))
    assert want[0][1, :6].tolist() == [3, 5, 25, 30, 40, 60][: min(6, topk)]
    assert want[1].tolist() == [min(topk, 70), min(topk, 70), min(topk, 26), min(topk, 4)]


def test_topk_nan_scores_paged():
    q, w, _ = nan_inputs()
    page, P = 8, 12
    pool = torch.randint(-2, 3, (P, page, 8)).float()
    pool[2, 3, 1] = NAN
    pool[7, 0, 4] = NEG_NAN
    pool[4, 5, 0] = INF
    bt = torch.tensor([[2, 7, 4, 0, 1, -1, 9, 11], [4, 2, 7, 3, 5, 6, 8, 10]], dtype=torch.int32)
    seq = torch.tensor([0, 1, 0, 1], dtype=torch.int32)
    ve = torch.tensor([64, 64, 30, 19], dtype=torch.int32)
    for slots in (False, True):
        want = oracle.indexer_topk_nan_high(q, w, pool, ve, 12, block_table=bt, seq_ids=seq, return_slots=slots)
        got = longattn.indexer_topk(q, w, pool, ve, 12, block_table=bt, seq_ids=seq, return_slots=slots)
        _assert_same(got, want, f"paged slots={slots}")
