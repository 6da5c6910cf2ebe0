"""indexer_logits / indexer_topk on every backend vs the float64 oracle (and the reference).

Integer-valued inputs make every fp32 score exact, so ids, order and tie-breaks are compared exactly
(keys 16 wide: the Ascend C kernel's cube fractals). Random real inputs are compared under a derived
score bound, with a top-k check that tolerates swaps only between entries whose scores are within that
bound (tests/helpers/indexer.py). Backend-specific checks (entry ranges per program, merge trees,
bitonic merges, launch tiles): tests/triton, tests/ascend.
"""

import longattn
import pytest
import torch
from longattn.memory import chunk_budget

from tests import oracle
from tests.helpers.backends import call, skip_if_emulated
from tests.helpers.device import dev
from tests.helpers.indexer import (
    INF,
    NAN,
    NEG_NAN,
    VISIBLE_CASES,
    assert_same,
    check_topk,
    int_inputs,
    nan_inputs,
    neg_nan,
    same_values,
    score_bound,
    topk_rule,
)
from tests.tolerance import assert_close

FLOATS = [torch.float32, torch.bfloat16, torch.float16]


def topk_of(backend, q, w, k, ve, topk, **kw):
    """indexer_topk on ``backend`` (inputs moved to the test device)."""
    kw = {a: (dev(v)[0] if isinstance(v, torch.Tensor) else v) for a, v in kw.items()}
    return call(longattn.indexer_topk, *dev(q, w, k, ve), topk, backend=backend, **kw)


def logits_of(backend, q, w, k, ve, **kw):
    kw = {a: (dev(v)[0] if isinstance(v, torch.Tensor) else v) for a, v in kw.items()}
    return call(longattn.indexer_logits, *dev(q, w, k, ve), backend=backend, **kw).cpu()


def _dup_inputs():
    q, w, k = int_inputs(3, 4, 16, 40)
    k[5] = k[9]  # exact duplicate rows: ties broken by the smaller id
    k[30] = k[9]
    return q, w, k


@pytest.mark.parametrize("topk", [1, 5, 8, 64])
@pytest.mark.parametrize("visible", list(VISIBLE_CASES), ids=str)
def test_topk_exact_on_integer_inputs(backend, visible, topk):
    q, w, k = _dup_inputs()
    ve = torch.tensor(VISIBLE_CASES[visible], dtype=torch.int64)
    got = topk_of(backend, q, w, k, ve, topk)
    assert_same(got, oracle.indexer_topk(q, w, k, ve, topk), f"{visible} topk={topk}")
    assert torch.equal(logits_of(backend, q, w, k, ve).double(), oracle.indexer_logits(q, w, k, ve))


@pytest.mark.parametrize("topk", [1, 8, 64])
@pytest.mark.parametrize("visible", list(VISIBLE_CASES), ids=str)
def test_reference_topk_chunked_equals_unchunked(visible, topk):
    """The reference's entry chunks (a chunk budget of one entry) change nothing on exact scores."""
    q, w, k = _dup_inputs()
    ve = torch.tensor(VISIBLE_CASES[visible], dtype=torch.int32)
    idx, lengths = longattn.indexer_topk(q, w, k, ve, topk, backend="reference")
    with chunk_budget(1):
        idx_c, len_c = longattn.indexer_topk(q, w, k, ve, topk, backend="reference")
    assert torch.equal(idx_c, idx) and torch.equal(len_c, lengths)


def test_all_equal_scores_pick_smallest_ids(backend):
    q = torch.zeros(2, 3, 16)  # every score is exactly 0
    w, k = torch.randn(2, 3), torch.randn(300, 16)
    idx, lengths = topk_of(backend, q, w, k, torch.tensor([300, 7]), 10)
    assert idx[0].tolist() == list(range(10))
    assert idx[1].tolist() == list(range(7)) + [-1] * 3 and lengths.tolist() == [10, 7]
    idx, lengths = topk_of(backend, q, -w.abs(), k, torch.tensor([300, 300]), 200)  # all -0.0
    assert idx[0].tolist() == list(range(200)) and lengths.tolist() == [200, 200]


@pytest.mark.filterwarnings("ignore:overflow encountered")  # the interpreter's numpy
def test_negative_weights_and_inf_scores_stay_selectable(backend):
    q = torch.ones(1, 2, 16)
    k = torch.tensor([[1.0] * 16, [-1.0] * 16, [2.0] * 16, [3e38] * 16])  # q.k = 16, -16 (relu 0), 32, inf
    w = torch.tensor([[-1.0, -1.0]])  # scores 0, -32, -inf for the last (still selectable)
    got = topk_of(backend, q, w, k, torch.tensor([4]), 4)
    assert got[0][0].tolist() == [1, 0, 2, 3]
    assert_same(got, longattn.indexer_topk(q, w, k, torch.tensor([4]), 4, backend="reference"), "reference")


@pytest.mark.filterwarnings("ignore:overflow encountered")
@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_overflowing_scores_stay_selectable(backend, sign):
    """Visible entries whose score overflows to +-inf are still candidates (inf first, -inf last)."""
    q = torch.ones(1, 1, 16) * 1e20
    k = torch.zeros(6, 16)
    k[1] = 1e20  # +-inf score
    k[3] = 1.0  # large finite
    idx, lengths = topk_of(backend, q, torch.tensor([[sign]]), k, torch.tensor([6]), 8)
    want = [1, 3, 0, 2, 4, 5] if sign > 0 else [0, 2, 4, 5, 3, 1]
    assert idx[0].tolist() == want + [-1, -1] and lengths.tolist() == [6]


def test_negative_zero_ties_with_positive_zero(backend):
    """Negative weights times relu(...) = 0 give -0.0 scores; they tie with +0.0 (order by id)."""
    q = torch.zeros(2, 2, 16)
    q[:, :, 0] = 1.0
    k = torch.zeros(40, 16)
    k[::3, 0] = -1.0  # q.k = -1 -> relu 0 -> w * 0
    k[1::3, 0] = 0.0
    k[2::3, 0] = 2.0  # q.k = 2 -> w * 2
    w = torch.tensor([[-1.0, -2.0], [1.0, 0.5]])  # token 0: -0.0 scores; token 1: +0.0 scores
    ve = torch.tensor([40, 40])
    got = topk_of(backend, q, w, k, ve, 30)
    assert_same(got, oracle.indexer_topk(q, w, k, ve, 30), "-0.0")
    assert got[0][0, :5].tolist() == [0, 1, 3, 4, 6]  # all zero scores, ascending ids


def paged_inputs(page, Di=16, Hi=4):
    """7 tokens of 3 sequences over a paged pool: an unused page (-1), a page id outside the pool (its
    entries are skipped, never read), an invalid sequence id (-1: selects nothing), visible ends of 0,
    whole and partial pages and past the table."""
    B, max_pages = 3, 6
    P = B * max_pages + 2
    q, w, _ = int_inputs(7, Hi, Di, 1)
    pool = torch.randint(-2, 3, (P, page, Di)).float()
    bt = torch.randperm(P)[: B * max_pages].view(B, max_pages).int()
    bt[1, -1] = -1
    bt[2, 2] = P + 3
    seq = torch.tensor([0, 1, 2, 2, 0, 1, -1], dtype=torch.int32)
    ve = torch.tensor([0, max_pages * page, max_pages * page, 3 * page - 1, page + 1, 2, 10**6], dtype=torch.int32)
    return q, w, pool, ve, dict(block_table=bt, seq_ids=seq)


@pytest.mark.parametrize("return_slots", [False, True])
@pytest.mark.parametrize("page", [1, 3, 5, 16, 64])
def test_paged_exact(backend, page, return_slots):
    q, w, pool, ve, kw = paged_inputs(page)
    got = topk_of(backend, q, w, pool, ve, 9, return_slots=return_slots, **kw)
    assert_same(got, oracle.indexer_topk(q, w, pool, ve, 9, return_slots=return_slots, **kw), f"page={page}")
    assert torch.equal(logits_of(backend, q, w, pool, ve, **kw).double(), oracle.indexer_logits(q, w, pool, ve, **kw))


@pytest.mark.parametrize("paged", [False, True], ids=["flat", "paged"])
@pytest.mark.parametrize("tile_tokens", [1, 2, 3])
def test_reference_token_tiles(monkeypatch, tile_tokens, paged):
    """The reference scores a block of entries for a tile of tokens at a time (the per-head scores of
    one tile ~CACHE_TILE_BYTES) and skips the blocks none of a tile's tokens sees. Shrunk here to
    blocks of <= 8 entries and tiles of 1-3 tokens over groups of up to 6 tokens: partial tiles,
    skipped blocks, paged blocks of 6 entries; integer inputs, so scores and top-k are exact."""
    from longattn.ops.indexer import reference

    if paged:
        q, w, keys, ve, kw = paged_inputs(3)
    else:
        q, w, keys = int_inputs(7, 4, 16, 40)
        ve, kw = torch.tensor([40, 0, 33, 12, 5, 40, 1], dtype=torch.int32), {}
    Hi, Di = q.shape[1:]
    monkeypatch.setattr(reference, "MIN_ENTRIES", 8)
    monkeypatch.setattr(reference, "CACHE_TILE_BYTES", tile_tokens * 8 * Hi * 4)
    with chunk_budget(4 * 8 * (Di * 4 + Di * 4)):  # keys: at most a quarter of it, 8 fp32 + 8 fp32 rows
        idx = longattn.indexer_topk(q, w, keys, ve, 9, backend="reference", **kw)
        logits = longattn.indexer_logits(q, w, keys, ve, backend="reference", **kw)
    assert_same(idx, oracle.indexer_topk(q, w, keys, ve, 9, **kw), f"tile={tile_tokens}")
    assert torch.equal(logits.double(), oracle.indexer_logits(q, w, keys, ve, **kw))


@pytest.mark.parametrize("heads", [2, 64])
def test_reference_spans_stay_within_the_budget(heads):
    """A span's per-pair buffers (scores, mask, temporaries, the top-k's sort keys: 45 bytes a pair)
    fit the chunk budget, also when few heads make a cache-sized block of entries wide (2 heads: a
    512 KiB tile is 65,536 entries) and the token step is many tokens."""
    from longattn.ops.indexer import reference

    budget, T, N = 4 << 20, 320, 4096
    q, w, k = int_inputs(T, heads, 16, N)
    ve = torch.full((T,), N, dtype=torch.int32)
    with chunk_budget(budget):
        spans = [scores.shape for _, _, _, scores, _ in reference.score_blocks(q, w, k, ve, pair_bytes=16)]
    assert sum(n for _, n in spans) == N * -(-T // max(t for t, _ in spans))  # every entry of every step
    assert max(t * n for t, n in spans) * (4 + 1 + 24 + 16) <= budget, spans


def test_invalid_sequence_id_selects_nothing(backend):
    q, w, _ = int_inputs(3, 2, 16, 1)
    pool = torch.randn(4, 2, 16)
    bt = torch.arange(4, dtype=torch.int32).view(1, 4)
    seq = torch.tensor([0, 5, -1])
    ve = torch.tensor([8, 8, 8])
    idx, lengths = topk_of(backend, q, w, pool, ve, 3, block_table=bt, seq_ids=seq)
    assert lengths.tolist() == [3, 0, 0] and idx[1].tolist() == [-1, -1, -1] and idx[2].tolist() == [-1] * 3
    assert_same((idx, lengths), oracle.indexer_topk(q, w, pool, ve, 3, block_table=bt, seq_ids=seq), "oracle")


def _random_inputs(dtype):
    T, Hi, Di, N = 5, 8, 32, 300
    g = torch.Generator().manual_seed(9)
    q, w = torch.randn(T, Hi, Di, generator=g).to(dtype), torch.randn(T, Hi, generator=g)
    k = torch.randn(N, Di, generator=g).to(dtype)
    ve = torch.tensor([0, 3, 100, 300, 299], dtype=torch.int32)
    return q, w, k, ve


@pytest.mark.parametrize("dtype", FLOATS, ids=str)
def test_random_inputs_within_bound(backend, dtype):
    q, w, k, ve = _random_inputs(dtype)
    ref = oracle.indexer_logits(q, w, k, ve)
    bound = score_bound(q, w, k)
    logits = logits_of(backend, q, w, k, ve)
    fin = torch.isfinite(ref)
    assert torch.equal(torch.isfinite(logits), fin)
    assert torch.all((logits.double() - ref)[fin].abs() <= bound[fin])
    idx, lengths = topk_of(backend, q, w, k, ve, 16)
    check_topk(idx, lengths, ref, bound, 16, str(dtype))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_reference_random_inputs_chunked(dtype):
    q, w, k, ve = _random_inputs(dtype)
    ref = oracle.indexer_logits(q, w, k, ve)
    with chunk_budget(1):
        idx, lengths = longattn.indexer_topk(q, w, k, ve, 16, backend="reference")
    check_topk(idx, lengths, ref, score_bound(q, w, k), 16, "budget 1")


def test_reference_logits_chunked_equal_unchunked_on_integers():
    q, w, k = int_inputs(4, 3, 6, 70)
    ve = torch.tensor([70, 0, 33, 12])
    full = longattn.indexer_logits(q, w, k, ve, backend="reference")
    with chunk_budget(1):
        assert torch.equal(longattn.indexer_logits(q, w, k, ve, backend="reference"), full)
    assert_close(full, oracle.indexer_logits(q, w, k, ve), 0.0, 0.0, "integer logits are exact")


@pytest.mark.parametrize("seed", range(5))
def test_reference_candidate_prefilter_is_exact(seed):
    """The reference's span prefilter keeps exactly what a full sort would select: ties at the k-th
    score, usable -inf / +inf scores, -0.0 vs +0.0, rows with fewer usable entries than k."""
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


def test_strided_inputs_and_int64_metadata(backend):
    q, w, k = int_inputs(4, 3, 16, 60)
    qs = torch.zeros(3, 4, 32)
    qs[:, :, ::2] = q.transpose(0, 1)
    k_nc = torch.zeros(60, 40)
    k_nc[:, 3:19] = k
    ve = torch.tensor([[60, 0], [0, 0], [33, 0], [12, 0]]).long()
    qs, k_nc, ve, wt = dev(qs, k_nc, ve, w.t().contiguous())
    q_nc = qs.transpose(0, 1)[:, :, ::2]  # [T, Hi, Di] with strides (32, 128, 2)
    got = call(longattn.indexer_topk, q_nc, wt.t(), k_nc[:, 3:19], ve[:, 0], 10, backend=backend)
    assert_same(got, oracle.indexer_topk(q, w, k, ve[:, 0].cpu(), 10), "strided")


def test_many_heads_and_wide_dims(backend):
    """Hi > 64 and Di > 128 (the Triton scoring loops over head and dim tiles)."""
    q, w, k = int_inputs(2, 70, 136, 50, lo=-1, hi=2)
    ve = torch.tensor([50, 31])
    assert_same(topk_of(backend, q, w, k, ve, 7), oracle.indexer_topk(q, w, k, ve, 7), "tiled")
    assert torch.equal(logits_of(backend, q, w, k, ve).double(), oracle.indexer_logits(q, w, k, ve))


def test_chunked_prefill_paged_vs_reference(backend):
    """Many tokens of two sequences (causal visible_end), paged keys, return_slots."""
    page, max_pages, Di, Hi = 16, 12, 16, 8
    P = 2 * max_pages + 3
    q, w, _ = int_inputs(48, Hi, Di, 1, lo=-1, hi=2)
    pool = torch.randint(-1, 2, (P, page, Di)).float()
    bt = torch.randperm(P)[: 2 * max_pages].view(2, max_pages).int()
    seq = torch.tensor([0] * 24 + [1] * 24, dtype=torch.int32)
    pos = torch.cat([torch.arange(600, 624), torch.arange(0, 720, 30)])
    ve = ((pos + 1) // 4).int()
    for slots in (False, True):
        kw = dict(block_table=bt, seq_ids=seq, return_slots=slots)
        ref = longattn.indexer_topk(q, w, pool, ve, 32, backend="reference", **kw)
        assert_same(topk_of(backend, q, w, pool, ve, 32, **kw), ref, f"prefill slots={slots}")


@pytest.mark.parametrize("shape", [(4, 5, 32, 700, 50), (3, 64, 128, 500, 100), (2, 17, 48, 1200, 257)], ids=str)
@pytest.mark.parametrize("dtype", FLOATS, ids=str)
def test_many_blocks_many_ties(backend, dtype, shape):
    """Several 128-entry blocks per token, small integer values (lots of exact ties, incl. +-0.0 from
    negative weights), non-power-of-two heads: identical to the reference, id by id. (The Triton merge
    trees over many ranges: tests/triton/test_triton_indexer.py.)"""
    skip_if_emulated(backend, "several 128-entry blocks per token", interpreted_only=True)
    T, Hi, Di, N, topk = shape
    g = torch.Generator().manual_seed(sum(shape))
    q, w, k = int_inputs(T, Hi, Di, N, -1, 2, dtype, g=g)
    ve = torch.randint(N // 2, N + 5, (T,), generator=g)
    ref = longattn.indexer_topk(q, w, k, ve, topk, backend="reference")
    assert_same(topk_of(backend, q, w, k, ve, topk), ref, "many blocks")


@pytest.mark.slow
def test_v4_shape_paged(backend):
    """V4 indexer shape: 64 heads x 128, top-512 over 2048 paged entries (integer values: exact)."""
    T, Hi, Di, page, max_pages = 2, 64, 128, 64, 32
    g = torch.Generator().manual_seed(11)
    q, w, _ = int_inputs(T, Hi, Di, 1, -1, 2, torch.bfloat16, g=g)
    pool = torch.randint(-1, 2, (max_pages + 1, page, Di), generator=g).to(torch.bfloat16)
    bt = torch.randperm(max_pages + 1, generator=g)[:max_pages].view(1, max_pages).int()
    kw = dict(block_table=bt, seq_ids=torch.zeros(T, dtype=torch.int32), return_slots=True)
    ve = torch.tensor([2048, 1500], dtype=torch.int32)
    ref = longattn.indexer_topk(q, w, pool, ve, 512, backend="reference", **kw)
    assert_same(topk_of(backend, q, w, pool, ve, 512, **kw), ref, "v4 paged")


# ---------------------------------------------------------------------------------------------------
# NaN scores rank as +inf (README.md), whatever their sign; ties by the smaller id
# ---------------------------------------------------------------------------------------------------
@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # the Triton interpreter's numpy: inf - inf, 0 * inf
@pytest.mark.parametrize("topk", [2, 8, 40])
def test_topk_nan_scores_rank_as_pos_inf(backend, topk):
    """All-NaN rows (NaN in q), NaN keys, a negative NaN key, +inf scores (3 heads: a kernel that pads
    heads must not add 0 * inf = NaN)."""
    q, w, k = nan_inputs(Di=16)
    ve = torch.tensor([70, 70, 26, 4], dtype=torch.int32)
    scores = longattn.indexer_logits(q, w, k, ve, backend="reference")
    assert bool(torch.isnan(scores[0, :70]).all())
    assert int(scores[1, 25].view(torch.int32)) < 0 and bool(scores[1, 25].isnan())  # a negative NaN
    assert bool((scores[1, [5, 30, 60]] == INF).all())
    logits = logits_of(backend, q, w, k, ve)
    assert torch.equal(logits.isnan(), scores.isnan()) and torch.equal(logits.nan_to_num(0.0), scores.nan_to_num(0.0))
    want = oracle.indexer_topk_nan_high(q, w, k, ve, topk)
    assert_same(topk_of(backend, q, w, k, ve, topk), want, f"topk={topk}")
    # token 0 (all NaN) takes the smallest ids; token 1: +inf and NaN scores tie, smaller id first
    assert want[0][0, : min(topk, 70)].tolist() == list(range(min(topk, 70)))
    assert want[0][1, :6].tolist() == [3, 5, 25, 30, 40, 60][: min(6, topk)]
    assert want[1].tolist() == [min(topk, 70), min(topk, 70), min(topk, 26), min(topk, 4)]


@pytest.mark.parametrize("topk", [2, 8, 40])
def test_reference_topk_nan_scores_chunked(topk):
    q, w, k = nan_inputs(Di=16)
    ve = torch.tensor([70, 70, 26, 4], dtype=torch.int32)
    with chunk_budget(1):
        got = longattn.indexer_topk(q, w, k, ve, topk, backend="reference")
    assert_same(got, oracle.indexer_topk_nan_high(q, w, k, ve, topk), f"chunked topk={topk}")


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_topk_nan_scores_paged(backend):
    q, w, _ = nan_inputs(Di=16)
    page, P = 8, 12
    pool = torch.randint(-2, 3, (P, page, 16)).float()
    pool[2, 3, 1] = NAN
    pool[7, 0, 4] = NEG_NAN
    pool[4, 5, 0] = INF
    bt = torch.tensor([[2, 7, 4, 0, 1, -1, 9, 11], [4, 2, 7, 3, 5, 6, 8, 10]], dtype=torch.int32)
    seq = torch.tensor([0, 1, 0, 1], dtype=torch.int32)
    ve = torch.tensor([64, 64, 30, 19], dtype=torch.int32)
    for slots in (False, True):
        kw = dict(block_table=bt, seq_ids=seq, return_slots=slots)
        want = oracle.indexer_topk_nan_high(q, w, pool, ve, 12, **kw)
        assert_same(topk_of(backend, q, w, pool, ve, 12, **kw), want, f"paged slots={slots}")


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize("topk", [8, 40])
@pytest.mark.parametrize("dtype", FLOATS, ids=str)
def test_topk_nan_and_overflowing_scores(backend, dtype, topk):
    """NaN scores of both signs (NaN in q, NaN keys, -NaN key bits), +inf / -inf / NaN (0 * inf) scores
    of huge keys, overflowing products, tokens with 5 and with no visible entries: the rule written out
    (``topk_rule``) and the reference agree."""
    T, Hi, Di, N = 6, 4, 32, 300
    g = torch.Generator().manual_seed(topk)
    q = torch.randint(-2, 3, (T, Hi, Di), generator=g).to(dtype)
    w = torch.randint(-2, 3, (T, Hi), generator=g).float()
    w[:, 0] = 1.0
    k = torch.randint(-2, 3, (N, Di), generator=g).to(dtype)
    q[0, 1, 5] = NAN  # token 0: every score NaN (NaN reaches every entry through head 1)
    k[7, 3] = NAN  # entries 7, 150: NaN scores for every token
    k[150, 0] = NAN
    k[151] = neg_nan((Di,)).to(dtype)  # -NaN bits
    k[[20, 21, 140]] = 0  # huge keys, one non-zero dim (so q . k has one product: no order effects)
    k[20, 0] = 3e4 if dtype == torch.float16 else 3e38  # +inf / -inf / NaN (0 * inf) scores
    k[21, 0] = -k[20, 0]
    k[140, 0] = k[20, 0]
    q[1, 0] = 1.0  # token 1, head 0: <q, k20> = +inf, w = 1 -> +inf score (ties with the NaN entries)
    q[2] = 0.0  # token 2: 0 * huge = 0 except NaN keys
    q[3, :, 0] = 60000.0 if dtype == torch.float16 else 3e38  # token 3: overflow -> +-inf products
    ve = torch.tensor([300, 300, 160, 250, 5, 0], dtype=torch.int32)  # token 4: 5 entries; token 5 none
    ref_logits = longattn.indexer_logits(q, w, k, ve, backend="reference")
    assert same_values(logits_of(backend, q, w, k, ve), ref_logits), "logits (NaN included) differ from the reference"
    assert torch.isnan(ref_logits[0, :300]).all() and torch.isnan(ref_logits[1, 7])
    usable = torch.arange(N).unsqueeze(0) < ve.unsqueeze(1)
    want = topk_rule(ref_logits, usable, topk)
    idx, ln = topk_of(backend, q, w, k, ve, topk)
    assert_same((idx, ln), want, "the rule")
    assert idx[0].tolist() == list(range(topk)) and int(ln[0]) == topk  # all NaN: ids 0.. (was length 0)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_topk_nan_scores_paged_missing_page(backend):
    """An all-NaN token skips a missing page (-1); a NaN entry of another sequence's page."""
    B, max_pages, page, Di, Hi = 2, 4, 16, 16, 2
    P = B * max_pages + 1
    g = torch.Generator().manual_seed(5)
    q = torch.randint(-2, 3, (4, Hi, Di), generator=g).float()
    w = torch.ones(4, Hi)
    pool = torch.randint(-2, 3, (P, page, Di), generator=g).float()
    bt = torch.randperm(P, generator=g)[: B * max_pages].view(B, max_pages).int()
    bt[1, 1] = -1  # entries 16..31 of sequence 1 are not usable
    pool[bt[0, 2], 3, 0] = NAN  # sequence 0, entry 35
    q[2, 0, 0] = NAN  # token 2: all NaN
    seq = torch.tensor([0, 1, 1, 0], dtype=torch.int32)
    ve = torch.tensor([64, 64, 40, 36], dtype=torch.int32)
    kw = dict(block_table=bt, seq_ids=seq)
    ref_logits = longattn.indexer_logits(q, w, pool, ve, backend="reference", **kw)
    assert same_values(logits_of(backend, q, w, pool, ve, **kw), ref_logits)
    usable = torch.zeros(4, max_pages * page, dtype=torch.bool)
    for t in range(4):
        for j in range(int(ve[t])):
            usable[t, j] = bool(bt[seq[t], j // page] >= 0)
    want = topk_rule(ref_logits, usable, 20)
    idx, ln = topk_of(backend, q, w, pool, ve, 20, **kw)
    assert_same((idx, ln), want, "the rule")
    assert idx[2].tolist() == list(range(16)) + [32, 33, 34, 35]  # the NaN token skips the missing page


@pytest.mark.parametrize("q_dtype", [torch.float16, torch.bfloat16], ids=str)
def test_mixed_dtypes_are_widened_not_rounded(backend, q_dtype):
    """q in 16 bits, index_k fp32 (huge and non-integer values): both are widened to fp32 (exact)
    instead of rounding the keys to q's dtype (fp16 would overflow 1e30 to inf: NaN scores; bf16
    would lose bits the reference keeps)."""
    T, Hi, Di, N = 3, 4, 32, 200
    g = torch.Generator().manual_seed(61)
    q = torch.randint(-2, 3, (T, Hi, Di), generator=g).to(q_dtype)
    w = torch.randint(-2, 3, (T, Hi), generator=g).float()
    k = torch.randn(N, Di, generator=g)
    k[[3, 50, 120], 5] = 1e30  # beyond fp16
    ve = torch.tensor([200, 150, 7])
    logits = logits_of(backend, q, w, k, ve)
    ref = longattn.indexer_logits(q, w, k, ve, backend="reference")
    assert not torch.isnan(ref).any() and not torch.isnan(logits).any()
    torch.testing.assert_close(logits, ref, atol=1e-4, rtol=1e-5)
    idx, ln = topk_of(backend, q, w, k, ve, 16)
    ridx, rln = longattn.indexer_topk(q, w, k, ve, 16, backend="reference")
    assert torch.equal(ln.cpu(), rln) and torch.equal(idx[:, :3].cpu(), ridx[:, :3])  # the huge entries lead


def test_bf16_subnormals_are_read_exactly(backend):
    """bf16 subnormal q and keys are read exactly (Triton under the interpreter: its own bf16 -> fp32
    conversion garbles them, triton_utils.cast_in): 2**-133 * 2**100 = 2**-33 exactly, and a subnormal
    times a -inf key is a -inf logit (score 0), not 0 * -inf = NaN."""
    Hi, Di, N = 2, 16, 4
    q = torch.zeros(1, Hi, Di)
    q[0, 0, 3] = 2.0**-133  # bf16 subnormals (the smallest normal is 2**-126)
    q[0, 1, 3] = 2.0**-130
    q[0, 1, 5] = -(2.0**-130)
    k = torch.zeros(N, Di)
    k[0, 3] = 2.0**100
    k[1, 3] = float("-inf")
    k[2, 5] = -(2.0**100)
    k[3, 3] = 3 * 2.0**-128  # a subnormal key: 2**-133 * 3 * 2**-128 underflows to 0 in fp32
    w = torch.tensor([[1.0, 2.0]])
    ve = torch.tensor([N])
    logits = logits_of(backend, q.bfloat16(), w, k.bfloat16(), ve).cpu()
    assert logits.tolist() == [[2.0**-33 + 2 * 2.0**-30, 0.0, 2 * 2.0**-30, 0.0]]


@pytest.mark.parametrize("q_dtype", [torch.float32, torch.float16], ids=str)
def test_wider_q_over_bf16_keys(backend, q_dtype):
    """fp32 / fp16 q over a bf16 key pool (the Ascend C kernel reads the pool as it is, q as exact bf16
    pieces): q values needing more than bf16's 8 bits, keys {-1, 0, 1}, flat and paged: every score is
    exact in fp32 (integers below 2^24), so ids equal the oracle's."""
    g = torch.Generator().manual_seed(17)
    qmax = 2**12 if q_dtype == torch.float32 else 2**11
    q = torch.randint(-qmax, qmax + 1, (3, 4, 32), generator=g).to(q_dtype)
    w = torch.randint(-2, 3, (3, 4), generator=g).float()
    k = torch.randint(-1, 2, (260, 32), generator=g).to(torch.bfloat16)
    ve = torch.tensor([260, 131, 9])
    assert_same(topk_of(backend, q, w, k, ve, 20), oracle.indexer_topk(q, w, k, ve, 20), "flat")
    assert torch.equal(logits_of(backend, q, w, k, ve).double(), oracle.indexer_logits(q, w, k, ve))
    pool = k.view(13, 20, 32)
    kw = dict(block_table=torch.tensor([[3, 0, 12, -1, 7, 1, 2, 4, 5, 6, 8, 9, 10]]), seq_ids=torch.zeros(3).int())
    want = oracle.indexer_topk(q, w, pool, ve, 20, return_slots=True, **kw)
    assert_same(topk_of(backend, q, w, pool, ve, 20, return_slots=True, **kw), want, "paged")


# ---- FP8 index-key pools (longattn.cache.Fp8IndexKeyPool: vLLM's indexer K cache record) ---------------
# Keys of small integers with ue8m0 scales: every e4m3 value and scale is exact, and so is every score
# (scale * <q, e4m3 values>, powers of two times integers), so ids, order and ties are compared exactly
# against the float64 oracle, both on the pool's bytes (oracle.indexer_*_fp8) and on the dequantised keys.


def fp8_pool(keys, ue8m0=True, spread=True):
    """keys [P, page, Di] or [N, Di] quantised into a pool on the test device. ``spread``: each key times
    its own power of two in [2^-3, 2^3] (integer keys stay exact: the ue8m0 scales differ from entry to
    entry, so a scale read at the wrong offset changes ids)."""
    if spread:
        g = torch.Generator().manual_seed(keys.numel())
        keys = keys * torch.exp2(torch.randint(-3, 4, keys.shape[:-1], generator=g).float()).unsqueeze(-1)
    return longattn.quantize_index_k_fp8(dev(keys)[0], ue8m0=ue8m0)


def fp8_topk(backend, q, w, pool, ve, topk, **kw):
    kw = {a: (dev(v)[0] if isinstance(v, torch.Tensor) else v) for a, v in kw.items()}
    return call(longattn.indexer_topk, *dev(q, w), pool, dev(ve)[0], topk, backend=backend, **kw)


def fp8_logits(backend, q, w, pool, ve, **kw):
    kw = {a: (dev(v)[0] if isinstance(v, torch.Tensor) else v) for a, v in kw.items()}
    return call(longattn.indexer_logits, *dev(q, w), pool, dev(ve)[0], backend=backend, **kw).cpu()


def fp8_dequantised(pool, paged):
    rows = longattn.dequantize_index_k_fp8(pool).cpu()
    return rows if paged else rows.reshape(-1, rows.shape[-1])


@pytest.mark.parametrize("topk", [1, 8, 64])
@pytest.mark.parametrize("visible", list(VISIBLE_CASES), ids=str)
def test_fp8_flat_exact(backend, visible, topk):
    q, w, k = _dup_inputs()  # duplicate key rows: ties broken by the smaller id
    pool = fp8_pool(k.view(5, 8, 16))  # flat use of a 5-page pool: entry j = slot j
    ve = torch.tensor(VISIBLE_CASES[visible], dtype=torch.int64)
    got = fp8_topk(backend, q, w, pool, ve, topk)
    want = oracle.indexer_topk_fp8(q, w, pool.data, 8, ve, topk)
    assert_same(got, want, f"{visible} topk={topk}")
    assert_same(got, oracle.indexer_topk(q, w, fp8_dequantised(pool, False), ve, topk), "dequantised keys")
    logits = fp8_logits(backend, q, w, pool, ve)
    assert torch.equal(logits.double(), oracle.indexer_logits_fp8(q, w, pool.data, 8, ve))
    assert torch.equal(logits.double(), oracle.indexer_logits(q, w, fp8_dequantised(pool, False), ve))


@pytest.mark.parametrize("return_slots", [False, True])
@pytest.mark.parametrize("page", [1, 3, 64])
def test_fp8_paged_exact(backend, page, return_slots):
    """Pages in a shuffled order, an unused page (-1), a page id past the pool, an invalid sequence id,
    visible ends of 0, partial pages and past the table (paged_inputs)."""
    q, w, keys, ve, kw = paged_inputs(page)
    pool = fp8_pool(keys)
    got = fp8_topk(backend, q, w, pool, ve, 9, return_slots=return_slots, **kw)
    want = oracle.indexer_topk_fp8(q, w, pool.data, page, ve, 9, return_slots=return_slots, **kw)
    assert_same(got, want, f"page={page}")
    deq = oracle.indexer_topk(q, w, fp8_dequantised(pool, True), ve, 9, return_slots=return_slots, **kw)
    assert_same(got, deq, "dequantised keys")
    logits = fp8_logits(backend, q, w, pool, ve, **kw)
    assert torch.equal(logits.double(), oracle.indexer_logits_fp8(q, w, pool.data, page, ve, **kw))


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize("paged", [False, True])
def test_fp8_adversarial_scales(backend, paged):
    """Scales written into the pool's bytes: 0, negative, NaN, +-inf. The logit of a head is
    scale * <q, e4m3 values> before the ReLU, so a negative scale flips which heads count, NaN makes
    the score NaN (ranked as +inf), inf makes it +-inf (or NaN where the dot product is 0)."""
    page, Di, Hi = 4, 16, 3
    g = torch.Generator().manual_seed(23)
    q = torch.randint(-2, 3, (4, Hi, Di), generator=g).float()
    w = torch.randint(-2, 3, (4, Hi), generator=g).float()
    keys = torch.randint(-2, 3, (6, page, Di), generator=g).float()
    keys[2, 1] = 0.0  # an all-zero key: its dot products are 0 (x inf = NaN)
    pool = fp8_pool(keys)
    scales = pool.data[:, page * Di :].view(torch.float32)  # [P, page] views of the bytes
    for (p, o), s in {(0, 1): 0.0, (0, 2): -1.0, (1, 0): float("nan"), (1, 3): float("inf"), (2, 1): float("inf"),
                      (3, 2): float("-inf"), (4, 0): -2.0**-7, (5, 3): float("nan")}.items():  # fmt: skip
        scales[p, o] = s
    ve = torch.tensor([24, 24, 13, 5])
    kw = {}
    if paged:
        kw = dict(block_table=torch.tensor([[5, 3, 1, 0, 2, 4], [2, 0, 4, -1, 1, 3]]).int(),
                  seq_ids=torch.tensor([0, 1, 1, 0]).int())  # fmt: skip
    logits = fp8_logits(backend, q, w, pool, ve, **kw)
    want = oracle.indexer_logits_fp8(q, w, pool.data, page, ve, **kw)
    assert same_values(logits.double(), want), (logits, want)
    assert torch.isnan(want).any() and torch.isinf(want).any()  # the case exercises both
    for topk in (5, 24):
        got = fp8_topk(backend, q, w, pool, ve, topk, return_slots=paged, **kw)
        assert_same(got, oracle.indexer_topk_fp8(q, w, pool.data, page, ve, topk, return_slots=paged, **kw), topk)
    cpu_pool = longattn.Fp8IndexKeyPool(pool.data.cpu(), page, Di)
    assert same_values(longattn.indexer_logits(q, w, cpu_pool, ve, backend="reference", **kw).double(), want)


@pytest.mark.parametrize("q_dtype", [torch.float32, torch.bfloat16], ids=str)
def test_fp8_random_within_bound(backend, q_dtype):
    """Real-valued keys with plain (not power-of-two) scales: scores within the derived fp32 bound of
    the oracle's scale * <q, e4m3 values>, and a valid top-k up to that bound."""
    T, Hi, Di, N = 5, 6, 32, 300
    g = torch.Generator().manual_seed(5)
    q = torch.randn(T, Hi, Di, generator=g).to(q_dtype)
    w = torch.randn(T, Hi, generator=g)
    pool = fp8_pool(torch.randn(N, Di, generator=g) * 3, ue8m0=False, spread=False)
    ve = torch.tensor([300, 299, 150, 7, 0])
    want = oracle.indexer_logits_fp8(q, w, pool.data, N, ve)
    rows = fp8_dequantised(pool, False)
    bound = score_bound(q.float(), w, rows)
    logits = fp8_logits(backend, q, w, pool, ve)
    assert torch.equal(torch.isinf(logits), torch.isinf(want))
    fin = torch.isfinite(want)
    assert torch.all((logits.double() - want).abs()[fin] <= bound[fin])
    idx, lengths = fp8_topk(backend, q, w, pool, ve, 16)
    check_topk(idx.cpu(), lengths.cpu(), want, bound, 16, "fp8 random")


@pytest.mark.parametrize("Hi, Di", [(1, 16), (5, 48), (70, 144)])
def test_fp8_head_and_dim_sizes(backend, Hi, Di):
    """Odd head counts, Di a multiple of 16 below, at and above one 128-wide tile, more heads than one
    64-head tile."""
    g = torch.Generator().manual_seed(Hi)
    q, w, _ = int_inputs(2, Hi, Di, 1, g=g)
    keys = torch.randint(-2, 3, (3, 7, Di), generator=g).float()
    pool = fp8_pool(keys)
    ve = torch.tensor([21, 9])
    assert_same(fp8_topk(backend, q, w, pool, ve, 6), oracle.indexer_topk_fp8(q, w, pool.data, 7, ve, 6), "sizes")
    assert torch.equal(fp8_logits(backend, q, w, pool, ve).double(), oracle.indexer_logits_fp8(q, w, pool.data, 7, ve))


@pytest.mark.parametrize("topk", [1, 8])
def test_fp8_reference_chunked_equals_unchunked(topk):
    q, w, pool, ve, kw = paged_inputs(3)
    pool = longattn.quantize_index_k_fp8(pool)
    idx, lengths = longattn.indexer_topk(q, w, pool, ve, topk, backend="reference", **kw)
    logits = longattn.indexer_logits(q, w, pool, ve, backend="reference", **kw)
    with chunk_budget(1):
        assert_same(longattn.indexer_topk(q, w, pool, ve, topk, backend="reference", **kw), (idx, lengths), "chunked")
        assert torch.equal(longattn.indexer_logits(q, w, pool, ve, backend="reference", **kw), logits)


def test_fp8_pool_crosses_the_custom_op_schema():
    """torch.ops.longattn.* take the pool's uint8 data (page size from Di of q); a width that is not a
    whole number of (Di + 4)-byte entries is refused naming index_k."""
    q, w, k = _dup_inputs()
    pool = longattn.quantize_index_k_fp8(k.view(5, 8, 16))
    ve = torch.tensor([40, 20, 3])
    want = longattn.indexer_topk(q, w, pool, ve, 8)
    got = torch.ops.longattn.indexer_topk(q, w, pool.data, ve, 8, None, None, False, "reference")
    assert_same(got, want, "schema")
    logits = torch.ops.longattn.indexer_logits(q, w, pool.data, ve, None, None, "reference")
    assert torch.equal(logits, longattn.indexer_logits(q, w, pool, ve))
    with pytest.raises(ValueError, match=r"uint8 `index_k` must be the data of an Fp8IndexKeyPool.*Di = 16"):
        torch.ops.longattn.indexer_logits(q, w, pool.data[:, :-1].contiguous(), ve, None, None, None)


def test_fp8_pool_errors():
    q, w, k = _dup_inputs()
    ve = torch.tensor([40, 20, 3])
    with pytest.raises(ValueError, match=r"indexer_topk: `index_k` is an Fp8IndexKeyPool of dim 32, but q has Di=16"):
        longattn.indexer_topk(q, w, longattn.quantize_index_k_fp8(torch.zeros(40, 32)), ve, 4)
    with pytest.raises(TypeError, match=r"indexer_logits: `index_k` must have dtype float32 or bfloat16 or float16"):
        longattn.indexer_logits(q, w, longattn.quantize_index_k_fp8(k).data, ve)
    with pytest.raises(TypeError, match=r"`index_k` must be a torch.Tensor"):
        longattn.indexer_logits(q, w, longattn.Fp8KVPool.empty(1, 2), ve)
    meta = longattn.Fp8IndexKeyPool.empty(2, 20, 16, device="meta")
    with pytest.raises(ValueError, match=r"one device: `q` is on cpu but `index_k` is on meta"):
        longattn.indexer_topk(q, w, meta, ve, 4)
    pool = longattn.quantize_index_k_fp8(k)
    with pytest.raises(TypeError, match=r"indexer_kl_loss: `index_k` must be a float tensor .* FP8 index-key pools"):
        longattn.indexer_kl_loss(torch.randn(3, 2, 16), torch.randn(40, 16), q, w, pool, ve)


def test_fp8_pool_declined_by_the_npu_backends_with_a_reason():
    from longattn.ops.indexer.op import TOPK_OP, prepare

    q, w, k = _dup_inputs()
    inp = prepare("indexer_topk", q, w, longattn.quantize_index_k_fp8(k), torch.tensor([4, 4, 4]), topk=2)
    for name in ("ascend_sim", "ascend"):
        assert any("FP8 index-key pools" in r for r in TOPK_OP.impls[name].reasons(inp)), name
