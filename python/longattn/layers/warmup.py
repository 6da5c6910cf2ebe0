"""JIT warm-up of a ``HybridAttention`` layer: every Triton kernel variant that serving will launch,
compiled at load time (``HybridAttention.warmup``; ``longattn.nn.DeepseekV4Attention.warmup``).

Which variant a launch needs depends on the step, not only on the layer: the launchers' constexpr
flags (split-KV or not and the combine's split tile, FP8 or float pool, slots or ids, ...) and the
JIT's specialisation of the integer arguments (``== 1`` and ``% 16``, e.g. the width of the
compressed block table, which grows with the longest context of the batch) and of the pointers
(16-byte alignment). So the warm-up runs the layer's own ``prepare`` / ``run`` (the code a real step
takes, so the variants match by construction) on scratch caches it makes itself, at every decode
batch size and prefill chunk asked for, each at a ladder of context lengths:

- end contexts of 1 token (no compressed entry yet) and of ``m`` full compressed pages for ``m`` in
  1, 2, 3, 4, 6, 8, 12, 16, ... up to ``max_context``'s pages (SWA: 1 and ``2 * window`` tokens);
- a decode step of batch ``b``: one sequence at that context plus ``b - 1`` new ones (the width of a
  block table and the HCA key count are the batch's largest); a prefill chunk of ``c`` tokens: one
  sequence's chunk ending there. Long contexts are made with ``CacheManager.plan_prefilled`` (only
  the tail the window and the compressor rings read is written), so a step costs what a real one
  at that context costs.

The scratch pools hold one sequence of ``max_context`` plus the batch's new sequences; their page
counts are never specialised (every launcher passes them as ``do_not_specialize`` arguments), so the
small pools give the variants of the large ones. The user's manager and pools are never touched.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from typing import Callable, Dict, Hashable, List, Optional, Sequence, Tuple

import torch

from .._checks import FLOAT_DTYPES
from ..cache.fp8 import Fp8KVPool
from ..cache.manager import CacheManager, StepPlan, ring_capacity

DEFAULT_MAX_BATCH = 64
DEFAULT_PREFILL_CHUNKS = (512, 2048)


@dataclasses.dataclass(frozen=True)
class WarmupReport:
    """What a warm-up did.

    steps: layer steps run on the scratch caches (0: nothing to warm, see ``skipped``).
    launches: Triton kernel launches of those steps.
    variants: distinct (kernel, constexpr arguments, launch options) among them (the JIT may compile
        several per entry: it also specialises integers and pointer alignment).
    compiled: kernels the JIT compiled during the warm-up (on a GPU: the growth of triton's kernel
        caches; None where nothing is compiled, e.g. the interpreter, or this triton lays them out
        differently).
    seconds: wall time. backends: the backends the layer's ops ran on.
    batch_sizes, prefill_chunks, contexts: what was run (contexts: the end contexts in tokens).
    skipped: why nothing ran (no op of the layer selects the Triton backend), else None.
    """

    steps: int
    launches: int
    variants: int
    compiled: Optional[int]
    seconds: float
    backends: Tuple[str, ...]
    batch_sizes: Tuple[int, ...]
    prefill_chunks: Tuple[int, ...]
    contexts: Tuple[int, ...]
    skipped: Optional[str] = None


def batch_ladder(max_batch: int) -> Tuple[int, ...]:
    """1, 2, 3, 4, 6, 8, 12, 16, ... (powers of two and 1.5 times them) up to and with ``max_batch``."""
    return _ladder(max_batch)


def _ladder(top: int) -> Tuple[int, ...]:
    out = {top}
    p = 1
    while p <= top:
        out.add(p)
        if 3 * p // 2 <= top and p > 1:
            out.add(3 * p // 2)
        p *= 2
    return tuple(sorted(out))


def _positive_ints(who: str, name: str, values, allow_empty: bool) -> Tuple[int, ...]:
    if isinstance(values, (str, bytes)) or not hasattr(values, "__iter__"):
        raise TypeError(f"{who}: `{name}` must be a sequence of positive ints, got {type(values).__name__}")
    out = tuple(values)
    for v in out:
        if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
            raise ValueError(f"{who}: `{name}` must hold positive ints, got {v!r} in {list(out)}")
    if not out and not allow_empty:
        raise ValueError(f"{who}: `{name}` must not be empty")
    return tuple(sorted(set(out)))


def check_sizes(who: str, max_batch, batch_sizes, prefill_chunks, max_context, default_context: int):
    """(batch sizes, prefill chunks, max context) from the arguments, with clear errors."""
    if max_batch is not None and batch_sizes is not None:
        raise ValueError(f"{who}: give `max_batch` (a ladder up to it) or `batch_sizes` (exact buckets), not both")
    if batch_sizes is None:
        mb = DEFAULT_MAX_BATCH if max_batch is None else max_batch
        if isinstance(mb, bool) or not isinstance(mb, int) or mb <= 0:
            raise ValueError(f"{who}: `max_batch` must be a positive int, got {mb!r}")
        sizes = _ladder(mb)
    else:
        sizes = _positive_ints(who, "batch_sizes", batch_sizes, allow_empty=False)
    chunks = _positive_ints(who, "prefill_chunks", prefill_chunks, allow_empty=True)
    if max_context is None:
        max_context = default_context
    if isinstance(max_context, bool) or not isinstance(max_context, int) or max_context <= 0:
        raise ValueError(f"{who}: `max_context` must be a positive int (tokens), got {max_context!r}")
    return sizes, chunks, max_context


# -- launch counting ---------------------------------------------------------------------------------------
class _Launches:
    """Counts the launches of the package's Triton kernels (through triton's pre-run hooks, on the
    compiled and on the interpreted kernels alike) and the JIT's compiled kernels."""

    _SKIP = ("debug", "instrumentation_mode")

    MODULES = ("append.triton_append", "compress.triton_compress", "indexer.triton_indexer",
               "sparse_attention.triton_sparse_attention", "combine.triton_combine")  # fmt: skip

    def __init__(self) -> None:
        import importlib

        for name in self.MODULES:  # (loaded on first use otherwise: their kernels must be hooked first)
            importlib.import_module(f"longattn.ops.{name}")
        self.kernels: List[object] = []
        for name, module in list(sys.modules.items()):
            if name.startswith("longattn.ops.") and name.rsplit(".", 1)[-1].startswith("triton_"):
                for obj in vars(module).values():
                    if hasattr(obj, "add_pre_run_hook") and isinstance(getattr(obj, "pre_run_hooks", None), list):
                        if all(obj is not k for k in self.kernels):
                            self.kernels.append(obj)
        self.count = 0
        self.variants: set = set()

    def _hook(self, name):
        def hook(*args, **kwargs):
            self.count += 1
            self.variants.add((name, tuple(sorted((k, repr(v)) for k, v in kwargs.items() if k not in self._SKIP))))

        return hook

    def compiled(self) -> Optional[int]:
        total = 0
        for k in self.kernels:
            caches = getattr(k, "device_caches", None)
            if caches is None:
                return None
            try:
                total += sum(len(entry[0]) for entry in caches.values())
            except (TypeError, IndexError, KeyError):
                return None
        return total

    def __enter__(self):
        self.hooks = [(k, self._hook(getattr(k, "__name__", repr(k)))) for k in self.kernels]
        for k, h in self.hooks:
            k.add_pre_run_hook(h)
        self.before = self.compiled()
        return self

    def __exit__(self, *exc):
        for k, h in self.hooks:
            k.pre_run_hooks.remove(h)
        after = self.compiled()
        self.new = None if after is None or self.before is None else after - self.before
        return False


# -- the warm-up -------------------------------------------------------------------------------------------
def _pages_of(entries: int, page_size: int) -> int:
    return -(-entries // page_size)


def default_max_context(att) -> int:
    """One sequence's capacity in ``att``'s compressed pool, at most the RoPE table's YaRN range
    (``factor * original_max_position``) when it has one; SWA: twice the window."""
    L, m = att.layer, att.manager
    r = L.compress_ratio
    if not r:
        return 2 * L.window
    cap = m.compressed_alloc[r].num_pages * m.page_size * r
    yarn = L.rope.yarn
    return max(1, min(cap, int(yarn.factor * yarn.original_max_position)) if yarn is not None else cap)


def end_contexts(att, max_context: int) -> Tuple[int, ...]:
    """The end contexts (tokens) the warm-up runs every step at (module docstring)."""
    L, ps = att.layer, att.manager.page_size
    r = L.compress_ratio
    if not r:
        return (1, 2 * L.window)
    m_max = max(1, _pages_of(max_context // r, ps))
    return (1,) + tuple(m * ps * r for m in _ladder(m_max))


def _float_dtype(pool) -> torch.dtype:
    return torch.bfloat16 if isinstance(pool, Fp8KVPool) or pool is None else pool.dtype


def scratch_layer(att, sizes, chunks, contexts):
    """A ``HybridAttention`` like ``att`` (config, page size, window, pool formats and dtypes, backend)
    over a new small ``CacheManager`` on the same device."""
    from .hybrid_attention import HybridAttention

    L, m = att.layer, att.manager
    ps, W, r = m.page_size, L.window, L.compress_ratio
    ratios = (r,) if r else ()
    need = max([W - 1] + [ring_capacity(x) for x in ratios])
    step = max(list(chunks) + [need, max(sizes)])
    ring = _pages_of(ring_capacity(r), min(ps, ring_capacity(r))) if r else 0
    longest = max(contexts) + step
    num_window = max(sizes) + 2 * (_pages_of(W + step, ps) + 2)
    comp = {r: _pages_of(longest // r, ps) + max(sizes) + 2} if r else {}
    state = {r: (max(sizes) + 2) * ring} if r else {}
    manager = CacheManager(ratios=ratios, page_size=ps, num_window_pages=num_window, num_compressed_pages=comp,
                           num_state_pages=state, window=W, device=m.device)  # fmt: skip
    return HybridAttention(
        L, manager, kv_dtype=_float_dtype(att.window_pool), kv_format=att.kv_format,
        index_dtype=att.index_pool.dtype if isinstance(att.index_pool, torch.Tensor) else None,
        index_format=att.index_format, backend=att.backend,
    )  # fmt: skip


def run_warmup(att, who: str, step: Callable[[object, StepPlan], object], probe: Callable[[object, StepPlan], object],
               sizes, chunks, max_context) -> WarmupReport:  # fmt: skip
    """Run ``step(scratch_layer, plan)`` for every step of the warm-up (module docstring); first
    ``probe(scratch_layer, plan)`` (a prepared one-token ``LayerStep``) says which backends run."""
    if att.shards is not None:
        raise NotImplementedError(f"{who}: context-parallel layers (a manager with `shards`) have no warm-up yet")
    contexts = end_contexts(att, max_context)
    scratch = scratch_layer(att, sizes, chunks, contexts)
    m = scratch.manager
    need = max([att.layer.window - 1] + [ring_capacity(x) for x in m.ratios])
    ids = iter(range(1 << 62))
    t0 = time.perf_counter()

    backends = _backends(scratch, m, next(ids), probe)
    if "triton" not in backends:
        why = "no op of this layer runs on the Triton backend here: nothing is compiled"
        return WarmupReport(0, 0, 0, None, time.perf_counter() - t0, backends, sizes, chunks, contexts, skipped=why)

    steps = 0

    def run(seq_ids: Sequence[Hashable], counts: List[int]):
        nonlocal steps
        cu = torch.tensor([0] + counts).cumsum(0)
        step(scratch, m.plan(list(seq_ids), cu))
        steps += 1

    def sequence_at(context: int) -> Hashable:
        """A new scratch sequence holding ``context`` tokens (its tail written by a real step)."""
        nonlocal steps
        sid = next(ids)
        m.add_sequence(sid)
        if context > 0:
            step(scratch, m.plan_prefilled(sid, context, min(context, need)))
            steps += 1
        return sid

    with torch.no_grad(), _Launches() as launches:
        for end in contexts:
            for b in sizes:  # decode: the longest sequence ends at `end`, b - 1 new ones beside it
                seqs = [sequence_at(end - 1)]
                for _ in range(b - 1):
                    seqs.append(next(ids))
                    m.add_sequence(seqs[-1])
                run(seqs, [1] * b)
                for s in seqs:
                    m.free_sequence(s)
            for c in chunks:  # a prefill chunk of c tokens ending at `end` (or at c, when shorter)
                sid = sequence_at(max(0, end - c))
                run([sid], [c])
                m.free_sequence(sid)
        if m.device.type == "cuda":
            torch.cuda.synchronize(m.device)
    return WarmupReport(steps, launches.count, len(launches.variants), launches.new, time.perf_counter() - t0,
                        backends, sizes, chunks, contexts)  # fmt: skip


def _backends(scratch, m, sid, probe) -> Tuple[str, ...]:
    """The backends a one-token step of ``scratch`` selects (prepared, nothing run)."""
    m.add_sequence(sid)
    try:
        step = probe(scratch, m.plan([sid], [0, 1]))
        calls = [step.append, step.compress, step.index_compress, step.topk, step.attend]
        return tuple(sorted({c.selection.backend for c in calls if c is not None and c.selection is not None}))
    finally:
        m.free_sequence(sid)


INPUT_NAMES = {
    "swa": ("q", "kv"),
    "hca": ("q", "kv", "compress_a", "compress_b", "compress_norm_weight"),
    "csa": (
        "q",
        "kv",
        "compress_a",
        "compress_b",
        "compress_norm_weight",
        "index_q",
        "index_weights",
        "index_a",
        "index_b",
        "index_norm_weight",
    ),  # fmt: skip
}


def check_dtypes(who: str, kind: str, dtype, dtypes) -> Dict[str, torch.dtype]:
    """{input name: dtype} for every per-token input and the norm weights named in ``dtypes``."""
    if dtype not in FLOAT_DTYPES:
        raise ValueError(f"{who}: `dtype` must be one of {[str(d) for d in FLOAT_DTYPES]}, got {dtype!r}")
    dtypes = {} if dtypes is None else dtypes
    if not isinstance(dtypes, dict):
        raise TypeError(f"{who}: `dtypes` must be a dict {{input name: dtype}}, got {type(dtypes).__name__}")
    names = INPUT_NAMES[kind]
    for k, v in dtypes.items():
        if k not in names:
            raise ValueError(
                f"{who}: `dtypes` names {k!r}, which a {kind} layer does not take (it takes {list(names)})"
            )
        if v not in FLOAT_DTYPES:
            raise ValueError(f"{who}: `dtypes[{k!r}]` must be one of {[str(d) for d in FLOAT_DTYPES]}, got {v!r}")
    out = {k: dtype for k in names if not k.endswith("norm_weight")}
    out.update(dtypes)
    return out


def layer_inputs(att, T: int, dtype, dtypes: Dict[str, torch.dtype], attn_sink: bool) -> dict:
    """Zero inputs of a ``T``-token step of ``att`` (``dtypes`` per input, else ``dtype``); the norm
    weights only when ``dtypes`` names them (else the layer's own unit norms, as ``forward`` with none)."""
    L, dev = att.layer, att.manager.device
    c = 2 if L.overlap else 1
    H, D, Hi, Di = L.n_heads, L.head_dim, L.index_n_heads, L.index_head_dim
    shapes = dict(q=(T, H, D), kv=(T, D), compress_a=(T, c * D), compress_b=(T, c * D), index_q=(T, Hi, Di),
                  index_weights=(T, Hi), index_a=(T, 2 * Di), index_b=(T, 2 * Di), compress_norm_weight=(D,),
                  index_norm_weight=(Di,))  # fmt: skip
    out = {}
    for name in INPUT_NAMES[L.kind]:
        if name in dtypes or not name.endswith("norm_weight"):
            make = torch.ones if name.endswith("norm_weight") else torch.zeros
            out[name] = make(shapes[name], dtype=dtypes.get(name, dtype), device=dev)
    if attn_sink:
        out["attn_sink"] = torch.zeros(H, dtype=torch.float32, device=dev)
    return out


def variant_group(att) -> tuple:
    """What decides the variants a layer's steps launch, besides the steps: its config but for the
    layer index and the RoPE table's values, page size, window, pool formats and dtypes, backend, device."""
    L, m = att.layer, att.manager
    pools = tuple((type(p).__name__, getattr(p, "dtype", None)) for p in att.pools())
    config = dataclasses.replace(L, index=0, rope=None)
    return (config, m.page_size, m.window, att.kv_format, att.index_format, pools, att.backend, m.device,
            att.shards is not None)  # fmt: skip


def warmup_layers(layers: Sequence, **kwargs) -> Dict[int, WarmupReport]:
    """``HybridAttention.warmup(**kwargs)`` of one layer per group of ``layers`` whose steps launch the
    same variants (``variant_group``: e.g. every CSA layer of a model shares its variants): returns
    {position in ``layers`` of the layer warmed: its report}."""
    first: Dict[tuple, int] = {}
    for i, att in enumerate(layers):
        if not hasattr(att, "warmup") or not hasattr(att, "layer"):
            raise TypeError(f"warmup_layers: `layers[{i}]` must be a HybridAttention, got {type(att).__name__}")
        first.setdefault(variant_group(att), i)
    return {i: layers[i].warmup(**kwargs) for i in sorted(first.values())}
