"""Paged KV caches: page allocation and step plans (``CacheManager``), the FP8 KV and indexer-key pool formats."""

from .allocator import PageAllocator
from .errors import CacheError, CacheFullError, StalePlanError, UnknownSequenceError
from .fp8 import Fp8KVPool, dequantize_kv_fp8, quantize_kv_fp8
from .fp8_index import Fp8IndexKeyPool, dequantize_index_k_fp8, quantize_index_k_fp8
from .manager import CacheManager, CompressedPlan, StepPlan, ring_capacity
from .shards import PageShards

__all__ = [
    "CacheManager",
    "StepPlan",
    "CompressedPlan",
    "PageAllocator",
    "CacheError",
    "CacheFullError",
    "StalePlanError",
    "UnknownSequenceError",
    "Fp8KVPool",
    "quantize_kv_fp8",
    "dequantize_kv_fp8",
    "Fp8IndexKeyPool",
    "quantize_index_k_fp8",
    "dequantize_index_k_fp8",
    "ring_capacity",
    "PageShards",
]
