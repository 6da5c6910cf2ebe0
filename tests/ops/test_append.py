"""append_kv on every backend: float pools bit for bit, FP8 (MODEL1) records byte for byte.

The expected bytes are written out here, not taken from another backend: a float pool row is
``rows[i].to(pool dtype)`` (round to nearest even, torch's cast) at its slot and nothing else changes
(the guard values around the pool view included); an FP8 record is ``longattn.cache.fp8.quantize_rows``
of the row (a NaN rope value as the canonical bf16 NaN 0x7FC0) placed at its slot
(tests/helpers/append.py). Backend-specific checks (pools past 2**31, what a backend declines):
tests/triton, tests/ascend.
"""

import longattn
import pytest
import torch
from longattn.cache import Fp8KVPool, dequantize_kv_fp8, quantize_kv_fp8
from longattn.cache.fp8 import DATA_BYTES, NOPE_DIM, page_bytes, quantize_rows

from tests import oracle
from tests.helpers.append import (
    FLOATS,
    POISON_BYTE,
    adversarial_rows,
    assert_records,
    expected_records,
    float_pool,
    fp8_adversarial_rows,
    fp8_nonfinite_rows,
    fp8_scale_rows,
    place_records,
    slots_for,
    special_rows,
)
from tests.helpers.backends import call
from tests.helpers.device import DEVICE, dev


def bits(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().view({1: torch.uint8, 2: torch.int16, 4: torch.int32}[t.element_size()])


def written_float(pool_view: torch.Tensor, rows: torch.Tensor, slots: torch.Tensor) -> None:
    """Write ``rows`` into ``pool_view`` (CPU) the way the contract says: slot by slot, skipping slots
    outside the pool, each row cast to the pool's dtype."""
    D = pool_view.shape[-1]
    flat = pool_view.view(-1, D) if pool_view.dim() == 3 else pool_view
    for i, s in enumerate(int(x) for x in slots):
        if 0 <= s < flat.shape[0]:
            flat[s] = rows[i].to(pool_view.dtype)


def append(backend, pool, rows, slots):
    call(longattn.append_kv, pool, *dev(rows, slots), backend=backend)


def fp8_pool_of(pages, page, fill=POISON_BYTE):
    return Fp8KVPool(torch.full((pages, page_bytes(page)), fill, dtype=torch.uint8, device=DEVICE), page)


# ---------------------------------------------------------------------------------------------------
# float pools
# ---------------------------------------------------------------------------------------------------
@pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")  # the interpreter: to inf
@pytest.mark.parametrize("layout", ["flat", "paged", "strided_rows"])
@pytest.mark.parametrize("dst", FLOATS, ids=str)
@pytest.mark.parametrize("src", FLOATS, ids=str)
def test_float_pool_bit_identical(backend, src, dst, layout):
    """Rows full of rounding cases (every fp32 -> bf16 / fp16 path), non-contiguous rows, pool views
    inside NaN guard values (flat, paged); padding (-1), slots one past the pool, at 2**31 - 1 and far
    below 0. (Strided pools, which only the Triton kernel takes: tests/triton.)"""
    D = 40
    rows = adversarial_rows(19, D, seed=3).to(src)
    if layout == "strided_rows":
        rows = rows.t().contiguous().t()
    kind = "paged" if layout == "paged" else "flat"
    want_buf, want_pool = float_pool(kind, dst, D)
    slots = slots_for(19, 24, seed=1, dtype=torch.int32 if layout != "paged" else torch.int64)
    written_float(want_pool, rows, slots)
    buf, _ = float_pool(kind, dst, D)
    buf = buf.to(DEVICE)
    append(backend, buf[1:7] if kind == "paged" else buf[1:25], rows, slots)
    assert torch.equal(bits(buf.cpu()), bits(want_buf)), "pool (and guard) bytes differ from the expected ones"


def test_int64_slots_and_wide_rows(backend):
    """Rows wider than one on-chip tile (D = 5000), int64 slots far outside the pool."""
    g = torch.Generator().manual_seed(2)
    pool = torch.randn(20, 5000, generator=g)
    rows = torch.randn(9, 5000, generator=g)
    slots = torch.tensor([3, -1, 19, 20, 0, 2**40, -(2**40), 7, 11], dtype=torch.int64)
    want = pool.clone()
    written_float(want, rows, slots)
    got = pool.to(DEVICE)
    append(backend, got, rows, slots)
    assert torch.equal(got.cpu(), want)


def test_empty_rows_change_nothing(backend):
    pool = torch.randn(4, 64).to(DEVICE)
    want = pool.clone()
    append(backend, pool, torch.randn(0, 64), torch.zeros(0, dtype=torch.int32))
    assert torch.equal(pool, want)


def test_fp8_and_float_pools(backend):
    """The same rows into an FP8 pool (its dequantised records: quantise-dequantise of the rows) and a
    bf16 pool; slots -1 and num_slots are skipped, nothing else is written."""
    pool = Fp8KVPool.empty(3, 4, DEVICE)
    rows = torch.randn(5, 512) * 10
    slots = torch.tensor([0, 11, -1, 5, 12], dtype=torch.int32)
    append(backend, pool, rows, slots)
    pool = Fp8KVPool(pool.data.cpu(), 4)
    got = pool.gather_rows(torch.tensor([0, 11, 5]))
    want = dequantize_kv_fp8(quantize_kv_fp8(rows[[0, 1, 3]].view(1, 3, 512))).view(3, 512)
    assert torch.equal(got, want)
    untouched = torch.ones(12, dtype=torch.bool)
    untouched[[0, 11, 5]] = False
    assert torch.all(pool.gather_rows(torch.arange(12)[untouched]) == 0)
    fpool = torch.zeros(3, 4, 8, dtype=torch.bfloat16, device=DEVICE)
    append(backend, fpool, rows[:, :8], slots)
    fpool = fpool.cpu()
    assert torch.equal(fpool.view(-1, 8)[11], rows[1, :8].bfloat16()) and torch.all(fpool.view(-1, 8)[1] == 0)


# ---------------------------------------------------------------------------------------------------
# FP8 records
# ---------------------------------------------------------------------------------------------------
def _records_rows(kind, page):
    if kind == "sweep":  # every e4m3 rounding case, exact scale powers, zeros, subnormals, inf / NaN nope
        return fp8_adversarial_rows(seed=page)
    return fp8_scale_rows(2 * page + 1, torch.Generator().manual_seed(3))


RECORD_CASES = [("sweep", 1), ("sweep", 2), ("sweep", 3), ("sweep", 64), ("scales", 1), ("scales", 3), ("scales", 16)]


@pytest.mark.parametrize("kind,page_size", RECORD_CASES)
@pytest.mark.parametrize("dtype", FLOATS, ids=str)
def test_fp8_records_bytes_exact(backend, dtype, kind, page_size):
    """Every byte of the 584-B records equals quantize_rows' (scale bytes, e4m3 codes, bf16 rope);
    padding and slots outside the pool skipped, every other byte keeps the poison."""
    rows = _records_rows(kind, page_size).to(dtype)
    T = rows.shape[0]
    num_pages = -(-(T + 4) // page_size)
    slots = torch.randperm(num_pages * page_size, generator=torch.Generator().manual_seed(page_size))[:T]
    slots[-1] = -1
    slots[-2] = num_pages * page_size  # skipped
    pool = fp8_pool_of(num_pages, page_size)
    append(backend, pool, rows, slots)
    data, scales = expected_records(rows.float())
    want = place_records(torch.full((num_pages, page_bytes(page_size)), POISON_BYTE, dtype=torch.uint8),
                         page_size, slots, data, scales)  # fmt: skip
    diff = (pool.data.cpu() != want).nonzero()
    assert diff.numel() == 0, f"{diff.shape[0]} bytes differ, first (page, byte): {diff[:8].tolist()}"


def test_fp8_matches_quantize_rows_directly(backend):
    """The record bytes of every row equal quantize_rows (data row + scale row); page padding is never
    written."""
    rows = fp8_adversarial_rows(seed=9)
    T = rows.shape[0]
    pool = fp8_pool_of(T, 1)
    append(backend, pool, rows, torch.arange(T))
    data, scales = quantize_rows(rows)
    got = pool.data.cpu()
    assert torch.equal(got[:, :576], data)
    assert torch.equal(got[:, 576:584], scales)
    assert torch.all(got[:, 584:] == POISON_BYTE)


@pytest.mark.parametrize("dtype", FLOATS, ids=str)
def test_fp8_nonfinite_rows(backend, dtype):
    """NaN of both signs, +-inf, -0.0, fp32 subnormals, alone in finite tiles and as whole tiles, in
    nope and rope dims: quantize_rows' bytes (a rope NaN: any bf16 NaN); NaN -> 0x7F with the value's
    sign; NaN / inf tiles get e = 0."""
    rows = fp8_nonfinite_rows().to(dtype)
    T = rows.shape[0]
    pool = fp8_pool_of(T, 1)
    append(backend, pool, rows, torch.arange(T))
    data, scales = quantize_rows(rows)
    got = pool.data.cpu()
    assert_records(got[:, :576], got[:, 576:584], data, scales, str(dtype))
    sign = (rows[1, :128].float().view(torch.int32) < 0).to(torch.uint8) * 0x80  # (a bf16 cast may flip it)
    assert torch.equal(got[1, :128], 0x7F | sign)
    assert bool((got[1, 576:578] == 127).all())


@pytest.mark.parametrize("page", [1, 5])
@pytest.mark.parametrize("rows_dtype", FLOATS, ids=str)
def test_fp8_special_values_bytes_exact(backend, rows_dtype, page):
    """Rows full of special values (NaN of both signs, +-inf, -0.0, subnormals, values above 448 in
    finite and non-finite tiles, FLT_MAX, exact 448 * 2**k): the record rule byte for byte, a NaN rope
    value as 0x7FC0."""
    g = torch.Generator().manual_seed(21)
    n = 12
    rows32 = special_rows(n, g)
    rows = rows32 if rows_dtype == torch.float32 else rows32.to(rows_dtype)  # fp32: keep the -NaN bits
    pages = -(-n // page) + 1
    slots = torch.randperm(pages * page, generator=g)[:n]
    slots[5] = -1
    pool = fp8_pool_of(pages, page, fill=0x5A)
    append(backend, pool, rows, slots)
    data, scales = expected_records(rows.float())
    want = place_records(torch.full((pages, page_bytes(page)), 0x5A, dtype=torch.uint8), page, slots, data, scales)
    got = pool.data.cpu()
    diff = (got != want).nonzero()
    assert diff.numel() == 0, (
        f"{diff.shape[0]} bytes differ from quantize_rows, first at {diff[:4].tolist()}: "
        f"{[(int(got[p, c]), int(want[p, c])) for p, c in diff[:4].tolist()]}"
    )
    assert int(torch.isnan(rows.float()[:, NOPE_DIM:]).sum()) > 0  # the rope NaN case is exercised


def test_fp8_special_tile_scales(backend):
    """Scale bytes by hand: NaN / inf tiles 127, a finite tile above 448 e > 0, subnormals e = -13;
    codes of NaN, saturated and signed-zero values; rope NaN, -NaN, inf, -inf, -0.0."""
    g = torch.Generator().manual_seed(22)
    rows = special_rows(3, g)
    pool = fp8_pool_of(1, 3, fill=0)
    append(backend, pool, rows, torch.arange(3))
    data = pool.data.cpu()
    scale_row0 = data[0, 3 * DATA_BYTES : 3 * DATA_BYTES + 8].tolist()
    e5 = oracle.ue8m0_scale_exponent(rows[0, 256:320].abs().max().item())
    assert scale_row0 == [127, 127, 127, 127, e5 + 127, 127 - 13, 127 - 13, 0]
    codes = data[0, :448]
    assert codes[3] == 0x7F and codes[4] == 0x7E and codes[5] == 0xFE  # NaN, 1000 -> 448, -3000 -> -448
    assert codes[70] == 0xFF and codes[130] == 0x7E and codes[131] == 0xFE and codes[132] == 0x7E
    assert codes[133] == 0x80 and codes[384 + 1] == 0x80 and codes[384] == 0x00  # -tiny, -0.0, +0.0
    rope = data[0, 448:576].view(torch.int16)
    assert rope[:5].tolist() == [0x7FC0, 0x7FC0, 0x7F80, -128, -32768]  # NaN, -NaN, inf, -inf, -0.0
