"""``longattn.sparse_attention``: the public function, its prepared inputs and its custom op."""

from __future__ import annotations

import dataclasses
from typing import Optional, Tuple

import torch

from ..._checks import INDEX_DTYPES, ArgChecker
from .. import pools
from ..op import Op
from .support import IMPLS

NAME = "sparse_attention"


@dataclasses.dataclass(frozen=True)
class SparseAttentionInputs:
    """A validated call. Float pools are flat row views ``[num_slots, D]``; pool objects pass as is.

    q: ``[T, H, D]`` fp32/bf16/fp16. kv, extra_kv: the two KV streams (extra_* None: one stream).
    indices, extra_indices: ``[T, K]``, ``[T, K2]`` int32/int64. topk_length, extra_topk_length:
    ``[T]`` int or None. attn_sink: ``[H]`` fp32 or None. softmax_scale: float.
    """

    q: torch.Tensor
    kv: object
    indices: torch.Tensor
    topk_length: Optional[torch.Tensor]
    extra_kv: object
    extra_indices: Optional[torch.Tensor]
    extra_topk_length: Optional[torch.Tensor]
    attn_sink: Optional[torch.Tensor]
    softmax_scale: float

    @property
    def device(self) -> torch.device:
        return self.q.device

    def to_schema(self):
        if not (pools.crosses_schema(self.kv) and pools.crosses_schema(self.extra_kv)):
            return None
        kv, kv_ps = pools.to_schema(self.kv)
        extra, extra_ps = pools.to_schema(self.extra_kv)
        return (self.q, kv, kv_ps, self.indices, self.topk_length, extra, extra_ps, self.extra_indices,
                self.extra_topk_length, self.attn_sink, self.softmax_scale)  # fmt: skip


def _stream(chk: ArgChecker, name: str, kv, head_dim: int):
    if isinstance(kv, torch.Tensor):
        return pools.float_pool_rows(chk, name, kv, head_dim, "the head dim D of q")
    return pools.pool_object(chk, name, kv, head_dim, pools.READ_ATTRS)


def _index_rows(chk: ArgChecker, T: int, idx_name: str, idx, len_name: str, lengths) -> None:
    chk.tensor(idx_name, idx, ("T", "K"), INDEX_DTYPES)
    chk.dim(idx_name, idx, 0, T, "one row per query token of q")
    if lengths is not None:
        chk.tensor(len_name, lengths, ("T",), INDEX_DTYPES)
        chk.dim(len_name, lengths, 0, T, "one length per query token of q")


def prepare(
    q, kv, indices, topk_length=None, extra_kv=None, extra_indices=None, extra_topk_length=None,
    attn_sink=None, softmax_scale=None,
) -> SparseAttentionInputs:  # fmt: skip
    """Validate one call (see ``sparse_attention``) and normalise it."""
    chk = ArgChecker(NAME)
    chk.tensor("q", q, ("T", "H", "D"))
    T, H, D = q.shape
    if H == 0 or D == 0:
        chk.fail(f"`q` must have H >= 1 and D >= 1, got shape {list(q.shape)}")
    kv = _stream(chk, "kv", kv, D)
    _index_rows(chk, T, "indices", indices, "topk_length", topk_length)
    if (extra_kv is None) != (extra_indices is None):
        chk.fail("`extra_kv` and `extra_indices` must be given together (the second KV stream)")
    if extra_topk_length is not None and extra_indices is None:
        chk.fail("`extra_topk_length` needs `extra_kv` and `extra_indices`")
    if extra_kv is not None:
        extra_kv = _stream(chk, "extra_kv", extra_kv, D)
        _index_rows(chk, T, "extra_indices", extra_indices, "extra_topk_length", extra_topk_length)
    if attn_sink is not None:
        chk.tensor("attn_sink", attn_sink, ("H",))
        chk.dim("attn_sink", attn_sink, 0, H, "one sink per query head of q")
        if attn_sink.dtype != torch.float32:
            attn_sink = attn_sink.to(torch.float32)
    scale = D**-0.5 if softmax_scale is None else chk.finite_scale("softmax_scale", softmax_scale)
    return SparseAttentionInputs(q, kv, indices, topk_length, extra_kv, extra_indices, extra_topk_length,
                                 attn_sink, scale)  # fmt: skip


def _from_schema(q, kv, kv_page_size, indices, topk_length, extra_kv, extra_page_size, extra_indices,
                 extra_topk_length, attn_sink, softmax_scale):  # fmt: skip
    return prepare(q, pools.from_schema(kv, kv_page_size), indices, topk_length,
                   pools.from_schema(extra_kv, extra_page_size), extra_indices, extra_topk_length, attn_sink,
                   softmax_scale)  # fmt: skip


def _fake(q, *args):
    T, H, _ = q.shape
    return torch.empty_like(q), q.new_empty((T, H), dtype=torch.float32)


def _setup_context(ctx, inputs, output) -> None:
    q, kv, kv_ps, indices, topk_length, extra_kv, extra_ps, extra_indices, extra_topk_length, sink, scale, be = inputs
    ctx.scale, ctx.float_pools, ctx.backend = scale, (kv_ps == 0, extra_kv is None or extra_ps == 0), be
    ctx.save_for_backward(q, kv, indices, topk_length, extra_kv, extra_indices, extra_topk_length, sink, *output)


def _triton_backward(ctx, q) -> bool:
    """The Triton backward runs where the forward's backend was forced to triton, or on CUDA tensors
    by default when triton is installed; otherwise the PyTorch one (backward.py)."""
    if ctx.backend == "triton":
        return True
    if ctx.backend is not None or q.device.type != "cuda":
        return False
    import importlib.util

    return importlib.util.find_spec("triton") is not None


def _backward(ctx, dout, dlse):
    """Gradients for q, both float streams and the sink (backward.py or triton_backward.py); FP8
    pools (bytes) get none."""
    q, kv, indices, topk_length, extra_kv, extra_indices, extra_topk_length, sink, out, lse = ctx.saved_tensors
    if not all(ctx.float_pools):
        if any(ctx.needs_input_grad[i] for i in (0, 9)):
            raise NotImplementedError("longattn.sparse_attention: no backward through an FP8 pool (inference only)")
        return (None,) * 12
    streams = [(kv, indices, topk_length)] + (
        [] if extra_kv is None else [(extra_kv, extra_indices, extra_topk_length)]
    )
    if _triton_backward(ctx, q):
        from .triton_backward import sparse_attention_backward as triton_bwd

        dq, drows, dsink = triton_bwd(q, streams, sink, ctx.scale, out, lse, dout, dlse)
    else:
        from .backward import sparse_attention_backward

        dq, drows, dsink = sparse_attention_backward(q, streams, sink, ctx.scale, lse, dout, dlse)
    d_extra = drows[1].to(extra_kv.dtype) if extra_kv is not None else None
    return (dq.to(q.dtype), drows[0].to(kv.dtype), None, None, None, d_extra, None, None, None,
            None if dsink is None else dsink.to(sink.dtype), None, None)  # fmt: skip


OP = Op(
    NAME,
    "(Tensor q, Tensor kv, int kv_page_size, Tensor indices, Tensor? topk_length, Tensor? extra_kv, "
    "int extra_page_size, Tensor? extra_indices, Tensor? extra_topk_length, Tensor? attn_sink, float softmax_scale, "
    "str? backend) -> (Tensor, Tensor)",
    inputs_type=SparseAttentionInputs,
    from_schema=_from_schema,
    fake=_fake,
    impls=IMPLS,
    backward=_backward,
    setup_context=_setup_context,
)


def sparse_attention(
    q: torch.Tensor,
    kv,
    indices: torch.Tensor,
    *,
    topk_length: Optional[torch.Tensor] = None,
    extra_kv=None,
    extra_indices: Optional[torch.Tensor] = None,
    extra_topk_length: Optional[torch.Tensor] = None,
    attn_sink: Optional[torch.Tensor] = None,
    softmax_scale: Optional[float] = None,
    backend: Optional[str] = None,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Sparse MQA over per-token index rows into one or two KV streams, with an optional sink.

    Args:
        q: ``[T, H, D]`` fp32/bf16/fp16 queries (T = all tokens of a ragged batch).
        kv: the first KV stream: ``[num_slots, D]``, paged ``[num_pages, page_size, D]`` (slot =
            page * page_size + offset) or a KV pool object (FP8 pool). K = V = the row.
        indices: ``[T, K]`` int32/int64 slots into ``kv``; -1 and any value outside [0, num_slots)
            mean "no key" and are skipped (never read).
        topk_length: ``[T]`` int: only the first ``topk_length[t]`` entries of row t count.
        extra_kv, extra_indices, extra_topk_length: an optional second stream (the compressed cache);
            both streams share one softmax.
        attn_sink: ``[H]`` fp32 sink logits (raw logit units, not scaled); +inf zeroes the output,
            -inf disables the sink.
        softmax_scale: defaults to ``D ** -0.5``.
        backend: force a backend (see ``longattn.info()``).

    Returns:
        ``out [T, H, D]`` in q's dtype (0 for rows with no valid key) and ``lse [T, H]`` fp32: the
        natural-log log-sum-exp of the scaled logits of the keys used (-inf if none; sink excluded).
        Special values (README.md): a NaN logit gives out and lse NaN; a +inf logit gives lse +inf and
        out NaN; keys with logit -inf weigh 0.

    Differentiable in q, float KV streams (both) and attn_sink, on every backend (the backward is
    pure PyTorch, ``backward.py``); not through an FP8 pool.
    """
    inputs = prepare(q, kv, indices, topk_length, extra_kv, extra_indices, extra_topk_length, attn_sink,
                     softmax_scale)  # fmt: skip
    return OP.run(inputs, backend)
