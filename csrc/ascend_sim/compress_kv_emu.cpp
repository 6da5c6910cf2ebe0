// SPDX-License-Identifier: Apache-2.0
// Emulator build of the compress_kv kernel (vector cores + SyncAll).
#include "ascend_c/compress_kv/op_kernel/compress_kv.cpp"
#include "csrc/ascend_sim/launchers.h"

namespace longattn_ascend {

void LaunchCompressKv(const CompressKvArgs& a, const CompressKvTiling& t)
{
    if (t.blockDim == 0) return;
    CompressKvTiling tiling = t;
    longattn_emu::LaunchVector(t.blockDim, [&] {
        compress_kv((GM_ADDR)a.a, (GM_ADDR)a.b, (GM_ADDR)a.positions, (GM_ADDR)a.tokenRows, (GM_ADDR)a.chunkStart,
                    (GM_ADDR)a.chunkEnd, (GM_ADDR)a.emitTokens, (GM_ADDR)a.cosTab, (GM_ADDR)a.sinTab,
                    (GM_ADDR)a.normWeight, (GM_ADDR)a.state, (GM_ADDR)a.stateBt, (GM_ADDR)a.out, (GM_ADDR)a.outBt,
                    nullptr, reinterpret_cast<GM_ADDR>(&tiling));
    });
}

}  // namespace longattn_ascend
