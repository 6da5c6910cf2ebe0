"""indexer_logits and indexer_topk vs the oracle (``tests.oracle.indexer_logits`` / the NaN-high rule).

Candidates of token t: entries j < clamp(visible_end[t], 0, N) (N = rows, or max_pages * page when
paged) whose page id (block_table[seq_ids[t], j // page]) is inside [0, P) and whose sequence id is
inside [0, B). Scores: fp32 classes (``common.dot_classes`` per head, relu keeps NaN and maps -inf to
0, the weight product and the head sum classified the same way), finite values from the oracle.

Score bound (derived like tests/tolerance.py): a head's dot has an fp32 error <= (Di + 2) u M_h with
M_h = sum_d |q_d k_d| (plus 2**-126 per term for underflow / FTZ); relu is exact; the weighted head sum
adds (Hi + 2) u sum_h |w_h relu_h|. So |score - oracle| <= 2 (sum_h |w_h| ((Di + 2) u M_h + Di 2**-126)
+ (Hi + 2) u sum_h |w_h relu_h|) (x2 for second order). bf16 / fp16 inputs are exact in fp32 and the
accumulation is fp32, so the same bound holds. With small integer inputs (|x| <= 64) every fp32
operation is exact: the bound is 0 and ties must be broken exactly by id.

indexer_topk is checked without fixing an order among near ties: lengths = min(topk, #candidates),
-1 padding, distinct candidate ids, and no pair (selected before selected, or selected vs not
selected) whose keys are *definitely* in the wrong order (intervals [score - bound, score + bound]
disjoint); exactly equal keys (NaN / +inf rank as +inf, -inf, exactly zero scores, exact mode) must
be in id order. return_slots=True must give the slots of the ids of the same call without it.
"""

from __future__ import annotations

import longattn
import torch
from hypothesis import strategies as st

from tests import oracle

from .common import (
    DTYPES,
    FIN,
    INF,
    INT32_MAX,
    INT32_MIN,
    NAN,
    NANC,
    NEG,
    OVF_HI,
    OVF_LO,
    POS,
    TINY,
    U32,
    Report,
    bulk,
    check_values,
    dot_classes,
    draw_specials,
    is_strided,
    set_special,
    tensor_summary,
    with_layout,
)  # fmt: skip

BACKENDS = ("reference", "triton", "ascend_sim")
LOGITS_CATEGORIES = ("api", "invisible", "nan_score", "inf_score", "finite_exact", "finite", "paged", "strided")
TOPK_CATEGORIES = ("api", "visibility", "nan_rank", "inf_rank", "exact_ties", "order", "paged", "return_slots")

LAYOUT_CHOICES = ["contig", "contig", "pad_last", "stride0", "transpose01", "stride1"]
KINDS = ("nan", "-nan", "inf", "-inf", "huge", "-huge", "big", "-big", "-0", "sub", "zero")


@st.composite
def strategy(draw, topk_op: bool, backend=None):
    paged = draw(st.sampled_from([None, None, "paged"]))
    spec = dict(
        seed=draw(st.integers(0, 2**31 - 1)),
        T=draw(st.integers(0, 4)),
        Hi=draw(st.sampled_from([1, 2, 3, 5, 8, 16])),  # 16: a whole 16-head tile (Triton: no head mask)
        Di=draw(st.sampled_from([16, 16, 32, 48] + ([8] if backend == "ascend_sim" else [8, 24]))),
        dtype=draw(st.sampled_from(["fp32", "fp32", "bf16", "fp16"])),
        k_same=draw(st.sampled_from([True, True, True, False])),
        w_dtype=draw(st.sampled_from(["fp32", "fp32", "fp32", "bf16"])),
        values=draw(st.sampled_from(["gauss", "gauss", "int", "int", "coarse"])),
        magnitude=draw(st.sampled_from([1.0, 1.0, 1e-3, 30.0])),
        N=draw(st.integers(0, 48)),
        paged=None,
        visible=draw(st.sampled_from(["full", "random", "random", "causal", "weird"])),
        vis_dtype=draw(st.sampled_from(["i32", "i64"])),
        specials=draw_specials(draw, st, ["q", "w", "k", "k", "k@vis"], 6, KINDS),
        dup_rows=draw(st.integers(0, 3)),
        layouts=draw(st.lists(st.sampled_from(LAYOUT_CHOICES), min_size=3, max_size=3)),
    )  # fmt: skip
    if paged:
        spec["paged"] = dict(
            page=draw(st.sampled_from([1, 3, 4, 5, 64])),  # 64: the Triton key kernel's one-page blocks
            P=draw(st.integers(1, 8)),
            B=draw(st.integers(1, 3)),
            max_pages=draw(st.integers(1, 6)),
            bt=draw(st.sampled_from(["valid", "mixed", "dup_pages"])),
            seq=draw(st.sampled_from(["valid", "valid", "mixed"])),
            idx_dtype=draw(st.sampled_from(["i32", "i64"])),
        )
    if topk_op:
        spec["topk"] = draw(st.sampled_from([1, 2, 3, 5, 8, 16, 33, 64]))
        spec["return_slots"] = draw(st.booleans())
    return spec


def targeted(topk_op: bool):
    out = [
        dict(recipe="rules", paged=False, topk=7, values="int"),
        dict(recipe="rules", paged=True, topk=5, values="int"),
        dict(recipe="rules", paged=True, topk=9, values="gauss"),
        dict(recipe="rules", paged=False, topk=30, values="gauss", strided=True),
    ]
    for s in out:
        s.setdefault("strided", False)
        if not topk_op:
            s.pop("topk")
    return out


def build(spec):
    if spec.get("recipe") == "rules":
        return _build_rules(spec)
    g = torch.Generator().manual_seed(spec["seed"])
    T, Hi, Di = spec["T"], spec["Hi"], spec["Di"]
    dt = DTYPES[spec["dtype"]]
    kdt = dt if spec["k_same"] else DTYPES["fp32" if dt != torch.float32 else "bf16"]
    wdt = DTYPES[spec["w_dtype"]]
    vals, mag = spec["values"], spec["magnitude"]
    q = bulk((T, Hi, Di), g, dt, mag, vals)
    w = bulk((T, Hi), g, wdt, 1.0, vals)
    pg = spec["paged"]
    if pg:
        page, P, B, M = pg["page"], pg["P"], pg["B"], pg["max_pages"]
        k = bulk((P, page, Di), g, kdt, mag, vals)
        bt = torch.randint(0, P, (B, M), generator=g)
        if pg["bt"] == "valid" and P >= M:
            bt = torch.stack([torch.randperm(P, generator=g)[:M] for _ in range(B)])
        if pg["bt"] == "mixed":
            bad = torch.tensor([-1, P, INT32_MAX, INT32_MIN, -7])
            r = torch.rand(B, M, generator=g)
            bt = torch.where(r < 0.3, bad[torch.randint(0, 5, (B, M), generator=g)], bt)
        seq = torch.randint(0, B, (T,), generator=g)
        if pg["seq"] == "mixed":
            bad = torch.tensor([-1, B, INT32_MAX, INT32_MIN])
            r = torch.rand(T, generator=g)
            seq = torch.where(r < 0.3, bad[torch.randint(0, 4, (T,), generator=g)], seq)
        idt = torch.int32 if pg["idx_dtype"] == "i32" else torch.int64
        bt, seq = bt.to(idt), seq.to(idt)
        n_log = M * page
    else:
        k = bulk((spec["N"], Di), g, kdt, mag, vals)
        bt = seq = None
        n_log = spec["N"]
    flat_k = k.view(-1, Di)
    if spec["dup_rows"] and flat_k.shape[0] > 1:
        for _ in range(spec["dup_rows"]):
            a, b = torch.randint(0, flat_k.shape[0], (2,), generator=g).tolist()
            flat_k[b] = flat_k[a]
    vis = _visible(g, T, n_log, spec["visible"], spec["vis_dtype"])
    for target, pos, kind in spec["specials"]:
        if target == "k@vis":  # a key row some token can see
            if T and n_log and flat_k.numel():
                t = pos % T
                ve = max(0, min(n_log, int(vis[t])))
                if ve:
                    j = (pos // T) % ve
                    slot = _slot(bt, seq, t, j, k.shape[1] if pg else 0, k.shape[0] if pg else 0)
                    if slot is not None:
                        set_special(flat_k[slot], pos // 7, kind)
            continue
        set_special({"q": q, "w": w, "k": flat_k}[target], pos, kind)
    lay = spec["layouts"]
    kwargs = dict(q=with_layout(q, lay[0]), weights=with_layout(w, lay[1]),
                  index_k=with_layout(k, lay[2] if lay[2] in ("contig", "pad_last", "stride0") else "contig"),
                  visible_end=vis, block_table=bt, seq_ids=seq)  # fmt: skip
    if "topk" in spec:
        kwargs.update(topk=spec["topk"], return_slots=spec["return_slots"])
    return kwargs, dict(q=q, w=w, k=k, vis=vis, bt=bt, seq=seq, n_log=n_log)


def _visible(g, T, n, how, vdt):
    dt = torch.int32 if vdt == "i32" else torch.int64
    if how == "full":
        v = torch.full((T,), n, dtype=torch.int64)
        if T > 1:
            v[1] = n + 5
    elif how == "causal":
        pos = torch.randint(0, 4 * n + 4, (T,), generator=g)
        v = (pos + 1) // 4
    elif how == "weird":
        ext = [-5, -1, 0, 1, n, n + 1, INT32_MAX, INT32_MIN] + ([2**40, -(2**40)] if dt == torch.int64 else [])
        v = torch.tensor(ext)[torch.randint(0, len(ext), (T,), generator=g)]
    else:
        v = torch.randint(0, n + 1, (T,), generator=g)
    return v.to(dt)


def _slot(bt, seq, t, j, page, P):
    if bt is None:
        return j
    B = bt.shape[0]
    sid = int(seq[t])
    if not 0 <= sid < B:
        return None
    pid = int(bt[sid, j // page])
    if not 0 <= pid < P:
        return None
    return pid * page + j % page


def _build_rules(spec):
    """Integer or Gaussian inputs with: NaN / -NaN in key rows (NaN scores rank as +inf), an inf in a
    key (scores +inf / -inf / NaN by weight sign), duplicated rows, a token with zero weights (every
    score exactly 0: ties by id), weird visible_end values, and (paged) invalid page / sequence ids."""
    g = torch.Generator().manual_seed(5)
    T, Hi, Di = 8, 3, 16
    vals = spec["values"]
    q = bulk((T, Hi, Di), g, torch.float32, 1.0, vals)
    w = bulk((T, Hi), g, torch.float32, 1.0, vals)
    if spec["paged"]:
        page, P, M = 3, 7, 5
        k = bulk((P, page, Di), g, torch.float32, 1.0, vals)
        bt = torch.tensor([[2, 0, 5, 1, 6], [4, -1, 3, 7, 0], [1, 1, INT32_MAX, 2, INT32_MIN]], dtype=torch.int32)
        seq = torch.tensor([0, 1, 2, 0, 1, -1, 3, 2], dtype=torch.int32)
        n_log = M * page
    else:
        k = bulk((20, Di), g, torch.float32, 1.0, vals)
        bt = seq = None
        n_log = 20
    flat = k.view(-1, Di)
    flat[3, 0] = NAN
    set_special(flat[9], 5, "-nan")
    flat[5, 2] = INF
    flat[12] = flat[4]  # duplicate rows: equal scores
    flat[13] = flat[4]
    w[2] = 0.0  # every score of token 2 exactly 0 (but NaN for the NaN / inf rows: 0 * inf)
    q[3, 1, 0] = NAN  # NaN in q: every visible score of token 3 NaN
    q[4, :, 2] = 1.0  # inf key row 5: +inf for positive weights
    w[4] = torch.tensor([1.0, 2.0, 0.5])
    vis = torch.tensor([n_log, 7, n_log + 3, 11, INT32_MAX, 9, 0, -3], dtype=torch.int64)
    strided = spec["strided"]
    kwargs = dict(q=with_layout(q, "transpose01" if strided else "contig"),
                  weights=with_layout(w, "stride1" if strided else "contig"),
                  index_k=with_layout(k, "pad_last" if strided else "contig"),
                  visible_end=vis, block_table=bt, seq_ids=seq)  # fmt: skip
    if "topk" in spec:
        kwargs.update(topk=spec["topk"], return_slots=False)
    return kwargs, dict(q=q, w=w, k=k, vis=vis, bt=bt, seq=seq, n_log=n_log)


def logits_run(kwargs, backend):
    kw = {k: v for k, v in kwargs.items() if k not in ("topk", "return_slots")}
    return longattn.indexer_logits(**kw, backend=backend)


def topk_run(kwargs, backend):
    res = longattn.indexer_topk(**kwargs, backend=backend)
    if kwargs.get("return_slots"):
        ids = longattn.indexer_topk(**{**kwargs, "return_slots": False}, backend=backend)
        return ids, res
    return res, None


# ----------------------------------------------------------------------------------------------------
# expected scores
# ----------------------------------------------------------------------------------------------------
def _exact_mode(*xs) -> bool:
    for x in xs:
        v = x.double()
        f = v[torch.isfinite(v)]
        if f.numel() and (bool((f != f.round()).any()) or float(f.abs().max()) > 64):
            return False
    return True


def candidates(ctx):
    """Per token: list of (entry id, slot)."""
    q, bt, seq, n_log = ctx["q"], ctx["bt"], ctx["seq"], ctx["n_log"]
    T = q.shape[0]
    paged = bt is not None
    page = ctx["k"].shape[1] if paged else 0
    P = ctx["k"].shape[0] if paged else 0
    out = []
    for t in range(T):
        ve = max(0, min(n_log, int(ctx["vis"][t])))
        c = []
        for j in range(ve):
            s = _slot(bt, seq, t, j, page, P)
            if s is not None:
                c.append((j, s))
        out.append(c)
    return out


def expected_scores(ctx):
    """Per token: list over candidates of (id, slot, cls, value, tol, exact, amb)."""
    q64, w64 = ctx["q"].double(), ctx["w"].double()
    Di = q64.shape[-1]
    rows = ctx["k"].double().reshape(-1, Di)
    exact_mode = _exact_mode(ctx["q"], ctx["w"], ctx["k"])
    cands = candidates(ctx)
    T = q64.shape[0]
    ref = oracle.indexer_logits(ctx["q"], ctx["w"], ctx["k"], ctx["vis"], ctx["bt"], ctx["seq"]) if T else None
    res = []
    for t in range(T):
        c = cands[t]
        if not c:
            res.append([])
            continue
        slots = torch.tensor([s for _, s in c])
        kr = rows[slots]  # [n, Di]
        cls, val, mag, amb = dot_classes(q64[t].unsqueeze(1), kr.unsqueeze(0))  # [Hi, n]
        w = w64[t].unsqueeze(1)  # [Hi, 1]
        relu = torch.where(cls == NANC, torch.full_like(val, NAN),
                           torch.where(cls == POS, torch.full_like(val, INF),
                                       torch.where(cls == NEG, torch.zeros_like(val), val.clamp_min(0.0))))  # fmt: skip
        dot_tol = (Di + 2) * U32 * mag + Di * TINY
        # relu of a finite dot is exactly 0 when the dot is clearly <= 0 (fp32 cannot make it positive)
        relu_zero = (cls == NEG) | ((cls == FIN) & (val + dot_tol <= 0))
        term = w * relu  # IEEE float64: NaN * x, 0 * inf = NaN
        term_zero = (relu_zero & torch.isfinite(w)) | ((w == 0) & torch.isfinite(relu))
        term = torch.where(term_zero, torch.zeros_like(term), term)
        tnan = torch.isnan(term)
        tpos = term > OVF_HI
        tneg = term < -OVF_HI
        tfin = term.abs() < OVF_LO
        tband = (term.abs() >= OVF_LO) & (term.abs() <= OVF_HI)
        # a dot whose class is order dependent matters unless its term is exactly 0 anyway
        head_amb = (amb & ~((w == 0) & torch.isfinite(w))) | tband
        any_nan = tnan.any(0) | (tpos.any(0) & tneg.any(0))
        sum_mag = torch.where(tfin, term.abs(), torch.zeros_like(term)).sum(0)
        tol = 2 * (
            (w.abs() * torch.where(tfin, dot_tol, torch.zeros_like(dot_tol))).sum(0) + (w.shape[0] + 2) * U32 * sum_mag
        )
        tol = tol + w.shape[0] * TINY
        row = []
        for i, (j, s) in enumerate(c):
            a = bool(head_amb[:, i].any()) or (not bool(any_nan[i]) and float(sum_mag[i]) >= OVF_LO)
            if bool(any_nan[i]):
                cl, v = NANC, NAN
            elif bool(tpos[:, i].any()):
                cl, v = POS, INF
            elif bool(tneg[:, i].any()):
                cl, v = NEG, -INF
            else:
                cl, v = FIN, float(ref[t, j])
            all_zero = bool(term_zero[:, i].all())
            exact = cl != FIN or exact_mode or all_zero
            tl = 0.0 if exact else float(tol[i])
            if all_zero and cl == FIN:
                v = 0.0
            row.append((j, s, cl, v, tl, exact, a))
        res.append(row)
    return res


# ----------------------------------------------------------------------------------------------------
# checks
# ----------------------------------------------------------------------------------------------------
def logits_check(spec, kwargs, ctx, result, report: Report):
    T = ctx["q"].shape[0]
    n_log = ctx["n_log"]
    if result.shape != (T, n_log) or result.dtype != torch.float32:
        report.fail("api", f"logits {tensor_summary(result)}, want float32[{T}, {n_log}]")
        return
    report.hit("api")
    got = result.detach().double()
    paged = ctx["bt"] is not None
    strided = is_strided(*[v for v in kwargs.values() if isinstance(v, torch.Tensor)])
    for t, row in enumerate(expected_scores(ctx)):
        want = torch.full((n_log,), -INF, dtype=torch.float64)
        tol = torch.zeros(n_log, dtype=torch.float64)
        mask = torch.ones(n_log, dtype=torch.bool)
        cand = torch.zeros(n_log, dtype=torch.bool)
        for j, _, _cl, v, tl, _exact, a in row:
            cand[j] = True
            if a:
                mask[j] = False
                report.ambiguous += 1
                continue
            want[j], tol[j] = v, tl
        where = f"token {t}"
        report.hit("invisible")
        inv = ~cand
        if bool(inv.any()) and not bool((got[t][inv] == -INF).all()):
            j = int((inv & (got[t] != -INF)).nonzero()[0])
            report.fail(
                "invisible",
                f"{where}: entry {j} is not a candidate (visible_end {int(ctx['vis'][t])}), "
                f"want -inf, got {float(got[t, j])!r}",
            )
        for cat, sel in (
            ("nan_score", cand & mask & torch.isnan(want)),
            ("inf_score", cand & mask & torch.isinf(want)),
        ):
            if bool(sel.any()):
                report.hit(cat)
                check_values(report, cat, got[t], want, 0.0, 0.0, where, mask=sel)
        fin = cand & mask & torch.isfinite(want)
        if bool(fin.any()):
            exact = all(r[5] for r in row if not r[6] and r[2] == FIN)
            cat = "paged" if paged else ("strided" if strided else ("finite_exact" if exact else "finite"))
            report.hit(cat)
            check_values(report, cat, got[t], want, tol, 0.0, where, mask=fin)


def _key(entry):
    """(lo, hi, exact) of an entry's rank key (NaN ranks as +inf)."""
    j, s, cl, v, tl, exact, a = entry
    if a:
        return -INF, INF, False
    if cl in (NANC, POS):
        return INF, INF, True
    if cl == NEG:
        return -INF, -INF, True
    return v - tl, v + tl, exact


def _pair_cat(e1, e2, default):
    cls = {e1[2], e2[2]}
    if NANC in cls:
        return "nan_rank"
    if POS in cls or NEG in cls:
        return "inf_rank"
    return default


def topk_check(spec, kwargs, ctx, result, report: Report):
    (ids, lengths), slots_res = result
    T = ctx["q"].shape[0]
    topk = kwargs["topk"]
    if ids.shape != (T, topk) or ids.dtype != torch.int32 or lengths.shape != (T,) or lengths.dtype != torch.int32:
        report.fail(
            "api",
            f"indices {tensor_summary(ids)}, lengths {tensor_summary(lengths)}; want int32[{T}, {topk}], int32[{T}]",
        )
        return
    report.hit("api")
    paged = ctx["bt"] is not None
    exp = expected_scores(ctx)
    id_l, len_l = ids.tolist(), lengths.tolist()
    for t in range(T):
        row = exp[t]
        by_id = {e[0]: e for e in row}
        L = min(topk, len(row))
        where = f"token {t} (visible_end {int(ctx['vis'][t])}, {len(row)} candidates, topk {topk})"
        vis_cat = "paged" if paged else "visibility"
        report.hit(vis_cat)
        got = id_l[t]
        if len_l[t] != L:
            report.fail(vis_cat, f"{where}: lengths {len_l[t]}, want {L}; indices {got}")
            continue
        if any(v != -1 for v in got[L:]):
            report.fail(vis_cat, f"{where}: entries past lengths must be -1, got {got}")
            continue
        sel = got[:L]
        if len(set(sel)) != L or any(v not in by_id for v in sel):
            bad = [v for v in sel if v not in by_id]
            report.fail(vis_cat, f"{where}: selected {sel}: duplicates or non-candidates {bad}")
            continue
        classes = {e[2] for e in row}
        if NANC in classes:
            report.hit("nan_rank")
        if POS in classes or NEG in classes:
            report.hit("inf_rank")
        if len(row) > 1:
            report.hit("order")
        keys = {e[0]: _key(e) for e in row}
        exact_vals = [keys[e[0]][0] for e in row if keys[e[0]][2]]
        if len(exact_vals) != len(set(exact_vals)):
            report.hit("exact_ties")
        chosen = set(sel)
        problem = None
        for i in range(L):
            a = sel[i]
            for b in sel[i + 1 :]:
                ka, kb = keys[a], keys[b]
                if ka[1] < kb[0]:
                    problem = (
                        _pair_cat(by_id[a], by_id[b], "order"),
                        f"{where}: entry {a} (score {by_id[a][3]!r}) ranked before {b} "
                        f"(score {by_id[b][3]!r}); got {sel}",
                    )
                elif ka[2] and kb[2] and ka[0] == kb[0] and a > b:
                    problem = (
                        _pair_cat(by_id[a], by_id[b], "exact_ties"),
                        f"{where}: tie of {a} and {b} (score {by_id[a][3]!r}) must go to the smaller id "
                        f"first; got {sel}",
                    )
                if problem:
                    break
            if problem:
                break
        if not problem:
            for e in row:
                c = e[0]
                if c in chosen:
                    continue
                kc = keys[c]
                for s in sel:
                    ks = keys[s]
                    if ks[1] < kc[0]:
                        problem = (
                            _pair_cat(by_id[s], e, "order"),
                            f"{where}: entry {c} (score {e[3]!r}) not selected but {s} "
                            f"(score {by_id[s][3]!r}) is; got {sel}",
                        )
                    elif ks[2] and kc[2] and ks[0] == kc[0] and c < s:
                        problem = (
                            _pair_cat(by_id[s], e, "exact_ties"),
                            f"{where}: tie of {c} and {s} (score {e[3]!r}): {c} has the smaller id but was "
                            f"left out; got {sel}",
                        )
                    if problem:
                        break
                if problem:
                    break
        if problem:
            report.fail(*problem)
    if slots_res is not None:
        report.hit("return_slots")
        s_ids, s_len = slots_res
        page = ctx["k"].shape[1] if paged else 0
        P = ctx["k"].shape[0] if paged else 0
        for t in range(T):
            want = [(_slot(ctx["bt"], ctx["seq"], t, j, page, P) if j >= 0 else -1) for j in id_l[t]]
            if s_ids[t].tolist() != want or int(s_len[t]) != len_l[t]:
                report.fail(
                    "return_slots",
                    f"token {t}: return_slots gave {s_ids[t].tolist()} (length {int(s_len[t])}), "
                    f"want the slots {want} of ids {id_l[t]}",
                )
                break
