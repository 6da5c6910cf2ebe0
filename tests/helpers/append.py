"""append_kv inputs and checks shared by the op x backend tests and the backend-specific ones: rows
full of rounding cases for float pools (every fp32 -> bf16 / fp16 rounding path), FP8 (MODEL1) rows
with every e4m3 rounding case, exact scale powers, subnormals, -0.0, inf / NaN, pool layouts with guard
values around them, and the record rule (``longattn.cache.fp8.quantize_rows``, a NaN rope value as the
canonical bf16 NaN 0x7FC0).
"""

from __future__ import annotations

import torch
from longattn.cache.fp8 import DATA_BYTES, NOPE_DIM, SCALE_BYTES, quantize_rows

from tests.helpers.specials import INF, NAN, NEG_NAN, neg_nan  # noqa: F401

FLOATS = (torch.float32, torch.bfloat16, torch.float16)
POISON_BYTE = 0xA5


def special_values() -> torch.Tensor:
    """fp32 values that exercise every rounding path of fp32 -> bf16 / fp16 (ties to even both ways,
    overflow to inf, subnormals, signed zeros, infinities)."""
    v = [0.0, -0.0, float("inf"), float("-inf"), 3.4028234e38, -3.4028234e38, 1e-45, -1e-45, 1.1754942e-38]
    v += [1 + 2**-8, 1 + 3 * 2**-8, -(1 + 2**-8), 1 + 2**-8 + 2**-20, 1 + 2**-9]  # bf16 ties / near ties
    v += [1 + 2**-11, 1 + 3 * 2**-11, 65504.0, 65519.0, 65520.0, -65520.0, 1e5]  # fp16 ties, overflow
    v += [2.0**-25, 3 * 2.0**-25, 2.0**-24, 2.0**-14 - 2.0**-25, 6e-8, -3e-8]  # fp16 subnormals / ties
    v += [2.0**-133, 3 * 2.0**-134, 2.0**-126 * 0.75, 3.3895314e38, 3.3961776e38]  # bf16 subnormal / overflow ties
    return torch.tensor(v, dtype=torch.float32)


def adversarial_rows(T: int, D: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    rows = torch.randn(T, D, generator=g) * torch.logspace(-44, 38, D).clamp_max(1e38)
    sp = special_values()
    flat = rows.view(-1)
    idx = torch.randperm(flat.numel(), generator=g)[: 4 * sp.numel()]
    flat[idx] = sp.repeat(4)
    return rows


def slots_for(T: int, num_slots: int, seed: int, dtype) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    s = torch.randperm(num_slots, generator=g)[:T].clone()
    s[::5] = -1  # padding
    if T > 3:
        s[1], s[2], s[3] = num_slots, 2**31 - 1, -num_slots - 7  # outside the pool: skipped
    return s.to(dtype)


def float_pool(layout: str, dtype, D: int, backing_fill=float("nan")):
    """(backing buffer, pool view) for a layout; the buffer holds guard values around the pool."""
    if layout == "flat":
        buf = torch.full((26, D), backing_fill, dtype=dtype)
        return buf, buf[1:25]
    if layout == "row_strided":  # [24, D] rows of a wider buffer (row stride D + 5)
        buf = torch.full((26, D + 5), backing_fill, dtype=dtype)
        return buf, buf[1:25, 2 : 2 + D]
    if layout == "col_strided":  # every other column
        buf = torch.full((26, 2 * D), backing_fill, dtype=dtype)
        return buf, buf[1:25, ::2]
    buf = torch.full((8, 4, D), backing_fill, dtype=dtype)  # paged [6, 4, D] inside guard pages
    return buf, buf[1:7]


def fp8_scale_rows(n: int, g: torch.Generator) -> torch.Tensor:
    """Rows [n, 512] over many scale exponents: all-zero tiles (e = -13), -0.0, subnormal e4m3 ties,
    an amax of exactly 448 * 2**3, a value rounding to -0."""
    rows = torch.randn(n, 512, generator=g) * torch.logspace(-6, 3, n).unsqueeze(1)
    rows[0, :448] = 0.0
    rows[1, 5] = -0.0
    rows[1, 64:128] = torch.tensor([2.0**-10, -(2.0**-10), 3 * 2.0**-11, 2.0**-9 * 1.5] * 16)
    rows[2, 128:192] = 448.0 * 2.0**3
    rows[2, 200] = -1e-30
    return rows


def e4m3_sweep() -> torch.Tensor:
    """Every positive finite e4m3 value, every midpoint between neighbours (ties), +-1 fp32 ulp
    around each midpoint, with both signs: values <= 448 that quantise with e = 0."""
    vals = torch.arange(0, 0x7F, dtype=torch.uint8).view(torch.float8_e4m3fn).float()
    mids = (vals[1:] + vals[:-1]) / 2
    up, down = torch.nextafter(mids, mids + 1), torch.nextafter(mids, mids - 1)
    pos = torch.cat([vals, mids, up, down, torch.tensor([2.0**-10, 2.0**-11, 3 * 2.0**-11, 1e-30])])
    return torch.cat([pos, -pos])


def fp8_adversarial_rows(seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    rows = []
    # every e4m3 rounding case: tiles whose amax is exactly 448 (e = 0), the rest a sweep
    sweep = e4m3_sweep()
    per_tile = 63
    n_tiles = -(-sweep.numel() // per_tile)
    body = torch.zeros(n_tiles * per_tile)
    body[: sweep.numel()] = sweep
    tiles = torch.cat([torch.full((n_tiles, 1), 448.0), body.view(n_tiles, per_tile)], 1)
    tiles = torch.cat([tiles, torch.zeros((-n_tiles) % 7, 64)])
    for r in tiles.view(-1, 7 * 64):
        rows.append(torch.cat([r, torch.randn(64, generator=g)]))
    # exact scale powers 448 * 2**k, a hair above, a hair below; every k in [-20, 20]
    for k in range(-20, 21, 7):
        r = torch.randn(512, generator=g)
        for i, kk in enumerate(range(k, k + 7)):
            amax = torch.tensor(448.0 * 2.0**kk)
            if kk < -13:
                amax = amax * 1.0001
            tile = r[64 * i : 64 * i + 64] * float(amax) / 4
            tile[i] = [amax, torch.nextafter(amax, amax * 2), torch.nextafter(amax, amax * 0)][i % 3]
            tile[i + 1] = -tile[i]  # the amax may be negative
            r[64 * i : 64 * i + 64] = tile
        rows.append(r)
    rows.append(torch.zeros(512))  # all zero: e = -13
    neg0 = torch.full((512,), -0.0)
    rows.append(neg0)  # negative zeros (e4m3 0x80, bf16 0x8000)
    tiny = torch.randn(512, generator=g) * 1e-3  # amax < 448e-4: the floor -13, subnormal e4m3 results
    tiny[:64] *= 1e-6
    tiny[64:128] = 1e-40  # fp32 subnormal inputs
    rows.append(tiny)
    big = torch.randn(512, generator=g) * torch.logspace(-38, 38, 512)  # every range in one row
    rows.append(big)
    nonfinite = torch.randn(512, generator=g) * 1000
    nonfinite[3] = float("inf")  # tile 0: inf -> e = 0 (as torch.frexp), 448 / saturated values
    nonfinite[70] = float("nan")  # tile 1: NaN -> e = 0, NaN -> 0x7F
    nonfinite[200] = -float("inf")
    nonfinite[460] = float("inf")  # rope: bf16 inf
    rows.append(nonfinite)
    rows.append(torch.randn(512, generator=g) * 30)
    return torch.stack(rows)


def fp8_nonfinite_rows() -> torch.Tensor:
    """Rows [6, 512]: NaN of both signs, +-inf, -0.0, fp32 subnormals, alone in finite tiles, whole
    tiles of NaN / -NaN / +inf / -inf / -0.0 / subnormals, in nope and rope dims."""
    g = torch.Generator().manual_seed(2)
    rows = torch.randn(6, 512, generator=g) * 100
    r = rows[0]
    r[0], r[65], r[130], r[200], r[260], r[300], r[301] = NAN, NEG_NAN, INF, -INF, -0.0, 1e-40, -1e-42
    r[448], r[449], r[450], r[451], r[452], r[453] = NAN, NEG_NAN, INF, -INF, -0.0, 1e-40
    r = rows[1]
    r[0:64], r[64:128], r[128:192], r[192:256] = NAN, NEG_NAN, INF, -INF
    r[256:320], r[320:384], r[384:448] = -0.0, 1e-45, -3e-39
    r[448:480], r[480:512] = NEG_NAN, -INF
    rows[2, ::7] = NEG_NAN
    rows[3, 1::9] = INF
    rows[3, 2::9] = -INF
    rows[4] = -0.0
    rows[5] = torch.randn(512, generator=g) * 1e-39  # subnormal inputs everywhere
    return rows


def assert_records(data, scales, want_data, want_scales, what):
    """Records equal to quantize_rows' bytes. Rope NaN payloads are not part of the bf16 contract
    (ops/append/README.md: the kernel writes 0x7FC0, torch's vectorised CPU cast 0xFFFF, CUDA 0x7FFF):
    there both must be a bf16 NaN; every other byte must be identical."""
    assert torch.equal(scales, want_scales), f"{what}: scale bytes"
    assert torch.equal(data[:, :448], want_data[:, :448]), f"{what}: e4m3 bytes"
    rope = data[:, 448:].contiguous().view(torch.bfloat16)
    want_rope = want_data[:, 448:].contiguous().view(torch.bfloat16)
    assert torch.equal(rope.isnan(), want_rope.isnan()), f"{what}: rope NaN positions"
    m = ~want_rope.isnan()
    assert torch.equal(rope.view(torch.int16)[m], want_rope.view(torch.int16)[m]), f"{what}: rope bytes"


def expected_records(rows: torch.Tensor):
    """(data [n, 576], scales [n, 8]) of the package rule: quantize_rows, with a NaN rope value as the
    canonical bf16 NaN 0x7FC0 (the Triton kernel's bytes and the documented rule). torch's own
    ``.to(torch.bfloat16)`` gives 0xFFFF for a NaN on its vectorised CPU path, which is the only place
    where quantize_rows and the rule can differ; every other byte must be quantize_rows' byte."""
    data, scales = quantize_rows(rows)
    rope_nan = torch.isnan(rows[:, NOPE_DIM:].float())
    rope = data[:, NOPE_DIM:].clone().view(torch.int16)
    rope[rope_nan] = 0x7FC0
    want = torch.cat([data[:, :NOPE_DIM], rope.view(torch.uint8)], dim=1)
    # quantize_rows agrees with the rule on every other byte (here, not only in the kernel's test)
    other = ~rope_nan.repeat_interleave(2, dim=1)
    assert torch.equal(data[:, NOPE_DIM:][other], want[:, NOPE_DIM:][other])
    return want, scales


def place_records(base: torch.Tensor, page_size: int, slots, data, scales):
    """A copy of the pool bytes ``base`` with the records written where the kernel must write them."""
    out = base.clone()
    ps = page_size
    num_slots = base.shape[0] * ps
    for i, s in enumerate(int(v) for v in slots):
        if not 0 <= s < num_slots:
            continue
        page, off = divmod(s, ps)
        out[page, off * DATA_BYTES : (off + 1) * DATA_BYTES] = data[i]
        base = ps * DATA_BYTES + off * SCALE_BYTES
        out[page, base : base + SCALE_BYTES] = scales[i]
    return out


def special_rows(n: int, g: torch.Generator) -> torch.Tensor:
    """Rows [n, 512] fp32 full of special values: NaN (both signs), +-inf, -0.0, fp32 subnormals,
    values above 448 in finite and non-finite tiles, FLT_MAX, exact 448 * 2**k, and random sprinkles."""
    rows = torch.randn(n, 512, generator=g) * torch.logspace(-3, 3, n).unsqueeze(1)
    r = rows[0]
    r[3], r[4], r[5], r[6], r[7] = NAN, 1000.0, -3000.0, 1e-3, -(2.0**-10)  # NaN tile with big values
    r[70] = neg_nan()
    r[71] = 1e-42  # -NaN tile
    r[130], r[131], r[132], r[133], r[134] = INF, -INF, 500.0, -1e-40, 460.0  # inf tile
    r[192:256] = NAN  # all-NaN tile
    r[256:320] *= 1e5  # finite tile above 448: e > 0
    r[320:384] = torch.randn(64, generator=g) * 1e-39  # fp32 subnormals only: e = -13
    r[384:448] = torch.tensor([0.0, -0.0] * 32)  # zeros of both signs
    r[448], r[449], r[450], r[451], r[452] = NAN, neg_nan(), INF, -INF, -0.0  # rope specials
    r[453], r[454], r[455] = 3.4e38, -3.4e38, 1e-40  # rope: bf16 overflow to +-inf, subnormal
    rows[1] = torch.randn(512, generator=g) * 3e38  # near FLT_MAX: e up to 120
    rows[1, :2] = torch.tensor([3.4028235e38, -3.4028235e38])
    rows[2, :64] = 448.0 * 2.0**-20  # amax exactly 448 * 2^e
    rows[2, 64:128] = torch.tensor([NAN, -INF] * 32)  # NaN and -inf together
    rows[2, 128:192] = -0.0
    rows[2, 192] = -1e-45  # smallest subnormal: rounds to -0
    # random sprinkles of specials over the remaining rows
    kinds = torch.tensor([NAN, INF, -INF, -0.0, 1e-40, 5000.0, -1e30, 448.0])
    for i in range(3, n):
        hit = torch.rand(512, generator=g) < 0.02
        pick = kinds[torch.randint(0, len(kinds), (512,), generator=g)]
        rows[i] = torch.where(hit, pick, rows[i])
        if i % 2:
            rows[i, torch.randint(0, 512, (3,), generator=g)] = neg_nan((3,))
    return rows
