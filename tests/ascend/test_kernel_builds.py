"""Build checks of the Ascend C sources that need no emulator run.

* Every kernel (ascend_c/<op>/op_kernel via its csrc/ascend_sim/<op>_emu.cpp unit) compiles as C++17
  with the flags device code is held to: ``-Wall -Wextra -Werror -fno-exceptions -fno-rtti``.
* Without ``-DLONGATTN_ASCEND_EMU`` every kernel asks for the real toolchain (kernel_operator.h).
* The NPU binding (csrc/ascend_npu) cannot be built here (no CANN, no torch_npu): it is compiled with
  ``-fsyntax-only -Wall -Werror`` against the real torch headers and the stand-in ACL / torch_npu
  headers of tests/ascend/npu_stubs, so that it keeps agreeing with csrc/common/host_ops.h, the tiling
  headers and the torch C++ API. This proves nothing about its behaviour on an NPU."""

from __future__ import annotations

import os
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from longattn.backends import ascend_sim

REPO = Path(__file__).resolve().parents[2]
GXX = ascend_sim.compiler()


@pytest.mark.skipif(GXX is None, reason="no C++ compiler")
def test_npu_binding_compiles_against_stubs():
    from torch.utils import cpp_extension

    inc = [f"-isystem{p}" for p in cpp_extension.include_paths()]
    cmd = [
        GXX,
        "-std=c++17",
        "-fsyntax-only",
        "-Wall",
        "-Werror",
        f"-I{REPO}",
        f"-I{REPO / 'tests/ascend/npu_stubs'}",
        *inc,
        str(REPO / "csrc/ascend_npu/longattn_ascend_npu.cpp"),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-4000:]


def test_kernels_need_the_real_toolchain_without_the_emulator_macro(tmp_path):
    """Without -DLONGATTN_ASCEND_EMU every kernel includes kernel_operator.h (bisheng/CANN)."""
    for op in OPS:
        src = REPO / "ascend_c" / op / "op_kernel" / f"{op}.cpp"
        cmd = [GXX, "-std=c++17", "-fsyntax-only", f"-I{REPO}", str(src)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        assert proc.returncode != 0 and "kernel_operator.h" in proc.stderr, (op, proc.stderr[-500:])


OPS = ("append_kv", "sparse_attention", "compress_kv", "compress_pool", "indexer_topk", "combine")


@pytest.mark.skipif(GXX is None, reason="no C++ compiler")
def test_kernels_compile_with_device_flags():
    def build(op):
        cmd = [
            GXX,
            "-std=c++17",
            "-fsyntax-only",
            "-Wall",
            "-Wextra",
            "-Werror",
            "-fno-exceptions",
            "-fno-rtti",
            "-pthread",
            "-DLONGATTN_ASCEND_EMU",
            f"-I{REPO}",
            str(REPO / "csrc" / "ascend_sim" / f"{op}_emu.cpp"),
        ]
        return op, subprocess.run(cmd, capture_output=True, text=True)

    with ThreadPoolExecutor(max_workers=2) as pool:
        for op, proc in pool.map(build, OPS):
            assert proc.returncode == 0, f"{op}:\n{proc.stderr[-4000:]}"


@pytest.mark.skipif(GXX is None, reason="no C++ compiler")
@pytest.mark.parametrize("macro", ["GET_TILING_DATA_WITH_STRUCT(Tiling, t, tiling)", "GET_TILING_DATA(t, tiling)"])
def test_tiling_macros_of_the_op_project_flow_do_not_build(tmp_path, macro):
    """A kernel direct-call build (ascendc_library + ACLRT_LAUNCH_KERNEL) has no GET_TILING_DATA*:
    the emulator refuses them at compile time, so a kernel using one fails here as on the toolchain."""
    src = tmp_path / "k.cpp"
    src.write_text(
        '#include "ascend_c/common/ascendc_compat.h"\n'
        "struct Tiling { uint32_t n; };\n"
        'extern "C" __global__ __aicore__ void k(GM_ADDR tiling) {\n'
        f"    {macro};\n"
        "}\n"
    )
    cmd = [GXX, "-std=c++17", "-fsyntax-only", "-DLONGATTN_ASCEND_EMU", f"-I{REPO}", str(src)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode != 0 and "not available in a kernel direct-call build" in proc.stderr, proc.stderr[-800:]


CANN_INCLUDE = os.environ.get("LONGATTN_CANN_INCLUDE", "")


@pytest.mark.skipif(GXX is None, reason="no C++ compiler")
@pytest.mark.skipif(
    not CANN_INCLUDE,
    reason="opt-in: set LONGATTN_CANN_INCLUDE to the CANN 8.5.0 Ascend C include directories (os.pathsep-separated; "
    "extra flags in LONGATTN_CANN_CXXFLAGS) to hold the real headers to the same signature list as the emulator",
)
def test_signature_audit_against_the_real_headers(tmp_path):
    """ascend_c/emu/tests/cann_signatures.h compiled against kernel_operator.h of a CANN install
    (CPU-debug mode, syntax only): the constructor forms the kernels rely on exist there, and those
    the emulator refuses do not. Never run here (no CANN toolkit); see ascend_c/README.md."""
    src = tmp_path / "audit.cpp"
    src.write_text('#include "kernel_operator.h"\n#include "ascend_c/emu/tests/cann_signatures.h"\n')
    flags = os.environ.get("LONGATTN_CANN_CXXFLAGS", "-DASCENDC_CPU_DEBUG=1 -D__NPU_ARCH__=2201").split()
    incs = [f"-I{p}" for p in CANN_INCLUDE.split(os.pathsep) if p]
    cmd = [GXX, "-std=c++17", "-fsyntax-only", *flags, *incs, f"-I{REPO}", str(src)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-4000:]
