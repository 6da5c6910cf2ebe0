// SPDX-License-Identifier: Apache-2.0
// indexer_topk / indexer_logits tiling (the lightning indexer): POD struct, tiling function and the
// launcher's GM argument block. Plain C++ shared by the emulator build, the NPU host code and the
// kernel.
//
// Work unit = one query token (its Hi heads are the M dimension of q . k^T). Entries [0, visible)
// are scored in blocks of kIdxBlock (N of the cube); each AIV of the AI core owns half of a block's
// columns and keeps its own running top-k, merged by AIV 0 at the end of the token.
#pragma once

#include "../../common/longattn_types.h"

namespace longattn_ascend {

constexpr uint32_t kIdxBlock = 128;       // entries per cube block (64 per AIV)
constexpr uint32_t kIdxHalf = kIdxBlock / 2;
constexpr uint32_t kIdxMaxTopk = 1024;
constexpr uint32_t kIdxMaxHeads = 128;
constexpr uint32_t kIdxFlagId = 0x00FFFFFFu;  // id of a non-selectable candidate (exact in fp32; sorts last)
constexpr uint32_t kIdxMaxEntries = kIdxFlagId;  // entry ids must stay below the flag id
constexpr uint32_t kIdxMaxPieces = 3;            // bf16 pieces of an fp32 q (2 for fp16)
constexpr uint32_t kIdxProbeRows = 3;            // rows of the Fixpipe ReLU probe read back

struct IndexerTopkTiling {
    uint32_t numTokens;     // T
    uint32_t numHeads;      // Hi
    uint32_t headDim;       // Di (multiple of 16)
    uint32_t dtype;         // DataTypeCode of the cube inputs: index_k's, and q's (or q's bf16 pieces)
    uint32_t qPieces;       // 1: q in `dtype`; 2 / 3: q as bf16 pieces [qPieces, T, Hi, Di] summing to q
    uint32_t numEntries;    // N (flat) or max_pages * page_size (paged)
    uint32_t paged;         // 1: index_k is [P, page, Di] + block_table + seq_ids
    uint32_t numPages;      // P (paged)
    uint32_t pageSize;      // page (paged)
    uint32_t btRows;        // block_table [btRows, btCols]
    uint32_t btCols;
    uint32_t topk;          // K (top-k mode)
    uint32_t logitsMode;    // 1: write [T, N] scores instead of top-k
    uint32_t returnSlots;   // 1: physical slots instead of entry ids
    uint32_t blockDim;      // AI cores
    uint32_t kTile;         // Di slice per Mmad
    uint32_t listCap;       // pairs per UB candidate list (>= K + 64 and >= 2K, multiple of 32)
    uint32_t wsSOff;        // per-core workspace: [2][Mp][kIdxBlock] fp32 scores
    uint32_t wsListOff;     // [2][K] (score, id) pairs: AIV 1's list for AIV 0
    uint32_t wsProbeOff;    // [kIdxProbeRows][16] fp32: the Fixpipe ReLU probe (indexer_topk_common.h)
    uint32_t wsPerCore;
    uint32_t ubBytes;
};

struct IndexerTopkArgs {
    const void* q;             // [T, Hi, Di], or [qPieces, T, Hi, Di] bf16 pieces
    const float* weights;      // [T, Hi]
    const void* indexK;        // [N, Di] or [P * page, Di]
    const int32_t* visibleEnd; // [T]
    const int32_t* blockTable; // [btRows, btCols] (paged)
    const int32_t* seqIds;     // [T] (paged)
    int32_t* indices;          // [T, K]      (top-k mode)
    int32_t* lengths;          // [T]         (top-k mode)
    float* logits;             // [T, N]      (logits mode)
    void* workspace;
};

inline uint32_t IndexerUbBytes(uint32_t hi, uint32_t cap, uint32_t K)
{
    auto al = [](uint32_t b) { return AlignUpU(b, 32); };
    uint32_t b = 2 * al(hi * kIdxHalf * 4);   // score tiles (VECIN x2)
    b += al(AlignUpU(hi, 8) * 4);             // weights
    b += 8 * al(kIdxHalf * 4);                // block: scores, ids, index, valid, flag ids, tmp, mask, -inf row
    b += 2 * al(kIdxHalf * 8);                // block pairs (Sort32 output, merged)
    b += 2 * al(cap * 8);                     // running lists (ping-pong)
    b += 2 * al(cap * 4);                     // repair: ids, keys
    b += 2 * al(cap * 8);                     // repair: sort ping-pong
    b += al(cap * 4);                         // odd-element offsets
    b += al(MaxU(kIdxHalf * 4, AlignUpU(K, 8) * 4 + 32));  // output indices + length / a logits row
    b += al(hi * kIdxHalf / 8);               // NaN bits of a score tile (relu keeps NaN)
    return b;
}

inline uint32_t IndexerTopkTilingCompute(IndexerTopkTiling& t, uint32_t T, uint32_t Hi, uint32_t Di, uint32_t dtype,
                                         uint32_t numEntries, bool paged, uint32_t numPages, uint32_t pageSize,
                                         uint32_t btRows, uint32_t btCols, uint32_t topk, bool logitsMode,
                                         bool returnSlots, uint32_t numCores, uint32_t qPieces = 1)
{
    t = IndexerTopkTiling{};
    t.numTokens = T;
    t.numHeads = Hi;
    t.headDim = Di;
    t.dtype = dtype;
    t.qPieces = qPieces;
    t.numEntries = numEntries;
    t.paged = paged ? 1u : 0u;
    t.numPages = numPages;
    t.pageSize = pageSize;
    t.btRows = btRows;
    t.btCols = btCols;
    t.topk = logitsMode ? 1u : topk;
    t.logitsMode = logitsMode ? 1u : 0u;
    t.returnSlots = returnSlots ? 1u : 0u;
    const uint32_t sz = DtSize(dtype), mp = AlignUpU(Hi, 16);
    if (T == 0 || Hi == 0 || Hi > kIdxMaxHeads || Di == 0 || Di % 16 != 0 || t.topk == 0 || t.topk > kIdxMaxTopk ||
        numEntries >= kIdxMaxEntries || numCores == 0 || qPieces == 0 || qPieces > kIdxMaxPieces ||
        (qPieces > 1 && dtype != kDtBF16))
        return 0;
    // Di slice: the largest multiple of 16 <= Di whose A (mp x kTile) and B (kTile x 128) fit two L0A / L0B buffers.
    uint32_t kt = Di;
    while (kt > 16 && (2 * mp * kt * sz > kL0ABytes || 2 * kt * kIdxBlock * sz > kL0BBytes)) kt -= 16;
    t.kTile = kt;
    t.listCap = AlignUpU(MaxU(2 * t.topk, t.topk + kIdxHalf), 32);
    t.ubBytes = IndexerUbBytes(Hi, t.listCap, t.topk);
    if (t.ubBytes > kUbBytes) return 0;
    if (qPieces * mp * Di * sz + 2 * kIdxBlock * Di * sz > kL1Bytes) return 0;  // q (pieces) + two key tiles
    t.wsSOff = 0;
    t.wsListOff = AlignUpU(2 * mp * kIdxBlock * 4, 512);
    t.wsProbeOff = t.wsListOff + AlignUpU(2 * t.topk * 8, 512);
    t.wsPerCore = t.wsProbeOff + AlignUpU(kIdxProbeRows * 16 * 4, 512);
    t.blockDim = MinU(numCores, T);
    return t.blockDim;
}

}  // namespace longattn_ascend
