"""indexer_logits / indexer_topk inputs and checks shared by the op x backend tests and the backend-specific ones.

Integer-valued inputs make every fp32 score exact (whatever the summation order), so ids, order,
tie-breaks (smaller id first), -0.0 == +0.0, padding, lengths and return_slots are compared exactly.
Random real inputs are compared under a derived score bound, with a top-k check that tolerates swaps
only between entries whose scores are within that bound.
"""

from __future__ import annotations

import math

import torch

from tests.helpers.specials import INF, NAN, NEG_NAN, neg_nan  # noqa: F401
from tests.tolerance import U32

VISIBLE_CASES = {
    "decode_like": [40, 40, 40],
    "fewer_than_topk": [0, 1, 5],
    "beyond_pool": [1000, 39, 41],
    "mixed": [0, 17, 40],
    "negative": [-5, 40, 2**31 - 1],
}


def score_bound(q, weights, rows) -> torch.Tensor:
    """[T, N] bound on |fp32 score - exact score|: (Di + Hi + 4) u sum_h |w_h| sum_d |q_hd k_d|."""
    T, Hi, Di = q.shape
    mag = torch.einsum("th,thd,nd->tn", weights.double().abs(), q.double().abs(), rows.double().abs())
    return 2 * (Di + Hi + 4) * U32 * mag


def check_topk(indices, lengths, scores, bound, topk, what):
    """indices [T, topk] / lengths [T] are a valid top-k of the oracle ``scores`` [T, N] (-inf:
    unselectable) up to ``bound`` [T, N]: right count, distinct selectable ids, sorted, and nothing left
    out that beats a selected entry by more than the bound."""
    indices, lengths = indices.cpu(), lengths.cpu()
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


def int_inputs(T, Hi, Di, N, lo=-2, hi=3, dtype=torch.float32, g=None):
    """q [T, Hi, Di], weights [T, Hi], keys [N, Di] of small integers (exact fp32 scores)."""
    q = torch.randint(lo, hi, (T, Hi, Di), generator=g).to(dtype)
    w = torch.randint(-2, 3, (T, Hi), generator=g).float()
    k = torch.randint(lo, hi, (N, Di), generator=g).to(dtype)
    return q, w, k


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


def assert_same(got, want, what):
    """Top-k results identical (int32 outputs; ids and lengths compared exactly)."""
    idx, lengths = got
    assert idx.dtype == torch.int32 and lengths.dtype == torch.int32, what
    assert torch.equal(idx.cpu().long(), want[0].cpu().long()), f"{what}: indices\n{idx}\n{want[0]}"
    assert torch.equal(lengths.cpu().long(), want[1].cpu().long()), f"{what}: lengths {lengths} vs {want[1]}"


def same_values(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal values (infinities included), NaN exactly where the other has NaN."""
    a, b = a.cpu(), b.cpu()
    nan = torch.isnan(a)
    return a.shape == b.shape and bool(torch.equal(nan, torch.isnan(b))) and bool(torch.equal(a[~nan], b[~nan]))


def topk_rule(logits: torch.Tensor, usable: torch.Tensor, topk: int):
    """indices [T, topk] (-1 padded), lengths [T] by the rule: NaN -> +inf, score desc, id asc."""
    T, N = logits.shape
    idx = torch.full((T, topk), -1, dtype=torch.int32)
    lengths = torch.zeros(T, dtype=torch.int32)
    for t in range(T):
        cands = [(-(INF if math.isnan(s) else s), j) for j, s in enumerate(logits[t].tolist()) if usable[t, j]]
        cands.sort()
        chosen = [j for _, j in cands[:topk]]
        idx[t, : len(chosen)] = torch.tensor(chosen, dtype=torch.int32)
        lengths[t] = len(chosen)
    return idx, lengths
