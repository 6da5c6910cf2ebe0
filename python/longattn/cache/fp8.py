"""The FP8 KV pool: byte-compatible with FlashMLA "MODEL1" / vLLM ``fp8_ds_mla`` records.

One record per token (or compressed entry) = 584 B:

    bytes [0, 448)    448 x float8 e4m3fn   nope dims 0..447, stored as e4m3(x / 2**e_i)
    bytes [448, 576)  64 x bfloat16 (LE)    rope dims 448..511, unquantised
    scale row         7 x UE8M0 + 1 pad     byte i = e_i + 127: the scale of nope dims [64 i, 64 i + 64)

Within a page, the ``page_size`` 576-B data rows come first, then the ``page_size`` 8-B scale rows;
the page is padded with zeros to ``page_bytes = ceil(page_size * 584 / 576) * 576``. Slot s lives in
page ``s // page_size`` at offset ``s % page_size``.

Scale of a 64-value tile with absolute maximum ``amax``: ``e = ceil(log2(max(amax / 448, 1e-4)))``,
computed exactly (the smallest integer e with 448 * 2**e >= amax, and at least -13). e4m3 rounding is
round-to-nearest-even with saturation at +-448 (never reached: |x / 2**e| <= 448 by construction).
Special values: a tile holding inf or NaN gets e = 0 (its finite values saturate at +-448 too), inf
is stored as +-448, NaN as 0x7F | sign; a NaN rope value as bf16 0x7FC0 (whatever torch's cast does).
"""

from __future__ import annotations

from typing import Optional

import torch

HEAD_DIM = 512
NOPE_DIM = 448
ROPE_DIM = 64
TILE = 64
NUM_TILES = NOPE_DIM // TILE  # 7
DATA_BYTES = NOPE_DIM + 2 * ROPE_DIM  # 576
SCALE_BYTES = 8  # 7 scales + 1 pad
RECORD_BYTES = DATA_BYTES + SCALE_BYTES  # 584
E4M3_MAX = 448.0
UE8M0_BIAS = 127
MIN_EXPONENT = -13  # ceil(log2(1e-4)): the smallest scale exponent
BF16_NAN = 0x7FC0  # the bf16 bits every NaN rope value is stored as (the kernels' canonical NaN)


def page_bytes(page_size: int) -> int:
    """Bytes of one page of ``page_size`` records, padded to a multiple of 576."""
    return -(-page_size * RECORD_BYTES // DATA_BYTES) * DATA_BYTES


def scale_exponents(nope: torch.Tensor) -> torch.Tensor:
    """Per-tile exponents e [..., 7] (int32) of nope values [..., 448]."""
    amax = nope.float().abs().reshape(*nope.shape[:-1], NUM_TILES, TILE).amax(-1).double()
    # float64 holds amax / 448 exactly enough that powers of two stay powers of two.
    mant, exp = torch.frexp((amax / E4M3_MAX).clamp_min(1e-4))  # ratio = mant * 2**exp, mant in [0.5, 1)
    return torch.where(mant == 0.5, exp - 1, exp).to(torch.int32)  # exact ceil(log2(ratio))


def quantize_rows(rows: torch.Tensor):
    """rows [n, 512] float -> (data [n, 576] uint8, scales [n, 8] uint8), the two parts of n records."""
    n = rows.shape[0]
    rows = rows.float()
    e = scale_exponents(rows[:, :NOPE_DIM])  # [n, 7]
    scaled = rows[:, :NOPE_DIM].reshape(n, NUM_TILES, TILE) * torch.exp2(-e.float()).unsqueeze(-1)
    nope = scaled.clamp(-E4M3_MAX, E4M3_MAX).to(torch.float8_e4m3fn).view(torch.uint8).reshape(n, NOPE_DIM)
    # The sign bit is the input's: the scaling multiply keeps it for every value but NaN, whose sign a
    # GPU (or any IEEE unit) may drop, so -NaN is 0xFF on every device.
    nope = (nope & 0x7F) | (torch.signbit(rows[:, :NOPE_DIM]).to(torch.uint8) << 7)
    rope_f = rows[:, NOPE_DIM:]
    rope_bits = rope_f.to(torch.bfloat16).contiguous().view(torch.int16)
    rope_bits = torch.where(torch.isnan(rope_f), torch.tensor(BF16_NAN, dtype=torch.int16), rope_bits)
    rope = rope_bits.contiguous().view(torch.uint8).reshape(n, 2 * ROPE_DIM)
    scales = torch.zeros(n, SCALE_BYTES, dtype=torch.uint8, device=rows.device)
    scales[:, :NUM_TILES] = (e + UE8M0_BIAS).to(torch.uint8)
    return torch.cat([nope, rope], dim=1), scales


def dequantize_rows(data: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """(data [n, 576] uint8, scales [n, 8] uint8) -> rows [n, 512] fp32 (exact)."""
    n = data.shape[0]
    nope = data[:, :NOPE_DIM].contiguous().view(torch.float8_e4m3fn).float().reshape(n, NUM_TILES, TILE)
    e = scales[:, :NUM_TILES].to(torch.int32) - UE8M0_BIAS
    nope = (nope * torch.exp2(e.float()).unsqueeze(-1)).reshape(n, NOPE_DIM)
    rope = data[:, NOPE_DIM:].contiguous().view(torch.bfloat16).float()
    return torch.cat([nope, rope], dim=1)


class PagedBytePool:
    """What the ops read of a paged byte pool (``Fp8KVPool``, ``fp8_index.Fp8IndexKeyPool``): ``data``
    uint8 ``[num_pages, page_bytes]`` holding ``page_size`` records per page."""

    data: torch.Tensor
    page_size: int

    @property
    def num_pages(self) -> int:
        return self.data.shape[0]

    @property
    def num_slots(self) -> int:
        return self.num_pages * self.page_size

    @property
    def page_bytes(self) -> int:
        return self.data.shape[1]

    @property
    def device(self) -> torch.device:
        return self.data.device


class Fp8KVPool(PagedBytePool):
    """A paged FP8 KV pool. ``data`` is uint8 ``[num_pages, page_bytes]`` (contiguous).

    Usable wherever ``sparse_attention`` takes a KV stream (same slot numbering as a float pool
    ``[num_pages, page_size, 512]``); written by ``longattn.append_kv`` / ``compress_kv``.
    """

    head_dim = HEAD_DIM

    def __init__(self, data: torch.Tensor, page_size: int):
        if not isinstance(data, torch.Tensor) or data.dtype != torch.uint8 or data.dim() != 2:
            raise TypeError(f"Fp8KVPool: `data` must be a uint8 tensor [num_pages, page_bytes], got {_desc(data)}")
        if page_size <= 0 or data.shape[1] != page_bytes(page_size):
            raise ValueError(
                f"Fp8KVPool: page_size {page_size} needs pages of {page_bytes(page_size) if page_size > 0 else '?'} "
                f"bytes, got data of shape {list(data.shape)}"
            )
        if not data.is_contiguous():
            raise ValueError("Fp8KVPool: `data` must be contiguous")
        self.data = data
        self.page_size = page_size

    @classmethod
    def empty(cls, num_pages: int, page_size: int, device=None) -> "Fp8KVPool":
        return cls(torch.zeros(num_pages, page_bytes(page_size), dtype=torch.uint8, device=device), page_size)

    def _views(self):
        ps = self.page_size
        data_rows = self.data[:, : ps * DATA_BYTES].view(self.num_pages, ps, DATA_BYTES)
        scale_rows = self.data[:, ps * DATA_BYTES : ps * RECORD_BYTES].view(self.num_pages, ps, SCALE_BYTES)
        return data_rows, scale_rows

    def gather_rows(self, slots: torch.Tensor) -> torch.Tensor:
        """Dequantised rows [n, 512] fp32 of valid ``slots`` [n] (only these rows are read)."""
        data_rows, scale_rows = self._views()
        page, off = slots.long() // self.page_size, slots.long() % self.page_size
        return dequantize_rows(data_rows[page, off], scale_rows[page, off])

    def write_rows(self, slots: torch.Tensor, rows: torch.Tensor) -> None:
        """Quantise rows [n, 512] into valid ``slots`` [n]."""
        data, scales = quantize_rows(rows)
        data_rows, scale_rows = self._views()
        page, off = slots.long() // self.page_size, slots.long() % self.page_size
        data_rows[page, off] = data
        scale_rows[page, off] = scales

    def __repr__(self) -> str:
        return f"Fp8KVPool(num_pages={self.num_pages}, page_size={self.page_size}, device={self.device})"


def _desc(x) -> str:
    if isinstance(x, torch.Tensor):
        return f"{str(x.dtype).replace('torch.', '')} {list(x.shape)}"
    return type(x).__name__


def quantize_kv_fp8(kv: torch.Tensor, out: Optional[Fp8KVPool] = None) -> Fp8KVPool:
    """Quantise a float pool ``kv [P, page, 512]`` into a new (or the given) ``Fp8KVPool``."""
    if not isinstance(kv, torch.Tensor) or kv.dim() != 3 or kv.shape[-1] != HEAD_DIM or not kv.is_floating_point():
        raise ValueError(f"quantize_kv_fp8: `kv` must be a float tensor [P, page, 512], got {_desc(kv)}")
    P, ps, _ = kv.shape
    pool = out if out is not None else Fp8KVPool.empty(P, ps, kv.device)
    if (pool.num_pages, pool.page_size) != (P, ps):
        raise ValueError(
            f"quantize_kv_fp8: `out` has {pool.num_pages} pages of {pool.page_size}, `kv` is {list(kv.shape)}"
        )
    pool.write_rows(torch.arange(P * ps, device=kv.device), kv.reshape(-1, HEAD_DIM))
    return pool


def dequantize_kv_fp8(pool: Fp8KVPool) -> torch.Tensor:
    """The whole pool as fp32 ``[P, page, 512]`` (for tests and debugging; ops never do this)."""
    if not isinstance(pool, Fp8KVPool):
        raise TypeError(f"dequantize_kv_fp8: `pool` must be an Fp8KVPool, got {type(pool).__name__}")
    rows = pool.gather_rows(torch.arange(pool.num_slots, device=pool.device))
    return rows.view(pool.num_pages, pool.page_size, HEAD_DIM)
