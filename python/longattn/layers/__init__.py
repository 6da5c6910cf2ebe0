from .hybrid_attention import HybridAttention

__all__ = ["HybridAttention"]
