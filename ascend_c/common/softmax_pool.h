// SPDX-License-Identifier: Apache-2.0
// Per-channel softmax pooling on the vector core (AIV), shared by compress_kv (one pooled position
// at a time) and compress_pool (chunks of up to R positions): for each channel k over the pooled
// slots t,  entry[k] = sum_t e^(b_t[k] - m[k]) a_t[k] / sum_t e^(b_t[k] - m[k]),  m = max_t b_t[k],
// as an online softmax over chunks of rows (fp32):
//
//   m'  = max(m, b_0, .., b_{R-1})         running max (Max, one row at a time)
//   m*  = max(m', -FLT_MAX)                 the exponent base
//   al  = e^(m - m*)                        rescale of the previous sums (0 on the first chunk: m = -inf)
//   w_r = e^(b_r - m*)                      one Sub per row, one Exp over the whole chunk
//   s   = s al + sum_r w_r,  acc = acc al + sum_r w_r a_r    (rows summed by halving folds)
//
// and at the end entry = acc / s, 0 where s == 0 (Result).
//
// Non-finite scores and values (python/longattn/ops/compress/README.md, the package rule): m* only
// differs from m' while every score so far is -inf; then al and the weights are e^(-inf) = 0 instead of
// e^(-inf + inf) = NaN, s stays exactly 0, and "no score above -inf" is recognised at the end as s == 0
// (-> 0, whatever the values). A NaN score makes its w_r NaN (e^NaN) and a +inf score makes m* = +inf
// and w_r = e^(inf - inf) = NaN, so s is NaN (never 0) and the channel NaN; a NaN value (or an inf value
// at weight 0) makes acc NaN through w_r a_r (0 * NaN), even under a -inf score, and stays NaN through
// later rescales (NaN * al). Nothing depends on the hardware's NaN behaviour of Max: a NaN score reaches
// s through e^(b - m*) whatever m* is.
//
// With R = 1 the arithmetic is exactly compress_kv's original per-position update (same operations on
// the same operands), so its entries are unchanged bit for bit.
//
// Row layout of a chunk: row r of a / b at element r * stride (stride >= n, 32-B aligned rows). Lanes
// n..stride-1 of a row (DataCopyPad's dummy / padding) go through the Exp, Mul and the folds too but
// never into a channel (every op is element-wise).
#pragma once

#include "ascendc_compat.h"
#include "longattn_types.h"

namespace longattn_ascend {

class SoftmaxPool {
public:
    static constexpr float kFltMax = 3.40282347e38f;

    // Six distinct fp32 work tensors of at least nV elements and a mask of at least nV / 8 bytes (UB,
    // 32-B aligned). nV = AlignUpU(n, 64): Result's CompareScalar works on whole 256-B repeats.
    __aicore__ inline void Bind(const AscendC::LocalTensor<float>& m, const AscendC::LocalTensor<float>& mNext,
                                const AscendC::LocalTensor<float>& mStar, const AscendC::LocalTensor<float>& alpha,
                                const AscendC::LocalTensor<float>& s, const AscendC::LocalTensor<float>& acc,
                                const AscendC::LocalTensor<uint8_t>& mask)
    {
        m_ = m;
        mNext_ = mNext;
        mStar_ = mStar;
        alpha_ = alpha;
        s_ = s;
        acc_ = acc;
        mask_ = mask;
    }

    // Start an entry of n channels.
    __aicore__ inline void Reset(uint32_t n, uint32_t nV)
    {
        AscendC::Duplicate(m_, kNegInf, n);
        AscendC::Duplicate(s_, 0.0f, nV);  // the tail beyond n stays 0 (read by Result's CompareScalar)
        AscendC::Duplicate(acc_, 0.0f, n);
    }

    // Pool `rows` more slots: values a, scores b (fp32, row r at r * stride). Overwrites a and b.
    __aicore__ inline void Accumulate(const AscendC::LocalTensor<float>& a, const AscendC::LocalTensor<float>& b,
                                      uint32_t rows, uint32_t stride, uint32_t n)
    {
        if (rows == 0) return;
        const uint32_t span = (rows - 1) * stride + n;  // every data lane of the chunk
        AscendC::Max(mNext_, m_, b, n);  // m' = max(m, b_0, ..)
        for (uint32_t r = 1; r < rows; ++r) AscendC::Max(mNext_, mNext_, b[r * stride], n);
        AscendC::Maxs(mStar_, mNext_, -kFltMax, n);  // m* = m' unless every score so far is -inf
        AscendC::Sub(alpha_, m_, mStar_, n);
        AscendC::Exp(alpha_, alpha_, n);  // e^(m - m*): 0 on the first chunk (m = -inf)
        for (uint32_t r = 0; r < rows; ++r) AscendC::Sub(b[r * stride], b[r * stride], mStar_, n);
        AscendC::Exp(b, b, span);   // w_r = e^(b_r - m*)
        AscendC::Mul(a, a, b, span);  // w_r a_r
        // Halving folds: the last h rows onto the first h, until one row holds the sums.
        for (uint32_t left = rows; left > 1;) {
            const uint32_t h = left / 2, keep = left - h, len = (h - 1) * stride + n;
            AscendC::Add(b, b, b[keep * stride], len);
            AscendC::Add(a, a, a[keep * stride], len);
            left = keep;
        }
        AscendC::Mul(s_, s_, alpha_, n);
        AscendC::Add(s_, s_, b, n);
        AscendC::Mul(acc_, acc_, alpha_, n);
        AscendC::Add(acc_, acc_, a, n);
        const AscendC::LocalTensor<float> t = m_;  // m <- m'
        m_ = mNext_;
        mNext_ = t;
    }

    // dst = acc / s, 0 where s == 0 (no slot scored above -inf); NaN stays NaN (NE is true for NaN).
    // After at least one Accumulate since Reset; dst may be any tensor but s (m*, al and acc included).
    __aicore__ inline void Result(const AscendC::LocalTensor<float>& dst, uint32_t n, uint32_t nV)
    {
        AscendC::Div(dst, acc_, s_, n);
        longattn_compat::CompareScalar(mask_, s_, 0.0f, AscendC::CMPMODE::NE, nV);
        AscendC::Select(dst, mask_, dst, 0.0f, AscendC::SELMODE::VSEL_TENSOR_SCALAR_MODE, n);
    }

private:
    AscendC::LocalTensor<float> m_, mNext_, mStar_, alpha_, s_, acc_;
    AscendC::LocalTensor<uint8_t> mask_;
};

}  // namespace longattn_ascend
