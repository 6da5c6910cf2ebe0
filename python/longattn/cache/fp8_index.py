"""The FP8 indexer-key pool: byte-compatible with vLLM's DeepSeek indexer K cache (``indexer_k_quant_and_cache``).

One entry (a compressed indexer key of ``dim`` = Di values) = ``Di + 4`` bytes, one fp32 scale per entry
(the quantisation block is the whole key; V4: Di = 128, 132 B per entry). A page of ``page_size``
entries is ``page_size * (Di + 4)`` bytes:

    bytes [0, page_size * Di)                          e4m3fn values, entry-major: entry o at byte o * Di
    bytes [page_size * Di, page_size * (Di + 4))       page_size fp32 scales (little-endian): entry o's
                                                       at byte page_size * Di + 4 * o

Slot s lives in page ``s // page_size`` at offset ``s % page_size``. The dequantised key is
``scale * e4m3 value``; the ops compute ``scale * <q, e4m3 values>`` (the same for finite scales, up
to fp32 rounding; exactly the same for power-of-two scales without under/overflow).

Quantisation of a key k (every step in fp32):

    amax  = max |k_d| over the FINITE values of k (0 if none)
    scale = max(amax, 1e-4) / 448                               (fp32 division, round to nearest even)
    ue8m0 (default): scale = 2 ** ceil(log2(scale))             (exact: the smallest power of two >= scale)
    byte_d = e4m3fn(clamp(k_d / scale, -448, 448))              (fp32 division, then round to nearest even)

Special values: the clamp saturates out-of-range values (and +-inf) to +-448 (torch's own conversion
also saturates on CPU, but the clamp makes the rule independent of the device); a NaN value is stored
as 0x7F with the value's sign bit (0xFF for -NaN), and it does not change the scale of the other
values. Limits: Di a multiple of 16 (16-byte e4m3 rows for the kernels, 4-byte aligned scales),
page_size >= 1, ``data`` contiguous uint8 ``[num_pages, page_size * (Di + 4)]``.
"""

from __future__ import annotations

from typing import Optional

import torch

from .fp8 import PagedBytePool

E4M3_MAX = 448.0
AMAX_FLOOR = 1e-4  # the smallest amax a scale is computed from (an all-zero key gets 1e-4 / 448)
SCALE_BYTES = 4  # one fp32 scale per entry
DIM_MULTIPLE = 16


def index_page_bytes(page_size: int, dim: int) -> int:
    """Bytes of one page of ``page_size`` entries of ``dim`` values."""
    return page_size * (dim + SCALE_BYTES)


def _desc(x) -> str:
    if isinstance(x, torch.Tensor):
        return f"{str(x.dtype).replace('torch.', '')} {list(x.shape)} on {x.device}"
    return type(x).__name__


def entry_scales(rows: torch.Tensor, ue8m0: bool = True) -> torch.Tensor:
    """fp32 scales [n] of fp32 key rows [n, Di] (the module docstring's rule)."""
    finite = torch.isfinite(rows)
    amax = torch.where(finite, rows.abs(), torch.zeros_like(rows)).amax(-1)
    scale = amax.clamp_min(AMAX_FLOOR) / E4M3_MAX  # fp32: correctly rounded
    if ue8m0:
        mant, exp = torch.frexp(scale)  # scale = mant * 2**exp, mant in [0.5, 1): exact
        scale = torch.ldexp(torch.ones_like(scale), torch.where(mant == 0.5, exp - 1, exp))
    return scale


def quantize_index_rows(rows: torch.Tensor, ue8m0: bool = True):
    """float rows [n, Di] -> (e4m3 bytes [n, Di] uint8, fp32 scales [n])."""
    rows = rows.float()
    scale = entry_scales(rows, ue8m0)
    scaled = (rows / scale.unsqueeze(-1)).clamp(-E4M3_MAX, E4M3_MAX)
    data = scaled.to(torch.float8_e4m3fn).view(torch.uint8)
    # NaN keeps the input's sign bit (an IEEE unit may drop the sign of a NaN through the division)
    data = torch.where(torch.isnan(rows), 0x7F | (torch.signbit(rows).to(torch.uint8) << 7), data)
    return data, scale


def e4m3_values(data: torch.Tensor) -> torch.Tensor:
    """fp32 values of e4m3fn bytes (exact; 0x7F / 0xFF are NaN)."""
    return data.contiguous().view(torch.float8_e4m3fn).float()


class Fp8IndexKeyPool(PagedBytePool):
    """A paged FP8 indexer-key pool. ``data`` is uint8 ``[num_pages, page_size * (dim + 4)]`` (contiguous).

    Usable wherever ``indexer_topk`` / ``indexer_logits`` take ``index_k`` (same slot numbering as a float
    pool ``[num_pages, page_size, dim]``; without a block table, entry j is slot j). ``ue8m0`` is the
    scale rule of ``write_rows`` (reads use the stored fp32 scales whatever they are).
    """

    def __init__(self, data: torch.Tensor, page_size: int, dim: int, ue8m0: bool = True):
        if isinstance(dim, bool) or not isinstance(dim, int) or dim <= 0 or dim % DIM_MULTIPLE:
            raise ValueError(f"Fp8IndexKeyPool: `dim` must be a positive multiple of {DIM_MULTIPLE}, got {dim!r}")
        if isinstance(page_size, bool) or not isinstance(page_size, int) or page_size <= 0:
            raise ValueError(f"Fp8IndexKeyPool: `page_size` must be an int >= 1, got {page_size!r}")
        if not isinstance(data, torch.Tensor) or data.dtype != torch.uint8 or data.dim() != 2:
            raise TypeError(
                f"Fp8IndexKeyPool: `data` must be a uint8 tensor [num_pages, page_size * (dim + 4)], got {_desc(data)}"
            )
        if data.shape[1] != index_page_bytes(page_size, dim):
            raise ValueError(
                f"Fp8IndexKeyPool: page_size {page_size} x dim {dim} needs pages of "
                f"{index_page_bytes(page_size, dim)} bytes, got `data` of shape {list(data.shape)}"
            )
        if not data.is_contiguous():
            raise ValueError("Fp8IndexKeyPool: `data` must be contiguous")
        self.data = data
        self.page_size = page_size
        self.dim = dim
        self.ue8m0 = bool(ue8m0)

    @classmethod
    def empty(cls, num_pages: int, page_size: int, dim: int = 128, device=None, ue8m0: bool = True):
        """A zero-filled pool (every key 0, every scale +0.0)."""
        if isinstance(num_pages, bool) or not isinstance(num_pages, int) or num_pages < 0:
            raise ValueError(f"Fp8IndexKeyPool.empty: `num_pages` must be an int >= 0, got {num_pages!r}")
        if isinstance(page_size, bool) or not isinstance(page_size, int) or page_size <= 0:
            raise ValueError(f"Fp8IndexKeyPool.empty: `page_size` must be an int >= 1, got {page_size!r}")
        if isinstance(dim, bool) or not isinstance(dim, int) or dim <= 0 or dim % DIM_MULTIPLE:
            raise ValueError(f"Fp8IndexKeyPool.empty: `dim` must be a positive multiple of {DIM_MULTIPLE}, got {dim!r}")
        data = torch.zeros(num_pages, index_page_bytes(page_size, dim), dtype=torch.uint8, device=device)
        return cls(data, page_size, dim, ue8m0)

    # -- properties used by the ops (the others: PagedBytePool) --------------------------------
    @property
    def head_dim(self) -> int:
        return self.dim

    def _views(self):
        """(e4m3 bytes [P, page, dim] uint8, scales [P, page] fp32): views of ``data``."""
        ps, dim = self.page_size, self.dim
        values = self.data[:, : ps * dim].view(self.num_pages, ps, dim)
        scales = self.data[:, ps * dim :].view(torch.float32)  # dim % 16 == 0: 4-byte aligned, stride % 4 == 0
        return values, scales

    def _locate(self, slots: torch.Tensor):
        s = slots.long()
        return s // self.page_size, s % self.page_size

    def page_parts(self, pages: torch.Tensor):
        """(e4m3 bytes [n, page, dim] uint8, scales [n, page] fp32) of valid page ids ``pages`` [n]
        (whole pages gathered: one ``index_select`` each)."""
        values, scales = self._views()
        pages = pages.long()
        return torch.index_select(values, 0, pages), torch.index_select(scales, 0, pages)

    def gather_parts(self, slots: torch.Tensor):
        """(e4m3 values [n, dim] fp32, scales [n] fp32) of valid ``slots`` [n] (only these rows are read)."""
        values, scales = self._views()
        page, off = self._locate(slots)
        return e4m3_values(values[page, off]), scales[page, off]

    def gather_rows(self, slots: torch.Tensor) -> torch.Tensor:
        """Dequantised keys [n, dim] fp32 (scale * e4m3 value) of valid ``slots`` [n]."""
        vals, scale = self.gather_parts(slots)
        return vals * scale.unsqueeze(-1)

    def write_rows(self, slots: torch.Tensor, rows: torch.Tensor) -> None:
        """Quantise float keys ``rows`` [n, dim] into valid ``slots`` [n] (scale rule: ``self.ue8m0``)."""
        if not isinstance(rows, torch.Tensor) or rows.dim() != 2 or rows.shape[1] != self.dim:
            raise ValueError(f"Fp8IndexKeyPool.write_rows: `rows` must be [n, {self.dim}], got {_desc(rows)}")
        if not isinstance(slots, torch.Tensor) or slots.shape != (rows.shape[0],):
            raise ValueError(f"Fp8IndexKeyPool.write_rows: `slots` must be [{rows.shape[0]}], got {_desc(slots)}")
        data, scale = quantize_index_rows(rows, self.ue8m0)
        values, scales = self._views()
        page, off = self._locate(slots)
        values[page, off] = data
        scales[page, off] = scale

    def __repr__(self) -> str:
        return (
            f"Fp8IndexKeyPool(num_pages={self.num_pages}, page_size={self.page_size}, dim={self.dim}, "
            f"ue8m0={self.ue8m0}, device={self.device})"
        )


def quantize_index_k_fp8(k: torch.Tensor, ue8m0: bool = True, out: Optional[Fp8IndexKeyPool] = None) -> Fp8IndexKeyPool:
    """Quantise float index keys into a new (or the given) ``Fp8IndexKeyPool``.

    Args:
        k: ``[P, page, Di]`` (a paged pool: P pages of ``page`` entries) or ``[N, Di]`` (N >= 1 entries:
            one page of N entries, so that entry j is slot j), any float dtype (quantised in fp32);
            Di a multiple of 16.
        ue8m0: round each scale up to a power of two (vLLM's default for DeepSeek-V4); False keeps
            ``max(amax, 1e-4) / 448``.
        out: a pool of the same pages / page size / dim to write into (its ``ue8m0`` is left as it is).
    """
    if not isinstance(k, torch.Tensor) or not k.is_floating_point() or k.dim() not in (2, 3):
        raise ValueError(f"quantize_index_k_fp8: `k` must be a float tensor [P, page, Di] or [N, Di], got {_desc(k)}")
    if not isinstance(ue8m0, bool):
        raise TypeError(f"quantize_index_k_fp8: `ue8m0` must be a bool, got {type(ue8m0).__name__}")
    pages = k if k.dim() == 3 else k.unsqueeze(0)
    P, ps, dim = pages.shape
    if ps == 0 or dim == 0 or dim % DIM_MULTIPLE:
        raise ValueError(
            f"quantize_index_k_fp8: `k` {list(k.shape)} needs >= 1 entry per page and Di a positive multiple "
            f"of {DIM_MULTIPLE}, got {ps} entries of Di={dim}"
        )
    if out is None:
        pool = Fp8IndexKeyPool.empty(P, ps, dim, k.device, ue8m0)
    else:
        if not isinstance(out, Fp8IndexKeyPool):
            raise TypeError(f"quantize_index_k_fp8: `out` must be an Fp8IndexKeyPool, got {type(out).__name__}")
        if (out.num_pages, out.page_size, out.dim) != (P, ps, dim) or out.device != k.device:
            raise ValueError(
                f"quantize_index_k_fp8: `out` has {out.num_pages} pages of {out.page_size} x {out.dim} on "
                f"{out.device}, `k` is {list(k.shape)} on {k.device}"
            )
        pool = out
    data, scale = quantize_index_rows(pages.reshape(-1, dim), ue8m0)
    values, scales = pool._views()
    values.copy_(data.view(P, ps, dim))
    scales.copy_(scale.view(P, ps))
    return pool


def dequantize_index_k_fp8(pool: Fp8IndexKeyPool) -> torch.Tensor:
    """The whole pool as fp32 ``[P, page, Di]`` (scale * e4m3 value; for tests and debugging, the ops
    never do this)."""
    if not isinstance(pool, Fp8IndexKeyPool):
        raise TypeError(f"dequantize_index_k_fp8: `pool` must be an Fp8IndexKeyPool, got {type(pool).__name__}")
    values, scales = pool._views()
    return e4m3_values(values) * scales.unsqueeze(-1)
