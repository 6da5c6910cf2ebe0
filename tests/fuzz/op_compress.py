"""compress_pool (stateless) and compress_kv (stateful, paged, chunked) vs ``tests.oracle.compress_pool_ieee``.

Per (entry, channel), over the channel's present slots (block -1 of an overlapping entry 0 is absent):
all scores -inf -> exactly 0 ("all_neginf"); a NaN score -> NaN ("nan_score"); a +inf score -> NaN
("posinf_score"); a NaN value -> NaN even at weight 0 ("nan_value"); a +-inf value at a -inf score
(weight exactly 0) -> NaN (0 * inf, as the oracle: "neginf_score_inf_value"); a +-inf value with a
positive weight -> +-inf / NaN by IEEE ("inf_value"); a +-inf value whose weight exp(s - max) is
positive but below 1e-30 in float64 is ambiguous in fp32 (the weight may underflow to 0: 0 * inf) and
skipped. Everything else within the bound below.

Bound (derived like tests/tolerance.py): over n = c * ratio slots, exp(s - m) is relatively off by
<= u (|s - m| + 2) and a term e * a by another u; the numerator and denominator sums add (n + 2) u
relative each; since x e^-x <= 1/e, the |s - m| terms add <= n u amax / e. Total (per channel)
<= (3 n + 6) u amax with amax = max |value| over the channel's weighted slots; x2 for second order,
plus 2**-126 per slot (underflow / FTZ). bf16 / fp16 inputs are exact in fp32: the same bound.

compress_kv: the entries of every sequence (fed in random prefill chunks and decode steps, several
sequences per step) equal pool -> RMSNorm -> RoPE at j * ratio of the whole sequence (float64: the IEEE
pooling above, then ``tests.layers.dense_layer.rope64``). RMSNorm turns a channel error d into
<= (|w| + |y|) d / rms of the entry, plus (d + 10) u |y| for the norm and the rotation (x2); the pool's
dtype adds its rounding (2 * OUT_ROUNDING). FP8 pools: one e4m3 step (2**-3 |y| + 2**(e - 9)) or bf16
step (2**-7 |y|) on top; records of non-finite entries follow the byte rule (NaN tile: scale byte 127,
NaN bytes 0x7F | sign, rope NaN 0x7FC0). Slots that no valid entry maps to keep their sentinel (pages
outside the pool are skipped, nothing else is written).
"""

from __future__ import annotations

import math
import random

import longattn
import torch
from hypothesis import strategies as st
from longattn.cache import Fp8KVPool
from longattn.configs import RopeConfig
from longattn.rope import inv_freq

from tests import oracle
from tests.layers.dense_layer import rope64

from .common import (
    DTYPES,
    INF,
    INT32_MAX,
    INT32_MIN,
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

POOL_BACKENDS = ("reference", "triton", "ascend_sim")
KV_BACKENDS = ("reference", "triton", "ascend_sim")
POOL_CATEGORIES = ("api", "all_neginf", "nan_score", "posinf_score", "nan_value", "neginf_score_inf_value",
                   "inf_value", "huge_scores", "strided", "finite_fp32", "finite_lowp")  # fmt: skip
KV_CATEGORIES = ("api", "untouched", "nonfinite_entry", "all_neginf_channel", "finite_fp32", "finite_lowp",
                 "fp8_finite", "fp8_nonfinite", "fp8_rope_nan", "strided")  # fmt: skip
KV_NOT_APPLICABLE = {}

A_KINDS = ("nan", "-nan", "inf", "-inf", "huge", "-huge", "-0", "sub", "zero")
B_KINDS = ("nan", "-nan", "inf", "-inf", "-inf", "-inf", "huge", "-huge", "sub", "zero")
VALUE_HUGE = 1e15  # pooled values stay far from fp32 overflow in RMSNorm's sum of squares
SCORE_HUGE = 1e30
SENTINEL = -1234.5
LAYOUT_CHOICES = ["contig", "contig", "pad_last", "stride0", "transpose01"]


# ----------------------------------------------------------------------------------------------------
# the pooling rule, per (entry, channel)
# ----------------------------------------------------------------------------------------------------
def slots_of(j, k, ratio, overlap, d):
    """(token, column) pairs of the present slots of entry j, channel k."""
    own = [(t, (d + k) if overlap else k) for t in range(j * ratio, (j + 1) * ratio)]
    prev = [(t, k) for t in range((j - 1) * ratio, j * ratio)] if overlap and j >= 1 else []
    return prev + own


def pool_classes(a64, b64, ratio, overlap):
    """[n][d] of (category, ambiguous, amax, max|score|)."""
    S, width = a64.shape
    c = 2 if overlap else 1
    d = width // c
    n = S // ratio
    A, B = a64.tolist(), b64.tolist()
    out = []
    for j in range(n):
        row = []
        for k in range(d):
            sl = slots_of(j, k, ratio, overlap, d)
            sc = [B[t][col] for t, col in sl]
            va = [A[t][col] for t, col in sl]
            amb, amax = False, 0.0
            smax = max((abs(s) for s in sc if math.isfinite(s)), default=0.0)
            if all(s == -INF for s in sc):
                cat = "all_neginf"
            elif any(math.isnan(s) for s in sc):
                cat = "nan_score"
            elif any(s == INF for s in sc):
                cat = "posinf_score"
            elif any(math.isnan(v) for v in va):
                cat = "nan_value"
            else:
                m = max(sc)
                cat = None
                for s, v in zip(sc, va):
                    w = math.exp(s - m) if s != -INF else 0.0
                    if math.isinf(v):
                        if w == 0.0 and s == -INF:
                            cat = cat or "neginf_score_inf_value"
                        elif w < 1e-30:
                            amb = True
                        elif cat != "neginf_score_inf_value":
                            cat = "inf_value"
                    elif w > 0:
                        amax = max(amax, abs(v))
                if cat is None:
                    cat = "huge_scores" if smax >= 1e6 else "finite"
            row.append((cat, amb, amax, smax))
        out.append(row)
    return out


def pool_bound(amax, n_slots):
    return 2 * (3 * n_slots + 6) * U32 * amax + n_slots * TINY


# ----------------------------------------------------------------------------------------------------
# compress_pool
# ----------------------------------------------------------------------------------------------------
@st.composite
def pool_strategy(draw, backend=None):
    overlap = draw(st.booleans())
    return dict(
        seed=draw(st.integers(0, 2**31 - 1)),
        S=draw(st.integers(0, 40)),
        ratio=draw(st.sampled_from([1, 2, 3, 4, 4, 5, 8])),
        overlap=overlap,
        d=draw(st.sampled_from([1, 2, 3, 5, 8, 16, 24])),
        dtype=draw(st.sampled_from(["fp32", "fp32", "bf16", "fp16"])),
        b_dtype=draw(st.sampled_from(["same", "same", "fp32"])),
        b_scale=draw(st.sampled_from([1.0, 2.0, 30.0])),
        specials=draw_specials(draw, st, ["a"], 4, A_KINDS) + draw_specials(draw, st, ["b", "b", "chan"], 6, B_KINDS),
        layouts=draw(st.lists(st.sampled_from(LAYOUT_CHOICES), min_size=2, max_size=2)),
    )  # fmt: skip


def pool_targeted():
    base = dict(seed=7, S=26, ratio=4, d=5, b_dtype="same", b_scale=2.0, layouts=["contig", "contig"])
    specials = [["b", 3, "nan"], ["b", 40, "inf"], ["a", 61, "nan"], ["a", 95, "inf"], ["b", 95, "huge"],
                ["chan", 1, "zero"], ["chan", 9, "nan"], ["a", 150, "-inf"], ["b", 150, "-inf"], ["b", 171, "-nan"],
                ["a", 123, "inf"], ["b", 120, "huge"]]  # fmt: skip
    out = []
    for overlap in (True, False):
        for dt, lay in (("fp32", ["contig", "contig"]), ("bf16", ["transpose01", "pad_last"])):
            out.append(dict(base, overlap=overlap, dtype=dt, specials=specials, layouts=lay))
    return out


def _apply_ab_specials(a, b, specials, ratio, overlap, d):
    S = a.shape[0]
    n = S // ratio
    for target, pos, kind in specials:
        if target == "a":
            set_special(a, pos, kind, huge=VALUE_HUGE)
        elif target == "b":
            set_special(b, pos, kind, huge=SCORE_HUGE)
        elif target == "chan" and n and d:  # one channel of one entry: every slot scores -inf
            j, k = pos % n, (pos // n) % d
            sl = slots_of(j, k, ratio, overlap, d)
            for t, col in sl:
                b[t, col] = -INF
            if kind in ("nan", "-nan"):  # ... and a NaN value among them: still 0
                t, col = sl[pos % len(sl)]
                a[t, col] = NAN


def pool_build(spec):
    g = torch.Generator().manual_seed(spec["seed"])
    c = 2 if spec["overlap"] else 1
    S, d = spec["S"], spec["d"]
    dt = DTYPES[spec["dtype"]]
    bdt = dt if spec["b_dtype"] == "same" else DTYPES[spec["b_dtype"]]
    a = bulk((S, c * d), g, dt)
    b = bulk((S, c * d), g, bdt, spec["b_scale"])
    _apply_ab_specials(a, b, spec["specials"], spec["ratio"], spec["overlap"], d)
    lay = spec["layouts"]
    kwargs = dict(a=with_layout(a, lay[0]), b=with_layout(b, lay[1]), ratio=spec["ratio"], overlap=spec["overlap"])
    return kwargs, dict(a=a, b=b)


def pool_run(kwargs, backend):
    return longattn.compress_pool(**kwargs, backend=backend)


def pool_check(spec, kwargs, ctx, result, report: Report):
    a, b = ctx["a"], ctx["b"]
    ratio, overlap = kwargs["ratio"], kwargs["overlap"]
    c = 2 if overlap else 1
    S, width = a.shape
    d, n = width // c, S // ratio
    if result.shape != (n, d) or result.dtype != torch.float32:
        report.fail("api", f"result {tensor_summary(result)}, want float32[{n}, {d}]")
        return
    report.hit("api")
    want = oracle.compress_pool_ieee(a, b, ratio, overlap)
    got = result.detach().double()
    strided = is_strided(kwargs["a"], kwargs["b"])
    lowp = a.dtype != torch.float32 or b.dtype != torch.float32
    classes = pool_classes(a.double(), b.double(), ratio, overlap)
    for j in range(n):
        for k in range(d):
            cat, amb, amax, _ = classes[j][k]
            if amb:
                report.ambiguous += 1
                continue
            if cat == "finite":
                cat = "strided" if strided else ("finite_lowp" if lowp else "finite_fp32")
            report.hit(cat)
            exact = cat in ("all_neginf", "nan_score", "posinf_score", "nan_value", "neginf_score_inf_value")
            atol = 0.0 if exact else pool_bound(amax, c * ratio)
            if cat == "all_neginf" and float(got[j, k]) != 0.0:
                report.fail(cat, f"entry {j} channel {k}: every slot scores -inf, want 0, got {float(got[j, k])!r}")
                continue
            check_values(report, cat, got[j, k], want[j, k], atol, 0.0, f"entry {j} channel {k}")


# ----------------------------------------------------------------------------------------------------
# compress_kv
# ----------------------------------------------------------------------------------------------------
@st.composite
def kv_strategy(draw, backend=None):
    sim = backend == "ascend_sim"  # its kernel needs d % 8 == 0 and the rope dims to start at a multiple of 8
    fp8 = draw(st.sampled_from([False] * 6 + [True]))
    out_kind = "fp8" if fp8 else draw(st.sampled_from(["fp32", "fp32", "bf16", "fp16"]))
    B = draw(st.integers(1, 3))
    maxlen = 12 if fp8 else 24
    return dict(
        seed=draw(st.integers(0, 2**31 - 1)),
        d=512 if fp8 else draw(st.sampled_from([8, 16, 24, 32, 40] + ([] if sim else [6, 12]))),
        ratio=draw(st.sampled_from([2, 3, 4, 4, 8])),
        overlap=draw(st.booleans()),
        rope_pairs=draw(st.sampled_from([0, 4, 4] if sim else [0, 2, 4, 4])),
        out_kind=out_kind,
        page=draw(st.sampled_from([1, 2, 3, 4])),
        state_page=draw(st.sampled_from(["one", "two", "ring"])),
        lengths=draw(st.lists(st.integers(0, maxlen), min_size=B, max_size=B)),
        split=draw(st.sampled_from(["one", "random", "random", "decode_tail", "decode"])),
        split_seed=draw(st.integers(0, 1000)),
        ab_dtype=draw(st.sampled_from(["fp32", "fp32", "bf16", "fp16"])),
        b_scale=draw(st.sampled_from([1.0, 2.0, 30.0])),
        specials=draw_specials(draw, st, ["a"], 3, A_KINDS) + draw_specials(draw, st, ["b", "chan"], 4, B_KINDS),
        invalid_out=draw(st.booleans()),
        idx_dtype=draw(st.sampled_from(["i32", "i64"])),
        layout=draw(st.sampled_from(["contig", "contig", "pad_last", "stride0"])),
    )  # fmt: skip


def kv_targeted():
    specials = [["b", 3, "nan"], ["a", 61, "nan"], ["a", 95, "inf"], ["chan", 1, "zero"], ["chan", 9, "nan"],
                ["b", 300, "inf"], ["b", 171, "-inf"]]  # fmt: skip
    base = dict(seed=9, ratio=4, overlap=True, rope_pairs=4, page=3, state_page="two", lengths=[21, 14, 5],
                split="random", split_seed=3, ab_dtype="fp32", b_scale=2.0, invalid_out=True,
                idx_dtype="i32")  # fmt: skip
    return [
        dict(base, d=16, out_kind="fp32", specials=specials, layout="contig"),
        dict(base, d=16, out_kind="bf16", specials=[], layout="pad_last", ab_dtype="bf16", split="decode_tail"),
        dict(base, d=16, out_kind="fp32", specials=[], layout="contig", overlap=False, ratio=8, lengths=[17, 3, 9]),
        dict(
            base, d=512, out_kind="fp8", specials=[["b", 3, "nan"], ["a", 2000, "inf"]], layout="contig", lengths=[9, 6]
        ),
    ]


def _schedule(lengths, how, seed):
    """Steps: lists of (sequence, count); every sequence's tokens in order, sequences mixed."""
    rng = random.Random(seed)
    left = list(lengths)
    B = len(lengths)
    if how == "one":
        step = [(i, n) for i, n in enumerate(lengths) if n]
        return [step] if step else []
    steps = []
    first = {i: (rng.randint(1, n) if n else 0) for i, n in enumerate(lengths)}
    while any(left):
        step = []
        order = list(range(B))
        rng.shuffle(order)
        for i in order:
            if not left[i] or rng.random() < 0.25:
                continue
            if how == "decode":
                k = 1
            elif how == "decode_tail":
                k = first.pop(i) if i in first else 1
            else:
                k = rng.randint(1, min(left[i], 9))
            k = min(k, left[i])
            step.append((i, k))
            left[i] -= k
        if step:
            steps.append(step)
    return steps


def kv_build(spec):
    g = torch.Generator().manual_seed(spec["seed"])
    c = 2 if spec["overlap"] else 1
    d, ratio, page = spec["d"], spec["ratio"], spec["page"]
    ring = c * ratio
    s_ps = {"one": 1, "two": 2, "ring": ring}[spec["state_page"]]
    s_ps = min(s_ps, ring)
    ring_pages = -(-ring // s_ps)
    B = len(spec["lengths"])
    adt = DTYPES[spec["ab_dtype"]]
    seqs = []
    for S in spec["lengths"]:
        a = bulk((S, c * d), g, adt)
        b = bulk((S, c * d), g, adt, spec["b_scale"])
        seqs.append([a, b])
    for target, pos, kind in spec["specials"]:  # on the concatenation of all sequences
        tot = sum(spec["lengths"])
        if not tot:
            continue
        t = pos % tot
        i = 0
        while t >= spec["lengths"][i]:
            t -= spec["lengths"][i]
            i += 1
        a, b = seqs[i]
        if target == "chan":
            _apply_ab_specials(a, b, [["chan", pos // tot, kind]], ratio, spec["overlap"], d)
        else:
            set_special(
                (a if target == "a" else b)[t], pos // tot, kind, huge=VALUE_HUGE if target == "a" else SCORE_HUGE
            )
    idt = torch.int32 if spec["idx_dtype"] == "i32" else torch.int64
    max_entries = max([S // ratio for S in spec["lengths"]] + [1])
    pps = -(-max_entries // page) + 1
    P = B * pps + 1
    out_bt = torch.randperm(P, generator=g)[: B * pps].view(B, pps)
    if spec["invalid_out"]:
        bad = torch.tensor([-1, P, INT32_MAX, INT32_MIN])
        r = torch.rand(B, pps, generator=g)
        out_bt = torch.where(r < 0.3, bad[torch.randint(0, 4, (B, pps), generator=g)], out_bt)
    out_bt = out_bt.to(idt)
    state = torch.full((B * ring_pages + 1, s_ps, 2 * c * d), NAN)
    state_bt = torch.arange(1, B * ring_pages + 1).view(B, ring_pages).to(idt)
    if spec["out_kind"] == "fp8":
        out = Fp8KVPool.empty(P, page)
        out.data.fill_(0x5A)
    else:
        out = torch.full((P, page, d), SENTINEL, dtype=DTYPES[spec["out_kind"]])
    norm_weight = 1 + 0.1 * torch.randn(d, generator=g)
    freqs = inv_freq(RopeConfig(10000.0), 2 * spec["rope_pairs"]) if spec["rope_pairs"] else torch.zeros(0)
    if 2 * spec["rope_pairs"] > d:
        freqs = torch.zeros(0)
    steps = []
    done = [0] * B
    for step in _schedule(spec["lengths"], spec["split"], spec["split_seed"]):
        a = torch.cat([seqs[i][0][done[i] : done[i] + k] for i, k in step])
        b = torch.cat([seqs[i][1][done[i] : done[i] + k] for i, k in step])
        pos = torch.cat([torch.arange(done[i], done[i] + k) for i, k in step]).to(idt)
        rows = torch.cat([torch.full((k,), i) for i, k in step]).to(idt)
        for i, k in step:
            done[i] += k
        steps.append(
            dict(a=with_layout(a, spec["layout"]), b=with_layout(b, spec["layout"]), positions=pos, token_rows=rows)
        )
    common = dict(ratio=ratio, overlap=spec["overlap"], state=state, state_block_table=state_bt, out=out,
                  out_block_table=out_bt, norm_weight=norm_weight, eps=1e-6, rope_inv_freq=freqs)  # fmt: skip
    kwargs = dict(steps=steps, common=common)
    return kwargs, dict(seqs=seqs, d=d, page=page, P=P, out_bt=out_bt, norm_weight=norm_weight, freqs=freqs,
                        schedule=_schedule(spec["lengths"], spec["split"], spec["split_seed"]))  # fmt: skip


def kv_describe(kwargs, ctx) -> str:
    c = kwargs["common"]
    out = c["out"]
    o = f"Fp8KVPool({out.num_pages}x{out.page_size})" if isinstance(out, Fp8KVPool) else tensor_summary(out)
    st0 = kwargs["steps"][0] if kwargs["steps"] else None
    ab = tensor_summary(st0["a"]) if st0 else "-"
    return f"steps {ctx['schedule']}, a/b e.g. {ab}, out {o}, out_block_table {c['out_block_table'].tolist()}"


def kv_run(kwargs, backend):
    for st_ in kwargs["steps"]:
        longattn.compress_kv(**st_, **kwargs["common"], backend=backend)
    return kwargs["common"]["out"]


def _entries64(a, b, ratio, overlap, w, freqs, eps):
    c = oracle.compress_pool_ieee(a, b, ratio, overlap)
    y = c * w.double() / torch.sqrt(c.pow(2).mean(-1, keepdim=True) + eps)
    if freqs.numel():
        y = rope64(y, torch.arange(c.shape[0]) * ratio, freqs)
    return c, y


def kv_check(spec, kwargs, ctx, result, report: Report):
    com = kwargs["common"]
    ratio, overlap, eps = com["ratio"], com["overlap"], com["eps"]
    d, page, P = ctx["d"], ctx["page"], ctx["P"]
    out = com["out"]
    fp8 = isinstance(out, Fp8KVPool)
    cdim = 2 if overlap else 1
    strided = any(is_strided(s["a"]) for s in kwargs["steps"])
    lowp = spec["ab_dtype"] != "fp32" or spec["out_kind"] in ("bf16", "fp16")
    report.hit("api")
    written = {}
    for i, (a, b) in enumerate(ctx["seqs"]):
        pooled, y = _entries64(a, b, ratio, overlap, ctx["norm_weight"], ctx["freqs"], eps)
        classes = pool_classes(a.double(), b.double(), ratio, overlap)
        for j in range(y.shape[0]):
            pid = int(ctx["out_bt"][i, j // page])
            if not 0 <= pid < P:
                continue
            slot = pid * page + j % page
            written[slot] = (i, j, pooled[j], y[j], classes[j])
    # untouched slots keep the sentinel
    report.hit("untouched")
    if fp8:
        data = out.data
        rec = _records(out)
        for s in range(P * page):
            if s not in written and not bool((rec[s] == 0x5A).all()):
                report.fail("untouched", f"slot {s} (no entry maps to it) was written: {rec[s][:8].tolist()}...")
                break
        deq = oracle.dequantize_kv_fp8(data, page).reshape(-1, d) if written else None
    else:
        flat = out.view(-1, d)
        sentinel = float(torch.tensor(SENTINEL, dtype=out.dtype))
        for s in range(P * page):
            if s not in written and not bool((flat[s].double() == sentinel).all()):
                report.fail("untouched", f"slot {s} (no entry maps to it) was written: {flat[s][:4].tolist()}")
                break
    for slot, (i, j, pooled, y, cls) in sorted(written.items()):
        where = f"sequence {i} entry {j} (slot {slot})"
        if any(cl[1] for cl in cls):
            report.ambiguous += 1
            continue
        finite = bool(torch.isfinite(y).all())
        rms = float(torch.sqrt(pooled.pow(2).mean() + eps)) if finite else INF
        delta = max((pool_bound(cl[2], cdim * ratio) for cl in cls), default=0.0)
        ymax = float(y.abs().max()) if finite and y.numel() else 0.0
        wmax = float(ctx["norm_weight"].abs().max())
        atol = 2 * ((wmax + ymax) * delta / rms + (d + 10) * U32 * ymax) if finite else 0.0
        atol += OUT_TINY[out.dtype] if not fp8 else 2.0**-126
        if fp8:
            _check_fp8(report, where, y, deq[slot], _records(out)[slot], atol, finite)
            continue
        if not finite:
            cat = "nonfinite_entry"
        elif any(cl[0] == "all_neginf" for cl in cls):
            cat = "all_neginf_channel"
        elif strided:
            cat = "strided"
        else:
            cat = "finite_lowp" if lowp else "finite_fp32"
        report.hit(cat)
        got = out.view(-1, d)[slot]
        check_values(report, cat, got, y, atol, 2 * OUT_ROUNDING[out.dtype], where)


def _records(pool: Fp8KVPool):
    """[num_slots, 584] bytes: 576 data bytes then the 8 scale bytes of each slot."""
    ps = pool.page_size
    data = pool.data[:, : ps * 576].reshape(pool.num_pages, ps, 576)
    sc = pool.data[:, ps * 576 : ps * 584].reshape(pool.num_pages, ps, 8)
    return torch.cat([data, sc], dim=2).reshape(-1, 584)


def _check_fp8(report, where, y, deq, rec, atol, finite):
    if finite:
        report.hit("fp8_finite")
        nope = y[:448].view(7, 64)
        amax = nope.abs().amax(-1)
        e = torch.tensor([oracle.ue8m0_scale_exponent(float(m)) for m in amax]) + 1
        q_nope = (2.0**-3 * nope.abs() + (2.0 ** (e.double() - 9)).unsqueeze(-1)).reshape(-1)
        tol = torch.cat([q_nope, 2.0**-7 * y[448:].abs()]) + atol
        check_values(report, "fp8_finite", deq, y, tol, 0.0, f"{where} (dequantised FP8 record)")
        if int(rec[583]) != 0:
            report.fail("fp8_finite", f"{where}: scale pad byte {int(rec[583])}, want 0")
        return
    report.hit("fp8_nonfinite")
    nope = y[:448].view(7, 64)
    for tile in range(7):
        v = nope[tile]
        if bool((~torch.isfinite(v)).any()):
            if int(rec[576 + tile]) != 127:
                report.fail(
                    "fp8_nonfinite",
                    f"{where}: tile {tile} holds NaN / inf, want scale byte 127 (e = 0), got {int(rec[576 + tile])}",
                )
                return
    nb = rec[:448]
    nan_want = torch.isnan(y[:448])
    if not bool((((nb & 0x7F) == 0x7F) == nan_want).all()):
        i = int((((nb & 0x7F) == 0x7F) != nan_want).nonzero()[0])
        report.fail("fp8_nonfinite", f"{where}: nope byte {i} = {int(nb[i]):#04x} for value {float(y[i])!r}")
        return
    zero_want = y[:448] == 0
    if not bool(((nb & 0x7F) == 0)[zero_want].all()):
        report.fail("fp8_nonfinite", f"{where}: zero values must be e4m3 zeros")
        return
    rope = rec[448:576].view(64, 2).long()
    bits = rope[:, 0] | (rope[:, 1] << 8)
    rn = torch.isnan(y[448:])
    if bool(rn.any()):
        report.hit("fp8_rope_nan")
        if not bool((bits[rn] == 0x7FC0).all()):
            report.fail(
                "fp8_rope_nan", f"{where}: rope NaN bf16 bits {[hex(int(b)) for b in bits[rn][:4]]}, want 0x7fc0"
            )
    rz = y[448:] == 0
    if not bool(((bits[rz] & 0x7FFF) == 0).all()):
        report.fail("fp8_nonfinite", f"{where}: rope zeros must be bf16 zeros")
