// SPDX-License-Identifier: Apache-2.0
// append_kv tiling: POD struct + tiling function, plain C++ shared by the emulator build
// (csrc/ascend_sim), the NPU host code (csrc/ascend_npu) and the kernel (read through
// GET_TILING_DATA_WITH_STRUCT).
#pragma once

#include "../../common/longattn_types.h"

namespace longattn_ascend {

struct AppendKvTiling {
    uint32_t numRows;      // T: rows to write
    uint32_t headDim;      // D: elements per row
    uint32_t numSlots;     // pool slots (num_pages * page_size); slots outside [0, numSlots) are skipped
    uint32_t rowsDtype;    // DataTypeCode of `rows` (F32/BF16/F16)
    uint32_t poolDtype;    // DataTypeCode of the pool (F32/BF16/F16/FP8Record)
    uint32_t blockDim;     // AIV cores launched
    uint32_t rowsPerCore;  // core c writes rows [c * rowsPerCore, min(T, (c + 1) * rowsPerCore))
    uint32_t chunkElems;   // columns per UB tile (float pools); D for FP8 (one record per tile)
    uint32_t slotBatch;    // slot ids staged in UB per batch
    uint32_t pageSize;     // FP8 pool: records per page
    uint32_t pageBytes;    // FP8 pool: bytes per page
    uint32_t rsv;
};

constexpr uint32_t kAppendKvSlotBatch = 1024;
constexpr uint32_t kAppendKvMaxChunk = 4096;

// numCores: AIV cores available (e.g. 48 on 910B2, 40 on 910B3). Returns blockDim (0: nothing to do).
inline uint32_t AppendKvTilingCompute(AppendKvTiling& t, uint32_t numRows, uint32_t headDim, uint32_t numSlots,
                                      uint32_t rowsDtype, uint32_t poolDtype, uint32_t pageSize, uint32_t pageBytes,
                                      uint32_t numCores)
{
    t = AppendKvTiling{};
    t.numRows = numRows;
    t.headDim = headDim;
    t.numSlots = numSlots;
    t.rowsDtype = rowsDtype;
    t.poolDtype = poolDtype;
    t.pageSize = pageSize;
    t.pageBytes = pageBytes;
    t.slotBatch = kAppendKvSlotBatch;
    // Float pools: columns in tiles of up to 4096 (16-element aligned, so every tile but the last
    // is a whole number of 32-B blocks for any element size). FP8: one whole 512-wide row per tile.
    t.chunkElems = poolDtype == kDtFP8Record ? headDim : MinU(AlignUpU(headDim, 16), kAppendKvMaxChunk);
    if (numRows == 0 || headDim == 0 || numCores == 0) return 0;
    t.blockDim = MinU(numCores, numRows);
    t.rowsPerCore = CeilDivU(numRows, t.blockDim);
    t.blockDim = CeilDivU(numRows, t.rowsPerCore);
    return t.blockDim;
}

}  // namespace longattn_ascend
