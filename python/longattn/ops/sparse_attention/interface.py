"""``longattn.sparse_attention``: validate, pick a backend, run."""

from __future__ import annotations

from typing import Optional, Tuple

import torch

from ..._checks import FLOAT_DTYPES, INDEX_DTYPES, ArgChecker
from ...backends import registry
from .. import custom_ops

OP = "sparse_attention"


def kv_rows(chk: ArgChecker, name: str, kv, head_dim: int):
    """Normalise a KV stream to a row source with ``head_dim`` columns.

    Float pools ``[num_slots, D]`` or paged ``[num_pages, page_size, D]`` become the flat row view
    ``[num_slots, D]`` (slot = page * page_size + offset; no copy). Pool objects (e.g. the FP8 pool of
    ``longattn.cache``) pass through; they expose ``num_slots``, ``head_dim``, ``device`` and
    ``gather_rows(slots)``.
    """
    if isinstance(kv, torch.Tensor):
        if kv.dim() not in (2, 3):
            chk.fail(
                f"`{name}` must be a float pool [num_slots, D] or paged [num_pages, page_size, D], "
                f"got {kv.dim()}-D shape {list(kv.shape)}"
            )
        chk.tensor(name, kv, ("slots", "D") if kv.dim() == 2 else ("pages", "page_size", "D"), FLOAT_DTYPES)
        chk.dim(name, kv, -1 + kv.dim(), head_dim, "the head dim D of q")
        if kv.dim() == 3:
            try:
                kv = kv.view(-1, head_dim)
            except RuntimeError:
                chk.fail(f"paged `{name}` {list(kv.shape)} must be viewable as [num_pages * page_size, D]")
        return kv
    if not all(hasattr(kv, a) for a in ("num_slots", "head_dim", "device", "gather_rows")):
        chk.fail(
            f"`{name}` must be a float tensor pool or a KV pool object (e.g. longattn.cache.Fp8KVPool), "
            f"got {type(kv).__name__}",
            TypeError,
        )
    if kv.head_dim != head_dim:
        chk.fail(f"`{name}` rows have {kv.head_dim} dims but q has head dim D={head_dim}")
    if kv.device != chk.device:
        chk.fail(f"all tensors must be on one device: `q` is on {chk.device} but `{name}` is on {kv.device}")
    return kv


def _index_stream(chk: ArgChecker, T: int, idx_name: str, idx, len_name: str, lengths) -> None:
    chk.tensor(idx_name, idx, ("T", "K"), INDEX_DTYPES)
    chk.dim(idx_name, idx, 0, T, "one row per query token of q")
    if lengths is not None:
        chk.tensor(len_name, lengths, ("T",), INDEX_DTYPES)
        chk.dim(len_name, lengths, 0, T, "one length per query token of q")


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
    """
    chk = ArgChecker(OP)
    chk.tensor("q", q, ("T", "H", "D"))
    T, H, D = q.shape
    if H == 0 or D == 0:
        chk.fail(f"`q` must have H >= 1 and D >= 1, got shape {list(q.shape)}")
    kv = kv_rows(chk, "kv", kv, D)
    _index_stream(chk, T, "indices", indices, "topk_length", topk_length)
    if (extra_kv is None) != (extra_indices is None):
        chk.fail("`extra_kv` and `extra_indices` must be given together (the second KV stream)")
    if extra_topk_length is not None and extra_indices is None:
        chk.fail("`extra_topk_length` needs `extra_kv` and `extra_indices`")
    if extra_kv is not None:
        extra_kv = kv_rows(chk, "extra_kv", extra_kv, D)
        _index_stream(chk, T, "extra_indices", extra_indices, "extra_topk_length", extra_topk_length)
    if attn_sink is not None:
        chk.tensor("attn_sink", attn_sink, ("H",))
        chk.dim("attn_sink", attn_sink, 0, H, "one sink per query head of q")
        attn_sink = attn_sink.to(torch.float32)
    scale = D**-0.5 if softmax_scale is None else chk.finite_scale("softmax_scale", softmax_scale)

    args = dict(
        q=q,
        kv=kv,
        indices=indices,
        topk_length=topk_length,
        extra_kv=extra_kv,
        extra_indices=extra_indices,
        extra_topk_length=extra_topk_length,
        attn_sink=attn_sink,
        softmax_scale=scale,
    )
    if (
        custom_ops.use_custom_op(q, kv, extra_kv, attn_sink)
        and custom_ops.is_schema_pool(kv)
        and (extra_kv is None or custom_ops.is_schema_pool(extra_kv))
    ):
        kv_t, kv_ps = custom_ops.pool_to_schema(kv)
        extra_t, extra_ps = (None, 0) if extra_kv is None else custom_ops.pool_to_schema(extra_kv)
        return custom_ops.sparse_attention(
            q, kv_t, kv_ps, indices, topk_length, extra_t, extra_ps, extra_indices, extra_topk_length,
            attn_sink, scale, backend,
        )  # fmt: skip
    return registry.select(OP, q.device, args, backend)(**args)
