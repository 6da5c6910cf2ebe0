// SPDX-License-Identifier: Apache-2.0
// sparse_attention kernel entry (KERNEL_TYPE_MIX_AIC_1_2): MQA over the index rows of two KV
// streams with topk_length, an attention sink and lse (DeepSeek-V4 SWA + compressed KV).
// Cube side: sparse_attention_cube.h; vector side: sparse_attention_vector.h; tiling and the
// workspace layout: ../op_host/sparse_attention_tiling.h; design: ../README.md.
#include "sparse_attention_cube.h"
#include "sparse_attention_vector.h"

namespace longattn_ascend {
template <typename T>
__aicore__ inline void RunSparseAttention(GM_ADDR q, GM_ADDR kv0, GM_ADDR idx0, GM_ADDR len0, GM_ADDR kv1, GM_ADDR idx1,
                                          GM_ADDR len1, GM_ADDR sink, GM_ADDR out, GM_ADDR lse, GM_ADDR ws,
                                          const SparseAttentionTiling& t)
{
    if ASCEND_IS_AIC {
        sa::SparseAttentionCube<T> op;
        op.Init(q, idx0, len0, idx1, len1, ws, t);
        op.Process();
    }
    if ASCEND_IS_AIV {
        sa::SparseAttentionVector<T> op;
        op.Init(kv0, kv1, idx0, len0, idx1, len1, sink, out, lse, ws, t);
        op.Process();
    }
}
}  // namespace longattn_ascend

extern "C" __global__ __aicore__ void sparse_attention(GM_ADDR q, GM_ADDR kv0, GM_ADDR idx0, GM_ADDR len0, GM_ADDR kv1,
                                                       GM_ADDR idx1, GM_ADDR len1, GM_ADDR sink, GM_ADDR out,
                                                       GM_ADDR lse, GM_ADDR workspace, GM_ADDR tiling)
{
    KERNEL_TASK_TYPE_DEFAULT(KERNEL_TYPE_MIX_AIC_1_2);
    const auto t = longattn_compat::ReadTiling<longattn_ascend::SparseAttentionTiling>(tiling);
    // The whole workspace is the user workspace: no high-level API here needs the system workspace, and
    // GetUserWorkspace on the device ignores its argument (system workspace base + 16 MiB, valid only
    // after SetSysWorkspace or in a HAVE_WORKSPACE build), so it is not called.
    GM_ADDR ws = workspace;
    if (t.dtype == longattn_ascend::kDtF32)
        longattn_ascend::RunSparseAttention<float>(q, kv0, idx0, len0, kv1, idx1, len1, sink, out, lse, ws, t);
    if (t.dtype == longattn_ascend::kDtBF16)
        longattn_ascend::RunSparseAttention<bfloat16_t>(q, kv0, idx0, len0, kv1, idx1, len1, sink, out, lse, ws, t);
    if (t.dtype == longattn_ascend::kDtF16)
        longattn_ascend::RunSparseAttention<half>(q, kv0, idx0, len0, kv1, idx1, len1, sink, out, lse, ws, t);
}
