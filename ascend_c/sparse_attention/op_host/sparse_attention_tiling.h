// SPDX-License-Identifier: Apache-2.0
// sparse_attention tiling: POD struct + tiling function (plain C++, shared by the emulator build,
// the NPU host code and the kernel), and the GM argument block of the emulator launcher.
//
// Work unit ("task") = (query token t, head group g): Mg query heads of token t (heads are the M
// dimension of both matmuls, they share the token's gathered KV rows). Tasks go round-robin to the
// AI cores; each AI core = 1 AIC + 2 AIV (KERNEL_TYPE_MIX_AIC_1_2).
// Keys are processed in blocks of kSaBlockKeys valid keys (invalid indices are compacted away by
// the AIV gather, so a block never contains a masked key except the zero-padding of the last one).
#pragma once

#include "../../common/longattn_types.h"

namespace longattn_ascend {

constexpr uint32_t kSaBlockKeys = 64;   // keys per block (N of Q.K^T, K of P.V): one 256-B fp32 repeat per row
constexpr uint32_t kSaMaxHeadsPerTask = 64;
constexpr uint32_t kSaOutRows = 4;      // AIV: rows of [rows, D] per O / output chunk

struct SparseAttentionTiling {
    uint32_t numTokens;      // T
    uint32_t numHeads;       // H
    uint32_t headDim;        // D (multiple of 64)
    uint32_t dtype;          // DataTypeCode of q / kv / extra_kv / out (F32, BF16, F16)
    uint32_t numSlots0;      // rows of kv
    uint32_t width0;         // K: index row width of stream 0
    uint32_t hasLen0;        // topk_length given
    uint32_t numSlots1;      // rows of extra_kv (0 without a second stream)
    uint32_t width1;         // K2 (0 without a second stream)
    uint32_t hasLen1;
    uint32_t hasSink;
    float scale;             // softmax scale
    uint32_t headsPerTask;   // Mg: min(H, 64), lowered in steps of 16 until the buffers fit
    uint32_t headGroups;     // ceil(H / Mg)
    uint32_t numTasks;       // T * headGroups
    uint32_t blockDim;       // AI cores launched
    uint32_t kTile;          // D slice per Q.K^T Mmad (accumulated in L0C)
    uint32_t dChunk;         // D slice per P.V Mmad (N of the second matmul)
    uint32_t gatherRows;     // AIV gather tile: rows per DataCopy to the workspace (8 fp32 / 16 half, bf16)
    uint32_t outRows;        // AIV: rows per O / output chunk
    uint32_t aivRowsMax;     // ceil(Mg / 2): query-head rows owned by one AIV
    // Workspace (per AI core, bytes from the core's base; every region 512-B aligned).
    uint32_t wsKvOff;        // [2][kSaBlockKeys][D] dtype: gathered rows (K = V)
    uint32_t wsVtOff;        // [2][D][kSaBlockKeys] fp32: gathered rows transposed (fp32 only)
    uint32_t wsSOff;         // [2][Mg][kSaBlockKeys] fp32: logits
    uint32_t wsPOff;         // [2][Mg][kSaBlockKeys] dtype: probabilities
    uint32_t wsOOff;         // [2][Mg][D] fp32: P.V of one block
    uint32_t wsPerCore;
    uint32_t ubBytes;        // AIV UB the kernel will allocate (for the README / checks)
    uint32_t l1Bytes;        // AIC L1 the kernel will allocate
};

// GM arguments of one launch (device pointers on the NPU, host pointers under the emulator).
struct SparseAttentionArgs {
    const void* q;             // [T, H, D]
    const void* kv0;           // [numSlots0, D]
    const int32_t* idx0;       // [T, K]
    const int32_t* len0;       // [T] or null
    const void* kv1;           // [numSlots1, D] or null
    const int32_t* idx1;       // [T, K2] or null
    const int32_t* len1;       // [T] or null
    const float* sink;         // [H] or null
    void* out;                 // [T, H, D]
    float* lse;                // [T, H]
    void* workspace;           // blockDim * wsPerCore bytes
};

namespace sa_detail {
inline uint32_t Al32(uint32_t b) { return AlignUpU(b, 32); }
// UB bytes of the AIV (mirrors SparseAttentionVector::Init, every buffer rounded to 32 B).
inline uint32_t UbBytes(uint32_t mh, uint32_t D, uint32_t sz, uint32_t g, uint32_t r)
{
    const uint32_t mh8 = AlignUpU(MaxU(mh, 1), 8);
    uint32_t b = 0;
    b += Al32(mh * D * 4);                       // acc
    b += Al32(mh * kSaBlockKeys * 4);            // S tile
    b += Al32(mh * kSaBlockKeys * sz);           // P tile
    b += Al32(mh * kSaBlockKeys * 4);            // column index tile
    b += Al32(AlignUpU(mh * kSaBlockKeys, 256) / 8);  // mask bits
    b += 10 * 64 * 4;                            // m, m2, l, alpha, rowmax, rowsum, lse, sink, factor, tmp
                       // (64 floats each: whole Compare repeats; mh <= 32)
    b += 3 * Al32(mh8 * 8 * 4);  // Brcb outputs (m, alpha, factor)
    b += 2 * Al32(r * D * 4);  // O chunks (VECIN x2)
    b += 2 * Al32(r * D * sz);  // output chunks (VECOUT x2)
    b += 2 * Al32(mh8 * 4);  // lse out, sink in
    b += 2 * Al32(g * D * sz);  // gather tiles (VECIN x2)
    if (sz == 4) {
        b += Al32(D * g * 4);  // transposed tile (VECOUT x1)
        b += Al32(D * g * 4);  // transpose offsets
    }
    return b;
}
inline uint32_t L1Bytes(uint32_t mp, uint32_t D, uint32_t sz)
{
    uint32_t b = mp * D * sz;  // Q
    b += 2 * kSaBlockKeys * D * sz;  // K tiles (double buffered)
    b += mp * kSaBlockKeys * sz;  // P
    if (sz == 4) b += D * kSaBlockKeys * 4;  // V^T (fp32)
    return b;
}
}  // namespace sa_detail

// Returns blockDim (0 when the problem is empty or unsupported: see SparseAttentionSupported).
// numCores: AI cores (AIC count) available.
inline uint32_t SparseAttentionTilingCompute(SparseAttentionTiling& t, uint32_t T, uint32_t H, uint32_t D,
                                             uint32_t dtype, uint32_t numSlots0, uint32_t width0, bool hasLen0,
                                             uint32_t numSlots1, uint32_t width1, bool hasLen1, bool hasSink,
                                             float scale, uint32_t numCores)
{
    t = SparseAttentionTiling{};
    t.numTokens = T;
    t.numHeads = H;
    t.headDim = D;
    t.dtype = dtype;
    t.numSlots0 = numSlots0;
    t.width0 = width0;
    t.hasLen0 = hasLen0 ? 1u : 0u;
    t.numSlots1 = numSlots1;
    t.width1 = width1;
    t.hasLen1 = hasLen1 ? 1u : 0u;
    t.hasSink = hasSink ? 1u : 0u;
    t.scale = scale;
    const uint32_t sz = DtSize(dtype);
    t.kTile = MinU(D, sz == 4 ? 128u : 256u);
    t.dChunk = MinU(D, sz == 4 ? 128u : 256u);
    t.gatherRows = sz == 4 ? 8u : 16u;
    t.outRows = kSaOutRows;
    if (T == 0 || H == 0 || D == 0 || D % 64 != 0 || numCores == 0) return 0;
    // Heads per task: the largest Mg (H itself when H <= 16, else a multiple of 16 up to 64) whose
    // AIV UB, AIC L1 and L0 buffers fit.
    uint32_t mg = MinU(kSaMaxHeadsPerTask, H);
    for (;;) {
        const uint32_t mp = AlignUpU(mg, 16), mh = CeilDivU(mg, 2);
        const bool ubOk = sa_detail::UbBytes(mh, D, sz, t.gatherRows, t.outRows) <= kUbBytes;
        const bool l1Ok = sa_detail::L1Bytes(mp, D, sz) <= kL1Bytes;
        const bool l0aOk = 2 * mp * MaxU(t.kTile, kSaBlockKeys) * sz <= kL0ABytes;
        const bool l0cOk = 2 * mp * MaxU(t.dChunk, kSaBlockKeys) * 4 <= kL0CBytes;
        if (ubOk && l1Ok && l0aOk && l0cOk) break;
        if (mg <= 16) return 0;  // D too large for one pass
        mg = (mg - 1) / 16 * 16;
    }
    t.headsPerTask = mg;
    t.headGroups = CeilDivU(H, mg);
    t.numTasks = T * t.headGroups;
    t.aivRowsMax = CeilDivU(mg, 2);
    const uint32_t mp = AlignUpU(mg, 16);
    t.ubBytes = sa_detail::UbBytes(t.aivRowsMax, D, sz, t.gatherRows, t.outRows);
    t.l1Bytes = sa_detail::L1Bytes(mp, D, sz);
    uint32_t off = 0;
    t.wsKvOff = off;
    off += AlignUpU(2 * kSaBlockKeys * D * sz, 512);
    t.wsVtOff = off;
    if (sz == 4) off += AlignUpU(2 * D * kSaBlockKeys * 4, 512);
    t.wsSOff = off;
    off += AlignUpU(2 * mg * kSaBlockKeys * 4, 512);
    t.wsPOff = off;
    off += AlignUpU(2 * mg * kSaBlockKeys * sz, 512);
    t.wsOOff = off;
    off += AlignUpU(2 * mg * D * 4, 512);
    t.wsPerCore = off;
    t.blockDim = MinU(numCores, t.numTasks);
    return t.blockDim;
}

}  // namespace longattn_ascend
