"""Backend registry and dispatch.

Selection for one op call (``select``):

1. ``backend="name"`` wins, else the environment variable ``LONGATTN_BACKEND``; a forced backend
   either runs the call or raises.
2. Otherwise the device decides the order: cuda -> triton, reference; npu -> ascend, reference;
   anything else -> reference. The first backend that accepts the call runs it; if a preferred
   backend that implements the op declines the call, a warning (once per reason) says why.
3. When no backend can run a call, ``BackendError`` lists every registered backend with its reasons.

Backends are registered by module path and imported lazily on first use, so ``import longattn``
imports no backend code (and never triton or torch_npu).
"""

from __future__ import annotations

import importlib
import os
import threading
import warnings
from typing import Dict, List, Optional, Tuple

import torch

from .base import Backend

ENV_VAR = "LONGATTN_BACKEND"

# name -> module that defines ``BACKEND: Backend`` (imported on first use).
_MODULES: Dict[str, str] = {
    "reference": "longattn.backends.reference",
    "triton": "longattn.backends.triton",
    "ascend_sim": "longattn.backends.ascend_sim",
    "ascend": "longattn.backends.ascend",
}

# Default preference per torch device type.
DEFAULT_ORDER: Dict[str, Tuple[str, ...]] = {
    "cuda": ("triton", "reference"),
    "npu": ("ascend", "reference"),
    "privateuseone": ("ascend", "reference"),
}
FALLBACK_ORDER: Tuple[str, ...] = ("reference",)

_loaded: Dict[str, Backend] = {}
_lock = threading.Lock()
_warned: set = set()


class BackendError(NotImplementedError):
    """No backend can run this call (the message lists every backend and why it declined)."""


def register_backend(name: str, module: str) -> None:
    """Register (or re-point) a backend implemented in ``module`` (which defines ``BACKEND``)."""
    with _lock:
        _MODULES[name] = module
        _loaded.pop(name, None)


def backend_names() -> List[str]:
    return list(_MODULES)


def get_backend(name: str) -> Backend:
    """Import and return a registered backend. A backend whose module fails to import is returned as
    an unavailable placeholder carrying the import error as its reason."""
    if name not in _MODULES:
        raise ValueError(f"unknown backend {name!r}; registered backends: {', '.join(_MODULES)}")
    with _lock:
        if name not in _loaded:
            try:
                backend = importlib.import_module(_MODULES[name]).BACKEND
            except Exception as exc:  # an optional backend may fail to import; say why, don't crash
                backend = Backend(
                    name=name,
                    description=f"(failed to load {_MODULES[name]})",
                    device_types=None,
                    ops={},
                    unavailable=f"failed to load: {type(exc).__name__}: {exc}",
                )
            _loaded[name] = backend
        return _loaded[name]


def requested_backend(backend: Optional[str]) -> Optional[str]:
    """The explicitly requested backend name (argument first, then the environment), or None."""
    name = backend if backend is not None else os.environ.get(ENV_VAR) or None
    if name is not None and name not in _MODULES:
        source = "backend=" if backend is not None else f"{ENV_VAR}="
        raise ValueError(f"{source}{name!r} is not a backend; registered backends: {', '.join(_MODULES)}")
    return name


def default_order(device: torch.device) -> Tuple[str, ...]:
    return tuple(n for n in DEFAULT_ORDER.get(device.type, FALLBACK_ORDER) if n in _MODULES)


def select(op: str, device: torch.device, args: Dict[str, object], backend: Optional[str] = None):
    """Return the implementation of ``op`` that runs these canonical ``args``."""
    forced = requested_backend(backend)
    order = (forced,) if forced is not None else default_order(device)
    declined: List[Tuple[str, List[str]]] = []
    for name in order:
        b = get_backend(name)
        reasons = b.reasons(op, device, args)
        if not reasons:
            if declined and op in get_backend(declined[0][0]).ops:
                _warn_fallback(op, name, declined[0])
            return b.ops[op].fn
        declined.append((name, reasons))
    raise BackendError(_explain(op, device, args, order, forced))


def _warn_fallback(op: str, chosen: str, declined: Tuple[str, List[str]]) -> None:
    msg = f"longattn.{op}: backend {declined[0]!r} declined ({'; '.join(declined[1])}); using {chosen!r}"
    if msg not in _warned:
        _warned.add(msg)
        warnings.warn(msg, RuntimeWarning, stacklevel=4)


def _describe_args(args: Dict[str, object]) -> str:
    parts = []
    for k, v in args.items():
        if isinstance(v, torch.Tensor):
            parts.append(f"{k}={list(v.shape)} {str(v.dtype).replace('torch.', '')}")
        elif v is not None and not callable(v):
            parts.append(f"{k}={type(v).__name__}" if hasattr(v, "__dict__") else f"{k}={v!r}")
    return ", ".join(parts)


def _explain(op, device, args, order, forced) -> str:
    how = f"backend {forced!r} was requested" if forced else f"default order for {device.type}: {', '.join(order)}"
    lines = [f"longattn.{op}: no backend can run this call ({how}).", f"  call: {_describe_args(args)}"]
    for name in _MODULES:
        b = get_backend(name)
        reasons = b.reasons(op, device, args)
        if not reasons:
            reasons = [f"not tried ({how}); select it with backend={name!r}"]
        lines.append(f"  - {name}: " + "; ".join(reasons))
    return "\n".join(lines)
