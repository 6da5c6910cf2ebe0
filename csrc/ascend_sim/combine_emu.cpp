// SPDX-License-Identifier: Apache-2.0
// Emulator build of the merge_attention_states, apply_attention_sink and merge_partial_states kernels (AIV only).
#include "ascend_c/combine/op_kernel/combine.cpp"
#include "csrc/ascend_sim/launchers.h"

namespace longattn_ascend {

void LaunchMergeAttentionStates(const MergeArgs& a, const CombineTiling& t)
{
    if (t.blockDim == 0) return;
    CombineTiling tiling = t;  // the kernel reads its tiling from "GM"
    longattn_emu::LaunchVector(t.blockDim, [&] {
        merge_attention_states((GM_ADDR)a.outA, (GM_ADDR)a.lseA, (GM_ADDR)a.outB, (GM_ADDR)a.lseB, (GM_ADDR)a.out,
                               (GM_ADDR)a.lse, nullptr, reinterpret_cast<GM_ADDR>(&tiling));
    });
}

void LaunchApplyAttentionSink(const SinkArgs& a, const CombineTiling& t)
{
    if (t.blockDim == 0) return;
    CombineTiling tiling = t;
    longattn_emu::LaunchVector(t.blockDim, [&] {
        apply_attention_sink((GM_ADDR)a.out, (GM_ADDR)a.lse, (GM_ADDR)a.sinkTable, (GM_ADDR)a.result, nullptr,
                             reinterpret_cast<GM_ADDR>(&tiling));
    });
}

void LaunchMergePartialStates(const MergePartialsArgs& a, const MergePartialsTiling& t)
{
    if (t.blockDim == 0) return;
    MergePartialsTiling tiling = t;
    longattn_emu::LaunchVector(t.blockDim, [&] {
        merge_partial_states((GM_ADDR)a.partOut, (GM_ADDR)a.partLse, (GM_ADDR)a.sinks, (GM_ADDR)a.out, (GM_ADDR)a.lse,
                             nullptr, reinterpret_cast<GM_ADDR>(&tiling));
    });
}

}  // namespace longattn_ascend
