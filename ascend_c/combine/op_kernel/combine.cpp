// SPDX-License-Identifier: Apache-2.0
// merge_attention_states and apply_attention_sink (python/longattn/ops/combine), and merge_partial_states
// (the S-way merge + sink of sparse_attention's split-KV path, one launch; class MergePartialsKernel
// below): AIV-only kernels over rows r = t * H + h of [T*H, D] tensors, all math in fp32.
//
//   merge: m = max(lse_a, lse_b), w_x = exp(lse_x - m) / (w_a + w_b) (the coefficient of side x),
//          out = w_a * out_a + w_b * out_b, lse = m + ln(exp(lse_a - m) + exp(lse_b - m))
//   sink:  out * g, g = 1 / (1 + exp(sink[h] - lse))  (= sigmoid(lse - sink)), g = 0 where lse = -inf
//
// Per core: rows [r0, r1), in batches of batchRows rows:
//   Weights  (MTE2 -> V -> MTE3)  the batch's lse values (and sinks) in, the per-row coefficients
//            computed vectorised (Compare / Select for the non-finite rules), merge: the lse out;
//            then one V -> S wait: the scalar unit reads coefficients (which rows to read, per-row
//            multipliers).
//   per chunk of chunkRows rows x colTile columns, double-buffered (TQue depth 2):
//   CopyIn   (MTE2)  DataCopyPad of the chunk's rows (merge: only the rows whose coefficient is > 0)
//   Compute  (V)     Cast to fp32; rows not read set to 0; rows scaled by their coefficient (Brcb +
//                    one repeat-form Mul per 64 columns, or one Muls per row); merge: sum of the sides;
//                    Cast to the output dtype (RINT)
//   CopyOut  (MTE3)  DataCopyPad to the rows of the output.
//
// Non-finite rules (ops/combine/README.md, "Edge semantics"): merge rows with a NaN lse give lse NaN /
// out NaN, else a +inf lse gives lse +inf / out NaN, both -inf give lse -inf / out 0; a side whose
// coefficient is 0 (lse -inf, or a weight that underflows) is never read, so whatever its out holds
// (NaN: an unwritten split) cannot reach the result; neither side is read on NaN / +inf rows. Only
// IEEE Compare is relied on (never the NaN behaviour of Max).
#include "../../common/ascendc_compat.h"
#include "../op_host/combine_tiling.h"

using namespace AscendC;

namespace longattn_ascend {

constexpr float kCombineFltMax = 3.40282347e38f;

// ---- row helpers shared by the merges ---------------------------------------------------------------
// A merge reads row j of a side only where its coefficient w[j] is > 0 (false for 0 and NaN).
__aicore__ inline bool CoefReads(const LocalTensor<float>& w, uint32_t j) { return w.GetValue(j) > 0.0f; }

// End of the run of rows [i, end) of a chunk (rows i0 + i of w) that all read or all skip.
__aicore__ inline uint32_t CoefRunEnd(const LocalTensor<float>& w, uint32_t i0, uint32_t i, uint32_t n)
{
    const bool read = CoefReads(w, i0 + i);
    uint32_t e = i + 1;
    while (e < n && CoefReads(w, i0 + e) == read) ++e;
    return e;
}

// Rows of a chunk that were not read hold stale UB contents: 0 (times their coefficient: 0, or NaN).
__aicore__ inline void ZeroUnread(const LocalTensor<float>& f, const LocalTensor<float>& w, uint32_t i0, uint32_t n,
                                  uint32_t pitch)
{
    for (uint32_t i = 0; i < n;) {
        const uint32_t e = CoefRunEnd(w, i0, i, n);
        if (!CoefReads(w, i0 + i)) Duplicate(f[i * pitch], 0.0f, static_cast<int32_t>((e - i) * pitch));
        i = e;
    }
}

// m = max(a, b), NaN when either is NaN: a where a > b (false when either is NaN), else b; then a where
// a is NaN. m may alias b (the S-way merge folds m = MaxKeepNaN(lse_s, m)).
__aicore__ inline void MaxKeepNaN(const LocalTensor<float>& m, const LocalTensor<float>& a, const LocalTensor<float>& b,
                                  const LocalTensor<uint8_t>& mask, uint32_t n)
{
    Compare(mask, a, b, CMPMODE::GT, n);
    Select(m, mask, a, b, SELMODE::VSEL_TENSOR_TENSOR_MODE, n);
    Compare(mask, a, a, CMPMODE::EQ, n);
    Select(m, mask, m, a, SELMODE::VSEL_TENSOR_TENSOR_MODE, n);
}

// The shift of the exponents: m* = m where m is finite (|m| <= FLT_MAX is false for +-inf and NaN), else 0.
__aicore__ inline void FiniteOrZero(const LocalTensor<float>& mStar, const LocalTensor<float>& m,
                                    const LocalTensor<uint8_t>& mask, uint32_t n)
{
    Abs(mStar, m, n);
    longattn_compat::CompareScalar(mask, mStar, kCombineFltMax, CMPMODE::LE, n);
    Select(mStar, mask, m, 0.0f, SELMODE::VSEL_TENSOR_SCALAR_MODE, n);
}

// dst rows = src rows * w[i0 + i] (fp32, `len` columns of pitch `pitch`). Rows as repeats: the
// coefficients Brcb'd to one 32-B block per row, one repeat-form Mul per 64 columns (src1 block
// stride 0); when a chunk has fewer rows than 64-column groups, one count-form Muls per row
// with the coefficient read by the scalar unit (fewer instructions either way).
__aicore__ inline void ScaleRows(const LocalTensor<float>& dst, const LocalTensor<float>& src,
                                 const LocalTensor<float>& w, const LocalTensor<float>& bc, uint32_t i0, uint32_t n,
                                 uint32_t len, uint32_t pitch)
{
    const uint32_t groups = CeilDivU(len, 64u);
    if (groups <= n) {
        const uint32_t a0 = i0 / 8u * 8u;  // Brcb reads whole 32-B blocks of w
        Brcb(bc, w[a0], static_cast<int32_t>(CeilDivU(i0 - a0 + n, 8u)), BrcbRepeatParams(1, 8));
        const LocalTensor<float> b = bc[(i0 - a0) * 8u];
        const uint8_t rep = static_cast<uint8_t>(pitch / 8u);
        for (uint32_t c = 0; c < len; c += 64u)
            Mul(dst[c], src[c], b, static_cast<uint64_t>(MinU(64u, len - c)), static_cast<int32_t>(n),
                BinaryRepeatParams(1, 1, 0, rep, rep, 1));
    } else {
        for (uint32_t i = 0; i < n; ++i)
            Muls(dst[i * pitch], src[i * pitch], w.GetValue(i0 + i), static_cast<int32_t>(len));
    }
}

template <typename T, bool kMerge>
class CombineKernel {
public:
    static constexpr bool kF32 = IsSameType<T, float>::value;

    // merge_attention_states: outA / outB / out [R, D], lseA / lseB / lse [R] fp32.
    __aicore__ inline void InitMerge(GM_ADDR outA, GM_ADDR lseA, GM_ADDR outB, GM_ADDR lseB, GM_ADDR out, GM_ADDR lse,
                                     const CombineTiling& t)
    {
        const uint64_t R = t.numRows, RD = R * t.headDim;
        inAGm_.SetGlobalBuffer((__gm__ T*)outA, RD);
        inBGm_.SetGlobalBuffer((__gm__ T*)outB, RD);
        lseAGm_.SetGlobalBuffer((__gm__ float*)lseA, R);
        lseBGm_.SetGlobalBuffer((__gm__ float*)lseB, R);
        resGm_.SetGlobalBuffer((__gm__ T*)out, RD);
        lseOutGm_.SetGlobalBuffer((__gm__ float*)lse, R);
        InitBuffers(t);
    }

    // apply_attention_sink: out / result [R, D], lse [R] fp32, sinkTable [H + batchRows] fp32.
    __aicore__ inline void InitSink(GM_ADDR out, GM_ADDR lse, GM_ADDR sinkTable, GM_ADDR result, const CombineTiling& t)
    {
        const uint64_t R = t.numRows, RD = R * t.headDim;
        inAGm_.SetGlobalBuffer((__gm__ T*)out, RD);
        lseAGm_.SetGlobalBuffer((__gm__ float*)lse, R);
        lseBGm_.SetGlobalBuffer((__gm__ float*)sinkTable, t.sinkTableLen);
        resGm_.SetGlobalBuffer((__gm__ T*)result, RD);
        InitBuffers(t);
    }

    __aicore__ inline void Process()
    {
        for (uint32_t b0 = r0_; b0 < r1_; b0 += t_.batchRows) {
            const uint32_t nb = MinU(t_.batchRows, r1_ - b0);
            if constexpr (kMerge)
                MergeWeights(b0, nb);
            else
                SinkFactors(b0, nb);
            longattn_compat::PipeWait<HardEvent::V_S>(pipe_);  // the scalar unit reads coefficients below
            for (uint32_t c0 = 0; c0 < nb; c0 += t_.chunkRows) {
                const uint32_t n = MinU(t_.chunkRows, nb - c0);
                for (uint32_t d0 = 0; d0 < t_.headDim; d0 += t_.colTile) {
                    const uint32_t len = MinU(t_.colTile, t_.headDim - d0);
                    CopyIn(b0 + c0, c0, n, d0, len);
                    Compute(c0, n, len);
                    CopyOut(b0 + c0, n, d0, len);
                }
            }
        }
    }

private:
    __aicore__ inline void InitBuffers(const CombineTiling& t)
    {
        t_ = t;
        const uint32_t core = static_cast<uint32_t>(GetBlockIdx());
        r0_ = core * t.rowsPerCore;
        r1_ = MinU(t.numRows, r0_ + t.rowsPerCore);
        if (r0_ > r1_) r0_ = r1_;
        const uint32_t B = t.batchRows, tileElems = t.chunkRows * AlignUpU(t.colTile, 16u);
        const uint32_t brcb = CombineBrcbFloats(t.chunkRows), maskBytes = AlignUpU(B / 8u, 32u);
        pipe_.InitBuffer(lseInQue_, 1, 2 * B * 4);
        if constexpr (kMerge) pipe_.InitBuffer(lseOutQue_, 1, B * 4);
        pipe_.InitBuffer(vecBuf_, (kMerge ? 5u : 2u) * B * 4);
        pipe_.InitBuffer(maskBuf_, 2 * maskBytes);
        pipe_.InitBuffer(brcbBuf_, (kMerge ? 2u : 1u) * brcb * 4);
        pipe_.InitBuffer(inA_, 2, tileElems * sizeof(T));
        if constexpr (kMerge) pipe_.InitBuffer(inB_, 2, tileElems * sizeof(T));
        pipe_.InitBuffer(outQue_, 2, tileElems * sizeof(T));
        if constexpr (!kF32) pipe_.InitBuffer(f32Buf_, (kMerge ? 2u : 1u) * tileElems * 4);
        LocalTensor<float> v = vecBuf_.Get<float>();
        wA_ = v[0];  // merge: coefficient of out_a; sink: the factor g
        tmp1_ = v[B];
        if constexpr (kMerge) {
            wB_ = v[2 * B];
            m_ = v[3 * B];
            tmp2_ = v[4 * B];
        }
        LocalTensor<uint8_t> mk = maskBuf_.Get<uint8_t>();
        mask0_ = mk[0];
        mask1_ = mk[maskBytes];
        LocalTensor<float> bc = brcbBuf_.Get<float>();
        bcA_ = bc[0];
        if constexpr (kMerge) bcB_ = bc[brcb];
        if constexpr (!kF32) {
            LocalTensor<float> f = f32Buf_.Get<float>();
            fA_ = f[0];
            if constexpr (kMerge) fB_ = f[tileElems];
        }
    }

    // ---- per-batch weights ------------------------------------------------------------------------
    // lse values of rows [b0, b0 + nb) from gm into the batch's lse tile at offset `at`.
    __aicore__ inline void LoadBatch(const LocalTensor<float>& dst, const GlobalTensor<float>& gm, uint64_t at,
                                     uint32_t nb)
    {
        DataCopyPad(dst, gm[at], DataCopyExtParams(1, nb * 4, 0, 0, 0), DataCopyPadExtParams<float>(false, 0, 0, 0.0f));
    }

    // wA_ / wB_: coefficients of out_a / out_b (0: empty side or both empty, NaN: NaN or +inf lse);
    // lse of the batch to GM. Compares run over whole 64-float repeats (the tail past nb is unused).
    __aicore__ inline void MergeWeights(uint32_t b0, uint32_t nb)
    {
        const uint32_t B = t_.batchRows, n = AlignUpU(nb, 64u);
        LocalTensor<float> in = lseInQue_.AllocTensor<float>();
        LoadBatch(in, lseAGm_, b0, nb);
        LoadBatch(in[B], lseBGm_, b0, nb);
        lseInQue_.EnQue(in);
        in = lseInQue_.DeQue<float>();
        const LocalTensor<float> la = in[0], lb = in[B];
        MaxKeepNaN(m_, la, lb, mask0_, n);  // m = max(la, lb), NaN when either is
        FiniteOrZero(tmp1_, m_, mask1_, n);  // ok rows: m finite; m* = m there, else 0
        Sub(wA_, la, tmp1_, n);
        Exp(wA_, wA_, n);  // exp(-inf) = 0: an empty side weighs nothing
        Sub(wB_, lb, tmp1_, n);
        Exp(wB_, wB_, n);
        Add(tmp2_, wA_, wB_, n);  // total, in [1, 2] on ok rows
        Div(wA_, wA_, tmp2_, n);
        Div(wB_, wB_, tmp2_, n);
        Ln(tmp2_, tmp2_, n);
        Add(tmp2_, tmp2_, tmp1_, n);  // m + ln(total)
        LocalTensor<float> lo = lseOutQue_.AllocTensor<float>();
        Select(lo, mask1_, tmp2_, m_, SELMODE::VSEL_TENSOR_TENSOR_MODE, n);  // else m: -inf, +inf or NaN
        lseOutQue_.EnQue(lo);
        // Rows that are not ok: coefficient 0 where m = -inf (both empty: out 0), NaN otherwise.
        longattn_compat::CompareScalar(mask0_, m_, kNegInf, CMPMODE::EQ, n);
        Duplicate(tmp1_, 0.0f, n);
        Select(tmp1_, mask0_, tmp1_, kNaN, SELMODE::VSEL_TENSOR_SCALAR_MODE, n);
        Select(wA_, mask1_, wA_, tmp1_, SELMODE::VSEL_TENSOR_TENSOR_MODE, n);
        Select(wB_, mask1_, wB_, tmp1_, SELMODE::VSEL_TENSOR_TENSOR_MODE, n);
        lseInQue_.FreeTensor(in);
        lo = lseOutQue_.DeQue<float>();
        DataCopyPad(lseOutGm_[b0], lo, DataCopyExtParams(1, nb * 4, 0, 0, 0));
        lseOutQue_.FreeTensor(lo);
    }

    // wA_ = g = 1 / (1 + exp(sink - lse)), 0 where lse = -inf (whatever the sink); IEEE elsewhere:
    // lse +inf -> 1 (sink finite or -inf), sink +inf -> 0, sink -inf -> 1, NaN lse or sink -> NaN.
    __aicore__ inline void SinkFactors(uint32_t b0, uint32_t nb)
    {
        const uint32_t B = t_.batchRows, n = AlignUpU(nb, 64u);
        LocalTensor<float> in = lseInQue_.AllocTensor<float>();
        LoadBatch(in, lseAGm_, b0, nb);
        LoadBatch(in[B], lseBGm_, b0 % t_.numHeads, nb);  // sink[(b0 + i) mod H] = table[b0 mod H + i]
        lseInQue_.EnQue(in);
        in = lseInQue_.DeQue<float>();
        const LocalTensor<float> l = in[0], s = in[B];
        Sub(tmp1_, s, l, n);
        Exp(tmp1_, tmp1_, n);
        Adds(tmp1_, tmp1_, 1.0f, n);
        Duplicate(wA_, 1.0f, n);
        Div(wA_, wA_, tmp1_, n);
        longattn_compat::CompareScalar(mask0_, l, kNegInf, CMPMODE::NE, n);  // true for NaN too
        Select(wA_, mask0_, wA_, 0.0f, SELMODE::VSEL_TENSOR_SCALAR_MODE, n);
        lseInQue_.FreeTensor(in);
    }

    // ---- per-chunk data tiles ---------------------------------------------------------------------
    // Merge reads a row of a side only where its coefficient is > 0 (never an empty side, never a
    // NaN / +inf row); the sink reads every row.
    __aicore__ inline bool Reads(const LocalTensor<float>& w, uint32_t j) const
    {
        if constexpr (kMerge) return CoefReads(w, j);
        return true;
    }
    __aicore__ inline uint32_t RunEnd(const LocalTensor<float>& w, uint32_t i0, uint32_t i, uint32_t n) const
    {
        if constexpr (kMerge) return CoefRunEnd(w, i0, i, n);
        return n;
    }

    // UB row pitch (elements) of a tile `len` columns wide: DataCopyPad's 32-B rows.
    __aicore__ inline uint32_t Pitch(uint32_t len) const { return AlignUpU(len, 32u / sizeof(T)); }

    __aicore__ inline void LoadSide(const LocalTensor<T>& x, const GlobalTensor<T>& gm, const LocalTensor<float>& w,
                                    uint32_t row0, uint32_t i0, uint32_t n, uint32_t d0, uint32_t len)
    {
        const uint32_t D = t_.headDim, pitch = Pitch(len);
        for (uint32_t i = 0; i < n;) {
            const uint32_t e = RunEnd(w, i0, i, n);
            if (Reads(w, i0 + i)) {
                DataCopyPad(x[i * pitch], gm[static_cast<uint64_t>(row0 + i) * D + d0],
                            DataCopyExtParams(static_cast<uint16_t>(e - i), len * sizeof(T), (D - len) * sizeof(T), 0,
                                              0),
                            DataCopyPadExtParams<T>(false, 0, 0, T(0)));
            }
            i = e;
        }
    }

    __aicore__ inline void CopyIn(uint32_t row0, uint32_t i0, uint32_t n, uint32_t d0, uint32_t len)
    {
        LocalTensor<T> xa = inA_.AllocTensor<T>();
        LoadSide(xa, inAGm_, wA_, row0, i0, n, d0, len);
        inA_.EnQue(xa);
        if constexpr (kMerge) {
            LocalTensor<T> xb = inB_.AllocTensor<T>();
            LoadSide(xb, inBGm_, wB_, row0, i0, n, d0, len);
            inB_.EnQue(xb);
        }
    }

    // The fp32 rows of a side: the input tile itself (fp32) or its widening cast (exact).
    __aicore__ inline LocalTensor<float> Widen(const LocalTensor<T>& x, const LocalTensor<float>& f, uint32_t count)
    {
        if constexpr (kF32) {
            return x;
        } else {
            Cast(f, x, RoundMode::CAST_NONE, count);
            return f;
        }
    }

    __aicore__ inline void Compute(uint32_t i0, uint32_t n, uint32_t len)
    {
        const uint32_t pitch = Pitch(len), count = n * pitch;
        LocalTensor<T> xa = inA_.DeQue<T>();
        LocalTensor<T> y = outQue_.AllocTensor<T>();
        if constexpr (kMerge) {
            LocalTensor<T> xb = inB_.DeQue<T>();
            const LocalTensor<float> fa = Widen(xa, fA_, count), fb = Widen(xb, fB_, count);
            ZeroUnread(fa, wA_, i0, n, pitch);
            ZeroUnread(fb, wB_, i0, n, pitch);
            ScaleRows(fa, fa, wA_, bcA_, i0, n, len, pitch);
            ScaleRows(fb, fb, wB_, bcB_, i0, n, len, pitch);
            if constexpr (kF32) {
                Add(y, fa, fb, static_cast<int32_t>(count));
            } else {
                Add(fa, fa, fb, static_cast<int32_t>(count));
                Cast(y, fa, RoundMode::CAST_RINT, count);
            }
            inB_.FreeTensor(xb);
        } else {
            if constexpr (kF32) {
                ScaleRows(y, xa, wA_, bcA_, i0, n, len, pitch);
            } else {
                const LocalTensor<float> f = Widen(xa, fA_, count);
                ScaleRows(f, f, wA_, bcA_, i0, n, len, pitch);
                Cast(y, f, RoundMode::CAST_RINT, count);
            }
        }
        outQue_.EnQue(y);
        inA_.FreeTensor(xa);
    }

    __aicore__ inline void CopyOut(uint32_t row0, uint32_t n, uint32_t d0, uint32_t len)
    {
        const uint32_t D = t_.headDim;
        LocalTensor<T> y = outQue_.DeQue<T>();
        DataCopyPad(resGm_[static_cast<uint64_t>(row0) * D + d0], y,
                    DataCopyExtParams(static_cast<uint16_t>(n), len * sizeof(T), 0, (D - len) * sizeof(T), 0));
        outQue_.FreeTensor(y);
    }

    TPipe pipe_;
    TQue<TPosition::VECIN, 1> lseInQue_;
    TQue<TPosition::VECOUT, 1> lseOutQue_;
    TQue<TPosition::VECIN, 2> inA_, inB_;
    TQue<TPosition::VECOUT, 2> outQue_;
    TBuf<TPosition::VECCALC> vecBuf_, maskBuf_, brcbBuf_, f32Buf_;
    LocalTensor<float> wA_, wB_, m_, tmp1_, tmp2_, bcA_, bcB_, fA_, fB_;
    LocalTensor<uint8_t> mask0_, mask1_;
    GlobalTensor<T> inAGm_, inBGm_, resGm_;
    GlobalTensor<float> lseAGm_, lseBGm_, lseOutGm_;
    CombineTiling t_{};
    uint32_t r0_ = 0, r1_ = 0;
};

template <typename T>
__aicore__ inline void RunMerge(GM_ADDR outA, GM_ADDR lseA, GM_ADDR outB, GM_ADDR lseB, GM_ADDR out, GM_ADDR lse,
                                const CombineTiling& t)
{
    CombineKernel<T, true> op;
    op.InitMerge(outA, lseA, outB, lseB, out, lse, t);
    op.Process();
}

template <typename T>
__aicore__ inline void RunSink(GM_ADDR out, GM_ADDR lse, GM_ADDR sinkTable, GM_ADDR result, const CombineTiling& t)
{
    CombineKernel<T, false> op;
    op.InitSink(out, lse, sinkTable, result, t);
    op.Process();
}

// merge_partial_states: per row r = t * H + h, the S partial states (t, s, h) of a split-KV launch merged
// at once, the sink folded in, the out rounded once. Per core: rows [r0, r1) in batches (at most
// batchRows rows, never across a token), per batch:
//   Weights  (MTE2 -> V -> MTE3)  the S lse rows of the batch (one DataCopyPad each; + the sinks):
//            m = max_s lse_s (NaN if any is), ok = m finite, m* = ok ? m : 0, e_s = exp(lse_s - m*),
//            total = sum_s e_s, lse = ok ? m* + ln(total) : m, coefficients c_s = ok ? e_s / total : 0
//            (in place over the lse rows), row factor f = ok ? g : (m = -inf ? 0 : NaN) with
//            g = 1 / (1 + exp(sink - lse)) (1 without a sink); the lse out; one V -> S wait.
//   per chunk of chunkRows rows x colTile columns: for each partial s with a row whose c_s > 0:
//            CopyIn (MTE2: DataCopyPad of the runs of rows with c_s > 0; TQue depth 2, so the copy of
//            partial s + 1 overlaps the compute of s), Compute (V: unread rows zeroed, acc (+)= c_s * x);
//            then out = acc * f (Cast to the out dtype, RINT) and CopyOut (MTE3).
// A partial whose coefficient is 0 (lse -inf, an underflowing weight) or whose row is not ok is never read.
template <typename T>
class MergePartialsKernel {
public:
    static constexpr bool kF32 = IsSameType<T, float>::value;

    // partOut [T, S, H, D] fp32, partLse [T, S, H] fp32, sinks [H] fp32 (hasSink), out [T, H, D], lse [T, H].
    __aicore__ inline void Init(GM_ADDR partOut, GM_ADDR partLse, GM_ADDR sinks, GM_ADDR out, GM_ADDR lse,
                                const MergePartialsTiling& t)
    {
        t_ = t;
        const uint64_t R = t.numRows, S = t.numPartials, D = t.headDim;
        partGm_.SetGlobalBuffer((__gm__ float*)partOut, R * S * D);
        partLseGm_.SetGlobalBuffer((__gm__ float*)partLse, R * S);
        if (t.hasSink) sinkGm_.SetGlobalBuffer((__gm__ float*)sinks, t.numHeads);
        resGm_.SetGlobalBuffer((__gm__ T*)out, R * D);
        lseOutGm_.SetGlobalBuffer((__gm__ float*)lse, R);
        const uint32_t core = static_cast<uint32_t>(GetBlockIdx());
        r0_ = core * t.rowsPerCore;
        r1_ = MinU(t.numRows, r0_ + t.rowsPerCore);
        if (r0_ > r1_) r0_ = r1_;
        const uint32_t B = t.batchRows, tileElems = t.chunkRows * AlignUpU(t.colTile, 16u);
        const uint32_t maskBytes = AlignUpU(B / 8u, 32u);
        pipe_.InitBuffer(lseInQue_, 1, (t.numPartials + 1u) * B * 4);
        pipe_.InitBuffer(lseOutQue_, 1, B * 4);
        pipe_.InitBuffer(vecBuf_, 5u * B * 4);
        pipe_.InitBuffer(maskBuf_, 2 * maskBytes);
        pipe_.InitBuffer(brcbBuf_, CombineBrcbFloats(t.chunkRows) * 4);
        pipe_.InitBuffer(inQue_, 2, tileElems * 4);
        pipe_.InitBuffer(accBuf_, tileElems * 4);
        pipe_.InitBuffer(outQue_, 2, tileElems * sizeof(T));
        LocalTensor<float> v = vecBuf_.Get<float>();
        m_ = v[0];
        mStar_ = v[B];
        total_ = v[2 * B];
        lseM_ = v[3 * B];
        f_ = v[4 * B];
        LocalTensor<uint8_t> mk = maskBuf_.Get<uint8_t>();
        mask0_ = mk[0];
        mask1_ = mk[maskBytes];
        bc_ = brcbBuf_.Get<float>();
        acc_ = accBuf_.Get<float>();
    }

    __aicore__ inline void Process()
    {
        const uint32_t H = t_.numHeads, S = t_.numPartials;
        for (uint32_t b0 = r0_; b0 < r1_;) {
            const uint32_t h0 = b0 % H;
            const uint32_t nb = MinU(MinU(t_.batchRows, r1_ - b0), H - h0);  // never across a token
            const uint64_t part0 = static_cast<uint64_t>(b0 / H) * S * H + h0;  // partial 0 of the batch's row 0
            LocalTensor<float> w = Weights(b0, part0, nb);
            longattn_compat::PipeWait<HardEvent::V_S>(pipe_);  // the scalar unit reads coefficients below
            for (uint32_t c0 = 0; c0 < nb; c0 += t_.chunkRows) {
                const uint32_t n = MinU(t_.chunkRows, nb - c0);
                for (uint32_t d0 = 0; d0 < t_.headDim; d0 += t_.colTile)
                    MergeChunk(w, part0 + c0, b0 + c0, c0, n, d0, MinU(t_.colTile, t_.headDim - d0));
            }
            lseInQue_.FreeTensor(w);
            b0 += nb;
        }
    }

private:
    // The batch's coefficients c_s (rows [s * batchRows, ...) of the returned tile, which the caller frees
    // after its chunks), f_ and the merged lse (to GM). Vector ops over whole 64-float repeats.
    __aicore__ inline LocalTensor<float> Weights(uint32_t b0, uint64_t part0, uint32_t nb)
    {
        const uint32_t S = t_.numPartials, B = t_.batchRows, H = t_.numHeads, n = AlignUpU(nb, 64u);
        LocalTensor<float> in = lseInQue_.AllocTensor<float>();
        for (uint32_t s = 0; s < S; ++s)
            DataCopyPad(in[s * B], partLseGm_[part0 + static_cast<uint64_t>(s) * H],
                        DataCopyExtParams(1, nb * 4, 0, 0, 0), DataCopyPadExtParams<float>(false, 0, 0, 0.0f));
        if (t_.hasSink)
            DataCopyPad(in[S * B], sinkGm_[b0 % H], DataCopyExtParams(1, nb * 4, 0, 0, 0),
                        DataCopyPadExtParams<float>(false, 0, 0, 0.0f));
        lseInQue_.EnQue(in);
        in = lseInQue_.DeQue<float>();
        // m = max_s lse_s, NaN when any is (a NaN m stays: lse_s > NaN is false)
        Duplicate(m_, kNegInf, n);
        for (uint32_t s = 0; s < S; ++s) MaxKeepNaN(m_, in[s * B], m_, mask0_, n);
        FiniteOrZero(mStar_, m_, mask1_, n);  // ok rows: m finite; m* = m there, else 0
        Duplicate(total_, 0.0f, n);
        for (uint32_t s = 0; s < S; ++s) {
            const LocalTensor<float> l = in[s * B];
            Sub(l, l, mStar_, n);
            Exp(l, l, n);  // exp(-inf) = 0: an empty partial weighs nothing
            Add(total_, total_, l, n);  // in [1, S] on ok rows
        }
        Ln(lseM_, total_, n);
        Add(lseM_, lseM_, mStar_, n);  // m + ln(total): finite on ok rows
        LocalTensor<float> lo = lseOutQue_.AllocTensor<float>();
        Select(lo, mask1_, lseM_, m_, SELMODE::VSEL_TENSOR_TENSOR_MODE, n);  // else m: -inf, +inf or NaN
        lseOutQue_.EnQue(lo);
        for (uint32_t s = 0; s < S; ++s) {
            const LocalTensor<float> l = in[s * B];
            Div(l, l, total_, n);
            Select(l, mask1_, l, 0.0f, SELMODE::VSEL_TENSOR_SCALAR_MODE, n);  // rows not ok read nothing
        }
        // Row factor: rows not ok give 0 where m = -inf (every partial empty), NaN otherwise (NaN / +inf
        // lse); ok rows the sink factor (IEEE: sink +inf -> 0, -inf -> 1, NaN -> NaN), or 1.
        longattn_compat::CompareScalar(mask0_, m_, kNegInf, CMPMODE::EQ, n);
        Duplicate(f_, 0.0f, n);
        Select(f_, mask0_, f_, kNaN, SELMODE::VSEL_TENSOR_SCALAR_MODE, n);
        if (t_.hasSink) {
            Sub(total_, in[S * B], lseM_, n);
            Exp(total_, total_, n);
            Adds(total_, total_, 1.0f, n);
            Duplicate(mStar_, 1.0f, n);
            Div(mStar_, mStar_, total_, n);
        } else {
            Duplicate(mStar_, 1.0f, n);
        }
        Select(f_, mask1_, mStar_, f_, SELMODE::VSEL_TENSOR_TENSOR_MODE, n);
        lo = lseOutQue_.DeQue<float>();
        DataCopyPad(lseOutGm_[b0], lo, DataCopyExtParams(1, nb * 4, 0, 0, 0));
        lseOutQue_.FreeTensor(lo);
        return in;
    }

    // Rows [i0, i0 + n) of the batch (output rows row0 + i; partial s of row i at partial row
    // prow0 + s * H + i), columns [d0, d0 + len). Every tile has the row pitch align16(len).
    __aicore__ inline void MergeChunk(const LocalTensor<float>& w, uint64_t prow0, uint32_t row0, uint32_t i0,
                                      uint32_t n, uint32_t d0, uint32_t len)
    {
        const uint32_t S = t_.numPartials, B = t_.batchRows, H = t_.numHeads, D = t_.headDim;
        const uint32_t pitch = AlignUpU(len, 16u), count = n * pitch;
        bool first = true;
        for (uint32_t s = 0; s < S; ++s) {
            const LocalTensor<float> ws = w[s * B];
            if (!CoefReads(ws, i0) && CoefRunEnd(ws, i0, 0, n) == n) continue;  // no row reads partial s
            LocalTensor<float> x = inQue_.AllocTensor<float>();
            LoadRows(x, ws, prow0 + static_cast<uint64_t>(s) * H, i0, n, d0, len, pitch);
            inQue_.EnQue(x);
            x = inQue_.DeQue<float>();
            ZeroUnread(x, ws, i0, n, pitch);
            if (first) {
                ScaleRows(acc_, x, ws, bc_, i0, n, len, pitch);
            } else {
                ScaleRows(x, x, ws, bc_, i0, n, len, pitch);
                Add(acc_, acc_, x, static_cast<int32_t>(count));
            }
            inQue_.FreeTensor(x);
            first = false;
        }
        if (first) Duplicate(acc_, 0.0f, static_cast<int32_t>(count));  // nothing read: 0 (times f: 0 or NaN)
        LocalTensor<T> y = outQue_.AllocTensor<T>();
        if constexpr (kF32) {
            ScaleRows(y, acc_, f_, bc_, i0, n, len, pitch);
        } else {
            ScaleRows(acc_, acc_, f_, bc_, i0, n, len, pitch);
            Cast(y, acc_, RoundMode::CAST_RINT, count);
        }
        outQue_.EnQue(y);
        y = outQue_.DeQue<T>();
        const uint32_t rowBytes = AlignUpU(len * sizeof(T), 32u);
        DataCopyPad(resGm_[static_cast<uint64_t>(row0) * D + d0], y,
                    DataCopyExtParams(static_cast<uint16_t>(n), len * sizeof(T), (pitch * sizeof(T) - rowBytes) / 32u,
                                      (D - len) * sizeof(T), 0));
        outQue_.FreeTensor(y);
    }

    // The runs of rows whose coefficient is > 0, one DataCopyPad each (UB rows of `pitch` floats).
    __aicore__ inline void LoadRows(const LocalTensor<float>& x, const LocalTensor<float>& w, uint64_t prow0,
                                    uint32_t i0, uint32_t n, uint32_t d0, uint32_t len, uint32_t pitch)
    {
        const uint32_t D = t_.headDim, gap = (pitch - AlignUpU(len, 8u)) / 8u;  // 32-B blocks after a row
        for (uint32_t i = 0; i < n;) {
            const uint32_t e = CoefRunEnd(w, i0, i, n);
            if (CoefReads(w, i0 + i)) {
                DataCopyPad(x[i * pitch], partGm_[(prow0 + i) * D + d0],
                            DataCopyExtParams(static_cast<uint16_t>(e - i), len * 4, (D - len) * 4, gap, 0),
                            DataCopyPadExtParams<float>(false, 0, 0, 0.0f));
            }
            i = e;
        }
    }

    TPipe pipe_;
    TQue<TPosition::VECIN, 1> lseInQue_;
    TQue<TPosition::VECOUT, 1> lseOutQue_;
    TQue<TPosition::VECIN, 2> inQue_;
    TQue<TPosition::VECOUT, 2> outQue_;
    TBuf<TPosition::VECCALC> vecBuf_, maskBuf_, brcbBuf_, accBuf_;
    LocalTensor<float> m_, mStar_, total_, lseM_, f_, bc_, acc_;
    LocalTensor<uint8_t> mask0_, mask1_;
    GlobalTensor<float> partGm_, partLseGm_, sinkGm_, lseOutGm_;
    GlobalTensor<T> resGm_;
    MergePartialsTiling t_{};
    uint32_t r0_ = 0, r1_ = 0;
};

template <typename T>
__aicore__ inline void RunMergePartials(GM_ADDR partOut, GM_ADDR partLse, GM_ADDR sinks, GM_ADDR out, GM_ADDR lse,
                                        const MergePartialsTiling& t)
{
    MergePartialsKernel<T> op;
    op.Init(partOut, partLse, sinks, out, lse, t);
    op.Process();
}

}  // namespace longattn_ascend

// outA, outB, out: [R, D] (dtype code in the tiling); lseA, lseB, lse: [R] fp32; tiling: CombineTiling.
extern "C" __global__ __aicore__ void merge_attention_states(GM_ADDR outA, GM_ADDR lseA, GM_ADDR outB, GM_ADDR lseB,
                                                             GM_ADDR out, GM_ADDR lse, GM_ADDR workspace,
                                                             GM_ADDR tiling)
{
    (void)workspace;
    KERNEL_TASK_TYPE_DEFAULT(KERNEL_TYPE_AIV_ONLY);
    const auto t = longattn_compat::ReadTiling<longattn_ascend::CombineTiling>(tiling);
    if (t.dtype == longattn_ascend::kDtF32) longattn_ascend::RunMerge<float>(outA, lseA, outB, lseB, out, lse, t);
    if (t.dtype == longattn_ascend::kDtBF16) longattn_ascend::RunMerge<bfloat16_t>(outA, lseA, outB, lseB, out, lse, t);
    if (t.dtype == longattn_ascend::kDtF16) longattn_ascend::RunMerge<half>(outA, lseA, outB, lseB, out, lse, t);
}

// out, result: [R, D]; lse: [R] fp32; sinkTable: [H + batchRows] fp32 (sink[j mod H]); tiling: CombineTiling.
extern "C" __global__ __aicore__ void apply_attention_sink(GM_ADDR out, GM_ADDR lse, GM_ADDR sinkTable, GM_ADDR result,
                                                           GM_ADDR workspace, GM_ADDR tiling)
{
    (void)workspace;
    KERNEL_TASK_TYPE_DEFAULT(KERNEL_TYPE_AIV_ONLY);
    const auto t = longattn_compat::ReadTiling<longattn_ascend::CombineTiling>(tiling);
    if (t.dtype == longattn_ascend::kDtF32) longattn_ascend::RunSink<float>(out, lse, sinkTable, result, t);
    if (t.dtype == longattn_ascend::kDtBF16) longattn_ascend::RunSink<bfloat16_t>(out, lse, sinkTable, result, t);
    if (t.dtype == longattn_ascend::kDtF16) longattn_ascend::RunSink<half>(out, lse, sinkTable, result, t);
}

// partOut: [T, S, H, D] fp32; partLse: [T, S, H] fp32; sinks: [H] fp32 (read when the tiling's hasSink);
// out: [T, H, D] (dtype code in the tiling); lse: [T, H] fp32; tiling: MergePartialsTiling.
extern "C" __global__ __aicore__ void merge_partial_states(GM_ADDR partOut, GM_ADDR partLse, GM_ADDR sinks, GM_ADDR out,
                                                           GM_ADDR lse, GM_ADDR workspace, GM_ADDR tiling)
{
    (void)workspace;
    KERNEL_TASK_TYPE_DEFAULT(KERNEL_TYPE_AIV_ONLY);
    const auto t = longattn_compat::ReadTiling<longattn_ascend::MergePartialsTiling>(tiling);
    if (t.dtype == longattn_ascend::kDtF32)
        longattn_ascend::RunMergePartials<float>(partOut, partLse, sinks, out, lse, t);
    if (t.dtype == longattn_ascend::kDtBF16)
        longattn_ascend::RunMergePartials<bfloat16_t>(partOut, partLse, sinks, out, lse, t);
    if (t.dtype == longattn_ascend::kDtF16)
        longattn_ascend::RunMergePartials<half>(partOut, partLse, sinks, out, lse, t);
}
