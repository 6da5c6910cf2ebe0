"""The ``ascend_sim`` backend: longattn's Ascend C kernels, run on CPU tensors by the emulator.

The kernels in ``ascend_c/<op>/op_kernel`` are compiled with g++ against the clean-room Ascend C
CPU emulator (``ascend_c/emu``, ``-DLONGATTN_ASCEND_EMU``) into a torch extension
(``csrc/ascend_sim``). Every AI core runs as threads (1 AIC + 2 AIV per core for mixed kernels)
with the emulator's strict checks on: an out-of-bounds access, a missing pipe synchronisation or an
over-budget buffer aborts the process with a ``[longattn-emu] FATAL`` message (run untrusted
configurations in a subprocess).

Nothing is compiled at import: the extension is built on first use with
``torch.utils.cpp_extension.load`` into ``$TORCH_EXTENSIONS_DIR/longattn_ascend_sim`` (default
``~/.cache/longattn/torch_extensions``), or ahead of time as ``longattn._ascend_sim`` by
``LONGATTN_BUILD_ASCEND_SIM=1 pip install --no-build-isolation .``. It is a correctness vehicle
(slow: one scalar loop per emulated instruction), not a fast CPU backend; it is therefore never in
the default dispatch order: select it with ``backend="ascend_sim"``.

Environment: ``LONGATTN_ASCEND_SIM_CORES`` (emulated AI cores per launch, default 4),
``LONGATTN_ASCEND_SIM_ASAN=1`` (build and load an AddressSanitizer + UndefinedBehaviorSanitizer
variant; the process must be started with libasan preloaded), ``LONGATTN_ASCEND_SIM_VERBOSE=1``
(show the compiler output).
"""

from __future__ import annotations

import functools
import importlib.util
import os
import shutil
from pathlib import Path
from typing import List, Optional

import torch

from .base import Backend, OpImpl

REPO = Path(__file__).resolve().parents[3]
ASCEND_C = REPO / "ascend_c"
CSRC = REPO / "csrc" / "ascend_sim"
SOURCES = (
    "ascend_sim_ext.cpp",
    "append_kv_emu.cpp",
    "sparse_attention_emu.cpp",
    "compress_kv_emu.cpp",
    "indexer_topk_emu.cpp",
)
EXT_NAME = "longattn_ascend_sim"
DEFAULT_CORES = 4

# sparse_attention limits (mirror ascend_c/sparse_attention/op_host/sparse_attention_tiling.h;
# tests/ascend/test_ascend_sim.py checks the mirror against the C++ tiling).
SA_BLOCK_KEYS = 64
SA_MAX_HEADS_PER_TASK = 64
SA_OUT_ROWS = 4
UB_BYTES = 192 * 1024 - 8 * 1024 - 256
L1_BYTES, L0A_BYTES, L0C_BYTES = 512 * 1024, 64 * 1024, 128 * 1024
FP8_HEAD_DIM = 512
FP8_QUANTIZER_UB = 16512  # kFp8QuantizerUbBytes (ascend_c/common/longattn_types.h)
IDX_MAX_TOPK, IDX_MAX_HEADS, IDX_MAX_ENTRIES = 1024, 128, 0x00FFFFFF


def num_cores() -> int:
    return max(1, int(os.environ.get("LONGATTN_ASCEND_SIM_CORES", DEFAULT_CORES)))


def compiler() -> Optional[str]:
    """The C++ compiler the extension is built with: $CXX if it resolves, else g++ / c++ on PATH."""
    cxx = os.environ.get("CXX")
    if cxx:
        return shutil.which(cxx)
    return shutil.which("g++") or shutil.which("c++")


def _prebuilt() -> bool:
    return importlib.util.find_spec("longattn._ascend_sim") is not None


def _unavailable() -> Optional[str]:
    if _prebuilt():
        return None
    missing = [str(p) for p in [ASCEND_C / "emu" / "ascendc_emu.h"] + [CSRC / s for s in SOURCES] if not p.exists()]
    if missing:
        return (
            "the Ascend C kernel sources are not present (a source checkout is needed; missing "
            + ", ".join(missing[:2])
            + ")"
        )
    if compiler() is None:
        cxx = os.environ.get("CXX")
        found = f"CXX={cxx!r} was not found" if cxx else "no g++ / c++ on PATH"
        return (
            f"no C++ compiler ({found}; install g++ >= 9 or set CXX): the emulator extension is compiled on first use"
        )
    if shutil.which("ninja") is None and importlib.util.find_spec("ninja") is None:
        return "ninja is not installed (pip install ninja): torch.utils.cpp_extension needs it to build the emulator"
    return None


def build_directory(name: str = EXT_NAME) -> Path:
    root = os.environ.get("TORCH_EXTENSIONS_DIR") or os.path.join(
        os.path.expanduser("~"), ".cache", "longattn", "torch_extensions"
    )
    path = Path(root) / name
    path.mkdir(parents=True, exist_ok=True)
    return path


def build_flags(asan: bool = False):
    """Compiler / linker flags of the emulator extension (also used by setup.py)."""
    cflags = ["-DLONGATTN_ASCEND_EMU", "-Wall", "-Werror", f"-I{REPO}", "-pthread"]
    ldflags = ["-pthread"]
    if asan:  # AddressSanitizer + UndefinedBehaviorSanitizer (any UB report aborts)
        cflags += ["-O0", "-fsanitize=address,undefined", "-fno-sanitize-recover=undefined", "-fno-omit-frame-pointer"]
        ldflags += ["-fsanitize=address,undefined"]
    else:
        cflags += ["-O2"]
    return cflags, ldflags


@functools.cache
def extension():
    """The emulator extension: the ahead-of-time build (``longattn._ascend_sim``, from
    ``LONGATTN_BUILD_ASCEND_SIM=1 pip install``) if present, else built on first use (cached on disk)."""
    asan = os.environ.get("LONGATTN_ASCEND_SIM_ASAN") == "1"
    if not asan and _prebuilt():
        return importlib.import_module("longattn._ascend_sim")
    problem = _unavailable()
    if problem is not None:
        raise RuntimeError(f"ascend_sim backend unavailable: {problem}")
    from torch.utils import cpp_extension

    name = EXT_NAME + ("_asan" if asan else "")
    cflags, ldflags = build_flags(asan)
    if os.environ.get("CXX") is None:
        os.environ["CXX"] = compiler()  # cpp_extension reads CXX
    try:
        return cpp_extension.load(
            name=name,
            sources=[str(CSRC / s) for s in SOURCES],
            extra_cflags=cflags,
            extra_ldflags=ldflags,
            build_directory=str(build_directory(name)),
            verbose=os.environ.get("LONGATTN_ASCEND_SIM_VERBOSE") == "1",
        )
    except Exception as exc:  # the compiler output is in the message; say what failed and how to see more
        raise RuntimeError(
            f"building the Ascend C emulator extension ({name}) with {compiler()} failed "
            f"(LONGATTN_ASCEND_SIM_VERBOSE=1 shows the build log): {exc}"
        ) from exc


# ---------------------------------------------------------------------------------------------------
# what the kernels cannot do (cheap checks, no compilation)
# ---------------------------------------------------------------------------------------------------
_ELEM = {torch.float32: 4, torch.bfloat16: 2, torch.float16: 2}


def _al(x: int, a: int) -> int:
    return -(-x // a) * a


def sa_ub_bytes(mh: int, D: int, sz: int, g: int, r: int) -> int:
    mh8 = _al(max(mh, 1), 8)
    b = _al(mh * D * 4, 32) + _al(mh * SA_BLOCK_KEYS * 4, 32) + _al(mh * SA_BLOCK_KEYS * sz, 32)
    b += _al(mh * SA_BLOCK_KEYS * 4, 32) + _al(_al(mh * SA_BLOCK_KEYS, 256) // 8, 32)
    b += 10 * 64 * 4 + 3 * _al(mh8 * 8 * 4, 32)
    b += 2 * _al(r * D * 4, 32) + 2 * _al(r * D * sz, 32) + 2 * _al(mh8 * 4, 32) + 2 * _al(g * D * sz, 32)
    if sz == 4:
        b += 2 * _al(D * g * 4, 32)
    return b


def sa_l1_bytes(mp: int, D: int, sz: int) -> int:
    b = mp * D * sz + 2 * SA_BLOCK_KEYS * D * sz + mp * SA_BLOCK_KEYS * sz
    return b + (D * SA_BLOCK_KEYS * 4 if sz == 4 else 0)


def sa_heads_per_task(H: int, D: int, dtype: torch.dtype) -> int:
    """Heads per task of the sparse_attention tiling (0: no tiling fits this D)."""
    if H <= 0 or D <= 0 or D % 64 or dtype not in _ELEM:
        return 0
    sz = _ELEM[dtype]
    k_tile = d_chunk = min(D, 128 if sz == 4 else 256)
    g = 8 if sz == 4 else 16
    mg = min(SA_MAX_HEADS_PER_TASK, H)
    while True:
        mp, mh = _al(mg, 16), -(-mg // 2)
        if (
            sa_ub_bytes(mh, D, sz, g, SA_OUT_ROWS) <= UB_BYTES
            and sa_l1_bytes(mp, D, sz) <= L1_BYTES
            and 2 * mp * max(k_tile, SA_BLOCK_KEYS) * sz <= L0A_BYTES
            and 2 * mp * max(d_chunk, SA_BLOCK_KEYS) * 4 <= L0C_BYTES
        ):
            return mg
        if mg <= 16:
            return 0
        mg = (mg - 1) // 16 * 16


def _float_pool_problem(name: str, pool, dtype: torch.dtype) -> Optional[str]:
    if not isinstance(pool, torch.Tensor):
        return f"`{name}` is a {type(pool).__name__}: the kernel reads float tensor pools only (FP8 pools: not yet)"
    if pool.dtype != dtype:
        return f"`{name}` dtype {str(pool.dtype).replace('torch.', '')} differs from q's (the kernel takes one dtype)"
    return None


def _sparse_attention_reasons(q, kv, indices, extra_kv=None, **_) -> List[str]:
    reasons = []
    T, H, D = q.shape
    if D % 64:
        reasons.append(f"head dim D={D} is not a multiple of 64 (64-column vector repeats and 32-B rows)")
    elif sa_heads_per_task(H, D, q.dtype) == 0:
        reasons.append(f"head dim D={D} does not fit the on-chip buffers for {str(q.dtype).replace('torch.', '')}")
    for name, pool in (("kv", kv), ("extra_kv", extra_kv)):
        if pool is not None:
            problem = _float_pool_problem(name, pool, q.dtype)
            if problem:
                reasons.append(problem)
            elif pool.shape[0] >= 2**31:
                reasons.append(f"`{name}` has {pool.shape[0]} rows (int32 slots)")
    return reasons


def _is_fp8_pool(pool) -> bool:
    from ..cache.fp8 import Fp8KVPool

    return isinstance(pool, Fp8KVPool)


def _append_kv_reasons(pool, rows, slot_mapping, **_) -> List[str]:
    if isinstance(pool, torch.Tensor):
        return [] if pool.numel() < 2**31 else ["the pool has 2**31 or more elements (int32 offsets)"]
    if _is_fp8_pool(pool):
        return [] if rows.shape[1] == FP8_HEAD_DIM else [f"FP8 pools take rows of {FP8_HEAD_DIM}"]
    return [f"cannot write {type(pool).__name__} pools (float tensors and Fp8KVPool only)"]


def compress_ub_bytes(d: int, W: int, in_size: int, R: int, fp8: bool, out_size: int) -> int:
    """UB bytes of a compress_kv AIV (mirrors CompressKvUbBytes in ascend_c/compress_kv/op_host)."""
    d_pad, d_v, w_pad = _al(d, 16), _al(d, 64), _al(W, 16)
    b = 2 * _al(2 * d_pad * in_size, 32) + 2 * _al(2 * d_pad * 4, 32)
    b += _al(8 * d_v * 4, 32) + _al(d_v // 8, 32) + _al(d_pad * 4, 32) + 512
    b += _al(2 * _al(max(R // 2, 1), 8) * 4, 32) + _al(5 * _al(max(R, 8), 8) * 4, 32)
    b += _al(2 * w_pad * in_size, 32) + _al(2 * W * 4, 32)
    b += 2 * _al(576 + 32, 32) + FP8_QUANTIZER_UB if fp8 else 2 * _al(d_pad * out_size, 32)
    return b


def _compress_kv_reasons(a, b, ratio, overlap, out, rope_inv_freq, **_) -> List[str]:
    reasons = []
    d = a.shape[1] // (2 if overlap else 1)
    R = 2 * rope_inv_freq.shape[0]
    if d % 8:
        reasons.append(f"entry width d={d} is not a multiple of 8 (32-B aligned fp32 rows)")
    if d > 4096:
        reasons.append(f"entry width d={d} > 4096 (UB)")
    elif not reasons:
        in_size = a.element_size() if a.dtype == b.dtype else 4
        fp8 = not isinstance(out, torch.Tensor)
        ub = compress_ub_bytes(d, a.shape[1], in_size, R, fp8, 1 if fp8 else out.element_size())
        if ub > UB_BYTES:
            reasons.append(f"entry width d={d} needs {ub} bytes of UB per AIV (> {UB_BYTES})")
    if (d - R) % 8:
        reasons.append(f"the {R} rope dims must start at a multiple of 8 (d - R = {d - R})")
    if not isinstance(out, torch.Tensor):
        if not _is_fp8_pool(out):
            reasons.append(f"cannot write {type(out).__name__} pools (float tensors and Fp8KVPool only)")
    for name, x in (("a", a), ("b", b)):
        if x.numel() >= 2**31:
            reasons.append(f"`{name}` has 2**31 or more elements (int32 offsets)")
    return reasons


def _indexer_reasons(q, index_k, block_table=None, topk=None, **_) -> List[str]:
    reasons = []
    T, Hi, Di = q.shape
    if Hi > IDX_MAX_HEADS:
        reasons.append(f"Hi={Hi} > {IDX_MAX_HEADS} heads (the [Hi, 128] score tile must fit L0C twice)")
    if Di % 16:
        reasons.append(f"Di={Di} is not a multiple of 16 (cube fractals)")
    # q and two 128-entry key tiles in L1 (mixed q / index_k dtypes run in fp32: the host widens both)
    sz = _ELEM.get(q.dtype, 4) if q.dtype == index_k.dtype else 4
    if _al(Hi, 16) * Di * sz + 2 * 128 * Di * sz > L1_BYTES:
        reasons.append(f"Di={Di} with {sz}-byte elements does not fit L1 (q and two key tiles)")
    n = index_k.shape[0] if block_table is None else block_table.shape[1] * index_k.shape[1]
    if n >= IDX_MAX_ENTRIES:
        reasons.append(f"{n} entries >= 2**24 - 1 (ids must be exact in fp32 sort keys)")
    if topk is not None and topk > IDX_MAX_TOPK:
        reasons.append(f"topk={topk} > {IDX_MAX_TOPK} (the running lists must fit UB)")
    return reasons


# ---------------------------------------------------------------------------------------------------
# entry points
# ---------------------------------------------------------------------------------------------------
# The kernels' entry points take the same positional arguments in both builds (this emulator build adds
# the AI-core count last); the ``ascend`` backend reuses these marshalling functions.
def pool_args(pool) -> tuple:
    """(tensor, page size) of a pool: a float pool as it is (page 0: rows addressed by slot), an FP8
    pool as its uint8 pages and their size."""
    return (pool, 0) if isinstance(pool, torch.Tensor) else (pool.data, pool.page_size)


def sparse_attention_args(
    q, kv, indices, topk_length, extra_kv, extra_indices, extra_topk_length, attn_sink, softmax_scale
) -> tuple:
    return (q, kv, indices, topk_length, extra_kv, extra_indices, extra_topk_length, attn_sink, float(softmax_scale))


def compress_kv_args(
    a, b, positions, token_rows, ratio, overlap, state, state_block_table, out, out_block_table, norm_weight, eps,
    rope_inv_freq,
) -> tuple:  # fmt: skip
    return (a, b, positions, token_rows, int(ratio), bool(overlap), state, state_block_table, *pool_args(out),
            out_block_table, norm_weight, float(eps), rope_inv_freq)  # fmt: skip


def _append_kv(pool, rows, slot_mapping):
    extension().append_kv(*pool_args(pool), rows, slot_mapping, num_cores())


def _sparse_attention(**args):
    return extension().sparse_attention(*sparse_attention_args(**args), num_cores())


def _compress_kv(**args):
    extension().compress_kv(*compress_kv_args(**args), num_cores())


def _indexer_topk(q, weights, index_k, visible_end, topk, block_table=None, seq_ids=None, return_slots=False):
    indices, lengths = extension().indexer(
        q, weights, index_k, visible_end, int(topk), block_table, seq_ids, bool(return_slots), False, num_cores()
    )
    return indices, lengths


def _indexer_logits(q, weights, index_k, visible_end, block_table=None, seq_ids=None):
    return extension().indexer(q, weights, index_k, visible_end, 1, block_table, seq_ids, False, True, num_cores())[0]


BACKEND = Backend(
    name="ascend_sim",
    description="Ascend C kernels on the CPU emulator (ascend_c/emu; slow, for correctness; built on first use)",
    device_types=("cpu",),
    ops={
        "sparse_attention": OpImpl(_sparse_attention, _sparse_attention_reasons),
        "append_kv": OpImpl(_append_kv, _append_kv_reasons),
        "compress_kv": OpImpl(_compress_kv, _compress_kv_reasons),
        "indexer_topk": OpImpl(_indexer_topk, _indexer_reasons),
        "indexer_logits": OpImpl(_indexer_logits, _indexer_reasons),
    },
    unavailable=_unavailable(),
)
