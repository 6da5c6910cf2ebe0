// SPDX-License-Identifier: Apache-2.0
// indexer_topk kernel entry (KERNEL_TYPE_MIX_AIC_1_2): the lightning indexer of DeepSeek-V4,
// score(t, j) = sum_h w[t, h] relu(q[t, h] . k_j) over the visible entries (flat or paged index keys),
// then an exact top-k ordered by (score desc, entry id asc), or the dense scores (logits mode).
// Cube side: indexer_topk_cube.h; vector side: indexer_topk_vector.h; tiling: ../op_host.
#include "indexer_topk_cube.h"
#include "indexer_topk_vector.h"

namespace longattn_ascend {
template <typename T>
__aicore__ inline void RunIndexer(GM_ADDR q, GM_ADDR weights, GM_ADDR indexK, GM_ADDR visibleEnd, GM_ADDR blockTable,
                                  GM_ADDR seqIds, GM_ADDR indices, GM_ADDR lengths, GM_ADDR logits, GM_ADDR ws,
                                  const IndexerTopkTiling& t)
{
    if ASCEND_IS_AIC {
        idx::IndexerCube<T> op;
        op.Init(q, indexK, visibleEnd, blockTable, seqIds, ws, t);
        op.Process();
    }
    if ASCEND_IS_AIV {
        idx::IndexerVector<T> op;
        op.Init(weights, visibleEnd, blockTable, seqIds, indices, lengths, logits, ws, t);
        op.Process();
    }
}
}  // namespace longattn_ascend

extern "C" __global__ __aicore__ void indexer_topk(GM_ADDR q, GM_ADDR weights, GM_ADDR indexK, GM_ADDR visibleEnd,
                                                   GM_ADDR blockTable, GM_ADDR seqIds, GM_ADDR indices, GM_ADDR lengths,
                                                   GM_ADDR logits, GM_ADDR workspace, GM_ADDR tiling)
{
    KERNEL_TASK_TYPE_DEFAULT(KERNEL_TYPE_MIX_AIC_1_2);
    const auto t = longattn_compat::ReadTiling<longattn_ascend::IndexerTopkTiling>(tiling);
    // The whole workspace is the user workspace: no high-level API here needs the system workspace, and
    // GetUserWorkspace on the device ignores its argument (system workspace base + 16 MiB, valid only
    // after SetSysWorkspace or in a HAVE_WORKSPACE build), so it is not called.
    GM_ADDR ws = workspace;
    if (t.dtype == longattn_ascend::kDtF32)
        longattn_ascend::RunIndexer<float>(q, weights, indexK, visibleEnd, blockTable, seqIds, indices, lengths, logits,
                                           ws, t);
    if (t.dtype == longattn_ascend::kDtBF16)
        longattn_ascend::RunIndexer<bfloat16_t>(q, weights, indexK, visibleEnd, blockTable, seqIds, indices, lengths,
                                                logits, ws, t);
    if (t.dtype == longattn_ascend::kDtF16)
        longattn_ascend::RunIndexer<half>(q, weights, indexK, visibleEnd, blockTable, seqIds, indices, lengths, logits,
                                          ws, t);
}
