// SPDX-License-Identifier: Apache-2.0
// sparse_attention, cube side (AIC): per block of NB = blockKeys (64 / 128 / 256) gathered keys
//   C1  S = Q . K^T   Q [Mg, D] (L1, Nz) x K [NB, D] (L1, Nz) sliced over D (kTile), accumulated in L0C,
//                     Fixpipe -> wsS[buf]; CrossCoreSetFlag S
//   C2  O = P . V     P [Mg, NB] (from wsP[buf]) x V: the same L1 K tile (16-bit: fractal-transposed
//                     LoadData) or the AIV-transposed V^T tile (fp32, the cube cannot transpose 32-bit
//                     fractals), sliced over D (dChunk), Fixpipe -> wsO[buf]; CrossCoreSetFlag O
// C1 of block b+1 is issued before C2 of block b, so the cube computes while the vector cores run
// the softmax of block b. L1 K tiles, L0A/L0B/L0C are double-buffered TQues. K (and fp32 V^T) come from
// wsKv / wsVt area seq % 2, or area b for a token kept by the shared gather (KeptRows: its later head
// groups read the rows its first group gathered).
#pragma once

#include "sparse_attention_common.h"

namespace longattn_ascend {
namespace sa {

template <typename T>
class SparseAttentionCube {
public:
    static constexpr uint32_t C0 = 32 / sizeof(T);    // elements per 32-B fractal row
    static constexpr uint32_t FRAC = 512 / sizeof(T);  // elements per 512-B fractal

    __aicore__ inline void Init(GM_ADDR q, GM_ADDR idx0, GM_ADDR len0, GM_ADDR idx1, GM_ADDR len1, GM_ADDR ws,
                                const SparseAttentionTiling& t)
    {
        t_ = t;
        core_ = static_cast<uint32_t>(AscendC::GetBlockIdx());
        cursor_.Init(idx0, len0, idx1, len1, t_);
        const uint32_t D = t.headDim, mg = t.headsPerTask, NB = t.blockKeys;
        nb_ = NB;
        n1_ = NB / 16;
        kb1_ = NB / C0;
        mp_ = AlignUpU(mg, 16);
        m1_ = mp_ / 16;
        qGm_.SetGlobalBuffer((__gm__ T*)q, static_cast<uint64_t>(t.numTokens) * t.numHeads * D);
        __gm__ uint8_t* base = ws + static_cast<uint64_t>(core_) * t.wsPerCore;
        wsKv_.SetGlobalBuffer((__gm__ T*)(base + t.wsKvOff), t.kvAreas * NB * D);
        wsVt_.SetGlobalBuffer((__gm__ float*)(base + t.wsVtOff), sizeof(T) == 4 ? t.kvAreas * D * NB : 0);
        for (uint32_t b = 0; b < 2; ++b) {
            wsS_[b].SetGlobalBuffer((__gm__ float*)(base + t.wsSOff) + b * mg * NB, mg * NB);
            wsP_[b].SetGlobalBuffer((__gm__ T*)(base + t.wsPOff) + b * mg * NB, mg * NB);
            wsO_[b].SetGlobalBuffer((__gm__ float*)(base + t.wsOOff) + b * mg * D, mg * D);
        }
        pipe_.InitBuffer(qQue_, 1, mp_ * D * sizeof(T));
        pipe_.InitBuffer(kQue_, 2, NB * D * sizeof(T));
        pipe_.InitBuffer(pQue_, 1, mp_ * NB * sizeof(T));
        if constexpr (sizeof(T) == 4) pipe_.InitBuffer(vtQue_, 1, D * NB * sizeof(float));
        pipe_.InitBuffer(aQue_, 2, mp_ * MaxU(t.kTile, NB) * sizeof(T));
        pipe_.InitBuffer(bQue_, 2, MaxU(t.kTile * NB, NB * t.dChunk) * sizeof(T));
        pipe_.InitBuffer(cQue_, 2, mp_ * MaxU(NB, t.dChunk) * sizeof(float));
    }

    __aicore__ inline void Process()
    {
        uint32_t seq = 0;  // block sequence number of this core (same on its two AIVs)
        // Units: tasks, or (shareGroups) tokens whose head groups run back to back (sparse_attention_common.h).
        const uint32_t per = t_.shareGroups ? t_.headGroups : 1u, units = t_.numTasks / per;
        for (uint32_t u = core_; u < units; u += t_.blockDim) {
            uint32_t nv = 0;
            for (uint32_t j = 0; j < per; ++j) {
                const Task tk = MakeTask(u * per + j, t_);
                if (j == 0) nv = cursor_.CountValid(tk.token);
                if (nv == 0) continue;
                const bool kept = KeptRows(t_, nv);  // blocks at areas 0, 1, ... (else seq % 2)
                const uint32_t nBlk = CeilDivU(nv, nb_);
                LoadQ(tk);
                ComputeScores(seq, kept ? 0 : seq % 2, BlockKeys(0, nv), tk.heads);
                for (uint32_t b = 0; b < nBlk; ++b, ++seq) {
                    if (b + 1 < nBlk)
                        ComputeScores(seq + 1, kept ? b + 1 : (seq + 1) % 2, BlockKeys(b + 1, nv), tk.heads);
                    ComputeValues(seq, kept ? b : seq % 2, BlockKeys(b, nv), tk.heads);
                }
                qQue_.FreeTensor(qL1_);
            }
        }
    }

private:
    __aicore__ inline uint32_t BlockKeys(uint32_t b, uint32_t nv) const { return MinU(nb_, nv - b * nb_); }

    __aicore__ inline void LoadQ(const Task& tk)
    {
        using namespace AscendC;
        const uint32_t D = t_.headDim;
        LocalTensor<T> q = qQue_.AllocTensor<T>();
        Nd2NzParams p;
        p.ndNum = 1;
        p.nValue = tk.heads;
        p.dValue = D;
        p.srcDValue = D;
        p.dstNzC0Stride = mp_;
        p.dstNzNStride = 1;
        DataCopy(q, qGm_[(static_cast<uint64_t>(tk.token) * t_.numHeads + tk.head0) * D], p);
        qQue_.EnQue(q);
        qL1_ = qQue_.DeQue<T>();
    }

    // C1: S[heads, NB] = Q . K^T for block `seq` (nb valid keys in wsKv area `area`; the K tile is
    // zero-padded).
    __aicore__ inline void ComputeScores(uint32_t seq, uint32_t area, uint32_t nb, uint32_t heads)
    {
        using namespace AscendC;
        const uint32_t buf = seq % 2, D = t_.headDim, NB = nb_, N1 = n1_;
        CrossCoreWaitFlag(static_cast<uint16_t>(kFlagKv + buf));
        LocalTensor<T> k = kQue_.AllocTensor<T>();
        if (nb < NB) {  // zero the padded keys; the gather below is another MTE2 write of the same tile
            longattn_compat::InitConstValue(k, InitConstValueParams<T>(1, NB * D * sizeof(T) / 32, 0, T(0)));
            PipeBarrier<PIPE_MTE2>();
        }
        Nd2NzParams p;
        p.ndNum = 1;
        p.nValue = nb;
        p.dValue = D;
        p.srcDValue = D;
        p.dstNzC0Stride = NB;
        p.dstNzNStride = 1;
        DataCopy(k, wsKv_[static_cast<uint64_t>(area) * NB * D], p);
        kQue_.EnQue(k);
        kL1_[buf] = kQue_.DeQue<T>();

        LocalTensor<float> c = cQue_.AllocTensor<float>();
        for (uint32_t k0 = 0; k0 < D; k0 += t_.kTile) {
            const uint32_t kThis = MinU(t_.kTile, D - k0), k1This = kThis / C0, k1Start = k0 / C0;
            LocalTensor<T> a2 = aQue_.AllocTensor<T>();
            for (uint32_t m1 = 0; m1 < m1_; ++m1)  // Nz (L1) -> Zz (L0A), one fractal row per call
                LoadData(a2[m1 * k1This * FRAC], qL1_,
                         LoadData2DParams(k1Start * m1_ + m1, k1This, m1_, 0, 0, false, 0));
            aQue_.EnQue(a2);
            LocalTensor<T> b2 = bQue_.AllocTensor<T>();  // keys as n x k: Nz fractals are already Zn
            LoadData(b2, kL1_[buf], LoadData2DParams(k1Start * N1, k1This * N1, 1, 0, 0, false, 0));
            bQue_.EnQue(b2);
            a2 = aQue_.DeQue<T>();
            b2 = bQue_.DeQue<T>();
            MmadParams mm;
            mm.m = longattn_compat::MmadRows(heads);  // m = 1 would be GEMV mode
            mm.n = NB;
            mm.k = kThis;
            mm.cmatrixInitVal = (k0 == 0);
            Mmad(c, a2, b2, mm);
            aQue_.FreeTensor(a2);
            bQue_.FreeTensor(b2);
        }
        cQue_.EnQue(c);
        c = cQue_.DeQue<float>();
        FixpipeParamsV220 fp;
        fp.nSize = NB;
        fp.mSize = heads;
        fp.srcStride = AlignUpU(heads, 16);  // L0C column-block stride follows the Mmad m
        fp.dstStride = NB;
        fp.quantPre = NoQuant;
        Fixpipe(wsS_[buf], c, fp);
        cQue_.FreeTensor(c);
        CrossCoreSetFlag<2, PIPE_FIX>(static_cast<uint16_t>(kFlagS + buf));
    }

    // C2: O[heads, D] = P . V for block `seq` (fp32: V^T from wsVt area `area`).
    __aicore__ inline void ComputeValues(uint32_t seq, uint32_t area, uint32_t nb, uint32_t heads)
    {
        using namespace AscendC;
        const uint32_t buf = seq % 2, D = t_.headDim, NB = nb_, N1 = n1_, KB1 = kb1_;
        CrossCoreWaitFlag(static_cast<uint16_t>(kFlagP + buf));
        LocalTensor<T> pL1 = pQue_.AllocTensor<T>();
        Nd2NzParams p;
        p.ndNum = 1;
        p.nValue = heads;
        p.dValue = NB;
        p.srcDValue = NB;
        p.dstNzC0Stride = mp_;
        p.dstNzNStride = 1;
        DataCopy(pL1, wsP_[buf], p);
        pQue_.EnQue(pL1);
        LocalTensor<float> vt;
        if constexpr (sizeof(T) == 4) {  // V^T [D, NB] written by the AIVs; padding keys zeroed here
            vt = vtQue_.AllocTensor<float>();
            if (nb < NB) {  // as above: zero fill and copy are two MTE2 writes of the tile
                longattn_compat::InitConstValue(vt, InitConstValueParams<float>(1, D * NB * 4 / 32, 0, 0.0f));
                PipeBarrier<PIPE_MTE2>();
            }
            Nd2NzParams v;
            v.ndNum = 1;
            v.nValue = D;
            v.dValue = nb;
            v.srcDValue = NB;
            v.dstNzC0Stride = D;
            v.dstNzNStride = 1;
            DataCopy(vt, wsVt_[static_cast<uint64_t>(area) * D * NB], v);
            vtQue_.EnQue(vt);
            vt = vtQue_.DeQue<float>();
        }
        pL1 = pQue_.DeQue<T>();
        LocalTensor<T> a2 = aQue_.AllocTensor<T>();
        for (uint32_t m1 = 0; m1 < m1_; ++m1)
            LoadData(a2[m1 * KB1 * FRAC], pL1, LoadData2DParams(m1, KB1, m1_, 0, 0, false, 0));
        aQue_.EnQue(a2);
        a2 = aQue_.DeQue<T>();
        for (uint32_t d0 = 0; d0 < D; d0 += t_.dChunk) {
            const uint32_t dThis = MinU(t_.dChunk, D - d0), n1This = dThis / 16;
            LocalTensor<T> b2 = bQue_.AllocTensor<T>();
            if constexpr (sizeof(T) == 2) {
                // V = K tile [NB keys, D]: fractal (key block k1, D block) sits at (d/16)*N1 + k1 in L1;
                // transposing each 16x16 fractal gives the Zn layout of V as k x n.
                for (uint32_t k1 = 0; k1 < KB1; ++k1)
                    LoadData(b2[k1 * n1This * FRAC], kL1_[buf],
                             LoadData2DParams((d0 / 16) * N1 + k1, n1This, N1, 0, 0, true, 0));
            } else {
                // V^T [D, NB] Nz: fractal (D block, key block k1) at k1*(D/16) + d/16 is already Zn.
                for (uint32_t k1 = 0; k1 < KB1; ++k1)
                    LoadData(b2[k1 * n1This * FRAC], vt.template ReinterpretCast<T>(),
                             LoadData2DParams(k1 * (D / 16) + d0 / 16, n1This, 1, 0, 0, false, 0));
            }
            bQue_.EnQue(b2);
            b2 = bQue_.DeQue<T>();
            LocalTensor<float> c = cQue_.AllocTensor<float>();
            MmadParams mm;
            mm.m = longattn_compat::MmadRows(heads);  // m = 1 would be GEMV mode
            mm.n = dThis;
            mm.k = NB;
            mm.cmatrixInitVal = true;
            Mmad(c, a2, b2, mm);
            bQue_.FreeTensor(b2);
            cQue_.EnQue(c);
            c = cQue_.DeQue<float>();
            FixpipeParamsV220 fp;
            fp.nSize = dThis;
            fp.mSize = heads;
            fp.srcStride = AlignUpU(heads, 16);  // L0C column-block stride follows the Mmad m
            fp.dstStride = D;
            fp.quantPre = NoQuant;
            Fixpipe(wsO_[buf][d0], c, fp);
            cQue_.FreeTensor(c);
        }
        aQue_.FreeTensor(a2);
        pQue_.FreeTensor(pL1);
        if constexpr (sizeof(T) == 4) vtQue_.FreeTensor(vt);
        kQue_.FreeTensor(kL1_[buf]);
        CrossCoreSetFlag<2, PIPE_FIX>(static_cast<uint16_t>(kFlagO + buf));
    }

    AscendC::TPipe pipe_;
    AscendC::TQue<AscendC::TPosition::A1, 1> qQue_, pQue_;
    AscendC::TQue<AscendC::TPosition::B1, 2> kQue_;
    AscendC::TQue<AscendC::TPosition::B1, 1> vtQue_;
    AscendC::TQue<AscendC::TPosition::A2, 2> aQue_;
    AscendC::TQue<AscendC::TPosition::B2, 2> bQue_;
    AscendC::TQue<AscendC::TPosition::CO1, 2> cQue_;
    AscendC::LocalTensor<T> qL1_, kL1_[2];
    AscendC::GlobalTensor<T> qGm_, wsKv_, wsP_[2];
    AscendC::GlobalTensor<float> wsVt_, wsS_[2], wsO_[2];
    KeyCursor cursor_;
    SparseAttentionTiling t_{};
    uint32_t core_ = 0, mp_ = 16, m1_ = 1, nb_ = kSaBlockKeys, n1_ = kSaBlockKeys / 16, kb1_ = kSaBlockKeys / C0;
};

}  // namespace sa
}  // namespace longattn_ascend
