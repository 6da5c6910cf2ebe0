// SPDX-License-Identifier: Apache-2.0
// FP8 "MODEL1" record quantisation on the vector core (AIV), shared by append_kv and compress_kv.
//
// One 512-wide row -> one 584-B record, byte for byte longattn.cache.fp8.quantize_rows (and the Triton
// kernel's _store_fp8_record) for EVERY input, non-finite values included:
//   bytes [0, 448)    e4m3fn(clamp(x[k] / 2^e_i, -448, 448))  for nope dims k, tile i = k / 64
//   bytes [448, 576)  bf16(x[448..512))     rope dims, RNE (NaN -> 0x7FC0, the emulator's / Triton's
//                     canonical NaN: see "Hardware assumptions" below)
//   scale row         e_i + 127 (7 bytes) + 1 zero pad byte
//   e_i = 0 if tile i holds an inf or a NaN (torch.frexp of inf / NaN returns exponent 0), else the
//         smallest integer e >= -13 with 448 * 2^e >= amax_i (= ceil(log2(max(amax_i / 448, 1e-4))))
//   e4m3: round to nearest even, |v| > 448 and inf saturate to 448 (0x7E | sign), NaN -> 0x7F | sign.
//
// A2/A3 have no FP8 type, so e4m3 encoding is done with float vector ops, exactly:
//   finite = (|x| <= FLT_MAX) (CompareScalar: false for inf and NaN); the tile maxima are taken over
//   |x| with non-finite values replaced by +inf (Select), so no reduction ever sees a NaN and a
//   non-finite tile shows up as amax = +inf (-> e = 0 on the scalar unit).
//   After the scaling, a = |y| with non-finite values replaced by 448 (Select) and clamped to 448
//   (Mins; no NaN is left there); for each binade threshold 2^k (k = -5..8) a CompareScalar/Select
//   pair picks the quantum q = 2^(max(k,-6)-3) and the code base 8*(max(k,-6)+6); n = rint(a / q)
//   (exact: q is a power of two, CAST_RINT = ties to even); code = base + n covers the subnormals
//   (base 0, q = 2^-9), the normals and a carry into the next binade (n = 16). NaN positions
//   (Compare(y, y, EQ) false) get the magnitude code 0x7F. The sign bit (0x80) is read from the
//   bits of the input: the float row reinterpreted as int32 is negative iff its sign bit is set
//   (-0.0 and -NaN included), turned into 0 / 128 with int32 Mins/Maxs, a Cast and a Muls.
//   Bytes are packed two per int16 (lo + 256 * hi, wrapped to [-32768, 32767]) through Gather
//   (even/odd codes) and an exact float -> int16 cast.
// Scalar unit: the 7 exponents (a loop of exact doublings) and the scale bytes.
//
// Hardware assumptions (the emulator implements them; not checked on a device): vector Compare
// follows IEEE 754 (every comparison with a NaN is false, so LE against FLT_MAX is false for NaN and
// inf, and EQ(y, y) is false exactly for NaN); Abs clears only the sign bit; Muls by a power of two is
// an exact IEEE multiply (fp32 subnormals are not flushed; a flush would only change values that
// round to +-0 in e4m3 anyway, the sign comes from the unscaled input); the int32 view of a float
// tensor is its bit pattern. Cast float -> bf16 of a NaN gives 0x7FC0 in the emulator (the documented
// choice, ascend_c/emu/README.md); real hardware may keep the sign / payload instead
// (0xFFC0 for -NaN): the rope half of a NaN record is the one place where this matters.
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
        sgn_ = all[kOffSgn].ReinterpretCast<float>();
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
        AscendC::Duplicate(xf_, 0.0f, 512);  // columns 448.. of the code buffer stay defined
    }

    // rec: >= kRecordUbBytes bytes of UB; x: 512 values of TIn in UB.
    template <typename TIn>
    __aicore__ inline void Quantize(const AscendC::LocalTensor<uint8_t>& rec, const AscendC::LocalTensor<TIn>& x)
    {
        using namespace AscendC;
        constexpr float kFltMax = 3.40282347e38f;
        LocalTensor<float> xf = xf_;
        if constexpr (sizeof(TIn) == 4) {
            DataCopy(xf, x.template ReinterpretCast<float>(), kFp8HeadDim);
        } else {
            Cast(xf, x, RoundMode::CAST_NONE, kFp8HeadDim);
        }
        // Sign bits of the nope values, as 0 / 128: int32 view < 0 <=> sign bit set (-0.0, -NaN too).
        LocalTensor<int32_t> si = sgn_.ReinterpretCast<int32_t>();
        Mins(si, xf.ReinterpretCast<int32_t>(), static_cast<int32_t>(0), kFp8NopeDim);
        Maxs(si, si, static_cast<int32_t>(-1), kFp8NopeDim);           // -1 (negative) or 0
        Cast(sgn_, si, RoundMode::CAST_NONE, kFp8NopeDim);              // exact
        Muls(sgn_, sgn_, -128.0f, kFp8NopeDim);
        // Per-tile maxima of |x| over finite values; inf / NaN count as +inf (no NaN reaches the max).
        Abs(a_, xf, kFp8NopeDim);
        longattn_compat::CompareScalar(mask_, a_, kFltMax, CMPMODE::LE, kFp8NopeDim);  // finite
        Select(t_, mask_, a_, kPosInf, SELMODE::VSEL_TENSOR_SCALAR_MODE, kFp8NopeDim);
        longattn_compat::WholeReduceMax(amax_, t_, 64, kFp8NumTiles, 1, 1, 8, ReduceOrder::ORDER_ONLY_VALUE);
        // Scalar unit: exponents, scale bytes, tile scaling factors.
        LocalTensor<uint8_t> scaleRow = rec[kFp8DataBytes];
        float inv[kFp8NumTiles];
        for (uint32_t i = 0; i < kFp8NumTiles; ++i) {
            const float amax = amax_.GetValue(i);
            int32_t e = -13;
            float s = 8192.0f;  // 2^13 = 2^-e
            if (amax > kFltMax) {  // the tile holds an inf or a NaN: e = 0, as the reference
                e = 0;
                s = 1.0f;
            } else {
                float top = 448.0f * 0.0001220703125f;  // 448 * 2^-13, exact
                while (top < amax && e < 127) {         // ends at e <= 120 (448 * 2^120 > FLT_MAX)
                    top *= 2.0f;
                    s *= 0.5f;
                    ++e;
                }
            }
            inv[i] = s;
            scaleRow.SetValue(i, static_cast<uint8_t>(e + 127));
        }
        scaleRow.SetValue(kFp8NumTiles, static_cast<uint8_t>(0));
        for (uint32_t i = 0; i < kFp8NumTiles; ++i) Muls(xf[i * kFp8Tile], xf[i * kFp8Tile], inv[i], kFp8Tile);
        // |y| on [0, 448]: inf and NaN -> 448 (NaN fixed below), finite values above 448 (only in
        // non-finite tiles, e = 0) saturate: the clamp of quantize_rows.
        Abs(a_, xf, kFp8NopeDim);
        longattn_compat::CompareScalar(mask_, a_, kFltMax, CMPMODE::LE, kFp8NopeDim);
        Select(a_, mask_, a_, 448.0f, SELMODE::VSEL_TENSOR_SCALAR_MODE, kFp8NopeDim);
        Mins(a_, a_, 448.0f, kFp8NopeDim);
        // e4m3 magnitude code of every nope value (float, 0..126).
        Duplicate(q_, 0.001953125f, kFp8NopeDim);  // 2^-9: subnormal quantum (and binade 2^-6)
        Duplicate(base_, 0.0f, kFp8NopeDim);
        float thr = 0.03125f;                       // 2^-5
        float quantum = 0.00390625f;                // 2^-8
        for (int32_t k = -5; k <= 8; ++k) {
            // bit = 1 where a < 2^k: keep; elsewhere this binade (or a higher one, later) applies.
            longattn_compat::CompareScalar(mask_, a_, thr, CMPMODE::LT, kFp8NopeDim);
            Select(q_, mask_, q_, quantum, SELMODE::VSEL_TENSOR_SCALAR_MODE, kFp8NopeDim);
            Select(base_, mask_, base_, static_cast<float>(8 * (k + 6)), SELMODE::VSEL_TENSOR_SCALAR_MODE, kFp8NopeDim);
            thr *= 2.0f;
            quantum *= 2.0f;
        }
        Div(t_, a_, q_, kFp8NopeDim);                          // exact (power-of-two divisor)
        Cast(t_, t_, RoundMode::CAST_RINT, kFp8NopeDim);       // n = rint(a / q), ties to even
        Add(t_, t_, base_, kFp8NopeDim);                       // magnitude code
        Compare(mask_, xf, xf, CMPMODE::EQ, kFp8NopeDim);      // 0 exactly for NaN
        Select(t_, mask_, t_, 127.0f, SELMODE::VSEL_TENSOR_SCALAR_MODE, kFp8NopeDim);  // NaN -> 0x7F
        Add(a_, t_, sgn_, kFp8NopeDim);                        // code with the sign bit
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
        Cast(rec[kFp8NopeDim].ReinterpretCast<bfloat16_t>(), xf_[kFp8NopeDim], RoundMode::CAST_RINT, kFp8RopeDim);
    }

    // Writes one record to slot `slot` of the paged FP8 pool (data row and scale row).
    __aicore__ inline void Store(const AscendC::GlobalTensor<uint8_t>& pool, const AscendC::LocalTensor<uint8_t>& rec,
                                 uint64_t slot, uint32_t pageSize, uint32_t pageBytes)
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
    static constexpr uint32_t kOffSgn = 10240;         // 512 f32: 0 / 128, the sign bits
    static constexpr uint32_t kOffEven = 12288;        // 256 f32
    static constexpr uint32_t kOffOdd = 13312;         // 256 f32
    static constexpr uint32_t kOffOffsE = 14336;       // 256 u32
    static constexpr uint32_t kOffOffsO = 15360;       // 256 u32
    static constexpr uint32_t kOffMask = 16384;        // 64 bytes of compare bits (padded to 64)
    static constexpr uint32_t kOffAmax = 16448;        // 8 f32 (+ pad)
    static constexpr uint32_t kBufBytes = 16448 + 64;
    static_assert(kBufBytes == kFp8QuantizerUbBytes, "longattn_types.h mirrors the quantiser's UB size");

    AscendC::TBuf<AscendC::TPosition::VECCALC> buf_;
    AscendC::LocalTensor<float> xf_, a_, q_, base_, t_, sgn_, even_, odd_, amax_;
    AscendC::LocalTensor<uint32_t> offEven_, offOdd_;
    AscendC::LocalTensor<uint8_t> mask_;
};

}  // namespace longattn_ascend
