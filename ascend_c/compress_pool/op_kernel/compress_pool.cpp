// SPDX-License-Identifier: Apache-2.0
// compress_pool: the stateless KV-compressor pooling of DeepSeek-V4 (vector cores only). Entries
// [S / ratio, d] fp32 from values a and scores b [S, c * d] (c = 2 with overlap):
//   overlap:    entry j pools 2 * ratio slots per channel k: slot i < ratio is token (j - 1) * ratio + i,
//               column k (half A of the previous block; absent for entry 0), slot i >= ratio is token
//               (j - 1) * ratio + i, column d + k (half B of its own block);
//   no overlap: entry j pools the ratio tokens j * ratio + i, column k.
// Semantics: python/longattn/ops/compress/README.md (reference.py), IEEE softmax per channel.
//
// Tasks (entry j, channel tile [c0, c0 + w)) in a contiguous range per AIV core (op_host tiling). For
// each task, the entry's present slots go in chunks of up to R = chunkRows slots through a
// double-buffered pipeline; the chunk sequence runs across the core's tasks, so the next chunk's
// CopyIn (of the same or the next task) is issued before the current chunk's Compute:
//   CopyIn   (MTE2)  DataCopyPad of the chunk's a rows and b rows of the tile (blockCount = rows,
//                    GM stride = row pitch - w; one copy per tensor and block half: a chunk that
//                    straddles slot ratio of an overlapping entry takes two) -> VECIN, rows padded to
//                    32 B (any w, odd ones included)
//   Compute  (V)     bf16 / fp16: Cast to fp32 (one call per tensor); the online softmax update of
//                    common/softmax_pool.h over the chunk's rows (shared with compress_kv)
//   CopyOut  (MTE3)  after the task's last chunk: entry = acc / s (0 where no score > -inf) -> VECOUT
//                    -> DataCopyPad to out[j, c0 : c0 + w] (double-buffered)
// Every element of out belongs to exactly one task, and every task writes its tile.
#include "../../common/ascendc_compat.h"
#include "../../common/softmax_pool.h"
#include "../op_host/compress_pool_tiling.h"

using namespace AscendC;

namespace longattn_ascend {

template <typename TIn>
class CompressPoolKernel {
public:
    __aicore__ inline void Init(GM_ADDR a, GM_ADDR b, GM_ADDR out, const CompressPoolTiling& t)
    {
        t_ = t;
        const uint64_t core = static_cast<uint64_t>(GetBlockIdx());
        task0_ = static_cast<uint32_t>(core * t.numTasks / t.blockDim);
        task1_ = static_cast<uint32_t>((core + 1) * t.numTasks / t.blockDim);
        aGm_.SetGlobalBuffer((__gm__ TIn*)a, Span(t.aPitch));
        bGm_.SetGlobalBuffer((__gm__ TIn*)b, Span(t.bPitch));
        outGm_.SetGlobalBuffer((__gm__ float*)out, static_cast<uint64_t>(t.numEntries) * t.dim);
        rowElems_ = AlignUpU(t.tileDim, kBlockElems);
        const uint32_t R = t.chunkRows, dV = AlignUpU(t.tileDim, 64);
        bBase_ = R * rowElems_;
        pipe_.InitBuffer(inQue_, 2, AlignUpU(2 * R * rowElems_ * sizeof(TIn), 32));  // a rows | b rows
        if constexpr (sizeof(TIn) != 4) pipe_.InitBuffer(workBuf_, AlignUpU(2 * R * rowElems_ * 4, 32));
        pipe_.InitBuffer(vecBuf_, AlignUpU(6 * dV * 4, 32));
        pipe_.InitBuffer(maskBuf_, AlignUpU(dV / 8, 32));
        pipe_.InitBuffer(outQue_, 2, AlignUpU(t.tileDim * 4, 32));
        LocalTensor<float> v = vecBuf_.Get<float>();
        pool_.Bind(v[0], v[dV], v[2 * dV], v[3 * dV], v[4 * dV], v[5 * dV], maskBuf_.Get<uint8_t>());
    }

    __aicore__ inline void Process()
    {
        if (task0_ >= task1_) return;
        Chunk cur{};
        Start(task0_, cur);
        CopyIn(cur);
        bool have = true;
        while (have) {
            Chunk nxt = cur;
            const bool more = Advance(nxt);
            if (more) CopyIn(nxt);  // prefetch: MTE2 of the next chunk overlaps this chunk's Compute
            if (cur.s0 == cur.first) pool_.Reset(cur.w, AlignUpU(cur.w, 64));
            Compute(cur);
            if (cur.s1 == cur.last) CopyOut(cur);
            cur = nxt;
            have = more;
        }
    }

private:
    static constexpr uint32_t kBlockElems = 32 / sizeof(TIn);  // elements per 32-B block

    // Slots [s0, s1) of task `task` = (entry j, tile [c0, c0 + w)); the entry's present slots are
    // [first, last).
    struct Chunk {
        uint32_t task, j, c0, w, first, last, s0, s1;
    };

    __aicore__ inline uint64_t Span(uint32_t pitch) const
    {
        return t_.numTokens == 0 ? 0 : static_cast<uint64_t>(t_.numTokens - 1) * pitch + t_.width;
    }

    __aicore__ inline void Start(uint32_t task, Chunk& c) const
    {
        c.task = task;
        c.j = task / t_.numTiles;
        c.c0 = (task % t_.numTiles) * t_.tileDim;
        c.w = MinU(t_.tileDim, t_.dim - c.c0);
        c.first = (t_.overlap != 0 && c.j == 0) ? t_.ratio : 0u;  // block -1 is absent
        c.last = (t_.overlap != 0 ? 2u : 1u) * t_.ratio;
        c.s0 = c.first;
        c.s1 = c.first + MinU(t_.chunkRows, c.last - c.first);
    }

    // The chunk after c (false: c was the core's last).
    __aicore__ inline bool Advance(Chunk& c) const
    {
        if (c.s1 < c.last) {
            c.s0 = c.s1;
            c.s1 = c.s0 + MinU(t_.chunkRows, c.last - c.s0);
            return true;
        }
        if (c.task + 1 >= task1_) return false;
        Start(c.task + 1, c);
        return true;
    }

    // Slots [i0, i1) (one block half) of chunk c into rows i0 - c.s0 .. of the VECIN tile.
    __aicore__ inline void CopyRows(const LocalTensor<TIn>& x, const Chunk& c, uint32_t i0, uint32_t i1,
                                    uint32_t stride)
    {
        const uint32_t rows = i1 - i0, ratio = t_.ratio;
        // Token of slot i: (j - 1) * ratio + i with overlap (i >= ratio when j = 0), j * ratio + i without.
        const uint64_t tok = static_cast<uint64_t>(c.j) * ratio + i0 - (t_.overlap != 0 ? ratio : 0u);
        const uint32_t col = (t_.overlap != 0 && i0 >= ratio) ? t_.dim + c.c0 : c.c0;
        const DataCopyPadExtParams<TIn> pad(false, 0, 0, TIn(0));
        const uint32_t bytes = c.w * sizeof(TIn);
        // GM gaps between rows (bytes); one-row copies have none (the host keeps pitch * size < 2^32
        // whenever S > 1).
        const uint32_t ga = rows > 1 ? (t_.aPitch - c.w) * sizeof(TIn) : 0u;
        const uint32_t gb = rows > 1 ? (t_.bPitch - c.w) * sizeof(TIn) : 0u;
        const uint32_t r = (i0 - c.s0) * stride;
        DataCopyPad(x[r], aGm_[tok * t_.aPitch + col], DataCopyExtParams(static_cast<uint16_t>(rows), bytes, ga, 0, 0),
                    pad);
        DataCopyPad(x[bBase_ + r], bGm_[tok * t_.bPitch + col],
                    DataCopyExtParams(static_cast<uint16_t>(rows), bytes, gb, 0, 0), pad);
    }

    __aicore__ inline void CopyIn(const Chunk& c)
    {
        const uint32_t stride = AlignUpU(c.w, kBlockElems);  // a row of w elements padded to 32 B
        LocalTensor<TIn> x = inQue_.AllocTensor<TIn>();
        if (t_.overlap != 0 && c.s0 < t_.ratio && c.s1 > t_.ratio) {  // straddles the two block halves
            CopyRows(x, c, c.s0, t_.ratio, stride);
            CopyRows(x, c, t_.ratio, c.s1, stride);
        } else {
            CopyRows(x, c, c.s0, c.s1, stride);
        }
        inQue_.EnQue(x);
    }

    __aicore__ inline void Compute(const Chunk& c)
    {
        const uint32_t rows = c.s1 - c.s0, stride = AlignUpU(c.w, kBlockElems);
        const uint32_t span = (rows - 1) * stride + c.w;
        LocalTensor<TIn> x = inQue_.DeQue<TIn>();
        if constexpr (sizeof(TIn) == 4) {  // pooled in place
            LocalTensor<float> av = x.template ReinterpretCast<float>();
            pool_.Accumulate(av, av[bBase_], rows, stride, c.w);
        } else {  // rows stay `stride` apart in fp32 (stride is a multiple of 16: 64-B aligned rows)
            LocalTensor<float> av = workBuf_.Get<float>(), bv = av[bBase_];
            Cast(av, x, RoundMode::CAST_NONE, span);
            Cast(bv, x[bBase_], RoundMode::CAST_NONE, span);
            pool_.Accumulate(av, bv, rows, stride, c.w);
        }
        inQue_.FreeTensor(x);
    }

    __aicore__ inline void CopyOut(const Chunk& c)
    {
        LocalTensor<float> y = outQue_.AllocTensor<float>();
        pool_.Result(y, c.w, AlignUpU(c.w, 64));
        outQue_.EnQue(y);
        y = outQue_.DeQue<float>();
        DataCopyPad(outGm_[static_cast<uint64_t>(c.j) * t_.dim + c.c0], y, DataCopyExtParams(1, c.w * 4, 0, 0, 0));
        outQue_.FreeTensor(y);
    }

    TPipe pipe_;
    TQue<TPosition::VECIN, 2> inQue_;
    TQue<TPosition::VECOUT, 2> outQue_;
    TBuf<TPosition::VECCALC> workBuf_, vecBuf_, maskBuf_;
    SoftmaxPool pool_;
    GlobalTensor<TIn> aGm_, bGm_;
    GlobalTensor<float> outGm_;
    CompressPoolTiling t_{};
    uint32_t task0_ = 0, task1_ = 0, rowElems_ = 8, bBase_ = 0;
};

template <typename TIn>
__aicore__ inline void RunCompressPool(GM_ADDR a, GM_ADDR b, GM_ADDR out, const CompressPoolTiling& t)
{
    CompressPoolKernel<TIn> op;
    op.Init(a, b, out, t);
    op.Process();
}

}  // namespace longattn_ascend

// a, b: [S, W] rows aPitch / bPitch elements apart (one dtype); out: [S / ratio, d] fp32;
// tiling: CompressPoolTiling.
extern "C" __global__ __aicore__ void compress_pool(GM_ADDR a, GM_ADDR b, GM_ADDR out, GM_ADDR workspace,
                                                    GM_ADDR tiling)
{
    (void)workspace;
    KERNEL_TASK_TYPE_DEFAULT(KERNEL_TYPE_AIV_ONLY);
    const auto t = longattn_compat::ReadTiling<longattn_ascend::CompressPoolTiling>(tiling);
    if (t.inDtype == longattn_ascend::kDtF32) longattn_ascend::RunCompressPool<float>(a, b, out, t);
    if (t.inDtype == longattn_ascend::kDtBF16) longattn_ascend::RunCompressPool<bfloat16_t>(a, b, out, t);
    if (t.inDtype == longattn_ascend::kDtF16) longattn_ascend::RunCompressPool<half>(a, b, out, t);
}
