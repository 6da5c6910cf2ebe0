// SPDX-License-Identifier: Apache-2.0
// Emulator build of the append_kv kernel (AIV only).
#include "ascend_c/append_kv/op_kernel/append_kv.cpp"
#include "csrc/ascend_sim/launchers.h"

namespace longattn_ascend {

void LaunchAppendKv(void* pool, const void* rows, const int32_t* slots, const AppendKvTiling& t)
{
    if (t.blockDim == 0) return;
    AppendKvTiling tiling = t;  // the kernel reads its tiling from "GM"
    longattn_emu::LaunchVector(t.blockDim, [&] {
        append_kv(reinterpret_cast<GM_ADDR>(pool), (GM_ADDR)(rows), (GM_ADDR)(slots), nullptr,
                  reinterpret_cast<GM_ADDR>(&tiling));
    });
}

}  // namespace longattn_ascend
