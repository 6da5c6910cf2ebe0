"""Triton cache-write kernels (``append_kv``, ``compress_kv``) vs the reference.

append_kv: the bytes must be identical to the reference's (float pools bit for bit, FP8 records
byte for byte, adversarial values), including everything the op must leave alone.

compress_kv: the same steps (random chunk / decode splits of several sequences, interleaved in mixed
batches) are replayed on both backends from identical NaN-poisoned caches. The ring (state) holds
exact fp32 copies of a | b, so it must be bit-identical; the output pools must have NaN exactly where
the reference leaves NaN (nothing else written, everything written), and the entries must agree to

    |kernel - reference| <= 16 u * max_k |entry_k|     per entry (u = 2**-24),

and lie as close to a float64 oracle. Justification: both compute the same fp32 math in another order
(online softmax over slot tiles and tree sums vs two passes; tl.exp = ex2.approx on GPUs, ~2 ulp),
RMSNorm scales by ~1 / rms, and RoPE mixes the two values of a pair with cos / sin that differ by an
ulp or two between libdevice / numpy and torch: every step is a few u relative to the entry's norm.
Measured (interpreter, this file's cases, d = 24 / 64 / 512): kernel <= 6.5 u and reference
<= 5.5 u * max|entry| from the float64 oracle, kernel vs reference <= 9 u; elementwise relative errors
are much larger only on components near 0 (cancellation in the pooling), hence the normwise bound.
FP8 outputs: the kernel's record is byte-identical to ``quantize_rows`` of its own fp32 entry (checked
under the interpreter), and within one e4m3 step (one bf16 ulp for the rope dims) of the reference's.
"""

from __future__ import annotations

import random

import pytest
import torch

from tests.helpers.dispatch import reasons
from tests.triton import CAN_RUN, DEVICE, INTERPRET, SKIP_REASON

pytestmark = [
    pytest.mark.skipif(not CAN_RUN, reason=SKIP_REASON),
    # the interpreter's fp32 -> fp16 cast (numpy) warns when it rounds to inf, which is the point
    pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning"),
]

if CAN_RUN:
    import longattn
    from longattn.cache import Fp8KVPool
    from longattn.cache.fp8 import page_bytes, quantize_rows
    from longattn.configs import RopeConfig
    from longattn.rope import inv_freq

U = 2.0**-24
EPS = 1e-6
FLOATS = (torch.float32, torch.bfloat16, torch.float16)
POISON_BYTE = 0xA5


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().view({1: torch.uint8, 2: torch.int16, 4: torch.int32}[t.element_size()])


# ---------------------------------------------------------------------------------------------------
# append_kv
# ---------------------------------------------------------------------------------------------------
def _special_values() -> torch.Tensor:
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
    sp = _special_values()
    flat = rows.view(-1)
    idx = torch.randperm(flat.numel(), generator=g)[: 4 * sp.numel()]
    flat[idx] = sp.repeat(4)
    return rows


def _slots(T: int, num_slots: int, seed: int, dtype) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    s = torch.randperm(num_slots, generator=g)[:T].clone()
    s[::5] = -1  # padding
    if T > 3:
        s[1], s[3] = num_slots, -num_slots - 7  # outside the pool: skipped
    return s.to(dtype)


def _float_pool(layout: str, dtype, D: int, backing_fill=float("nan")):
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


@pytest.mark.parametrize("layout", ["flat", "row_strided", "col_strided", "paged"])
@pytest.mark.parametrize("dst", FLOATS)
@pytest.mark.parametrize("src", FLOATS)
def test_append_float_pool_bit_identical(src, dst, layout):
    from longattn.ops.append import reference as ref_append
    from longattn.ops.append import triton_append

    D = 40
    rows = adversarial_rows(19, D, seed=3).to(src)
    if layout == "row_strided":
        rows = rows.t().contiguous().t()  # non-contiguous rows too
    buf_ref, pool_ref = _float_pool(layout, dst, D)
    slots = _slots(19, 24, seed=1, dtype=torch.int32 if layout != "paged" else torch.int64)
    ref_append.append_kv(pool_ref, rows, slots)
    buf = buf_ref.new_full(buf_ref.shape, float("nan")).to(DEVICE)
    pool = buf[1:25] if layout == "flat" else buf[1:25, 2 : 2 + D] if layout == "row_strided" else (
        buf[1:25, ::2] if layout == "col_strided" else buf[1:7])  # fmt: skip
    with torch.no_grad():
        triton_append.append_kv(pool, rows.to(DEVICE), slots.to(DEVICE))
    assert torch.equal(_bits(buf.cpu()), _bits(buf_ref)), "pool (and guard) bytes differ from the reference"


def test_append_float_through_the_public_api():
    rows = adversarial_rows(7, 64, seed=5)
    slots = torch.tensor([3, -1, 0, 12, 7, 2, 11])
    want = torch.full((3, 4, 64), float("nan"), dtype=torch.bfloat16)
    longattn.append_kv(want, rows, slots, backend="reference")
    got = torch.full((3, 4, 64), float("nan"), dtype=torch.bfloat16, device=DEVICE)
    longattn.append_kv(got, rows.to(DEVICE), slots.to(DEVICE), backend="triton")
    assert torch.equal(_bits(got.cpu()), _bits(want))


def _e4m3_sweep() -> torch.Tensor:
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
    sweep = _e4m3_sweep()
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


@pytest.mark.parametrize("page_size", [1, 2, 3, 64])
@pytest.mark.parametrize("dtype", FLOATS)
def test_append_fp8_bytes_identical(page_size, dtype):
    from longattn.ops.append import triton_append

    rows = fp8_adversarial_rows(seed=page_size).to(dtype)
    T = rows.shape[0]
    num_pages = -(-(T + 4) // page_size)
    slots = torch.randperm(num_pages * page_size)[:T]
    slots[-1] = -1
    slots[-2] = num_pages * page_size  # skipped
    data = torch.full((num_pages, page_bytes(page_size)), POISON_BYTE, dtype=torch.uint8)
    want = Fp8KVPool(data.clone(), page_size)
    longattn.append_kv(want, rows, slots, backend="reference")
    got = Fp8KVPool(data.clone().to(DEVICE), page_size)
    triton_append.append_kv(got, rows.to(DEVICE), slots.to(DEVICE))
    diff = (got.data.cpu() != want.data).nonzero()
    assert diff.numel() == 0, f"{diff.shape[0]} bytes differ, first (page, byte): {diff[:8].tolist()}"


def test_append_fp8_matches_quantize_rows_directly():
    """The record bytes of every row equal quantize_rows (data row + scale row), byte for byte."""
    rows = fp8_adversarial_rows(seed=9)
    T = rows.shape[0]
    pool = Fp8KVPool(torch.full((T, page_bytes(1)), POISON_BYTE, dtype=torch.uint8, device=DEVICE), 1)
    longattn.append_kv(pool, rows.to(DEVICE), torch.arange(T, device=DEVICE), backend="triton")
    data, scales = quantize_rows(rows)
    got = pool.data.cpu()
    assert torch.equal(got[:, :576], data)
    assert torch.equal(got[:, 576:584], scales)
    assert torch.all(got[:, 584:] == POISON_BYTE)  # page padding is never written


# ---------------------------------------------------------------------------------------------------
# compress_kv
# ---------------------------------------------------------------------------------------------------
def random_split(S, rng, decode_tail, max_chunk=9):
    cuts, left = [], S
    while left:
        k = 1 if (decode_tail and left < S // 2) else min(left, rng.randint(1, max_chunk))
        cuts.append(k)
        left -= k
    return cuts


def make_steps(lengths, ratio, overlap, d, seed, decode_tail, max_chunk=9, dtype=torch.float32, start=0):
    """Sequences (a, b) and the batches that feed them in random chunks, interleaved at random."""
    rng = random.Random(seed)
    g = torch.Generator().manual_seed(seed)
    c = 2 if overlap else 1
    seqs = [
        (torch.randn(S, c * d, generator=g).to(dtype), (torch.randn(S, c * d, generator=g) * 2).to(dtype))
        for S in lengths
    ]
    queues = [random_split(S, rng, decode_tail, max_chunk) for S in lengths]
    done = [0] * len(lengths)
    steps = []
    while any(queues):
        batch = [i for i in range(len(lengths)) if queues[i] and rng.random() < 0.7]
        rng.shuffle(batch)
        if not batch:
            continue
        a, b, pos, rows = [], [], [], []
        for i in batch:
            k = queues[i].pop(0)
            s0 = done[i]
            a.append(seqs[i][0][s0 : s0 + k])
            b.append(seqs[i][1][s0 : s0 + k])
            pos.append(torch.arange(start + s0, start + s0 + k))
            rows.append(torch.full((k,), i, dtype=torch.int32))
            done[i] += k
        steps.append((torch.cat(a), torch.cat(b), torch.cat(pos), torch.cat(rows)))
    return seqs, steps


class Cache:
    """Ring state, output pool and block tables for B sequences; one guard page on each side of the
    state and the pool (NaN / poison bytes) must never be written."""

    def __init__(self, B, ratio, overlap, d, page_size, max_len, out="fp32", seed=0, start=0):
        c = 2 if overlap else 1
        self.ratio, self.overlap, self.d, self.page_size = ratio, overlap, d, page_size
        ring = c * ratio
        s_ps = min(page_size, ring)
        ring_pages = -(-ring // s_ps)
        g = torch.Generator().manual_seed(seed)
        self.state_buf = torch.full((B * ring_pages + 2, s_ps, 2 * c * d), float("nan"))
        self.state_bt = torch.randperm(B * ring_pages, generator=g).view(B, ring_pages).int()
        # logical pages of entries start // ratio ... (start + max_len) // ratio get physical pages (a
        # random permutation); earlier logical pages (never written when start > 0) are -1
        first, last = start // ratio // page_size, ((start + max_len) // ratio) // page_size
        pages = last - first + 1
        self.out_bt = torch.full((B, last + 1), -1, dtype=torch.int32)
        self.out_bt[:, first:] = torch.randperm(B * pages, generator=g).view(B, pages).int()
        self.num_pages = B * pages
        self.out_kind = out
        if out == "fp8":
            self.out_buf = torch.full((self.num_pages + 2, page_bytes(page_size)), POISON_BYTE, dtype=torch.uint8)
        else:
            dt = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[out]
            self.out_buf = torch.full((self.num_pages + 2, page_size, d), float("nan"), dtype=dt)
        self.w = torch.linspace(0.5, 1.5, d)
        self.freqs = inv_freq(RopeConfig(160000.0), min(16, d - d % 2))

    def clone(self, device):
        other = object.__new__(Cache)
        other.__dict__.update(self.__dict__)
        for k in ("state_buf", "state_bt", "out_buf", "out_bt", "w", "freqs"):
            setattr(other, k, getattr(self, k).clone().to(device))
        return other

    @property
    def state(self):
        return self.state_buf[1:-1]

    @property
    def out(self):
        if self.out_kind == "fp8":
            return Fp8KVPool(self.out_buf[1:-1], self.page_size)
        return self.out_buf[1:-1]

    def args(self, step):
        a, b, pos, rows = (x.to(self.state_buf.device) for x in step)
        return dict(a=a, b=b, positions=pos, token_rows=rows, ratio=self.ratio, overlap=self.overlap,
                    state=self.state, state_block_table=self.state_bt, out=self.out, out_block_table=self.out_bt,
                    norm_weight=self.w, eps=EPS, rope_inv_freq=self.freqs)  # fmt: skip


def replay(cache, steps, backend=None, config=None):
    for step in steps:
        args = cache.args(step)
        if config is not None:
            from longattn.ops.compress import triton_compress

            triton_compress.compress_kv(**args, config=config)
        else:
            longattn.compress_kv(**args, backend=backend)


def run_both(cache, steps, config=None):
    ref = cache.clone("cpu")
    replay(ref, steps, backend="reference")
    got = cache.clone(DEVICE)
    replay(got, steps, backend="triton", config=config)
    return ref, got


def oracle_entries(a, b, ratio, overlap, w, freqs):
    """float64 compress_pool + RMSNorm + RoPE (fp32 angles as longattn.rope) of one whole sequence."""
    a, b = a.double(), b.double()
    S, width = a.shape
    d = width // 2 if overlap else width
    n = S // ratio
    out = torch.zeros(n, d, dtype=torch.float64)
    for j in range(n):
        own = slice(j * ratio, (j + 1) * ratio)
        if overlap:
            s = torch.full((2 * ratio, d), float("-inf"), dtype=torch.float64)
            v = torch.zeros(2 * ratio, d, dtype=torch.float64)
            if j > 0:
                prev = slice((j - 1) * ratio, j * ratio)
                s[:ratio], v[:ratio] = b[prev, :d], a[prev, :d]
            s[ratio:], v[ratio:] = b[own, d:], a[own, d:]
        else:
            s, v = b[own], a[own]
        out[j] = (torch.softmax(s, 0) * v).sum(0)
    x = out * torch.rsqrt(out.pow(2).mean(-1, keepdim=True) + EPS) * w.double()
    R = freqs.shape[0]
    if R:
        ang = (torch.arange(n, dtype=torch.float32) * ratio).unsqueeze(1) * freqs.float()  # fp32 angles
        cos, sin = torch.cos(ang.double()), torch.sin(ang.double())
        pr = x[:, d - 2 * R :].unflatten(-1, (R, 2))
        e, o = pr[..., 0].clone(), pr[..., 1].clone()
        x[:, d - 2 * R :] = torch.stack([e * cos - o * sin, e * sin + o * cos], -1).flatten(-2)
    return x


def entry_slots(cache, row, n):
    j = torch.arange(n)
    return cache.out_bt[row, j // cache.page_size].long().cpu() * cache.page_size + j % cache.page_size


def assert_entries_close(got, want, what, ulps=16):
    """Per entry (row): max |got - want| <= ulps * u * max |want|."""
    got, want = got.double().cpu(), want.double().cpu()
    scale = want.abs().amax(-1, keepdim=True).clamp_min(1e-30)
    err = ((got - want).abs() / (scale * U)).amax() if want.numel() else torch.tensor(0.0)
    assert float(err) <= ulps, f"{what}: {float(err):.1f} u * max|entry| > {ulps}"
    return float(err)


def check_float_run(ref, got, seqs=None, ulps=16):
    """State bit-identical; NaN exactly where the reference left NaN; entries within the bound of the
    reference (and of the float64 oracle when ``seqs`` is given). Returns the max errors in u."""
    s_ref, s_got = ref.state_buf, got.state_buf.cpu()
    assert torch.equal(s_ref.isnan(), s_got.isnan()), "ring: written positions differ"
    assert torch.equal(_bits(s_ref.nan_to_num(0.0)), _bits(s_got.nan_to_num(0.0))), "ring rows are not exact copies"
    o_ref, o_got = ref.out_buf.float(), got.out_buf.cpu().float()
    assert torch.equal(o_ref.isnan(), o_got.isnan()), "output: written entries differ (NaN mask)"
    written = ~o_ref.isnan().all(-1)
    e_ref = assert_entries_close(o_got[written], o_ref[written], "kernel vs reference", ulps)
    e_oracle = 0.0
    if seqs is not None:
        d = ref.d
        for i, (a, b) in enumerate(seqs):
            want = oracle_entries(a, b, ref.ratio, ref.overlap, ref.w, ref.freqs)
            slots = entry_slots(ref, i, want.shape[0]) + ref.page_size  # + the guard page
            e_oracle = max(e_oracle, assert_entries_close(o_got.view(-1, d)[slots], want, f"seq {i} vs oracle", ulps))
            assert_entries_close(o_ref.view(-1, d)[slots], want, f"reference seq {i} vs oracle", ulps)
    return e_ref, e_oracle


@pytest.mark.parametrize("seed", range(2))
@pytest.mark.parametrize("page_size", [1, 3, 16])
@pytest.mark.parametrize("ratio,overlap", [(4, True), (8, False), (3, True), (128, False)])
def test_compress_any_split_matches_reference(ratio, overlap, page_size, seed):
    d = 24
    lengths = [29, 3, 18] if ratio < 100 else [300, 3, 140]
    seqs, steps = make_steps(lengths, ratio, overlap, d, seed, decode_tail=seed % 2 == 1,
                             max_chunk=9 if ratio < 100 else 70)  # fmt: skip
    cache = Cache(len(lengths), ratio, overlap, d, page_size, max(lengths), seed=seed)
    ref, got = run_both(cache, steps)
    check_float_run(ref, got, seqs)


@pytest.mark.parametrize("ratio,overlap", [(3, True), (8, False), (4, True)])
def test_compress_small_tiles_and_long_chunks(ratio, overlap):
    """BLOCK_S = 2 (online softmax over several slot tiles; a tile straddles the two halves of an
    overlapping window for odd ratios), BLOCK_K = 2 (several rounds of the run-end search), chunks
    much longer than the ring."""
    d = 10
    seqs, steps = make_steps([61, 40, 7], ratio, overlap, d, seed=4, decode_tail=False, max_chunk=30)
    cache = Cache(3, ratio, overlap, d, 2, 61, seed=4)
    ref, got = run_both(cache, steps, config=dict(BLOCK_S=2, BLOCK_K=2, BLOCK_RW=2, BLOCK_W=4))
    check_float_run(ref, got, seqs)


def test_compress_indexer_shape_and_low_precision():
    """d = 128 (indexer compressor, ratio 4, overlap) with bf16 a / b, a bf16 norm weight and a bf16
    pool; then fp16 inputs into an fp16 pool. The pools are rounded to nearest even from fp32 entries
    that agree to a few u: at most one unit of the pool's last place apart."""
    for dt, out in [(torch.bfloat16, "bf16"), (torch.float16, "fp16")]:
        seqs, steps = make_steps([21, 9], 4, True, 128, seed=2, decode_tail=True, dtype=dt)
        cache = Cache(2, 4, True, 128, 4, 21, out=out, seed=2)
        cache.w = cache.w.to(torch.bfloat16)
        ref, got = run_both(cache, steps)
        check_lowp_run(ref, got, 2.0**-7 if out == "bf16" else 2.0**-10)


def test_compress_large_positions_rope():
    """Sequences that start at ~2**20 (the ring prefilled as by earlier steps): fp32 angles up to
    ~1e6 rad, where cos / sin need a full range reduction."""
    d, ratio = 64, 4
    start = (1 << 20) - 6
    seqs, steps = make_steps([23, 11], ratio, True, d, seed=7, decode_tail=True, start=start)
    cache = Cache(2, ratio, True, d, 3, 23, seed=7, start=start)
    cache.freqs = inv_freq(RopeConfig(10000.0), 64)  # inv_freq[0] = 1: angle = position
    cache.state_buf[1:-1] = torch.randn(cache.state_buf[1:-1].shape)  # a valid ring before `start`
    ref, got = run_both(cache, steps)
    check_float_run(ref, got)


def check_fp8_run(ref, got, cache, seqs, steps):
    """FP8 output pools: bytes outside the written records keep the poison; written records within one
    e4m3 step of the tile scale (nope) / one bf16 ulp (rope) of the reference's; under the interpreter
    each record is byte-identical to quantize_rows of the kernel's own fp32 entry."""
    assert torch.equal(_bits(ref.state_buf.nan_to_num(0.0)), _bits(got.state_buf.cpu().nan_to_num(0.0)))
    ps, ratio, d = cache.page_size, cache.ratio, cache.d
    written = torch.zeros_like(ref.out_buf, dtype=torch.bool)
    data_rows = written[:, : ps * 576].view(-1, ps, 576)
    scale_rows = written[:, ps * 576 : ps * 584].view(-1, ps, 8)
    for i, (a, _) in enumerate(seqs):
        for j in range(a.shape[0] // ratio):
            pg, off = int(cache.out_bt[i, j // ps]) + 1, j % ps  # + 1: the guard page
            data_rows[pg, off] = True
            scale_rows[pg, off] = True
    g_bytes = got.out_buf.cpu()
    assert torch.all(g_bytes[~written] == POISON_BYTE) and torch.all(ref.out_buf[~written] == POISON_BYTE)
    pool_ref, pool_got = ref.out, Fp8KVPool(g_bytes[1:-1], ps)
    if INTERPRET:
        fp32_run = cache.clone("cpu")
        fp32_run.out_kind = "fp32"
        fp32_run.out_buf = torch.full((cache.num_pages + 2, ps, d), float("nan"))
        fp32_run = fp32_run.clone(DEVICE)
        replay(fp32_run, steps, backend="triton")
    for i, (a, _) in enumerate(seqs):
        slots = entry_slots(cache, i, a.shape[0] // ratio)
        pages, offs = slots // ps, slots % ps
        want, have = pool_ref.gather_rows(slots), pool_got.gather_rows(slots)
        e = pool_ref._views()[1][pages, offs, :7].float() - 127  # tile exponents [n, 7]
        step = (torch.exp2(e) * 2.0**-3).repeat_interleave(64, 1)  # e4m3 spacing at the tile's top binade
        assert torch.all((have[:, :448] - want[:, :448]).abs() <= step), "nope: more than one e4m3 step"
        assert torch.all((have[:, 448:] - want[:, 448:]).abs() <= want[:, 448:].abs() * 2.0**-7), "rope: > 1 bf16 ulp"
        if INTERPRET:  # on a GPU the fp32 / FP8 variants are two compilations that may contract differently
            data, scales = quantize_rows(fp32_run.out.reshape(-1, d)[slots.to(DEVICE)].cpu())
            data_rows, scale_rows = pool_got._views()
            assert torch.equal(data_rows[pages, offs], data)
            assert torch.equal(scale_rows[pages, offs], scales)


def check_lowp_run(ref, got, step):
    """bf16 / fp16 pools: NaN where the reference left NaN, values at most one unit of the pool's last
    place apart (the fp32 entries agree to a few u before the final rounding); ring bit-identical."""
    o_ref, o_got = ref.out_buf.float(), got.out_buf.cpu().float()
    assert torch.equal(o_ref.isnan(), o_got.isnan())
    m = ~o_ref.isnan()
    assert torch.all((o_got[m] - o_ref[m]).abs() <= step * o_ref[m].abs() + 1e-6)
    assert torch.equal(_bits(ref.state_buf.nan_to_num(0.0)), _bits(got.state_buf.cpu().nan_to_num(0.0)))


def test_compress_fp8_output():
    d, ratio, ps = 512, 4, 2
    seqs, steps = make_steps([21, 6], ratio, True, d, seed=1, decode_tail=False, max_chunk=9)
    cache = Cache(2, ratio, True, d, ps, 21, out="fp8", seed=1)
    ref, got = run_both(cache, steps)
    check_fp8_run(ref, got, cache, seqs, steps)


def test_compress_invalid_pages_and_rows_are_skipped():
    """Output pages -1 / past the pool, a ring page past the state, a token row past both block
    tables: nothing is read or written there (the guard pages and every unwritten entry stay NaN),
    and everything else still equals the reference."""
    d, ratio = 16, 4
    seqs, steps = make_steps([26, 17, 9, 12], ratio, True, d, seed=3, decode_tail=True)
    cache = Cache(3, ratio, True, d, 2, 26, seed=3)  # block tables have 3 rows: sequence 3 has none
    cache.out_bt[0, 1] = -1
    cache.out_bt[1, 0] = cache.num_pages  # past the pool
    cache.out_bt[1, 2] = 1 << 30
    cache.state_bt[2, 0] = cache.state.shape[0]  # a ring page past the state
    ref, got = run_both(cache, steps)
    check_float_run(ref, got)
    assert got.state_buf[0].isnan().all() and got.state_buf[-1].isnan().all()
    assert got.out_buf[0].isnan().all() and got.out_buf[-1].isnan().all()


def test_compress_one_token_batches_and_empty():
    """Pure decode (every batch one token per sequence) and an empty batch."""
    d, ratio = 8, 8
    seqs, steps = make_steps([19, 17], ratio, False, d, seed=6, decode_tail=True, max_chunk=1)
    cache = Cache(2, ratio, False, d, 1, 19, seed=6)
    ref, got = run_both(cache, steps)
    check_float_run(ref, got, seqs)
    empty = (torch.zeros(0, d), torch.zeros(0, d), torch.zeros(0, dtype=torch.int64), torch.zeros(0, dtype=torch.int32))
    before = got.out_buf.clone()
    replay(got, [empty], backend="triton")
    assert torch.equal(before.isnan(), got.out_buf.isnan())


@pytest.mark.slow
@pytest.mark.parametrize("ratio,overlap,out", [(4, True, "bf16"), (128, False, "fp32"), (4, True, "fp8")])
def test_compress_v4_shapes(ratio, overlap, out):
    """d = 512: CSA (ratio 4, overlap, c*d = 1024) and HCA (ratio 128, c*d = 512)."""
    d = 512
    lengths = [300, 130] if ratio == 128 else [45, 13]
    seqs, steps = make_steps(lengths, ratio, overlap, d, seed=8, decode_tail=True, max_chunk=9 if ratio < 100 else 150)
    cache = Cache(2, ratio, overlap, d, 2, max(lengths), out=out, seed=8)
    ref, got = run_both(cache, steps)
    if out == "fp32":
        check_float_run(ref, got, seqs)
    elif out == "bf16":
        check_lowp_run(ref, got, 2.0**-7)
    else:
        check_fp8_run(ref, got, cache, seqs, steps)


# ---------------------------------------------------------------------------------------------------
# NaN / inf (ops/compress/README.md: IEEE pooling; FP8 records: the bytes of quantize_rows)
# ---------------------------------------------------------------------------------------------------
NAN, INF = float("nan"), float("inf")
NEG_NAN = -float("nan")  # sign bit set


def _poison_steps(steps, where):
    """Copies of ``steps`` with a[t, col] / b[t, col] set at (row, position) -> [(tensor, col, value)]."""
    out = []
    for a, b, pos, rows in steps:
        a, b = a.clone(), b.clone()
        for (row, p), edits in where.items():
            hit = ((rows == row) & (pos == p)).nonzero()
            for i in hit.view(-1).tolist():
                for which, col, value in edits:
                    (a if which == "a" else b)[i, col] = value
        out.append((a, b, pos, rows))
    return out


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # numpy: inf - inf
def test_compress_kv_nonfinite_scores():
    """compress_kv (ratio 4, overlap, d = 8; chunks, then decode steps that read earlier tokens back
    from the ring): a NaN score, a +inf score, a NaN value and a -NaN score each make their entry NaN
    (the pooled channel is NaN, then RMSNorm spreads it); a channel whose slots all score -inf pools
    to 0 even with a NaN value in one of them. Other entries equal the reference's; the ring copies
    are bit-exact (NaN payloads included)."""
    d, ratio = 8, 4
    _, steps = make_steps([21, 14], ratio, True, d, seed=3, decode_tail=True)
    edits = {
        (0, 5): [("b", 2, NAN)],  # block 1, half A: entry 2 of sequence 0
        (0, 14): [("b", d + 1, INF)],  # block 3, half B: entry 3
        (1, 3): [("a", d + 3, NAN)],  # block 0, half B: entry 0 of sequence 1
        (1, 5): [("b", 4, NEG_NAN)],  # block 1, half A: entry 2 of sequence 1
    }
    for p in range(12, 16):  # entry 4 of sequence 0, channel 6: half A of block 3 ...
        edits.setdefault((0, p), []).append(("b", 6, -INF))
    for p in range(16, 20):  # ... and half B of block 4 all -inf, one NaN value among them
        edits[(0, p)] = [("b", d + 6, -INF)] + ([("a", d + 6, NAN)] if p == 17 else [])
    steps = _poison_steps(steps, edits)
    cache = Cache(2, ratio, True, d, 2, 21, seed=3)
    ref = cache.clone("cpu")
    replay(ref, steps, backend="reference")
    got = cache.clone(DEVICE)
    replay(got, steps, backend="triton")
    for row, n, nan_entries in ((0, 5, [2, 3]), (1, 3, [0, 2])):
        slots = entry_slots(ref, row, n) + ref.page_size  # + the guard page
        for name, run in (("reference", ref), ("triton", got)):
            e = run.out_buf.cpu().view(-1, d)[slots]
            is_nan = e.isnan().all(-1).tolist()
            assert is_nan == [j in nan_entries for j in range(n)], f"{name}: sequence {row} NaN entries {is_nan}"
            assert torch.isfinite(e[[j for j in range(n) if j not in nan_entries]]).all()
    o_ref, o_got = ref.out_buf, got.out_buf.cpu()
    assert torch.equal(o_ref.isnan(), o_got.isnan()), "NaN mask of the pools"
    fin = ~o_ref.isnan()
    assert float((o_got[fin] - o_ref[fin]).abs().max()) <= 1e-5 * float(o_ref[fin].abs().max())
    assert torch.equal(ref.state_buf.view(torch.int32), got.state_buf.cpu().view(torch.int32)), "ring copies"


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


def _assert_records(data, scales, want_data, want_scales, what):
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


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_append_fp8_nonfinite_rows(dtype):
    rows = fp8_nonfinite_rows().to(dtype)
    T = rows.shape[0]
    pool = Fp8KVPool(torch.full((T, page_bytes(1)), 0xA5, dtype=torch.uint8, device=DEVICE), 1)
    longattn.append_kv(pool, rows.to(DEVICE), torch.arange(T, device=DEVICE), backend="triton")
    data, scales = quantize_rows(rows)
    got = pool.data.cpu()
    _assert_records(got[:, :576], got[:, 576:584], data, scales, str(dtype))
    sign = (rows[1, :128].float().view(torch.int32) < 0).to(torch.uint8) * 0x80  # (a bf16 cast may flip it)
    assert torch.equal(got[1, :128], 0x7F | sign)  # NaN -> 0x7F with the value's sign
    assert bool((got[1, 576:578] == 127).all())  # NaN / inf tiles: e = 0


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.skipif(not INTERPRET, reason="on a GPU the fp32 / FP8 variants are separate compilations")
def test_compress_kv_fp8_nonfinite_entries():
    """compress_kv into an FP8 pool with entries holding NaN (a NaN score), +-inf, -0.0 and subnormals
    (a norm weight with inf, -inf, -0.0, 1e-40): each record equals quantize_rows of the kernel's own
    fp32 entry (the same steps into an fp32 pool)."""
    d, ratio, ps = 512, 4, 2
    _, steps = make_steps([13], ratio, True, d, seed=5, decode_tail=True)
    steps = _poison_steps(steps, {(0, 6): [("b", 9, NAN)]})  # block 1, half A: entry 2 is NaN
    cache = Cache(1, ratio, True, d, ps, 13, out="fp8", seed=5)
    cache.w[3], cache.w[70], cache.w[100], cache.w[200], cache.w[460] = INF, -INF, -0.0, 1e-40, INF
    cache.w[300:364] = 1e-41  # a whole tile of subnormal values
    fp8 = cache.clone(DEVICE)
    replay(fp8, steps, backend="triton")
    f32 = cache.clone("cpu")
    f32.out_kind = "fp32"
    f32.out_buf = torch.full((cache.num_pages + 2, ps, d), NAN)
    f32 = f32.clone(DEVICE)
    replay(f32, steps, backend="triton")
    n = 13 // ratio
    j = torch.arange(n)
    slots = cache.out_bt[0, j // ps].long() * ps + j % ps
    entries = f32.out.reshape(-1, d)[slots.to(DEVICE)].cpu()
    assert bool(entries[2].isnan().all()) and bool(torch.isinf(entries[0]).any())
    assert bool((entries[0] == 0).any()) and bool(((entries[0] != 0) & (entries[0].abs() < 2.0**-126)).any())
    data, scales = quantize_rows(entries)
    pool = Fp8KVPool(fp8.out_buf.cpu()[1:-1], ps)
    data_rows, scale_rows = pool._views()
    _assert_records(data_rows[slots // ps, slots % ps], scale_rows[slots // ps, slots % ps], data, scales, "compress")


# ---------------------------------------------------------------------------------------------------
# dispatch: selection and what the kernels decline
# ---------------------------------------------------------------------------------------------------
def _reasons(op, args):
    return reasons("triton", op, torch.device(DEVICE), **args)


def test_selected_and_declined():
    pool = torch.zeros(3, 4, 8)
    rows, slots = torch.zeros(2, 8), torch.zeros(2, dtype=torch.int32)
    assert _reasons("append_kv", dict(pool=pool, rows=rows, slot_mapping=slots)) == []
    assert _reasons("append_kv", dict(pool=Fp8KVPool.empty(2, 3), rows=torch.zeros(2, 512), slot_mapping=slots)) == []
    odd = torch.zeros(4, 3, 8).transpose(0, 1)  # [3, 4, 8] pages not evenly strided
    assert any("evenly strided" in r for r in _reasons("append_kv", dict(pool=odd, rows=rows, slot_mapping=slots)))
    base = dict(a=torch.zeros(2, 16), b=torch.zeros(2, 16), positions=torch.zeros(2, dtype=torch.int64),
                token_rows=torch.zeros(2, dtype=torch.int32), ratio=4, overlap=True,
                state=torch.zeros(2, 4, 32), state_block_table=torch.zeros(1, 2, dtype=torch.int32),
                out=torch.zeros(2, 2, 8), out_block_table=torch.zeros(1, 2, dtype=torch.int32),
                norm_weight=torch.ones(8), eps=EPS, rope_inv_freq=torch.ones(2))  # fmt: skip
    assert _reasons("compress_kv", base) == []
    odd_d = dict(base, a=torch.zeros(2, 18), b=torch.zeros(2, 18), out=torch.zeros(2, 2, 9), norm_weight=torch.ones(9))
    assert any("even entry width" in r for r in _reasons("compress_kv", odd_d))
    assert any("d=8" in r for r in _reasons("compress_kv", dict(base, out=Fp8KVPool.empty(2, 2))))
    wide = dict(base, a=torch.zeros(2, 4096), b=torch.zeros(2, 4096))
    assert any("d=2048 > 1024" in r for r in _reasons("compress_kv", wide))


# ---------------------------------------------------------------------------------------------------
# end to end: the HybridAttention layer with every op on the Triton backend
# ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["csa", "hca"])
def test_layer_on_triton_matches_dense_float64(kind):
    """The layer's real cache plans (window append, CSA / HCA compressor + indexer compressor, FP32
    pools, page size 3) through chunked prefill and decode schedules, with backend="triton": outputs
    within the layer tests' bound of the dense float64 layer (tests/layers/test_hybrid_attention.py)."""
    from longattn.cache import CacheManager

    from tests.layers.dense_layer import dense_layer, indexer_margin
    from tests.layers.test_hybrid_attention import D, H, make_sequence, schedules, tiny_layer
    from tests.tolerance import U32, attention_bounds

    layer = tiny_layer(kind)
    g = torch.Generator().manual_seed(11)
    lengths = {"a": 29, "b": 13}
    seqs = {nm: make_sequence(layer, S, g) for nm, S in lengths.items()}
    weights = dict(
        attn_sink=torch.randn(H, generator=g),
        compress_norm_weight=1 + 0.1 * torch.randn(D, generator=g),
        index_norm_weight=1 + 0.1 * torch.randn(layer.index_head_dim, generator=g),
    )
    for nm, s in seqs.items():
        assert indexer_margin(layer, s, weights["index_norm_weight"]) > 1e-4, nm
    scheds = schedules(lengths, random.Random(5))
    for how in ("chunked", "decode"):
        r = layer.compress_ratio
        m = CacheManager(ratios=(r,), page_size=3, num_window_pages=64, num_compressed_pages={r: 64},
                         num_state_pages={r: 64}, window=layer.window, device=DEVICE)  # fmt: skip
        att = longattn.HybridAttention(layer, m, kv_dtype=torch.float32, backend="triton")
        dev_weights = {k: v.to(DEVICE) for k, v in weights.items()}
        done = {nm: 0 for nm in seqs}
        outs = {nm: torch.full_like(s["q"], float("nan")) for nm, s in seqs.items()}
        for step in scheds[how]:
            for nm, _ in step:
                if nm not in m:
                    m.add_sequence(nm)
            counts = [n for _, n in step]
            cu = torch.tensor([0] + counts).cumsum(0)
            plan = m.plan([nm for nm, _ in step], cu)
            inputs = {
                k: torch.cat([seqs[nm][k][done[nm] : done[nm] + n] for nm, n in step]).to(DEVICE)
                for k in seqs[step[0][0]]
            }
            out = att(plan, inputs.pop("q"), inputs.pop("kv"), **inputs, **dev_weights).cpu()
            for (nm, n), t0 in zip(step, cu[:-1].tolist()):
                outs[nm][done[nm] : done[nm] + n] = out[t0 : t0 + n]
                done[nm] += n
        for nm, s in seqs.items():
            ref = dense_layer(
                layer, s, weights["attn_sink"], weights["compress_norm_weight"], weights["index_norm_weight"]
            )
            out_atol, _, _ = attention_bounds(
                s["q"], torch.cat([s["kv"], torch.ones(1, D) * 4]), layer.softmax_scale, 200, torch.float32, True
            )
            assert not torch.isnan(outs[nm]).any(), f"{how}: unwritten outputs"
            err = (outs[nm].double() - ref).abs().max().item()
            assert err <= out_atol + 64 * U32, f"{kind} {how} seq {nm}: error {err:.2e} vs dense float64"
