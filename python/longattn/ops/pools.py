"""KV pools as the ops take them, and as they cross a custom-op schema.

A pool is a float tensor ``[num_slots, D]``, its paged view ``[num_pages, page_size, D]`` (the same
memory: slot = page * page_size + offset), or a pool object: ``longattn.cache.Fp8KVPool`` or any object
with ``num_slots``, ``head_dim``, ``device`` and ``gather_rows(slots)`` (read) / ``write_rows(slots,
rows)`` (written). Prepared inputs hold float pools as the flat row view ``[num_slots, D]``.

In a schema a pool is ``(Tensor, int page_size)``: page_size 0 is a float tensor, > 0 the uint8 data
of an ``Fp8KVPool`` with that many records per page, < 0 the uint8 data of an ``Fp8IndexKeyPool``
with ``-page_size`` entries per page (its dim is ``data.shape[1] // -page_size - 4``; only pools with
the default ``ue8m0`` scale rule cross, the one a schema can restore). Other pool objects cannot cross
a schema (the ops run them on the chosen backend directly, eager only).
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch

from .._checks import FLOAT_DTYPES, ArgChecker
from ..cache.fp8 import Fp8KVPool
from ..cache.fp8_index import SCALE_BYTES as INDEX_SCALE_BYTES
from ..cache.fp8_index import Fp8IndexKeyPool

READ_ATTRS = ("num_slots", "head_dim", "device", "gather_rows")
WRITE_ATTRS = ("num_slots", "head_dim", "device", "write_rows")


def float_pool_rows(chk: ArgChecker, name: str, pool: torch.Tensor, head_dim: Optional[int], what: str) -> torch.Tensor:
    """A float tensor pool checked and viewed as its rows ``[num_slots, D]`` (no copy)."""
    if pool.dim() not in (2, 3):
        chk.fail(
            f"`{name}` must be a float pool [num_slots, D] or paged [num_pages, page_size, D], "
            f"got {pool.dim()}-D shape {list(pool.shape)}"
        )
    chk.tensor(name, pool, ("slots", "D") if pool.dim() == 2 else ("pages", "page_size", "D"), FLOAT_DTYPES)
    if head_dim is not None:
        chk.dim(name, pool, pool.dim() - 1, head_dim, what)
    if pool.dim() == 2:
        return pool
    try:
        return pool.view(-1, pool.shape[-1])
    except RuntimeError:
        chk.fail(f"paged `{name}` {list(pool.shape)} must be viewable as [num_pages * page_size, D]")
        raise  # (fail raises)


def pool_object(chk: ArgChecker, name: str, pool, head_dim: int, attrs: Tuple[str, ...]):
    """A pool object checked for the attributes the op uses, its row width and its device."""
    if not all(hasattr(pool, a) for a in attrs):
        chk.fail(
            f"`{name}` must be a float tensor pool or a KV pool object (e.g. longattn.cache.Fp8KVPool), "
            f"got {type(pool).__name__}",
            TypeError,
        )
    if pool.head_dim != head_dim:
        chk.fail(f"`{name}` rows have {pool.head_dim} dims but the op needs rows of {head_dim}")
    chk.on_device(name, pool)
    return pool


def num_slots(pool) -> int:
    return pool.shape[0] if isinstance(pool, torch.Tensor) else int(pool.num_slots)


def crosses_schema(pool) -> bool:
    if isinstance(pool, Fp8IndexKeyPool):
        return pool.ue8m0  # (the schema carries no scale rule: the default one is restored)
    return pool is None or isinstance(pool, (torch.Tensor, Fp8KVPool))


def to_schema(pool) -> Tuple[Optional[torch.Tensor], int]:
    """(tensor, page_size) of a pool for a schema (page_size 0: a float tensor; < 0: an FP8 index pool)."""
    if isinstance(pool, Fp8KVPool):
        return pool.data, pool.page_size
    if isinstance(pool, Fp8IndexKeyPool):
        return pool.data, -pool.page_size
    return pool, 0


def from_schema(data: Optional[torch.Tensor], page_size: int):
    """The pool a schema's (tensor, page_size) stands for."""
    if data is None or page_size == 0:
        return data
    if page_size < 0:
        return Fp8IndexKeyPool(data, -page_size, data.shape[1] // -page_size - INDEX_SCALE_BYTES)
    return Fp8KVPool(data, page_size)
