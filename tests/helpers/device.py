"""The device the tests run the ops on (one place for this logic).

tests/conftest.py sets ``TRITON_INTERPRET=1`` before anything imports triton when there is no CUDA
device. With a CUDA device and ``TRITON_INTERPRET`` not "1" (e.g. ``TRITON_INTERPRET=0``, as
bench/gpu_check.sh sets it) the ops run on the GPU: every backend is tried on CUDA tensors (those that
run on CPU tensors only skip with their own reason). Otherwise the ops run on CPU tensors, the Triton
kernels through the interpreter. ``LONGATTN_TEST_DEVICE=npu`` (an Ascend host with torch_npu) runs them on
NPU tensors. Inputs are built on the CPU and moved to ``DEVICE``.
"""

from __future__ import annotations

import importlib.util
import os

import torch

HAS_TRITON = importlib.util.find_spec("triton") is not None
INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
ON_GPU = torch.cuda.is_available() and not INTERPRET
DEVICE = "cuda" if ON_GPU else "cpu"
# An Ascend NPU host (bench/npu_check.sh): LONGATTN_TEST_DEVICE=npu runs the ops on NPU tensors (torch_npu
# imported here, only then); every backend that cannot run on them skips with its own reason.
ON_NPU = os.environ.get("LONGATTN_TEST_DEVICE", "").lower() == "npu"
if ON_NPU:
    import torch_npu  # noqa: F401  (registers the "npu" device)

    if not torch.npu.is_available():
        raise RuntimeError("LONGATTN_TEST_DEVICE=npu, but torch.npu.is_available() is False")
    DEVICE = "npu"
CAN_RUN_TRITON = HAS_TRITON and (INTERPRET or ON_GPU)
TRITON_SKIP_REASON = (
    "triton is not installed: the Triton backend is not tested"
    if not HAS_TRITON
    else "no CUDA device and TRITON_INTERPRET != 1: the Triton kernels cannot run here"
)


def to_device(args: dict) -> dict:
    """The tensors of ``args`` on ``DEVICE`` (other values unchanged)."""
    return {k: (v.to(DEVICE) if isinstance(v, torch.Tensor) else v) for k, v in args.items()}


def dev(*xs):
    """The tensors among ``xs`` on ``DEVICE`` (a list, other values unchanged)."""
    return [x.to(DEVICE) if isinstance(x, torch.Tensor) else x for x in xs]
