from .op import compress_kv, compress_pool

__all__ = ["compress_pool", "compress_kv"]
