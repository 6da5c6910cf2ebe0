// SPDX-License-Identifier: Apache-2.0
// Plain C++ shared by the tiling code (host), the kernels (device / emulator) and the bindings:
// element-type codes carried in tiling structs, and small integer helpers.
//
// Nothing here depends on the Ascend C API, torch or the C++ standard library, so the same header
// compiles with bisheng (device), g++ (emulator, host) and the torch extension.
#pragma once

#include <stdint.h>

// Helpers below are called from kernel code, so they carry __aicore__ (the device compiler rejects a
// call from an AI-core function to a host function). Host compilers (tiling code, the torch
// bindings) see it as nothing; kernel translation units get it from kernel_operator.h (included
// first, by ascendc_compat.h) or from the emulator.
#if !defined(__aicore__) && !defined(__NPU_ARCH__)
#define __aicore__
#endif

namespace longattn_ascend {

template <typename A, typename B>
struct IsSameType {
    static constexpr bool value = false;
};
template <typename A>
struct IsSameType<A, A> {
    static constexpr bool value = true;
};

constexpr float kNegInf = -__builtin_inff();
constexpr float kPosInf = __builtin_inff();
constexpr float kNaN = __builtin_nanf("");  // the quiet NaN 0x7FC00000

// Element types of kernel inputs/outputs (tiling field values).
enum DataTypeCode : uint32_t {
    kDtF32 = 0,
    kDtBF16 = 1,
    kDtF16 = 2,
    kDtFP8Record = 3,  // FP8 "MODEL1" pool: 584-B records (448 e4m3 + 64 bf16 + 8 scale bytes), see cache/fp8.py
};

__aicore__ inline constexpr uint32_t DtSize(uint32_t dt) { return dt == kDtF32 ? 4u : (dt == kDtFP8Record ? 1u : 2u); }
__aicore__ inline constexpr uint32_t CeilDivU(uint32_t a, uint32_t b) { return (a + b - 1u) / b; }
__aicore__ inline constexpr uint32_t AlignUpU(uint32_t a, uint32_t b) { return CeilDivU(a, b) * b; }
__aicore__ inline constexpr uint32_t MinU(uint32_t a, uint32_t b) { return a < b ? a : b; }
__aicore__ inline constexpr uint32_t MaxU(uint32_t a, uint32_t b) { return a > b ? a : b; }

// FP8 MODEL1 record layout (python/longattn/cache/fp8.py): within a page all 576-B data rows come
// first, then the 8-B scale rows; a page is padded to a multiple of 576 B.
constexpr uint32_t kFp8HeadDim = 512;
constexpr uint32_t kFp8NopeDim = 448;
constexpr uint32_t kFp8RopeDim = 64;
constexpr uint32_t kFp8Tile = 64;
constexpr uint32_t kFp8NumTiles = 7;
constexpr uint32_t kFp8DataBytes = 576;
constexpr uint32_t kFp8ScaleBytes = 8;
constexpr uint32_t kFp8RecordBytes = 584;
constexpr uint32_t kFp8QuantizerUbBytes = 16512;  // scratch of the vector-core quantiser (fp8_quant.h)
// UB of the vector-core dequantiser (fp8_dequant.h) decoding `rows` records per chunk: raw records
// (VECIN x2, 608 B each), the split / value scratch, the gather offsets, their permutation, the tables.
constexpr uint32_t kFp8RawRowBytes = kFp8NopeDim + 32 + 2 * kFp8RopeDim;  // nope, scale slot, rope
constexpr uint32_t kFp8DequantTableBytes = 1024 * 4;                     // e4m3 (x2) + UE8M0 (x2) tables
__aicore__ inline constexpr uint32_t Fp8DequantUbBytes(uint32_t rows)
{
    return 2 * rows * kFp8RawRowBytes + (rows * kFp8HeadDim * 4 + 32) + 2 * (rows * (kFp8HeadDim + 8) * 4) +
           kFp8DequantTableBytes;
}
__aicore__ inline constexpr uint32_t Fp8PageBytes(uint32_t pageSize)
{
    return CeilDivU(pageSize * kFp8RecordBytes, kFp8DataBytes) * kFp8DataBytes;
}

// Hardware figures the tilings are sized for (Atlas A2/A3, NPU arch 2201).
constexpr uint32_t kUbBytes = 192u * 1024u - 8u * 1024u - 256u;  // usable UB per AIV
constexpr uint32_t kL1Bytes = 512u * 1024u;
constexpr uint32_t kL0ABytes = 64u * 1024u;
constexpr uint32_t kL0BBytes = 64u * 1024u;
constexpr uint32_t kL0CBytes = 128u * 1024u;

}  // namespace longattn_ascend
