"""longattn: kernels for long-context hybrid sparse attention (DeepSeek-V4 style).

Ops (each dispatches to a backend; see ``longattn.info()``):
    sparse_attention, merge_attention_states, apply_attention_sink,
    indexer_logits, indexer_topk, compress_pool

``import longattn`` compiles nothing and imports only torch.
"""

from . import configs, debug, memory
from ._info import info
from .backends import BackendError
from .ops import (
    apply_attention_sink,
    compress_pool,
    indexer_logits,
    indexer_topk,
    merge_attention_states,
    sparse_attention,
)

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "sparse_attention",
    "merge_attention_states",
    "apply_attention_sink",
    "indexer_logits",
    "indexer_topk",
    "compress_pool",
    "BackendError",
    "info",
    "configs",
    "debug",
    "memory",
]
