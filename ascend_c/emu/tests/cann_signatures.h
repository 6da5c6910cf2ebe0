// SPDX-License-Identifier: Apache-2.0
// Signature audit: the constructor forms of the Ascend C parameter structs longattn's kernels use, as
// CANN 8.5.0 declares them (kernel_struct_mm.h, kernel_struct_data_copy.h, kernel_struct_proposal.h,
// kernel_struct_brcb.h, kernel_tensor.h; read 2026-12-04, summarised in ascend_c/README.md,
// "Signature audit"). Written in our own words as compile-time checks: every form below must build,
// and every "must not build" form is one the toolchain rejects. Included by test_signatures.cpp
// against the emulator (CI) and, opt-in, against the real headers (tests/ascend/test_kernel_builds.py
// with LONGATTN_CANN_INCLUDE), so both sides are held to the same list.
#pragma once

#include <type_traits>
#include <utility>

namespace longattn_signatures {
using namespace AscendC;

template <class T, class = void>
struct HasConstSetValue : std::false_type {};
template <class T>
struct HasConstSetValue<T, decltype(void(std::declval<const T&>().SetValue(uint64_t(0), 0)))> : std::true_type {};

// LoadData2DParams: the default and one 7-argument constructor (no defaulted addrMode).
static_assert(std::is_default_constructible<LoadData2DParams>::value, "LoadData2DParams()");
static_assert(
    std::is_constructible<LoadData2DParams, uint16_t, uint8_t, uint16_t, uint8_t, uint16_t, bool, uint8_t>::value,
    "LoadData2DParams(startIndex, repeatTimes, srcStride, sid, dstGap, ifTranspose, addrMode)");
static_assert(!std::is_constructible<LoadData2DParams, uint16_t, uint8_t, uint16_t, uint8_t, uint16_t, bool>::value,
              "LoadData2DParams has no 6-argument constructor in CANN 8.5.0");

// MmadParams: default, 8-argument legacy and 6-argument (unitFlag, cmatrixSource, cmatrixInitVal) forms.
static_assert(std::is_constructible<MmadParams, uint16_t, uint16_t, uint16_t, bool, int32_t, bool, bool, bool>::value,
              "MmadParams(m, n, k, isBias, fmOffset, enSsparse, enWinogradA, enWinogradB)");
static_assert(std::is_constructible<MmadParams, uint16_t, uint16_t, uint16_t, uint8_t, bool, bool>::value,
              "MmadParams(m, n, k, unitFlag, cmatrixSource, cmatrixInitVal)");
static_assert(!std::is_constructible<MmadParams, uint16_t, uint16_t, uint16_t>::value,
              "MmadParams has no 3-argument constructor in CANN 8.5.0");

// Data movement.
static_assert(std::is_constructible<DataCopyParams, uint16_t, uint16_t, uint16_t, uint16_t>::value,
              "DataCopyParams(blockCount, blockLen, srcStride, dstStride)");
static_assert(std::is_constructible<DataCopyExtParams, uint16_t, uint32_t, uint32_t, uint32_t, uint32_t>::value,
              "DataCopyExtParams(blockCount, blockLen, srcStride, dstStride, rsv)");
static_assert(!std::is_constructible<DataCopyExtParams, uint16_t, uint32_t, uint32_t, uint32_t>::value,
              "DataCopyExtParams has no defaulted rsv in CANN 8.5.0");
static_assert(std::is_constructible<DataCopyPadExtParams<float>, bool, uint8_t, uint8_t, float>::value,
              "DataCopyPadExtParams<T>(isPad, leftPadding, rightPadding, paddingValue)");
static_assert(std::is_constructible<Nd2NzParams, uint16_t, uint16_t, uint16_t, uint16_t, uint16_t, uint16_t, uint16_t,
                                    uint16_t>::value,
              "Nd2NzParams(ndNum, nValue, dValue, srcNdMatrixStride, srcDValue, dstNzC0Stride, dstNzNStride, "
              "dstNzMatrixStride)");

// Cube / vector helpers.
static_assert(std::is_constructible<InitConstValueParams<half>, uint16_t, uint16_t, uint16_t, half>::value,
              "InitConstValueParams<T>(repeatTimes, blockNum, dstGap, initValue)");
static_assert(std::is_constructible<BrcbRepeatParams, uint16_t, uint16_t>::value,
              "BrcbRepeatParams(dstBlkStride, dstRepStride)");
static_assert(std::is_constructible<MrgSort4Info, const uint16_t*, bool, uint16_t, uint16_t>::value,
              "MrgSort4Info(elementLengths[4], ifExhaustedSuspension, validBit, repeatTimes)");

// GlobalTensor::SetValue is not const.
static_assert(!HasConstSetValue<GlobalTensor<float>>::value, "GlobalTensor::SetValue is non-const in CANN 8.5.0");

// Defaults that kernels must not rely on differently from the toolchain: every Nd2NzParams field and
// MrgSort4Info::validBit default to 0 (checked at run time by test_signatures.cpp).
inline bool DefaultsMatch()
{
    const Nd2NzParams nd;
    const MrgSort4Info m;
    return nd.ndNum == 0 && nd.dstNzNStride == 0 && nd.dstNzC0Stride == 0 && m.validBit == 0;
}

}  // namespace longattn_signatures
