"""compress_pool / compress_kv inputs, replays and checks shared by the op x backend tests and the
backend-specific ones.

compress_pool: the entry is a convex combination of ``a`` values with softmax weights over 2 * ratio
slots; exp / sum / divide add O(ratio) fp32 roundings relative to max|a|, scaled by (1 + max|b|) for the
rounding of exp's argument (``pool_bound``). A kernel computes the same fp32 math in another order
(an online softmax over slot tiles; tl.exp is ex2.approx on GPUs, ~2 ulp), which this bound covers.

compress_kv: the same steps (random chunk / decode splits of several sequences, interleaved in mixed
batches) are replayed on a backend and on the reference from identical NaN-poisoned caches (``Cache``:
one guard page on each side of the ring state and of the pool). The ring (state) holds exact fp32
copies of a | b, so it must be bit-identical; the output pools must have NaN exactly where the
reference leaves NaN (nothing else written, everything written), and the entries must agree to

    |backend - reference| <= 16 u * max_k |entry_k|     per entry (u = 2**-24),

and lie as close to a float64 oracle (``oracle_entries``). Justification: both compute the same fp32
math in another order (online softmax over slot tiles and tree sums vs two passes; tl.exp =
ex2.approx on GPUs, ~2 ulp), RMSNorm scales by ~1 / rms, and RoPE mixes the two values of a pair with
cos / sin that differ by an ulp or two between libdevice / numpy and torch: every step is a few u
relative to the entry's norm. Measured (Triton interpreter, d = 24 / 64 / 512): kernel <= 6.5 u and
reference <= 5.5 u * max|entry| from the float64 oracle, kernel vs reference <= 9 u; elementwise
relative errors are much larger only on components near 0 (cancellation in the pooling), hence the
normwise bound. FP8 outputs: a record is within one e4m3 step (one bf16 ulp for the rope dims) of the
reference's, and byte-identical to ``quantize_rows`` of the backend's own fp32 entry where the fp32 and
FP8 variants are one computation (``records_of_own_entries``).
"""

from __future__ import annotations

import random

import torch
from longattn.cache import Fp8IndexKeyPool, Fp8KVPool
from longattn.cache.fp8 import page_bytes, quantize_rows
from longattn.cache.fp8_index import index_page_bytes
from longattn.configs import RopeConfig
from longattn.rope import inv_freq

from tests.helpers.backends import call
from tests.helpers.device import DEVICE, ON_GPU
from tests.helpers.specials import INF, NAN, NEG_NAN, neg_nan  # noqa: F401

U = 2.0**-24
EPS = 1e-6
POISON_BYTE = 0xA5


def bits(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().view({1: torch.uint8, 2: torch.int16, 4: torch.int32}[t.element_size()])


# ---------------------------------------------------------------------------------------------------
# compress_pool
# ---------------------------------------------------------------------------------------------------
def pool_bound(a, b, ratio) -> float:
    amax = float(a.float().abs().max()) if a.numel() else 0.0
    bmax = float(b.float().abs().max()) if b.numel() else 0.0
    return 2 * (2 * ratio + 8) * U * amax * (1 + bmax)


def nonfinite_pool_inputs():
    """a, b [16, 2 * 6] (ratio 4, overlap) with every non-finite case of the pooling rule, one per
    (entry, channel): all slots -inf (with a NaN value: still 0), a NaN score, a negative NaN score, a
    +inf score, a NaN value at a finite / at a -inf score, +-inf values, -inf scores beside finite ones,
    and block -1 of entry 0 (absent: nothing there is read)."""
    g = torch.Generator().manual_seed(11)
    d = 6
    a, b = torch.randn(16, 2 * d, generator=g), torch.randn(16, 2 * d, generator=g) * 3
    b[:, 0] = -INF
    b[:, d] = -INF  # channel 0: every slot -inf -> 0 ...
    a[6, 0] = NAN  # ... even with a NaN value in a present slot
    b[5, 1] = NAN  # entry 2 (previous block, half A), channel 1: NaN score
    b[9, d + 1] = NEG_NAN  # entry 2 (own block), channel 1 too
    b[13, d + 2] = NEG_NAN  # entry 3, channel 2: negative NaN score
    b[2, d + 3] = INF  # entry 0, channel 3: +inf score
    a[9, d + 4] = NAN  # entry 2, channel 4: NaN value at a finite score
    b[4, 5], a[4, 5] = -INF, NAN  # entry 2, channel 5: NaN value at a -inf score (0 * NaN)
    a[14, d + 5] = INF  # entry 3, channel 5: +inf value
    b[1, d + 2], b[3, d + 2] = -INF, -INF  # entry 0, channel 2: -inf beside finite scores
    return a, b


# ---------------------------------------------------------------------------------------------------
# compress_kv: replays
# ---------------------------------------------------------------------------------------------------
def random_split(S, rng, decode_tail, max_chunk=9):
    cuts, left = [], S
    while left:
        k = 1 if (decode_tail and left < S // 2) else min(left, rng.randint(1, max_chunk))
        cuts.append(k)
        left -= k
    return cuts


def make_steps(lengths, ratio, overlap, d, seed, decode_tail, max_chunk=9, dtype=torch.float32, start=0):
    """Sequences (a, b) and the batches that feed them in random chunks, interleaved at random."""
    rng = random.Random(seed)
    g = torch.Generator().manual_seed(seed)
    c = 2 if overlap else 1
    seqs = [
        (torch.randn(S, c * d, generator=g).to(dtype), (torch.randn(S, c * d, generator=g) * 2).to(dtype))
        for S in lengths
    ]
    queues = [random_split(S, rng, decode_tail, max_chunk) for S in lengths]
    done = [0] * len(lengths)
    steps = []
    while any(queues):
        batch = [i for i in range(len(lengths)) if queues[i] and rng.random() < 0.7]
        rng.shuffle(batch)
        if not batch:
            continue
        a, b, pos, rows = [], [], [], []
        for i in batch:
            k = queues[i].pop(0)
            s0 = done[i]
            a.append(seqs[i][0][s0 : s0 + k])
            b.append(seqs[i][1][s0 : s0 + k])
            pos.append(torch.arange(start + s0, start + s0 + k))
            rows.append(torch.full((k,), i, dtype=torch.int32))
            done[i] += k
        steps.append((torch.cat(a), torch.cat(b), torch.cat(pos), torch.cat(rows)))
    return seqs, steps


class Cache:
    """Ring state, output pool and block tables for B sequences; one guard page on each side of the
    state and the pool (NaN / poison bytes) must never be written."""

    def __init__(self, B, ratio, overlap, d, page_size, max_len, out="fp32", seed=0, start=0):
        c = 2 if overlap else 1
        self.ratio, self.overlap, self.d, self.page_size = ratio, overlap, d, page_size
        ring = c * ratio
        s_ps = min(page_size, ring)
        ring_pages = -(-ring // s_ps)
        g = torch.Generator().manual_seed(seed)
        self.state_buf = torch.full((B * ring_pages + 2, s_ps, 2 * c * d), float("nan"))
        self.state_bt = torch.randperm(B * ring_pages, generator=g).view(B, ring_pages).int()
        # logical pages of entries start // ratio ... (start + max_len) // ratio get physical pages (a
        # random permutation); earlier logical pages (never written when start > 0) are -1
        first, last = start // ratio // page_size, ((start + max_len) // ratio) // page_size
        pages = last - first + 1
        self.out_bt = torch.full((B, last + 1), -1, dtype=torch.int32)
        self.out_bt[:, first:] = torch.randperm(B * pages, generator=g).view(B, pages).int()
        self.num_pages = B * pages
        self.out_kind = out
        if out == "fp8":
            self.out_buf = torch.full((self.num_pages + 2, page_bytes(page_size)), POISON_BYTE, dtype=torch.uint8)
        elif out == "fp8_index":  # the indexer-key record (Fp8IndexKeyPool), d a multiple of 16
            shape = (self.num_pages + 2, index_page_bytes(page_size, d))
            self.out_buf = torch.full(shape, POISON_BYTE, dtype=torch.uint8)
        else:
            dt = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[out]
            self.out_buf = torch.full((self.num_pages + 2, page_size, d), float("nan"), dtype=dt)
        self.w = torch.linspace(0.5, 1.5, d)
        self.freqs = inv_freq(RopeConfig(160000.0), min(16, d - d % 2))

    def clone(self, device):
        other = object.__new__(Cache)
        other.__dict__.update(self.__dict__)
        for k in ("state_buf", "state_bt", "out_buf", "out_bt", "w", "freqs"):
            setattr(other, k, getattr(self, k).clone().to(device))
        return other

    @property
    def state(self):
        return self.state_buf[1:-1]

    @property
    def out(self):
        if self.out_kind == "fp8":
            return Fp8KVPool(self.out_buf[1:-1], self.page_size)
        if self.out_kind == "fp8_index":
            return Fp8IndexKeyPool(self.out_buf[1:-1], self.page_size, self.d)
        return self.out_buf[1:-1]

    def args(self, step):
        a, b, pos, rows = (x.to(self.state_buf.device) for x in step)
        return dict(a=a, b=b, positions=pos, token_rows=rows, ratio=self.ratio, overlap=self.overlap,
                    state=self.state, state_block_table=self.state_bt, out=self.out, out_block_table=self.out_bt,
                    norm_weight=self.w, eps=EPS, rope_inv_freq=self.freqs)  # fmt: skip


def replay(cache, steps, backend=None, config=None):
    """Feed ``steps`` to ``cache`` on ``backend`` (a call it declines is skipped), or, with ``config``,
    to the Triton kernel launched with that tile configuration."""
    for step in steps:
        args = cache.args(step)
        if config is not None:
            from longattn.ops.compress import triton_compress

            triton_compress.compress_kv(**args, config=config)
        else:
            import longattn

            call(longattn.compress_kv, **args, backend=backend)


def run_both(cache, steps, backend="triton", config=None):
    """(reference run on the CPU, ``backend`` run on the test device) of the same steps from copies of
    ``cache``."""
    ref = cache.clone("cpu")
    replay(ref, steps, backend="reference")
    got = cache.clone(DEVICE)
    replay(got, steps, backend=backend, config=config)
    return ref, got


def oracle_entries(a, b, ratio, overlap, w, freqs):
    """float64 compress_pool + RMSNorm + RoPE (fp32 angles as longattn.rope) of one whole sequence."""
    a, b = a.double(), b.double()
    S, width = a.shape
    d = width // 2 if overlap else width
    n = S // ratio
    out = torch.zeros(n, d, dtype=torch.float64)
    for j in range(n):
        own = slice(j * ratio, (j + 1) * ratio)
        if overlap:
            s = torch.full((2 * ratio, d), float("-inf"), dtype=torch.float64)
            v = torch.zeros(2 * ratio, d, dtype=torch.float64)
            if j > 0:
                prev = slice((j - 1) * ratio, j * ratio)
                s[:ratio], v[:ratio] = b[prev, :d], a[prev, :d]
            s[ratio:], v[ratio:] = b[own, d:], a[own, d:]
        else:
            s, v = b[own], a[own]
        out[j] = (torch.softmax(s, 0) * v).sum(0)
    x = out * torch.rsqrt(out.pow(2).mean(-1, keepdim=True) + EPS) * w.double()
    R = freqs.shape[0]
    if R:
        ang = (torch.arange(n, dtype=torch.float32) * ratio).unsqueeze(1) * freqs.float()  # fp32 angles
        cos, sin = torch.cos(ang.double()), torch.sin(ang.double())
        pr = x[:, d - 2 * R :].unflatten(-1, (R, 2))
        e, o = pr[..., 0].clone(), pr[..., 1].clone()
        x[:, d - 2 * R :] = torch.stack([e * cos - o * sin, e * sin + o * cos], -1).flatten(-2)
    return x


def entry_slots(cache, row, n):
    j = torch.arange(n)
    return cache.out_bt[row, j // cache.page_size].long().cpu() * cache.page_size + j % cache.page_size


def assert_entries_close(got, want, what, ulps=16):
    """Per entry (row): max |got - want| <= ulps * u * max |want|."""
    got, want = got.double().cpu(), want.double().cpu()
    scale = want.abs().amax(-1, keepdim=True).clamp_min(1e-30)
    err = ((got - want).abs() / (scale * U)).amax() if want.numel() else torch.tensor(0.0)
    assert float(err) <= ulps, f"{what}: {float(err):.1f} u * max|entry| > {ulps}"
    return float(err)


def check_float_run(ref, got, seqs=None, ulps=16):
    """State bit-identical; NaN exactly where the reference left NaN; entries within the bound of the
    reference (and of the float64 oracle when ``seqs`` is given). Returns the max errors in u."""
    s_ref, s_got = ref.state_buf, got.state_buf.cpu()
    assert torch.equal(s_ref.isnan(), s_got.isnan()), "ring: written positions differ"
    assert torch.equal(bits(s_ref.nan_to_num(0.0)), bits(s_got.nan_to_num(0.0))), "ring rows are not exact copies"
    o_ref, o_got = ref.out_buf.float(), got.out_buf.cpu().float()
    assert torch.equal(o_ref.isnan(), o_got.isnan()), "output: written entries differ (NaN mask)"
    written = ~o_ref.isnan().all(-1)
    e_ref = assert_entries_close(o_got[written], o_ref[written], "kernel vs reference", ulps)
    e_oracle = 0.0
    if seqs is not None:
        d = ref.d
        for i, (a, b) in enumerate(seqs):
            want = oracle_entries(a, b, ref.ratio, ref.overlap, ref.w, ref.freqs)
            slots = entry_slots(ref, i, want.shape[0]) + ref.page_size  # + the guard page
            e_oracle = max(e_oracle, assert_entries_close(o_got.view(-1, d)[slots], want, f"seq {i} vs oracle", ulps))
            assert_entries_close(o_ref.view(-1, d)[slots], want, f"reference seq {i} vs oracle", ulps)
    return e_ref, e_oracle


def records_of_own_entries(backend: str) -> bool:
    """Whether ``backend``'s FP8 records are exactly quantize_rows of its own fp32 entries (the same
    steps into an fp32 pool). Not for the Triton kernels on a GPU: there the fp32 and FP8 variants are
    two compilations that may contract differently (the interpreter runs one computation)."""
    return not (backend == "triton" and ON_GPU)


def check_fp8_run(ref, got, cache, seqs, steps, backend="triton"):
    """FP8 output pools: bytes outside the written records keep the poison; written records within one
    e4m3 step of the tile scale (nope) / one bf16 ulp (rope) of the reference's; where
    ``records_of_own_entries``, each record is byte-identical to quantize_rows of the backend's own
    fp32 entry."""
    assert torch.equal(bits(ref.state_buf.nan_to_num(0.0)), bits(got.state_buf.cpu().nan_to_num(0.0)))
    ps, ratio, d = cache.page_size, cache.ratio, cache.d
    written = torch.zeros_like(ref.out_buf, dtype=torch.bool)
    data_rows = written[:, : ps * 576].view(-1, ps, 576)
    scale_rows = written[:, ps * 576 : ps * 584].view(-1, ps, 8)
    for i, (a, _) in enumerate(seqs):
        for j in range(a.shape[0] // ratio):
            pg, off = int(cache.out_bt[i, j // ps]) + 1, j % ps  # + 1: the guard page
            data_rows[pg, off] = True
            scale_rows[pg, off] = True
    g_bytes = got.out_buf.cpu()
    assert torch.all(g_bytes[~written] == POISON_BYTE) and torch.all(ref.out_buf[~written] == POISON_BYTE)
    pool_ref, pool_got = ref.out, Fp8KVPool(g_bytes[1:-1], ps)
    exact = records_of_own_entries(backend)
    if exact:
        fp32_run = cache.clone("cpu")
        fp32_run.out_kind = "fp32"
        fp32_run.out_buf = torch.full((cache.num_pages + 2, ps, d), float("nan"))
        fp32_run = fp32_run.clone(DEVICE)
        replay(fp32_run, steps, backend=backend)
    for i, (a, _) in enumerate(seqs):
        slots = entry_slots(cache, i, a.shape[0] // ratio)
        pages, offs = slots // ps, slots % ps
        want, have = pool_ref.gather_rows(slots), pool_got.gather_rows(slots)
        e = pool_ref._views()[1][pages, offs, :7].float() - 127  # tile exponents [n, 7]
        step = (torch.exp2(e) * 2.0**-3).repeat_interleave(64, 1)  # e4m3 spacing at the tile's top binade
        assert torch.all((have[:, :448] - want[:, :448]).abs() <= step), "nope: more than one e4m3 step"
        assert torch.all((have[:, 448:] - want[:, 448:]).abs() <= want[:, 448:].abs() * 2.0**-7), "rope: > 1 bf16 ulp"
        if exact:
            data, scales = quantize_rows(fp32_run.out.reshape(-1, d)[slots.to(DEVICE)].cpu())
            data_rows, scale_rows = pool_got._views()
            assert torch.equal(data_rows[pages, offs], data)
            assert torch.equal(scale_rows[pages, offs], scales)


def check_lowp_run(ref, got, step):
    """bf16 / fp16 pools: NaN where the reference left NaN, values at most one unit of the pool's last
    place apart (the fp32 entries agree to a few u before the final rounding); ring bit-identical."""
    o_ref, o_got = ref.out_buf.float(), got.out_buf.cpu().float()
    assert torch.equal(o_ref.isnan(), o_got.isnan())
    m = ~o_ref.isnan()
    assert torch.all((o_got[m] - o_ref[m]).abs() <= step * o_ref[m].abs() + 1e-6)
    assert torch.equal(bits(ref.state_buf.nan_to_num(0.0)), bits(got.state_buf.cpu().nan_to_num(0.0)))


def poison_steps(steps, where):
    """Copies of ``steps`` with a[t, col] / b[t, col] set at (row, position) -> [(tensor, col, value)]."""
    out = []
    for a, b, pos, rows in steps:
        a, b = a.clone(), b.clone()
        for (row, p), edits in where.items():
            hit = ((rows == row) & (pos == p)).nonzero()
            for i in hit.view(-1).tolist():
                for which, col, value in edits:
                    (a if which == "a" else b)[i, col] = value
        out.append((a, b, pos, rows))
    return out


# ---------------------------------------------------------------------------------------------------
# compress_kv: the non-finite pooling rule written out in float64 (ops/compress/README.md)
# ---------------------------------------------------------------------------------------------------
def compress_args(d, ratio, overlap, rope_dim=0, eps=1e-6, weight=None):
    """The scalar / weight arguments of compress_kv (RoPE on the last ``rope_dim`` dims)."""
    freqs = inv_freq(RopeConfig(160000.0), rope_dim) if rope_dim else torch.zeros(0)
    w = torch.linspace(0.5, 1.5, d) if weight is None else weight
    return dict(ratio=ratio, overlap=overlap, norm_weight=w, eps=eps, rope_inv_freq=freqs)


def pool_rule(scores: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """The package rule in float64: scores/values [slots, d] of the present slots -> [d]."""
    s, v = scores.double(), values.double()
    out = torch.zeros(s.shape[1], dtype=torch.float64)
    for k in range(s.shape[1]):
        sk, vk = s[:, k], v[:, k]
        if sk.numel() == 0 or bool((sk == -INF).all()):
            continue  # no present slot with a score above -inf: 0
        m = sk.max()  # NaN if any NaN (torch.max propagates it)
        w = torch.exp(sk - m)
        out[k] = (w * vk).sum() / w.sum()
    return out


def compress_rule_entries(a, b, pos, ratio, overlap, weight, eps):
    """Entries {j: [d] float64} of one sequence given as one batch starting at pos[0] (nothing in the
    ring): pooled by the rule, then RMSNorm (no RoPE)."""
    c = 2 if overlap else 1
    d = a.shape[1] // c
    ring = c * ratio
    first = int(pos[0])
    res = {}
    for t, p in enumerate(int(x) for x in pos):
        if p < 0 or (p + 1) % ratio:
            continue
        sc, va = [], []
        for i in range(ring):
            q = p - ring + 1 + i
            if q < 0 or q < first:
                continue  # absent (before position 0 / before this test's first token: no ring)
            half = d if (overlap and i >= ratio) else 0
            tq = t - (p - q)
            sc.append(b[tq, half : half + d])
            va.append(a[tq, half : half + d])
        sc = torch.stack(sc) if sc else torch.zeros(0, d)
        va = torch.stack(va) if va else torch.zeros(0, d)
        e = pool_rule(sc, va)
        e = e * torch.rsqrt(e.pow(2).mean() + eps) * weight.double()
        res[p // ratio] = e
    return res
