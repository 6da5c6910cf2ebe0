"""Training cost of sparse attention: forward + backward of ``sparse_attention`` against the dense masked
formulation of the same function, at 8K-128K tokens of context on the CPU; and models of the Triton
backward on an H200 (labelled as models: its GPU timings are bench/triton_grid.py's backward section).

    python -m bench.backward [--contexts 8192 32768 131072] [--tokens 64] [--heads 16] [--json PATH]

Case (a CSA layer's prefill chunk): ``--tokens`` query tokens at the end of a ``context``-token
sequence, each attending to its 128-token window and the top-``--topk`` of ``context / 4`` compressed
entries (random ids here: the cost does not depend on which), a sink, D = 512. Gradients for q, the
window rows, the compressed entries and the sink.

- sparse: ``longattn.sparse_attention`` (reference backend) + its backward (PyTorch, chunked, the
  probabilities recomputed from the saved lse).
- dense masked: the same attention written densely: the query against every window row and every
  compressed entry (``T x (context + context / 4)`` logits per head, a boolean mask selecting the
  same keys, a sink column), PyTorch autograd. What a framework without a sparse kernel does.

Reported per context: median seconds of forward + backward, the peak of torch-allocated CPU memory of
one forward + backward (allocator events), and the ratio dense / sparse of each.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from typing import Dict, List

import longattn
import torch

from .timing import cpu_alloc_peak_call

WINDOW, RATIO, D = 128, 4, 512


def build(context: int, tokens: int, heads: int, topk: int, seed: int = 0) -> Dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    n = context // RATIO
    pos = torch.arange(context - tokens, context)
    window = (pos.unsqueeze(1) - WINDOW + 1 + torch.arange(WINDOW)).to(torch.int32)
    topk_ids = torch.stack([torch.randperm(int(p + 1) // RATIO, generator=g)[:topk] for p in pos]).to(torch.int32)
    return dict(
        q=torch.randn(tokens, heads, D, generator=g),
        kv=torch.randn(context, D, generator=g),
        entries=torch.randn(n, D, generator=g),
        window=window,
        ids=topk_ids,
        sink=torch.randn(heads, generator=g),
        g_out=torch.randn(tokens, heads, D, generator=g),
    )


def sparse_step(c: Dict[str, torch.Tensor]):
    q, kv, ent, sink = (c[k].detach().requires_grad_() for k in ("q", "kv", "entries", "sink"))
    out, _ = longattn.sparse_attention(q, kv, c["window"], extra_kv=ent, extra_indices=c["ids"], attn_sink=sink)
    (out * c["g_out"]).sum().backward()
    return q.grad, kv.grad, ent.grad, sink.grad


def dense_step(c: Dict[str, torch.Tensor]):
    q, kv, ent, sink = (c[k].detach().requires_grad_() for k in ("q", "kv", "entries", "sink"))
    T, H, _ = q.shape
    keys = torch.cat([kv, ent])  # [context + n, D]
    mask = torch.zeros(T, keys.shape[0], dtype=torch.bool)
    mask.scatter_(1, c["window"].long(), True)
    mask.scatter_(1, kv.shape[0] + c["ids"].long(), True)
    logits = torch.einsum("thd,nd->thn", q, keys) * D**-0.5
    logits = logits.masked_fill(~mask.unsqueeze(1), float("-inf"))
    full = torch.cat([logits, sink.view(1, H, 1).expand(T, H, 1)], dim=-1)
    p = torch.softmax(full, dim=-1)[..., :-1]
    out = torch.einsum("thn,nd->thd", p, keys)
    (out * c["g_out"]).sum().backward()
    return q.grad, kv.grad, ent.grad, sink.grad


def measure(fn, case, repeats: int) -> Dict[str, float]:
    fn(case)  # warm-up
    times: List[float] = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn(case)
        times.append(time.perf_counter() - t0)
    _, peak = cpu_alloc_peak_call(lambda: fn(case))
    return {"seconds": statistics.median(times), "peak_bytes": peak if peak is not None else -1}


def model_h200(tokens: int, heads: int, topk: int) -> Dict[str, float]:
    """Spec-sheet bound of the Triton backward at V4 shapes on an H200 (bf16 inputs, its sm_90 tiles:
    64 heads x 16 keys x 64 dims; triton_backward.py): every key row tile read twice per head block
    (s / dp, then dq / row gradient), q and dout tiles once per key block, fp32 atomics into the rows;
    ``s`` and ``dp`` on tensor cores (989 TFLOP/s dense bf16), ``dq`` and the rows' two products fp32
    FMA (67 TFLOP/s); 4.8 TB/s HBM. A model, not a measurement; the compiled code's own model
    (``bench/sm90_model.backward_model``, from the kernel's SASS loops) is beside it in the JSON."""
    K = WINDOW + topk
    block_h = min(heads, 64)
    blocks_h = -(-heads // block_h)
    bytes_ = tokens * blocks_h * K * D * (2 * 2 + 4) + tokens * blocks_h * (K // 16) * block_h * D * 2 * 2
    tc_flops = tokens * heads * K * D * 2 * 2  # s, dp
    fma_flops = tokens * heads * K * D * 2 * 3  # dq, ds^T q, p^T dout
    t_bytes, t_flops = bytes_ / 4.8e12, tc_flops / 989e12 + fma_flops / 67e12
    return {"bytes": bytes_, "flops": tc_flops + fma_flops, "seconds": max(t_bytes, t_flops),
            "bound": "memory" if t_bytes > t_flops else "compute (fp32 FMA for 3 of the 5 products)"}  # fmt: skip


def compiled_model() -> Dict[str, object]:
    """The stored sm_90a estimates of the backward from its compiled code (bench/results/sm90-model-*.json,
    ``python -m bench.sm90_model``), seconds per case; a model, never a measurement."""
    from . import sm90_model

    model = sm90_model.load()
    est = (model or {}).get("estimates", {})
    cases = {name: {"seconds": [est[name]["optimistic_us"] * 1e-6, est[name]["pessimistic_us"] * 1e-6],
                    "issue_only_seconds": est[name]["issue_only_us"] * 1e-6, "bound": est[name]["bound"],
                    "tile": est[name]["tile"]}
             for name in est if sm90_model.backward_shape(name) is not None}  # fmt: skip
    if not cases:
        return {"status": "no backward estimates stored (python -m bench.sm90_model --probe ...)"}
    return {"source": model["path"], "commit": model.get("commit"), "triton": model.get("triton"), "cases": cases}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--contexts", type=int, nargs="+", default=[8192, 32768, 131072])
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--heads", type=int, default=16)
    ap.add_argument("--topk", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)
    rows = []
    for ctx in a.contexts:
        case = build(ctx, a.tokens, a.heads, a.topk)
        grads_s, grads_d = sparse_step(case), dense_step(case)
        err = max(float((x - y).abs().max()) for x, y in zip(grads_s, grads_d))
        s, d = measure(sparse_step, case, a.repeats), measure(dense_step, case, a.repeats)
        row = {"context": ctx, "sparse": s, "dense_masked": d, "max_abs_grad_diff": err,
               "time_ratio_dense_over_sparse": d["seconds"] / s["seconds"],
               "memory_ratio_dense_over_sparse": d["peak_bytes"] / max(1, s["peak_bytes"])}  # fmt: skip
        rows.append(row)
        mib = 2**20
        print(f"context {ctx}: sparse {s['seconds'] * 1e3:.1f} ms / {s['peak_bytes'] / mib:.0f} MiB, dense masked "
              f"{d['seconds'] * 1e3:.1f} ms / {d['peak_bytes'] / mib:.0f} MiB (max |grad diff| {err:.1e})")  # fmt: skip
    result = {
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
        },  # fmt: skip
        "case": {
            "tokens": a.tokens,
            "heads": a.heads,
            "head_dim": D,
            "window": WINDOW,
            "topk": a.topk,
            "ratio": RATIO,
        },  # fmt: skip
        "cpu": rows,
        "model_h200_triton_backward": {
            "note": "a model, not a measurement: spec-sheet ceilings of the kernel's traffic and FLOPs, and the "
            "offline sm_90a compile's loops (compiled_sm90)",
            "v4_flash_prefill_chunk": model_h200(4096, 64, 512),
            "v4_pro_prefill_chunk": model_h200(2048, 128, 1024),
            "compiled_sm90": compiled_model(),
        },
    }
    if a.json:
        with open(a.json, "w") as f:
            json.dump(result, f, indent=2)
    print(json.dumps(result["model_h200_triton_backward"], indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
