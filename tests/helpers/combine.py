"""merge_attention_states / apply_attention_sink inputs, bounds and non-finite tables (combine/README.md).

Bounds (fp32 math on exact inputs; u = 2**-24): lse = m + log(total) is off by a few u * (1 + |lse|).
The weight of a side, exp(lse_x - m), is off relatively by a few u * (1 + |lse_a - lse_b|): the
rounding of the difference, and on a GPU exp(x) = exp2(x * log2 e), whose error grows like |x| u (the
rounding of the product), so ~(|lse_a - lse_b| + 4) u; a factor 2 covers the rest. Likewise a sink
factor sigmoid(lse - sink) is off by ~(|lse - sink| + 4) u relative. A low-precision output adds one
rounding (``OUT_ROUNDING``).
"""

from __future__ import annotations

import torch

from tests.helpers.specials import INF, NAN, NEG_NAN, neg_nan  # noqa: F401
from tests.tolerance import U32


def states(T=5, H=4, D=16, dtype=torch.float32):
    """Two partial states with adversarial rows: one side empty (token 0: a, token 1: b), both empty
    (token 2, outs 0), a huge lse (token 3), equal lse (token 4)."""
    out_a, out_b = torch.randn(T, H, D).to(dtype), torch.randn(T, H, D).to(dtype)
    lse_a, lse_b = torch.randn(T, H) * 3, torch.randn(T, H) * 3
    lse_a[0, :] = -INF
    lse_b[1, :] = -INF
    lse_a[2, :] = -INF
    lse_b[2, :] = -INF
    out_a[2] = 0
    out_b[2] = 0
    lse_a[3, 0], lse_b[3, 0] = 1e4, 1e4 - 3
    lse_b[4, :] = lse_a[4, :]
    return out_a, lse_a, out_b, lse_b


def merge_bounds(out_a, lse_a, out_b, lse_b, ref_lse):
    """(lse_atol, out_atol) of a merge (module doc): the larger of the two derivations."""
    lse_atol = 8 * U32 * (1 + float(ref_lse[torch.isfinite(ref_lse)].abs().max()))
    both = torch.isfinite(lse_a) & torch.isfinite(lse_b)
    dlse = float((lse_a - lse_b)[both].abs().max())
    omax = float(torch.maximum(out_a.float().abs(), out_b.float().abs()).max())
    return lse_atol, max(8 * (1 + dlse), 2 * (dlse + 8)) * U32 * omax


def sink_rtol(lse, sink) -> float:
    """Relative bound of ``out * sigmoid(lse - sink)`` (module doc), before the output rounding."""
    z = (sink.unsqueeze(0) - lse)[torch.isfinite(sink.unsqueeze(0) - lse)]
    zmax = float(z.abs().max()) if z.numel() else 0.0
    return 2 * (zmax + 8) * U32


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
            assert torch.equal(out[t], (out_a if kind == "a" else out_b)[t].float().cpu()), f"{row}: out"


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
