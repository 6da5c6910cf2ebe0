// SPDX-License-Identifier: Apache-2.0
// Emulator build of the indexer_topk kernel (mixed: 1 AIC + 2 AIV per AI core).
#include "ascend_c/indexer_topk/op_kernel/indexer_topk.cpp"
#include "csrc/ascend_sim/launchers.h"

namespace longattn_ascend {

void LaunchIndexerTopk(const IndexerTopkArgs& a, const IndexerTopkTiling& t)
{
    if (t.blockDim == 0) return;
    IndexerTopkTiling tiling = t;
    longattn_emu::LaunchMix(t.blockDim, [&] {
        indexer_topk((GM_ADDR)a.q, (GM_ADDR)a.weights, (GM_ADDR)a.indexK, (GM_ADDR)a.visibleEnd, (GM_ADDR)a.blockTable,
                     (GM_ADDR)a.seqIds, (GM_ADDR)a.indices, (GM_ADDR)a.lengths, (GM_ADDR)a.logits, (GM_ADDR)a.workspace,
                     reinterpret_cast<GM_ADDR>(&tiling));
    });
}

}  // namespace longattn_ascend
