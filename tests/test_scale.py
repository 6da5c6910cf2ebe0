"""The reference scales: 1M-token shapes run with temporary memory bounded by the chunk budget.

Memory is measured as the peak process RSS above the RSS at the start of the call (sampled; see
bench/peakmem.py). The unchunked formulation would need the [T, Hi, N] / [T, K, D] temporaries named
in each test, far above the asserted bound.
"""

import longattn
import pytest
import torch
from longattn.memory import chunk_budget

from bench.peakmem import PeakRSS

MiB = 1 << 20


def test_indexer_topk_262144_entries_bounded_memory():
    """A 1M-token context (262,144 compressed entries) for 64 query tokens: [T, N] fp32 logits alone
    would be 64 MiB and the per-head scores [T, Hi, N] 1 GiB; with a 16 MiB budget the call stays
    far below both."""
    T, Hi, Di, N, topk = 64, 16, 128, 262144, 512
    q, w = torch.randn(T, Hi, Di).bfloat16(), torch.randn(T, Hi)
    k = torch.randn(N, Di).bfloat16()
    ve = torch.randint(N // 2, N + 1, (T,), dtype=torch.int32)
    with chunk_budget(16 * MiB), PeakRSS() as mem:
        idx, lengths = longattn.indexer_topk(q, w, k, ve, topk)
    assert mem.peak_delta < 40 * MiB, f"peak temporary memory {mem.peak_delta / MiB:.1f} MiB"
    assert torch.all(lengths == topk)
    # spot-check two tokens against a direct computation
    for t in (0, T - 1):
        scores = (torch.relu(q[t].float() @ k[: ve[t]].float().T) * w[t].unsqueeze(1)).sum(0)
        top = torch.topk(scores, topk).values
        got = scores[idx[t].long()]
        torch.testing.assert_close(got, top, atol=1e-3, rtol=1e-4)


def test_sparse_attention_hca_1m_keys_bounded_memory():
    """256 query tokens x (128 + 8,192) keys of 512 dims: gathering all keys at once would take
    256 * 8320 * 512 * 4 B = 4.1 GiB; the chunked reference stays within a small multiple of its budget."""
    T, H, D = 256, 8, 512
    swa, comp = torch.randn(4096, D).bfloat16(), torch.randn(8192, D).bfloat16()
    q = torch.randn(T, H, D).bfloat16()
    win = torch.randint(0, 4096, (T, 128), dtype=torch.int32)
    cidx = torch.randint(-1, 8192, (T, 8192), dtype=torch.int32)
    with chunk_budget(32 * MiB), PeakRSS() as mem:
        out, lse = longattn.sparse_attention(q, swa, win, extra_kv=comp, extra_indices=cidx, attn_sink=torch.zeros(H))
    assert mem.peak_delta < 128 * MiB, f"peak temporary memory {mem.peak_delta / MiB:.1f} MiB"
    assert torch.isfinite(out.float()).all() and torch.isfinite(lse).all()


def test_sparse_attention_shared_hca_prefix_bounded_memory(monkeypatch):
    """A prefill chunk of an HCA layer at 1M context (256 tokens, sliding window rows + a prefix of
    8,192 entries): the reference's shared rows (one copy of the ~8,300 distinct rows, the logits of
    41 tokens at a time under a 64 MiB budget) stay within a small multiple of the budget and equal the
    per-token path."""
    from longattn.ops.sparse_attention import reference as ref

    T, H, D = 256, 8, 512
    g = torch.Generator().manual_seed(5)
    swa, comp = torch.randn(4096, D, generator=g).bfloat16(), torch.randn(8192, D, generator=g).bfloat16()
    q = torch.randn(T, H, D, generator=g).bfloat16()
    win = (torch.arange(T).unsqueeze(1) + torch.arange(128)).int()  # token t: rows t .. t + 127
    cidx = torch.arange(8192, dtype=torch.int32).repeat(T, 1)
    lengths = (8064 + torch.arange(T) // 2).int()  # a growing prefix
    args = dict(extra_kv=comp, extra_indices=cidx, extra_topk_length=lengths, attn_sink=torch.zeros(H))
    used = []
    real = ref.attend_shared

    def spy(*a):
        res = real(*a)
        used.append(res is not None)
        return res

    monkeypatch.setattr(ref, "attend_shared", spy)
    with chunk_budget(64 * MiB), PeakRSS() as mem:
        out, lse = longattn.sparse_attention(q, swa, win, **args)
    assert used and all(used), used
    assert mem.peak_delta < 160 * MiB, f"peak temporary memory {mem.peak_delta / MiB:.1f} MiB"
    print(f"shared rows: {len(used)} chunks, peak {mem.peak_delta / MiB:.1f} MiB")
    monkeypatch.setattr(ref, "SHARED_MIN_TOKENS", 1 << 30)
    with chunk_budget(64 * MiB):
        want_out, want_lse = longattn.sparse_attention(q, swa, win, **args)
    torch.testing.assert_close(lse, want_lse, atol=1e-4, rtol=0)  # fp32 sums of 8,320 terms, reordered
    # bf16 outputs, each path rounding its fp32 result once: 1 ulp apart at most (2^-8 relative)
    ulp = 2**-8 * float(want_out.float().abs().max())
    torch.testing.assert_close(out.float(), want_out.float(), atol=ulp, rtol=2**-8)


@pytest.mark.parametrize("budget_mib", [1, 64])
def test_decode_demo_runs(budget_mib):
    """The README's main job (CSA decode step) at a reduced 64K context, both chunk regimes."""
    from bench import demo

    with chunk_budget(budget_mib * MiB):
        assert demo.main(["--context", "65536", "--repeats", "1"]) == 0
