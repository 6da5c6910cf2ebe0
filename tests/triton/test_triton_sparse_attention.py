"""The Triton sparse_attention kernel with explicit split counts and tile configurations.

The shared random and adversarial cases through the public API, on every backend, are in
tests/ops/test_sparse_attention.py. Here every shared case also runs with forced split-KV (partials +
combine kernel), including more splits than key blocks (empty splits, whose partial outputs stay
NaN-poisoned and must never be read); stress shapes (heads, head dims, long rows) under several split
counts; key block sizes; the split heuristic. fp32: the derived bound (tests/tolerance.py); bf16 /
fp16: the low-precision 2x rule (tests/helpers/sparse.py).
"""

from __future__ import annotations

import functools

import pytest
import torch

from tests.helpers.device import CAN_RUN_TRITON, DEVICE, TRITON_SKIP_REASON, to_device
from tests.helpers.sparse import (
    check_against_oracle,
    check_sparse,
    check_sparse_nonfinite,
    fp8_pool,
    fp8_pool_inputs,
    sparse_nonfinite_inputs,
)
from tests.helpers.triton_kernels import run_sparse_kernel as run_kernel
from tests.ops.cases import INT32_MAX, SPARSE_CASES, SparseCase, make_sparse_inputs

pytestmark = pytest.mark.skipif(not CAN_RUN_TRITON, reason=TRITON_SKIP_REASON)

if CAN_RUN_TRITON:
    import longattn
    import triton
    from longattn.ops.sparse_attention import triton_sparse_attention as tsa


def check(out, lse, args, what):
    check_sparse(out, lse, args, what, "triton")


# ---------------------------------------------------------------------------------------------------
# the shared adversarial cases (tests/ops/cases.py) with forced splits
# ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("num_splits", [2, 5])
@pytest.mark.parametrize("case", SPARSE_CASES, ids=str)
def test_cases_split_kv(case: SparseCase, num_splits):
    args = to_device(make_sparse_inputs(case))
    out, lse = run_kernel(args, num_splits=num_splits)
    check(out, lse, args, f"{case.name} splits={num_splits}")


# ---------------------------------------------------------------------------------------------------
# kernel stress: heads, head dims, long rows, empty splits, sentinels
# ---------------------------------------------------------------------------------------------------
STRESS = [
    SparseCase("h1_d64", T=2, H=1, D=64, N=70, K=40, lengths="partial", sink="finite"),
    SparseCase("h3_d128", T=2, H=3, D=128, N=70, K=40, N2=30, K2=20, sink="mixed"),
    SparseCase("h7_d256", T=2, H=7, D=256, N=50, K=35, N2=20, K2=9, lengths="partial"),
    SparseCase("h64_d512_bf16", T=2, H=64, D=512, N=60, K=33, N2=25, K2=17, dtype=torch.bfloat16, sink="finite"),
    SparseCase("h128_d576", T=1, H=128, D=576, N=40, K=20, N2=10, K2=5, sink="finite"),
    SparseCase("h5_d576_bf16", T=2, H=5, D=576, N=40, K=24, dtype=torch.bfloat16, lengths="partial"),
    SparseCase("h3_d100_tail", T=2, H=3, D=100, N=30, K=20, N2=9, K2=7),
    SparseCase("h3_d8_tiny", T=2, H=3, D=8, N=20, K=18, sink="finite"),
    SparseCase("fp16_d256_two", T=2, H=6, D=256, N=40, K=30, N2=20, K2=12, dtype=torch.float16, sink="mixed"),
    SparseCase("huge_two_splits", T=2, H=4, D=64, N=50, K=40, N2=20, K2=30, magnitude=40.0, pattern="in_range"),
    SparseCase("all_invalid_long", T=2, H=4, D=64, N=30, K=50, N2=10, K2=40, pattern="all_invalid", sink="finite"),
    SparseCase("len_zero_long", T=2, H=4, D=64, N=30, K=50, N2=10, K2=40, lengths="zero", sink="mixed"),
]


@pytest.mark.parametrize("num_splits", [None, 1, 3, 16])
@pytest.mark.parametrize("case", STRESS, ids=str)
def test_stress(case: SparseCase, num_splits):
    args = to_device(make_sparse_inputs(case))
    out, lse = run_kernel(args, num_splits=num_splits)
    check(out, lse, args, f"{case.name} splits={num_splits}")


@pytest.mark.parametrize("block_n", [16, 32, 64])
def test_block_sizes(block_n):
    """Different key blocks and a head block smaller than H (several head blocks per token)."""
    args = to_device(make_sparse_inputs(SparseCase("b", T=2, H=37, D=96, N=80, K=70, N2=20, K2=11, sink="finite")))
    cfg = dict(BLOCK_H=16, BLOCK_N=block_n, num_warps=4, num_stages=1)
    for splits in (1, 4):
        out, lse = run_kernel(args, num_splits=splits, config=cfg)
        check(out, lse, args, f"block_n={block_n} splits={splits}")


def test_invalid_indices_never_read():
    """The pool sits inside a larger tensor whose rows around it are NaN: reading slot -1, -2, N or
    N + k (instead of masking them) would put NaN into the output."""
    T, H, D, N = 3, 4, 64, 40
    big = torch.full((N + 20, D), float("nan"))
    big[10 : 10 + N] = torch.randn(N, D)
    kv = big[10 : 10 + N]
    idx = torch.randint(0, N, (T, 24)).int()
    idx[:, ::3] = torch.tensor([-1, -2, -10, N, N + 1, N + 9, INT32_MAX, -(2**31)] * 1)[
        torch.randint(0, 8, (T, 8))
    ].int()
    lengths = torch.tensor([24, 13, 0], dtype=torch.int32)
    big2 = torch.full((30, D), float("nan"))
    big2[5:15] = torch.randn(10, D)
    eidx = torch.tensor([[0, 9, 10, -1, 11], [3, -5, 10, 2, 12], [20, 4, -1, 10, 1]], dtype=torch.int32)
    args = dict(
        q=torch.randn(T, H, D),
        kv=kv,
        indices=idx,
        topk_length=lengths,
        extra_kv=big2[5:15],
        extra_indices=eidx,
        extra_topk_length=None,
        attn_sink=torch.randn(H),
        softmax_scale=None,
    )
    args = to_device(args)
    if DEVICE != "cpu":  # keep the NaN neighbours on the device too
        bigd = big.to(DEVICE)
        big2d = big2.to(DEVICE)
        args["kv"], args["extra_kv"] = bigd[10 : 10 + N], big2d[5:15]
    for splits in (1, 3):
        out, lse = run_kernel(args, num_splits=splits)
        assert torch.isfinite(out).all() and not torch.isnan(lse).any()
        check_against_oracle(out, lse, args, f"sentinel splits={splits}")


def test_split_of_empty_rows_and_partial_rows():
    """More splits than blocks, rows whose only keys are in the last block, rows with no keys."""
    T, H, D, N, K = 4, 3, 64, 50, 64
    idx = torch.full((T, K), -1, dtype=torch.int32)
    idx[0, -1] = 7  # one key, in the last block
    idx[1, 0] = 3  # one key, in the first block
    idx[3] = torch.arange(K) % N  # full row
    args = to_device(
        dict(
            q=torch.randn(T, H, D),
            kv=torch.randn(N, D),
            indices=idx,
            topk_length=None,
            attn_sink=torch.tensor([0.5, float("inf"), float("-inf")]),
            softmax_scale=None,
        )
    )
    for splits in (1, 2, 4, 7, 32):
        out, lse = run_kernel(args, num_splits=splits)
        check_against_oracle(out, lse, args, f"splits={splits}")
        assert torch.all(out[2] == 0) and torch.all(torch.isneginf(lse[2]))


def test_split_cost_model(monkeypatch):
    """choose_num_splits is the fewest splits within SPLIT_TIE of the cheapest count of the cost model
    (brute force over every count, many shapes), and at the V4 decode shapes on 132 SMs it keeps the
    splits in one wave of programs: CSA T = 64 (128 programs, 18 key blocks) is not split (the old
    heuristic's 2 splits made 2 waves of the same 9 blocks plus 64 MiB of partials), HCA T = 16 takes
    4 splits (the old 5 made 160 programs: 2 waves), HCA T = 1 spreads its 130 blocks over most SMs."""
    dev = torch.device(DEVICE)
    monkeypatch.setattr(tsa, "_num_sms", lambda device: 132)
    choose = functools.partial(tsa.choose_num_splits, device=dev, block_h=64, head_dim=512)
    for programs in (1, 2, 3, 8, 32, 64, 128, 131, 133, 264, 4096):
        for key_blocks in (1, 2, 3, 18, 33, 130, 1000):
            s = choose(programs, key_blocks * 64, 64, key_blocks=key_blocks)
            costs = {n: tsa.split_cost_us(n, programs, key_blocks, 132) for n in range(1, min(64, key_blocks) + 1)}
            best = min(costs.values())
            assert costs[s] <= best * tsa.SPLIT_TIE, (programs, key_blocks, s)
            assert all(costs[n] > best * tsa.SPLIT_TIE for n in range(1, s)), (programs, key_blocks, s)
            assert 1 <= s <= min(tsa.MAX_SPLITS, key_blocks)
    assert choose(1, 64, 64) == 1 and choose(4096, 8320, 64) == 1  # one key block; prefill
    assert choose(128, 1152, 64, key_blocks=18) == 1  # CSA decode T = 64: one wave already
    assert choose(32, 8320, 64, key_blocks=130) == 4  # HCA decode T = 16: 128 programs, one wave
    s = choose(2, 8320, 64, key_blocks=130)  # HCA decode T = 1
    assert 16 <= s <= 66 and 2 * s <= 132, s
    # the SM count is part of the cached choice: a smaller GPU gets fewer splits at T = 16
    monkeypatch.setattr(tsa, "_num_sms", lambda device: 66)
    assert choose(32, 8320, 64, key_blocks=130) == 2


def test_combine_tiles_hold_every_split():
    """The combine loads all splits of a head in one tile: BLOCK_S >= num_splits for every count the
    launcher allows, the partial tile within COMBINE_TILE elements, the head dim covered."""
    for n in range(2, tsa.MAX_SPLITS + 1):
        for D in (8, 64, 100, 512, 576):
            bs, bd = tsa.combine_tiles(n, D)
            assert bs >= n and bs & (bs - 1) == 0 and bd & (bd - 1) == 0
            assert bs * bd <= max(tsa.COMBINE_TILE, bs * tsa.MIN_DOT) and bd <= max(16, triton.next_power_of_2(D))


def test_split_count_over_the_maximum_is_clipped():
    """An explicit num_splits above MAX_SPLITS (the combine's widest tile) runs as MAX_SPLITS splits."""
    g = torch.Generator().manual_seed(11)
    T, H, D, N, K = 2, 3, 32, 300, 200
    args = to_device(
        dict(
            q=torch.randn(T, H, D, generator=g),
            kv=torch.randn(N, D, generator=g),
            indices=torch.randint(-3, N + 3, (T, K), generator=g).int(),
            topk_length=None,
            attn_sink=torch.randn(H, generator=g),
            softmax_scale=None,
        )
    )
    out, lse = run_kernel(args, num_splits=1000)
    check_against_oracle(out, lse, args, "splits=1000")


def test_head_dim_tiles():
    assert tsa.head_dim_tiles(512) == (256, 256) and tsa.head_dim_tiles(576) == (512, 64)
    assert tsa.head_dim_tiles(1024) == (512, 512) and tsa.head_dim_tiles(256) == (256, 0)
    assert tsa.head_dim_tiles(100) == (64, 64) and tsa.head_dim_tiles(8) == (16, 0)


# ---------------------------------------------------------------------------------------------------
# FP8 pool (longattn.cache.Fp8KVPool, read by duck typing)
# ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("page", [1, 7, 64])
def test_fp8_pool_split_kv(dtype, page):
    """tests/ops/test_sparse_attention.py ``test_fp8_pool`` (an FP8 pool inside e4m3-NaN pages, a float
    second stream) with 3 splits."""
    args = fp8_pool_inputs(page, dtype, DEVICE)
    out, lse = run_kernel(args, num_splits=3)
    assert torch.isfinite(out).all()
    check(out, lse, args, f"fp8 page={page} {dtype}")


def test_fp8_pool_as_second_stream():
    g = torch.Generator().manual_seed(3)
    pool = fp8_pool(4, 16, g, device=DEVICE)
    T, H = 2, 64
    args = dict(
        q=torch.randn(T, H, 512, generator=g).bfloat16().to(DEVICE),
        kv=torch.randn(20, 512, generator=g).bfloat16().to(DEVICE),
        indices=torch.randint(0, 20, (T, 16), generator=g).int().to(DEVICE),
        topk_length=None,
        extra_kv=pool,
        extra_indices=torch.randint(-2, 66, (T, 40), generator=g).int().to(DEVICE),
        extra_topk_length=torch.tensor([40, 17], dtype=torch.int32, device=DEVICE),
        attn_sink=None,
        softmax_scale=None,
    )
    for splits in (1, 4):
        out, lse = run_kernel(args, num_splits=splits)
        check(out, lse, args, f"fp8 extra splits={splits}")


# ---------------------------------------------------------------------------------------------------
# larger shapes (interpreter: tens of seconds)
# ---------------------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_hca_decode_shape_vs_reference(dtype):
    """V4 HCA decode: 128 window keys + 8192 compressed keys, D = 512, H = 16, heuristic splits;
    compared with the reference backend (fp32 math) under the derived bound / 2x rule."""
    T, H, D = 2, 16, 512
    g = torch.Generator().manual_seed(1)
    kv, comp = torch.randn(256, D, generator=g), torch.randn(9000, D, generator=g)
    q = torch.randn(T, H, D, generator=g)
    win = torch.randint(0, 256, (T, 128), generator=g).int()
    cidx = torch.randint(-100, 9100, (T, 8192), generator=g).int()
    clen = torch.tensor([8192, 5000], dtype=torch.int32)
    args = to_device(
        dict(
            q=q.to(dtype),
            kv=kv.to(dtype),
            indices=win,
            topk_length=None,
            extra_kv=comp.to(dtype),
            extra_indices=cidx,
            extra_topk_length=clen,
            attn_sink=torch.randn(H, generator=g),
            softmax_scale=None,
        )
    )
    out, lse = longattn.sparse_attention(**args, backend="triton")
    ref_out, ref_lse = longattn.sparse_attention(
        **{k: (v.cpu() if isinstance(v, torch.Tensor) else v) for k, v in args.items()}, backend="reference"
    )
    torch.testing.assert_close(lse.cpu(), ref_lse, atol=2e-4, rtol=1e-5)
    tol = 2e-5 if dtype == torch.float32 else 2 * 2.0**-8
    torch.testing.assert_close(
        out.float().cpu(), ref_out.float(), atol=tol * float(ref_out.float().abs().max()), rtol=tol
    )


@pytest.mark.slow
def test_many_heads_long_rows_oracle():
    case = SparseCase(
        "h128_long",
        T=2,
        H=128,
        D=512,
        N=300,
        K=200,
        N2=80,
        K2=64,
        lengths="partial",
        sink="mixed",
        dtype=torch.bfloat16,
    )
    args = to_device(make_sparse_inputs(case))
    for splits in (None, 6):
        out, lse = run_kernel(args, num_splits=splits)
        check(out, lse, args, f"h128 long splits={splits}")


# ---------------------------------------------------------------------------------------------------
# non-finite logits (README.md "Edge semantics"; inputs and checks: tests/helpers/sparse.py)
# ---------------------------------------------------------------------------------------------------
@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # numpy: inf - inf, all-NaN reductions
@pytest.mark.parametrize("splits", [1, 2, 3])
def test_nonfinite_logits_splits(splits):
    """Interpreter tiles (BLOCK_N = 16: 3 key blocks per row), a NaN sink on head 3. A NaN key in the
    first, a middle or the last block, NaN in q, +inf / -inf logits early or late, NaN and +inf in
    different splits of one row, a row of only -inf logits, a NaN key past topk_length: the same
    classes (NaN / +inf / -inf / finite) as the rule, finite cells as the reference. The GPU tiles and
    MAX_SPLITS: tests/triton/test_triton_gpu_configs.py."""
    args, want = sparse_nonfinite_inputs()
    args["attn_sink"] = torch.tensor([0.5, -1.0, 2.0, float("nan")])
    ref_out, ref_lse = longattn.sparse_attention(**args, backend="reference")
    out, lse = run_kernel(to_device(args), num_splits=splits)
    check_sparse_nonfinite(out, lse, want, ref_out, ref_lse, sink_nan_heads=(3,), what=f"splits={splits}")


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_nan_key_is_not_an_empty_split():
    """A split whose partial is NaN was once taken for a split without keys (``l > 0`` is false for
    NaN): it got lse -inf and the combine returned a finite, wrong row. "No keys" is now the count of
    keys a split used."""
    g = torch.Generator().manual_seed(1)
    T, H, D, N, K = 2, 3, 64, 40, 48
    q, kv = torch.randn(T, H, D, generator=g), torch.randn(N, D, generator=g)
    idx = (torch.arange(T * K).view(T, K) % N).int()
    kv[5, 0] = float("nan")
    idx[0] = torch.where(idx[0] == 5, 6, idx[0])
    idx[0, 40] = 5  # token 0 uses the NaN row once, in its last block
    idx[1] = torch.where(idx[1] == 5, 6, idx[1])  # token 1 never does
    args = to_device(dict(q=q, kv=kv, indices=idx, topk_length=None, attn_sink=None, softmax_scale=None))
    for splits in (1, 2, 3):
        out, lse = run_kernel(args, num_splits=splits)
        assert torch.isnan(lse[0]).all() and torch.isnan(out[0]).all(), f"splits={splits}: {lse[0]}"
        assert torch.isfinite(lse[1]).all() and torch.isfinite(out[1]).all()
