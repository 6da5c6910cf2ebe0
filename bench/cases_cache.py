"""Case families of the paged-cache ops: ``append_kv``, ``compress_kv`` and the step plan.

- ``append_kv.decode`` / ``append_kv.prefill``: new latent rows (bf16, D = 512) into a window pool
  (bf16, or the FP8 pool: 584-B records quantised on write) through a slot mapping. Decode: one row per
  sequence at position ``APPEND_POSITION`` into its own window ring page; prefill: the ``chunk`` rows of
  one sequence into consecutive slots of shuffled pages.
- ``compress_kv.decode`` / ``compress_kv.prefill``: the stateful paged compressor (``kind`` csa:
  ratio 4 overlapped d = 512; csa_index: the indexer's compressor, ratio 4 overlapped d = 128; hca:
  ratio 128, d = 512). Decode: one token per sequence at position ``context - 1`` (``emit=all``: every
  token ends a block and emits) or ``context - 2`` (``emit=none``: no token emits, the ring is only
  updated); prefill: positions ``context - chunk .. context - 1`` of one sequence.
- ``cache_plan.decode`` / ``cache_plan.prefill``: ``CacheManager.plan`` of one step of a model's layer
  kinds (V4: window + ratios 4 and 128) plus the HCA all-visible index rows the first HCA layer of a
  step builds and every other one reuses. Host bookkeeping shared by every layer: no backend runs it,
  its one implementation is recorded as ``host``.

Every step is made a fixed point, so that timing the same call many times measures the same work and
every backend sees the same inputs: the ring slots a step writes already hold the values it writes
(its other ring rows are random), rewrites of the same rows are idempotent, and the plan is made on a
fresh copy of the manager before every call (``prepare``, outside the timed region).
"""

from __future__ import annotations

import copy
from typing import Dict, List, Optional, Sequence, Tuple

import longattn
import torch
from longattn.cache import CacheManager
from longattn.cache.manager import token_chunks
from longattn.configs import PRESETS, V4_FLASH, kind_of_ratio
from longattn.rope import inv_freq
from longattn.testing import fill_random_context

from . import costs
from .cases import BATCHES, CHUNKS, CONTEXTS, PAGES, PRESET_NAMES, Case, Family, Problem, _geometry, register
from .inputs import FP8, float_dtype, generator, pool_rows, randn, randperm, row_bytes

D_KV = 512  # latent row width of the window / compressed pools (both presets)
WINDOW = 128
APPEND_POSITION = 131071  # decode rows land at this position (only its page offset matters)
FILL_CHUNK = 1 << 14  # tokens per plan while filling a context (bounds the window rows it holds)
APPEND_DTYPES = ("bf16", FP8)


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


# --------------------------------------------------------------------------------------------------
# append_kv


def _append_geometry(p) -> Tuple[int, List[int]]:
    """(B sequences, positions of the rows)."""
    if "batch" in p:
        return int(p["batch"]), [APPEND_POSITION] * int(p["batch"])
    C = int(p["chunk"])
    return 1, list(range(APPEND_POSITION + 1 - C, APPEND_POSITION + 1))


def _append_pages(p) -> int:
    page = int(p["page_size"])
    B, pos = _append_geometry(p)
    ring = _cdiv(WINDOW, page) + 1  # window pages a sequence holds between steps (the manager's rule)
    if "batch" in p:
        return B * ring
    return (pos[-1] // page - pos[0] // page + 1) + ring


def _build_append(case: Case, device, seed) -> Problem:
    p = case.params
    page = int(p["page_size"])
    B, positions = _append_geometry(p)
    T = len(positions)
    g = generator(device, seed)
    num_pages = _append_pages(p)
    perm = randperm(num_pages, device, g).long()  # shuffled free list of a long-running server
    pos = torch.tensor(positions, dtype=torch.int64, device=device)
    if "batch" in p:
        ring = _cdiv(WINDOW, page) + 1
        lp = torch.arange(B, device=device) * ring + (pos // page) % ring  # each sequence its own ring pages
    else:
        lp = pos // page - positions[0] // page
    slots = (perm[lp] * page + pos % page).to(torch.int32)
    rows = randn((T, D_KV), torch.bfloat16, device, g)
    if p["dtype"] == FP8:
        pool = longattn.Fp8KVPool.empty(num_pages, page, device)
    else:
        pool = torch.zeros(num_pages, page, D_KV, dtype=float_dtype(p["dtype"]), device=device)

    def run(backend):
        return lambda: longattn.append_kv(pool, rows, slots, backend=backend)

    data = pool.data if p["dtype"] == FP8 else pool
    return Problem(
        run=run,
        output=lambda r: pool_rows(pool, slots, torch.float32),
        stats={
            "T": T,
            "B": B,
            "src_elt": rows.element_size(),
            "row_bytes": row_bytes(p["dtype"], D_KV),
            "slot_elt": slots.element_size(),
        },
        input_bytes=rows.numel() * rows.element_size() + data.numel() * data.element_size() + 4 * T,
    )


def _append_cost(p, s) -> costs.Cost:
    return costs.append_kv_cost(T=int(s["T"]), D=D_KV, src_elt=int(s["src_elt"]), row_bytes=int(s["row_bytes"]),
                                slot_elt=int(s["slot_elt"]))  # fmt: skip


def _append_input_bytes(p) -> int:
    _, pos = _append_geometry(p)
    return _append_pages(p) * int(p["page_size"]) * row_bytes(p["dtype"], D_KV) + len(pos) * (2 * D_KV + 4)


register(Family(
    group="append_kv.decode", op="append_kv", ops=("append_kv",),
    axes={"batch": BATCHES, "page_size": PAGES, "dtype": APPEND_DTYPES},
    defaults={"batch": (1, 64), "page_size": (64,), "dtype": APPEND_DTYPES},
    quick_defaults={"batch": (16,), "page_size": (64,), "dtype": ("bf16",)},
    build=_build_append, cost=_append_cost, input_bytes=_append_input_bytes,
    doc="one new latent row (bf16, 512) per sequence into its window ring page (bf16 or FP8 pool)",
))  # fmt: skip
register(Family(
    group="append_kv.prefill", op="append_kv", ops=("append_kv",),
    axes={"chunk": CHUNKS, "page_size": PAGES, "dtype": APPEND_DTYPES},
    defaults={"chunk": (4096,), "page_size": (64,), "dtype": APPEND_DTYPES},
    quick_defaults={"chunk": (256,), "page_size": (64,), "dtype": ("bf16",)},
    build=_build_append, cost=_append_cost, input_bytes=_append_input_bytes,
    doc="the `chunk` new rows of one sequence into consecutive slots of shuffled window pages",
))  # fmt: skip


# --------------------------------------------------------------------------------------------------
# compress_kv

# kind -> (ratio, d, overlap)
COMPRESS_KINDS: Dict[str, Tuple[int, int, bool]] = {"csa": (4, 512, True), "hca": (128, 512, False),
                                                    "csa_index": (4, 128, True)}  # fmt: skip
ROPE_DIM = V4_FLASH.rope_dim


def runs_of(rows: Sequence[int]) -> List[Tuple[int, int]]:
    """(first token, token count) of each maximal stretch of equal ``rows`` (one sequence's tokens)."""
    out, i, T = [], 0, len(rows)
    while i < T:
        j = i
        while j + 1 < T and rows[j + 1] == rows[i]:
            j += 1
        out.append((i, j - i + 1))
        i = j + 1
    return out


def compressor_counts(positions: Sequence[int], rows: Sequence[int], ratio: int, overlap: bool) -> Dict[str, int]:
    """Exact counts of one compress_kv step for the cost model: ``emissions`` (tokens with
    ``(p + 1) % ratio == 0``), ``ring_read_pairs`` (distinct (position, channel half) pairs before each
    run that its emissions pool: those come from the ring), ``ring_rows_written`` (min(run, ring) per run)."""
    c = 2 if overlap else 1
    ring = c * ratio
    emissions = pairs = written = 0
    for t0, n in runs_of(rows):
        s = int(positions[t0])
        written += min(n, ring)
        need = set()
        first = s + (ratio - 1 - s % ratio)  # first p >= s with (p + 1) % ratio == 0
        for p in range(first, s + n, ratio):
            emissions += 1
            for q in range(max(0, p - ring + 1), s):  # only windows that start before the run
                need.add((q, (0 if q <= p - ratio else 1) if overlap else 0))
        pairs += len(need)
    return {"emissions": emissions, "ring_read_pairs": pairs, "ring_rows_written": written}


def ring_fixed_point(pool, state_block_table, positions, rows, ab: torch.Tensor, ring: int) -> torch.Tensor:
    """Write into the ring ``pool`` ([pages, ring page, width] fp32) the rows this step will write
    (the last ``min(run, ring)`` tokens' ``a | b`` of each run, at ring slot ``p % ring``), so that the
    step leaves the ring as it found it. Returns the slots (int64)."""
    s_ps = pool.shape[1]
    sbt = state_block_table.long().cpu()
    toks, slots = [], []
    for t0, n in runs_of([int(r) for r in rows]):
        for t in range(t0 + max(0, n - ring), t0 + n):
            r = int(positions[t]) % ring
            toks.append(t)
            slots.append(int(sbt[int(rows[t]), r // s_ps]) * s_ps + r % s_ps)
    dev = ab.device
    slots_t = torch.tensor(slots, dtype=torch.int64, device=dev)
    longattn.append_kv(pool, ab[torch.tensor(toks, dtype=torch.int64, device=dev)].float(), slots_t)
    return slots_t


def _compress_positions(p) -> Tuple[int, List[int], List[int]]:
    """(B, positions, token rows) of a compress_kv case."""
    L = int(p["context"])
    if "batch" in p:
        B = int(p["batch"])
        pos = L - 1 if p["emit"] == "all" else L - 2
        return B, [pos] * B, list(range(B))
    C = int(p["chunk"])
    return 1, list(range(L - C, L)), [0] * C


def _compress_invalid(p) -> Optional[str]:
    if p["kind"] not in COMPRESS_KINDS:
        return f"unknown compressor kind {p['kind']!r}"
    ratio, d, _ = COMPRESS_KINDS[p["kind"]]
    L = int(p["context"])
    if L % ratio:
        return f"context {L} is not a multiple of the ratio {ratio}"
    if "chunk" in p and int(p["chunk"]) > L:
        return f"chunk {p['chunk']} longer than the context {L}"
    if p["dtype"] == FP8 and d != 512:
        return "FP8 pools hold 512-d rows (the indexer keys stay bf16)"
    return None


def _compress_derive(p):
    ratio, d, overlap = COMPRESS_KINDS[p["kind"]]
    return {"ratio": ratio, "d": d, "overlap": overlap, "rope_dim": ROPE_DIM}


def _out_pages(p) -> List[Tuple[int, int]]:
    """(row, logical page) of every output page the step writes."""
    ratio = COMPRESS_KINDS[p["kind"]][0]
    page = int(p["page_size"])
    _, pos, rows = _compress_positions(p)
    return sorted({(r, (q // ratio) // page) for q, r in zip(pos, rows) if (q + 1) % ratio == 0})


def _build_compress_kv(case: Case, device, seed) -> Problem:
    p = case.params
    ratio, d, overlap = COMPRESS_KINDS[p["kind"]]
    c = 2 if overlap else 1
    ring = c * ratio
    page = int(p["page_size"])
    s_ps = min(page, ring)
    ring_pages = _cdiv(ring, s_ps)
    L = int(p["context"])
    B, positions, rows = _compress_positions(p)
    T = len(positions)
    g = generator(device, seed)
    a = randn((T, c * d), torch.bfloat16, device, g)
    b = randn((T, c * d), torch.bfloat16, device, g)
    pos_t = torch.tensor(positions, dtype=torch.int64, device=device)
    rows_t = torch.tensor(rows, dtype=torch.int32, device=device)
    state = randn((B * ring_pages, s_ps, 2 * c * d), torch.float32, device, g)
    sbt = randperm(B * ring_pages, device, g).view(B, ring_pages).to(torch.int32)
    ring_slots = ring_fixed_point(state, sbt, positions, rows, torch.cat([a, b], dim=1), ring)
    # Output pages: only those this step writes are mapped (the rest of each table row is -1, which
    # the op never needs: an entry's page comes from its own position).
    touched = _out_pages(p)
    n_out = max(1, len(touched))
    max_pages = _cdiv(L // ratio, page)
    obt = torch.full((B, max_pages), -1, dtype=torch.int32)
    perm = randperm(n_out, device, g).cpu()
    for i, (r, lp) in enumerate(touched):
        obt[r, lp] = int(perm[i])
    obt = obt.to(device)
    if p["dtype"] == FP8:
        out = longattn.Fp8KVPool.empty(n_out, page, device)
    else:
        out = torch.zeros(n_out, page, d, dtype=float_dtype(p["dtype"]), device=device)
    entry_slots = torch.tensor(
        [int(obt[r, (q // ratio) // page]) * page + (q // ratio) % page
         for q, r in zip(positions, rows) if (q + 1) % ratio == 0],
        dtype=torch.int64, device=device,
    )  # fmt: skip
    norm_weight = randn((d,), torch.float32, device, g, scale=0.1).add_(1.0)
    rope = inv_freq(V4_FLASH.rope_for_ratio(ratio), ROPE_DIM, device)

    def run(backend):
        return lambda: longattn.compress_kv(
            a, b, pos_t, rows_t, ratio=ratio, overlap=overlap, state=state, state_block_table=sbt, out=out,
            out_block_table=obt, norm_weight=norm_weight, eps=V4_FLASH.eps, rope_inv_freq=rope, backend=backend,
        )  # fmt: skip

    def output(_):  # the entries written and the ring rows written, flattened
        parts = [state.view(-1, state.shape[-1]).index_select(0, ring_slots).flatten()]
        if entry_slots.numel():
            parts.insert(0, pool_rows(out, entry_slots, torch.float32).flatten())
        return torch.cat(parts)

    stats = compressor_counts(positions, rows, ratio, overlap)
    stats.update(T=T, B=B, ring_pages=ring_pages, in_elt=a.element_size(), row_bytes=row_bytes(p["dtype"], d))
    out_bytes = out.data.numel() if p["dtype"] == FP8 else out.numel() * out.element_size()
    return Problem(
        run=run,
        output=output,
        stats=stats,
        input_bytes=2 * a.numel() * a.element_size() + state.numel() * 4 + out_bytes,
    )


def _compress_kv_cost(p, s) -> costs.Cost:
    ratio, d, overlap = COMPRESS_KINDS[p["kind"]]
    return costs.compress_kv_cost(
        T=int(s["T"]), d=d, ratio=ratio, overlap=overlap, emissions=int(s["emissions"]),
        ring_read_pairs=int(s["ring_read_pairs"]), ring_rows_written=int(s["ring_rows_written"]),
        in_elt=int(s["in_elt"]), row_bytes=int(s["row_bytes"]), rope_dim=ROPE_DIM, B=int(s["B"]),
        ring_pages=int(s["ring_pages"]),
    )  # fmt: skip


def _compress_input_bytes(p) -> int:
    ratio, d, overlap = COMPRESS_KINDS[p["kind"]]
    c = 2 if overlap else 1
    B, pos, _ = _compress_positions(p)
    page = int(p["page_size"])
    ring = c * ratio
    state = B * _cdiv(ring, min(page, ring)) * min(page, ring) * 2 * c * d * 4
    return 2 * len(pos) * c * d * 2 + state + max(1, len(_out_pages(p))) * page * row_bytes(p["dtype"], d)


_COMPRESS_DTYPES = ("bf16", FP8)
register(Family(
    group="compress_kv.decode", op="compress_kv", ops=("compress_kv",),
    axes={"kind": tuple(COMPRESS_KINDS), "context": CONTEXTS, "batch": BATCHES, "emit": ("all", "none"),
          "page_size": PAGES, "dtype": _COMPRESS_DTYPES},
    defaults={"kind": tuple(COMPRESS_KINDS), "context": (131072,), "batch": (1, 64), "emit": ("all", "none"),
              "page_size": (64,), "dtype": ("bf16",)},
    quick_defaults={"kind": ("csa", "hca"), "context": (8192,), "batch": (16,), "emit": ("all",),
                    "page_size": (64,), "dtype": ("bf16",)},
    build=_build_compress_kv, cost=_compress_kv_cost, input_bytes=_compress_input_bytes,
    derive=_compress_derive, invalid=_compress_invalid, compute_dtype="fp32",
    doc="stateful paged compressor, one token per sequence: emit=all (every token ends a block: pool "
        "c*ratio rows, 2c*ratio-1 from the ring, RMSNorm, RoPE, write) or emit=none (ring update only)",
))  # fmt: skip
register(Family(
    group="compress_kv.prefill", op="compress_kv", ops=("compress_kv",),
    axes={"kind": tuple(COMPRESS_KINDS), "context": CONTEXTS, "chunk": CHUNKS, "page_size": PAGES,
          "dtype": _COMPRESS_DTYPES},
    defaults={"kind": tuple(COMPRESS_KINDS), "context": (131072,), "chunk": (4096,), "page_size": (64,),
              "dtype": ("bf16",)},
    quick_defaults={"kind": ("csa", "hca"), "context": (8192,), "chunk": (256,), "page_size": (64,),
                    "dtype": ("bf16",)},
    build=_build_compress_kv, cost=_compress_kv_cost, input_bytes=_compress_input_bytes,
    derive=_compress_derive, invalid=_compress_invalid, compute_dtype="fp32",
    doc="stateful paged compressor over the last `chunk` tokens of one sequence (chunk // ratio entries)",
))  # fmt: skip


# --------------------------------------------------------------------------------------------------
# cache_plan: CacheManager.plan of one step (host bookkeeping, shared by all layers)


def model_layers(preset: str):
    """One LayerConfig per layer kind the preset has (what its CacheManager serves)."""
    cfg = PRESETS[preset]
    return [cfg.first_layer(k) for k in ("swa", "csa", "hca") if k in cfg.layer_kinds]


def step_cu(B: int, T: int) -> torch.Tensor:
    """cu_seqlens of a step: B sequences of T // B tokens each."""
    return torch.arange(B + 1, dtype=torch.int64) * (T // B)


def plan_tensor_bytes(plan) -> Dict[str, float]:
    """Bytes of every metadata tensor of a StepPlan (HCA index rows included when built)."""

    def nb(t):
        return float(t.numel() * t.element_size())

    out = {"cu_seqlens": nb(plan.cu_seqlens), "positions": nb(plan.positions), "token_rows": nb(plan.token_rows),
           "window_slots": nb(plan.window_slots), "window_indices": nb(plan.window_indices)}  # fmt: skip
    for r, cp in plan.compressed.items():
        out[f"r{r}.visible_end"] = nb(cp.visible_end)
        out[f"r{r}.block_table"] = nb(cp.block_table)
        out[f"r{r}.state_block_table"] = nb(cp.state_block_table)
        if cp._all_rows is not None:
            out[f"r{r}.all_visible"] = nb(cp._all_rows[0]) + nb(cp._all_rows[1])
    return out


def _plan_invalid(p) -> Optional[str]:
    B, T, L = _geometry(p)
    if "chunk" in p and T > L:
        return f"chunk {T} longer than the context {L}"
    return None


def _build_plan(case: Case, device, seed) -> Problem:
    p = case.params
    B, T, L = _geometry(p)
    prior = L - T // B
    m = CacheManager.for_layers(
        model_layers(p["preset"]), max_seqs=B, max_context=L, max_step_tokens=max(FILL_CHUNK, T),
        page_size=int(p["page_size"]), device=device,
    )  # fmt: skip
    seq_ids = list(range(B))
    fill_random_context([], m, seq_ids, prior, chunk=FILL_CHUNK, seed=seed)  # bookkeeping only: no pools
    snapshot = copy.deepcopy(m)
    # HCA index rows of every visible entry: the layer builds them once per step on the plan (cached)
    # when the step fits one chunk of the temporary-memory budget, else per chunk inside each layer.
    hca = [r for r in m.ratios if kind_of_ratio(r) == "hca" and len(token_chunks(T, 4 * (L // r + WINDOW) + 1)) <= 1]
    cu = step_cu(B, T)
    holder = {"m": None}

    def prepare():  # a fresh copy of the manager as it was before the step (untimed)
        holder["m"] = copy.deepcopy(snapshot)

    def step():
        plan = holder["m"].plan(seq_ids, cu)
        for r in hca:  # built once per step by the first HCA layer, reused by the others
            plan.compressed[r].all_visible(plan.token_rows)
        return plan

    step.prepare = prepare
    prepare()
    tb = plan_tensor_bytes(step())
    prepare()  # ready for one call without the hook (tests; the runner prepares before every call)
    stats = {f"bytes.{k}": v for k, v in tb.items()}
    stats.update(T=T, B=B)

    def run(backend):  # host code: the same for every backend (the runner calls it once, as "host")
        return step

    return Problem(run=run, output=lambda plan: plan.window_indices, stats=stats,
                   input_bytes=_plan_input_bytes(p))  # fmt: skip


def _plan_cost(p, s) -> costs.Cost:
    return costs.plan_cost(tensor_bytes={k[len("bytes.") :]: float(v) for k, v in s.items() if k.startswith("bytes.")})


def _plan_input_bytes(p) -> int:
    B, T, L = _geometry(p)
    page = int(p["page_size"])
    pages = sum(B * _cdiv(_cdiv(L, r), page) for r in (4, 128))
    return 64 * pages + T * (WINDOW * 8 + 64) + T * (L // 128) * 4  # python page lists + the plan's tensors


_PLAN_AXES = {"preset": PRESET_NAMES, "context": CONTEXTS, "page_size": PAGES}
register(Family(
    group="cache_plan.decode", op="cache_plan", ops=(),
    axes=dict(_PLAN_AXES, batch=BATCHES),
    defaults={"preset": ("v4-flash",), "context": (131072, 1 << 20), "page_size": (64,), "batch": (1, 64)},
    quick_defaults={"preset": ("v4-flash",), "context": (8192,), "page_size": (64,), "batch": (1,)},
    build=_build_plan, cost=_plan_cost, input_bytes=_plan_input_bytes, invalid=_plan_invalid, compute_dtype="fp32",
    doc="CacheManager.plan of a decode step (window + ratios 4 and 128) + the HCA all-visible rows; host code",
))  # fmt: skip
register(Family(
    group="cache_plan.prefill", op="cache_plan", ops=(),
    axes=dict(_PLAN_AXES, chunk=CHUNKS),
    defaults={"preset": ("v4-flash",), "context": (131072,), "page_size": (64,), "chunk": (256, 4096)},
    quick_defaults={"preset": ("v4-flash",), "context": (8192,), "page_size": (64,), "chunk": (64,)},
    build=_build_plan, cost=_plan_cost, input_bytes=_plan_input_bytes, invalid=_plan_invalid, compute_dtype="fp32",
    doc="CacheManager.plan of one prefill chunk + the HCA all-visible rows; host code",
))  # fmt: skip
