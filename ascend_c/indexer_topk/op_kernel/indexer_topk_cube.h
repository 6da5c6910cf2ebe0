// SPDX-License-Identifier: Apache-2.0
// indexer_topk, cube side (AIC): per token, Q [Hi, Di] stays in L1; per block of 128 entries the
// index-key rows are copied GM -> L1 (Nz) straight from the pool (paged: one Nd2Nz per page run,
// page ids from the block table; rows of invalid pages are left as they are: their columns are
// discarded by the vector side), then S = Q . K^T [Hi, 128] (fp32 accumulation in L0C, Di sliced
// into kTile), Fixpipe -> wsS[buf], CrossCoreSetFlag S. Before overwriting wsS[buf] the AIC waits
// for the AIVs' "consumed" flag of the block that used it last.
#pragma once

#include "indexer_topk_common.h"

namespace longattn_ascend {
namespace idx {

template <typename T>
class IndexerCube {
public:
    static constexpr uint32_t C0 = 32 / sizeof(T);
    static constexpr uint32_t FRAC = 512 / sizeof(T);
    static constexpr uint32_t NB = kIdxBlock;
    static constexpr uint32_t N1 = NB / 16;

    __aicore__ inline void Init(GM_ADDR q, GM_ADDR indexK, GM_ADDR visibleEnd, GM_ADDR blockTable, GM_ADDR seqIds,
                                GM_ADDR ws, const IndexerTopkTiling& t)
    {
        t_ = t;
        core_ = static_cast<uint32_t>(AscendC::GetBlockIdx());
        reader_.Init(visibleEnd, seqIds, t_);
        const uint32_t Di = t.headDim;
        mp_ = AlignUpU(t.numHeads, 16);
        m1_ = mp_ / 16;
        qGm_.SetGlobalBuffer((__gm__ T*)q, static_cast<uint64_t>(t.numTokens) * t.numHeads * Di);
        const uint64_t rows = t.paged ? static_cast<uint64_t>(t.numPages) * t.pageSize : t.numEntries;
        kGm_.SetGlobalBuffer((__gm__ T*)indexK, rows * Di);
        if (t.paged) btGm_.SetGlobalBuffer((__gm__ int32_t*)blockTable, static_cast<uint64_t>(t.btRows) * t.btCols);
        __gm__ uint8_t* base = ws + static_cast<uint64_t>(core_) * t.wsPerCore;
        for (uint32_t b = 0; b < 2; ++b)
            wsS_[b].SetGlobalBuffer((__gm__ float*)(base + t.wsSOff) + b * mp_ * NB, mp_ * NB);
        pipe_.InitBuffer(qQue_, 1, mp_ * Di * sizeof(T));
        pipe_.InitBuffer(kQue_, 2, NB * Di * sizeof(T));
        pipe_.InitBuffer(aQue_, 2, mp_ * t.kTile * sizeof(T));
        pipe_.InitBuffer(bQue_, 2, t.kTile * NB * sizeof(T));
        pipe_.InitBuffer(cQue_, 2, mp_ * NB * sizeof(float));
    }

    __aicore__ inline void Process()
    {
        uint32_t seq = 0;
        for (uint32_t token = core_; token < t_.numTokens; token += t_.blockDim) {
            const TokenInfo info = reader_.Get(token);
            if (info.blocks == 0) continue;
            LoadQ(token);
            for (uint32_t b = 0; b < info.blocks; ++b, ++seq) ScoreBlock(seq, b, info);
            qQue_.FreeTensor(qL1_);
        }
        for (uint32_t s = seq >= 2 ? seq - 2 : 0; s < seq; ++s)  // the last two "consumed" flags
            AscendC::CrossCoreWaitFlag(static_cast<uint16_t>(kFlagC + s % 2));
    }

private:
    __aicore__ inline void LoadQ(uint32_t token)
    {
        using namespace AscendC;
        LocalTensor<T> q = qQue_.AllocTensor<T>();
        Nd2NzParams p;
        p.ndNum = 1;
        p.nValue = t_.numHeads;
        p.dValue = t_.headDim;
        p.srcDValue = t_.headDim;
        p.dstNzC0Stride = mp_;
        p.dstNzNStride = 1;
        DataCopy(q, qGm_[static_cast<uint64_t>(token) * t_.numHeads * t_.headDim], p);
        qQue_.EnQue(q);
        qL1_ = qQue_.DeQue<T>();
    }

    // Rows [r0, r0 + n) of the key tile from pool rows starting at `row`.
    __aicore__ inline void LoadRows(const AscendC::LocalTensor<T>& k, uint32_t r0, uint64_t row, uint32_t n)
    {
        using namespace AscendC;
        Nd2NzParams p;
        p.ndNum = 1;
        p.nValue = n;
        p.dValue = t_.headDim;
        p.srcDValue = t_.headDim;
        p.dstNzC0Stride = NB;
        p.dstNzNStride = 1;
        DataCopy(k[r0 * C0], kGm_[row * t_.headDim], p);
    }

    __aicore__ inline void ScoreBlock(uint32_t seq, uint32_t b, const TokenInfo& info)
    {
        using namespace AscendC;
        const uint32_t buf = seq % 2, Di = t_.headDim, j0 = b * NB, nb = MinU(NB, info.visible - j0);
        LocalTensor<T> k = kQue_.AllocTensor<T>();
        if (!t_.paged) {
            LoadRows(k, 0, j0, nb);
        } else {
            const uint32_t ps = t_.pageSize;
            for (uint32_t r = j0; r < j0 + nb;) {
                const uint32_t lp = r / ps, end = MinU(j0 + nb, (lp + 1) * ps);
                const int32_t page = btGm_.GetValue(static_cast<uint64_t>(info.seq) * t_.btCols + lp);
                if (page >= 0 && static_cast<uint32_t>(page) < t_.numPages)
                    LoadRows(k, r - j0, static_cast<uint64_t>(page) * ps + r % ps, end - r);
                r = end;
            }
        }
        kQue_.EnQue(k);
        k = kQue_.DeQue<T>();
        LocalTensor<float> c = cQue_.AllocTensor<float>();
        for (uint32_t k0 = 0; k0 < Di; k0 += t_.kTile) {
            const uint32_t kThis = MinU(t_.kTile, Di - k0), k1This = kThis / C0, k1Start = k0 / C0;
            LocalTensor<T> a2 = aQue_.AllocTensor<T>();
            for (uint32_t m1 = 0; m1 < m1_; ++m1)
                LoadData(a2[m1 * k1This * FRAC], qL1_,
                         LoadData2DParams(k1Start * m1_ + m1, k1This, m1_, 0, 0, false, 0));
            aQue_.EnQue(a2);
            LocalTensor<T> b2 = bQue_.AllocTensor<T>();
            LoadData(b2, k, LoadData2DParams(k1Start * N1, k1This * N1, 1, 0, 0, false, 0));
            bQue_.EnQue(b2);
            a2 = aQue_.DeQue<T>();
            b2 = bQue_.DeQue<T>();
            MmadParams mm;
            mm.m = longattn_compat::MmadRows(t_.numHeads); // m = 1 would be GEMV mode
            mm.n = NB;
            mm.k = kThis;
            mm.cmatrixInitVal = (k0 == 0);
            Mmad(c, a2, b2, mm);
            aQue_.FreeTensor(a2);
            bQue_.FreeTensor(b2);
        }
        kQue_.FreeTensor(k);
        cQue_.EnQue(c);
        c = cQue_.DeQue<float>();
        if (seq >= 2) CrossCoreWaitFlag(static_cast<uint16_t>(kFlagC + buf));  // wsS[buf] consumed
        FixpipeParamsV220 fp;
        fp.nSize = NB;
        fp.mSize = t_.numHeads;
        fp.srcStride = AlignUpU(t_.numHeads, 16);
        fp.dstStride = NB;
        fp.quantPre = NoQuant;
        Fixpipe(wsS_[buf], c, fp);
        cQue_.FreeTensor(c);
        CrossCoreSetFlag<2, PIPE_FIX>(static_cast<uint16_t>(kFlagS + buf));
    }

    AscendC::TPipe pipe_;
    AscendC::TQue<AscendC::TPosition::A1, 1> qQue_;
    AscendC::TQue<AscendC::TPosition::B1, 2> kQue_;
    AscendC::TQue<AscendC::TPosition::A2, 2> aQue_;
    AscendC::TQue<AscendC::TPosition::B2, 2> bQue_;
    AscendC::TQue<AscendC::TPosition::CO1, 2> cQue_;
    AscendC::LocalTensor<T> qL1_;
    AscendC::GlobalTensor<T> qGm_, kGm_;
    AscendC::GlobalTensor<int32_t> btGm_;
    AscendC::GlobalTensor<float> wsS_[2];
    TokenReader reader_;
    IndexerTopkTiling t_{};
    uint32_t core_ = 0, mp_ = 16, m1_ = 1;
};

}  // namespace idx
}  // namespace longattn_ascend
