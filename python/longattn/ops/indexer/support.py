"""What each backend can do for ``indexer_logits`` / ``indexer_topk`` (declarations only).

reference: every valid call. triton: top-k up to ``MAX_TOPK``. ascend_sim / ascend: the kernel's
limits in ``ascend.py`` (heads, Di, entries, top-k).
"""

from __future__ import annotations

import functools
from typing import List

import torch

from ...backends.base import Impl
from ...backends.triton import FP8_MIN_CAPABILITY, interpreting
from . import ascend

MAX_TOPK = 2048  # Triton: the running top-k list is kept in registers (read by the kernel)


def triton_logits_reasons(inp) -> List[str]:
    if inp.fp8 and inp.device.type == "cuda" and not interpreting():
        if torch.version.hip:
            return ["FP8 index-key pools are not read on AMD GPUs (the record is e4m3fn; MI300's is e4m3fnuz)"]
        if torch.cuda.get_device_capability(inp.device) < FP8_MIN_CAPABILITY:
            return ["FP8 index-key pools need a GPU with native e4m3 conversion (compute capability >= 8.9)"]
    return []


def triton_topk_reasons(inp) -> List[str]:
    out = triton_logits_reasons(inp)
    if inp.topk > MAX_TOPK:
        out.append(f"topk={inp.topk} > {MAX_TOPK} (the running top-k list is kept in registers)")
    return out


_KERNELS = "longattn.ops.indexer."
LOGITS_IMPLS = {
    "reference": Impl(_KERNELS + "reference:run_logits"),
    "triton": Impl(_KERNELS + "triton_indexer:run_logits", triton_logits_reasons),
    "ascend_sim": Impl(functools.partial(ascend.run_logits, "ascend_sim"), ascend.reasons),
    "ascend": Impl(functools.partial(ascend.run_logits, "ascend"), ascend.reasons),
}
TOPK_IMPLS = {
    "reference": Impl(_KERNELS + "reference:run_topk"),
    "triton": Impl(_KERNELS + "triton_indexer:run_topk", triton_topk_reasons),
    "ascend_sim": Impl(functools.partial(ascend.run_topk, "ascend_sim"), ascend.reasons),
    "ascend": Impl(functools.partial(ascend.run_topk, "ascend"), ascend.reasons),
}
