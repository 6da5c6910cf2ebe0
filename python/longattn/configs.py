"""Model presets: DeepSeek-V4-Flash and V4-Pro attention hyper-parameters and layer schedules.

Source: DeepSeek's reference ``config.json`` / ``inference/model.py`` (see
``docs/deepseek-v4-attention.md`` section 1). ``compress_ratios`` has ``n_layers + 1`` entries, the last one
for the MTP block. The ratio selects the layer kind: 0 -> "swa" (sliding window only), 4 -> "csa"
(overlapping compressor + lightning indexer top-k), any other ratio -> "hca" (non-overlapping
compressor, all visible compressed entries attended).
"""

from __future__ import annotations

import dataclasses
from typing import Dict, Optional, Tuple

KINDS = ("swa", "csa", "hca")
CSA_RATIO = 4


def kind_of_ratio(ratio: int) -> str:
    if ratio < 0:
        raise ValueError(f"compress ratio must be >= 0, got {ratio}")
    return "swa" if ratio == 0 else "csa" if ratio == CSA_RATIO else "hca"


@dataclasses.dataclass(frozen=True)
class YarnConfig:
    factor: float = 16.0
    original_max_position: int = 65536
    beta_fast: float = 32.0
    beta_slow: float = 1.0


@dataclasses.dataclass(frozen=True)
class RopeConfig:
    """Interleaved-pair RoPE over the last ``rope_dim`` dims of each vector."""

    theta: float
    yarn: Optional[YarnConfig] = None


@dataclasses.dataclass(frozen=True)
class LayerConfig:
    """What one attention layer needs (``HybridAttention`` takes this)."""

    index: int
    kind: str  # "swa" | "csa" | "hca"
    compress_ratio: int  # 0 for swa
    n_heads: int
    head_dim: int
    rope_dim: int
    window: int
    index_n_heads: int
    index_head_dim: int
    index_topk: int
    rope: RopeConfig
    eps: float

    @property
    def overlap(self) -> bool:
        """The compressor overlaps blocks (half A of block j-1 + half B of block j) for CSA."""
        return self.kind == "csa"

    @property
    def uses_indexer(self) -> bool:
        return self.kind == "csa"

    @property
    def softmax_scale(self) -> float:
        return self.head_dim**-0.5


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    name: str
    dim: int
    n_layers: int
    n_heads: int
    q_lora_rank: int
    o_groups: int
    o_lora_rank: int
    index_topk: int
    compress_ratios: Tuple[int, ...]  # n_layers + 1 entries (last: MTP block)
    head_dim: int = 512
    rope_dim: int = 64
    window: int = 128
    index_n_heads: int = 64
    index_head_dim: int = 128
    rope_theta: float = 10000.0
    compress_rope_theta: float = 160000.0
    yarn: YarnConfig = YarnConfig()
    eps: float = 1e-6
    max_position: int = 1 << 20

    def __post_init__(self):
        if len(self.compress_ratios) != self.n_layers + 1:
            raise ValueError(
                f"{self.name}: compress_ratios needs n_layers + 1 = {self.n_layers + 1} entries "
                f"(the last is the MTP block), got {len(self.compress_ratios)}"
            )
        if self.rope_dim > self.head_dim or self.rope_dim % 2:
            raise ValueError(f"{self.name}: rope_dim must be even and <= head_dim, got {self.rope_dim}")
        if self.n_heads % self.o_groups:
            raise ValueError(f"{self.name}: n_heads {self.n_heads} must be a multiple of o_groups {self.o_groups}")

    @property
    def nope_dim(self) -> int:
        return self.head_dim - self.rope_dim

    @property
    def softmax_scale(self) -> float:
        return self.head_dim**-0.5

    @property
    def layer_kinds(self) -> Tuple[str, ...]:
        """Kind of each decoder layer (MTP block excluded)."""
        return tuple(kind_of_ratio(r) for r in self.compress_ratios[: self.n_layers])

    def kind_counts(self) -> Dict[str, int]:
        kinds = self.layer_kinds
        return {k: kinds.count(k) for k in KINDS}

    def rope_for_ratio(self, ratio: int) -> RopeConfig:
        """Ratio-0 layers: theta 10000 without YaRN; compressed layers: theta 160000 with YaRN."""
        return RopeConfig(self.rope_theta) if ratio == 0 else RopeConfig(self.compress_rope_theta, self.yarn)

    def layer(self, index: int) -> LayerConfig:
        """Layer ``index`` in [0, n_layers]; ``n_layers`` is the MTP block."""
        if not 0 <= index <= self.n_layers:
            raise ValueError(f"{self.name}: layer index must be in [0, {self.n_layers}], got {index}")
        ratio = self.compress_ratios[index]
        return LayerConfig(
            index=index,
            kind=kind_of_ratio(ratio),
            compress_ratio=ratio,
            n_heads=self.n_heads,
            head_dim=self.head_dim,
            rope_dim=self.rope_dim,
            window=self.window,
            index_n_heads=self.index_n_heads,
            index_head_dim=self.index_head_dim,
            index_topk=self.index_topk,
            rope=self.rope_for_ratio(ratio),
            eps=self.eps,
        )

    def first_layer(self, kind: str) -> LayerConfig:
        """The first decoder layer of a kind (handy for benchmarks and examples)."""
        if kind not in self.layer_kinds:
            raise ValueError(f"{self.name}: no {kind!r} layer (its layer kinds: {sorted(set(self.layer_kinds))})")
        return self.layer(self.layer_kinds.index(kind))


def _v4_ratios(n_layers: int, first_two: int) -> Tuple[int, ...]:
    # Layers 0-1 are special; then even layers are CSA (4) and odd layers HCA (128); MTP block is 0.
    body = tuple(4 if i % 2 == 0 else 128 for i in range(2, n_layers))
    return (first_two, first_two) + body + (0,)


V4_FLASH = ModelConfig(
    name="DeepSeek-V4-Flash",
    dim=4096,
    n_layers=43,
    n_heads=64,
    q_lora_rank=1024,
    o_groups=8,
    o_lora_rank=1024,
    index_topk=512,
    compress_ratios=_v4_ratios(43, first_two=0),
)

V4_PRO = ModelConfig(
    name="DeepSeek-V4-Pro",
    dim=7168,
    n_layers=61,
    n_heads=128,
    q_lora_rank=1536,
    o_groups=16,
    o_lora_rank=1024,
    index_topk=1024,
    compress_ratios=_v4_ratios(61, first_two=128),
)

PRESETS = {"v4-flash": V4_FLASH, "v4-pro": V4_PRO}
