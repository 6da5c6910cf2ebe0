// SPDX-License-Identifier: Apache-2.0
// Emulator build of the sparse_attention kernel (mixed: 1 AIC + 2 AIV per AI core).
#include "ascend_c/sparse_attention/op_kernel/sparse_attention.cpp"
#include "csrc/ascend_sim/launchers.h"

namespace longattn_ascend {

void LaunchSparseAttention(const SparseAttentionArgs& a, const SparseAttentionTiling& t)
{
    if (t.blockDim == 0) return;
    SparseAttentionTiling tiling = t;
    longattn_emu::LaunchMix(t.blockDim, [&] {
        sparse_attention((GM_ADDR)a.q, (GM_ADDR)a.kv0, (GM_ADDR)a.idx0, (GM_ADDR)a.len0, (GM_ADDR)a.kv1,
                         (GM_ADDR)a.idx1, (GM_ADDR)a.len1, (GM_ADDR)a.sink, (GM_ADDR)a.out, (GM_ADDR)a.lse,
                         (GM_ADDR)a.workspace, reinterpret_cast<GM_ADDR>(&tiling));
    });
}

}  // namespace longattn_ascend
