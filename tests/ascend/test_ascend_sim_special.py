"""The Ascend C kernels (``backend="ascend_sim"``) on special values and bad positions.

The package's contract for non-finite inputs, checked kernel by kernel against the reference backend
and, where the reference is not the rule yet, against the rule written out here in float64:

* FP8 records (append_kv / compress_kv into an ``Fp8KVPool``): byte for byte
  ``longattn.cache.fp8.quantize_rows`` for every input (NaN, +-inf, -0.0, fp32 subnormals, values
  above 448): a tile holding an inf or a NaN gets e = 0 (scale byte 127), values saturate at +-448,
  NaN -> 0x7F | sign; rope dims bf16 RNE with NaN -> 0x7FC0.
* compress_kv positions are int64 absolute positions (>= 2**31 and up to 2**63 - 1 work; negative
  ones emit nothing and go to the ring slot floor_mod(p, c * ratio) like the reference's).
* compress_kv gate scores: IEEE softmax per channel (all -inf / absent -> 0; NaN / +inf score ->
  NaN; a NaN value propagates even with weight 0).
* indexer_topk: a NaN score ranks as +inf whatever its sign (ties by the smaller id) and is usable.
* sparse_attention: NaN logit -> out NaN, lse NaN; +inf logit -> lse +inf, out NaN; -inf logits weigh
  0; all used logits -inf -> out 0, lse -inf.
"""

from __future__ import annotations

import math

import longattn
import pytest
import torch
from longattn.backends import ascend_sim
from longattn.cache.fp8 import DATA_BYTES, NOPE_DIM, SCALE_BYTES, quantize_rows

from tests import oracle

pytestmark = pytest.mark.skipif(
    ascend_sim.BACKEND.unavailable is not None, reason=f"ascend_sim: {ascend_sim.BACKEND.unavailable}"
)
SIM = "ascend_sim"
NAN, INF = float("nan"), float("inf")
FLOATS = [torch.float32, torch.bfloat16, torch.float16]


def _neg_nan(shape=()):
    """A NaN with its sign bit set (0xFFC00000)."""
    return torch.full(shape, -1, dtype=torch.int32).mul_(1 << 22).view(torch.float32)


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal values (infinities included), NaN exactly where the other has NaN."""
    nan = torch.isnan(a)
    return a.shape == b.shape and bool(torch.equal(nan, torch.isnan(b))) and bool(torch.equal(a[~nan], b[~nan]))


# ----------------------------------------------------------------------------------------------------
# FP8 records
# ----------------------------------------------------------------------------------------------------
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
    r[70] = _neg_nan()
    r[71] = 1e-42  # -NaN tile
    r[130], r[131], r[132], r[133], r[134] = INF, -INF, 500.0, -1e-40, 460.0  # inf tile
    r[192:256] = NAN  # all-NaN tile
    r[256:320] *= 1e5  # finite tile above 448: e > 0
    r[320:384] = torch.randn(64, generator=g) * 1e-39  # fp32 subnormals only: e = -13
    r[384:448] = torch.tensor([0.0, -0.0] * 32)  # zeros of both signs
    r[448], r[449], r[450], r[451], r[452] = NAN, _neg_nan(), INF, -INF, -0.0  # rope specials
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
            rows[i, torch.randint(0, 512, (3,), generator=g)] = _neg_nan((3,))
    return rows


@pytest.mark.parametrize("rows_dtype", FLOATS, ids=str)
@pytest.mark.parametrize("page", [1, 5])
def test_append_kv_fp8_special_values_bytes_exact(rows_dtype, page):
    g = torch.Generator().manual_seed(21)
    n = 12
    rows32 = special_rows(n, g)
    rows = rows32.to(rows_dtype)  # bf16 / fp16: the specials that exist there (fp16: > 65504 -> inf)
    if rows_dtype == torch.float32:  # keep the -NaN bit patterns exactly
        rows = rows32
    pages = -(-n // page) + 1
    slots = torch.randperm(pages * page, generator=g)[:n]
    slots[5] = -1
    pool = longattn.Fp8KVPool.empty(pages, page)
    ref = longattn.Fp8KVPool.empty(pages, page)
    pool.data.fill_(0x5A)
    ref.data.fill_(0x5A)
    longattn.append_kv(pool, rows, slots, backend=SIM)
    longattn.append_kv(ref, rows, slots, backend="reference")
    data, scales = expected_records(rows.float())
    want = place_records(torch.full_like(pool.data, 0x5A), page, slots, data, scales)
    diff = (pool.data != want).nonzero()
    assert diff.numel() == 0, (
        f"{diff.shape[0]} bytes differ from quantize_rows, first at {diff[:4].tolist()}: "
        f"{[(int(pool.data[p, c]), int(want[p, c])) for p, c in diff[:4].tolist()]}"
    )
    # The reference's own bytes: identical except the NaN rope values (0xFFFF from torch's cast).
    assert (pool.data != ref.data).sum() <= 2 * int(torch.isnan(rows.float()[:, NOPE_DIM:]).sum())


def test_append_kv_fp8_special_tile_scales():
    """Scale bytes by hand: NaN / inf tiles 127, a finite tile above 448 e > 0, subnormals e = -13."""
    g = torch.Generator().manual_seed(22)
    rows = special_rows(3, g)
    pool = longattn.Fp8KVPool.empty(1, 3)
    longattn.append_kv(pool, rows, torch.arange(3), backend=SIM)
    scale_row0 = pool.data[0, 3 * DATA_BYTES : 3 * DATA_BYTES + 8].tolist()
    e5 = oracle.ue8m0_scale_exponent(rows[0, 256:320].abs().max().item())
    assert scale_row0 == [127, 127, 127, 127, e5 + 127, 127 - 13, 127 - 13, 0]
    codes = pool.data[0, :448]
    assert codes[3] == 0x7F and codes[4] == 0x7E and codes[5] == 0xFE  # NaN, 1000 -> 448, -3000 -> -448
    assert codes[70] == 0xFF and codes[130] == 0x7E and codes[131] == 0xFE and codes[132] == 0x7E
    assert codes[133] == 0x80 and codes[384 + 1] == 0x80 and codes[384] == 0x00  # -tiny, -0.0, +0.0
    rope = pool.data[0, 448:576].view(torch.int16)
    assert rope[:5].tolist() == [0x7FC0, 0x7FC0, 0x7F80, -128, -32768]  # NaN, -NaN, inf, -inf, -0.0


# ----------------------------------------------------------------------------------------------------
# compress_kv: positions
# ----------------------------------------------------------------------------------------------------
def _compress_args(d, ratio, overlap, rope_dim=0, eps=1e-6, weight=None):
    from longattn.configs import RopeConfig
    from longattn.rope import inv_freq

    freqs = inv_freq(RopeConfig(160000.0), rope_dim) if rope_dim else torch.zeros(0)
    w = torch.linspace(0.5, 1.5, d) if weight is None else weight
    return dict(ratio=ratio, overlap=overlap, norm_weight=w, eps=eps, rope_inv_freq=freqs)


def _run_both(steps, d, ratio, overlap, state_shape, out_factory, state_bt, out_bt, fill=NAN, **kw):
    """Feed the same steps (a, b, positions, rows) to both backends; return (states, outs). RoPE on the
    last 8 dims (the reference's apply_rope needs at least one pair)."""
    states = [torch.full(state_shape, fill) for _ in range(2)]
    outs = [out_factory() for _ in range(2)]
    args = _compress_args(d, ratio, overlap, rope_dim=kw.pop("rope_dim", 8), **kw)
    for a, b, pos, rows in steps:
        for be, st, out in zip((SIM, "reference"), states, outs):
            longattn.compress_kv(
                a, b, pos, rows.int(), state=st, out=out, state_block_table=state_bt, out_block_table=out_bt,
                backend=be, **args,
            )  # fmt: skip
        assert torch.equal(states[0].nan_to_num(1234.5), states[1].nan_to_num(1234.5)), "state rings differ"
    return states, outs


def test_compress_kv_positions_past_int32():
    """Positions around 2**31 (entries around 2**29): written to their own slots, never to entry 0."""
    d, ratio, page = 16, 4, 2**19
    g = torch.Generator().manual_seed(31)
    p0 = 2**31 - 6
    n = 16
    a, b = torch.randn(n + 2, 2 * d, generator=g), torch.randn(n + 2, 2 * d, generator=g)
    pos = torch.arange(p0, p0 + n + 2, dtype=torch.int64)
    rows = torch.zeros(n + 2, dtype=torch.int32)
    cols = (p0 + n + 2) // ratio // page + 1  # 1025 logical pages: entries 2**29 - 2 .. 2**29 + 2
    out_bt = torch.full((1, cols), -1, dtype=torch.int32)
    out_bt[0, 0] = 0  # entry 0's page exists: a truncated position would overwrite it
    out_bt[0, (p0 // ratio) // page] = 0
    out_bt[0, cols - 1] = 1
    steps = [(a[:n], b[:n], pos[:n], rows[:n]), (a[n:], b[n:], pos[n:], rows[n:])]  # then decode tokens
    state_bt = torch.tensor([[1]], dtype=torch.int32)
    _, outs = _run_both(  # ring slots before the first token hold zeros (read as present positions)
        steps, d, ratio, True, (2, 2 * ratio, 4 * d), lambda: torch.zeros(2, page, d), state_bt, out_bt, fill=0.0
    )
    written = outs[1].abs().sum(-1) > 0
    assert int(written.sum()) == 5 and not bool(written[0, 0])  # 5 entries, none of them entry 0
    assert torch.equal(written, outs[0].abs().sum(-1) > 0)
    torch.testing.assert_close(outs[0], outs[1], atol=2e-5, rtol=2e-5)


def test_compress_kv_positions_near_int64_max():
    """Positions up to 2**63 - 1: the ring gets the tokens (slot p mod ring), no entry has a page."""
    d, ratio = 16, 4
    g = torch.Generator().manual_seed(32)
    top = 2**63 - 1
    pos = torch.tensor([top - 9 + i for i in range(10)], dtype=torch.int64)
    a, b = torch.randn(10, 2 * d, generator=g), torch.randn(10, 2 * d, generator=g)
    rows = torch.zeros(10, dtype=torch.int32)
    out_bt = torch.zeros(1, 3, dtype=torch.int32)
    state_bt = torch.tensor([[0, 1]], dtype=torch.int32)
    states, outs = _run_both(
        [(a[:7], b[:7], pos[:7], rows[:7]), (a[7:], b[7:], pos[7:], rows[7:])], d, ratio, True,
        (2, ratio, 4 * d), lambda: torch.zeros(1, 4, d), state_bt, out_bt,
    )  # fmt: skip
    assert not torch.isnan(states[0]).any()  # every ring slot written (the last 8 positions)
    assert torch.equal(outs[0], outs[1]) and outs[0].abs().sum() == 0


def test_compress_kv_negative_positions_match_reference():
    """Negative positions: no entry is written for them (entry 0 stays untouched) and they are absent
    from every window; a token at a negative position still goes to its ring slot floor_mod(p, ring)
    when it is among the last ring positions of its chunk, exactly as the reference."""
    d, ratio = 16, 4
    g = torch.Generator().manual_seed(33)
    # row 0: padding-like chunk [-3, -2, -1]; row 1: a decode token at -1; row 2: a chunk from -2 to 5;
    # row 3: a chunk [-9, -8]; row 4: a very negative position. (At -2**63 the reference's
    # `p > chunk_end - ring` wraps around in int64 for chunks of several tokens; the kernel compares
    # exactly, as the reference's decode-batch path does: not tested there.)
    pos = torch.tensor([-3, -2, -1, -1, -2, -1, 0, 1, 2, 3, 4, 5, -9, -8, -(2**62)], dtype=torch.int64)
    rows = torch.tensor([0, 0, 0, 1, 2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 4], dtype=torch.int32)
    T = pos.numel()
    a, b = torch.randn(T, 2 * d, generator=g), torch.randn(T, 2 * d, generator=g)
    out_bt = torch.arange(5, dtype=torch.int32).view(5, 1)
    state_bt = torch.arange(5, dtype=torch.int32).view(5, 1)
    marker = 7.0

    def pool():
        return torch.full((5, 4, d), marker)

    states, outs = _run_both([(a, b, pos, rows)], d, ratio, True, (5, 2 * ratio, 4 * d), pool, state_bt, out_bt)
    torch.testing.assert_close(outs[0], outs[1], atol=2e-5, rtol=2e-5)  # online vs two-pass softmax
    assert bool((outs[0][[0, 1, 3, 4]] == marker).all())  # rows without a position >= 0: nothing written
    assert bool((outs[0][2, 0] != marker).all()) and bool((outs[0][2, 1:] == marker).all())  # entry 0 of row 2


# ----------------------------------------------------------------------------------------------------
# compress_kv: gate scores
# ----------------------------------------------------------------------------------------------------
def pool_rule(scores: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """The package rule in float64: scores/values [slots, d] of the present slots -> [d]."""
    s, v = scores.double(), values.double()
    out = torch.zeros(s.shape[1], dtype=torch.float64)
    for k in range(s.shape[1]):
        sk, vk = s[:, k], v[:, k]
        if sk.numel() == 0 or bool((sk == -INF).all()):
            continue  # no present slot with a score above -inf: 0
        m = sk.max()  # NaN if any NaN (torch.max propagates it)
        w = torch.exp(sk - m)
        out[k] = (w * vk).sum() / w.sum()
    return out


def compress_rule_entries(a, b, pos, ratio, overlap, weight, eps):
    """Entries {j: [d] float64} of one sequence given as one batch starting at pos[0] (nothing in the
    ring): pooled by the rule, then RMSNorm (no RoPE)."""
    c = 2 if overlap else 1
    d = a.shape[1] // c
    ring = c * ratio
    first = int(pos[0])
    res = {}
    for t, p in enumerate(int(x) for x in pos):
        if p < 0 or (p + 1) % ratio:
            continue
        sc, va = [], []
        for i in range(ring):
            q = p - ring + 1 + i
            if q < 0 or q < first:
                continue  # absent (before position 0 / before this test's first token: no ring)
            half = d if (overlap and i >= ratio) else 0
            tq = t - (p - q)
            sc.append(b[tq, half : half + d])
            va.append(a[tq, half : half + d])
        sc = torch.stack(sc) if sc else torch.zeros(0, d)
        va = torch.stack(va) if va else torch.zeros(0, d)
        e = pool_rule(sc, va)
        e = e * torch.rsqrt(e.pow(2).mean() + eps) * weight.double()
        res[p // ratio] = e
    return res


@pytest.mark.parametrize("overlap", [True, False])
def test_compress_kv_nonfinite_gate_scores(overlap):
    d, ratio = 16, 4
    c = 2 if overlap else 1
    T = 24
    g = torch.Generator().manual_seed(41)
    a = torch.randn(T, c * d, generator=g)
    b = torch.randn(T, c * d, generator=g) * 2
    hb = d if overlap else 0  # the own block's channel half (a NaN channel makes its whole entry NaN
    # through the RMSNorm, so each entry gets one kind of special channel)
    b[0:4, hb + 0] = -INF  # entry 0: channel 0 all -inf -> 0
    b[0:4, hb + 1] = -INF  # channel 1 all -inf with NaN values -> 0
    a[0:4, hb + 1] = NAN
    b[5, hb + 2] = -INF  # entry 1: a -inf slot holding a NaN value, others finite -> NaN
    a[5, hb + 2] = NAN
    b[8:10, hb + 6] = -INF  # entry 2: -inf scores first, then finite ones (weights 0, not NaN)
    b[8:11, hb + 7] = -INF
    b[8:12, hb + 9] = -1e30  # huge negative finite scores: an ordinary softmax
    b[14, hb + 3] = INF  # entry 3: a +inf score -> NaN
    b[17, hb + 4] = _neg_nan()  # entry 4: a (-)NaN score -> NaN
    a[21, hb + 8] = INF  # entry 5: an inf value with a finite weight -> inf -> NaN after the RMSNorm
    pos = torch.arange(T)
    rows = torch.zeros(T, dtype=torch.int32)
    w = torch.linspace(0.5, 1.5, d)
    want = compress_rule_entries(a, b, pos, ratio, overlap, w, 1e-6)
    outs = []
    for be in (SIM, "reference"):  # RoPE on the last 8 dims (the reference's apply_rope needs a pair)
        state = torch.full((1, c * ratio, 2 * c * d), NAN)
        out = torch.full((2, 4, d), 7.0)
        longattn.compress_kv(
            a, b, pos, rows, state=state, out=out, state_block_table=torch.zeros(1, 1, dtype=torch.int32),
            out_block_table=torch.tensor([[0, 1]], dtype=torch.int32), backend=be,
            **_compress_args(d, ratio, overlap, rope_dim=8, weight=w),
        )  # fmt: skip
        outs.append(out)
    torch.testing.assert_close(outs[0], outs[1], atol=2e-5, rtol=2e-5, equal_nan=True)  # the reference's rule
    # and the rule in float64 (no RoPE)
    state = torch.full((1, c * ratio, 2 * c * d), NAN)
    out = torch.full((2, 4, d), 7.0)
    longattn.compress_kv(
        a, b, pos, rows, state=state, out=out, state_block_table=torch.zeros(1, 1, dtype=torch.int32),
        out_block_table=torch.tensor([[0, 1]], dtype=torch.int32), backend=SIM,
        **_compress_args(d, ratio, overlap, weight=w),
    )  # fmt: skip
    got = out.view(-1, d)
    assert sorted(want) == list(range(T // ratio))
    nan_entries = [j for j, e in want.items() if torch.isnan(e).any()]
    assert nan_entries == [1, 3, 4, 5] and (want[0][:2] == 0).all()
    for j, e in want.items():
        assert torch.equal(torch.isnan(got[j]), torch.isnan(e)), (j, got[j], e)
        fin = ~torch.isnan(e)
        torch.testing.assert_close(got[j][fin].double(), e[fin], atol=1e-5, rtol=1e-5)


def test_compress_kv_nonfinite_gate_scores_through_the_ring():
    """The same rule when the window's earlier positions come from the ring (fp32 copies, NaN kept)."""
    d, ratio = 8, 4
    T = 16
    g = torch.Generator().manual_seed(42)
    a, b = torch.randn(T, 2 * d, generator=g), torch.randn(T, 2 * d, generator=g)
    b[0:4, 3] = -INF  # entry 1 (computed in the 2nd call): half A of block 0, from the ring, all -inf
    b[4:8, 0] = -INF  # entry 2 (3rd call): channel 0 half A (positions 4..8 from the ring) all -inf ...
    b[8:12, d + 0] = -INF  # ... and half B too: 0
    b[8, 1] = NAN  # entry 3: a NaN score at position 8 (from the ring) -> NaN
    b[12:16, d + 2] = -INF  # and an own half all -inf with NaN values (half A finite) -> NaN as well
    a[12:16, d + 2] = NAN
    pos = torch.arange(T)
    rows = torch.zeros(T, dtype=torch.int32)
    w = torch.ones(d)
    want = compress_rule_entries(a, b, pos, ratio, True, w, 1e-6)
    state = torch.full((1, 2 * ratio, 4 * d), NAN)
    out = torch.full((1, 4, d), 7.0)
    kw = dict(
        state=state, out=out, state_block_table=torch.zeros(1, 1, dtype=torch.int32),
        out_block_table=torch.zeros(1, 1, dtype=torch.int32), backend=SIM, **_compress_args(d, ratio, True, weight=w),
    )  # fmt: skip
    for s0, s1 in ((0, 6), (6, 9), (9, 16)):  # windows cross the chunk boundaries
        longattn.compress_kv(a[s0:s1], b[s0:s1], pos[s0:s1], rows[s0:s1], **kw)
    got = out.view(-1, d)
    for j, e in want.items():
        assert torch.equal(torch.isnan(got[j]), torch.isnan(e)), (j, got[j], e)
        fin = ~torch.isnan(e)
        torch.testing.assert_close(got[j][fin].double(), e[fin], atol=1e-5, rtol=1e-5)
    assert torch.isnan(got[3]).all() and not torch.isnan(got[:3]).any() and got[2, 0] == 0


def test_compress_kv_fp8_records_of_special_entries():
    """compress_kv into an FP8 pool writes exactly quantize_rows of the kernel's own fp32 entry (the
    same call into an fp32 pool gives that entry): NaN entries (NaN / +inf scores), entries above 448,
    fp32 subnormal and -0.0 channels (norm weights), all -inf channels (0)."""
    d, ratio, T = 512, 4, 16
    g = torch.Generator().manual_seed(43)
    a, b = torch.randn(T, 2 * d, generator=g), torch.randn(T, 2 * d, generator=g)
    b[2, d + 5] = NAN  # entry 0: NaN
    b[6, d + 9] = INF  # entry 1: NaN (and entry 2 via half A? no: half A of block 1 is channel < d)
    b[8:12, d + 3] = -INF  # entry 2: channel 3 pools to 0 (half A of block 1 is finite: not 0)
    b[4:8, 3] = -INF  # ... now all -inf: 0
    w = torch.linspace(-3.0, 3.0, d) * 1e3  # entries above 448 (e > 0) and -0.0 where the weight is -0.0
    w[128:192] = 1e-41  # a tile of fp32 subnormals
    w[200] = -0.0
    w[320:384] = 0.0  # a tile of zeros
    pos = torch.arange(T)
    rows = torch.zeros(T, dtype=torch.int32)
    args = _compress_args(d, ratio, True, rope_dim=64, weight=w)
    common = dict(state_block_table=torch.zeros(1, 1, dtype=torch.int32),
                  out_block_table=torch.tensor([[1, 0]], dtype=torch.int32), backend=SIM, **args)  # fmt: skip
    f32 = torch.zeros(2, 4, d)
    longattn.compress_kv(a, b, pos, rows, state=torch.zeros(1, 2 * ratio, 4 * d), out=f32, **common)
    fp8 = longattn.Fp8KVPool.empty(2, 4)
    fp8.data.fill_(0x5A)
    longattn.compress_kv(a, b, pos, rows, state=torch.zeros(1, 2 * ratio, 4 * d), out=fp8, **common)
    entries = f32[1]  # entries 0..3: logical page 0 is physical page 1
    assert torch.isnan(entries[0]).all() and torch.isnan(entries[1]).all() and not torch.isnan(entries[2:]).any()
    assert (entries[2:, 320:384] == 0).all() and (entries[2, 3] == 0) and (entries[2:].abs().max() > 448)
    data, scales = expected_records(entries)
    want = place_records(torch.full_like(fp8.data, 0x5A), 4, [4, 5, 6, 7], data, scales)
    diff = (fp8.data != want).nonzero()
    assert diff.numel() == 0, f"{diff.shape[0]} bytes differ, first at {diff[:4].tolist()}"
    scale_rows = want[1, 4 * DATA_BYTES : 4 * DATA_BYTES + 32].view(4, 8)  # entries 0..3
    assert scale_rows[0, :7].tolist() == [127] * 7 and scale_rows[1, :7].tolist() == [127] * 7


# ----------------------------------------------------------------------------------------------------
# indexer_topk: NaN scores
# ----------------------------------------------------------------------------------------------------
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


@pytest.mark.parametrize("dtype", FLOATS, ids=str)
@pytest.mark.parametrize("topk", [8, 40])
def test_indexer_topk_nan_scores_rank_as_plus_inf(dtype, topk):
    T, Hi, Di, N = 6, 4, 32, 300
    g = torch.Generator().manual_seed(topk)
    q = torch.randint(-2, 3, (T, Hi, Di), generator=g).to(dtype)
    w = torch.randint(-2, 3, (T, Hi), generator=g).float()
    w[:, 0] = 1.0
    k = torch.randint(-2, 3, (N, Di), generator=g).to(dtype)
    q[0, 1, 5] = NAN  # token 0: every score NaN (NaN reaches every entry through head 1)
    k[7, 3] = NAN  # entries 7, 150: NaN scores for every token
    k[150, 0] = NAN
    k[151] = _neg_nan((Di,)).to(dtype)  # -NaN bits
    k[[20, 21, 140]] = 0  # huge keys, one non-zero dim (so q . k has one product: no order effects)
    k[20, 0] = 3e4 if dtype == torch.float16 else 3e38  # +inf / -inf / NaN (0 * inf) scores
    k[21, 0] = -k[20, 0]
    k[140, 0] = k[20, 0]
    q[1, 0] = 1.0  # token 1, head 0: <q, k20> = +inf, w = 1 -> +inf score (ties with the NaN entries)
    q[2] = 0.0  # token 2: 0 * huge = 0 except NaN keys
    q[3, :, 0] = 60000.0 if dtype == torch.float16 else 3e38  # token 3: overflow -> +-inf products
    ve = torch.tensor([300, 300, 160, 250, 5, 0], dtype=torch.int32)  # token 4: 5 entries; token 5 none
    logits = longattn.indexer_logits(q, w, k, ve, backend=SIM)
    ref_logits = longattn.indexer_logits(q, w, k, ve, backend="reference")
    assert _same(logits, ref_logits), "logits (NaN included) differ from the reference"
    assert torch.isnan(logits[0, :300]).all() and torch.isnan(logits[1, 7])
    usable = torch.arange(N).unsqueeze(0) < ve.unsqueeze(1)
    want_idx, want_len = topk_rule(ref_logits, usable, topk)
    idx, ln = longattn.indexer_topk(q, w, k, ve, topk, backend=SIM)
    assert torch.equal(ln, want_len), (ln, want_len)
    assert torch.equal(idx, want_idx), (idx, want_idx)
    ridx, rln = longattn.indexer_topk(q, w, k, ve, topk, backend="reference")
    assert torch.equal(ridx, want_idx) and torch.equal(rln, want_len), "the reference does not follow the NaN rule"
    assert idx[0].tolist() == list(range(topk)) and int(ln[0]) == topk  # all NaN: ids 0.. (was length 0)


def test_indexer_topk_nan_scores_paged():
    B, max_pages, page, Di, Hi = 2, 4, 16, 16, 2
    P = B * max_pages + 1
    g = torch.Generator().manual_seed(5)
    q = torch.randint(-2, 3, (4, Hi, Di), generator=g).float()
    w = torch.ones(4, Hi)
    pool = torch.randint(-2, 3, (P, page, Di), generator=g).float()
    bt = torch.randperm(P, generator=g)[: B * max_pages].view(B, max_pages).int()
    bt[1, 1] = -1  # entries 16..31 of sequence 1 are not usable
    pool[bt[0, 2], 3, 0] = NAN  # sequence 0, entry 35
    q[2, 0, 0] = NAN  # token 2: all NaN
    seq = torch.tensor([0, 1, 1, 0], dtype=torch.int32)
    ve = torch.tensor([64, 64, 40, 36], dtype=torch.int32)
    kw = dict(block_table=bt, seq_ids=seq)
    ref_logits = longattn.indexer_logits(q, w, pool, ve, backend="reference", **kw)
    assert _same(longattn.indexer_logits(q, w, pool, ve, backend=SIM, **kw), ref_logits)
    usable = torch.zeros(4, max_pages * page, dtype=torch.bool)
    for t in range(4):
        for j in range(int(ve[t])):
            usable[t, j] = bool(bt[seq[t], j // page] >= 0)
    want_idx, want_len = topk_rule(ref_logits, usable, 20)
    idx, ln = longattn.indexer_topk(q, w, pool, ve, 20, backend=SIM, **kw)
    assert torch.equal(idx, want_idx) and torch.equal(ln, want_len)
    assert all(
        torch.equal(x, y)
        for x, y in zip(longattn.indexer_topk(q, w, pool, ve, 20, backend="reference", **kw), (idx, ln))
    )
    assert idx[2].tolist() == list(range(16)) + [32, 33, 34, 35]  # the NaN token skips the missing page


@pytest.mark.parametrize("q_dtype", [torch.float16, torch.bfloat16], ids=str)
def test_indexer_mixed_dtypes_are_widened_not_rounded(q_dtype):
    """q in 16 bits, index_k fp32 (huge and non-integer values): the host widens both to fp32 (exact)
    instead of rounding the keys to q's dtype (fp16 overflowed 1e30 to inf: NaN scores; bf16 lost bits
    the reference keeps)."""
    T, Hi, Di, N = 3, 4, 32, 200
    g = torch.Generator().manual_seed(61)
    q = torch.randint(-2, 3, (T, Hi, Di), generator=g).to(q_dtype)
    w = torch.randint(-2, 3, (T, Hi), generator=g).float()
    k = torch.randn(N, Di, generator=g)
    k[[3, 50, 120], 5] = 1e30  # beyond fp16
    ve = torch.tensor([200, 150, 7])
    logits = longattn.indexer_logits(q, w, k, ve, backend=SIM)
    ref = longattn.indexer_logits(q, w, k, ve, backend="reference")
    assert not torch.isnan(ref).any() and not torch.isnan(logits).any()
    torch.testing.assert_close(logits, ref, atol=1e-4, rtol=1e-5)
    idx, ln = longattn.indexer_topk(q, w, k, ve, 16, backend=SIM)
    ridx, rln = longattn.indexer_topk(q, w, k, ve, 16, backend="reference")
    assert torch.equal(ln, rln) and torch.equal(idx[:, :3], ridx[:, :3])  # the huge entries lead


# ----------------------------------------------------------------------------------------------------
# sparse_attention: non-finite logits
# ----------------------------------------------------------------------------------------------------
def attention_rule(q, kv, indices, scale, sink):
    """(out [T, H, D], lse [T, H]) float64 by the rule, classifying the fp32 logits (the kernels and
    the reference compute q . k in fp32: overflow to +-inf happens there); finite rows by the oracle."""
    T, H, D = q.shape
    out, lse = oracle.sparse_attention(q, kv, indices, attn_sink=sink, softmax_scale=scale)
    for t in range(T):
        keys = [int(i) for i in indices[t].tolist() if 0 <= int(i) < kv.shape[0]]
        if not keys:
            continue
        logits = (q[t].float() @ kv[keys].float().T) * scale  # [H, n]
        for h in range(H):
            lg = logits[h]
            if torch.isnan(lg).any():
                out[t, h], lse[t, h] = NAN, NAN
            elif torch.isposinf(lg).any():
                out[t, h], lse[t, h] = NAN, INF
            elif torch.isneginf(lg).all():
                out[t, h], lse[t, h] = 0.0, -INF
    return out, lse


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("sink", [None, "finite"])
def test_sparse_attention_nonfinite_logits(dtype, sink):
    T, H, D, N = 7, 4, 64, 160
    g = torch.Generator().manual_seed(51)
    kv = torch.randn(N, D, generator=g)
    kv[:140, :4] = 0.0  # ordinary keys: q rows of 1e19 in dims 0..3 give them ordinary logits
    kv[150, 3] = NAN  # a NaN key
    kv[151] = 1e19  # with q[:4] = 1e19: +inf logit (4 products of 1e38 overflow); -inf with -1e19
    kv[152] = -1e19
    q = torch.randn(T, H, D, generator=g)
    idx = torch.randint(0, 140, (T, 100), generator=g)  # two 64-key blocks
    q[1, 0, 7] = NAN  # token 1 head 0: NaN
    idx[2, 80] = 150  # token 2: the NaN key in the second block: every head NaN
    q[3, 1, :4] = 1e19  # token 3 head 1: +inf logit with key 151 (first block), -inf with 152
    q[3, 2, :4] = -1e19  # head 2: +inf with 152 (second block), -inf with 151
    idx[3, 10], idx[3, 90] = 151, 152
    q[4, 0, :4] = 1e19  # token 4 head 0: every used logit -inf (key 152 only): out 0, lse -inf
    idx[4, :] = 152
    idx[4, 50:] = -1
    q[5, 0, :4] = 1e19  # token 5 head 0: a first block of -inf logits, then ordinary ones
    idx[5, :64] = 152
    sink_t = torch.randn(H, generator=g) if sink else None
    q, kv = q.to(dtype), kv.to(dtype)
    scale = D**-0.5
    out, lse = longattn.sparse_attention(q, kv, idx, attn_sink=sink_t, softmax_scale=scale, backend=SIM)
    want_out, want_lse = attention_rule(q, kv, idx, scale, sink_t)
    for t, h, what in [(1, 0, "nan"), (2, 3, "nan"), (3, 1, "inf"), (3, 2, "inf"), (4, 0, "empty")]:
        if what == "nan":
            assert torch.isnan(want_lse[t, h]) and torch.isnan(want_out[t, h]).all()
        elif what == "inf":
            assert want_lse[t, h] == INF and torch.isnan(want_out[t, h]).all()
        else:
            assert want_lse[t, h] == -INF and (want_out[t, h] == 0).all()
    assert torch.isfinite(want_lse[5, 0])  # the -inf block, then finite logits
    assert torch.equal(torch.isnan(lse), torch.isnan(want_lse)), (lse, want_lse)
    assert torch.equal(torch.isinf(lse), torch.isinf(want_lse.float())) and torch.equal(
        lse[torch.isinf(lse)], want_lse.float()[torch.isinf(lse)]
    )
    assert torch.equal(torch.isnan(out), torch.isnan(want_out)), "NaN rows of out"
    assert bool(torch.isfinite(lse[~torch.isnan(want_lse) & ~torch.isinf(want_lse)]).all())
    # values: rows of ordinary keys (tokens with keys 151 / 152 have huge finite logits elsewhere)
    fin = torch.isfinite(want_lse)
    fin[3:6] = False
    fin[5, 0] = True
    tol = 1e-4 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(lse[fin].double(), want_lse[fin], atol=tol, rtol=0)
    torch.testing.assert_close(out[fin].double(), want_out[fin], atol=tol, rtol=tol)
    assert (out[4, 0] == 0).all()
    # The reference backend follows the same rule on these inputs (one softmax: no split of the keys).
    ref_out, ref_lse = longattn.sparse_attention(q, kv, idx, attn_sink=sink_t, softmax_scale=scale, backend="reference")
    assert torch.equal(torch.isnan(ref_lse), torch.isnan(lse)) and torch.equal(torch.isnan(ref_out), torch.isnan(out))
    assert torch.equal(ref_lse[torch.isinf(ref_lse)], lse[torch.isinf(ref_lse)])
