#!/usr/bin/env bash
# GPU check of the Triton backend, for a GPU machine (one H200; torch 2.11 + triton 3.6.0 + pytest
# preinstalled; no internet). Run from the repository root:   bash bench/gpu_check.sh
# Writes under $OUT (default .device_out/): env.txt, pytest-<shard>.log / junit-<shard>.xml /
# pytest-<shard>.rc, summary.txt, triton_grid.json (+ .log), bench/ (the bench CLI's JSON, if present).
# Total wall time is bounded (~7 min): every step runs under `timeout` with what is left of the budget.
# Knobs: BUDGET_S (seconds in all), SHARD_TIMEOUT (per test shard), GRID=0 / BENCH=0 skip steps 2 / 3,
# GRAPH_BUDGET_S (seconds of the grid's small-batch decode sections: CUDA graphs, split sweep, layer step).
# SMOKE=1 checks this script's plumbing on a CPU (tests/bench/test_gpu_check.py): the interpreter, the
# test shards only collected, the grid at tiny shapes, the bench CLI only listing its cases.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-$PWD/.device_out}"
mkdir -p "$OUT"
BUDGET_S="${BUDGET_S:-440}"
GRAPH_BUDGET_S="${GRAPH_BUDGET_S:-90}"
START=$(date +%s)
left() { echo $(( BUDGET_S - ($(date +%s) - START) )); }

# The package from the working tree (no pip, no build): python/ for longattn, the root for tests/ and bench/.
export PYTHONPATH="$PWD/python:$PWD${PYTHONPATH:+:$PYTHONPATH}"
# Compiled kernels on the GPU: tests/conftest.py defaults TRITON_INTERPRET to 1 only when it is unset.
SMOKE="${SMOKE:-0}"
if [ "$SMOKE" = 1 ]; then export TRITON_INTERPRET=1; else export TRITON_INTERPRET=0; fi
COLLECT_ONLY=(); [ "$SMOKE" = 1 ] && COLLECT_ONLY=(--collect-only)
export PYTHONDONTWRITEBYTECODE=1

{
  echo "== nvidia-smi"; nvidia-smi || true
  echo "== versions"
  python - <<'EOF'
import platform, sys
import torch
print("python", platform.python_version(), sys.executable)
print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print("device", p.name, "SMs", p.multi_processor_count, "mem GiB", round(p.total_memory / 2**30, 1))
try:
    import triton
    print("triton", triton.__version__)
except Exception as exc:
    print("triton import failed:", exc)
try:
    import pytest
    print("pytest", pytest.__version__)
except Exception as exc:
    print("pytest import failed:", exc)
EOF
  echo "== longattn.info()"
  python -m longattn || true
} 2>&1 | tee "$OUT/env.txt"

# ---- 1. the Triton tests on the GPU, in parallel shards (compile-bound: one process per shard): the op x
# backend tests of tests/ops for the triton backend, and tests/triton but the offline sm_90 compile ----
run_shard() {
  local name=$1; shift
  local rc=0
  timeout "$SHARD_TIMEOUT" python -m pytest "$@" "${COLLECT_ONLY[@]}" -q -rfEs --durations=10 -p no:cacheprovider \
    --junitxml="$OUT/junit-$name.xml" >"$OUT/pytest-$name.log" 2>&1 || rc=$?
  echo "$rc" >"$OUT/pytest-$name.rc"
}
SHARD_TIMEOUT=${SHARD_TIMEOUT:-$(( $(left) - 180 ))}
[ "$SHARD_TIMEOUT" -gt 300 ] && SHARD_TIMEOUT=300
echo "== tests (shards in parallel, timeout ${SHARD_TIMEOUT}s)"
T=tests/triton
O=tests/ops  # the op x backend tests: -k triton selects their Triton parameter (on CUDA tensors here)
run_shard ops_sparse   $O/test_sparse_attention.py $O/test_sparse_attention_backward.py -k triton &
run_shard ops_rest     $O/test_indexer.py $O/test_combine.py $O/test_compress.py $O/test_append.py -k triton &
run_shard sparse_split $T/test_triton_sparse_attention.py -k "cases_split_kv" &
run_shard sparse_rest  $T/test_triton_sparse_attention.py -k "not cases_split_kv" &
run_shard indexer      $T/test_triton_indexer.py &
run_shard configs      $T/test_triton_backend.py $T/test_triton_gpu_configs.py $T/test_triton_sparse_attention_backward.py \
                       $T/test_triton_cuda_graph.py $T/test_triton_conversions.py &
run_shard cache_ops    $T/test_triton_cache_ops.py $T/test_triton_compress_pool.py $T/test_triton_large_offsets.py &
run_shard warmup       $T/test_triton_warmup.py &
wait
{
  echo "== test summary ($(( $(date +%s) - START ))s elapsed)"
  for f in "$OUT"/pytest-*.log; do
    n=$(basename "$f" .log)
    echo "-- ${n#pytest-}: rc=$(cat "$OUT/${n}.rc" 2>/dev/null || echo '?')"
    tail -n 25 "$f"
  done
} 2>&1 | tee "$OUT/summary.txt"

# ---- 2. the benchmark grid of the Triton kernels (ms, TFLOP/s, GB/s, fractions of measured ceilings) ----
GRID_TIMEOUT=$(( $(left) - 60 ))
if [ "${GRID:-1}" = 0 ]; then
  echo "== bench/triton_grid.py skipped (GRID=0)" | tee -a "$OUT/summary.txt"
elif [ "$GRID_TIMEOUT" -gt 30 ]; then
  GRID_CAP=$(( 200 + GRAPH_BUDGET_S ))
  [ "$GRID_TIMEOUT" -gt "$GRID_CAP" ] && GRID_TIMEOUT=$GRID_CAP
  echo "== bench/triton_grid.py (timeout ${GRID_TIMEOUT}s)"
  rc=0
  # the grid skips (and records) the sections it cannot start in time, so that it still writes its goals
  GRID_ARGS=(--budget-s $(( GRID_TIMEOUT - 15 )) --graph-budget-s "$GRAPH_BUDGET_S")
  [ "$SMOKE" = 1 ] && GRID_ARGS+=(--smoke --no-sweep)
  timeout "$GRID_TIMEOUT" python bench/triton_grid.py "${GRID_ARGS[@]}" --out "$OUT/triton_grid.json" 2>&1 | tee "$OUT/triton_grid.log" || rc=$?
  echo "triton_grid rc=$rc" | tee -a "$OUT/summary.txt"
else
  echo "== skipping bench/triton_grid.py: no time left" | tee -a "$OUT/summary.txt"
fi

# ---- 3. the package benchmark CLI (if this checkout has it), with what is left ----
BENCH_TIMEOUT=$(( $(left) - 5 ))
if [ "${BENCH:-1}" = 0 ]; then
  echo "== python -m bench skipped (BENCH=0)" | tee -a "$OUT/summary.txt"
elif python -m bench --help 2>/dev/null | grep -q -- "--backends"; then
  if [ "$BENCH_TIMEOUT" -gt 45 ]; then
    echo "== python -m bench (timeout ${BENCH_TIMEOUT}s)"
    rc=0
    BENCH_ARGS=(--device cuda); [ "$SMOKE" = 1 ] && BENCH_ARGS=(--device cpu --list)
    timeout "$BENCH_TIMEOUT" python -m bench "${BENCH_ARGS[@]}" --backends triton reference --out "$OUT/bench" \
      --ops sparse_attention indexer_topk csa_layer.decode merge_attention_states --no-plots 2>&1 | tee "$OUT/bench.log" || rc=$?
    echo "bench rc=$rc" | tee -a "$OUT/summary.txt"
  else
    echo "== skipping python -m bench: no time left" | tee -a "$OUT/summary.txt"
  fi
else
  echo "== python -m bench has no --backends option here; bench/triton_grid.py is the grid" | tee -a "$OUT/summary.txt"
fi
echo "== done in $(( $(date +%s) - START ))s; outputs in $OUT" | tee -a "$OUT/summary.txt"
