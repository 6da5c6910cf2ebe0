// SPDX-License-Identifier: Apache-2.0
// sparse_attention tiling: POD struct + tiling function (plain C++, shared by the emulator build,
// the NPU host code and the kernel), and the GM argument block of the emulator launcher.
//
// Work unit ("task") = (query token t, head group g): Mg query heads of token t (heads are the M
// dimension of both matmuls, they share the token's gathered KV rows). Tasks go round-robin to the
// AI cores; each AI core = 1 AIC + 2 AIV (KERNEL_TYPE_MIX_AIC_1_2).
// Keys are processed in blocks of blockKeys (64, 128 or 256) valid keys (invalid indices are compacted
// away by the AIV gather, so a block never contains a masked key except the zero-padding of the last
// one): the largest block whose buffers fit once Mg is chosen (Mg is never lowered for a bigger block).
//
// Pools: each stream is a float pool (rows of F32 / BF16 / F16) or an FP8 MODEL1 pool (584-B records,
// kDtFP8Record). The kernel computes in one dtype (`dtype`, q's or fp32: SparseAttentionComputeDtype)
// and the AIV gather converts every row into it exactly: 16-bit rows -> fp32 (Cast), FP8 records ->
// fp32 (fp8_dequant.h) -> the compute dtype (bf16: exact for every record the quantiser writes).
#pragma once

#include "../../common/longattn_types.h"

namespace longattn_ascend {

constexpr uint32_t kSaBlockKeys = 64;   // the smallest key block (one 256-B fp32 repeat per row of S)
constexpr uint32_t kSaMaxBlockKeys = 256;  // the largest key block (N of Q.K^T, K of P.V)
constexpr uint32_t kSaShareCapKeys = 1024;  // shared gather: valid keys of a token kept for its next head group
constexpr uint32_t kSaMaxHeadsPerTask = 64;
constexpr uint32_t kSaOutRows = 4;      // AIV: rows of [rows, D] per O / output chunk
constexpr uint32_t kSaCvtRows = 4;      // AIV: rows per conversion chunk (16-bit rows -> fp32, FP8 decode)
constexpr uint32_t kSaNoStream = 0xFFFFFFFFu;  // pool kind of an absent second stream

struct SparseAttentionTiling {
    uint32_t numTokens;      // T
    uint32_t numHeads;       // H
    uint32_t headDim;        // D (multiple of 64)
    // dtype: the compute DataTypeCode (F32, BF16, F16) of q and out as the kernel sees them, the gathered
    // rows and P (the host converts q / out when it differs from q's dtype)
    uint32_t dtype;
    uint32_t numSlots0;      // slots of kv (FP8: pages * pageSize0)
    uint32_t width0;         // K: index row width of stream 0
    uint32_t hasLen0;        // topk_length given
    uint32_t numSlots1;      // rows of extra_kv (0 without a second stream)
    uint32_t width1;         // K2 (0 without a second stream)
    uint32_t hasLen1;
    uint32_t hasSink;
    uint32_t kvDtype0;       // pool kind of kv: F32 / BF16 / F16 rows or kDtFP8Record
    uint32_t pageSize0;      // FP8: records per page (0 for float pools)
    uint32_t pageBytes0;     // FP8: bytes per page
    uint32_t kvDtype1;       // the same for extra_kv (dtype when there is no second stream)
    uint32_t pageSize1;
    uint32_t pageBytes1;
    uint32_t hasCvt;         // a 16-bit float pool feeds an fp32 computation (Cast in the gather)
    uint32_t hasFp8;         // an FP8 pool (the dequantiser's buffers)
    uint32_t cvtRows;        // rows per conversion / decode chunk
    float scale;             // softmax scale
    uint32_t headsPerTask;   // Mg: min(H, 64), lowered in steps of 16 until the buffers fit
    uint32_t headGroups;     // ceil(H / Mg)
    uint32_t numTasks;       // T * headGroups
    uint32_t blockDim;       // AI cores launched
    // Shared gather (headGroups >= 2 where it costs no parallelism): tokens go round-robin to the cores and
    // a core runs all head groups of its token back to back; a token of at most shareCap valid keys is
    // gathered once, by its first group, into wsKv (block b at area b), and the later groups read it there.
    uint32_t shareGroups;    // 1: the token-major order above (0: tasks round-robin)
    uint32_t shareCap;       // valid keys kept (a multiple of blockKeys, >= 2 blocks; 0 without sharing)
    uint32_t kvAreas;        // wsKv / wsVt areas of blockKeys rows: max(2, shareCap / blockKeys)
    uint32_t kTile;          // D slice per Q.K^T Mmad (accumulated in L0C)
    uint32_t dChunk;         // D slice per P.V Mmad (N of the second matmul)
    uint32_t blockKeys;      // NB: keys per block (64 / 128 / 256; N of Q.K^T, K of P.V)
    uint32_t gatherRows;     // AIV gather tile: rows per DataCopy to the workspace (8 fp32 / 16 half, bf16)
    uint32_t outRows;        // AIV: rows per O / output chunk
    uint32_t aivRowsMax;     // ceil(Mg / 2): query-head rows owned by one AIV
    // Workspace (per AI core, bytes from the core's base; every region 512-B aligned).
    uint32_t wsKvOff;        // [kvAreas][NB][D] dtype: gathered rows (K = V)
    uint32_t wsVtOff;        // [kvAreas][D][NB] fp32: gathered rows transposed (fp32 only)
    uint32_t wsSOff;         // [2][Mg][NB] fp32: logits
    uint32_t wsPOff;         // [2][Mg][NB] dtype: probabilities
    uint32_t wsOOff;         // [2][Mg][D] fp32: P.V of one block
    uint32_t wsPerCore;
    uint32_t ubBytes;        // AIV UB the kernel will allocate (for the README / checks)
    uint32_t l1Bytes;        // AIC L1 the kernel will allocate
    // outF32: out is written as fp32 rows (acc * factor, not rounded) whatever the compute dtype (the
    // split-KV path's partial outputs, merged by merge_partial_states). 0: out in the compute dtype.
    uint32_t outF32;
};

// GM arguments of one launch (device pointers on the NPU, host pointers under the emulator).
struct SparseAttentionArgs {
    const void* q;             // [T, H, D]
    const void* kv0;           // [numSlots0, D] rows, or FP8 pool bytes [pages, pageBytes0]
    const int32_t* idx0;       // [T, K]
    const int32_t* len0;       // [T] or null
    const void* kv1;           // [numSlots1, D] rows, FP8 pool bytes, or null
    const int32_t* idx1;       // [T, K2] or null
    const int32_t* len1;       // [T] or null
    const float* sink;         // [H] or null
    void* out;                 // [T, H, D]: the compute dtype, or fp32 (outF32)
    float* lse;                // [T, H]
    void* workspace;           // blockDim * wsPerCore bytes
};

namespace sa_detail {
inline uint32_t Al32(uint32_t b) { return AlignUpU(b, 32); }
// UB bytes of the AIV (mirrors SparseAttentionVector::Init, every buffer rounded to 32 B); nb: block keys;
// osz: bytes per output element (sz, or 4 with outF32).
inline uint32_t UbBytes(uint32_t mh, uint32_t D, uint32_t sz, uint32_t nb, uint32_t g, uint32_t r, bool cvt, bool fp8,
                        uint32_t osz)
{
    const uint32_t mh8 = AlignUpU(MaxU(mh, 1), 8);
    uint32_t b = 0;
    b += Al32(mh * D * 4);                       // acc
    b += Al32(mh * nb * 4);                      // S tile
    b += Al32(mh * nb * sz);                     // P tile (nb > 64: first the [mh, 64] fp32 partial max / sum)
    b += Al32(nb * 4);                           // column index of one row
    b += Al32(AlignUpU(nb, 256) / 8);            // mask bits (one row; Finish: 64 floats)
    b += 10 * 64 * 4;                            // m, m2, l, alpha, rowmax, rowsum, lse, sink, factor, tmp
                       // (64 floats each: whole Compare repeats; mh <= 32)
    b += 3 * Al32(mh8 * 8 * 4);  // Brcb outputs (m, alpha, factor)
    b += 2 * Al32(r * D * 4);  // O chunks (VECIN x2)
    b += 2 * Al32(r * D * osz);  // output chunks (VECOUT x2; fp32 rows with outF32)
    b += 2 * Al32(mh8 * 4);  // lse out, sink in
    b += 2 * Al32(g * D * sz);  // gather tiles (VECIN x2)
    if (sz == 4) {
        b += Al32(D * g * 4);  // transposed tile (VECOUT x1)
        b += Al32(D * g * 4);  // transpose offsets
    }
    if (cvt) b += 2 * Al32(kSaCvtRows * D * 2);  // 16-bit rows to widen (VECIN x2)
    if (fp8) b += Fp8DequantUbBytes(kSaCvtRows);  // the dequantiser (fp8_dequant.h)
    return b;
}
inline uint32_t L1Bytes(uint32_t mp, uint32_t D, uint32_t sz, uint32_t nb)
{
    uint32_t b = mp * D * sz;  // Q
    b += 2 * nb * D * sz;  // K tiles (double buffered)
    b += mp * nb * sz;  // P
    if (sz == 4) b += D * nb * 4;  // V^T (fp32)
    return b;
}
// D slice of one Mmad (kTile of Q.K^T, dChunk of P.V): a [nb, slice] key tile per L0B buffer (half of L0B).
inline uint32_t SliceOf(uint32_t D, uint32_t sz, uint32_t nb) { return MinU(D, kL0BBytes / 2 / (nb * sz)); }
// The AIC's L0A / L0B / L0C (double-buffered) and L1, the AIV's UB hold the buffers of this shape.
inline bool Fits(uint32_t mg, uint32_t D, uint32_t sz, uint32_t nb, uint32_t g, uint32_t r, bool cvt, bool fp8,
                 uint32_t osz)
{
    const uint32_t mp = AlignUpU(mg, 16), mh = CeilDivU(mg, 2), slice = SliceOf(D, sz, nb);
    return UbBytes(mh, D, sz, nb, g, r, cvt, fp8, osz) <= kUbBytes && L1Bytes(mp, D, sz, nb) <= kL1Bytes &&
           2 * mp * MaxU(slice, nb) * sz <= kL0ABytes && 2 * slice * nb * sz <= kL0BBytes &&
           2 * mp * MaxU(slice, nb) * 4 <= kL0CBytes;
}
}  // namespace sa_detail

// One KV stream as the tiling sees it.
struct SparseAttentionStream {
    uint32_t kind = kSaNoStream;  // F32 / BF16 / F16 rows, kDtFP8Record, or kSaNoStream (no second stream)
    uint32_t numSlots = 0;  // rows (FP8: pages * pageSize)
    uint32_t width = 0;  // index row width (K)
    bool hasLen = false;  // topk_length given
    uint32_t pageSize = 0;  // FP8 only
    uint32_t pageBytes = 0;  // FP8 only
};

// The dtype the kernel computes in for queries of qDt over pools of kind0 / kind1 (kSaNoStream: none):
// q's own when every pool converts into it exactly (the same dtype; FP8 records for bf16 queries: e4m3
// times a power of two fits bf16), fp32 otherwise (the host widens q and rounds out once, as the
// reference computes in fp32).
inline uint32_t SparseAttentionComputeDtype(uint32_t qDt, uint32_t kind0, uint32_t kind1)
{
    const auto fits = [qDt](uint32_t k) {
        return k == kSaNoStream || k == qDt || (qDt == kDtBF16 && k == kDtFP8Record);
    };
    return fits(kind0) && fits(kind1) ? qDt : kDtF32;
}

namespace sa_detail {
inline const char* PoolUnsupported(uint32_t D, uint32_t dtype, uint32_t k)
{
    if (k == kSaNoStream || k == dtype) return "";
    if (k == kDtFP8Record) {
        if (D != kFp8HeadDim) return "FP8 pools hold 512-dim rows";
        return dtype == kDtF16 ? "FP8 pools need an fp32 or bf16 computation" : "";
    }
    if ((k == kDtBF16 || k == kDtF16) && dtype == kDtF32) return "";
    return "a float pool of another dtype needs an fp32 computation";
}
}  // namespace sa_detail

// Why the kernel cannot take pools of kind0 / kind1 with compute dtype `dtype` and head dim D ("" if it can).
inline const char* SparseAttentionUnsupported(uint32_t D, uint32_t dtype, uint32_t kind0, uint32_t kind1)
{
    if (D == 0 || D % 64 != 0) return "D must be a positive multiple of 64";
    if (dtype != kDtF32 && dtype != kDtBF16 && dtype != kDtF16) return "unsupported compute dtype";
    const char* why = sa_detail::PoolUnsupported(D, dtype, kind0);
    return why[0] != 0 ? why : sa_detail::PoolUnsupported(D, dtype, kind1);
}

// Returns blockDim (0 when the problem is empty or unsupported: see SparseAttentionUnsupported).
// dtype: the compute dtype (SparseAttentionComputeDtype). numCores: AI cores (AIC count) available.
// maxBlockKeys (64 / 128 / 256): caps the key block (tests force the smaller blocks with it). shareCap:
// valid keys a token may have for its head groups to share one gather (0: never share). outF32: write out as
// fp32 rows (acc * factor unrounded; the VECOUT chunks are sized for fp32, which the UB budget includes).
inline uint32_t SparseAttentionTilingCompute(SparseAttentionTiling& t, uint32_t T, uint32_t H, uint32_t D,
                                             uint32_t dtype, const SparseAttentionStream& s0,
                                             const SparseAttentionStream& s1, bool hasSink, float scale,
                                             uint32_t numCores, uint32_t maxBlockKeys = kSaMaxBlockKeys,
                                             uint32_t shareCap = kSaShareCapKeys, bool outF32 = false)
{
    t = SparseAttentionTiling{};
    t.numTokens = T;
    t.numHeads = H;
    t.headDim = D;
    t.dtype = dtype;
    t.numSlots0 = s0.numSlots;
    t.width0 = s0.width;
    t.hasLen0 = s0.hasLen ? 1u : 0u;
    t.kvDtype0 = s0.kind;
    t.pageSize0 = s0.kind == kDtFP8Record ? s0.pageSize : 0u;
    t.pageBytes0 = s0.kind == kDtFP8Record ? s0.pageBytes : 0u;
    const bool two = s1.kind != kSaNoStream;
    t.numSlots1 = two ? s1.numSlots : 0u;
    t.width1 = two ? s1.width : 0u;
    t.hasLen1 = two && s1.hasLen ? 1u : 0u;
    t.kvDtype1 = two ? s1.kind : dtype;
    t.pageSize1 = two && s1.kind == kDtFP8Record ? s1.pageSize : 0u;
    t.pageBytes1 = two && s1.kind == kDtFP8Record ? s1.pageBytes : 0u;
    t.hasSink = hasSink ? 1u : 0u;
    t.scale = scale;
    const auto widened = [dtype](uint32_t k) { return k != dtype && (k == kDtBF16 || k == kDtF16); };
    t.hasCvt = widened(t.kvDtype0) || widened(t.kvDtype1) ? 1u : 0u;
    t.hasFp8 = t.kvDtype0 == kDtFP8Record || t.kvDtype1 == kDtFP8Record ? 1u : 0u;
    t.cvtRows = kSaCvtRows;
    const uint32_t sz = DtSize(dtype);
    const uint32_t g0 = sz == 4 ? 8u : 16u;
    t.outF32 = outF32 ? 1u : 0u;
    const uint32_t osz = outF32 ? 4u : sz;
    t.outRows = kSaOutRows;
    if (T == 0 || H == 0 || numCores == 0 || SparseAttentionUnsupported(D, dtype, s0.kind, s1.kind)[0] != 0) return 0;
    if ((t.pageSize0 == 0) != (t.kvDtype0 != kDtFP8Record) ||
        (two && (t.pageSize1 == 0) != (t.kvDtype1 != kDtFP8Record)))
        return 0;  // an FP8 pool needs its page size
    const bool cvt = t.hasCvt != 0, fp8 = t.hasFp8 != 0;
    // Heads per task: the largest Mg (H itself when H <= 16, else a multiple of 16 up to 64) whose
    // AIV UB, AIC L1 and L0 buffers fit with 64-key blocks.
    uint32_t mg = MinU(kSaMaxHeadsPerTask, H);
    while (!sa_detail::Fits(mg, D, sz, kSaBlockKeys, g0, t.outRows, cvt, fp8, osz)) {
        if (mg <= 16) return 0;  // D too large for one pass
        mg = (mg - 1) / 16 * 16;
    }
    // Key block: the largest of 256 / 128 (<= maxBlockKeys) that fits at this Mg, with gather tiles of
    // g0 rows or, 16-bit, of 8; else 64 keys with g0-row tiles.
    t.blockKeys = kSaBlockKeys;
    t.gatherRows = g0;
    for (uint32_t nb = kSaMaxBlockKeys; nb > kSaBlockKeys && t.blockKeys == kSaBlockKeys; nb /= 2) {
        if (nb > maxBlockKeys) continue;
        for (uint32_t g = g0; g >= 8; g /= 2) {
            if (sa_detail::Fits(mg, D, sz, nb, g, t.outRows, cvt, fp8, osz)) {
                t.blockKeys = nb;
                t.gatherRows = g;
                break;
            }
        }
    }
    const uint32_t nb = t.blockKeys;
    t.kTile = t.dChunk = sa_detail::SliceOf(D, sz, nb);
    t.headsPerTask = mg;
    t.headGroups = CeilDivU(H, mg);
    t.numTasks = T * t.headGroups;
    // Share the gather when the token-major order keeps as many cores busy for as long: each core then runs
    // ceil(T / cores) tokens of headGroups tasks, against ceil(T * headGroups / cores) tasks round-robin.
    const uint32_t G = t.headGroups;
    t.shareGroups = G >= 2 && shareCap > 0 && CeilDivU(T, numCores) * G <= CeilDivU(t.numTasks, numCores) ? 1u : 0u;
    t.shareCap = t.shareGroups ? MaxU(2 * nb, shareCap / nb * nb) : 0u;
    t.kvAreas = t.shareGroups ? t.shareCap / nb : 2u;
    t.aivRowsMax = CeilDivU(mg, 2);
    const uint32_t mp = AlignUpU(mg, 16);
    t.ubBytes = sa_detail::UbBytes(t.aivRowsMax, D, sz, nb, t.gatherRows, t.outRows, cvt, fp8, osz);
    t.l1Bytes = sa_detail::L1Bytes(mp, D, sz, nb);
    uint32_t off = 0;
    t.wsKvOff = off;
    off += AlignUpU(t.kvAreas * nb * D * sz, 512);
    t.wsVtOff = off;
    if (sz == 4) off += AlignUpU(t.kvAreas * D * nb * 4, 512);
    t.wsSOff = off;
    off += AlignUpU(2 * mg * nb * 4, 512);
    t.wsPOff = off;
    off += AlignUpU(2 * mg * nb * sz, 512);
    t.wsOOff = off;
    off += AlignUpU(2 * mg * D * 4, 512);
    t.wsPerCore = off;
    t.blockDim = MinU(numCores, t.shareGroups ? T : t.numTasks);
    return t.blockDim;
}

}  // namespace longattn_ascend
