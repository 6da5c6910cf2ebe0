"""FP8 KV pool: byte layout checked byte by byte against the oracle, round trip, errors. (The ops on FP8
pools, every backend: tests/ops/test_sparse_attention.py and tests/ops/test_append.py.)"""

import longattn
import pytest
import torch
from longattn.cache import Fp8KVPool, dequantize_kv_fp8, quantize_kv_fp8
from longattn.cache.fp8 import page_bytes

from tests import oracle


def adversarial_kv(P, ps, g):
    kv = torch.randn(P, ps, 512, generator=g) * torch.logspace(-7, 4, 512)  # every scale range
    kv[0, 0] = 0.0  # all-zero record: scale floor 2**-13
    kv.view(-1, 512)[1, :64] = 448.0 * 2.0**3  # amax exactly 448 * 2**k: e = k, values 448
    kv.view(-1, 512)[2, 64:128] = 448.0 * 2.0**-4 * (1 + 2**-20)  # a hair above: e = k + 1
    kv.view(-1, 512)[3, :448] = -1e-30  # tiny negatives
    return kv


@pytest.mark.parametrize("page_size", [1, 2, 3, 64])
def test_bytes_match_oracle(page_size):
    g = torch.Generator().manual_seed(page_size)
    kv = adversarial_kv(3, page_size, g) if page_size >= 4 else torch.randn(3, page_size, 512, generator=g) * 50
    pool = quantize_kv_fp8(kv)
    assert pool.data.shape == (3, page_bytes(page_size)) and pool.data.dtype == torch.uint8
    assert page_bytes(page_size) % 576 == 0 and page_bytes(page_size) >= page_size * 584
    assert torch.equal(pool.data, oracle.quantize_kv_fp8(kv))
    assert torch.equal(dequantize_kv_fp8(pool).double(), oracle.dequantize_kv_fp8(pool.data, page_size))


def test_record_layout_by_hand():
    kv = torch.zeros(1, 2, 512)
    kv[0, 1, 0] = 1.0  # tile 0 amax 1 -> e = ceil(log2(1 / 448)) = -8 -> stored value 1 / 2**-8 = 256
    kv[0, 1, 448] = 3.0  # rope bf16 3.0 = 0x4040
    pool = quantize_kv_fp8(kv)
    rec = pool.data[0]
    row1 = rec[576 : 2 * 576]
    assert row1[0].item() == oracle.e4m3_encode(256.0)  # 1.0 / 2**-8
    assert (row1[448].item(), row1[449].item()) == (0x40, 0x40)  # little-endian bf16
    scales1 = rec[2 * 576 + 8 : 2 * 576 + 16]
    assert scales1[0].item() == 127 - 8 and scales1[1].item() == 127 - 13 and scales1[7].item() == 0
    assert torch.all(rec[2 * 584 :] == 0)  # page padding


def test_round_trip_error_is_one_e4m3_rounding():
    kv = torch.randn(4, 16, 512) * 3
    back = dequantize_kv_fp8(quantize_kv_fp8(kv))
    rel = ((back - kv).abs() / kv.abs().clamp_min(1e-6))[..., :448]
    tile_amax = kv[..., :448].abs().unflatten(-1, (7, 64)).amax(-1, keepdim=True).expand(-1, -1, -1, 64).flatten(-2)
    # e4m3 has 3 mantissa bits: error <= 2**-4 relative for normals, absolute 2**-10 * scale for subnormals
    assert torch.all(
        (back - kv).abs()[..., :448] <= torch.maximum(kv[..., :448].abs() * 2**-4, tile_amax / 448 * 2 * 2**-9 + 1e-12)
    )
    assert torch.equal(back[..., 448:], kv[..., 448:].bfloat16().float())
    assert rel.numel()


def test_fp8_reference_gathers_only_selected_rows(monkeypatch):
    """The reference sparse_attention dequantises only the rows it reads, never the whole pool."""
    pool = quantize_kv_fp8(torch.randn(64, 64, 512))
    seen = []
    real = Fp8KVPool.gather_rows

    def spy(self, slots):
        seen.append(slots.numel())
        return real(self, slots)

    monkeypatch.setattr(Fp8KVPool, "gather_rows", spy)
    longattn.sparse_attention(torch.randn(2, 4, 512), pool, torch.randint(0, 4096, (2, 16), dtype=torch.int32))
    assert sum(seen) == 32  # 2 tokens x 16 indices, never the 4096-row pool


def test_fp8_pool_errors():
    with pytest.raises(TypeError, match="uint8"):
        Fp8KVPool(torch.zeros(2, 576), 1)
    with pytest.raises(ValueError, match="needs pages of 1152 bytes"):
        Fp8KVPool(torch.zeros(2, 600, dtype=torch.uint8), 1)
    with pytest.raises(ValueError, match=r"\[P, page, 512\]"):
        quantize_kv_fp8(torch.zeros(2, 3, 64))
    with pytest.raises(ValueError, match=r"append_kv: `rows` must be \[T, 512\]"):
        longattn.append_kv(Fp8KVPool.empty(1, 1, "cpu"), torch.zeros(1, 64), torch.zeros(1, dtype=torch.int32))
