"""Backends: ``registry`` (selection, errors) and ``base`` (what a backend declares)."""

from .base import Backend, OpImpl
from .registry import BackendError, backend_names, get_backend, register_backend, select

__all__ = ["Backend", "OpImpl", "BackendError", "backend_names", "get_backend", "register_backend", "select"]
