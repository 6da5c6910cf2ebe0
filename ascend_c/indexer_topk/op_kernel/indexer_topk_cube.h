// SPDX-License-Identifier: Apache-2.0
// indexer_topk, cube side (AIC): per token, Q [Hi, Di] stays in L1; per block of 128 entries the
// index-key rows are copied GM -> L1 (Nz) straight from the pool (paged: one Nd2Nz per page run,
// page ids from the block table; rows of invalid pages are left as they are: their columns are
// discarded by the vector side), then S = Q . K^T [Hi, 128] (fp32 accumulation in L0C, Di sliced
// into kTile), Fixpipe -> wsS[buf], CrossCoreSetFlag S. Before overwriting wsS[buf] the AIC waits
// for the AIVs' "consumed" flag of the block that used it last. Once per launch, before any block, the
// Fixpipe ReLU probe (indexer_topk_common.h) decides whether the ReLU is applied by the Fixpipe (reluEn)
// or by the AIVs. q may come as 2-3 bf16 pieces (fp32 / fp16 q over a bf16 pool): all pieces stay in L1
// and their products with each key slice accumulate into the same L0C tile.
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
        qGm_.SetGlobalBuffer((__gm__ T*)q, static_cast<uint64_t>(t.qPieces) * t.numTokens * t.numHeads * Di);
        const uint64_t rows = t.paged ? static_cast<uint64_t>(t.numPages) * t.pageSize : t.numEntries;
        kGm_.SetGlobalBuffer((__gm__ T*)indexK, rows * Di);
        if (t.paged) btGm_.SetGlobalBuffer((__gm__ int32_t*)blockTable, static_cast<uint64_t>(t.btRows) * t.btCols);
        __gm__ uint8_t* base = ws + static_cast<uint64_t>(core_) * t.wsPerCore;
        for (uint32_t b = 0; b < 2; ++b)
            wsS_[b].SetGlobalBuffer((__gm__ float*)(base + t.wsSOff) + b * mp_ * NB, mp_ * NB);
        wsProbe_.SetGlobalBuffer((__gm__ float*)(base + t.wsProbeOff), kIdxProbeRows * 16);
        pipe_.InitBuffer(qQue_, 1, t.qPieces * mp_ * Di * sizeof(T));
        pipe_.InitBuffer(kQue_, 2, NB * Di * sizeof(T));
        pipe_.InitBuffer(aQue_, 2, mp_ * t.kTile * sizeof(T));
        pipe_.InitBuffer(bQue_, 2, t.kTile * NB * sizeof(T));
        pipe_.InitBuffer(cQue_, 2, mp_ * NB * sizeof(float));
    }

    __aicore__ inline void Process()
    {
        ProbeFixpipeRelu();
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
    // `blocks` 32-B blocks of an L1 tile, from block `first` on, set to the bit pattern `bits`.
    template <typename U>
    __aicore__ inline void FillBlocks(const AscendC::LocalTensor<U>& tile, uint32_t first, uint32_t blocks, U bits)
    {
        AscendC::InitConstValue(tile[first * (32 / sizeof(U))],
                                AscendC::InitConstValueParams<U>(1, static_cast<uint16_t>(blocks), 0, bits));
    }

    // The Fixpipe ReLU probe (indexer_topk_common.h): once per launch, before any block. Sets fast_.
    __aicore__ inline void ProbeFixpipeRelu()
    {
        using namespace AscendC;
        using B = ProbeBits<T>;
        using U = typename B::U;
        // A and B as L1 Nz tiles of 16 rows x 2 k-blocks: block (cb, r) is 32-B block cb * 16 + r.
        LocalTensor<T> a1 = kQue_.AllocTensor<T>();
        LocalTensor<T> b1 = kQue_.AllocTensor<T>();
        const LocalTensor<U> au = a1.template ReinterpretCast<U>(), bu = b1.template ReinterpretCast<U>();
        FillBlocks<U>(au, 0, 32, 0);
        FillBlocks<U>(bu, 0, 32, 0);
        PipeBarrier<PIPE_MTE2>();  // the zero fills before the overlapping value fills (same pipe)
        for (uint32_t cb = 0; cb < 2; ++cb) {
            FillBlocks<U>(au, cb * 16 + 0, 1, B::kOne);
            FillBlocks<U>(au, cb * 16 + 1, 1, B::kNegOne);
        }
        FillBlocks<U>(bu, 0, 1, B::kNan);
        FillBlocks<U>(bu, 1, 1, B::kNegNan);
        FillBlocks<U>(bu, 2, 1, B::kInf);
        FillBlocks<U>(bu, 3, 1, B::kNegInf);
        FillBlocks<U>(bu, 4, 1, B::kInf);
        FillBlocks<U>(bu, 16 + 4, 1, B::kNegInf);
        FillBlocks<U>(bu, 5, 1, B::kNegOne);
        FillBlocks<U>(bu, 6, 1, B::kOne);
        kQue_.EnQue(a1);
        kQue_.EnQue(b1);
        a1 = kQue_.DeQue<T>();
        b1 = kQue_.DeQue<T>();
        LocalTensor<float> c = cQue_.AllocTensor<float>();
        for (uint32_t cb = 0; cb < 2; ++cb) {
            LocalTensor<T> a2 = aQue_.AllocTensor<T>();
            LoadData(a2, a1, LoadData2DParams(cb, 1, 1, 0, 0, false, 0));
            aQue_.EnQue(a2);
            LocalTensor<T> b2 = bQue_.AllocTensor<T>();
            LoadData(b2, b1, LoadData2DParams(cb, 1, 1, 0, 0, false, 0));
            bQue_.EnQue(b2);
            a2 = aQue_.DeQue<T>();
            b2 = bQue_.DeQue<T>();
            MmadParams mm;
            mm.m = 16;
            mm.n = 16;
            mm.k = C0;
            mm.cmatrixInitVal = (cb == 0);
            Mmad(c, a2, b2, mm);
            aQue_.FreeTensor(a2);
            bQue_.FreeTensor(b2);
        }
        kQue_.FreeTensor(a1);
        kQue_.FreeTensor(b1);
        cQue_.EnQue(c);
        c = cQue_.DeQue<float>();
        FixpipeParamsV220 fp;
        fp.nSize = 16;
        fp.mSize = kIdxProbeRows;
        fp.srcStride = 16;
        fp.dstStride = 16;
        fp.quantPre = NoQuant;
        fp.reluEn = true;
        Fixpipe(wsProbe_, c, fp);
        cQue_.FreeTensor(c);
        CrossCoreSetFlag<2, PIPE_FIX>(kFlagP);  // the AIVs read the probe too
        PipeBarrier<PIPE_ALL>();                // the probe is in GM before the scalar reads below
        fast_ = ProbeKeepsNaN(wsProbe_, static_cast<float>(C0));
    }

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
        const uint64_t hd = static_cast<uint64_t>(t_.numHeads) * t_.headDim;
        for (uint32_t pc = 0; pc < t_.qPieces; ++pc)  // piece pc at L1 element pc * mp * Di (Nz, mp rows)
            DataCopy(q[pc * mp_ * t_.headDim], qGm_[(static_cast<uint64_t>(pc) * t_.numTokens + token) * hd], p);
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
            LocalTensor<T> b2 = bQue_.AllocTensor<T>();
            LoadData(b2, k, LoadData2DParams(k1Start * N1, k1This * N1, 1, 0, 0, false, 0));
            bQue_.EnQue(b2);
            b2 = bQue_.DeQue<T>();
            // q's pieces (one unless q was split into bf16 pieces): their products with the same keys
            // accumulate into the same L0C tile (bf16 x bf16 products are exact in fp32).
            for (uint32_t pc = 0; pc < t_.qPieces; ++pc) {
                LocalTensor<T> a2 = aQue_.AllocTensor<T>();
                const LocalTensor<T> qp = qL1_[pc * mp_ * Di];
                for (uint32_t m1 = 0; m1 < m1_; ++m1)
                    LoadData(a2[m1 * k1This * FRAC], qp,
                             LoadData2DParams(k1Start * m1_ + m1, k1This, m1_, 0, 0, false, 0));
                aQue_.EnQue(a2);
                a2 = aQue_.DeQue<T>();
                MmadParams mm;
                mm.m = longattn_compat::MmadRows(t_.numHeads);  // m = 1 would be GEMV mode
                mm.n = NB;
                mm.k = kThis;
                mm.cmatrixInitVal = (k0 == 0 && pc == 0);
                Mmad(c, a2, b2, mm);
                aQue_.FreeTensor(a2);
            }
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
        fp.reluEn = fast_;  // the probe showed that the Fixpipe ReLU keeps NaN: relu here, not on the AIVs
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
    AscendC::GlobalTensor<float> wsS_[2], wsProbe_;
    TokenReader reader_;
    IndexerTopkTiling t_{};
    uint32_t core_ = 0, mp_ = 16, m1_ = 1;
    bool fast_ = false;
};

}  // namespace idx
}  // namespace longattn_ascend
