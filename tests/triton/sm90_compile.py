"""Offline compile of the Triton kernels for an NVIDIA architecture (``compile_all(arch)``: 90 = sm_90a,
the H100 / H200; 80 = the A100; 89 = the L40S / RTX 4090), run by tests/triton/test_triton_sm90_compile.py
in a subprocess without TRITON_INTERPRET (a non-test module, so the subprocess imports no test module).
Each record: name, ok / error, shared bytes, the ptxas register / spill line, and what the PTX holds
(wgmma / mma.sync / cp.async / TMA bulk-copy instruction counts)."""

from __future__ import annotations

import os
import subprocess


def _sparse(tl, tsa, dt, D, cfg, fp8=False, split=False):
    d0, d1 = tsa.head_dim_tiles(D)
    ptr = {"bf16": "*bf16", "fp32": "*fp32"}[dt]
    types = dict(p_q=ptr, p_kv="*u8" if fp8 else ptr, p_kv16="*bf16" if fp8 else ptr, p_idx="*i32", p_len="*i32",
                 p_ekv=ptr, p_ekv16=ptr, p_eidx="*i32", p_elen="*i32", p_sink="*fp32", p_out=ptr, p_lse="*fp32",
                 p_ws_out="*fp32", p_ws_lse="*fp32", qk_scale="fp32", num_slots="i64", num_slots2="i64")  # fmt: skip
    cx = dict(
        HAS_LEN=True,
        HAS_EXTRA=True,
        HAS_ELEN=True,
        HAS_SINK=True,
        KV_FP8=fp8,
        EKV_FP8=False,
        SPLIT=split,
        BLOCK_H=cfg["BLOCK_H"],
        BLOCK_N=cfg["BLOCK_N"],
        BLOCK_D0=d0,
        BLOCK_D1=max(d1, 16),
        HAS_TAIL=d1 > 0,
        CDT=tl.float32 if dt == "fp32" else tl.bfloat16,
        DOT_PREC="ieee" if dt == "fp32" else None,
        stride_qd=1,
        stride_kv_d=1,
        stride_ekv_d=1,
        stride_od=1,
        stride_ik=1,
        stride_eik=1,
        stride_lh=1,
    )
    return types, cx, cfg["num_warps"], cfg["num_stages"]


def ptx_properties(ptx: str) -> dict:
    """Instruction counts that tell how a kernel computes and moves data."""
    import re

    bulk = ptx.count("cp.async.bulk")
    narrow = {n: len(re.findall(rf"\bld\.global(?:\.[a-z]+)*\.[bus]{8 * n}\b", ptx)) for n in (1, 2)}
    # 16-byte global reads: vector loads of four 32-bit words, cp.async copies of 16 bytes (cp-size 16);
    # and cp.async copies of 8 bytes ("cp.async.ca.shared.global [dst], [src], size")
    v4 = len(re.findall(r"\bld\.global(?:\.[\w:]+)*\.v4\.[bfsu]32\b", ptx))
    copy = r"\bcp\.async\.c[ag]\.shared\.global(?:\.[\w:]+)*\s*\[[^]]*\],\s*\[[^]]*\],\s*"
    cp16, cp8 = (len(re.findall(copy + size + r"\b", ptx)) for size in ("(?:0x10|16)", "(?:0x8|8)"))
    # loops: branches back to a label above them (PTX is emitted in block order)
    seen, loops = set(), 0
    for line in ptx.splitlines():
        label = re.match(r"^\s*(\$L__\w+):", line)
        if label:
            seen.add(label.group(1))
        target = re.search(r"\bbra(?:\.uni)?\s+(\$L__\w+);", line)
        loops += bool(target and target.group(1) in seen)
    # wgmma whose A operand is registers ({acc}, {a0..a3}, desc-b) rather than a shared-memory descriptor
    wgmma_a_regs = len(re.findall(r"\bwgmma\.mma_async[^;]*\}\s*,\s*\{", ptx))
    return dict(wgmma=ptx.count("wgmma.mma_async"), wgmma_a_regs=wgmma_a_regs, mma_sync=ptx.count("mma.sync"),
                loops=loops,
                cp_async=ptx.count("cp.async") - bulk - ptx.count("cp.async.wait") - ptx.count("cp.async.commit"),
                tma=bulk, ld_global_1b=narrow[1], ld_global_2b=narrow[2], ld_global_v4=v4,
                cp_async_16=cp16, cp_async_8=cp8,
                atom_shared=len(re.findall(r"\b(?:atom|red)(?:\.\w+)*\.shared\b", ptx)),
                atom_global=len(re.findall(r"\b(?:atom|red)(?:\.\w+)*\.global\b", ptx)),
                int_div=len(re.findall(r"\b(?:div|rem)(?:\.\w+)*\.[su](?:32|64)\b", ptx)))  # fmt: skip


def amdgcn_properties(asm: str) -> dict:
    """MFMA (matrix core) instruction count and the compiler's spill counts: VGPRs spilled to scratch
    (memory: what costs) and SGPRs spilled (into VGPR lanes by v_writelane, no memory traffic while
    VGPRs are left), with the registers a wave holds (vgprs counts the AGPRs of the unified file)."""
    import re

    def total(field):
        return sum(int(n) for n in re.findall(rf"\.{field}:\s*(\d+)", asm))

    vgpr_spills, sgpr_spills = total("vgpr_spill_count"), total("sgpr_spill_count")
    return dict(
        mfma=len(re.findall(r"\bv_mfma_", asm)),
        vgpr_spills=vgpr_spills,
        sgpr_spills=sgpr_spills,
        vgprs=total("vgpr_count"),
        agprs=total("agpr_count"),
        ptxas=f"{vgpr_spills} VGPRs spilled to scratch, {sgpr_spills} SGPRs spilled",
    )


def dot_replication(ttgir: str) -> int:
    """How many warps compute each element of a matrix product (the largest over the kernel's dots;
    1: none computed twice), from the TTGIR's MMA layouts: a layout's warps cover warpsPerCTA x the
    instruction's rows / columns per warp (16 rows on NVIDIA), so a product with fewer rows or columns
    than its warps cover is computed once per covering (e.g. Q.K^T of 64 heads with 8 warps stacked
    along the rows, as Triton lays out a dot whose result feeds another: 2 warp groups, each all 64)."""
    import re

    layouts = {}
    for m in re.finditer(r"^(#\w+) = #ttg\.(?:nvidia_mma|amd_mfma)<\{([^}]*)\}>", ttgir, re.M):
        warps = re.search(r"warpsPerCTA = \[(\d+), (\d+)\]", m.group(2))
        instr = re.search(r"instrShape = \[(\d+), (\d+)", m.group(2))
        if warps and instr:
            layouts[m.group(1)] = (int(warps[1]), int(warps[2]), int(instr[1]), int(instr[2]))
    worst = 1
    for m in re.finditer(r"(?:tt\.dot|ttng\.warp_group_dot)\b[^\n]*?-> tensor<(\d+)x(\d+)x\w+, (#\w+)>", ttgir):
        if m.group(3) in layouts:
            wm, wn, im, inn = layouts[m.group(3)]
            worst = max(worst, max(1, wm * im // int(m.group(1))) * max(1, wn * inn // int(m.group(2))))
    return worst


def compile_all(arch=90) -> list:
    """Compile every configuration for sm_<arch>; returns [{name, ok, error?, shared?, ptxas?, wgmma?,
    mma_sync?, cp_async?, tma?}] (run with TRITON_INTERPRET unset)."""
    import re
    import tempfile

    import torch
    import triton
    import triton.language as tl
    from longattn.backends.triton import FP8_MIN_CAPABILITY
    from longattn.ops.append import triton_append as ta
    from longattn.ops.combine import triton_combine as tc
    from longattn.ops.compress import triton_compress as tcp
    from longattn.ops.indexer import triton_indexer as ti
    from longattn.ops.sparse_attention import triton_sparse_attention as tsa
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    amd = isinstance(arch, str)  # e.g. "gfx942" (MI300X): the AMD backend, hsaco, no ptxas
    target = GPUTarget("hip", arch, 64) if amd else GPUTarget("cuda", arch, 32)
    capability = (0, 0) if amd else (arch // 10, arch % 10)  # AMD: no wgmma / e4m3 path of NVIDIA's
    ptx_arch = "sm_90a" if arch == 90 else f"sm_{arch}"
    ptxas = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")
    cuda = torch.device("cuda")
    results = []

    def build(name, fn, types, constexprs, num_warps, num_stages, attrs=None, signature=None):
        sig = signature or {a: ("constexpr" if a in constexprs else types.get(a, "i32")) for a in fn.arg_names}
        rec = {"name": name}
        try:
            k = triton.compile(
                ASTSource(fn, sig, constexprs, attrs),
                target=target,
                options=dict(num_warps=num_warps, num_stages=num_stages),
            )
            rec["ok"] = True
            rec["shared"] = k.metadata.shared
            rec["dot_replication"] = dot_replication(k.asm["ttgir"])
            if amd:
                rec.update(amdgcn_properties(k.asm["amdgcn"]))
            else:
                rec.update(ptx_properties(k.asm["ptx"]))
            if not amd and os.path.exists(ptxas):
                with tempfile.NamedTemporaryFile("w", suffix=".ptx", delete=False) as f:
                    f.write(k.asm["ptx"])
                r = subprocess.run(
                    [ptxas, f"-arch={ptx_arch}", "-v", f.name, "-o", os.devnull], capture_output=True, text=True
                )
                os.unlink(f.name)
                rec["ptxas"] = re.sub(
                    r"\s+", " ", " ".join(ln for ln in r.stderr.splitlines() if "registers" in ln or "spill" in ln)
                )
        except Exception as exc:  # noqa: BLE001 - reported by the test
            rec["ok"] = False
            rec["error"] = f"{type(exc).__name__}: {str(exc)[:2000]}"
        results.append(rec)

    for dt, D, fp8, split in [
        ("bf16", 512, False, False),
        ("bf16", 576, False, True),
        ("bf16", 512, True, False),
        ("bf16", 128, False, False),
        ("fp32", 64, False, True),
        ("fp32", 512, False, True),  # AMD only: fp32 compute's own tiles there (NVIDIA: the fp32 D = 64 ones)
    ]:
        if dt == "fp32" and D > 64 and not amd:
            continue
        if fp8 and capability < FP8_MIN_CAPABILITY:  # declined there (backends.triton.fp8_pool_problem)
            continue
        cfg = tsa.default_config(128, D, torch.float32 if dt == "fp32" else torch.bfloat16, cuda, fp8, capability)
        build(
            f"sparse {dt} D={D} fp8={fp8} split={split} {cfg}",
            tsa._sparse_attn_fwd_kernel,
            *_sparse(tl, tsa, dt, D, cfg, fp8, split),
        )
    from longattn.ops.sparse_attention import triton_backward as tbw

    for dt, D, atomic in [("bf16", 512, True), ("bf16", 576, False), ("bf16", 128, True), ("fp32", 512, True)]:
        ptr = {"bf16": "*bf16", "fp32": "*fp32"}[dt]
        cdt = torch.bfloat16 if dt == "bf16" else torch.float32
        bcfg = tbw.default_config(128, D, cuda, capability, cdt)
        build(
            f"sparse backward {dt} D={D} atomic={atomic} {bcfg}",
            tbw._sparse_attn_bwd_kernel,
            dict(
                p_q=ptr,
                p_do=ptr,
                p_L="*fp32",
                p_lse="*fp32",
                p_delta="*fp32",
                p_dlse="*fp32",
                p_dq="*fp32",
                p_kv=ptr,
                p_idx="*i32",
                p_len="*i32",
                p_kv2=ptr,
                p_idx2="*i32",
                p_len2="*i32",
                p_dkv="*fp32",
                p_dkv2="*fp32",
                p_ws="*fp32",
                scale="fp32",
                t_base="i64",
                num_slots="i64",
                num_slots2="i64",
            ),  # fmt: skip
            dict(
                HAS_LEN=True,
                HAS_EXTRA=True,
                HAS_ELEN=True,
                HAS_DLSE=True,
                ATOMIC=atomic,
                BLOCK_H=bcfg["BLOCK_H"],
                BLOCK_N=bcfg["BLOCK_N"],
                BLOCK_D=bcfg["BLOCK_D"],
                CDT=tl.bfloat16 if dt == "bf16" else tl.float32,
                stride_qd=1,
                stride_dod=1,
                stride_kd=1,
                stride_k2d=1,
                stride_ik=1,
                stride_i2k=1,
            ),  # fmt: skip
            bcfg["num_warps"],
            1,
        )
    build(
        "combine_splits",
        tsa._combine_splits_kernel,
        dict(p_ws_out="*fp32", p_ws_lse="*fp32", p_sink="*fp32", p_out="*bf16", p_lse="*fp32"),
        dict(HAS_SINK=True, BLOCK_S=64, BLOCK_D=64, stride_od=1, stride_lh=1),
        4,
        1,
    )
    build(
        "merge_attention_states",
        tc._merge_states_kernel,
        dict(p_oa="*bf16", p_la="*fp32", p_ob="*bf16", p_lb="*fp32", p_out="*bf16", p_lse="*fp32"),
        dict(BLOCK_H=16, BLOCK_D=128),
        4,
        1,
    )
    build(
        "apply_attention_sink",
        tc._apply_sink_kernel,
        dict(p_o="*bf16", p_lse="*fp32", p_sink="*fp32", p_out="*bf16"),
        dict(BLOCK_H=16, BLOCK_D=128),
        4,
        1,
    )
    icfg = ti.default_config(64, 128, cuda, capability)
    itypes = dict(
        p_q="*bf16",
        p_w="*fp32",
        p_k="*bf16",
        p_ks="*fp32",
        p_bt="*i32",
        p_seq="*i32",
        p_vis="*i32",
        p_ws="*i64",
        p_out_idx="*i32",
        p_out_len="*i32",
        p_ws_in="*i64",
        p_ws_out="*i64",
        p_out="*fp32",
    )

    def indexer_partial(name, cfg, fp8=False, **mode):  # the partial kernel over paged bf16 / FP8 keys, top-512
        cx = dict(PAGED=True, FINAL=False, TOPK_P2=512, BLOCK_HI=cfg["BLOCK_HI"], BLOCK_DI=cfg["BLOCK_DI"],
                  BLOCK_N=cfg["BLOCK_N"], ONE_TILE=True, CDT=tl.bfloat16, DOT_PREC=None,
                  stride_qd=1, stride_kd=1, KEY_FP8=fp8, K_ALIGN16=True, K_GROUP=16 if fp8 else 8,
                  PAGE_SIZE=64, BLOCK_PAGE=bool(mode.get("KEYS_ONLY")),
                  HEADS_FULL=bool(mode.get("KEYS_ONLY")))  # fmt: skip
        # BLOCK_PAGE: the select path's key launch on 64-entry pages looks a block's page up once;
        # and, with V4's 64 index heads filling its head tile, drops the head mask (HEADS_FULL)
        types = dict(itypes, p_k="*u8") if fp8 else itypes
        build(f"{name} {cfg}", ti._indexer_topk_partial_kernel, types, dict(cx, **mode), cfg["num_warps"],
              cfg["num_stages"])  # fmt: skip

    indexer_partial("indexer partial top-512 paged", icfg, TO_SLOTS=True, BITONIC=True)
    scfg = ti.select_config(64, 128, cuda, capability)
    indexer_partial("indexer select keys paged", scfg, TO_SLOTS=False, BITONIC=False,
                    KEYS_ONLY=True)  # fmt: skip
    if capability >= FP8_MIN_CAPABILITY:  # FP8 index keys: declined below sm_89 and on AMD (indexer/support.py)
        indexer_partial("indexer fp8 partial top-512 paged", icfg, fp8=True, TO_SLOTS=True, BITONIC=True)
        indexer_partial("indexer fp8 select keys paged", scfg, fp8=True, TO_SLOTS=False,
                        BITONIC=False, KEYS_ONLY=True)  # fmt: skip
        build(
            "indexer fp8 logits",
            ti._indexer_logits_kernel,
            dict(itypes, p_k="*u8"),
            dict(
                PAGED=False,
                BLOCK_HI=64,
                BLOCK_DI=128,
                BLOCK_N=icfg["BLOCK_N"],
                CDT=tl.bfloat16,
                DOT_PREC=None,
                KEY_FP8=True,
                K_ALIGN16=True,
                K_GROUP=16,
                HEADS_FULL=True,
            ),  # fmt: skip
            icfg["num_warps"],
            1,
        )
    select_types = dict(itypes, p_keys="*i64", p_best="*i64", stride_keys_t="i64", stride_best_t="i64",
                        stride_best_r="i64", num_entries="i64", span="i64")  # fmt: skip
    select_cx = dict(HAS_VIS=True, TOPK_P2=512, BLOCK=ti.SELECT_BLOCK, DIGIT_BITS=ti.SELECT_DIGIT_BITS)
    build("indexer select radix top-512", ti._select_keys_kernel, select_types, select_cx, 8, 1)
    # the last select launch writes the indices itself (slots through the block table)
    build("indexer select radix write top-512", ti._select_keys_kernel, select_types,
          dict(select_cx, FINAL=True, PAGED=True, TO_SLOTS=True), 8, 1)  # fmt: skip
    build(
        "indexer merge top-512",
        ti._indexer_topk_merge_kernel,
        itypes,
        dict(FANIN_C=ti.FANIN, PAGED=True, FINAL=True, TO_SLOTS=True, TOPK_P2=512, BITONIC=True),
        4,
        1,
    )
    build(
        "indexer logits",
        ti._indexer_logits_kernel,
        itypes,
        dict(
            PAGED=False,
            BLOCK_HI=64,
            BLOCK_DI=128,
            BLOCK_N=icfg["BLOCK_N"],
            CDT=tl.bfloat16,
            DOT_PREC=None,
            KEY_FP8=False,
            K_ALIGN16=True,
            K_GROUP=8,
            HEADS_FULL=True,
        ),  # fmt: skip
        icfg["num_warps"],
        1,
    )
    # cache writes: append_kv (bf16 rows into a bf16 pool / fp32 rows into a bf16 pool / FP8 records)
    for mode, src, dst in [
        (ta.COPY_BITS, "*i16", "*i16"),
        (ta.TO_BF16, "*fp32", "*i16"),
        (ta.TO_F16, "*bf16", "*fp16"),
    ]:
        bt, bd = ta._tiles(512)
        build(
            f"append_kv float mode={mode} {src}->{dst} BLOCK_T={bt} BLOCK_D={bd}",
            ta._append_float_kernel,
            dict(p_rows=src, p_slots="*i64", p_pool=dst, stride_rt="i64", stride_pr="i64"),
            dict(MODE=mode, BLOCK_T=bt, BLOCK_D=bd, stride_rd=1, stride_pd=1, stride_s=1),
            4,
            1,
        )
    build(
        "append_kv fp8 record",
        ta._append_fp8_kernel,
        dict(p_rows="*bf16", p_slots="*i32", p_u8="*u8", p_i16="*i16"),
        dict(stride_rd=1, stride_s=1),
        4,
        1,
    )
    # compress_kv: CSA (ratio 4, overlap, d = 512, bf16 and FP8 out), HCA (ratio 128, d = 512),
    # indexer compressor (ratio 4, overlap, d = 128)
    for ratio, overlap, d, out in [(4, True, 512, "bf16"), (4, True, 512, "fp8"), (128, False, 512, "bf16"),
                                   (4, True, 128, "bf16")]:  # fmt: skip
        c = 2 if overlap else 1
        cfg = tcp.default_config(d, ratio, c, cuda)
        kind = tcp.OUT_FP8 if out == "fp8" else tcp.OUT_BF16
        build(
            f"compress_kv ratio={ratio} overlap={overlap} d={d} out={out} {cfg}",
            tcp._compress_kv_kernel,
            dict(
                p_a="*bf16",
                p_b="*bf16",
                p_pos="*i32",
                p_rows="*i32",
                p_state="*fp32",
                p_sbt="*i32",
                p_out="*u8" if out == "fp8" else "*bf16",
                p_out16="*i16",
                p_obt="*i32",
                p_w="*fp32",
                p_freq="*fp32",
                eps="fp32",
            ),  # fmt: skip
            dict(
                RATIO=ratio,
                C=c,
                D=d,
                R=32,
                OUT_KIND=kind,
                BLOCK_S=cfg["BLOCK_S"],
                BLOCK_D=triton.next_power_of_2(d),
                BLOCK_K=cfg["BLOCK_K"],
                BLOCK_RW=cfg["BLOCK_RW"],
                BLOCK_W=cfg["BLOCK_W"],
                stride_ac=1,
                stride_bc=1,
                stride_pos=1,
                stride_rows=1,
                stride_sbt_p=1,
                stride_obt_p=1,
                stride_w=1,
                stride_f=1,
            ),  # fmt: skip
            cfg["num_warps"],
            1,
        )
    for ratio, c, dt in [(4, 2, "*bf16"), (128, 1, "*bf16"), (4, 2, "*fp32")]:
        cfg = tcp.pool_config(512, ratio, c, cuda)
        build(
            f"compress_pool ratio={ratio} c={c} {dt} {cfg}",
            tcp._compress_pool_kernel,
            dict(p_a=dt, p_b=dt, p_out="*fp32", d="i32"),
            dict(
                RATIO=ratio, C=c, BLOCK_S=cfg["BLOCK_S"], BLOCK_C=cfg["BLOCK_C"], stride_ac=1, stride_bc=1, stride_od=1
            ),  # fmt: skip
            cfg["num_warps"],
            1,
        )
    if arch == 90:
        for name, fn, grid, args, kwargs in jit_launches(tsa) + jit_indexer_launches(ti) + jit_backward_launches():
            jit = jit_specialisation(fn, args, kwargs, target)
            if jit is None:
                results.append({"name": f"jit {name}", "ok": True, "skipped": "this triton's JIT binder differs"})
                continue
            signature, constexprs, attrs, options = jit
            build(f"jit {name}", fn, None, constexprs, options.num_warps, options.num_stages, attrs, signature)
            results[-1]["grid"] = list(grid)
            results[-1]["launch"] = {
                k: v for k, v in kwargs.items() if k in ("BLOCK_N", "BLOCK_DI", "BLOCK_S", "BLOCK_D", "num_warps")
            }
    return results


# ---------------------------------------------------------------------------------------------------
# The launchers' real launches: the V4 cases run through the launcher on CPU tensors (the kernel
# objects swapped for recorders, 132 SMs as on an H200), each launch then specialised exactly as
# JITFunction.run does it (pointer alignment, integer % 16 / == 1, do_not_specialize honoured) and
# compiled. What the GPU runs, unlike compile_all's hand-written signatures (no specialisation).
# ---------------------------------------------------------------------------------------------------
class _Recorder:
    """Stands in for a JITFunction in its module: ``kernel[grid](*args, **kwargs)`` records the launch."""

    def __init__(self, fn, launches):
        self.fn, self.launches = fn, launches

    def __getitem__(self, grid):
        return lambda *args, **kwargs: self.launches.append((self.fn, tuple(grid), args, kwargs))


def captured_launches(module, kernel_names, call) -> list:
    """[(fn, grid, args, kwargs)] of the launches ``call()`` makes of ``module``'s kernels."""
    launches = []
    saved = {n: getattr(module, n) for n in kernel_names}
    try:
        for n in kernel_names:
            setattr(module, n, _Recorder(saved[n], launches))
        call()
    finally:
        for n, fn in saved.items():
            setattr(module, n, fn)
    return launches


def jit_launches(tsa) -> list:
    """[(name, fn, grid, args, kwargs)]: the sparse-attention launches of the V4 decode and prefill cases
    (bench/triton_grid.py's) with the launcher's own tiles, split count and arguments: the forward
    kernel ("sparse <case>") and, where the launcher splits the keys, the combine ("combine <case>")."""
    import functools

    import torch
    from longattn.cache import Fp8KVPool

    cuda = torch.device("cuda")  # only handed to default_config(): no CUDA call is made
    sms = tsa._num_sms
    tsa._num_sms = lambda device: 132  # the split heuristic sees an H200
    out = []
    try:
        for name, T, H, window, keys, pool in [
            ("sparse CSA decode bf16 H=128 128+1024 T=64", 64, 128, 128, 1024, "bf16"),
            ("sparse CSA decode fp8-pool H=128 128+1024 T=64", 64, 128, 128, 1024, "fp8"),
            ("sparse prefill V4-Pro H=128 128+1024 T=2048", 2048, 128, 128, 1024, "bf16"),
            ("sparse HCA decode bf16 H=128 128+8192 T=1", 1, 128, 128, 8192, "bf16"),
        ]:
            D = 512
            q = torch.empty(T, H, D, dtype=torch.bfloat16)
            kv = torch.empty(4 * window, D, dtype=torch.bfloat16)
            comp = (Fp8KVPool.empty(4 * keys // 64, 64) if pool == "fp8"
                    else torch.empty(4 * keys, D, dtype=torch.bfloat16))  # fmt: skip
            win, idx = torch.zeros(T, window, dtype=torch.int32), torch.zeros(T, keys, dtype=torch.int32)
            cfg = tsa.default_config(H, D, torch.bfloat16, cuda, pool == "fp8")

            call = functools.partial(tsa.sparse_attention, q, kv, win, None, comp, idx, None, torch.zeros(H), D**-0.5,
                                     config=cfg)  # fmt: skip

            launches = captured_launches(tsa, ["_sparse_attn_fwd_kernel", "_combine_splits_kernel"], call)
            out += [
                (f"{name} {cfg}" if fn is tsa._sparse_attn_fwd_kernel else name.replace("sparse", "combine", 1),
                 fn, grid, a, kw)
                for fn, grid, a, kw in launches
            ]  # fmt: skip
    finally:
        tsa._num_sms = sms
    return out


def jit_backward_launches() -> list:
    """[(name, fn, grid, args, kwargs)]: the sparse backward's launch at the V4-Flash prefill chunk (4,096
    tokens, 64 heads, 128 + 512 keys, bf16, atomic row gradients) with the sm_90 tiles, as the offline
    model prices it (bench/sm90_model.py ``backward_call``; named as its estimate)."""
    from longattn.ops.sparse_attention import triton_backward as tbw

    from bench import sm90_model

    case = next(iter(sm90_model.BACKWARD_CASES))
    cfg, call = sm90_model.backward_call(case)
    return [
        (f"{case} {cfg}", fn, grid, a, kw)
        for fn, grid, a, kw in captured_launches(tbw, ["_sparse_attn_bwd_kernel"], call)
    ]


def jit_indexer_launches(ti) -> list:
    """[(name, fn, grid, args, kwargs)]: the indexer's key kernels as ``indexer_topk`` / ``indexer_logits``
    launch them for the V4 CSA decode (64 tokens x 64 heads x 128 dims over 8192 entries, bf16 q) with
    the launcher's own arguments (132 SMs, the sm_90 tiles): the select path's key kernel over a paged
    bf16 pool, a paged FP8 pool and flat bf16 keys; the fused path's partial kernel and the logits
    kernel over the paged bf16 pool."""
    import torch
    from longattn.cache import Fp8IndexKeyPool

    cuda = torch.device("cuda")  # only handed to the config functions: no CUDA call is made
    sms = ti._num_sms
    ti._num_sms = lambda device: 132
    out = []
    kernels = ["_indexer_topk_partial_kernel", "_indexer_topk_merge_kernel", "_indexer_logits_kernel",
               "_select_keys_kernel"]  # fmt: skip
    try:
        T, Hi, Di, N, page = 64, 64, 128, 8192, 64
        q = torch.empty(T, Hi, Di, dtype=torch.bfloat16)
        w = torch.empty(T, Hi, dtype=torch.float32)
        bt = torch.arange(N // page, dtype=torch.int32).view(1, -1)
        seq, ve = torch.zeros(T, dtype=torch.int32), torch.full((T,), N, dtype=torch.int32)
        bf16 = torch.empty(N // page, page, Di, dtype=torch.bfloat16)
        cases = [
            ("indexer select keys bf16-pool", "select", bf16, bt),
            ("indexer select keys fp8-pool", "select", Fp8IndexKeyPool.empty(N // page, page, Di), bt),
            ("indexer select keys bf16-flat", "select", torch.empty(N, Di, dtype=torch.bfloat16), None),
            ("indexer fused partial bf16-pool", "fused", bf16, bt),
            ("indexer logits bf16-pool", "logits", bf16, bt),
        ]
        for name, method, keys, table in cases:
            cfg = (ti.select_config if method == "select" else ti.default_config)(Hi, Di, cuda)
            sq = seq if table is not None else None

            def call(keys=keys, table=table, sq=sq, method=method, cfg=cfg):
                if method == "logits":
                    ti.indexer_logits(q, w, keys, ve, table, sq, config=cfg)
                else:
                    ti.indexer_topk(q, w, keys, ve, 512, table, sq, method=method, config=cfg)

            launches = captured_launches(ti, kernels, call)
            out += [
                (f"{name} V4 decode T=64 {cfg}", fn, grid, a, kw)
                for fn, grid, a, kw in launches
                if fn not in (ti._indexer_topk_merge_kernel, ti._select_keys_kernel)
            ]
            if name == "indexer select keys bf16-pool":  # the radix select: the same launches on every pool
                radix = [(fn, grid, a, kw) for fn, grid, a, kw in launches if fn is ti._select_keys_kernel]
                out += [(f"select radix stage {i + 1} V4 decode T=64 N={N}", *launch)
                        for i, launch in enumerate(radix)]  # fmt: skip
    finally:
        ti._num_sms = sms
    return out


def jit_specialisation(fn, args, kwargs, target):
    """(signature, constexprs, attrs, options) as ``JITFunction.run`` builds them for ``target``, through
    the JIT's own binder (private API: None where this triton release lays it out differently)."""
    try:
        from triton.backends.nvidia.compiler import CUDABackend
        from triton.runtime.jit import create_function_from_signature

        backend = CUDABackend(target)
        binder = create_function_from_signature(fn.signature, fn.params, backend)
        bound_args, specialization, options = binder(*args, **kwargs)
        options, signature, constexprs, attrs = fn._pack_args(backend, kwargs, bound_args, specialization, options)
    except (ImportError, AttributeError, TypeError, ValueError):
        return None
    return signature, constexprs, attrs, options


# ---------------------------------------------------------------------------------------------------
# Specialisation keys of recorded launches (tests/triton/test_triton_warmup.py): every kernel of some
# launcher modules recorded (not run), each launch keyed as JITFunction.run keys its compiled kernel.
# ---------------------------------------------------------------------------------------------------
def kernel_names(module) -> list:
    """Names of ``module``'s Triton kernels (compiled ``JITFunction`` or the interpreter's stand-in)."""
    return [n for n, v in vars(module).items() if hasattr(v, "add_pre_run_hook") and hasattr(v, "fn")]


class recorded_launches:
    """``with recorded_launches(modules) as launches:`` every kernel of ``modules`` is a recorder
    (``_Recorder``: nothing runs) and ``launches`` receives (fn, grid, args, kwargs) of each launch."""

    def __init__(self, modules):
        self.modules, self.launches, self.saved = list(modules), [], []

    def __enter__(self):
        for m in self.modules:
            for n in kernel_names(m):
                self.saved.append((m, n, getattr(m, n)))
                setattr(m, n, _Recorder(getattr(m, n), self.launches))
        return self.launches

    def __exit__(self, *exc):
        for m, n, fn in reversed(self.saved):
            setattr(m, n, fn)
        return False


_JIT_OF: dict = {}


def launch_key(fn, args, kwargs, target=None):
    """The launch's specialisation key for ``target`` (default sm_90a, 32-wide warps): kernel name, the
    JIT's signature (argument types: i32 / i64 by value, pointer dtypes), its constexprs (the launcher's
    flags and tiles, and integers specialised to 1), attrs (16-divisibility of integers, 16-byte
    alignment of pointers), num_warps and num_stages: what selects one compiled kernel in
    ``JITFunction.run``, computed by the JIT's own binder (``jit_specialisation``). ``fn`` may be the
    interpreter's ``InterpretedFunction``: the key is that of a ``JITFunction`` of the same function
    and ``do_not_specialize`` lists. None where this triton's binder differs."""
    from triton.backends.compiler import GPUTarget
    from triton.runtime.jit import JITFunction

    if not isinstance(fn, JITFunction):
        if fn.fn not in _JIT_OF:
            _JIT_OF[fn.fn] = JITFunction(fn.fn, **fn.kwargs)
        fn = _JIT_OF[fn.fn]
    jit = jit_specialisation(fn, args, kwargs, target or GPUTarget("cuda", 90, 32))
    if jit is None:
        return None
    signature, constexprs, attrs, options = jit

    def items(d):
        return tuple(sorted((str(k), repr(v)) for k, v in d.items()))

    return (fn.fn.__name__, items(signature), items(constexprs), items(attrs), options.num_warps, options.num_stages)
