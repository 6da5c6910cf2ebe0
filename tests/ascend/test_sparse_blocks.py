"""sparse_attention on the Ascend C kernel with key blocks of 64, 128 and 256 keys (tiling `blockKeys`,
ascend_c/sparse_attention/README.md): token key counts on both sides of every block border, invalid
indices spread over the blocks, partial last blocks, both streams with runs of consecutive slots crossing
block and stream borders, FP8 pools, fp32 / bf16 / fp16, H from 1 to 128, and the non-finite rule with
the special keys inside the slices of a 256-key block. LONGATTN_SA_BLOCK_KEYS caps the block (the tiling
then takes the largest block <= the cap that fits); every case asserts the block it ran with. Results
against the float64 oracle under the bounds of tests/helpers/sparse.py (fp32: the derived bound; bf16 /
fp16: the low-precision 2x rule), non-finite cells by the package rule."""

import longattn
import pytest
import torch
from longattn.backends import ascend_sim
from longattn.ops.sparse_attention import ascend as sa

from tests.helpers.sparse import INF, NAN, assert_rule_cells, attention_rule, check_sparse, fp8_pool

pytestmark = pytest.mark.skipif(
    ascend_sim.BACKEND.unavailable is not None, reason=f"ascend_sim: {ascend_sim.BACKEND.unavailable}"
)
SIM = "ascend_sim"
# valid keys per token: 1, one short of / at / one past the 128 and 256 borders, 513 and 700 keys
COUNTS = [1, 127, 128, 129, 255, 256, 257, 513, 700]


def block_keys(monkeypatch, cap, H, D, dtype, kinds):
    """Caps the key block at ``cap`` and returns the block the kernel's tiling takes (checked against the
    Python mirror)."""
    monkeypatch.setenv("LONGATTN_SA_BLOCK_KEYS", str(cap))
    code = sa.DTYPE_CODE
    extra = code[kinds[1]] if len(kinds) > 1 else -1
    t = ascend_sim.extension().sparse_attention_tiling(1, H, D, code[dtype], code[kinds[0]], extra, 1)
    mirror = sa.sa_tiling(H, D, dtype, kinds, cap)
    assert mirror is not None and t["block_keys"] == mirror["block_keys"] <= cap
    return t["block_keys"]


def spread_indices(counts, N, K, g, runs=True):
    """[T, K] int32 index rows: token t has exactly counts[t] valid slots (< N), the other positions
    invalid (-1, N, N + 7, -5) and spread over the whole row; runs: the valid slots come as runs of
    consecutive slots of random lengths (window-like), else random."""
    T = len(counts)
    idx = torch.tensor([-1, N, N + 7, -5], dtype=torch.int32)[torch.randint(0, 4, (T, K), generator=g)]
    for t, n in enumerate(counts):
        pos = torch.randperm(K, generator=g)[:n].sort().values
        if runs:
            slots, s = [], int(torch.randint(0, N, (1,), generator=g))
            while len(slots) < n:
                length = int(torch.randint(1, 90, (1,), generator=g))
                slots += [(s + i) % N for i in range(length)]
                s = int(torch.randint(0, N, (1,), generator=g))
            vals = torch.tensor(slots[:n], dtype=torch.int32)
        else:
            vals = torch.randint(0, N, (n,), generator=g, dtype=torch.int32)
        idx[t, pos] = vals
    return idx


def run_and_check(args, what):
    out, lse = longattn.sparse_attention(**args, backend=SIM)
    check_sparse(out, lse, args, what, SIM)
    return out, lse


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("cap", [64, 128, 256])
@pytest.mark.parametrize("H,D", [(1, 64), (20, 128)])
def test_block_borders(monkeypatch, H, D, cap, dtype):
    """Nine tokens of 1 ... 700 valid keys among 900 positions (invalid entries everywhere), a sink."""
    nb = block_keys(monkeypatch, cap, H, D, dtype, [dtype])
    assert nb == cap  # small H: every block size fits
    g = torch.Generator().manual_seed(cap + H)
    N, K = 1200, 900
    idx = spread_indices(COUNTS, N, K, g, runs=H == 1)
    args = dict(q=torch.randn(len(COUNTS), H, D, generator=g).to(dtype), kv=torch.randn(N, D, generator=g).to(dtype),
                indices=idx, attn_sink=torch.randn(H, generator=g))  # fmt: skip
    run_and_check(args, f"H={H} D={D} nb={nb} {dtype}")


@pytest.mark.parametrize(
    "H,D,dtype,want",
    [(64, 512, torch.bfloat16, 128), (80, 256, torch.float16, 256), (128, 512, torch.bfloat16, 128),
     (128, 64, torch.float32, 128), (64, 576, torch.bfloat16, 128)],
    ids=str,
)  # fmt: skip
def test_block_borders_many_heads(monkeypatch, H, D, dtype, want):
    """The largest block that fits (cap 256) at H = 64 / 80 / 128, D up to 576, with lengths."""
    assert block_keys(monkeypatch, 256, H, D, dtype, [dtype]) == want
    g = torch.Generator().manual_seed(H + D)
    counts = [1, 127, 129, 255, 257, 700] if D >= 512 else COUNTS
    N, K = 1000, 760
    idx = spread_indices(counts, N, K, g)
    lengths = torch.full((len(counts),), K, dtype=torch.int32)
    lengths[-1] = 500  # a length cutting the 700-key token inside a block
    args = dict(q=torch.randn(len(counts), H, D, generator=g).to(dtype), kv=torch.randn(N, D, generator=g).to(dtype),
                indices=idx, topk_length=lengths)  # fmt: skip
    run_and_check(args, f"H={H} D={D} {dtype}")


@pytest.mark.parametrize("cap", [128, 256])
@pytest.mark.parametrize("q_dtype,kv_dtype", [(torch.bfloat16, torch.bfloat16), (torch.float32, torch.bfloat16),
                                              (torch.float16, torch.float16)], ids=str)  # fmt: skip
def test_two_streams_runs_across_blocks(monkeypatch, cap, q_dtype, kv_dtype):
    """Stream 0: a window of consecutive slots (runs crossing the 128 / 256 borders and the end of the
    gather tiles), stream 1: compressed indices with lengths; the block where stream 0 ends holds keys of
    both streams. fp32 queries over a bf16 pool: rows widened in the gather."""
    H, D = 16, 128
    nb = block_keys(monkeypatch, cap, H, D, q_dtype, [kv_dtype, kv_dtype])
    assert nb == cap
    g = torch.Generator().manual_seed(cap)
    T, N, N2, K, K2 = 5, 700, 400, 300, 260
    idx = (torch.arange(K, dtype=torch.int32) + torch.tensor([0, 50, 120, 390, 9], dtype=torch.int32)[:, None]) % N
    idx[1, 100:107] = -1  # a gap inside the run (the run breaks; the next block border moves)
    idx[2, 250:] = N + 1  # the window ends early (invalid tail)
    idx[3, ::31] = -1
    eidx = torch.randint(-2, N2 + 2, (T, K2), generator=g).int()
    elen = torch.tensor([K2, 130, 0, 200, 1], dtype=torch.int32)
    args = dict(q=torch.randn(T, H, D, generator=g).to(q_dtype), kv=torch.randn(N, D, generator=g).to(kv_dtype),
                indices=idx, topk_length=torch.tensor([K, 128, 256, 129, 255], dtype=torch.int32),
                extra_kv=torch.randn(N2, D, generator=g).to(kv_dtype), extra_indices=eidx, extra_topk_length=elen,
                attn_sink=torch.randn(H, generator=g))  # fmt: skip
    run_and_check(args, f"two streams nb={nb} {q_dtype} over {kv_dtype}")


@pytest.mark.parametrize("cap", [64, 256])
@pytest.mark.parametrize("q_dtype", [torch.bfloat16, torch.float32, torch.float16], ids=str)
def test_fp8_pools_across_blocks(monkeypatch, cap, q_dtype):
    """FP8 pools in both streams (pages of 7 records), 300 + 90 valid keys crossing the 128-key borders:
    bf16 queries compute in bf16 with 128-key blocks (the largest that fits the UB next to the FP8
    decoder), fp32 / fp16 queries in fp32 (64-key blocks at D = 512)."""
    H, D, page = 24, 512, 7
    dt = sa.compute_dtype(q_dtype, [sa.FP8, sa.FP8])
    nb = block_keys(monkeypatch, cap, H, D, dt, [sa.FP8, sa.FP8])
    assert nb == (min(cap, 128) if dt == torch.bfloat16 else 64)
    g = torch.Generator().manual_seed(11)
    pool, extra = fp8_pool(60, page, g), fp8_pool(20, page, g)
    T = 3
    idx = spread_indices([300, 129, 255], pool.num_slots, 330, g)
    eidx = spread_indices([90, 127, 0], extra.num_slots, 128, g, runs=False)
    args = dict(q=torch.randn(T, H, D, generator=g).to(q_dtype), kv=pool, indices=idx, extra_kv=extra,
                extra_indices=eidx, attn_sink=torch.randn(H, generator=g))  # fmt: skip
    run_and_check(args, f"fp8 nb={nb} {q_dtype}")


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize("sink", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_nonfinite_logits_in_256_key_blocks(monkeypatch, dtype, sink):
    """600 keys = blocks of 256, 256, 88: a NaN key in the 3rd 64-key slice of the first / second block,
    a +inf logit in the second block (with a -inf one in the first), NaN in q, all used logits -inf, a
    whole first block of -inf logits followed by ordinary ones: the rule exactly, other rows against the
    float64 oracle."""
    T, H, D, N, K = 8, 4, 64, 800, 600
    assert block_keys(monkeypatch, 256, H, D, dtype, [dtype]) == 256
    g = torch.Generator().manual_seed(52)
    kv = torch.randn(N, D, generator=g)
    kv[:700, :4] = 0.0  # ordinary keys: q rows of 1e19 in dims 0..3 give them ordinary logits
    kv[750, 3] = NAN
    kv[751] = 1e19  # with q[:4] = 1e19: +inf logit (fp32 overflow); -inf with -1e19
    kv[752] = -1e19
    q = torch.randn(T, H, D, generator=g)
    idx = torch.randint(0, 700, (T, K), generator=g)
    q[1, 0, 7] = NAN  # token 1 head 0: NaN
    idx[2, 140] = 750  # token 2: NaN key in slice 2 (keys 128..191) of block 0: every head NaN
    q[3, 1, :4] = 1e19  # token 3 head 1: -inf logit in block 0 (key 752), +inf in block 1 (key 751)
    q[3, 2, :4] = -1e19  # head 2: +inf in block 0 (key 752), -inf in block 1
    idx[3, 10], idx[3, 300] = 752, 751
    q[4, 0, :4] = 1e19  # token 4 head 0: every used logit -inf (key 752 only, in two blocks): out 0, lse -inf
    idx[4, :] = 752
    idx[4, 300:] = -1
    q[5, 0, :4] = 1e19  # token 5 head 0: a whole first block of -inf logits, then ordinary ones
    idx[5, :256] = 752
    idx[6, 256 + 150] = 750  # token 6: NaN key in slice 2 of block 1
    idx[7, 590] = 751  # token 7 head 3: +inf logit in the partial last block
    q[7, 3, :4] = 1e19
    sink_t = torch.randn(H, generator=g) if sink else None
    q, kv = q.to(dtype), kv.to(dtype)
    scale = D**-0.5
    out, lse = longattn.sparse_attention(q, kv, idx, attn_sink=sink_t, softmax_scale=scale, backend=SIM)
    want_out, want_lse = attention_rule(q, kv, idx, scale, sink_t)
    cells = [(1, 0, "nan"), (2, 0, "nan"), (2, 3, "nan"), (3, 1, "inf"), (3, 2, "inf"), (4, 0, "empty"),
             (6, 1, "nan"), (7, 3, "inf")]  # fmt: skip
    assert_rule_cells(want_out, want_lse, cells)
    assert torch.isfinite(want_lse[5, 0])
    assert torch.equal(torch.isnan(lse), torch.isnan(want_lse)), (lse, want_lse)
    assert torch.equal(torch.isinf(lse), torch.isinf(want_lse.float()))
    assert torch.equal(lse[torch.isinf(lse)], want_lse.float()[torch.isinf(lse)])
    assert torch.equal(torch.isnan(out), torch.isnan(want_out)), "NaN rows of out"
    assert (out[4, 0] == 0).all()
    # values: rows of ordinary keys only (tokens 3 - 5 and 7 have huge finite logits in other heads)
    fin = torch.isfinite(want_lse)
    fin[3:6] = False
    fin[7] = False
    fin[5, 0] = True
    tol = 1e-4 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(lse[fin].double(), want_lse[fin], atol=tol, rtol=0)
    torch.testing.assert_close(out[fin].double(), want_out[fin], atol=tol, rtol=tol)


# ---------------------------------------------------------------------------------------------------
# Shared gather: the head groups of a token run back to back on one core and gather its keys once
# ---------------------------------------------------------------------------------------------------
def share_tiling(monkeypatch, cores, T, H, D, dtype, kinds, cap=None):
    """Emulates ``cores`` AI cores (and sets the share cap, None: the default) and returns the tiling."""
    monkeypatch.setenv("LONGATTN_ASCEND_SIM_CORES", str(cores))
    if cap is not None:
        monkeypatch.setenv("LONGATTN_SA_SHARE_CAP", str(cap))
    code = sa.DTYPE_CODE
    extra = code[kinds[1]] if len(kinds) > 1 else -1
    return ascend_sim.extension().sparse_attention_tiling(T, H, D, code[dtype], code[kinds[0]], extra, cores)


@pytest.mark.parametrize(
    "H,D,dtype,cap",
    [(128, 512, torch.bfloat16, None), (128, 128, torch.float32, 512), (80, 256, torch.float16, 256),
     (192, 64, torch.bfloat16, 256)],
    ids=str,
)  # fmt: skip
def test_shared_gather_head_groups(monkeypatch, H, D, dtype, cap):
    """H = 128 (two groups of 64), 80 (64 + 16), 192 (three): 8 tokens on 4 cores share (two tokens per
    core, groups back to back). Tokens of 0, 1, 129, 255 / 300 valid keys and exactly the cap are kept
    (the later groups gather nothing), tokens past the cap (cap + 1, 700+) gather per group; two streams
    (a window whose runs cross the blocks, compressed indices with lengths), a sink."""
    t = share_tiling(monkeypatch, 4, 8, H, D, dtype, [dtype, dtype], cap)
    assert t["share_groups"] == 1 and t["head_groups"] == -(-H // 64)
    kept = t["share_cap"]
    nb = t["block_keys"]
    assert kept == max(2 * nb, (cap or 1024) // nb * nb)  # whole blocks, at least two
    g = torch.Generator().manual_seed(H + D)
    N, N2, K2 = 3000, 400, 200
    counts = [0, 1, 129, kept, kept + 1, 300, 255, 700 + kept]
    K = max(counts) - 50 + 60
    idx = spread_indices([max(0, c - 50) for c in counts], N, K, g)  # + up to 50 keys of stream 1
    eidx = torch.randint(0, N2, (8, K2), generator=g).int()
    elen = torch.tensor([min(50, c) for c in counts], dtype=torch.int32)
    args = dict(q=torch.randn(8, H, D, generator=g).to(dtype), kv=torch.randn(N, D, generator=g).to(dtype),
                indices=idx, extra_kv=torch.randn(N2, D, generator=g).to(dtype), extra_indices=eidx,
                extra_topk_length=elen, attn_sink=torch.randn(H, generator=g))  # fmt: skip
    out, lse = run_and_check(args, f"shared gather H={H} D={D} {dtype}")
    assert (lse[0] == -INF).all() and (out[0] == 0).all()
    monkeypatch.setenv("LONGATTN_SA_SHARE_CAP", "0")  # the same without sharing: bit for bit
    assert share_tiling(monkeypatch, 4, 8, H, D, dtype, [dtype, dtype])["share_groups"] == 0
    out0, lse0 = longattn.sparse_attention(**args, backend=SIM)
    assert torch.equal(out0.view(torch.int16 if dtype != torch.float32 else torch.int32),
                       out.view(torch.int16 if dtype != torch.float32 else torch.int32))  # fmt: skip
    assert torch.equal(lse0, lse)


def test_shared_gather_fp8_pools(monkeypatch):
    """V4-Pro with FP8 pools (bf16 q, H = 128): the decoded rows are kept for the second head group."""
    H, D, page = 128, 512, 7
    t = share_tiling(monkeypatch, 2, 4, H, D, torch.bfloat16, [sa.FP8, sa.FP8])
    assert t["share_groups"] == 1 and t["block_keys"] == 128
    g = torch.Generator().manual_seed(5)
    pool, extra = fp8_pool(60, page, g), fp8_pool(20, page, g)
    idx = spread_indices([300, 129, 0, 255], pool.num_slots, 330, g)
    eidx = spread_indices([90, 0, 1, 127], extra.num_slots, 128, g, runs=False)
    args = dict(q=torch.randn(4, H, D, generator=g).to(torch.bfloat16), kv=pool, indices=idx, extra_kv=extra,
                extra_indices=eidx, attn_sink=torch.randn(H, generator=g))  # fmt: skip
    run_and_check(args, "shared gather, FP8 pools")


def test_no_sharing_where_it_would_idle_cores(monkeypatch):
    """The token-major order only where it keeps as many cores busy: T = 1 / 2 / 5 tokens of two head
    groups on 4 cores share no gather (tasks round-robin), T = 4 / 8 do; one head group never shares."""
    for T, want in [(1, 0), (2, 0), (4, 1), (5, 0), (8, 1)]:
        assert share_tiling(monkeypatch, 4, T, 128, 512, torch.bfloat16, [torch.bfloat16])["share_groups"] == want, T
    assert share_tiling(monkeypatch, 4, 8, 64, 512, torch.bfloat16, [torch.bfloat16])["share_groups"] == 0


@pytest.mark.parametrize("name,raw", [("LONGATTN_SA_BLOCK_KEYS", "96"), ("LONGATTN_SA_BLOCK_KEYS", "x"),
                                      ("LONGATTN_SA_SHARE_CAP", "-1"), ("LONGATTN_SA_SHARE_CAP", "2.5")])  # fmt: skip
def test_malformed_knobs_raise(monkeypatch, name, raw):
    """The test knobs follow the package's rule for LONGATTN_* variables: a malformed value raises
    ValueError naming the variable; an empty one is the default."""
    args = dict(q=torch.randn(1, 2, 64), kv=torch.randn(8, 64), indices=torch.zeros(1, 3, dtype=torch.int32))
    monkeypatch.setenv(name, raw)
    with pytest.raises(ValueError, match=name):
        longattn.sparse_attention(**args, backend=SIM)
    monkeypatch.setenv(name, "")
    longattn.sparse_attention(**args, backend=SIM)
