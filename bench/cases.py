"""The registry of benchmark cases.

A case is one op (or one composite step) on one concrete problem: ``name``, ``group`` (op + mode, e.g.
``sparse_attention.decode``), ``op``, ``preset``, ``params`` (JSON-able), a builder returning the
callable to time and its inputs, and a cost model (``bench.costs``). Cases are generated from
*families*: a family declares the axes it varies (preset, context, batch, ...), the values the
registry knows for each axis, the default values a selection uses when the user names none, the
builder, the cost model and the peers that apply.

The cache-op families (``append_kv``, ``compress_kv``, ``cache_plan``) live in ``bench.cases_cache``
and the ``HybridAttention`` layer families in ``bench.cases_layer``; both register on import (bottom
of this module). Adding a case family is one ``register(Family(...))`` call with a builder and a cost
function::

    def build_append_kv(case, device, seed):          # -> Problem
        p = case.params
        ...make random inputs on `device`...
        def run(backend):                              # backend name -> zero-argument callable
            return lambda: longattn.append_kv(..., backend=backend)
        return Problem(run=run, output=lambda r: r, stats={...exact counts...}, input_bytes=...)

    register(Family(
        group="append_kv.decode", op="append_kv", ops=("append_kv",),
        axes={"preset": PRESET_NAMES, "context": CONTEXTS, "batch": BATCHES, "page_size": PAGES, "dtype": ("bf16",)},
        defaults={"preset": ("v4-flash",), "context": (131072,), "batch": (1,), "page_size": (64,), "dtype": ("bf16",)},
        build=build_append_kv, cost=lambda p, s: costs.Cost(flops=0, bytes=..., formula="..."),
        input_bytes=lambda p: ...,
    ))

Backends are never listed here: the runner asks ``longattn.backends.registry`` for every backend it
knows and lets each accept or decline the case's ops on the device.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import itertools
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import longattn
import torch
from longattn.configs import PRESETS

from . import costs
from .inputs import (
    DTYPES,
    FP8,
    all_visible_ids,
    float_dtype,
    fp8_pool_like,
    generator,
    human_tokens,
    is_fp8_pool,
    paged_kv_pool,
    pool_nbytes,
    pool_num_pages,
    pool_page_size,
    pool_rows,
    randn,
    random_topk_ids,
    row_bytes,
    slots_of,
    unique_valid,
)

PRESET_NAMES: Tuple[str, ...] = tuple(PRESETS)  # ("v4-flash", "v4-pro")
CONTEXTS: Tuple[int, ...] = tuple(1 << k for k in range(13, 21))  # 8K ... 1M
BATCHES: Tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64)
CHUNKS: Tuple[int, ...] = (64, 256, 1024, 4096)
PAGES: Tuple[int, ...] = (1, 16, 64, 256)
KINDS: Tuple[str, ...] = ("csa", "hca")
KV_DTYPES: Tuple[str, ...] = ("bf16", "fp8")  # fp8: longattn.Fp8KVPool (584-B records), q / rows in bf16
# Axes whose values are names: a selected value a family does not know drops the case (``--kinds swa``
# selects no sparse_attention case, ``--dtypes fp8`` no indexer case).
CATEGORICAL_AXES: Tuple[str, ...] = ("kind", "dtype", "emit")


@dataclasses.dataclass
class DenseView:
    """The same problem in the layout dense model code holds (DeepSeek REF: one contiguous cache per
    sequence, ``[ring or raw window rows | compressed entries in logical order]``), with a boolean mask
    over ALL keys that is True exactly on the keys the sparse call attends. Peers run on this.

    q [B, Tq, H, D]; keys [B, R + N, D] (K = V); mask, window_mask [B, Tq, R + N] bool (window_mask:
    window keys only, for peers that select the compressed keys themselves); sink [H] fp32.
    Indexer part (layer cases): iq [B, Tq, Hi, Di], iw [B, Tq, Hi] fp32, ikeys [B, N, Di],
    visible_end [B, Tq]; the compressed entry j of sequence b is key column ``comp_offset + j``.
    """

    q: torch.Tensor
    keys: torch.Tensor
    mask: torch.Tensor
    window_mask: torch.Tensor
    sink: torch.Tensor
    scale: float
    comp_offset: int
    iq: Optional[torch.Tensor] = None
    iw: Optional[torch.Tensor] = None
    ikeys: Optional[torch.Tensor] = None
    visible_end: Optional[torch.Tensor] = None
    topk: int = 0
    # the sparse form for peers that take indices (FlashMLA): () -> {q, kv: one flat row tensor
    # [swa rows | compressed rows], indices [T, K1 + K2] (-1 beyond each row's length), sink}
    sparse: Optional[Callable[[], Dict[str, object]]] = None

    def nbytes(self) -> int:
        ts = (self.q, self.keys, self.mask, self.window_mask, self.iq, self.iw, self.ikeys)
        return sum(t.numel() * t.element_size() for t in ts if t is not None)


@dataclasses.dataclass
class Problem:
    """A built case: ``run(backend)`` returns the zero-argument callable to time (``backend`` is a
    registry name, or None for the default dispatch); ``output(result)`` extracts the tensor compared
    across backends and peers; ``stats`` are the exact counts the cost model needs; ``dense`` lazily
    builds the peers' view (None: no peer applies)."""

    run: Callable[[Optional[str]], Callable[[], object]]
    output: Callable[[object], torch.Tensor]
    stats: Dict[str, float]
    input_bytes: int
    dense: Optional[Callable[[], DenseView]] = None
    compare: str = "max_abs_diff"  # or "topk_agreement" (index outputs)


@dataclasses.dataclass(frozen=True)
class Family:
    group: str
    op: str
    ops: Tuple[str, ...]
    axes: Mapping[str, Tuple]
    defaults: Mapping[str, Tuple]
    quick_defaults: Mapping[str, Tuple]
    build: Callable[["Case", torch.device, int], Problem]
    cost: Callable[[Dict[str, object], Dict[str, float]], costs.Cost]
    input_bytes: Callable[[Dict[str, object]], int]
    peers: Tuple[str, ...] = ()
    derive: Callable[[Dict[str, object]], Dict[str, object]] = lambda p: {}
    invalid: Callable[[Dict[str, object]], Optional[str]] = lambda p: None
    doc: str = ""
    # Parameters every case of the family has, not axes (not in the name), e.g. {"kind": "csa"} for
    # hybrid_attention.csa.*: a selection naming other values of such a key skips the family.
    fixed: Mapping[str, object] = dataclasses.field(default_factory=dict)
    # The dtype whose matmul rate is the compute ceiling for every backend (None: the runner's rule,
    # reference fp32, others the pool dtype); e.g. "fp32" for the compressor, which pools in fp32.
    compute_dtype: Optional[str] = None

    @property
    def mode(self) -> str:
        last = self.group.rsplit(".", 1)[-1]
        return last if last in ("decode", "prefill") else ""

    def case(self, **values) -> "Case":
        params = {k: values[k] for k in self.axes}
        params.update(self.fixed)
        params.update(self.derive(params))
        return Case(family=self, params=params)

    def selects(self, selection: Mapping[str, Sequence]) -> bool:
        """False when the selection names values of a fixed parameter that exclude this family."""
        return all(not selection.get(k) or v in selection[k] for k, v in self.fixed.items())

    def cases(self, selection: Mapping[str, Sequence]) -> List["Case"]:
        """Cases for the product of ``selection[axis]`` (missing axes: the defaults); invalid
        combinations (e.g. a chunk longer than the context) and names the family does not know on a
        categorical axis (``CATEGORICAL_AXES``) are dropped."""
        if not self.selects(selection):
            return []
        values = []
        for a in self.axes:
            vs = tuple(selection.get(a) or self.defaults[a])
            if a in CATEGORICAL_AXES:
                vs = tuple(v for v in vs if v in self.axes[a])
            values.append(vs)
        out = []
        for combo in itertools.product(*values):
            params = dict(zip(self.axes, combo))
            params.update(self.fixed)
            if self.invalid(params) is None:
                out.append(self.case(**params))
        return out


def _fmt(axis: str, v) -> str:
    if axis in ("context", "tokens"):
        return f"{'ctx' if axis == 'context' else 'S'}={human_tokens(int(v))}"
    short = {"batch": "b", "chunk": "chunk", "page_size": "page", "emit": "emit"}
    if axis in short:
        return f"{short[axis]}={v}"
    return str(v)


@dataclasses.dataclass(frozen=True)
class Case:
    family: Family
    params: Mapping[str, object]

    @property
    def group(self) -> str:
        return self.family.group

    @property
    def op(self) -> str:
        return self.family.op

    @property
    def preset(self) -> Optional[str]:
        return self.params.get("preset")  # type: ignore[return-value]

    @property
    def name(self) -> str:
        return "/".join([self.group] + [_fmt(a, self.params[a]) for a in self.family.axes])

    def build(self, device: torch.device, seed: int = 0) -> Problem:
        return self.family.build(self, device, seed)

    def cost(self, stats: Dict[str, float]) -> costs.Cost:
        return self.family.cost(dict(self.params), stats)

    def input_bytes(self) -> int:
        return int(self.family.input_bytes(dict(self.params)))

    def to_json(self) -> Dict[str, object]:
        return {"name": self.name, "group": self.group, "op": self.op, "mode": self.family.mode,
                "preset": self.preset, "params": dict(self.params)}  # fmt: skip


REGISTRY: Dict[str, Family] = {}


def register(family: Family) -> Family:
    if family.group in REGISTRY:
        raise ValueError(f"case family {family.group!r} is already registered")
    missing = set(family.axes) - set(family.defaults) or set(family.axes) - set(family.quick_defaults)
    if missing:
        raise ValueError(f"{family.group}: axes without defaults: {sorted(missing)}")
    REGISTRY[family.group] = family
    return family


def families(patterns: Optional[Sequence[str]] = None) -> List[Family]:
    """Families whose group or op matches any pattern (fnmatch, or a prefix such as ``indexer``)."""
    if not patterns:
        return list(REGISTRY.values())
    out = []
    for f in REGISTRY.values():
        for p in patterns:
            if fnmatch.fnmatch(f.group, p) or fnmatch.fnmatch(f.op, p) or f.group.startswith(p):
                out.append(f)
                break
    return out


# --------------------------------------------------------------------------------------------------
# Shared problem construction for attention cases (decode: one token per sequence at the end of its
# context; prefill: the last `chunk` tokens of one sequence, as a chunked prefill does).


def _layer(p):
    cfg = PRESETS[p["preset"]]
    kind = p.get("kind", "csa")
    layer = cfg.first_layer(kind)
    return cfg, layer


def _attn_derive(p):
    _, layer = _layer(p)
    d = dict(n_heads=layer.n_heads, head_dim=layer.head_dim, window=layer.window, compress_ratio=layer.compress_ratio)
    if layer.kind == "csa":
        d.update(topk=layer.index_topk, index_n_heads=layer.index_n_heads, index_head_dim=layer.index_head_dim)
    return d


def _geometry(p):
    """(B sequences, T query tokens, context L) of a decode (T = B) or prefill (B = 1, T = chunk) case."""
    L = int(p["context"])
    if "batch" in p:
        return int(p["batch"]), int(p["batch"]), L
    return 1, int(p["chunk"]), L


def _invalid_attn(p) -> Optional[str]:
    if p.get("kind", "csa") not in KINDS:
        return f"kind {p['kind']!r}: sparse attention cases are csa or hca"
    _, layer = _layer(p)
    L = int(p["context"])
    if L < max(layer.window, layer.compress_ratio):
        return f"context {L} shorter than the window / compress ratio"
    if "chunk" in p and int(p["chunk"]) > L:
        return f"chunk {p['chunk']} longer than the context {L}"
    return None


@dataclasses.dataclass
class _AttnInputs:
    q: torch.Tensor
    swa: torch.Tensor
    window: torch.Tensor
    comp: torch.Tensor
    extra: torch.Tensor
    extra_len: torch.Tensor
    ids: torch.Tensor
    sink: torch.Tensor
    block_table: torch.Tensor
    seq_ids: torch.Tensor
    visible: torch.Tensor
    B: int
    Tq: int
    R: int  # window rows per sequence
    N: int  # compressed entries per sequence
    iq: Optional[torch.Tensor] = None
    iw: Optional[torch.Tensor] = None
    ik: Optional[torch.Tensor] = None


def _make_attn(p, device, seed, indexer: bool) -> _AttnInputs:
    _, layer = _layer(p)
    B, T, L = _geometry(p)
    H, D, W, ratio, page = layer.n_heads, layer.head_dim, layer.window, layer.compress_ratio, int(p["page_size"])
    fp8 = p["dtype"] == FP8
    dt = float_dtype(p["dtype"])  # q (and the float pools); FP8 pools hold 584-B records
    g = generator(device, seed)
    dev = device
    if "batch" in p:  # decode: one token per sequence at position L - 1; window = 128-slot ring
        pos = torch.full((B,), L - 1, dtype=torch.int64, device=dev)
        seq_ids = torch.arange(B, dtype=torch.int32, device=dev)
        R = W
        swa = randn((B * W, D), dt, dev, g)
        wpos = pos.unsqueeze(1) - torch.arange(W - 1, -1, -1, device=dev).unsqueeze(0)  # [T, W] ascending
        window = torch.where(wpos >= 0, seq_ids.long().unsqueeze(1) * W + wpos % W, torch.full_like(wpos, -1))
    else:  # prefill chunk: positions L - C .. L - 1 of one sequence; window = the raw rows
        pos = torch.arange(L - T, L, dtype=torch.int64, device=dev)
        seq_ids = torch.zeros(T, dtype=torch.int32, device=dev)
        start = max(0, L - T - W + 1)
        R = L - start
        swa = randn((R, D), dt, dev, g)
        wpos = pos.unsqueeze(1) - torch.arange(W - 1, -1, -1, device=dev).unsqueeze(0)
        window = torch.where(wpos >= 0, wpos - start, torch.full_like(wpos, -1))
    window = window.to(torch.int32)
    if fp8:  # the window rows as an FP8 pool too (slots unchanged: pages of `page` rows, last one padded)
        n_pages = -(-swa.shape[0] // page)
        flat = torch.zeros(n_pages * page, D, dtype=torch.float32, device=dev)
        flat[: swa.shape[0]] = swa
        swa = fp8_pool_like(n_pages, page, dev, g, rows=flat)
        del flat
    N = L // ratio
    comp, bt = paged_kv_pool(B, N, page, D, p["dtype"], dev, g)
    visible = ((pos + 1) // ratio).to(torch.int32)
    if layer.kind == "csa":
        ids, lengths = random_topk_ids(visible, layer.index_topk, g)
    else:
        ids, lengths = all_visible_ids(visible, N)
    extra = slots_of(bt, seq_ids, ids, page)
    q = randn((T, H, D), dt, dev, g)
    sink = randn((H,), torch.float32, dev, g)
    x = _AttnInputs(q, swa, window, comp, extra, lengths, ids, sink, bt, seq_ids, visible, B, T // B, R, N)
    if indexer:
        Hi, Di = layer.index_n_heads, layer.index_head_dim
        x.iq = randn((T, Hi, Di), dt, dev, g)
        x.iw = randn((T, Hi), torch.float32, dev, g, scale=Di**-0.5 * Hi**-0.5)
        x.ik = randn((pool_num_pages(comp), page, Di), dt, dev, g)  # same pages / block table as the KV entries
    return x


def _dense_view(x: _AttnInputs, indexer: bool, topk: int) -> DenseView:
    """Per-sequence contiguous caches and the boolean mask of the keys the sparse call attends."""
    B, Tq, R, N = x.B, x.Tq, x.R, x.N
    D = x.q.shape[-1]
    dev = x.q.device
    page = pool_page_size(x.comp)
    all_ids = torch.arange(N, device=dev)
    rows = []
    irows = []
    for b in range(B):
        seq = torch.full((1,), b, dtype=torch.int32, device=dev)
        slots = slots_of(x.block_table, seq, all_ids.unsqueeze(0), page)[0]
        win = pool_rows(x.swa, torch.arange(b * R, (b + 1) * R, device=dev), x.q.dtype)
        rows.append(torch.cat([win, pool_rows(x.comp, slots, x.q.dtype)]))
        if indexer:
            irows.append(x.ik.view(-1, x.ik.shape[-1]).index_select(0, slots.long()))
    keys = torch.stack(rows)  # [B, R + N, D]
    T = B * Tq
    width = R + N
    # window keys: ring slot (decode) or raw row (prefill) of sequence b -> column slot - b * R
    wv = x.window >= 0
    win = x.window.long()
    win_cols = torch.where(wv, win - x.seq_ids.long().unsqueeze(1) * R, torch.full_like(win, width))
    window_mask = torch.zeros(T, width + 1, dtype=torch.bool, device=dev)  # last column: dump for invalid
    window_mask.scatter_(1, win_cols, True)
    k = torch.arange(x.ids.shape[1], device=dev).unsqueeze(0)
    cv = (x.ids >= 0) & (k < x.extra_len.long().unsqueeze(1))
    comp_cols = torch.where(cv, R + x.ids.long(), torch.full_like(x.ids.long(), width))
    mask = window_mask.clone()
    mask.scatter_(1, comp_cols, True)
    window_mask, mask = window_mask[:, :width], mask[:, :width]
    view = DenseView(
        q=x.q.view(B, Tq, *x.q.shape[1:]),
        keys=keys,
        mask=mask.reshape(B, Tq, width),
        window_mask=window_mask.reshape(B, Tq, width),
        sink=x.sink,
        scale=D**-0.5,
        comp_offset=R,
        topk=topk,
    )
    if indexer:
        view.iq = x.iq.view(B, Tq, *x.iq.shape[1:])
        view.iw = x.iw.view(B, Tq, -1)
        view.ikeys = torch.stack(irows)
        view.visible_end = x.visible.view(B, Tq)

    # The sparse form with one KV tensor (FlashMLA-style peers): [swa rows | comp rows], combined
    # indices with -1 beyond each row's length.
    def sparse_form():
        def flat(pool):  # every row (FP8 pools dequantised to bf16)
            n = pool_num_pages(pool) * pool_page_size(pool)
            return pool_rows(pool, torch.arange(n, device=dev), x.q.dtype) if is_fp8_pool(pool) else pool.view(-1, D)

        swa_flat = flat(x.swa)
        ext = torch.where(cv, x.extra.long() + swa_flat.shape[0], torch.full_like(x.extra.long(), -1))
        return {
            "q": x.q,
            "kv": torch.cat([swa_flat, flat(x.comp)]),
            "indices": torch.cat([x.window.long(), ext], dim=1).to(torch.int32),
            "sink": x.sink,
        }

    view.sparse = sparse_form
    return view


def _attn_stats(x: _AttnInputs) -> Dict[str, float]:
    k = torch.arange(x.ids.shape[1], device=x.ids.device).unsqueeze(0)
    cv = (x.extra >= 0) & (k < x.extra_len.long().unsqueeze(1))
    wv = x.window >= 0
    if x.B == x.q.shape[0]:  # decode: tokens are distinct sequences, nothing is shared
        unique = int(wv.sum()) + int(cv.sum())
    else:
        unique = unique_valid(torch.where(wv, x.window, -1)) + unique_valid(torch.where(cv, x.extra, -1))
    return {
        "T": x.q.shape[0],
        "keys": int(wv.sum()) + int(cv.sum()),
        "unique_rows": unique,
        "index_cols": x.window.shape[1] + x.extra.shape[1],
        "n_lengths": 1,
        "kv_elt": 1 if is_fp8_pool(x.comp) else x.comp.element_size(),
        "kv_row_bytes": row_bytes(FP8, 512) if is_fp8_pool(x.comp) else x.comp.element_size() * x.comp.shape[-1],
        "q_elt": x.q.element_size(),
    }


def _indexer_stats(x: _AttnInputs) -> Dict[str, float]:
    vis = x.visible.long()
    per_seq = torch.zeros(x.B, dtype=torch.long, device=vis.device).scatter_reduce(
        0, x.seq_ids.long(), vis, reduce="amax"
    )
    return {
        "T": x.q.shape[0],
        "entries": int(vis.sum()),
        "unique_entries": int(per_seq.sum()),
        "k_elt": x.ik.element_size(),
        "iq_elt": x.iq.element_size(),
        "B": x.B,
        "max_pages": x.block_table.shape[1],
    }


def _attn_cost(p, s) -> costs.Cost:
    _, layer = _layer(p)
    return costs.sparse_attention_cost(
        T=int(s["T"]), H=layer.n_heads, D=layer.head_dim, keys=int(s["keys"]), unique_rows=int(s["unique_rows"]),
        kv_elt=int(s["kv_elt"]), q_elt=int(s["q_elt"]), index_cols=int(s["index_cols"]),
        n_lengths=int(s.get("n_lengths", 0)), kv_row_bytes=int(s["kv_row_bytes"]) if "kv_row_bytes" in s else None,
    )  # fmt: skip


def _indexer_cost(p, s) -> costs.Cost:
    _, layer = _layer(p)
    return costs.indexer_topk_cost(
        T=int(s["T"]), Hi=layer.index_n_heads, Di=layer.index_head_dim, entries=int(s["entries"]),
        unique_entries=int(s["unique_entries"]), k_elt=int(s["k_elt"]), q_elt=int(s["iq_elt"]),
        topk=layer.index_topk, B=int(s["B"]), max_pages=int(s["max_pages"]),
    )  # fmt: skip


def _layer_cost(p, s) -> costs.Cost:
    return _indexer_cost(p, s) + _attn_cost(p, s)


def _attn_input_bytes(p, indexer: bool = False) -> int:
    _, layer = _layer(p)
    B, T, L = _geometry(p)
    e = float_dtype(p["dtype"]).itemsize
    rb = row_bytes(p["dtype"], layer.head_dim)
    page = int(p["page_size"])
    N = L // layer.compress_ratio
    rows = B * (-(-N // page)) * page
    R = layer.window * B if "batch" in p else min(L, T + layer.window - 1)
    n = rows * rb + R * rb + T * layer.n_heads * layer.head_dim * e
    width = layer.index_topk if layer.kind == "csa" else N
    n += T * (layer.window + width) * 4 * 3
    if indexer:
        n += rows * layer.index_head_dim * e + T * layer.index_n_heads * (layer.index_head_dim * e + 4)
    return int(n)


def _build_sparse(case: Case, device, seed) -> Problem:
    x = _make_attn(case.params, device, seed, indexer=False)

    def run(backend):
        return lambda: longattn.sparse_attention(
            x.q, x.swa, x.window, extra_kv=x.comp, extra_indices=x.extra, extra_topk_length=x.extra_len,
            attn_sink=x.sink, backend=backend,
        )  # fmt: skip

    return Problem(
        run=run,
        output=lambda r: r[0],
        stats=_attn_stats(x),
        input_bytes=_tensor_bytes(x),
        dense=lambda: _dense_view(x, indexer=False, topk=0),
    )


def _build_indexer(case: Case, device, seed) -> Problem:
    p = dict(case.params, kind="csa")
    x = _make_attn(p, device, seed, indexer=True)
    _, layer = _layer(p)
    topk = layer.index_topk

    def run(backend):
        return lambda: longattn.indexer_topk(
            x.iq, x.iw, x.ik, x.visible, topk, block_table=x.block_table, seq_ids=x.seq_ids,
            return_slots=False, backend=backend,
        )  # fmt: skip

    return Problem(
        run=run,
        output=lambda r: r[0],
        stats=_indexer_stats(x),
        input_bytes=_tensor_bytes(x),
        dense=lambda: _dense_view(x, indexer=True, topk=topk),
        compare="topk_agreement",
    )


def _build_csa_layer(case: Case, device, seed) -> Problem:
    p = dict(case.params, kind="csa")
    x = _make_attn(p, device, seed, indexer=True)
    _, layer = _layer(p)
    topk = layer.index_topk

    def run(backend):
        def step():
            slots, lengths = longattn.indexer_topk(
                x.iq, x.iw, x.ik, x.visible, topk, block_table=x.block_table, seq_ids=x.seq_ids,
                return_slots=True, backend=backend,
            )  # fmt: skip
            return longattn.sparse_attention(
                x.q, x.swa, x.window, extra_kv=x.comp, extra_indices=slots, extra_topk_length=lengths,
                attn_sink=x.sink, backend=backend,
            )  # fmt: skip

        return step

    stats = dict(_indexer_stats(x))
    stats.update(_attn_stats(x))  # the random selection has the same counts as the indexer's
    return Problem(
        run=run,
        output=lambda r: r[0],
        stats=stats,
        input_bytes=_tensor_bytes(x),
        dense=lambda: _dense_view(x, indexer=True, topk=topk),
    )


def _tensor_bytes(obj) -> int:
    """Bytes of the tensors and FP8 pools among ``obj``'s attributes (or a dict's values)."""
    vals = obj.values() if isinstance(obj, dict) else vars(obj).values()
    return sum(
        v.numel() * v.element_size() if isinstance(v, torch.Tensor) else pool_nbytes(v)
        for v in vals
        if isinstance(v, torch.Tensor) or is_fp8_pool(v)
    )


_ATTN_AXES_DECODE = {"preset": PRESET_NAMES, "kind": KINDS, "context": CONTEXTS, "batch": BATCHES,
                     "page_size": PAGES, "dtype": KV_DTYPES}  # fmt: skip
_ATTN_AXES_PREFILL = {"preset": PRESET_NAMES, "kind": KINDS, "context": CONTEXTS, "chunk": CHUNKS,
                      "page_size": PAGES, "dtype": KV_DTYPES}  # fmt: skip
_DEC_DEFAULTS = {"preset": ("v4-flash",), "kind": KINDS, "context": (8192, 32768, 131072, 1 << 20),
                 "batch": (1,), "page_size": (64,), "dtype": ("bf16",)}  # fmt: skip
_PRE_DEFAULTS = {"preset": ("v4-flash",), "kind": KINDS, "context": (131072,), "chunk": (256,),
                 "page_size": (64,), "dtype": ("bf16",)}  # fmt: skip
_QUICK_DEC = {"preset": ("v4-flash",), "kind": KINDS, "context": (8192,), "batch": (1,), "page_size": (64,),
              "dtype": ("bf16",)}  # fmt: skip
_QUICK_PRE = {"preset": ("v4-flash",), "kind": KINDS, "context": (8192,), "chunk": (64,), "page_size": (64,),
              "dtype": ("bf16",)}  # fmt: skip


def _without(d, *keys):
    return {k: v for k, v in d.items() if k not in keys}


def _BF16(axes):  # the indexer keys and the csa_layer composite: bf16 pools only (the layer has FP8)
    return dict(axes, dtype=("bf16",))


ATTN_PEERS = ("dense_sdpa", "dense_einsum", "dense_einsum_fp32", "flex_attention", "flash_mla", "flashinfer")

register(Family(
    group="sparse_attention.decode", op="sparse_attention", ops=("sparse_attention",),
    axes=_ATTN_AXES_DECODE, defaults=_DEC_DEFAULTS, quick_defaults=_QUICK_DEC,
    build=_build_sparse, cost=_attn_cost, input_bytes=_attn_input_bytes, peers=ATTN_PEERS,
    derive=_attn_derive, invalid=_invalid_attn,
    doc="one decode token per sequence: window ring (128) + CSA top-k / HCA all context//128 entries, sink",
))  # fmt: skip
register(Family(
    group="sparse_attention.prefill", op="sparse_attention", ops=("sparse_attention",),
    axes=_ATTN_AXES_PREFILL, defaults=_PRE_DEFAULTS, quick_defaults=_QUICK_PRE,
    build=_build_sparse, cost=_attn_cost, input_bytes=_attn_input_bytes, peers=ATTN_PEERS,
    derive=_attn_derive, invalid=_invalid_attn,
    doc="the last `chunk` tokens of one sequence: raw window rows + CSA top-k / HCA visible entries, sink",
))  # fmt: skip


def _csa_family(group, op, ops, mode, build, cost, peers, doc) -> Family:
    """A family on the CSA geometry only (no `kind` axis; bf16 pools) over the attention axes of `mode`."""
    if mode == "decode":
        axes, defaults, quick = _ATTN_AXES_DECODE, _DEC_DEFAULTS, _QUICK_DEC
    else:
        axes, defaults, quick = _ATTN_AXES_PREFILL, _PRE_DEFAULTS, _QUICK_PRE

    def csa(p):
        return dict(p, kind="csa")

    return Family(
        group=group, op=op, ops=ops,
        axes=_BF16(_without(axes, "kind")), defaults=_without(defaults, "kind"), quick_defaults=_without(quick, "kind"),
        build=build, cost=cost, input_bytes=lambda p: _attn_input_bytes(csa(p), True), peers=peers,
        derive=lambda p: _attn_derive(csa(p)), invalid=lambda p: _invalid_attn(csa(p)), doc=doc,
    )  # fmt: skip


INDEXER_PEERS = ("dense_einsum",)
LAYER_PEERS = ("dense_sdpa", "dense_einsum", "dense_einsum_fp32")
register(_csa_family(
    "indexer_topk.decode", "indexer_topk", ("indexer_topk",), "decode", _build_indexer, _indexer_cost, INDEXER_PEERS,
    "lightning indexer top-k over context//4 paged entries per sequence, one token per sequence",
))  # fmt: skip
register(_csa_family(
    "indexer_topk.prefill", "indexer_topk", ("indexer_topk",), "prefill", _build_indexer, _indexer_cost, INDEXER_PEERS,
    "lightning indexer top-k for the last `chunk` tokens of one sequence ((p+1)//4 visible entries each)",
))  # fmt: skip
register(_csa_family(
    "csa_layer.decode", "csa_layer", ("indexer_topk", "sparse_attention"), "decode", _build_csa_layer, _layer_cost,
    LAYER_PEERS, "one CSA layer's attention step: indexer_topk(return_slots) -> sparse_attention (the README main job)",
))  # fmt: skip
register(_csa_family(
    "csa_layer.prefill", "csa_layer", ("indexer_topk", "sparse_attention"), "prefill", _build_csa_layer, _layer_cost,
    LAYER_PEERS, "one CSA layer's attention step for a prefill chunk (indexer + sparse attention)",
))  # fmt: skip


# --------------------------------------------------------------------------------------------------
# merge_attention_states and compress_pool


def _build_merge(case: Case, device, seed) -> Problem:
    p = case.params
    T, H, D = int(p["tokens"]), int(p["n_heads"]), int(p["head_dim"])
    dt = DTYPES[p["dtype"]]
    g = generator(device, seed)
    oa, ob = randn((T, H, D), dt, device, g), randn((T, H, D), dt, device, g)
    la = randn((T, H), torch.float32, device, g, scale=2.0).add_(5.0)
    lb = randn((T, H), torch.float32, device, g, scale=2.0).add_(5.0)

    def run(backend):
        return lambda: longattn.merge_attention_states(oa, la, ob, lb, backend=backend)

    return Problem(run=run, output=lambda r: r[0], stats={"T": T}, input_bytes=2 * oa.numel() * oa.element_size())


register(Family(
    group="merge_attention_states", op="merge_attention_states", ops=("merge_attention_states",),
    axes={"preset": PRESET_NAMES, "tokens": (1, 64, 1024, 16384), "dtype": ("bf16", "fp32")},
    defaults={"preset": ("v4-flash",), "tokens": (64, 4096), "dtype": ("bf16",)},
    quick_defaults={"preset": ("v4-flash",), "tokens": (64,), "dtype": ("bf16",)},
    build=_build_merge,
    cost=lambda p, s: costs.merge_cost(T=int(p["tokens"]), H=int(p["n_heads"]), D=int(p["head_dim"]),
                                       elt=DTYPES[p["dtype"]].itemsize),
    input_bytes=lambda p: 3 * int(p["tokens"]) * PRESETS[p["preset"]].n_heads * 512 * DTYPES[p["dtype"]].itemsize,
    derive=lambda p: {"n_heads": PRESETS[p["preset"]].n_heads, "head_dim": PRESETS[p["preset"]].head_dim},
    doc="exact merge of two split-KV partial states [T, H, D] + lse",
))  # fmt: skip

# compressor kinds: (ratio, d, overlap)
COMPRESSORS = {"csa": (4, 512, True), "hca": (128, 512, False), "csa_index": (4, 128, True)}


def _build_compress(case: Case, device, seed) -> Problem:
    p = case.params
    ratio, d, overlap = COMPRESSORS[p["kind"]]
    S = int(p["tokens"])
    c = 2 if overlap else 1
    dt = DTYPES[p["dtype"]]
    g = generator(device, seed)
    a = randn((S, c * d), dt, device, g)
    b = randn((S, c * d), dt, device, g)

    def run(backend):
        return lambda: longattn.compress_pool(a, b, ratio, overlap, backend=backend)

    return Problem(run=run, output=lambda r: r, stats={}, input_bytes=2 * a.numel() * a.element_size())


register(Family(
    group="compress_pool", op="compress_pool", ops=("compress_pool",),
    axes={"kind": tuple(COMPRESSORS), "tokens": (4096, 16384, 65536, 262144), "dtype": ("fp32", "bf16")},
    defaults={"kind": ("csa", "hca"), "tokens": (16384,), "dtype": ("fp32",)},
    quick_defaults={"kind": ("csa", "hca"), "tokens": (4096,), "dtype": ("fp32",)},
    build=_build_compress,
    cost=lambda p, s: costs.compress_pool_cost(S=int(p["tokens"]), ratio=COMPRESSORS[p["kind"]][0],
                                               d=COMPRESSORS[p["kind"]][1], overlap=COMPRESSORS[p["kind"]][2],
                                               in_elt=DTYPES[p["dtype"]].itemsize),
    input_bytes=lambda p: 2 * int(p["tokens"]) * 2 * COMPRESSORS[p["kind"]][1] * DTYPES[p["dtype"]].itemsize,
    derive=lambda p: dict(zip(("ratio", "d", "overlap"), COMPRESSORS[p["kind"]])),
    invalid=lambda p: None if int(p["tokens"]) >= COMPRESSORS[p["kind"]][0] else "fewer tokens than the ratio",
    doc="stateless KV-compressor pooling of one sequence (CSA: ratio 4 overlapped; HCA: ratio 128)",
))  # fmt: skip


# --------------------------------------------------------------------------------------------------
# Suites: which cases `python -m bench` runs without selection arguments.

SuiteEntry = Tuple[str, Dict[str, Tuple], bool]  # (group, axis overrides, run peers)

K8, K32, K128, M1 = 8192, 32768, 131072, 1 << 20

DEFAULT_SUITE: List[SuiteEntry] = [
    # In order of importance: what the README's headline, table and goals read comes first, so that a
    # run cut short by the time budget (a busy machine; --time-budget) still has it.
    # the kernel composite (indexer_topk -> sparse_attention on prepared pools): the README main job
    ("csa_layer.decode", {"preset": ("v4-flash",), "context": (K128, M1)}, True),
    # one HybridAttention layer step (the real layer over a CacheManager plan; plan time: cache_plan)
    ("hybrid_attention.csa.decode", {"preset": ("v4-flash",), "context": (K128,)}, True),
    ("hybrid_attention.csa.decode", {"preset": ("v4-flash",), "context": (M1,)}, False),
    ("hybrid_attention.csa.prefill", {"preset": ("v4-flash",), "context": (K128,), "chunk": (256,)}, True),
    ("hybrid_attention.hca.decode", {"preset": ("v4-flash",), "context": (K128, M1)}, True),
    # ops
    ("indexer_topk.decode", {"context": (K8, K32, K128, M1)}, True),
    ("sparse_attention.decode", {"kind": ("csa",), "context": (K8, K32, K128, M1)}, True),
    ("sparse_attention.decode", {"kind": ("hca",), "context": (K128, M1)}, True),
    ("sparse_attention.decode", {"kind": ("csa",), "context": (K128,), "batch": (16,)}, False),
    ("sparse_attention.decode", {"kind": ("csa",), "context": (K128,), "dtype": ("fp8",)}, True),
    ("sparse_attention.decode", {"kind": ("csa",), "context": (M1,), "dtype": ("fp8",)}, False),
    ("sparse_attention.prefill", {"kind": ("csa",), "context": (K128,), "chunk": (256,)}, False),
    ("indexer_topk.prefill", {"context": (K128,), "chunk": (256,)}, False),
    ("merge_attention_states", {"tokens": (64, 4096)}, False),
    ("compress_pool", {"kind": ("csa", "hca"), "tokens": (16384,)}, False),
    # cache ops
    ("append_kv.decode", {"batch": (64,), "dtype": ("bf16", "fp8")}, False),
    ("append_kv.prefill", {"chunk": (4096,), "dtype": ("bf16", "fp8")}, False),
    ("compress_kv.decode", {"kind": ("csa",), "batch": (64,), "emit": ("all", "none")}, False),
    ("compress_kv.decode", {"kind": ("hca",), "batch": (64,), "emit": ("all",)}, False),
    ("compress_kv.prefill", {"kind": ("csa",), "chunk": (4096,)}, False),
    ("cache_plan.decode", {"context": (M1,), "batch": (1,)}, False),
    ("cache_plan.prefill", {"context": (K128,), "chunk": (256,)}, False),
    # more layer steps
    ("hybrid_attention.csa.decode", {"preset": ("v4-pro",), "context": (M1,)}, False),
    ("hybrid_attention.csa.decode", {"preset": ("v4-flash",), "context": (K128,), "dtype": ("fp8",)}, False),
    ("hybrid_attention.swa.decode", {"preset": ("v4-flash",), "context": (K128,)}, True),
]


def suite_cases(entries: Sequence[SuiteEntry]) -> List[Tuple[Case, bool]]:
    out: List[Tuple[Case, bool]] = []
    seen = set()
    for group, overrides, peers in entries:
        fam = REGISTRY[group]
        for c in fam.cases(overrides):
            if c.name not in seen:
                seen.add(c.name)
                out.append((c, peers))
    return out


def select(
    ops: Optional[Sequence[str]] = None,
    axes: Optional[Mapping[str, Sequence]] = None,
    quick: bool = False,
    everything: bool = False,
) -> List[Case]:
    """Cases of the families matching ``ops``: the product of the given axis values, the family's
    (quick) defaults for the others, or every registered value with ``everything``."""
    axes = {k: v for k, v in (axes or {}).items() if v}
    out: List[Case] = []
    for fam in families(ops):
        if not fam.selects(axes):  # e.g. --kinds hca skips hybrid_attention.csa.*
            continue
        base = fam.axes if everything else (fam.quick_defaults if quick else fam.defaults)
        sel = {a: tuple(axes.get(a) or base[a]) for a in fam.axes}
        out.extend(fam.cases(sel))
    return out


def dense_shape(params: Mapping[str, object]) -> Dict[str, int]:
    """Sizes of a case in the dense layout (for the peers' memory and time estimates): B sequences,
    Tq query tokens each, R window rows + N compressed entries = ``width`` keys per sequence."""
    p = dict(params)
    p.setdefault("kind", "csa")
    _, layer = _layer(p)
    B, T, L = _geometry(p)
    R = min(L, layer.window) if "batch" in p else min(L, T + layer.window - 1)
    N = L // layer.compress_ratio if layer.compress_ratio else 0  # swa: the window only
    return dict(B=B, Tq=T // B, T=T, R=R, N=N, width=R + N, H=layer.n_heads, D=layer.head_dim,
                Hi=layer.index_n_heads, Di=layer.index_head_dim, topk=layer.index_topk,
                elt=float_dtype(p.get("dtype", "bf16")).itemsize)  # fmt: skip


# The cache-op and layer families register themselves on import (they build on the helpers above).
from . import cases_cache, cases_layer  # noqa: E402,F401
