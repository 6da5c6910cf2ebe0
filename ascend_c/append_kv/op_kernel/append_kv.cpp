// SPDX-License-Identifier: Apache-2.0
// append_kv: scatter rows [T, D] into a paged KV pool through a slot mapping (vLLM
// reshape_and_cache). AIV only. Slots outside [0, num_slots) are skipped: such a slot is never
// used to form an address.
//
// Per core: rows [r0, r1). Slot ids are staged in UB in batches (DataCopyPad, MTE2 -> S); for each
// valid slot the row is moved in column tiles through a double-buffered pipeline
//   CopyIn   (MTE2)  DataCopyPad  GM rows -> VECIN
//   Compute  (V)     Cast rows dtype -> pool dtype (via fp32) into VECOUT   [skipped for equal dtypes]
//   CopyOut  (MTE3)  DataCopyPad  VECIN/VECOUT -> GM pool[slot]
// FP8 pools (584-B MODEL1 records) quantise each row on the vector core (fp8_quant.h).
#include "../../common/ascendc_compat.h"
#include "../../common/fp8_quant.h"
#include "../op_host/append_kv_tiling.h"

using namespace AscendC;

namespace longattn_ascend {

template <typename TIn, typename TOut>
class AppendKvKernel {
public:
    __aicore__ inline void Init(GM_ADDR pool, GM_ADDR rows, GM_ADDR slots, const AppendKvTiling& t)
    {
        t_ = t;
        const uint32_t core = static_cast<uint32_t>(GetBlockIdx());
        r0_ = core * t.rowsPerCore;
        r1_ = MinU(t.numRows, r0_ + t.rowsPerCore);
        if (r0_ > r1_) r0_ = r1_;
        rowsGm_.SetGlobalBuffer((__gm__ TIn*)rows, static_cast<uint64_t>(t.numRows) * t.headDim);
        poolGm_.SetGlobalBuffer((__gm__ TOut*)pool, static_cast<uint64_t>(t.numSlots) * t.headDim);
        slotGm_.SetGlobalBuffer((__gm__ int32_t*)slots, t.numRows);
        pipe_.InitBuffer(slotBuf_, t.slotBatch * sizeof(int32_t));
        pipe_.InitBuffer(inQue_, 2, t.chunkElems * sizeof(TIn));
        if constexpr (!IsSameType<TIn, TOut>::value) {
            pipe_.InitBuffer(outQue_, 2, t.chunkElems * sizeof(TOut));
            if constexpr (!IsSameType<TIn, float>::value && !IsSameType<TOut, float>::value)
                pipe_.InitBuffer(f32Buf_, t.chunkElems * 4);
        }
    }

    __aicore__ inline void Process()
    {
        LocalTensor<int32_t> slots = slotBuf_.Get<int32_t>();
        for (uint32_t b0 = r0_; b0 < r1_; b0 += t_.slotBatch) {
            const uint32_t n = MinU(t_.slotBatch, r1_ - b0);
            if (b0 != r0_) {  // the scalar reads of the previous batch are done before MTE2 refills
                longattn_compat::PipeWait<HardEvent::S_MTE2>(pipe_);
            }
            DataCopyPad(slots, slotGm_[b0], DataCopyExtParams(1, n * sizeof(int32_t), 0, 0, 0),
                        DataCopyPadExtParams<int32_t>(false, 0, 0, 0));
            longattn_compat::PipeWait<HardEvent::MTE2_S>(pipe_);
            for (uint32_t i = 0; i < n; ++i) {
                const int32_t slot = slots.GetValue(i);
                if (slot < 0 || static_cast<uint32_t>(slot) >= t_.numSlots) continue;  // never addressed
                for (uint32_t c0 = 0; c0 < t_.headDim; c0 += t_.chunkElems) {
                    const uint32_t len = MinU(t_.chunkElems, t_.headDim - c0);
                    CopyIn(b0 + i, c0, len);
                    Compute(len);
                    CopyOut(static_cast<uint32_t>(slot), c0, len);
                }
                // A later row of this core may name the same slot (duplicates): copy-outs of one MTE pipe
                // to overlapping GM are unordered without a barrier, and a slot must end up holding one
                // row whole.
                PipeBarrier<PIPE_MTE3>();
            }
        }
    }

private:
    __aicore__ inline void CopyIn(uint32_t row, uint32_t c0, uint32_t len)
    {
        LocalTensor<TIn> x = inQue_.AllocTensor<TIn>();
        DataCopyPad(x, rowsGm_[static_cast<uint64_t>(row) * t_.headDim + c0],
                    DataCopyExtParams(1, len * sizeof(TIn), 0, 0, 0), DataCopyPadExtParams<TIn>(false, 0, 0, TIn(0)));
        inQue_.EnQue(x);
    }
    __aicore__ inline void Compute(uint32_t len)
    {
        if constexpr (!IsSameType<TIn, TOut>::value) {
            LocalTensor<TIn> x = inQue_.DeQue<TIn>();
            LocalTensor<TOut> y = outQue_.AllocTensor<TOut>();
            if constexpr (IsSameType<TIn, float>::value) {
                Cast(y, x, RoundMode::CAST_RINT, len);  // fp32 -> bf16/fp16, round to nearest even
            } else if constexpr (IsSameType<TOut, float>::value) {
                Cast(y, x, RoundMode::CAST_NONE, len);  // bf16/fp16 -> fp32 (exact)
            } else {
                LocalTensor<float> f = f32Buf_.Get<float>();
                Cast(f, x, RoundMode::CAST_NONE, len);
                Cast(y, f, RoundMode::CAST_RINT, len);
            }
            outQue_.EnQue(y);
            inQue_.FreeTensor(x);
        }
    }
    __aicore__ inline void CopyOut(uint32_t slot, uint32_t c0, uint32_t len)
    {
        const DataCopyExtParams p(1, len * sizeof(TOut), 0, 0, 0);
        if constexpr (IsSameType<TIn, TOut>::value) {
            // Copy-through: the VECIN queue orders MTE2 before V only (TQue<VECIN> = TQueBind<GM, VECIN>),
            // so MTE3 waits for the copy-in explicitly, and the next copy-in into this buffer (MTE2,
            // after FreeTensor's V_MTE2) waits for the copy-out.
            LocalTensor<TIn> x = inQue_.DeQue<TIn>();
            longattn_compat::PipeWait<HardEvent::MTE2_MTE3>(pipe_);
            DataCopyPad(poolGm_[static_cast<uint64_t>(slot) * t_.headDim + c0], x, p);
            longattn_compat::PipeWait<HardEvent::MTE3_MTE2>(pipe_);
            inQue_.FreeTensor(x);
        } else {
            LocalTensor<TOut> y = outQue_.DeQue<TOut>();
            DataCopyPad(poolGm_[static_cast<uint64_t>(slot) * t_.headDim + c0], y, p);
            outQue_.FreeTensor(y);
        }
    }

    TPipe pipe_;
    TQue<TPosition::VECIN, 2> inQue_;
    TQue<TPosition::VECOUT, 2> outQue_;
    TBuf<TPosition::VECCALC> slotBuf_, f32Buf_;
    GlobalTensor<TIn> rowsGm_;
    GlobalTensor<TOut> poolGm_;
    GlobalTensor<int32_t> slotGm_;
    AppendKvTiling t_{};
    uint32_t r0_ = 0, r1_ = 0;
};

// FP8 MODEL1 pool: each row becomes one 584-B record (576 data bytes in the page's data area,
// 8 scale bytes in its scale area), quantised on the vector core.
template <typename TIn>
class AppendKvFp8Kernel {
public:
    __aicore__ inline void Init(GM_ADDR pool, GM_ADDR rows, GM_ADDR slots, const AppendKvTiling& t)
    {
        t_ = t;
        const uint32_t core = static_cast<uint32_t>(GetBlockIdx());
        r0_ = core * t.rowsPerCore;
        r1_ = MinU(t.numRows, r0_ + t.rowsPerCore);
        if (r0_ > r1_) r0_ = r1_;
        rowsGm_.SetGlobalBuffer((__gm__ TIn*)rows, static_cast<uint64_t>(t.numRows) * kFp8HeadDim);
        poolGm_.SetGlobalBuffer((__gm__ uint8_t*)pool, static_cast<uint64_t>(t.numSlots / t.pageSize) * t.pageBytes);
        slotGm_.SetGlobalBuffer((__gm__ int32_t*)slots, t.numRows);
        pipe_.InitBuffer(slotBuf_, t.slotBatch * sizeof(int32_t));
        pipe_.InitBuffer(inQue_, 2, kFp8HeadDim * sizeof(TIn));
        pipe_.InitBuffer(outQue_, 2, Fp8Quantizer::kRecordUbBytes);
        quant_.Init(pipe_);
    }

    __aicore__ inline void Process()
    {
        LocalTensor<int32_t> slots = slotBuf_.Get<int32_t>();
        for (uint32_t b0 = r0_; b0 < r1_; b0 += t_.slotBatch) {
            const uint32_t n = MinU(t_.slotBatch, r1_ - b0);
            if (b0 != r0_) {
                longattn_compat::PipeWait<HardEvent::S_MTE2>(pipe_);
            }
            DataCopyPad(slots, slotGm_[b0], DataCopyExtParams(1, n * sizeof(int32_t), 0, 0, 0),
                        DataCopyPadExtParams<int32_t>(false, 0, 0, 0));
            longattn_compat::PipeWait<HardEvent::MTE2_S>(pipe_);
            for (uint32_t i = 0; i < n; ++i) {
                const int32_t slot = slots.GetValue(i);
                if (slot < 0 || static_cast<uint32_t>(slot) >= t_.numSlots) continue;
                LocalTensor<TIn> x = inQue_.AllocTensor<TIn>();
                DataCopy(x, rowsGm_[static_cast<uint64_t>(b0 + i) * kFp8HeadDim], kFp8HeadDim);
                inQue_.EnQue(x);
                x = inQue_.DeQue<TIn>();
                LocalTensor<uint8_t> rec = outQue_.AllocTensor<uint8_t>();
                quant_.Quantize(rec, x);
                outQue_.EnQue(rec);
                inQue_.FreeTensor(x);
                rec = outQue_.DeQue<uint8_t>();
                quant_.Store(poolGm_, rec, static_cast<uint32_t>(slot), t_.pageSize, t_.pageBytes);
                PipeBarrier<PIPE_MTE3>();  // as above: a duplicate slot later in this core's rows
                outQue_.FreeTensor(rec);
            }
        }
    }

private:
    TPipe pipe_;
    TQue<TPosition::VECIN, 2> inQue_;
    TQue<TPosition::VECOUT, 2> outQue_;
    TBuf<TPosition::VECCALC> slotBuf_;
    Fp8Quantizer quant_;
    GlobalTensor<TIn> rowsGm_;
    GlobalTensor<uint8_t> poolGm_;
    GlobalTensor<int32_t> slotGm_;
    AppendKvTiling t_{};
    uint32_t r0_ = 0, r1_ = 0;
};

template <typename TIn, typename TOut>
__aicore__ inline void RunAppendKv(GM_ADDR pool, GM_ADDR rows, GM_ADDR slots, const AppendKvTiling& t)
{
    AppendKvKernel<TIn, TOut> op;
    op.Init(pool, rows, slots, t);
    op.Process();
}
template <typename TIn>
__aicore__ inline void RunAppendKvPool(GM_ADDR pool, GM_ADDR rows, GM_ADDR slots, const AppendKvTiling& t)
{
    if (t.poolDtype == kDtF32) RunAppendKv<TIn, float>(pool, rows, slots, t);
    if (t.poolDtype == kDtBF16) RunAppendKv<TIn, bfloat16_t>(pool, rows, slots, t);
    if (t.poolDtype == kDtF16) RunAppendKv<TIn, half>(pool, rows, slots, t);
    if (t.poolDtype == kDtFP8Record) {
        AppendKvFp8Kernel<TIn> op;
        op.Init(pool, rows, slots, t);
        op.Process();
    }
}

}  // namespace longattn_ascend

// pool: float pool [num_slots, D] or FP8 pool bytes [num_pages, page_bytes]; rows [T, D];
// slots [T] int32; tiling: AppendKvTiling.
extern "C" __global__ __aicore__ void append_kv(GM_ADDR pool, GM_ADDR rows, GM_ADDR slots, GM_ADDR workspace,
                                                GM_ADDR tiling)
{
    (void)workspace;
    KERNEL_TASK_TYPE_DEFAULT(KERNEL_TYPE_AIV_ONLY);
    const auto t = longattn_compat::ReadTiling<longattn_ascend::AppendKvTiling>(tiling);
    if (t.rowsDtype == longattn_ascend::kDtF32) longattn_ascend::RunAppendKvPool<float>(pool, rows, slots, t);
    if (t.rowsDtype == longattn_ascend::kDtBF16) longattn_ascend::RunAppendKvPool<bfloat16_t>(pool, rows, slots, t);
    if (t.rowsDtype == longattn_ascend::kDtF16) longattn_ascend::RunAppendKvPool<half>(pool, rows, slots, t);
}
