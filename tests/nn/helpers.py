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


def tiny_config(**overrides):
    """A tiny random-size transformers DeepSeek-V4 config (3 layers: SWA, CSA, HCA; eager attention)."""
    kw = dict(
        vocab_size=128, hidden_size=64, num_hidden_layers=3, num_attention_heads=4, head_dim=32,
        partial_rotary_factor=0.25, q_lora_rank=32, o_groups=2, o_lora_rank=16,
        index_n_heads=8, index_head_dim=16, index_topk=4, sliding_window=16,
        layer_types=["sliding_attention", "compressed_sparse_attention", "heavily_compressed_attention"],
        compress_rates={"compressed_sparse_attention": 4, "heavily_compressed_attention": 128},
        rope_parameters={"rope_type": "yarn", "factor": 16.0, "original_max_position_embeddings": 65536,
                         "beta_fast": 32, "beta_slow": 1},
        n_routed_experts=4, num_experts_per_tok=2, moe_intermediate_size=32, hc_mult=2,
        eos_token_id=None, pad_token_id=0,
    )  # fmt: skip
    kw.update(overrides)
    from transformers import DeepseekV4Config

    cfg = DeepseekV4Config(**kw)
    cfg._attn_implementation = "eager"
    return cfg


def randomize_attention(module, g):
    """O(1) activations everywhere (the default init of 0.02 would make attention nearly uniform)."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=g))
            elif p.dim() == 2:
                p.copy_(torch.randn(p.shape, generator=g) / p.shape[1] ** 0.5)
            else:  # sinks, position biases
                p.copy_(torch.randn(p.shape, generator=g))
