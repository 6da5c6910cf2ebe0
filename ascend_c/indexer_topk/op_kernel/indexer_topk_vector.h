// SPDX-License-Identifier: Apache-2.0
// indexer_topk, vector side (AIV s of the AI core owns columns [64 s, 64 s + 64) of every block):
//   score[j] = sum_h w[h] * relu(S[h, j])  (one Axpy per head: fp32; relu by the AIC's Fixpipe when the
//   launch's probe showed that it keeps NaN, else here: Relu + a Select restoring NaN)
//   entries j >= visible or in an invalid page: score -inf and the non-selectable id kIdxFlagId
//   top-k mode: Sort32 + MrgSort sort the 64 (score, id) pairs of the block; unless the block's best
//     score is below the current k-th, MrgSort merges it into the running list (kept at exactly K
//     pairs, initially (-inf, flag)). At the end of the token AIV 1 hands its list to AIV 0 through
//     GM (mode-1 cross-core flag) and AIV 0 merges the two, canonicalises and writes the output.
//   logits mode: the block's scores go to logits[t, j] (-inf for invisible / invalid entries).
//
// NaN scores (package rule): a NaN score ranks as +inf whatever its sign bit (ties with +inf entries
// broken by the smaller id) and stays selectable, so lengths = min(topk, usable visible entries).
// The scores follow torch's math: relu keeps a NaN (the relu is Relu plus a Select that restores the
// NaN of S, so nothing depends on how the hardware's Relu treats NaN), w * relu(S) and the sum over
// heads are IEEE (0 * inf = NaN). Top-k mode then replaces every NaN score by +inf before anything is
// sorted: Sort32 / MrgSort never see a NaN (their NaN order is undocumented; the emulator aborts on
// a NaN score), and the tie repair below treats the NaN entries as the +inf run they are. Logits
// mode writes the NaN itself, as the reference's indexer_logits does.
//
// Exact order (score desc, id asc) without relying on how the hardware orders equal scores:
// Sort32/MrgSort order the scores (documented); the only place where the order of equal scores
// matters for *membership* is the cut at K: if the pairs K-1 and K of a merged list tie, the whole
// run of that score is re-sorted by id (Sort32/MrgSort on the exact fp32 keys -id, ids < 2^24 are
// unique) before cutting. At the end every run of equal scores in the final K is re-sorted the same
// way, which also puts selectable entries ahead of the flag id within a -inf run. So the result is
// exact given only that the merges order scores descending.
#pragma once

#include "indexer_topk_common.h"

namespace longattn_ascend {
namespace idx {

template <typename T>
class IndexerVector {
public:
    static constexpr uint32_t NH = kIdxHalf;  // columns per AIV per block

    __aicore__ inline void Init(GM_ADDR weights, GM_ADDR visibleEnd, GM_ADDR blockTable, GM_ADDR seqIds,
                                GM_ADDR indices, GM_ADDR lengths, GM_ADDR logits, GM_ADDR ws,
                                const IndexerTopkTiling& t)
    {
        using namespace AscendC;
        t_ = t;
        sub_ = static_cast<uint32_t>(GetSubBlockIdx());
        core_ = static_cast<uint32_t>(GetBlockIdx() / GetSubBlockNum());  // AI core of this AIV
        reader_.Init(visibleEnd, seqIds, t_);
        const uint32_t Hi = t.numHeads, K = t.topk, cap = t.listCap, mp = AlignUpU(Hi, 16);
        wGm_.SetGlobalBuffer((__gm__ float*)weights, static_cast<uint64_t>(t.numTokens) * Hi);
        if (t.paged) btGm_.SetGlobalBuffer((__gm__ int32_t*)blockTable, static_cast<uint64_t>(t.btRows) * t.btCols);
        if (t.logitsMode) {
            logitsGm_.SetGlobalBuffer((__gm__ float*)logits, static_cast<uint64_t>(t.numTokens) * t.numEntries);
        } else {
            idxGm_.SetGlobalBuffer((__gm__ int32_t*)indices, static_cast<uint64_t>(t.numTokens) * K);
            lenGm_.SetGlobalBuffer((__gm__ int32_t*)lengths, t.numTokens);
        }
        __gm__ uint8_t* base = ws + static_cast<uint64_t>(core_) * t.wsPerCore;
        for (uint32_t b = 0; b < 2; ++b) {
            wsS_[b].SetGlobalBuffer((__gm__ float*)(base + t.wsSOff) + b * mp * kIdxBlock, mp * kIdxBlock);
            wsList_[b].SetGlobalBuffer((__gm__ float*)(base + t.wsListOff) + b * 2 * K, 2 * K);
        }
        wsProbe_.SetGlobalBuffer((__gm__ float*)(base + t.wsProbeOff), kIdxProbeRows * 16);
        // Sort32 wants 256-B aligned destinations and 128-B aligned sources: the sort buffers go first.
        pipe_.InitBuffer(pairBuf_, 2 * NH * 8);
        pipe_.InitBuffer(sortBuf_, 2 * cap * 8);
        pipe_.InitBuffer(repBuf_, 2 * cap * 4);
        pipe_.InitBuffer(blkBuf_, 8 * NH * 4);
        pipe_.InitBuffer(listBuf_, 2 * cap * 8);
        pipe_.InitBuffer(offBuf_, cap * 4);
        pipe_.InitBuffer(sQue_, 2, Hi * NH * 4);
        pipe_.InitBuffer(wQue_, 1, AlignUpU(Hi, 8) * 4);
        pipe_.InitBuffer(outQue_, 1, MaxU(NH * 4, AlignUpU(K, 8) * 4 + 32));
        pipe_.InitBuffer(nanBuf_, AlignUpU(Hi * NH / 8, 32));  // compare bits of one [Hi, 64] score tile
        LocalTensor<float> blk = blkBuf_.Get<float>();
        score_ = blk[0];
        idsF_ = blk[NH];
        jF_ = blk[2 * NH];
        valid_ = blk[3 * NH];
        ids_ = blk[4 * NH].ReinterpretCast<uint32_t>();
        negInf_ = blk[5 * NH];
        mask_ = blk[6 * NH].ReinterpretCast<uint8_t>();
        LocalTensor<float> pr = pairBuf_.Get<float>();
        blkA_ = pr[0];
        blkB_ = pr[2 * NH];
        LocalTensor<float> lst = listBuf_.Get<float>();
        listA_ = lst[0];
        listB_ = lst[2 * cap];
        LocalTensor<float> rep = repBuf_.Get<float>();
        repIds_ = rep[0].ReinterpretCast<uint32_t>();
        repKeys_ = rep[cap];
        LocalTensor<float> srt = sortBuf_.Get<float>();
        sortA_ = srt[0];
        sortB_ = srt[2 * cap];
        oddOff_ = offBuf_.Get<uint32_t>();
        LocalTensor<int32_t> oi = oddOff_.ReinterpretCast<int32_t>();
        CreateVecIndex(oi, static_cast<int32_t>(0), cap);
        Muls(oi, oi, static_cast<int32_t>(8), cap);
        Adds(oi, oi, static_cast<int32_t>(4), cap);  // byte offset of the id of pair i
        Duplicate(negInf_, kNegInf, NH);
        longattn_compat::PipeWait<HardEvent::V_MTE3>(pipe_);  // negInf_ is only read by MTE3 from now on
    }

    __aicore__ inline void Process()
    {
        // The AIC's Fixpipe ReLU probe (indexer_topk_common.h): the same decision as the AIC's.
        AscendC::CrossCoreWaitFlag(kFlagP);
        fast_ = ProbeKeepsNaN(wsProbe_, static_cast<float>(32 / sizeof(T)));
        uint32_t seq = 0, exchanges = 0;
        for (uint32_t token = core_; token < t_.numTokens; token += t_.blockDim) {
            const TokenInfo info = reader_.Get(token);
            if (t_.logitsMode)
                LogitsToken(token, info, seq);
            else
                TopkToken(token, info, seq, exchanges);
        }
    }

private:
    // ---- scores of this AIV's 64 columns of block b -------------------------------------------------
    __aicore__ inline void ScoreBlock(uint32_t seq, uint32_t b, const TokenInfo& info,
                                      const AscendC::LocalTensor<float>& w)
    {
        using namespace AscendC;
        const uint32_t buf = seq % 2, Hi = t_.numHeads;
        CrossCoreWaitFlag(static_cast<uint16_t>(kFlagS + buf));
        LocalTensor<float> s = sQue_.AllocTensor<float>();
        DataCopy(s, wsS_[buf][sub_ * NH], DataCopyParams(Hi, NH * 4 / 32, NH * 4 / 32, 0));  // [Hi, 64] of [Hi, 128]
        sQue_.EnQue(s);
        s = sQue_.DeQue<float>();
        longattn_compat::PipeWait<HardEvent::MTE3_MTE2>(pipe_);  // earlier GM writes are ordered before the flag's pipe
        CrossCoreSetFlag<2, PIPE_MTE2>(static_cast<uint16_t>(kFlagC + buf));  // the AIC may reuse wsS[buf]
        if (!fast_) {  // raw scores: relu here, keeping NaN (on the fast path the Fixpipe applied it)
            LocalTensor<uint8_t> notNan = nanBuf_.Get<uint8_t>();
            Compare(notNan, s, s, CMPMODE::EQ, Hi * NH);  // 0 exactly where S is NaN (IEEE compare)
            Relu(s, s, Hi * NH);
            Select(s, notNan, s, kNaN, SELMODE::VSEL_TENSOR_SCALAR_MODE, Hi * NH);  // relu(NaN) = NaN, as torch
        }
        Duplicate(score_, 0.0f, NH);
        for (uint32_t h = 0; h < Hi; ++h) Axpy(score_, s[h * NH], w.GetValue(h), NH);
        sQue_.FreeTensor(s);
        if (!t_.logitsMode) {  // top-k: a NaN score ranks as +inf (the package rule)
            Compare(mask_, score_, score_, CMPMODE::EQ, NH);
            Select(score_, mask_, score_, kPosInf, SELMODE::VSEL_TENSOR_SCALAR_MODE, NH);
        }
        // Which columns are candidates: j < visible, and (paged) the entry's page is in the pool.
        const uint32_t j0 = b * kIdxBlock + sub_ * NH;
        CreateVecIndex(jF_, static_cast<float>(j0), NH);
        Duplicate(valid_, 1.0f, NH);
        if (t_.paged) {
            const uint32_t ps = t_.pageSize, jEnd = MinU(j0 + NH, info.visible);
            for (uint32_t r = j0; r < jEnd;) {
                const uint32_t lp = r / ps, end = MinU(jEnd, (lp + 1) * ps);
                const int32_t page = btGm_.GetValue(static_cast<uint64_t>(info.seq) * t_.btCols + lp);
                if (page < 0 || static_cast<uint32_t>(page) >= t_.numPages)
                    for (uint32_t e = r; e < end; ++e) valid_.SetValue(e - j0, 0.0f);
                r = end;
            }
        }
        longattn_compat::CompareScalar(mask_, jF_, static_cast<float>(info.visible), CMPMODE::LT, NH);
        Select(valid_, mask_, valid_, 0.0f, SELMODE::VSEL_TENSOR_SCALAR_MODE, NH);
        longattn_compat::CompareScalar(mask_, valid_, 0.5f, CMPMODE::GT, NH);
        Select(score_, mask_, score_, kNegInf, SELMODE::VSEL_TENSOR_SCALAR_MODE, NH);
        Select(idsF_, mask_, jF_, static_cast<float>(kIdxFlagId), SELMODE::VSEL_TENSOR_SCALAR_MODE, NH);
        Cast(ids_.ReinterpretCast<int32_t>(), idsF_, RoundMode::CAST_RINT, NH);  // exact: ids < 2^24
    }

    __aicore__ inline AscendC::LocalTensor<float> LoadWeights(uint32_t token)
    {
        using namespace AscendC;
        LocalTensor<float> w = wQue_.AllocTensor<float>();
        DataCopyPad(w, wGm_[static_cast<uint64_t>(token) * t_.numHeads], DataCopyExtParams(1, t_.numHeads * 4, 0, 0, 0),
                    DataCopyPadExtParams<float>(false, 0, 0, 0.0f));
        wQue_.EnQue(w);
        return wQue_.DeQue<float>();
    }

    // ---- logits mode ------------------------------------------------------------------------------
    __aicore__ inline void LogitsToken(uint32_t token, const TokenInfo& info, uint32_t& seq)
    {
        using namespace AscendC;
        const uint32_t N = t_.numEntries;
        const uint64_t row = static_cast<uint64_t>(token) * N;
        if (info.blocks) {
            LocalTensor<float> w = LoadWeights(token);
            for (uint32_t b = 0; b < info.blocks; ++b, ++seq) {
                ScoreBlock(seq, b, info, w);
                const uint32_t j0 = b * kIdxBlock + sub_ * NH;
                if (j0 >= N) continue;
                LocalTensor<float> o = outQue_.AllocTensor<float>();
                Adds(o, score_, 0.0f, NH);
                outQue_.EnQue(o);
                o = outQue_.DeQue<float>();
                DataCopyPad(logitsGm_[row + j0], o, DataCopyExtParams(1, MinU(NH, N - j0) * 4, 0, 0, 0));
                outQue_.FreeTensor(o);
            }
            wQue_.FreeTensor(w);
        }
        for (uint32_t j0 = info.blocks * kIdxBlock + sub_ * NH; j0 < N; j0 += kIdxBlock)  // never scored: -inf
            DataCopyPad(logitsGm_[row + j0], negInf_, DataCopyExtParams(1, MinU(NH, N - j0) * 4, 0, 0, 0));
    }

    // ---- top-k mode -------------------------------------------------------------------------------
    __aicore__ inline float ScoreAt(const AscendC::LocalTensor<float>& list, uint32_t i)
    {
        return list.GetValue(2 * i);
    }

    __aicore__ inline void TopkToken(uint32_t token, const TokenInfo& info, uint32_t& seq, uint32_t& exchanges)
    {
        using namespace AscendC;
        const uint32_t K = t_.topk;
        if (info.blocks == 0) {
            if (sub_ == 0) WriteOutput(token, listA_, info, true);
            return;
        }
        // Running list: K pairs (-inf, flag).
        Duplicate(listA_, kNegInf, 2 * K);
        for (uint32_t i = 0; i < K; ++i) listA_.ReinterpretCast<uint32_t>().SetValue(2 * i + 1, kIdxFlagId);
        LocalTensor<float> cur = listA_, other = listB_;
        LocalTensor<float> w = LoadWeights(token);
        for (uint32_t b = 0; b < info.blocks; ++b, ++seq) {
            ScoreBlock(seq, b, info, w);
            Sort32(blkA_, score_, ids_, NH / 32);
            MrgSort4Info two;
            two.elementLengths[0] = 32;
            two.elementLengths[1] = 32;
            two.validBit = 3;
            two.repeatTimes = 1;
            MrgSort(blkB_, MrgSortSrcList<float>(blkA_, blkA_[64], blkA_, blkA_), two);
            if (ScoreAt(blkB_, 0) < ScoreAt(cur, K - 1)) continue;  // nothing here beats the current k-th
            MrgSort4Info m;
            m.elementLengths[0] = static_cast<uint16_t>(K);
            m.elementLengths[1] = NH;
            m.validBit = 3;
            m.repeatTimes = 1;
            MrgSort(other, MrgSortSrcList<float>(cur, blkB_, cur, cur), m);
            LocalTensor<float> tmp = cur;
            cur = other;
            other = tmp;
            CutAt(cur, K, K + NH);
        }
        wQue_.FreeTensor(w);
        // AIV 1 hands its list to AIV 0 through GM; mode-1 flags synchronise the pair.
        const uint32_t lb = exchanges++ % 2;
        if (sub_ == 1) {
            longattn_compat::PipeWait<HardEvent::V_MTE3>(pipe_);
            DataCopyPad(wsList_[lb], cur, DataCopyExtParams(1, 2 * K * 4, 0, 0, 0));
            CrossCoreSetFlag<1, PIPE_MTE3>(kFlagX);
            CrossCoreWaitFlag(kFlagX);
            longattn_compat::PipeWait<HardEvent::MTE3_V>(pipe_);  // the list buffers are rewritten by the next token
            return;
        }
        CrossCoreSetFlag<1, PIPE_MTE3>(kFlagX);
        CrossCoreWaitFlag(kFlagX);
        longattn_compat::PipeWait<HardEvent::V_MTE2>(pipe_);
        DataCopyPad(sortA_, wsList_[lb], DataCopyExtParams(1, 2 * K * 4, 0, 0, 0),
                    DataCopyPadExtParams<float>(false, 0, 0, 0.0f));
        longattn_compat::PipeWait<HardEvent::MTE2_V>(pipe_);
        MrgSort4Info m;
        m.elementLengths[0] = static_cast<uint16_t>(K);
        m.elementLengths[1] = static_cast<uint16_t>(K);
        m.validBit = 3;
        m.repeatTimes = 1;
        MrgSort(other, MrgSortSrcList<float>(cur, sortA_, cur, cur), m);
        CutAt(other, K, 2 * K);
        // Canonical order: every run of equal scores in the first K sorted by id.
        for (uint32_t i = 0; i < K;) {
            const float s = ScoreAt(other, i);
            uint32_t e = i + 1;
            while (e < K && ScoreAt(other, e) == s) ++e;
            if (e - i > 1) SortRunById(other, i, e);
            i = e;
        }
        WriteOutput(token, other, info, false);
    }

    // list holds `total` pairs sorted by score; make its first K exactly the top K by (score, id).
    __aicore__ inline void CutAt(const AscendC::LocalTensor<float>& list, uint32_t K, uint32_t total)
    {
        if (total <= K) return;
        const float tau = ScoreAt(list, K - 1);
        if (ScoreAt(list, K) != tau) return;  // no tie across the cut
        uint32_t lo = K - 1, hi = K + 1;
        while (lo > 0 && ScoreAt(list, lo - 1) == tau) --lo;
        while (hi < total && ScoreAt(list, hi) == tau) ++hi;
        SortRunById(list, lo, hi);
    }

    // Re-sort pairs [lo, hi) (all the same score) by id ascending: Sort32 + MrgSort on keys -id.
    __aicore__ inline void SortRunById(const AscendC::LocalTensor<float>& list, uint32_t lo, uint32_t hi)
    {
        using namespace AscendC;
        const uint32_t n = hi - lo, n32 = AlignUpU(n, 32);
        Gather(repIds_, list.template ReinterpretCast<uint32_t>(), oddOff_, lo * 8, n);
        Duplicate(repKeys_, -3.0e38f, n32);
        Cast(repKeys_, repIds_.ReinterpretCast<int32_t>(), RoundMode::CAST_NONE, n);  // exact: ids < 2^24
        Muls(repKeys_, repKeys_, -1.0f, n);
        LocalTensor<float> src = sortA_, dst = sortB_;
        Sort32(src, repKeys_, repIds_, n32 / 32);
        for (uint32_t run = 32; run < n32; run *= 4) {
            for (uint32_t g = 0; g < n32; g += 4 * run) {
                const uint32_t left = n32 - g, nq = MinU(4, CeilDivU(left, run));
                if (nq == 1) {
                    DataCopy(dst[2 * g], src[2 * g], 2 * left);
                    continue;
                }
                MrgSort4Info m;
                for (uint32_t q = 0; q < 4; ++q)
                    m.elementLengths[q] = static_cast<uint16_t>(q < nq ? MinU(run, left - q * run) : 0);
                m.validBit = nq == 2 ? 3 : (nq == 3 ? 7 : 15);
                m.repeatTimes = 1;
                MrgSort(dst[2 * g],
                        MrgSortSrcList<float>(src[2 * g], src[2 * (g + run)], src[2 * (g + (nq > 2 ? 2 : 1) * run)],
                                              src[2 * (g + (nq > 3 ? 3 : 1) * run)]),
                        m);
            }
            LocalTensor<float> t = src;
            src = dst;
            dst = t;
        }
        LocalTensor<uint32_t> out = list.template ReinterpretCast<uint32_t>(), sorted = src.ReinterpretCast<uint32_t>();
        for (uint32_t i = 0; i < n; ++i) out.SetValue(2 * (lo + i) + 1, sorted.GetValue(2 * i + 1));
    }

    __aicore__ inline void WriteOutput(uint32_t token, const AscendC::LocalTensor<float>& list, const TokenInfo& info,
                                       bool empty)
    {
        using namespace AscendC;
        const uint32_t K = t_.topk, ps = t_.pageSize;
        LocalTensor<int32_t> o = outQue_.AllocTensor<int32_t>();
        const LocalTensor<uint32_t> ids = list.template ReinterpretCast<uint32_t>();
        int32_t count = 0;
        for (uint32_t i = 0; i < K; ++i) {
            const uint32_t id = empty ? kIdxFlagId : ids.GetValue(2 * i + 1);
            int32_t v = -1;
            if (id != kIdxFlagId) {
                ++count;
                v = static_cast<int32_t>(id);
                if (t_.returnSlots && t_.paged) {
                    const int32_t page = btGm_.GetValue(static_cast<uint64_t>(info.seq) * t_.btCols + id / ps);
                    v = page * static_cast<int32_t>(ps) + static_cast<int32_t>(id % ps);
                }
            }
            o.SetValue(i, v);
        }
        const uint32_t lenAt = AlignUpU(K, 8);
        o.SetValue(lenAt, count);
        outQue_.EnQue(o);
        o = outQue_.DeQue<int32_t>();
        DataCopyPad(idxGm_[static_cast<uint64_t>(token) * K], o, DataCopyExtParams(1, K * 4, 0, 0, 0));
        DataCopyPad(lenGm_[token], o[lenAt], DataCopyExtParams(1, 4, 0, 0, 0));
        outQue_.FreeTensor(o);
    }

    AscendC::TPipe pipe_;
    AscendC::TQue<AscendC::TPosition::VECIN, 2> sQue_;
    AscendC::TQue<AscendC::TPosition::VECIN, 1> wQue_;
    AscendC::TQue<AscendC::TPosition::VECOUT, 1> outQue_;
    AscendC::TBuf<AscendC::TPosition::VECCALC> blkBuf_, pairBuf_, listBuf_, repBuf_, sortBuf_, offBuf_, nanBuf_;
    AscendC::LocalTensor<float> score_, idsF_, jF_, valid_, negInf_, blkA_, blkB_, listA_, listB_, repKeys_, sortA_,
        sortB_;
    AscendC::LocalTensor<uint32_t> ids_, repIds_, oddOff_;
    AscendC::LocalTensor<uint8_t> mask_;
    AscendC::GlobalTensor<float> wGm_, logitsGm_, wsS_[2], wsList_[2], wsProbe_;
    AscendC::GlobalTensor<int32_t> btGm_, idxGm_, lenGm_;
    TokenReader reader_;
    IndexerTopkTiling t_{};
    uint32_t sub_ = 0, core_ = 0;
    bool fast_ = false;  // the Fixpipe applied relu (keeping NaN): the AIV skips Compare / Relu / Select
};

}  // namespace idx
}  // namespace longattn_ascend
