"""A small GPU benchmark grid of the Triton backend (and the reference on the same device).

    python bench/triton_grid.py --out results.json [--quick] [--no-sweep]
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
- compress_pool (stateless pooling) of a 65,536-token prefill, CSA and HCA, d = 512.
Each is timed with ``triton.testing.do_bench`` (median ms) on backend="triton" and "reference", checked
against the reference (max abs error), and reported as ms, TFLOP/s and GB/s with fractions of the
ceilings measured in the same run (device-to-device copy bandwidth, bf16 matmul throughput). The
sparse kernel's tile configuration is also swept on two cases (``--no-sweep`` skips it).

FLOPs (FlashMLA convention): attention 2 * T * H * keys * (D + D); indexer 2 * T * Hi * N * Di.
Bytes: attention = gathered rows (T * keys * D * 2, rows re-read by other tokens counted again) +
indices + q + out; indexer = T * N * Di * 2 (every key read once per token) + q, w, outputs; cache
writes = rows read + records / entries written + ring rows read (fp32) and written (cache writes
report 0 FLOP: they are memory-bound).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import traceback

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "python"))

import longattn  # noqa: E402

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
    and the select path's two parts: torch.topk over [T, N] int64 keys, timed alone, and the key
    kernel + write launch, the rest of the select time."""
    from longattn.ops.indexer import triton_indexer as ti

    q, w, k, ve, topk = args
    bt, seq = pkw.get("block_table"), pkw.get("seq_ids")
    fused = ti.indexer_topk(q, w, k, ve, topk, bt, seq, method="fused")
    same = all(torch.equal(x, y) for x, y in zip(fused, want))
    ms = bench_ms(lambda: ti.indexer_topk(q, w, k, ve, topk, bt, seq, method="fused"), quick)
    res.append(record(name, "triton-fused", ms, flops, nbytes, ceil, None, {"same_as_select": same}))
    n = ti._pool_args(k, bt, seq)[0]
    keys = torch.randint(-(2**62), 2**62, (q.shape[0], n), dtype=torch.int64, device=q.device)
    topk_ms = bench_ms(lambda: torch.topk(keys, min(512, n), dim=1, sorted=True), quick)
    res.append(record(name, "part: torch.topk of the int64 keys", topk_ms, 0, keys.numel() * 8, ceil))
    rest_ms = max(select_ms - topk_ms, 1e-6)
    res.append(record(name, "part: key kernel + write (select - topk)", rest_ms, flops, nbytes, ceil))


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


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="bench/out/triton_grid.json")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--no-sweep", action="store_true")
    p.add_argument("--smoke", action="store_true", help="tiny shapes on the CPU under TRITON_INTERPRET=1")
    a = p.parse_args(argv)
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

    cases = sparse_cases()
    for name, kw in cases:
        try:
            args, flops, nbytes = sparse_case(device, **kw)
            run_sparse(name, args, flops, nbytes, ceil, a.quick, res)
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
                lambda ia=(q, w, k, ve, topk), pkw=pkw: longattn.indexer_topk(*ia, **pkw, backend="triton"), a.quick
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
                lambda ia=(q, w, k, ve, topk), pkw=pkw: longattn.indexer_topk(*ia, **pkw, backend="reference"), a.quick
            )
            res.append(record(name, "reference", ms, flops, nbytes, ceil))
            run_indexer_variants(name, (q, w, k, ve, topk), pkw, (it, lt), select_ms, flops, nbytes, ceil, a.quick, res)
        except Exception:
            traceback.print_exc()
            res.append({"case": name, "error": traceback.format_exc()[-2000:]})
        save()
    run_cache_writes(device, ceil, a.quick, res)
    run_compress_pool(device, ceil, a.quick, res)
    save()
    if not a.no_sweep:
        for name, kw in [c for c in cases if c[0] in SWEPT]:
            try:
                args, flops, nbytes = sparse_case(device, **kw)
                sweep_sparse(name, args, flops, nbytes, ceil, a.quick, res)
            except Exception:
                traceback.print_exc()
                res.append({"case": name + " sweep", "error": traceback.format_exc()[-2000:]})
            save()
    print("goals (triton backend):", flush=True)
    doc["goals"] = goals(res)
    save()
    print(f"wrote {a.out} ({doc['wall_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
