"""longattn: kernels for long-context hybrid sparse attention (DeepSeek-V4 style).

Ops (each dispatches to a backend; see ``longattn.info()``):
    sparse_attention, merge_attention_states, apply_attention_sink,
    indexer_logits, indexer_topk, compress_pool, compress_kv, append_kv
Layer: HybridAttention over paged caches (CacheManager plans a step once for all layers).

``import longattn`` compiles nothing and imports only torch.
"""

from . import cache, configs, debug, memory, rope
from ._info import info
from .backends import BackendError
from .cache import (
    CacheManager,
    Fp8IndexKeyPool,
    Fp8KVPool,
    dequantize_index_k_fp8,
    dequantize_kv_fp8,
    quantize_index_k_fp8,
    quantize_kv_fp8,
)
from .layers import HybridAttention
from .ops.append import append_kv
from .ops.combine import apply_attention_sink, merge_attention_states
from .ops.compress import compress_kv, compress_pool
from .ops.indexer import indexer_kl_loss, indexer_logits, indexer_topk
from .ops.sparse_attention import sparse_attention

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "sparse_attention",
    "merge_attention_states",
    "apply_attention_sink",
    "indexer_logits",
    "indexer_topk",
    "indexer_kl_loss",
    "compress_pool",
    "compress_kv",
    "append_kv",
    "quantize_kv_fp8",
    "dequantize_kv_fp8",
    "Fp8KVPool",
    "quantize_index_k_fp8",
    "dequantize_index_k_fp8",
    "Fp8IndexKeyPool",
    "CacheManager",
    "HybridAttention",
    "BackendError",
    "info",
    "configs",
    "debug",
    "memory",
    "cache",
    "rope",
]
