"""Model presets against docs/deepseek-v4-attention.md section 1."""

import pytest
from longattn.configs import V4_FLASH, V4_PRO, ModelConfig, kind_of_ratio


def test_flash_schedule():
    kinds = V4_FLASH.layer_kinds
    assert len(kinds) == 43 and len(V4_FLASH.compress_ratios) == 44 and V4_FLASH.compress_ratios[-1] == 0
    assert kinds[:2] == ("swa", "swa")
    assert all(kinds[i] == "csa" for i in range(2, 43, 2)) and all(kinds[i] == "hca" for i in range(3, 43, 2))
    assert V4_FLASH.kind_counts() == {"swa": 2, "csa": 21, "hca": 20}
    assert V4_FLASH.layer(43).kind == "swa"  # MTP block


def test_pro_schedule():
    assert V4_PRO.kind_counts() == {"swa": 0, "csa": 30, "hca": 31}
    assert V4_PRO.layer_kinds[:2] == ("hca", "hca") and len(V4_PRO.compress_ratios) == 62


@pytest.mark.parametrize("cfg,heads,topk,q_lora,groups", [(V4_FLASH, 64, 512, 1024, 8), (V4_PRO, 128, 1024, 1536, 16)])
def test_dimensions(cfg, heads, topk, q_lora, groups):
    assert (cfg.n_heads, cfg.index_topk, cfg.q_lora_rank, cfg.o_groups, cfg.o_lora_rank) == (
        heads,
        topk,
        q_lora,
        groups,
        1024,
    )
    assert (cfg.head_dim, cfg.rope_dim, cfg.nope_dim, cfg.window) == (512, 64, 448, 128)
    assert (cfg.index_n_heads, cfg.index_head_dim, cfg.eps) == (64, 128, 1e-6)
    assert cfg.softmax_scale == 512**-0.5 and cfg.max_position == 1048576


def test_layer_configs_and_rope_tables():
    swa, csa, hca = (V4_FLASH.first_layer(k) for k in ("swa", "csa", "hca"))
    assert (swa.index, csa.index, hca.index) == (0, 2, 3)
    assert (swa.compress_ratio, csa.compress_ratio, hca.compress_ratio) == (0, 4, 128)
    assert csa.overlap and csa.uses_indexer and not hca.overlap and not hca.uses_indexer
    assert swa.rope.theta == 10000 and swa.rope.yarn is None
    assert hca.rope.theta == 160000 and hca.rope.yarn.factor == 16 and hca.rope.yarn.original_max_position == 65536
    assert (hca.rope.yarn.beta_fast, hca.rope.yarn.beta_slow) == (32, 1)


def test_bad_configs():
    with pytest.raises(ValueError, match="n_layers \\+ 1 = 3"):
        ModelConfig("x", 64, 2, 4, 16, 2, 16, 8, compress_ratios=(0, 4))
    with pytest.raises(ValueError, match="layer index must be in"):
        V4_FLASH.layer(44)
    with pytest.raises(ValueError, match="no 'swa' layer"):  # V4-Pro has CSA and HCA layers only
        V4_PRO.first_layer("swa")
    with pytest.raises(ValueError):
        kind_of_ratio(-1)
