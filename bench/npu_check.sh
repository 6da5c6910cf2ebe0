#!/usr/bin/env bash
# One-command check of the Ascend C kernels on an Ascend NPU host (910B / 910C; CANN >= 8.0 with
# set_env.sh sourced, torch + torch_npu + pytest installed). Run from the repository root:
#     source /usr/local/Ascend/ascend-toolkit/set_env.sh && bash bench/npu_check.sh
# Nothing here has run on an NPU yet (none was available): the plumbing is checked on the CPU by
# tests/bench/test_npu_check.py (SMOKE=1).
#
# Steps, each logged under $OUT (default .device_out/):
#   0. env.txt: npu-smi, CANN version, python / torch / torch_npu versions, longattn.info()
#   1. build: ascend_c/build_npu.sh (SOC_VERSION from npu-smi unless set) -> build.log, build.rc;
#      a failed build stops the check (exit 2)
#   2. tests on NPU tensors (LONGATTN_TEST_DEVICE=npu), the `ascend` parameter of:
#      hazards: tests/ascend/test_hardware_hazards.py (the shapes that reveal the hardware hazards of
#               ascend_c/README.md's audit: GEMV at one head, padded key tiles, copy-through, duplicate slots)
#      ops:     every op x backend test of tests/ops, against the float64 oracle / exact bytes
#      -> pytest-<shard>.log / junit-<shard>.xml / pytest-<shard>.rc
#   3. bench: V4 decode at batch 1 / 24 / 96 (CSA: 128 window + 512 selected = 640 keys; HCA: 128 +
#      8,192 compressed = 8,320 keys at a 1M context), bf16 and FP8 pools, and the indexer at 262,144
#      entries, on the ascend backend beside the reference on the same NPU -> bench/*.json, bench.log
#   summary.txt: the tails of every step. Exit status: 0 when every step passed.
# Knobs: BUDGET_S (seconds in all, default 3600), SOC_VERSION, BUILD=0 (use a built library),
# BENCH=0 (skip step 3), SMOKE=1 (no NPU: skip the build, only collect the tests, only list the cases).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-$PWD/.device_out}"
mkdir -p "$OUT"
BUDGET_S="${BUDGET_S:-3600}"
START=$(date +%s)
left() { echo $(( BUDGET_S - ($(date +%s) - START) )); }
within() { local s=$(( $(left) - $1 )); [ "$s" -lt 30 ] && s=30; echo "$s"; }  # seconds for a step, >= 30
SMOKE="${SMOKE:-0}"
# The package from the working tree (no pip install): python/ for longattn, the root for tests/ and bench/.
export PYTHONPATH="$PWD/python:$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONDONTWRITEBYTECODE=1
failed=0

{
  echo "== npu-smi"; npu-smi info 2>&1 || echo "(npu-smi not found)"
  echo "== CANN"; echo "ASCEND_HOME_PATH=${ASCEND_HOME_PATH:-<unset>}"
  for f in "${ASCEND_HOME_PATH:-/nonexistent}"/version.cfg "${ASCEND_HOME_PATH:-/nonexistent}"/*/ascend_toolkit_install.info; do
    [ -f "$f" ] && { echo "-- $f"; head -n 5 "$f"; }
  done
  echo "== versions"
  python - <<'EOF'
import importlib.util, platform, sys
import torch
print("python", platform.python_version(), sys.executable)
print("torch", torch.__version__)
if importlib.util.find_spec("torch_npu") is None:
    print("torch_npu: not installed")
else:
    try:
        import torch_npu
        print("torch_npu", torch_npu.__version__, "npu available", torch.npu.is_available(),
              "devices", torch.npu.device_count())
        if torch.npu.is_available():
            print("device", torch.npu.get_device_name(0))
    except Exception as exc:
        print("torch_npu import failed:", exc)
EOF
  echo "== longattn.info()"; python -m longattn || true
} 2>&1 | tee "$OUT/env.txt"

# ---- 1. build the kernels and the torch_npu binding ----
if [ "$SMOKE" = 1 ] || [ "${BUILD:-1}" = 0 ]; then
  echo "== build skipped (SMOKE=$SMOKE BUILD=${BUILD:-1})" | tee "$OUT/summary.txt"
else
  if [ -z "${SOC_VERSION:-}" ]; then  # e.g. "910B3" in npu-smi's table -> Ascend910B3
    chip=$(npu-smi info 2>/dev/null | grep -o -m1 '910[A-Z0-9]*' || true)
    SOC_VERSION="Ascend${chip:-910B1}"
  fi
  export SOC_VERSION
  echo "== build (SOC_VERSION=$SOC_VERSION)" | tee "$OUT/summary.txt"
  rc=0
  timeout "$(within 60)" bash ascend_c/build_npu.sh >"$OUT/build.log" 2>&1 || rc=$?
  echo "$rc" >"$OUT/build.rc"
  tail -n 30 "$OUT/build.log" | tee -a "$OUT/summary.txt"
  if [ "$rc" != 0 ]; then
    echo "build rc=$rc: stopping (the log is $OUT/build.log)" | tee -a "$OUT/summary.txt"
    exit 2
  fi
fi

# ---- 2. tests on NPU tensors, one shard at a time (one device) ----
if [ "$SMOKE" = 1 ]; then COLLECT_ONLY=(--collect-only); else COLLECT_ONLY=(); export LONGATTN_TEST_DEVICE=npu; fi
# -k: the `ascend` parameter only (ascend_sim runs on CPU tensors and is CI's)
ASCEND_ONLY="ascend and not ascend_sim"
run_shard() {
  local name=$1; shift
  local rc=0
  timeout "$(within 120)" python -m pytest "$@" -k "$ASCEND_ONLY" "${COLLECT_ONLY[@]}" -q -rfEs \
    --durations=10 -p no:cacheprovider --junitxml="$OUT/junit-$name.xml" >"$OUT/pytest-$name.log" 2>&1 || rc=$?
  echo "$rc" >"$OUT/pytest-$name.rc"
  echo "-- $name: rc=$rc" | tee -a "$OUT/summary.txt"
  tail -n 25 "$OUT/pytest-$name.log" | tee -a "$OUT/summary.txt"
  [ "$rc" = 0 ] || failed=1
}
echo "== tests ($(( $(date +%s) - START ))s elapsed)" | tee -a "$OUT/summary.txt"
run_shard hazards tests/ascend/test_hardware_hazards.py
run_shard ops tests/ops

# ---- 3. V4 decode and the indexer at a 1M context, ascend vs the reference on the same device ----
if [ "${BENCH:-1}" = 0 ]; then
  echo "== python -m bench skipped (BENCH=0)" | tee -a "$OUT/summary.txt"
else
  echo "== python -m bench ($(( $(date +%s) - START ))s elapsed)" | tee -a "$OUT/summary.txt"
  BENCH_ARGS=(--device npu --time-budget "$(within 120)"); [ "$SMOKE" = 1 ] && BENCH_ARGS=(--device cpu --list)
  rc=0
  timeout "$(within 10)" python -m bench "${BENCH_ARGS[@]}" --backends ascend reference \
    --ops sparse_attention.decode indexer_topk.decode --contexts 1M --batch 1 24 96 --presets v4-flash v4-pro \
    --dtypes bf16 fp8 --peer-max-s 5 --out "$OUT/bench" --no-plots 2>&1 | tee "$OUT/bench.log" || rc=$?
  echo "bench rc=$rc" | tee -a "$OUT/summary.txt"
  [ "$rc" = 0 ] || failed=1
fi
echo "== done in $(( $(date +%s) - START ))s; outputs in $OUT; failed=$failed" | tee -a "$OUT/summary.txt"
exit "$failed"
