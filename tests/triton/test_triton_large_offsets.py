"""Pools larger than 2**31 elements (or bytes): every kernel must address them with 64-bit offsets.

A 1M-token batch of a few sequences puts rows past element 2**31 of a paged pool; an offset computed in
int32 wraps and reads or writes another row. The pools here are allocated without being touched
(``new_empty``: the pages stay virtual, only the rows used are written), the rows a call reads sit in the
last pages, and each result is compared bit for bit with the same call on a compact copy of those rows
(or, for the writes, with the rows the reference writes). Under the interpreter the offsets are numpy
integers of the kernels' own types, so an int32 product wraps there as it would on a GPU.
"""

from __future__ import annotations

import pytest
import torch

from tests.helpers.device import CAN_RUN_TRITON as CAN_RUN
from tests.helpers.device import DEVICE
from tests.helpers.device import TRITON_SKIP_REASON as SKIP_REASON

pytestmark = pytest.mark.skipif(not CAN_RUN, reason=SKIP_REASON)

if CAN_RUN:
    import longattn
    from longattn.cache import Fp8KVPool
    from longattn.cache.fp8 import page_bytes

BIG = 2**31 + 2**20  # elements (or bytes) of the big pools, just past the int32 range


def _untouched(shape, dtype):
    """An uninitialised tensor whose memory is never touched unless written (no poisoning: the
    kernels below must not read any row they were not given)."""
    return torch.tensor([], dtype=dtype, device=DEVICE).new_empty(shape)


def test_sparse_attention_rows_past_2_31_elements():
    D, H, T = 512, 4, 2
    n_rows = BIG // D + 8
    big = _untouched((n_rows, D), torch.bfloat16)
    g = torch.Generator().manual_seed(0)
    used = torch.tensor([n_rows - 1, n_rows - 2, n_rows - 7, 3, n_rows // 2 + 1])
    rows = torch.randn(len(used), D, generator=g).bfloat16()
    big[used.to(DEVICE)] = rows.to(DEVICE)
    local = torch.tensor([[0, 1, 2, 3], [4, 2, -1, 0]], dtype=torch.int32)  # positions in `used`
    big_idx = torch.where(local >= 0, used[local.clamp(min=0).long()], -1).int()
    q = torch.randn(T, H, D, generator=g).bfloat16().to(DEVICE)
    got = longattn.sparse_attention(q, big, big_idx.to(DEVICE), backend="triton")
    want = longattn.sparse_attention(q, rows.to(DEVICE), local.to(DEVICE), backend="triton")
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


def test_sparse_attention_fp8_pages_past_2_31_bytes():
    page = 64
    n_pages = BIG // page_bytes(page) + 2
    big = Fp8KVPool(_untouched((n_pages, page_bytes(page)), torch.uint8), page)
    g = torch.Generator().manual_seed(1)
    small = longattn.quantize_kv_fp8(torch.randn(2, page, 512, generator=g).to(DEVICE))
    big.data[-2:] = small.data  # the compact pool's two pages are the big pool's last two
    off = (n_pages - 2) * page
    local = torch.tensor([[0, 5, 64, 127], [127, 70, -1, 1]], dtype=torch.int32)
    q = torch.randn(2, 3, 512, generator=g).bfloat16().to(DEVICE)
    got = longattn.sparse_attention(q, big, torch.where(local >= 0, local + off, -1).to(DEVICE), backend="triton")
    want = longattn.sparse_attention(q, small, local.to(DEVICE), backend="triton")
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


def test_indexer_pages_past_2_31_elements():
    Hi, Di, page, topk = 4, 128, 64, 40
    n_pages = BIG // (page * Di) + 4
    big = _untouched((n_pages, page, Di), torch.bfloat16)
    g = torch.Generator().manual_seed(2)
    keys = torch.randint(-3, 4, (3, page, Di), generator=g).bfloat16()
    last = torch.tensor([n_pages - 1, n_pages - 3, n_pages - 2])
    big[last.to(DEVICE)] = keys.to(DEVICE)
    q = torch.randint(-2, 3, (2, Hi, Di), generator=g).bfloat16().to(DEVICE)
    w = torch.randint(-2, 3, (2, Hi), generator=g).float().to(DEVICE)
    ve = torch.tensor([3 * page, 2 * page + 7], dtype=torch.int32, device=DEVICE)
    seq = torch.zeros(2, dtype=torch.int32, device=DEVICE)
    got = longattn.indexer_topk(q, w, big, ve, topk, block_table=last.view(1, 3).int().to(DEVICE), seq_ids=seq,
                                backend="triton")  # fmt: skip
    table = torch.arange(3, dtype=torch.int32, device=DEVICE).view(1, 3)
    want = longattn.indexer_topk(q, w, keys.to(DEVICE), ve, topk, block_table=table, seq_ids=seq, backend="triton")
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    logits = longattn.indexer_logits(q, w, big, ve, block_table=last.view(1, 3).int().to(DEVICE), seq_ids=seq,
                                     backend="triton")  # fmt: skip
    assert torch.equal(logits, longattn.indexer_logits(q, w, keys.to(DEVICE), ve, block_table=table, seq_ids=seq,
                                                       backend="triton"))  # fmt: skip


@pytest.mark.parametrize("kind", ["bf16", "fp8"])
def test_append_kv_slots_past_2_31(kind):
    D = 512
    g = torch.Generator().manual_seed(3)
    rows = torch.randn(3, D, generator=g).to(DEVICE)
    if kind == "bf16":
        n_slots = BIG // D + 8
        pool = _untouched((n_slots, D), torch.bfloat16)
        slots = torch.tensor([n_slots - 1, n_slots - 5, 2], device=DEVICE)
        longattn.append_kv(pool, rows, slots, backend="triton")
        assert torch.equal(pool[slots], rows.bfloat16())
    else:
        page = 64
        n_pages = BIG // page_bytes(page) + 2
        pool = Fp8KVPool(_untouched((n_pages, page_bytes(page)), torch.uint8), page)
        last = n_pages * page - 1
        slots = torch.tensor([last, last - 70, 5], device=DEVICE)
        longattn.append_kv(pool, rows, slots, backend="triton")
        want = Fp8KVPool.empty(n_pages - (n_pages - 2), page, DEVICE)  # the last two pages, compact
        local = slots - (n_pages - 2) * page
        longattn.append_kv(want, rows[:2], local[:2], backend="reference")
        for s in (last, last - 70):  # each record's 576 data bytes and its 8 scale bytes
            p, o = divmod(s, page)
            wp, wo = p - (n_pages - 2), o
            assert torch.equal(pool.data[p, o * 576 : o * 576 + 576], want.data[wp, wo * 576 : wo * 576 + 576])
            sc = page * 576 + o * 8
            assert torch.equal(pool.data[p, sc : sc + 8], want.data[wp, sc : sc + 8])


def test_compress_kv_out_pages_past_2_31_elements():
    from longattn.configs import RopeConfig
    from longattn.rope import inv_freq

    d, ratio, page, T = 512, 4, 16, 12
    n_pages = BIG // (page * d) + 2
    big = _untouched((n_pages, page, d), torch.bfloat16)
    g = torch.Generator().manual_seed(4)
    common = dict(
        a=torch.randn(T, 2 * d, generator=g).to(DEVICE), b=torch.randn(T, 2 * d, generator=g).to(DEVICE),
        positions=torch.arange(T, device=DEVICE), token_rows=torch.zeros(T, dtype=torch.int32, device=DEVICE),
        ratio=ratio, overlap=True, state_block_table=torch.zeros(1, 1, dtype=torch.int32, device=DEVICE),
        norm_weight=torch.ones(d, device=DEVICE), eps=1e-6, rope_inv_freq=inv_freq(RopeConfig(1e4), 32, DEVICE),
    )  # fmt: skip
    state = torch.zeros(1, 2 * ratio, 4 * d, device=DEVICE)
    longattn.compress_kv(**common, state=state.clone(), out=big,
                         out_block_table=torch.tensor([[n_pages - 1]], dtype=torch.int32, device=DEVICE),
                         backend="triton")  # fmt: skip
    small = torch.zeros(1, page, d, dtype=torch.bfloat16, device=DEVICE)
    one_page = torch.zeros(1, 1, dtype=torch.int32, device=DEVICE)
    longattn.compress_kv(**common, state=state.clone(), out=small, out_block_table=one_page, backend="triton")
    assert torch.equal(big[-1, : T // ratio], small[0, : T // ratio])
