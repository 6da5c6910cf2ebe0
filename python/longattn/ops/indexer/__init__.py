from .op import indexer_logits, indexer_topk
from .training import indexer_kl_loss

__all__ = ["indexer_logits", "indexer_topk", "indexer_kl_loss"]
