"""Long-context boundary cases of HybridAttention against the float64 dense formulation.

Compression boundaries are the positions p with (p + 1) % ratio == 0: entry j = p // ratio is emitted
there and becomes visible to that very token (visible_end = (p + 1) // ratio). Covered here:

- CSA (ratio 4): prompt lengths of every residue mod 4 (and shorter than one block), prefilled in one
  chunk or in chunks that cross boundaries inside the chunk, then all sequences decoding together
  (each crosses boundaries at other steps); the plan's visible_end at every token equals
  (p + 1) // 4; the indexer inputs make scores grow with the entry id, so the entry that becomes
  visible at a block's last token is the top-1 candidate: it must be selected at that token and not
  one token earlier. A dense evaluation with the visibility shifted by one token either way differs
  from the true one at those tokens by far more than the tolerance, so an off-by-one would fail.
- HCA with ratio 128 (tiny heads / dims): prompt lengths 128 + r for every residue r mod 128, in
  one prefill step per sequence group with the boundary at 127 inside the chunk, then all 128
  sequences decoding together until each has crossed position 255 (every step crosses a boundary
  for exactly one sequence of the batch), plus a ratio-8 HCA at every residue mod 8.
"""

import random

import longattn
import pytest
import torch
from longattn.cache import CacheManager
from longattn.configs import LayerConfig, RopeConfig, YarnConfig
from longattn.rope import inv_freq

from tests import oracle
from tests.layers.dense_layer import dense_layer, entries, indexer_margin
from tests.layers.helpers import make_sequence, run_schedule
from tests.tolerance import U32, attention_bounds


def tiny_layer(kind, ratio, H=3, D=32, window=8, topk=2, rope_dim=8):
    rope = RopeConfig(160000.0, YarnConfig(16, 64, 32, 1))
    return LayerConfig(
        index=0, kind=kind, compress_ratio=ratio, n_heads=H, head_dim=D, rope_dim=rope_dim, window=window,
        index_n_heads=2, index_head_dim=16, index_topk=topk, rope=rope, eps=1e-6,
    )  # fmt: skip


def make_manager(layer, page_size, window_pages, entry_pages, state_pages):
    r = layer.compress_ratio
    return CacheManager(
        ratios=(r,),
        page_size=page_size,
        num_window_pages=window_pages,
        num_compressed_pages={r: entry_pages},
        num_state_pages={r: state_pages},
        window=layer.window,
    )


def run_steps(layer, mgr, seqs, steps, weights):
    """steps: list of [(name, count), ...] on an fp32 layer over ``mgr``. Returns (outputs per sequence, plans)."""
    plans = []
    outs = run_schedule(layer, mgr.page_size, seqs, steps, weights, plans=plans,
                        make_layer=lambda L, _: longattn.HybridAttention(L, mgr, kv_dtype=torch.float32))  # fmt: skip
    return outs, plans


def check_visible_end(plans, ratio):
    for plan in plans:
        ve = plan.compressed[ratio].visible_end.long()
        assert torch.equal(ve, (plan.positions + 1) // ratio), f"visible_end {ve.tolist()} at {plan.positions.tolist()}"


def dense_shifted(layer, seq, attn_sink, cw, iw, shift):
    """dense_layer (tests/layers/dense_layer.py) with the visibility moved by ``shift`` tokens:
    entry j < (t + 1 + shift) // ratio. shift=0 is the real rule; +1 / -1 model an off-by-one."""
    q, kv = seq["q"].double(), seq["kv"].double()
    S, H, D = q.shape
    freqs = inv_freq(layer.rope, layer.rope_dim)
    pos = torch.arange(S)
    mask = (pos.unsqueeze(0) <= pos.unsqueeze(1)) & (pos.unsqueeze(0) > pos.unsqueeze(1) - layer.window)
    comp = entries(seq["compress_a"], seq["compress_b"], layer, cw, freqs)
    n = comp.shape[0]
    vis_n = ((pos + 1 + shift) // layer.compress_ratio).clamp(0, n)
    visible = torch.arange(n).unsqueeze(0) < vis_n.unsqueeze(1)
    chosen = visible
    if layer.uses_indexer:
        ik = entries(seq["index_a"], seq["index_b"], layer, iw, freqs)
        scores = oracle.indexer_logits(seq["index_q"], seq["index_weights"], ik, vis_n)
        chosen = torch.zeros_like(visible)
        for t in range(S):
            order = sorted(range(n), key=lambda j: (-float(scores[t, j]), j))
            for j in order[: min(layer.index_topk, int(visible[t].sum()))]:
                chosen[t, j] = True
    keys = torch.cat([kv, comp])
    mask = torch.cat([mask, chosen], dim=1)
    logits = torch.einsum("thd,kd->thk", q, keys) * layer.softmax_scale
    logits = logits.masked_fill(~mask.unsqueeze(1), float("-inf"))
    sink = attn_sink.double().view(1, H, 1).expand(S, H, 1)
    logits = torch.cat([logits, sink], dim=-1)
    keys = torch.cat([keys, torch.zeros(1, D, dtype=torch.float64)])
    return torch.einsum("thk,kd->thd", torch.softmax(logits, dim=-1), keys)


def tolerance(layer, s):
    """As tests/layers/test_hybrid_attention.py: the attention bound over the union of keys (200 keys,
    compressed entries are RMS-normalised so <= ~4 in magnitude), plus a few ulps of the entries."""
    D = layer.head_dim
    out_atol, _, _ = attention_bounds(
        s["q"], torch.cat([s["kv"], torch.ones(1, D) * 4]), layer.softmax_scale, 200, torch.float32, True
    )
    return out_atol + 64 * U32


def layer_weights(layer, g):
    return dict(
        attn_sink=torch.randn(layer.n_heads, generator=g),
        compress_norm_weight=1 + 0.1 * torch.randn(layer.head_dim, generator=g),
        index_norm_weight=1 + 0.1 * torch.randn(layer.index_head_dim, generator=g),
    )


def compare(layer, seqs, outs, weights, what):
    for nm, s in seqs.items():
        S = s["q"].shape[0]
        assert not torch.isnan(outs[nm]).any(), f"{what} {nm}: unwritten outputs"
        ref = dense_layer(layer, s, weights["attn_sink"], weights["compress_norm_weight"], weights["index_norm_weight"])
        err = (outs[nm].double() - ref).abs().amax(dim=(1, 2))  # per position
        tol = tolerance(layer, s)
        bad = (err > tol).nonzero().view(-1).tolist()
        assert not bad, (
            f"{what}: sequence {nm} (length {S}) differs from the dense float64 layer at positions {bad[:8]} "
            f"(residues mod {layer.compress_ratio}: {[p % layer.compress_ratio for p in bad[:8]]}); "
            f"max error {float(err.max()):.2e} > {tol:.2e}"
        )


# ----------------------------------------------------------------------------------------------------
# CSA, ratio 4
# ----------------------------------------------------------------------------------------------------
def csa_prompts():
    """Prompt lengths of every residue mod 4: shorter than a block, one, two and five blocks + r."""
    return {f"r{r}m{m}": 4 * m + r for r in range(4) for m in (0, 1, 2, 5) if 4 * m + r > 0}


def chunked(L, rng):
    """Split a prompt into chunks that start and end at varied residues (so boundaries fall inside)."""
    cuts, left = [], L
    while left:
        k = min(left, rng.choice([1, 2, 3, 5, 6, 7]))
        cuts.append(k)
        left -= k
    return cuts


@pytest.mark.parametrize("prefill", ["one_chunk", "chunked"])
@pytest.mark.parametrize("page_size", [3, 16])
def test_csa_every_residue_mod_4_prefill_then_batched_decode(prefill, page_size):
    layer = tiny_layer("csa", 4)
    g = torch.Generator().manual_seed(40 + page_size)
    prompts = csa_prompts()
    n_decode = 9  # every sequence crosses at least two boundaries while decoding, at different steps
    seqs = {nm: make_sequence(layer, L + n_decode, g, monotone_index=True) for nm, L in prompts.items()}
    weights = layer_weights(layer, g)
    for nm, s in seqs.items():
        assert indexer_margin(layer, s, weights["index_norm_weight"]) > 1e-3, nm
    rng = random.Random(page_size)
    steps = []
    if prefill == "one_chunk":
        steps.append([(nm, L) for nm, L in prompts.items()])
    else:
        queues = {nm: chunked(L, rng) for nm, L in prompts.items()}
        while any(queues.values()):
            steps.append([(nm, q.pop(0)) for nm, q in queues.items() if q])
    names = list(prompts)
    for _ in range(n_decode):
        rng.shuffle(names)
        steps.append([(nm, 1) for nm in names])  # all sequences together, each at its own residue
    total = sum(s["q"].shape[0] for s in seqs.values())
    mgr = make_manager(layer, page_size, window_pages=2 * total // page_size + 64, entry_pages=total // page_size + 64,
                       state_pages=len(seqs) * (8 // min(page_size, 8) + 1) + 8)  # fmt: skip
    outs, plans = run_steps(layer, mgr, seqs, steps, weights)
    check_visible_end(plans, 4)
    compare(layer, seqs, outs, weights, f"csa {prefill} page {page_size}")


def test_csa_indexer_causal_limit_at_every_residue():
    """Token by token over 24 positions (every residue mod 4, six blocks): the layer equals the dense
    formulation, and the dense formulation with the visibility one token early or late does not, at
    exactly the tokens where it matters: at p = 4j + 3 entry j is the best visible candidate (selected),
    at p = 4j + 2 it is not visible yet."""
    layer = tiny_layer("csa", 4, topk=1)
    g = torch.Generator().manual_seed(3)
    S = 24
    seqs = {"a": make_sequence(layer, S, g, monotone_index=True)}
    w = layer_weights(layer, g)
    s = seqs["a"]
    # the indexer's top-1 at every token is the newest visible entry (scores grow with the entry id)
    freqs = inv_freq(layer.rope, layer.rope_dim)
    ik = entries(s["index_a"], s["index_b"], layer, w["index_norm_weight"], freqs)
    vis = (torch.arange(S) + 1) // 4
    sc = oracle.indexer_logits(s["index_q"], s["index_weights"], ik, vis)
    for p in range(4, S):
        assert int(sc[p, : int(vis[p])].argmax()) == int(vis[p]) - 1, f"position {p}: scores {sc[p].tolist()}"
    mgr = make_manager(layer, 3, window_pages=64, entry_pages=32, state_pages=16)
    outs, plans = run_steps(layer, mgr, seqs, [[("a", 1)]] * S, w)
    check_visible_end(plans, 4)
    for p, plan in enumerate(plans):
        ve = int(plan.compressed[4].visible_end[0])
        assert ve == (p + 1) // 4, f"position {p}: visible_end {ve}, want {(p + 1) // 4}"
    compare(layer, seqs, outs, w, "csa token by token")
    # sensitivity: an off-by-one visibility changes exactly the boundary tokens, far beyond the tolerance
    args = (layer, s, w["attn_sink"], w["compress_norm_weight"], w["index_norm_weight"])
    true = dense_shifted(*args, 0)
    assert torch.allclose(true, dense_layer(*args), atol=1e-12, rtol=0)
    tol = tolerance(layer, s)
    early = (dense_shifted(*args, +1) - true).abs().amax(dim=(1, 2))  # sees entry j at p = 4j + 2
    late = (dense_shifted(*args, -1) - true).abs().amax(dim=(1, 2))  # sees entry j only at p = 4j + 4
    for p in range(3, S):
        if p % 4 == 2:
            assert early[p] > 100 * tol, f"position {p}: an early entry would go unnoticed ({float(early[p]):.2e})"
        if p % 4 == 3:
            assert late[p] > 100 * tol, f"position {p}: a late entry would go unnoticed ({float(late[p]):.2e})"
    # and the real layer is not the shifted one
    err = (outs["a"].double() - true).abs().amax(dim=(1, 2))
    assert bool((err <= tol).all())


# ----------------------------------------------------------------------------------------------------
# HCA, ratio 128 (and 8)
# ----------------------------------------------------------------------------------------------------
def test_hca_ratio_128_every_residue_prefill_then_batched_decode():
    """128 sequences with prompts of 128 + r tokens (every residue r mod 128): the boundary at position
    127 lies inside (or at the end of) each prefill chunk; then they decode together until position
    256, so at every decode step exactly one sequence of the batch crosses the boundary at 255."""
    layer = tiny_layer("hca", 128, H=2, D=16, window=8)
    g = torch.Generator().manual_seed(128)
    end = 257  # every sequence decodes up to position 256 (crosses 255)
    prompts = {f"r{r}": 128 + r for r in range(128)}
    seqs = {nm: make_sequence(layer, end, g) for nm in prompts}
    weights = layer_weights(layer, g)
    page = 16
    mgr = make_manager(
        layer, page, window_pages=128 * (end // page + 2), entry_pages=128 * 2 + 8, state_pages=128 * 9 + 8
    )
    steps = []
    names = list(prompts)
    for group in (names[0::2], names[1::2]):  # two prefill steps of 64 sequences each
        steps.append([(nm, prompts[nm]) for nm in group])
    done = dict(prompts)
    while any(done[nm] < end for nm in names):
        step = [(nm, 1) for nm in names if done[nm] < end]
        for nm, _ in step:
            done[nm] += 1
        steps.append(step)
    outs, plans = run_steps(layer, mgr, seqs, steps, weights)
    check_visible_end(plans, 128)
    crossing = [int(((p.positions + 1) % 128 == 0).sum()) for p in plans[2:]]
    assert all(c == 1 for c in crossing[:-1]), crossing  # one sequence of the batch at the boundary per step
    compare(layer, seqs, outs, weights, "hca ratio 128")


@pytest.mark.parametrize("page_size", [1, 5])
def test_hca_ratio_8_every_residue_mod_8(page_size):
    layer = tiny_layer("hca", 8)
    g = torch.Generator().manual_seed(8 + page_size)
    prompts = {f"r{r}m{m}": 8 * m + r for r in range(8) for m in (0, 1, 3) if 8 * m + r > 0}
    n_decode = 10
    seqs = {nm: make_sequence(layer, L + n_decode, g) for nm, L in prompts.items()}
    weights = layer_weights(layer, g)
    rng = random.Random(page_size)
    queues = {nm: chunked(L, rng) for nm, L in prompts.items()}
    steps = []
    while any(queues.values()):
        steps.append([(nm, q.pop(0)) for nm, q in queues.items() if q])
    for _ in range(n_decode):
        steps.append([(nm, 1) for nm in prompts])
    total = sum(s["q"].shape[0] for s in seqs.values())
    mgr = make_manager(layer, page_size, window_pages=2 * total // page_size + 64, entry_pages=total // page_size + 64,
                       state_pages=len(seqs) * (8 // min(page_size, 8) + 1) + 8)  # fmt: skip
    outs, plans = run_steps(layer, mgr, seqs, steps, weights)
    check_visible_end(plans, 8)
    compare(layer, seqs, outs, weights, f"hca ratio 8 page {page_size}")
