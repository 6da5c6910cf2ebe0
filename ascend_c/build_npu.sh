#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Builds the NPU kernels + torch binding (ascend_c/CMakeLists.txt) into
# ascend_c/build_npu/liblongattn_ascend_npu.so, which python/longattn/backends/ascend.py loads.
# WRITTEN, NEVER RUN: no CANN toolkit was available where it was written.
#
#   source /usr/local/Ascend/ascend-toolkit/set_env.sh     # sets ASCEND_HOME_PATH (CANN 8.5.0)
#   SOC_VERSION=Ascend910B1 ascend_c/build_npu.sh          # or LONGATTN_BUILD_NPU=1 pip install --no-build-isolation .
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
if [[ -z "${ASCEND_HOME_PATH:-}" || ! -d "${ASCEND_HOME_PATH}" ]]; then
  echo "build_npu.sh: ASCEND_HOME_PATH must point at a CANN toolkit (source its set_env.sh)" >&2
  exit 2
fi
build="${LONGATTN_NPU_BUILD_DIR:-${here}/build_npu}"
python="${PYTHON:-$(command -v python3)}"
cmake -S "${here}" -B "${build}" -DCMAKE_BUILD_TYPE=Release -DSOC_VERSION="${SOC_VERSION:-Ascend910B1}" \
      -DPython3_EXECUTABLE="${python}"
cmake --build "${build}" -j "${MAX_JOBS:-8}"
echo "built ${build}/liblongattn_ascend_npu.so"
