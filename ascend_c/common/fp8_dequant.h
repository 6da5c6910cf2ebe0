// SPDX-License-Identifier: Apache-2.0
// FP8 "MODEL1" record dequantisation on the vector core (AIV): the reader's side of fp8_quant.h.
//
// A record (python/longattn/cache/fp8.py) -> 512 fp32 values, bit for bit
// longattn.cache.fp8.dequantize_rows (NaN bit patterns included, as torch's CPU conversion gives them):
//   dims [0, 448)    e4m3fn(byte k) * 2^(s_i - 127), tile i = k / 64, s_i = scale byte i (UE8M0)
//   dims [448, 512)  the 64 bf16 rope values, widened exactly
// Every byte value is decoded: e4m3 subnormals (0x01..0x07: m * 2^-9), +-0, 0x7F / 0xFF NaN; every
// scale byte: 2^(s - 127) for s = 0..254 (s = 0: 2^-127, an fp32 subnormal) and +inf for s = 255 (as
// torch.exp2(128.0) gives), so 0 * inf = NaN where the reference has it too.
//
// A2/A3 have no FP8 type and no byte-wide vector arithmetic, so the bytes are split with exact float
// arithmetic and decoded by table lookup (Gather):
//   * the record bytes (nope codes and scale bytes) are read as int16 pairs lo + 256 * hi, wrapped into
//     [-32768, 32767]; Cast int16 -> float is exact; h = floor(v / 256) is the high byte as a signed
//     value (hi - 256 for hi >= 128), v - 256 h the low byte in [0, 255] (Muls by 2^-8, Cast FLOOR,
//     Axpy: all exact on integers below 2^24);
//   * byte offsets into the tables: 4 lo, 4 h + 1024 (the tables hold two copies of their 256 entries,
//     so h + 256 in [128, 384) indexes the code h mod 256 without a compare); Cast float -> int32;
//   * one Gather puts the offsets in dim order (a constant permutation interleaving low and high
//     bytes) followed by the 8 scale offsets of each row (the 8th points at a 1.0 entry: the rope dims
//     are "tile 7", scaled by 1);
//   * one Gather looks the codes up in the e4m3 table (fp32 bit patterns built on the scalar unit at
//     Init), one the scale bytes in the UE8M0 table; the rope dims are Cast bf16 -> float over the
//     looked-up placeholders; one repeat-form Mul (one 64-float repeat per tile, the scale Brcb'd)
//     applies the scales: x * 2^(s-127) as one IEEE multiply, the reference's own operation.
// Hardware assumptions (the emulator implements them; not checked on a device): Cast int16 -> float
// and float -> int32 of integral values are exact; Gather of 32-bit elements returns the addressed
// bits unchanged (NaN payloads included); Mul is IEEE with fp32 subnormals neither flushed as inputs
// (the scale 2^-127) nor as results (products below 2^-126 are rounded once, as the host CPU does).
// The quantiser never writes a scale byte below 114 (e >= -13), so only hand-made records reach the
// subnormal cases.
#pragma once

#include "ascendc_compat.h"
#include "longattn_types.h"

namespace longattn_ascend {

// fp32 bits of e4m3fn code c (torch's conversion: NaN as 0x7FF00000 | sign).
__aicore__ inline uint32_t E4m3Fp32Bits(uint32_t c)
{
    const uint32_t s = (c & 0x80u) << 24, e = (c >> 3) & 15u, m = c & 7u;
    if (e == 15u && m == 7u) return s | 0x7FF00000u;
    if (e != 0u) return s | ((e + 120u) << 23) | (m << 20);
    if (m == 0u) return s;
    // subnormal m * 2^-9: shift the leading bit of m to bit 2
    const uint32_t sh = m >= 4u ? 0u : (m >= 2u ? 1u : 2u);
    return s | ((120u - sh) << 23) | (((m << sh) & 3u) << 21);
}

// fp32 bits of the UE8M0 scale 2^(b - 127): b = 0 is the subnormal 2^-127, b = 255 is +inf.
__aicore__ inline uint32_t Ue8m0Fp32Bits(uint32_t b) { return b == 0u ? 0x00400000u : (b << 23); }

class Fp8Dequantizer {
public:
    static constexpr uint32_t kRowOut = kFp8HeadDim + 8;  // offsets per row: 512 dims, then 8 scales

    // rows: records per chunk (Decode takes 1..rows).
    template <class PipeT>
    __aicore__ inline void Init(PipeT& pipe, uint32_t rows)
    {
        using namespace AscendC;
        rows_ = rows;
        np_ = rows * (kFp8NopeDim / 2 + 16);  // int16 pairs split per chunk: nope codes, scale slots
        pipe.InitBuffer(rawQue_, 2, rows * kFp8RawRowBytes);
        pipe.InitBuffer(wBuf_, rows * kFp8HeadDim * 4 + 32);
        pipe.InitBuffer(pBuf_, rows * kRowOut * 4);
        pipe.InitBuffer(permBuf_, rows * kRowOut * 4);
        pipe.InitBuffer(tabBuf_, kFp8DequantTableBytes);
        // Tables (scalar unit, once): e4m3 codes at [0, 512), UE8M0 scales at [512, 1024), each twice.
        LocalTensor<uint32_t> tab = tabBuf_.Get<uint32_t>();
        for (uint32_t j = 0; j < 512; ++j) {
            tab.SetValue(j, E4m3Fp32Bits(j & 255u));
            tab.SetValue(512 + j, Ue8m0Fp32Bits(j & 255u));
        }
        // Permutation: element i of the gathered offsets <- W element perm[i] / 4.
        LocalTensor<uint32_t> perm = permBuf_.Get<uint32_t>();
        const uint32_t oneSlot = rows * kFp8HeadDim;  // W element holding the offset of the 1.0 scale
        for (uint32_t r = 0; r < rows; ++r) {
            for (uint32_t k = 0; k < kFp8NopeDim; ++k) {
                const uint32_t pair = r * (kFp8NopeDim / 2) + k / 2;
                perm.SetValue(r * kFp8HeadDim + k, ((k & 1u) ? np_ + pair : pair) * 4u);
            }
            for (uint32_t k = kFp8NopeDim; k < kFp8HeadDim; ++k) perm.SetValue(r * kFp8HeadDim + k, 0u);  // rope: any
            for (uint32_t j = 0; j < kFp8NumTiles; ++j) {
                const uint32_t pair = rows * (kFp8NopeDim / 2) + r * 16 + j / 2;
                perm.SetValue(rows * kFp8HeadDim + r * 8 + j, ((j & 1u) ? np_ + pair : pair) * 4u);
            }
            perm.SetValue(rows * kFp8HeadDim + r * 8 + kFp8NumTiles, oneSlot * 4u);
        }
        LocalTensor<int32_t> wi = wBuf_.Get<int32_t>();
        Duplicate(wi[oneSlot], static_cast<int32_t>(127 * 4), 8);  // UE8M0 byte 127 = 1.0
    }

    __aicore__ inline AscendC::LocalTensor<uint8_t> AllocRaw() { return rawQue_.AllocTensor<uint8_t>(); }

    // DMAs (MTE2) of the n records at slots slot, slot + 1, ..., slot + n - 1 of one page of a paged pool
    // (pageSize records, pageBytes bytes per page; the caller keeps the run inside the page) into rows
    // i .. i + n - 1 of a chunk: one DataCopyPad of n blocks per record part. GM side: the page's data
    // rows are 576 B apart (nope bytes at +0, rope bytes at +448: srcStride = the row's other bytes), its
    // 8-B scale rows follow each other (srcStride 0); UB side: each block lands at a 32-B multiple
    // (ceil32(blockLen), dstStride 0), so the nope rows are 448 B apart, the rope rows 128 B and the scale
    // bytes each in its own 32-B slot (the rest of a slot: the DMA's dummy bytes, never decoded).
    __aicore__ inline void LoadRecords(const AscendC::LocalTensor<uint8_t>& raw, uint32_t i,
                                       const AscendC::GlobalTensor<uint8_t>& pool, uint32_t slot, uint32_t n,
                                       uint32_t pageSize, uint32_t pageBytes)
    {
        using namespace AscendC;
        const uint64_t page = slot / pageSize, off = slot % pageSize;
        const uint64_t rec = page * pageBytes + off * kFp8DataBytes;
        const uint64_t scl = page * pageBytes + static_cast<uint64_t>(pageSize) * kFp8DataBytes + off * kFp8ScaleBytes;
        const uint16_t cnt = static_cast<uint16_t>(n);
        const DataCopyPadExtParams<uint8_t> noPad(false, 0, 0, 0);
        DataCopyPad(raw[i * kFp8NopeDim], pool[rec],
                    DataCopyExtParams(cnt, kFp8NopeDim, kFp8DataBytes - kFp8NopeDim, 0, 0), noPad);
        DataCopyPad(raw[rows_ * (kFp8NopeDim + 32) + i * 2 * kFp8RopeDim], pool[rec + kFp8NopeDim],
                    DataCopyExtParams(cnt, 2 * kFp8RopeDim, kFp8NopeDim, 0, 0), noPad);
        DataCopyPad(raw[rows_ * kFp8NopeDim + i * 32], pool[scl], DataCopyExtParams(cnt, kFp8ScaleBytes, 0, 0, 0),
                    noPad);
    }

    // The loaded rows, ordered for the vector unit (MTE2 -> V).
    __aicore__ inline AscendC::LocalTensor<uint8_t> Ready(AscendC::LocalTensor<uint8_t>& raw)
    {
        rawQue_.EnQue(raw);
        return rawQue_.DeQue<uint8_t>();
    }
    __aicore__ inline void FreeRaw(AscendC::LocalTensor<uint8_t>& raw) { rawQue_.FreeTensor(raw); }

    // Scratch of rows * 512 floats, free between Decode calls (a Decode destination for callers that
    // convert the values further).
    __aicore__ inline AscendC::LocalTensor<float> Scratch() { return wBuf_.Get<float>(); }

    // Rows [0, n) of raw -> dst[n * 512] fp32 (dst: Scratch() or another UB buffer).
    __aicore__ inline void Decode(const AscendC::LocalTensor<uint8_t>& raw, uint32_t n,
                                  const AscendC::LocalTensor<float>& dst)
    {
        using namespace AscendC;
        LocalTensor<float> w = wBuf_.Get<float>();
        LocalTensor<float> v = w[0], h = w[np_];
        Cast(v, raw.ReinterpretCast<int16_t>(), RoundMode::CAST_NONE, np_);  // lo + 256 hi (wrapped), exact
        Muls(h, v, 0.00390625f, np_);  // / 256, exact
        Cast(h, h, RoundMode::CAST_FLOOR, np_);  // signed high byte
        Axpy(v, h, -256.0f, np_);  // low byte, [0, 255]
        Muls(v, v, 4.0f, np_);  // table byte offsets
        Muls(h, h, 4.0f, np_);
        Adds(h, h, 1024.0f, np_);  // (h + 256) * 4
        LocalTensor<int32_t> wi = wBuf_.Get<int32_t>();
        Cast(wi, w, RoundMode::CAST_RINT, 2 * np_);
        LocalTensor<uint32_t> p = pBuf_.Get<uint32_t>();
        Gather(p, wi.ReinterpretCast<uint32_t>(), permBuf_.Get<uint32_t>(), 0, rows_ * kRowOut);
        LocalTensor<float> tab = tabBuf_.Get<float>();
        Gather(dst, tab, p, 0, n * kFp8HeadDim);  // codes (rope dims: placeholders)
        LocalTensor<float> sc = pBuf_.Get<float>();  // offsets [0, n * 512) are consumed: reuse
        Gather(sc, tab, p[rows_ * kFp8HeadDim], kFp8DequantTableBytes / 2, n * 8);
        LocalTensor<bfloat16_t> rope = raw[rows_ * (kFp8NopeDim + 32)].ReinterpretCast<bfloat16_t>();
        for (uint32_t r = 0; r < n; ++r)
            Cast(dst[r * kFp8HeadDim + kFp8NopeDim], rope[r * kFp8RopeDim], RoundMode::CAST_NONE, kFp8RopeDim);
        LocalTensor<float> sb = sc[rows_ * 8];
        Brcb(sb, sc, n, BrcbRepeatParams(1, 8));
        Mul(dst, dst, sb, 64, n * 8, BinaryRepeatParams(1, 1, 0, 8, 8, 1));
    }

private:
    AscendC::TQue<AscendC::TPosition::VECIN, 2> rawQue_;
    AscendC::TBuf<AscendC::TPosition::VECCALC> wBuf_, pBuf_, permBuf_, tabBuf_;
    uint32_t rows_ = 0, np_ = 0;
};

}  // namespace longattn_ascend
