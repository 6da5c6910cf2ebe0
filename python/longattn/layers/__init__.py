from .hybrid_attention import HybridAttention
from .warmup import WarmupReport

__all__ = ["HybridAttention", "WarmupReport"]
