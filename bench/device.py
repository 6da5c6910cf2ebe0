"""Devices: which one to use, how to wait for it, how to read its memory counters.

CUDA and NPU (``torch_npu``) expose the same API under ``torch.cuda`` / ``torch.npu`` (events,
``synchronize``, ``max_memory_allocated``), so both go through ``accel(device)``. ``torch_npu`` is
imported only when an NPU is asked for (or auto-detected because the package is installed): importing
it needs CANN and changes how torch loads (docs/toolchain.md), so it is never a requirement.
"""

from __future__ import annotations

import importlib.util
import os
from typing import Optional

import torch

ACCEL_TYPES = ("cuda", "npu")


def _npu_available() -> bool:
    npu = getattr(torch, "npu", None)
    if npu is None and importlib.util.find_spec("torch_npu") is not None:
        try:
            import torch_npu  # noqa: F401  (registers torch.npu)
        except Exception:
            return False
        npu = getattr(torch, "npu", None)
    try:
        return bool(npu is not None and npu.is_available())
    except Exception:
        return False


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` -> cuda if available, else npu if torch_npu works, else cpu. Raises if a named
    accelerator is missing (with the reason)."""
    name = (name or "auto").lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _npu_available():
            return torch.device("npu")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda: torch.cuda.is_available() is False on this machine")
    if name == "npu" and not _npu_available():
        raise RuntimeError("--device npu: torch_npu is not installed or no NPU is available")
    if name not in ("cpu",) + ACCEL_TYPES:
        raise ValueError(f"unknown device {name!r}: use auto, cpu, cuda or npu")
    return torch.device(name)


def accel(device: torch.device):
    """``torch.cuda`` or ``torch.npu`` for an accelerator device, None for the CPU."""
    if device.type in ACCEL_TYPES:
        return getattr(torch, device.type)
    return None


def synchronize(device: torch.device) -> None:
    mod = accel(device)
    if mod is not None:
        mod.synchronize()


def device_name(device: torch.device) -> str:
    mod = accel(device)
    if mod is not None:
        try:
            return str(mod.get_device_name(device.index or 0))
        except Exception:
            return device.type
    return cpu_model()


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


def last_level_cache_bytes() -> Optional[int]:
    """Size of the largest CPU cache level (Linux sysfs), or None."""
    base = "/sys/devices/system/cpu/cpu0/cache"
    best = None
    try:
        for entry in os.listdir(base):
            try:
                with open(os.path.join(base, entry, "size")) as f:
                    s = f.read().strip()
            except OSError:
                continue
            mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(s[-1:].upper(), 1)
            val = int(s[:-1] if s[-1:].isalpha() else s) * mult
            best = val if best is None else max(best, val)
    except (OSError, ValueError):
        return None
    return best


def available_memory_bytes(device: torch.device) -> Optional[int]:
    """Free memory on the device (accelerators: mem_get_info) or MemAvailable of the host."""
    mod = accel(device)
    if mod is not None:
        try:
            free, _total = mod.mem_get_info()
            return int(free)
        except Exception:
            return None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def total_memory_bytes() -> Optional[int]:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None
