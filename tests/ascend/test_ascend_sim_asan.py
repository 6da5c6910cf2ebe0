"""The Ascend C kernels under AddressSanitizer + UndefinedBehaviorSanitizer, in a subprocess.

A second build of the emulator extension (``LONGATTN_ASCEND_SIM_ASAN=1``: ``-O1
-fsanitize=address,undefined -fno-sanitize-recover=undefined``, cached separately as
``longattn_ascend_sim_asan``) runs, on the ``ascend_sim`` backend only,

* a subset of the op x backend tests (tests/ops) that touches every kernel and every code path with
  irregular sizes (every dtype pair of append_kv, FP8 records, partial blocks, invalid indices and
  pages, bf16 / fp16 compress_kv and compress_pool, ties, paged indexer, merge / sink over row, chunk
  and column-tile edges, the S-way merge of split-KV partials), every special-value test (NaN / inf /
  -0.0 / subnormal inputs of every kernel, compress_kv positions past 2**31, near 2**63 and negative), and
* test_ascend_sim.py's runs on 3 emulated cores, and test_ascend_sim_compress_pool.py's launch shapes
  (odd widths, split channel tiles, chunks straddling the block halves, strided rows), and
* sparse_attention's split-KV path in bf16 with fp32 partials (the kernel's ``out_f32`` flag, over a bf16
  and an FP8 pool; test_sparse_split_kv.py).

The child process preloads libasan (Python itself is not instrumented) and must pass with no
sanitizer report; an emulator FATAL, an ASan error or a UBSan report ends only the child.

Prerequisites: a C++ compiler whose ``-print-file-name=libasan.so`` resolves (on Debian: g++ plus
libgcc-<N>-dev, which every gcc-<N> installation pulls in) and ninja. Without them the test is
skipped, unless ``LONGATTN_REQUIRE_ASAN=1`` (set by .ci/ascend_asan.sh): then it fails and says what
is missing, so that CI cannot pass with the sanitizer run silently skipped.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from longattn.backends import ascend_sim

REPO = Path(__file__).resolve().parents[2]
GXX = ascend_sim.compiler()
REQUIRED = os.environ.get("LONGATTN_REQUIRE_ASAN") == "1"


def _libasan():
    if GXX is None:
        return None
    out = subprocess.run([GXX, "-print-file-name=libasan.so"], capture_output=True, text=True).stdout.strip()
    return out if out and os.path.isabs(out) and os.path.exists(out) else None


LIBASAN = _libasan()


def _missing():
    if ascend_sim.BACKEND.unavailable is not None:
        return f"ascend_sim: {ascend_sim.BACKEND.unavailable}"
    if LIBASAN is None:
        return (
            f"libasan not found ({GXX} -print-file-name=libasan.so gives no existing path; on Debian/Ubuntu "
            "install the compiler's libgcc-<N>-dev, e.g. apt-get install g++)"
        )
    return None


MISSING = _missing()
pytestmark = pytest.mark.skipif(MISSING is not None and not REQUIRED, reason=MISSING or "")

# pytest -k over tests/ops (the ``ascend_sim`` parameter of each test) and test_ascend_sim.py.
SUBSET = (
    "ascend_sim and ("
    + " or ".join(
        [
            "(float_pool_bit_identical and paged)",
            "(fp8_records_bytes_exact and scales)",
            "int64_slots_and_wide_rows",
            "(test_sparse_attention and matches_oracle and (multi_block or two_streams_partial_len or d512_bf16 "
            "or all_invalid or head_groups or d576 or paged_odd or fp16_two_blocks))",
            "(kv_any_split and 4-True and not -2])",  # the seeds that run on the emulator
            "kv_low_precision",
            "kv_fp8_output",
            "kv_invalid_pages",
            "(test_indexer and paged_exact and 5)",
            "(test_indexer and all_equal_scores)",
            "(many_blocks_many_ties and 17)",
            "(test_indexer and topk_exact_on_integer_inputs and mixed)",
            "(any_core_count and 3)",
            # merge_attention_states / apply_attention_sink: the op cases, the row-split / tile edges on
            # 3 emulated cores, empty sides never read
            "(test_merge_ or test_apply_sink_)",
            "(combine_row_split and -3])",
            "combine_one_empty_side",
            "combine_lse_and_sink",
            # merge_partial_states: row splits on 4 vector cores, S = 1 / 7 / 64 over column tiles, the
            # non-finite row classes (matched by "nonfinite" below), T = 0 / D = 0, single partials
            "(merge_partials and (row_splits_over_the_vector_cores and 2] or empty_shapes or single_partial))",
            "(merge_partials and matches_the_float64 and mixed and (1-64 or 7-1025 or 64-64) and float32)",
            # the special values of every kernel
            "fp8_special",
            "fp8_nonfinite",
            "kv_positions",
            "kv_negative_positions",
            "nonfinite",
            "nan_",
            "mixed_dtypes",
            "fp8_records_of_special_entries",
            # compress_pool: launch shapes of its kernel (test_ascend_sim_compress_pool.py) and the op tests
            "(test_pool_matches_oracle and float16 and not bfloat16)",
            "test_pool_odd_widths",
            "test_pool_chunks_straddle",
            "test_pool_overlap_single_entry",
            "test_pool_ratio_one",
            "test_pool_strided_rows",
            "test_pool_no_entry",
            # FP8 pool reads of sparse_attention (the dequantiser's gathers, mixed gather tiles)
            "(test_fp8_pool and float32-7)",
            "(e4m3_decode_every_code and float32)",
            "(fp8_stream_mixes and fp8+fp8 and bfloat16)",
            "(fp8_stream_mixes and fp8+None-torch.float32)",
            "(odd_pages_and_invalid_slots and 3])",
            "(float_pool_of_another_dtype and float16-torch.bfloat16)",
            # slot runs of converted rows (16-bit under fp32, FP8 records across page ends)
            "(gather_runs_of_converted_rows and (float32-fp8-bfloat16 or float16-bfloat16-float32))",
        ]
    )
    + ") or "
    # tests/ascend files without "ascend_sim" in their names: key blocks of 256 keys and the shared gather
    # (sparse_attention), the Fixpipe-ReLU fast / exact paths and bf16 pieces of q (indexer)
    + " or ".join(
        [
            "(test_sparse_blocks and (block_borders and 256-torch.bfloat16 or two_streams_runs_across_blocks "
            "and float32 or nonfinite_logits_in_256 or shared_gather_head_groups and 128-512 "
            "or shared_gather_fp8))",
            "(test_indexer_fixpipe_relu and special_values_under_every_fixpipe_relu and (keep or zero) "
            "and (nan_paged or overflowing))",
            "(test_indexer_native_bf16 and (paged_exact and 5- or special_values_as_the_reference))",
            "(test_sparse_split_kv and (out_f32_writes and (bf16-h64 or fp16-fp8) or split_fp8_pool and bfloat16 "
            "or t1_8_chunks_bf16_empty))",
        ]
    )
)
CHILD_FILES = ["tests/ops/test_append.py", "tests/ops/test_compress.py", "tests/ops/test_indexer.py",
               "tests/ops/test_sparse_attention.py", "tests/ops/test_combine.py",
               "tests/ascend/test_ascend_sim.py", "tests/ascend/test_ascend_sim_compress_pool.py",
               "tests/ascend/test_ascend_sim_fp8.py", "tests/ascend/test_ascend_sim_merge_partials.py",
               "tests/ascend/test_sparse_blocks.py", "tests/ascend/test_indexer_fixpipe_relu.py",
               "tests/ascend/test_indexer_native_bf16.py", "tests/ascend/test_sparse_split_kv.py"]  # fmt: skip


def test_kernels_under_address_sanitizer(tmp_path):
    if MISSING is not None:
        pytest.fail(f"LONGATTN_REQUIRE_ASAN=1 but the sanitizer run cannot happen: {MISSING}")
    env = dict(os.environ)
    env.update(
        LONGATTN_ASCEND_SIM_ASAN="1",
        LD_PRELOAD=LIBASAN,
        ASAN_OPTIONS="detect_leaks=0:abort_on_error=0",
        UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1",
        PYTHONPATH=os.pathsep.join([str(REPO / "python"), str(REPO), env.get("PYTHONPATH", "")]),
    )
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        *[str(REPO / f) for f in CHILD_FILES],
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
    for bad in ("AddressSanitizer", "runtime error:", "[longattn-emu] FATAL"):
        assert bad not in out, out[-6000:]
    assert " passed" in proc.stdout and " deselected" in proc.stdout
    assert " skipped" not in proc.stdout, f"tests were skipped in the sanitizer run:\n{proc.stdout[-3000:]}"
