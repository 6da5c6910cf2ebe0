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

    A channel whose slots are all -inf (no token) pools to 0 instead of NaN.
    """
    m = scores.amax(dim=1, keepdim=True)
    m = torch.where(torch.isneginf(m), torch.zeros_like(m), m)
    w = torch.exp(scores - m)
    denom = w.sum(dim=1)
    num = (w * values).sum(dim=1)
    return torch.where(denom > 0, num / torch.where(denom > 0, denom, torch.ones_like(denom)), torch.zeros_like(num))


def compress_pool(a: torch.Tensor, b: torch.Tensor, ratio: int, overlap: bool) -> torch.Tensor:
    S, width = a.shape
    d = width // 2 if overlap else width
    n = S // ratio
    out = torch.empty(n, d, dtype=torch.float32, device=a.device)
    per_entry = 2 * ratio * d * 4 * 3
    step = rows_per_chunk(per_entry, n)
    for e0 in range(0, n, step):
        e1 = min(n, e0 + step)
        own = slice(e0 * ratio, e1 * ratio)
        if not overlap:
            scores = b[own].to(torch.float32).view(e1 - e0, ratio, d)
            values = a[own].to(torch.float32).view(e1 - e0, ratio, d)
        else:
            # Slots 0..ratio-1: half A of the previous block; slots ratio..2*ratio-1: half B of the own.
            own_b = b[own, d:].to(torch.float32).view(e1 - e0, ratio, d)
            own_a = a[own, d:].to(torch.float32).view(e1 - e0, ratio, d)
            p0 = max(0, e0 - 1)  # first previous block that exists
            prev_b = b[p0 * ratio : (e1 - 1) * ratio, :d].to(torch.float32).view(-1, ratio, d)
            prev_a = a[p0 * ratio : (e1 - 1) * ratio, :d].to(torch.float32).view(-1, ratio, d)
            if e0 == 0:  # entry 0 has no previous block: score -inf, value 0
                prev_b = torch.cat([own_b.new_full((1, ratio, d), NEG_INF), prev_b])
                prev_a = torch.cat([own_a.new_zeros(1, ratio, d), prev_a])
            scores = torch.cat([prev_b, own_b], dim=1)
            values = torch.cat([prev_a, own_a], dim=1)
        out[e0:e1] = pool_slots(scores, values)
    return out
