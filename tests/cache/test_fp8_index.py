"""FP8 indexer-key pool (vLLM indexer K cache record): byte layout against the pure-python oracle
(tests/oracle.py quantize_index_k_fp8, written from the record's formula), round trip, the scale rules
(ue8m0 on / off, the 1e-4 floor, saturation, non-finite values), the pool object and its errors. The
ops on such pools: tests/ops/test_indexer.py and tests/triton/test_triton_indexer.py."""

import math
import struct

import longattn
import pytest
import torch
from longattn.cache import Fp8IndexKeyPool, dequantize_index_k_fp8, quantize_index_k_fp8
from longattn.cache.fp8_index import index_page_bytes

from tests import oracle


def adversarial_keys(P, ps, Di, g):
    k = torch.randn(P, ps, Di, generator=g) * torch.logspace(-3, 3, P * ps).view(P, ps, 1)  # every scale range
    flat = k.view(-1, Di)
    flat[0] = 0.0  # all-zero key: amax floor 1e-4
    if flat.shape[0] > 1:
        flat[1, 0] = 448.0 * 2.0**-3  # amax exactly 448 * 2**-3: scale 2**-3 with ue8m0 (no rounding up)
    if flat.shape[0] > 2:
        flat[2] = 1e-6  # below the floor: scale 1e-4 / 448
    return k


def scale_of(data, ps, Di, p, o):
    at = ps * Di + 4 * o
    return struct.unpack("<f", bytes(data[p, at : at + 4].tolist()))[0]


@pytest.mark.parametrize("ue8m0", [True, False])
@pytest.mark.parametrize("page_size", [1, 3, 64])
def test_bytes_match_oracle(page_size, ue8m0):
    g = torch.Generator().manual_seed(page_size)
    Di = 32 if page_size == 64 else 48
    k = adversarial_keys(3, page_size, Di, g)
    pool = quantize_index_k_fp8(k, ue8m0=ue8m0)
    assert pool.data.shape == (3, page_size * (Di + 4)) and pool.data.dtype == torch.uint8
    assert pool.page_bytes == index_page_bytes(page_size, Di) == page_size * (Di + 4)
    assert torch.equal(pool.data, oracle.quantize_index_k_fp8(k, ue8m0=ue8m0))
    values, scales = oracle.index_k_fp8_parts(pool.data, page_size, Di)
    want = values * torch.tensor(scales, dtype=torch.float64).view(3, page_size, 1)  # exact in float64
    assert torch.equal(dequantize_index_k_fp8(pool), want.float())  # one fp32 rounding


def test_record_layout_by_hand():
    """Entry o's 16 e4m3 bytes at o * 16, its fp32 scale at page * 16 + 4 * o (little-endian)."""
    k = torch.zeros(1, 2, 16)
    k[0, 1, 0] = 1.0  # amax 1: scale 1 / 448 -> ue8m0 2**-8; value 1 / 2**-8 = 256 = 0x78
    k[0, 1, 3] = -0.5  # -128 = 0xF0
    data = quantize_index_k_fp8(k).data[0].tolist()
    assert len(data) == 2 * 20
    assert data[16] == 0x78 and data[19] == 0xF0 and data[:16] == [0] * 16
    assert struct.unpack("<f", bytes(data[32:36]))[0] == 2.0**-22  # zero key: 1e-4 / 448 -> 2**-22
    assert struct.unpack("<f", bytes(data[36:40]))[0] == 2.0**-8
    plain = quantize_index_k_fp8(k, ue8m0=False).data[0].tolist()
    assert struct.unpack("<f", bytes(plain[36:40]))[0] == struct.unpack("<f", struct.pack("<f", 1.0 / 448))[0]
    assert plain[16] == oracle.e4m3_encode(448.0) == 0x7E  # 1 / (1 / 448) = 448


def test_flat_keys_are_one_page():
    k = torch.randn(5, 16)
    pool = quantize_index_k_fp8(k)
    assert (pool.num_pages, pool.page_size, pool.num_slots) == (1, 5, 5)
    assert torch.equal(pool.data, oracle.quantize_index_k_fp8(k))
    assert torch.equal(pool.gather_rows(torch.arange(5)), dequantize_index_k_fp8(pool)[0])


def test_round_trip_error():
    k = torch.randn(4, 8, 128) * 3
    for ue8m0 in (True, False):
        back = dequantize_index_k_fp8(quantize_index_k_fp8(k, ue8m0=ue8m0))
        amax = k.abs().amax(-1, keepdim=True)
        step = amax / 448 * (2 if ue8m0 else 1)  # the scale
        # e4m3: 3 mantissa bits -> relative 2**-4 for normals, absolute 2**-10 * scale for subnormals
        assert torch.all((back - k).abs() <= torch.maximum(k.abs() * 2**-4, step * 2**-10 + 1e-12))
    # values exactly representable after scaling come back exactly
    exact = torch.tensor([[448.0, -2.0, 0.25, 7.0] + [0.0] * 12])
    assert torch.equal(dequantize_index_k_fp8(quantize_index_k_fp8(exact))[0], exact)


def test_ue8m0_scale_is_the_next_power_of_two():
    k = torch.zeros(4, 16)
    k[0, 0] = 448.0  # ratio exactly 1 -> 1
    k[1, 0] = 448.0 * (1 + 2**-10)  # a hair above -> 2
    k[2, 0] = 300.0  # 300 / 448 -> 1
    k[3, 0] = -3e-3  # 6.7e-6 -> 2**-17
    pool = quantize_index_k_fp8(k)
    got = [scale_of(pool.data, 4, 16, 0, o) for o in range(4)]
    assert got == [1.0, 2.0, 1.0, 2.0**-17]
    plain = quantize_index_k_fp8(k, ue8m0=False)
    got = [scale_of(plain.data, 4, 16, 0, o) for o in range(4)]
    assert got == [1.0, oracle._f32(448.0 * (1 + 2**-10) / 448), oracle._f32(300.0 / 448), oracle._f32(3e-3 / 448)]


def test_amax_floor():
    k = torch.zeros(3, 16)
    k[1, 5] = 1e-4
    k[2, 5] = -5e-5  # below the floor: scaled by 1e-4 / 448, stored as 224
    plain = quantize_index_k_fp8(k, ue8m0=False)
    floor = oracle._f32(oracle._f32(1e-4) / 448)
    assert [scale_of(plain.data, 3, 16, 0, o) for o in range(3)] == [floor] * 3
    assert plain.data[0, 16 + 5].item() == 0x7E  # 1e-4 / floor = 448
    assert plain.data[0, 32 + 5].item() == oracle.e4m3_encode(-224.0)
    assert torch.all(plain.data[0, :16] == 0)


def test_saturation_and_non_finite_values():
    """inf saturates to +-448, NaN is 0x7F | sign, neither changes the scale of the finite values; the
    explicit clamp saturates values that would round above 448 (a non-ue8m0 scale rounded down)."""
    k = torch.zeros(2, 16)
    k[0, :6] = torch.tensor([float("inf"), float("-inf"), float("nan"), -float("nan"), 2.0, -1.0])
    k[1, 0] = 448.0 * 1.5
    pool = quantize_index_k_fp8(k)
    row = pool.data[0, :16].tolist()
    assert row[:6] == [0x7E, 0xFE, 0x7F, 0xFF, oracle.e4m3_encode(2.0 / 2**-7), oracle.e4m3_encode(-1.0 / 2**-7)]
    assert scale_of(pool.data, 2, 16, 0, 0) == 2.0**-7  # amax 2 (finite values only) -> 2 / 448 -> 2**-7
    assert torch.equal(pool.data, oracle.quantize_index_k_fp8(k))
    back = dequantize_index_k_fp8(pool)[0, 0]
    assert back[0].item() == 448 * 2**-7 and back[1].item() == -448 * 2**-7
    assert math.isnan(back[2].item()) and math.isnan(back[3].item())
    # every value of a key above 448 * scale (only possible by the fp32 rounding of a non-ue8m0 scale) and
    # torch's conversion of out-of-range values agree: saturate
    assert torch.tensor([500.0, -1e9]).to(torch.float8_e4m3fn).view(torch.uint8).tolist() == [0x7E, 0xFE]
    all_nan = torch.full((1, 16), float("nan"))
    pool = quantize_index_k_fp8(all_nan)
    assert scale_of(pool.data, 1, 16, 0, 0) == 2.0**-22 and torch.all(pool.data[0, :16] == 0x7F)


def test_pool_object():
    pool = Fp8IndexKeyPool.empty(3, 4, 32)
    assert (pool.num_pages, pool.page_size, pool.dim, pool.head_dim, pool.num_slots) == (3, 4, 32, 32, 12)
    assert pool.device == torch.device("cpu") and pool.ue8m0
    assert repr(pool) == "Fp8IndexKeyPool(num_pages=3, page_size=4, dim=32, ue8m0=True, device=cpu)"
    rows = torch.randn(3, 32)
    slots = torch.tensor([11, 0, 5])
    pool.write_rows(slots, rows)
    ref = quantize_index_k_fp8(rows)
    assert torch.equal(pool.gather_rows(slots), dequantize_index_k_fp8(ref)[0])
    # untouched slots stay zero; page 1 offset 1 (slot 5) holds rows[2]
    assert torch.equal(pool.data[1, 1 * 32 : 2 * 32], ref.data[0, 2 * 32 : 3 * 32])
    assert torch.equal(pool.data[1, 4 * 32 + 4 : 4 * 32 + 8], ref.data[0, 3 * 32 + 8 : 3 * 32 + 12])
    assert torch.all(pool.data[1, :32] == 0)
    vals, sc = pool.gather_parts(slots)
    assert torch.equal(vals * sc[:, None], pool.gather_rows(slots))
    pv, ps_ = pool.page_parts(torch.tensor([1, 2]))  # whole pages: slots 4..11
    assert pv.shape == (2, 4, 32) and ps_.shape == (2, 4)
    assert torch.equal(pv[0, 1], pool.data[1, 32:64]) and ps_[1, 3].item() == sc[0].item()  # slot 11 = rows[0]
    out = Fp8IndexKeyPool.empty(1, 3, 32)
    assert quantize_index_k_fp8(rows, out=out) is out and torch.equal(out.data, ref.data)
    assert longattn.Fp8IndexKeyPool is Fp8IndexKeyPool and longattn.cache.quantize_index_k_fp8 is quantize_index_k_fp8


@pytest.mark.parametrize(
    "call, exc, match",
    [
        (lambda: quantize_index_k_fp8(torch.zeros(2, 3, 20)), ValueError, "Di a positive multiple of 16"),
        (lambda: quantize_index_k_fp8(torch.zeros(2, 0, 16)), ValueError, ">= 1 entry per page"),
        (lambda: quantize_index_k_fp8(torch.zeros(4, 16, dtype=torch.int32)), ValueError, "`k` must be a float"),
        (lambda: quantize_index_k_fp8(torch.zeros(16)), ValueError, r"\[P, page, Di\] or \[N, Di\]"),
        (lambda: quantize_index_k_fp8(torch.zeros(4, 16), ue8m0=1), TypeError, "`ue8m0` must be a bool"),
        (lambda: quantize_index_k_fp8(torch.zeros(4, 16), out=Fp8IndexKeyPool.empty(1, 3, 16)), ValueError, "`out`"),
        (lambda: quantize_index_k_fp8(torch.zeros(4, 16), out=torch.zeros(4)), TypeError, "`out` must be"),
        (lambda: Fp8IndexKeyPool(torch.zeros(2, 40), 2, 16), TypeError, "`data` must be a uint8"),
        (lambda: Fp8IndexKeyPool(torch.zeros(2, 41, dtype=torch.uint8), 2, 16), ValueError, "pages of 40 bytes"),
        (lambda: Fp8IndexKeyPool(torch.zeros(2, 40, dtype=torch.uint8), 2, 12), ValueError, "`dim`"),
        (lambda: Fp8IndexKeyPool(torch.zeros(2, 40, dtype=torch.uint8), 0, 16), ValueError, "`page_size`"),
        (lambda: Fp8IndexKeyPool(torch.zeros(40, 2, dtype=torch.uint8).T, 2, 16), ValueError, "contiguous"),
        (lambda: Fp8IndexKeyPool.empty(-1, 2, 16), ValueError, "`num_pages`"),
        (lambda: Fp8IndexKeyPool.empty(1, 2, 16).write_rows(torch.tensor([0]), torch.zeros(1, 8)), ValueError,
         r"`rows` must be \[n, 16\]"),
        (lambda: dequantize_index_k_fp8(torch.zeros(2, 40, dtype=torch.uint8)), TypeError, "Fp8IndexKeyPool"),
    ],
)  # fmt: skip
def test_errors(call, exc, match):
    with pytest.raises(exc, match=match):
        call()
