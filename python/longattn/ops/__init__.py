"""One folder per op (see ``op.py`` here for the path every call takes):

- ``op.py``: the public function, its prepared ``Inputs`` (built by one ``prepare()`` that validates
  and normalises), its ``torch.library`` schema with real and fake implementations;
- ``support.py``: what each backend implements and why it declines a call (imports no kernels);
- ``reference.py``: the pure-PyTorch ground truth; ``triton_*.py``: Triton kernels; ``ascend.py``:
  the Ascend C kernel's limits and arguments (ascend_c/<op>);
- ``README.md``: the math, the special values, the kernels' design.
"""

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
