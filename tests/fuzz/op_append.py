"""append_kv into float pools (bit-exact casts) and FP8 pools (byte-exact MODEL1 records).

Float pools: slot s of a valid slot mapping entry gets ``rows[t]`` cast to the pool dtype (bf16:
``tests.oracle.bf16_round``; fp16 / fp32: IEEE round to nearest even) bit for bit, -0.0 and
subnormals included; NaN only by position (NaN payloads are not part of the contract). Slots outside
[0, num_slots) (-1, num_slots, INT32 / INT64 extremes, int64 values whose low 32 bits are a valid slot)
are skipped; every slot nobody writes keeps its sentinel. Two rows to one slot: either row, whole.

FP8 pools: every byte of the pool equals the rule built from the oracle's pieces (``e4m3_encode``,
``ue8m0_scale_exponent``, ``bf16_bits``): per 64-value tile e = ceil(log2(max(amax / 448, 1e-4))),
except a tile holding NaN / +-inf gets e = 0; NaN -> 0x7F | sign, +-inf -> +-448 (0x7E | sign), finite
x -> e4m3(x / 2**e) with saturation; rope dims bf16 round to nearest even with NaN -> 0x7FC0; the pad
byte 0. The NaN sign bit is checked for fp32 rows only: torch's own bf16 / fp16 -> fp32 conversions
do not keep a NaN's sign consistently (scalar vs vectorised paths), so for those sources either sign
is accepted.
"""

from __future__ import annotations

import math
import struct

import longattn
import torch
from hypothesis import strategies as st
from longattn.cache import Fp8KVPool

from tests import oracle

from .common import (
    DTYPES,
    INF,
    INT32_MAX,
    INT32_MIN,
    INT64_MAX,
    INT64_MIN,
    NAN,
    Report,
    bulk,
    draw_specials,
    set_special,
    tensor_summary,
    with_layout,
)  # fmt: skip

BACKENDS = ("reference", "triton", "ascend_sim")
CATEGORIES = ("api", "untouched", "float_exact", "float_nonfinite", "float_signed_zero_subnormal", "duplicates",
              "fp8_finite", "fp8_nonfinite", "fp8_rope_nan", "fp8_subnormal_zero", "fp8_saturation",
              "strided")  # fmt: skip

ROW_KINDS = ("nan", "-nan", "inf", "-inf", "huge", "-huge", "big", "-0", "sub", "-sub", "zero", "tie", "p448", "gt448")
SENTINEL_BYTE = 0x5A
SENTINEL = -1234.5


@st.composite
def strategy(draw, backend=None):
    fp8 = draw(st.sampled_from([False, False, True]))
    paged = draw(st.booleans())
    page = draw(st.sampled_from([1, 2, 3, 5])) if (paged or fp8) else None
    return dict(
        seed=draw(st.integers(0, 2**31 - 1)),
        pool="fp8" if fp8 else draw(st.sampled_from(["fp32", "bf16", "fp16"])),
        D=512 if fp8 else draw(st.sampled_from([1, 3, 8, 24, 100, 512])),
        page=page,
        pages=draw(st.integers(0, 5)),
        N=draw(st.integers(0, 20)),
        T=draw(st.integers(0, 8)),
        rows_dtype=draw(st.sampled_from(["fp32", "fp32", "bf16", "fp16"])),
        magnitude=draw(st.sampled_from([1.0, 1e-3, 300.0, 1e6])),
        slots=draw(st.sampled_from(["distinct", "distinct", "mixed", "dups", "all_invalid", "int64_extreme"])),
        slot_dtype=draw(st.sampled_from(["i32", "i64"])),
        specials=draw_specials(draw, st, ["rows", "rows", "rows@tile"], 10, ROW_KINDS),
        layout=draw(st.sampled_from(["contig", "contig", "pad_last", "stride0", "transpose01"])),
    )


def targeted():
    spec = dict(seed=21, pool="fp8", D=512, page=3, pages=4, N=0, T=9, rows_dtype="fp32", magnitude=1.0,
                slots="mixed", slot_dtype="i64", layout="contig", recipe="special_rows")  # fmt: skip
    out = [spec, dict(spec, rows_dtype="bf16", layout="pad_last"), dict(spec, rows_dtype="fp16", page=1, pages=10)]
    for pool in ("fp32", "bf16", "fp16"):
        out.append(dict(spec, pool=pool, D=24, page=None, N=12, recipe="special_rows_float", slots="dups"))
    out.append(dict(spec, pool="bf16", D=24, page=2, pages=6, recipe="special_rows_float", layout="transpose01"))
    return out


def _special_rows(T, D, g, dtype):
    """Rows full of special values (NaN of both signs, +-inf, -0.0, subnormals, values above 448,
    exact 448 * 2**k tile maxima, e4m3 rounding ties)."""
    rows = torch.randn(T, D, generator=g, dtype=torch.float64) * torch.logspace(
        -3, 3, T, dtype=torch.float64
    ).unsqueeze(1)
    rows = rows.to(dtype)
    kinds = ["nan", "-nan", "inf", "-inf", "-0", "sub", "-sub", "huge", "big", "tie", "p448", "gt448"]
    for t in range(T):
        for i, kind in enumerate(kinds):
            if (t + i) % 3 == 0:
                _row_special(rows[t], (t * 37 + i * 71) % D, kind)
    if T > 2 and D == 512:
        rows[0, 192:256] = NAN  # an all-NaN tile
        rows[1, 320:384] = special_rows_value("sub", dtype)  # subnormals only: e = -13
        rows[2, 384:448] = torch.tensor([0.0, -0.0] * 32).to(dtype)
        rows[2, 448:456] = torch.tensor([NAN, -NAN, INF, -INF, -0.0, 3.3e38, -3.3e38, 1e-40]).to(dtype)
    return rows


def special_rows_value(kind, dtype):
    from .common import special_scalar

    return special_scalar(kind, dtype)


def _row_special(row, pos, kind):
    if kind in ("tie", "p448", "gt448"):
        if row.numel() == 0:
            return
        i = pos % row.numel()
        if kind == "tie":  # 1 + 1/16 and 1 + 3/16: exactly between two e4m3 values (after the tile's scale)
            row[i] = 1.0625 if pos % 2 else 1.1875
        elif kind == "p448":  # the tile maximum exactly 448 * 2**k
            row[i] = 448.0 * 2.0 ** ((pos % 9) - 4)
        else:
            row[i] = 460.0 * (1 if pos % 2 else -1)
        return
    set_special(row, pos, kind)


def _slots(g, T, N, how, sdt):
    if how == "all_invalid":
        bad = torch.tensor([-1, N, N + 3, INT32_MAX, INT32_MIN, -5])
        s = bad[torch.randint(0, len(bad), (T,), generator=g)]
    elif how == "dups":
        s = torch.randint(0, max(N, 1), (T,), generator=g)
        if T > 2:
            s[1] = s[0]
            s[2] = s[0]
        if N == 0:
            s = torch.full((T,), -1)
    else:
        if T <= N:
            s = torch.randperm(N, generator=g)[:T]
        else:
            s = torch.cat([torch.randperm(N, generator=g), torch.full((T - N,), -1)])[torch.randperm(T, generator=g)]
        if how in ("mixed", "int64_extreme"):
            r = torch.rand(T, generator=g)
            s = torch.where(r < 0.15, torch.full_like(s, -1), s)
            s = torch.where((r >= 0.15) & (r < 0.22), torch.full_like(s, N), s)
            s = torch.where((r >= 0.22) & (r < 0.28), torch.full_like(s, INT32_MAX if sdt == "i32" else INT64_MAX), s)
            s = torch.where((r >= 0.28) & (r < 0.33), torch.full_like(s, INT32_MIN if sdt == "i32" else INT64_MIN), s)
            if how == "int64_extreme" and sdt == "i64":
                s = torch.where((r >= 0.33) & (r < 0.5), s + 2**32, s)  # low 32 bits = a valid slot
    return s.to(torch.int32 if sdt == "i32" else torch.int64)


def build(spec):
    g = torch.Generator().manual_seed(spec["seed"])
    D, T = spec["D"], spec["T"]
    fp8 = spec["pool"] == "fp8"
    page = spec["page"]
    N = spec["pages"] * page if page else spec["N"]
    rdt = DTYPES[spec["rows_dtype"]]
    recipe = spec.get("recipe")
    if recipe in ("special_rows", "special_rows_float"):
        rows = _special_rows(T, D, g, rdt)
    else:
        rows = bulk((T, D), g, rdt, spec["magnitude"])
        for target, pos, kind in spec["specials"]:
            if not rows.numel():
                continue
            if target == "rows@tile":  # several specials into one 64-value tile
                t = pos % T
                base = ((pos // T) % max(1, D // 64)) * 64
                for k in range(3):
                    _row_special(rows[t], base + (pos * (k + 3)) % min(64, D), kind)
            else:
                _row_special(rows[(pos % rows.numel()) // D], pos, kind)
    sdt = "i64" if spec["slots"] == "int64_extreme" else spec["slot_dtype"]
    slots = _slots(g, T, N, spec["slots"], sdt)
    if fp8:
        pool = Fp8KVPool.empty(spec["pages"], page)
        pool.data.fill_(SENTINEL_BYTE)
    else:
        pool = torch.full((N, D), SENTINEL, dtype=DTYPES[spec["pool"]])
        if page:
            pool = pool.view(spec["pages"], page, D)
    kwargs = dict(pool=pool, rows=with_layout(rows, spec["layout"]), slot_mapping=slots)
    return kwargs, dict(rows=rows, slots=slots, N=N, pool0=pool.data.clone() if fp8 else pool.clone())


def describe(kwargs):
    p = kwargs["pool"]
    ps = f"Fp8KVPool({p.num_pages}x{p.page_size})" if isinstance(p, Fp8KVPool) else tensor_summary(p)
    return f"pool={ps}, rows={tensor_summary(kwargs['rows'])}, slot_mapping={kwargs['slot_mapping'].tolist()}"


def run(kwargs, backend):
    longattn.append_kv(**kwargs, backend=backend)
    return kwargs["pool"]


# ----------------------------------------------------------------------------------------------------
# expected bytes
# ----------------------------------------------------------------------------------------------------
def _f32_sign(x32: torch.Tensor) -> torch.Tensor:
    return x32.contiguous().view(torch.int32) < 0


def fp8_record(row: torch.Tensor):
    """(576 data bytes, 8 scale bytes, nan_sign_checked mask [448]) of one row by the rule."""
    src_dtype = row.dtype
    r32 = row.float()
    sign = _f32_sign(r32).tolist()
    vals = r32.double().tolist()
    data = bytearray(576)
    scales = bytearray(8)
    for tile in range(7):
        xs = vals[tile * 64 : (tile + 1) * 64]
        nonfinite = any(not math.isfinite(v) for v in xs)
        e = 0 if nonfinite else oracle.ue8m0_scale_exponent(max(abs(v) for v in xs))
        scales[tile] = e + 127
        for c, v in enumerate(xs):
            i = tile * 64 + c
            if math.isnan(v):
                data[i] = 0x7F | (0x80 if sign[i] else 0)
            elif math.isinf(v):
                data[i] = 0x7E | (0x80 if v < 0 else 0)
            else:
                data[i] = oracle.e4m3_encode(v / 2.0**e)
    for c in range(64):
        v = vals[448 + c]
        bits = 0x7FC0 if math.isnan(v) else oracle.bf16_bits(v)
        data[448 + 2 * c] = bits & 0xFF
        data[448 + 2 * c + 1] = bits >> 8
    check_sign = src_dtype == torch.float32
    return bytes(data), bytes(scales), check_sign


def _records_view(data: torch.Tensor, page: int):
    P = data.shape[0]
    d = data[:, : page * 576].reshape(P * page, 576)
    s = data[:, page * 576 : page * 584].reshape(P * page, 8)
    return d, s


def check(spec, kwargs, ctx, result, report: Report):
    rows, slots, N = ctx["rows"], ctx["slots"], ctx["N"]
    T, D = rows.shape
    report.hit("api")
    writers = {}
    for t, s in enumerate(slots.tolist()):
        if 0 <= s < N:
            writers.setdefault(s, []).append(t)
    strided = kwargs["rows"].numel() > 1 and not kwargs["rows"].is_contiguous()
    pool = kwargs["pool"]
    if isinstance(pool, Fp8KVPool):
        _check_fp8(report, pool, ctx, writers, strided)
    else:
        _check_float(report, pool, ctx, writers, strided)


def _cast_bits(row: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The pool dtype's values of ``row`` (float64 carrier): bf16 through the oracle, fp16 / fp32 IEEE."""
    v = row.float().double()
    if dtype == torch.bfloat16:
        return torch.tensor([oracle.bf16_round(x) for x in v.tolist()], dtype=torch.float64)
    if dtype == torch.float16:
        return torch.tensor([_fp16_round(x) for x in v.tolist()], dtype=torch.float64)
    return v


def _fp16_round(x: float) -> float:
    """IEEE binary16 round to nearest even (struct's 'e'), overflow to +-inf, NaN / inf kept."""
    if not math.isfinite(x):
        return x
    if abs(x) >= 65520.0:  # the midpoint between 65504 and 2**16 rounds to even: inf
        return math.copysign(INF, x)
    return struct.unpack("<e", struct.pack("<e", x))[0]


def _same_bits(got: torch.Tensor, want64: torch.Tensor) -> torch.Tensor:
    """Elementwise: equal values with equal signs (so -0.0 != 0.0), NaN where NaN."""
    g = got.double()
    gn, wn = torch.isnan(g), torch.isnan(want64)
    eq = (g == want64) & (torch.signbit(g) == torch.signbit(want64))
    return torch.where(wn, gn, eq & ~gn)


def _check_float(report, pool, ctx, writers, strided):
    rows = ctx["rows"]
    D = rows.shape[1]
    flat = pool.view(-1, D)
    report.hit("untouched")
    sentinel = float(torch.tensor(SENTINEL, dtype=pool.dtype))
    for s in range(flat.shape[0]):
        if s not in writers and not bool((flat[s].double() == sentinel).all()):
            report.fail("untouched", f"slot {s} (no valid mapping to it) was written: {flat[s][:4].tolist()}")
            break
    for s, ts in sorted(writers.items()):
        got = flat[s]
        oks = [_same_bits(got, _cast_bits(rows[t], pool.dtype)) for t in ts]
        if len(ts) > 1:
            report.hit("duplicates")
            if not any(bool(o.all()) for o in oks):
                report.fail("duplicates", f"slot {s} written by rows {ts}: holds neither row whole: {got[:4].tolist()}")
            continue
        ok, t = oks[0], ts[0]
        want = _cast_bits(rows[t], pool.dtype)
        v = rows[t].double()
        special = ~torch.isfinite(v) | ~torch.isfinite(want)
        sz = (v == 0) | (v.abs() < 1.2e-38) | (want == 0)
        for cat, mask in (("float_nonfinite", special), ("float_signed_zero_subnormal", sz & ~special),
                          ("strided" if strided else "float_exact", ~special & ~sz)):  # fmt: skip
            if bool(mask.any()):
                report.hit(cat)
                bad = mask & ~ok
                if bool(bad.any()):
                    i = int(bad.nonzero()[0])
                    report.fail(cat, f"slot {s} (row {t}) dim {i}: got {float(got[i])!r}, want {float(want[i])!r} "
                                     f"(from {float(v[i])!r}, {rows.dtype} -> {pool.dtype})")  # fmt: skip


def _check_fp8(report, pool, ctx, writers, strided):
    rows = ctx["rows"]
    page = pool.page_size
    data, scales = _records_view(pool.data, page)
    report.hit("untouched")
    for s in range(pool.num_slots):
        if s not in writers and not (
            bool((data[s] == SENTINEL_BYTE).all()) and bool((scales[s] == SENTINEL_BYTE).all())
        ):
            report.fail("untouched", f"slot {s} (no valid mapping to it) was written")
            break
    tail = pool.data[:, page * 584 :]
    if tail.numel() and not bool((tail == SENTINEL_BYTE).all()):
        report.fail("untouched", "the page padding past the scale rows was written")
    for s, ts in sorted(writers.items()):
        recs = [fp8_record(rows[t]) for t in ts]
        got_d, got_s = bytes(data[s].tolist()), bytes(scales[s].tolist())
        if len(ts) > 1:
            report.hit("duplicates")
            if not any(_fp8_equal(got_d, got_s, r) for r in recs):
                report.fail("duplicates", f"slot {s} written by rows {ts}: the record is neither row's")
            continue
        t = ts[0]
        want_d, want_s, check_sign = recs[0]
        r = rows[t].float().double()
        for i in range(576):
            gb, wb = got_d[i], want_d[i]
            if gb == wb:
                continue
            if i < 448 and not check_sign and (wb & 0x7F) == 0x7F and (gb & 0x7F) == 0x7F:
                continue  # NaN from a bf16 / fp16 source: either sign
            if i < 448:
                v = float(r[i])
                tile_bad = not all(math.isfinite(x) for x in r[(i // 64) * 64 : (i // 64 + 1) * 64].tolist())
                if tile_bad and math.isfinite(v) and abs(v) > 448:
                    cat = "fp8_saturation"
                elif tile_bad:
                    cat = "fp8_nonfinite"
                elif v == 0 or abs(v) < 1.2e-38:
                    cat = "fp8_subnormal_zero"
                else:
                    cat = "strided" if strided else "fp8_finite"
                report.fail(
                    cat,
                    f"slot {s} (row {t}) nope byte {i}: got {gb:#04x}, want {wb:#04x} for {v!r} "
                    f"(tile scale byte {want_s[i // 64]}, got {got_s[i // 64]})",
                )
            else:
                c = (i - 448) // 2
                v = float(r[448 + c])
                cat = (
                    "fp8_rope_nan"
                    if math.isnan(v)
                    else (
                        "fp8_nonfinite"
                        if math.isinf(v)
                        else (
                            "fp8_subnormal_zero"
                            if v == 0 or abs(v) < 1.2e-38
                            else ("strided" if strided else "fp8_finite")
                        )
                    )
                )
                report.fail(
                    cat, f"slot {s} (row {t}) rope byte {i}: got {gb:#04x}, want {wb:#04x} for rope value {v!r}"
                )
            break
        for tile in range(8):
            if got_s[tile] != want_s[tile]:
                xs = r[tile * 64 : (tile + 1) * 64] if tile < 7 else None
                cat = "fp8_finite" if xs is None or bool(torch.isfinite(xs).all()) else "fp8_nonfinite"
                if xs is not None and bool(torch.isfinite(xs).all()) and float(xs.abs().max()) < 1.2e-38 * 448:
                    cat = "fp8_subnormal_zero"
                report.fail(cat, f"slot {s} (row {t}) scale byte {tile}: got {got_s[tile]}, want {want_s[tile]}")
                break
        # exercised categories of this record
        nope = r[:448]
        rope = r[448:]
        report.hit("strided" if strided else "fp8_finite")
        if bool((~torch.isfinite(nope)).any()) or bool(torch.isinf(rope).any()):
            report.hit("fp8_nonfinite")
        if bool(torch.isnan(rope).any()):
            report.hit("fp8_rope_nan")
        if bool(((r == 0) | (r.abs() < 1.2e-38)).any()):
            report.hit("fp8_subnormal_zero")
        tiles = nope.view(7, 64)
        bad_tile = (~torch.isfinite(tiles)).any(-1, keepdim=True)
        if bool((bad_tile & torch.isfinite(tiles) & (tiles.abs() > 448)).any()):
            report.hit("fp8_saturation")


def _fp8_equal(got_d, got_s, rec):
    want_d, want_s, check_sign = rec
    if got_s != want_s:
        return False
    for i in range(576):
        if got_d[i] != want_d[i]:
            if i < 448 and not check_sign and (want_d[i] & 0x7F) == 0x7F and (got_d[i] & 0x7F) == 0x7F:
                continue
            return False
    return True
