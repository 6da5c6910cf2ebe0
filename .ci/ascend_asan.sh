#!/usr/bin/env bash
# The Ascend C kernels under AddressSanitizer + UndefinedBehaviorSanitizer: builds the sanitizer
# variant of the emulator extension (longattn_ascend_sim_asan: -O0 -fsanitize=address,undefined) and
# runs tests/ascend/test_ascend_sim_asan.py, whose child process runs every kernel (the ascend_sim
# cases of tests/ops and tests/ascend/test_ascend_sim.py) with libasan preloaded.
#
# Run inside the activated venv from the repository root, after the install (as .ci/run does):
#   bash .ci/ascend_asan.sh
# Never passes by skipping: LONGATTN_REQUIRE_ASAN=1 turns every missing prerequisite into a failure.
# Prerequisites on a fresh Debian/Ubuntu: g++ (the gcc package alone has no C++ front end; any
# gcc-<N> pulls in libgcc-<N>-dev, which holds libasan.so), the Python headers (Python.h: the
# python.org / pyenv / docker python images have them, Debian's python3 needs python3-dev), and ninja
# (pip, part of the [test] extra). About 2 minutes of CPU on 2 cores, most of it the sanitizer build
# (cached afterwards in $TORCH_EXTENSIONS_DIR, default ~/.cache/longattn/torch_extensions).
set -euo pipefail
cd "$(dirname "$0")/.."
cxx="${CXX:-g++}"
if ! command -v "$cxx" >/dev/null; then
  echo "ascend_asan: no C++ compiler '$cxx' (apt-get install g++)" >&2
  exit 1
fi
libasan="$("$cxx" -print-file-name=libasan.so)"
pyinc="$(python -c 'import sysconfig; print(sysconfig.get_paths()["include"])')"
echo "== Ascend C kernels under ASan + UBSan: $cxx $("$cxx" -dumpfullversion), libasan: $libasan"
if [ ! -f "$pyinc/Python.h" ]; then
  echo "ascend_asan: $pyinc/Python.h is missing (apt-get install python3-dev): the extension cannot be built" >&2
  exit 1
fi
start=$SECONDS
LONGATTN_REQUIRE_ASAN=1 python -m pytest tests/ascend/test_ascend_sim_asan.py -q -p no:cacheprovider -rs
echo "== sanitizer run: $((SECONDS - start)) s"
