#!/usr/bin/env bash
# The Triton kernels must keep working on triton 3.6 through 3.9 (the GPU image ships 3.6.0; CUDA
# torch 2.13 pins 3.7.1, which the main test run uses). This runs tests/triton and the triton cases
# of the op x backend tests (tests/ops -k triton) under the interpreter (and the offline sm_90 compile) with each other release, installed beside the venv's packages with
# --target and put first on PYTHONPATH. triton 3.6's interpreter needs numpy < 2.4 (its range() over
# program-derived bounds fails with numpy >= 2.4), so that numpy rides along in 3.6's directory.
# The releases are installed one after another, then tested side by side (each run is one mostly
# single-threaded interpreter process; on CI's two cores this halves the wall time), each into its own
# log, printed in order once all have ended; any failure fails the script.
# Run inside the activated venv from the repository root: bash .ci/triton_versions.sh [version...]
set -euo pipefail
cd "$(dirname "$0")/.."
versions=("$@")
[ ${#versions[@]} -eq 0 ] && versions=(3.6.0 3.8.0 3.9.0)
for v in "${versions[@]}"; do
  dir=".ci-cache/triton-$v"
  extra=()
  [[ "$v" == 3.6.* ]] && extra=("numpy<2.4")
  if [ ! -f "$dir/.installed" ]; then
    rm -rf "$dir"
    pip install -q --no-deps --target "$dir" "triton==$v" "${extra[@]}"
    touch "$dir/.installed"
  fi
done
pids=()
for v in "${versions[@]}"; do
  dir=".ci-cache/triton-$v"
  (
    export PYTHONPATH="$PWD/$dir${PYTHONPATH:+:$PYTHONPATH}"
    python -c "import triton; assert triton.__version__ == '$v', triton.__file__"
    python -m pytest tests/triton tests/ops -k "triton or not (reference or ascend_sim)" -q -p no:cacheprovider -W ignore::DeprecationWarning
  ) > ".ci-cache/triton-$v.log" 2>&1 &
  pids+=($!)
done
status=0
for i in "${!versions[@]}"; do
  rc=0
  wait "${pids[$i]}" || rc=$?
  echo "== tests/triton and tests/ops -k triton with triton ${versions[$i]} (exit status $rc)"
  cat ".ci-cache/triton-${versions[$i]}.log"
  [ "$rc" -eq 0 ] || status=1
done
exit "$status"
