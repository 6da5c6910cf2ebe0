from .hybrid_attention import HybridAttention
from .warmup import WarmupReport, warmup_layers

__all__ = ["HybridAttention", "WarmupReport", "warmup_layers"]
