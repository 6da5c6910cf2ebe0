"""The public surface is a contract (api.md): names are frozen here; extend deliberately."""

import longattn

EXPECTED = {
    "__version__",
    "sparse_attention",
    "merge_attention_states",
    "apply_attention_sink",
    "indexer_logits",
    "indexer_topk",
    "compress_pool",
    "BackendError",
    "info",
    "configs",
    "debug",
    "memory",
}


def test_all_is_frozen():
    assert set(longattn.__all__) == EXPECTED
    for name in EXPECTED:
        assert hasattr(longattn, name), name
