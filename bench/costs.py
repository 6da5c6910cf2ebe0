"""FLOP and byte models: the minimum work an op must do and the minimum bytes it must move.

Every benchmark case turns its parameters (and exact counts taken from the inputs it built, such as
the number of distinct KV rows a prefill chunk touches) into a ``Cost``. The run divides by the
measured time to get FLOP/s and B/s, and compares ``bytes / bandwidth`` (the memory floor) with
``flops / peak`` (the compute floor): the larger floor says whether the case is memory- or
compute-bound, and ``floor / time`` is the fraction of the ceiling reached.

Conventions (the same for every backend, so numbers compare across backends and with published kernels):

- One multiply-add = 2 FLOPs. Only the arithmetic of the dot products and of the weighted sums is
  counted; softmax exponentials, max/compare, relu, masking and top-k selection are NOT counted (they
  are O(keys) per head, small next to the O(keys * D) dot products, and not matmul work).
- Bytes = every input element that must be read at least once + every output element written once,
  at the element size it has in memory (bf16 pool rows: 2 B, int32 indices: 4 B, ...). A row that
  several query tokens read counts once (a kernel can keep it on chip), so a prefill chunk pays for
  the UNION of the rows its tokens gather. Temporaries are never counted: a perfect kernel has none.

Formulas (symbols: T query tokens, H heads, D head dim, e_* element sizes in bytes):

sparse_attention (one latent head, K = V):
    FLOPs = 4 * H * D * sum_t K_t                 (QK^T: 2*D per head and key; PV: 2*D per head and key)
    bytes = U * D * e_kv                           (distinct gathered KV rows of both streams)
          + 2 * T * H * D * e_q                    (q read, out written)
          + 4 * T * (K1 + K2) + 4 * T * n_len      (int32 index rows; topk_length vectors)
          + 4 * T * H                              (lse written, fp32)
  K_t = valid keys of token t over both streams (window + selected compressed entries).
  Decode: U = sum_t K_t (every token is its own sequence). FlashMLA counts TFLOPS the same way
  (2 * h * attended * (d_qk + d_v) with d_qk = d_v = D).

indexer_topk (lightning indexer + top-k):
    FLOPs = (2 * Di + 2) * Hi * sum_t N_t          (q.k per head, then weight multiply-add per head)
    bytes = U_e * Di * e_k                         (distinct index-key rows: per sequence, the largest
                                                    visible_end of its tokens)
          + T * Hi * Di * e_q + 4 * T * Hi         (q, fp32 weights)
          + 4 * T + 4 * B * max_pages + 4 * T      (visible_end, block table, seq ids)
          + 4 * T * topk + 4 * T                   (int32 indices and lengths written)
  N_t = visible_end of token t. At 1M tokens: N = 262,144, so U_e * Di * 2 = 64 MiB per sequence:
  the indexer dominates decode bytes (docs/deepseek-v4-attention.md section 10).

merge_attention_states:
    FLOPs = 3 * T * H * D                          (out = w_a * out_a + w_b * out_b)
    bytes = 3 * T * H * D * e + 3 * T * H * 4      (two partial outs and lse read, one written)

compress_pool (n = S // ratio entries, s = c * ratio slots per entry, c = 2 with overlap):
    FLOPs = 5 * n * d * s                          (subtract max, exp, sum, multiply, accumulate)
    bytes = 2 * n * ratio * c * d * e_in           (a and b of the tokens of complete blocks)
          + n * d * 4                              (fp32 entries written)

append_kv (T rows of D values into pool slots; memory-bound by construction: no multiply-adds):
    FLOPs = 0                                      (a copy, cast or FP8 quantisation is not counted)
    bytes = T * D * e_src                          (rows read)
          + T * row_bytes                          (rows written: D * e_pool, or the 584-B FP8 record)
          + T * e_slot                             (slot mapping read)

compress_kv (the stateful paged compressor; E emitting tokens, c = 2 with overlap, ring = c * ratio):
    FLOPs = E * (5 * c * ratio * d                 (the pooling, counted as compress_pool)
                 + 4 * d                           (RMSNorm: square-add, scale, weight)
                 + 3 * rope_dim)                   (interleaved RoPE: 4 mul + 2 add per pair)
    bytes = 2 * T * c * d * e_in                   (a and b: every value is read once)
          + P_ring * 2 * d * 4                     (ring values the head emissions need: P_ring distinct
                                                    (position, channel half) pairs before the chunk,
                                                    a and b of d channels, fp32)
          + W_ring * 2 * c * d * 4                 (ring rows written: min(run length, ring) per run)
          + E * row_bytes                          (entries written: d * e_pool or 584 B)
          + 12 * T + 4 * B * ring_pages + 4 * E    (positions int64, token rows, ring tables, the
                                                    entry's block-table word)
          + 4 * d + 2 * rope_dim                   (norm weight, RoPE inverse frequencies)
  Decode, CSA (ratio 4, d = 512): an emission reads 7 ring half-rows (28 KiB) + its batch row; HCA
  (ratio 128): 127 ring rows (508 KiB). 0.5-0.6 FLOP/B: memory-bound.

cache_plan (``CacheManager.plan`` + the HCA all-visible index rows: host-side bookkeeping shared by
every layer of a step): FLOPs = 0; bytes = the metadata tensors the step's plan holds (cu_seqlens,
positions, token rows, window slots and index rows, per ratio visible_end, block table, ring table,
HCA index rows + lengths). The floor is what writing them would cost; the plan is Python-bound.

hybrid_attention (one ``HybridAttention`` layer step over a StepPlan; the plan is not included):
    swa = append_kv + sparse_attention (window stream only, no lengths vector)
    hca = append_kv + compress_kv (d = 512, ratio 128) + sparse_attention (window + all visible entries)
    csa = append_kv + compress_kv (d = 512, ratio 4) + compress_kv (indexer keys, d = 128, ratio 4)
          + indexer_topk + sparse_attention (window + top-k)
  with the counts taken from the step's plan (keys, unique rows: for a CSA prefill chunk the union of
  the indexer's selection, computed at build time from the primed caches).

Composite cases (a CSA layer step = indexer_topk + sparse_attention) add their parts.
"""

from __future__ import annotations

import dataclasses
from typing import Dict, Optional


@dataclasses.dataclass(frozen=True)
class Cost:
    """Minimum FLOPs and bytes of one call, with the per-term breakdown and the formula used."""

    flops: float
    bytes: float
    formula: str = ""
    terms: Dict[str, Dict[str, float]] = dataclasses.field(default_factory=dict)

    @property
    def intensity(self) -> float:
        """Arithmetic intensity in FLOP per byte."""
        return self.flops / self.bytes if self.bytes else float("inf")

    def __add__(self, other: "Cost") -> "Cost":
        terms = dict(self.terms)
        for k, v in other.terms.items():
            key = k if k not in terms else f"{k}#2"
            terms[key] = v
        formula = " + ".join(f for f in (self.formula, other.formula) if f)
        return Cost(self.flops + other.flops, self.bytes + other.bytes, formula, terms)

    def to_json(self) -> Dict[str, object]:
        return {
            "flops": float(self.flops),
            "bytes": float(self.bytes),
            "intensity": float(self.intensity) if self.bytes else None,
            "formula": self.formula,
            "terms": {k: {kk: float(vv) for kk, vv in v.items()} for k, v in self.terms.items()},
        }


def _terms(**named_bytes_flops) -> Dict[str, Dict[str, float]]:
    return {k: {"flops": float(f), "bytes": float(b)} for k, (f, b) in named_bytes_flops.items()}


def sparse_attention_cost(
    *,
    T: int,
    H: int,
    D: int,
    keys: int,
    unique_rows: int,
    kv_elt: int,
    q_elt: int,
    index_cols: int,
    n_lengths: int = 0,
    kv_row_bytes: Optional[int] = None,
) -> Cost:
    """``keys`` = sum over tokens of the valid keys they attend (both streams); ``unique_rows`` =
    distinct KV rows gathered; ``index_cols`` = K1 + K2 (columns of the index rows, valid or not);
    ``n_lengths`` = how many [T] length vectors are read (topk_length, extra_topk_length);
    ``kv_row_bytes`` = bytes of one pool row when it is not ``D * kv_elt`` (FP8 pool: 584)."""
    flops = 4.0 * H * D * keys
    kv_bytes = float(unique_rows) * (kv_row_bytes if kv_row_bytes else D * kv_elt)
    qo_bytes = 2.0 * T * H * D * q_elt
    idx_bytes = 4.0 * T * index_cols + 4.0 * T * n_lengths
    lse_bytes = 4.0 * T * H
    return Cost(
        flops,
        kv_bytes + qo_bytes + idx_bytes + lse_bytes,
        "sparse_attention: 4*H*D*sum(K_t) FLOP; U*row_bytes + 2*T*H*D*e_q + 4*T*(K1+K2+n_len) + 4*T*H B",
        _terms(
            qk_pv=(flops, 0),
            kv_rows=(0, kv_bytes),
            q_out=(0, qo_bytes),
            indices=(0, idx_bytes),
            lse=(0, lse_bytes),
        ),
    )


def indexer_topk_cost(
    *,
    T: int,
    Hi: int,
    Di: int,
    entries: int,
    unique_entries: int,
    k_elt: int,
    q_elt: int,
    topk: int,
    B: int = 0,
    max_pages: int = 0,
) -> Cost:
    """``entries`` = sum over tokens of their visible entries; ``unique_entries`` = distinct index-key
    rows read; ``B`` x ``max_pages`` = block table (0 when not paged)."""
    flops = (2.0 * Di + 2.0) * Hi * entries
    k_bytes = float(unique_entries) * Di * k_elt
    q_bytes = float(T) * Hi * Di * q_elt + 4.0 * T * Hi
    meta_bytes = 4.0 * T + 4.0 * B * max_pages + (4.0 * T if max_pages else 0.0)
    out_bytes = 4.0 * T * topk + 4.0 * T
    return Cost(
        flops,
        k_bytes + q_bytes + meta_bytes + out_bytes,
        "indexer_topk: (2*Di+2)*Hi*sum(N_t) FLOP; U_e*Di*e_k + T*Hi*(Di*e_q+4) + meta + 4*T*(topk+1) B",
        _terms(
            scores=(flops, 0),
            index_keys=(0, k_bytes),
            q_weights=(0, q_bytes),
            metadata=(0, meta_bytes),
            topk_out=(0, out_bytes),
        ),
    )


def merge_cost(*, T: int, H: int, D: int, elt: int) -> Cost:
    flops = 3.0 * T * H * D
    nbytes = 3.0 * T * H * D * elt + 3.0 * T * H * 4
    return Cost(flops, nbytes, "merge: 3*T*H*D FLOP; 3*T*H*D*e + 12*T*H B", _terms(merge=(flops, nbytes)))


def compress_pool_cost(*, S: int, ratio: int, d: int, overlap: bool, in_elt: int) -> Cost:
    c = 2 if overlap else 1
    n = S // ratio
    slots = c * ratio
    flops = 5.0 * n * d * slots
    in_bytes = 2.0 * n * ratio * c * d * in_elt
    out_bytes = 4.0 * n * d
    return Cost(
        flops,
        in_bytes + out_bytes,
        "compress_pool: 5*n*d*c*ratio FLOP; 2*n*ratio*c*d*e_in + 4*n*d B",
        _terms(pool=(flops, 0), inputs=(0, in_bytes), entries=(0, out_bytes)),
    )


FP8_ROW_BYTES = 584  # longattn.cache.fp8.RECORD_BYTES: 448 e4m3 + 64 bf16 + 7 scales + 1 pad


def append_kv_cost(*, T: int, D: int, src_elt: int, row_bytes: int, slot_elt: int = 4) -> Cost:
    """``T`` rows of ``D`` values (``src_elt`` bytes each) into pool rows of ``row_bytes`` bytes."""
    read = float(T) * D * src_elt
    write = float(T) * row_bytes
    slots = float(T) * slot_elt
    return Cost(
        0.0,
        read + write + slots,
        "append_kv: 0 FLOP (memory-bound); T*D*e_src + T*row_bytes + T*e_slot B",
        _terms(rows_read=(0, read), rows_written=(0, write), slot_mapping=(0, slots)),
    )


def compress_kv_cost(
    *,
    T: int,
    d: int,
    ratio: int,
    overlap: bool,
    emissions: int,
    ring_read_pairs: int,
    ring_rows_written: int,
    in_elt: int,
    row_bytes: int,
    rope_dim: int,
    B: int,
    ring_pages: int,
) -> Cost:
    """One ``compress_kv`` step: ``emissions`` entries emitted; ``ring_read_pairs`` distinct (position,
    channel half) pairs the head emissions read from the ring; ``ring_rows_written`` ring rows
    written (see the module docstring)."""
    c = 2 if overlap else 1
    pool = 5.0 * c * ratio * d * emissions
    norm_rope = (4.0 * d + 3.0 * rope_dim) * emissions
    in_bytes = 2.0 * T * c * d * in_elt
    ring_read = float(ring_read_pairs) * 2 * d * 4
    ring_write = float(ring_rows_written) * 2 * c * d * 4
    out_bytes = float(emissions) * row_bytes
    meta = 12.0 * T + 4.0 * B * ring_pages + 4.0 * emissions + 4.0 * d + 2.0 * rope_dim
    return Cost(
        pool + norm_rope,
        in_bytes + ring_read + ring_write + out_bytes + meta,
        "compress_kv: E*(5*c*ratio*d + 4*d + 3*rope_dim) FLOP; 2*T*c*d*e_in + P_ring*2*d*4 + W_ring*2*c*d*4 "
        "+ E*row_bytes + 12*T + 4*B*ring_pages + 4*E + 4*d + 2*rope_dim B",
        _terms(
            pool=(pool, 0),
            norm_rope=(norm_rope, 0),
            inputs=(0, in_bytes),
            ring_read=(0, ring_read),
            ring_write=(0, ring_write),
            entries=(0, out_bytes),
            metadata=(0, meta),
        ),
    )


def plan_cost(*, tensor_bytes: Dict[str, float]) -> Cost:
    """The step metadata a plan produces: ``tensor_bytes`` maps each plan tensor to its size."""
    total = float(sum(tensor_bytes.values()))
    return Cost(
        0.0,
        total,
        "cache_plan: 0 FLOP (host bookkeeping); bytes of the plan's metadata tensors",
        _terms(**{k: (0, v) for k, v in tensor_bytes.items()}),
    )


def floors(cost: Cost, bandwidth: Optional[float], peak_flops: Optional[float]) -> Dict[str, object]:
    """Memory floor (bytes / bandwidth), compute floor (flops / peak) and which one binds."""
    mem_s = cost.bytes / bandwidth if bandwidth else None
    comp_s = cost.flops / peak_flops if peak_flops else None
    known = [x for x in (mem_s, comp_s) if x is not None]
    floor_s = max(known) if known else None
    if mem_s is None and comp_s is None:
        bound = None
    elif comp_s is None or (mem_s is not None and mem_s >= comp_s):
        bound = "memory"
    else:
        bound = "compute"
    return {"memory_s": mem_s, "compute_s": comp_s, "floor_s": floor_s, "bound": bound}
