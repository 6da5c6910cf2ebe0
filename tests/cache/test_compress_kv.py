"""compress_kv (stateful, paged) == compress_pool + RMSNorm + RoPE on the whole sequence, for any
split of the sequences into chunks and decode steps, several sequences per batch."""

import random

import longattn
import pytest
import torch
from longattn.cache import Fp8KVPool, dequantize_kv_fp8, quantize_kv_fp8
from longattn.configs import RopeConfig
from longattn.rope import apply_rope, inv_freq

EPS = 1e-6


def expected_entries(a, b, ratio, overlap, w, freqs):
    c = longattn.compress_pool(a, b, ratio, overlap)
    c = c * torch.rsqrt(c.pow(2).mean(-1, keepdim=True) + EPS) * w
    return apply_rope(c, torch.arange(c.shape[0]) * ratio, freqs)


def run_splits(seqs, ratio, overlap, d, page_size, splits, out_pool):
    """Feed every sequence in the chunks given by ``splits[name]`` (random interleaving)."""
    c = 2 if overlap else 1
    ring = c * ratio
    s_ps = min(page_size, ring)
    ring_pages = -(-ring // s_ps)
    names = list(seqs)
    B = len(names)
    max_entries = max(s["a"].shape[0] // ratio for s in seqs.values()) + 1
    pages_per_seq = -(-max_entries // page_size)
    state = torch.full((B * ring_pages + 1, s_ps, 2 * c * d), float("nan"))  # unwritten state is NaN
    perm = torch.randperm(B * pages_per_seq)
    out_bt = perm.view(B, pages_per_seq).int()
    state_bt = torch.arange(1, B * ring_pages + 1).view(B, ring_pages).int()  # page 0 never used
    freqs = inv_freq(RopeConfig(160000.0), 16)
    w = torch.linspace(0.5, 1.5, d)
    done = {n: 0 for n in names}
    queues = {n: list(splits[n]) for n in names}
    rng = random.Random(0)
    while any(queues.values()):
        step = [n for n in names if queues[n] and rng.random() < 0.7]
        rng.shuffle(step)
        if not step:
            continue
        a, b, pos, rows = [], [], [], []
        for n in step:
            k = queues[n].pop(0)
            s0 = done[n]
            a.append(seqs[n]["a"][s0 : s0 + k])
            b.append(seqs[n]["b"][s0 : s0 + k])
            pos.append(torch.arange(s0, s0 + k))
            rows.append(torch.full((k,), names.index(n)))
            done[n] += k
        longattn.compress_kv(
            torch.cat(a), torch.cat(b), torch.cat(pos), torch.cat(rows).int(), ratio=ratio, overlap=overlap,
            state=state, state_block_table=state_bt, out=out_pool, out_block_table=out_bt,
            norm_weight=w, eps=EPS, rope_inv_freq=freqs,
        )  # fmt: skip
    return out_bt, w, freqs


def random_split(S, rng, decode_tail):
    cuts, left = [], S
    while left:
        k = 1 if (decode_tail and left < S // 2) else min(left, rng.randint(1, 9))
        cuts.append(k)
        left -= k
    return cuts


@pytest.mark.parametrize("ratio,overlap", [(4, True), (8, False), (3, True)])
@pytest.mark.parametrize("page_size", [1, 3, 16])
@pytest.mark.parametrize("seed", range(3))
def test_any_split_equals_whole_sequence(ratio, overlap, page_size, seed):
    rng = random.Random(seed)
    d = 24
    c = 2 if overlap else 1
    lengths = {"x": 29, "y": 3, "z": 18}
    seqs = {n: dict(a=torch.randn(S, c * d), b=torch.randn(S, c * d) * 2) for n, S in lengths.items()}
    splits = {n: random_split(S, rng, decode_tail=seed % 2 == 1) for n, S in lengths.items()}
    P = 3 * (-(-(max(lengths.values()) // ratio + 1) // page_size))
    pool = torch.full((P, page_size, d), float("nan"))
    bt, w, freqs = run_splits(seqs, ratio, overlap, d, page_size, splits, pool)
    for i, s in enumerate(seqs.values()):
        want = expected_entries(s["a"], s["b"], ratio, overlap, w, freqs)
        j = torch.arange(want.shape[0])
        slots = bt[i, j // page_size].long() * page_size + j % page_size
        got = pool.view(-1, d)[slots]
        torch.testing.assert_close(got, want, atol=2e-6, rtol=2e-6)  # same fp32 math, other batching


def test_fp8_output_pool():
    d, ratio = 512, 4
    seqs = {"x": dict(a=torch.randn(21, 2 * d), b=torch.randn(21, 2 * d))}
    pool = Fp8KVPool.empty(6, 2, "cpu")
    bt, w, freqs = run_splits(seqs, ratio, True, d, 2, {"x": [5, 1, 1, 9, 5]}, pool)
    want = expected_entries(seqs["x"]["a"], seqs["x"]["b"], ratio, True, w, freqs)  # [5, 512]
    j = torch.arange(5)
    got = pool.gather_rows(bt[0, j // 2].long() * 2 + j % 2)
    quantised = dequantize_kv_fp8(quantize_kv_fp8(want.view(5, 1, d))).view(5, d)
    torch.testing.assert_close(got, quantised, atol=1e-6, rtol=1e-3)  # one e4m3 step at most differs


def test_invalid_pages_are_skipped_not_written():
    d = 8
    pool = torch.zeros(2, 4, d)
    state = torch.zeros(2, 4, 2 * d)
    a, b = torch.randn(8, d), torch.randn(8, d)
    longattn.compress_kv(
        a, b, torch.arange(8), torch.zeros(8, dtype=torch.int32), ratio=4, overlap=False,
        state=state, state_block_table=torch.tensor([[7]], dtype=torch.int32),  # ring page outside the pool
        out=pool, out_block_table=torch.tensor([[-1, 99]], dtype=torch.int32),  # no valid output page
        norm_weight=torch.ones(d), eps=EPS, rope_inv_freq=torch.ones(2),
    )  # fmt: skip
    assert torch.all(pool == 0) and torch.all(state == 0)
