"""longattn.nn.DeepseekV4Attention against transformers' eager DeepSeek-V4 implementation (CPU, fp32).

A tiny random DeepSeek-V4 (3 layers: SWA, CSA, HCA; hidden 64, 4 heads of 32 dims, RoPE on the last 8,
window 16, indexer 8 x 16 top-4) built locally, with the real compress rates 4 / 128 and the real
RoPE tables (theta 10000 plain; 160000 with YaRN factor 16 over 65536, beta 32/1). Prompts of 300
tokens cross 75 CSA and 2 HCA block boundaries; generation adds 40 more.

Tolerance (layer outputs on prefill). Both implementations evaluate the same function in fp32 with
different operation orders (gathers vs dense masks, chunked softmax merges, pooling formulas), so
neither is "the" answer; the truth is a float64 evaluation written from the spec (tests/nn/dense_v4.py).
The rule is the project's (flash-attention's test rule), applied both ways: each
implementation's error against the truth is at most twice the other's, plus a few fp32 roundings of
the output (8 u |y|max, u = 2^-24) for an exceptionally lucky one. So neither can be wrong while the
other is right, and |longattn - transformers| <= 3 x the smaller error + that floor (asserted too).
Nothing here is a tuned constant. The indexer's top-4 is precondition-checked to have a relative
score gap > 1e-4 at its boundary in float64 (exact ties count as 0: the two implementations break
ties differently, see python/longattn/nn/README.md), so no fp32 rounding can change the selection.
"""

import copy
import dataclasses
import inspect
import math

import pytest
import torch

transformers = pytest.importorskip(
    "transformers", reason="transformers is not installed (pip install longattn[transformers])"
)
try:
    from transformers import DeepseekV4Config, DeepseekV4ForCausalLM, DynamicCache  # noqa: F401  (has DeepSeek-V4)
    from transformers.masking_utils import create_sliding_window_causal_mask
    from transformers.models.deepseek_v4 import modeling_deepseek_v4 as hf
except ImportError as exc:  # transformers older than 5.8 has no DeepSeek-V4
    pytest.skip(f"this transformers ({transformers.__version__}) has no DeepSeek-V4: {exc}", allow_module_level=True)

from packaging.version import Version  # noqa: E402

if Version(transformers.__version__) < Version("5.9.0"):
    pytest.skip(
        f"transformers {transformers.__version__}: its eager DeepSeek-V4 lets prefill queries see compressed "
        "entries of later blocks (fixed in 5.9); parity is defined against >= 5.9 (tested: 5.24.0)",
        allow_module_level=True,
    )

from longattn.integrations.transformers import LongattnCache, swap_attention  # noqa: E402
from longattn.nn import DeepseekV4Attention  # noqa: E402

from tests.nn.dense_v4 import dense_v4_layer, topk_margin  # noqa: E402
from tests.nn.helpers import randomize_attention, tiny_config  # noqa: E402

U32 = 2.0**-24
KINDS = ["swa", "csa", "hca"]
PROMPT, NEW = 300, 40


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    cfg = tiny_config()
    m = DeepseekV4ForCausalLM(cfg).eval()
    g = torch.Generator().manual_seed(1)
    for layer in m.model.layers:
        randomize_attention(layer.self_attn, g)
    with torch.no_grad():
        m.model.embed_tokens.weight.normal_(0, 1, generator=g)
    return m


def hf_layer_forward(hf_attn, rotary, x):
    B, S, _ = x.shape
    pid = torch.arange(S).unsqueeze(0).expand(B, -1)
    pe = {"main": rotary(x, pid, "main"), "compress": rotary(x, pid, "compress")}
    mask_kw = "cache" if "cache" in _params(create_sliding_window_causal_mask) else "past_key_values"
    mask = create_sliding_window_causal_mask(
        config=hf_attn.config, inputs_embeds=x, attention_mask=None, position_ids=pid, **{mask_kw: None}
    )
    return hf_attn(x, pe, pid, mask, **{_cache_kw(hf_attn.forward): None})[0]


def _params(fn):
    return inspect.signature(fn).parameters


def _cache_kw(fn):
    return "cache" if "cache" in _params(fn) else "past_key_values"  # renamed in transformers 5.24


# --- layer outputs on prefill -----------------------------------------------------------------------------


def check_layer_parity(hf_attn, rotary, ours, seed, label):
    """Layer outputs on a 2 x PROMPT prefill against transformers' eager module, both judged against the
    float64 evaluation by the 2x rule (module docstring)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, PROMPT, ours.config.hidden_size, generator=g)
    for b in range(2):
        assert topk_margin(ours, x[b]) > 1e-4, "the float64 top-k is decided by a near tie: pick another seed"
    with torch.no_grad():
        ref = hf_layer_forward(hf_attn, rotary, x)
        out, _ = ours(x)
    truth = torch.stack([dense_v4_layer(ours, x[b]) for b in range(2)])
    err_hf = (ref.double() - truth).abs().max().item()
    err_ours = (out.double() - truth).abs().max().item()
    diff = (out - ref).abs().max().item()
    floor = 8 * U32 * truth.abs().max().item()
    print(
        f"{label}: max |longattn - transformers| = {diff:.3e}; "
        f"vs float64: longattn {err_ours:.3e}, transformers {err_hf:.3e} (|y|max {truth.abs().max().item():.2f})"
    )
    assert err_ours <= 2 * err_hf + floor, (label, err_ours, err_hf)
    assert err_hf <= 2 * err_ours + floor, (label, err_ours, err_hf)
    assert diff <= 3 * min(err_hf, err_ours) + floor, (label, diff, err_hf, err_ours)


@pytest.mark.parametrize("kind", KINDS)
def test_layer_prefill_matches_transformers_eager(model, kind):
    idx = KINDS.index(kind)
    hf_attn = model.model.layers[idx].self_attn
    assert isinstance(hf_attn, hf.DeepseekV4Attention)
    ours = DeepseekV4Attention(model.config, idx)
    ours.load_state_dict(hf_attn.state_dict(), strict=True)
    check_layer_parity(hf_attn, model.model.rotary_emb, ours, 10 + idx, kind)


# --- nested rope_parameters whose YaRN table has no attention_factor ----------------------------------------

NESTED_YARN = {
    "main": {"rope_type": "default", "rope_theta": 10000.0},
    "compress": {"rope_type": "yarn", "rope_theta": 160000.0, "factor": 16.0,
                 "original_max_position_embeddings": 65536, "beta_fast": 32, "beta_slow": 1},
}  # fmt: skip


@pytest.mark.parametrize("kind", KINDS)
def test_nested_yarn_without_attention_factor_matches_transformers(kind):
    """Nested ``rope_parameters`` given by the user keep no ``attention_factor`` (DeepseekV4Config only
    adds ``attention_factor: 1.0`` when it nests flat parameters itself), so transformers derives YaRN's
    mscale 0.1 ln(16) + 1 = 1.277 and multiplies the compress table's cos and sin by it: every rotated
    vector (q, kv, compressed entries, indexer q and keys, the output's inverse rotation) carries it.
    longattn applies the same factor; layer outputs match transformers' eager module."""
    cfg = tiny_config(rope_parameters=copy.deepcopy(NESTED_YARN))
    assert "attention_factor" not in cfg.rope_parameters["compress"]
    rotary = hf.DeepseekV4RotaryEmbedding(cfg)
    mscale = 0.1 * math.log(16) + 1
    assert rotary.compress_attention_scaling == pytest.approx(mscale) and rotary.main_attention_scaling == 1.0
    idx = KINDS.index(kind)
    torch.manual_seed(0)
    hf_attn = hf.DeepseekV4Attention(cfg, idx).eval()
    randomize_attention(hf_attn, torch.Generator().manual_seed(23 + idx))
    ours = DeepseekV4Attention(cfg, idx)
    ours.load_state_dict(hf_attn.state_dict(), strict=True)
    assert ours.rope_attention_factor == pytest.approx(1.0 if kind == "swa" else mscale)
    check_layer_parity(hf_attn, rotary, ours, 30 + idx, f"{kind}, nested YaRN")


def test_nested_yarn_generation_tokens_identical():
    """The whole model on such a config: greedy tokens identical to transformers'."""
    torch.manual_seed(0)
    m = DeepseekV4ForCausalLM(tiny_config(rope_parameters=copy.deepcopy(NESTED_YARN))).eval()
    g = torch.Generator().manual_seed(1)
    for layer in m.model.layers:
        randomize_attention(layer.self_attn, g)
    with torch.no_grad():
        m.model.embed_tokens.weight.normal_(0, 1, generator=g)
    ours = swap_attention(copy.deepcopy(m), page_size=16)
    ids = torch.randint(1, 128, (2, 140), generator=torch.Generator().manual_seed(9))
    kw = dict(max_new_tokens=10, min_new_tokens=10, do_sample=False)
    assert torch.equal(ours.generate(ids, **kw), m.generate(ids, **kw))


def test_state_dict_names_and_shapes_match_transformers(model):
    for idx, layer in enumerate(model.model.layers):
        ours = DeepseekV4Attention(model.config, idx)
        theirs = {k.replace("indexer.weights_proj", "indexer.scorer.weights_proj"): v  # name before 5.10
                  for k, v in layer.self_attn.state_dict().items()}  # fmt: skip
        assert {k: tuple(v.shape) for k, v in ours.state_dict().items()} == {
            k: tuple(v.shape) for k, v in theirs.items()
        }


def test_older_indexer_key_loads(model):
    """transformers 5.8 / 5.9 stored the indexer head weights at ``indexer.weights_proj``."""
    sd = dict(model.model.layers[1].self_attn.state_dict())
    if "compressor.indexer.scorer.weights_proj.weight" in sd:
        sd["compressor.indexer.weights_proj.weight"] = sd.pop("compressor.indexer.scorer.weights_proj.weight")
    ours = DeepseekV4Attention(model.config, 1)
    ours.load_state_dict(sd, strict=True)
    assert torch.equal(ours.compressor.indexer.scorer.weights_proj.weight, sd["compressor.indexer.weights_proj.weight"])


# --- generation --------------------------------------------------------------------------------------------


def _generate(m, ids, **kw):
    return m.generate(ids, max_new_tokens=NEW, min_new_tokens=NEW, do_sample=False, **kw)


@pytest.fixture(scope="module")
def swapped_pair(model):
    """(transformers-eager model, the same model with longattn attention) sharing every weight."""
    ours = swap_attention(copy.deepcopy(model), page_size=16)
    return model, ours


def test_swap_keeps_weights_and_replaces_every_attention(swapped_pair):
    theirs, ours = swapped_pair
    mods = [layer.self_attn for layer in ours.model.layers]
    assert all(isinstance(m, DeepseekV4Attention) for m in mods)
    assert [m.kind for m in mods] == KINDS
    for a, b in zip(theirs.model.layers, ours.model.layers):
        sa, sb = a.self_attn.state_dict(), b.self_attn.state_dict()
        assert all(
            torch.equal(v, sb[k.replace("indexer.weights_proj", "indexer.scorer.weights_proj")]) for k, v in sa.items()
        )


def test_greedy_generation_tokens_identical(swapped_pair):
    theirs, ours = swapped_pair
    g = torch.Generator().manual_seed(5)
    ids = torch.randint(1, 128, (2, PROMPT), generator=g)
    ref = _generate(theirs, ids)
    out = _generate(ours, ids)
    assert out.shape == (2, PROMPT + NEW)
    n_same = int((out[:, PROMPT:] == ref[:, PROMPT:]).all(0).long().cumprod(0).sum())
    print(f"greedy: {n_same} of {NEW} new tokens identical for both rows")
    assert torch.equal(out, ref)


def test_four_indexer_heads_differ_only_by_tie_breaking():
    """With 4 indexer heads some tokens have all-negative head weights: every visible score is <= 0 and
    the all-clipped entries tie at exactly 0 at the top-k boundary. longattn breaks ties toward the
    smaller entry id, transformers' ``Tensor.topk`` unspecified; made to break them like longattn, the
    transformers model generates exactly longattn's tokens."""
    torch.manual_seed(0)
    m = DeepseekV4ForCausalLM(tiny_config(index_n_heads=4)).eval()
    g = torch.Generator().manual_seed(1)
    for layer in m.model.layers:
        randomize_attention(layer.self_attn, g)
    with torch.no_grad():
        m.model.embed_tokens.weight.normal_(0, 1, generator=g)
    ours = swap_attention(copy.deepcopy(m), page_size=16)
    ids = torch.randint(1, 128, (2, PROMPT), generator=torch.Generator().manual_seed(5))
    out = _generate(ours, ids)

    def topk_ties_to_smaller_index(self, k, dim=-1, largest=True, sorted=True):
        values, indices = torch.sort(self, dim=dim, descending=largest, stable=True)
        return torch.return_types.topk((values.narrow(dim, 0, k), indices.narrow(dim, 0, k)))

    original = torch.Tensor.topk
    torch.Tensor.topk = topk_ties_to_smaller_index  # used by transformers' indexer only (generate uses argmax)
    try:
        ref = _generate(m, ids)
    finally:
        torch.Tensor.topk = original
    assert torch.equal(out, ref)


def test_generation_with_an_explicit_cache_continues(swapped_pair):
    """A user-made LongattnCache: prefill+decode in one generate, then a second generate continues it."""
    theirs, ours = swapped_pair
    g = torch.Generator().manual_seed(6)
    ids = torch.randint(1, 128, (1, 140), generator=g)
    ref = theirs.generate(ids, max_new_tokens=12, min_new_tokens=12, do_sample=False)
    cache = LongattnCache(ours, max_batch_size=1, max_context=160, page_size=8)
    kw = {_cache_kw(ours.forward): cache}
    first = ours.generate(ids, max_new_tokens=5, min_new_tokens=5, do_sample=False, **kw)
    assert cache.seq_lengths() == [144] and cache.get_seq_length() == 144  # the last token is not fed yet
    second = ours.generate(first, max_new_tokens=7, min_new_tokens=7, do_sample=False, **kw)
    assert torch.equal(second, ref)


def test_chunked_prompt_generates_the_same_tokens(swapped_pair):
    """A prompt longer than max_step_tokens is prefilled in chunks inside every layer: same tokens."""
    theirs, ours = swapped_pair
    ids = torch.randint(1, 128, (1, 140), generator=torch.Generator().manual_seed(8))
    ref = theirs.generate(ids, max_new_tokens=6, min_new_tokens=6, do_sample=False)
    cache = LongattnCache(ours, max_batch_size=1, max_context=146, page_size=8, max_step_tokens=24)
    out = ours.generate(ids, max_new_tokens=6, min_new_tokens=6, do_sample=False, **{_cache_kw(ours.forward): cache})
    assert torch.equal(out, ref)


def test_left_padded_batch_equals_each_row_alone(swapped_pair):
    """Padding positions are not tokens: every row of a left-padded batch generates what it generates
    alone (transformers' eager implementation pools pad positions into compressed entries instead)."""
    _, ours = swapped_pair
    g = torch.Generator().manual_seed(7)
    long_ids = torch.randint(1, 128, (1, 150), generator=g)
    short_ids = torch.randint(1, 128, (1, 133), generator=g)
    batch = torch.zeros(2, 150, dtype=torch.long)
    mask = torch.zeros(2, 150, dtype=torch.long)
    batch[0], mask[0] = long_ids[0], 1
    batch[1, 17:], mask[1, 17:] = short_ids[0], 1
    out = ours.generate(batch, attention_mask=mask, max_new_tokens=10, min_new_tokens=10, do_sample=False)
    alone = [ours.generate(ids, max_new_tokens=10, min_new_tokens=10, do_sample=False) for ids in (long_ids, short_ids)]
    assert torch.equal(out[0, 150:], alone[0][0, 150:])
    assert torch.equal(out[1, 150:], alone[1][0, 133:])


def _returned_cache(out):
    """The cache of a model or generate output (field ``cache`` from transformers 5.24, before
    ``past_key_values``)."""
    names = {f.name for f in dataclasses.fields(out)}
    return out.cache if "cache" in names else out.past_key_values


def test_forward_without_cache_matches_eager(swapped_pair):
    theirs, ours = swapped_pair
    ids = torch.randint(1, 128, (2, 40), generator=torch.Generator().manual_seed(8))
    with torch.no_grad():
        a = theirs(ids, use_cache=False).logits
        out = ours(ids, use_cache=False)
    assert torch.equal(a.argmax(-1), out.logits.argmax(-1))
    assert _returned_cache(out) is None  # as transformers': the call's own cache is not returned


def test_generate_without_cache(swapped_pair):
    """generate(use_cache=False) runs a whole forward per token (each on a cache of its own, not
    returned): the tokens of the cached generate, and of transformers' model without a cache; a
    left-padded batch gives the same tokens with and without the cache."""
    theirs, ours = swapped_pair
    ids = torch.randint(1, 128, (2, 130), generator=torch.Generator().manual_seed(11))
    kw = dict(max_new_tokens=6, min_new_tokens=6, do_sample=False)
    out = ours.generate(ids, use_cache=False, **kw)
    assert torch.equal(out, ours.generate(ids, **kw))
    assert torch.equal(out, theirs.generate(ids, use_cache=False, **kw))
    mask = torch.ones_like(ids)
    mask[1, :9] = 0
    padded = ids.masked_fill(mask == 0, 0)
    assert torch.equal(
        ours.generate(padded, attention_mask=mask, use_cache=False, **kw),
        ours.generate(padded, attention_mask=mask, **kw),
    )


def test_forward_cache_continues_in_a_manual_decode_loop(swapped_pair):
    """``out = model(ids, use_cache=True)`` returns a cache sized for that forward; feeding it back one
    token at a time (``past_key_values=``, the name of transformers < 5.24, and ``cache=``) grows it on
    demand and gives the logits of one long forward and of transformers' eager model with its own
    cache, across the 128-token HCA block boundary."""
    theirs, ours = swapped_pair
    ids = torch.randint(1, 128, (2, 125), generator=torch.Generator().manual_seed(12))
    steps, kw = 8, _cache_kw(ours.forward)
    with torch.no_grad():
        out, ref = ours(ids, use_cache=True), theirs(ids, use_cache=True)
        cache, ref_cache = _returned_cache(out), _returned_cache(ref)
        assert isinstance(cache, LongattnCache) and cache.max_context == 125  # sized for this forward
        logits, ref_logits, tokens = [out.logits[:, -1]], [ref.logits[:, -1]], [ids]
        for k in range(steps):
            nxt = logits[-1].argmax(-1, keepdim=True)
            assert torch.equal(nxt, ref_logits[-1].argmax(-1, keepdim=True))
            tokens.append(nxt)
            if k == 0:  # the older name, as in most user code
                with pytest.warns(Warning) if kw == "cache" else _no_warning():
                    out = ours(nxt, past_key_values=cache)
            else:
                out = ours(nxt, **{kw: cache})
            ref = theirs(nxt, **{kw: ref_cache})
            assert _returned_cache(out) is cache
            logits.append(out.logits[:, -1])
            ref_logits.append(ref.logits[:, -1])
        whole = ours(torch.cat(tokens, 1), use_cache=False).logits[:, 124:]
    assert cache.seq_lengths() == [125 + steps] * 2 and cache.max_context >= 125 + steps
    got = torch.stack(logits, 1)
    diff_whole = (got - whole).abs().max().item()
    diff_hf = (got - torch.stack(ref_logits, 1)).abs().max().item()
    print(f"manual loop: max |logits - one long forward| {diff_whole:.2e}, - transformers {diff_hf:.2e}")
    torch.testing.assert_close(got, whole, atol=2e-5, rtol=0)
    torch.testing.assert_close(got, torch.stack(ref_logits, 1), atol=2e-5, rtol=0)


class _no_warning:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_second_generate_continues_the_returned_cache(swapped_pair):
    """Multi-turn: the cache ``generate`` returns (sized for its max_length) is passed back with the
    sequence plus a new user turn, twice; each turn generates what transformers' model generates for
    the whole conversation at once (and a plain continuation what one long generate gives)."""
    theirs, ours = swapped_pair
    g = torch.Generator().manual_seed(13)
    ids = torch.randint(1, 128, (1, 120), generator=g)
    kw = dict(do_sample=False, return_dict_in_generate=True)
    first = ours.generate(ids, max_new_tokens=5, min_new_tokens=5, **kw)
    cache = _returned_cache(first)
    assert isinstance(cache, LongattnCache) and cache.max_context == 124  # generate sizes it max_length - 1
    seq = first.sequences
    for turn in range(2):
        seq = torch.cat([seq, torch.randint(1, 128, (1, 6), generator=g)], 1)
        out = ours.generate(seq, max_new_tokens=7, min_new_tokens=7, **kw, **{_cache_kw(ours.forward): cache})
        assert _returned_cache(out) is cache
        ref = theirs.generate(seq, max_new_tokens=7, min_new_tokens=7, do_sample=False)
        assert torch.equal(out.sequences, ref), turn
        seq = out.sequences
    assert cache.seq_lengths() == [seq.shape[1] - 1] and cache.max_context >= seq.shape[1]
    more = ours.generate(seq, max_new_tokens=4, min_new_tokens=4, **kw, **{_cache_kw(ours.forward): cache})
    assert torch.equal(more.sequences, theirs.generate(seq, max_new_tokens=4, min_new_tokens=4, do_sample=False))


def test_fixed_size_cache_says_how_to_grow(swapped_pair):
    _, ours = swapped_pair
    ids = torch.randint(1, 128, (1, 20), generator=torch.Generator().manual_seed(14))
    cache = LongattnCache(ours, max_batch_size=1, max_context=22, page_size=8, growable=False)
    assert cache.get_max_length() == 22
    with pytest.raises(ValueError, match=r"max_context=22; make the cache with a larger max_context=.*growable=True"):
        ours.generate(ids, max_new_tokens=4, do_sample=False, **{_cache_kw(ours.forward): cache})


def test_output_attentions_is_refused(swapped_pair):
    """The attention weights are never materialised: asking for them raises instead of returning ()."""
    _, ours = swapped_pair
    ids = torch.randint(1, 128, (1, 8))
    with pytest.raises(NotImplementedError, match="output_attentions"), torch.no_grad():
        ours(ids, output_attentions=True)
    with pytest.raises(NotImplementedError, match="output_attentions"):
        ours.generate(ids, max_new_tokens=2, do_sample=False, output_attentions=True, return_dict_in_generate=True)
    ours.config.output_attentions = True
    try:
        with pytest.raises(NotImplementedError, match="output_attentions"), torch.no_grad():
            ours(ids)
    finally:
        ours.config.output_attentions = False
    with torch.no_grad():
        assert ours(ids, output_attentions=False).logits.shape == (1, 8, 128)


def test_unsupported_uses_raise_clearly(swapped_pair):
    theirs, ours = swapped_pair
    ids = torch.randint(1, 128, (1, 8))
    with pytest.raises(TypeError, match="PagedKVCache"), torch.no_grad():
        ours(ids, **{_cache_kw(ours.forward): DynamicCache(config=ours.config)})
    with pytest.raises(NotImplementedError, match="beam"):
        ours.generate(ids, max_new_tokens=2, num_beams=2, do_sample=False)


@pytest.mark.parametrize("how", ["assistant_model", "prompt_lookup_num_tokens"])
def test_assisted_decoding_is_refused(swapped_pair, how):
    """Assisted / speculative decoding rolls the cache back: refused with NotImplementedError before
    anything runs (transformers 5.24 would raise a ValueError about stateful models, 5.25 a TypeError
    in the cache's activate_past_recording)."""
    theirs, ours = swapped_pair
    ids = torch.randint(1, 128, (1, 8))
    arg = {"assistant_model": theirs, "prompt_lookup_num_tokens": 3}[how]
    with pytest.raises(NotImplementedError, match="assisted"):
        ours.generate(ids, max_new_tokens=4, do_sample=False, **{how: arg})
    cache = LongattnCache(ours, max_batch_size=1, max_context=8)
    with pytest.raises(NotImplementedError, match="assisted"):
        cache.activate_past_recording(recurrent_states_to_keep=3)  # the 5.25 call


# --- training: gradients and fine-tuning steps ---------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_layer_gradients_match_transformers_eager(model, kind):
    """Gradients of every weight through one layer (grad mode, no cache: longattn's training path) against
    transformers' eager module, both judged against float64 autograd of the spec (tests/nn/dense_v4.py
    with live weights) by the 2x rule of the module docstring, with a floor of a few fp32 roundings of a
    64-term sum (8 x 66 u |g|max). The indexer (a top-k selection) gets no gradient in either."""
    idx = KINDS.index(kind)
    hf_attn = copy.deepcopy(model.model.layers[idx].self_attn)
    ours = DeepseekV4Attention(model.config, idx)
    ours.load_state_dict(hf_attn.state_dict(), strict=True)
    g = torch.Generator().manual_seed(50 + idx)
    x = torch.randn(1, PROMPT, model.config.hidden_size, generator=g)
    g_out = torch.randn(1, PROMPT, model.config.hidden_size, generator=g, dtype=torch.float64)
    assert topk_margin(ours, x[0]) > 1e-4, "the float64 top-k is decided by a near tie: pick another seed"
    (hf_layer_forward(hf_attn, model.model.rotary_emb, x).double() * g_out).sum().backward()
    out, _ = ours(x)
    (out.double() * g_out).sum().backward()
    m64 = copy.deepcopy(ours).double()
    for p in m64.parameters():
        p.grad = None
    (dense_v4_layer(m64, x[0].double(), live=True) * g_out[0]).sum().backward()
    hf_params, t_params = dict(hf_attn.named_parameters()), dict(m64.named_parameters())
    for name, p in ours.named_parameters():
        h, t = hf_params[name].grad, t_params[name].grad
        if name.startswith("compressor.indexer."):
            assert p.grad is None and (h is None or not bool(h.any())), name
            continue
        floor = 8 * 66 * U32 * t.abs().max().item()
        err_ours = (p.grad.double() - t).abs().max().item()
        err_hf = (h.double() - t).abs().max().item()
        assert err_ours <= 2 * err_hf + floor, (kind, name, err_ours, err_hf, floor)
        assert err_hf <= 2 * err_ours + floor, (kind, name, err_ours, err_hf, floor)


def test_swapped_model_fine_tunes_with_the_same_losses(model):
    """A few SGD steps of the whole model on a language-modelling loss: the swapped model's losses are
    transformers' own (the attention's gradients agree as above; the rest of the model is shared code)."""
    hf_model = copy.deepcopy(model)
    ours = swap_attention(copy.deepcopy(model), page_size=16)
    ids = torch.randint(1, 128, (2, 150), generator=torch.Generator().manual_seed(12))
    losses = []
    for m in (hf_model, ours):
        opt = torch.optim.SGD(m.parameters(), lr=0.05)
        run = []
        for _ in range(3):
            loss = m(ids, labels=ids, use_cache=False).loss
            opt.zero_grad()
            loss.backward()
            opt.step()
            run.append(loss.item())
        losses.append(run)
    print("losses transformers / longattn:", losses)
    assert losses[0][-1] < losses[0][0]  # it does learn
    for a, b in zip(*losses):
        assert abs(a - b) <= 1e-4 * abs(a), losses
