"""``HybridAttention.warmup``: every kernel variant a realistic workload launches was launched by the
warm-up first (so a GPU compiles nothing while serving it).

A variant is what selects one compiled kernel in ``JITFunction.run``: the kernel, its constexprs and
launch options, and the JIT's specialisation of the runtime arguments (integer types, ``== 1`` and
``% 16``, pointer alignment), computed for sm_90 by the JIT's own binder from the recorded launches
(``tests/triton/sm90_compile.py``: ``recorded_launches``, ``launch_key``). The kernels are recorded,
not run (the launchers' host code decides every variant before a kernel runs), so the layers here
have the V4-Flash shapes (64 heads x 512, 64-entry pages, window 128, top-512) at contexts up to 128K
tokens. Each case runs twice: with the launchers' interpreter choices, and with their GPU choices
(H200: the GPU tiles of ``default_config`` as in ``test_triton_gpu_configs.py``, 132 SMs for the
split heuristics, bitonic merges and bf16 dots).

The workload differs from the warm-up on purpose: other batch sizes (between the warm-up's), other
prefill chunk lengths, mixed prefill + decode steps, contexts that are not page multiples, several
sequences at once; sequences of 100K+ tokens come from ``CacheManager.plan_prefilled`` (a prefill
done elsewhere), as the warm-up's own long contexts.
"""

from __future__ import annotations

import random

import pytest
import torch

from tests.helpers.device import CAN_RUN_TRITON, TRITON_SKIP_REASON

pytestmark = pytest.mark.skipif(not CAN_RUN_TRITON, reason=TRITON_SKIP_REASON)

if CAN_RUN_TRITON:
    import longattn
    from longattn.cache import CacheManager
    from longattn.configs import V4_FLASH
    from longattn.ops.append import triton_append as ta
    from longattn.ops.combine import triton_combine as tc
    from longattn.ops.compress import triton_compress as tcp
    from longattn.ops.indexer import triton_indexer as ti
    from longattn.ops.sparse_attention import triton_sparse_attention as tsa

    from tests.triton.sm90_compile import launch_key, recorded_launches

    MODULES = (ta, tc, tcp, ti, tsa)
    LAYERS = {"swa": V4_FLASH.layer(0), "csa": V4_FLASH.layer(2), "hca": V4_FLASH.layer(3)}

CUDA = torch.device("cuda")  # only passed to the config functions; nothing runs on it
PAGE = 64
MAX_CONTEXT = {"swa": 4096, "csa": 16384, "hca": 1 << 19}  # HCA: up to 4096 entries, 1 to 16 KV splits
MAX_BATCH = 16
CHUNKS = (64, 256)


@pytest.fixture(params=["interpreter", "gpu"])
def tiles(request, monkeypatch):
    """The launchers' choices on these CPU tensors: the interpreter's, or an H200's (GPU tiles, 132 SMs,
    no interpreter work-arounds)."""
    if request.param == "gpu":
        for mod in (tcp, ti, tsa):
            monkeypatch.setattr(mod, "interpreting", lambda: False)
        monkeypatch.setattr(tsa, "_num_sms", lambda device: 132)
        monkeypatch.setattr(ti, "_num_sms", lambda device: 132)
        for mod, name in ((tsa, "default_config"), (ti, "default_config"), (ti, "select_config"),
                          (tcp, "default_config"), (tcp, "pool_config")):  # fmt: skip
            real = getattr(mod, name)
            at = 2 if mod is ti else 3  # position of the device argument

            def on_cuda(*args, _real=real, _at=at, **kw):
                return _real(*args[:_at], CUDA, *args[_at + 1 :], **kw)

            monkeypatch.setattr(mod, name, on_cuda)
    return request.param


def keys(launches) -> set:
    out = set()
    for fn, _grid, args, kwargs in launches:
        key = launch_key(fn, args, kwargs)
        if key is None:
            pytest.skip("this triton's JIT binder differs from the one sm90_compile.jit_specialisation knows")
        out.add(key)
    return out


def make_layer(kind, kv_format, index_format="float"):
    """A layer and its manager with room for the workload: three long sequences and a few dozen short ones."""
    L = LAYERS[kind]
    r = L.compress_ratio
    comp = 3 * (MAX_CONTEXT[kind] // max(r, 1) // PAGE + 1) + 64
    m = CacheManager(ratios=(r,) if r else (), page_size=PAGE, num_window_pages=200, window=L.window,
                     num_compressed_pages={r: comp} if r else {}, num_state_pages={r: 200} if r else {})  # fmt: skip
    return longattn.HybridAttention(L, m, kv_dtype=torch.bfloat16, kv_format=kv_format, index_format=index_format,
                                    backend="triton")  # fmt: skip


def warmup_keys(att, **kw) -> set:
    args = dict(max_batch=MAX_BATCH, prefill_chunks=CHUNKS, max_context=MAX_CONTEXT[att.kind])
    args.update(kw)
    with recorded_launches(MODULES) as launches:
        report = att.warmup(**args)
    assert report.skipped is None and report.steps > 0, report
    return keys(launches)


def step_inputs(L, T, g):
    """What a model passes for T tokens: bf16 activations, an fp32 sink and fp32 norm weights."""
    c = 2 if L.overlap else 1
    D, Hi, Di = L.head_dim, L.index_n_heads, L.index_head_dim

    def bf16(*shape):
        return torch.randn(*shape, generator=g).to(torch.bfloat16)

    x = dict(q=bf16(T, L.n_heads, D), kv=bf16(T, D), attn_sink=torch.randn(L.n_heads, generator=g))
    if L.compress_ratio:
        x.update(compress_a=bf16(T, c * D), compress_b=bf16(T, c * D), compress_norm_weight=torch.ones(D))
    if L.uses_indexer:
        x.update(index_q=bf16(T, Hi, Di), index_weights=bf16(T, Hi), index_a=bf16(T, 2 * Di), index_b=bf16(T, 2 * Di),
                 index_norm_weight=torch.ones(Di))  # fmt: skip
    return x


def workload(att, top=None, run=None, seed=0):
    """A serving-like run on ``att``'s own caches with contexts up to ``top`` tokens (default
    ``MAX_CONTEXT``); ``run(plan)`` runs a step (default: ``att`` on ``step_inputs``). Returns the
    number of steps."""
    L, m = att.layer, att.manager
    rng, g = random.Random(seed), torch.Generator().manual_seed(seed)
    top = MAX_CONTEXT[L.kind] if top is None else top
    if run is None:

        def run(plan):
            att(plan, **step_inputs(L, plan.num_tokens, g))

    steps = 0

    def step(batch):  # batch: [(seq id, tokens)]
        nonlocal steps
        for sid, _ in batch:
            if sid not in m:
                m.add_sequence(sid)
        counts = [n for _, n in batch]
        run(m.plan([s for s, _ in batch], torch.tensor([0] + counts).cumsum(0)))
        steps += 1

    def prefilled(sid, n):  # a sequence of n tokens prefilled elsewhere: only its tail is written here
        nonlocal steps
        m.add_sequence(sid)
        tail = min(n, max(L.window - 1, 2 * L.compress_ratio if L.overlap else L.compress_ratio))
        run(m.plan_prefilled(sid, n, tail))
        steps += 1

    # chunked prefill of three sequences (chunks of other lengths than the warm-up's), mixed in steps
    step([("a", 100), ("b", 37)])  # (HCA: no entry visible yet)
    step([("a", 200), ("b", 100), ("c", 9)])
    step([("a", 123), ("c", 300)])
    # long sequences prefilled elsewhere: near the largest context, and two in between (not page multiples)
    prefilled("long", top - 333)
    prefilled("mid", top // 3 + 17)
    prefilled("short", 5 * L.window + 3)
    live = ["a", "b", "c", "long", "mid", "short"]
    if L.compress_ratio:  # a block table 32 pages wide (the JIT specialises integers that are multiples of 16)
        prefilled("w32", 32 * m.page_size * L.compress_ratio - 10)
        live.append("w32")
    # decode of batch sizes between the warm-up's ladder (and on it), with and without the long ones
    for b in (1, 5, 7, 11, 13, 16, 3, 10):
        new = [f"n{steps}_{i}" for i in range(max(0, b - len(live)))]
        batch = rng.sample(live, min(b, len(live))) + new
        step([(s, 1) for s in batch])
        live += new
        if len(live) > 12:  # finished requests leave (their pages are reused)
            for s in rng.sample([s for s in live if s not in ("long", "mid")], 3):
                m.free_sequence(s)
                live.remove(s)
    # a mixed step: a new prompt's first chunk with decode tokens of others; then the long one decodes alone
    step([("p", 77)] + [(s, 1) for s in live[:6]])
    step([("long", 1)])
    step([("mid", 1), ("p", 150)])
    return steps


def _missed_by_warmup(att):
    """(the variant keys a workload launches, those of them its warm-up did not launch)."""
    warm = warmup_keys(att)
    with recorded_launches(MODULES) as launches:
        n = workload(att)
    used = keys(launches)
    assert n > 10 and len(used) >= 2
    return used, used - warm


@pytest.mark.parametrize("kv_format", ["float", "fp8"])
@pytest.mark.parametrize("kind", ["swa", "csa", "hca"])
def test_warmup_launches_every_variant_of_a_workload(kind, kv_format, tiles):
    missing = _missed_by_warmup(make_layer(kind, kv_format))[1]
    assert not missing, f"{kind} {kv_format} ({tiles}): {len(missing)} variants the warm-up missed: {sorted(missing)}"


def test_warmup_with_fp8_index_keys_launches_every_variant_of_a_workload(tiles):
    """A CSA layer with FP8 indexer keys (``index_format="fp8"``): its warm-up builds scratch pools of
    that format and covers the workload; a warm-up of the float-index layer misses the FP8-index
    variants of the indexer compressor and the top-k (so this check can fail)."""
    used, missing = _missed_by_warmup(make_layer("csa", "float", "fp8"))
    assert not missing, f"csa fp8 index ({tiles}): {len(missing)} variants the warm-up missed: {sorted(missing)}"
    missed = used - warmup_keys(make_layer("csa", "float"))
    assert {"_compress_kv_kernel", "_indexer_topk_partial_kernel"} <= {k[0] for k in missed}, sorted(missed)


def test_a_short_or_bf16_warmup_misses_variants(tiles):
    """The check above can fail: a warm-up up to 15 compressed pages misses the block tables 16 and
    32 pages wide (integers the JIT specialises as multiples of 16), and one on bf16 pools misses
    every FP8-pool variant of the same workload."""
    csa = make_layer("csa", "float")
    with recorded_launches(MODULES) as launches:
        workload(csa)
    used = keys(launches)
    short = used - warmup_keys(csa, max_context=15 * PAGE * 4)
    # (the select kernel's last stage writes slots through the block table: its stride is specialised)
    assert short and {k[0] for k in short} <= {"_compress_kv_kernel", "_indexer_topk_partial_kernel",
                                               "_select_keys_kernel"}, short  # fmt: skip
    fp8 = make_layer("csa", "fp8")
    with recorded_launches(MODULES) as launches:
        workload(fp8)
    missed = keys(launches) - warmup_keys(make_layer("csa", "float"))
    assert {"_append_fp8_kernel", "_sparse_attn_fwd_kernel", "_compress_kv_kernel"} <= {k[0] for k in missed}


def test_module_warmup_covers_its_paged_forward(tiles):
    """``DeepseekV4Attention.warmup`` runs the module's own ``forward_paged``: a bf16 module passes bf16
    norm weights (and its own indexer inputs), which ``HybridAttention.warmup`` with its defaults (fp32
    unit norms) does not launch."""
    from longattn.nn import DeepseekV4Attention

    from tests.nn.helpers import TINY

    module = DeepseekV4Attention(TINY, 1).to(torch.bfloat16).eval()  # CSA, ratio 4
    L, top = module.layer, 2048
    m = CacheManager(ratios=(4,), page_size=16, num_window_pages=200, window=L.window,
                     num_compressed_pages={4: 200}, num_state_pages={4: 200})  # fmt: skip
    att = longattn.HybridAttention(L, m, kv_dtype=torch.bfloat16, backend="triton")
    args = dict(max_batch=MAX_BATCH, prefill_chunks=CHUNKS, max_context=top)
    with recorded_launches(MODULES) as launches:
        report = module.warmup(att, **args)
    warm = keys(launches)
    assert report.steps > 0 and not m._seqs, report

    def run(plan):
        with torch.no_grad():
            module.forward_paged(torch.randn(plan.num_tokens, TINY.dim).to(torch.bfloat16), plan, att)

    with recorded_launches(MODULES) as launches:
        workload(att, top, run)
    used = keys(launches)
    assert not used - warm, sorted(used - warm)
    with recorded_launches(MODULES) as launches:
        att.warmup(**args)
    assert "_compress_kv_kernel" in {k[0] for k in used - keys(launches)}


def test_warmup_layers_warms_one_layer_per_variant_group():
    """A model's layers: one warm-up per kind and pool format (the others launch the same variants)."""
    from longattn.layers import warmup_layers

    cfgs = [V4_FLASH.layer(i) for i in range(7)]  # swa swa csa hca csa hca csa
    m = CacheManager.for_layers(cfgs, max_seqs=2, max_context=1024, max_step_tokens=256, page_size=PAGE)
    layers = [longattn.HybridAttention(c, m, kv_format="fp8" if i == 6 else "float", backend="triton")
              for i, c in enumerate(cfgs)]  # fmt: skip
    with recorded_launches(MODULES) as launches:
        reports = warmup_layers(layers, max_batch=2, prefill_chunks=(), max_context=1024)
    assert sorted(reports) == [0, 2, 3, 6] and all(r.steps > 0 for r in reports.values())
    warm = keys(launches)
    for i in (1, 4, 5):  # each skipped layer's own warm-up launches nothing new
        with recorded_launches(MODULES) as launches:
            layers[i].warmup(max_batch=2, prefill_chunks=(), max_context=1024)
        assert keys(launches) <= warm, i
    with pytest.raises(TypeError, match=r"warmup_layers: `layers\[1\]` must be a HybridAttention, got str"):
        warmup_layers([layers[0], "layer"])
