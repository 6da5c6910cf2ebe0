"""``longattn.info()``: what can run on this machine, and why not."""

from __future__ import annotations

import os
import platform

import torch

from .backends import registry
from .memory import chunk_budget_bytes
from .ops.op import ops_of_backend


def _devices():
    yield torch.device("cpu")
    if torch.cuda.is_available():
        yield torch.device("cuda")
    npu = getattr(torch, "npu", None)  # present only when torch_npu was imported by the user
    if npu is not None and npu.is_available():
        yield torch.device("npu")


def info(print_report: bool = True) -> str:
    """Print (and return) versions, devices, backends with their availability, and dispatch order."""
    from . import __version__

    lines = [
        f"longattn {__version__}  (torch {torch.__version__}, python {platform.python_version()}, "
        f"{platform.machine()})",
        f"reference chunk budget: {chunk_budget_bytes() / 2**20:.0f} MiB (LONGATTN_CHUNK_MB)",
        f"forced backend: {os.environ.get(registry.ENV_VAR) or '(none)'} ({registry.ENV_VAR})",
        "devices: " + ", ".join(str(d) for d in _devices()),
        "backends:",
    ]
    for name in registry.backend_names():
        b = registry.get_backend(name)
        status = "available" if b.unavailable is None else f"unavailable: {b.unavailable}"
        where = "any device" if b.device_types is None else "/".join(b.device_types)
        lines.append(f"  - {name} [{where}]: {status}")
        lines.append(f"      {b.description}")
        ops = ops_of_backend(name)
        if ops:
            lines.append(f"      ops: {', '.join(ops)}")
    lines.append("default order:")
    for dev in _devices():
        lines.append(f"  {dev.type}: {' -> '.join(registry.default_order(dev))}")
    report = "\n".join(lines)
    if print_report:
        print(report)
    return report
