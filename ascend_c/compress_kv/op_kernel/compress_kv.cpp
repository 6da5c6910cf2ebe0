// SPDX-License-Identifier: Apache-2.0
// compress_kv: the stateful, paged KV compressor of DeepSeek-V4 (vector cores only,
// KERNEL_TYPE_MIX_AIV_1_0 for SyncAll). Two phases, separated by SyncAll (the ring is read before
// it is updated, by every core):
//
// Positions are int64 absolute positions (any value). A token at a negative position emits nothing
// (its entry j = floor(p / ratio) < 0 has no page) and contributes to no entry (pooled positions < 0
// are absent); it still goes to its ring slot floor_mod(p, S) when it is among the last S positions
// of its chunk, exactly as the reference (python/longattn/ops/compress/reference.py) and the Triton
// kernel do.
//
// Phase 1, per emitted entry (token p >= 0 with (p + 1) % ratio == 0, entry j = p / ratio),
// round-robin over the AIV cores:
//   for each of the S = c * ratio pooled positions q = p - S + 1 + i (q >= 0):
//     CopyIn  (MTE2)  its a/b channel half (overlap: half A for the previous block, half B for the
//                     own block) from the batch rows (q >= chunk start) or from the fp32 state ring
//                     (slot q % S through state_block_table; pages outside the pool are skipped)
//     Compute (V)     per-channel online softmax: m' = max(m, b), m* = max(m', -FLT_MAX);
//                     s = s e^(m-m*) + e^(b-m*); acc = acc e^(m-m*) + e^(b-m*) a
//                     (the next position's CopyIn is issued first)
//   entry = acc / s (0 where s == 0), RMSNorm (ReduceSum, fp32), interleaved RoPE on the last R dims
//   (cos/sin of j * ratio from the host table; pair swap by Gather), then
//   CopyOut (MTE3)   cast to the pool dtype, or FP8 quantisation (fp8_quant.h), to the slot
//                     out_block_table[row, j / page] * page + j % page (skipped if the page is invalid).
// Phase 2, per token (round-robin): if the token is among the last S positions of its chunk, its
// a | b row (cast to fp32) goes to ring slot floor_mod(p, S).
//
// Gate scores follow IEEE softmax per channel (the package rule): a channel whose present positions
// all score -inf (or that has none) pools to 0; otherwise sum(e^(b-m) a) / sum(e^(b-m)) with m the
// max score, so a NaN or +inf score of a present position makes the channel NaN (e^(NaN), or
// e^(inf - inf)) and a NaN value propagates (0 * NaN) even where its weight is 0. Absent positions
// are never read. m* only differs from m' while every score so far is -inf: then e^(m - m*) and
// e^(b - m*) are 0 instead of e^(-inf + inf) = NaN, s stays exactly 0, and that is how "no finite
// score" is recognised at the end (s == 0; a NaN / +inf score makes s NaN, never 0). Nothing here
// depends on how the hardware's Max orders a NaN: the NaN reaches s through e^(b - m*) either way.
// The update and the result are common/softmax_pool.h (shared with compress_pool), one position at a time.
#include "../../common/ascendc_compat.h"
#include "../../common/fp8_quant.h"
#include "../../common/softmax_pool.h"
#include "../op_host/compress_kv_tiling.h"

using namespace AscendC;

namespace longattn_ascend {

// The kernel's GM arguments, kept as __gm__ pointers (GM_ADDR): a generic pointer (the host-side
// CompressKvArgs' const void*) would drop the address space on the device compiler.
// (GM_ADDR is a macro for `__gm__ uint8_t*`: one member per declaration.)
struct CompressKvGm {
    GM_ADDR a;
    GM_ADDR b;
    GM_ADDR positions;
    GM_ADDR tokenRows;
    GM_ADDR chunkStart;
    GM_ADDR chunkEnd;
    GM_ADDR emitTokens;
    GM_ADDR cosTab;
    GM_ADDR sinTab;
    GM_ADDR normWeight;
    GM_ADDR state;
    GM_ADDR stateBt;
    GM_ADDR out;
    GM_ADDR outBt;
};

template <typename TIn, typename TOut, bool kFp8>
class CompressKvKernel {
public:
    __aicore__ inline void Init(const CompressKvGm& a, const CompressKvTiling& t)
    {
        t_ = t;
        core_ = static_cast<uint32_t>(GetBlockIdx());
        const uint32_t T = t.numTokens, W = t.width, d = t.dim, R = t.ropeDim;
        dPad_ = AlignUpU(d, 16);
        dV_ = AlignUpU(d, 64);  // vector stride: whole 256-B Compare repeats
        aGm_.SetGlobalBuffer((__gm__ TIn*)a.a, static_cast<uint64_t>(T) * W);
        bGm_.SetGlobalBuffer((__gm__ TIn*)a.b, static_cast<uint64_t>(T) * W);
        posGm_.SetGlobalBuffer((__gm__ int64_t*)a.positions, T);
        rowGm_.SetGlobalBuffer((__gm__ int32_t*)a.tokenRows, T);
        csGm_.SetGlobalBuffer((__gm__ int64_t*)a.chunkStart, T);
        ceGm_.SetGlobalBuffer((__gm__ int64_t*)a.chunkEnd, T);
        emitGm_.SetGlobalBuffer((__gm__ int32_t*)a.emitTokens, MaxU(t.numEmit, 1));
        cosGm_.SetGlobalBuffer((__gm__ float*)a.cosTab, static_cast<uint64_t>(T) * (R / 2));
        sinGm_.SetGlobalBuffer((__gm__ float*)a.sinTab, static_cast<uint64_t>(T) * (R / 2));
        normGm_.SetGlobalBuffer((__gm__ float*)a.normWeight, d);
        stateGm_.SetGlobalBuffer((__gm__ float*)a.state, static_cast<uint64_t>(t.statePages) * t.statePageSize * 2 * W);
        stateBtGm_.SetGlobalBuffer((__gm__ int32_t*)a.stateBt, static_cast<uint64_t>(t.stateBtRows) * t.stateBtCols);
        outBtGm_.SetGlobalBuffer((__gm__ int32_t*)a.outBt, static_cast<uint64_t>(t.outBtRows) * t.outBtCols);
        if constexpr (kFp8)
            outFp8Gm_.SetGlobalBuffer((__gm__ uint8_t*)a.out, static_cast<uint64_t>(t.outPages) * t.outPageBytes);
        else
            outGm_.SetGlobalBuffer((__gm__ TOut*)a.out, static_cast<uint64_t>(t.outPages) * t.outPageSize * d);

        const uint32_t wPad = AlignUpU(W, 16);
        pipe_.InitBuffer(inQue_, 2, 2 * dPad_ * sizeof(TIn));      // a | b halves from the batch
        pipe_.InitBuffer(ringQue_, 2, 2 * dPad_ * sizeof(float));  // a | b halves from the ring
        pipe_.InitBuffer(vecBuf_, 8 * dV_ * sizeof(float));
        pipe_.InitBuffer(maskBuf_, AlignUpU(dV_ / 8, 32));
        pipe_.InitBuffer(normBuf_, dPad_ * sizeof(float));
        pipe_.InitBuffer(redBuf_, 128 * sizeof(float));
        pipe_.InitBuffer(ropeQue_, 1, 2 * AlignUpU(MaxU(R / 2, 1), 8) * sizeof(float));
        pipe_.InitBuffer(ropeBuf_, 5 * AlignUpU(MaxU(R, 8), 8) * sizeof(float));
        pipe_.InitBuffer(rowInQue_, 1, 2 * wPad * sizeof(TIn));      // phase 2
        pipe_.InitBuffer(rowOutQue_, 1, 2 * W * sizeof(float));
        if constexpr (kFp8) {
            pipe_.InitBuffer(outQue_, 2, Fp8Quantizer::kRecordUbBytes);
            quant_.Init(pipe_);
        } else {
            pipe_.InitBuffer(outQue_, 2, dPad_ * sizeof(TOut));
        }
        LocalTensor<float> v = vecBuf_.Get<float>();
        m_ = v[0];
        s_ = v[dV_];
        acc_ = v[2 * dV_];
        av_ = v[3 * dV_];
        bv_ = v[4 * dV_];
        w_ = v[5 * dV_];
        tmp_ = v[6 * dV_];
        entry_ = v[7 * dV_];
        mask_ = maskBuf_.Get<uint8_t>();
        pool_.Bind(m_, w_, entry_, tmp_, s_, acc_, mask_);  // entry_ holds m* until the pooling ends
        const uint32_t rs = AlignUpU(MaxU(R, 8), 8);
        LocalTensor<float> r = ropeBuf_.Get<float>();
        cosE_ = r[0];
        sinE_ = r[rs];
        sign_ = r[2 * rs];
        swapOff_ = r[3 * rs].ReinterpretCast<uint32_t>();
        expandOff_ = r[4 * rs].ReinterpretCast<uint32_t>();
        for (uint32_t i = 0; i < R; ++i) {  // scalar set-up of the pair tables
            swapOff_.SetValue(i, (i % 2 == 0 ? i + 1 : i - 1) * 4u);
            expandOff_.SetValue(i, (i / 2) * 4u);
            sign_.SetValue(i, i % 2 == 0 ? -1.0f : 1.0f);
        }
        LocalTensor<float> nw = normBuf_.Get<float>();
        DataCopyPad(nw, normGm_, DataCopyExtParams(1, d * 4, 0, 0, 0), DataCopyPadExtParams<float>(false, 0, 0, 0.0f));
        longattn_compat::PipeWait<HardEvent::MTE2_V>(pipe_);
    }

    __aicore__ inline void Process()
    {
        // emitTokens: the emitting tokens first, then -1 (the host compacts it on the device without
        // knowing the count; numEmit is its length, an upper bound).
        for (uint32_t e = core_; e < t_.numEmit; e += t_.blockDim) {
            const int32_t tok = emitGm_.GetValue(e);
            if (tok < 0) break;
            EmitEntry(static_cast<uint32_t>(tok));
        }
        PipeBarrier<PIPE_ALL>();
        SyncAll<true>();  // every ring read of phase 1 (all cores) precedes every ring write
        for (uint32_t tk = core_; tk < t_.numTokens; tk += t_.blockDim) UpdateState(tk);
    }

private:
    struct Source {
        bool fromBatch;
        uint64_t aOff, bOff;  // element offsets into a/b (batch) or into the state rows (ring)
    };

    // Where pooled position i (0..S-1) of an entry emitted at token tok (position p >= 0) comes from;
    // false if absent.
    __aicore__ inline bool FindSource(uint32_t tok, int64_t p, int32_t row, int64_t chunkStart, uint32_t i, Source& src)
    {
        const int64_t S = static_cast<int64_t>(t_.ringSize);
        const int64_t q = p - S + 1 + static_cast<int64_t>(i);  // no overflow: 0 <= p, i < S
        if (q < 0) return false;
        const uint32_t half = (t_.overlap && i >= t_.ratio) ? t_.dim : 0u;  // overlap: own block -> half B
        if (q >= chunkStart) {
            // Token tok - (p - q) of this batch. Positions that do not step by one inside a chunk break
            // the op's contract; the kernel still never reads outside `a` / `b` (such a position is
            // treated as absent).
            const uint64_t back = static_cast<uint64_t>(p - q);  // < S
            if (back > tok) return false;
            const uint64_t bt = tok - back;
            src.fromBatch = true;
            src.aOff = bt * t_.width + half;
            src.bOff = src.aOff;
            return true;
        }
        if (row < 0 || static_cast<uint32_t>(row) >= t_.stateBtRows) return false;
        const uint32_t rs = static_cast<uint32_t>(q % S), lp = rs / t_.statePageSize;  // q >= 0
        if (lp >= t_.stateBtCols) return false;
        const int32_t page = stateBtGm_.GetValue(static_cast<uint64_t>(row) * t_.stateBtCols + lp);
        if (page < 0 || static_cast<uint32_t>(page) >= t_.statePages) return false;
        const uint64_t srow = static_cast<uint64_t>(page) * t_.statePageSize + rs % t_.statePageSize;
        src.fromBatch = false;
        src.aOff = srow * 2 * t_.width + half;
        src.bOff = src.aOff + t_.width;
        return true;
    }

    __aicore__ inline void CopyIn(const Source& src)
    {
        const uint32_t d = t_.dim;
        if (src.fromBatch) {
            LocalTensor<TIn> x = inQue_.AllocTensor<TIn>();
            const DataCopyExtParams p(1, d * sizeof(TIn), 0, 0, 0);
            DataCopyPad(x, aGm_[src.aOff], p, DataCopyPadExtParams<TIn>(false, 0, 0, TIn(0)));
            DataCopyPad(x[dPad_], bGm_[src.bOff], p, DataCopyPadExtParams<TIn>(false, 0, 0, TIn(0)));
            inQue_.EnQue(x);
        } else {
            LocalTensor<float> x = ringQue_.AllocTensor<float>();
            const DataCopyExtParams p(1, d * 4, 0, 0, 0);
            DataCopyPad(x, stateGm_[src.aOff], p, DataCopyPadExtParams<float>(false, 0, 0, 0.0f));
            DataCopyPad(x[dPad_], stateGm_[src.bOff], p, DataCopyPadExtParams<float>(false, 0, 0, 0.0f));
            ringQue_.EnQue(x);
        }
    }

    // One pooled position: a -> av_, b -> bv_ (fp32), then the online softmax update.
    __aicore__ inline void Accumulate(bool fromBatch)
    {
        const uint32_t d = t_.dim;
        if (fromBatch) {
            LocalTensor<TIn> x = inQue_.DeQue<TIn>();
            if constexpr (sizeof(TIn) == 4) {  // d % 8 == 0: whole 32-B blocks
                DataCopy(av_, x.template ReinterpretCast<float>(), d);
                DataCopy(bv_, x[dPad_].template ReinterpretCast<float>(), d);
            } else {
                Cast(av_, x, RoundMode::CAST_NONE, d);
                Cast(bv_, x[dPad_], RoundMode::CAST_NONE, d);
            }
            inQue_.FreeTensor(x);
        } else {
            LocalTensor<float> x = ringQue_.DeQue<float>();
            DataCopy(av_, x, d);
            DataCopy(bv_, x[dPad_], d);
            ringQue_.FreeTensor(x);
        }
        pool_.Accumulate(av_, bv_, 1, dPad_, d);  // the online softmax update (common/softmax_pool.h)
    }

    __aicore__ inline void EmitEntry(uint32_t tok)
    {
        const uint32_t d = t_.dim, S = t_.ringSize;
        const int64_t p = posGm_.GetValue(tok), cs = csGm_.GetValue(tok);
        const int32_t row = rowGm_.GetValue(tok);
        if (p < 0) return;  // entry floor(p / ratio) < 0: not in any page (nothing read or written)
        pool_.Reset(d, dV_);
        // Pooling with a one-position prefetch: CopyIn(next) is issued before Compute(current).
        Source cur{}, nxt{};
        uint32_t i = 0, count = 0;
        bool have = false;
        for (; i < S && !have; ++i) have = FindSource(tok, p, row, cs, i, cur);
        if (have) CopyIn(cur);
        while (have) {
            bool more = false;
            for (; i < S && !more; ++i) more = FindSource(tok, p, row, cs, i, nxt);
            if (more) CopyIn(nxt);
            Accumulate(cur.fromBatch);
            ++count;
            cur = nxt;
            have = more;
        }
        if (count == 0) {
            Duplicate(entry_, 0.0f, d);
        } else {  // channels whose present scores are all -inf (s == 0) pool to 0; NaN stays NaN
            pool_.Result(entry_, d, dV_);
        }
        Normalize();
        if (t_.ropeDim > 0) Rope(tok);
        Store(static_cast<uint64_t>(p) / t_.ratio, row);
    }

    // entry = entry * rsqrt(mean(entry^2) + eps) * weight (fp32).
    __aicore__ inline void Normalize()
    {
        const uint32_t d = t_.dim;
        LocalTensor<float> red = redBuf_.Get<float>();
        LocalTensor<float> sum = red[0], one = red[8], work = red[16];
        Mul(tmp_, entry_, entry_, d);
        ReduceSum(sum, tmp_, work, d);
        Muls(sum, sum, 1.0f / static_cast<float>(d), 8);
        Adds(sum, sum, t_.eps, 8);
        Sqrt(sum, sum, 8);
        Duplicate(one, 1.0f, 8);
        Div(sum, one, sum, 8);
        const float rstd = sum.GetValue(0);
        Muls(entry_, entry_, rstd, d);
        Mul(entry_, entry_, normBuf_.Get<float>(), d);
    }

    // Interleaved RoPE on the last R dims: out = x * cos' + swap(x) * sin', cos' = (c0, c0, c1, c1, ..),
    // sin' = (-s0, s0, -s1, s1, ..), swap(x) = (x1, x0, x3, x2, ..).
    __aicore__ inline void Rope(uint32_t tok)
    {
        const uint32_t d = t_.dim, R = t_.ropeDim, half = R / 2, hp = AlignUpU(half, 8);
        LocalTensor<float> cs = ropeQue_.AllocTensor<float>();
        const DataCopyExtParams p(1, half * 4, 0, 0, 0);
        DataCopyPad(cs, cosGm_[static_cast<uint64_t>(tok) * half], p, DataCopyPadExtParams<float>(false, 0, 0, 0.0f));
        DataCopyPad(cs[hp], sinGm_[static_cast<uint64_t>(tok) * half], p,
                    DataCopyPadExtParams<float>(false, 0, 0, 0.0f));
        ropeQue_.EnQue(cs);
        cs = ropeQue_.DeQue<float>();
        Gather(cosE_, cs, expandOff_, 0, R);
        Gather(sinE_, cs, expandOff_, hp * 4, R);
        ropeQue_.FreeTensor(cs);
        Mul(sinE_, sinE_, sign_, R);
        LocalTensor<float> x = entry_[d - R];
        Gather(tmp_, x, swapOff_, 0, R);
        Mul(tmp_, tmp_, sinE_, R);
        Mul(w_, x, cosE_, R);
        Add(x, w_, tmp_, R);
    }

    __aicore__ inline void Store(uint64_t j, int32_t row)
    {
        const uint32_t d = t_.dim, ps = t_.outPageSize;
        if (row < 0 || static_cast<uint32_t>(row) >= t_.outBtRows) return;
        const uint64_t lp = j / ps;
        if (lp >= t_.outBtCols) return;
        const int32_t page = outBtGm_.GetValue(static_cast<uint64_t>(row) * t_.outBtCols + lp);
        if (page < 0 || static_cast<uint32_t>(page) >= t_.outPages) return;
        const uint64_t slot = static_cast<uint64_t>(page) * ps + j % ps;
        if constexpr (kFp8) {
            LocalTensor<uint8_t> rec = outQue_.AllocTensor<uint8_t>();
            quant_.Quantize(rec, entry_);
            outQue_.EnQue(rec);
            rec = outQue_.DeQue<uint8_t>();
            quant_.Store(outFp8Gm_, rec, slot, ps, t_.outPageBytes);
            outQue_.FreeTensor(rec);
        } else {
            LocalTensor<TOut> y = outQue_.AllocTensor<TOut>();
            if constexpr (sizeof(TOut) == 4)
                DataCopy(y.template ReinterpretCast<float>(), entry_, d);
            else
                Cast(y, entry_, RoundMode::CAST_RINT, d);
            outQue_.EnQue(y);
            y = outQue_.DeQue<TOut>();
            DataCopyPad(outGm_[slot * d], y, DataCopyExtParams(1, d * sizeof(TOut), 0, 0, 0));
            outQue_.FreeTensor(y);
        }
    }

    // Phase 2: the last S positions of every chunk go to the ring (a | b as fp32).
    __aicore__ inline void UpdateState(uint32_t tk)
    {
        const uint32_t W = t_.width, S = t_.ringSize, wPad = AlignUpU(W, 16);
        const int64_t p = posGm_.GetValue(tk), ce = ceGm_.GetValue(tk), S64 = static_cast<int64_t>(S);
        const int32_t row = rowGm_.GetValue(tk);
        // Among the last S positions of the chunk: p > ce - S (exact: ce - S may not underflow).
        if (ce >= INT64_MIN + S64 && p <= ce - S64) return;
        if (row < 0 || static_cast<uint32_t>(row) >= t_.stateBtRows) return;
        const int64_t r = p % S64;  // floor mod, as torch's (negative positions too)
        const uint32_t rs = static_cast<uint32_t>(r < 0 ? r + S64 : r), lp = rs / t_.statePageSize;
        if (lp >= t_.stateBtCols) return;
        const int32_t page = stateBtGm_.GetValue(static_cast<uint64_t>(row) * t_.stateBtCols + lp);
        if (page < 0 || static_cast<uint32_t>(page) >= t_.statePages) return;
        const uint64_t srow = static_cast<uint64_t>(page) * t_.statePageSize + rs % t_.statePageSize;
        LocalTensor<TIn> x = rowInQue_.AllocTensor<TIn>();
        const DataCopyExtParams pin(1, W * sizeof(TIn), 0, 0, 0);
        DataCopyPad(x, aGm_[static_cast<uint64_t>(tk) * W], pin, DataCopyPadExtParams<TIn>(false, 0, 0, TIn(0)));
        DataCopyPad(x[wPad], bGm_[static_cast<uint64_t>(tk) * W], pin, DataCopyPadExtParams<TIn>(false, 0, 0, TIn(0)));
        rowInQue_.EnQue(x);
        x = rowInQue_.DeQue<TIn>();
        LocalTensor<float> y = rowOutQue_.AllocTensor<float>();
        if constexpr (sizeof(TIn) == 4) {
            DataCopy(y, x.template ReinterpretCast<float>(), W);
            DataCopy(y[W], x[wPad].template ReinterpretCast<float>(), W);
        } else {
            Cast(y, x, RoundMode::CAST_NONE, W);
            Cast(y[W], x[wPad], RoundMode::CAST_NONE, W);
        }
        rowOutQue_.EnQue(y);
        rowInQue_.FreeTensor(x);
        y = rowOutQue_.DeQue<float>();
        DataCopyPad(stateGm_[srow * 2 * W], y, DataCopyExtParams(1, 2 * W * 4, 0, 0, 0));
        rowOutQue_.FreeTensor(y);
    }

    TPipe pipe_;
    TQue<TPosition::VECIN, 2> inQue_, ringQue_;
    TQue<TPosition::VECIN, 1> ropeQue_, rowInQue_;
    TQue<TPosition::VECOUT, 2> outQue_;
    TQue<TPosition::VECOUT, 1> rowOutQue_;
    TBuf<TPosition::VECCALC> vecBuf_, normBuf_, redBuf_, ropeBuf_, maskBuf_;
    LocalTensor<float> m_, s_, acc_, av_, bv_, w_, tmp_, entry_, cosE_, sinE_, sign_;
    LocalTensor<uint8_t> mask_;
    LocalTensor<uint32_t> swapOff_, expandOff_;
    Fp8Quantizer quant_;
    SoftmaxPool pool_;
    GlobalTensor<TIn> aGm_, bGm_;
    GlobalTensor<int64_t> posGm_, csGm_, ceGm_;
    GlobalTensor<int32_t> rowGm_, emitGm_, stateBtGm_, outBtGm_;
    GlobalTensor<float> cosGm_, sinGm_, normGm_, stateGm_;
    GlobalTensor<TOut> outGm_;
    GlobalTensor<uint8_t> outFp8Gm_;
    CompressKvTiling t_{};
    uint32_t core_ = 0, dPad_ = 16, dV_ = 64;
};

template <typename TIn>
__aicore__ inline void RunCompressKv(const CompressKvGm& a, const CompressKvTiling& t)
{
    if (t.outDtype == kDtF32) {
        CompressKvKernel<TIn, float, false> op;
        op.Init(a, t);
        op.Process();
    } else if (t.outDtype == kDtBF16) {
        CompressKvKernel<TIn, bfloat16_t, false> op;
        op.Init(a, t);
        op.Process();
    } else if (t.outDtype == kDtF16) {
        CompressKvKernel<TIn, half, false> op;
        op.Init(a, t);
        op.Process();
    } else {
        CompressKvKernel<TIn, uint8_t, true> op;
        op.Init(a, t);
        op.Process();
    }
}

}  // namespace longattn_ascend

extern "C" __global__ __aicore__ void compress_kv(GM_ADDR a, GM_ADDR b, GM_ADDR positions, GM_ADDR tokenRows,
                                                  GM_ADDR chunkStart, GM_ADDR chunkEnd, GM_ADDR emitTokens,
                                                  GM_ADDR cosTab, GM_ADDR sinTab, GM_ADDR normWeight, GM_ADDR state,
                                                  GM_ADDR stateBt, GM_ADDR out, GM_ADDR outBt, GM_ADDR workspace,
                                                  GM_ADDR tiling)
{
    (void)workspace;
    KERNEL_TASK_TYPE_DEFAULT(KERNEL_TYPE_MIX_AIV_1_0);
    const auto t = longattn_compat::ReadTiling<longattn_ascend::CompressKvTiling>(tiling);
    const longattn_ascend::CompressKvGm args{a,      b,      positions,  tokenRows, chunkStart, chunkEnd, emitTokens,
                                             cosTab, sinTab, normWeight, state,     stateBt,    out,      outBt};
    if (t.inDtype == longattn_ascend::kDtF32) longattn_ascend::RunCompressKv<float>(args, t);
    if (t.inDtype == longattn_ascend::kDtBF16) longattn_ascend::RunCompressKv<bfloat16_t>(args, t);
    if (t.inDtype == longattn_ascend::kDtF16) longattn_ascend::RunCompressKv<half>(args, t);
}
