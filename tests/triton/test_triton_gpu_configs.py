"""The tile configurations the launchers pick for a CUDA device, run under the interpreter.

On CPU tensors the launchers pick interpreter tiles (small key blocks, rank merges, 4 notional SMs);
a GPU gets other tiles (``default_config(..., torch.device("cuda"))``: 32-64 heads x 16-64 keys,
bitonic ``tl.topk`` merges, wider channel tiles), and with them other masks, loop trip counts and
head-block splits. Each op is run here with exactly those GPU tiles on V4-like shapes, against the same
references and tolerances as the op's own test file, so a tile-dependent bug shows before a GPU run.
"""

from __future__ import annotations

import pytest
import torch

from tests import oracle
from tests.helpers.compress import Cache, check_float_run, make_steps, run_both
from tests.helpers.device import CAN_RUN_TRITON, DEVICE, INTERPRET, TRITON_SKIP_REASON, to_device
from tests.helpers.indexer import assert_same
from tests.helpers.sparse import (
    backward_case,
    check_sparse,
    check_sparse_nonfinite,
    check_triton_backward,
    fp8_pool,
    sparse_nonfinite_inputs,
)
from tests.helpers.triton_kernels import check_pool_kernel as check_pool
from tests.helpers.triton_kernels import gpu_config
from tests.helpers.triton_kernels import run_sparse_kernel as run_kernel
from tests.ops.cases import SparseCase, make_sparse_inputs

pytestmark = pytest.mark.skipif(not CAN_RUN_TRITON, reason=TRITON_SKIP_REASON)

if CAN_RUN_TRITON:
    import longattn
    from longattn.ops.compress import triton_compress
    from longattn.ops.indexer import triton_indexer as ti
    from longattn.ops.sparse_attention import triton_sparse_attention as tsa

CUDA = torch.device("cuda")  # only passed to the config functions; nothing runs on it
# the architectures whose tiles differ: H100 / H200 (wgmma tiles), A100 / L40S (mma.sync), AMD MI300X
ARCHS = {"sm90": (9, 0), "sm80": (8, 0), "amd": (0, 0)}  # (0, 0): triton_utils.AMD_TILES


def arch_config(arch, module, fn, *args, **kw):
    """The tiles ``fn`` picks for ``arch``; skips when they are sm_90's (tested there)."""
    cfg = gpu_config(module, fn, *args, capability=ARCHS[arch], **kw)
    if arch != "sm90" and cfg == gpu_config(module, fn, *args, **kw):
        pytest.skip(f"{arch} uses the sm_90 tiles here ({cfg})")
    return cfg


@pytest.mark.parametrize(
    "case",
    [
        # D = 512 bf16: BLOCK_H 64, BLOCK_N 64, 2 stages -> two head blocks (the second partial), a
        # partial key block per stream
        SparseCase("v4_bf16_d512", T=2, H=80, D=512, N=90, K=70, N2=40, K2=21, dtype=torch.bfloat16, sink="finite"),
        # D = 128 bf16: BLOCK_H 64, BLOCK_N 64, 2 stages; H = 40: one partial head block
        SparseCase("bf16_d128", T=2, H=40, D=128, N=150, K=100, dtype=torch.bfloat16, lengths="partial"),
        # fp32: BLOCK_H 16, BLOCK_N 32
        SparseCase("fp32_d64", T=2, H=20, D=64, N=80, K=45, N2=10, K2=7, sink="mixed"),
    ],
    ids=str,
)
@pytest.mark.parametrize("arch", list(ARCHS))
def test_sparse_attention_gpu_tiles(case, arch):
    args = to_device(make_sparse_inputs(case))
    cdt = torch.float32 if case.dtype == torch.float32 else case.dtype
    cfg = arch_config(arch, tsa, tsa.default_config, case.H, case.D, cdt, CUDA)
    for splits in (1, 3, tsa.MAX_SPLITS):  # MAX_SPLITS: the combine's widest split axis, most splits empty
        out, lse = run_kernel(args, num_splits=splits, config=cfg)
        check_sparse(out, lse, args, f"{case.name} {cfg} splits={splits}", "triton")


def test_sparse_attention_fp8_gpu_tiles():
    g = torch.Generator().manual_seed(5)
    pool = fp8_pool(3, 64, g, device=DEVICE)
    T, H = 2, 72  # BLOCK_H 64: a full and a partial head block
    args = dict(
        q=torch.randn(T, H, 512, generator=g).bfloat16().to(DEVICE),
        kv=torch.randn(40, 512, generator=g).bfloat16().to(DEVICE),
        indices=torch.randint(-1, 40, (T, 24), generator=g).int().to(DEVICE),
        topk_length=None,
        extra_kv=pool,
        extra_indices=torch.randint(-2, 194, (T, 45), generator=g).int().to(DEVICE),
        extra_topk_length=torch.tensor([45, 30], dtype=torch.int32, device=DEVICE),
        attn_sink=torch.randn(H, generator=g).to(DEVICE),
        softmax_scale=None,
    )
    cfg = gpu_config(tsa, tsa.default_config, H, 512, torch.bfloat16, CUDA, fp8=True)
    for splits in (1, 2):
        out, lse = run_kernel(args, num_splits=splits, config=cfg)
        check_sparse(out, lse, args, f"fp8 {cfg} splits={splits}", "triton")


@pytest.mark.parametrize("arch", list(ARCHS))
def test_indexer_topk_gpu_tiles(arch):
    """64 heads x 128 dims (one tile), 32-entry blocks (AMD: 16), bitonic merges, paged keys, top-96."""
    g = torch.Generator().manual_seed(1)
    T, Hi, Di, page, topk = 2, 64, 128, 16, 96
    n_pages = 20
    q = torch.randint(-3, 4, (T, Hi, Di), generator=g).float()
    w = torch.randint(-2, 3, (T, Hi), generator=g).float()
    pool = torch.randint(-3, 4, (n_pages, page, Di), generator=g).float()
    table = torch.randperm(n_pages, generator=g)[:16].view(2, 8).int()
    table[1, 5] = -1  # an unmapped page: its entries are never selected
    seq = torch.tensor([0, 1], dtype=torch.int32)
    ve = torch.tensor([128, 101], dtype=torch.int32)
    ref = oracle.indexer_topk(q, w, pool, ve, topk, block_table=table, seq_ids=seq)
    cfg = arch_config(arch, ti, ti.default_config, Hi, Di, CUDA)
    got = ti.indexer_topk(
        *(x.to(DEVICE) for x in (q, w, pool, ve)), topk, block_table=table.to(DEVICE), seq_ids=seq.to(DEVICE),
        config=cfg, bitonic=True,
    )  # fmt: skip
    assert_same(got, ref, f"indexer {cfg}")


@pytest.mark.parametrize("ratio,overlap", [(4, True), (128, False)])
def test_compress_kv_gpu_tiles(ratio, overlap):
    """d = 512 (BLOCK_D 512, 8-slot tiles, 1024-wide ring copies), chunk and decode steps."""
    d = 512
    lengths = [21, 9] if ratio < 100 else [270, 140]
    seqs, steps = make_steps(lengths, ratio, overlap, d, seed=7, decode_tail=True,
                             max_chunk=9 if ratio < 100 else 90)  # fmt: skip
    cache = Cache(len(lengths), ratio, overlap, d, 16, max(lengths), seed=7)
    ref, got = run_both(
        cache,
        steps,
        "triton",
        config=gpu_config(triton_compress, triton_compress.default_config, d, ratio, 2 if overlap else 1, CUDA),
    )
    check_float_run(ref, got, seqs)


def test_compress_pool_gpu_tiles():
    g = torch.Generator().manual_seed(2)
    for S, ratio, overlap, d in [(70, 4, True, 512), (300, 128, False, 200)]:
        c = 2 if overlap else 1
        a = torch.randn(S, c * d, generator=g).bfloat16()
        b = torch.randn(S, c * d, generator=g).bfloat16()
        check_pool(
            a, b, ratio, overlap, config=gpu_config(triton_compress, triton_compress.pool_config, d, ratio, c, CUDA)
        )


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # numpy: inf - inf, all-NaN reductions
@pytest.mark.parametrize(
    "dtype,D",
    [(torch.float32, 64), (torch.float32, 512), (torch.bfloat16, 512)],
    ids=["fp32_d64", "fp32_d512", "bf16_d512"],
)
@pytest.mark.parametrize("arch", list(ARCHS))
def test_sparse_attention_nonfinite_gpu_tiles(dtype, D, arch):
    """The non-finite logit rule (tests/helpers/sparse.py ``sparse_nonfinite_inputs``) at the GPU
    tiles (fp32: 16 heads x 32 keys, 2 key blocks per row; AMD: 64 heads at D = 64, 16 at 512, x 16
    keys; bf16 D = 512: 16 heads x 64 keys, sm_80: x 32, AMD: x 16), one and several splits;
    MAX_SPLITS splits (most of them empty) on three tokens: a NaN key in the last block; +inf and
    all--inf heads; a +inf logit early and a NaN key late."""
    args, want = sparse_nonfinite_inputs(D=D, dtype=dtype)
    cfg = arch_config(arch, tsa, tsa.default_config, 4, D, dtype, CUDA)
    ref_out, ref_lse = longattn.sparse_attention(**args, backend="reference")
    rtol = 1e-5 if dtype == torch.float32 else 2.0**-7
    for splits in (1, 2) if dtype == torch.float32 else (2,):
        out, lse = run_kernel(to_device(args), num_splits=splits, config=cfg)
        check_sparse_nonfinite(out, lse, want, ref_out, ref_lse, rtol=rtol, what=f"{cfg} splits={splits}")
    if dtype == torch.float32:
        sub = [2, 5, 7]
        a = dict(args, q=args["q"][sub], indices=args["indices"][sub], topk_length=args["topk_length"][sub])
        out, lse = run_kernel(to_device(a), num_splits=tsa.MAX_SPLITS, config=cfg)
        check_sparse_nonfinite(out, lse, [want[t] for t in sub], ref_out[sub], ref_lse[sub], what="MAX_SPLITS")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("arch", list(ARCHS))
def test_sparse_attention_backward_gpu_tiles(arch, dtype):
    """The Triton backward at each GPU's tiles (64 heads x 16 keys on AMD and on sm_90 for 16-bit
    inputs, 32 heads on sm_80 for them, 16 for fp32 on NVIDIA): H = 80 is a full and a partial head
    block, D = 100 a full and a masked head-dim tile, 2-3 key blocks per stream, against the PyTorch
    backward, atomic and deterministic paths."""
    from longattn.ops.sparse_attention import triton_backward as tbw

    cfg = arch_config(arch, tbw, tbw.default_config, 80, 100, CUDA, dtype=dtype)
    check_triton_backward(backward_case(7, 3, 80, 100, 29, 31, 37, 21, "finite"), config=cfg, dtype=dtype)


@pytest.mark.skipif(not INTERPRET, reason="on a GPU the launchers' own tiles are the GPU tiles")
def test_gpu_tiles_differ_from_the_interpreters():
    """Guard: the configs above really are the GPU ones (else this file tests the interpreter tiles again)."""
    from longattn.ops.triton_utils import AMD_TILES

    assert ARCHS["amd"] == AMD_TILES
    assert gpu_config(tsa, tsa.default_config, 64, 512, torch.bfloat16, CUDA) != tsa.default_config(
        64, 512, torch.bfloat16, CUDA
    )
    assert gpu_config(ti, ti.default_config, 64, 128, CUDA) != ti.default_config(64, 128, CUDA)
    assert gpu_config(triton_compress, triton_compress.default_config, 512, 4, 2, CUDA) != (
        triton_compress.default_config(512, 4, 2, CUDA)
    )
    assert gpu_config(triton_compress, triton_compress.pool_config, 512, 128, 1, CUDA) != (
        triton_compress.pool_config(512, 128, 1, CUDA)
    )
