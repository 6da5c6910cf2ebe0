from .op import append_kv

__all__ = ["append_kv"]
