// SPDX-License-Identifier: Apache-2.0
// sparse_attention, vector side (the two AIVs of an AI core).
// Per block of NB = blockKeys (64 / 128 / 256) valid keys:
//   V0  gather: each AIV takes NB / 2 of the block's key rows (invalid indices are skipped by the cursor
//       and never dereferenced), in tiles of gatherRows rows, each tile split into runs of rows of
//       one stream: rows of the compute dtype by one DataCopyPad per run of consecutive slots, straight
//       into the tile; 16-bit rows for an fp32 computation through a VECIN chunk (one DataCopyPad per
//       run of consecutive slots inside the chunk) and a Cast; FP8 records (3 DataCopyPads per run of
//       consecutive slots inside the chunk and one page: nope bytes, rope bytes, scale bytes) through the
//       dequantiser (../../common/fp8_dequant.h), exact fp32 rows, Cast to bf16 for a bf16 computation.
//       The tile goes to wsKv area seq % 2 (fp32: also V^T to wsVt via an in-UB Gather transpose);
//       CrossCoreSetFlag KV. Shared gather (KeptRows): the token's first head group writes block b to
//       area b, its later groups gather nothing and only raise flag KV. The gather of block b+1 is issued
//       before the softmax of block b (prefetch).
//   V1  online softmax of its query-head rows of S [mh, NB] (FlashAttention-2): scale, padding keys
//       -> -inf, row max (NB > 64: repeat-form Max of the row's 64-float slices into one [mh, 64]
//       partial, then WholeReduceMax), m_new = max(m, rowmax), alpha = exp(m - m_new),
//       p = exp(s - m_new) (Brcb + repeat-form Sub per slice), l = l * alpha + rowsum (slices added
//       the same way, WholeReduceSum); P (cast to the input dtype) -> wsP[buf]; CrossCoreSetFlag P.
//   V2  acc = acc * alpha + P.V (repeat-form Mul with the Brcb'd alpha, then Add).
// End of a task: lse = m + ln(l), out = acc * g / l with g = 1 / (1 + exp(sink - lse)) (the sink is a
// zero-valued virtual key, excluded from lse), cast to the compute dtype, or (outF32: split-KV partial
// outputs) written as fp32 rows without a cast.
//
// Non-finite logits (the package rule): a NaN logit (NaN in q or in a used key) gives out NaN and lse
// NaN for that (token, head); a +inf logit gives lse +inf and out NaN; -inf logits weigh 0; a row whose
// used keys all have -inf logits gives out 0, lse -inf. How: exponents are taken against m* = m_new
// clamped to [-FLT_MAX, FLT_MAX] instead of m_new, so an all -inf row keeps p = alpha = 0 and l = 0
// (not e^(-inf + inf) = NaN), and a +inf logit gives p = e^(+inf) = +inf, l = +inf (not NaN) while
// finite logits then weigh 0; m* = m_new whenever m_new is finite, so finite rows are unchanged. A NaN
// logit always reaches l through e^(NaN - m*) = NaN (whatever the hardware's Max / WholeReduceMax do
// with a NaN), and l stays NaN through every later block (NaN * alpha + ...). At the end
// lse = m + ln(l) is -inf (m = -inf, l = 0), +inf (m = +inf, l = +inf) or NaN (l = NaN) as the rule
// says, and the output factor is forced to 0 where m = -inf and to NaN where m = +inf (a NaN l makes
// it NaN by itself). Key blocks are merged only through this online softmax (no split-KV combine).
#pragma once

#include "../../common/fp8_dequant.h"
#include "sparse_attention_common.h"

namespace longattn_ascend {
namespace sa {

template <typename T>
class SparseAttentionVector {
public:
    static constexpr uint32_t kVecLen = 64;  // per-row vectors (m, l, ...): >= the rows of one AIV (<= 32)
    static constexpr float kFltMax = 3.40282347e38f;

    __aicore__ inline void Init(GM_ADDR kv0, GM_ADDR kv1, GM_ADDR idx0, GM_ADDR len0, GM_ADDR idx1, GM_ADDR len1,
                                GM_ADDR sink, GM_ADDR out, GM_ADDR lse, GM_ADDR ws, const SparseAttentionTiling& t)
    {
        using namespace AscendC;
        t_ = t;
        sub_ = static_cast<uint32_t>(GetSubBlockIdx());
        core_ = static_cast<uint32_t>(GetBlockIdx() / GetSubBlockNum());  // AI core of this AIV
        cursor_.Init(idx0, len0, idx1, len1, t_);
        const uint32_t D = t.headDim, mg = t.headsPerTask, sz = sizeof(T), NB = t.blockKeys;
        nb_ = NB;
        InitPool(0, kv0, t.kvDtype0, t.numSlots0, t.pageSize0, t.pageBytes0);
        InitPool(1, kv1, t.kvDtype1, t.numSlots1, t.pageSize1, t.pageBytes1);
        const uint64_t outElems = static_cast<uint64_t>(t.numTokens) * t.numHeads * D;
        if (OutF32())
            outGmF_.SetGlobalBuffer((__gm__ float*)out, outElems);
        else
            outGm_.SetGlobalBuffer((__gm__ T*)out, outElems);
        lseGm_.SetGlobalBuffer((__gm__ float*)lse, static_cast<uint64_t>(t.numTokens) * t.numHeads);
        if (t.hasSink) sinkGm_.SetGlobalBuffer((__gm__ float*)sink, t.numHeads);
        __gm__ uint8_t* base = ws + static_cast<uint64_t>(core_) * t.wsPerCore;
        wsKv_.SetGlobalBuffer((__gm__ T*)(base + t.wsKvOff), t.kvAreas * NB * D);
        wsVt_.SetGlobalBuffer((__gm__ float*)(base + t.wsVtOff), sizeof(T) == 4 ? t.kvAreas * D * NB : 0);
        for (uint32_t b = 0; b < 2; ++b) {
            wsS_[b].SetGlobalBuffer((__gm__ float*)(base + t.wsSOff) + b * mg * NB, mg * NB);
            wsP_[b].SetGlobalBuffer((__gm__ T*)(base + t.wsPOff) + b * mg * NB, mg * NB);
            wsO_[b].SetGlobalBuffer((__gm__ float*)(base + t.wsOOff) + b * mg * D, mg * D);
        }
        const uint32_t mh = t.aivRowsMax, mh8 = AlignUpU(mh, 8), g = t.gatherRows, r = t.outRows;
        pipe_.InitBuffer(accBuf_, mh * D * 4);
        pipe_.InitBuffer(sQue_, 1, mh * NB * 4);
        pipe_.InitBuffer(pQue_, 1, mh * NB * sz);
        pipe_.InitBuffer(colBuf_, NB * 4);
        pipe_.InitBuffer(maskBuf_, AlignUpU(NB, 256) / 8);
        pipe_.InitBuffer(vecBuf_, 10 * kVecLen * 4);
        pipe_.InitBuffer(brcbBuf_, 3 * AlignUpU(mh8 * 8 * 4, 32));
        pipe_.InitBuffer(oQue_, 2, r * D * 4);
        pipe_.InitBuffer(outQue_, 2, r * D * (OutF32() ? 4u : sz));
        pipe_.InitBuffer(lseQue_, 1, mh8 * 4);
        pipe_.InitBuffer(sinkQue_, 1, mh8 * 4);
        pipe_.InitBuffer(gQue_, 2, g * D * sz);
        if constexpr (sizeof(T) == 4) {
            pipe_.InitBuffer(tQue_, 1, D * g * 4);
            pipe_.InitBuffer(offBuf_, D * g * 4);
            if (t.hasCvt) pipe_.InitBuffer(cvtQue_, 2, t.cvtRows * D * 2);
        }
        if (t.hasFp8) fp8_.Init(pipe_, t.cvtRows);
        acc_ = accBuf_.Get<float>();
        col_ = colBuf_.Get<float>();
        mask_ = maskBuf_.Get<uint8_t>();
        const uint32_t vs = kVecLen;  // 64 floats each: whole 256-B CompareScalar repeats in Finish
        LocalTensor<float> v = vecBuf_.Get<float>();
        Duplicate(v, 0.0f, 10 * vs);  // defined tails (the compares read whole repeats)
        m_ = v[0];
        mNew_ = v[vs];
        l_ = v[2 * vs];
        alpha_ = v[3 * vs];
        rowMax_ = v[4 * vs];
        rowSum_ = v[5 * vs];
        lse_ = v[6 * vs];
        sinkV_ = v[7 * vs];
        factor_ = v[8 * vs];
        tmp_ = v[9 * vs];
        const uint32_t bs = AlignUpU(mh8 * 8 * 4, 32) / 4;
        LocalTensor<float> bb = brcbBuf_.Get<float>();
        mB_ = bb[0];
        alphaB_ = bb[bs];
        factorB_ = bb[2 * bs];
        // Column index of one row of an S tile (padding keys are masked by comparing with nb).
        CreateVecIndex(col_, 0.0f, NB);
        if constexpr (sizeof(T) == 4) {
            // Transpose offsets (bytes) of a [g, D] gather tile -> [D, g]: element (d, r) <- (r, d).
            LocalTensor<uint32_t> off = offBuf_.Get<uint32_t>();
            for (uint32_t d = 0; d < D; ++d)
                for (uint32_t i = 0; i < g; ++i) off.SetValue(d * g + i, (i * D + d) * 4u);
        }
    }

    __aicore__ inline void Process()
    {
        uint32_t seq = 0;
        // Units: tasks, or (shareGroups) tokens whose head groups run back to back; a kept token (KeptRows)
        // is gathered by its first group only (block b -> area b), the later groups just raise flag KV.
        const uint32_t per = t_.shareGroups ? t_.headGroups : 1u, units = t_.numTasks / per;
        for (uint32_t u = core_; u < units; u += t_.blockDim) {
            uint32_t nv = 0;
            for (uint32_t j = 0; j < per; ++j) {
                const Task tk = MakeTask(u * per + j, t_);
                const uint32_t half = CeilDivU(tk.heads, 2);
                const uint32_t row0 = sub_ == 0 ? 0 : half, mh = sub_ == 0 ? half : tk.heads - half;
                if (j == 0) nv = cursor_.CountValid(tk.token);
                if (nv == 0) {
                    WriteEmpty(tk, row0, mh);
                    continue;
                }
                const bool kept = KeptRows(t_, nv), gather = !kept || j == 0;
                const uint32_t nBlk = CeilDivU(nv, nb_);
                StartTask(tk, row0, mh);
                if (gather) cursor_.Reset(tk.token);
                GatherBlock(seq, kept ? 0 : seq % 2, BlockKeys(0, nv), gather);
                for (uint32_t b = 0; b < nBlk; ++b, ++seq) {
                    if (b + 1 < nBlk) GatherBlock(seq + 1, kept ? b + 1 : (seq + 1) % 2, BlockKeys(b + 1, nv), gather);
                    Softmax(seq, BlockKeys(b, nv), row0, mh);
                    Rescale(seq, row0, mh);
                }
                Finish(tk, row0, mh);
            }
        }
    }

private:
    // Out as fp32 rows: the flag for a 16-bit computation (an fp32 one writes fp32 anyway).
    __aicore__ inline bool OutF32() const { return sizeof(T) == 2 && t_.outF32 != 0; }

    __aicore__ inline uint32_t BlockKeys(uint32_t b, uint32_t nv) const { return MinU(nb_, nv - b * nb_); }

    __aicore__ inline void StartTask(const Task& tk, uint32_t row0, uint32_t mh)
    {
        using namespace AscendC;
        if (mh == 0) return;
        Duplicate(m_, kNegInf, mh);
        Duplicate(l_, 0.0f, mh);
        Duplicate(acc_, 0.0f, mh * t_.headDim);
        if (t_.hasSink) {  // sink logits of this AIV's heads (MTE2 -> V)
            LocalTensor<float> in = sinkQue_.AllocTensor<float>();
            DataCopyPad(in, sinkGm_[tk.head0 + row0], DataCopyExtParams(1, mh * 4, 0, 0, 0),
                        DataCopyPadExtParams<float>(false, 0, 0, 0.0f));
            sinkQue_.EnQue(in);
            in = sinkQue_.DeQue<float>();
            Adds(sinkV_, in, 0.0f, mh);
            sinkQue_.FreeTensor(in);
        }
    }

    // Stream s's pool: rows of the compute dtype (kvGm_), or bytes (16-bit rows to widen, FP8 pages).
    __aicore__ inline void InitPool(uint32_t s, GM_ADDR kv, uint32_t kind, uint32_t numSlots, uint32_t pageSize,
                                    uint32_t pageBytes)
    {
        const uint64_t D = t_.headDim;
        kind_[s] = kind;
        if (kind == t_.dtype) {
            kvGm_[s].SetGlobalBuffer((__gm__ T*)kv, numSlots * D);
        } else if (kind == kDtFP8Record) {
            poolGm_[s].SetGlobalBuffer((__gm__ uint8_t*)kv, static_cast<uint64_t>(numSlots / pageSize) * pageBytes);
            pageSize_[s] = pageSize;
            pageBytes_[s] = pageBytes;
        } else {
            poolGm_[s].SetGlobalBuffer((__gm__ uint8_t*)kv, numSlots * D * DtSize(kind));
        }
    }

    // V0: rows [NB/2 * sub, NB/2 * sub + NB/2) of the next nb valid keys -> wsKv area `area` (+ wsVt area
    // for fp32); then flag KV of block `seq`. gather = false (rows kept by the token's first head group):
    // the flag only.
    __aicore__ inline void GatherBlock(uint32_t seq, uint32_t area, uint32_t nb, bool gather)
    {
        using namespace AscendC;
        const uint32_t buf = seq % 2, D = t_.headDim, g = t_.gatherRows, NB = nb_, HALF_NB = NB / 2;
        if (!gather) {
            CrossCoreSetFlag<2, PIPE_MTE3>(static_cast<uint16_t>(kFlagKv + buf));
            return;
        }
        const GlobalTensor<T> wsKv = wsKv_[static_cast<uint64_t>(area) * NB * D];
        const GlobalTensor<float> wsVt = wsVt_[sizeof(T) == 4 ? static_cast<uint64_t>(area) * D * NB : 0];
        const uint32_t lo = MinU(nb, sub_ * HALF_NB), hi = MinU(nb, lo + HALF_NB);
        const bool converts = t_.hasCvt || t_.hasFp8;  // the vector unit may write gather tiles
        uint32_t stream = 0, slot = 0;
        for (uint32_t i = 0; i < lo; ++i) cursor_.Next(stream, slot);  // the other AIV's rows
        for (uint32_t r0 = lo; r0 < hi; r0 += g) {
            const uint32_t rows = MinU(g, hi - r0);
            LocalTensor<T> tile = gQue_.AllocTensor<T>();
            for (uint32_t r = 0; r < rows; ++r) {
                cursor_.Next(stream, slot);
                rowStream_[r] = stream;
                rowSlot_[r] = slot;
            }
            bool vWrote = false;
            for (uint32_t r = 0; r < rows;) {  // runs of rows of one stream (stream 0's keys come first)
                const uint32_t s = rowStream_[r];
                uint32_t e = r + 1;
                while (e < rows && rowStream_[e] == s) ++e;
                if (kind_[s] == t_.dtype) {
                    for (uint32_t i = r; i < e;) {  // one DMA per run of consecutive slots (a window's keys)
                        uint32_t j = i + 1;
                        while (j < e && rowSlot_[j] == rowSlot_[j - 1] + 1) ++j;
                        DataCopyPad(tile[i * D], kvGm_[s][static_cast<uint64_t>(rowSlot_[i]) * D],
                                    DataCopyExtParams(1, (j - i) * D * sizeof(T), 0, 0, 0),
                                    DataCopyPadExtParams<T>(false, 0, 0, T(0)));
                        i = j;
                    }
                } else if (kind_[s] == kDtFP8Record) {
                    DecodeRows(tile, s, r, e);
                    vWrote = true;
                } else {
                    WidenRows(tile, s, r, e);
                    vWrote = true;
                }
                r = e;
            }
            gQue_.EnQue(tile);
            tile = gQue_.DeQue<T>();  // orders the gather (MTE2) before V only: MTE3 waits explicitly
            longattn_compat::PipeWait<HardEvent::MTE2_MTE3>(pipe_);
            if (vWrote) longattn_compat::PipeWait<HardEvent::V_MTE3>(pipe_);
            DataCopy(wsKv[r0 * D], tile, rows * D);
            if constexpr (sizeof(T) == 4) {
                LocalTensor<float> tt = tQue_.AllocTensor<float>();
                Gather(tt, tile, offBuf_.Get<uint32_t>(), 0, D * g);
                tQue_.EnQue(tt);
                tt = tQue_.DeQue<float>();
                // [D, g] rows of g floats (32 B) -> columns r0.. of V^T [D, NB]
                DataCopyPad(wsVt[r0], tt, DataCopyExtParams(D, rows * 4, 0, (NB - rows) * 4, 0));
                tQue_.FreeTensor(tt);
            }
            longattn_compat::PipeWait<HardEvent::MTE3_MTE2>(pipe_);  // the next gather into this buffer
            if (converts) longattn_compat::PipeWait<HardEvent::MTE3_V>(pipe_);  // ... or conversion into it
            gQue_.FreeTensor(tile);
        }
        for (uint32_t i = hi; i < nb; ++i) cursor_.Next(stream, slot);
        CrossCoreSetFlag<2, PIPE_MTE3>(static_cast<uint16_t>(kFlagKv + buf));
    }

    // End of the run of consecutive slots starting at tile row i, at most row e: rows i, i + 1, ... while
    // each slot is its predecessor + 1 (a repeated or descending slot ends a run) and, for a paged FP8 pool
    // (pageSize > 0), does not start a new page (records of two pages are not adjacent in GM).
    __aicore__ inline uint32_t RunEnd(uint32_t i, uint32_t e, uint32_t pageSize) const
    {
        uint32_t j = i + 1;
        while (j < e && rowSlot_[j] == rowSlot_[j - 1] + 1 && (pageSize == 0 || rowSlot_[j] % pageSize != 0)) ++j;
        return j;
    }

    // Tile rows [r, e) <- FP8 records of stream s, dequantised (fp32, exact), in chunks of cvtRows.
    __aicore__ inline void DecodeRows(const AscendC::LocalTensor<T>& tile, uint32_t s, uint32_t r, uint32_t e)
    {
        using namespace AscendC;
        const uint32_t D = t_.headDim;
        for (uint32_t c = r; c < e; c += t_.cvtRows) {
            const uint32_t n = MinU(t_.cvtRows, e - c);
            LocalTensor<uint8_t> raw = fp8_.AllocRaw();
            for (uint32_t i = c; i < c + n;) {  // one DMA per record part and run of slots within a page
                const uint32_t j = RunEnd(i, c + n, pageSize_[s]);
                fp8_.LoadRecords(raw, i - c, poolGm_[s], rowSlot_[i], j - i, pageSize_[s], pageBytes_[s]);
                i = j;
            }
            raw = fp8_.Ready(raw);
            if constexpr (sizeof(T) == 4) {
                fp8_.Decode(raw, n, tile[c * D]);
            } else {
                LocalTensor<float> vals = fp8_.Scratch();
                fp8_.Decode(raw, n, vals);
                Cast(tile[c * D], vals, RoundMode::CAST_RINT, n * D);
            }
            fp8_.FreeRaw(raw);
        }
    }

    // Tile rows [r, e) <- 16-bit rows of stream s widened to fp32 (exact), in chunks of cvtRows.
    __aicore__ inline void WidenRows(const AscendC::LocalTensor<T>& tile, uint32_t s, uint32_t r, uint32_t e)
    {
        using namespace AscendC;
        if constexpr (sizeof(T) == 4) {
            const uint32_t D = t_.headDim, rowBytes = D * 2;
            for (uint32_t c = r; c < e; c += t_.cvtRows) {
                const uint32_t n = MinU(t_.cvtRows, e - c);
                LocalTensor<uint8_t> in = cvtQue_.AllocTensor<uint8_t>();
                for (uint32_t i = c; i < c + n;) {  // one DMA per run of consecutive slots: rows adjacent in GM and UB
                    const uint32_t j = RunEnd(i, c + n, 0);
                    DataCopyPad(in[(i - c) * rowBytes], poolGm_[s][static_cast<uint64_t>(rowSlot_[i]) * rowBytes],
                                DataCopyExtParams(static_cast<uint16_t>(j - i), rowBytes, 0, 0, 0),
                                DataCopyPadExtParams<uint8_t>(false, 0, 0, 0));
                    i = j;
                }
                cvtQue_.EnQue(in);
                in = cvtQue_.DeQue<uint8_t>();
                if (kind_[s] == kDtBF16)
                    Cast(tile[c * D], in.ReinterpretCast<bfloat16_t>(), RoundMode::CAST_NONE, n * D);
                else
                    Cast(tile[c * D], in.ReinterpretCast<half>(), RoundMode::CAST_NONE, n * D);
                cvtQue_.FreeTensor(in);
            }
        }
    }

    // V1: online softmax of rows [row0, row0 + mh) of S for block `seq` (nb valid keys).
    __aicore__ inline void Softmax(uint32_t seq, uint32_t nb, uint32_t row0, uint32_t mh)
    {
        using namespace AscendC;
        const uint32_t buf = seq % 2, NB = nb_;
        CrossCoreWaitFlag(static_cast<uint16_t>(kFlagS + buf));
        if (mh > 0) {
            const uint32_t n = mh * NB;
            const uint8_t rowBlk = static_cast<uint8_t>(NB / 8);  // 32-B blocks per row of S
            LocalTensor<float> s = sQue_.AllocTensor<float>();
            DataCopy(s, wsS_[buf][row0 * NB], n);
            sQue_.EnQue(s);
            s = sQue_.DeQue<float>();
            Muls(s, s, t_.scale, n);
            if (nb < NB) {  // zero-padded keys of the last block: columns [nb, NB) of every row -> -inf
                const uint32_t c0 = nb / 64 * 64;  // the 64-column slice holding the first padding key
                longattn_compat::CompareScalar(mask_, col_[c0], static_cast<float>(nb), CMPMODE::LT, NB - c0);
                for (uint32_t i = 0; i < mh; ++i)
                    Select(s[i * NB + c0], mask_, s[i * NB + c0], kNegInf, SELMODE::VSEL_TENSOR_SCALAR_MODE, NB - c0);
            }
            // p tile: for NB > 64 first the [mh, 64] fp32 partial max / sum of each row's 64-float slices
            LocalTensor<T> p = pQue_.AllocTensor<T>();
            const LocalTensor<float> part = p.template ReinterpretCast<float>();
            RowReduce(part, s, mh, true);
            Max(mNew_, m_, rowMax_, mh);
            Maxs(tmp_, mNew_, -kFltMax, mh);  // m*: m_new clamped to the finite range (see the top)
            Mins(tmp_, tmp_, kFltMax, mh);
            Sub(alpha_, m_, tmp_, mh);
            Exp(alpha_, alpha_, mh);  // exp(-inf) = 0 on the first block
            Brcb(mB_, tmp_, CeilDivU(mh, 8), BrcbRepeatParams(1, 8));
            for (uint32_t c = 0; c < NB; c += 64)  // s - m* per 64-column slice, one repeat per row
                Sub(s[c], s[c], mB_, 64, mh, BinaryRepeatParams(1, 1, 0, rowBlk, rowBlk, 1));
            Exp(s, s, n);
            RowReduce(part, s, mh, false);
            Mul(l_, l_, alpha_, mh);
            Add(l_, l_, rowSum_, mh);
            LocalTensor<float> swap = m_;
            m_ = mNew_;
            mNew_ = swap;
            if constexpr (sizeof(T) == 4)
                DataCopy(p, s, n);
            else
                Cast(p, s, RoundMode::CAST_RINT, n);
            pQue_.EnQue(p);
            sQue_.FreeTensor(s);
            p = pQue_.DeQue<T>();
            DataCopy(wsP_[buf][row0 * NB], p, n);
            pQue_.FreeTensor(p);
        }
        CrossCoreSetFlag<2, PIPE_MTE3>(static_cast<uint16_t>(kFlagP + buf));
    }

    // Row max (max = true: -> rowMax_) or row sum (-> rowSum_) of s [mh, NB]. NB = 64: one WholeReduce
    // repeat per row; NB > 64: the row's 64-float slices are first combined element-wise into part
    // [mh, 64] (repeat-form Max / Add, one repeat per row), then reduced the same way.
    __aicore__ inline void RowReduce(const AscendC::LocalTensor<float>& part, const AscendC::LocalTensor<float>& s,
                                     uint32_t mh, bool max)
    {
        using namespace AscendC;
        const uint32_t NB = nb_;
        const uint8_t rowBlk = static_cast<uint8_t>(NB / 8);
        LocalTensor<float> src = s;
        if (NB > 64) {
            if (max)
                Max(part, s, s[64], 64, mh, BinaryRepeatParams(1, 1, 1, 8, rowBlk, rowBlk));
            else
                Add(part, s, s[64], 64, mh, BinaryRepeatParams(1, 1, 1, 8, rowBlk, rowBlk));
            for (uint32_t c = 128; c < NB; c += 64) {
                if (max)
                    Max(part, part, s[c], 64, mh, BinaryRepeatParams(1, 1, 1, 8, 8, rowBlk));
                else
                    Add(part, part, s[c], 64, mh, BinaryRepeatParams(1, 1, 1, 8, 8, rowBlk));
            }
            src = part;
        }
        const int32_t srcRep = NB > 64 ? 8 : rowBlk;
        if (max)
            longattn_compat::WholeReduceMax(rowMax_, src, 64, mh, 1, 1, srcRep, ReduceOrder::ORDER_ONLY_VALUE);
        else
            longattn_compat::WholeReduceSum(rowSum_, src, 64, mh, 1, 1, srcRep);
    }

    // V2: acc = acc * alpha + O_block, in chunks of outRows rows.
    __aicore__ inline void Rescale(uint32_t seq, uint32_t row0, uint32_t mh)
    {
        using namespace AscendC;
        const uint32_t buf = seq % 2, D = t_.headDim;
        CrossCoreWaitFlag(static_cast<uint16_t>(kFlagO + buf));
        if (mh == 0) return;
        Brcb(alphaB_, alpha_, CeilDivU(mh, 8), BrcbRepeatParams(1, 8));
        for (uint32_t r0 = 0; r0 < mh; r0 += t_.outRows) {
            const uint32_t rr = MinU(t_.outRows, mh - r0);
            LocalTensor<float> o = oQue_.AllocTensor<float>();
            DataCopy(o, wsO_[buf][(row0 + r0) * D], rr * D);
            oQue_.EnQue(o);
            o = oQue_.DeQue<float>();
            LocalTensor<float> acc = acc_[r0 * D];
            ScaleRows(acc, alphaB_[r0 * 8], rr);
            Add(acc, acc, o, rr * D);
            oQue_.FreeTensor(o);
        }
    }

    // rows x D block of acc times a per-row factor (Brcb'd: one 32-B block per row), repeat form.
    __aicore__ inline void ScaleRows(const AscendC::LocalTensor<float>& acc, const AscendC::LocalTensor<float>& fB,
                                     uint32_t rows)
    {
        using namespace AscendC;
        const uint32_t D = t_.headDim;
        const uint8_t rep = static_cast<uint8_t>(D / 8);
        for (uint32_t c = 0; c < D; c += 64)
            Mul(acc[c], acc[c], fB, 64, rows, BinaryRepeatParams(1, 1, 0, rep, rep, 1));
    }

    __aicore__ inline void Finish(const Task& tk, uint32_t row0, uint32_t mh)
    {
        using namespace AscendC;
        if (mh == 0) return;
        const uint32_t D = t_.headDim;
        Ln(lse_, l_, mh);
        Add(lse_, lse_, m_, mh);
        if (t_.hasSink) {  // l * (1 + exp(sink - lse))
            Sub(tmp_, sinkV_, lse_, mh);
            Exp(tmp_, tmp_, mh);
            Adds(tmp_, tmp_, 1.0f, mh);
            Mul(tmp_, tmp_, l_, mh);
        } else {
            Adds(tmp_, l_, 0.0f, mh);
        }
        Duplicate(factor_, 1.0f, mh);
        Div(factor_, factor_, tmp_, mh);
        // Rows whose used logits are all -inf: out 0; rows with a +inf logit: out NaN.
        longattn_compat::CompareScalar(mask_, m_, kNegInf, CMPMODE::NE, kVecLen);
        Select(factor_, mask_, factor_, 0.0f, SELMODE::VSEL_TENSOR_SCALAR_MODE, mh);
        longattn_compat::CompareScalar(mask_, m_, kPosInf, CMPMODE::NE, kVecLen);
        Select(factor_, mask_, factor_, kNaN, SELMODE::VSEL_TENSOR_SCALAR_MODE, mh);
        Brcb(factorB_, factor_, CeilDivU(mh, 8), BrcbRepeatParams(1, 8));
        const uint64_t outRow0 = static_cast<uint64_t>(tk.token) * t_.numHeads + tk.head0 + row0;
        for (uint32_t r0 = 0; r0 < mh; r0 += t_.outRows) {
            const uint32_t rr = MinU(t_.outRows, mh - r0);
            LocalTensor<float> acc = acc_[r0 * D];
            ScaleRows(acc, factorB_[r0 * 8], rr);
            if (OutF32()) {  // acc * factor as it is: fp32 rows, no rounding (split-KV partials)
                LocalTensor<float> y = outQue_.AllocTensor<float>();
                DataCopy(y, acc, rr * D);
                outQue_.EnQue(y);
                y = outQue_.DeQue<float>();
                DataCopy(outGmF_[(outRow0 + r0) * D], y, rr * D);
                outQue_.FreeTensor(y);
                continue;
            }
            LocalTensor<T> y = outQue_.AllocTensor<T>();
            if constexpr (sizeof(T) == 4)
                DataCopy(y, acc, rr * D);
            else
                Cast(y, acc, RoundMode::CAST_RINT, rr * D);
            outQue_.EnQue(y);
            y = outQue_.DeQue<T>();
            DataCopy(outGm_[(outRow0 + r0) * D], y, rr * D);
            outQue_.FreeTensor(y);
        }
        LocalTensor<float> l = lseQue_.AllocTensor<float>();
        Adds(l, lse_, 0.0f, mh);
        lseQue_.EnQue(l);
        l = lseQue_.DeQue<float>();
        DataCopyPad(lseGm_[outRow0], l, DataCopyExtParams(1, mh * 4, 0, 0, 0));
        lseQue_.FreeTensor(l);
    }

    // A token without valid keys: out = 0, lse = -inf.
    __aicore__ inline void WriteEmpty(const Task& tk, uint32_t row0, uint32_t mh)
    {
        using namespace AscendC;
        if (mh == 0) return;
        const uint32_t D = t_.headDim;
        const uint64_t outRow0 = static_cast<uint64_t>(tk.token) * t_.numHeads + tk.head0 + row0;
        for (uint32_t r0 = 0; r0 < mh; r0 += t_.outRows) {
            const uint32_t rr = MinU(t_.outRows, mh - r0);
            if (OutF32()) {
                LocalTensor<float> y = outQue_.AllocTensor<float>();
                Duplicate(y, 0.0f, rr * D);
                outQue_.EnQue(y);
                y = outQue_.DeQue<float>();
                DataCopy(outGmF_[(outRow0 + r0) * D], y, rr * D);
                outQue_.FreeTensor(y);
                continue;
            }
            LocalTensor<T> y = outQue_.AllocTensor<T>();
            Duplicate(y.template ReinterpretCast<int16_t>(), static_cast<int16_t>(0), rr * D * sizeof(T) / 2);
            outQue_.EnQue(y);
            y = outQue_.DeQue<T>();
            DataCopy(outGm_[(outRow0 + r0) * D], y, rr * D);
            outQue_.FreeTensor(y);
        }
        LocalTensor<float> l = lseQue_.AllocTensor<float>();
        Duplicate(l, kNegInf, mh);
        lseQue_.EnQue(l);
        l = lseQue_.DeQue<float>();
        DataCopyPad(lseGm_[outRow0], l, DataCopyExtParams(1, mh * 4, 0, 0, 0));
        lseQue_.FreeTensor(l);
    }

    AscendC::TPipe pipe_;
    AscendC::TQue<AscendC::TPosition::VECIN, 1> sQue_, sinkQue_;
    AscendC::TQue<AscendC::TPosition::VECOUT, 1> pQue_, lseQue_, tQue_;
    AscendC::TQue<AscendC::TPosition::VECIN, 2> oQue_, gQue_, cvtQue_;
    AscendC::TQue<AscendC::TPosition::VECOUT, 2> outQue_;
    AscendC::TBuf<AscendC::TPosition::VECCALC> accBuf_, colBuf_, maskBuf_, vecBuf_, brcbBuf_, offBuf_;
    AscendC::LocalTensor<float> acc_, col_, m_, mNew_, l_, alpha_, rowMax_, rowSum_, lse_, sinkV_, factor_, tmp_;
    AscendC::LocalTensor<float> mB_, alphaB_, factorB_;
    AscendC::LocalTensor<uint8_t> mask_;
    AscendC::GlobalTensor<T> kvGm_[2], outGm_, wsKv_, wsP_[2];
    AscendC::GlobalTensor<uint8_t> poolGm_[2];  // pools not of the compute dtype, as bytes
    Fp8Dequantizer fp8_;
    AscendC::GlobalTensor<float> lseGm_, sinkGm_, wsVt_, wsS_[2], wsO_[2], outGmF_;  // outGmF_: out with outF32
    KeyCursor cursor_;
    SparseAttentionTiling t_{};
    uint32_t sub_ = 0, core_ = 0, nb_ = kSaBlockKeys;
    uint32_t kind_[2] = {0, 0}, pageSize_[2] = {1, 1}, pageBytes_[2] = {0, 0};
    uint32_t rowStream_[16], rowSlot_[16];  // the (stream, slot) of each row of a gather tile (<= 16 rows)
};

}  // namespace sa
}  // namespace longattn_ascend
