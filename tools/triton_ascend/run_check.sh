#!/usr/bin/env bash
# Offline "does it lower for Ascend" check of longattn's Triton kernels with triton-ascend 3.2.0.
#
# triton-ascend installs its own top-level `triton` package (3.2.0), so it can never share an
# environment with upstream triton: this script builds a SEPARATE venv (never the repo's .venv),
# installs torch (the local CPU wheel), numpy, pybind11, triton-ascend and longattn itself
# (--no-deps, editable, so `import triton` inside longattn resolves to triton-ascend), then runs
# check.py, which writes results/report.md and results/report.json.
#
# Usage:  bash tools/triton_ascend/run_check.sh [extra check.py args]   (from any directory)
# Env:    TA_VENV   venv folder (default /tmp/longattn-triton-ascend-venv; kept between runs)
#         TA_OUT    report folder (default tools/triton_ascend/results)
#         TA_FRESH=1  delete and recreate the venv first
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
VENV="${TA_VENV:-/tmp/longattn-triton-ascend-venv}"
OUT="${TA_OUT:-$HERE/results}"
PY="${PYTHON:-python3}"

case "$(cd "$(dirname "$VENV")" 2>/dev/null && pwd)/$(basename "$VENV")" in
  "$ROOT/.venv"|"$ROOT/.venv/"*) echo "refusing to use the repo's main venv ($VENV)" >&2; exit 2 ;;
esac

if [[ "${TA_FRESH:-0}" == 1 && -d "$VENV" ]]; then rm -rf "$VENV"; fi
if [[ ! -x "$VENV/bin/python" ]]; then
  echo "== creating venv $VENV"
  "$PY" -m venv "$VENV"
fi
VPY="$VENV/bin/python"
PIP=("$VPY" -m pip --disable-pip-version-check)

# numpy < 2.4: triton-ascend 3.2.0's interpreter turns scalar kernel arguments into 1-element arrays and
# calls int() on them (range(0, D, BLOCK) in a kernel); numpy 2.4 made that a TypeError ("only
# 0-dimensional arrays can be converted to Python scalars"), 2.3 only warns (DeprecationWarning).
NUMPY_SPEC="${TA_NUMPY:-numpy<2.4}"
quiet() { grep -v "is ignored: it is neither a file nor a directory" || true; }

# pip check first: the wheels must be reachable (torch from the local wheel / cache, the rest from PyPI)
if ! "$VPY" -c "import triton, torch, numpy, pybind11" >/dev/null 2>&1; then
  echo "== pip download (reachability check)"
  DL="$(mktemp -d)"
  "${PIP[@]}" download --no-deps -q -d "$DL" "torch==2.13.0" "triton-ascend==3.2.0" pybind11 "$NUMPY_SPEC" 2>&1 | quiet
  ls "$DL"
  echo "== installing torch==2.13.0 $NUMPY_SPEC pybind11 triton-ascend==3.2.0"
  "${PIP[@]}" install -q --find-links "$DL" "torch==2.13.0" "$NUMPY_SPEC" pybind11 2>&1 | quiet
  # triton-ascend declares no dependencies; --no-deps keeps pip from touching torch
  "${PIP[@]}" install -q --no-deps --find-links "$DL" "triton-ascend==3.2.0" 2>&1 | quiet
  rm -rf "$DL"
fi
"$VPY" -c "import triton, torch, numpy, pybind11" || { echo "triton-ascend venv is not usable (see above)" >&2; exit 1; }
if ! "$VPY" -c "import longattn, sys; sys.exit(0 if longattn.__file__.startswith('$ROOT/') else 1)" >/dev/null 2>&1; then
  echo "== pip install --no-deps -e $ROOT"
  "${PIP[@]}" install -q --no-deps -e "$ROOT" 2>&1 | quiet
fi

echo "== environment"
# Paths are printed relative to the repository / the venv, so that a log of the run names no machine.
LA_ROOT="$ROOT" "$VPY" - <<'PY'
import importlib.metadata as md, os, sys
for d in ("torch", "numpy", "pybind11", "triton-ascend", "triton", "longattn"):
    try:
        print(f"  {d:14s} {md.version(d)}")
    except md.PackageNotFoundError:
        print(f"  {d:14s} (not installed)")
import triton, longattn
print("  triton module  ", triton.__version__, "$VENV/" + os.path.relpath(triton.__file__, sys.prefix))
print("  longattn module", os.path.relpath(longattn.__file__, os.environ["LA_ROOT"]))
PY

mkdir -p "$OUT"
echo "== check.py (lowering: a few minutes; the bitonic top-k runs into --adapter-timeout twice)"
# ASCEND_HOME_PATH must be unset: the compile is expected to stop right before bishengir-compile.
# "ERROR: Invalid bishengir path format: npuc" is triton-ascend probing for a CANN it does not find.
set +e
env -u ASCEND_HOME_PATH -u TRITON_INTERPRET "$VPY" "$HERE/check.py" --out "$OUT" "$@" 2> >(grep -v "Invalid bishengir path format" >&2)
rc=$?
set -e
echo "== reports: ${OUT#"$ROOT"/}/report.md ${OUT#"$ROOT"/}/report.json (check.py exit $rc)"
exit $rc
