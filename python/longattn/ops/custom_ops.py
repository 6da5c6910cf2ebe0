"""The public ops as ``torch.library`` custom ops (namespace ``longattn``), with fake implementations.

Every public op (``ops/*/interface.py``) validates its arguments in Python first (so error messages are
the same whatever runs the op), then calls the custom op defined here; the custom op's real
implementation picks the backend (``registry.select``) and runs it. ``torch.compile`` therefore sees
each op as one opaque node with a schema, never the dispatch code or a backend's internals, and the
fake (meta) implementations give it the output shapes and dtypes without running anything.

Schemas (``SCHEMAS`` below; ``tests/test_compile.py`` runs ``torch.library.opcheck`` on each):

- KV pools travel as a tensor and an int ``page_size``: ``page_size == 0`` means a float pool tensor
  (``[num_slots, D]`` or ``[num_pages, page, D]``), ``page_size > 0`` means the uint8 ``data`` of an
  ``Fp8KVPool`` with that many records per page (the real implementation rebuilds the pool object,
  so backends see exactly the arguments they saw before).
- ``backend`` is a ``str?`` argument; the environment variable ``LONGATTN_BACKEND`` is read inside the
  real implementation, at run time.
- ``compress_kv`` mutates ``state`` and ``out``, ``append_kv`` mutates ``pool`` (``Tensor(a!)`` in the
  schema, i.e. ``mutates_args``); every other op returns new tensors.

Registration: ``torch.library.Library.define`` with these schema strings, the real implementation as a
``CompositeExplicitAutograd`` kernel (every device) and ``torch.library.register_fake``. This is what
``torch.library.custom_op`` does underneath, minus its Python autograd and ADInplaceOrView wrappers:
measured on CPU (backend stubbed out), routing a public op through its custom op costs ~3-5 us per
call this way, against ~10-15 us through ``custom_op``'s extra Python layers; a decode step of one
layer makes 2 (SWA) to 5 (CSA) op calls.

Autograd: no backward is registered. When grad mode is on and an input requires grad, the interfaces
call the backend directly instead (``use_custom_op``), so autograd keeps flowing through the reference
backend's PyTorch ops as before. Pool objects other than tensors and ``Fp8KVPool`` (duck-typed pools)
also take the direct path: they cannot cross a schema.
"""

from typing import Tuple

import torch
from torch import Tensor

from ..backends import registry
from ..cache.fp8 import Fp8KVPool

NS = "longattn"

SCHEMAS = {
    "sparse_attention": (
        "sparse_attention(Tensor q, Tensor kv, int kv_page_size, Tensor indices, Tensor? topk_length, "
        "Tensor? extra_kv, int extra_page_size, Tensor? extra_indices, Tensor? extra_topk_length, "
        "Tensor? attn_sink, float softmax_scale, str? backend) -> (Tensor, Tensor)"
    ),
    "merge_attention_states": (
        "merge_attention_states(Tensor out_a, Tensor lse_a, Tensor out_b, Tensor lse_b, str? backend) "
        "-> (Tensor, Tensor)"
    ),
    "apply_attention_sink": "apply_attention_sink(Tensor out, Tensor lse, Tensor attn_sink, str? backend) -> Tensor",
    "indexer_logits": (
        "indexer_logits(Tensor q, Tensor weights, Tensor index_k, Tensor visible_end, Tensor? block_table, "
        "Tensor? seq_ids, str? backend) -> Tensor"
    ),
    "indexer_topk": (
        "indexer_topk(Tensor q, Tensor weights, Tensor index_k, Tensor visible_end, int topk, Tensor? block_table, "
        "Tensor? seq_ids, bool return_slots, str? backend) -> (Tensor, Tensor)"
    ),
    "compress_pool": "compress_pool(Tensor a, Tensor b, int ratio, bool overlap, str? backend) -> Tensor",
    "compress_kv": (
        "compress_kv(Tensor a, Tensor b, Tensor positions, Tensor token_rows, int ratio, bool overlap, "
        "Tensor(a!) state, Tensor state_block_table, Tensor(b!) out, int out_page_size, Tensor out_block_table, "
        "Tensor norm_weight, float eps, Tensor rope_inv_freq, str? backend) -> ()"
    ),
    "append_kv": "append_kv(Tensor(a!) pool, int page_size, Tensor rows, Tensor slot_mapping, str? backend) -> ()",
}

_lib = torch.library.Library(NS, "FRAGMENT")  # kept alive for the process (holds the registrations)


# --- helpers used by the interfaces ------------------------------------------------------------------


def use_custom_op(*tensors) -> bool:
    """Whether a call can go through its custom op: not when autograd has to see the backend's ops
    (grad mode on and some input tensor requires grad)."""
    if not torch.is_grad_enabled():
        return True
    for t in tensors:
        if isinstance(t, Tensor) and t.requires_grad:
            return False
    return True


def is_schema_pool(pool) -> bool:
    """A pool the schema can carry: a tensor, or an ``Fp8KVPool`` (as ``data`` + ``page_size``)."""
    return isinstance(pool, (Tensor, Fp8KVPool))


def pool_to_schema(pool) -> Tuple[Tensor, int]:
    if isinstance(pool, Fp8KVPool):
        return pool.data, pool.page_size
    return pool, 0


def _pool(data: Tensor, page_size: int):
    return data if page_size == 0 else Fp8KVPool(data, page_size)


def _register(name: str, real, fake):
    _lib.define(SCHEMAS[name])
    _lib.impl(name, real, "CompositeExplicitAutograd")
    torch.library.register_fake(f"{NS}::{name}", fake, lib=_lib)
    return getattr(getattr(torch.ops, NS), name).default


# --- real implementations (run the selected backend) and fakes (allocate outputs only) -------------------


def _sparse_attention(q, kv, kv_page_size, indices, topk_length, extra_kv, extra_page_size, extra_indices,
                      extra_topk_length, attn_sink, softmax_scale, backend):  # fmt: skip
    args = dict(
        q=q,
        kv=_pool(kv, kv_page_size),
        indices=indices,
        topk_length=topk_length,
        extra_kv=None if extra_kv is None else _pool(extra_kv, extra_page_size),
        extra_indices=extra_indices,
        extra_topk_length=extra_topk_length,
        attn_sink=attn_sink,
        softmax_scale=softmax_scale,
    )
    return registry.select("sparse_attention", q.device, args, backend)(**args)


def _sparse_attention_fake(q, *args):
    T, H, _ = q.shape
    return torch.empty_like(q), q.new_empty((T, H), dtype=torch.float32)


def _merge_attention_states(out_a, lse_a, out_b, lse_b, backend):
    args = dict(out_a=out_a, lse_a=lse_a, out_b=out_b, lse_b=lse_b)
    return registry.select("merge_attention_states", out_a.device, args, backend)(**args)


def _merge_attention_states_fake(out_a, lse_a, out_b, lse_b, backend):
    return torch.empty_like(out_a), lse_a.new_empty(lse_a.shape, dtype=torch.float32)


def _apply_attention_sink(out, lse, attn_sink, backend):
    args = dict(out=out, lse=lse, attn_sink=attn_sink)
    return registry.select("apply_attention_sink", out.device, args, backend)(**args)


def _apply_attention_sink_fake(out, lse, attn_sink, backend):
    return torch.empty_like(out)


def _indexer_logits(q, weights, index_k, visible_end, block_table, seq_ids, backend):
    args = dict(
        q=q, weights=weights, index_k=index_k, visible_end=visible_end, block_table=block_table, seq_ids=seq_ids
    )
    return registry.select("indexer_logits", q.device, args, backend)(**args)


def _indexer_logits_fake(q, weights, index_k, visible_end, block_table, seq_ids, backend):
    n = index_k.shape[0] if block_table is None else block_table.shape[1] * index_k.shape[1]
    return q.new_empty((q.shape[0], n), dtype=torch.float32)


def _indexer_topk(q, weights, index_k, visible_end, topk, block_table, seq_ids, return_slots, backend):
    args = dict(
        q=q,
        weights=weights,
        index_k=index_k,
        visible_end=visible_end,
        topk=topk,
        block_table=block_table,
        seq_ids=seq_ids,
        return_slots=return_slots,
    )
    return registry.select("indexer_topk", q.device, args, backend)(**args)


def _indexer_topk_fake(q, weights, index_k, visible_end, topk, block_table, seq_ids, return_slots, backend):
    T = q.shape[0]
    return q.new_empty((T, topk), dtype=torch.int32), q.new_empty((T,), dtype=torch.int32)


def _compress_pool(a, b, ratio, overlap, backend):
    args = dict(a=a, b=b, ratio=ratio, overlap=overlap)
    return registry.select("compress_pool", a.device, args, backend)(**args)


def _compress_pool_fake(a, b, ratio, overlap, backend):
    S, width = a.shape
    return a.new_empty((S // ratio, width // 2 if overlap else width), dtype=torch.float32)


def _compress_kv(a, b, positions, token_rows, ratio, overlap, state, state_block_table, out, out_page_size,
                 out_block_table, norm_weight, eps, rope_inv_freq, backend):  # fmt: skip
    args = dict(
        a=a,
        b=b,
        positions=positions,
        token_rows=token_rows,
        ratio=ratio,
        overlap=overlap,
        state=state,
        state_block_table=state_block_table,
        out=_pool(out, out_page_size),
        out_block_table=out_block_table,
        norm_weight=norm_weight,
        eps=eps,
        rope_inv_freq=rope_inv_freq,
    )
    registry.select("compress_kv", a.device, args, backend)(**args)


def _append_kv(pool, page_size, rows, slot_mapping, backend):
    args = dict(pool=_pool(pool, page_size), rows=rows, slot_mapping=slot_mapping)
    registry.select("append_kv", rows.device, args, backend)(**args)


def _returns_nothing(*args):
    return None


sparse_attention = _register("sparse_attention", _sparse_attention, _sparse_attention_fake)
merge_attention_states = _register("merge_attention_states", _merge_attention_states, _merge_attention_states_fake)
apply_attention_sink = _register("apply_attention_sink", _apply_attention_sink, _apply_attention_sink_fake)
indexer_logits = _register("indexer_logits", _indexer_logits, _indexer_logits_fake)
indexer_topk = _register("indexer_topk", _indexer_topk, _indexer_topk_fake)
compress_pool = _register("compress_pool", _compress_pool, _compress_pool_fake)
compress_kv = _register("compress_kv", _compress_kv, _returns_nothing)
append_kv = _register("append_kv", _append_kv, _returns_nothing)

OPS = {
    "sparse_attention": sparse_attention,
    "merge_attention_states": merge_attention_states,
    "apply_attention_sink": apply_attention_sink,
    "indexer_logits": indexer_logits,
    "indexer_topk": indexer_topk,
    "compress_pool": compress_pool,
    "compress_kv": compress_kv,
    "append_kv": append_kv,
}
