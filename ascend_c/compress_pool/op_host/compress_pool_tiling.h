// SPDX-License-Identifier: Apache-2.0
// compress_pool tiling (the stateless KV-compressor pooling of DeepSeek-V4): POD struct, tiling
// function, UB budget and the launcher's argument block. Plain C++ shared by the emulator build, the
// NPU host code and the kernel.
//
// Work: task = (entry j, channel tile), entries [S / ratio], tiles of tileDim channels (the last one
// narrower). Tasks are split into contiguous, balanced ranges over blockDim AIV cores; each task pools
// its entry's c * ratio slots (c = 2 with overlap: half A of block j - 1, half B of block j; entry 0
// with overlap: half B only) in chunks of up to chunkRows slots.
#pragma once

#include "../../common/longattn_types.h"

namespace longattn_ascend {

struct CompressPoolTiling {
    uint32_t numTokens;   // S: rows of a and b
    uint32_t width;       // W = c * d: columns of a and b
    uint32_t dim;         // d: entry width
    uint32_t ratio;       // tokens per entry
    uint32_t overlap;     // 1: CSA overlap (c = 2), 0: c = 1
    uint32_t numEntries;  // n = S / ratio
    uint32_t inDtype;     // DataTypeCode of a and b (F32/BF16/F16)
    uint32_t aPitch;      // elements between consecutive rows of a (>= W)
    uint32_t bPitch;      // elements between consecutive rows of b (>= W)
    uint32_t tileDim;     // channels per tile (the last tile: dim - (numTiles - 1) * tileDim)
    uint32_t numTiles;    // channel tiles per entry
    uint32_t chunkRows;   // R: slots per CopyIn (a and b rows of one channel tile)
    uint32_t numTasks;    // numEntries * numTiles
    uint32_t blockDim;    // AIV cores; core k takes tasks [k * numTasks / blockDim, (k + 1) * numTasks / blockDim)
    uint32_t ubBytes;     // UB bytes of one AIV (CompressPoolUbBytes of this tiling)
    uint32_t rsv;
};

struct CompressPoolArgs {
    const void* a;  // [S, W] rows aPitch apart
    const void* b;  // [S, W] rows bPitch apart
    float* out;     // [n, d] fp32
};

constexpr uint32_t kPoolMaxTile = 512;   // channels per tile at most (one V4 entry, d = 512, is one tile)
constexpr uint32_t kPoolMinTile = 64;    // tiles are split no finer than this to feed idle cores
constexpr uint32_t kPoolTileAlign = 64;  // width of every tile but the last when an entry is split
constexpr uint32_t kPoolMaxRows = 4095;  // DataCopyPad blockCount

// UB bytes of one AIV: mirrors CompressPoolKernel::Init (each buffer rounded up to 32 B, as TPipe does)
// for tiles of tileDim channels, chunks of `rows` slots and a / b elements of inSize bytes.
inline uint32_t CompressPoolUbBytes(uint32_t tileDim, uint32_t rows, uint32_t inSize)
{
    auto al = [](uint32_t b) { return AlignUpU(b, 32); };
    const uint32_t rowElems = AlignUpU(tileDim, 32 / inSize), dV = AlignUpU(tileDim, 64);
    uint32_t b = 2 * al(2 * rows * rowElems * inSize);      // inQue_: a rows | b rows, double-buffered
    if (inSize != 4) b += al(2 * rows * rowElems * 4);      // workBuf_: the chunk widened to fp32
    b += al(6 * dV * 4) + al(dV / 8);                       // vecBuf_ (m, m', m*, alpha, s, acc), maskBuf_
    b += 2 * al(tileDim * 4);                               // outQue_: the entry tile, double-buffered
    return b;
}

// What the kernel does not support (empty string: supported). The channel tiles and the chunk rows
// fit the UB for every d and ratio, so only the 32-bit sizes of the tiling limit it.
inline const char* CompressPoolUnsupported(uint64_t numelA, uint64_t numelB)
{
    if (numelA >= (1ull << 31) || numelB >= (1ull << 31)) return "a and b must have fewer than 2**31 elements";
    return "";
}

// numCores: AIV cores available. Returns blockDim (0: nothing to do).
inline uint32_t CompressPoolTilingCompute(CompressPoolTiling& t, uint32_t S, uint32_t width, uint32_t ratio,
                                          bool overlap, uint32_t inDtype, uint32_t aPitch, uint32_t bPitch,
                                          uint32_t numCores)
{
    t = CompressPoolTiling{};
    t.numTokens = S;
    t.width = width;
    t.overlap = overlap ? 1u : 0u;
    t.dim = overlap ? width / 2 : width;
    t.ratio = ratio;
    t.inDtype = inDtype;
    t.aPitch = aPitch;
    t.bPitch = bPitch;
    if (ratio == 0 || numCores == 0) return 0;
    const uint32_t d = t.dim, n = S / ratio, inSize = DtSize(inDtype);
    t.numEntries = n;
    if (n == 0 || d == 0) return 0;
    // Tiles: at most kPoolMaxTile wide; when there are fewer entries than cores, more tiles (no
    // narrower than kPoolMinTile) so that every core gets work.
    uint32_t tiles = CeilDivU(d, kPoolMaxTile);
    if (n < numCores) tiles = MaxU(tiles, MinU(CeilDivU(numCores, n), CeilDivU(d, kPoolMinTile)));
    t.tileDim = tiles == 1 ? d : AlignUpU(CeilDivU(d, tiles), kPoolTileAlign);
    t.numTiles = CeilDivU(d, t.tileDim);
    // Rows: as many slots per chunk as the UB holds (an entry has c * ratio slots).
    const uint32_t slots = (overlap ? 2u : 1u) * ratio;
    const uint32_t fixed = CompressPoolUbBytes(t.tileDim, 0, inSize);
    const uint32_t perRow = CompressPoolUbBytes(t.tileDim, 1, inSize) - fixed;  // every row term is 32-B whole
    const uint32_t fit = kUbBytes > fixed ? (kUbBytes - fixed) / perRow : 0u;
    t.chunkRows = MaxU(1u, MinU(MinU(slots, kPoolMaxRows), fit));
    t.ubBytes = CompressPoolUbBytes(t.tileDim, t.chunkRows, inSize);
    t.numTasks = n * t.numTiles;
    t.blockDim = MinU(numCores, t.numTasks);
    return t.blockDim;
}

}  // namespace longattn_ascend
