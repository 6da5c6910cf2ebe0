from .op import indexer_logits, indexer_topk

__all__ = ["indexer_logits", "indexer_topk"]
