"""compress_pool and compress_kv on every backend vs the float64 oracle (and the reference).

compress_pool: the entry is a convex combination of ``a`` values (bound: tests/helpers/compress.py
``pool_bound``). compress_kv: the same random chunk / decode splits of several sequences, interleaved
in mixed batches, replayed on the backend and on the reference from NaN-poisoned caches with guard
pages; ring bit-identical, entries within 16 u * max|entry| of the reference and of a float64 oracle
(tests/helpers/compress.py), and the non-finite pooling rule written out in float64
(ops/compress/README.md). Backend-specific checks (slot tiles, launch tiles, the UB limit, emulated
cores): tests/triton, tests/ascend.
"""

import longattn
import pytest
import torch
from longattn.cache import Fp8IndexKeyPool, Fp8KVPool, dequantize_kv_fp8, quantize_kv_fp8
from longattn.cache.fp8 import DATA_BYTES
from longattn.memory import chunk_budget
from longattn.rope import apply_rope

from tests import oracle
from tests.helpers.append import expected_records, place_records
from tests.helpers.backends import call, skip_if_emulated, skip_unless_implements
from tests.helpers.compress import (
    EPS,
    INF,
    NAN,
    NEG_NAN,
    Cache,
    check_float_run,
    check_fp8_run,
    check_lowp_run,
    compress_args,
    compress_rule_entries,
    entry_slots,
    make_steps,
    neg_nan,
    nonfinite_pool_inputs,
    poison_steps,
    pool_bound,
    records_of_own_entries,
    replay,
    run_both,
)
from tests.helpers.device import DEVICE, dev, to_device
from tests.tolerance import assert_close

POOL, KV = "compress_pool", "compress_kv"

POOL_CASES = [
    (16, 4, True, 8),  # whole blocks
    (19, 4, True, 8),  # S not a multiple of the ratio: the tail is not pooled
    (3, 4, True, 8),  # S < ratio: no entry
    (4, 4, True, 8),  # exactly one block (no previous block)
    (256, 128, False, 16),
    (300, 128, False, 16),  # HCA ratio, tail
    (100, 128, False, 16),  # S < ratio
    (12, 1, False, 5),  # ratio 1: identity
    (30, 3, True, 6),  # odd ratio with overlap
    (40, 8, True, 200),  # channels in two (Triton) tiles, the second partial
    (17, 4, False, 33),  # odd d
]


def _pool_inputs(S, ratio, overlap, d, dtype):
    c = 2 if overlap else 1
    g = torch.Generator().manual_seed(S * 1000 + d)
    a = (torch.randn(S, c * d, generator=g) * 2).to(dtype)
    b = (torch.randn(S, c * d, generator=g) * 3).to(dtype)
    return a, b


def pool_on(backend, a, b, ratio, overlap):
    return call(longattn.compress_pool, *dev(a, b), ratio, overlap, backend=backend).cpu()


# ---------------------------------------------------------------------------------------------------
# compress_pool
# ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("S,ratio,overlap,d", POOL_CASES)
def test_pool_matches_oracle(backend, S, ratio, overlap, d, dtype):
    """The oracle's bound (module doc), and twice that from the reference."""
    skip_unless_implements(POOL, backend)
    a, b = _pool_inputs(S, ratio, overlap, d, dtype)
    got = pool_on(backend, a, b, ratio, overlap)
    assert got.dtype == torch.float32 and got.shape == (S // ratio, d)
    bound = pool_bound(a, b, ratio)
    assert_close(got, oracle.compress_pool(a, b, ratio, overlap), bound, 0.0, "compress_pool vs oracle")
    ref = longattn.compress_pool(a, b, ratio, overlap, backend="reference")
    assert_close(got, ref, 2 * bound, 0.0, "compress_pool vs reference")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("S,ratio,overlap,d", POOL_CASES[:9])
def test_reference_pool_chunked_equals_unchunked(S, ratio, overlap, d, dtype):
    a, b = _pool_inputs(S, ratio, overlap, d, dtype)
    got = longattn.compress_pool(a, b, ratio, overlap, backend="reference")
    with chunk_budget(1):
        assert torch.equal(longattn.compress_pool(a, b, ratio, overlap, backend="reference"), got)


def test_pool_overlap_first_entry_uses_only_own_block(backend):
    """Entry 0 has no previous block: it equals pooling half B of block 0 alone."""
    skip_unless_implements(POOL, backend)
    d, ratio = 4, 4
    a, b = torch.randn(8, 2 * d), torch.randn(8, 2 * d)
    got = pool_on(backend, a, b, ratio, True)
    w = torch.softmax(b[:4, d:], dim=0)
    torch.testing.assert_close(got[0], (w * a[:4, d:]).sum(0))
    # entry 1: half A of block 0 and half B of block 1 (8 slots)
    sc = torch.cat([b[:4, :d], b[4:8, d:]])
    va = torch.cat([a[:4, :d], a[4:8, d:]])
    torch.testing.assert_close(got[1], (torch.softmax(sc, 0) * va).sum(0))


def test_pool_large_scores_no_overflow(backend):
    skip_unless_implements(POOL, backend)
    a, b = torch.randn(8, 6), torch.randn(8, 6) * 1e4
    got = pool_on(backend, a, b, 4, True)
    assert torch.isfinite(got).all()
    assert_close(got, oracle.compress_pool(a, b, 4, True), 1e-3, 0.0, "large scores")


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # interpreter: inf - inf
def test_pool_adversarial_scores(backend):
    """Large logits (a naive exp overflows), a channel whose slots are all -inf (pools to 0), a +inf
    score and a NaN score (IEEE softmax: exp(inf - inf) / NaN make the channel NaN), ties."""
    skip_unless_implements(POOL, backend)
    S, ratio, d = 16, 4, 6
    a = torch.randn(S, 2 * d)
    b = torch.randn(S, 2 * d) * 1e4
    b[:, 1] = float("-inf")
    b[:, d + 1] = float("-inf")  # channel 1: no finite slot anywhere
    b[9, d + 2] = float("inf")  # entry 2, channel 2 (own block, half B)
    b[5, 3] = float("nan")  # entry 2, channel 3 (previous block, half A)
    b[:, 4] = 7.0
    b[:, d + 4] = 7.0  # channel 4: all slots tie
    ref = longattn.compress_pool(a, b, ratio, True, backend="reference")
    got = pool_on(backend, a, b, ratio, True)
    want = oracle.compress_pool_ieee(a, b, ratio, True)
    assert torch.equal(got.isnan(), want.isnan()) and torch.equal(ref.isnan(), want.isnan())
    assert torch.all(got[:, 1] == 0) and bool(got[2, 2].isnan()) and bool(got[2, 3].isnan())
    finite = torch.ones_like(got, dtype=torch.bool)
    finite[2, 2:4] = False
    amax = float(a.abs().max())
    assert float((got - ref)[finite].abs().max()) <= 2 * (2 * ratio + 8) * 2.0**-24 * amax * 1e4


def test_pool_nan_value_propagates(backend):
    skip_unless_implements(POOL, backend)
    S, ratio, d = 8, 4, 4
    a = torch.randn(S, d)
    b = torch.randn(S, d)
    a[5, 2] = float("nan")
    got = pool_on(backend, a, b, ratio, False)
    ref = longattn.compress_pool(a, b, ratio, False, backend="reference")
    assert torch.equal(got.isnan(), ref.isnan()) and bool(got[1, 2].isnan())


def test_pool_v4_shapes(backend):
    """CSA (ratio 4, overlap, d = 512) and HCA (ratio 128, d = 512) prefill chunks, bf16."""
    skip_unless_implements(POOL, backend)
    g = torch.Generator().manual_seed(0)
    for S, ratio, overlap in [(64, 4, True), (256, 128, False)]:
        c = 2 if overlap else 1
        a = torch.randn(S, c * 512, generator=g).bfloat16()
        b = torch.randn(S, c * 512, generator=g).bfloat16()
        got = pool_on(backend, a, b, ratio, overlap)
        assert_close(got, oracle.compress_pool(a, b, ratio, overlap), pool_bound(a, b, ratio), 0.0, f"{S} {ratio}")


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # the interpreter's numpy: inf - inf, all-NaN slices
@pytest.mark.parametrize("overlap", [True, False])
def test_pool_nonfinite_rule_vs_oracle(backend, overlap):
    """IEEE softmax pooling (ops/compress/README.md): NaN / +inf scores and NaN values make their
    channel NaN, -inf scores weigh 0, a channel with only -inf slots pools to 0
    (``nonfinite_pool_inputs``), against the float64 IEEE oracle."""
    skip_unless_implements(POOL, backend)
    a, b = nonfinite_pool_inputs()
    assert int(b[13, 8].view(torch.int32)) < 0  # the negative NaN really has its sign bit
    got = pool_on(backend, a, b, 4, overlap)
    want = oracle.compress_pool_ieee(a, b, 4, overlap)
    assert torch.equal(got.isnan(), want.isnan()), f"NaN mask\n{got}\n{want}"
    assert torch.equal(got.isinf(), want.isinf()) and torch.equal(got[got.isinf()], want[want.isinf()].float())
    fin = torch.isfinite(want)
    assert float((got.double()[fin] - want[fin]).abs().max()) <= 1e-5, "finite channels"
    if overlap:
        assert torch.all(got[:, 0] == 0)
        assert bool(got[2, 1].isnan() and got[3, 2].isnan() and got[0, 3].isnan() and got[2, 4].isnan())
        assert bool(got[2, 5].isnan()) and got[3, 5] == INF


# ---------------------------------------------------------------------------------------------------
# compress_kv: random splits replayed on the backend and the reference
# ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("page_size", [1, 3, 16])
@pytest.mark.parametrize("ratio,overlap", [(4, True), (8, False), (3, True), (1, False), (128, False)])
def test_kv_any_split_matches_reference_and_oracle(backend, ratio, overlap, page_size, seed):
    """Any split of the sequences into chunks and decode steps (odd seeds end in decode steps), several
    sequences per batch, equals the whole sequences pooled by the float64 oracle."""
    skip_unless_implements(KV, backend)
    if seed == 2:
        skip_if_emulated(backend, "a third seed")
    if ratio == 1:
        skip_if_emulated(backend, "ratio 1 (one entry per token)", interpreted_only=True)
    d = 24
    lengths = [29, 3, 18] if ratio < 100 else [300, 3, 140]
    seqs, steps = make_steps(lengths, ratio, overlap, d, seed, decode_tail=seed % 2 == 1,
                             max_chunk=9 if ratio < 100 else 70)  # fmt: skip
    cache = Cache(len(lengths), ratio, overlap, d, page_size, max(lengths), seed=seed)
    ref, got = run_both(cache, steps, backend)
    check_float_run(ref, got, seqs)


@pytest.mark.parametrize(
    "dtype,out,d", [("bf16", "bf16", 128), ("fp16", "fp16", 128), ("fp16", "fp32", 32), ("fp32", "fp16", 32)]
)
def test_kv_low_precision(backend, dtype, out, d):
    """bf16 / fp16 inputs (d = 128: the indexer compressor) and pools; a bf16 norm weight. The pools
    are rounded to nearest even from fp32 entries that agree to a few u: at most one unit of the pool's
    last place apart."""
    skip_unless_implements(KV, backend)
    dt = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
    seqs, steps = make_steps([21, 9], 4, True, d, seed=2, decode_tail=True, dtype=dt[dtype])
    cache = Cache(2, 4, True, d, 4, 21, out=out, seed=2)
    if dtype == "bf16":
        cache.w = cache.w.to(torch.bfloat16)
    ref, got = run_both(cache, steps, backend)
    if out == "fp32":
        check_float_run(ref, got, seqs)
    else:
        check_lowp_run(ref, got, 2.0**-7 if out == "bf16" else 2.0**-10)


def test_kv_large_positions_rope(backend):
    """Sequences that start at ~2**20 (the ring prefilled as by earlier steps): fp32 angles up to
    ~1e6 rad, where cos / sin need a full range reduction."""
    from longattn.configs import RopeConfig
    from longattn.rope import inv_freq

    skip_unless_implements(KV, backend)
    d, ratio = 64, 4
    start = (1 << 20) - 6
    seqs, steps = make_steps([23, 11], ratio, True, d, seed=7, decode_tail=True, start=start)
    cache = Cache(2, ratio, True, d, 3, 23, seed=7, start=start)
    cache.freqs = inv_freq(RopeConfig(10000.0), 64)  # inv_freq[0] = 1: angle = position
    cache.state_buf[1:-1] = torch.randn(cache.state_buf[1:-1].shape)  # a valid ring before `start`
    ref, got = run_both(cache, steps, backend)
    check_float_run(ref, got)


@pytest.mark.parametrize("page_size", [2, 4])
def test_kv_fp8_output(backend, page_size):
    """d = 512 entries into an FP8 pool (ratio 4, overlap): records within one e4m3 step of the
    reference's, byte-identical to quantize_rows of the backend's own fp32 entries."""
    skip_unless_implements(KV, backend)
    d, ratio = 512, 4
    seqs, steps = make_steps([21, 6], ratio, True, d, seed=1, decode_tail=False, max_chunk=9)
    cache = Cache(2, ratio, True, d, page_size, 21, out="fp8", seed=1)
    ref, got = run_both(cache, steps, backend)
    check_fp8_run(ref, got, cache, seqs, steps, backend)


def test_kv_fp8_output_is_the_quantised_entries(backend):
    """compress_kv into an FP8 pool == quantize(compress_pool + RMSNorm + RoPE of the whole sequence)
    up to one e4m3 step (chunks and decode steps of one sequence)."""
    skip_unless_implements(KV, backend)
    from longattn.configs import RopeConfig
    from longattn.rope import inv_freq

    d, ratio = 512, 4
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(21, 2 * d, generator=g), torch.randn(21, 2 * d, generator=g)
    pool = Fp8KVPool.empty(6, 2, DEVICE)
    w, freqs = torch.linspace(0.5, 1.5, d), inv_freq(RopeConfig(160000.0), 16)
    state = dev(torch.full((1, 2 * ratio, 4 * d), float("nan")))[0]  # on the device once: the ring persists
    bt, state_bt = torch.tensor([[3, 0, 5]], dtype=torch.int32), torch.zeros(1, 1, dtype=torch.int32)
    s0 = 0
    for k in (5, 1, 1, 9, 5):
        call(longattn.compress_kv, *dev(a[s0 : s0 + k], b[s0 : s0 + k], torch.arange(s0, s0 + k),
             torch.zeros(k, dtype=torch.int32)), ratio=ratio, overlap=True, state=state,
             state_block_table=dev(state_bt)[0], out=pool, out_block_table=dev(bt)[0], norm_weight=dev(w)[0],
             eps=EPS, rope_inv_freq=dev(freqs)[0], backend=backend)  # fmt: skip
        s0 += k
    c = longattn.compress_pool(a, b, ratio, True, backend="reference")
    c = c * torch.rsqrt(c.pow(2).mean(-1, keepdim=True) + EPS) * w
    want = apply_rope(c, torch.arange(c.shape[0]) * ratio, freqs)  # [5, 512]
    j = torch.arange(5)
    got = Fp8KVPool(pool.data.cpu(), 2).gather_rows(bt[0, j // 2].long() * 2 + j % 2)
    quantised = dequantize_kv_fp8(quantize_kv_fp8(want.view(5, 1, d))).view(5, d)
    torch.testing.assert_close(got, quantised, atol=1e-6, rtol=2.0**-3)  # one e4m3 step at most differs


def test_kv_invalid_pages_and_rows_are_skipped(backend):
    """Output pages -1 / past the pool, a ring page past the state, a token row past both block
    tables: nothing is read or written there (the guard pages and every unwritten entry stay NaN),
    and everything else still equals the reference."""
    skip_unless_implements(KV, backend)
    d, ratio = 16, 4
    seqs, steps = make_steps([26, 17, 9, 12], ratio, True, d, seed=3, decode_tail=True)
    cache = Cache(3, ratio, True, d, 2, 26, seed=3)  # block tables have 3 rows: sequence 3 has none
    cache.out_bt[0, 1] = -1
    cache.out_bt[1, 0] = cache.num_pages  # past the pool
    cache.out_bt[1, 2] = 1 << 30
    cache.state_bt[2, 0] = cache.state.shape[0]  # a ring page past the state
    ref, got = run_both(cache, steps, backend)
    check_float_run(ref, got)
    assert got.state_buf[0].isnan().all() and got.state_buf[-1].isnan().all()
    assert got.out_buf[0].isnan().all() and got.out_buf[-1].isnan().all()


def test_kv_no_valid_page_writes_nothing(backend):
    """A ring page outside the state and no valid output page: neither is written."""
    skip_unless_implements(KV, backend)
    d = 8
    pool, state = torch.zeros(2, 4, d), torch.zeros(2, 4, 2 * d)
    a, b = torch.randn(8, d), torch.randn(8, d)
    pool, state = dev(pool, state)
    call(longattn.compress_kv, *dev(a, b, torch.arange(8), torch.zeros(8, dtype=torch.int32)), ratio=4,
         overlap=False, state=state, state_block_table=dev(torch.tensor([[7]], dtype=torch.int32))[0],
         out=pool, out_block_table=dev(torch.tensor([[-1, 99]], dtype=torch.int32))[0],
         norm_weight=dev(torch.ones(d))[0], eps=EPS, rope_inv_freq=dev(torch.ones(2))[0], backend=backend)  # fmt: skip
    assert torch.all(pool == 0) and torch.all(state == 0)


def test_kv_one_token_batches_and_empty(backend):
    """Pure decode (every batch one token per sequence) and an empty batch."""
    skip_unless_implements(KV, backend)
    d, ratio = 8, 8
    seqs, steps = make_steps([19, 17], ratio, False, d, seed=6, decode_tail=True, max_chunk=1)
    cache = Cache(2, ratio, False, d, 1, 19, seed=6)
    ref, got = run_both(cache, steps, backend)
    check_float_run(ref, got, seqs)
    empty = (torch.zeros(0, d), torch.zeros(0, d), torch.zeros(0, dtype=torch.int64), torch.zeros(0, dtype=torch.int32))
    before = got.out_buf.clone()
    replay(got, [empty], backend=backend)
    assert torch.equal(before.isnan(), got.out_buf.isnan())


@pytest.mark.slow
@pytest.mark.parametrize("ratio,overlap,out", [(4, True, "bf16"), (128, False, "fp32"), (4, True, "fp8")])
def test_kv_v4_shapes(backend, ratio, overlap, out):
    """d = 512: CSA (ratio 4, overlap, c*d = 1024) and HCA (ratio 128, c*d = 512)."""
    skip_unless_implements(KV, backend)
    d = 512
    lengths = [300, 130] if ratio == 128 else [45, 13]
    seqs, steps = make_steps(lengths, ratio, overlap, d, seed=8, decode_tail=True, max_chunk=9 if ratio < 100 else 150)
    cache = Cache(2, ratio, overlap, d, 2, max(lengths), out=out, seed=8)
    ref, got = run_both(cache, steps, backend)
    if out == "fp32":
        check_float_run(ref, got, seqs)
    elif out == "bf16":
        check_lowp_run(ref, got, 2.0**-7)
    else:
        check_fp8_run(ref, got, cache, seqs, steps, backend)


# ---------------------------------------------------------------------------------------------------
# compress_kv: NaN / inf (ops/compress/README.md: IEEE pooling; FP8 records: the bytes of quantize_rows)
# ---------------------------------------------------------------------------------------------------
@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # the interpreter's numpy: inf - inf
def test_kv_nonfinite_scores_vs_reference(backend):
    """Ratio 4, overlap, d = 8; chunks, then decode steps that read earlier tokens back from the ring:
    a NaN score, a +inf score, a NaN value and a -NaN score each make their entry NaN (the pooled
    channel is NaN, then RMSNorm spreads it); a channel whose slots all score -inf pools to 0 even with
    a NaN value in one of them. Other entries equal the reference's; the ring copies are bit-exact (NaN
    payloads included)."""
    skip_unless_implements(KV, backend)
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
    steps = poison_steps(steps, edits)
    cache = Cache(2, ratio, True, d, 2, 21, seed=3)
    ref, got = run_both(cache, steps, backend)
    for row, n, nan_entries in ((0, 5, [2, 3]), (1, 3, [0, 2])):
        slots = entry_slots(ref, row, n) + ref.page_size  # + the guard page
        for name, run in (("reference", ref), (backend, got)):
            e = run.out_buf.cpu().view(-1, d)[slots]
            is_nan = e.isnan().all(-1).tolist()
            assert is_nan == [j in nan_entries for j in range(n)], f"{name}: sequence {row} NaN entries {is_nan}"
            assert torch.isfinite(e[[j for j in range(n) if j not in nan_entries]]).all()
    o_ref, o_got = ref.out_buf, got.out_buf.cpu()
    assert torch.equal(o_ref.isnan(), o_got.isnan()), "NaN mask of the pools"
    fin = ~o_ref.isnan()
    assert float((o_got[fin] - o_ref[fin]).abs().max()) <= 1e-5 * float(o_ref[fin].abs().max())
    assert torch.equal(ref.state_buf.view(torch.int32), got.state_buf.cpu().view(torch.int32)), "ring copies"


def _same(*xs):
    return list(xs)


def _run_both_calls(backend, steps, d, ratio, overlap, state_shape, out_factory, state_bt, out_bt, fill=NAN, **kw):
    """Feed the same steps (a, b, positions, rows) to ``backend`` and the reference; return ([states],
    [outs]) (backend first), checking the rings agree after every step. RoPE on the last 8 dims unless
    ``rope_dim`` is given (the reference's apply_rope needs at least one pair)."""
    states = [torch.full(state_shape, fill) for _ in range(2)]
    outs = [out_factory() for _ in range(2)]
    args = compress_args(d, ratio, overlap, rope_dim=kw.pop("rope_dim", 8), **kw)
    states[0], outs[0] = dev(states[0], outs[0])
    for a, b, pos, rows in steps:
        for be, st, out, mv in ((backend, states[0], outs[0], dev), ("reference", states[1], outs[1], _same)):
            call(longattn.compress_kv, *mv(a, b, pos, rows.int()), state=st, out=out,
                 state_block_table=mv(state_bt)[0], out_block_table=mv(out_bt)[0], backend=be,
                 **{k: (mv(v)[0] if isinstance(v, torch.Tensor) else v) for k, v in args.items()})  # fmt: skip
        assert torch.equal(states[0].cpu().nan_to_num(1234.5), states[1].nan_to_num(1234.5)), "state rings differ"
    return [states[0].cpu(), states[1]], [outs[0].cpu(), outs[1]]


def test_kv_positions_past_int32(backend):
    """Positions around 2**31 (entries around 2**29): written to their own slots, never to entry 0."""
    skip_unless_implements(KV, backend)
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
    _, outs = _run_both_calls(  # ring slots before the first token hold zeros (read as present positions)
        backend, steps, d, ratio, True, (2, 2 * ratio, 4 * d), lambda: torch.zeros(2, page, d), state_bt, out_bt,
        fill=0.0,
    )  # fmt: skip
    written = outs[1].abs().sum(-1) > 0
    assert int(written.sum()) == 5 and not bool(written[0, 0])  # 5 entries, none of them entry 0
    assert torch.equal(written, outs[0].abs().sum(-1) > 0)
    torch.testing.assert_close(outs[0], outs[1], atol=2e-5, rtol=2e-5)


def test_kv_positions_near_int64_max(backend):
    """Positions up to 2**63 - 1: the ring gets the tokens (slot p mod ring), no entry has a page."""
    skip_unless_implements(KV, backend)
    d, ratio = 16, 4
    g = torch.Generator().manual_seed(32)
    top = 2**63 - 1
    pos = torch.tensor([top - 9 + i for i in range(10)], dtype=torch.int64)
    a, b = torch.randn(10, 2 * d, generator=g), torch.randn(10, 2 * d, generator=g)
    rows = torch.zeros(10, dtype=torch.int32)
    out_bt = torch.zeros(1, 3, dtype=torch.int32)
    state_bt = torch.tensor([[0, 1]], dtype=torch.int32)
    states, outs = _run_both_calls(
        backend, [(a[:7], b[:7], pos[:7], rows[:7]), (a[7:], b[7:], pos[7:], rows[7:])], d, ratio, True,
        (2, ratio, 4 * d), lambda: torch.zeros(1, 4, d), state_bt, out_bt,
    )  # fmt: skip
    assert not torch.isnan(states[0]).any()  # every ring slot written (the last 8 positions)
    assert torch.equal(outs[0], outs[1]) and outs[0].abs().sum() == 0


def test_kv_negative_positions_match_reference(backend):
    """Negative positions: no entry is written for them (entry 0 stays untouched) and they are absent
    from every window (README.md); a token at a negative position still goes to its ring slot
    floor_mod(p, ring) when it is among the last ring positions of its chunk, exactly as the reference."""
    skip_unless_implements(KV, backend)
    d, ratio = 16, 4
    g = torch.Generator().manual_seed(33)
    # row 0: padding-like chunk [-3, -2, -1]; row 1: a decode token at -1; row 2: a chunk from -2 to 5;
    # row 3: a chunk [-9, -8]; row 4: a very negative position. (At -2**63 the reference's
    # `p > chunk_end - ring` wraps around in int64 for chunks of several tokens; the kernels compare
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

    _, outs = _run_both_calls(backend, [(a, b, pos, rows)], d, ratio, True, (5, 2 * ratio, 4 * d), pool, state_bt,
                              out_bt)  # fmt: skip
    torch.testing.assert_close(outs[0], outs[1], atol=2e-5, rtol=2e-5)  # online vs two-pass softmax
    assert bool((outs[0][[0, 1, 3, 4]] == marker).all())  # rows without a position >= 0: nothing written
    assert bool((outs[0][2, 0] != marker).all()) and bool((outs[0][2, 1:] == marker).all())  # entry 0 of row 2


def _check_rule(got, want):
    for j, e in want.items():
        assert torch.equal(torch.isnan(got[j]), torch.isnan(e)), (j, got[j], e)
        fin = ~torch.isnan(e)
        torch.testing.assert_close(got[j][fin].double(), e[fin], atol=1e-5, rtol=1e-5)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize("overlap", [True, False])
def test_kv_nonfinite_gate_scores(backend, overlap):
    """IEEE softmax per channel: all -inf (also with NaN values) -> 0; a -inf slot holding a NaN value
    -> NaN; -inf scores beside finite ones weigh 0; huge negative finite scores are ordinary; a +inf
    or (-)NaN score -> NaN; an inf value -> NaN after the RMSNorm. The reference's result, and the rule
    in float64 (no RoPE)."""
    skip_unless_implements(KV, backend)
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
    b[17, hb + 4] = neg_nan()  # entry 4: a (-)NaN score -> NaN
    a[21, hb + 8] = INF  # entry 5: an inf value with a finite weight -> inf -> NaN after the RMSNorm
    pos = torch.arange(T)
    rows = torch.zeros(T, dtype=torch.int32)
    w = torch.linspace(0.5, 1.5, d)
    want = compress_rule_entries(a, b, pos, ratio, overlap, w, 1e-6)
    common = dict(state_block_table=torch.zeros(1, 1, dtype=torch.int32),
                  out_block_table=torch.tensor([[0, 1]], dtype=torch.int32))  # fmt: skip
    outs = []
    for be, rope in ((backend, 8), ("reference", 8), (backend, 0)):  # RoPE on 8 dims, then none (the rule)
        state, out = dev(torch.full((1, c * ratio, 2 * c * d), NAN), torch.full((2, 4, d), 7.0))
        kw = to_device(dict(common, **compress_args(d, ratio, overlap, rope_dim=rope, weight=w)))
        call(longattn.compress_kv, *dev(a, b, pos, rows), state=state, out=out, backend=be, **kw)
        outs.append(out.cpu())
    torch.testing.assert_close(outs[0], outs[1], atol=2e-5, rtol=2e-5, equal_nan=True)  # the reference's result
    got = outs[2].view(-1, d)
    assert sorted(want) == list(range(T // ratio))
    nan_entries = [j for j, e in want.items() if torch.isnan(e).any()]
    assert nan_entries == [1, 3, 4, 5] and (want[0][:2] == 0).all()
    _check_rule(got, want)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_kv_nonfinite_gate_scores_through_the_ring(backend):
    """The same rule when the window's earlier positions come from the ring (fp32 copies, NaN kept)."""
    skip_unless_implements(KV, backend)
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
    state, out = dev(torch.full((1, 2 * ratio, 4 * d), NAN), torch.full((1, 4, d), 7.0))
    tables = dict(state_block_table=torch.zeros(1, 1, dtype=torch.int32),
                  out_block_table=torch.zeros(1, 1, dtype=torch.int32))  # fmt: skip
    kw = dict(state=state, out=out, **to_device(dict(tables, **compress_args(d, ratio, True, weight=w))))
    for s0, s1 in ((0, 6), (6, 9), (9, 16)):  # windows cross the chunk boundaries
        call(longattn.compress_kv, *dev(a[s0:s1], b[s0:s1], pos[s0:s1], rows[s0:s1]), backend=backend, **kw)
    got = out.cpu().view(-1, d)
    _check_rule(got, want)
    assert torch.isnan(got[3]).all() and not torch.isnan(got[:3]).any() and got[2, 0] == 0


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_kv_fp8_records_of_special_entries(backend):
    """compress_kv into an FP8 pool writes exactly quantize_rows of the backend's own fp32 entry (the
    same call into an fp32 pool gives that entry): NaN entries (NaN / +inf scores), entries above 448,
    fp32 subnormal and -0.0 channels (norm weights), all -inf channels (0)."""
    skip_unless_implements(KV, backend)
    if not records_of_own_entries(backend):
        pytest.skip(f"{backend}: the fp32 and FP8 variants are separate compilations here")
    d, ratio, T = 512, 4, 16
    g = torch.Generator().manual_seed(43)
    a, b = torch.randn(T, 2 * d, generator=g), torch.randn(T, 2 * d, generator=g)
    b[2, d + 5] = NAN  # entry 0: NaN
    b[6, d + 9] = INF  # entry 1: NaN
    b[8:12, d + 3] = -INF  # entry 2: channel 3 pools to 0 (half A of block 1 is finite: not 0)
    b[4:8, 3] = -INF  # ... now all -inf: 0
    w = torch.linspace(-3.0, 3.0, d) * 1e3  # entries above 448 (e > 0) and -0.0 where the weight is -0.0
    w[128:192] = 1e-41  # a tile of fp32 subnormals
    w[200] = -0.0
    w[320:384] = 0.0  # a tile of zeros
    pos = torch.arange(T)
    rows = torch.zeros(T, dtype=torch.int32)
    args = compress_args(d, ratio, True, rope_dim=64, weight=w)
    common = dict(state_block_table=torch.zeros(1, 1, dtype=torch.int32),
                  out_block_table=torch.tensor([[1, 0]], dtype=torch.int32), **args)  # fmt: skip
    common = to_device(common)
    f32 = dev(torch.zeros(2, 4, d))[0]
    call(longattn.compress_kv, *dev(a, b, pos, rows), state=dev(torch.zeros(1, 2 * ratio, 4 * d))[0], out=f32,
         backend=backend, **common)  # fmt: skip
    fp8 = Fp8KVPool.empty(2, 4, DEVICE)
    fp8.data.fill_(0x5A)
    call(longattn.compress_kv, *dev(a, b, pos, rows), state=dev(torch.zeros(1, 2 * ratio, 4 * d))[0], out=fp8,
         backend=backend, **common)  # fmt: skip
    entries = f32[1].cpu()  # entries 0..3: logical page 0 is physical page 1
    assert torch.isnan(entries[0]).all() and torch.isnan(entries[1]).all() and not torch.isnan(entries[2:]).any()
    assert (entries[2:, 320:384] == 0).all() and (entries[2, 3] == 0) and (entries[2:].abs().max() > 448)
    data, scales = expected_records(entries)
    want = place_records(torch.full_like(fp8.data.cpu(), 0x5A), 4, [4, 5, 6, 7], data, scales)
    diff = (fp8.data.cpu() != want).nonzero()
    assert diff.numel() == 0, f"{diff.shape[0]} bytes differ, first at {diff[:4].tolist()}"
    scale_rows = want[1, 4 * DATA_BYTES : 4 * DATA_BYTES + 32].view(4, 8)  # entries 0..3
    assert scale_rows[0, :7].tolist() == [127] * 7 and scale_rows[1, :7].tolist() == [127] * 7


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_kv_fp8_nonfinite_entries_from_the_ring(backend):
    """compress_kv into an FP8 pool over chunks and decode steps, entries holding NaN (a NaN score),
    +-inf, -0.0 and subnormals (a norm weight with inf, -inf, -0.0, 1e-40): each record equals
    quantize_rows of the backend's own fp32 entry (the same steps into an fp32 pool)."""
    from longattn.cache.fp8 import quantize_rows

    from tests.helpers.append import assert_records

    skip_unless_implements(KV, backend)
    if not records_of_own_entries(backend):
        pytest.skip(f"{backend}: the fp32 and FP8 variants are separate compilations here")
    d, ratio, ps = 512, 4, 2
    _, steps = make_steps([13], ratio, True, d, seed=5, decode_tail=True)
    steps = poison_steps(steps, {(0, 6): [("b", 9, NAN)]})  # block 1, half A: entry 2 is NaN
    cache = Cache(1, ratio, True, d, ps, 13, out="fp8", seed=5)
    cache.w[3], cache.w[70], cache.w[100], cache.w[200], cache.w[460] = INF, -INF, -0.0, 1e-40, INF
    cache.w[300:364] = 1e-41  # a whole tile of subnormal values
    fp8 = cache.clone(DEVICE)
    replay(fp8, steps, backend=backend)
    f32 = cache.clone("cpu")
    f32.out_kind = "fp32"
    f32.out_buf = torch.full((cache.num_pages + 2, ps, d), NAN)
    f32 = f32.clone(DEVICE)
    replay(f32, steps, backend=backend)
    n = 13 // ratio
    j = torch.arange(n)
    slots = cache.out_bt[0, j // ps].long() * ps + j % ps
    entries = f32.out.reshape(-1, d)[slots.to(DEVICE)].cpu()
    assert bool(entries[2].isnan().all()) and bool(torch.isinf(entries[0]).any())
    assert bool((entries[0] == 0).any()) and bool(((entries[0] != 0) & (entries[0].abs() < 2.0**-126)).any())
    data, scales = quantize_rows(entries)
    pool = Fp8KVPool(fp8.out_buf.cpu()[1:-1], ps)
    data_rows, scale_rows = pool._views()
    assert_records(data_rows[slots // ps, slots % ps], scale_rows[slots // ps, slots % ps], data, scales, "compress")


# --- FP8 index-key pools (Fp8IndexKeyPool: the vLLM indexer K cache record) ------------------------------
def _index_records(pool, slots):
    """(e4m3 bytes [n, Di], fp32 scales [n]) of ``slots`` of an Fp8IndexKeyPool (on the CPU)."""
    values, scales = pool._views()
    page, off = slots.long() // pool.page_size, slots.long() % pool.page_size
    return values[page, off].cpu(), scales[page, off].cpu()


def _fp32_twin(cache, steps, backend):
    """The same steps on ``backend`` into an fp32 pool of the cache's pages (its own fp32 entries)."""
    f32 = cache.clone("cpu")
    f32.out_kind = "fp32"
    f32.out_buf = torch.full((cache.num_pages + 2, cache.page_size, cache.d), NAN)
    f32 = f32.clone(DEVICE)
    replay(f32, steps, backend=backend)
    return f32


@pytest.mark.parametrize("page_size", [1, 3])
def test_kv_fp8_index_output(backend, page_size):
    """Index keys (d = 32) into an Fp8IndexKeyPool over chunks and decode steps of two sequences: bytes
    outside the written records keep the poison; each record is byte-identical to the pool's own rule
    (quantize_index_rows) of the backend's fp32 entry (the same steps into an fp32 pool), and within
    one e4m3 step of the reference's record."""
    from longattn.cache.fp8_index import quantize_index_rows

    skip_unless_implements(KV, backend)
    d, ratio = 32, 4
    seqs, steps = make_steps([21, 6], ratio, True, d, seed=3, decode_tail=True, max_chunk=7)
    cache = Cache(2, ratio, True, d, page_size, 21, out="fp8_index", seed=3)
    ref, got = run_both(cache, steps, backend)
    from tests.helpers.compress import POISON_BYTE

    written = torch.zeros_like(ref.out_buf, dtype=torch.bool)
    all_slots = []
    for i, (a, _) in enumerate(seqs):
        for j in range(a.shape[0] // ratio):
            pg, off = int(cache.out_bt[i, j // page_size]) + 1, j % page_size  # + 1: the guard page
            written[pg, off * d : (off + 1) * d] = True
            written[pg, page_size * d + 4 * off : page_size * d + 4 * off + 4] = True
        all_slots.append(entry_slots(cache, i, a.shape[0] // ratio))
    g_bytes = got.out_buf.cpu()
    assert torch.all(g_bytes[~written] == POISON_BYTE) and torch.all(ref.out_buf[~written] == POISON_BYTE)
    slots = torch.cat(all_slots)
    have_v, have_s = _index_records(got.out, slots)
    want_v, want_s = _index_records(ref.out, slots)
    have = have_v.view(torch.float8_e4m3fn).float() * have_s[:, None]
    want = want_v.view(torch.float8_e4m3fn).float() * want_s[:, None]
    step = 32 * torch.maximum(have_s, want_s)[:, None]  # e4m3 spacing of the top binade, in scale units
    assert torch.all((have - want).abs() <= step), "more than one e4m3 step from the reference's record"
    if records_of_own_entries(backend):
        f32 = _fp32_twin(cache, steps, backend)
        data, scales = quantize_index_rows(f32.out.reshape(-1, d)[slots.to(DEVICE)].cpu())
        assert torch.equal(have_v, data), f"{int((have_v != data).sum())} e4m3 bytes differ from the pool's rule"
        assert torch.equal(have_s.view(torch.int32), scales.view(torch.int32)), "scales differ from the pool's rule"


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize("ue8m0", [True, False])
def test_kv_fp8_index_records_of_special_entries(backend, ue8m0):
    """compress_kv into an Fp8IndexKeyPool writes exactly the pool's write_rows of the backend's own fp32
    entry: NaN entries (NaN scores), values above 448 and +-inf (norm weights), -0.0, fp32 subnormals,
    an all-zero entry (scale 1e-4 / 448 rounded), a NaN among finite values (it does not set the
    scale); both scale rules (ue8m0: power-of-two scales; False: plain amax / 448, off the schema)."""
    skip_unless_implements(KV, backend)
    if not records_of_own_entries(backend):
        pytest.skip(f"{backend}: the fp32 and FP8 variants are separate compilations here")
    d, ratio, ps = 32, 4, 2
    _, steps = make_steps([17], ratio, True, d, seed=8, decode_tail=True)
    steps = poison_steps(steps, {(0, 6): [("b", 9, NAN)]})  # entry 2 NaN
    cache = Cache(1, ratio, True, d, ps, 17, out="fp8_index", seed=8)
    cache.w = torch.linspace(-3.0, 3.0, d) * 1e3
    cache.w[3], cache.w[7], cache.w[10], cache.w[11], cache.w[12] = INF, -0.0, 1e-41, 1e-40, -INF
    cache.freqs = cache.freqs[:0]  # no RoPE: the inf / -0.0 / subnormal channels stay as they are
    cases = [cache]
    zero = cache.clone("cpu")  # an all-zero weight: every entry 0 (the scale floor)
    zero.w = torch.zeros(d)
    cases.append(zero)
    for c in cases:
        got = c.clone(DEVICE)
        got.out_buf.fill_(0x5A)
        pool = Fp8IndexKeyPool(got.out_buf[1:-1], ps, d, ue8m0=ue8m0)
        for step in steps:
            call(longattn.compress_kv, **dict(c.__class__.args(got, step), out=pool), backend=backend)
        f32 = _fp32_twin(c, steps, backend)
        n = 17 // ratio
        slots = entry_slots(c, 0, n)
        entries = f32.out.reshape(-1, d)[slots.to(DEVICE)].cpu()
        if c is cache:
            assert bool(entries[2].isnan().all()) and bool(torch.isinf(entries[0]).any())
            assert bool((entries[0] == 0).any()) and bool(((entries[0] != 0) & (entries[0].abs() < 2.0**-126)).any())
            assert bool((entries[0].abs() > 448).any())
        else:  # (entry 2 is NaN here too)
            assert bool((entries[[0, 1, 3]] == 0).all()) and bool(entries[2].isnan().all())
        want = Fp8IndexKeyPool.empty(pool.num_pages, ps, d, ue8m0=ue8m0)
        want.data.fill_(0x5A)
        want.write_rows(slots, entries)
        diff = (pool.data.cpu() != want.data).nonzero()
        assert diff.numel() == 0, f"{diff.shape[0]} bytes differ, first at {diff[:4].tolist()}"


def test_kv_fp8_index_backend_declarations():
    """Ascend declines the FP8 index record with its reason; Triton accepts it (either scale rule)."""
    from longattn.ops.compress import ascend, support

    d, ratio = 32, 4
    _, steps = make_steps([9], ratio, True, d, seed=1, decode_tail=False)
    cache = Cache(1, ratio, True, d, 2, 9, out="fp8_index", seed=1)
    inputs = longattn.ops.compress.op.prepare_compress_kv(**cache.args(steps[0]))
    assert any("FP8 index-key record" in r for r in ascend.reasons(inputs)), ascend.reasons(inputs)
    assert support.triton_compress_kv_reasons(inputs) == []
    plain = cache.args(steps[0])
    plain["out"] = Fp8IndexKeyPool(cache.out_buf[1:-1], 2, d, ue8m0=False)
    assert support.triton_compress_kv_reasons(longattn.ops.compress.op.prepare_compress_kv(**plain)) == []


def test_kv_fp8_index_crosses_the_schema():
    """An Fp8IndexKeyPool (default scale rule) crosses the compress_kv schema as (data, -page_size) and is
    rebuilt with its page size and dim: a direct torch.ops call writes the public call's bytes. A pool
    with plain scales does not cross (the schema cannot carry the rule): it runs eagerly, off the schema."""
    from longattn.ops import pools
    from longattn.ops.compress import op as compress_op

    d, ratio, ps = 32, 4, 3
    _, steps = make_steps([14], ratio, True, d, seed=2, decode_tail=False)
    cache = Cache(1, ratio, True, d, ps, 14, out="fp8_index", seed=2)
    pool = cache.out
    data, page = pools.to_schema(pool)
    assert data is pool.data and page == -ps
    back = pools.from_schema(data, page)
    assert isinstance(back, Fp8IndexKeyPool) and (back.page_size, back.dim, back.ue8m0) == (ps, d, True)
    direct = cache.clone("cpu")
    for step in steps:
        longattn.compress_kv(**cache.args(step), backend="reference")
        args = compress_op.prepare_compress_kv(**direct.args(step)).to_schema()
        assert args[8].data_ptr() == direct.out.data.data_ptr() and args[9] == -ps
        torch.ops.longattn.compress_kv(*args, "reference")
    assert torch.equal(cache.out_buf, direct.out_buf) and not bool((cache.out_buf == 0xA5).all())
    plain = dict(cache.args(steps[0]), out=Fp8IndexKeyPool(cache.out_buf[1:-1], ps, d, ue8m0=False))
    assert compress_op.prepare_compress_kv(**plain).to_schema() is None
