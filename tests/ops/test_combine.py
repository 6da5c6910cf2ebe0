"""merge_attention_states and apply_attention_sink (reference) vs the float64 oracle."""

import longattn
import pytest
import torch

from tests import oracle
from tests.tolerance import assert_close

INF = float("inf")


def _states(T=5, H=4, D=16, dtype=torch.float32):
    out_a, out_b = torch.randn(T, H, D).to(dtype), torch.randn(T, H, D).to(dtype)
    lse_a, lse_b = torch.randn(T, H) * 3, torch.randn(T, H) * 3
    # adversarial rows: one side empty, both empty, huge lse, equal lse
    lse_a[0, :] = -INF
    lse_b[1, :] = -INF
    lse_a[2, :] = -INF
    lse_b[2, :] = -INF
    out_a[2] = 0
    out_b[2] = 0
    lse_a[3, 0], lse_b[3, 0] = 1e4, 1e4 - 3
    lse_b[4, :] = lse_a[4, :]
    return out_a, lse_a, out_b, lse_b


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_merge_matches_oracle(dtype):
    out_a, lse_a, out_b, lse_b = _states(dtype=dtype)
    out, lse = longattn.merge_attention_states(out_a, lse_a, out_b, lse_b)
    ref_out, ref_lse = oracle.merge_attention_states(out_a, lse_a, out_b, lse_b)
    assert out.dtype == dtype and lse.dtype == torch.float32
    # fp32 math on exact inputs: a few roundings of |lse| (exp/log) and of the convex combination.
    u = 2.0**-24
    assert_close(lse, ref_lse, 8 * u * (1 + float(ref_lse[torch.isfinite(ref_lse)].abs().max())), 0.0, "lse")
    out_round = {torch.float32: 2.0**-24, torch.bfloat16: 2.0**-8, torch.float16: 2.0**-11}[dtype]
    # The weights exp(lse_x - m) carry a relative error of a few u * (1 + |lse_a - lse_b|) (the
    # subtraction is exact up to one rounding of the difference), so out is off by that times max|out|.
    both = torch.isfinite(lse_a) & torch.isfinite(lse_b)
    dlse = float((lse_a - lse_b)[both].abs().max())
    omax = float(torch.maximum(out_a.float().abs(), out_b.float().abs()).max())
    assert_close(out, ref_out, 8 * u * (1 + dlse) * omax, 2 * out_round, "out")
    assert torch.all(out[2] == 0) and torch.all(torch.isneginf(lse[2]))


def test_merge_never_nan_even_with_nan_in_empty_side():
    out_a, lse_a, out_b, lse_b = _states()
    out_a[0] = float("nan")  # lse_a[0] is -inf: that side holds no keys and must not be read
    out, lse = longattn.merge_attention_states(out_a, lse_a, out_b, lse_b)
    assert not torch.isnan(out).any() and not torch.isnan(lse).any()


def test_merge_is_commutative_and_associative():
    a, la, b, lb = _states()
    c, lc = torch.randn_like(a), torch.randn_like(la)
    ab, lab = longattn.merge_attention_states(a, la, b, lb)
    ba, lba = longattn.merge_attention_states(b, lb, a, la)
    torch.testing.assert_close(ab, ba)
    torch.testing.assert_close(lab, lba)
    left = longattn.merge_attention_states(*longattn.merge_attention_states(a, la, b, lb), c, lc)
    right = longattn.merge_attention_states(a, la, *longattn.merge_attention_states(b, lb, c, lc))
    torch.testing.assert_close(left[0], right[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(left[1], right[1], atol=1e-3, rtol=1e-6)  # lse up to 1e4: 1e-7 relative


@pytest.mark.parametrize("sink_kind", ["finite", "pos_inf", "neg_inf", "mixed"])
def test_apply_sink_matches_oracle(sink_kind):
    T, H, D = 6, 5, 8
    out, lse = torch.randn(T, H, D), torch.randn(T, H) * 4
    lse[0] = -INF
    out[0] = 0
    sink = {"finite": torch.randn(H), "pos_inf": torch.full((H,), INF), "neg_inf": torch.full((H,), -INF)}.get(
        sink_kind, torch.tensor([0.5, INF, -INF, -2.0, 30.0])
    )
    got = longattn.apply_attention_sink(out, lse, sink)
    ref = oracle.apply_attention_sink(out, lse, sink)
    assert_close(got, ref, 1e-30, 4 * 2.0**-24 * 4, "sink")  # sigmoid + one product: a few ulps relative
    assert not torch.isnan(got).any()


# ---------------------------------------------------------------------------------------------------
# non-finite lse / sink (combine/README.md, "Edge semantics"); shared with tests/triton
# ---------------------------------------------------------------------------------------------------
NAN = float("nan")
NEG_NAN = -float("nan")  # sign bit set
# (lse_a, lse_b, expected lse, expected out: "nan", "zero", "a", "b" or "mix")
MERGE_NONFINITE = [
    (INF, 1.0, INF, "nan"),
    (1.0, INF, INF, "nan"),
    (INF, -INF, INF, "nan"),
    (-INF, INF, INF, "nan"),
    (INF, INF, INF, "nan"),
    (NAN, 1.0, NAN, "nan"),
    (1.0, NAN, NAN, "nan"),
    (NAN, -INF, NAN, "nan"),
    (-INF, NEG_NAN, NAN, "nan"),
    (NAN, INF, NAN, "nan"),
    (INF, NEG_NAN, NAN, "nan"),
    (NAN, NAN, NAN, "nan"),
    (-INF, -INF, -INF, "zero"),
    (2.0, -INF, 2.0, "a"),
    (-INF, -3.0, -3.0, "b"),
    (0.5, 1.5, None, "mix"),
]


def merge_nonfinite_inputs(dtype=torch.float32, D=24):
    """One token per MERGE_NONFINITE row, 3 heads each (the row's lse pair on every head). The out of
    a side with lse -inf is NaN (never read); the other outs are finite."""
    T, H = len(MERGE_NONFINITE), 3
    g = torch.Generator().manual_seed(3)
    out_a, out_b = torch.randn(T, H, D, generator=g), torch.randn(T, H, D, generator=g)
    lse_a = torch.tensor([r[0] for r in MERGE_NONFINITE]).unsqueeze(1).repeat(1, H)
    lse_b = torch.tensor([r[1] for r in MERGE_NONFINITE]).unsqueeze(1).repeat(1, H)
    out_a[torch.isneginf(lse_a)] = NAN
    out_b[torch.isneginf(lse_b)] = NAN
    return out_a.to(dtype), lse_a, out_b.to(dtype), lse_b


def check_merge_nonfinite(out, lse, out_a, out_b, what):
    out, lse = out.float().cpu(), lse.cpu()
    for t, (_, _, want_lse, kind) in enumerate(MERGE_NONFINITE):
        row = f"{what}: row {t} {MERGE_NONFINITE[t]}"
        if want_lse is None:
            assert torch.isfinite(lse[t]).all() and torch.isfinite(out[t]).all(), row
        elif want_lse != want_lse:
            assert torch.isnan(lse[t]).all(), f"{row}: lse {lse[t]}"
        else:
            assert torch.all(lse[t] == want_lse), f"{row}: lse {lse[t]}"
        if kind == "nan":
            assert torch.isnan(out[t]).all(), f"{row}: out {out[t]}"
        elif kind == "zero":
            assert torch.all(out[t] == 0), f"{row}: out {out[t]}"
        elif kind in ("a", "b"):
            assert torch.equal(out[t], (out_a if kind == "a" else out_b)[t].float()), f"{row}: out"


def test_merge_nonfinite_lse():
    out_a, lse_a, out_b, lse_b = merge_nonfinite_inputs()
    out, lse = longattn.merge_attention_states(out_a, lse_a, out_b, lse_b)
    check_merge_nonfinite(out, lse, out_a, out_b, "reference")


# (lse, sink, expected factor g: out * g); rows with lse -inf stay 0 whatever the sink
SINK_NONFINITE = [
    (1.0, NAN, NAN),
    (NAN, 0.5, NAN),
    (NEG_NAN, -INF, NAN),
    (INF, 0.5, 1.0),
    (INF, -INF, 1.0),
    (INF, INF, NAN),  # exp(lse) / (exp(lse) + exp(sink)) = inf / inf
    (-INF, NAN, 0.0),
    (-INF, INF, 0.0),
    (2.0, INF, 0.0),
    (2.0, -INF, 1.0),
]


def sink_nonfinite_inputs(D=16):
    T = len(SINK_NONFINITE)
    g = torch.Generator().manual_seed(4)
    out = torch.randn(T, 1, D, generator=g)
    lse = torch.tensor([[r[0]] for r in SINK_NONFINITE])
    sinks = torch.tensor([r[1] for r in SINK_NONFINITE])
    return out, lse, sinks


def check_sink_nonfinite(apply, what):
    """``apply(out [1, 1, D], lse [1, 1], sink [1])`` per SINK_NONFINITE row."""
    out, lse, sinks = sink_nonfinite_inputs()
    for t, (_, _, g) in enumerate(SINK_NONFINITE):
        got = apply(out[t : t + 1], lse[t : t + 1], sinks[t : t + 1]).float().cpu()
        want = out[t : t + 1] * g
        row = f"{what}: row {t} {SINK_NONFINITE[t]}"
        if g != g:
            assert torch.isnan(got).all(), f"{row}: {got}"
        else:
            assert torch.equal(got, want), f"{row}: {got}"


def test_apply_sink_nonfinite():
    check_sink_nonfinite(longattn.apply_attention_sink, "reference")


def sparse_nonfinite_inputs(D=64, H=4, dtype=torch.float32):
    """Sparse attention inputs covering the non-finite logit rule (sparse_attention/README.md), one
    token per situation, the special keys at different positions of K = 48 index slots (so that they
    fall into different key blocks / splits). Returns (args, expected lse class [T, H]) with classes
    "nan", "+inf", "-inf", "fin"; out must be NaN for nan / +inf, 0 for -inf, finite otherwise."""
    g = torch.Generator().manual_seed(7)
    T, N, K = 12, 60, 48
    kv = torch.randn(N, D, generator=g)
    kv[7, 3] = NAN  # a NaN key row
    kv[11] = 0.0
    kv[11, 0] = 1e20  # big rows: q[..., 0] = +-1e20 gives a +inf / -inf logit (fp32 overflow)
    kv[12] = 0.0
    kv[12, 0] = 2e20
    q = torch.randn(T, H, D, generator=g)
    normal = torch.tensor([i for i in range(N) if i not in (7, 11, 12)], dtype=torch.int32)
    idx = torch.stack([normal[torch.randperm(len(normal), generator=g)[:K]] for _ in range(T)])
    want = [["fin"] * H for _ in range(T)]
    idx[0, 2] = 7  # NaN key in the first block
    idx[1, 20] = 7  # ... a middle block
    idx[2, 47] = 7  # ... the last position
    for t in (0, 1, 2):
        want[t] = ["nan"] * H
    q[3, 1, 5] = NAN  # NaN in q: that head only
    want[3][1] = "nan"
    idx[4, 40] = 11  # the big key late in the row
    q[4, :, 0] = 0.0
    q[4, 0, 0], q[4, 2, 0] = 1e20, -1e20  # head 0: +inf logit; head 2: -inf logit (weight 0)
    want[4][0] = "+inf"
    idx[5] = -1
    idx[5, [0, 17, 33, 46]] = torch.tensor([11, 12, 11, 12], dtype=torch.int32)  # only big keys
    q[5, :, 0] = 0.0
    q[5, 0, 0], q[5, 2, 0] = 1e20, -1e20  # head 2: every used logit -inf -> out 0, lse -inf
    want[5][0], want[5][2] = "+inf", "-inf"
    idx[6, 1], idx[6, 45] = 7, 11  # NaN key early, +inf logit late: NaN wins
    q[6, 0, 0] = 1e20
    want[6] = ["nan"] * H
    idx[7, 1], idx[7, 45] = 11, 7  # +inf logit early, NaN key late: NaN wins
    q[7, 0, 0] = 1e20
    want[7] = ["nan"] * H
    idx[8] = -1  # no valid key at all
    want[8] = ["-inf"] * H
    idx[9, 30] = 12  # a -inf logit among finite ones (head 3), a +inf one (head 1)
    q[9, 3, 0], q[9, 1, 0] = -1e20, 1e20
    want[9][1] = "+inf"
    lengths = torch.full((T,), K, dtype=torch.int32)
    lengths[10] = 20
    idx[10, 30] = 7  # a NaN key past topk_length: never read, finite result
    idx[11, 5] = 7
    lengths[11] = 5  # ... just past the length
    args = dict(q=q.to(dtype), kv=kv.to(dtype), indices=idx, topk_length=lengths, attn_sink=None, softmax_scale=None)
    return args, want


def check_sparse_nonfinite(out, lse, want, ref_out=None, ref_lse=None, sink_nan_heads=(), rtol=1e-5, what=""):
    """The classes of ``want`` exactly; finite cells within ``rtol`` x max|ref cell| of ``ref_out``
    (and lse within 1e-5 (1 + |lse|)) when given. Heads in ``sink_nan_heads`` had a NaN sink: their
    out is NaN unless the lse is -inf."""
    out, lse = out.float().cpu(), lse.cpu()
    T, H = lse.shape
    for t in range(T):
        for h in range(H):
            c, l, o = want[t][h], lse[t, h], out[t, h]
            cell = f"{what}: token {t} head {h} ({c})"
            if c == "nan":
                assert bool(l.isnan()) and bool(o.isnan().all()), f"{cell}: lse {l}, out {o[:4]}"
            elif c == "+inf":
                assert l == INF and bool(o.isnan().all()), f"{cell}: lse {l}, out {o[:4]}"
            elif c == "-inf":
                assert l == -INF and bool((o == 0).all()), f"{cell}: lse {l}, out {o[:4]}"
            else:
                assert bool(torch.isfinite(l)), f"{cell}: lse {l}"
                if h in sink_nan_heads:
                    assert bool(o.isnan().all()), f"{cell}: NaN sink, out {o[:4]}"
                    continue
                assert bool(torch.isfinite(o).all()), f"{cell}: out {o[:4]}"
                if ref_out is not None:
                    r, rl = ref_out[t, h].double().cpu(), float(ref_lse[t, h])
                    assert abs(float(l) - rl) <= 1e-5 * (1 + abs(rl)), f"{cell}: lse {float(l)} vs {rl}"
                    err = float((o.double() - r).abs().max())
                    assert err <= rtol * float(r.abs().max()) + 1e-6, f"{cell}: out differs by {err:.3e}"


@pytest.mark.parametrize("budget", [None, 9000])
@pytest.mark.parametrize("sink", [False, True])
def test_sparse_attention_nonfinite_logits_reference(budget, sink):
    """The reference follows the rule as one softmax and when its key chunks are merged with
    merge_states_fp32 (a 9,000-B budget: 16 keys per chunk)."""
    from longattn.memory import chunk_budget

    args, want = sparse_nonfinite_inputs()
    if sink:
        args["attn_sink"] = torch.tensor([0.5, -1.0, 2.0, NAN])
    if budget is None:
        out, lse = longattn.sparse_attention(**args, backend="reference")
    else:
        with chunk_budget(budget):
            out, lse = longattn.sparse_attention(**args, backend="reference")
    ref_out, ref_lse = oracle.sparse_attention(**{k: v for k, v in args.items() if k != "kv"}, kv_rows=args["kv"])
    check_sparse_nonfinite(
        out, lse, want, ref_out, ref_lse, sink_nan_heads=(3,) if sink else (), what=f"budget={budget}"
    )
