"""The ``ascend`` backend: longattn's Ascend C kernels on an Ascend NPU (torch_npu).

The same kernel sources as ``ascend_sim`` (``ascend_c/<op>/op_kernel``), built for the NPU by
``ascend_c/build_npu.sh`` (CMake, needs a CANN toolkit in ``ASCEND_HOME_PATH``; or
``LONGATTN_BUILD_NPU=1 pip install --no-build-isolation .``) into ``liblongattn_ascend_npu.so``,
which registers the raw kernel ops ``torch.ops.longattn_ascend.*`` and NPU implementations of the
public ``torch.ops.longattn.*`` ops (csrc/ascend_npu).

Status: written, never compiled or run on an NPU (no CANN toolkit or device was available); the
kernels themselves are verified on the CPU emulator only (``backend="ascend_sim"``).

torch_npu is imported only on the first op call, and only when it is installed; importing this
module imports neither torch_npu nor the library. The library is looked for in
``$LONGATTN_ASCEND_NPU_LIB``, next to this package (``longattn/_lib``) and in ``ascend_c/build_npu``.
"""

from __future__ import annotations

import functools
import importlib.util
import os
from pathlib import Path
from typing import Optional

import torch

from . import ascend_sim as _sim  # the same kernels and tilings: the same support matrix
from .base import Backend, OpImpl

LIB_NAME = "liblongattn_ascend_npu.so"
REPO = Path(__file__).resolve().parents[3]


def library_path() -> Optional[Path]:
    candidates = [os.environ.get("LONGATTN_ASCEND_NPU_LIB")]
    candidates += [
        str(Path(__file__).resolve().parents[1] / "_lib" / LIB_NAME),
        str(REPO / "ascend_c" / "build_npu" / LIB_NAME),
    ]
    for c in candidates:
        if c and Path(c).is_file():
            return Path(c)
    return None


def _unavailable() -> Optional[str]:
    if importlib.util.find_spec("torch_npu") is None:
        return "torch_npu is not installed (the NPU path needs torch_npu and a CANN toolkit)"
    if library_path() is None:
        return (
            f"the NPU kernels are not built ({LIB_NAME} not found): run ascend_c/build_npu.sh with ASCEND_HOME_PATH "
            "set, or LONGATTN_BUILD_NPU=1 pip install --no-build-isolation ."
        )
    return None


@functools.cache
def ops():
    """Import torch_npu, load the kernel library (first call only) and return torch.ops.longattn_ascend."""
    problem = _unavailable()
    if problem is not None:
        raise RuntimeError(f"ascend backend unavailable: {problem}")
    import torch_npu  # noqa: F401  (registers the NPU device with torch)

    torch.ops.load_library(str(library_path()))
    return torch.ops.longattn_ascend


def _append_kv(pool, rows, slot_mapping):
    ops().append_kv(*_sim.pool_args(pool), rows, slot_mapping)


def _sparse_attention(**args):
    return tuple(ops().sparse_attention(*_sim.sparse_attention_args(**args)))


def _compress_kv(**args):
    ops().compress_kv(*_sim.compress_kv_args(**args))


def _indexer_topk(q, weights, index_k, visible_end, topk, block_table=None, seq_ids=None, return_slots=False):
    indices, lengths = ops().indexer(
        q, weights, index_k, visible_end, int(topk), block_table, seq_ids, bool(return_slots), False
    )
    return indices, lengths


def _indexer_logits(q, weights, index_k, visible_end, block_table=None, seq_ids=None):
    return ops().indexer(q, weights, index_k, visible_end, 1, block_table, seq_ids, False, True)[0]


BACKEND = Backend(
    name="ascend",
    description="Ascend C kernels on an Ascend NPU via torch_npu (written, never compiled or run on an NPU)",
    device_types=("npu", "privateuseone"),
    ops={
        "sparse_attention": OpImpl(_sparse_attention, _sim._sparse_attention_reasons),
        "append_kv": OpImpl(_append_kv, _sim._append_kv_reasons),
        "compress_kv": OpImpl(_compress_kv, _sim._compress_kv_reasons),
        "indexer_topk": OpImpl(_indexer_topk, _sim._indexer_reasons),
        "indexer_logits": OpImpl(_indexer_logits, _sim._indexer_reasons),
    },
    unavailable=_unavailable(),
)
