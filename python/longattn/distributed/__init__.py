"""Context parallelism over ``torch.distributed`` (gloo on CPU, NCCL on GPU, HCCL on NPU).

Decode: the compressed KV and index keys sharded page by page over the ranks (``PageShards``); the
indexer's top-k merged exactly across ranks (``cp_indexer_topk``); attention partials merged with the
sink applied once (``cp_sparse_attention``). Prefill: one sequence's query tokens dealt over the ranks
with causal load balancing (``TokenShards``), halos and compressed entries exchanged
(``left_halo``, ``gather_entries``); ``longattn.nn.DeepseekV4Attention.forward_cp`` is the layer.
See README.md in this folder.
"""

from ..cache.shards import PageShards
from .decode import CPError, cp_indexer_topk, cp_sparse_attention, decode_comm_bytes
from .prefill import TokenShards, gather_entries, left_halo, prefill_comm_bytes

__all__ = [
    "CPError",
    "PageShards",
    "TokenShards",
    "cp_indexer_topk",
    "cp_sparse_attention",
    "decode_comm_bytes",
    "gather_entries",
    "left_halo",
    "prefill_comm_bytes",
]
