// SPDX-License-Identifier: Apache-2.0
// Host-side launchers of the emulated Ascend C kernels (ascend_c/<op>/op_kernel/*.cpp compiled with
// -DLONGATTN_ASCEND_EMU). Each takes raw host pointers (GM), a filled tiling struct and the workspace,
// and returns when every emulated core has finished. No torch here: these translation units contain
// only kernel code and the emulator, compiled with -Wall -Werror.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "ascend_c/append_kv/op_host/append_kv_tiling.h"
#include "ascend_c/combine/op_host/combine_tiling.h"
#include "ascend_c/compress_kv/op_host/compress_kv_tiling.h"
#include "ascend_c/compress_pool/op_host/compress_pool_tiling.h"
#include "ascend_c/indexer_topk/op_host/indexer_topk_tiling.h"
#include "ascend_c/sparse_attention/op_host/sparse_attention_tiling.h"

namespace longattn_ascend {

// The emulator's work counters of one core / one launch (plain copies of longattn_emu's, so that the
// torch binding needs no emulator header). Pipes in the order S, V, M, MTE1, MTE2, MTE3, FIX.
constexpr int kEmuPipes = 7;
struct EmuCoreWork {
    bool aic = false;
    int64_t group = 0;
    uint64_t ops[kEmuPipes] = {}, gmRead[kEmuPipes] = {}, gmWrite[kEmuPipes] = {};
    uint64_t ubRead = 0, ubWrite = 0, macs = 0, fractals = 0;
};
struct EmuLaunchWork {
    std::string kind;
    uint32_t blockDim = 0;
    std::vector<EmuCoreWork> cores;
};
// The launches finished since the last call, oldest first (and forget them).
std::vector<EmuLaunchWork> TakeEmuLaunchWork();

void LaunchAppendKv(void* pool, const void* rows, const int32_t* slots, const AppendKvTiling& t);

void LaunchSparseAttention(const SparseAttentionArgs& a, const SparseAttentionTiling& t);

void LaunchCompressKv(const CompressKvArgs& a, const CompressKvTiling& t);

void LaunchCompressPool(const CompressPoolArgs& a, const CompressPoolTiling& t);

void LaunchIndexerTopk(const IndexerTopkArgs& a, const IndexerTopkTiling& t);

void LaunchMergeAttentionStates(const MergeArgs& a, const CombineTiling& t);

void LaunchApplyAttentionSink(const SinkArgs& a, const CombineTiling& t);

void LaunchMergePartialStates(const MergePartialsArgs& a, const MergePartialsTiling& t);

}  // namespace longattn_ascend
