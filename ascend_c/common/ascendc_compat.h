// SPDX-License-Identifier: Apache-2.0
// The single switch header every longattn Ascend C kernel includes.
//
//   -DLONGATTN_ASCEND_EMU  -> the clean-room CPU emulator (ascend_c/emu), compiled with g++;
//   otherwise              -> the real toolchain header "kernel_operator.h" (bisheng, CANN).
//
// API level: kernels are written against CANN 8.5.0 names (the level triton-ascend 3.2.0 pins).
// Calls renamed in later CANN releases go through the aliases in namespace longattn_compat below,
// so that a newer toolkit only needs LONGATTN_CANN_VERSION bumped here.
#pragma once

// CANN API level, encoded as major*10000 + minor*100 + patch.
#ifndef LONGATTN_CANN_VERSION
#define LONGATTN_CANN_VERSION 80500
#endif

#if defined(LONGATTN_ASCEND_EMU)
#include "../emu/ascendc_emu.h"
#else
#include "kernel_operator.h"
#endif

namespace longattn_compat {

// The tiling of a kernel-direct-call build (ascendc_library + ACLRT_LAUNCH_KERNEL): a POD struct the
// host copied to device memory, read word by word through its __gm__ pointer by the scalar unit.
// (GET_TILING_DATA* belong to the op-project flow with registered tiling; the emulator refuses them.)
template <typename T>
__aicore__ inline T ReadTiling(GM_ADDR tiling)
{
    static_assert(sizeof(T) % sizeof(uint32_t) == 0, "tiling structs are whole 32-bit words");
    T t;
    uint32_t* dst = reinterpret_cast<uint32_t*>(&t);
    const __gm__ uint32_t* src = reinterpret_cast<const __gm__ uint32_t*>(tiling);
    for (uint32_t i = 0; i < sizeof(T) / sizeof(uint32_t); ++i) dst[i] = src[i];
    return t;
}

// One SetFlag / WaitFlag pair (evt's source pipe finishes before its destination pipe goes on) with an
// event id from the TPipe's pool: a hand-picked EVENT_IDn can be an id one of the TPipe's queues holds
// (undefined on hardware, can hang; the emulator refuses it on events the queues use).
template <AscendC::HardEvent evt>
__aicore__ inline void PipeWait(AscendC::TPipe& pipe)
{
    const AscendC::TEventID id = pipe.template FetchEventID<evt>();
    AscendC::SetFlag<evt>(id);
    AscendC::WaitFlag<evt>(id);
}

// Mmad's m for a left matrix of `rows` rows kept in the Zz fractal layout: m = 1 switches Mmad to GEMV
// mode on A2/A3 (L0A read as one ND row; page *Mmad*, constraints), so one row is computed as a whole
// 16-row fractal (the same cube work; output rows 1..15 are not read).
__aicore__ inline uint16_t MmadRows(uint32_t rows) { return static_cast<uint16_t>(rows == 1 ? 16 : rows); }

// CompareScalar (8.5) -> Compares (9.0).
template <typename T, typename U>
__aicore__ inline void CompareScalar(const AscendC::LocalTensor<U>& dst, const AscendC::LocalTensor<T>& src0,
                                     const T src1Scalar, AscendC::CMPMODE cmpMode, uint32_t count)
{
#if LONGATTN_CANN_VERSION >= 90000 && !defined(LONGATTN_ASCEND_EMU)
    AscendC::Compares(dst, src0, src1Scalar, cmpMode, count);
#else
    AscendC::CompareScalar(dst, src0, src1Scalar, cmpMode, count);
#endif
}

// WholeReduceMax/Sum (<= 9.0) -> ReduceRepeat<ReduceType::MAX/SUM> (9.1).
template <typename T>
__aicore__ inline void WholeReduceMax(const AscendC::LocalTensor<T>& dst, const AscendC::LocalTensor<T>& src,
                                      int32_t mask, int32_t repeatTime, int32_t dstRepStride, int32_t srcBlkStride,
                                      int32_t srcRepStride,
                                      AscendC::ReduceOrder order = AscendC::ReduceOrder::ORDER_VALUE_INDEX)
{
#if LONGATTN_CANN_VERSION >= 90100 && !defined(LONGATTN_ASCEND_EMU)
    AscendC::ReduceRepeat<AscendC::ReduceType::MAX>(dst, src, mask, repeatTime, dstRepStride, srcBlkStride,
                                                    srcRepStride, order);
#else
    AscendC::WholeReduceMax(dst, src, mask, repeatTime, dstRepStride, srcBlkStride, srcRepStride, order);
#endif
}
template <typename T>
__aicore__ inline void WholeReduceSum(const AscendC::LocalTensor<T>& dst, const AscendC::LocalTensor<T>& src,
                                      int32_t mask, int32_t repeatTime, int32_t dstRepStride, int32_t srcBlkStride,
                                      int32_t srcRepStride)
{
#if LONGATTN_CANN_VERSION >= 90100 && !defined(LONGATTN_ASCEND_EMU)
    AscendC::ReduceRepeat<AscendC::ReduceType::SUM>(dst, src, mask, repeatTime, dstRepStride, srcBlkStride,
                                                    srcRepStride);
#else
    AscendC::WholeReduceSum(dst, src, mask, repeatTime, dstRepStride, srcBlkStride, srcRepStride);
#endif
}

// InitConstValue (8.5) -> Fill (9.0).
template <typename T>
__aicore__ inline void InitConstValue(const AscendC::LocalTensor<T>& dst, const AscendC::InitConstValueParams<T>& p)
{
#if LONGATTN_CANN_VERSION >= 90000 && !defined(LONGATTN_ASCEND_EMU)
    AscendC::Fill(dst, p);
#else
    AscendC::InitConstValue(dst, p);
#endif
}

// SetAtomicNone (8.5) -> DisableDmaAtomic (9.0).
__aicore__ inline void SetAtomicNone()
{
#if LONGATTN_CANN_VERSION >= 90000 && !defined(LONGATTN_ASCEND_EMU)
    AscendC::DisableDmaAtomic();
#else
    AscendC::SetAtomicNone();
#endif
}

}  // namespace longattn_compat
