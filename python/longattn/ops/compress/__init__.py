from .interface import compress_pool

__all__ = ["compress_pool"]
