"""Backends: ``registry`` (selection, errors) and ``base`` (what a backend and an op implementation
declare). The backend modules (reference, triton, ascend_sim, ascend) say where they run and why
not; what each can do for an op is declared by the op (``ops/<op>/support.py``)."""

from .base import Backend, Impl
from .registry import BackendError, backend_names, get_backend, register_backend, select, unregister_backend

__all__ = [
    "Backend",
    "Impl",
    "BackendError",
    "backend_names",
    "get_backend",
    "register_backend",
    "unregister_backend",
    "select",
]
