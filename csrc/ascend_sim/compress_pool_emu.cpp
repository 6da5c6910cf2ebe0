// SPDX-License-Identifier: Apache-2.0
// Emulator build of the compress_pool kernel (AIV only).
#include "ascend_c/compress_pool/op_kernel/compress_pool.cpp"
#include "csrc/ascend_sim/launchers.h"

namespace longattn_ascend {

void LaunchCompressPool(const CompressPoolArgs& a, const CompressPoolTiling& t)
{
    if (t.blockDim == 0) return;
    CompressPoolTiling tiling = t;  // the kernel reads its tiling from "GM"
    longattn_emu::LaunchVector(t.blockDim, [&] {
        compress_pool((GM_ADDR)a.a, (GM_ADDR)a.b, (GM_ADDR)a.out, nullptr, reinterpret_cast<GM_ADDR>(&tiling));
    });
}

}  // namespace longattn_ascend
