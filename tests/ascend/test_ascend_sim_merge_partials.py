"""The ``merge_partial_states`` Ascend C kernel (ascend_c/combine) on the CPU emulator: the S-way merge of
sparse_attention's split-KV partial states with the sink folded in, one launch.

Compared with a float64 S-way merge (``merge64`` below: merge_attention_states' rules for any S, the
sink as apply_attention_sink) on random and adversarial states: empty partials (lse -inf) whose outs are
NaN (never read), weights that underflow in fp32 (their NaN outs never read either), all partials empty,
NaN / +inf lse, huge and tiny lse spreads, lse far from 0, S = 1 .. 64 (the kernel's maximum), D = 0 / 1 /
64 / 512 / 1025, H not a power of two, T = 0, sinks +inf / -inf / NaN / finite, the three out dtypes,
row splits over 2 / 4 / 12 vector cores (1 / 2 / 6 emulated AI cores), batches that end at a token's end,
tokens spread over several batches (H > batch rows). Outputs are poisoned with NaN by the host, so an
element the kernel does not write fails the NaN-mask comparison.

Bounds (derived, not tuned; u = 2**-24, per row r with S partials, vmax the largest |out| of its read
partials, L its lse): each weight e_s = exp(l_s - m) is off relatively by <= (|l_s - m| + 2) u (the
rounded difference, libm's expf within 1 ulp), total = sum e_s by <= 4 S u (S rounded additions of those
terms, sum_s e_s |l_s - m| <= S max_d d e^-d < S), a coefficient e_s / total by <= (|l_s - m| + 4 S + 3) u;
sum_s c_s |x| (|l_s - m| + ...) <= (5 S + 3) u vmax, and the S products + S - 1 sums add (S + 1) u vmax:
|out - ref| <= (6 S + 4) u vmax. lse = m + ln(total): <= u |L| + (4 S + 4) u. The sink factor g =
1 / (1 + exp(sink - L)) is off relatively by <= (1 - g)(dL + u |sink - L|) + 4 u, so the sunk out by
g * (out bound) + g |out| ((1 - g)(dL + u |sink - L|) + 6 u). A factor 2 covers second-order terms (as
tests/tolerance.py); a 16-bit out adds one rounding, rtol 2 * OUT_ROUNDING; fp32 underflow (the device may
flush denormals) adds S * 2**-120 * vmax; fp16's subnormal spacing adds 2**-25.
"""

from __future__ import annotations

import math

import longattn  # noqa: F401  (registers the ops the reference tree below uses)
import pytest
import torch
from longattn.backends import ascend_sim
from longattn.ops.combine import ascend as combine_ascend

from tests.tolerance import OUT_ROUNDING, U32

pytestmark = pytest.mark.skipif(
    ascend_sim.BACKEND.unavailable is not None, reason=f"ascend_sim: {ascend_sim.BACKEND.unavailable}"
)
SIM = "ascend_sim"
FLOATS = [torch.float32, torch.bfloat16, torch.float16]
INF, NAN = float("inf"), float("nan")
UB_BYTES = 192 * 1024 - 8 * 1024 - 256
MAX_S = combine_ascend.MAX_PARTIALS


def _run(po, pl, sink, dtype):
    return combine_ascend.run_merge_partials(SIM, po, pl, sink, dtype)


def _sink_factor(L: float, sk: float) -> float:
    """sigmoid(L - sk) with apply_attention_sink's IEEE rules (L finite here)."""
    if math.isnan(sk):
        return NAN
    z = sk - L
    return 0.0 if z > 700 else 1.0 / (1.0 + math.exp(z))


def merge64(po, pl, sink):
    """float64 S-way merge: (out [T, H, D], lse [T, H], out_atol [T, H], lse_atol [T, H]; module doc).
    A partial is read where its fp32 weight exp(l_s - m) is > 0 (the kernel's, and merge_attention_states',
    rule: an empty partial or one whose weight underflows is never read)."""
    T, S, H, D = po.shape
    l32 = pl.float()
    out = torch.zeros(T, H, D, dtype=torch.float64)
    lse = torch.full((T, H), -INF, dtype=torch.float64)
    out_atol = torch.zeros(T, H, dtype=torch.float64)
    lse_atol = torch.zeros(T, H, dtype=torch.float64)
    for t in range(T):
        for h in range(H):
            ls = [float(v) for v in l32[t, :, h]]
            if any(math.isnan(v) for v in ls) or any(v == INF for v in ls):
                lse[t, h] = NAN if any(math.isnan(v) for v in ls) else INF
                out[t, h] = NAN
                continue
            fin = [s for s in range(S) if ls[s] != -INF]
            if not fin:
                continue  # every partial empty: out 0 whatever the sink, lse -inf
            m = max(ls[s] for s in fin)
            read = [s for s in fin if float(torch.exp(l32[t, s, h] - torch.tensor(m))) > 0]
            ws = [math.exp(ls[s] - m) for s in read]
            z = math.fsum(ws)
            o = sum((w / z) * po[t, s, h].double() for w, s in zip(ws, read))
            L = m + math.log(z)
            vmax = max(float(po[t, s, h].abs().max()) for s in read) if D else 0.0
            lse[t, h] = L
            dl = U32 * abs(L) + (4 * S + 4) * U32
            lse_atol[t, h] = 2 * dl
            bound = (6 * S + 4) * U32 * vmax
            if sink is not None:
                sk = float(sink[h])
                g = _sink_factor(L, sk)
                if math.isnan(g):
                    out[t, h] = NAN
                    continue
                omax = float(o.abs().max()) if D else 0.0
                rel = (1 - g) * (dl + (U32 * abs(sk - L) if math.isfinite(sk) else 0.0)) + 6 * U32
                bound = g * bound + g * omax * rel
                o = o * g
            out[t, h] = o
            out_atol[t, h] = 2 * bound + S * 2.0**-120 * vmax
    return out, lse, out_atol, lse_atol


def check(out, lse, po, pl, sink, dtype, what):
    """The kernel's (out, lse) against merge64 within the module's bounds, NaN / inf masks exact."""
    T, S, H, D = po.shape
    ref, rlse, out_atol, lse_atol = merge64(po, pl, sink)
    assert out.shape == (T, H, D) and out.dtype == dtype, (what, out.shape, out.dtype)
    assert lse.shape == (T, H) and lse.dtype == torch.float32, (what, lse.shape, lse.dtype)
    lse64 = lse.double()
    assert torch.equal(torch.isnan(lse64), torch.isnan(rlse)), f"{what}: lse NaN rows differ"
    inf = torch.isinf(rlse)
    assert torch.equal(torch.isinf(lse64), inf) and torch.equal(lse64[inf], rlse[inf]), f"{what}: lse inf rows"
    fin = torch.isfinite(rlse)
    err = (lse64 - rlse)[fin].abs()
    assert bool((err <= lse_atol[fin]).all()), f"{what}: lse error {float(err.max()):.3e}"
    o64 = out.double()
    assert torch.equal(torch.isnan(o64), torch.isnan(ref)), f"{what}: out NaN positions differ (unwritten?)"
    ok = ~torch.isnan(ref)
    assert bool(torch.isfinite(o64[ok]).all()), f"{what}: non-finite out"
    floor = 2.0**-25 if dtype == torch.float16 else 0.0
    bound = out_atol[..., None].expand_as(ref) + 2 * OUT_ROUNDING[dtype] * ref.abs() + floor
    e = (o64 - ref).abs()
    bad = ok & (e > bound)
    assert not bool(bad.any()), (
        f"{what}: out error {float(e[bad].max()):.3e} > bound {float(bound[bad][e[bad].argmax()]):.3e} "
        f"at {bad.nonzero()[0].tolist()}"
    )


def states(T, S, H, D, seed, adversarial=True):
    """Random partial states; adversarial rows (by row r = t * H + h, so any shape gets some): empty
    partials in runs, all partials empty, NaN and +inf lse, a huge spread (the small weights underflow:
    never read), equal lse, lse far from 0. The out of every partial whose fp32 weight is 0 is NaN."""
    g = torch.Generator().manual_seed(seed)
    po = torch.randn(T, S, H, D, generator=g) * 2
    pl = torch.randn(T, S, H, generator=g) * 3
    if adversarial and T * H:
        r = torch.arange(T * H).view(T, H)

        def put(s, rows, value):  # lse of partial s on the rows where `rows` holds
            pl[:, s][rows] = value

        for s in range(S):
            put(s, ((r + 3 * s) // 4) % 3 == 0, -INF)  # runs of empty partials
            put(s, r == 1, -INF)  # row 1: every partial empty
        put(0, r % 13 == 2, NAN)
        put(S - 1, r % 17 == 5, INF)
        if S > 1:
            put(1, r % 11 == 7, NAN)
            put(0, r % 19 == 9, INF)
            spread = r % 7 == 3  # partial 0 at +80, the others at -90 (weight exp(-170) = 0 in fp32) or near 80
            put(0, spread, 80.0)
            for s in range(1, S):
                put(s, spread, torch.where(torch.rand(int(spread.sum()), generator=g) < 0.5, -90.0, 79.0 - s))
        for s in range(S):
            put(s, r % 7 == 4, 1.25)  # equal lse
            pl[:, s][r % 5 == 2] += 3e4  # lse far from 0 (the u |L| term)
        # Poison what must never be read.
        m = torch.where(torch.isneginf(pl), torch.full_like(pl, -INF), pl).amax(1, keepdim=True)
        unread = torch.isneginf(pl) | (torch.exp(pl - m) == 0)
        po[unread] = NAN
    return po, pl


def sinks(H, kind, seed):
    g = torch.Generator().manual_seed(seed)
    if kind is None:
        return None
    s = torch.randn(H, generator=g) * 2
    if kind == "mixed":  # +inf, -inf, NaN, a sink far above the lse, finite
        for i, v in enumerate([INF, -INF, NAN, 60.0]):
            if i < H:
                s[(i * 3) % H] = v
    return s


# ----------------------------------------------------------------------------------------------------
# tiling, limits, argument checks
# ----------------------------------------------------------------------------------------------------
def test_tiling_fits_the_ub_for_every_s_and_d():
    """Every S in 1..MAX_PARTIALS and D gets a tiling within the UB whose column tiles cover D; the C++
    maximum is the Python mirror's; S = MAX_PARTIALS + 1 gets none."""
    ext = ascend_sim.extension()
    for code in (0, 1, 2):
        for S in range(1, MAX_S + 1):
            for D in (0, 1, 64, 512, 576, 1024, 1025, 4097, 100000):
                t = ext.merge_partials_tiling(1000, 8, S, D, code, S % 2 == 0, 4)
                assert t["max_partials"] == MAX_S
                assert t["block_dim"] == 8 and t["rows_per_core"] == 125, (S, D, t)
                assert t["ub_bytes"] <= UB_BYTES, (S, D, code, t)
                assert 1 <= t["chunk_rows"] <= 255 and 16 <= t["col_tile"] <= 1024 and t["col_tile"] % 16 == 0
                assert t["batch_rows"] % 64 == 0 and 64 <= t["batch_rows"] <= 512
                assert (S + 1) * t["batch_rows"] * 4 <= 32 * 1024 or t["batch_rows"] == 64
                if D:
                    assert -(-D // t["col_tile"]) == -(-D // 1024)
    assert ext.merge_partials_tiling(1000, 8, MAX_S + 1, 64, 0, False, 4)["block_dim"] == 0
    assert ext.merge_partials_tiling(1000, 8, 0, 64, 0, False, 4)["block_dim"] == 0


def test_argument_checks_name_the_argument():
    po, pl = torch.zeros(2, 3, 4, 8), torch.zeros(2, 3, 4)
    with pytest.raises(RuntimeError, match=r"partial_out must be float32, got BFloat16"):
        _run(po.bfloat16(), pl, None, torch.float32)
    with pytest.raises(RuntimeError, match=r"partial_out must be \[T, S, H, D\]"):
        _run(po[0], pl, None, torch.float32)
    with pytest.raises(RuntimeError, match=r"partial_lse must be \[T, S, H\] = \[2, 3, 4\], got shape \[2, 4, 3\]"):
        _run(po, pl.transpose(1, 2), None, torch.float32)
    with pytest.raises(RuntimeError, match=r"attn_sink must be \[H\] = \[4\], got shape \[3\]"):
        _run(po, pl, torch.zeros(3), torch.float32)
    with pytest.raises(RuntimeError, match=rf"S = {MAX_S + 1} partials .* merges 1 to {MAX_S}"):
        _run(torch.zeros(1, MAX_S + 1, 2, 8), torch.zeros(1, MAX_S + 1, 2), None, torch.float32)
    with pytest.raises(RuntimeError, match=r"out_dtype must be a DataTypeCode .* got 7"):
        ascend_sim.kernel("merge_partial_states")(po, pl, None, 7)


def test_empty_shapes():
    """T = 0 (nothing launched) and D = 0 (only the lse written)."""
    out, lse = _run(torch.zeros(0, 3, 5, 64), torch.zeros(0, 3, 5), None, torch.bfloat16)
    assert out.shape == (0, 5, 64) and out.dtype == torch.bfloat16 and lse.shape == (0, 5)
    po, pl = states(3, 4, 5, 0, seed=3)
    out, lse = _run(po, pl, sinks(5, "mixed", 3), torch.float16)
    assert out.shape == (3, 5, 0)
    check(out, lse, po, pl, sinks(5, "mixed", 3), torch.float16, "D=0")


# ----------------------------------------------------------------------------------------------------
# against the float64 S-way merge
# ----------------------------------------------------------------------------------------------------
# (S, D): S = 1, 2, 3, 7, the maximum; D = 1 (one 16-column tile), 64, 512, 1025 (two column tiles).
SHAPES = [(1, 64), (2, 1), (3, 512), (7, 1025), (MAX_S, 64), (5, 16)]


@pytest.mark.parametrize("sink", [None, "mixed", "finite"])
@pytest.mark.parametrize("dtype", FLOATS, ids=str)
@pytest.mark.parametrize("S,D", SHAPES, ids=lambda v: str(v))
def test_matches_the_float64_merge(S, D, dtype, sink):
    T, H = 3, 5
    po, pl = states(T, S, H, D, seed=S * 1000 + D)
    sk = sinks(H, sink, seed=S + D)
    out, lse = _run(po, pl, sk, dtype)
    check(out, lse, po, pl, sk, dtype, f"S={S} D={D} {dtype} sink={sink}")
    # all finite: every element of both outputs written (the host poisons them with NaN)
    po, pl = states(T, S, H, D, seed=S + 7, adversarial=False)
    out, lse = _run(po, pl, sinks(H, "finite", 1) if sink else None, dtype)
    assert not torch.isnan(out).any() and not torch.isnan(lse).any()


# (T, H, D, S): one row, rows fewer than the vector cores, several batches per core whose first rows sit
# mid-token, H = 600 > a batch (S = 3: 512 rows), S = 64 (batches of 64 rows: H = 130 spans three),
# chunks that end mid-batch (D = 200: 30 fp32 rows per chunk).
SPLITS = [(1, 1, 1, 2), (3, 5, 64, 3), (60, 7, 16, 5), (2, 600, 8, 3), (3, 130, 24, MAX_S), (9, 11, 200, 4)]


@pytest.mark.parametrize("cores", [1, 2, 6])
def test_row_splits_over_the_vector_cores(cores, monkeypatch):
    monkeypatch.setenv("LONGATTN_ASCEND_SIM_CORES", str(cores))
    for i, (T, H, D, S) in enumerate(SPLITS):
        dtype = FLOATS[(i + cores) % 3]
        po, pl = states(T, S, H, D, seed=10 * i + cores)
        sk = sinks(H, "mixed" if i % 2 else "finite", seed=i)
        out, lse = _run(po, pl, sk, dtype)
        check(out, lse, po, pl, sk, dtype, f"T={T} H={H} D={D} S={S} {dtype} on {2 * cores} vector cores")


def test_a_single_partial_is_exact():
    """S = 1 (no sink): the partial itself, bit for bit (its coefficient is exp(0) / 1 = 1); with other
    partials all empty (NaN outs, never read) the same; a 16-bit out is the partial rounded to nearest
    even (torch's .to). Rows whose partials are all empty: out 0, lse -inf."""
    g = torch.Generator().manual_seed(11)
    T, H, D = 4, 3, 200
    po = torch.randn(T, 1, H, D, generator=g)
    pl = torch.randn(T, 1, H, generator=g) * 40
    pl[1, 0, 2] = -INF
    for dtype in FLOATS:
        out, lse = _run(po, pl, None, dtype)
        want = po[:, 0].clone()
        want[1, 2] = 0.0
        assert torch.equal(out, want.to(dtype)) and torch.equal(lse, pl[:, 0]), dtype
    S = 7
    wide = torch.full((T, S, H, D), NAN)
    wl = torch.full((T, S, H), -INF)
    k = torch.arange(T * H).view(T, H) % S  # the one non-empty partial of each row
    for t in range(T):
        for h in range(H):
            wide[t, k[t, h], h] = po[t, 0, h]
            wl[t, k[t, h], h] = pl[t, 0, h]
    out, lse = _run(wide, wl, None, torch.float32)
    assert torch.equal(out, want) and torch.equal(lse, pl[:, 0])


def _tree_reference(po, pl, sink):
    """The pairwise path the kernel replaces: merge_attention_states over the partials (reference
    backend), then apply_attention_sink."""
    out, lse = po[:, 0], pl[:, 0]
    for s in range(1, po.shape[1]):
        out, lse = longattn.merge_attention_states(out, lse, po[:, s], pl[:, s], backend="reference")
    if sink is not None:
        out = longattn.apply_attention_sink(out, lse, sink, backend="reference")
    return out, lse


# lse of three partials per row: every non-finite combination class of merge_attention_states' rules.
NONFINITE_ROWS = [
    (-INF, -INF, -INF),  # all empty: out 0 whatever the sink, lse -inf
    (NAN, 1.0, -INF),  # NaN anywhere: NaN / NaN
    (1.0, -INF, NAN),
    (INF, 1.0, 2.0),  # +inf: lse +inf, out NaN
    (-INF, INF, -INF),
    (INF, NAN, 1.0),  # NaN wins over +inf
    (NAN, INF, INF),
    (INF, INF, -INF),
    (1.0, -INF, -INF),  # one partial: that partial
    (-INF, -INF, 2.0),
    (3.0, 3.0, 3.0),
    (1e30, -1e30, -INF),
]


@pytest.mark.parametrize("dtype", FLOATS, ids=str)
def test_nonfinite_rules_are_the_pairwise_merges(dtype):
    """Each row class against the merge tree it replaces (reference backend), for every sink kind: the
    same NaN / inf pattern, -inf / +inf / NaN lse, 0 rows; the outs of empty partials are NaN."""
    S, D = 3, 40
    rows = len(NONFINITE_ROWS)
    sink_vals = [INF, -INF, NAN, 0.5, 1e4]
    H = len(sink_vals)
    g = torch.Generator().manual_seed(2)
    po = torch.randn(rows, S, H, D, generator=g)
    pl = torch.tensor(NONFINITE_ROWS).view(rows, S, 1).expand(rows, S, H).contiguous()
    po[torch.isneginf(pl)] = NAN
    for sink in (None, torch.tensor(sink_vals)):
        out, lse = _run(po, pl, sink, dtype)
        want, wlse = _tree_reference(po, pl, sink)
        what = f"{dtype} sink={sink}"
        assert torch.equal(torch.isnan(lse), torch.isnan(wlse)), what
        inf = torch.isinf(wlse)
        assert torch.equal(torch.isinf(lse), inf) and torch.equal(lse[inf], wlse[inf]), what
        assert torch.equal(torch.isnan(out), torch.isnan(want)), what
        zero = want == 0
        assert torch.equal(out.float()[zero], want[zero]), what
        check(out, lse, po, pl, sink, dtype, what)


def test_ascend_npu_entry_point_marshals_as_the_kernel_expects(monkeypatch):
    """The ``ascend`` backend's call (never run here: no NPU) against the emulator build:
    ``torch.ops.longattn_ascend.merge_partial_states`` takes the emulator entry's arguments minus the
    trailing AI-core count, so a shim that appends it reproduces ``ascend_sim`` bit for bit."""
    from longattn.backends import ascend

    class Shim:
        def __getattr__(self, name):
            return lambda *args: getattr(ascend_sim.extension(), name)(*args, ascend_sim.num_cores())

    monkeypatch.setattr(ascend, "ops", lambda: Shim())
    po, pl = states(2, 3, 5, 72, seed=4)
    pl[torch.isnan(pl) | torch.isposinf(pl)] = 0.5  # no NaN rows: torch.equal compares
    po[torch.isnan(po)] = 0.0
    for sink in (None, sinks(5, "finite", 4)):
        got = combine_ascend.run_merge_partials("ascend", po, pl, sink, torch.bfloat16)
        want = _run(po, pl, sink, torch.bfloat16)
        assert all(torch.equal(a, b) for a, b in zip(got, want))
