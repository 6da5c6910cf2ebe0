"""Machine ceilings measured in the same run as the cases.

- Copy bandwidth: ``dst.copy_(src)`` of a large buffer (256 MiB on CPU, 1 GiB on accelerators;
  ``--quick``: 64 MiB), counting read + write (2 x size per copy). This is the memory ceiling every
  memory-bound case is compared with.
- Matmul rate: square ``a @ b`` per dtype: fp32 and bf16 on CPU (n = 4096; quick: 1024), bf16 and
  fp32 on accelerators (n = 8192 / 4096; TF32 left as torch has it, recorded). The compute ceiling of
  a run is the rate of the dtype its backend computes in (``compute_dtype``). On CPU the size is doubled
  from 256 only while the next product is estimated within ``CPU_MATMUL_CALL_S`` (``matmul_size``): a
  CPU without native bf16 (an AMD EPYC without AVX512-BF16: ~0.4 GFLOP/s, torch's fallback) would
  otherwise spend ~25 minutes on the 4096^3 bf16 products; the size used is recorded ("shape").

Rates use the median sample, like the cases they are compared with; the best sample is recorded too.
"""

from __future__ import annotations

import time
from typing import Dict

import torch

from .timing import TimingPolicy, time_fn

MiB = 1 << 20

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def copy_bandwidth(device: torch.device, nbytes: int, policy: TimingPolicy) -> Dict[str, object]:
    n = nbytes // 4
    src = torch.empty(n, dtype=torch.float32, device=device).fill_(1.5)
    dst = torch.empty(n, dtype=torch.float32, device=device).fill_(0.5)
    st = time_fn(lambda: dst.copy_(src), device, policy)
    moved = 2.0 * n * 4
    return {
        "bytes_per_s": moved / st["median_s"],
        "best_bytes_per_s": moved / st["min_s"],
        "buffer_bytes": n * 4,
        "bytes_per_call": moved,
        "method": "dst.copy_(src), read + write counted",
        "time": {k: v for k, v in st.items() if k != "samples_s"},
    }


# The longest one CPU matmul of the ceilings may take (seconds, extrapolated from the half size): fp32
# 4096^3 takes 0.4-0.9 s on the 2-core CI machines, so only a slow dtype shrinks
CPU_MATMUL_CALL_S = 2.0


def matmul_size(device: torch.device, dtype: torch.dtype, n_max: int, call_s: float = CPU_MATMUL_CALL_S) -> int:
    """``n_max`` on accelerators; on CPU the size doubles from 256 (timed: the faster of two products)
    while 8x the last product's time, the estimate of the next, stays within ``call_s``."""
    if device.type != "cpu" or n_max <= 256:
        return n_max

    def product_s(n: int) -> float:
        a = torch.ones(n, n, dtype=dtype)
        best = float("inf")
        for _ in range(2):
            t0 = time.perf_counter()
            torch.matmul(a, a)
            best = min(best, time.perf_counter() - t0)
        return best

    n = 256
    while n < n_max and 8 * product_s(n) <= call_s:
        n *= 2
    return n


def matmul_rate(device: torch.device, dtype: torch.dtype, n: int, policy: TimingPolicy) -> Dict[str, object]:
    g = torch.Generator(device="cpu").manual_seed(0)
    a = torch.randn(n, n, generator=g).to(device=device, dtype=dtype)
    b = torch.randn(n, n, generator=g).to(device=device, dtype=dtype)
    st = time_fn(lambda: torch.matmul(a, b), device, policy)
    flops = 2.0 * n * n * n
    out = {
        "flops_per_s": flops / st["median_s"],
        "best_flops_per_s": flops / st["min_s"],
        "shape": [n, n, n],
        "time": {k: v for k, v in st.items() if k != "samples_s"},
    }
    if device.type == "cuda" and dtype == torch.float32:
        out["allow_tf32"] = bool(torch.backends.cuda.matmul.allow_tf32)
    return out


def measure(device: torch.device, quick: bool = False, log=print) -> Dict[str, object]:
    """All ceilings of this device: {"copy": ..., "matmul": {"fp32": ..., "bf16": ...}}."""
    pol = TimingPolicy(warmup=1, min_repeats=3, max_repeats=10, min_time_s=0.3, max_time_s=5.0, cold_cache=False)
    if quick:
        pol = TimingPolicy(warmup=1, min_repeats=2, max_repeats=3, min_time_s=0.0, max_time_s=1.0, cold_cache=False)
    accel = device.type != "cpu"
    copy_bytes = (64 * MiB) if quick else (1024 * MiB if accel else 256 * MiB)
    out: Dict[str, object] = {"device": str(device)}
    log(f"ceilings: copy bandwidth ({copy_bytes // MiB} MiB buffer)...")
    out["copy"] = copy_bandwidth(device, copy_bytes, pol)
    out["matmul"] = {}
    sizes = {"fp32": 1024 if quick else 4096, "bf16": 1024 if quick else 4096}
    if accel:
        sizes = {"bf16": 2048 if quick else 8192, "fp32": 1024 if quick else 4096}
    for name, n_max in sizes.items():
        n = matmul_size(device, DTYPES[name], n_max)
        why = f" (one {n_max}^3 product: over {CPU_MATMUL_CALL_S} s)" if n < n_max else ""
        log(f"ceilings: {name} matmul {n}x{n}x{n}{why}...")
        try:
            out["matmul"][name] = matmul_rate(device, DTYPES[name], n, pol)
        except Exception as exc:  # a dtype the device cannot multiply: say so, go on
            out["matmul"][name] = {"error": f"{type(exc).__name__}: {exc}"}
    return out


def bandwidth(ceil: Dict[str, object]) -> float:
    return float(ceil["copy"]["bytes_per_s"])


def peak_flops(ceil: Dict[str, object], dtype_name: str):
    m = ceil.get("matmul", {}).get(dtype_name) or {}
    return m.get("flops_per_s")
