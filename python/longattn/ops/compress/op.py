"""``longattn.compress_pool`` (stateless pooling) and ``longattn.compress_kv`` (the stateful, paged
compressor): public functions, prepared inputs and custom ops."""

from __future__ import annotations

import dataclasses
from typing import Optional

import torch

from ..._checks import FLOAT_DTYPES, INDEX_DTYPES, ArgChecker
from .. import pools
from ..op import Op, refuse_grad, returns_nothing
from .support import COMPRESS_KV_IMPLS, POOL_IMPLS


def _ab(chk: ArgChecker, a, b, rows: str, overlap) -> int:
    """Check the values / scores pair and the overlap flag; returns the entry width d."""
    chk.tensor("a", a, (rows, "c*d"))
    chk.tensor("b", b, (rows, "c*d"))
    if b.shape != a.shape:
        chk.fail(f"`b` must have the shape of `a` {list(a.shape)}, got {list(b.shape)}")
    if not isinstance(overlap, bool):
        chk.fail(f"`overlap` must be a bool, got {type(overlap).__name__}", TypeError)
    if overlap and a.shape[1] % 2:
        chk.fail(f"with overlap, `a` must have an even width 2*d (halves A and B), got {a.shape[1]}")
    return a.shape[1] // (2 if overlap else 1)


class _ValuesAndScores:
    """What both compressor ops' inputs derive from ``a`` ``[rows, c*d]`` and ``overlap``."""

    a: torch.Tensor
    overlap: bool

    @property
    def device(self) -> torch.device:
        return self.a.device

    @property
    def width(self) -> int:
        """d: the width of one entry."""
        return self.a.shape[1] // (2 if self.overlap else 1)


# --- compress_pool -----------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class PoolInputs(_ValuesAndScores):
    """a, b ``[S, c*d]`` float (c = 2 with overlap), ratio > 0, overlap."""

    a: torch.Tensor
    b: torch.Tensor
    ratio: int
    overlap: bool

    def to_schema(self):
        return (self.a, self.b, self.ratio, self.overlap)


def prepare_pool(a, b, ratio, overlap) -> PoolInputs:
    chk = ArgChecker("compress_pool")
    _ab(chk, a, b, "S", overlap)
    ratio = chk.positive_int("ratio", ratio)
    return PoolInputs(a, b, ratio, overlap)


def _pool_fake(a, b, ratio, overlap, backend):
    S, width = a.shape
    return a.new_empty((S // ratio, width // 2 if overlap else width), dtype=torch.float32)


def _pool_setup(ctx, inputs, output):
    a, b, ratio, overlap, _ = inputs
    ctx.save_for_backward(a, b)
    ctx.ratio, ctx.overlap = ratio, overlap


def _pool_backward(ctx, grad):
    """Recomputes the pooling with the reference's PyTorch ops under autograd (chunked like the
    forward) and differentiates that: exact for every backend, at the reference's speed."""
    from .reference import compress_pool as pool_entries

    a, b = ctx.saved_tensors
    need_a, need_b = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
    with torch.enable_grad():
        a_ = a.detach().requires_grad_(need_a)
        b_ = b.detach().requires_grad_(need_b)
        out = pool_entries(a_, b_, ctx.ratio, ctx.overlap)
        wrt = [x for x, need in ((a_, need_a), (b_, need_b)) if need]
        # allow_unused: no entry (S < ratio) reads no token; unused inputs get zeros
        grads = (
            iter(
                g if g is not None else torch.zeros_like(x)
                for g, x in zip(torch.autograd.grad(out, wrt, grad, allow_unused=True, materialize_grads=False), wrt)
            )
            if out.requires_grad
            else iter(torch.zeros_like(x) for x in wrt)
        )
    return (next(grads) if need_a else None), (next(grads) if need_b else None), None, None, None


POOL_OP = Op(
    "compress_pool",
    "(Tensor a, Tensor b, int ratio, bool overlap, str? backend) -> Tensor",
    inputs_type=PoolInputs,
    from_schema=prepare_pool,
    fake=_pool_fake,
    impls=POOL_IMPLS,
    backward=_pool_backward,
    setup_context=_pool_setup,
)


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
        ``[S // ratio, d]`` fp32 entries, before RMSNorm / RoPE / quantisation. A channel with a NaN or
        +inf score (or a NaN value) among its slots is NaN. Differentiable in ``a`` and ``b``.
    """
    return POOL_OP.run(prepare_pool(a, b, ratio, overlap), backend)


# --- compress_kv -------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class CompressKVInputs(_ValuesAndScores):
    """A validated compressor step (see ``compress_kv`` for the meaning of each field).

    a, b ``[T, c*d]``; positions, token_rows ``[T]`` int; state fp32 ``[state_pages, ring_page, 2*c*d]``
    (contiguous); state_block_table ``[B, ring_pages]``; out: a contiguous float pool
    ``[num_pages, page_size, d]`` or a pool object (``Fp8KVPool``, ``Fp8IndexKeyPool``); out_block_table
    ``[B, max_pages]``;
    norm_weight ``[d]``; eps; rope_inv_freq ``[rope_dim / 2]``.
    """

    a: torch.Tensor
    b: torch.Tensor
    positions: torch.Tensor
    token_rows: torch.Tensor
    ratio: int
    overlap: bool
    state: torch.Tensor
    state_block_table: torch.Tensor
    out: object
    out_block_table: torch.Tensor
    norm_weight: torch.Tensor
    eps: float
    rope_inv_freq: torch.Tensor

    def to_schema(self):
        if not pools.crosses_schema(self.out):
            return None
        out, out_ps = pools.to_schema(self.out)
        return (self.a, self.b, self.positions, self.token_rows, self.ratio, self.overlap, self.state,
                self.state_block_table, out, out_ps, self.out_block_table, self.norm_weight, self.eps,
                self.rope_inv_freq)  # fmt: skip


def prepare_compress_kv(
    a, b, positions, token_rows, ratio, overlap, state, state_block_table, out, out_block_table, norm_weight,
    eps, rope_inv_freq,
) -> CompressKVInputs:  # fmt: skip
    chk = ArgChecker("compress_kv")
    d = _ab(chk, a, b, "T", overlap)
    T, width = a.shape
    ratio = chk.positive_int("ratio", ratio)
    c = 2 if overlap else 1
    chk.tensor("positions", positions, ("T",), INDEX_DTYPES)
    chk.dim("positions", positions, 0, T, "one position per token of a")
    chk.tensor("token_rows", token_rows, ("T",), INDEX_DTYPES)
    chk.dim("token_rows", token_rows, 0, T, "one block-table row per token of a")
    chk.tensor("state", state, ("state_pages", "state_page_size", "2*c*d"), (torch.float32,))
    chk.dim("state", state, 2, 2 * width, "a | b rows: 2 * c * d")
    if not state.is_contiguous():
        chk.fail("`state` must be contiguous (it is written in place)")
    if state.shape[1] == 0:
        chk.fail("`state` pages must hold at least one row (state_page_size >= 1)")
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
        if out.shape[1] == 0:
            chk.fail("`out` pages must hold at least one entry (page_size >= 1)")
    else:
        pools.pool_object(chk, "out", out, d, pools.WRITE_ATTRS + ("num_pages", "page_size"))
    chk.tensor("out_block_table", out_block_table, ("B", "max_pages"), INDEX_DTYPES)
    chk.tensor("norm_weight", norm_weight, ("d",))
    chk.dim("norm_weight", norm_weight, 0, d, "the entry width d")
    eps = chk.finite_scale("eps", eps)
    chk.tensor("rope_inv_freq", rope_inv_freq, ("rope_dim/2",))
    if 2 * rope_inv_freq.shape[0] > d:
        chk.fail(f"`rope_inv_freq` rotates {2 * rope_inv_freq.shape[0]} dims, more than d={d}")
    inputs = CompressKVInputs(a, b, positions, token_rows, ratio, overlap, state, state_block_table, out,
                              out_block_table, norm_weight, eps, rope_inv_freq)  # fmt: skip
    refuse_grad("compress_kv", inputs, "it writes the compressed cache and the compressor state (not differentiable)")
    return inputs


def _compress_kv_from_schema(a, b, positions, token_rows, ratio, overlap, state, state_block_table, out,
                             out_page_size, out_block_table, norm_weight, eps, rope_inv_freq):  # fmt: skip
    return prepare_compress_kv(a, b, positions, token_rows, ratio, overlap, state, state_block_table,
                               pools.from_schema(out, out_page_size), out_block_table, norm_weight, eps,
                               rope_inv_freq)  # fmt: skip


COMPRESS_KV_OP = Op(
    "compress_kv",
    "(Tensor a, Tensor b, Tensor positions, Tensor token_rows, int ratio, bool overlap, Tensor(a!) state, "
    "Tensor state_block_table, Tensor(b!) out, int out_page_size, Tensor out_block_table, Tensor norm_weight, "
    "float eps, Tensor rope_inv_freq, str? backend) -> ()",
    inputs_type=CompressKVInputs,
    from_schema=_compress_kv_from_schema,
    fake=returns_nothing,
    impls=COMPRESS_KV_IMPLS,
    mutates=True,
)


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
        out: ``[num_pages, page_size, d]`` float pool, an ``Fp8KVPool`` (d = 512) or an
            ``Fp8IndexKeyPool`` of dim d (indexer keys: the fp32 entry after norm and RoPE quantised
            by the pool's rule, as its ``write_rows``).
        out_block_table: ``[B, max_pages]``: entry j of row r lives at slot
            ``out_block_table[r, j // page_size] * page_size + j % page_size``.
        norm_weight: ``[d]``; rope_inv_freq: ``[rope_dim // 2]`` fp32 (``longattn.rope.inv_freq``).

    Pages outside the pools (e.g. -1) are skipped: nothing is read or written outside a tensor. Not
    differentiable: inputs that require grad are refused under grad mode (the caches keep values).
    """
    inputs = prepare_compress_kv(a, b, positions, token_rows, ratio, overlap, state, state_block_table, out,
                                 out_block_table, norm_weight, eps, rope_inv_freq)  # fmt: skip
    COMPRESS_KV_OP.run(inputs, backend)
