// SPDX-License-Identifier: Apache-2.0
// compress_kv tiling (the stateful, paged KV compressor of DeepSeek-V4): POD struct, tiling
// function and the launcher's GM argument block. Plain C++ shared by the emulator build, the NPU
// host code and the kernel.
//
// The host side also prepares small per-token metadata with tensor ops (see csrc/*: the same on
// CPU and NPU): the position where each token's chunk starts / ends, the list of tokens that emit
// an entry ((p + 1) % ratio == 0), and the RoPE cos/sin of each emitting token's entry position
// j * ratio (fp32 angles, exactly as longattn.rope).
#pragma once

#include "../../common/longattn_types.h"

namespace longattn_ascend {

struct CompressKvTiling {
    uint32_t numTokens;      // T
    uint32_t width;          // W = c * d: row width of a and b
    uint32_t dim;            // d: entry width
    uint32_t ratio;          // tokens per entry
    uint32_t overlap;        // 1: CSA overlap (c = 2), 0: c = 1
    uint32_t ringSize;       // S = c * ratio: ring positions per sequence = slots pooled per entry
    uint32_t inDtype;        // DataTypeCode of a and b (F32/BF16/F16)
    uint32_t outDtype;       // DataTypeCode of the out pool (F32/BF16/F16/FP8Record)
    uint32_t statePages;     // state [statePages, statePageSize, 2W] fp32
    uint32_t statePageSize;
    uint32_t stateBtRows;    // state_block_table [stateBtRows, stateBtCols]
    uint32_t stateBtCols;
    uint32_t outPages;       // out [outPages, outPageSize, d] (float) or FP8 [outPages, outPageBytes]
    uint32_t outPageSize;
    uint32_t outPageBytes;
    uint32_t outBtRows;      // out_block_table [outBtRows, outBtCols]
    uint32_t outBtCols;
    uint32_t ropeDim;        // R: rotated dims (the last R of d), interleaved pairs
    float eps;               // RMSNorm epsilon
    uint32_t numEmit;        // length of the emitting-token list (T: its -1 tail marks the end)
    uint32_t blockDim;       // AIV cores
    uint32_t rsv;
};

struct CompressKvArgs {
    const void* a;                // [T, W]
    const void* b;                // [T, W]
    const int64_t* positions;     // [T] absolute positions (int64: any value, negative ones emit nothing)
    const int32_t* tokenRows;     // [T]
    const int64_t* chunkStart;    // [T] position of the first token of the token's chunk
    const int64_t* chunkEnd;      // [T] position of the last token of the token's chunk
    const int32_t* emitTokens;    // [E] tokens that emit an entry
    const float* cosTab;          // [T, R/2] cos of the token's entry position (emitting tokens)
    const float* sinTab;          // [T, R/2]
    const float* normWeight;      // [d]
    float* state;                 // [statePages * statePageSize, 2W]
    const int32_t* stateBt;       // [stateBtRows, stateBtCols]
    void* out;                    // out pool
    const int32_t* outBt;         // [outBtRows, outBtCols]
};

inline uint32_t CompressKvTilingCompute(CompressKvTiling& t, uint32_t T, uint32_t width, uint32_t ratio, bool overlap,
                                        uint32_t inDtype, uint32_t outDtype, uint32_t statePages,
                                        uint32_t statePageSize, uint32_t stateBtRows, uint32_t stateBtCols,
                                        uint32_t outPages, uint32_t outPageSize, uint32_t outPageBytes,
                                        uint32_t outBtRows, uint32_t outBtCols, uint32_t ropeDim, float eps,
                                        uint32_t numEmit, uint32_t numCores)
{
    t = CompressKvTiling{};
    t.numTokens = T;
    t.width = width;
    t.overlap = overlap ? 1u : 0u;
    t.dim = overlap ? width / 2 : width;
    t.ratio = ratio;
    t.ringSize = (overlap ? 2u : 1u) * ratio;
    t.inDtype = inDtype;
    t.outDtype = outDtype;
    t.statePages = statePages;
    t.statePageSize = statePageSize;
    t.stateBtRows = stateBtRows;
    t.stateBtCols = stateBtCols;
    t.outPages = outPages;
    t.outPageSize = outPageSize;
    t.outPageBytes = outPageBytes;
    t.outBtRows = outBtRows;
    t.outBtCols = outBtCols;
    t.ropeDim = ropeDim;
    t.eps = eps;
    t.numEmit = numEmit;
    if (T == 0 || numCores == 0 || ratio == 0) return 0;
    t.blockDim = MinU(numCores, MaxU(numEmit, T));
    return t.blockDim;
}

// UB bytes of one AIV: mirrors CompressKvKernel::Init (each buffer rounded up to 32 B, as TPipe
// does), for entry width d, row width W = c * d, input element size, rope dims, output kind.
inline uint32_t CompressKvUbBytes(uint32_t dim, uint32_t width, uint32_t inSize, uint32_t ropeDim, bool fp8Out,
                                  uint32_t outSize)
{
    auto al = [](uint32_t b) { return AlignUpU(b, 32); };
    const uint32_t dPad = AlignUpU(dim, 16), dV = AlignUpU(dim, 64), wPad = AlignUpU(width, 16);
    uint32_t b = 2 * al(2 * dPad * inSize) + 2 * al(2 * dPad * 4);  // inQue_, ringQue_
    b += al(8 * dV * 4) + al(dV / 8) + al(dPad * 4) + al(128 * 4);  // vecBuf_, maskBuf_, normBuf_, redBuf_
    b += al(2 * AlignUpU(MaxU(ropeDim / 2, 1), 8) * 4) + al(5 * AlignUpU(MaxU(ropeDim, 8), 8) * 4);  // rope
    b += al(2 * wPad * inSize) + al(2 * width * 4);                 // rowInQue_, rowOutQue_ (phase 2)
    b += fp8Out ? 2 * al(kFp8DataBytes + 32) + al(kFp8QuantizerUbBytes)
                : 2 * al(dPad * outSize);  // outQue_ (+ quantiser)
    return b;
}

// What the kernel supports (empty string: supported). inSize: element size of a / b as the kernel
// reads them (4 when the host widens two different dtypes); outSize: element size of a float pool.
inline const char* CompressKvUnsupported(uint32_t dim, uint32_t width, uint32_t inSize, uint32_t ropeDim, bool fp8Out,
                                         uint32_t outSize)
{
    if (dim % 8 != 0) return "entry width d must be a multiple of 8 (32-B aligned fp32 rows)";
    if (ropeDim % 2 != 0 || ropeDim > dim || (dim - ropeDim) % 8 != 0)
        return "rope dims must be even and start 32-B aligned";
    if (dim > 4096) return "entry width d > 4096 (UB)";
    if (fp8Out && dim != kFp8HeadDim) return "FP8 output pools need d = 512";
    if (CompressKvUbBytes(dim, width, inSize, ropeDim, fp8Out, outSize) > kUbBytes)
        return "the buffers for this d (and a / b / out dtypes) exceed the UB of an AIV";
    return "";
}

}  // namespace longattn_ascend
