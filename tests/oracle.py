"""Literal float64 oracle for the longattn public API (tests only).

This module is the specification transcribed literally: docs/api.md sections 1-4 and
deepseek-v4-attention.md sections 5-7 (and 9 for the FP8 record). It was written separately from the
package's own PyTorch reference (``python/longattn``), without reading it, so that the two can be tested
against each other. Nothing here is fast: plain Python loops over tokens, heads and keys, with ``math``
and float64 torch tensors for the per-vector arithmetic. Use tiny shapes only.

Every function accepts torch tensors of any float dtype, converts them to float64 internally and returns
float64 results (int64 for indices, uint8 for the FP8 pool).

Choices made where the spec is silent (see also the docstrings):
- ``merge_attention_states``: a side whose lse is -inf contributes nothing (its ``out`` is never read, so
  a NaN there cannot leak).
- Sink factor ``g = exp(lse)/(exp(lse)+exp(sink)) = sigmoid(lse - sink)``; sink -inf -> g = 1,
  sink +inf -> g = 0, lse -inf -> out 0.
- Indexer: a visible entry whose score is NaN ranks like -inf (last); it is still selectable.
- FP8 scale exponent ``e = ceil(log2(max(amax/448, 1e-4)))`` is computed EXACTLY (via frexp on the
  float64 ratio), not with a float32 log2.
- e4m3 rounding keeps the sign of values that round to zero (-tiny -> -0.0 -> byte 0x80), like torch.
"""

from __future__ import annotations

import math
import struct

import torch

__all__ = [
    "sparse_attention",
    "merge_attention_states",
    "apply_attention_sink",
    "indexer_logits",
    "indexer_topk",
    "compress_pool",
    "e4m3_round",
    "e4m3_encode",
    "e4m3_decode",
    "bf16_bits",
    "bf16_round",
    "bf16_from_bits",
    "ue8m0_scale_exponent",
    "page_bytes",
    "quantize_kv_fp8",
    "dequantize_kv_fp8",
    "quantize_index_k_fp8",
    "index_k_fp8_parts",
    "indexer_logits_fp8",
    "indexer_topk_fp8",
]

NEG_INF = float("-inf")
POS_INF = float("inf")


def _f64(x):
    return x.detach().to(device="cpu", dtype=torch.float64)


def _int_list(x):
    if x is None:
        return None
    return [int(v) for v in x.detach().to("cpu").reshape(-1).tolist()]


# ----------------------------------------------------------------------------------------------------
# small scalar helpers
# ----------------------------------------------------------------------------------------------------


def _sink_factor(lse: float, sink: float | None) -> float:
    """g = exp(lse) / (exp(lse) + exp(sink)) = sigmoid(lse - sink), with the inf cases made explicit."""
    if sink is None or (math.isinf(sink) and sink < 0):
        return 1.0  # no sink / sink disabled
    if math.isinf(sink) and sink > 0:
        return 0.0  # the sink takes all the mass
    if math.isinf(lse):
        return 0.0 if lse < 0 else 1.0
    z = lse - sink
    if z >= 0:
        return 1.0 / (1.0 + math.exp(-z))
    ez = math.exp(z)
    return ez / (1.0 + ez)


def _softmax_weights(logits):
    """Max-subtracted softmax over a list of floats. Returns (weights, lse); ([], -inf) when empty."""
    if len(logits) == 0:
        return [], NEG_INF
    m = max(logits)
    if math.isinf(m) and m < 0:  # every logit is -inf: no mass at all
        return [0.0] * len(logits), NEG_INF
    e = [math.exp(l - m) for l in logits]
    z = math.fsum(e)
    return [v / z for v in e], m + math.log(z)


# ----------------------------------------------------------------------------------------------------
# 1. sparse attention
# ----------------------------------------------------------------------------------------------------


def _collect_keys(rows, idx_row, length):
    """The valid key rows of one index row: position < length and 0 <= idx < N; duplicates kept."""
    n = rows.shape[0]
    keys = []
    for pos, idx in enumerate(idx_row):
        if pos >= length:
            break
        if 0 <= idx < n:
            keys.append(rows[idx])
    return keys


def sparse_attention(
    q,
    kv_rows,
    indices,
    topk_length=None,
    extra_kv_rows=None,
    extra_indices=None,
    extra_topk_length=None,
    attn_sink=None,
    softmax_scale=None,
):
    """api.md section 1, literally.

    q [T,H,D]; kv_rows [N,D] (a paged [P,page,D] pool is flattened to its slots); indices [T,K];
    topk_length [T] or None; the extra_* stream likewise; attn_sink [H] or None.
    Returns out [T,H,D] float64 and lse [T,H] float64 (-inf where no valid key).
    """
    q = _f64(q)
    T, H, D = q.shape
    rows = _f64(kv_rows).reshape(-1, D)
    K = indices.shape[-1]
    idx = [[int(v) for v in r] for r in indices.detach().to("cpu").reshape(T, K).tolist()]
    lens = _int_list(topk_length)
    streams = [(rows, idx, lens, K)]
    if extra_indices is not None:
        if extra_kv_rows is None:
            raise ValueError("extra_indices given without extra_kv_rows")
        erows = _f64(extra_kv_rows).reshape(-1, D)
        eK = extra_indices.shape[-1]
        eidx = [[int(v) for v in r] for r in extra_indices.detach().to("cpu").reshape(T, eK).tolist()]
        streams.append((erows, eidx, _int_list(extra_topk_length), eK))
    sink = None if attn_sink is None else [float(v) for v in _f64(attn_sink).reshape(-1).tolist()]
    s = float(D) ** -0.5 if softmax_scale is None else float(softmax_scale)

    out = torch.zeros(T, H, D, dtype=torch.float64)
    lse = torch.full((T, H), NEG_INF, dtype=torch.float64)
    for t in range(T):
        keys = []
        for srows, sidx, slens, sK in streams:
            length = sK if slens is None else max(0, min(sK, slens[t]))
            keys.extend(_collect_keys(srows, sidx[t], length))
        for h in range(H):
            if not keys:
                continue  # no valid key: out 0, lse -inf
            logits = [s * float(torch.dot(q[t, h], k)) for k in keys]
            w, l = _softmax_weights(logits)
            g = _sink_factor(l, None if sink is None else sink[h])
            acc = torch.zeros(D, dtype=torch.float64)
            for wi, k in zip(w, keys):
                acc += wi * k
            out[t, h] = acc * g
            lse[t, h] = l
    return out, lse


# ----------------------------------------------------------------------------------------------------
# 2. merge / sink
# ----------------------------------------------------------------------------------------------------


def merge_attention_states(out_a, lse_a, out_b, lse_b):
    """api.md section 2: exact union of two disjoint key sets.

    out_* [..., D], lse_* [...]. lse = log(exp(lse_a) + exp(lse_b)); out is the exp(lse)-weighted mean.
    Both -inf -> out 0, lse -inf. A side with lse -inf is ignored entirely.
    """
    oa, ob = _f64(out_a), _f64(out_b)
    la, lb = _f64(lse_a), _f64(lse_b)
    D = oa.shape[-1]
    lead = la.shape
    oa, ob = oa.reshape(-1, D), ob.reshape(-1, D)
    la, lb = la.reshape(-1).tolist(), lb.reshape(-1).tolist()
    out = torch.zeros(len(la), D, dtype=torch.float64)
    lse = torch.full((len(la),), NEG_INF, dtype=torch.float64)
    for i in range(len(la)):
        parts = [(l, o) for l, o in ((la[i], oa[i]), (lb[i], ob[i])) if not (math.isinf(l) and l < 0)]
        if not parts:
            continue
        m = max(l for l, _ in parts)
        ws = [math.exp(l - m) for l, _ in parts]
        z = math.fsum(ws)
        acc = torch.zeros(D, dtype=torch.float64)
        for w, (_, o) in zip(ws, parts):
            acc += (w / z) * o
        out[i] = acc
        lse[i] = m + math.log(z)
    return out.reshape(*lead, D), lse.reshape(lead)


def apply_attention_sink(out, lse, sink):
    """api.md section 2: out * exp(lse)/(exp(lse)+exp(sink)); out [T,H,D], lse [T,H], sink [H]."""
    o = _f64(out)
    T, H, D = o.shape
    l = _f64(lse).reshape(T, H)
    sk = [float(v) for v in _f64(sink).reshape(-1).tolist()]
    res = torch.zeros(T, H, D, dtype=torch.float64)
    for t in range(T):
        for h in range(H):
            g = _sink_factor(float(l[t, h]), sk[h])
            if g != 0.0:
                res[t, h] = o[t, h] * g
    return res


# ----------------------------------------------------------------------------------------------------
# 3. lightning indexer
# ----------------------------------------------------------------------------------------------------


def _indexer_entries(index_k, block_table, seq_ids, T):
    """Return (N, rows [slots, Di], slot_of(t, j) -> slot or None)."""
    if block_table is None:
        rows = _f64(index_k)
        if rows.dim() != 2:
            raise ValueError("without block_table, index_k must be [N, Di]")
        N = rows.shape[0]
        return N, rows, (lambda t, j: j)
    k = _f64(index_k)
    if k.dim() != 3:
        raise ValueError("with block_table, index_k must be paged [P, page, Di]")
    P, page, Di = k.shape
    rows = k.reshape(P * page, Di)
    bt = [[int(v) for v in r] for r in block_table.detach().to("cpu").tolist()]
    B = len(bt)
    max_pages = len(bt[0]) if B else 0
    if seq_ids is None:
        if B != 1:
            raise ValueError("seq_ids is required with a block_table of more than one row")
        sid = [0] * T
    else:
        sid = _int_list(seq_ids)
    N = max_pages * page

    def slot_of(t, j):
        if not 0 <= sid[t] < B:  # api: a sequence id outside the block table selects nothing
            return None
        pid = bt[sid[t]][j // page]
        if not 0 <= pid < P:
            return None
        slot = pid * page + j % page
        if not 0 <= slot < P * page:
            return None
        return slot

    return N, rows, slot_of


def _indexer_scores(q, weights, index_k, visible_end, block_table, seq_ids, key_scales=None):
    """Per token: list over j in [0, N) of (selectable: bool, score: float, slot). ``key_scales`` (a list
    per slot, FP8 index keys): the logit of head h is ``key_scales[slot] * <q[t, h], index_k[slot]>``."""
    q = _f64(q)
    T, Hi, Di = q.shape
    w = _f64(weights).reshape(T, Hi)
    N, rows, slot_of = _indexer_entries(index_k, block_table, seq_ids, T)
    vis = _int_list(visible_end)
    table = []
    for t in range(T):
        ve = max(0, min(N, vis[t]))
        row = []
        for j in range(N):
            slot = slot_of(t, j) if j < ve else None
            if slot is None:
                row.append((False, NEG_INF, None))
                continue
            terms = []
            for h in range(Hi):
                d = float(torch.dot(q[t, h], rows[slot]))
                if key_scales is not None:
                    d = key_scales[slot] * d
                terms.append(float(w[t, h]) * max(d, 0.0))  # weights * relu(<q, k>)
            row.append((True, math.fsum(terms) if all(math.isfinite(x) for x in terms) else sum(terms), slot))
        table.append(row)
    return N, table


def indexer_logits(q, weights, index_k, visible_end, block_table=None, seq_ids=None):
    """api.md section 3 / deepseek-v4-attention.md section 6.

    score(t, j) = sum_h weights[t,h] * relu(<q[t,h], k_j>) for visible j (j < visible_end[t], clamped to
    [0, N], and, when paged, a page id inside [0, P)); -inf elsewhere. Returns [T, N] float64.
    """
    N, table = _indexer_scores(q, weights, index_k, visible_end, block_table, seq_ids)
    out = torch.full((len(table), N), NEG_INF, dtype=torch.float64)
    for t, row in enumerate(table):
        for j, (ok, sc, _) in enumerate(row):
            if ok:
                out[t, j] = sc
    return out


def indexer_topk(q, weights, index_k, visible_end, topk, block_table=None, seq_ids=None, return_slots=False):
    """api.md section 3: the visible entries ranked by (score desc, entry id asc), first min(topk, #visible),
    padded with -1. Returns (indices [T, topk] int64, lengths [T] int64 = number of non -1 entries).
    return_slots=True gives physical slots (rows of the flat pool) instead of logical ids.
    """
    N, table = _indexer_scores(q, weights, index_k, visible_end, block_table, seq_ids)
    T = len(table)
    idx = torch.full((T, topk), -1, dtype=torch.int64)
    lengths = torch.zeros(T, dtype=torch.int64)
    for t, row in enumerate(table):
        cands = []
        for j, (ok, sc, slot) in enumerate(row):
            if ok:
                key = NEG_INF if math.isnan(sc) else sc
                cands.append((-key, j, slot))
        cands.sort(key=lambda c: (c[0], c[1]))
        chosen = cands[:topk]
        for i, (_, j, slot) in enumerate(chosen):
            idx[t, i] = slot if return_slots else j
        lengths[t] = len(chosen)
    return idx, lengths


# ----------------------------------------------------------------------------------------------------
# 4. compressor (stateless pooling)
# ----------------------------------------------------------------------------------------------------


def compress_pool(a, b, ratio, overlap):
    """api.md section 4 / deepseek-v4-attention.md section 5 closed form, one sequence from position 0.

    a, b [S, c*d] (c = 2 if overlap else 1); b already includes the position bias.
    Entry j < S // ratio, channel k:
      no overlap: softmax over t in block j of b[t,k], applied to a[t,k];
      overlap:    softmax over the 2*ratio slots (t in block j-1, half A: channel k) and
                  (t in block j, half B: channel d+k); block -1 is absent.
    Returns [S // ratio, d] float64.
    """
    a, b = _f64(a), _f64(b)
    S, width = a.shape
    c = 2 if overlap else 1
    if width % c:
        raise ValueError("overlap needs an even channel count")
    d = width // c
    n = S // ratio
    out = torch.zeros(n, d, dtype=torch.float64)
    A = a.tolist()
    Bs = b.tolist()
    for j in range(n):
        own = range(j * ratio, (j + 1) * ratio)
        prev = range((j - 1) * ratio, j * ratio) if j >= 1 else range(0)  # block -1 does not exist
        for k in range(d):
            scores, values = [], []
            if overlap:
                for t in prev:
                    scores.append(Bs[t][k])
                    values.append(A[t][k])
                for t in own:
                    scores.append(Bs[t][d + k])
                    values.append(A[t][d + k])
            else:
                for t in own:
                    scores.append(Bs[t][k])
                    values.append(A[t][k])
            w, _ = _softmax_weights(scores)
            out[j, k] = math.fsum(wi * vi for wi, vi in zip(w, values) if wi != 0.0)
    return out


# ----------------------------------------------------------------------------------------------------
# FP8 e4m3fn, bf16 and the FlashMLA MODEL1 / vLLM fp8_ds_mla record
# ----------------------------------------------------------------------------------------------------


def compress_pool_autograd(a, b, ratio, overlap):
    """``compress_pool`` as a differentiable float64 formula (softmax over each entry's slots; block -1
    absent): the truth for gradients. Finite inputs only (``compress_pool`` above has the IEEE rules)."""
    a, b = a.double(), b.double()
    S, w = a.shape
    d = w // 2 if overlap else w
    entries = []
    for j in range(S // ratio):
        own = slice(j * ratio, (j + 1) * ratio)
        if overlap:
            prev = slice((j - 1) * ratio, j * ratio)
            s = torch.cat([b[prev, :d] if j else b.new_full((ratio, d), float("-inf")), b[own, d:]])
            v = torch.cat([a[prev, :d] if j else a.new_zeros(ratio, d), a[own, d:]])
        else:
            s, v = b[own], a[own]
        entries.append((torch.softmax(s, 0) * v).sum(0))
    return torch.stack(entries)


def indexer_kl_loss(q, kv, iq, iw, ik, ve, indices, scale):
    """Dense float64 formula: candidate counts [T, N], target = mean over heads of the softmaxes over
    the candidates, KL against the log-softmax of the scores over the candidates, mean over tokens."""
    T, N = q.shape[0], kv.shape[0]
    j = torch.arange(N)
    if indices is None:
        count = (j.unsqueeze(0) < ve.unsqueeze(1)).double()
    else:
        ids = indices.long()
        ok = (ids >= 0) & (ids < ve.unsqueeze(1)) & (ids < N)
        count = torch.zeros(T, N, dtype=torch.float64).scatter_add_(1, torch.where(ok, ids, 0), ok.double())
    has = count.sum(1) > 0  # tokens with a candidate (the others do not count)
    if not bool(has.any()):
        return (iq.sum() + iw.sum() + ik.sum()) * 0.0
    logc = torch.log(count[has])  # -inf where not a candidate; log 2 for an id given twice
    s = scale * torch.einsum("thd,nd->thn", q[has].double(), kv.double()) + logc.unsqueeze(1)
    p = torch.softmax(s, -1).mean(1)
    score = torch.einsum("th,thn->tn", iw[has], torch.relu(torch.einsum("thd,nd->thn", iq[has], ik))) + logc
    log_q = torch.log_softmax(score, -1)
    kl = torch.where(p > 0, p * (torch.log(p) - log_q.masked_fill(p == 0, 0.0)), torch.zeros_like(p)).sum(1)
    return kl.sum() / has.sum()


def _round_half_even(v: float) -> float:
    """Round a non-negative float64 to the nearest integer, ties to even (exact for v < 2**52)."""
    f = math.floor(v)
    r = v - f
    if r > 0.5:
        return f + 1.0
    if r < 0.5:
        return f
    return f if f % 2 == 0 else f + 1.0


def _round_to_grid(x: float, man_bits: int, emin: int) -> float:
    """Round |x| to the binary grid with `man_bits` explicit mantissa bits, min normal exponent `emin`
    (subnormals below it), nearest-even; unbounded above (caller handles the max)."""
    a = abs(x)
    if a == 0.0:
        return math.copysign(0.0, x)
    m, ex = math.frexp(a)  # a = m * 2**ex, m in [0.5, 1) -> a = (2m) * 2**(ex-1)
    e = max(ex - 1, emin)  # exponent of the binade (subnormals share emin)
    quantum = math.ldexp(1.0, e - man_bits)
    r = _round_half_even(a / quantum) * quantum  # a / quantum is exact (power of two)
    return math.copysign(r, x)


E4M3_MAX = 448.0


def e4m3_round(x: float) -> float:
    """Round to nearest even onto the float8 e4m3fn grid (1 sign, 4 exponent bits bias 7, 3 mantissa bits,
    subnormals 2**-9 .. 7*2**-9, no inf), saturating at +-448. NaN stays NaN."""
    x = float(x)
    if math.isnan(x):
        return x
    if math.isinf(x):
        return math.copysign(E4M3_MAX, x)
    r = _round_to_grid(x, 3, -6)
    if abs(r) > E4M3_MAX:
        r = math.copysign(E4M3_MAX, x)
    return r


def e4m3_encode(x: float) -> int:
    """The e4m3fn byte of e4m3_round(x). NaN -> 0x7F."""
    r = e4m3_round(x)
    if math.isnan(r):
        return 0x7F
    sign = 0x80 if math.copysign(1.0, r) < 0 else 0
    a = abs(r)
    if a == 0.0:
        return sign
    m, ex = math.frexp(a)
    e = ex - 1
    if e < -6:  # subnormal: a = mant * 2**-9
        mant = int(a / 2.0**-9)
        assert mant * 2.0**-9 == a and 1 <= mant <= 7
        return sign | mant
    frac = a / 2.0**e - 1.0  # in [0, 1), multiple of 1/8
    mant = int(frac * 8)
    assert mant / 8.0 == frac
    field = e + 7
    assert 1 <= field <= 15 and not (field == 15 and mant == 7)
    return sign | (field << 3) | mant


def e4m3_decode(byte: int) -> float:
    """Value of an e4m3fn byte; 0x7F / 0xFF are NaN."""
    byte = int(byte) & 0xFF
    sign = -1.0 if byte & 0x80 else 1.0
    field = (byte >> 3) & 0xF
    mant = byte & 0x7
    if field == 15 and mant == 7:
        return float("nan")
    if field == 0:
        return sign * mant * 2.0**-9
    return sign * (1.0 + mant / 8.0) * 2.0 ** (field - 7)


BF16_MAX = (2.0 - 2.0**-7) * 2.0**127


def bf16_round(x: float) -> float:
    """Round to nearest even onto the bfloat16 grid (8 exponent bits bias 127, 7 mantissa bits, subnormals,
    overflow to inf)."""
    x = float(x)
    if math.isnan(x) or math.isinf(x):
        return x
    a = abs(x)
    # values at or beyond the midpoint between BF16_MAX and 2**128 round (ties-to-even) to inf
    if a >= (BF16_MAX + 2.0**128) / 2:
        return math.copysign(POS_INF, x)
    return _round_to_grid(x, 7, -126)


def bf16_bits(x: float) -> int:
    """The 16-bit pattern of bf16_round(x) (round to nearest even): the top half of its float32 bits."""
    r = bf16_round(x)
    if math.isnan(r):
        return 0x7FC0
    # r is exactly representable in bf16, hence in float32: its float32 bits' low half is zero.
    bits32 = struct.unpack("<I", struct.pack("<f", r))[0]
    assert bits32 & 0xFFFF == 0
    return bits32 >> 16


def bf16_from_bits(bits: int) -> float:
    return struct.unpack("<f", struct.pack("<I", (int(bits) & 0xFFFF) << 16))[0]


D_NOPE, D_ROPE, TILE, N_TILES = 448, 64, 64, 7
DATA_BYTES = D_NOPE + 2 * D_ROPE  # 576
SCALE_BYTES = 8  # 7 UE8M0 + 1 pad
TOKEN_BYTES = DATA_BYTES + SCALE_BYTES  # 584


def page_bytes(page_size: int) -> int:
    """page_size * 584 rounded up to a multiple of 576."""
    return -(-page_size * TOKEN_BYTES // DATA_BYTES) * DATA_BYTES


def ue8m0_scale_exponent(amax: float) -> int:
    """e = ceil(log2(max(amax / 448, 1e-4))), computed exactly: the smallest e with 2**e >= the ratio."""
    r = max(float(amax) / 448.0, 1e-4)
    m, ex = math.frexp(r)  # r = m * 2**ex, m in [0.5, 1)
    return ex - 1 if m == 0.5 else ex


def quantize_kv_fp8(kv):
    """kv [P, page, 512] -> uint8 pool [P, page_bytes(page)] (FlashMLA MODEL1 / vLLM fp8_ds_mla).

    Token i of a page: bytes [i*576, i*576+448) e4m3 nope, [i*576+448, i*576+576) 64 bf16 little-endian
    rope values; its scale row at page*576 + i*8: 7 UE8M0 bytes (e + 127), then a 0 pad byte. The page
    tail is zero.
    """
    kv = _f64(kv)
    P, page, D = kv.shape
    if D != D_NOPE + D_ROPE:
        raise ValueError("the FP8 record needs D = 512")
    pb = page_bytes(page)
    buf = bytearray(P * pb)
    vals = kv.tolist()
    for p in range(P):
        base = p * pb
        for i in range(page):
            row = vals[p][i]
            data = base + i * DATA_BYTES
            srow = base + page * DATA_BYTES + i * SCALE_BYTES
            for tile in range(N_TILES):
                xs = row[tile * TILE : (tile + 1) * TILE]
                amax = max(abs(v) for v in xs)
                e = ue8m0_scale_exponent(amax)
                buf[srow + tile] = e + 127
                for c, v in enumerate(xs):
                    buf[data + tile * TILE + c] = e4m3_encode(v / 2.0**e)
            buf[srow + 7] = 0
            for c in range(D_ROPE):
                bits = bf16_bits(row[D_NOPE + c])
                off = data + D_NOPE + 2 * c
                buf[off] = bits & 0xFF
                buf[off + 1] = bits >> 8
    return torch.tensor(list(buf), dtype=torch.uint8).reshape(P, pb)


def dequantize_kv_fp8(pool, page_size):
    """uint8 pool [P, >= page_size*584] -> float64 [P, page_size, 512] (exact: e4m3 * 2**(byte-127), bf16)."""
    if pool.dtype != torch.uint8:
        pool = pool.view(torch.uint8)
    P = pool.shape[0]
    raw = pool.detach().to("cpu").reshape(P, -1).tolist()
    out = torch.zeros(P, page_size, D_NOPE + D_ROPE, dtype=torch.float64)
    for p in range(P):
        by = raw[p]
        if len(by) < page_size * TOKEN_BYTES:
            raise ValueError("pool page too small")
        for i in range(page_size):
            data = i * DATA_BYTES
            srow = page_size * DATA_BYTES + i * SCALE_BYTES
            row = [0.0] * (D_NOPE + D_ROPE)
            for tile in range(N_TILES):
                scale = 2.0 ** (by[srow + tile] - 127)
                for c in range(TILE):
                    row[tile * TILE + c] = e4m3_decode(by[data + tile * TILE + c]) * scale
            for c in range(D_ROPE):
                off = data + D_NOPE + 2 * c
                row[D_NOPE + c] = bf16_from_bits(by[off] | (by[off + 1] << 8))
            out[p, i] = torch.tensor(row, dtype=torch.float64)
    return out


# ----------------------------------------------------------------------------------------------------
# non-finite rules (added helpers; the functions above are unchanged)
# ----------------------------------------------------------------------------------------------------


def _pool_channel_ieee(scores, values):
    """One channel of the compressor pooling under the IEEE rule of ops/compress/README.md: 0 when
    every slot scores -inf (or there is none); otherwise sum(exp(s - m) * v) / sum(exp(s - m)) with m
    the max score, in float64 with IEEE non-finite arithmetic: a NaN score, a +inf score
    (exp(inf - inf) = NaN) or a NaN value in any slot (0 * NaN = NaN, even at weight 0) gives NaN."""
    if all(math.isinf(s) and s < 0 for s in scores):
        return 0.0
    if any(math.isnan(s) for s in scores):
        return float("nan")
    m = max(scores)
    e = [math.exp(s - m) if not (math.isinf(s) and math.isinf(m)) else float("nan") for s in scores]
    terms = [ei * vi for ei, vi in zip(e, values)]
    if all(math.isfinite(x) for x in e + terms):
        return math.fsum(terms) / math.fsum(e)
    return sum(terms) / sum(e)  # plain IEEE sums (fsum refuses inf - inf)


def compress_pool_ieee(a, b, ratio, overlap):
    """``compress_pool`` (same slots; block -1 of an overlapping entry 0 is absent, not a slot) with
    non-finite scores and values pooled by ``_pool_channel_ieee``. Returns [S // ratio, d] float64."""
    a, b = _f64(a), _f64(b)
    S, width = a.shape
    c = 2 if overlap else 1
    d = width // c
    n = S // ratio
    out = torch.zeros(n, d, dtype=torch.float64)
    A, Bs = a.tolist(), b.tolist()
    for j in range(n):
        own = range(j * ratio, (j + 1) * ratio)
        prev = range((j - 1) * ratio, j * ratio) if (overlap and j >= 1) else range(0)
        for k in range(d):
            scores = [Bs[t][k] for t in prev] + [Bs[t][(c - 1) * d + k] for t in own]
            values = [A[t][k] for t in prev] + [A[t][(c - 1) * d + k] for t in own]
            out[j, k] = _pool_channel_ieee(scores, values)
    return out


def _select_nan_high(table, topk, return_slots):
    """(idx, lengths) of the score table of ``_indexer_scores``: the top-k usable entries per token, NaN
    ranking as +inf, ties by the smaller entry id; ids or slots, -1 padded."""
    T = len(table)
    idx = torch.full((T, topk), -1, dtype=torch.int64)
    lengths = torch.zeros(T, dtype=torch.int64)
    for t, row in enumerate(table):
        cands = [(-(POS_INF if math.isnan(sc) else sc), j, slot) for j, (ok, sc, slot) in enumerate(row) if ok]
        cands.sort(key=lambda c: (c[0], c[1]))
        chosen = cands[:topk]
        for i, (_, j, slot) in enumerate(chosen):
            idx[t, i] = slot if return_slots else j
        lengths[t] = len(chosen)
    return idx, lengths


def indexer_topk_nan_high(q, weights, index_k, visible_end, topk, block_table=None, seq_ids=None, return_slots=False):
    """``indexer_topk`` with the NaN rule of ops/indexer/README.md: a NaN score (either sign bit) ranks
    as +inf, tied with +inf and other NaN scores, the smaller entry id first; it stays selectable."""
    N, table = _indexer_scores(q, weights, index_k, visible_end, block_table, seq_ids)
    return _select_nan_high(table, topk, return_slots)


# ----------------------------------------------------------------------------------------------------
# FP8 indexer keys (vLLM indexer_k_quant_and_cache record; issue 14). Written from the record's formula:
# page = page_size * Di e4m3 bytes (entry o at o * Di), then page_size little-endian fp32 scales (entry
# o's at page_size * Di + 4 * o); scale = max(amax of the finite values, 1e-4) / 448 in fp32, by default
# rounded up to a power of two; byte = e4m3(fp32(x / scale)) saturating, NaN -> 0x7F | sign.
# ----------------------------------------------------------------------------------------------------


def _f32(x: float) -> float:
    """x rounded to float32 (round to nearest even; a float64 quotient of two float32 values rounded
    this way is the correctly rounded float32 quotient)."""
    return struct.unpack("<f", struct.pack("<f", x))[0]


def quantize_index_k_fp8(k, ue8m0=True):
    """k [P, page, Di] (or [N, Di]: one page) -> uint8 [P, page * (Di + 4)]."""
    k = k.detach().to("cpu").float()  # the record quantises fp32 values
    if k.dim() == 2:
        k = k.unsqueeze(0)
    P, page, Di = k.shape
    vals = k.tolist()
    buf = bytearray(P * page * (Di + 4))
    for p in range(P):
        base = p * page * (Di + 4)
        for o in range(page):
            row = vals[p][o]
            amax = max([abs(v) for v in row if math.isfinite(v)], default=0.0)
            scale = _f32(max(amax, _f32(1e-4)) / 448.0)
            if ue8m0:
                m, ex = math.frexp(scale)
                scale = 2.0 ** (ex - 1 if m == 0.5 else ex)
            for d, v in enumerate(row):
                if math.isnan(v):
                    byte = 0x7F | (0x80 if math.copysign(1.0, v) < 0 else 0)
                else:
                    byte = e4m3_encode(_f32(v / scale) if math.isfinite(v) else v)
                buf[base + o * Di + d] = byte
            buf[base + page * Di + 4 * o : base + page * Di + 4 * o + 4] = struct.pack("<f", scale)
    return torch.tensor(list(buf), dtype=torch.uint8).reshape(P, page * (Di + 4))


def index_k_fp8_parts(data, page_size, dim):
    """uint8 [P, page_size * (dim + 4)] -> (e4m3 values float64 [P, page_size, dim], scales: a list per
    slot s = page * page_size + offset, float)."""
    raw = data.detach().to("cpu").reshape(data.shape[0], -1).tolist()
    P = len(raw)
    values = torch.zeros(P, page_size, dim, dtype=torch.float64)
    scales = []
    for p in range(P):
        by = raw[p]
        for o in range(page_size):
            values[p, o] = torch.tensor([e4m3_decode(b) for b in by[o * dim : (o + 1) * dim]], dtype=torch.float64)
            at = page_size * dim + 4 * o
            scales.append(struct.unpack("<f", bytes(by[at : at + 4]))[0])
    return values, scales


def _fp8_args(data, page_size, dim, block_table):
    values, scales = index_k_fp8_parts(data, page_size, dim)
    return (values if block_table is not None else values.reshape(-1, dim)), scales


def indexer_logits_fp8(q, weights, data, page_size, visible_end, block_table=None, seq_ids=None):
    """``indexer_logits`` over an FP8 index-key pool (flat: entry j = slot j): the logit of head h is
    ``scale_j * <q[t, h], e4m3 values of j>``. Returns [T, N] float64."""
    rows, scales = _fp8_args(data, page_size, q.shape[-1], block_table)
    N, table = _indexer_scores(q, weights, rows, visible_end, block_table, seq_ids, scales)
    out = torch.full((len(table), N), NEG_INF, dtype=torch.float64)
    for t, row in enumerate(table):
        for j, (ok, sc, _) in enumerate(row):
            if ok:
                out[t, j] = sc
    return out


def indexer_topk_fp8(q, weights, data, page_size, visible_end, topk, block_table=None, seq_ids=None,
                     return_slots=False):  # fmt: skip
    """``indexer_topk_nan_high`` over an FP8 index-key pool (see ``indexer_logits_fp8``)."""
    rows, scales = _fp8_args(data, page_size, q.shape[-1], block_table)
    N, table = _indexer_scores(q, weights, rows, visible_end, block_table, seq_ids, scales)
    return _select_nan_high(table, topk, return_slots)
