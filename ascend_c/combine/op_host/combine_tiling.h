// SPDX-License-Identifier: Apache-2.0
// merge_attention_states / apply_attention_sink / merge_partial_states tiling: POD structs + tiling
// functions + host argument blocks, plain C++ shared by the emulator build (csrc/ascend_sim), the NPU
// host code (csrc/ascend_npu) and the kernel (which reads the struct through its __gm__ pointer).
//
// The kernels walk rows r = t * H + h of [T*H, D] tensors. Core c owns rows [c * rowsPerCore, ...);
// its rows go in batches of `batchRows` lse values (the per-row weights, vectorised), each batch in
// chunks of `chunkRows` rows x `colTile` columns (the double-buffered data tiles).
#pragma once

#include "../../common/longattn_types.h"

namespace longattn_ascend {

enum CombineMode : uint32_t {
    kCombineMerge = 0,  // merge_attention_states
    kCombineSink = 1,   // apply_attention_sink
};

struct CombineTiling {
    uint32_t mode;          // CombineMode
    uint32_t numRows;       // R = T * H
    uint32_t numHeads;      // H (sink: row r takes sink table entry r mod H + its batch offset)
    uint32_t headDim;       // D (0: merge writes only the lse)
    uint32_t dtype;         // DataTypeCode of the outs (inputs and output share it)
    uint32_t blockDim;      // AIV cores launched
    uint32_t rowsPerCore;   // core c: rows [c * rowsPerCore, min(R, (c + 1) * rowsPerCore))
    uint32_t batchRows;     // lse values per batch (a multiple of 64: whole 256-B Compare repeats)
    uint32_t chunkRows;     // rows per data tile (<= 255: one vector repeat per row)
    uint32_t colTile;       // columns per data tile (<= kCombineMaxCols)
    uint32_t sinkTableLen;  // sink: H + batchRows entries (sink[j mod H])
    uint32_t ubBytes;       // UB the kernel allocates (<= kUbBytes)
};

constexpr uint32_t kCombineBatchRows = 512;
constexpr uint32_t kCombineMaxCols = 1024;   // fp32 row pitch <= 1024: repeat strides of pitch / 8 <= 255 blocks
constexpr uint32_t kCombineMaxChunkRows = 255;  // repeat count of the row-broadcast multiply
constexpr uint32_t kCombineTileBytes = 120u * 1024u;  // all data-tile buffers together

// Bytes per tile element of all data-tile buffers: merge: out_a, out_b and out queues (2 buffers each)
// + two fp32 work tiles for 16-bit dtypes; sink: in and out queues + one fp32 work tile.
__aicore__ inline constexpr uint32_t CombineBytesPerTileElem(uint32_t mode, uint32_t sz)
{
    return mode == kCombineMerge ? 3u * 2u * sz + (sz == 4u ? 0u : 2u * 4u) : 2u * 2u * sz + (sz == 4u ? 0u : 4u);
}

// Floats of a Brcb'd weight buffer: one 32-B block per row for a chunk starting anywhere in its batch
// (the Brcb source starts at the 8-aligned row below the chunk).
__aicore__ inline constexpr uint32_t CombineBrcbFloats(uint32_t chunkRows) { return AlignUpU(chunkRows + 7u, 8u) * 8u; }

// UB bytes of the kernel (mirrors CombineKernel::Init; every buffer is a multiple of 32 B).
__aicore__ inline constexpr uint32_t CombineUbBytes(uint32_t mode, uint32_t sz, uint32_t batchRows, uint32_t chunkRows,
                                                    uint32_t colTile)
{
    const uint32_t tileElems = chunkRows * AlignUpU(colTile, 16u);
    const uint32_t merge = mode == kCombineMerge ? 1u : 0u;
    const uint32_t lseIn = 2u * batchRows * 4u;                       // lse_a | lse_b, or lse | sinks
    const uint32_t lseOut = merge * batchRows * 4u;                   // merged lse
    const uint32_t vecs = (merge ? 5u : 2u) * batchRows * 4u;         // weights and temporaries
    const uint32_t masks = 2u * AlignUpU(batchRows / 8u, 32u);        // Compare bit masks
    const uint32_t brcb = (1u + merge) * CombineBrcbFloats(chunkRows) * 4u;
    return lseIn + lseOut + vecs + masks + brcb + tileElems * CombineBytesPerTileElem(mode, sz);
}

// numCores: AIV cores available. Returns blockDim (0: nothing to launch).
inline uint32_t CombineTilingCompute(CombineTiling& t, uint32_t mode, uint32_t numRows, uint32_t numHeads,
                                     uint32_t headDim, uint32_t dtype, uint32_t numCores)
{
    t = CombineTiling{};
    t.mode = mode;
    t.numRows = numRows;
    t.numHeads = numHeads;
    t.headDim = headDim;
    t.dtype = dtype;
    t.batchRows = kCombineBatchRows;
    t.sinkTableLen = numHeads + kCombineBatchRows;
    const uint32_t sz = DtSize(dtype);
    // Columns: D in near-equal tiles of at most kCombineMaxCols (16-aligned: whole 32-B blocks for
    // every tile but the last, in any dtype). D = 0 (merge: lse only) allocates a nominal tile.
    const uint32_t d = MaxU(headDim, 1u);
    const uint32_t tiles = CeilDivU(d, kCombineMaxCols);
    t.colTile = MinU(AlignUpU(CeilDivU(d, tiles), 16u), kCombineMaxCols);
    const uint32_t pitch = AlignUpU(t.colTile, 16u);
    const uint32_t tileElems = kCombineTileBytes / CombineBytesPerTileElem(mode, sz);
    t.chunkRows = MaxU(1u, MinU(kCombineMaxChunkRows, tileElems / pitch));
    t.ubBytes = CombineUbBytes(mode, sz, t.batchRows, t.chunkRows, t.colTile);
    if (numRows == 0 || numCores == 0 || t.ubBytes > kUbBytes) return 0;
    t.blockDim = MinU(numCores, numRows);
    t.rowsPerCore = CeilDivU(numRows, t.blockDim);
    t.blockDim = CeilDivU(numRows, t.rowsPerCore);
    return t.blockDim;
}

// ---- merge_partial_states: the S-way merge of split-KV partial states (one launch) ----------------------
// Partials [T, S, H, D] fp32 (partial s of row r = t * H + h is row (t * S + s) * H + h: the layout the
// split-KV attention launch writes, read without a copy), lse [T, S, H] fp32; out [T, H, D] in the out
// dtype, lse [T, H] fp32; optional sinks [H]. A batch of rows never crosses a token, so for each partial
// its lse values (and the sinks) are one contiguous slice.
struct MergePartialsTiling {
    uint32_t numRows;      // R = T * H
    uint32_t numHeads;     // H
    uint32_t numPartials;  // S (1 .. kMergePartialsMaxS)
    uint32_t headDim;      // D (0: only the lse is written)
    uint32_t dtype;        // DataTypeCode of the output (partials are fp32)
    uint32_t hasSink;      // 1: out *= 1 / (1 + exp(sink[h] - lse))
    uint32_t blockDim;     // AIV cores launched
    uint32_t rowsPerCore;  // core c: rows [c * rowsPerCore, min(R, (c + 1) * rowsPerCore))
    uint32_t batchRows;    // rows per batch of weights (a multiple of 64; a batch also ends at a token's end)
    uint32_t chunkRows;    // rows per data tile (<= 255)
    uint32_t colTile;      // columns per data tile (<= kCombineMaxCols)
    uint32_t ubBytes;      // UB the kernel allocates (<= kUbBytes)
};

constexpr uint32_t kMergePartialsMaxS = 64;             // partials per row (the split's S is capped to it)
constexpr uint32_t kMergePartialsLseBytes = 32u * 1024u;  // the S lse rows + the sinks of a batch

// Bytes per tile element: the fp32 partial queue (2 buffers), the fp32 accumulator, the out queue (2).
__aicore__ inline constexpr uint32_t MergePartialsBytesPerTileElem(uint32_t sz) { return 2u * 4u + 4u + 2u * sz; }

// Rows per batch for S partials: (S + 1) lse rows of the batch within kMergePartialsLseBytes, 64..512.
__aicore__ inline constexpr uint32_t MergePartialsBatchRows(uint32_t S)
{
    return MinU(kCombineBatchRows, MaxU(64u, kMergePartialsLseBytes / (4u * (S + 1u)) / 64u * 64u));
}

// UB bytes of the kernel (mirrors MergePartialsKernel::Init; every buffer is a multiple of 32 B).
__aicore__ inline constexpr uint32_t MergePartialsUbBytes(uint32_t S, uint32_t sz, uint32_t batchRows,
                                                          uint32_t chunkRows, uint32_t colTile)
{
    const uint32_t tileElems = chunkRows * AlignUpU(colTile, 16u);
    const uint32_t lseIn = (S + 1u) * batchRows * 4u;              // S lse rows (then weights) | sinks
    const uint32_t lseOut = batchRows * 4u;                        // merged lse
    const uint32_t vecs = 5u * batchRows * 4u;                     // m, m*, total, lse, row factor
    const uint32_t masks = 2u * AlignUpU(batchRows / 8u, 32u);     // Compare bit masks
    const uint32_t brcb = CombineBrcbFloats(chunkRows) * 4u;       // Brcb'd coefficients (one side at a time)
    return lseIn + lseOut + vecs + masks + brcb + tileElems * MergePartialsBytesPerTileElem(sz);
}

// numCores: AIV cores available. Returns blockDim (0: nothing to launch, or S outside 1..kMergePartialsMaxS).
inline uint32_t MergePartialsTilingCompute(MergePartialsTiling& t, uint32_t numRows, uint32_t numHeads,
                                           uint32_t numPartials, uint32_t headDim, uint32_t dtype, bool hasSink,
                                           uint32_t numCores)
{
    t = MergePartialsTiling{};
    t.numRows = numRows;
    t.numHeads = numHeads;
    t.numPartials = numPartials;
    t.headDim = headDim;
    t.dtype = dtype;
    t.hasSink = hasSink ? 1u : 0u;
    if (numPartials == 0 || numPartials > kMergePartialsMaxS || numHeads == 0) return 0;
    t.batchRows = MergePartialsBatchRows(numPartials);
    const uint32_t d = MaxU(headDim, 1u);
    const uint32_t tiles = CeilDivU(d, kCombineMaxCols);
    t.colTile = MinU(AlignUpU(CeilDivU(d, tiles), 16u), kCombineMaxCols);
    const uint32_t pitch = AlignUpU(t.colTile, 16u);
    const uint32_t tileElems = kCombineTileBytes / MergePartialsBytesPerTileElem(DtSize(dtype));
    t.chunkRows = MaxU(1u, MinU(kCombineMaxChunkRows, tileElems / pitch));
    t.ubBytes = MergePartialsUbBytes(numPartials, DtSize(dtype), t.batchRows, t.chunkRows, t.colTile);
    if (numRows == 0 || numCores == 0 || t.ubBytes > kUbBytes) return 0;
    t.blockDim = MinU(numCores, numRows);
    t.rowsPerCore = CeilDivU(numRows, t.blockDim);
    t.blockDim = CeilDivU(numRows, t.rowsPerCore);
    return t.blockDim;
}

// Host argument blocks (GM pointers of one launch; never seen by kernel code).
struct MergeArgs {
    const void* outA;  // [R, D] out dtype
    const float* lseA;  // [R]
    const void* outB;  // [R, D]
    const float* lseB;  // [R]
    void* out;          // [R, D]
    float* lse;         // [R]
};

struct MergePartialsArgs {
    const float* partOut;  // [T, S, H, D] fp32
    const float* partLse;  // [T, S, H] fp32
    const float* sinks;    // [H] fp32 (read only when hasSink)
    void* out;             // [T, H, D] out dtype
    float* lse;            // [T, H]
};

struct SinkArgs {
    const void* out;          // [R, D]
    const float* lse;         // [R]
    const float* sinkTable;   // [H + batchRows]: sink[j mod H]
    void* result;             // [R, D]
};

}  // namespace longattn_ascend
