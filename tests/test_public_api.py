"""The public surface is a contract (docs/api.md): names are frozen here; extend deliberately."""

import longattn

EXPECTED = {
    "__version__",
    "sparse_attention",
    "merge_attention_states",
    "apply_attention_sink",
    "indexer_logits",
    "indexer_topk",
    "indexer_kl_loss",
    "compress_pool",
    "compress_kv",
    "append_kv",
    "quantize_kv_fp8",
    "dequantize_kv_fp8",
    "Fp8KVPool",
    "quantize_index_k_fp8",
    "dequantize_index_k_fp8",
    "Fp8IndexKeyPool",
    "CacheManager",
    "HybridAttention",
    "BackendError",
    "info",
    "configs",
    "debug",
    "memory",
    "cache",
    "rope",
}


def test_all_is_frozen():
    assert set(longattn.__all__) == EXPECTED
    for name in EXPECTED:
        assert hasattr(longattn, name), name
