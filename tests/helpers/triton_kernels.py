"""Launching the Triton kernels directly (explicit split counts, tile configurations, entry ranges), for
the Triton-specific tests (tests/triton). Imports triton only when a function is called."""

from __future__ import annotations

import inspect

import torch

from tests import oracle
from tests.helpers.compress import pool_bound
from tests.helpers.device import DEVICE
from tests.tolerance import assert_close


def canonical(args: dict) -> dict:
    """The op's canonical keyword arguments (what a backend receives) from make_sparse_inputs."""
    a = dict(args)
    D = a["q"].shape[-1]
    if isinstance(a["kv"], torch.Tensor):
        a["kv"] = a["kv"].reshape(-1, D)
    for k in ("extra_kv", "extra_indices", "extra_topk_length"):
        a.setdefault(k, None)
    if a.get("softmax_scale") is None:
        a["softmax_scale"] = D**-0.5
    if a.get("attn_sink") is not None:
        a["attn_sink"] = a["attn_sink"].float()
    return a


def run_sparse_kernel(args: dict, num_splits=None, config=None):
    """The Triton sparse_attention kernel with ``num_splits`` (None: the heuristic) and ``config``."""
    from longattn.ops.sparse_attention import triton_sparse_attention as tsa

    return tsa.sparse_attention(**canonical(args), num_splits=num_splits, config=config)


def run_topk_kernel(q, w, k, ve, topk, per=None, bitonic=None, **kw):
    """indexer_topk on the Triton backend: through the dispatcher, or the kernel with ``per`` entries
    per program / the ``bitonic`` merge."""
    import longattn
    from longattn.ops.indexer import triton_indexer as ti

    q, w, k, ve = (x.to(DEVICE) for x in (q, w, k, ve))
    kw = {a: (v.to(DEVICE) if isinstance(v, torch.Tensor) else v) for a, v in kw.items()}
    if per is None and bitonic is None:
        return longattn.indexer_topk(q, w, k, ve, topk, backend="triton", **kw)
    return ti.indexer_topk(q, w, k, ve, topk, entries_per_program=per, bitonic=bitonic, **kw)


def check_pool_kernel(a, b, ratio, overlap, config=None):
    """The Triton compress_pool (``config``: its tiles) vs the oracle and the reference; returns the
    kernel's output (on the CPU)."""
    import longattn
    from longattn.ops.compress import triton_compress

    ref = longattn.compress_pool(a, b, ratio, overlap, backend="reference")
    if config is None:
        got = longattn.compress_pool(a.to(DEVICE), b.to(DEVICE), ratio, overlap, backend="triton").cpu()
    else:
        got = triton_compress.compress_pool(a.to(DEVICE), b.to(DEVICE), ratio, overlap, config=config).cpu()
    assert got.dtype == torch.float32 and got.shape == ref.shape
    bound = pool_bound(a, b, ratio)
    assert_close(got, oracle.compress_pool(a, b, ratio, overlap), bound, 0.0, "triton compress_pool vs oracle")
    assert_close(got, ref, 2 * bound, 0.0, "triton compress_pool vs reference")
    return got


def gpu_config(module, fn, *args, capability=(9, 0), **kw):
    """``fn(*args)`` of ``module`` as it answers for a GPU of compute ``capability`` (an H100 / H200 by
    default; ``AMD_TILES`` for an AMD GPU) outside the interpreter (the config functions return the
    interpreter's tiles whenever TRITON_INTERPRET=1). ``capability`` goes to ``fn`` when it takes one."""
    saved = module.interpreting
    module.interpreting = lambda: False
    try:
        if "capability" in inspect.signature(fn).parameters:
            kw["capability"] = capability
        return fn(*args, **kw)
    finally:
        module.interpreting = saved
