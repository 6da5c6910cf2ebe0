"""HybridAttention: any split of sequences into prefill chunks and decode steps, mixed across
sequences in one batch, gives the same outputs, equal to the dense-mask float64 formulation."""

import dataclasses
import random

import longattn
import pytest
import torch

from tests.layers.dense_layer import dense_layer, indexer_margin
from tests.layers.helpers import (  # noqa: F401
    RATIO,
    D,
    H,
    W,
    layer_weights,
    make_manager,
    make_sequence,
    run_schedule,
    schedules,
    tiny_layer,
)
from tests.tolerance import U32, attention_bounds


@pytest.mark.parametrize("kind", ["swa", "csa", "hca"])
@pytest.mark.parametrize("page_size", [1, 3, 16])
def test_splits_agree_and_match_dense_float64(kind, page_size):
    layer = tiny_layer(kind)
    g = torch.Generator().manual_seed(7 + page_size)
    lengths = {"a": 37, "b": 21, "c": 9}
    seqs = {nm: make_sequence(layer, S, g) for nm, S in lengths.items()}
    weights = layer_weights(layer, g)
    for nm, s in seqs.items():  # a top-k decided by a near tie would not be a fair comparison
        assert indexer_margin(layer, s, weights["index_norm_weight"]) > 1e-4, nm
    results = {
        how: run_schedule(layer, page_size, seqs, sched, weights)
        for how, sched in schedules(lengths, random.Random(page_size)).items()
    }
    for nm, s in seqs.items():
        ref = dense_layer(layer, s, weights["attn_sink"], weights["compress_norm_weight"], weights["index_norm_weight"])
        # fp32 pipeline vs float64: the attention bound over the union of keys, plus a few ulps of the
        # compressed entries (RMS-normalised, so O(1)) feeding both logits and values.
        out_atol, _, _ = attention_bounds(
            s["q"], torch.cat([s["kv"], torch.ones(1, D) * 4]), layer.softmax_scale, 200, torch.float32, True
        )
        for how, outs in results.items():
            assert not torch.isnan(outs[nm]).any(), f"{how}: unwritten outputs"
            err = (outs[nm].double() - ref).abs().max().item()
            assert err <= out_atol + 64 * U32, f"{kind} {how} seq {nm}: error {err:.2e} vs dense float64"
        for how in ("chunked", "decode"):
            torch.testing.assert_close(results[how][nm], results["one_prefill"][nm], atol=1e-5, rtol=0)


@pytest.mark.parametrize("kv_format", ["float", "fp8"])
@pytest.mark.parametrize("kind", ["swa", "csa", "hca"])
def test_one_sequences_nan_row_does_not_reach_another(kind, kv_format):
    """Sequence "a" sends a NaN kv row first (it lands in slot 0 of the window pool); sequence "b",
    short enough that its window rows are -1 padded, must get exactly what it gets alone."""
    layer = tiny_layer(kind)
    if kv_format == "fp8":
        layer = dataclasses.replace(layer, head_dim=512, rope_dim=64, index_head_dim=64)
    g = torch.Generator().manual_seed(5)
    Dl = layer.head_dim

    def seq(S):
        c = 2 if layer.overlap else 1
        s = dict(q=torch.randn(S, H, Dl, generator=g), kv=torch.randn(S, Dl, generator=g))
        if layer.compress_ratio:
            s.update(compress_a=torch.randn(S, c * Dl, generator=g), compress_b=torch.randn(S, c * Dl, generator=g))
        if layer.uses_indexer:
            Hi, Di = layer.index_n_heads, layer.index_head_dim
            s.update(
                index_q=torch.randn(S, Hi, Di, generator=g),
                index_weights=torch.randn(S, Hi, generator=g),
                index_a=torch.randn(S, 2 * Di, generator=g),
                index_b=torch.randn(S, 2 * Di, generator=g),
            )
        return s

    a, b = seq(6), seq(5)
    for name in a:
        if name != "q":
            a[name][0] = float("nan")  # every input row of a's first token
    a["kv"][0] = float("nan")

    def run(batch):
        m = make_manager(layer, 4)
        att = longattn.HybridAttention(layer, m, kv_dtype=torch.float32, kv_format=kv_format)
        for name, _ in batch:
            m.add_sequence(name)
        plan = m.plan([n for n, _ in batch], torch.tensor([0] + [s["q"].shape[0] for _, s in batch]).cumsum(0))
        x = {k: torch.cat([s[k] for _, s in batch]) for k in batch[0][1]}
        return att(plan, x.pop("q"), x.pop("kv"), **x)

    alone = run([("b", b)])
    mixed = run([("a", a), ("b", b)])
    assert torch.isfinite(alone).all()
    assert torch.equal(mixed[6:], alone)
