"""sparse_attention: random shapes / strides / dtypes / index patterns / special values vs the oracle.

Expected result per (token, head), from the inputs as the op sees them (float64):
- used keys = stream 1 then stream 2, positions < min(K, topk_length) with 0 <= index < num_slots
  (duplicates count); logits classified in fp32 by ``common.dot_classes``;
- no used key -> out 0, lse -inf ("empty_row"); a NaN logit -> out NaN, lse NaN ("nan_logit");
  else a +inf logit -> lse +inf, out NaN ("posinf_logit"); all used logits -inf -> out 0, lse -inf
  ("all_neginf"); otherwise ``tests.oracle.sparse_attention`` over the keys with finite logits (-inf
  keys weigh 0), with the head's sink (oracle: +inf sink -> 0, -inf -> no sink, NaN -> out NaN).
- A -inf-logit key that holds +-inf in dim d: the package does not sanitise values, so IEEE arithmetic
  decides: its weight 0 times inf makes out[..., d] NaN (every other dim is as the rule says); checked
  under its own category "neginf_key_inf_value".
Finite values: ``tests.tolerance.attention_bounds`` per (token, head) over that row's keys (not a
global magnitude, so a huge logit elsewhere does not loosen this row). bf16 / fp16 (q or pool): the
same bound (lse is fp32; out's rounding is ``2 * OUT_ROUNDING``) plus ``2 * 2**-p * vmax``: GPU / NPU
kernels may round the softmax weights P to the input dtype before the PV product (relative error
<= 2**-p per weight, so |d out| <= 2**-p * sum_i w_i |v_i| <= 2**-p * vmax; x2 for second-order terms
as in tests/tolerance.py).
"""

from __future__ import annotations

import math

import longattn
import torch
from hypothesis import strategies as st
from longattn.cache import Fp8KVPool, quantize_kv_fp8

from tests import oracle
from tests.tolerance import attention_bounds

from .common import (
    DTYPES,
    FIN,
    INF,
    INT32_MAX,
    INT32_MIN,
    INT64_MAX,
    INT64_MIN,
    NAN,
    NANC,
    NEG,
    OUT_TINY,
    POS,
    TINY,
    Report,
    bulk,
    check_values,
    draw_specials,
    is_strided,
    layout_ok,
    lowp_bits,
    round_overflow,
    set_special,
    tensor_summary,
    with_layout,
)  # fmt: skip

OP = "sparse_attention"
BACKENDS = ("reference", "triton", "ascend_sim")
CATEGORIES = (
    "api", "empty_row", "nan_logit", "posinf_logit", "all_neginf", "neginf_logit_weight0", "neginf_key_inf_value",
    "sink_posinf", "sink_neginf", "sink_nan", "unread_poison", "huge_logits", "strided", "fp8_pool",
    "fp8_nonfinite_key", "finite_fp32", "finite_lowp",
)  # fmt: skip
# categories a backend cannot exercise because it declines every such call
NOT_APPLICABLE = {}

PATTERNS = ("in_range", "mixed", "all_invalid", "duplicates", "int64_extreme", "random")
KV_LAYOUTS = ["contig", "contig", "pad_last", "stride0", "transpose01"]
LENGTHS = (None, "zero", "partial", "over", "negative", "extreme")


# ----------------------------------------------------------------------------------------------------
# strategy
# ----------------------------------------------------------------------------------------------------
@st.composite
def _stream(draw, fp8: bool):
    page = draw(st.sampled_from([None, None, 1, 3, 5, 7])) if not fp8 else draw(st.sampled_from([1, 2, 3, 5]))
    n = draw(st.integers(0, 9 if fp8 else 40))
    pattern = draw(st.sampled_from(PATTERNS))
    return dict(
        N=n * page if page else n,
        K=draw(st.integers(0, 8 if fp8 else 20)),
        page=page,
        fp8=fp8,
        pattern=pattern,
        idx_dtype="i64" if pattern == "int64_extreme" else draw(st.sampled_from(["i32", "i32", "i64"])),
        lengths=draw(st.sampled_from(LENGTHS)),
        len_dtype=draw(st.sampled_from(["i32", "i64"])),
        kv_layout="contig" if page or fp8 else draw(st.sampled_from(KV_LAYOUTS)),
        idx_layout=draw(st.sampled_from(["contig", "contig", "pad_last", "stride1", "transpose01"])),
        len_layout=draw(st.sampled_from(["contig", "stride0"])),
    )  # fmt: skip


@st.composite
def strategy(draw, backend=None):
    sim = backend == "ascend_sim"  # mostly calls its kernels take (D % 64 == 0)
    fp8 = draw(st.sampled_from([False] * 7 + [True]))
    D = (
        512
        if fp8
        else draw(st.sampled_from([64, 64, 128, 192, 100] if sim else [8, 24, 40, 64, 64, 64, 100, 128, 192]))
    )
    small = fp8 or D >= 128
    H = draw(st.sampled_from([1, 2, 3, 5, 7] if small else [1, 2, 3, 5, 7, 16, 17, 33, 70]))
    dtype = draw(st.sampled_from(["fp32", "fp32", "bf16", "fp16"]))
    kv_dtype = dtype if draw(st.integers(0, 4)) else draw(st.sampled_from(list(DTYPES)))
    n_streams = draw(st.integers(1, 2))
    streams = [draw(_stream(fp8 and (i == 0 or draw(st.booleans())))) for i in range(n_streams)]
    targets = ["q", "kv0", "kv0@used"] + (["kv1", "kv1@used"] if n_streams == 2 else [])
    return dict(
        seed=draw(st.integers(0, 2**31 - 1)),
        T=draw(st.integers(0, 3 if small else 5)),
        H=H,
        D=D,
        dtype=dtype,
        kv_dtype="fp32" if fp8 else kv_dtype,
        magnitude=draw(st.sampled_from([1.0, 1.0, 1e-3, 30.0] + ([1e4] if dtype != "fp16" else []))),
        scale=draw(st.sampled_from([None, None, 0.37, 1.7])),
        q_layout=draw(st.sampled_from(["contig", "contig", "pad_last", "stride1", "transpose01", "stride0"])),
        streams=streams,
        sink=draw(st.sampled_from([None, None, "finite", "pos_inf", "neg_inf", "nan", "mixed"])),
        specials=draw_specials(draw, st, targets, 6),
        poison_unread=draw(st.booleans()),
    )


def targeted():
    """Examples that cover every category on every backend (D = 64, one dtype: accepted by all)."""
    out = [
        dict(recipe="rules", dtype="fp32", layout="contig", paged=None, idx_dtype="i32", two_streams=False),
        dict(recipe="rules", dtype="fp32", layout="strided", paged=None, idx_dtype="i64", two_streams=True),
        dict(recipe="rules", dtype="fp32", layout="contig", paged=3, idx_dtype="i32", two_streams=True),
        dict(recipe="rules", dtype="bf16", layout="contig", paged=None, idx_dtype="i32", two_streams=False),
        dict(recipe="rules", dtype="fp16", layout="strided", paged=None, idx_dtype="i32", two_streams=True),
        dict(recipe="fp8", dtype="bf16"),
    ]
    return out


# ----------------------------------------------------------------------------------------------------
# build
# ----------------------------------------------------------------------------------------------------
def _index_rows(g, T, K, N, pattern, idx_dtype):
    idx = torch.randint(0, max(N, 1), (T, K), generator=g, dtype=torch.int64)
    if N == 0:
        idx = torch.full((T, K), -1, dtype=torch.int64)
    if pattern == "all_invalid":
        bad = torch.tensor([-1, -2, N, N + 7, INT32_MAX, INT32_MIN])
        idx = bad[torch.randint(0, len(bad), (T, K), generator=g)]
    elif pattern == "duplicates" and K > 1:
        idx[:, 1::2] = idx[:, :1]
    elif pattern in ("mixed", "random", "int64_extreme"):
        r = torch.rand(T, K, generator=g)
        idx = torch.where(r < 0.10, torch.full_like(idx, -1), idx)
        if pattern != "random":
            idx = torch.where((r >= 0.10) & (r < 0.15), torch.full_like(idx, N), idx)
            idx = torch.where((r >= 0.15) & (r < 0.20), torch.full_like(idx, INT32_MAX), idx)
            idx = torch.where((r >= 0.20) & (r < 0.25), torch.full_like(idx, -3), idx)
            idx = torch.where((r >= 0.25) & (r < 0.30), torch.full_like(idx, INT32_MIN), idx)
        if pattern == "int64_extreme":  # values whose low 32 bits are valid slots: truncation would alias
            ext = torch.tensor([2**32, 2**32 + 1, -(2**32) + 2, INT64_MAX, INT64_MIN, 2**40 + 3, 2**31])
            pick = ext[torch.randint(0, len(ext), (T, K), generator=g)]
            idx = torch.where((r >= 0.30) & (r < 0.55), pick, idx)
    return idx.to(torch.int32 if idx_dtype == "i32" else torch.int64)


def _lengths(g, T, K, how, len_dtype):
    if how is None:
        return None
    dt = torch.int32 if len_dtype == "i32" else torch.int64
    if how == "zero":
        v = torch.zeros(T, dtype=torch.int64)
    elif how == "over":
        v = torch.full((T,), K + 5, dtype=torch.int64)
    elif how == "negative":
        v = torch.randint(-5, K + 1, (T,), generator=g)
        if T:
            v[0] = -1
    elif how == "extreme":
        ext = [INT32_MIN, INT32_MAX, -1, 0, K] + ([2**40, INT64_MIN, INT64_MAX] if dt == torch.int64 else [])
        v = torch.tensor(ext)[torch.randint(0, len(ext), (T,), generator=g)]
    else:
        v = torch.randint(0, K + 1, (T,), generator=g)
    return v.to(dt)


def _sink(g, H, how):
    if how is None:
        return None
    if how == "finite":
        return torch.randn(H, generator=g) * 2
    if how == "pos_inf":
        return torch.full((H,), INF)
    if how == "neg_inf":
        return torch.full((H,), -INF)
    if how == "nan":
        return torch.full((H,), NAN)
    s = torch.randn(H, generator=g) * 2
    s[0::4] = INF
    s[1::4] = -INF
    s[2::4] = NAN
    return s


def _used(idx, lens, N):
    """Per token: the list of used slots (positions < effective length, 0 <= idx < N)."""
    T, K = idx.shape
    out = []
    il = idx.tolist()
    ll = None if lens is None else lens.tolist()
    for t in range(T):
        n = K if ll is None else max(0, min(K, ll[t]))
        out.append([int(v) for v in il[t][:n] if 0 <= v < N])
    return out


def build(spec):
    if spec.get("recipe") == "rules":
        return _build_rules(spec)
    if spec.get("recipe") == "fp8":
        return _build_fp8_recipe(spec)
    g = torch.Generator().manual_seed(spec["seed"])
    T, H, D = spec["T"], spec["H"], spec["D"]
    dtype, kv_dtype = DTYPES[spec["dtype"]], DTYPES[spec["kv_dtype"]]
    mag = spec["magnitude"]
    q = bulk((T, H, D), g, dtype, mag)
    rows, idxs, lens = [], [], []
    for s in spec["streams"]:
        rows.append(bulk((s["N"], D), g, torch.float32 if s["fp8"] else kv_dtype, mag))
        idxs.append(_index_rows(g, T, s["K"], s["N"], s["pattern"], s["idx_dtype"]))
        lens.append(_lengths(g, T, s["K"], s["lengths"], s["len_dtype"]))
    for target, pos, kind in spec["specials"]:
        if target == "q":
            set_special(q, pos, kind)
            continue
        k = int(target[2])
        if k >= len(rows):
            continue
        r = rows[k]
        if target.endswith("@used"):
            flat = idxs[k].reshape(-1)
            if flat.numel() == 0 or D == 0:
                continue
            slot = int(flat[pos % flat.numel()])
            if 0 <= slot < r.shape[0]:
                set_special(r[slot], pos // flat.numel(), kind)
        else:
            set_special(r, pos, kind)
    sink = _sink(g, H, spec["sink"])
    return _assemble(spec, q, rows, idxs, lens, sink, spec["poison_unread"], spec["scale"],
                     q_layout=spec["q_layout"], stream_specs=spec["streams"])  # fmt: skip


def _assemble(spec, q, rows, idxs, lens, sink, poison, scale, q_layout, stream_specs):
    """Pools (float / paged / FP8), layouts, poison of unread rows; returns (kwargs, ctx)."""
    T, H, D = q.shape
    pools, rows64 = [], []
    for k, s in enumerate(stream_specs):
        r = rows[k]
        N = r.shape[0]
        used = set(v for u in _used(idxs[k], lens[k], N) for v in u)
        unread = [i for i in range(N) if i not in used]
        if s["fp8"]:
            page = s["page"]
            pool = quantize_kv_fp8(r.float().view(N // page, page, D)) if N else Fp8KVPool.empty(0, page)
            if poison and unread:
                _poison_fp8(pool, unread)
            pools.append(pool)
            rows64.append(
                oracle.dequantize_kv_fp8(pool.data, page).reshape(-1, D)
                if N
                else torch.zeros(0, D, dtype=torch.float64)
            )
            continue
        if poison and unread:
            r = r.clone()
            for j, i in enumerate(unread):
                r[i] = NAN if j % 2 == 0 else INF
        rows64.append(r.double())
        if s["page"]:
            pools.append(r.view(N // s["page"], s["page"], D))
        else:
            pools.append(with_layout(r, layout_ok(s["kv_layout"], 2)))
    q_in = with_layout(q, q_layout)
    idx_in = [with_layout(i, layout_ok(s["idx_layout"], 2)) for i, s in zip(idxs, stream_specs)]
    len_in = [
        None if ln is None else with_layout(ln, layout_ok(s["len_layout"], 1)) for ln, s in zip(lens, stream_specs)
    ]
    kwargs = dict(q=q_in, kv=pools[0], indices=idx_in[0], topk_length=len_in[0], attn_sink=sink, softmax_scale=scale)
    if len(pools) > 1:
        kwargs.update(extra_kv=pools[1], extra_indices=idx_in[1], extra_topk_length=len_in[1])
    ctx = dict(q=q, rows64=rows64, idxs=idxs, lens=lens, sink=sink, poison=poison,
               fp8=any(s["fp8"] for s in stream_specs), kv_dtype=rows[0].dtype if rows else q.dtype)  # fmt: skip
    return kwargs, ctx


def _poison_fp8(pool: Fp8KVPool, slots):
    ps = pool.page_size
    for s in slots:
        p, o = divmod(s, ps)
        pool.data[p, o * 576 : (o + 1) * 576] = 0xFF  # e4m3 NaN bytes, bf16 NaN rope
        base = ps * 576 + o * 8
        pool.data[p, base : base + 8] = 0xFF  # scale 2**128 = inf


def _build_rules(spec):
    """One token per situation of the rule (see the module docstring), H = 5 heads with sinks
    [0.5, +inf, -inf, NaN, 2.0]; unread rows poisoned."""
    g = torch.Generator().manual_seed(11)
    dtype = DTYPES[spec["dtype"]]
    T, H, D, N, K = 10, 5, 64, 39, 12
    huge = 1e30 if dtype != torch.float16 else 6e4
    rows = torch.randn(N, D, generator=g, dtype=torch.float64)
    rows[7, 3] = NAN  # a NaN key row
    rows[11] = 0.0
    rows[11, 0] = huge  # with q[..., 0] = +-huge: a +-inf logit (fp32 overflow; fp16: an inf product needs inf)
    if dtype == torch.float16:
        rows[11, 0] = INF
    rows[12, 0] = -INF  # an inf value: q[..., 0] > 0 gives a -inf logit ("weigh 0")
    q = torch.randn(T, H, D, generator=g, dtype=torch.float64)
    normal = torch.tensor([i for i in range(N) if i not in (7, 11, 12)])
    idx = torch.stack([normal[torch.randperm(len(normal), generator=g)[:K]] for _ in range(T)])
    lens = torch.full((T,), K, dtype=torch.int64)
    idx[0, 2] = 7  # t0: NaN key -> every head NaN
    q[1, 2, 5] = NAN  # t1: NaN in q, head 2 only
    idx[2, 9] = 11  # t2: head 0 +inf logit, head 1 -inf logit among finite ones, others q[.,0] = 0
    q[2, :, 0] = 0.0
    q[2, 0, 0], q[2, 1, 0] = huge, -huge
    idx[3] = -1  # t3: only the big key: head 0 +inf, head 1 all -inf, others finite (one key)
    idx[3, [0, 5, 11]] = 11
    q[3, :, 0] = 0.0
    q[3, 0, 0], q[3, 1, 0] = huge, -huge
    idx[4] = -1  # t4: no valid key
    idx[4, 1], idx[4, 3], idx[4, 5], idx[4, 7] = N, INT32_MAX, INT32_MIN, -3
    lens[5] = 0  # t5: topk_length 0
    idx[6, 8] = 7  # t6: NaN key just past topk_length
    lens[6] = 8
    idx[7, 4] = 12  # t7: a -inf-logit key holding -inf (q[7, :, 0] > 0)
    q[7, :, 0] = 1.0
    idx[8] = -1  # t8: only that key: all -inf
    idx[8, [0, 6]] = 12
    q[8, :, 0] = 0.5
    idx[9, 0], idx[9, 3], idx[9, 6] = INT32_MAX, INT32_MIN, N  # t9: invalid entries among valid ones ...
    q[9, 4] *= 5e3  # ... and head 4 with huge (finite) logits: |l| ~ 1e4
    if dtype == torch.float16:  # fp16 cannot hold huge: use inf products for the +-inf logits
        q[2, 0, 0], q[2, 1, 0], q[3, 0, 0], q[3, 1, 0] = 1.0, -1.0, 1.0, -1.0
    sink = torch.tensor([0.5, INF, -INF, NAN, 2.0])
    idx = idx.to(torch.int32 if spec["idx_dtype"] == "i32" else torch.int64)
    lens = lens.to(idx.dtype)
    rows_l, idxs, lens_l = [rows.to(dtype)], [idx], [lens]
    strided = spec["layout"] == "strided"
    stream_specs = [dict(fp8=False, page=spec["paged"], kv_layout="pad_last" if strided else "contig",
                         idx_layout="transpose01" if strided else "contig",
                         len_layout="stride0" if strided else "contig")]  # fmt: skip
    if spec["two_streams"]:
        rows2 = torch.randn(17, D, generator=g, dtype=torch.float64)
        idx2 = torch.randint(-2, 19, (T, 5), generator=g)
        lens2 = torch.randint(0, 6, (T,), generator=g)
        rows_l.append(rows2.to(dtype))
        idxs.append(idx2.to(idx.dtype))
        lens_l.append(lens2.to(idx.dtype))
        stream_specs.append(dict(fp8=False, page=None, kv_layout="transpose01" if strided else "contig",
                                 idx_layout="stride1" if strided else "contig", len_layout="contig"))  # fmt: skip
    return _assemble(spec, q.to(dtype), rows_l, idxs, lens_l, sink, True, None,
                     q_layout="transpose01" if strided else "contig", stream_specs=stream_specs)  # fmt: skip


def _build_fp8_recipe(spec):
    """Two FP8 streams (D = 512, pages of 3 and 2): a NaN and an inf in rope dims of used rows, a
    saturated (> 448 * 2**e) value, a NaN nope value; one unread poisoned record."""
    g = torch.Generator().manual_seed(12)
    dtype = DTYPES[spec["dtype"]]
    T, H, D = 4, 3, 512
    rows = torch.randn(9, D, generator=g, dtype=torch.float64)
    rows[1, 470] = NAN  # rope NaN -> NaN logit for tokens using row 1
    rows[2, 500] = INF  # rope inf: q[t, h, 500] > 0 -> +inf logit, < 0 -> -inf
    rows[3, 10] = NAN  # nope NaN: e4m3 NaN byte
    rows[4, 100] = 1e6
    rows2 = torch.randn(6, D, generator=g, dtype=torch.float64)
    q = torch.randn(T, H, D, generator=g, dtype=torch.float64)
    idx = torch.tensor([[0, 1, 5, -1], [2, 4, 6, 0], [3, 7, -1, 8], [5, 6, 7, 0]])
    idx2 = torch.tensor([[0, 1, -1], [2, 5, 6], [3, 4, 0], [1, 1, 2]])
    lens = torch.tensor([4, 3, 4, 2])
    streams = [dict(fp8=True, page=3, idx_layout="contig", len_layout="contig"),
               dict(fp8=True, page=2, idx_layout="contig", len_layout="contig")]  # fmt: skip
    return _assemble(spec, q.to(dtype), [rows.float(), rows2.float()], [idx.int(), idx2.int()], [lens.int(), None],
                     torch.tensor([0.3, -INF, 1.0]), True, None, q_layout="contig", stream_specs=streams)  # fmt: skip


def describe_inputs(kwargs) -> str:
    parts = []
    for k, v in kwargs.items():
        if isinstance(v, torch.Tensor) or isinstance(v, Fp8KVPool):
            parts.append(
                f"{k}={tensor_summary(v) if isinstance(v, torch.Tensor) else f'Fp8KVPool({v.num_pages}x{v.page_size})'}"
            )
        elif v is not None:
            parts.append(f"{k}={v}")
    return ", ".join(parts)


def run(kwargs, backend):
    return longattn.sparse_attention(**kwargs, backend=backend)


# ----------------------------------------------------------------------------------------------------
# check
# ----------------------------------------------------------------------------------------------------
def check(spec, kwargs, ctx, result, report: Report):
    q = ctx["q"]
    T, H, D = q.shape
    out, lse = result
    if out.shape != (T, H, D) or out.dtype != q.dtype or lse.shape != (T, H) or lse.dtype != torch.float32:
        report.fail("api", f"out {tensor_summary(out)} / lse {tensor_summary(lse)} for q {tensor_summary(q)}")
        return
    report.hit("api")
    q64 = q.double()
    scale = kwargs["softmax_scale"] if kwargs["softmax_scale"] is not None else D**-0.5
    sink = ctx["sink"]
    rows64 = ctx["rows64"]
    used = [_used(i, ln, r.shape[0]) for i, ln, r in zip(ctx["idxs"], ctx["lens"], rows64)]
    strided = is_strided(*[v for v in kwargs.values() if isinstance(v, torch.Tensor)])
    lowp = q.dtype != torch.float32 or ctx["kv_dtype"] != torch.float32
    p_bits = min(lowp_bits(q.dtype), lowp_bits(ctx["kv_dtype"]))
    out_c, lse_c = out.detach().double(), lse.detach().double()
    for t in range(T):
        keys = [rows64[k][s] for k in range(len(rows64)) for s in used[k][t]]
        kt = torch.stack(keys) if keys else torch.zeros(0, D, dtype=torch.float64)
        nk = kt.shape[0]
        if nk:
            cls, val, mag, amb = dot_classes_logits(q64[t], kt)  # [H, nk]
        for h in range(H):
            o, l = out_c[t, h], lse_c[t, h]
            where = f"token {t} head {h}"
            if nk == 0:
                report.hit("empty_row")
                if not (l == -INF and bool((o == 0).all())):
                    report.fail(
                        "empty_row",
                        f"{where}: no valid key, want out 0 / lse -inf, got lse {float(l)!r}, out[:4] {o[:4].tolist()}",
                    )
                continue
            if bool(amb[h].any()):
                report.ambiguous += 1
                continue
            c = cls[h]
            # non-finite keys read from an FP8 record (e4m3 NaN bytes, bf16 rope NaN / inf) get their own rule
            fp8_key = ctx["fp8"] and bool((~torch.isfinite(kt)).any(-1)[(c == NANC) | (c == POS) | (c == NEG)].any())
            if bool((c == NANC).any()):
                cat = "fp8_nonfinite_key" if fp8_key else "nan_logit"
                report.hit(cat)
                if not (math.isnan(float(l)) and bool(torch.isnan(o).all())):
                    report.fail(
                        cat,
                        f"{where}: a NaN logit, want out NaN / lse NaN, got lse {float(l)!r}, out[:4] {o[:4].tolist()}",
                    )
                continue
            if bool((c == POS).any()):
                cat = "fp8_nonfinite_key" if fp8_key else "posinf_logit"
                report.hit(cat)
                if not (float(l) == INF and bool(torch.isnan(o).all())):
                    report.fail(
                        cat,
                        f"{where}: a +inf logit, want lse +inf / out NaN, got lse {float(l)!r}, "
                        f"out[:4] {o[:4].tolist()}",
                    )
                continue
            neg = c == NEG
            # dims where a -inf-logit key holds +-inf / NaN: IEEE 0 * inf would give NaN there
            inf_dims = (~torch.isfinite(kt[neg])).any(0) if bool(neg.any()) else torch.zeros(D, dtype=torch.bool)
            if bool(neg.all()):
                report.hit("all_neginf")
                ok_dims = ~inf_dims
                if not (l == -INF and bool((o[ok_dims] == 0).all())):
                    report.fail(
                        "all_neginf",
                        f"{where}: every used logit -inf, want out 0 / lse -inf, got lse {float(l)!r}, "
                        f"out[:4] {o[:4].tolist()}",
                    )
                if bool(inf_dims.any()):
                    report.hit("neginf_key_inf_value")
                    if not bool(torch.isnan(o[inf_dims]).all()):
                        d = int(inf_dims.nonzero()[0])
                        report.fail(
                            "neginf_key_inf_value",
                            f"{where}: every used logit -inf and a key holds inf in dim {d}: want out NaN there "
                            f"(IEEE 0 * inf), got out[{d}] = {float(o[d])!r}",
                        )
                continue
            fin = c == FIN
            kf = kt[fin]
            hs = None if sink is None else sink[h : h + 1]
            want_o, want_l = oracle.sparse_attention(
                q64[t : t + 1, h : h + 1], kf, torch.arange(kf.shape[0]).view(1, -1), attn_sink=hs, softmax_scale=scale
            )
            want_o, want_l = want_o[0, 0], float(want_l[0, 0])
            out_atol, out_rtol, lse_atol = attention_bounds(
                q64[t, h].view(1, 1, D), kf, scale, nk, q.dtype, sink_factor=hs is not None
            )
            vmax = float(kf.abs().max()) if kf.numel() else 0.0
            out_atol += D * nk * TINY * max(vmax, 1.0) + OUT_TINY[q.dtype]
            if lowp:
                out_atol += 2 * 2.0**-p_bits * vmax
            # an out past the output dtype's range is +-inf there (fp16: |out| >= 65,520)
            want_o, over_amb = round_overflow(want_o, q.dtype, out_atol, out_rtol)
            if bool(over_amb.any()):
                report.ambiguous += 1
                continue
            L = float((q64[t, h].abs() * kf.abs()).sum(-1).max()) * scale
            sk = None if hs is None else float(hs[0])
            if bool(neg.any()):
                base = "neginf_logit_weight0"
            elif ctx["fp8"]:
                base = "fp8_pool"
            elif strided:
                base = "strided"
            elif L >= 1e4:
                base = "huge_logits"
            else:
                base = "finite_lowp" if lowp else "finite_fp32"
            report.hit(base)
            if not (math.isfinite(float(l)) and abs(float(l) - want_l) <= lse_atol):
                report.fail(base, f"{where}: lse {float(l)!r}, want {want_l!r} (bound {lse_atol:.3e})")
            out_cat = base
            if sk is not None and not math.isfinite(sk):
                out_cat = "sink_nan" if math.isnan(sk) else ("sink_posinf" if sk > 0 else "sink_neginf")
                report.hit(out_cat)
            if out_cat == "sink_posinf":
                ok = ~inf_dims
                if not bool((o[ok] == 0).all()):
                    report.fail("sink_posinf", f"{where}: +inf sink, want out 0, got out[:4] {o[:4].tolist()}")
            else:
                mask_cat = "unread_poison" if ctx["poison"] and out_cat == base else out_cat
                if ctx["poison"] and out_cat == base:
                    report.hit("unread_poison")
                _check_out(report, out_cat, mask_cat, o, want_o, out_atol, out_rtol, ~inf_dims, where)
            if bool(inf_dims.any()):
                report.hit("neginf_key_inf_value")
                if not bool(torch.isnan(o[inf_dims]).all()):
                    d = int((inf_dims & ~torch.isnan(o)).nonzero()[0])
                    report.fail(
                        "neginf_key_inf_value",
                        f"{where}: a -inf-logit key holds inf in dim {d}: want out NaN there (IEEE 0 * inf), "
                        f"got out[{d}] = {float(o[d])!r}",
                    )


def _check_out(report, cat, mask_cat, got, want, atol, rtol, mask, where):
    """Masks under ``mask_cat`` (poisoned unread rows must not leak), values under ``cat``."""
    gn, wn = torch.isnan(got), torch.isnan(want)
    gi, wi = torch.isinf(got), torch.isinf(want)
    bad = mask & ((gn != wn) | (gi != wi))
    if bool(bad.any()):
        d = int(bad.nonzero()[0])
        report.fail(mask_cat, f"{where}: out[{d}] = {float(got[d])!r}, want {float(want[d])!r} (NaN / inf mismatch)")
        return
    check_values(report, cat, got, want, atol, rtol, where, mask=mask)


def dot_classes_logits(q_th: torch.Tensor, keys: torch.Tensor):
    """fp32 classes of the logits of q [H, D] against keys [n, D] -> [H, n] (scale > 0 keeps them)."""
    from .common import dot_classes

    return dot_classes(q_th.unsqueeze(1), keys.unsqueeze(0))
