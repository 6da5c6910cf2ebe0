"""The compress_pool Ascend C kernel (ascend_c/compress_pool) on the CPU emulator: what the op x backend
tests (tests/ops/test_compress.py, tests/fuzz) do not reach.

* The tiling: the Python mirror (``ops/compress/ascend.py``: ``pool_tiling``, ``compress_pool_ub_bytes``)
  equals the C++ tiling of the extension for every width, ratio, dtype and core count tried; the UB
  holds every tiling and each chunk is as long as the UB allows; the widest footprints run (in a
  subprocess: a UB overflow would abort the process) and what the kernel declines (2**31 elements) is
  declined by Python and by the host code alike.
* Launch shapes: fewer entries than cores (channel tiles split to feed them, a narrow last tile), any
  number of emulated cores, chunks that straddle the two block halves of an overlapping entry, several
  chunks per entry, ratio 1, an overlapping call with a single entry, odd widths (rows that are not a
  multiple of 32 B), rows read in place from a strided view, mixed dtypes.
* The output is NaN-poisoned by the host before the launch: finite inputs must give a finite result
  everywhere (every element written).
"""

from __future__ import annotations

import subprocess
import sys

import longattn
import pytest
import torch
from longattn.backends import ascend_sim
from longattn.backends.registry import BackendError
from longattn.ops.compress import ascend as pool_ascend

from tests import oracle
from tests.helpers.compress import pool_bound
from tests.helpers.dispatch import reasons
from tests.tolerance import assert_close

pytestmark = pytest.mark.skipif(
    ascend_sim.BACKEND.unavailable is not None, reason=f"ascend_sim: {ascend_sim.BACKEND.unavailable}"
)
SIM = "ascend_sim"
CODE = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2}
FLOATS = list(CODE)


def _inputs(S, ratio, overlap, d, dtype=torch.float32, seed=0, b_dtype=None):
    c = 2 if overlap else 1
    g = torch.Generator().manual_seed(seed * 7919 + S * 31 + d)
    a = (torch.randn(S, c * d, generator=g) * 2).to(dtype)
    b = (torch.randn(S, c * d, generator=g) * 3).to(b_dtype or dtype)
    return a, b


def _check(a, b, ratio, overlap, use_oracle=True):
    """The kernel vs the float64 oracle (small shapes) and the reference; returns the kernel's entries."""
    got = longattn.compress_pool(a, b, ratio, overlap, backend=SIM)
    S, width = a.shape
    d = width // (2 if overlap else 1)
    assert got.dtype == torch.float32 and got.shape == (S // ratio, d)
    assert torch.isfinite(got).all(), "an element of the NaN-poisoned output was not written"
    bound = pool_bound(a, b, ratio)
    if use_oracle:
        assert_close(got, oracle.compress_pool(a, b, ratio, overlap), bound, 0.0, "kernel vs oracle")
    ref = longattn.compress_pool(a, b, ratio, overlap, backend="reference")
    assert_close(got, ref, 2 * bound, 0.0, "kernel vs reference")
    return got


# ----------------------------------------------------------------------------------------------------
# the tiling mirror and the UB
# ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", FLOATS, ids=str)
def test_pool_tiling_mirror(dtype):
    """ascend.pool_tiling (Python) == CompressPoolTilingCompute (C++) field for field; every tiling fits
    the UB, and a chunk shorter than the entry's slots leaves no room for one more row."""
    ext = ascend_sim.extension()
    sz = dtype.itemsize
    for d in (1, 5, 8, 33, 64, 100, 200, 511, 512, 513, 1000, 1024, 1536, 4096, 7000, 16384):
        for ratio, overlap in ((1, False), (4, True), (13, True), (128, False), (300, False), (5000, True)):
            for n in (1, 2, 7, 100):
                for cores in (1, 3, 24):
                    S = n * ratio + 1
                    W = (2 if overlap else 1) * d
                    got = ext.compress_pool_tiling(S, W, ratio, overlap, CODE[dtype], cores)
                    want = pool_ascend.pool_tiling(S, W, ratio, overlap, sz, 2 * cores)
                    assert got == want, (d, ratio, overlap, n, cores)
                    assert want["ub_bytes"] <= pool_ascend.UB_BYTES
                    tile, rows = want["tile_dim"], want["chunk_rows"]
                    assert (
                        tile <= pool_ascend.POOL_MAX_TILE
                        and want["num_tiles"] * tile >= d > (want["num_tiles"] - 1) * tile
                    )
                    slots = (2 if overlap else 1) * ratio
                    if rows < min(slots, pool_ascend.POOL_MAX_ROWS):
                        assert pool_ascend.compress_pool_ub_bytes(tile, rows + 1, sz) > pool_ascend.UB_BYTES
                    assert want["block_dim"] == min(2 * cores, want["num_tasks"])


def test_pool_tiling_feeds_idle_cores():
    """Fewer entries than AIV cores: the channels are split (tiles of at least 64, a multiple of 64 but
    the last) so that the tasks cover the cores; many entries keep whole 512-channel tiles."""
    t = pool_ascend.pool_tiling(4, 2 * 512, 4, True, 4, 48)  # one CSA entry, 48 AIVs
    assert t["num_tiles"] == 8 and t["tile_dim"] == 64 and t["block_dim"] == 8
    t = pool_ascend.pool_tiling(4096, 2 * 512, 4, True, 2, 48)  # a CSA prefill chunk
    assert t["num_tiles"] == 1 and t["tile_dim"] == 512 and t["chunk_rows"] == 8
    t = pool_ascend.pool_tiling(4096, 512, 128, False, 2, 48)  # HCA: 32 entries of 128 slots
    assert t["num_tiles"] == 2 and t["tile_dim"] == 256 and t["block_dim"] == 48
    t = pool_ascend.pool_tiling(2, 2 * 200, 2, True, 4, 8)  # one entry, d = 200: tiles 64, 64, 64, 8
    assert (t["num_tiles"], t["tile_dim"], t["block_dim"]) == (4, 64, 4)


@pytest.mark.parametrize(
    "S,ratio,overlap,d,dtype,tile,rows",
    [
        (1024, 128, False, 512, torch.float32, 512, 20),  # 8 entries, whole tiles at the UB's row limit: 7 chunks
        (480, 30, True, 512, torch.bfloat16, 512, 20),  # 60 slots in chunks of 20, one straddling slot 30
        (40, 16, True, 4096, torch.float32, 512, 20),  # 8 tiles of 512 per entry
        (50, 25, False, 16384 + 40, torch.float16, 512, 20),  # 33 tiles, the last one 40 wide
    ],
)
def test_pool_widest_footprints_run(S, ratio, overlap, d, dtype, tile, rows, monkeypatch):
    """The tilings with the largest UB footprint (512-channel tiles, as many rows as fit: within a row of
    the UB) run in the emulator, which aborts on a UB overflow (so in a subprocess), and agree with the
    reference."""
    monkeypatch.setenv("LONGATTN_ASCEND_SIM_CORES", "4")
    c = 2 if overlap else 1
    t = pool_ascend.pool_tiling(S, c * d, ratio, overlap, dtype.itemsize, 8)
    assert (t["tile_dim"], t["chunk_rows"]) == (tile, rows)
    per_row = pool_ascend.compress_pool_ub_bytes(tile, rows + 1, dtype.itemsize) - t["ub_bytes"]
    assert 0 <= pool_ascend.UB_BYTES - t["ub_bytes"] < per_row
    code = f"""
import torch, longattn
from tests.helpers.compress import pool_bound
from tests.tolerance import assert_close
g = torch.Generator().manual_seed(3)
a = (torch.randn({S}, {c * d}, generator=g) * 2).to({dtype})
b = (torch.randn({S}, {c * d}, generator=g) * 3).to({dtype})
got = longattn.compress_pool(a, b, {ratio}, {overlap}, backend="ascend_sim")
ref = longattn.compress_pool(a, b, {ratio}, {overlap}, backend="reference")
assert torch.isfinite(got).all()
assert_close(got, ref, 2 * pool_bound(a, b, {ratio}), 0.0, "widest footprint")
print("OK")
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0 and "OK" in proc.stdout, (proc.stdout + proc.stderr)[-3000:]


def test_pool_declines_2_31_elements():
    """a / b of 2**31 elements: declined by reasons() (no allocation: expanded views) and refused by the
    host code of the extension before any launch."""
    cpu = torch.device("cpu")
    big = torch.zeros(1).expand(2**16, 2**15)
    small = torch.zeros(4, 8)
    why = reasons(SIM, "compress_pool", cpu, a=big, b=big, ratio=4, overlap=True)
    assert len(why) == 2 and all("2**31" in r for r in why)
    assert reasons(SIM, "compress_pool", cpu, a=small, b=small, ratio=4, overlap=True) == []
    with pytest.raises(BackendError, match="2\\*\\*31"):
        longattn.compress_pool(big, big, 4, True, backend=SIM)
    with pytest.raises(RuntimeError, match="2\\*\\*31"):
        ascend_sim.extension().compress_pool(big, big, 4, True, 4)


# ----------------------------------------------------------------------------------------------------
# launch shapes
# ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("cores", [1, 3, 7])
def test_pool_any_core_count(cores, monkeypatch):
    """Contiguous task ranges of uneven length per core (entries x tiles not a multiple of the cores),
    fewer entries than cores (split channels, a narrow last tile), more entries than cores."""
    monkeypatch.setenv("LONGATTN_ASCEND_SIM_CORES", str(cores))
    for S, ratio, overlap, d in ((9, 4, True, 200), (8, 8, False, 130), (70, 4, True, 24), (53, 5, False, 72)):
        _check(*_inputs(S, ratio, overlap, d, seed=cores), ratio, overlap)


@pytest.mark.parametrize("dtype", FLOATS, ids=str)
@pytest.mark.parametrize("d", [1, 3, 13, 33])
def test_pool_odd_widths(d, dtype):
    """Rows of d * size bytes, not a multiple of 32 B (DataCopyPad; half B starts mid-block)."""
    for S, ratio, overlap in ((13, 3, True), (11, 2, False)):
        _check(*_inputs(S, ratio, overlap, d, dtype), ratio, overlap)


def test_pool_ratio_one_is_the_values():
    """ratio 1 without overlap: one slot per entry, weight e^0 / e^0 = 1: the values exactly. With overlap,
    entry j pools half A of token j - 1 and half B of token j (entry 0: half B of token 0 exactly)."""
    a, b = _inputs(9, 1, False, 21)
    assert torch.equal(longattn.compress_pool(a, b, 1, False, backend=SIM), a)
    a, b = _inputs(9, 1, True, 21, torch.bfloat16)
    got = _check(a, b, 1, True)
    assert torch.equal(got[0], a[0, 21:].float())


@pytest.mark.parametrize("S", [4, 5, 7])
def test_pool_overlap_single_entry(S):
    """S in [ratio, 2 ratio): one entry, which has no previous block: the softmax of its own half B."""
    d, ratio = 40, 4
    a, b = _inputs(S, ratio, True, d)
    got = _check(a, b, ratio, True)
    assert got.shape == (1, d)
    w = torch.softmax(b[:ratio, d:].double(), dim=0)
    torch.testing.assert_close(got[0].double(), (w * a[:ratio, d:].double()).sum(0), rtol=0, atol=1e-5)


def test_pool_no_entry_launches_nothing():
    """S < ratio (also ratio beyond 32 bits) and d = 0: an empty [0, d] / [n, 0] result."""
    a, b = _inputs(5, 8, True, 16)
    assert longattn.compress_pool(a, b, 8, True, backend=SIM).shape == (0, 16)
    assert longattn.compress_pool(a, b, 2**40, True, backend=SIM).shape == (0, 16)
    z = torch.zeros(6, 0)
    assert longattn.compress_pool(z, z, 2, False, backend=SIM).shape == (3, 0)


def test_pool_chunks_straddle_the_block_halves(monkeypatch):
    """Chunks shorter than an entry's 2 * ratio slots, one of them straddling slot ratio (two copies per
    tensor: the end of half A of block j - 1, the start of half B of block j). d = 512 fp32, 9 entries:
    chunks of 20, ratio 13: entry j >= 1 pools slots [0, 20) then [20, 26), entry 0 its 13 half-B slots in
    one chunk. fp16, 3 entries (tiles of 192): chunks of 59, ratio 50."""
    monkeypatch.setenv("LONGATTN_ASCEND_SIM_CORES", "4")
    for S, ratio, dtype in ((117, 13, torch.float32), (150, 50, torch.float16)):
        t = pool_ascend.pool_tiling(S, 1024, ratio, True, dtype.itemsize, 8)
        rows = t["chunk_rows"]
        assert rows < 2 * ratio and ratio % rows, t
        _check(*_inputs(S, ratio, True, 512, dtype), ratio, True, use_oracle=False)


def test_pool_nonfinite_across_chunks(monkeypatch):
    """The IEEE rule when a channel's slots span several chunks (entry 1: chunks [0, 20), [20, 40),
    [40, 60)): a NaN score and a +inf score in the second chunk, a NaN value in the third, a NaN value
    under a -inf score in the first chunk of a channel with finite scores later (0 * NaN = NaN survives
    the rescale), a channel whose first chunk is all -inf (finite), one that is -inf everywhere (0)."""
    monkeypatch.setenv("LONGATTN_ASCEND_SIM_CORES", "4")
    S, ratio, d = 240, 30, 512  # overlap, 8 entries: 512-channel tiles, chunks of 20 of 60 slots
    assert pool_ascend.pool_tiling(S, 2 * d, ratio, True, 4, 8)["chunk_rows"] == 20
    a, b = _inputs(S, ratio, True, d)
    b[:, 0] = -float("inf")
    b[:, d] = -float("inf")  # channel 0: no score above -inf -> 0
    a[40, d] = float("nan")  # ... even with a NaN value
    b[25, 1] = float("nan")  # entry 1, slot 25 (second chunk): NaN score
    b[35, d + 2] = float("inf")  # entry 1, slot 35: +inf score
    a[50, d + 3] = float("nan")  # entry 1, slot 50 (third chunk): NaN value
    b[2, 4], a[2, 4] = -float("inf"), float("nan")  # entry 1, slot 2 (first chunk): NaN value at weight 0
    b[:20, 5] = -float("inf")  # entry 1, channel 5: its first chunk all -inf, finite later
    got = longattn.compress_pool(a, b, ratio, True, backend=SIM)
    want = oracle.compress_pool_ieee(a, b, ratio, True)
    assert torch.equal(got.isnan(), want.isnan())
    assert torch.all(got[:, 0] == 0) and bool(got[1, 1:5].isnan().all()) and bool(torch.isfinite(got[1, 5]))
    fin = torch.isfinite(want)
    assert float((got.double()[fin] - want[fin]).abs().max()) <= 1e-5


def test_pool_strided_rows_and_mixed_dtypes():
    """Halves of a wider projection (unit column stride: read in place, row pitch > width), a transposed
    view and broadcast rows (copied), a bf16 a with fp32 b (both widened to fp32)."""
    g = torch.Generator().manual_seed(5)
    S, ratio, d = 24, 4, 20
    proj = torch.randn(S, 5 * d, generator=g)
    a, b = proj[:, : 2 * d], proj[:, 3 * d :] * 3  # a: a view with row pitch 5d; b: a contiguous copy
    assert a.stride() == (5 * d, 1)
    _check(a, b, ratio, True)
    _check(a, proj[:, d : 3 * d], ratio, True)  # both views, pitch 5d
    _check(torch.randn(2 * d, S, generator=g).t(), torch.randn(2 * d, S, generator=g).t(), ratio, True)
    _check(torch.randn(1, 2 * d, generator=g).expand(S, 2 * d), torch.randn(S, 2 * d, generator=g), ratio, True)
    a16, b32 = torch.randn(S, d, generator=g).bfloat16(), torch.randn(S, d, generator=g) * 3
    _check(a16, b32, ratio, False)
