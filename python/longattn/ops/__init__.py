"""One folder per op: ``interface.py`` (public function: checks + dispatch), ``reference.py`` (the
pure-PyTorch ground truth), kernels of other backends, and a README with the math."""

from .append import append_kv
from .combine import apply_attention_sink, merge_attention_states
from .compress import compress_kv, compress_pool
from .indexer import indexer_logits, indexer_topk
from .sparse_attention import sparse_attention

__all__ = [
    "sparse_attention",
    "merge_attention_states",
    "apply_attention_sink",
    "indexer_logits",
    "indexer_topk",
    "compress_pool",
    "compress_kv",
    "append_kv",
]
