"""Native bf16 key pools under fp32 / fp16 queries on the Ascend C indexer (ops/indexer/ascend.py).

q is split into bf16 pieces whose sum is exactly q (3 for fp32, 2 for fp16) and the cube accumulates
the pieces' products with the pool's own bf16 keys: the pool is neither widened nor copied. Checked
here: the split is exact (every fp16 value, 2^20 random fp32 bit patterns and the edge values; the
documented underflow corner of tiny fp32 values bounded), its pieces carry q's sign and are non-zero
(so an infinite key gives the same infinity, not 0 * inf = NaN); the kernel reads 2 bytes per key
element (emulator GM counters) from the caller's own pool tensor; results id for id equal to the float64
oracle on integer inputs with up to 15 significant bits (q rounded to bf16 would fail), within the derived
bound on random inputs, NaN / inf scores as the reference's."""

import longattn
import pytest
import torch
from longattn.backends import ascend_sim
from longattn.ops.indexer import ascend as indexer_ascend

from tests import oracle
from tests.helpers.indexer import INF, NAN, NEG_NAN, assert_same, check_topk, same_values, score_bound, topk_rule

pytestmark = pytest.mark.skipif(
    ascend_sim.BACKEND.unavailable is not None, reason=f"ascend_sim: {ascend_sim.BACKEND.unavailable}"
)
SIM = "ascend_sim"
Q_DTYPES = [torch.float32, torch.float16]


# ---- the split ---------------------------------------------------------------------------------------
def _check_pieces(q, exact_mask):
    pieces = indexer_ascend.bf16_pieces(q)
    P = 3 if q.dtype == torch.float32 else 2
    assert pieces.dtype == torch.bfloat16 and pieces.shape == (P, *q.shape)
    x, p = q.double(), pieces.double()
    fin = torch.isfinite(x)
    total = p.sum(0)
    bad = fin & exact_mask & (total != x)
    assert not bad.any(), f"{int(bad.sum())} values not split exactly, e.g. {q[bad][:4].tolist()}"
    # q's sign on every piece, no zero piece unless q is zero (an infinite key then gives q's infinity)
    nz = fin & (x != 0) & exact_mask
    sign_ok = ((p > 0) == (x > 0).unsqueeze(0)) & (p != 0)
    assert sign_ok[:, nz].all(), f"a piece of the wrong sign or zero for {q[nz][~sign_ok[:, nz].all(0)][:4].tolist()}"
    # non-finite q: every piece is q (NaN: NaN)
    nf = ~fin
    assert torch.equal(p[:, nf].isnan(), x[nf].isnan().expand(P, -1))
    inf = torch.isinf(x)
    assert (p[:, inf] == x[inf].expand(P, -1)).all()
    return pieces


def test_fp16_split_is_exact_for_every_value():
    """All 65,536 fp16 bit patterns (subnormals, +-0, +-inf, NaNs): two bf16 pieces, exact sum."""
    q = torch.arange(-(2**15), 2**15, dtype=torch.int32).to(torch.int16).view(torch.float16)
    _check_pieces(q, torch.ones_like(q, dtype=torch.bool))


def test_fp32_split_is_exact_above_the_underflow_corner():
    """2^20 random fp32 bit patterns plus edge values: exact for |q| >= 2^-109 (and 0); below it the
    lowest piece is rounded to bf16's subnormal spacing 2^-133, so |sum - q| <= 2^-134 + the halving's
    rounding (< 2^-132 in all)."""
    g = torch.Generator().manual_seed(0)
    bits = torch.randint(-(2**31), 2**31 - 1, (2**20,), generator=g, dtype=torch.int64).to(torch.int32)
    edges = torch.tensor(
        [0.0, -0.0, 1.0, -1.0, 3.4028234663852886e38, -3.4028234663852886e38, 1.1754943508222875e-38,
         1.401298464324817e-45, -1.401298464324817e-45, 2.0**-109, 2.0**-110, 1.0 + 2.0**-23, 3.0 * 2.0**-100,
         float("inf"), float("-inf"), float("nan"), 65504.0, 257.0, 2.0**24 - 1, -(2.0**17 + 1)],
        dtype=torch.float32,
    )  # fmt: skip
    q = torch.cat([bits.view(torch.float32), edges, (torch.randn(10000, generator=g) * 2.0**-120)])
    big = (q.double().abs() >= 2.0**-109) | (q == 0)
    pieces = _check_pieces(q, big)
    err = (pieces.double().sum(0) - q.double())[torch.isfinite(q) & ~big].abs()
    assert err.max() < 2.0**-132, float(err.max())
    assert (~big & torch.isfinite(q)).sum() > 5000  # the corner is exercised


def test_piece_count_and_rejection():
    assert indexer_ascend.piece_count(torch.float32, torch.bfloat16) == 3
    assert indexer_ascend.piece_count(torch.float16, torch.bfloat16) == 2
    for qd, kd in [(torch.bfloat16, torch.bfloat16), (torch.float32, torch.float16), (torch.bfloat16, torch.float32)]:
        assert indexer_ascend.piece_count(qd, kd) == 1
    with pytest.raises(ValueError, match="float32 or float16"):
        indexer_ascend.bf16_pieces(torch.zeros(2, dtype=torch.bfloat16))


# ---- the kernel ----------------------------------------------------------------------------------------
def _wide_int_inputs(q_dtype, T, Hi, Di, N, g):
    """q with up to 15 significant bits (fp32; fp16: 11), keys in {-1, 0, 1} (bf16), small integer
    weights, Di <= 48, Hi <= 5: every partial sum of piece products is a multiple of 1/4 below 2^21 and
    every score an integer below 2^24, so the fp32 scores are exact whatever the summation order."""
    qmax = 2**14 if q_dtype == torch.float32 else 2**11
    q = torch.randint(-qmax, qmax + 1, (T, Hi, Di), generator=g).to(q_dtype)
    w = torch.randint(-2, 3, (T, Hi), generator=g).float()
    k = torch.randint(-1, 2, (N, Di), generator=g).to(torch.bfloat16)
    return q, w, k


def _launches(fn):
    ext = ascend_sim.extension()
    ext.take_launch_work()
    out = fn()
    return out, ext.take_launch_work()


@pytest.mark.parametrize("q_dtype", Q_DTYPES, ids=str)
def test_flat_exact_and_pool_read_as_bf16(monkeypatch, q_dtype):
    """Id for id with the oracle; the AIC's MTE2 reads exactly 2 bytes per visible key element plus the
    q pieces (2 bytes x P per element), i.e. the pool itself, and the kernel is handed the caller's pool
    tensor (same storage, bf16)."""
    monkeypatch.setenv("LONGATTN_ASCEND_SIM_CORES", "3")
    T, Hi, Di, N = 4, 5, 48, 300
    q, w, k = _wide_int_inputs(q_dtype, T, Hi, Di, N, torch.Generator().manual_seed(1))
    assert (q.bfloat16().to(q_dtype) != q).float().mean() > 0.5  # q rounded to bf16 would not do
    ve = torch.tensor([300, 129, 0, 77])
    seen = []
    real = indexer_ascend.kernel_of

    def spy(backend, name):
        fn = real(backend, name)

        def run(*args):
            seen.append(args)
            return fn(*args)

        return run

    monkeypatch.setattr(indexer_ascend, "kernel_of", spy)
    got, launches = _launches(lambda: longattn.indexer_topk(q, w, k, ve, 24, backend=SIM))
    assert_same(got, oracle.indexer_topk(q, w, k, ve, 24), f"{q_dtype} over bf16")
    ((qk, _, kk, *_),) = seen
    P = 3 if q_dtype == torch.float32 else 2
    assert kk is k and qk.shape == (P, T, Hi, Di) and qk.dtype == torch.bfloat16
    (launch,) = launches
    aic_read = sum(c["gm_read"]["MTE2"] for c in launch["cores"] if c["aic"])
    tokens = int((ve > 0).sum())
    assert aic_read == ve.clamp(max=N).sum().item() * Di * 2 + tokens * P * Hi * Di * 2
    logits = longattn.indexer_logits(q, w, k, ve, backend=SIM)
    assert torch.equal(logits.double(), oracle.indexer_logits(q, w, k, ve))


@pytest.mark.parametrize("q_dtype", Q_DTYPES, ids=str)
@pytest.mark.parametrize("page", [1, 5, 64])
def test_paged_exact(q_dtype, page):
    g = torch.Generator().manual_seed(page)
    B, max_pages, Di, Hi = 2, 300 // page + 1, 32, 3
    P = B * max_pages + 2
    q, w, _ = _wide_int_inputs(q_dtype, 5, Hi, Di, 1, g)
    pool = torch.randint(-1, 2, (P, page, Di), generator=g).to(torch.bfloat16)
    bt = torch.randperm(P, generator=g)[: B * max_pages].view(B, max_pages).int()
    bt[1, 0] = -1
    seq = torch.tensor([0, 1, 1, 0, -1], dtype=torch.int32)
    ve = torch.tensor([max_pages * page, 200, 3, 130, 50], dtype=torch.int32)
    for slots in (False, True):
        kw = dict(block_table=bt, seq_ids=seq, return_slots=slots)
        got = longattn.indexer_topk(q, w, pool, ve, 17, backend=SIM, **kw)
        assert_same(got, oracle.indexer_topk(q, w, pool, ve, 17, **kw), f"page={page} slots={slots}")


@pytest.mark.parametrize("q_dtype", Q_DTYPES, ids=str)
def test_random_inputs_within_bound(q_dtype):
    """Real-valued q over bf16 keys: scores within the derived bound of a dot product of P Di terms (the
    pieces' products are exact, so only the fp32 additions round: 2 (P Di + Hi + 4) u sum |w q k|, the
    op suite's score_bound with Di -> P Di), and a valid top-k up to it."""
    g = torch.Generator().manual_seed(7)
    T, Hi, Di, N = 4, 8, 64, 300
    q = torch.randn(T, Hi, Di, generator=g).to(q_dtype)
    w, k = torch.randn(T, Hi, generator=g), torch.randn(N, Di, generator=g).to(torch.bfloat16)
    ve = torch.tensor([300, 1, 150, 299])
    ref = oracle.indexer_logits(q, w, k, ve)
    P = 3 if q_dtype == torch.float32 else 2
    bound = score_bound(q, w, k) * (P * Di + Hi + 4) / (Di + Hi + 4)
    logits = longattn.indexer_logits(q, w, k, ve, backend=SIM)
    fin = torch.isfinite(ref)
    assert torch.equal(torch.isfinite(logits), fin)
    assert torch.all((logits.double() - ref)[fin].abs() <= bound[fin])
    idx, lengths = longattn.indexer_topk(q, w, k, ve, 16, backend=SIM)
    check_topk(idx, lengths, ref, bound, 16, str(q_dtype))


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize("q_dtype", Q_DTYPES, ids=str)
def test_special_values_as_the_reference(q_dtype):
    """NaN in q, NaN / -NaN / +-inf key elements (inf times q's non-zero pieces: q's infinity; times a
    zero coordinate of q: NaN, as the reference), tiny and huge q: logits equal to the reference's (NaN
    where it has NaN) and the top-k by the package rule."""
    g = torch.Generator().manual_seed(3)
    T, Hi, Di, N = 5, 3, 16, 140
    q = torch.randint(-3, 4, (T, Hi, Di), generator=g).to(q_dtype)
    q[..., 0] = q[..., 0].abs() + 1  # non-zero under the inf key coordinate ...
    q[2, 1, 0] = 0.0  # ... except token 2, head 1: 0 * inf = NaN
    q[0, 2, 7] = NAN  # token 0: every score NaN
    # several non-zero pieces times the +-inf keys (the scores stay exact: at most 22 significant bits)
    q[3, :, 1] = 1.0 + 2.0**-10 if q_dtype == torch.float16 else 1.0 + 2.0**-7 + 2.0**-15
    q[4, :, 2] = 60000.0 if q_dtype == torch.float16 else 3.0e38  # overflowing products
    w = torch.randint(1, 3, (T, Hi), generator=g).float()
    k = torch.randint(-2, 3, (N, Di), generator=g).to(torch.bfloat16)
    k[5, 0] = INF
    k[6, 0] = -INF
    k[7, 1] = INF
    k[8, 1] = -INF
    k[9, 3] = NAN
    k[10, 4] = NEG_NAN
    k[11, 2] = 3.0e38
    ve = torch.tensor([140, 140, 140, 140, 140], dtype=torch.int32)
    ref = longattn.indexer_logits(q, w, k, ve, backend="reference")
    assert torch.isinf(ref[1, 5]) and torch.isnan(ref[2, 5]) and torch.isinf(ref[3, 7])
    assert same_values(longattn.indexer_logits(q, w, k, ve, backend=SIM), ref)
    usable = torch.ones(T, N, dtype=torch.bool)
    assert_same(longattn.indexer_topk(q, w, k, ve, 12, backend=SIM), topk_rule(ref, usable, 12), "the rule")


def test_other_mixed_pairs_still_widened():
    """fp16 keys under fp32 q (and bf16 q over fp32 keys) keep the host's widening: exact results."""
    g = torch.Generator().manual_seed(5)
    q = torch.randint(-100, 100, (2, 3, 16), generator=g).float()
    w = torch.randint(-2, 3, (2, 3), generator=g).float()
    k = torch.randint(-2, 3, (90, 16), generator=g).half()
    ve = torch.tensor([90, 40])
    assert_same(longattn.indexer_topk(q, w, k, ve, 9, backend=SIM), oracle.indexer_topk(q, w, k, ve, 9), "fp16 keys")
    qb, kf = q.bfloat16(), k.float()
    assert_same(longattn.indexer_topk(qb, w, kf, ve, 9, backend=SIM), oracle.indexer_topk(qb, w, kf, ve, 9), "fp32")


def test_v4_shape_fp32_q_over_bf16_pool():
    """The V4 indexer shape (64 heads x 128, top-512 of 2048 paged entries) with fp32 q over a bf16 pool:
    three q pieces in L1 next to the key tiles; q of 10 significant bits, scores exact (below 2^23)."""
    T, Hi, Di, page, max_pages = 2, 64, 128, 64, 32
    g = torch.Generator().manual_seed(11)
    q = torch.randint(-(2**9), 2**9 + 1, (T, Hi, Di), generator=g).float()
    w = torch.randint(-2, 3, (T, Hi), generator=g).float()
    pool = torch.randint(-1, 2, (max_pages + 1, page, Di), generator=g).to(torch.bfloat16)
    bt = torch.randperm(max_pages + 1, generator=g)[:max_pages].view(1, max_pages).int()
    kw = dict(block_table=bt, seq_ids=torch.zeros(T, dtype=torch.int32), return_slots=True)
    ve = torch.tensor([2048, 1500], dtype=torch.int32)
    want = oracle.indexer_topk(q, w, pool, ve, 512, **kw)
    assert_same(longattn.indexer_topk(q, w, pool, ve, 512, backend=SIM, **kw), want, "v4 fp32 q, bf16 pool")
