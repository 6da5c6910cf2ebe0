"""``longattn.compress_pool``: stateless KV-compressor pooling of one sequence from position 0."""

from __future__ import annotations

from typing import Optional

import torch

from ..._checks import FLOAT_DTYPES, INDEX_DTYPES, ArgChecker
from ...backends import registry
from .. import custom_ops


def compress_pool(
    a: torch.Tensor,
    b: torch.Tensor,
    ratio: int,
    overlap: bool,
    *,
    backend: Optional[str] = None,
) -> torch.Tensor:
    """Pool every complete block of ``ratio`` tokens into one entry (per-channel softmax gate).

    Args:
        a: ``[S, c*d]`` values (c = 2 if ``overlap`` else 1).
        b: ``[S, c*d]`` scores, already including the position bias ``ape[t % ratio]``.
        ratio: tokens per entry (V4: 4 for CSA with overlap, 128 for HCA without).
        overlap: entry j pools half A ``[0, d)`` of block j-1 and half B ``[d, 2d)`` of block j.

    Returns:
        ``[S // ratio, d]`` fp32 entries, before RMSNorm / RoPE / quantisation.
    """
    chk = ArgChecker("compress_pool")
    chk.tensor("a", a, ("S", "c*d"))
    chk.tensor("b", b, ("S", "c*d"))
    if b.shape != a.shape:
        chk.fail(f"`b` must have the shape of `a` {list(a.shape)}, got {list(b.shape)}")
    ratio = chk.positive_int("ratio", ratio)
    if not isinstance(overlap, bool):
        chk.fail(f"`overlap` must be a bool, got {type(overlap).__name__}", TypeError)
    if overlap and a.shape[1] % 2:
        chk.fail(f"with overlap, `a` must have an even width 2*d (halves A and B), got {a.shape[1]}")
    if custom_ops.use_custom_op(a, b):
        return custom_ops.compress_pool(a, b, ratio, overlap, backend)
    args = dict(a=a, b=b, ratio=ratio, overlap=overlap)
    return registry.select("compress_pool", a.device, args, backend)(**args)


def compress_kv(
    a: torch.Tensor,
    b: torch.Tensor,
    positions: torch.Tensor,
    token_rows: torch.Tensor,
    *,
    ratio: int,
    overlap: bool,
    state: torch.Tensor,
    state_block_table: torch.Tensor,
    out,
    out_block_table: torch.Tensor,
    norm_weight: torch.Tensor,
    eps: float,
    rope_inv_freq: torch.Tensor,
    backend: Optional[str] = None,
) -> None:
    """Stateful, paged KV compressor for a ragged batch of new tokens (in place).

    For every token the op stores ``(a_t, b_t)`` in the sequence's state ring (the last ``c * ratio``
    positions, ring slot ``p % (c * ratio)``), and at every token with ``(p + 1) % ratio == 0`` it emits
    entry ``j = p // ratio``: the per-channel softmax pooling of ``compress_pool`` over positions
    ``p - c*ratio + 1 .. p`` (taken from this batch or the ring; positions < 0 absent), then RMSNorm
    (``norm_weight``, ``eps``), interleaved RoPE on the last ``2 * len(rope_inv_freq)`` dims at
    position ``j * ratio``, quantisation if ``out`` is an FP8 pool, and the write of entry j to
    ``out`` through ``out_block_table``. The result equals ``compress_pool`` (+ norm, RoPE) on the
    concatenated sequence for any split into chunks and decode steps.

    Args:
        a, b: ``[T, c*d]`` (c = 2 if overlap else 1) values and scores (b includes the position bias).
        positions: ``[T]`` absolute positions; the tokens of one sequence are consecutive in the batch
            and continue the sequence (the ring holds the positions before them).
        token_rows: ``[T]`` row of each token in both block tables.
        state: fp32 ``[state_pages, state_page_size, 2*c*d]`` rows ``a | b``.
        state_block_table: ``[B, ring_pages]`` pages of each sequence's ring.
        out: ``[num_pages, page_size, d]`` float pool or an ``Fp8KVPool`` (d = 512).
        out_block_table: ``[B, max_pages]``: entry j of row r lives at slot
            ``out_block_table[r, j // page_size] * page_size + j % page_size``.
        norm_weight: ``[d]``; rope_inv_freq: ``[rope_dim // 2]`` fp32 (``longattn.rope.inv_freq``).

    Pages outside the pools (e.g. -1) are skipped: nothing is read or written outside a tensor.
    """
    chk = ArgChecker("compress_kv")
    chk.tensor("a", a, ("T", "c*d"))
    chk.tensor("b", b, ("T", "c*d"))
    if b.shape != a.shape:
        chk.fail(f"`b` must have the shape of `a` {list(a.shape)}, got {list(b.shape)}")
    T, width = a.shape
    ratio = chk.positive_int("ratio", ratio)
    if not isinstance(overlap, bool):
        chk.fail(f"`overlap` must be a bool, got {type(overlap).__name__}", TypeError)
    c = 2 if overlap else 1
    if width % c:
        chk.fail(f"with overlap, `a` must have an even width 2*d (halves A and B), got {width}")
    d = width // c
    chk.tensor("positions", positions, ("T",), INDEX_DTYPES)
    chk.dim("positions", positions, 0, T, "one position per token of a")
    chk.tensor("token_rows", token_rows, ("T",), INDEX_DTYPES)
    chk.dim("token_rows", token_rows, 0, T, "one block-table row per token of a")
    chk.tensor("state", state, ("state_pages", "state_page_size", "2*c*d"), (torch.float32,))
    chk.dim("state", state, 2, 2 * width, "a | b rows: 2 * c * d")
    if not state.is_contiguous():
        chk.fail("`state` must be contiguous (it is written in place)")
    chk.tensor("state_block_table", state_block_table, ("B", "ring_pages"), INDEX_DTYPES)
    ring_pages = -(-c * ratio // state.shape[1])
    if state_block_table.shape[1] < ring_pages:
        chk.fail(
            f"`state_block_table` needs {ring_pages} pages per row for a ring of {c * ratio} positions "
            f"in pages of {state.shape[1]}, got {state_block_table.shape[1]}"
        )
    if isinstance(out, torch.Tensor):
        chk.tensor("out", out, ("num_pages", "page_size", "d"), FLOAT_DTYPES)
        chk.dim("out", out, 2, d, "the entry width d (a's width / c)")
        if not out.is_contiguous():
            chk.fail("`out` must be contiguous (it is written in place)")
    elif all(hasattr(out, x) for x in ("num_pages", "page_size", "head_dim", "write_rows")):
        if out.head_dim != d:
            chk.fail(f"`out` pool holds rows of {out.head_dim} dims, entries have d={d}")
        if out.device != chk.device:
            chk.fail(f"all tensors must be on one device: `a` is on {chk.device} but `out` is on {out.device}")
    else:
        chk.fail(f"`out` must be a float pool tensor or a KV pool object, got {type(out).__name__}", TypeError)
    chk.tensor("out_block_table", out_block_table, ("B", "max_pages"), INDEX_DTYPES)
    chk.tensor("norm_weight", norm_weight, ("d",))
    chk.dim("norm_weight", norm_weight, 0, d, "the entry width d")
    eps = chk.finite_scale("eps", eps)
    chk.tensor("rope_inv_freq", rope_inv_freq, ("rope_dim/2",))
    if 2 * rope_inv_freq.shape[0] > d:
        chk.fail(f"`rope_inv_freq` rotates {2 * rope_inv_freq.shape[0]} dims, more than d={d}")
    if custom_ops.use_custom_op(a, b, norm_weight) and custom_ops.is_schema_pool(out):
        out_t, out_ps = custom_ops.pool_to_schema(out)
        custom_ops.compress_kv(
            a, b, positions, token_rows, ratio, overlap, state, state_block_table, out_t, out_ps,
            out_block_table, norm_weight, eps, rope_inv_freq, backend,
        )  # fmt: skip
        return
    args = dict(
        a=a,
        b=b,
        positions=positions,
        token_rows=token_rows,
        ratio=ratio,
        overlap=overlap,
        state=state,
        state_block_table=state_block_table,
        out=out,
        out_block_table=out_block_table,
        norm_weight=norm_weight,
        eps=eps,
        rope_inv_freq=rope_inv_freq,
    )
    registry.select("compress_kv", a.device, args, backend)(**args)
