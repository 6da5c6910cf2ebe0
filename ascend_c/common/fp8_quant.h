// SPDX-License-Identifier: Apache-2.0
// FP8 "MODEL1" record quantisation on the vector core (AIV), shared by append_kv and compress_kv.
//
// One 512-wide row -> one 584-B record (python/longattn/cache/fp8.py):
//   bytes [0, 448)    e4m3fn(x[k] / 2^e_i)  for nope dims k, tile i = k / 64
//   bytes [448, 576)  bf16(x[448..512))     rope dims, RNE
//   scale row         e_i + 127 (7 bytes) + 1 zero pad byte
//   e_i = ceil(log2(max(amax_i / 448, 1e-4)))  (the smallest e >= -13 with 448 * 2^e >= amax_i)
//
// A2/A3 have no FP8 type, so e4m3 encoding is done with float vector ops, exactly:
//   a = |y| (|y| <= 448 by construction of e); for each binade threshold 2^k (k = -5..8) a
//   CompareScalar/Select pair picks the quantum q = 2^(max(k,-6)-3) and the code base 8*(max(k,-6)+6);
//   n = rint(a / q) (exact: q is a power of two, CAST_RINT = ties to even); code = base + n covers the
//   subnormals (base 0, q = 2^-9), the normals and a carry into the next binade (n = 16); the sign
//   bit is taken from 1/y < 0 so that -0.0 keeps it, as torch's conversion does.
//   Bytes are packed two per int16 (lo + 256 * hi, wrapped to [-32768, 32767]) through Gather
//   (even/odd codes) and an exact float -> int16 cast.
// Scalar unit: the 7 exponents (a loop of exact doublings) and the scale bytes.
#pragma once

#include "ascendc_compat.h"
#include "longattn_types.h"

namespace longattn_ascend {

class Fp8Quantizer {
public:
    static constexpr uint32_t kRecordUbBytes = kFp8DataBytes + 32;  // data row, then the 8 scale bytes (32-B slot)
    static constexpr uint32_t kPairs = 256;                         // 224 byte pairs, padded for Compare (256 B)

    template <class PipeT>
    __aicore__ inline void Init(PipeT& pipe)
    {
        pipe.InitBuffer(buf_, kBufBytes);
        AscendC::LocalTensor<uint8_t> all = buf_.Get<uint8_t>();
        xf_ = all[kOffXf].ReinterpretCast<float>();
        a_ = all[kOffA].ReinterpretCast<float>();
        q_ = all[kOffQ].ReinterpretCast<float>();
        base_ = all[kOffBase].ReinterpretCast<float>();
        t_ = all[kOffT].ReinterpretCast<float>();
        ones_ = all[kOffOnes].ReinterpretCast<float>();
        even_ = all[kOffEven].ReinterpretCast<float>();
        odd_ = all[kOffOdd].ReinterpretCast<float>();
        offEven_ = all[kOffOffsE].ReinterpretCast<uint32_t>();
        offOdd_ = all[kOffOffsO].ReinterpretCast<uint32_t>();
        mask_ = all[kOffMask];
        amax_ = all[kOffAmax].ReinterpretCast<float>();
        // Byte offsets of the even / odd codes (pairs beyond 224 read in-range padding).
        AscendC::LocalTensor<int32_t> oe = offEven_.ReinterpretCast<int32_t>();
        AscendC::LocalTensor<int32_t> oo = offOdd_.ReinterpretCast<int32_t>();
        AscendC::CreateVecIndex(oe, static_cast<int32_t>(0), kPairs);
        AscendC::Muls(oe, oe, static_cast<int32_t>(8), kPairs);
        AscendC::Adds(oo, oe, static_cast<int32_t>(4), kPairs);
        AscendC::Duplicate(ones_, 1.0f, 512);
        AscendC::Duplicate(xf_, 0.0f, 512);  // columns 448.. of the code buffer stay defined
    }

    // rec: >= kRecordUbBytes bytes of UB; x: 512 values of TIn in UB.
    template <typename TIn>
    __aicore__ inline void Quantize(const AscendC::LocalTensor<uint8_t>& rec, const AscendC::LocalTensor<TIn>& x)
    {
        using namespace AscendC;
        LocalTensor<float> xf = xf_;
        if constexpr (sizeof(TIn) == 4) {
            DataCopy(xf, x.template ReinterpretCast<float>(), kFp8HeadDim);
        } else {
            Cast(xf, x, RoundMode::CAST_NONE, kFp8HeadDim);
        }
        // Per-tile absolute maxima: one WholeReduceMax repeat (64 floats) per tile.
        Abs(a_, xf, kFp8NopeDim);
        longattn_compat::WholeReduceMax(amax_, a_, 64, kFp8NumTiles, 1, 1, 8, ReduceOrder::ORDER_ONLY_VALUE);
        // Scalar unit: exponents, scale bytes, tile scaling factors.
        LocalTensor<uint8_t> scaleRow = rec[kFp8DataBytes];
        float inv[kFp8NumTiles];
        for (uint32_t i = 0; i < kFp8NumTiles; ++i) {
            const float amax = amax_.GetValue(i);
            int32_t e = -13;
            float top = 448.0f * 0.0001220703125f;  // 448 * 2^-13, exact
            float s = 8192.0f;                      // 2^13 = 2^-e
            while (top < amax && e < 127) {
                top *= 2.0f;
                s *= 0.5f;
                ++e;
            }
            inv[i] = s;
            scaleRow.SetValue(i, static_cast<uint8_t>(e + 127));
        }
        scaleRow.SetValue(kFp8NumTiles, static_cast<uint8_t>(0));
        for (uint32_t i = 0; i < kFp8NumTiles; ++i) Muls(xf[i * kFp8Tile], xf[i * kFp8Tile], inv[i], kFp8Tile);
        // e4m3 code of every nope value (float, 0..255).
        Abs(a_, xf, kFp8NopeDim);
        Duplicate(q_, 0.001953125f, kFp8NopeDim);  // 2^-9: subnormal quantum (and binade 2^-6)
        Duplicate(base_, 0.0f, kFp8NopeDim);
        float thr = 0.03125f;                       // 2^-5
        float quantum = 0.00390625f;                // 2^-8
        for (int32_t k = -5; k <= 8; ++k) {
            // bit = 1 where a < 2^k: keep; elsewhere this binade (or a higher one, later) applies.
            longattn_compat::CompareScalar(mask_, a_, thr, CMPMODE::LT, kFp8NopeDim);
            Select(q_, mask_, q_, quantum, SELMODE::VSEL_TENSOR_SCALAR_MODE, kFp8NopeDim);
            Select(base_, mask_, base_, static_cast<float>(8 * (k + 6)), SELMODE::VSEL_TENSOR_SCALAR_MODE,
                   kFp8NopeDim);
            thr *= 2.0f;
            quantum *= 2.0f;
        }
        Div(t_, a_, q_, kFp8NopeDim);                          // exact (power-of-two divisor)
        Cast(t_, t_, RoundMode::CAST_RINT, kFp8NopeDim);       // n = rint(a / q), ties to even
        Add(t_, t_, base_, kFp8NopeDim);                       // unsigned code
        Div(q_, ones_, xf, kFp8NopeDim);                       // 1/y: -inf for -0.0
        longattn_compat::CompareScalar(mask_, q_, 0.0f, CMPMODE::LT, kFp8NopeDim);
        Adds(base_, t_, 128.0f, kFp8NopeDim);                  // code with the sign bit
        Select(a_, mask_, base_, t_, SELMODE::VSEL_TENSOR_TENSOR_MODE, kFp8NopeDim);
        // Pack: int16 pair value lo + 256 * hi, wrapped into the int16 range, then an exact cast.
        Duplicate(a_[kFp8NopeDim], 0.0f, 512 - kFp8NopeDim);
        Gather(even_, a_, offEven_, 0, kPairs);
        Gather(odd_, a_, offOdd_, 0, kPairs);
        Muls(odd_, odd_, 256.0f, kPairs);
        Add(even_, even_, odd_, kPairs);
        Adds(odd_, even_, -65536.0f, kPairs);
        longattn_compat::CompareScalar(mask_, even_, 32768.0f, CMPMODE::LT, kPairs);
        Select(t_, mask_, even_, odd_, SELMODE::VSEL_TENSOR_TENSOR_MODE, kPairs);
        Cast(rec.ReinterpretCast<int16_t>(), t_, RoundMode::CAST_RINT, kFp8NopeDim / 2);
        // Rope dims: bf16, round to nearest even.
        Cast(rec[kFp8NopeDim].ReinterpretCast<bfloat16_t>(), xf_[kFp8NopeDim],
             RoundMode::CAST_RINT, kFp8RopeDim);
    }

    // Writes one record to slot `slot` of the paged FP8 pool (data row and scale row).
    __aicore__ inline void Store(const AscendC::GlobalTensor<uint8_t>& pool, const AscendC::LocalTensor<uint8_t>& rec,
                                 uint32_t slot, uint32_t pageSize, uint32_t pageBytes)
    {
        using namespace AscendC;
        const uint64_t page = slot / pageSize, off = slot % pageSize;
        const uint64_t pageBase = page * pageBytes;
        DataCopyPad(pool[pageBase + off * kFp8DataBytes], rec, DataCopyExtParams(1, kFp8DataBytes, 0, 0, 0));
        DataCopyPad(pool[pageBase + static_cast<uint64_t>(pageSize) * kFp8DataBytes + off * kFp8ScaleBytes],
                    rec[kFp8DataBytes], DataCopyExtParams(1, kFp8ScaleBytes, 0, 0, 0));
    }

private:
    // Scratch layout (bytes).
    static constexpr uint32_t kOffXf = 0;              // 512 f32: the row (scaled in place)
    static constexpr uint32_t kOffA = 2048;            // 512 f32: |y|, then the signed codes
    static constexpr uint32_t kOffQ = 4096;            // 512 f32
    static constexpr uint32_t kOffBase = 6144;         // 512 f32
    static constexpr uint32_t kOffT = 8192;            // 512 f32
    static constexpr uint32_t kOffOnes = 10240;        // 512 f32
    static constexpr uint32_t kOffEven = 12288;        // 256 f32
    static constexpr uint32_t kOffOdd = 13312;         // 256 f32
    static constexpr uint32_t kOffOffsE = 14336;       // 256 u32
    static constexpr uint32_t kOffOffsO = 15360;       // 256 u32
    static constexpr uint32_t kOffMask = 16384;        // 64 bytes of compare bits (padded to 64)
    static constexpr uint32_t kOffAmax = 16448;        // 8 f32 (+ pad)
    static constexpr uint32_t kBufBytes = 16448 + 64;

    AscendC::TBuf<AscendC::TPosition::VECCALC> buf_;
    AscendC::LocalTensor<float> xf_, a_, q_, base_, t_, ones_, even_, odd_, amax_;
    AscendC::LocalTensor<uint32_t> offEven_, offOdd_;
    AscendC::LocalTensor<uint8_t> mask_;
};

}  // namespace longattn_ascend
