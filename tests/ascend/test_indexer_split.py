"""indexer_topk on the Ascend C kernel with the entries split over the AI cores (ops/indexer/ascend.py:
a decode batch smaller than the core count scores each token's chunks on different cores, then rescans
the union of the chunks' top-k). Forced here with small chunks and 8 emulated cores; every result is
compared id for id with the float64 oracle on integer-valued inputs (exact scores, many ties)."""

import longattn
import pytest
import torch
from longattn.backends import ascend_sim
from longattn.ops.indexer import ascend as indexer_ascend

from tests import oracle
from tests.helpers.indexer import assert_same, int_inputs

pytestmark = pytest.mark.skipif(
    ascend_sim.BACKEND.unavailable is not None, reason=f"ascend_sim: {ascend_sim.BACKEND.unavailable}"
)
SIM = "ascend_sim"


@pytest.fixture(autouse=True)
def small_chunks(monkeypatch):
    monkeypatch.setenv("LONGATTN_ASCEND_SIM_CORES", "8")
    monkeypatch.setattr(indexer_ascend, "SPLIT_MIN_ENTRIES", 32)


def topk(q, w, k, ve, K, **kw):
    ext = ascend_sim.extension()
    ext.take_launch_work()
    got = longattn.indexer_topk(q, w, k, ve, K, backend=SIM, **kw)
    return got, ext.take_launch_work()


@pytest.mark.parametrize("K", [1, 8, 40])
@pytest.mark.parametrize("visible", [[600], [0], [7], [599], [-4], [2**31 - 1], [128, 500]], ids=str)
def test_flat_split_equals_oracle(visible, K):
    """Few distinct key rows (values in {-1, 0, 1}): massive ties across chunk borders."""
    T = len(visible)
    q, w, k = int_inputs(T, 3, 16, 600, lo=-1, hi=2, g=torch.Generator().manual_seed(K))
    ve = torch.tensor(visible)
    (idx, lengths), launches = topk(q, w, k, ve, K)
    assert_same((idx, lengths), oracle.indexer_topk(q, w, k, ve, K), f"visible={visible} K={K}")
    assert len(launches) == 2 and launches[0]["block_dim"] > T, "the split path ran on more cores than tokens"


@pytest.mark.parametrize("return_slots", [False, True])
@pytest.mark.parametrize("page", [1, 5, 16, 64])
def test_paged_split_equals_oracle(page, return_slots):
    """Pages scattered over the pool, an unused page (-1), a page id beyond the pool, an invalid seq id."""
    g = torch.Generator().manual_seed(page)
    pages = 520 // page
    q, w, _ = int_inputs(3, 2, 16, 1, g=g)
    pool = torch.randint(-1, 2, (pages + 2, page, 16), generator=g).float()
    bt = torch.randperm(pages + 2, generator=g)[:pages].view(1, pages).int()
    bt[0, 1] = -1
    bt[0, 3 % pages] = pages + 50
    bt = torch.cat([bt, bt.flip(1)])
    seq = torch.tensor([0, 1, 7])
    ve = torch.tensor([pages * page, pages * page - 3, 10])
    kw = dict(block_table=bt, seq_ids=seq, return_slots=return_slots)
    (idx, lengths), launches = topk(q, w, pool, ve, 9, **kw)
    assert_same((idx, lengths), oracle.indexer_topk(q, w, pool, ve, 9, **kw), f"page={page}")
    assert len(launches) == 2


def test_nan_scores_rank_first_across_chunks():
    """NaN scores rank as +inf (ties by id) whichever chunk they are in."""
    q, w, k = int_inputs(1, 2, 16, 256, g=torch.Generator().manual_seed(3))
    k[[5, 130, 250]] = float("nan")
    ve = torch.tensor([256])
    (idx, lengths), _ = topk(q, w, k, ve, 6)
    assert idx[0, :3].tolist() == [5, 130, 250]
    assert_same((idx, lengths), oracle.indexer_topk_nan_high(q, w, k, ve, 6), "NaN")


def test_no_split_when_tokens_fill_the_cores():
    q, w, k = int_inputs(8, 2, 16, 300)
    (_, _), launches = topk(q, w, k, torch.full((8,), 300), 4)
    assert len(launches) == 1


@pytest.mark.parametrize("q_dtype", [torch.float32, torch.float16], ids=str)
@pytest.mark.parametrize("page", [0, 5, 64])
def test_split_with_bf16_pool_under_wider_q(q_dtype, page):
    """fp32 / fp16 q over a bf16 pool (q split into bf16 pieces, the pool read as it is) through both
    launches of the split path, flat (page 0) and paged: id for id with the oracle. q holds up to 13
    significant bits (q rounded to bf16 would lose some), keys {-1, 0, 1}: exact scores."""
    g = torch.Generator().manual_seed(page + 1)
    q = torch.randint(-(2**12), 2**12 + 1, (2, 3, 16), generator=g).to(q_dtype)
    w = torch.randint(-2, 3, (2, 3), generator=g).float()
    if page == 0:
        k = torch.randint(-1, 2, (600, 16), generator=g).to(torch.bfloat16)
        kw = {}
        ve = torch.tensor([600, 451])
    else:
        pages = 520 // page
        k = torch.randint(-1, 2, (pages + 2, page, 16), generator=g).to(torch.bfloat16)
        bt = torch.randperm(pages + 2, generator=g)[:pages].view(1, pages).int()
        bt[0, 1] = -1
        kw = dict(block_table=torch.cat([bt, bt.flip(1)]), seq_ids=torch.tensor([0, 1]), return_slots=True)
        ve = torch.tensor([pages * page, pages * page - 3])
    (idx, lengths), launches = topk(q, w, k, ve, 12, **kw)
    assert_same((idx, lengths), oracle.indexer_topk(q, w, k, ve, 12, **kw), f"{q_dtype} page={page}")
    assert len(launches) == 2 and launches[0]["block_dim"] > 2
    aic_keys = sum(c["gm_read"]["MTE2"] for c in launches[0]["cores"] if c["aic"])
    pieces = 3 if q_dtype == torch.float32 else 2
    assert aic_keys <= int(ve.sum()) * 16 * 2 + 2 * 8 * pieces * 3 * 16 * 2  # bf16 keys + q pieces per task
