"""The backward of ``sparse_attention`` (pure PyTorch; it serves every backend's forward).

For token t and head h, over the valid occurrences j of both streams (an index that repeats is a key
that counts twice, as in the forward), with logits ``s_j = scale * <q, k_j>``, ``lse = logsumexp(s)``
(returned, sink excluded), ``L = logaddexp(lse, sink)`` and ``P_j = exp(s_j - L)``, the output is
``out = sum_j P_j k_j`` (K = V = the row). Given ``dout`` and ``dlse``:

    dP_j   = <dout, k_j>,        delta = <dout, out> = sum_j P_j dP_j
    dS_j   = P_j (dP_j - delta) + dlse * exp(s_j - lse)
    dq     = scale * sum_j dS_j k_j
    dk_j   = scale * sum_h dS_j q  +  sum_h P_j dout      (the row is both key and value)
    dsink  = -sum_t exp(sink - L) * delta

Nothing of shape ``[T, K]`` is kept from the forward: the probabilities are recomputed from the saved
``lse`` (FlashAttention's recomputation), token chunk by token chunk within
``longattn.memory.chunk_budget_bytes()``. The row gradients are summed into ``[num_slots, D]`` with
``index_add_`` (deterministic on CPU; on CUDA under ``torch.use_deterministic_algorithms(True)``).
Arithmetic in fp32 (float64 when q is float64, for checking); gradients in the inputs' dtypes.
A row with no valid key, or a sink of +inf (out 0), gets zero gradients except through ``lse``.
"""

from __future__ import annotations

from typing import List, Optional, Tuple

import torch

from ...memory import chunk_budget_bytes, rows_per_chunk
from .reference import valid_mask


def sparse_attention_backward(
    q: torch.Tensor,
    streams: List[Tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]],
    attn_sink: Optional[torch.Tensor],
    scale: float,
    lse: torch.Tensor,
    dout: Optional[torch.Tensor],
    dlse: Optional[torch.Tensor],
) -> Tuple[torch.Tensor, List[torch.Tensor], Optional[torch.Tensor]]:
    """Gradients ``(dq [T, H, D], [d rows [num_slots, D] per stream], dsink [H])``.

    streams: ``(rows [num_slots, D] float, indices [T, K], topk_length [T] or None)``; lse: the
    forward's ``[T, H]``; dout ``[T, H, D]`` / dlse ``[T, H]`` (None: zero).
    """
    T, H, D = q.shape
    cdt = torch.float64 if q.dtype == torch.float64 else torch.float32
    dev = q.device
    dq = torch.zeros(T, H, D, dtype=cdt, device=dev)
    drows = [torch.zeros(rows.shape, dtype=cdt, device=dev) for rows, _, _ in streams]
    dsink = torch.zeros(H, dtype=cdt, device=dev) if attn_sink is not None else None
    if T == 0:
        return dq, drows, dsink
    K = sum(idx.shape[1] for _, idx, _ in streams)
    # per token: the gathered keys and their probabilities / gradients ([K, D] fp32 and a few [H, K])
    per_token = K * D * 4 * 3 + K * H * 4 * 6 + H * D * 4 * 4
    step = rows_per_chunk(per_token, T, chunk_budget_bytes())
    sink = None if attn_sink is None else attn_sink.to(cdt)
    for t0 in range(0, T, step):
        t1 = min(T, t0 + step)
        _chunk(q[t0:t1].to(cdt), streams, t0, t1, sink, scale, lse[t0:t1].to(cdt),
               None if dout is None else dout[t0:t1].to(cdt), None if dlse is None else dlse[t0:t1].to(cdt),
               dq[t0:t1], drows, dsink)  # fmt: skip
    return dq, drows, dsink


def _chunk(q, streams, t0, t1, sink, scale, lse, dout, dlse, dq, drows, dsink) -> None:
    """One token chunk. No data-dependent shapes (the backward is traceable: torch.compile, opcheck):
    invalid entries gather row 0 and are replaced by 0 with ``where`` (a NaN there never reaches a
    result), and add 0 to row 0."""
    Tc, H, D = q.shape
    keys, valids, slots = [], [], []
    for rows, idx, lengths in streams:
        idx_c = idx[t0:t1].long()
        valid = valid_mask(rows, idx_c, 0, None if lengths is None else lengths[t0:t1])
        safe = torch.where(valid, idx_c, 0)
        if rows.shape[0] == 0:
            k = q.new_zeros(Tc, idx_c.shape[1], D)
        else:
            k = torch.where(valid.unsqueeze(-1), rows[safe].to(q.dtype), 0.0)
        keys.append(k)
        valids.append(valid)
        slots.append(safe)
    k = torch.cat(keys, dim=1)  # [Tc, K, D]
    valid = torch.cat(valids, dim=1)  # [Tc, K]
    s = scale * torch.einsum("thd,tkd->thk", q, k)  # [Tc, H, K]
    s = s.masked_fill(~valid.unsqueeze(1), float("-inf"))
    has_keys = (lse != float("-inf")).unsqueeze(-1)  # [Tc, H, 1]; -inf: no key used (out 0)
    if sink is None:
        big_l = lse
        p_sink = None
    else:
        big_l = torch.logaddexp(lse, sink.unsqueeze(0))
        # exp(sink - L) = 1 / (1 + exp(lse - sink)), also for sink = +inf (1) and -inf (0)
        p_sink = torch.where(has_keys.squeeze(-1), torch.sigmoid(sink.unsqueeze(0) - lse), 0.0)
    p = torch.where(has_keys, torch.exp(s - big_l.unsqueeze(-1)), 0.0)  # [Tc, H, K]; 0 at invalid entries
    ds = torch.zeros_like(s)
    if dout is not None:
        dp = torch.einsum("thd,tkd->thk", dout, k)
        out = torch.einsum("thk,tkd->thd", p, k)
        delta = (dout * out).sum(-1)  # [Tc, H]
        ds = p * (dp - delta.unsqueeze(-1))
        if dsink is not None and p_sink is not None:
            dsink -= (p_sink * delta).sum(0)
    if dlse is not None:
        ds = ds + dlse.unsqueeze(-1) * torch.where(has_keys, torch.exp(s - lse.unsqueeze(-1)), 0.0)
    ds = torch.where(valid.unsqueeze(1), ds, 0.0)
    dq += scale * torch.einsum("thk,tkd->thd", ds, k)
    dk = scale * torch.einsum("thk,thd->tkd", ds, q)  # [Tc, K, D]
    if dout is not None:
        dk = dk + torch.einsum("thk,thd->tkd", p, dout)
    dk = torch.where(valid.unsqueeze(-1), dk, 0.0)
    k0 = 0
    for drow, safe in zip(drows, slots):
        Ki = safe.shape[1]
        if drow.shape[0] > 0:
            drow.index_add_(0, safe.reshape(-1), dk[:, k0 : k0 + Ki].reshape(-1, D))
        k0 += Ki
