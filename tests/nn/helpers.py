"""A tiny DeepSeek-V4 config and randomly initialised attention layers (shared by tests/nn modules)."""

import torch
from longattn.configs import ModelConfig
from longattn.nn import DeepseekV4Attention

TINY = ModelConfig(
    name="tiny", dim=32, n_layers=3, n_heads=4, q_lora_rank=16, o_groups=2, o_lora_rank=8, index_topk=3,
    compress_ratios=(0, 4, 8, 0), head_dim=32, rope_dim=8, window=8, index_n_heads=8, index_head_dim=16,
)  # fmt: skip


def tiny_layer(idx, seed=0):
    m = DeepseekV4Attention(TINY, idx).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return m
