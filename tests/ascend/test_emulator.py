# SPDX-License-Identifier: Apache-2.0
"""Builds and runs the C++ tests of the Ascend C CPU emulator (``ascend_c/emu``).

Two build configurations:

* ``plain``: ``g++ -std=c++17 -O1 -Wall -Wextra -Werror -pthread`` plus ``-fno-exceptions -fno-rtti``
  (the flags device kernels are held to) and ``-DLONGATTN_ASCEND_EMU``;
* ``asan``: the same warnings with ``-O0 -fsanitize=address,undefined -fno-sanitize-recover=undefined``
  (``-O0`` keeps sanitizer builds about three times faster to compile than ``-O1``).

Positive programs must exit 0. Every planted bug must exit non-zero with its specific
``[longattn-emu] FATAL`` message on stderr. Binaries are built once per session, in parallel, into a
session temp dir. The whole file is skipped when ``g++`` is missing.
"""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
EMU = REPO / "ascend_c" / "emu"
TESTS = EMU / "tests"
GXX = shutil.which("g++")

pytestmark = pytest.mark.skipif(GXX is None, reason="g++ not found: the Ascend C emulator tests need a C++17 compiler")

COMMON = [
    "-std=c++17",
    "-Wall",
    "-Wextra",
    "-Werror",
    "-pthread",
    "-fno-exceptions",
    "-fno-rtti",
    "-DLONGATTN_ASCEND_EMU",
]
CONFIGS = {
    "plain": ["-O1"],
    "asan": ["-O0", "-fsanitize=address,undefined", "-fno-sanitize-recover=undefined", "-fno-omit-frame-pointer"],
}
POSITIVE = ["test_vector_kernels", "test_cube_mix", "test_numeric", "test_sort_copy", "test_signatures"]
PROGRAMS = POSITIVE + ["planted_bugs"]

# Planted bug -> substrings that must all appear on stderr (besides "[longattn-emu] FATAL").
PLANTED = {
    "datacopy_17_floats": ["DataCopy: count*sizeof(T) = 68 bytes is not a multiple of 32"],
    "ub_over_budget": [
        "TPipe::InitBuffer(TQue<VECOUT>, num=2, len=32768)",
        "UB budget exceeded",
        "requested 65536 bytes, remaining 57088",
    ],
    "deque_empty": ["DeQue on an empty TQue<VECIN>"],
    "free_twice": ["FreeTensor twice"],
    "enque_beyond_depth": ["EnQue beyond queue depth"],
    "alloc_beyond_num": ["AllocTensor beyond the 1 buffers of TQue<VECIN>"],
    "l0a_misaligned": ["L0A address 0xc8 is not 512-byte aligned"],
    "l0a_over_budget": ["L0A budget exceeded"],
    "mmad_k_too_large": ["Mmad: k = 5000 out of range [0, 4095]"],
    "repeat_time_too_large": ["Add: repeatTime = 300 out of range [0, 255]"],
    "gm_out_of_bounds": ["GlobalTensor out-of-bounds"],
    "local_out_of_bounds": ["LocalTensor out-of-bounds: SetValue"],
    "local_out_of_bounds_vector": ["LocalTensor out-of-bounds: Add"],
    "waitflag_without_setflag": [
        "WaitFlag<HardEvent::MTE2_V>(0) without a matching earlier SetFlag",
        "would hang on hardware",
    ],
    "unmatched_setflag": ["unmatched SetFlag<HardEvent::V_MTE3>(1)"],
    "double_setflag": ["SetFlag<HardEvent::V_MTE3>(0) twice without a WaitFlag"],
    "handpicked_queue_event_id": ["SetFlag<HardEvent::MTE2_V>(0): a hand-picked event id", "FetchEventID"],
    "fetched_event_id_reused": ["SetFlag<HardEvent::V_MTE3>(0): a hand-picked event id"],
    "vecin_copy_through": ["pipe hazard (RAW): PIPE_MTE3", "last written by PIPE_MTE2", "MTE2_MTE3"],
    "same_pipe_overlap_without_barrier": ["pipe hazard (same-pipe WAW): PIPE_MTE2", "PipeBarrier<PIPE_MTE2>()"],
    "gm_overlap_without_barrier": ["pipe hazard (same-pipe WAW): PIPE_MTE3", "PipeBarrier<PIPE_MTE3>()"],
    "user_workspace_without_sys_workspace": ["GetUserWorkspace without a system workspace", "SetSysWorkspace"],
    "crosscore_never_set": ["CrossCoreWaitFlag: flag 3 not set within", "on AIV core", "AI core 0"],
    "crosscore_setter_exited": ["CrossCoreWaitFlag: flag 3 can never be set", "on AIV core"],
    "crosscore_unconsumed": ["launch ended with cross-core flag 2 still pending"],
    "syncall_missing": ["SyncAll: core index 1 exited without reaching SyncAll"],
    "missing_sync_raw": ["pipe hazard (RAW)", "PIPE_V (Add)", "PIPE_MTE2", "SetFlag<HardEvent::MTE2_V>"],
    "missing_sync_war": ["pipe hazard (WAR)", "PIPE_MTE2", "SetFlag<HardEvent::V_MTE2>"],
    "crosscore_wrong_pipe": ["pipe hazard (cross-core)", "CrossCoreSetFlag<2, PIPE_V>(1)", "PIPE_MTE3"],
    "use_after_free": ["LocalTensor used after FreeTensor"],
    "free_foreign_tensor": ["FreeTensor of a tensor not allocated from this TQue"],
    "cast_unsupported": ["Cast half -> bfloat16_t with CAST_RINT is not supported"],
    "datacopy_ub_misaligned": ["DataCopy: UB address 0x10 is not 32-byte aligned"],
    "compare_count_not_256": ["CompareScalar: count*sizeof(T) = 160 bytes is not a multiple of 256"],
    "gm_unsized": ["GlobalTensor has no size"],
    "datacopypad_bad_len": ["blockLen = 6 bytes is not a multiple of sizeof(float)"],
    "fixpipe_quant_mismatch": ["Fixpipe: quantPre does not match the float -> half conversion"],
    "sort32_nan_score": ["Sort32: score 5 of repeat 0 is NaN"],
}
WATCHDOG_ENV = {"LONGATTN_EMU_TIMEOUT_S": "0.5"}
RUN_TIMEOUT_S = 60


def _compile(src: Path, out: Path, flags: list[str]) -> tuple[Path, str]:
    cmd = [GXX, *COMMON, *flags, str(src), "-o", str(out)]
    proc = subprocess.run(cmd, cwd=TESTS, capture_output=True, text=True)
    return out, ("" if proc.returncode == 0 else f"$ {' '.join(cmd)}\n{proc.stdout}{proc.stderr}")


@pytest.fixture(scope="session")
def binaries(tmp_path_factory):
    """Build every program in both configurations, two compilers at a time."""
    out_dir = tmp_path_factory.mktemp("ascend_emu_build")
    jobs = {
        (cfg, prog): (TESTS / f"{prog}.cpp", out_dir / f"{prog}_{cfg}", flags)
        for cfg, flags in CONFIGS.items()
        for prog in PROGRAMS
    }
    with ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2)) as pool:
        futures = {key: pool.submit(_compile, *args) for key, args in jobs.items()}
        return {key: fut.result() for key, fut in futures.items()}


def _binary(binaries, cfg: str, prog: str) -> Path:
    path, err = binaries[(cfg, prog)]
    if err:
        pytest.fail(f"compilation of {prog} ({cfg}) failed:\n{err}")
    return path


def _run(path: Path, *args: str, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env.pop("LONGATTN_EMU_HAZARD", None)
    env.setdefault("ASAN_OPTIONS", "abort_on_error=0")
    if env_extra:
        env.update(env_extra)
    return subprocess.run([str(path), *args], capture_output=True, text=True, env=env, timeout=RUN_TIMEOUT_S)


@pytest.fixture(scope="session")
def bf16_dump(tmp_path_factory):
    """float -> bfloat16 bit patterns as rounded by torch (None when torch is unavailable)."""
    try:
        import torch
    except Exception:  # noqa: BLE001 - any import failure just disables this comparison
        return None
    gen = torch.Generator().manual_seed(0)
    bits = torch.randint(-(2**31), 2**31 - 1, (50000,), generator=gen, dtype=torch.int64)
    special = torch.tensor(
        [0x3F808000, 0x3F818000, 0x7F7FFFFF, 0x00008000, 0x00018000, 0x007FFFFF, 0x80000000, 0x7F800000, -0x00800000],
        dtype=torch.int64,
    )
    bits = torch.cat([bits, special]).to(torch.int32)
    want = bits.view(torch.float32).to(torch.bfloat16).view(torch.int16)
    path = tmp_path_factory.mktemp("bf16") / "bf16_dump.bin"
    n = bits.numel()
    with open(path, "wb") as f:
        f.write(struct.pack("<I", n))
        f.write(bits.numpy().astype("<i4").tobytes())
        f.write(want.numpy().astype("<i2").tobytes())
    return path


@pytest.mark.parametrize("cfg", list(CONFIGS))
@pytest.mark.parametrize("prog", POSITIVE)
def test_positive_program(binaries, bf16_dump, cfg, prog):
    args = [str(bf16_dump)] if (prog == "test_numeric" and bf16_dump is not None) else []
    proc = _run(_binary(binaries, cfg, prog), *args)
    assert proc.returncode == 0, (
        f"{prog} ({cfg}) exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    )
    assert "all checks passed" in proc.stdout
    assert "runtime error" not in proc.stderr  # UBSan diagnostics
    if prog == "test_numeric" and bf16_dump is not None:
        assert "conversions with torch" in proc.stdout


def test_planted_case_list_is_complete(binaries):
    proc = _run(_binary(binaries, "plain", "planted_bugs"), "--list")
    assert proc.returncode == 0
    assert sorted(proc.stdout.split()) == sorted(PLANTED)


@pytest.mark.parametrize("cfg", list(CONFIGS))
@pytest.mark.parametrize("case", list(PLANTED))
def test_planted_bug_aborts(binaries, cfg, case):
    proc = _run(_binary(binaries, cfg, "planted_bugs"), case, env_extra=WATCHDOG_ENV)
    assert proc.returncode != 0, (
        f"planted bug {case!r} was not detected\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    )
    assert "[longattn-emu] FATAL" in proc.stderr, proc.stderr
    for needle in PLANTED[case]:
        assert needle in proc.stderr, f"{case}: expected {needle!r} in stderr:\n{proc.stderr}"
    assert "AddressSanitizer" not in proc.stderr and "runtime error" not in proc.stderr, proc.stderr


def test_hazard_tracker_can_be_switched_off(binaries):
    """LONGATTN_EMU_HAZARD=0 disables the pipe-hazard tracker (and only it)."""
    prog = _binary(binaries, "plain", "planted_bugs")
    proc = _run(prog, "missing_sync_raw", env_extra={"LONGATTN_EMU_HAZARD": "0"})
    assert proc.returncode == 0 and "was NOT detected" in proc.stdout, proc.stderr
    proc = _run(prog, "datacopy_17_floats", env_extra={"LONGATTN_EMU_HAZARD": "0"})
    assert proc.returncode != 0 and "not a multiple of 32" in proc.stderr


def test_compat_header_selects_real_toolchain_without_emu_macro(tmp_path):
    """Without -DLONGATTN_ASCEND_EMU the switch header must include the real kernel_operator.h."""
    src = tmp_path / "k.cpp"
    src.write_text('#include "ascend_c/common/ascendc_compat.h"\n')
    flags = [f for f in COMMON if f != "-DLONGATTN_ASCEND_EMU"]
    proc = subprocess.run([GXX, *flags, "-fsyntax-only", f"-I{REPO}", str(src)], capture_output=True, text=True)
    assert proc.returncode != 0 and "kernel_operator.h" in proc.stderr, proc.stderr


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
