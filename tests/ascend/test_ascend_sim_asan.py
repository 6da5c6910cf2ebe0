"""The Ascend C kernels under AddressSanitizer, in a subprocess.

A second build of the emulator extension (``LONGATTN_ASCEND_SIM_ASAN=1``: ``-O1
-fsanitize=address``, cached separately as ``longattn_ascend_sim_asan``) runs a subset of
test_ascend_sim.py that touches every kernel and every code path with irregular sizes (partial
blocks, invalid indices and pages, FP8 records, ties). The child process preloads libasan (Python
itself is not instrumented) and must pass with no sanitizer report; an emulator FATAL or an ASan
error ends only the child.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from longattn.backends import ascend_sim

REPO = Path(__file__).resolve().parents[2]
GXX = ascend_sim.compiler()


def _libasan():
    if GXX is None:
        return None
    out = subprocess.run([GXX, "-print-file-name=libasan.so"], capture_output=True, text=True).stdout.strip()
    return out if out and os.path.isabs(out) and os.path.exists(out) else None


LIBASAN = _libasan()
pytestmark = [
    pytest.mark.skipif(
        ascend_sim.BACKEND.unavailable is not None, reason=f"ascend_sim: {ascend_sim.BACKEND.unavailable}"
    ),
    pytest.mark.skipif(LIBASAN is None, reason="libasan not found (g++ -print-file-name=libasan.so)"),
]

SUBSET = " or ".join(
    [
        "append_kv_fp8_pool_bytes_exact",
        "append_kv_int64_slots",
        "(sparse_attention_matches_oracle and (multi_block or two_streams_partial_len or d512_bf16 or all_invalid "
        "or head_groups or d576 or paged_odd))",
        "(compress_kv_random_splits and 4-True)",
        "compress_kv_fp8_v4_shape",
        "compress_kv_invalid_pages",
        "(indexer_paged_exact and 5)",
        "indexer_all_equal",
        "(indexer_topk_many_blocks_many_ties and 17)",
        "indexer_topk_exact_on_integer_inputs and mixed",
    ]
)


def test_kernels_under_address_sanitizer(tmp_path):
    env = dict(os.environ)
    env.update(
        LONGATTN_ASCEND_SIM_ASAN="1",
        LD_PRELOAD=LIBASAN,
        ASAN_OPTIONS="detect_leaks=0:abort_on_error=0",
        PYTHONPATH=os.pathsep.join([str(REPO / "python"), str(REPO), env.get("PYTHONPATH", "")]),
    )
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        str(REPO / "tests" / "ascend" / "test_ascend_sim.py"),
        "-q",
        "-x",
        "-p",
        "no:cacheprovider",
        "-p",
        "no:faulthandler",
        f"--basetemp={tmp_path / 'child'}",
        "-k",
        SUBSET,
    ]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=1500)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"ASan run failed (exit {proc.returncode}):\n{out[-6000:]}"
    assert "AddressSanitizer" not in out and "[longattn-emu] FATAL" not in out, out[-6000:]
    assert " passed" in proc.stdout and " deselected" in proc.stdout
    assert shutil.which(GXX) or os.path.exists(GXX)
