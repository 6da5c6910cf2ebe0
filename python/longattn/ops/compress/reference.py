"""Reference stateless KV compressor pooling (pure PyTorch, fp32). See README.md for the math.

Entries are produced in chunks; one entry costs ``2 * ratio * d * 4 * 3`` bytes of temporaries
(scores, values and weights over its 2*ratio slots), kept within ``longattn.memory`` 's budget.
"""

from __future__ import annotations

import torch

from ...memory import rows_per_chunk

NEG_INF = float("-inf")


def pool_slots(scores: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """Per-channel softmax pooling over the slot axis: scores/values [E, slots, d] -> [E, d] fp32.

    IEEE softmax (README.md, "Non-finite scores and values"): a channel whose slots all score -inf
    (absent slots come as score -inf, value 0) pools to 0; otherwise sum(exp(s - m) * v) / sum(exp(s - m))
    with m the max score, so a NaN score, a +inf score (exp(inf - inf)) or a NaN value in any slot of
    the channel makes it NaN.
    """
    m = scores.amax(dim=1, keepdim=True)  # NaN if any score is NaN
    empty = torch.isneginf(m)
    w = torch.exp(scores - torch.where(empty, torch.zeros_like(m), m))
    num = (w * values).sum(dim=1)
    return torch.where(empty.squeeze(1), torch.zeros_like(num), num / w.sum(dim=1))


def compress_pool(a: torch.Tensor, b: torch.Tensor, ratio: int, overlap: bool) -> torch.Tensor:
    """[S // ratio, d] entries in fp32 (float64 when a and b are: the backward's gradcheck)."""
    S, width = a.shape
    d = width // 2 if overlap else width
    n = S // ratio
    cdt = torch.float64 if a.dtype == b.dtype == torch.float64 else torch.float32
    out = torch.empty(n, d, dtype=cdt, device=a.device)
    per_entry = 2 * ratio * d * 4 * 3
    step = rows_per_chunk(per_entry, n)
    for e0 in range(0, n, step):
        e1 = min(n, e0 + step)
        own = slice(e0 * ratio, e1 * ratio)
        if not overlap:
            scores = b[own].to(cdt).view(e1 - e0, ratio, d)
            values = a[own].to(cdt).view(e1 - e0, ratio, d)
        else:
            # Slots 0..ratio-1: half A of the previous block; slots ratio..2*ratio-1: half B of the own.
            own_b = b[own, d:].to(cdt).view(e1 - e0, ratio, d)
            own_a = a[own, d:].to(cdt).view(e1 - e0, ratio, d)
            p0 = max(0, e0 - 1)  # first previous block that exists
            prev_b = b[p0 * ratio : (e1 - 1) * ratio, :d].to(cdt).view(-1, ratio, d)
            prev_a = a[p0 * ratio : (e1 - 1) * ratio, :d].to(cdt).view(-1, ratio, d)
            if e0 == 0:  # entry 0 has no previous block: score -inf, value 0
                prev_b = torch.cat([own_b.new_full((1, ratio, d), NEG_INF), prev_b])
                prev_a = torch.cat([own_a.new_zeros(1, ratio, d), prev_a])
            scores = torch.cat([prev_b, own_b], dim=1)
            values = torch.cat([prev_a, own_a], dim=1)
        out[e0:e1] = pool_slots(scores, values)
    return out


# --- stateful, paged compressor ---------------------------------------------------------------------


def _pool_rows(pool) -> int:
    return pool.num_slots if not isinstance(pool, torch.Tensor) else pool.shape[0] * pool.shape[1]


def _paged_slots(block_table: torch.Tensor, rows: torch.Tensor, logical: torch.Tensor, page_size: int, num_pages: int):
    """Slots of logical positions ``logical`` [...] of batch rows ``rows`` [...] and whether they exist."""
    max_pages = block_table.shape[1]
    lp = logical // page_size
    in_table = (lp >= 0) & (lp < max_pages) & (rows >= 0) & (rows < block_table.shape[0])
    pages = block_table[rows.clamp(0, max(0, block_table.shape[0] - 1)), lp.clamp(0, max(0, max_pages - 1))].long()
    ok = in_table & (pages >= 0) & (pages < num_pages)
    return torch.where(ok, pages * page_size + logical % page_size, torch.zeros_like(pages)), ok


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight.to(torch.float32)


def compress_kv(
    a,
    b,
    positions,
    token_rows,
    ratio,
    overlap,
    state,
    state_block_table,
    out,
    out_block_table,
    norm_weight,
    eps,
    rope_inv_freq,
):
    from ...rope import apply_rope  # local: keeps ops importable without the layer helpers

    T, width = a.shape
    c = 2 if overlap else 1
    d = width // c
    ring = c * ratio  # state ring positions per sequence
    s_pages, s_page, _ = state.shape
    state_rows = state.view(-1, state.shape[-1])  # [slots, 2 * c * d]: a | b
    positions = positions.long()
    token_rows = token_rows.long()
    ab = torch.cat([a, b], dim=1).to(torch.float32)  # [T, 2 * width]: the batch's rows, as the ring holds them

    # Chunks: the tokens of one sequence are consecutive in the batch. A decode batch (one token per
    # sequence) needs no bookkeeping: every token starts and ends its own chunk.
    one_token_chunks = T <= 1 or bool((token_rows[1:] != token_rows[:-1]).all())
    if not one_token_chunks:
        tok = torch.arange(T, device=a.device)
        new_seq = torch.ones(T, dtype=torch.bool, device=a.device)
        new_seq[1:] = token_rows[1:] != token_rows[:-1]
        chunk_start_tok = torch.cummax(torch.where(new_seq, tok, torch.zeros_like(tok)), 0).values
        chunk_start_pos = positions[chunk_start_tok]
        last_tok = torch.ones(T, dtype=torch.bool, device=a.device)  # last token of its chunk
        last_tok[:-1] = new_seq[1:]
        chunk_end_tok = torch.flip(
            torch.cummin(torch.flip(torch.where(last_tok, tok, torch.full_like(tok, T)), [0]), 0).values, [0]
        )
    else:
        chunk_start_pos = positions

    # 1. Entries emitted by this batch: tokens at the last position of a block.
    emit = ((positions + 1) % ratio == 0).nonzero().squeeze(1)
    per_entry = ring * width * 4 * 4 + d * 4 * 4
    step = rows_per_chunk(per_entry, max(1, emit.numel()))
    back = torch.arange(ring - 1, -1, -1, device=a.device)  # window slot i holds position p - back[i]
    for e0 in range(0, emit.numel(), step):
        e_tok = emit[e0 : e0 + step]
        p = positions[e_tok]
        q = p.unsqueeze(1) - back  # [E, ring] source positions p - ring + 1 .. p
        from_batch = q >= chunk_start_pos[e_tok].unsqueeze(1)
        ring_slots, ring_ok = _paged_slots(
            state_block_table, token_rows[e_tok].unsqueeze(1).expand_as(q), q % ring, s_page, s_pages
        )
        valid = (q >= 0) & (from_batch | ring_ok)
        rows = state_rows[ring_slots]  # [E, ring, 2w]: the ring's rows, then this batch's over them
        in_batch = from_batch.nonzero(as_tuple=True)
        rows[in_batch] = ab[e_tok[in_batch[0]] - back[in_batch[1]]]
        a_rows, b_rows = rows[..., :width], rows[..., width:]
        if not bool(valid.all()):  # absent slots (before position 0, unmapped ring pages) may hold NaN
            b_rows.masked_fill_(~valid.unsqueeze(-1), NEG_INF)
            a_rows.masked_fill_(~valid.unsqueeze(-1), 0.0)
        if overlap:  # previous block: half A; own block: half B
            scores = torch.cat([b_rows[:, :ratio, :d], b_rows[:, ratio:, d:]], dim=1)
            values = torch.cat([a_rows[:, :ratio, :d], a_rows[:, ratio:, d:]], dim=1)
        else:
            scores, values = b_rows, a_rows
        entry = pool_slots(scores, values)  # [E, d]
        j = p // ratio
        entry = apply_rope(rms_norm(entry, norm_weight, eps), j * ratio, rope_inv_freq)
        page_size = out.page_size if not isinstance(out, torch.Tensor) else out.shape[1]
        num_pages = out.num_pages if not isinstance(out, torch.Tensor) else out.shape[0]
        slots, ok = _paged_slots(out_block_table, token_rows[e_tok], j, page_size, num_pages)
        if isinstance(out, torch.Tensor):
            out.view(-1, out.shape[-1]).index_copy_(0, slots[ok], entry[ok].to(out.dtype))
        else:
            out.write_rows(slots[ok], entry[ok])

    # 2. State: keep the last `ring` tokens of every sequence (each ring slot written at most once).
    slots, keep = _paged_slots(state_block_table, token_rows, positions % ring, s_page, s_pages)
    if not one_token_chunks:
        keep &= positions > positions[chunk_end_tok] - ring
    state_rows.index_copy_(0, slots[keep], ab[keep])


def run_pool(inp):
    """``PoolInputs`` -> entries [S // ratio, d] fp32."""
    return compress_pool(inp.a, inp.b, inp.ratio, inp.overlap)


def run_compress_kv(inp) -> None:
    """``CompressKVInputs``: writes the entries and the state."""
    compress_kv(inp.a, inp.b, inp.positions, inp.token_rows, inp.ratio, inp.overlap, inp.state, inp.state_block_table,
                inp.out, inp.out_block_table, inp.norm_weight, inp.eps, inp.rope_inv_freq)  # fmt: skip
