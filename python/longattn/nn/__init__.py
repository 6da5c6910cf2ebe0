"""``torch.nn`` modules built on the package's kernels and paged caches (needs only torch).

``DeepseekV4Attention`` is one DeepSeek-V4 attention layer (SWA, CSA or HCA) with the full layer math
and the parameter names of the transformers implementation; ``PagedKVCache`` holds the paged caches
of a model's layers, one sequence per batch row. See README.md in this folder.
"""

from .deepseek_v4 import DeepseekV4Attention, layer_config
from .paged_cache import PagedKVCache

__all__ = ["DeepseekV4Attention", "PagedKVCache", "layer_config"]
