"""merge_attention_states and apply_attention_sink vs the oracle and the non-finite rules.

merge (per (token, head)): a NaN lse on either side -> lse NaN, out NaN ("nan_lse"); else a +inf lse
-> lse +inf, out NaN ("posinf_lse"); both -inf -> out 0, lse -inf ("both_neginf"); one side -inf ->
exactly the other side ("one_neginf": its out in out_a's dtype and its lse, bit for bit; the -inf
side's out is never read, so the poison it holds must not leak); otherwise ``tests.oracle.
merge_attention_states`` (IEEE float64: a NaN / inf in an out that has weight propagates:
"nonfinite_out"). A side whose fp32 weight exp(lse_x - m) underflows (< 2**-100) while its out holds
NaN / inf is ambiguous (0 * inf or not read at all) and skipped.
Bound (fp32 weights): lse_x - m is exact to u |lse_x - m|, exp adds u, so a weight is off by
<= u (|lse_x - m| + 2) relatively (only weights > 2**-100 matter, i.e. |lse_x - m| <= 70): out within
2 (2 * 72 + 8) u max|out| + 2 * OUT_ROUNDING[dtype] |out|; lse within 2 * 8 u (1 + |lse|).

sink: out * g with g by the rule table of ops/combine/README.md (IEEE product, so NaN / inf outs give
NaN where g = 0): lse -inf -> g = 0 (whatever the sink); a NaN lse or NaN sink -> NaN; lse +inf ->
NaN against a +inf sink, else 1; sink +inf -> 0; sink -inf -> 1; otherwise sigmoid(lse - sink),
computed by ``tests.oracle.apply_attention_sink`` where lse, sink and out are finite.
Bound: g in fp32 has a relative error <= u (min(|lse - sink|, 40) + 4) and, where it underflows (fp32
sigmoid is 0 or subnormal below lse - sink ~ -87), an absolute one <= 2**-126 (as TINY); x2, times |out|,
plus the output rounding.
A factor 0 < g < 2**-100 (it underflows to 0 in fp32) times a NaN / inf out is ambiguous (NaN in fp32,
+-inf in float64) and skipped.
"""

from __future__ import annotations

import math

import longattn
import torch
from hypothesis import strategies as st

from tests import oracle

from .common import (
    DTYPES,
    INF,
    NAN,
    OUT_ROUNDING,
    OUT_TINY,
    TINY,
    U32,
    Report,
    bulk,
    check_values,
    draw_specials,
    is_strided,
    set_special,
    tensor_summary,
    with_layout,
)  # fmt: skip

LAYOUT_CHOICES = ["contig", "contig", "pad_last", "stride1", "transpose01", "stride0"]
MERGE_CATEGORIES = ("api", "nan_lse", "posinf_lse", "both_neginf", "one_neginf", "nonfinite_out", "huge_lse",
                    "strided", "finite_fp32", "finite_lowp")  # fmt: skip
SINK_CATEGORIES = ("api", "lse_neginf", "lse_nan", "lse_posinf", "sink_nan", "sink_posinf", "sink_neginf",
                   "nonfinite_out", "strided", "finite_fp32", "finite_lowp")  # fmt: skip
BACKENDS = ("reference", "triton", "ascend_sim")

LSE_KINDS = ("nan", "-nan", "inf", "-inf", "-inf", "-inf", "huge", "-huge", "-0", "sub", "gap", "-gap")
OUT_KINDS = ("nan", "-nan", "inf", "-inf", "huge", "-huge", "-0", "sub", "-sub")


def _lse_special(x, pos, kind):
    if kind in ("gap", "-gap"):  # a side far below / above the other (weights underflow)
        if x.numel():
            x.view(-1)[pos % x.numel()] = 200.0 if kind == "gap" else -200.0
        return
    set_special(x, pos, kind)


# ----------------------------------------------------------------------------------------------------
# merge
# ----------------------------------------------------------------------------------------------------
@st.composite
def merge_strategy(draw, backend=None):
    return dict(
        seed=draw(st.integers(0, 2**31 - 1)),
        T=draw(st.integers(0, 6)),
        H=draw(st.sampled_from([1, 2, 3, 5, 7, 16, 17, 33])),
        D=draw(st.sampled_from([1, 3, 8, 24, 64, 100, 130, 200])),
        dtype=draw(st.sampled_from(["fp32", "fp32", "bf16", "fp16"])),
        lse_dtype=draw(st.sampled_from(["fp32"] * 6 + ["bf16", "fp16"])),
        lse_scale=draw(st.sampled_from([1.0, 10.0, 100.0])),
        lse_specials=draw_specials(draw, st, ["lse_a", "lse_b"], 8, LSE_KINDS),
        out_specials=draw_specials(draw, st, ["out_a", "out_b"], 4, OUT_KINDS),
        poison_empty_side=draw(st.booleans()),
        layouts=draw(st.lists(st.sampled_from(LAYOUT_CHOICES), min_size=4, max_size=4)),
    )  # fmt: skip


def merge_targeted():
    rows = [  # (lse_a, lse_b) per token, every head the same pair
        (INF, 1.0),
        (1.0, INF),
        (INF, -INF),
        (-INF, INF),
        (INF, INF),
        (NAN, 1.0),
        (1.0, NAN),
        (NAN, -INF),
        (-INF, NAN),
        (NAN, INF),
        (-INF, -INF),
        (2.0, -INF),
        (-INF, -3.0),
        (0.5, 1.5),
        (1e30, 1e30 + 1e24),
        (-1e30, 5.0),
        (0.0, 150.0),
    ]
    return [dict(recipe="table", rows=[[str(a), str(b)] for a, b in rows], dtype=d, layout=lay)
            for d, lay in (("fp32", "contig"), ("bf16", "strided"), ("fp16", "contig"))]  # fmt: skip


def merge_build(spec):
    if spec.get("recipe") == "table":
        rows = [(float(a), float(b)) for a, b in spec["rows"]]
        T, H, D = len(rows), 3, 40
        g = torch.Generator().manual_seed(3)
        dtype = DTYPES[spec["dtype"]]
        out_a, out_b = bulk((T, H, D), g, dtype), bulk((T, H, D), g, dtype)
        lse_a = torch.tensor([[a] * H for a, _ in rows], dtype=torch.float32)
        lse_b = torch.tensor([[b] * H for _, b in rows], dtype=torch.float32)
        out_a[torch.isneginf(lse_a)] = NAN
        out_b[torch.isneginf(lse_b)] = INF
        out_a[13, 1, 5] = NAN  # finite lses with a NaN / inf in an out that has weight
        out_b[13, 2, 7] = INF
        lays = ["transpose01", "pad_last", "stride1", "stride0"] if spec["layout"] == "strided" else ["contig"] * 4
    else:
        g = torch.Generator().manual_seed(spec["seed"])
        T, H, D = spec["T"], spec["H"], spec["D"]
        dtype = DTYPES[spec["dtype"]]
        out_a, out_b = bulk((T, H, D), g, dtype), bulk((T, H, D), g, dtype)
        lse_a = (torch.randn(T, H, generator=g) * spec["lse_scale"]).to(DTYPES[spec["lse_dtype"]])
        lse_b = (torch.randn(T, H, generator=g) * spec["lse_scale"]).to(DTYPES[spec["lse_dtype"]])
        for target, pos, kind in spec["lse_specials"]:
            _lse_special(lse_a if target == "lse_a" else lse_b, pos, kind)
        for target, pos, kind in spec["out_specials"]:
            set_special(out_a if target == "out_a" else out_b, pos, kind)
        if spec["poison_empty_side"]:
            out_a[torch.isneginf(lse_a.float())] = NAN
            out_b[torch.isneginf(lse_b.float())] = -INF
        lays = spec["layouts"]
    kwargs = dict(
        out_a=with_layout(out_a, lays[0]), lse_a=with_layout(lse_a, lays[1]),
        out_b=with_layout(out_b, lays[2]), lse_b=with_layout(lse_b, lays[3]),
    )  # fmt: skip
    return kwargs, dict(out_a=out_a, out_b=out_b, lse_a=lse_a, lse_b=lse_b)


def merge_run(kwargs, backend):
    return longattn.merge_attention_states(**kwargs, backend=backend)


def _first_difference(out, want, lse: float, want_lse: float) -> str:
    """The exact comparison of a merge output with the side it must equal: "" when equal, else what
    differs: the lse, and/or the out's first differing element (NaN equals NaN; -0.0 equals 0.0)."""
    parts = []
    if lse != want_lse:
        parts.append(f"lse {lse!r}, want {want_lse!r}")
    differs = (torch.isnan(out) != torch.isnan(want)) | (~torch.isnan(out) & (out != want))
    if bool(differs.any()):
        i = int(differs.nonzero()[0])
        parts.append(
            f"out differs at {int(differs.sum())} of {out.numel()} elements, first [{i}]: "
            f"{float(out[i])!r}, want {float(want[i])!r}"
        )
    return "; ".join(parts)


def merge_check(spec, kwargs, ctx, result, report: Report):
    oa, ob, la, lb = ctx["out_a"], ctx["out_b"], ctx["lse_a"], ctx["lse_b"]
    T, H, D = oa.shape
    out, lse = result
    if out.shape != (T, H, D) or out.dtype != oa.dtype or lse.shape != (T, H) or lse.dtype != torch.float32:
        report.fail("api", f"out {tensor_summary(out)} / lse {tensor_summary(lse)} for out_a {tensor_summary(oa)}")
        return
    report.hit("api")
    la64, lb64 = la.double(), lb.double()
    oa64, ob64 = oa.double(), ob.double()
    strided = is_strided(*kwargs.values())
    lowp = oa.dtype != torch.float32
    go, gl = out.detach().double(), lse.detach().double()
    # the oracle on a sanitized copy (NaN / +inf rows are decided by the rule; the oracle would not)
    special = torch.isnan(la64) | torch.isnan(lb64) | (la64 == INF) | (lb64 == INF)
    sa = torch.where(special, torch.zeros_like(la64), la64)
    sb = torch.where(special, torch.zeros_like(lb64), lb64)
    want_o, want_l = oracle.merge_attention_states(oa64, sa, ob64, sb)
    for t in range(T):
        for h in range(H):
            a, b = float(la64[t, h]), float(lb64[t, h])
            o, l = go[t, h], float(gl[t, h])
            where = f"token {t} head {h} (lse_a {a!r}, lse_b {b!r})"
            if math.isnan(a) or math.isnan(b):
                report.hit("nan_lse")
                if not (math.isnan(l) and bool(torch.isnan(o).all())):
                    report.fail("nan_lse", f"{where}: want lse NaN / out NaN, got lse {l!r}, out[:4] {o[:4].tolist()}")
                continue
            if a == INF or b == INF:
                report.hit("posinf_lse")
                if not (l == INF and bool(torch.isnan(o).all())):
                    report.fail(
                        "posinf_lse", f"{where}: want lse +inf / out NaN, got lse {l!r}, out[:4] {o[:4].tolist()}"
                    )
                continue
            if a == -INF and b == -INF:
                report.hit("both_neginf")
                if not (l == -INF and bool((o == 0).all())):
                    report.fail(
                        "both_neginf", f"{where}: want out 0 / lse -inf, got lse {l!r}, out[:4] {o[:4].tolist()}"
                    )
                continue
            if a == -INF or b == -INF:
                report.hit("one_neginf")
                src, sl = (ob, b) if a == -INF else (oa, a)
                want = src[t, h].double()
                diff = _first_difference(o, want, l, float(torch.tensor(sl, dtype=torch.float32)))
                if diff:
                    report.fail("one_neginf", f"{where}: want exactly the other side; {diff}")
                continue
            m = max(a, b)
            wa, wb = math.exp(a - m), math.exp(b - m)
            fin_a, fin_b = bool(torch.isfinite(oa64[t, h]).all()), bool(torch.isfinite(ob64[t, h]).all())
            if (wa < 2.0**-100 and not fin_a) or (wb < 2.0**-100 and not fin_b):
                report.ambiguous += 1
                continue
            gap = min(abs(a - b), 70.0)
            vals = torch.cat([oa64[t, h][torch.isfinite(oa64[t, h])], ob64[t, h][torch.isfinite(ob64[t, h])]])
            vmax = float(vals.abs().max()) if vals.numel() else 0.0
            atol = 2 * (2 * (gap + 2) + 8) * U32 * vmax + OUT_TINY[oa.dtype]
            rtol = 2 * OUT_ROUNDING[oa.dtype]
            lse_atol = 2 * 8 * U32 * (1 + abs(float(want_l[t, h])))
            if not (fin_a and fin_b):
                cat = "nonfinite_out"
            elif strided:
                cat = "strided"
            elif max(abs(a), abs(b)) >= 1e6:
                cat = "huge_lse"
            else:
                cat = "finite_lowp" if lowp else "finite_fp32"
            report.hit(cat)
            if not abs(l - float(want_l[t, h])) <= lse_atol:
                report.fail(cat, f"{where}: lse {l!r}, want {float(want_l[t, h])!r} (bound {lse_atol:.3e})")
            check_values(report, cat, o, want_o[t, h], atol, rtol, where)


# ----------------------------------------------------------------------------------------------------
# sink
# ----------------------------------------------------------------------------------------------------
SINK_LSE_KINDS = ("nan", "-nan", "inf", "-inf", "-inf", "huge", "-huge", "-0")
SINK_KINDS = ("nan", "-nan", "inf", "-inf", "huge", "-huge", "-0")


@st.composite
def sink_strategy(draw, backend=None):
    return dict(
        seed=draw(st.integers(0, 2**31 - 1)),
        T=draw(st.integers(0, 6)),
        H=draw(st.sampled_from([1, 2, 3, 5, 7, 16, 17, 33])),
        D=draw(st.sampled_from([1, 3, 8, 24, 64, 100, 130, 200])),
        dtype=draw(st.sampled_from(["fp32", "fp32", "bf16", "fp16"])),
        lse_dtype=draw(st.sampled_from(["fp32"] * 6 + ["bf16"])),
        sink_dtype=draw(st.sampled_from(["fp32"] * 6 + ["bf16", "fp16"])),
        lse_scale=draw(st.sampled_from([1.0, 10.0, 100.0])),
        specials=draw_specials(draw, st, ["lse"], 6, SINK_LSE_KINDS)
        + draw_specials(draw, st, ["sink"], 3, SINK_KINDS)
        + draw_specials(draw, st, ["out"], 3, OUT_KINDS),
        layouts=draw(st.lists(st.sampled_from(LAYOUT_CHOICES), min_size=3, max_size=3)),
    )  # fmt: skip


def sink_targeted():
    table = [(1.0, NAN), (NAN, 0.5), (-NAN, -INF), (INF, 0.5), (INF, -INF), (INF, INF), (-INF, NAN), (-INF, INF),
             (2.0, INF), (2.0, -INF), (NAN, INF), (-INF, -INF), (0.3, -1.0), (1e30, 5.0), (-1e30, -2.0)]  # fmt: skip
    return [dict(recipe="table", rows=[[str(a), str(b)] for a, b in table], dtype=d, layout=lay)
            for d, lay in (("fp32", "contig"), ("bf16", "strided"), ("fp16", "contig"))]  # fmt: skip


def sink_build(spec):
    if spec.get("recipe") == "table":
        rows = [(float(a), float(b)) for a, b in spec["rows"]]
        T, D = len(rows), 24
        g = torch.Generator().manual_seed(4)
        dtype = DTYPES[spec["dtype"]]
        out = bulk((T, T, D), g, dtype)  # H = T heads: head h has sink rows[h][1]; token t lse rows[t][0] on every head
        lse = torch.tensor([[a] * T for a, _ in rows], dtype=torch.float32)
        sink = torch.tensor([b for _, b in rows], dtype=torch.float32)
        out[2, 3, 4] = NAN  # non-finite outs against finite and non-finite factors
        out[4, 8, 1] = INF
        out[6, 6, 2] = -INF
        lays = ["transpose01", "stride1", "stride0"] if spec["layout"] == "strided" else ["contig"] * 3
    else:
        g = torch.Generator().manual_seed(spec["seed"])
        T, H, D = spec["T"], spec["H"], spec["D"]
        dtype = DTYPES[spec["dtype"]]
        out = bulk((T, H, D), g, dtype)
        lse = (torch.randn(T, H, generator=g) * spec["lse_scale"]).to(DTYPES[spec["lse_dtype"]])
        sink = (torch.randn(H, generator=g) * 2).to(DTYPES[spec["sink_dtype"]])
        for target, pos, kind in spec["specials"]:
            set_special({"lse": lse, "sink": sink, "out": out}[target], pos, kind)
        lays = spec["layouts"]
    kwargs = dict(
        out=with_layout(out, lays[0]),
        lse=with_layout(lse, lays[1]),
        attn_sink=with_layout(sink, "stride0" if lays[2] != "contig" else "contig"),
    )
    return kwargs, dict(out=out, lse=lse, sink=sink)


def sink_run(kwargs, backend):
    return longattn.apply_attention_sink(**kwargs, backend=backend)


def sink_factor_rule(lse: float, sink: float) -> float:
    if lse == -INF:
        return 0.0
    if math.isnan(lse) or math.isnan(sink):
        return NAN
    if lse == INF:
        return NAN if sink == INF else 1.0
    if sink == INF:
        return 0.0
    if sink == -INF:
        return 1.0
    z = lse - sink
    return 1.0 / (1.0 + math.exp(-z)) if z >= 0 else math.exp(z) / (1.0 + math.exp(z))


def sink_check(spec, kwargs, ctx, result, report: Report):
    out, lse, sink = ctx["out"], ctx["lse"], ctx["sink"]
    T, H, D = out.shape
    if result.shape != (T, H, D) or result.dtype != out.dtype:
        report.fail("api", f"result {tensor_summary(result)} for out {tensor_summary(out)}")
        return
    report.hit("api")
    o64, l64, s64 = out.double(), lse.double(), sink.double()
    got = result.detach().double()
    strided = is_strided(*kwargs.values())
    lowp = out.dtype != torch.float32
    fin_rows = torch.isfinite(l64) & torch.isfinite(s64).view(1, H)
    want_fin = oracle.apply_attention_sink(torch.where(torch.isfinite(o64), o64, torch.zeros_like(o64)),
                                           torch.where(fin_rows, l64, torch.zeros_like(l64)),
                                           torch.where(torch.isfinite(s64), s64, torch.zeros_like(s64)))  # fmt: skip
    for t in range(T):
        for h in range(H):
            lv, sv = float(l64[t, h]), float(s64[h])
            g = sink_factor_rule(lv, sv)
            where = f"token {t} head {h} (lse {lv!r}, sink {sv!r})"
            o = o64[t, h]
            if lv == -INF:
                cat = "lse_neginf"
            elif math.isnan(lv):
                cat = "lse_nan"
            elif math.isnan(sv):
                cat = "sink_nan"
            elif lv == INF:
                cat = "lse_posinf"
            elif sv == INF:
                cat = "sink_posinf"
            elif sv == -INF:
                cat = "sink_neginf"
            elif not bool(torch.isfinite(o).all()):
                cat = "nonfinite_out"
            elif strided:
                cat = "strided"
            else:
                cat = "finite_lowp" if lowp else "finite_fp32"
            report.hit(cat)
            if math.isfinite(lv) and math.isfinite(sv):
                want = torch.where(torch.isfinite(o), want_fin[t, h], o * g)  # oracle on finite outs, IEEE on the rest
            else:
                want = o * g
            z = abs(lv - sv) if math.isfinite(lv) and math.isfinite(sv) else 0.0
            omax = float(o[torch.isfinite(o)].abs().max()) if bool(torch.isfinite(o).any()) else 0.0
            # g itself may underflow: fp32 sigmoid(x) is 0 or subnormal below x ~ -87 (torch's 1 / (1 + exp(-x))
            # overflows exp), an absolute error of at most TINY in g, times the out it scales
            g_err = 2 * U32 * (min(z, 40.0) + 4) * (0 if math.isnan(g) else g) + 2 * TINY
            atol = g_err * omax + OUT_TINY[out.dtype]
            mask = None
            if 0.0 < g < 2.0**-100 and not bool(torch.isfinite(o).all()):
                # g underflows to 0 in fp32 (inf * 0 = NaN) but not in float64 (inf): either is IEEE
                mask = torch.isfinite(o)
                report.ambiguous += int((~mask).sum())
            check_values(report, cat, got[t, h], want, atol, 2 * OUT_ROUNDING[out.dtype], where, mask=mask)
