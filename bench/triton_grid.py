"""A small GPU benchmark grid of the Triton backend (and the reference on the same device).

    python bench/triton_grid.py --out results.json [--quick] [--no-sweep] [--budget-s S] [--graph-budget-s S]
    python bench/triton_grid.py --only decode-graph,split-sweep,layer-graph   # some sections only
    python bench/triton_grid.py --smoke --out grid.json   # CPU, TRITON_INTERPRET=1: tiny shapes, checks the plumbing

Cases (DeepSeek-V4 shapes, bf16, D = 512):
- sparse decode CSA: H = 128, 128 window keys + 1,024 compressed keys per token (T = 1, 64);
- sparse decode HCA: H = 128, 128 + 8,192 keys (T = 1, 16), and at T = 1 the 8,192 entries read in order
  from a contiguous pool vs from 64-slot pages scattered over the pool (paged within 10% is the goal);
- sparse decode CSA with an FP8 compressed pool (T = 64);
- sparse prefill: V4-Flash (H = 64, 128 + 512 keys, T = 4,096) and V4-Pro (H = 128, 128 + 1,024, T = 2,048);
- indexer top-512 decode over 262,144 entries (64 heads x 128 dims, T = 1, 8), contiguous keys and, at
  T = 1, the same keys in 64-entry pages scattered over the pool (block table);
- cache writes: append_kv (bf16 pool T = 64; FP8 pool T = 64, 8,192) and compress_kv (CSA decode of
  64 sequences, CSA / HCA prefill of 8,192 tokens; d = 512, bf16 inputs);
- compress_pool (stateless pooling) of a 65,536-token prefill, CSA and HCA, d = 512;
- backward: the sparse attention backward (Triton kernel, atomic row gradients; and the PyTorch
  backward on the same device) at the V4-Flash (H = 64, 128 + 512 keys, T = 4,096) and V4-Pro (H = 128,
  128 + 1,024, T = 2,048) prefill chunks, bf16, gradients checked against the PyTorch backward; the
  first case also at the tiles of ``sm90_model.BACKWARD_SWEEP_TILES`` (not with ``--no-sweep``).
Each is timed with ``triton.testing.do_bench`` (median ms) on backend="triton" and "reference", checked
against the reference (max abs error), and reported as ms, TFLOP/s and GB/s with fractions of the
ceilings measured in the same run (device-to-device copy bandwidth, bf16 matmul throughput). The
sparse kernel's tile configuration is also swept on four cases, last (``--no-sweep`` skips it).

Small-batch decode, where host-side launch cost dominates (sections with their own time budget,
``--graph-budget-s``, checked before each case; ``--budget-s`` bounds the whole grid the same way):
- decode-graph: sparse decode CSA / HCA at T = 1, 2, 4, 8, 16 and indexer decode at T = 1, 8: the eager
  op call, the bare launcher and a CUDA-graph replay of the op call (captured after warm-up calls on a
  side stream; one replay into poisoned outputs must equal the eager output bit for bit), side by side,
  host overhead = eager - graph;
- split-sweep: the same sparse decode cases at num_splits in {1, 2, 4, ..., 64, the heuristic's choice,
  one and two waves of programs}, clipped to the key blocks: each output checked against the reference,
  each timed from a CUDA graph of the launcher call; the fastest count beside the heuristic's, and the
  combine kernel's share of the device time (torch.profiler) at both;
- layer-graph: a whole HybridAttention decode step (V4-Pro's first CSA / HCA layer, 1M-token context,
  B = 1 and 8; ``prepare`` once, then ``run``) eagerly and from a CUDA graph, checked against the
  reference backend.
At the end, the offline sm_90a model's kernel-time estimates (bench/sm90_model.py) are attached to the
rows it covers (``model_us``, ``measured_over_model``), so a GPU run checks the model as well.
Without CUDA (--smoke) the graph and profiler columns say why they were skipped; no number stands in.

FLOPs (FlashMLA convention): attention 2 * T * H * keys * (D + D); indexer 2 * T * Hi * N * Di.
Bytes: attention = gathered rows (T * keys * D * 2, rows re-read by other tokens counted again) +
indices + q + out; indexer = T * N * Di * 2 (every key read once per token) + q, w, outputs; cache
writes = rows read + records / entries written + ring rows read (fp32) and written (cache writes
report 0 FLOP: they are memory-bound).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
import time
import traceback

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "python"))
sys.path.insert(0, ROOT)

import longattn  # noqa: E402
from longattn.ops.indexer.reference import pack_keys  # noqa: E402

from bench import sm90_model  # noqa: E402

SMOKE = False  # --smoke: tiny shapes on the CPU under TRITON_INTERPRET=1, one timed call each


def bench_ms(fn, quick=False):
    if SMOKE:
        fn()
        t0 = time.perf_counter()
        fn()
        return (time.perf_counter() - t0) * 1e3
    import triton.testing

    return float(
        triton.testing.do_bench(fn, warmup=10 if quick else 25, rep=30 if quick else 100, return_mode="median")
    )


def ceilings(device, quick=False):
    n = (1 if SMOKE else 256 if quick else 1024) << 20  # bytes
    src = torch.empty(n // 2, dtype=torch.bfloat16, device=device).normal_()
    dst = torch.empty_like(src)
    ms = bench_ms(lambda: dst.copy_(src), quick)
    copy_gbs = 2 * n / (ms * 1e-3) / 1e9
    m = 256 if SMOKE else 8192
    a = torch.randn(m, m, device=device, dtype=torch.bfloat16)
    b = torch.randn(m, m, device=device, dtype=torch.bfloat16)
    ms = bench_ms(lambda: a @ b, quick)
    mm_tflops = 2 * m**3 / (ms * 1e-3) / 1e12
    return {"copy_GBps": copy_gbs, "bf16_matmul_TFLOPs": mm_tflops}


def sparse_case(device, T, H, D, window, comp_keys, pool="bf16", layout="random", seed=0):
    """layout of the compressed keys: "random" (top-k picks: uniform slots), "contiguous" (every token
    reads slots 0 .. comp_keys-1 in order: HCA over a contiguous pool), "paged" (the same entries, held in
    64-slot pages scattered over the pool: HCA over a paged pool)."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    n_win, n_comp = 4 * window * max(T, 1), max(4 * comp_keys, 256 if SMOKE else 16384)
    q = torch.randn(T, H, D, generator=g).to(device, torch.bfloat16)
    kv = torch.randn(n_win, D, generator=g).to(device, torch.bfloat16)
    comp = torch.randn(n_comp, D, generator=g).to(device, torch.bfloat16)
    if pool == "fp8":
        from longattn.cache import quantize_kv_fp8

        page = 64
        comp = quantize_kv_fp8(comp[: n_comp // page * page].view(-1, page, D))
        n_comp = comp.num_slots
    win = torch.randint(0, n_win, (T, window), generator=g).int().to(device)
    if layout == "random":
        cidx = torch.randint(0, n_comp, (T, comp_keys), generator=g)
    else:
        cidx = torch.arange(comp_keys)
        if layout == "paged":
            page = 64
            pages = torch.randperm(n_comp // page, generator=g)[: -(-comp_keys // page)]
            cidx = pages.repeat_interleave(page)[:comp_keys] * page + cidx % page
        cidx = cidx.expand(T, comp_keys)
    cidx = cidx.int().contiguous().to(device)
    sink = torch.randn(H, generator=g).to(device)
    args = dict(q=q, kv=kv, indices=win, extra_kv=comp, extra_indices=cidx, attn_sink=sink)
    keys = window + comp_keys
    row_bytes = D * 2 if pool == "bf16" else 584
    flops = 2 * T * H * keys * (D + D)
    nbytes = T * (window * D * 2 + comp_keys * row_bytes) + T * keys * 4 + 2 * T * H * D * 2
    return args, flops, nbytes


def indexer_case(device, T, N, Hi=64, Di=128, topk=512, page=None, seed=0):
    """(positional args, keyword args), FLOPs, bytes. With ``page``: the same N keys in pages of ``page``
    entries scattered over a pool twice as large (block table, one sequence)."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    q = torch.randn(T, Hi, Di, generator=g).to(device, torch.bfloat16)
    w = torch.randn(T, Hi, generator=g).to(device)
    k = torch.randn(N, Di, generator=g)
    kw = {}
    if page:
        n_pages = N // page
        table = torch.randperm(2 * n_pages, generator=g)[:n_pages]
        pool = torch.zeros(2 * n_pages, page, Di)
        pool[table] = k.view(n_pages, page, Di)
        k = pool
        kw = dict(
            block_table=table.view(1, -1).int().to(device), seq_ids=torch.zeros(T, dtype=torch.int32, device=device)
        )
    k = k.to(device, torch.bfloat16)
    ve = torch.full((T,), N, dtype=torch.int32, device=device)
    flops = 2 * T * Hi * N * Di
    nbytes = T * N * Di * 2 + T * Hi * (Di * 2 + 4) + T * topk * 4
    return ((q, w, k, ve, topk), kw), flops, nbytes


def record(name, backend, ms, flops, nbytes, ceil, err=None, extra=None):
    r = {
        "case": name,
        "backend": backend,
        "ms": ms,
        "TFLOPs": flops / (ms * 1e-3) / 1e12,
        "GBps": nbytes / (ms * 1e-3) / 1e9,
        "flops": flops,
        "bytes": nbytes,
    }
    r["frac_bf16_peak"] = r["TFLOPs"] / ceil["bf16_matmul_TFLOPs"]
    r["frac_copy_bw"] = r["GBps"] / ceil["copy_GBps"]
    if err is not None:
        r["max_abs_err_vs_reference"] = err
    if extra:
        r.update(extra)
    print(
        f"  {name:44s} {backend:9s} {ms:9.4f} ms {r['TFLOPs']:8.2f} TFLOP/s ({100 * r['frac_bf16_peak']:5.1f}%) "
        f"{r['GBps']:8.1f} GB/s ({100 * r['frac_copy_bw']:5.1f}%)" + ("" if err is None else f"  err {err:.2e}"),
        flush=True,
    )
    return r


def run_sparse(name, args, flops, nbytes, ceil, quick, results):
    out_t, lse_t = longattn.sparse_attention(**args, backend="triton")
    out_r, lse_r = longattn.sparse_attention(**args, backend="reference")
    err = float((out_t.float() - out_r.float()).abs().max())
    lse_err = float((lse_t - lse_r).abs().max())
    ms = bench_ms(lambda: longattn.sparse_attention(**args, backend="triton"), quick)
    results.append(record(name, "triton", ms, flops, nbytes, ceil, err, {"lse_err": lse_err}))
    ms = bench_ms(lambda: longattn.sparse_attention(**args, backend="reference"), quick)
    results.append(record(name, "reference", ms, flops, nbytes, ceil))


def sweep_sparse(name, args, flops, nbytes, ceil, quick, results):
    from longattn.ops.sparse_attention import triton_sparse_attention as tsa

    canon = dict(
        q=args["q"],
        kv=args["kv"],
        indices=args["indices"],
        topk_length=None,
        extra_kv=args["extra_kv"],
        extra_indices=args["extra_indices"],
        extra_topk_length=None,
        attn_sink=args["attn_sink"],
        softmax_scale=args["q"].shape[-1] ** -0.5,
    )
    ref, _ = longattn.sparse_attention(**args, backend="reference")
    for bh, bn, nw, ns in [
        (16, 32, 4, 2),
        (32, 32, 8, 1),
        (32, 32, 8, 2),
        (32, 64, 8, 1),
        (64, 32, 8, 1),
        (64, 16, 8, 1),
        # 64-head blocks: wgmma (v3) for Q.K^T in the offline sm_90 compile, and with 2 stages cp.async
        # gathers, at the price of spills (triton_sass_probe --whatif: 112 B at 64,32,8,2)
        (64, 32, 8, 2),
        (64, 64, 8, 2),
        (64, 32, 4, 2),
        # spill-free in the offline sm_90 decode compile with the 256 + 256 head-dim halves (8 B in prefill)
        (64, 32, 8, 3),
    ]:
        cfg = dict(BLOCK_H=bh, BLOCK_N=bn, num_warps=nw, num_stages=ns)
        try:
            out, _ = tsa.sparse_attention(**canon, config=cfg)
            err = float((out.float() - ref.float()).abs().max())
            ms = bench_ms(lambda cfg=cfg: tsa.sparse_attention(**canon, config=cfg), quick)
            results.append(
                record(f"{name} cfg={bh},{bn},{nw},{ns}", "triton", ms, flops, nbytes, ceil, err, {"config": cfg})
            )
        except Exception as exc:  # a config may not compile / fit shared memory
            print(f"  {name} cfg={cfg}: {type(exc).__name__}: {str(exc)[:200]}", flush=True)
            results.append({"case": f"{name} cfg={bh},{bn},{nw},{ns}", "backend": "triton", "error": repr(exc)[:500]})


def _clone_pool(pool):
    if isinstance(pool, torch.Tensor):
        return pool.clone()
    from longattn.cache import Fp8KVPool

    return Fp8KVPool(pool.data.clone(), pool.page_size)


def _pool_rows(pool, D):
    if isinstance(pool, torch.Tensor):
        return pool.reshape(-1, D).float()
    from longattn.cache import dequantize_kv_fp8

    return dequantize_kv_fp8(pool).reshape(-1, D)


def append_case(device, T, D=512, pool="bf16", num_slots=65536, seed=0):
    from longattn.cache import Fp8KVPool

    g = torch.Generator(device="cpu").manual_seed(seed)
    rows = torch.randn(T, D, generator=g).to(device, torch.bfloat16)
    slots = torch.randperm(num_slots, generator=g)[:T].to(device)
    page = 64
    if pool == "fp8":
        p = Fp8KVPool.empty(num_slots // page, page, device)
        nbytes = T * (D * 2 + 584 + 8)
    else:
        p = torch.zeros(num_slots // page, page, D, dtype=torch.bfloat16, device=device)
        nbytes = T * (2 * D * 2 + 8)
    return dict(pool=p, rows=rows, slot_mapping=slots), nbytes


def compress_case(device, B, L, ratio, overlap, out="fp8", d=512, start=0, seed=0):
    """B sequences of L new tokens each (positions start .. start + L - 1), rings one page each."""
    from longattn.cache import Fp8KVPool
    from longattn.configs import RopeConfig
    from longattn.rope import inv_freq

    g = torch.Generator(device="cpu").manual_seed(seed)
    c = 2 if overlap else 1
    ring = c * ratio
    T = B * L
    a = torch.randn(T, c * d, generator=g).to(device, torch.bfloat16)
    b = torch.randn(T, c * d, generator=g).to(device, torch.bfloat16)
    pos = (start + torch.arange(L)).repeat(B).to(device)
    rows = torch.arange(B).repeat_interleave(L).int().to(device)
    state = torch.randn(B, ring, 2 * c * d, generator=g).to(device)
    sbt = torch.arange(B).view(B, 1).int().to(device)
    page = 64
    pages = (start + L) // ratio // page + 1
    obt = torch.arange(B * pages).view(B, pages).int().to(device)
    pool = (
        Fp8KVPool.empty(B * pages, page, device)
        if out == "fp8"
        else torch.zeros(B * pages, page, d, dtype=torch.bfloat16, device=device)
    )
    args = dict(a=a, b=b, positions=pos, token_rows=rows, ratio=ratio, overlap=overlap, state=state,
                state_block_table=sbt, out=pool, out_block_table=obt, norm_weight=torch.ones(d, device=device),
                eps=1e-6, rope_inv_freq=inv_freq(RopeConfig(160000.0), 64, device))  # fmt: skip
    entries = B * (((start + L) // ratio) - (start // ratio))
    head_ring_rows = B * min(ring - 1, start)  # ring rows read by the runs' first windows
    nbytes = (T * c * d * 2 * 2 + head_ring_rows * d * 2 * 4 + entries * (584 if out == "fp8" else d * 2)
              + B * min(L, ring) * 2 * c * d * 4)  # fmt: skip
    return args, nbytes


def run_compress_pool(device, ceil, quick, results):
    """Stateless pooling of a prefill (CSA: ratio 4 with overlap; HCA: ratio 128), bf16 a / b, d = 512."""
    for name, S, ratio, overlap in [
        ("compress_pool CSA S=65536 d=512", 65536, 4, True),
        ("compress_pool HCA S=65536 d=512", 65536, 128, False),
    ]:
        try:
            S, d = (2 * ratio + 3, 64) if SMOKE else (S, 512)
            c = 2 if overlap else 1
            g = torch.Generator(device="cpu").manual_seed(S + ratio)
            a = torch.randn(S, c * d, generator=g).to(device, torch.bfloat16)
            b = torch.randn(S, c * d, generator=g).to(device, torch.bfloat16)
            args = (a, b, ratio, overlap)
            err = float((longattn.compress_pool(*args, backend="triton") - longattn.compress_pool(*args)).abs().max())
            nbytes = 2 * S * c * d * 2 + (S // ratio) * d * 4  # a and b read once, fp32 entries written
            for be in ("triton", "reference"):
                ms = bench_ms(lambda be=be, args=args: longattn.compress_pool(*args, backend=be), quick)
                results.append(record(name, be, ms, 0, nbytes, ceil, err if be == "triton" else None))
        except Exception:
            traceback.print_exc()
            results.append({"case": name, "error": traceback.format_exc()[-2000:]})


def _with_pool(args, key):
    """A copy of args whose mutable tensors (the pool / state) are fresh clones."""
    a = dict(args)
    a[key] = _clone_pool(args[key])
    if "state" in a:
        a["state"] = args["state"].clone()
    return a


def run_cache_writes(device, ceil, quick, results):
    appends = [
        ("append_kv bf16 pool T=64 D=512", dict(T=64)),
        ("append_kv fp8 pool T=64", dict(T=64, pool="fp8")),
        ("append_kv fp8 pool T=8192", dict(T=8192, pool="fp8")),
    ]
    compresses = [
        ("compress_kv CSA decode B=64 d=512 fp8", dict(B=64, L=1, ratio=4, overlap=True, start=1023)),
        ("compress_kv CSA prefill T=8192 d=512 fp8", dict(B=1, L=8192, ratio=4, overlap=True)),
        ("compress_kv HCA prefill T=8192 d=512 bf16", dict(B=1, L=8192, ratio=128, overlap=False, out="bf16")),
    ]
    if SMOKE:
        appends = [(n, {**kw, "T": 4, "num_slots": 256}) for n, kw in appends]
        compresses = [(n, {**kw, "B": min(kw["B"], 2), "L": min(kw["L"], 9), "ratio": min(kw["ratio"], 8)})
                      for n, kw in compresses]  # fmt: skip
    for name, kw in appends:
        try:
            args, nbytes = append_case(device, **kw)
            at, ar = _with_pool(args, "pool"), _with_pool(args, "pool")
            longattn.append_kv(**at, backend="triton")
            longattn.append_kv(**ar, backend="reference")
            err = float((_pool_rows(at["pool"], 512) - _pool_rows(ar["pool"], 512)).abs().max())
            for be in ("triton", "reference"):
                ms = bench_ms(lambda be=be, args=args: longattn.append_kv(**args, backend=be), quick)
                results.append(record(name, be, ms, 0, nbytes, ceil, err if be == "triton" else None))
        except Exception:
            traceback.print_exc()
            results.append({"case": name, "error": traceback.format_exc()[-2000:]})
    for name, kw in compresses:
        try:
            args, nbytes = compress_case(device, **kw)
            at, ar = _with_pool(args, "out"), _with_pool(args, "out")
            longattn.compress_kv(**at, backend="triton")
            longattn.compress_kv(**ar, backend="reference")
            err = float((_pool_rows(at["out"], 512) - _pool_rows(ar["out"], 512)).abs().max())
            ring_err = float((at["state"] - ar["state"]).abs().max())
            # repeated calls are idempotent (same entries and ring rows), so they are timed in place
            for be in ("triton", "reference"):
                ms = bench_ms(lambda be=be, args=args: longattn.compress_kv(**args, backend=be), quick)
                extra = {"ring_max_abs_diff": ring_err} if be == "triton" else None
                results.append(record(name, be, ms, 0, nbytes, ceil, err if be == "triton" else None, extra))
        except Exception:
            traceback.print_exc()
            results.append({"case": name, "error": traceback.format_exc()[-2000:]})


def _smoke(kw):
    """The same case at interpreter size (--smoke): every code path, tiny shapes."""
    small = dict(T=min(kw["T"], 2), H=5, D=512 if kw.get("pool") == "fp8" else 64, window=8, comp_keys=96)
    return {**kw, **{k: v for k, v in small.items() if k in kw}}


SWEPT = (
    "sparse decode CSA H=128 128+1024 T=64",
    "sparse decode HCA H=128 128+8192 T=1",
    "sparse decode CSA fp8 H=128 128+1024 T=64",
    "sparse prefill V4-Pro H=128 128+1024 T=2048",
)


def sparse_cases():
    cases = [
        ("sparse decode CSA H=128 128+1024 T=1", dict(T=1, H=128, D=512, window=128, comp_keys=1024)),
        ("sparse decode CSA H=128 128+1024 T=64", dict(T=64, H=128, D=512, window=128, comp_keys=1024)),
        ("sparse decode HCA H=128 128+8192 T=1", dict(T=1, H=128, D=512, window=128, comp_keys=8192)),
        ("sparse decode HCA H=128 128+8192 T=16", dict(T=16, H=128, D=512, window=128, comp_keys=8192)),
        ("sparse decode HCA contiguous pool H=128 128+8192 T=1",
         dict(T=1, H=128, D=512, window=128, comp_keys=8192, layout="contiguous")),
        ("sparse decode HCA paged pool (page 64) H=128 128+8192 T=1",
         dict(T=1, H=128, D=512, window=128, comp_keys=8192, layout="paged")),
        ("sparse decode CSA fp8 H=128 128+1024 T=64", dict(T=64, H=128, D=512, window=128, comp_keys=1024, pool="fp8")),
        ("sparse prefill V4-Flash H=64 128+512 T=4096", dict(T=4096, H=64, D=512, window=128, comp_keys=512)),
        ("sparse prefill V4-Pro H=128 128+1024 T=2048", dict(T=2048, H=128, D=512, window=128, comp_keys=1024)),
    ]  # fmt: skip
    return [(n, _smoke(kw)) for n, kw in cases] if SMOKE else cases


def indexer_cases():
    cases = [
        ("indexer top-512 decode N=262144 T=1", dict(T=1, N=262_144)),
        ("indexer top-512 decode N=262144 T=8", dict(T=8, N=262_144)),
        ("indexer top-512 decode N=262144 T=1 paged (page 64)", dict(T=1, N=262_144, page=64)),
    ]
    if SMOKE:
        return [(n, {**kw, "N": 1024, "Hi": 4, "Di": 32, "topk": 16}) for n, kw in cases]
    return cases


# issue 4's performance goals: (what, case, metric, target); "paged" rows compare two cases' ms
GOALS = [
    ("sparse decode >= 50% of bf16 peak", "sparse decode CSA H=128 128+1024 T=64", "frac_bf16_peak", 0.5),
    ("HCA decode at 1M >= 80% of copy bandwidth", "sparse decode HCA H=128 128+8192 T=1", "frac_copy_bw", 0.8),
    ("indexer decode >= 80% of copy bandwidth", "indexer top-512 decode N=262144 T=1", "frac_copy_bw", 0.8),
    ("prefill >= 40% of bf16 peak (V4-Flash)", "sparse prefill V4-Flash H=64 128+512 T=4096", "frac_bf16_peak", 0.4),
    ("prefill >= 40% of bf16 peak (V4-Pro)", "sparse prefill V4-Pro H=128 128+1024 T=2048", "frac_bf16_peak", 0.4),
    ("HCA paged pool within 10% of contiguous", ("sparse decode HCA paged pool (page 64) H=128 128+8192 T=1",
     "sparse decode HCA contiguous pool H=128 128+8192 T=1"), "paged_over_contiguous_ms", 1.1),
    ("indexer paged keys within 10% of contiguous", ("indexer top-512 decode N=262144 T=1 paged (page 64)",
     "indexer top-512 decode N=262144 T=1"), "paged_over_contiguous_ms", 1.1),
]  # fmt: skip


def run_indexer_variants(name, args, pkw, want, select_ms, flops, nbytes, ceil, quick, res):
    """The fused path (running top-k lists + merge tree) beside the default select path (``select_ms``),
    and the select path's parts: its radix select over [T, N] int64 keys timed alone (beside torch.topk
    over the same keys, which the path used before), and the key kernel (with the write of the indices
    from the sorted keys, which the radix select's last launch does) as the rest."""
    from longattn.ops.indexer import triton_indexer as ti

    q, w, k, ve, topk = args
    bt, seq = pkw.get("block_table"), pkw.get("seq_ids")
    fused = ti.indexer_topk(q, w, k, ve, topk, bt, seq, method="fused")
    same = all(torch.equal(x, y) for x, y in zip(fused, want))
    ms = bench_ms(lambda: ti.indexer_topk(q, w, k, ve, topk, bt, seq, method="fused"), quick)
    res.append(record(name, "triton-fused", ms, flops, nbytes, ceil, None, {"same_as_select": same}))
    # the select path's key kernel with the other tile the offline model compared (8 warps: two warp
    # groups and a cross-warp head sum; the default on sm_90 is 4, select_config)
    cfg = ti.select_config(q.shape[1], q.shape[2], q.device)
    other = dict(cfg, num_warps=8 if cfg["num_warps"] == 4 else 4)
    got = ti.indexer_topk(q, w, k, ve, topk, bt, seq, method="select", config=other)
    same = all(torch.equal(x, y) for x, y in zip(got, want))
    ms = bench_ms(lambda: ti.indexer_topk(q, w, k, ve, topk, bt, seq, method="select", config=other), quick)
    res.append(record(name, f"triton-select {other['num_warps']} warps", ms, flops, nbytes, ceil, None,
                      {"same_as_select": same, "config": other}))  # fmt: skip
    n = ti._pool_args(k, bt, seq)[0]
    # sort keys of relu-like scores (one exponent range: the radix select's harder case)
    keys = pack_keys(torch.randn(q.shape[0], n, device=q.device).abs(), torch.arange(n, device=q.device))
    k_sel, p2 = min(512, n), 512
    topk_ms = bench_ms(lambda: torch.topk(keys, k_sel, dim=1, sorted=True), quick)
    res.append(record(name, "part: torch.topk of the int64 keys (before)", topk_ms, 0, keys.numel() * 8, ceil))
    vis = torch.full((q.shape[0],), n, dtype=torch.int32, device=q.device)
    best = ti.select_keys(keys, vis, k_sel, p2)
    same = torch.equal(best[:, :k_sel], torch.topk(keys, k_sel, dim=1, sorted=True).values)
    sel_ms = bench_ms(lambda: ti.select_keys(keys, vis, k_sel, p2, best), quick)
    res.append(record(name, "part: radix select of the int64 keys", sel_ms, 0, keys.numel() * 8, ceil, None,
                      {"same_as_torch_topk": same}))  # fmt: skip
    rest_ms = max(select_ms - sel_ms, 1e-6)
    res.append(record(name, "part: key kernel + index write (select - radix select)", rest_ms, flops, nbytes, ceil))


def goals(results):
    """The goals above evaluated on the triton rows of ``results`` (value None when a case failed)."""
    ms = {r["case"]: r for r in results if r.get("backend") == "triton" and "ms" in r}
    out = []
    for what, case, metric, target in GOALS:
        if isinstance(case, tuple):
            paged, contiguous = (ms.get(c) for c in case)
            value = paged["ms"] / contiguous["ms"] if paged and contiguous else None
            met = value is not None and value <= target
        else:
            value = ms[case][metric] if case in ms else None
            met = value is not None and value >= target
        out.append(dict(goal=what, case=case, metric=metric, target=target, value=value, met=met))
        shown = "failed / not run" if value is None else f"{value:.3f}"
        print(f"  goal {'MET' if met else 'NOT MET':7s} {what}: {metric} = {shown} (target {target})", flush=True)
    return out


# ---------------------------------------------------------------------------------------------------
# small-batch decode: eager op call vs launcher vs CUDA-graph replay; the split-KV sweep; a layer step
# ---------------------------------------------------------------------------------------------------

GRAPH_SKIP = "skipped: CUDA graphs need a CUDA device (interpreter smoke run on the CPU)"
PROFILE_SKIP = "skipped: per-kernel device times need a CUDA device (torch.profiler with CUPTI)"
BUDGET_SKIP = "skipped: the time budget of this section was spent before the case started"
DECODE_TS = (1, 2, 4, 8, 16)  # small-batch decode: one query token per sequence
# split counts tried besides the heuristic's and the one- / two-wave counts (clipped to the key blocks)
SPLIT_COUNTS = (1, 2, 4, 8, 16, 32, 64)
# the three sections share --graph-budget-s: each may run until this fraction of it (cumulative) is spent
GRAPH_SECTION_SHARES = {"decode-graph": 0.3, "split-sweep": 0.65, "layer-graph": 1.0}


class Deadline:
    """A wall-clock limit, checked before each case (a case that started runs to its end)."""

    def __init__(self, seconds=None, end=None):
        self.end = end if seconds is None else time.time() + seconds

    def spent(self):
        return self.end is not None and time.time() >= self.end

    def sooner(self, other):
        ends = [d.end for d in (self, other) if d.end is not None]
        return Deadline(end=min(ends) if ends else None)


def _graphs_here():
    return not SMOKE and torch.cuda.is_available()


def _tensors(out):
    return [out] if isinstance(out, torch.Tensor) else [t for t in out if isinstance(t, torch.Tensor)]


def same_bits(a, b):
    """Outputs equal bit for bit (NaN payloads included): same shapes, dtypes and bytes."""
    xs, ys = _tensors(a), _tensors(b)
    return len(xs) == len(ys) and all(
        x.shape == y.shape
        and x.dtype == y.dtype
        and torch.equal(x.contiguous().reshape(-1).view(torch.uint8), y.contiguous().reshape(-1).view(torch.uint8))
        for x, y in zip(xs, ys)
    )


def poison(out):
    """Overwrite outputs (NaN / -7) so that a replay that skips an element cannot pass for an equal one."""
    for t in _tensors(out):
        t.fill_(float("nan") if t.is_floating_point() else -7)


def sync_error(fn):
    """None when ``fn`` runs without a host synchronisation, else what sync-debug mode "error" raised."""
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        fn()
    except Exception as exc:
        return repr(exc)[:300]
    finally:
        torch.cuda.set_sync_debug_mode(0)
    return None


def capture(fn, warmup=2):
    """(graph, the captured call's outputs), torch's recipe: warm-up calls on a side stream first."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(warmup):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = fn()
    return graph, out


def graph_replay(fn, want, quick):
    """Capture ``fn``, check that one replay rewrites its (poisoned) outputs to ``want`` bit for bit, time
    replays: {"replay_equals_eager", "graph_ms"}."""
    want = [t.clone() for t in _tensors(want)]  # (an output that aliased a buffer of fn would be rewritten)
    graph, out = capture(fn)
    poison(out)
    graph.replay()
    torch.cuda.synchronize()
    r = {"replay_equals_eager": same_bits(out, want)}
    r["graph_ms"] = bench_ms(graph.replay, quick)
    del graph, out
    return r


def graph_columns(op_call, launcher, want, quick):
    """The graph of the op call when it runs without a host synchronisation (else of the launcher, with the
    reason); GRAPH_SKIP without CUDA. Returns the row's graph fields."""
    if not _graphs_here():
        return {"graph_status": GRAPH_SKIP, "graph_ms": None}
    r = {}
    err = sync_error(op_call)
    r["op_call_sync"] = err
    fn, r["graph_of"] = (op_call, "op call") if err is None else (launcher, "launcher (the op call synchronises)")
    if err is not None and sync_error(launcher) is not None:  # a capture would fail
        return {**r, "graph_status": "not captured: the op call and the launcher synchronise", "graph_ms": None}
    try:
        r.update(graph_replay(fn, want, quick))
        r["graph_status"] = "measured"
    except Exception as exc:
        traceback.print_exc()
        r.update(graph_status=f"error: {exc!r}"[:500], graph_ms=None)
    return r


def _canon(args):
    """The sparse launcher's canonical arguments of a sparse_case (default tiles and splits)."""
    return dict(q=args["q"], kv=args["kv"], indices=args["indices"], topk_length=None, extra_kv=args["extra_kv"],
                extra_indices=args["extra_indices"], extra_topk_length=None, attn_sink=args["attn_sink"],
                softmax_scale=args["q"].shape[-1] ** -0.5)  # fmt: skip


def decode_graph_cases():
    cases = [(f"sparse decode {kind} H=128 128+{ck} T={T}", "sparse", dict(T=T, H=128, D=512, window=128, comp_keys=ck))
             for kind, ck in (("CSA", 1024), ("HCA", 8192)) for T in DECODE_TS]  # fmt: skip
    cases += [(f"indexer top-512 decode N=262144 T={T}", "indexer", dict(T=T, N=262_144)) for T in (1, 8)]
    if SMOKE:
        return [(n, k, _smoke(kw) if k == "sparse" else {**kw, "N": 1024, "Hi": 4, "Di": 32, "topk": 16})
                for n, k, kw in cases if kw["T"] <= 2]  # fmt: skip
    return cases


def _side_by_side(row, nbytes, ceil):
    """host overhead = eager - graph (and launcher - graph), and the graph's fraction of the copy bandwidth."""
    g = row.get("graph_ms")
    if g:
        row["host_overhead_ms"] = row["eager_ms"] - g
        row["launcher_host_ms"] = row["launcher_ms"] - g
        row["graph_GBps"] = nbytes / (g * 1e-3) / 1e9
        row["graph_frac_copy_bw"] = row["graph_GBps"] / ceil["copy_GBps"]
    else:
        row["host_overhead_ms"] = row["launcher_host_ms"] = None
    shown = "-" if not g else f"{g:9.4f} ms (host {row['host_overhead_ms']:.4f} ms)"
    print(f"  {row['case']:44s} eager {row['eager_ms']:9.4f} ms  launcher {row['launcher_ms']:9.4f} ms  graph {shown}"
          f"  {row.get('graph_status', '')}", flush=True)  # fmt: skip
    return row


def decode_graph_row(name, kind, kw, device, ceil, quick):
    if kind == "sparse":
        from longattn.ops.sparse_attention import triton_sparse_attention as tsa

        args, _, nbytes = sparse_case(device, **kw)
        canon = _canon(args)

        def op_call():
            return longattn.sparse_attention(**args, backend="triton")

        def launcher():
            return tsa.sparse_attention(**canon)

    else:
        from longattn.ops.indexer import triton_indexer as ti

        ((q, w, k, ve, topk), pkw), _, nbytes = indexer_case(device, **kw)
        bt, seq = pkw.get("block_table"), pkw.get("seq_ids")

        def op_call():
            return longattn.indexer_topk(q, w, k, ve, topk, **pkw, backend="triton")

        def launcher():
            return ti.indexer_topk(q, w, k, ve, topk, bt, seq)

    eager = op_call()
    op = "sparse_attention" if kind == "sparse" else "indexer_topk"
    row = {"case": name, "op": op, "T": kw["T"], "bytes": nbytes, "launcher_equals_op": same_bits(launcher(), eager)}
    row["eager_ms"] = bench_ms(op_call, quick)
    row["launcher_ms"] = bench_ms(launcher, quick)
    row.update(graph_columns(op_call, launcher, eager, quick))
    return _side_by_side(row, nbytes, ceil)


def run_decode_graphs(device, ceil, quick, deadline):
    """Each small-batch decode case: the op call (eager, as an engine without graphs runs it), the bare
    launcher, and a CUDA-graph replay of the op call, side by side."""
    sec = {"what": "eager op call vs launcher vs CUDA-graph replay (host overhead = eager - graph)", "rows": []}
    if not _graphs_here():
        sec["graph_status"] = GRAPH_SKIP
    for name, kind, kw in decode_graph_cases():
        if deadline.spent():
            sec["rows"].append({"case": name, "status": BUDGET_SKIP})
            continue
        try:
            sec["rows"].append(decode_graph_row(name, kind, kw, device, ceil, quick))
        except Exception:
            traceback.print_exc()
            sec["rows"].append({"case": name, "error": traceback.format_exc()[-2000:]})
    return sec


# -- the split-KV sweep ------------------------------------------------------------------------------------


def split_sweep_cases():
    cases = [(f"sparse decode {kind} H=128 128+{ck} T={T}", dict(T=T, H=128, D=512, window=128, comp_keys=ck))
             for kind, ck in (("CSA", 1024), ("HCA", 8192)) for T in DECODE_TS]  # fmt: skip
    return [(n, _smoke(kw)) for n, kw in cases if kw["T"] <= 2] if SMOKE else cases


def split_plan(canon, device):
    """What the launcher decides for these arguments: tiles, key blocks, programs per split, the heuristic's
    num_splits, and the candidates to time (clipped to the key blocks: more splits would have no keys)."""
    from longattn.ops.sparse_attention import triton_sparse_attention as tsa
    from longattn.ops.triton_utils import num_sms

    q = canon["q"]
    T, H, D = q.shape
    cfg = tsa.default_config(H, D, tsa.compute_dtype(q, [canon["kv"], canon["extra_kv"]]), device)
    bn = cfg["BLOCK_N"]
    K1, K2 = canon["indices"].shape[1], canon["extra_indices"].shape[1]
    programs = T * -(-H // cfg["BLOCK_H"])
    blocks = -(-K1 // bn) + -(-K2 // bn)
    sms = num_sms(device)
    heuristic = tsa.choose_num_splits(
        programs, K1 + K2, bn, device, key_blocks=blocks, block_h=cfg["BLOCK_H"], head_dim=D
    )  # the launcher's own choice (its cost model)
    waves = {-(-sms // programs), -(-2 * sms // programs)}  # one / two waves of programs
    candidates = sorted({min(s, blocks) for s in set(SPLIT_COUNTS) | waves | {heuristic}})
    return dict(config=cfg, key_blocks=blocks, programs_per_split=programs, sms=sms, heuristic=heuristic,
                candidates=candidates)  # fmt: skip


def kernel_device_us(fn, reps=10):
    """Device time per call of each kernel ``fn`` launches (torch.profiler, CUDA activity), in us."""
    from torch.profiler import ProfilerActivity, profile

    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(reps):
            fn()
        torch.cuda.synchronize()

    def device_us(e):
        ts = [0.0]
        for attr in ("device_time_total", "self_device_time_total", "cuda_time_total"):  # across torch versions
            try:
                ts.append(float(getattr(e, attr)))
            except Exception:
                pass
        return max(ts)

    out = {}
    for e in prof.key_averages():
        t = device_us(e)
        if t:
            out[e.key] = out.get(e.key, 0.0) + t / reps
    return out


def combine_share(fn):
    """The split kernel's and the combine kernel's device time per call, and the combine's share."""
    if not _graphs_here():
        return {"status": PROFILE_SKIP}
    try:
        ks = kernel_device_us(fn)
    except Exception as exc:
        return {"status": f"error: {exc!r}"[:300]}
    attn = sum(v for k, v in ks.items() if "sparse_attn_fwd" in k)
    comb = sum(v for k, v in ks.items() if "combine_splits" in k)
    if not attn:
        return {"status": "no sparse-attention kernel among the profiled events", "kernels_us": ks}
    return {"status": "measured", "attn_kernel_us": attn, "combine_kernel_us": comb,
            "combine_share": comb / (attn + comb)}  # fmt: skip


def split_sweep_case(name, kw, device, quick):
    """Every candidate num_splits of one decode case: output and lse against the reference, and (CUDA) the
    time of a graph replay of the launcher call, so that host cost does not hide the kernels."""
    from longattn.ops.sparse_attention import triton_sparse_attention as tsa

    args, _, nbytes = sparse_case(device, **kw)
    canon = _canon(args)
    plan = split_plan(canon, device)
    ref, ref_lse = longattn.sparse_attention(**args, backend="reference")
    ref_max = float(ref.float().abs().max())
    tol = 2 * 2.0**-7 * max(ref_max, 1e-6)  # bf16: the Triton tests' 2 * 2^-8, as atol x max|ref| + rtol
    default = tsa.sparse_attention(**canon)
    case = {"case": name, "T": kw["T"], "bytes": nbytes, "tolerance": tol, **plan, "points": []}
    for s in plan["candidates"]:
        p = {"num_splits": s, "effective_splits": -(-plan["key_blocks"] // -(-plan["key_blocks"] // s))}
        try:
            out, lse = tsa.sparse_attention(**canon, num_splits=s)
            p["max_abs_err_vs_reference"] = float((out.float() - ref.float()).abs().max())
            p["lse_err"] = float((lse - ref_lse).abs().max())
            p["matches_reference"] = p["max_abs_err_vs_reference"] <= tol
            if s == plan["heuristic"]:
                case["heuristic_equals_default_launch"] = same_bits((out, lse), default)
            if _graphs_here():
                p.update(graph_replay(lambda s=s: tsa.sparse_attention(**canon, num_splits=s), (out, lse), quick))
            else:
                p.update(graph_ms=None, graph_status=GRAPH_SKIP)
        except Exception as exc:
            traceback.print_exc()
            p["error"] = repr(exc)[:500]
        case["points"].append(p)
    timed = [p for p in case["points"] if p.get("graph_ms") and p.get("matches_reference")]
    case["checked_all"] = all(p.get("matches_reference") for p in case["points"])
    if timed:
        best = min(timed, key=lambda p: p["graph_ms"])
        heur = next((p for p in timed if p["num_splits"] == plan["heuristic"]), None)
        case.update(fastest_num_splits=best["num_splits"], fastest_graph_ms=best["graph_ms"],
                    heuristic_graph_ms=heur["graph_ms"] if heur else None,
                    heuristic_over_fastest=heur["graph_ms"] / best["graph_ms"] if heur else None)  # fmt: skip
        shares = {}
        for s in sorted({plan["heuristic"], best["num_splits"]}):
            if s > 1:
                shares[str(s)] = combine_share(lambda s=s: tsa.sparse_attention(**canon, num_splits=s))
        case["combine"] = shares
    else:
        case.update(fastest_num_splits=None, status=GRAPH_SKIP if not _graphs_here() else "no timed point")
        case["combine"] = {"status": PROFILE_SKIP} if not _graphs_here() else {}
    pts = ", ".join(f"{p['num_splits']}:" + (f"{p['graph_ms'] * 1e3:.1f}us" if p.get("graph_ms") else "-")
                    + ("" if p.get("matches_reference") else "(WRONG)") for p in case["points"])  # fmt: skip
    print(f"  {name:44s} heuristic {plan['heuristic']:3d} fastest {case['fastest_num_splits']}  [{pts}]", flush=True)
    return case


def run_split_sweep(device, deadline):
    sec = {"what": "num_splits of the sparse launcher: graph replay time, output vs reference", "cases": []}
    if not _graphs_here():
        sec["graph_status"] = GRAPH_SKIP
    for name, kw in split_sweep_cases():
        if deadline.spent():
            sec["cases"].append({"case": name, "status": BUDGET_SKIP})
            continue
        try:
            sec["cases"].append(split_sweep_case(name, kw, device, quick=True))
        except Exception:
            traceback.print_exc()
            sec["cases"].append({"case": name, "error": traceback.format_exc()[-2000:]})
    return sec


# -- a whole layer's decode step ---------------------------------------------------------------------------


def layer_graph_cases(context, batches):
    cases = []
    for B in batches:
        for kind in ("hca", "csa"):  # the cheaper fill first
            ctx = context
            if SMOKE:  # a tiny layer: a few compressed entries
                ctx = 3 * (4 if kind == "csa" else 128) + 5
            cases.append((f"layer decode {kind.upper()} V4-Pro context={ctx} B={B}", kind, B, ctx))
    return cases


def build_layer_decode(kind, B, context, device, seed=0):
    """(HybridAttention on the triton backend, its manager, the decode plan of B sequences at position
    context - 1, the step's inputs, its weights, the fill time). V4-Pro's first layer of ``kind`` (H = 128,
    D = 512, window 128; CSA: ratio 4, top-1024 of 64 x 128 index heads; HCA: ratio 128), bf16 pools of
    64-row pages filled with random rows (``longattn.testing.fill_random_context``). --smoke: the same
    layer with tiny heads (H = 4, D = 64, window 8, 2 x 32 index heads, top-8), pages of 4."""
    from longattn.cache import CacheManager
    from longattn.configs import PRESETS
    from longattn.testing import fill_random_context

    Lc = PRESETS["v4-pro"].first_layer(kind)
    page = 64
    if SMOKE:
        Lc = dataclasses.replace(Lc, n_heads=4, head_dim=64, rope_dim=16, window=8, index_n_heads=2,
                                 index_head_dim=32, index_topk=8)  # fmt: skip
        page = 4
    t0 = time.time()
    m = CacheManager.for_layers([Lc], max_seqs=B, max_context=context, max_step_tokens=1 << 14, page_size=page,
                                device=device)  # fmt: skip
    att = longattn.HybridAttention(Lc, m, kv_dtype=torch.bfloat16, backend="triton")
    g = torch.Generator(device="cpu").manual_seed(seed)

    def rnd(*shape, dtype=torch.bfloat16, scale=1.0):
        return (torch.randn(*shape, generator=g) * scale).to(device, dtype)

    H, D, Hi, Di = Lc.n_heads, Lc.head_dim, Lc.index_n_heads, Lc.index_head_dim
    w = {"attn_sink": rnd(H, dtype=torch.float32), "compress_norm_weight": 1 + rnd(D, dtype=torch.float32, scale=0.1)}
    x = {"compress_a": rnd(B, (2 if Lc.overlap else 1) * D), "compress_b": rnd(B, (2 if Lc.overlap else 1) * D)}
    if Lc.uses_indexer:
        w["index_norm_weight"] = 1 + rnd(Di, dtype=torch.float32, scale=0.1)
        x.update(index_q=rnd(B, Hi, Di), index_weights=rnd(B, Hi, dtype=torch.float32, scale=Di**-0.5 * Hi**-0.5),
                 index_a=rnd(B, 2 * Di), index_b=rnd(B, 2 * Di))  # fmt: skip
    seqs = list(range(B))
    fill_random_context(att, m, seqs, context - 1, chunk=1 << 14, seed=seed)
    plan = m.plan(seqs, torch.arange(B + 1))
    if device.type == "cuda":
        torch.cuda.synchronize()
    return att, plan, rnd(B, H, D), rnd(B, D), x, w, time.time() - t0


def layer_graph_row(name, kind, B, context, device, quick):
    att, plan, q, kv, x, w, fill_s = build_layer_decode(kind, B, context, device)
    Lc = att.layer
    row = {"case": name, "kind": kind, "B": B, "context": context, "fill_s": fill_s,
           "layer": dict(n_heads=Lc.n_heads, head_dim=Lc.head_dim, window=Lc.window, ratio=Lc.compress_ratio,
                         index_topk=Lc.index_topk if Lc.uses_indexer else None)}  # fmt: skip
    step = att.prepare(plan, q, kv, **x, **w)

    def run():
        return att.run(step)

    def prepare_run():
        return att.run(att.prepare(plan, q, kv, **x, **w))

    eager = run()  # also the kernels' compile
    row["eager_run_ms"] = bench_ms(run, quick)  # the launches of a prepared step
    row["eager_prepare_run_ms"] = bench_ms(prepare_run, quick)  # + the step's checks and host planning
    sync = sync_error(run) if _graphs_here() else None
    if sync is not None:  # a capture would fail (and could upset the CUDA context for what follows)
        row.update(graph_status=f"not captured: the step synchronises ({sync})", graph_ms=None, host_overhead_ms=None)
    elif _graphs_here():
        try:
            row.update(graph_replay(run, eager, quick))
            row["graph_status"] = "measured"
            row["host_overhead_ms"] = row["eager_run_ms"] - row["graph_ms"]
        except Exception as exc:
            traceback.print_exc()
            row.update(graph_status=f"error: {exc!r}"[:500], graph_ms=None, host_overhead_ms=None)
    else:
        row.update(graph_status=GRAPH_SKIP, graph_ms=None, host_overhead_ms=None)
    att.backend = "reference"  # last: the reference step rewrites the same slots (with its own rounding)
    ref = att.run(att.prepare(plan, q, kv, **x, **w))
    row["max_abs_err_vs_reference"] = float((eager.float() - ref.float()).abs().max())
    g = row.get("graph_ms")
    print(f"  {name:44s} run {row['eager_run_ms']:9.4f} ms  prepare+run {row['eager_prepare_run_ms']:9.4f} ms  "
          f"graph {'-' if not g else f'{g:9.4f} ms'}  err {row['max_abs_err_vs_reference']:.2e}  "
          f"(fill {fill_s:.1f} s)", flush=True)  # fmt: skip
    return row


def run_layer_graphs(device, quick, deadline, context, batches):
    sec = {"what": "HybridAttention decode step (prepare once, run): eager vs CUDA-graph replay", "rows": []}
    if not _graphs_here():
        sec["graph_status"] = GRAPH_SKIP
    for name, kind, B, ctx in layer_graph_cases(context, batches):
        if deadline.spent():
            sec["rows"].append({"case": name, "status": BUDGET_SKIP})
            continue
        try:
            sec["rows"].append(layer_graph_row(name, kind, B, ctx, device, quick))
        except Exception:
            traceback.print_exc()
            sec["rows"].append({"case": name, "error": traceback.format_exc()[-2000:]})
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return sec


def run_op_cases(device, cases, ceil, quick, res, save):
    """The sparse attention and indexer cases: op call on triton and reference, checked, and the indexer's
    fused path and parts."""
    for name, kw in cases:
        try:
            args, flops, nbytes = sparse_case(device, **kw)
            run_sparse(name, args, flops, nbytes, ceil, quick, res)
        except Exception:
            traceback.print_exc()
            res.append({"case": name, "error": traceback.format_exc()[-2000:]})
        save()
    for name, kw in indexer_cases():
        try:
            ((q, w, k, ve, topk), pkw), flops, nbytes = indexer_case(device, **kw)
            it, lt = longattn.indexer_topk(q, w, k, ve, topk, **pkw, backend="triton")
            ir, lr = longattn.indexer_topk(q, w, k, ve, topk, **pkw, backend="reference")
            same = float((it == ir).float().mean())
            ms = select_ms = bench_ms(
                lambda ia=(q, w, k, ve, topk), pkw=pkw: longattn.indexer_topk(*ia, **pkw, backend="triton"), quick
            )
            res.append(
                record(
                    name,
                    "triton",
                    ms,
                    flops,
                    nbytes,
                    ceil,
                    None,
                    {"same_indices_fraction": same, "lengths_equal": bool(torch.equal(lt, lr))},
                )
            )
            ms = bench_ms(
                lambda ia=(q, w, k, ve, topk), pkw=pkw: longattn.indexer_topk(*ia, **pkw, backend="reference"), quick
            )
            res.append(record(name, "reference", ms, flops, nbytes, ceil))
            run_indexer_variants(name, (q, w, k, ve, topk), pkw, (it, lt), select_ms, flops, nbytes, ceil, quick, res)
        except Exception:
            traceback.print_exc()
            res.append({"case": name, "error": traceback.format_exc()[-2000:]})
        save()


def backward_cases():
    """The sparse backward's cases (``sm90_model.BACKWARD_CASES``: V4 prefill chunks, D = 512); tiny
    under --smoke."""
    cases = [(name, dict(T=T, H=H, D=sm90_model.BACKWARD_D, window=w, topk=k))
             for name, (T, H, w, k) in sm90_model.BACKWARD_CASES.items()]  # fmt: skip
    return [(n, dict(T=2, H=5, D=64, window=8, topk=16)) for n, _ in cases] if SMOKE else cases


def backward_case(device, T, H, D, window, topk, seed=0):
    """A CSA prefill chunk's backward: ``T`` bf16 query tokens, token t attending to window rows
    t .. t + window - 1 and to ``topk`` random entries of a 16,384-entry pool (a 64K-token context), a
    sink; ``out`` / ``lse`` from the Triton forward. Returns (the launcher's arguments, FLOPs, bytes):
    FLOPs of the five products (s, dp, dq, the rows' two), bytes the least a backward moves (each
    token's rows read once, q / dout / out read, dq written in fp32, each token's row gradients added
    once in fp32)."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    n_entries = max(4 * topk, 256 if SMOKE else 16384)

    def rnd(*shape):
        return torch.randn(*shape, generator=g).to(device, torch.bfloat16)

    q, dout, rows, entries = rnd(T, H, D), rnd(T, H, D), rnd(T + window, D), rnd(n_entries, D)
    win = (torch.arange(T)[:, None] + torch.arange(window)[None, :]).int().to(device)
    ids = torch.randint(0, n_entries, (T, topk), generator=g).int().to(device)
    sink = torch.randn(H, generator=g).to(device)
    out, lse = longattn.sparse_attention(q, rows, win, extra_kv=entries, extra_indices=ids, attn_sink=sink,
                                         backend="triton")  # fmt: skip
    args = dict(q=q, streams=[(rows, win, None), (entries, ids, None)], attn_sink=sink, scale=D**-0.5, out=out,
                lse=lse, dout=dout)  # fmt: skip
    keys = window + topk
    flops = 2 * T * H * keys * D * 5
    nbytes = T * keys * D * (2 + 4) + 3 * T * H * D * 2 + T * H * D * 4
    return args, flops, nbytes


def run_backward(device, ceil, quick, res, sweep, want, save):
    """The Triton backward (``triton_backward.sparse_attention_backward``, atomic row gradients) at its
    default tile, with the PyTorch backward on the same device beside it, for every case; then, unless
    ``sweep`` is off, the first case at ``sm90_model.BACKWARD_SWEEP_TILES`` (``want`` is asked before
    each row, so a spent budget cuts the sweep first). Each Triton row: the launcher call's median ms and
    the largest difference of dq / row gradients from the PyTorch backward (``max_abs_err_vs_reference``,
    and relative to the largest reference gradient: ~2^-11 is expected, since the kernel's launcher
    takes ``delta = <dout, out>`` from the forward's bf16 output where the PyTorch backward recomputes
    ``out`` in fp32)."""
    from longattn.ops.sparse_attention import backward as ref_bwd
    from longattn.ops.sparse_attention import triton_backward as tbw

    built = {}  # case -> (launcher arguments, FLOPs, bytes, reference call, its gradients, their scale)

    def case(name, kw):
        if name not in built:
            a, flops, nbytes = backward_case(device, **kw)

            def reference(a=a):
                return ref_bwd.sparse_attention_backward(a["q"], a["streams"], a["attn_sink"], a["scale"], a["lse"],
                                                         a["dout"], None)  # fmt: skip

            dq, drows, _ = reference()
            built[name] = (a, flops, nbytes, reference, [dq, *drows], max(float(x.abs().max()) for x in [dq, *drows]))
        return built[name]

    shapes = dict(backward_cases())
    for row, name, tile in sm90_model.backward_model_cases():
        if tile is not None and not sweep:
            continue
        if not want("backward"):
            break
        kw = shapes[name]
        try:
            a, flops, nbytes, reference, want_grads, scale_ref = case(name, kw)
            cfg = None if tile is None else sm90_model.backward_tile_config(tile)

            def call(a=a, cfg=cfg):
                return tbw.sparse_attention_backward(**a, dlse=None, deterministic=False, config=cfg)

            dq, drows, _ = call()
            err = max(float((x.float() - y.float()).abs().max()) for x, y in zip([dq, *drows], want_grads))
            ms = bench_ms(call, quick)
            used = cfg or tbw.default_config(
                kw["H"], kw["D"], device, dtype=tbw.compute_dtype(a["q"], a["dout"], [r for r, _, _ in a["streams"]])
            )
            extra = {"config": used, "rel_err_vs_reference": err / max(scale_ref, 1e-30)}
            res.append(record(row, sm90_model.BACKWARD_BACKEND, ms, flops, nbytes, ceil, err, extra))
            if tile is None:
                res.append(record(name, "reference backward", bench_ms(reference, quick), flops, nbytes, ceil))
        except Exception as exc:  # a tile may not compile / fit shared memory on this GPU
            traceback.print_exc()
            res.append({"case": row, "backend": sm90_model.BACKWARD_BACKEND, "error": repr(exc)[:500]})
        save()


SECTIONS = ("ops", "decode-graph", "split-sweep", "layer-graph", "cache-writes", "compress-pool", "backward",
            "tile-sweep")  # fmt: skip


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="bench/out/triton_grid.json")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--no-sweep", action="store_true")
    p.add_argument("--smoke", action="store_true", help="tiny shapes on the CPU under TRITON_INTERPRET=1")
    p.add_argument(
        "--budget-s",
        type=float,
        default=None,
        help="seconds for the whole grid: a section (or case of the new sections) not started by then "
        "is skipped and recorded as such; the goals and the JSON are still written",
    )
    p.add_argument(
        "--graph-budget-s",
        type=float,
        default=90.0,
        help="seconds shared by the decode-graph, split-sweep and layer-graph sections (cumulative "
        f"shares {GRAPH_SECTION_SHARES}), checked before each case",
    )
    p.add_argument("--layer-context", type=int, default=1 << 20, help="context of the layer decode steps (1M)")
    p.add_argument("--layer-batches", default="1,8", help="decode batch sizes of the layer steps")
    p.add_argument(
        "--only", default=None, help=f"comma-separated sections to run, of {','.join(SECTIONS)} (default: all)"
    )
    a = p.parse_args(argv)
    only = set(SECTIONS) if a.only is None else set(a.only.split(","))
    if not only <= set(SECTIONS):
        p.error(f"--only: unknown sections {sorted(only - set(SECTIONS))}; sections: {', '.join(SECTIONS)}")
    global SMOKE
    SMOKE = a.smoke
    if SMOKE and os.environ.get("TRITON_INTERPRET") != "1":
        print("triton_grid --smoke: set TRITON_INTERPRET=1 before starting Python", file=sys.stderr)
        return 2
    if not SMOKE and not torch.cuda.is_available():
        print("triton_grid: needs a CUDA device (or --smoke on the CPU)", file=sys.stderr)
        return 2
    import triton

    device = torch.device("cpu" if SMOKE else "cuda")
    t0 = time.time()
    doc = {
        "device": "cpu (interpreter smoke run)" if SMOKE else torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "triton": triton.__version__,
        "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "results": [],
    }
    ceil = ceilings(device, a.quick)
    doc["ceilings"] = ceil
    print(
        f"ceilings: copy {ceil['copy_GBps']:.0f} GB/s, bf16 matmul {ceil['bf16_matmul_TFLOPs']:.0f} TFLOP/s", flush=True
    )
    res = doc["results"]

    def save():  # after every section: a run cut short by its timeout keeps what it measured
        doc["wall_s"] = time.time() - t0
        os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
        with open(a.out, "w") as f:
            json.dump(doc, f, indent=1)

    grid_deadline = Deadline(a.budget_s)
    doc["budget"] = {"grid_s": a.budget_s, "graph_s": a.graph_budget_s, "skipped_sections": []}

    def want(section):
        if section not in only:
            return False
        if grid_deadline.spent():
            doc["budget"]["skipped_sections"].append(section)
            print(f"  {section}: skipped (grid time budget spent)", flush=True)
            return False
        return True

    cases = sparse_cases()
    if want("ops"):
        run_op_cases(device, cases, ceil, a.quick, res, save)
    t_graph = time.time()
    for section in ("decode-graph", "split-sweep", "layer-graph"):
        deadline = Deadline(end=t_graph + GRAPH_SECTION_SHARES[section] * a.graph_budget_s).sooner(grid_deadline)
        if not want(section):
            continue
        t_sec = time.time()
        if section == "decode-graph":
            doc["decode_graph"] = run_decode_graphs(device, ceil, a.quick, deadline)
        elif section == "split-sweep":
            doc["split_sweep"] = run_split_sweep(device, deadline)
        else:
            batches = [int(b) for b in a.layer_batches.split(",")]
            doc["layer_graph"] = run_layer_graphs(device, a.quick, deadline, a.layer_context, batches)
        doc[section.replace("-", "_")]["wall_s"] = time.time() - t_sec
        save()
    if want("cache-writes"):
        run_cache_writes(device, ceil, a.quick, res)
    if want("compress-pool"):
        run_compress_pool(device, ceil, a.quick, res)
    save()
    if "backward" in only:
        run_backward(device, ceil, a.quick, res, not a.no_sweep, want, save)
    if not a.no_sweep and "tile-sweep" in only:
        for name, kw in [c for c in cases if c[0] in SWEPT]:
            if not want("tile-sweep"):
                break
            try:
                args, flops, nbytes = sparse_case(device, **kw)
                sweep_sparse(name, args, flops, nbytes, ceil, a.quick, res)
            except Exception:
                traceback.print_exc()
                res.append({"case": name + " sweep", "error": traceback.format_exc()[-2000:]})
            save()
    print("the offline sm_90a model beside the measurements (kernel time; a model, not a measurement):", flush=True)
    doc["model"] = sm90_model.attach(doc)
    print("goals (triton backend):", flush=True)
    doc["goals"] = goals(res)
    save()
    print(f"wrote {a.out} ({doc['wall_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
