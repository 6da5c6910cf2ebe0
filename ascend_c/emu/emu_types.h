// SPDX-License-Identifier: Apache-2.0
// longattn Ascend C CPU emulator: qualifiers, scalar types, enums and parameter structs.
//
// Clean-room implementation written from the public Ascend C API documentation (hiascend.com
// "Ascend C API reference", CANN 8.x/9.x; see README.md for the page of each semantic).
// No code from CANN-licensed repositories is used.
//
// Deliberate difference from the device headers: fields that the hardware silently truncates
// (uint8_t repeat strides, uint16_t block counts, ...) are stored wider here so that a value
// assigned to a field out of range is caught instead of truncated. Constructors take the narrow
// device types, so brace-initialisation narrowing errors match the device compiler.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <type_traits>

// ---------------------------------------------------------------------------------------------
// Kernel qualifiers: empty on the CPU. `__inline__` is deliberately NOT redefined: it is a GCC
// keyword equivalent to `inline` already, and redefining it would corrupt system headers.
// ---------------------------------------------------------------------------------------------
#define __aicore__
#define __global__
#define __gm__
#define __ubuf__
#define __cbuf__
#define __vector__
#define __cube__
#define __mix__(aic, aiv)
#define __inout_pipe__(p)
#define __in_pipe__(p)
#define __out_pipe__(p)
#ifndef GM_ADDR
#define GM_ADDR uint8_t*
#endif

// Kernel type declarations are accepted and ignored (the launcher chooses the core mix).
#define KERNEL_TASK_TYPE_DEFAULT(type)
#define KERNEL_TASK_TYPE(key, type)
enum KernelMetaType : uint8_t {
    KERNEL_TYPE_AIV_ONLY,
    KERNEL_TYPE_AIC_ONLY,
    KERNEL_TYPE_MIX_AIV_1_0,
    KERNEL_TYPE_MIX_AIC_1_0,
    KERNEL_TYPE_MIX_AIC_1_1,
    KERNEL_TYPE_MIX_AIC_1_2,
};

// Tiling: a POD struct copied out of the GM tiling pointer.
// GET_TILING_DATA / GET_TILING_DATA_WITH_STRUCT belong to the op-project flow (tiling registered with
// the framework); a kernel-direct-call build (ascendc_library + ACLRT_LAUNCH_KERNEL), longattn's, has
// no registered tiling: using them there does not build. Refused here at compile time.
#define LAEMU_NO_TILING_MACRO(name) \
    static_assert(sizeof(char) == 0, name \
                  " is not available in a kernel direct-call build: read the " \
                  "tiling struct through its __gm__ pointer (longattn_compat::ReadTiling)")
#define GET_TILING_DATA_WITH_STRUCT(StructT, var, tilingPtr) LAEMU_NO_TILING_MACRO("GET_TILING_DATA_WITH_STRUCT")
#define GET_TILING_DATA(var, tilingPtr) LAEMU_NO_TILING_MACRO("GET_TILING_DATA")

// ---------------------------------------------------------------------------------------------
// Scalar types. half = _Float16 (IEEE binary16, RNE conversions in g++).
// bfloat16_t = 16 bits of storage; float -> bf16 is round-to-nearest-even (NaN -> 0x7FC0, the
// canonical quiet NaN, as torch does); bf16 -> float is exact.
// ---------------------------------------------------------------------------------------------
using half = _Float16;

namespace longattn_emu {
namespace detail {
inline uint32_t FloatBits(float f)
{
    uint32_t u;
    std::memcpy(&u, &f, 4);
    return u;
}
inline float BitsFloat(uint32_t u)
{
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}
inline uint16_t FloatToBf16Rne(float f)
{
    uint32_t u = FloatBits(f);
    if ((u & 0x7FFFFFFFu) > 0x7F800000u) return 0x7FC0u;  // NaN: canonical quiet NaN
    u += 0x7FFFu + ((u >> 16) & 1u);                        // ties to even; overflow -> inf
    return static_cast<uint16_t>(u >> 16);
}
inline float Bf16ToFloat(uint16_t b) { return BitsFloat(static_cast<uint32_t>(b) << 16); }
}  // namespace detail
}  // namespace longattn_emu

struct bfloat16_t {
    uint16_t emu_bits;
    bfloat16_t() = default;
    // From any arithmetic value (via float, then RNE). A double argument is rounded twice.
    template <typename U, typename = std::enable_if_t<std::is_arithmetic<U>::value>>
    bfloat16_t(U v) : emu_bits(longattn_emu::detail::FloatToBf16Rne(static_cast<float>(v)))
    {
    }
    bfloat16_t(half v) : emu_bits(longattn_emu::detail::FloatToBf16Rne(static_cast<float>(v))) {}
    operator float() const { return longattn_emu::detail::Bf16ToFloat(emu_bits); }
    static bfloat16_t FromBits(uint16_t b)
    {
        bfloat16_t r;
        r.emu_bits = b;
        return r;
    }
};
static_assert(sizeof(bfloat16_t) == 2 && std::is_trivially_copyable<bfloat16_t>::value,
              "bfloat16_t must be a 2-byte POD");

// ---------------------------------------------------------------------------------------------
// Hardware pipes and event ids (global on the device as well).
// ---------------------------------------------------------------------------------------------
enum pipe_t : uint8_t {
    PIPE_S = 0,     // scalar (GetValue/SetValue)
    PIPE_V = 1,     // vector
    PIPE_M = 2,     // cube
    PIPE_MTE1 = 3,  // L1 -> L0A/L0B
    PIPE_MTE2 = 4,  // GM -> UB/L1/L0
    PIPE_MTE3 = 5,  // UB -> GM
    PIPE_FIX = 6,   // L0C -> GM (Fixpipe)
    PIPE_ALL = 7,
};
enum event_t : int32_t {
    EVENT_ID0 = 0,
    EVENT_ID1,
    EVENT_ID2,
    EVENT_ID3,
    EVENT_ID4,
    EVENT_ID5,
    EVENT_ID6,
    EVENT_ID7,
};

namespace AscendC {

using TEventID = int8_t;

constexpr int32_t ONE_BLK_SIZE = 32;           // one DataBlock
constexpr int32_t ONE_REPEAT_BYTE_SIZE = 256;  // one vector repeat = 8 DataBlocks
constexpr int32_t DEFAULT_BLK_NUM = 8;
constexpr int32_t DEFAULT_BLK_STRIDE = 1;
constexpr int32_t DEFAULT_REPEAT_STRIDE = 8;
constexpr int32_t MASK_PLACEHOLDER = 0;

enum class TPosition : uint8_t {
    GM,
    A1,
    A2,
    B1,
    B2,
    C1,
    C2,
    CO1,
    CO2,
    VECIN,
    VECOUT,
    VECCALC,
    LCM = VECCALC,
    SPM,
    SHM = SPM,
    TSCM,
    C2PIPE2GM,
    C2PIPE2LOCAL,
    MAX,
};
using QuePosition = TPosition;

// Intra-core events <src pipe>_<dst pipe> (SetFlag on src, WaitFlag on dst).
enum class HardEvent : uint8_t {
    MTE2_V,
    V_MTE2,
    MTE3_V,
    V_MTE3,
    MTE2_MTE3,
    MTE3_MTE2,
    S_V,
    V_S,
    MTE2_S,
    S_MTE2,
    MTE3_S,
    S_MTE3,
    MTE2_MTE1,
    MTE1_MTE2,
    MTE1_M,
    M_MTE1,
    MTE2_M,
    M_MTE2,
    M_FIX,
    FIX_M,
    MTE1_FIX,
    FIX_MTE1,
    MTE1_MTE3,
    MTE3_MTE1,
    MTE2_FIX,
    FIX_MTE2,
    MTE3_FIX,
    FIX_MTE3,
    M_V,
    V_M,
    FIX_S,
    S_FIX,
    MAX_EVENT,
};

enum class RoundMode : uint8_t {
    CAST_NONE = 0,  // exact, or RINT where the conversion loses precision
    CAST_RINT,      // to nearest, ties to even
    CAST_FLOOR,     // toward -inf
    CAST_CEIL,      // toward +inf
    CAST_ROUND,     // to nearest, ties away from zero
    CAST_TRUNC,     // toward zero
    CAST_ODD,       // round to odd (von Neumann)
    CAST_HYBRID,
};

enum class CMPMODE : uint8_t { LT = 0, GT, EQ, LE, GE, NE };
enum class SELMODE : uint8_t { VSEL_CMPMASK_SPR = 0, VSEL_TENSOR_SCALAR_MODE, VSEL_TENSOR_TENSOR_MODE };
enum class ReduceOrder : uint8_t { ORDER_VALUE_INDEX = 0, ORDER_INDEX_VALUE, ORDER_ONLY_VALUE, ORDER_ONLY_INDEX };

enum QuantMode_t : uint8_t {
    NoQuant = 0,
    F322F16,
    F322BF16,
    DEQF16,
    VDEQF16,
    QF322B8_PRE,
    VQF322B8_PRE,
    REQ8,
    VREQ8,
};

// ---------------------------------------------------------------------------------------------
// Data movement parameters. Units follow the documentation (see README): DataCopyParams counts
// 32-byte blocks; DataCopyExtParams.blockLen is in bytes.
// ---------------------------------------------------------------------------------------------
struct DataCopyParams {
    uint32_t blockCount = 1;  // [0, 4095]
    uint32_t blockLen = 0;    // [0, 65535] in 32 B units
    uint32_t srcStride = 0;   // gap: end of block i to start of block i+1, 32 B units
    uint32_t dstStride = 0;   // gap, 32 B units
    DataCopyParams() = default;
    DataCopyParams(uint16_t count, uint16_t len, uint16_t srcStrideIn, uint16_t dstStrideIn)
        : blockCount(count), blockLen(len), srcStride(srcStrideIn), dstStride(dstStrideIn)
    {
    }
};

struct DataCopyExtParams {
    uint32_t blockCount = 1;  // [0, 4095]
    uint32_t blockLen = 0;    // bytes, [0, 2097151], multiple of sizeof(T)
    uint32_t srcStride = 0;   // gap; bytes on the GM side, 32 B units on the UB side
    uint32_t dstStride = 0;   // gap; 32 B units on the UB side, bytes on the GM side
    uint32_t rsv = 0;
    DataCopyExtParams() = default;
    DataCopyExtParams(uint16_t count, uint32_t len, uint32_t srcStrideIn, uint32_t dstStrideIn, uint32_t rsvIn)
        : blockCount(count), blockLen(len), srcStride(srcStrideIn), dstStride(dstStrideIn), rsv(rsvIn)
    {
    }
};

template <typename T>
struct DataCopyPadExtParams {
    bool isPad = false;         // true: pad with paddingValue; false: SetPadValue value or garbage
    uint32_t leftPadding = 0;   // elements, <= 32 bytes
    uint32_t rightPadding = 0;  // elements, <= 32 bytes
    T paddingValue = T(0);
    DataCopyPadExtParams() = default;
    DataCopyPadExtParams(bool isPadIn, uint8_t left, uint8_t right, T value)
        : isPad(isPadIn), leftPadding(left), rightPadding(right), paddingValue(value)
    {
    }
};

// GM (ND, row-major) -> L1 (NZ) conversion. Element units unless noted.
struct Nd2NzParams {
    uint32_t ndNum = 0;              // number of ND matrices [0, 4095] (CANN: every field defaults to 0)
    uint32_t nValue = 0;             // rows [0, 16384]
    uint32_t dValue = 0;             // columns [0, 65535]
    uint32_t srcNdMatrixStride = 0;  // elements between ND matrices in GM [0, 65535]
    uint32_t srcDValue = 0;          // GM row pitch in elements [1, 65535]
    uint32_t dstNzC0Stride = 0;      // distance between column blocks (C0 wide), 32 B units [1, 16384]
    uint32_t dstNzNStride = 0;       // distance between rows, 32 B units [1, 16384]
    uint32_t dstNzMatrixStride = 0;  // elements between NZ matrices [0, 16384]
    Nd2NzParams() = default;
    Nd2NzParams(uint16_t ndNumIn, uint16_t nValueIn, uint16_t dValueIn, uint16_t srcNdMatrixStrideIn,
                uint16_t srcDValueIn, uint16_t dstNzC0StrideIn, uint16_t dstNzNStrideIn, uint16_t dstNzMatrixStrideIn)
        : ndNum(ndNumIn),
          nValue(nValueIn),
          dValue(dValueIn),
          srcNdMatrixStride(srcNdMatrixStrideIn),
          srcDValue(srcDValueIn),
          dstNzC0Stride(dstNzC0StrideIn),
          dstNzNStride(dstNzNStrideIn),
          dstNzMatrixStride(dstNzMatrixStrideIn)
    {
    }
};

// L1 -> L0A/L0B fractal copy (512 B fractals).
struct LoadData2DParams {
    uint32_t startIndex = 0;   // first source fractal [0, 65535]
    uint32_t repeatTimes = 0;  // fractals to copy [0, 255]
    uint32_t srcStride = 0;    // fractals between consecutive source fractals (start to start)
    uint32_t sid = 0;
    uint32_t dstGap = 0;       // fractals between end of one destination fractal and the next
    bool ifTranspose = false;  // transpose each fractal (16-bit types only)
    uint32_t addrMode = 0;
    LoadData2DParams() = default;
    // CANN 8.5.0 declares the default and this 7-argument constructor only (no default for addrMode):
    // a 6-argument call does not build with the toolchain, so it does not build here either.
    LoadData2DParams(uint16_t startIndexIn, uint8_t repeatTimesIn, uint16_t srcStrideIn, uint8_t sidIn,
                     uint16_t dstGapIn, bool ifTransposeIn, uint8_t addrModeIn)
        : startIndex(startIndexIn),
          repeatTimes(repeatTimesIn),
          srcStride(srcStrideIn),
          sid(sidIn),
          dstGap(dstGapIn),
          ifTranspose(ifTransposeIn),
          addrMode(addrModeIn)
    {
    }
};

struct MmadParams {
    uint32_t m = 0;               // [0, 4095]
    uint32_t n = 0;               // [0, 4095]
    uint32_t k = 0;               // [0, 4095]
    bool isBias = false;          // deprecated: true => accumulate (C += A*B)
    int32_t fmOffset = 0;
    bool enSsparse = false;
    bool enWinogradA = false;
    bool enWinogradB = false;
    uint8_t unitFlag = 0;
    bool kDirectionAlign = false;  // fp32 only: K aligned to 16 instead of 8 in L0A/L0B
    bool cmatrixSource = false;    // true => init from bias table (not emulated)
    bool cmatrixInitVal = true;    // true => C = A*B; false => C += A*B
    MmadParams() = default;
    // The constructors CANN 8.5.0 declares (no defaulted arguments): the 8-argument legacy form and the
    // 6-argument (m, n, k, unitFlag, cmatrixSource, cmatrixInitVal) form.
    MmadParams(uint16_t mIn, uint16_t nIn, uint16_t kIn, bool isBiasIn, int32_t fmOffsetIn, bool enSsparseIn,
               bool enWinogradAIn, bool enWinogradBIn)
        : m(mIn),
          n(nIn),
          k(kIn),
          isBias(isBiasIn),
          fmOffset(fmOffsetIn),
          enSsparse(enSsparseIn),
          enWinogradA(enWinogradAIn),
          enWinogradB(enWinogradBIn)
    {
    }
    MmadParams(uint16_t mIn, uint16_t nIn, uint16_t kIn, uint8_t unitFlagIn, bool cmatrixSourceIn,
               bool cmatrixInitValIn)
        : m(mIn), n(nIn), k(kIn), unitFlag(unitFlagIn), cmatrixSource(cmatrixSourceIn), cmatrixInitVal(cmatrixInitValIn)
    {
    }
};

enum class CO2Layout : uint8_t { NZ = 0, ROW_MAJOR, COLUMN_MAJOR };
struct FixpipeConfig {
    CO2Layout format;
    bool isToUB;
};
inline constexpr FixpipeConfig CFG_NZ = {CO2Layout::NZ, false};
inline constexpr FixpipeConfig CFG_ROW_MAJOR = {CO2Layout::ROW_MAJOR, false};

// L0C (NZ) -> GM. nSize/mSize: matrix size; srcStride: L0C distance between 16-column blocks in
// units of 16 elements (= rows); dstStride: GM row pitch in elements (ND output).
struct FixpipeParamsV220 {
    uint32_t nSize = 0;      // [0, 4095]
    uint32_t mSize = 0;      // [0, 8192] with NZ2ND
    uint32_t srcStride = 0;  // [0, 65535], normally ceil(m/16)*16
    uint32_t dstStride = 0;  // elements per GM row (ND)
    QuantMode_t quantPre = NoQuant;
    uint64_t deqScalar = 0;
    uint32_t ndNum = 1;
    uint32_t srcNdStride = 0;  // units of one 16x16 fp32 fractal (1024 B)
    uint32_t dstNdStride = 0;  // elements
    bool reluEn = false;
    uint8_t unitFlag = 0;
    bool isChannelSplit = false;
    FixpipeParamsV220() = default;
};

// Repeat (mask) form parameters. Block strides in DataBlocks (32 B), repeat strides in DataBlocks.
struct BinaryRepeatParams {
    uint32_t dstBlkStride = DEFAULT_BLK_STRIDE;
    uint32_t src0BlkStride = DEFAULT_BLK_STRIDE;
    uint32_t src1BlkStride = DEFAULT_BLK_STRIDE;
    uint32_t dstRepStride = DEFAULT_REPEAT_STRIDE;   // [0, 255]
    uint32_t src0RepStride = DEFAULT_REPEAT_STRIDE;  // [0, 255]
    uint32_t src1RepStride = DEFAULT_REPEAT_STRIDE;  // [0, 255]
    uint32_t blockNumber = DEFAULT_BLK_NUM;
    BinaryRepeatParams() = default;
    BinaryRepeatParams(uint8_t dstBlk, uint8_t src0Blk, uint8_t src1Blk, uint8_t dstRep, uint8_t src0Rep,
                       uint8_t src1Rep)
        : dstBlkStride(dstBlk),
          src0BlkStride(src0Blk),
          src1BlkStride(src1Blk),
          dstRepStride(dstRep),
          src0RepStride(src0Rep),
          src1RepStride(src1Rep)
    {
    }
};

struct UnaryRepeatParams {
    uint32_t dstBlkStride = DEFAULT_BLK_STRIDE;
    uint32_t srcBlkStride = DEFAULT_BLK_STRIDE;
    uint32_t dstRepStride = DEFAULT_REPEAT_STRIDE;  // [0, 255]
    uint32_t srcRepStride = DEFAULT_REPEAT_STRIDE;  // [0, 255]
    uint32_t blockNumber = DEFAULT_BLK_NUM;
    UnaryRepeatParams() = default;
    UnaryRepeatParams(uint16_t dstBlk, uint16_t srcBlk, uint8_t dstRep, uint8_t srcRep)
        : dstBlkStride(dstBlk), srcBlkStride(srcBlk), dstRepStride(dstRep), srcRepStride(srcRep)
    {
    }
};

struct BrcbRepeatParams {
    uint32_t dstBlkStride = DEFAULT_BLK_STRIDE;
    uint32_t dstRepStride = DEFAULT_REPEAT_STRIDE;
    BrcbRepeatParams() = default;
    BrcbRepeatParams(uint16_t dstBlk, uint16_t dstRep) : dstBlkStride(dstBlk), dstRepStride(dstRep) {}
};

struct MrgSort4Info {
    uint16_t elementLengths[4] = {0, 0, 0, 0};  // (score, index) pairs per queue, [0, 4095]
    bool ifExhaustedSuspension = false;
    uint16_t validBit = 0;                      // 3, 7 or 15 (CANN default 0: set it)
    uint32_t repeatTimes = 1;                   // [0, 255]
    MrgSort4Info() = default;
    MrgSort4Info(const uint16_t lengths[4], bool exhausted, uint16_t valid, uint16_t repeat)
        : ifExhaustedSuspension(exhausted), validBit(valid), repeatTimes(repeat)
    {
        for (int i = 0; i < 4; ++i) elementLengths[i] = lengths[i];
    }
};

template <typename T>
struct InitConstValueParams {
    uint32_t repeatTimes = 0;  // [0, 32767]
    uint32_t blockNum = 0;     // blocks per repeat: 32 B in L1, 512 B in L0A/L0B
    uint32_t dstGap = 0;       // blocks between repeats
    T initValue = T(0);
    InitConstValueParams() = default;
    InitConstValueParams(uint16_t repeat, uint16_t blocks, uint16_t gap, T value)
        : repeatTimes(repeat), blockNum(blocks), dstGap(gap), initValue(value)
    {
    }
};

}  // namespace AscendC
