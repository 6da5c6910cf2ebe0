"""One DeepSeek-V4 attention layer's prefill on the CPU: ``longattn.nn.DeepseekV4Attention`` (reference
backend) against transformers' eager ``DeepseekV4Attention`` with the same weights and inputs, at
V4-Flash sizes (hidden 4096, 64 heads of 512, q_lora 1024, 8 x 1024 output groups, indexer 64 x 128
top-512, window 128), fp32, one sequence.

    python -m bench.layer_vs_transformers [--tokens 1024 4096] [--kinds csa hca] [--out FILE.json]

Reports per (kind, tokens): both medians, speed-up = transformers / longattn, time per token, and the
max |difference| of the outputs (a sanity check: tests/nn/test_transformers_parity.py is the real
numerical comparison). Needs transformers >= 5.9 with DeepSeek-V4.
"""

from __future__ import annotations

import argparse
import inspect
import json
import platform
import time

import torch

from bench.timing import CacheFlusher, TimingPolicy, time_fn

KIND_INDEX = {"swa": 0, "csa": 1, "hca": 2}


def v4_flash_config():
    from transformers import DeepseekV4Config

    cfg = DeepseekV4Config(
        vocab_size=128, hidden_size=4096, num_hidden_layers=3, num_attention_heads=64, head_dim=512,
        partial_rotary_factor=64 / 512, q_lora_rank=1024, o_groups=8, o_lora_rank=1024,
        index_n_heads=64, index_head_dim=128, index_topk=512, sliding_window=128,
        layer_types=["sliding_attention", "compressed_sparse_attention", "heavily_compressed_attention"],
        compress_rates={"compressed_sparse_attention": 4, "heavily_compressed_attention": 128},
        rope_parameters={"rope_type": "yarn", "factor": 16.0, "original_max_position_embeddings": 65536,
                         "beta_fast": 32, "beta_slow": 1},
        n_routed_experts=4, num_experts_per_tok=2, moe_intermediate_size=32, hc_mult=2,
        eos_token_id=None, pad_token_id=0,
    )  # fmt: skip
    cfg._attn_implementation = "eager"
    return cfg


def build(kind: str, seed: int = 0):
    """(transformers' layer forward on x [1, S, dim], ours on x, dim)."""
    from longattn.nn import DeepseekV4Attention
    from transformers.masking_utils import create_sliding_window_causal_mask
    from transformers.models.deepseek_v4 import modeling_deepseek_v4 as hf

    cfg = v4_flash_config()
    idx = KIND_INDEX[kind]
    torch.manual_seed(seed)
    theirs = hf.DeepseekV4Attention(cfg, idx).eval()
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():  # O(1) activations (tests/nn/helpers.randomize_attention)
        for name, p in theirs.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=g))
            elif p.dim() == 2:
                p.copy_(torch.randn(p.shape, generator=g) / p.shape[1] ** 0.5)
            else:
                p.copy_(torch.randn(p.shape, generator=g))
    ours = DeepseekV4Attention(cfg, idx).eval()
    ours.load_state_dict(theirs.state_dict(), strict=True)
    rotary = hf.DeepseekV4RotaryEmbedding(cfg)

    def run_theirs(x):
        S = x.shape[1]
        pid = torch.arange(S).unsqueeze(0)
        pe = {"main": rotary(x, pid, "main"), "compress": rotary(x, pid, "compress")}
        mask_kw = (
            "cache"
            if "cache" in inspect.signature(create_sliding_window_causal_mask).parameters
            else ("past_key_values")
        )
        mask = create_sliding_window_causal_mask(
            config=cfg, inputs_embeds=x, attention_mask=None, position_ids=pid, **{mask_kw: None}
        )
        cache_kw = "cache" if "cache" in inspect.signature(theirs.forward).parameters else "past_key_values"
        return theirs(x, pe, pid, mask, **{cache_kw: None})[0]

    def run_ours(x):
        return ours(x)[0]

    return run_theirs, run_ours, cfg.hidden_size


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tokens", type=int, nargs="+", default=[1024, 4096])
    p.add_argument("--kinds", nargs="+", default=["csa", "hca"], choices=sorted(KIND_INDEX))
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument(
        "--theirs-max",
        type=int,
        default=4096,
        help="time transformers only up to this many tokens (its dense masks grow as S^2)",
    )
    p.add_argument("--out", default=None)
    a = p.parse_args(argv)
    policy = TimingPolicy(
        warmup=1, min_repeats=a.repeats, max_repeats=a.repeats, min_time_s=0.0, max_time_s=120.0, long_call_s=120.0
    )
    flusher = CacheFlusher(torch.device("cpu"))
    rows = []
    for kind in a.kinds:
        run_theirs, run_ours, dim = build(kind)
        for S in a.tokens:
            x = torch.randn(1, S, dim, generator=torch.Generator().manual_seed(S))
            with torch.no_grad():
                t_ours = time_fn(lambda f=run_ours, x=x: f(x), torch.device("cpu"), policy, flusher)["median_s"]
                row = dict(kind=kind, tokens=S, longattn_s=t_ours, longattn_us_per_token=t_ours / S * 1e6)
                line = (
                    f"{kind} S={S:6d}: longattn {t_ours * 1e3:9.1f} ms ({row['longattn_us_per_token']:7.1f} us/token)"
                )
                if S <= a.theirs_max:
                    diff = (run_ours(x) - run_theirs(x)).abs().max().item()
                    t_theirs = time_fn(lambda f=run_theirs, x=x: f(x), torch.device("cpu"), policy, flusher)["median_s"]
                    row.update(transformers_s=t_theirs, speedup=t_theirs / t_ours, max_abs_diff=diff)
                    line += (
                        f"  transformers {t_theirs * 1e3:9.1f} ms  speed-up {row['speedup']:.2f}x  max|diff| {diff:.2e}"
                    )
            rows.append(row)
            print(line, flush=True)
    if a.out:
        machine = platform.processor() or platform.machine()
        doc = dict(what=__doc__.splitlines()[0], threads=torch.get_num_threads(), torch=torch.__version__,
                   machine=machine, date=time.strftime("%Y-%m-%d"), rows=rows)  # fmt: skip
        with open(a.out, "w") as f:
            json.dump(doc, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
