"""The reference backend: pure PyTorch, fp32 accumulation, any device torch runs on.

It is the ground truth every other backend is tested against, and it scales: vectorised, and
chunked under ``longattn.memory``'s budget (see each op's ``reference.py``).
"""

from __future__ import annotations

from ..ops.append import reference as append
from ..ops.combine import reference as combine
from ..ops.compress import reference as compress
from ..ops.indexer import reference as indexer
from ..ops.sparse_attention import reference as sparse_attention
from .base import Backend, OpImpl

BACKEND = Backend(
    name="reference",
    description="pure PyTorch, fp32 accumulation, chunked (ground truth; any device)",
    device_types=None,
    ops={
        "sparse_attention": OpImpl(sparse_attention.sparse_attention),
        "merge_attention_states": OpImpl(combine.merge_attention_states),
        "apply_attention_sink": OpImpl(combine.apply_attention_sink),
        "indexer_logits": OpImpl(indexer.indexer_logits),
        "indexer_topk": OpImpl(indexer.indexer_topk),
        "compress_pool": OpImpl(compress.compress_pool),
        "compress_kv": OpImpl(compress.compress_kv),
        "append_kv": OpImpl(append.append_kv),
    },
)
