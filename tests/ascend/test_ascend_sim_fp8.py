"""The Ascend C ``sparse_attention`` kernel over FP8 pools (``Fp8KVPool``) on the emulator: the e4m3 /
UE8M0 decode of its vector gather (ascend_c/common/fp8_dequant.h) and the gather's pool mixes.

The decode is seen through single-key attention with q = 0: every logit is 0, p = 1, so out is the key
row itself (P.V = 1 * v exactly, the rescale and the 1 / l factor are exact), rounded once to q's dtype
(bf16: the gather's Cast; fp16: the kernel computes in fp32 and the host rounds out, as the reference).
A zero's sign does not survive the sum of P.V (-0 + 0 = +0), so zeros compare by value; a record
holding a NaN or an inf gives a NaN logit (0 * inf) and so an all-NaN row, as in the reference.
The other cases compare with the float64 oracle of the dequantised rows (tests/helpers/sparse.py).
Shapes are small: the emulator runs every vector instruction as a host loop.
"""

from __future__ import annotations

import longattn
import pytest
import torch
from longattn.backends import ascend_sim
from longattn.cache import Fp8KVPool, dequantize_kv_fp8, quantize_kv_fp8
from longattn.cache.fp8 import dequantize_rows, page_bytes

from tests.helpers.sparse import check_sparse

pytestmark = pytest.mark.skipif(
    ascend_sim.BACKEND.unavailable is not None, reason=f"ascend_sim: {ascend_sim.BACKEND.unavailable}"
)
SIM = "ascend_sim"
FLOATS = [torch.float32, torch.bfloat16, torch.float16]
CODES = torch.arange(256, dtype=torch.int32).to(torch.uint8)
NAN_CODES = (0x7F, 0xFF)


def e4m3(codes: torch.Tensor) -> torch.Tensor:
    return codes.view(torch.float8_e4m3fn).float()


def records(codes: torch.Tensor, scales: torch.Tensor, rope: torch.Tensor, page: int, surround: bool = False):
    """An Fp8KVPool of n records from raw parts: codes [n, 448] uint8, scale bytes [n, 7] uint8, rope
    [n, 64] bf16; pages of ``page`` records (the last page padded with 0x7F-filled records); with
    ``surround``, inside a buffer whose other pages are 0xFF bytes (e4m3 NaN, scale 2^128 = inf)."""
    n = codes.shape[0]
    pages = -(-n // page)
    data = torch.full((pages * page, 576), 0x7F, dtype=torch.uint8)
    sc = torch.full((pages * page, 8), 0xFF, dtype=torch.uint8)
    data[:n, :448] = codes
    data[:n, 448:] = rope.contiguous().view(torch.uint8).reshape(n, 128)
    sc[:n, :7] = scales
    sc[:n, 7] = 0
    pb = page_bytes(page)
    buf = torch.full((pages + 2 * surround, pb), 0xFF, dtype=torch.uint8)
    body = buf[1 : pages + 1] if surround else buf
    body[:, : page * 576] = data.view(pages, page * 576)
    body[:, page * 576 : page * 584] = sc.view(pages, page * 8)
    if not surround:
        body[:, page * 584 :] = 0
    return Fp8KVPool(body, page)


def single_key_rows(pool: Fp8KVPool, slots, dtype) -> torch.Tensor:
    """out [n, 512] of single-key attention with q = 0 over ``slots`` (one token per slot)."""
    n = len(slots)
    q = torch.zeros(n, 1, 512, dtype=dtype)
    idx = torch.tensor(slots, dtype=torch.int32).view(n, 1)
    out, lse = longattn.sparse_attention(q, pool, idx, backend=SIM)
    ref_out, ref_lse = longattn.sparse_attention(q, pool, idx, backend="reference")
    assert torch.equal(lse.isnan(), ref_lse.isnan()) and torch.equal(out.isnan(), ref_out.isnan())
    return out[:, 0]


def assert_rows_equal(got: torch.Tensor, want: torch.Tensor, what: str):
    """Equal values (zeros of either sign equal) and equal NaN positions."""
    assert got.dtype == want.dtype
    assert torch.equal(got.isnan(), want.isnan()), what
    ok = ~want.isnan()
    bad = (got[ok] != want[ok]).nonzero()
    assert bad.numel() == 0, f"{what}: {bad.shape[0]} values differ, first {got[ok][bad[0]]} vs {want[ok][bad[0]]}"


# Scale bytes: the extremes of UE8M0 (0: 2^-127, an fp32 subnormal scale; 254: 2^127), the quantiser's
# smallest (114: 2^-13), 1.0 (127) and a few more; 255 (2^128 = inf) has its own test.
SCALES = [0, 1, 9, 23, 100, 114, 126, 127, 128, 140, 200, 254]


def _every_code_rows(scale: int):
    """Records whose nope dims hold all 256 codes (tiles 0-3) and again 0x00-0xBF (tiles 4-6), every
    tile with scale byte ``scale``; NaN codes -> 0x38 (1.0); for scale 254 (2^127) codes of |v| >= 2 (they
    overflow to inf) -> 0x30 (0.5). Two records: codes as listed and reversed."""
    codes = torch.cat([CODES, CODES[:192]]).clone()
    codes[(codes & 0x7F) == 0x7F] = 0x38
    if scale == 254:
        codes[e4m3(codes).abs() >= 2] = 0x30
    return torch.stack([codes, codes.flip(0)]), torch.full((2, 7), scale, dtype=torch.uint8)


@pytest.mark.parametrize("dtype", FLOATS, ids=str)
def test_e4m3_decode_every_code_and_scale(dtype):
    """Every e4m3 code (subnormals, +-0, the largest +-448) under every listed scale exponent: the
    kernel's rows equal dequantize_rows bit for bit (fp32), rounded once to q's dtype."""
    g = torch.Generator().manual_seed(0)
    parts = [_every_code_rows(s) for s in SCALES]
    codes = torch.cat([c for c, _ in parts])
    scales = torch.cat([s for _, s in parts])
    n = codes.shape[0]
    rope = (torch.randn(n, 64, generator=g) * torch.logspace(-30, 30, 64)).to(torch.bfloat16)
    rope[0, :4] = torch.tensor([0.0, -0.0, 2.0**-133, -(2.0**-126)])  # bf16 zeros and subnormals
    pool = records(codes, scales, rope, page=3)
    want = dequantize_rows(torch.cat([codes, rope.view(torch.uint8).reshape(n, 128)], 1), torch.cat(
        [scales, torch.zeros(n, 1, dtype=torch.uint8)], 1))  # fmt: skip
    assert torch.isfinite(want).all()
    assert bool(((want != 0) & (want.abs() < 2.0**-126)).any())  # fp32 subnormal results occur
    got = single_key_rows(pool, list(range(n)), dtype)
    assert_rows_equal(got, want.to(dtype), f"{dtype}")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_e4m3_decode_nonfinite_records(dtype):
    """Records the decode turns into NaN / inf: each NaN code (0x7F, 0xFF) alone in a finite record, scale
    byte 255 (2^128 = inf: 0 * inf = NaN, x * inf = +-inf), codes that overflow under scale 254, NaN and
    inf rope values. Each gives an all-NaN row (the NaN / inf reaches the logit), as the reference; the
    finite record between them stays exact (no NaN leaks into a neighbour of the same decode chunk)."""
    base = torch.full((448,), 0x38, dtype=torch.uint8)  # 1.0
    rows, scales, ropes = [], [], []
    rope_ok = torch.ones(64, dtype=torch.bfloat16)

    def add(codes, scale, rope=rope_ok):
        rows.append(codes)
        scales.append(torch.full((7,), scale, dtype=torch.uint8) if isinstance(scale, int) else scale)
        ropes.append(rope)

    for c in NAN_CODES:
        codes = base.clone()
        codes[200] = c
        add(codes, 127)
    add(base.clone(), 127)  # finite
    inf_scale = torch.full((7,), 127, dtype=torch.uint8)
    inf_scale[3] = 255
    add(base.clone(), inf_scale)
    zero_tile = base.clone()
    zero_tile[3 * 64 : 4 * 64] = 0x00  # 0 * inf = NaN
    add(zero_tile, inf_scale)
    big = base.clone()
    big[70] = 0x7E  # 448 * 2^127 = inf
    add(big, torch.full((7,), 254, dtype=torch.uint8))
    for v in (float("nan"), float("inf")):
        rope = rope_ok.clone()
        rope[5] = v
        add(base.clone(), 127, rope)
    n = len(rows)
    codes, sc, rope = torch.stack(rows), torch.stack(scales), torch.stack(ropes)
    pool = records(codes, sc, rope, page=2, surround=True)
    want = dequantize_rows(torch.cat([codes, rope.view(torch.uint8).reshape(n, 128)], 1), torch.cat(
        [sc, torch.zeros(n, 1, dtype=torch.uint8)], 1))  # fmt: skip
    finite = torch.isfinite(want).all(1)
    assert finite.tolist() == [False, False, True] + [False] * (n - 3)
    got = single_key_rows(pool, list(range(n)), dtype)
    assert got[~finite].isnan().all()
    assert_rows_equal(got[finite], want[finite].to(dtype), "finite record")


@pytest.mark.parametrize("page", [1, 3, 5, 13])
def test_fp8_records_across_odd_pages_and_invalid_slots(page):
    """Records at every offset of odd page sizes inside a buffer of 0xFF (NaN / inf) pages, read through
    indices of every invalid kind (-1, one past the end, a page past the pool, INT32_MAX / MIN, int64
    beyond 2^32): the valid ones give their dequantised rows exactly, the others are never read."""
    g = torch.Generator().manual_seed(page)
    n = 2 * page + 1  # a partial last page
    codes = torch.randint(0, 256, (n, 448), generator=g, dtype=torch.uint8)
    codes[(codes & 0x7F) == 0x7F] = 0x01
    scales = torch.randint(100, 150, (n, 7), generator=g, dtype=torch.uint8)
    rope = torch.randn(n, 64, generator=g).to(torch.bfloat16)
    pool = records(codes, scales, rope, page=page, surround=True)
    slots = list(range(n))
    want = pool.gather_rows(torch.tensor(slots))
    got = single_key_rows(pool, slots, torch.float32)
    assert_rows_equal(got, want, f"page {page}")
    # invalid entries among valid ones (slots n.. of the last page hold 0x7F records: not used either)
    N = pool.num_slots
    bad = [-1, N, N + page, N + 5 * page, 2**31 - 1, -(2**31), 2**32 + 1, -(2**40)]
    idx = torch.tensor([[bad[i % len(bad)], i % n, bad[(i + 3) % len(bad)], (5 * i + 1) % n] for i in range(3)])
    q = torch.randn(3, 4, 512, generator=g)
    out, lse = longattn.sparse_attention(q, pool, idx, backend=SIM)
    clean = torch.where((idx >= 0) & (idx < N), idx, torch.full_like(idx, -1))
    ref_out, ref_lse = longattn.sparse_attention(q, pool, clean.int(), backend=SIM)
    assert torch.equal(out, ref_out) and torch.equal(lse, ref_lse) and torch.isfinite(out).all()
    check_sparse(out, lse, _args(q, pool, idx), f"page {page}", SIM)


def _args(q, kv, idx, extra=None, extra_idx=None, lengths=None, extra_lengths=None, sink=None, scale=None):
    return dict(q=q, kv=kv, indices=idx, topk_length=lengths, extra_kv=extra, extra_indices=extra_idx,
                extra_topk_length=extra_lengths, attn_sink=sink, softmax_scale=scale)  # fmt: skip


def _fp8(g, pages, page, magnitude=1.0):
    kv = torch.randn(pages, page, 512, generator=g) * magnitude * torch.logspace(-2, 1, 512)
    return quantize_kv_fp8(kv)


# stream kinds: "fp8" or a float pool dtype (None: q's dtype)
MIXES = [("fp8", "fp8"), ("fp8", None), (None, "fp8"), ("fp8", torch.float32), (torch.bfloat16, "fp8")]


@pytest.mark.parametrize("dtype", FLOATS, ids=str)
@pytest.mark.parametrize("mix", MIXES, ids=lambda m: "+".join(str(k).replace("torch.", "") for k in m))
def test_fp8_stream_mixes(dtype, mix):
    """Both streams FP8, FP8 with a float stream of q's dtype or of another one (either order), odd
    pages, lengths, a sink and duplicates, K0 + K2 = 77 keys (two key blocks): gather tiles hold rows of
    both streams, runs not aligned to the decode chunks. Against the oracle of the dequantised rows."""
    g = torch.Generator().manual_seed(len(str(mix)) + int(dtype.itemsize))
    T, H = 2, 5

    def pool(kind, pages, page):
        if kind == "fp8":
            return _fp8(g, pages, page)
        return (torch.randn(pages * page, 512, generator=g)).to(kind or dtype)

    kv, extra = pool(mix[0], 7, 3), pool(mix[1], 4, 5)
    n0 = kv.num_slots if isinstance(kv, Fp8KVPool) else kv.shape[0]
    n1 = extra.num_slots if isinstance(extra, Fp8KVPool) else extra.shape[0]
    idx = torch.randint(-2, n0 + 2, (T, 45), generator=g).int()
    idx[:, 1::7] = idx[:, :1]  # duplicates
    eidx = torch.randint(-1, n1 + 1, (T, 32), generator=g).int()
    lengths = torch.tensor([45, 37], dtype=torch.int32)
    q = torch.randn(T, H, 512, generator=g).to(dtype)
    args = _args(q, kv, idx, extra, eidx, lengths, None, torch.randn(H, generator=g), 0.07)
    out, lse = longattn.sparse_attention(**args, backend=SIM)
    assert torch.isfinite(out).all()
    check_sparse(out, lse, args, f"{mix} {dtype}", SIM)
    # The FP8 pools read exactly like their dequantised rows (fp32 / bf16: the same kernel run on them).
    if dtype != torch.float16:
        deq = {k: dequantize_kv_fp8(p).reshape(-1, 512) for k, p in (("kv", kv), ("extra_kv", extra))
               if isinstance(p, Fp8KVPool)}  # fmt: skip
        if dtype == torch.bfloat16:
            deq = {k: v.to(dtype) for k, v in deq.items()}
        out2, lse2 = longattn.sparse_attention(**{**args, **deq}, backend=SIM)
        if all(not isinstance(p, torch.Tensor) or p.dtype == dtype for p in (kv, extra)):
            assert torch.equal(out, out2) and torch.equal(lse, lse2)


@pytest.mark.parametrize(
    "q_dtype,kv_dtype",
    [(torch.float32, torch.bfloat16), (torch.float32, torch.float16), (torch.bfloat16, torch.float32),
     (torch.bfloat16, torch.float16), (torch.float16, torch.bfloat16), (torch.float16, torch.float32)],
    ids=str,
)  # fmt: skip
def test_float_pool_of_another_dtype(q_dtype, kv_dtype):
    """A float pool of another dtype than q's (one stream of each): the kernel computes in fp32 over the
    pool's exact values (16-bit rows widened in the gather, q widened and out rounded once by the host),
    i.e. the reference's arithmetic: the fp32 bound of the oracle holds for every q dtype."""
    g = torch.Generator().manual_seed(7)
    T, H, D = 3, 4, 128
    kv = (torch.randn(40, D, generator=g) * 3).to(kv_dtype)
    extra = torch.randn(9, D, generator=g).to(q_dtype)
    idx = torch.randint(-1, 41, (T, 70), generator=g).int()
    eidx = torch.randint(0, 9, (T, 3), generator=g).int()
    q = torch.randn(T, H, D, generator=g).to(q_dtype)
    args = _args(q, kv, idx, extra, eidx, sink=torch.randn(H, generator=g))
    out, lse = longattn.sparse_attention(**args, backend=SIM)
    check_sparse(out, lse, args, f"q {q_dtype} kv {kv_dtype}", SIM)
    ref_out, ref_lse = longattn.sparse_attention(**args, backend="reference")
    torch.testing.assert_close(lse, ref_lse, atol=2e-5, rtol=2e-6)
    torch.testing.assert_close(out.float(), ref_out.float(), atol=2e-5, rtol=1e-2 if q_dtype != torch.float32 else 2e-5)


@pytest.mark.parametrize(
    "dtype,H,mix",
    [(torch.bfloat16, 64, ("fp8", "fp8")), (torch.bfloat16, 128, ("fp8", None)), (torch.float32, 48, ("fp8", None)),
     (torch.float16, 16, ("fp8", None))],
    ids=str,
)  # fmt: skip
def test_fp8_tilings_with_the_fullest_ub(dtype, H, mix):
    """The head counts whose tilings use the most UB with the dequantiser (V4: bf16, 64 heads per task,
    183,328 of 188,160 B; fp32 / fp16 queries: fp32 computation, 32 / 16 heads per task with a second,
    widened stream): the emulator's UB budget check would abort on an undercounted mirror. One token,
    70 keys (two blocks)."""
    g = torch.Generator().manual_seed(H)
    kv = _fp8(g, 9, 8)
    extra = _fp8(g, 2, 3) if mix[1] == "fp8" else torch.randn(6, 512, generator=g).to(dtype)
    if dtype == torch.float16:
        extra = extra.to(torch.float16)  # fp16 queries: FP8 and fp16 rows, both converted to fp32
    idx = torch.randint(0, kv.num_slots, (1, 64), generator=g).int()
    eidx = torch.randint(0, 6, (1, 6), generator=g).int()
    q = torch.randn(1, H, 512, generator=g).to(dtype)
    args = _args(q, kv, idx, extra, eidx, sink=torch.randn(H, generator=g))
    out, lse = longattn.sparse_attention(**args, backend=SIM)
    check_sparse(out, lse, args, f"{dtype} H={H} {mix}", SIM)


# (q dtype, stream 0, stream 1): "fp8" or a float pool dtype
RUN_MIXES = [
    (torch.bfloat16, "fp8", torch.bfloat16),  # V4: FP8 compressed pool, bf16 window rows
    (torch.float32, "fp8", torch.bfloat16),  # fp32 computation: both streams converted
    (torch.float16, "fp8", torch.float16),  # fp16 q over FP8: fp32 computation, both streams converted
    (torch.float32, torch.bfloat16, "fp8"),  # widened 16-bit rows first
    (torch.float16, torch.bfloat16, torch.float32),  # 16-bit rows of another dtype, no FP8
    (torch.bfloat16, "fp8", "fp8"),
]


@pytest.mark.parametrize("mix", RUN_MIXES, ids=lambda m: "-".join(str(k).replace("torch.", "") for k in m))
def test_gather_runs_of_converted_rows(mix):
    """The gather's converted rows (FP8 records, 16-bit rows under an fp32 computation) loaded one DMA per
    run of consecutive slots: runs breaking inside decode chunks, at page ends (pages of 1, 3, 5, 13, 64
    records), at the pool's last slot, at invalid entries, repeated and descending slots, rows of both
    streams in one gather tile, a length cutting a run (tests/helpers/gather_runs.py). Against the
    oracle, and bit for bit the same kernel over the pools' exact rows in the compute dtype (read without
    conversion, one DMA per run straight into the tile)."""
    from longattn.ops.sparse_attention import ascend as sa_ascend

    from tests.helpers.gather_runs import broken_runs

    q_dtype, kind0, kind1 = mix
    compute = sa_ascend.compute_dtype(q_dtype, [kind0, kind1])
    g = torch.Generator().manual_seed(3)
    for page in (1, 3, 5, 13, 64):

        def pool(kind, page):
            if kind == "fp8":
                return _fp8(g, -(-150 // page), page)
            return torch.randn(150, 512, generator=g).to(kind)

        kv, extra = pool(kind0, page), pool(kind1, 7)
        sizes = [p.shape[0] if isinstance(p, torch.Tensor) else p.num_slots for p in (kv, extra)]
        idx = torch.stack([broken_runs(sizes[0], page, seed=t) for t in range(2)]).int()
        eidx = torch.stack([broken_runs(sizes[1], 7, seed=10 + t)[:40] for t in range(2)]).int()
        lengths = torch.tensor([idx.shape[1], idx.shape[1] - 13], dtype=torch.int32)
        q = torch.randn(2, 5, 512, generator=g).to(q_dtype)
        args = _args(q, kv, idx, extra, eidx, lengths, None, torch.randn(5, generator=g), 0.05)
        out, lse = longattn.sparse_attention(**args, backend=SIM)
        assert torch.isfinite(out).all() and torch.isfinite(lse).all()
        check_sparse(out, lse, args, f"{mix} page {page}", SIM)
        exact = {
            k: (dequantize_kv_fp8(p).reshape(-1, 512) if isinstance(p, Fp8KVPool) else p).to(compute)
            for k, p in (("kv", kv), ("extra_kv", extra))
        }
        assert all(p.dtype == compute for p in exact.values())
        out2, lse2 = longattn.sparse_attention(**{**args, **exact}, backend=SIM)
        assert torch.equal(out, out2) and torch.equal(lse, lse2), f"{mix} page {page}"
