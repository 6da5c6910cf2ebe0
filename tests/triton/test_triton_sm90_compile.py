"""Offline compile of the Triton kernels for an H100/H200 (sm_90), an A100 (sm_80) and an L40S / RTX 4090
(sm_89), no GPU needed.

The interpreter never lowers a kernel, so a kernel that runs there can still fail to compile for a GPU
(an op without a lowering, a dot shape the tensor cores reject, shared memory overflow...). This test
compiles the main configurations down to cubin with the ptxas that ships in the triton wheel, in a
subprocess without TRITON_INTERPRET (under the interpreter ``@triton.jit`` gives no compilable
function), and checks registers / spills from ``ptxas -v`` (a budget per kernel), the shared memory a
block needs, and, on sm_90, what the PTX holds: wgmma for the tensor-core products and cp.async for the
pipelined gathers of the V4 tiles (so a regression to mma.sync or synchronous loads fails CI).
"""

from __future__ import annotations

import functools
import json
import os
import re
import subprocess
import sys

import pytest

from tests.helpers.device import HAS_TRITON

SM90_MAX_SHARED_PER_BLOCK = 227 * 1024  # H100 / H200: cudaDevAttrMaxSharedMemoryPerBlockOptin
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

pytestmark = pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed")


@functools.lru_cache(maxsize=None)
def compiled(arch) -> tuple:
    """compile_all(arch) in a subprocess without TRITON_INTERPRET; the records, printed for the log."""
    env = dict(os.environ)
    env.pop("TRITON_INTERPRET", None)
    env["PYTHONPATH"] = os.pathsep.join([os.path.join(ROOT, "python"), ROOT, env.get("PYTHONPATH", "")])
    code = f"import json; from tests.triton.sm90_compile import compile_all; print(json.dumps(compile_all({arch!r})))"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT, timeout=900)
    if res.returncode != 0 and ("GPUTarget" in res.stderr or "ASTSource" in res.stderr):
        pytest.skip(f"this triton has no offline compile API: {res.stderr[-300:]}")
    assert res.returncode == 0, res.stderr[-3000:]
    results = json.loads(res.stdout.strip().splitlines()[-1])
    for r in results:
        props = {k: r[k] for k in ("wgmma", "mma_sync", "cp_async", "tma", "mfma") if k in r}
        print(arch, r["name"], "| shared", r.get("shared"), "|", props, "|", r.get("ptxas", r.get("error", "")))
    return tuple(results)


def check_compiled(arch, max_shared: int) -> list:
    results = compiled(arch)
    failed = [r for r in results if not r["ok"]]
    assert not failed, "\n".join(f"{r['name']}: {r['error']}" for r in failed)
    # a launch needing more shared memory than a block may opt into fails only on the GPU (OutOfResources)
    too_big = [f"{r['name']}: {r['shared']} B" for r in results if r["shared"] > max_shared]
    assert not too_big, f"sm_{arch}: over the {max_shared} B of shared memory per block: {too_big}"
    over = [f"{r['name']}: {n} B > {spill_budget(arch, r['name'])} B" for r in results
            if (n := spill_bytes(r.get("ptxas", ""))) > spill_budget(arch, r["name"])]  # fmt: skip
    assert not over, f"sm_{arch}: register spills over budget: {over}"
    return list(results)


def by_prefix(results, prefix):
    found = [r for r in results if r["name"].startswith(prefix)]
    assert found, f"no compiled kernel named {prefix!r}"
    return found


def test_kernels_compile_for_sm90():
    results = check_compiled(90, SM90_MAX_SHARED_PER_BLOCK)
    # What the H200 figures rest on (ops/sparse_attention/README.md): a regression to mma.sync or to
    # synchronous gathers fails here, not only on a GPU.
    for prefix in ("sparse bf16 D=512 fp8=False", "sparse bf16 D=576", "sparse bf16 D=512 fp8=True"):
        for r in by_prefix(results, prefix):
            assert r["wgmma"] > 0 and r["mma_sync"] == 0, f"{r['name']}: wgmma expected, got {r}"
            assert r["cp_async"] > 0, f"{r['name']}: cp.async gathers expected (2 stages), got {r}"
    for prefix in ("sparse bf16 D=128", "indexer select keys", "indexer partial", "indexer logits", "indexer fp8"):
        for r in by_prefix(results, prefix):
            assert r["wgmma"] > 0, f"{r['name']}: wgmma expected, got {r}"
    # the backward's q.k^T and dout.k^T on 16-bit inputs (triton_backward.default_config: 64 heads)
    for r in by_prefix(results, "sparse backward bf16"):
        assert r["wgmma"] > 0 and r["dot_replication"] == 1, f"{r['name']}: wgmma, once, expected, got {r}"


def test_launches_as_the_jit_specialises_them_for_sm90():
    """The V4 sparse-attention launches exactly as the GPU builds them: the launcher run on CPU tensors
    (132 SMs, its own tiles, split count and arguments), each launch specialised by the JIT's own binder
    (16-B pointer alignment, integer % 16) and compiled (tests/triton/sm90_compile.jit_launches). The
    spill budgets of these are tight (SPARSE_D512_SPILL_BUDGETS, "jit ..."), and the FP8 pool's rows
    must arrive 16 bytes at a time: its e4m3 bytes through cp.async with the rest of the tile, its bf16
    rope values in vector loads, so that only the UE8M0 scale bytes are loaded one byte at a time."""
    results = [r for r in check_compiled(90, SM90_MAX_SHARED_PER_BLOCK)
               if r["name"].startswith("jit sparse ") and not r["name"].startswith("jit sparse backward")]  # fmt: skip
    assert len(results) == 4, [r["name"] for r in results]
    if any("skipped" in r for r in results):
        pytest.skip(results[0]["skipped"])
    for r in results:
        assert r["wgmma"] > 0 and r["mma_sync"] == 0 and r["cp_async"] > 0, r
    (fp8,) = by_prefix(results, "jit sparse CSA decode fp8-pool")
    (bf16,) = by_prefix(results, "jit sparse CSA decode bf16")
    assert fp8["ld_global_2b"] == 0, f"bf16 rope values loaded 2 bytes at a time: {fp8}"
    # 64 byte loads: the scale bytes of the [BLOCK_N, 512] tile (before: 128, with the e4m3 bytes)
    assert fp8["ld_global_1b"] <= 64 and fp8["cp_async"] > bf16["cp_async"] // 2, fp8


def test_backward_as_the_jit_specialises_it_for_sm90():
    """The sparse backward's launch at the V4-Flash prefill chunk (4,096 tokens, 64 heads, 128 + 512
    keys, bf16, atomic row gradients) as the launcher makes it and the JIT specialises it for sm_90
    (tests/triton/sm90_compile.jit_backward_launches; the launch bench/sm90_model.py prices):
    ``s`` / ``dp`` on wgmma, computed once; its gathers pipelined by cp.async (which the hand-written
    signature, without pointer alignment, does not get); no spills; and two CTAs per SM (<= 128
    registers a thread at 8 warps, <= half the shared memory), which the model assumes. Triton 3.6.0 /
    3.7.1 / 3.8.0: 121 / 113 / 128 registers, 96 KiB (3.9.0: 60 KiB)."""
    results = [r for r in check_compiled(90, SM90_MAX_SHARED_PER_BLOCK) if r["name"].startswith("jit sparse backward")]
    assert len(results) == 1, [r["name"] for r in results]
    (r,) = results
    if "skipped" in r:
        pytest.skip(r["skipped"])
    assert r["wgmma"] > 0 and r["mma_sync"] == 0 and r["dot_replication"] == 1 and r["cp_async"] > 0, r
    assert r["shared"] <= SM90_MAX_SHARED_PER_BLOCK // 2, r
    regs = re.search(r"Used (\d+) registers", r.get("ptxas", ""))
    assert regs is None or int(regs.group(1)) <= 65536 // (2 * 8 * 32), r


def test_split_kv_combine_is_one_pass_for_sm90():
    """Small-batch decode (issue 14): the HCA decode at T = 1 as the launcher plans it for 132 SMs splits
    its 8,320 keys (the cost model's choice) and its combine has no loop: a program loads every split's
    lse and every split's partial [BLOCK_S, BLOCK_D] at once (two dependent memory round trips, where the
    loop over the splits waited for two per split), 0 spills; the hand-written signature likewise. The
    CSA decode at T = 64 (128 programs, one wave) is not split, so it launches no combine."""
    results = check_compiled(90, SM90_MAX_SHARED_PER_BLOCK)
    if any("skipped" in r for r in results if r["name"].startswith("jit ")):
        pytest.skip("this triton's JIT binder differs")
    (hca,) = by_prefix(results, "jit sparse HCA decode bf16 H=128 128+8192 T=1")
    (combine,) = by_prefix(results, "jit combine HCA decode")
    splits = hca["grid"][2]
    assert 1 < splits <= 64 and hca["grid"][1] * splits <= 132, hca["grid"]  # one wave of programs
    assert combine["launch"]["BLOCK_S"] >= splits and combine["grid"][1] == 128, combine
    for r in (combine, *by_prefix(results, "combine_splits")):
        assert r["loops"] == 0 and spill_bytes(r["ptxas"]) == 0, r
    assert not [r for r in results if r["name"].startswith("jit combine CSA")]
    (csa,) = by_prefix(results, "jit sparse CSA decode bf16")
    assert csa["grid"][2] == 1, csa["grid"]


def test_index_key_kernels_as_the_jit_specialises_them_for_sm90():
    """The indexer's key kernels as the launchers launch them for the V4 CSA decode (64 tokens x 64 heads
    x 128 dims, 8192 entries; 132 SMs, the sm_90 tiles; specialised by the JIT's binder:
    tests/triton/sm90_compile.py jit_indexer_launches): the select path's key kernel over a paged bf16
    pool, a paged FP8 pool and flat bf16 keys, the fused path's partial kernel and the logits kernel
    over the paged bf16 pool. Each: wgmma, no spill, no 1- or 2-byte global load (the dim masks are
    written per 16-byte group, ``K_GROUP``), and the key tile arrives by cp.async of 16 bytes,
    pipelined (at least the [BLOCK_N, 128] tile's 16-byte chunks per thread). Measured with triton
    3.7.1, registers before -> after the bf16 keys' 16-byte loads: select paged 74 -> 74 (keys: 64 2-byte
    loads, no cp.async -> 8 cp.async of 16 B; q: 4 ld.global.v4), select flat 56 -> 47, fused partial
    165 -> 152, logits 124 -> 70; FP8 134 registers, 4 cp.async of 16 B. The top-k key kernels also
    have no integer divide (their page division is by the PAGE_SIZE constexpr; with a runtime page
    size, 8 emulated 64-bit divides in the bf16-pool kernel's PTX): select paged 74 -> 64, FP8 134 -> 80
    registers (triton 3.7.1). The select kernels' logits are [entries, heads] at 4 warps (one warp group:
    wgmma 64 x 64, the head sum a row sum), and the FP8 kernel's converted keys are the wgmma's A operand
    in registers (before: staged through shared memory as the B operand): FP8 80 -> 174 registers,
    759 -> 901 SASS instructions per 64-entry block, but 4 warps instead of 8 issue them (1,518 -> 901
    issue clk; triton 3.7.1)."""
    results = [r for r in check_compiled(90, SM90_MAX_SHARED_PER_BLOCK) if r["name"].startswith("jit indexer ")]
    if any("skipped" in r for r in results):
        pytest.skip(results[0]["skipped"])
    names = ("select keys bf16-pool", "select keys fp8-pool", "select keys bf16-flat", "fused partial bf16-pool",
             "logits bf16-pool")  # fmt: skip
    assert len(results) == len(names), [r["name"] for r in results]
    for name in names:
        (r,) = by_prefix(results, f"jit indexer {name}")
        assert r["wgmma"] > 0 and r["mma_sync"] == 0, r
        if name == "select keys fp8-pool":  # converted keys: wgmma's A operand straight from registers
            assert r["wgmma_a_regs"] == r["wgmma"], f"converted FP8 keys stored back to shared memory: {r}"
        assert spill_bytes(r["ptxas"]) == 0, r
        assert r["ld_global_1b"] == 0 and r["ld_global_2b"] == 0, f"keys or q loaded 1 or 2 bytes at a time: {r}"
        elem = 1 if "fp8" in name else 2
        launch = r["launch"]
        per_thread = launch["BLOCK_N"] * 128 * elem // (32 * launch["num_warps"])  # key tile bytes per thread
        if name == "select keys fp8-pool":  # the A operand's register layout: 8-byte row pieces per thread
            assert 8 * r["cp_async_8"] + 16 * r["cp_async_16"] >= per_thread > 0, f"key tile not by cp.async: {r}"
        else:
            assert 16 * r["cp_async_16"] >= per_thread > 0, f"key tile not copied 16 bytes at a time by cp.async: {r}"
        if not name.startswith("logits"):  # the top-k kernel divides by its PAGE_SIZE constexpr
            assert r["int_div"] == 0, f"an integer divide (emulated: ~25 instructions) in the key kernel: {r}"


def test_radix_select_compiles_pipelined_for_sm90():
    """The select path's radix select (``_select_keys_kernel``, replacing ``torch.topk`` over the int64
    sort keys) by its hand-written signature and as ``indexer_topk`` launches it for the V4 decode (its
    two stages: 2 sub-row programs per token, then one per token; 8 warps): no spill (but 16 B with
    triton 3.8.0, ``spill_budget``), its 256-bin
    histograms in shared memory (``atom.shared`` adds, no global atomics), a loop per radix pass (8)
    and the compaction pass, each pipelined by cp.async (SELECT_STAGES = 3: two blocks of 1,024 int64
    keys in flight, 16 KiB, + the histogram; before: 8 KiB and plain loads, an L2 wait per block). (Its
    key loads are 8-byte scalars, coalesced per warp: the per-entry visible-end mask keeps them from
    vectorising.)"""
    results = check_compiled(90, SM90_MAX_SHARED_PER_BLOCK)
    for r in (*by_prefix(results, "indexer select radix"), *by_prefix(results, "jit select radix")):
        if "skipped" in r:
            continue
        # 3.8 lowers histograms with loops
        assert spill_bytes(r["ptxas"]) <= spill_budget(90, r["name"]) and r["loops"] >= 64 // 8 + 1, r
        assert r["atom_shared"] > 0 and r["atom_global"] == 0 and r["shared"] <= 20 * 1024, r
        assert r["cp_async"] >= 9, f"a radix pass or the compaction not pipelined by cp.async: {r}"
    stages = by_prefix(results, "jit select radix")
    if "skipped" not in stages[0]:  # 64 tokens on 132 SMs: 2 sub-rows per token, then one program per token
        assert [r["grid"] for r in stages] == [[64, 2], [64, 1]], stages


@pytest.mark.parametrize("arch,max_shared", [(80, 163 * 1024), (89, 99 * 1024)], ids=["sm80", "sm89"])
def test_kernels_compile_for_ampere_and_ada(arch, max_shared):
    """A100 (sm_80) and L40S / RTX 4090 (sm_89): every kernel compiles with the launchers' tiles for
    that architecture, fits its shared memory (opt-in maximum per block) and spills nothing but a few
    bytes in the compressor (FP8 pool reads: sm_89 only, declined on sm_80). Tensor-core kernels use
    mma.sync there (no wgmma)."""
    results = check_compiled(arch, max_shared)
    for r in by_prefix(results, "sparse bf16") + by_prefix(results, "sparse backward bf16"):
        assert r["mma_sync"] > 0 and r["wgmma"] == 0, f"{r['name']}: mma.sync expected on sm_{arch}, got {r}"
    assert any(r["name"].startswith("sparse bf16 D=512 fp8=True") for r in results) == (arch >= 89)
    assert any(r["name"].startswith("indexer fp8 select keys") for r in results) == (arch >= 89)


def test_kernels_compile_for_amd_mi300x():
    """gfx942 (MI300X) through the triton wheel's AMD backend, offline to hsaco: every kernel compiles,
    fits the 64 KiB of LDS per workgroup, the tensor-core kernels use MFMA, no kernel spills a VGPR to
    scratch memory, and the bf16 sparse attention (forward and backward) and the indexer tiles compute no
    product twice (the AMD tiles' rule, triton_sparse_attention._amd_config; no AMD GPU has been
    measured). SGPR spills (into VGPR lanes)
    are printed, not budgeted. FP8 pool reads are declined on AMD GPUs (the record is e4m3fn; MI300's
    native FP8 is e4m3fnuz)."""
    results = check_compiled("gfx942", 64 * 1024)
    for prefix in ("sparse bf16", "sparse backward", "indexer select keys", "indexer partial"):
        for r in by_prefix(results, prefix):
            assert r["mfma"] > 0, f"{r['name']}: MFMA expected on gfx942, got {r}"
    # D = 576 (not a V4 shape): every repeat-free tile spills with triton 3.6.0 (74 VGPRs; 0 on 3.7-3.9);
    # the backward's 32- and 64-head tiles: 2 VGPRs with 3.6.0 (0 on 3.7-3.9; triton_backward.default_config)
    budgets = {"sparse bf16 D=576": 96, "sparse backward": 2}
    spilled = [f"{r['name']}: {r['vgpr_spills']}" for r in results
               if r["vgpr_spills"] > next((b for p, b in budgets.items() if r["name"].startswith(p)), 0)]  # fmt: skip
    assert not spilled, f"gfx942: VGPRs spilled to scratch: {spilled}"
    for r in by_prefix(results, "sparse bf16") + by_prefix(results, "sparse backward") + by_prefix(results, "indexer"):
        assert r["dot_replication"] == 1, f"{r['name']}: a product computed {r['dot_replication']} times"


# Spill budgets (bytes of spill stores; the hand-written signatures: triton 3.7.1, no JIT specialisation).
# Zero for every kernel but the forward sparse attention at D >= 512 with its 64-head tiles: there the
# [64, D] fp32 accumulator spills, and the tiles were still measured 2-2.8x faster on an H200 than the
# spill-free 32-head ones (triton_sparse_attention.default_config). A change that spills more fails.
SPARSE_D512_SPILL_BUDGETS = {
    # the hand-written signatures have no pointer alignment (unvectorised gathers, 4 cp.async): the
    # 256 + 256 head-dim halves (head_dim_tiles) spill more there (3.6.0 / 3.7.1 / 3.8.0: 3336 / 3794 /
    # 3932 B; one 512 tile: 2684 B on 3.7.1) and less in the aligned launches the GPU runs (below)
    "sparse bf16 D=512 fp8=False": 4224,
    "sparse bf16 D=576 fp8=False": 4352,  # 3920 / 4110 / 3862 B (split-KV, D = 576 = 512 + a 64-wide tail;
    # 5000 / 5838 / 4528 B while the split path counted its valid keys in the key loop)
    "sparse bf16 D=512 fp8=True": 3968,  # 2544 / 3616 / 3624 B (one 512 tile: 2922 B on 3.7.1)
    # the launches as the JIT specialises them (measured with triton 3.6.0 / 3.7.1 / 3.8.0; 3.9.0's
    # wheel has no ptxas): what the GPU runs. One 512 tile -> the 256 + 256 halves -> the split path
    # without its in-loop key count, and the cost model's split choice (CSA T = 64: one split):
    "jit sparse CSA decode bf16": 320,  # 628 / 444 / 464 -> 372 / 420 / 340 -> 220 / 80 / 280 B
    "jit sparse CSA decode fp8-pool": 352,  # 408 / 276 / 384 -> 324 / 288 / 340 -> 332 / 256 / 296 B
    # -> 348 / 272 / 320 B since the e4m3 NaN-code fix-up runs only under the interpreter (2026-12-06: the
    # hot loop's SASS 2,124 / 1,751 / 1,669 -> 1,896 / 1,405 / 1,395 instructions)
    "jit sparse prefill V4-Pro": 320,  # 232 / 160 / 292 -> 220 / 80 / 280 B
    "jit sparse HCA decode bf16": 256,  # split-KV (33 splits): 420 B on 3.7.1 -> 220 / 100 / 244 B
    # (no budget, 0 B: the FP8 index-key select kernel by its hand-written signature, no pointer
    # alignment, e4m3 bytes loaded one at a time: 8 B with 3.7.1 at 255 registers, 4 B before its q mask
    # went per 16-dim group, 0 B at 113 since its page division is by a constexpr, 192 B since its logits
    # are [entries, heads] at 4 warps, 0 B on 3.6.0 / 3.7.1 / 3.8.0 since its 64-entry blocks look their
    # page up once (BLOCK_PAGE, 2026-12-06: 214 / 152 / 142 registers); as the JIT launches it, 0 B at 144
    # registers on 3.7.1 since it drops the head mask for V4's 64 heads (HEADS_FULL), 167 before, 174
    # before BLOCK_PAGE; asserted)
    # the radix select, its passes pipelined (3 stages): 0 B with 3.6.0 / 3.7.1 / 3.9.0 (110 registers on
    # 3.7.1); with 3.8.0 ptxas keeps it to 64 registers and spills 16 B in the launches as the JIT
    # specialises them (hand-written: 0 B). With 2 stages 3.7.1 spilled 16-24 B (80 registers).
    "jit select radix": 16,
}


# The compressor kernels spill a few bytes on some triton releases and architectures (4 B on sm_80 /
# sm_89 with 3.6.0 and 3.7.1; 12 B on sm_90 with the JIT's specialisation): 16 B each, anywhere.
COMPRESS_SPILL_BUDGETS = {"compress_kv": 16}


# sm_80 / sm_89: the fused indexer's bitonic merge of two 512-key lists spills 48 B with triton 3.9; the
# radix select (the select path's top-k) 8 B on sm_89 with triton 3.8.0 before its passes were pipelined
# (0 B since, and with 3.6.0 / 3.7.1). The sparse backward's fp32 tile (16 x 16 x 64, 8 warps, FMA dots;
# first compiled with fp32 pointers on 2026-12-06): 4 B on sm_80 / sm_89 with 3.7.1 (ptxas holds it to 128
# registers), 20 B on sm_80 / sm_89 with 3.9.0.
# The FP8 index-key select kernel (8 warps) on sm_89 with triton 3.6.0: 4 B since its blocks look their
# page up once (BLOCK_PAGE, 2026-12-06; 0 B on 3.7-3.9 and before).
OTHER_ARCH_SPILL_BUDGETS = {"indexer merge top-512": 64, "indexer select radix": 16, "sparse backward fp32": 32,
                            "indexer fp8 select keys": 4}  # fmt: skip


def spill_budget(arch, name: str) -> int:
    budgets = dict(COMPRESS_SPILL_BUDGETS, **(SPARSE_D512_SPILL_BUDGETS if arch == 90 else OTHER_ARCH_SPILL_BUDGETS))
    return next((b for prefix, b in budgets.items() if name.startswith(prefix)), 0)


def spill_bytes(ptxas: str) -> int:
    m = re.search(r"(\d+) bytes spill stores", ptxas)
    return int(m.group(1)) if m else 0
