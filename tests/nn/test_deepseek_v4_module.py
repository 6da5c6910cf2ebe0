"""longattn.nn.DeepseekV4Attention and PagedKVCache without transformers: cache consistency, padding,
configuration and errors. (Parity with transformers: test_transformers_parity.py.)"""

import dataclasses
import math
import subprocess
import sys
import types

import pytest
import torch
from longattn.configs import V4_FLASH, RopeConfig, YarnConfig
from longattn.nn import DeepseekV4Attention, PagedKVCache, layer_config
from longattn.nn.deepseek_v4 import rope_attention_factor

from tests.nn.helpers import TINY, tiny_layer


def step(module, x, cache, mask=None):
    """One model step of ``module`` over ``x [B, S, dim]``: begin it explicitly, then run the layer."""
    cache.begin_step(x.shape[0], x.shape[1], mask)
    return module(x, cache=cache)


def test_import_longattn_nn_does_not_import_transformers():
    code = "import sys, longattn, longattn.nn, longattn.integrations; print('transformers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


@pytest.mark.parametrize("idx", [0, 1, 2], ids=["swa", "csa", "hca"])
def test_chunked_prefill_and_decode_equal_one_prefill(idx):
    m = tiny_layer(idx)
    x = torch.randn(2, 29, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        whole, _ = m(x)  # one-shot cache
        cache = PagedKVCache([m.layer], max_batch_size=2, max_context=29, page_size=3)
        parts = [step(m, x[:, a:b], cache)[0] for a, b in ((0, 11), (11, 12), (12, 20), (20, 21), (21, 29))]
    torch.testing.assert_close(torch.cat(parts, 1), whole, atol=1e-5, rtol=0)
    assert cache.seq_lengths() == [29, 29] and cache.columns == 29


@pytest.mark.parametrize("idx", [0, 1, 2], ids=["swa", "csa", "hca"])
def test_long_step_runs_in_chunks_with_the_same_result(idx):
    """A step longer than max_step_tokens is planned as chunks (5 tokens over 2 rows: 2 positions per
    row per chunk, rows of different lengths through padding) and gives what one big step gives, then
    decodes the same; the window pool holds a chunk, not the prompt."""
    m = tiny_layer(idx)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 23, 32, generator=g)
    mask = torch.ones(2, 23, dtype=torch.long)
    mask[1, :6] = 0
    x_next = torch.randn(2, 1, 32, generator=g)
    outs, pools = [], []
    with torch.no_grad():
        for step_tokens in (None, 5):
            cache = PagedKVCache([m.layer], max_batch_size=2, max_context=30, page_size=2, max_step_tokens=step_tokens)
            plans = cache.begin_step(2, 23, mask).plans
            y, _ = m(x, cache=cache)
            cache.begin_step(2, 1)
            y1, _ = m(x_next, cache=cache)
            outs.append((y, y1, len(plans)))
            pools.append(cache.manager.window_alloc.num_pages)
            assert cache.seq_lengths() == [24, 18]
    (y_one, y1_one, n_one), (y_chunked, y1_chunked, n_chunked) = outs
    assert (n_one, n_chunked) == (1, 12)  # 23 positions, 2 per row per chunk
    torch.testing.assert_close(y_chunked, y_one, atol=1e-5, rtol=0)
    torch.testing.assert_close(y1_chunked, y1_one, atol=1e-5, rtol=0)
    assert torch.equal(y_chunked[1, :6], torch.zeros(6, 32))
    assert pools[1] < pools[0]


def test_step_past_max_context_is_refused_before_planning():
    m = tiny_layer(0)
    cache = PagedKVCache([m.layer], max_batch_size=1, max_context=10, page_size=2, max_step_tokens=3)
    with torch.no_grad():
        step(m, torch.randn(1, 8, 32), cache)
        with pytest.raises(
            ValueError, match=r"max_context=10; make the cache with a larger max_context=.*growable=True"
        ):
            step(m, torch.randn(1, 3, 32), cache)
    assert cache.seq_lengths() == [8]  # nothing of the refused step was planned
    with pytest.raises(ValueError, match="max_step_tokens must be > 0"):
        PagedKVCache([m.layer], max_batch_size=1, max_context=10, max_step_tokens=0)


@pytest.mark.parametrize("idx", [0, 1, 2], ids=["swa", "csa", "hca"])
def test_growable_cache_grows_on_demand(idx):
    """A growable cache made for 3 tokens per row takes 29 (one row padded) in prefill and decode steps:
    each step past max_context re-allocates the pools with the rows copied (at least doubling), and
    every step gives what one prefill of the whole sequence gives."""
    m = tiny_layer(idx)
    g = torch.Generator().manual_seed(4)
    x = torch.randn(2, 29, 32, generator=g)
    mask = torch.ones(2, 29, dtype=torch.long)
    mask[1, :5] = 0  # row 1: 24 tokens
    with torch.no_grad():
        whole, _ = m(x[:1])
        whole_padded, _ = m(x[1:, 5:])
        cache = PagedKVCache([m.layer], max_batch_size=2, max_context=3, page_size=2, growable=True)
        pools, sizes, parts = [], [], []
        for a, b in ((0, 2), (2, 3), (3, 11), (11, 12), (12, 20), (20, 21), (21, 29)):
            cache.begin_step(2, b - a, mask[:, :b])
            parts.append(m(x[:, a:b], cache=cache)[0])
            sizes.append(cache.max_context)
            layer = cache.layer_states[idx]
            pools.append(
                (layer.window_pool.shape[0], None if layer.compressed_pool is None else layer.compressed_pool.shape[0])
            )
    y = torch.cat(parts, 1)
    torch.testing.assert_close(y[:1], whole, atol=1e-5, rtol=0)
    torch.testing.assert_close(y[1:, 5:], whole_padded, atol=1e-5, rtol=0)
    assert cache.seq_lengths() == [29, 24] and cache.columns == 29
    assert sizes == [3, 3, 11, 22, 22, 22, 44]
    assert pools[-1][0] > pools[0][0] and (idx == 0 or pools[-1][1] > pools[0][1])


@pytest.mark.parametrize("idx", [1, 2], ids=["csa", "hca"])
def test_growable_fp8_cache_equals_a_large_one(idx):
    """Growth copies FP8 pools (uint8 records) too: a growable FP8 cache made for 2 tokens gives exactly
    what an FP8 cache made for the whole sequence gives."""
    cfg = dataclasses.replace(TINY, head_dim=512, rope_dim=64, index_head_dim=64)
    m = DeepseekV4Attention(cfg, idx).eval()
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    x = torch.randn(1, 21, 32, generator=g)
    outs = []
    with torch.no_grad():
        for ctx, growable in ((21, False), (2, True)):
            cache = PagedKVCache(
                [m.layer], max_batch_size=1, max_context=ctx, page_size=2, kv_format="fp8", growable=growable
            )
            outs.append(torch.cat([step(m, x[:, a:b], cache)[0] for a, b in ((0, 2), (2, 9), (9, 10), (10, 21))], 1))
    assert cache.max_context >= 21
    torch.testing.assert_close(outs[1], outs[0], atol=0, rtol=0)


def test_every_row_fits_a_chunk():
    """max_step_tokens below the batch size still gives a chunk one position of every row (a decode step
    of a large batch is never refused for the window pool's size)."""
    m = tiny_layer(0)
    cache = PagedKVCache([m.layer], max_batch_size=6, max_context=8, page_size=2, max_step_tokens=4)
    assert cache.step_tokens == 6
    with torch.no_grad():
        step(m, torch.randn(6, 3, 32), cache)  # 3 chunks of 6 tokens
        step(m, torch.randn(6, 1, 32), cache)
    assert cache.seq_lengths() == [4] * 6


@pytest.mark.parametrize("idx", [1, 2], ids=["csa", "hca"])
def test_padding_positions_are_not_tokens(idx):
    m = tiny_layer(idx)
    g = torch.Generator().manual_seed(2)
    a, b = torch.randn(1, 19, 32, generator=g), torch.randn(1, 12, 32, generator=g)
    x = torch.zeros(2, 19, 32)
    x[0], x[1, 7:] = a[0], b[0]
    x[1, :7] = 1e3  # garbage in pad positions must not matter
    mask = torch.ones(2, 19, dtype=torch.long)
    mask[1, :7] = 0
    with torch.no_grad():
        cache = PagedKVCache([m.layer], max_batch_size=2, max_context=24, page_size=4)
        cache.begin_step(2, 19, mask)
        y, _ = m(x, cache=cache)
        ya, _ = m(a)
        yb, _ = m(b)
    assert cache.seq_lengths() == [19, 12]
    torch.testing.assert_close(y[0], ya[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(y[1, 7:], yb[0], atol=1e-5, rtol=0)
    assert torch.equal(y[1, :7], torch.zeros(7, 32))


def test_v4_flash_layers_from_the_preset():
    kinds = [DeepseekV4Attention(V4_FLASH, i).kind for i in (0, 2, 3)]
    assert kinds == ["swa", "csa", "hca"]
    m = DeepseekV4Attention(V4_FLASH, 2)
    assert m.layer.rope.yarn is not None and m.rope_inv_freq.shape == (32,)
    assert tuple(m.compressor.indexer.q_b_proj.weight.shape) == (64 * 128, 1024)
    assert tuple(m.o_a_proj.weight.shape) == (8 * 1024, 64 * 512 // 8)


def hf_like(**kw):
    base = dict(
        hidden_size=32, num_attention_heads=4, head_dim=32, q_lora_rank=16, o_groups=2, o_lora_rank=8,
        rms_norm_eps=1e-6, sliding_window=8, index_n_heads=2, index_head_dim=16, index_topk=3,
        rope_theta=10000.0, compress_rope_theta=160000.0, qk_rope_head_dim=8, compress_ratios=[0, 4, 128],
        rope_scaling={"type": "yarn", "factor": 16, "original_max_position_embeddings": 65536,
                      "beta_fast": 32, "beta_slow": 1},
    )  # fmt: skip
    base.update(kw)
    return types.SimpleNamespace(**base)


def test_config_with_the_reference_keys():
    """DeepSeek's own config.json names (compress_ratios, rope_scaling) work as well as transformers'."""
    cfg = hf_like()
    assert [layer_config(cfg, i).kind for i in range(3)] == ["swa", "csa", "hca"]
    assert layer_config(cfg, 0).rope == RopeConfig(10000.0)
    assert layer_config(cfg, 2).rope == RopeConfig(160000.0, YarnConfig(16.0, 65536, 32.0, 1.0))


def test_unsupported_configs_are_refused():
    with pytest.raises(NotImplementedError, match="CSA layers with compress rate 8"):
        layer_config(
            hf_like(layer_types=["compressed_sparse_attention"], compress_rates={"compressed_sparse_attention": 8}), 0
        )
    with pytest.raises(NotImplementedError, match="rotates 16 dims"):  # a table for another rope dim
        layer_config(hf_like(rope_parameters={"main": {"rope_theta": 1e4, "partial_rotary_factor": 0.5},
                                              "compress": {"rope_theta": 1.6e5}}), 0)  # fmt: skip


YARN = {"rope_type": "yarn", "factor": 16.0, "original_max_position_embeddings": 65536, "beta_fast": 32, "beta_slow": 1}


def nested(compress: dict):
    return hf_like(rope_parameters={"main": {"rope_type": "default", "rope_theta": 1e4},
                                    "compress": {**compress, "rope_theta": 1.6e5}})  # fmt: skip


def test_rope_attention_factor_follows_transformers():
    """The factor transformers puts on a table's cos / sin: its ``attention_factor``; for a YaRN table
    without one, YaRN's mscale 0.1 ln(factor) + 1 (or the mscale / mscale_all_dim ratio) when the
    nested rope_parameters come from the user, 1 when transformers nests flat parameters itself."""
    mscale = 0.1 * math.log(16) + 1
    assert rope_attention_factor(nested(YARN), 1) == pytest.approx(mscale)  # 1.277
    assert rope_attention_factor(nested(YARN), 2) == pytest.approx(mscale)
    assert rope_attention_factor(nested(YARN), 0) == 1.0  # the main table is plain
    assert rope_attention_factor(nested({**YARN, "attention_factor": 1.0}), 1) == 1.0
    assert rope_attention_factor(nested({**YARN, "mscale": 1.0, "mscale_all_dim": 0.5}), 1) == pytest.approx(
        mscale / (0.05 * math.log(16) + 1)
    )
    assert rope_attention_factor(hf_like(), 1) == 1.0  # flat (DeepSeek's config.json): no mscale
    assert rope_attention_factor(hf_like(rope_scaling={**YARN, "attention_factor": 1.3}), 1) == 1.3
    assert rope_attention_factor(V4_FLASH, 2) == 1.0
    m = DeepseekV4Attention(nested(YARN), 1)
    assert m.rope_attention_factor == pytest.approx(mscale) and "rope_attention_factor=1.27726" in repr(m)
    assert layer_config(nested(YARN), 1).rope == RopeConfig(160000.0, YarnConfig(16.0, 65536, 32.0, 1.0))


@pytest.mark.parametrize("idx", [1, 2], ids=["csa", "hca"])
def test_rope_attention_factor_against_float64(idx):
    """A layer whose table has attention factor 1.277 against the float64 evaluation (which scales
    every rotated vector's rope dims); without the factor the output is measurably different."""
    from tests.nn.dense_v4 import dense_v4_layer

    cfg = nested(YARN)
    m = DeepseekV4Attention(cfg, idx).eval()
    plain = DeepseekV4Attention(hf_like(), idx).eval()
    g = torch.Generator().manual_seed(6)
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    plain.load_state_dict(m.state_dict())
    x = torch.randn(1, 40, 32, generator=g)
    with torch.no_grad():
        y, _ = m(x)
        y_plain, _ = plain(x)
    truth = dense_v4_layer(m, x[0])
    err = (y[0].double() - truth).abs().max().item()
    assert err < 1e-4 * truth.abs().max().item(), err
    assert (y_plain[0].double() - truth).abs().max().item() > 100 * err


def test_cache_errors():
    m, other = tiny_layer(1), tiny_layer(2)
    cache = PagedKVCache([m.layer], max_batch_size=2, max_context=16, page_size=4)
    with pytest.raises(TypeError, match="PagedKVCache"), torch.no_grad():
        m(torch.randn(1, 3, 32), cache=object())
    with torch.no_grad():
        step(m, torch.randn(2, 3, 32), cache)
        with pytest.raises(RuntimeError, match="layer 1 has no step to run: call cache.begin_step"):
            m(torch.randn(2, 1, 32), cache=cache)  # a step starts only by an explicit begin_step
        with pytest.raises(ValueError, match="serves 2 batch rows"):
            step(m, torch.randn(1, 1, 32), cache)
        with pytest.raises(ValueError, match="layer 2 was not declared"):
            step(other, torch.randn(2, 1, 32), cache)
        cache.begin_step(2, 1)
        with pytest.raises(ValueError, match=r"layer 1 got \[2, 3\] positions, the step planned \[2, 1\]"):
            m(torch.randn(2, 3, 32), cache=cache)
    with pytest.raises(ValueError, match="holds 2 sequences"), torch.no_grad():
        step(m, torch.randn(3, 1, 32), PagedKVCache([m.layer], max_batch_size=2, max_context=16))


def test_fp8_index_keys_through_the_module():
    """``PagedKVCache(index_format="fp8")``: the CSA layer keeps its indexer keys in an Fp8IndexKeyPool
    whose records are exactly ``quantize_index_k_fp8`` of a float-index cache's keys (same steps, fp32
    pools), chunked prefill + decode equals one prefill with FP8 index keys, and growth keeps the
    records; a bad ``index_format`` is refused."""
    from longattn.cache import Fp8IndexKeyPool, quantize_index_k_fp8

    m = tiny_layer(1)  # CSA
    x = torch.randn(2, 29, 32, generator=torch.Generator().manual_seed(3))
    splits = ((0, 11), (11, 12), (12, 20), (20, 21), (21, 29))
    with torch.no_grad():
        caches, outs = {}, {}
        for name, fmt, growable, parts in (("float", "float", False, splits), ("fp8", "fp8", False, splits),
                                           ("fp8_whole", "fp8", True, ((0, 29),))):  # fmt: skip
            cache = PagedKVCache([m.layer], max_batch_size=2, max_context=29 if not growable else 2, page_size=3,
                                 kv_dtype=torch.float32, index_format=fmt, growable=growable)  # fmt: skip
            outs[name] = torch.cat([step(m, x[:, a:b], cache)[0] for a, b in parts], 1)
            caches[name] = cache
    fp8_pool = caches["fp8"].layer(m.layer.index).index_pool
    float_pool = caches["float"].layer(m.layer.index).index_pool
    assert isinstance(fp8_pool, Fp8IndexKeyPool) and float_pool.dtype == torch.float32
    written = float_pool.reshape(-1, 16).ne(0).any(-1)
    assert int(written.sum()) == 2 * (29 // 4)
    want_v, want_s = quantize_index_k_fp8(float_pool)._views()
    have_v, have_s = fp8_pool._views()
    assert torch.equal(have_v.reshape(-1, 16)[written], want_v.reshape(-1, 16)[written])
    assert torch.equal(have_s.reshape(-1)[written], want_s.reshape(-1)[written])
    torch.testing.assert_close(outs["fp8"], outs["fp8_whole"], atol=1e-5, rtol=0)  # (grown, one prefill)
    assert caches["fp8_whole"].max_context >= 29
    assert isinstance(caches["fp8_whole"].layer(m.layer.index).index_pool, Fp8IndexKeyPool)
    with pytest.raises(ValueError, match="PagedKVCache: index_format must be 'float' or 'fp8', got 'e4m3'"):
        PagedKVCache([m.layer], max_batch_size=1, max_context=4, index_format="e4m3")
