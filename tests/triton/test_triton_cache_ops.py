"""The Triton cache-write kernels (``append_kv``, ``compress_kv``) launched directly: strided pools
(which only the kernel takes, not the public API), small slot / run tiles; what the backend declines;
the HybridAttention layer end to end on the Triton backend.

The generic cases on every backend (float pools bit for bit, FP8 records byte for byte, compress_kv
over random splits vs the reference and a float64 oracle, special values): tests/ops/test_append.py and
tests/ops/test_compress.py; the tolerances are documented in tests/helpers/compress.py.
"""

from __future__ import annotations

import random

import pytest
import torch

from tests.helpers.append import FLOATS, adversarial_rows, float_pool, slots_for
from tests.helpers.compress import EPS, Cache, bits, check_float_run, make_steps, run_both
from tests.helpers.device import CAN_RUN_TRITON, DEVICE, TRITON_SKIP_REASON
from tests.helpers.dispatch import reasons

pytestmark = [
    pytest.mark.skipif(not CAN_RUN_TRITON, reason=TRITON_SKIP_REASON),
    # the interpreter's fp32 -> fp16 cast (numpy) warns when it rounds to inf, which is the point
    pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning"),
]

if CAN_RUN_TRITON:
    import longattn
    from longattn.cache import Fp8KVPool


# ---------------------------------------------------------------------------------------------------
# append_kv into strided pools (the kernel's strides; the public API takes contiguous pools)
# ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("layout", ["row_strided", "col_strided"])
@pytest.mark.parametrize("dst", FLOATS)
@pytest.mark.parametrize("src", FLOATS)
def test_append_strided_pool_bit_identical(src, dst, layout):
    from longattn.ops.append import reference as ref_append
    from longattn.ops.append import triton_append

    D = 40
    rows = adversarial_rows(19, D, seed=3).to(src)
    if layout == "row_strided":
        rows = rows.t().contiguous().t()  # non-contiguous rows too
    buf_ref, pool_ref = float_pool(layout, dst, D)
    slots = slots_for(19, 24, seed=1, dtype=torch.int32)
    ref_append.append_kv(pool_ref, rows, slots)
    buf = buf_ref.new_full(buf_ref.shape, float("nan")).to(DEVICE)
    pool = buf[1:25, 2 : 2 + D] if layout == "row_strided" else buf[1:25, ::2]
    with torch.no_grad():
        triton_append.append_kv(pool, rows.to(DEVICE), slots.to(DEVICE))
    assert torch.equal(bits(buf.cpu()), bits(buf_ref)), "pool (and guard) bytes differ from the reference"


# ---------------------------------------------------------------------------------------------------
# compress_kv with small tiles
# ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("ratio,overlap", [(3, True), (8, False), (4, True)])
def test_compress_small_tiles_and_long_chunks(ratio, overlap):
    """BLOCK_S = 2 (online softmax over several slot tiles; a tile straddles the two halves of an
    overlapping window for odd ratios), BLOCK_K = 2 (several rounds of the run-end search), chunks
    much longer than the ring."""
    d = 10
    seqs, steps = make_steps([61, 40, 7], ratio, overlap, d, seed=4, decode_tail=False, max_chunk=30)
    cache = Cache(3, ratio, overlap, d, 2, 61, seed=4)
    ref, got = run_both(cache, steps, "triton", config=dict(BLOCK_S=2, BLOCK_K=2, BLOCK_RW=2, BLOCK_W=4))
    check_float_run(ref, got, seqs)


# ---------------------------------------------------------------------------------------------------
# dispatch: selection and what the kernels decline
# ---------------------------------------------------------------------------------------------------
def _reasons(op, args):
    return reasons("triton", op, torch.device(DEVICE), **args)


def test_selected_and_declined():
    pool = torch.zeros(3, 4, 8)
    rows, slots = torch.zeros(2, 8), torch.zeros(2, dtype=torch.int32)
    assert _reasons("append_kv", dict(pool=pool, rows=rows, slot_mapping=slots)) == []
    assert _reasons("append_kv", dict(pool=Fp8KVPool.empty(2, 3), rows=torch.zeros(2, 512), slot_mapping=slots)) == []
    odd = torch.zeros(4, 3, 8).transpose(0, 1)  # [3, 4, 8] pages not evenly strided
    assert any("evenly strided" in r for r in _reasons("append_kv", dict(pool=odd, rows=rows, slot_mapping=slots)))
    base = dict(a=torch.zeros(2, 16), b=torch.zeros(2, 16), positions=torch.zeros(2, dtype=torch.int64),
                token_rows=torch.zeros(2, dtype=torch.int32), ratio=4, overlap=True,
                state=torch.zeros(2, 4, 32), state_block_table=torch.zeros(1, 2, dtype=torch.int32),
                out=torch.zeros(2, 2, 8), out_block_table=torch.zeros(1, 2, dtype=torch.int32),
                norm_weight=torch.ones(8), eps=EPS, rope_inv_freq=torch.ones(2))  # fmt: skip
    assert _reasons("compress_kv", base) == []
    odd_d = dict(base, a=torch.zeros(2, 18), b=torch.zeros(2, 18), out=torch.zeros(2, 2, 9), norm_weight=torch.ones(9))
    assert any("even entry width" in r for r in _reasons("compress_kv", odd_d))
    assert any("d=8" in r for r in _reasons("compress_kv", dict(base, out=Fp8KVPool.empty(2, 2))))
    wide = dict(base, a=torch.zeros(2, 4096), b=torch.zeros(2, 4096))
    assert any("d=2048 > 1024" in r for r in _reasons("compress_kv", wide))


# ---------------------------------------------------------------------------------------------------
# end to end: the HybridAttention layer with every op on the Triton backend
# ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["csa", "hca"])
def test_layer_on_triton_matches_dense_float64(kind):
    """The layer's real cache plans (window append, CSA / HCA compressor + indexer compressor, FP32
    pools, page size 3) through chunked prefill and decode schedules, with backend="triton": outputs
    within the layer tests' bound of the dense float64 layer (tests/layers/test_hybrid_attention.py)."""
    from longattn.cache import CacheManager

    from tests.layers.dense_layer import dense_layer, indexer_margin
    from tests.layers.helpers import D, H, make_sequence, schedules, tiny_layer
    from tests.tolerance import U32, attention_bounds

    layer = tiny_layer(kind)
    g = torch.Generator().manual_seed(11)
    lengths = {"a": 29, "b": 13}
    seqs = {nm: make_sequence(layer, S, g) for nm, S in lengths.items()}
    weights = dict(
        attn_sink=torch.randn(H, generator=g),
        compress_norm_weight=1 + 0.1 * torch.randn(D, generator=g),
        index_norm_weight=1 + 0.1 * torch.randn(layer.index_head_dim, generator=g),
    )
    for nm, s in seqs.items():
        assert indexer_margin(layer, s, weights["index_norm_weight"]) > 1e-4, nm
    scheds = schedules(lengths, random.Random(5))
    for how in ("chunked", "decode"):
        r = layer.compress_ratio
        m = CacheManager(ratios=(r,), page_size=3, num_window_pages=64, num_compressed_pages={r: 64},
                         num_state_pages={r: 64}, window=layer.window, device=DEVICE)  # fmt: skip
        att = longattn.HybridAttention(layer, m, kv_dtype=torch.float32, backend="triton")
        dev_weights = {k: v.to(DEVICE) for k, v in weights.items()}
        done = {nm: 0 for nm in seqs}
        outs = {nm: torch.full_like(s["q"], float("nan")) for nm, s in seqs.items()}
        for step in scheds[how]:
            for nm, _ in step:
                if nm not in m:
                    m.add_sequence(nm)
            counts = [n for _, n in step]
            cu = torch.tensor([0] + counts).cumsum(0)
            plan = m.plan([nm for nm, _ in step], cu)
            inputs = {
                k: torch.cat([seqs[nm][k][done[nm] : done[nm] + n] for nm, n in step]).to(DEVICE)
                for k in seqs[step[0][0]]
            }
            out = att(plan, inputs.pop("q"), inputs.pop("kv"), **inputs, **dev_weights).cpu()
            for (nm, n), t0 in zip(step, cu[:-1].tolist()):
                outs[nm][done[nm] : done[nm] + n] = out[t0 : t0 + n]
                done[nm] += n
        for nm, s in seqs.items():
            ref = dense_layer(
                layer, s, weights["attn_sink"], weights["compress_norm_weight"], weights["index_norm_weight"]
            )
            out_atol, _, _ = attention_bounds(
                s["q"], torch.cat([s["kv"], torch.ones(1, D) * 4]), layer.softmax_scale, 200, torch.float32, True
            )
            assert not torch.isnan(outs[nm]).any(), f"{how}: unwritten outputs"
            err = (outs[nm].double() - ref).abs().max().item()
            assert err <= out_atol + 64 * U32, f"{kind} {how} seq {nm}: error {err:.2e} vs dense float64"
