"""Reference sparse attention (pure PyTorch, fp32 accumulation). See README.md for the math.

Work is split into chunks of query tokens and, inside a token chunk, chunks of keys. One key of one
token costs ``D * (4 + pool element size)`` bytes (the gathered row, then its fp32 copy) plus
``3 * H * 4`` bytes (logits and probabilities); chunks are sized so that this stays within
``longattn.memory.chunk_budget_bytes()``. Key chunks of both streams are packed side by side into one
softmax while they fit a chunk (a decode token's window + compressed keys: one softmax); the partial
results of separate chunks are combined with the exact ``merge_states_fp32`` rule, so chunking
changes only rounding. Prefill chunks whose tokens select overlapping rows (windows, HCA prefixes)
gather each distinct row once and score all of their tokens in one GEMM (``attend_shared``; README.md,
"Rows a chunk's tokens share").
"""

from __future__ import annotations

from typing import List, Optional, Tuple

import torch

from ...memory import chunk_budget_bytes, rows_per_chunk
from ..combine.reference import merge_states_fp32, sink_factor

NEG_INF = float("-inf")
# Token chunks are also capped at this many bytes of temporaries: beyond it a larger chunk only adds
# cache and TLB misses (2-core x86, 128K-context prefill chunk of 256 tokens x 640 keys: 235 ms with
# 256 MiB chunks, 130-140 ms with 32-64 MiB).
TILE_BYTES = 32 << 20


# Calls (and chunks) of at least this many tokens look for key rows their tokens share
# (``attend_shared``); a decode batch's tokens (one per sequence) share none and would only pay for it.
SHARED_MIN_TOKENS = 8
# ... and use the shared rows when a part's distinct rows are at most this many times its columns.
SHARED_MAX_GROWTH = 1.5

# Rows are gathered in pieces of at most this many bytes in the pool's dtype (and at least 32 keys per
# token): the pool-dtype copy stays a fraction of a large chunk's fp32 keys, and a decode step's rows
# (4 tokens x 640 keys x 1 KiB) take one index_select + one conversion per stream instead of four.
GATHER_PIECE_BYTES = 4 << 20


def gather_rows_into(kv, slots: torch.Tensor, out: torch.Tensor, valid: Optional[torch.Tensor] = None) -> None:
    """``out[t, k] = kv[slots[t, k]]`` as fp32 (out ``[Tc, K, D]``, any strides). With ``valid``
    ``[Tc, K]`` bool, only the valid entries are read and the others are set to 0 (a skipped entry never
    reads the pool: a NaN in some row cannot reach another token's result); without it every slot
    must be valid. ``kv`` is a float row view ``[num_slots, D]`` or a pool object with
    ``gather_rows(slots) -> fp32`` (e.g. an FP8 pool). Gathered in pieces of ``GATHER_PIECE_BYTES``, so
    the copy in the pool's dtype is a fraction of a large ``out``."""
    Tc, K, D = out.shape
    step = max(32, GATHER_PIECE_BYTES // max(1, Tc * _row_bytes(kv, D)))
    for k0 in range(0, K, step):
        s, o = slots[:, k0 : k0 + step], out[:, k0 : k0 + step]
        if valid is None:
            o.copy_(_gather(kv, s.reshape(-1)).view(Tc, -1, D))
            continue
        v = valid[:, k0 : k0 + step]
        o[~v] = 0.0
        rows = v.nonzero(as_tuple=True)
        if rows[0].numel():
            o[rows] = _gather(kv, s[rows]).to(torch.float32)


def _gather(kv, slots: torch.Tensor) -> torch.Tensor:
    return kv.index_select(0, slots) if isinstance(kv, torch.Tensor) else kv.gather_rows(slots)


def _num_slots(kv) -> int:
    return kv.shape[0] if isinstance(kv, torch.Tensor) else kv.num_slots


def _row_bytes(kv, head_dim: int) -> int:
    return head_dim * (kv.element_size() if isinstance(kv, torch.Tensor) else 4)


def attend_chunk(
    q: torch.Tensor,
    parts: List[Tuple[object, torch.Tensor, Optional[torch.Tensor]]],
    scale: float,
    workspace: Optional[torch.Tensor] = None,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Attention of q [Tc, H, D] fp32 over the valid keys of one or more (pool, idx [Tc, Kp], valid
    [Tc, Kp] bool or None: every entry valid) parts, as one softmax (the parts' keys side by side).
    ``workspace``: fp32 storage for the gathered keys and the logits, reused by the caller's chunks
    (None: allocated here).

    Returns out [Tc, H, D] fp32 (normalised over these keys) and lse [Tc, H] fp32 (-inf where a row has
    no valid key, with out 0 there).
    """
    Tc, H, D = q.shape
    Kc = sum(idx.shape[1] for _, idx, _ in parts)
    valid = None  # [Tc, Kc] bool, None while every part's entries are all valid (no mask to apply)
    if any(v is not None for _, _, v in parts):
        valid = torch.cat([torch.ones_like(idx, dtype=torch.bool) if v is None else v for _, idx, v in parts], dim=1)
    if Kc == 0 or (valid is not None and not bool(valid.any())):
        return q.new_zeros(Tc, H, D), q.new_full((Tc, H), NEG_INF)
    need = Tc * Kc * (D + H)
    if workspace is None or workspace.numel() < need:
        workspace = torch.empty(need, dtype=torch.float32, device=q.device)
    keys = workspace[: Tc * Kc * D].view(Tc, Kc, D)
    logits = workspace[Tc * Kc * D : need].view(Tc, H, Kc)
    c0 = 0
    for pool, idx, v in parts:  # only valid entries are read; the others are 0 keys, masked below
        k = idx.shape[1]
        if k and v is not None and not bool(v.any()):  # nothing to read (the pool may even be empty)
            keys[:, c0 : c0 + k].zero_()
        elif k:
            gather_rows_into(pool, idx, keys[:, c0 : c0 + k], None if v is None or bool(v.all()) else v)
        c0 += k
    # [Tc, H, Kc]; the scale after the product (baddbmm's alpha scales before: no fp32 overflow to +inf)
    torch.bmm(q, keys.transpose(1, 2), out=logits).mul_(scale)
    if valid is not None:
        logits.masked_fill_(~valid.unsqueeze(1), NEG_INF)
    probs, lse = _softmax_(logits)  # [Tc, H, Kc], [Tc, H]
    return torch.bmm(probs, keys), lse


def attend_shared(
    q: torch.Tensor, parts: List[Tuple[object, torch.Tensor, torch.Tensor]], scale: float
) -> Optional[Tuple[torch.Tensor, torch.Tensor]]:
    """``attend_chunk``'s result (q [Tc, H, D] of any float dtype) with the rows the chunk's tokens
    share gathered once: each part's U distinct valid rows, the logits of every token against all of
    them in one GEMM ([Tc * H, D] x [D, U1 + U2 ...]), and each token's softmax over the columns it
    selects, a column counted once per occurrence in its row (weight ``c * exp(l)`` = logit
    ``l + log c``), the others -inf. Exactly the per-token softmax up to rounding.

    None where this does not pay (some part has U > ``SHARED_MAX_GROWTH`` x its columns: the GEMM
    would do that much more work than the per-token one) or is unsafe (a gathered row holds inf / NaN:
    it would reach, as 0 * inf, the tokens that do not select it).
    """
    Tc, H, D = q.shape
    sel = [torch.where(valid, idx.long(), -1) for _, idx, valid in parts]  # -1: no key
    # the first and last tokens' rows alone (a lower bound on U) before any part's full search
    if any(_num_valid(torch.unique(s[[0, -1]])) > SHARED_MAX_GROWTH * s.shape[1] for s in sel):
        return None
    found = []
    for s in sel:
        f = _shared_rows(s)
        if f is None:
            return None
        found.append(f)
    U = sum(rows.numel() for rows, _ in found)
    if U == 0:
        return None
    q = q.to(torch.float32)  # (only now that the rows are known to be shared)
    keys = torch.empty(U, D, dtype=torch.float32, device=q.device)
    u0 = 0
    for (pool, _, _), (rows, _) in zip(parts, found):
        keys[u0 : u0 + rows.numel()] = _gather(pool, rows)  # (fp32)
        u0 += rows.numel()
    counts = torch.cat([c for _, c in found], dim=1)  # [Tc, U]
    if not bool(torch.isfinite(keys).all()):
        return None
    logits = torch.mm(q.reshape(Tc * H, D), keys.t()).view(Tc, H, U).mul_(scale)
    logits.masked_fill_((counts == 0).unsqueeze(1), NEG_INF)
    if bool((counts > 1).any()):  # duplicates in a row: log 1 = 0 elsewhere (and -inf stays -inf)
        logits.add_(counts.log().unsqueeze(1))
    probs, lse = _softmax_(logits)
    return torch.mm(probs.view(Tc * H, U), keys).view(Tc, H, D), lse


def _shared_rows(sel: torch.Tensor) -> Optional[Tuple[torch.Tensor, torch.Tensor]]:
    """One part's distinct valid slots ``[U]`` (selection ``sel [Tc, K]``, -1 = no key) and how often
    each token selects each one (``[Tc, U]`` fp32), or None when U > ``SHARED_MAX_GROWTH`` x K."""
    rows, col = torch.unique(sel, return_inverse=True)  # sorted: -1 (the invalid entries) first
    n = _num_valid(rows)
    if n > SHARED_MAX_GROWTH * sel.shape[1]:
        return None
    skip = rows.numel() - n
    counts = torch.zeros(sel.shape[0], rows.numel(), dtype=torch.float32, device=sel.device)
    counts.scatter_add_(1, col, torch.ones_like(col, dtype=torch.float32))
    return rows[skip:], counts[:, skip:]


def _num_valid(sorted_rows: torch.Tensor) -> int:
    """Distinct rows from ``torch.unique`` of slots with -1 for "no key" (sorted: -1 first)."""
    n = sorted_rows.numel()
    return n - int(n > 0 and bool(sorted_rows[0] < 0))


def _softmax_(logits: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Probabilities (in place of ``logits`` [..., K]) and lse [...]; a row of only -inf logits gets
    probabilities 0 and lse -inf."""
    lse = torch.logsumexp(logits, dim=-1)
    lse_safe = lse.nan_to_num(nan=float("nan"), posinf=float("inf"), neginf=0.0)  # only -inf -> 0
    return logits.sub_(lse_safe.unsqueeze(-1)).exp_(), lse  # exp(-inf) = 0 for masked keys


def valid_mask(kv, idx: torch.Tensor, k0: int, lengths: Optional[torch.Tensor]) -> torch.Tensor:
    """Which entries of the index block idx (columns k0.. of the rows) count as keys."""
    valid = (idx >= 0) & (idx < _num_slots(kv))
    if lengths is not None:
        cols = torch.arange(k0, k0 + idx.shape[1], device=idx.device)
        valid &= cols.unsqueeze(0) < lengths.long().unsqueeze(1)
    return valid


def valid_mask_or_none(kv, idx: torch.Tensor, k0: int, lengths: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    """``valid_mask``, or None when every entry is a key: one ``aminmax`` of the slots and one ``min`` of
    the lengths, which cost less than building the mask, gathering through it and masking the logits
    (a decode step's selections are usually all valid)."""
    if idx.numel():
        lo, hi = torch.aminmax(idx)
        if int(lo) >= 0 and int(hi) < _num_slots(kv) and (lengths is None or int(lengths.min()) >= k0 + idx.shape[1]):
            return None
    return valid_mask(kv, idx, k0, lengths)


def sparse_attention(
    q: torch.Tensor,
    kv,
    indices: torch.Tensor,
    topk_length: Optional[torch.Tensor],
    extra_kv,
    extra_indices: Optional[torch.Tensor],
    extra_topk_length: Optional[torch.Tensor],
    attn_sink: Optional[torch.Tensor],
    softmax_scale: float,
) -> Tuple[torch.Tensor, torch.Tensor]:
    T, H, D = q.shape
    streams: List[Tuple[object, torch.Tensor, Optional[torch.Tensor]]] = [(kv, indices, topk_length)]
    if extra_indices is not None:
        streams.append((extra_kv, extra_indices, extra_topk_length))

    out = torch.empty(T, H, D, dtype=q.dtype, device=q.device)
    lse = torch.empty(T, H, dtype=torch.float32, device=q.device)
    if T == 0:
        return out, lse

    # Chunk sizes: keys per token chunk step (both streams together when they fit), then tokens so
    # that tokens x keys fit the budget.
    budget = min(chunk_budget_bytes(), TILE_BYTES)
    total_k = max(1, sum(s[1].shape[1] for s in streams))
    row_bytes = max(_row_bytes(s[0], D) for s in streams)  # a gathered row in the pool's dtype
    per_key = row_bytes + D * 4 + 3 * H * 4
    keys_per_step = rows_per_chunk(per_key, total_k)
    per_token = per_key * keys_per_step + 3 * H * D * 4
    tokens_per_step = rows_per_chunk(per_token, T, budget)
    # one buffer for every chunk's gathered keys and logits: a fresh multi-MB buffer per chunk is
    # new memory to the OS each time (page faults; on a VM sometimes host faults: 10x slower copies)
    workspace = torch.empty(
        min(T, tokens_per_step) * min(total_k, keys_per_step) * (D + H), dtype=torch.float32, device=q.device
    )
    # Shared rows (attend_shared) are tried on larger token chunks: their temporaries are the U <=
    # SHARED_MAX_GROWTH x total_k rows once (fp32 and as gathered; within the memory budget) plus, per
    # token, q, out, the logits [H, U], the counts [U] and the index search (capped at TILE_BYTES like
    # the per-token chunks); where they fail, the chunk runs the per-token path in steps of tokens_per_step.
    max_u = int(min(SHARED_MAX_GROWTH, T) * total_k)  # (a chunk never has more than T x total_k rows)
    room = chunk_budget_bytes() - max_u * (D * 4 + row_bytes)
    shared_per_token = 4 * (3 * H * D + (H + 1) * max_u) + 24 * total_k
    shared_step = rows_per_chunk(shared_per_token, T, max(1, min(room, TILE_BYTES)))
    # ... and at most half the narrowest stream's columns: Tc tokens of a sliding window read Tc + K - 1
    # distinct rows, within SHARED_MAX_GROWTH x K only while Tc <= K / 2 + 1
    widths = [s[1].shape[1] for s in streams if s[1].shape[1] > 0]
    shared_step = min(shared_step, max(SHARED_MIN_TOKENS, min(widths, default=0) // 2))
    if shared_step > tokens_per_step:  # where sharing fails, the chunk splits into whole per-token steps
        shared_step -= shared_step % tokens_per_step
    shared = T >= SHARED_MIN_TOKENS and room > 0 and shared_step >= SHARED_MIN_TOKENS
    step = shared_step if shared else tokens_per_step

    def finish(t0: int, t1: int, o_c: torch.Tensor, lse_c: torch.Tensor) -> None:
        if attn_sink is None:
            out[t0:t1].copy_(o_c)  # (rounded once to q's dtype)
        else:  # the sink factor in fp32, the product rounded once into out
            torch.mul(o_c, sink_factor(lse_c, attn_sink).unsqueeze(-1), out=out[t0:t1])
        lse[t0:t1] = lse_c

    for s0 in range(0, T, step):
        s1 = min(T, s0 + step)
        if shared and s1 - s0 >= SHARED_MIN_TOKENS:
            parts = [(pool, idx[s0:s1], valid_mask(pool, idx[s0:s1], 0, None if n is None else n[s0:s1]))
                     for pool, idx, n in streams]  # fmt: skip
            state = attend_shared(q[s0:s1], parts, softmax_scale)
            if state is not None:
                finish(s0, s1, *state)
                continue
        for t0 in range(s0, s1, tokens_per_step):
            t1 = min(s1, t0 + tokens_per_step)
            finish(t0, t1, *_attend_per_token(q[t0:t1].to(torch.float32), streams, t0, t1, keys_per_step,
                                              softmax_scale, workspace))  # fmt: skip
    return out, lse


def _attend_per_token(q_c, streams, t0: int, t1: int, keys_per_step: int, scale: float, workspace):
    """Tokens [t0, t1) (q_c [Tc, H, D] fp32) by ``attend_chunk``: key blocks of <= keys_per_step keys,
    packed greedily into one softmax per group; partial results of groups merge exactly."""
    groups: List[List[Tuple[object, torch.Tensor, Optional[torch.Tensor]]]] = [[]]
    room = keys_per_step
    for pool, idx, lengths in streams:
        lengths_c = None if lengths is None else lengths[t0:t1]
        for k0 in range(0, max(1, idx.shape[1]), keys_per_step):
            idx_c = idx[t0:t1, k0 : k0 + keys_per_step]
            if idx_c.shape[1] > room:
                groups.append([])
                room = keys_per_step
            groups[-1].append((pool, idx_c, valid_mask_or_none(pool, idx_c, k0, lengths_c)))
            room -= idx_c.shape[1]
    acc: Optional[Tuple[torch.Tensor, torch.Tensor]] = None
    for parts in groups:
        part = attend_chunk(q_c, parts, scale, workspace)
        acc = part if acc is None else merge_states_fp32(acc[0], acc[1], part[0], part[1])
    assert acc is not None  # (groups is never empty)
    return acc


def run(inp):
    """The op's prepared inputs (``SparseAttentionInputs``) -> (out, lse)."""
    return sparse_attention(inp.q, inp.kv, inp.indices, inp.topk_length, inp.extra_kv, inp.extra_indices,
                            inp.extra_topk_length, inp.attn_sink, inp.softmax_scale)  # fmt: skip
