// SPDX-License-Identifier: Apache-2.0
// longattn Ascend C CPU emulator: the cube path with real fractal layouts (Atlas A2/A3).
//
// Layouts (documented "matrix fractal formats" page; C0 = 32 B / sizeof(T), i.e. 16 for 16-bit
// types, 8 for fp32, 32 for int8):
//   L1  (after ND->NZ)  "Nz": (D/C0 column blocks, rows, C0) - column block cb starts at
//                        cb*dstNzC0Stride*C0 elements, row r at r*dstNzNStride*C0 inside it.
//   L0A (left, m x k)   "Zz": fractals 16 x K0 row-major, fractals ordered row-major:
//                        A(i, kk) at ((i/16)*K1 + kk/K0)*512 B + ((i%16)*K0 + kk%K0)*sizeof(T).
//   L0B (right, k x n)  "Zn": fractals ordered row-major over (k/K0, n/16), inside each fractal
//                        column-major (K contiguous): B(kk, j) at ((kk/K0)*N1 + j/16)*512 B +
//                        ((j%16)*K0 + kk%K0)*sizeof(T).
//   L0C (result, m x n) "Nz": 16x16 fp32/int32 fractals ordered column-major:
//                        C(i, j) at ((j/16)*M1 + i/16)*1024 B + ((i%16)*16 + j%16)*4.
// Mmad reads K in whole fractals for the layout but accumulates only the first k columns (the
// documented "padding is ignored" reading); m x n outside the valid region is not written.
#pragma once

#include "emu_datacopy.h"

namespace longattn_emu {
namespace detail {

template <typename T>
inline void RequireLocal(const AscendC::LocalTensor<T>& t, Mem m1, Mem m2, const char* api, const char* name, Loc loc)
{
    if (t.emu_mem != m1 && t.emu_mem != m2)
        Fatal(loc, "%s: %s must be in %s%s%s, got %s (TPosition %s)", api, name, MemName(m1), m2 != m1 ? " or " : "",
              m2 != m1 ? MemName(m2) : "", MemName(t.emu_mem), PositionName(t.emu_pos));
    const uint32_t a = MemAlign(t.emu_mem);
    if (t.emu_off % a != 0)
        Fatal(loc, "%s: %s %s address 0x%x is not %u-byte aligned", api, name, MemName(t.emu_mem), t.emu_off, a);
}

}  // namespace detail
}  // namespace longattn_emu

namespace AscendC {

// ---- GM (ND) -> L1 (NZ), PIPE_MTE2 -------------------------------------------------------------------
// For ND matrix i, row r, column c:  L1[i*dstNzMatrixStride + (c/C0)*dstNzC0Stride*C0 +
// r*dstNzNStride*C0 + c%C0] = GM[i*srcNdMatrixStride + r*srcDValue + c]. The last column block of
// every row is zero-filled up to C0 (documented); rows beyond nValue are not written.
template <typename T>
inline void DataCopy(const LocalTensor<T>& dst, const GlobalTensor<T>& src, const Nd2NzParams& p, LAEMU_LOC)
{
    using namespace longattn_emu::detail;
    const Loc loc = LAEMU_HERE;
    const char* api = "DataCopy(GM->L1, Nd2NzParams)";
    BeginOp(PIPE_MTE2, api, loc);
    RequireLocal(dst, Mem::L1, Mem::L1, api, "dst", loc);
    CheckRange(p.ndNum, 0, 4095, api, "ndNum", loc);
    CheckRange(p.nValue, 0, 16384, api, "nValue", loc);
    CheckRange(p.dValue, 0, 65535, api, "dValue", loc);
    CheckRange(p.srcNdMatrixStride, 0, 65535, api, "srcNdMatrixStride", loc);
    CheckRange(p.srcDValue, 1, 65535, api, "srcDValue", loc);
    CheckRange(p.dstNzC0Stride, 1, 16384, api, "dstNzC0Stride", loc);
    CheckRange(p.dstNzNStride, 1, 16384, api, "dstNzNStride", loc);
    CheckRange(p.dstNzMatrixStride, 0, 16384, api, "dstNzMatrixStride", loc);
    if (p.ndNum == 0 || p.nValue == 0 || p.dValue == 0) return;
    constexpr uint32_t C0 = 32 / sizeof(T);
    const uint32_t blocks = (p.dValue + C0 - 1) / C0;
    std::vector<T> row(static_cast<size_t>(blocks) * C0);
    for (uint32_t i = 0; i < p.ndNum; ++i)
        for (uint32_t r = 0; r < p.nValue; ++r) {
            const uint64_t srow =
                static_cast<uint64_t>(i) * p.srcNdMatrixStride + static_cast<uint64_t>(r) * p.srcDValue;
            const T* s = GmSpan(src, srow, p.dValue, "Nd2Nz source row", loc);
            TrackGmRead(s, p.dValue * sizeof(T));
            std::fill(row.begin(), row.end(), T(0));
            std::memcpy(row.data(), s, p.dValue * sizeof(T));
            for (uint32_t cb = 0; cb < blocks; ++cb) {
                const uint64_t d = static_cast<uint64_t>(i) * p.dstNzMatrixStride +
                                   static_cast<uint64_t>(cb) * p.dstNzC0Stride * C0 +
                                   static_cast<uint64_t>(r) * p.dstNzNStride * C0;
                uint8_t* pd = LocalSpan(dst, d, C0, "Nd2Nz destination", loc);
                TrackLocal(dst.emu_mem, dst.emu_off + static_cast<uint32_t>(d * sizeof(T)), 32, true);
                std::memcpy(pd, row.data() + cb * C0, 32);
            }
        }
}

// ---- L1 -> L0A/L0B (PIPE_MTE1) and GM -> L0A/L0B (PIPE_MTE2): 512-byte fractal copies ------------------
namespace emu_internal {
template <typename T>
inline void Transpose16x16(uint8_t* frac)
{
    uint16_t t[256];
    std::memcpy(t, frac, 512);
    uint16_t o[256];
    for (int r = 0; r < 16; ++r)
        for (int c = 0; c < 16; ++c) o[c * 16 + r] = t[r * 16 + c];
    std::memcpy(frac, o, 512);
}
template <typename T>
inline void CheckLoad2D(const LocalTensor<T>& dst, const LoadData2DParams& p, const char* api,
                        longattn_emu::detail::Loc loc)
{
    using namespace longattn_emu::detail;
    RequireLocal(dst, Mem::L0A, Mem::L0B, api, "dst", loc);
    CheckRange(p.startIndex, 0, 65535, api, "startIndex", loc);
    CheckRange(p.repeatTimes, 0, 255, api, "repeatTimes", loc);
    CheckRange(p.srcStride, 0, 65535, api, "srcStride", loc);
    CheckRange(p.dstGap, 0, 65535, api, "dstGap", loc);
    if (p.addrMode != 0) Fatal(loc, "%s: addrMode must be 0 for L1/GM -> L0 loads", api);
    if (p.ifTranspose && sizeof(T) != 2)
        Fatal(loc, "%s: ifTranspose needs a 16-bit type (documented); use LoadDataWithTranspose for %s", api,
              TypeName<T>());
}
}  // namespace emu_internal

// Fractal i (i < repeatTimes): src fractal startIndex + i*srcStride -> dst fractal i*(1 + dstGap);
// with ifTranspose each 16x16 (16-bit) fractal is transposed.
template <typename T>
inline void LoadData(const LocalTensor<T>& dst, const LocalTensor<T>& src, const LoadData2DParams& p, LAEMU_LOC)
{
    using namespace longattn_emu::detail;
    const Loc loc = LAEMU_HERE;
    const char* api = "LoadData(L1->L0, LoadData2DParams)";
    BeginOp(PIPE_MTE1, api, loc);
    emu_internal::CheckLoad2D(dst, p, api, loc);
    RequireLocal(src, Mem::L1, Mem::L1, api, "src", loc);
    const auto s8 = src.template ReinterpretCast<uint8_t>();
    const auto d8 = dst.template ReinterpretCast<uint8_t>();
    for (uint32_t i = 0; i < p.repeatTimes; ++i) {
        const uint64_t so = (static_cast<uint64_t>(p.startIndex) + static_cast<uint64_t>(i) * p.srcStride) * 512u;
        const uint64_t dO = static_cast<uint64_t>(i) * (1u + p.dstGap) * 512u;
        const uint8_t* ps = LocalSpan(s8, so, 512, "LoadData source fractal", loc);
        uint8_t* pd = LocalSpan(d8, dO, 512, "LoadData destination fractal", loc);
        TrackLocal(src.emu_mem, src.emu_off + static_cast<uint32_t>(so), 512, false);
        TrackLocal(dst.emu_mem, dst.emu_off + static_cast<uint32_t>(dO), 512, true);
        std::memmove(pd, ps, 512);
        if (p.ifTranspose) emu_internal::Transpose16x16<T>(pd);
    }
}
template <typename T>
inline void LoadData(const LocalTensor<T>& dst, const GlobalTensor<T>& src, const LoadData2DParams& p, LAEMU_LOC)
{
    using namespace longattn_emu::detail;
    const Loc loc = LAEMU_HERE;
    const char* api = "LoadData(GM->L0, LoadData2DParams)";
    BeginOp(PIPE_MTE2, api, loc);
    emu_internal::CheckLoad2D(dst, p, api, loc);
    if (p.ifTranspose) Fatal(loc, "%s: transpose is only available for L1 -> L0 loads", api);
    const auto s8 = src.template ReinterpretCast<uint8_t>();
    const auto d8 = dst.template ReinterpretCast<uint8_t>();
    for (uint32_t i = 0; i < p.repeatTimes; ++i) {
        const uint64_t so = (static_cast<uint64_t>(p.startIndex) + static_cast<uint64_t>(i) * p.srcStride) * 512u;
        const uint64_t dO = static_cast<uint64_t>(i) * (1u + p.dstGap) * 512u;
        const uint8_t* ps = GmSpan(s8, so, 512, "LoadData source fractal", loc);
        uint8_t* pd = LocalSpan(d8, dO, 512, "LoadData destination fractal", loc);
        TrackGmRead(ps, 512);
        TrackLocal(dst.emu_mem, dst.emu_off + static_cast<uint32_t>(dO), 512, true);
        std::memcpy(pd, ps, 512);
    }
}

// ---- constant fill of L1 (PIPE_MTE2) / L0A / L0B (PIPE_MTE1) -------------------------------------------
// Block size 32 B in L1, 512 B in L0A/L0B: repeat r, block b at (r*(blockNum + dstGap) + b) blocks.
template <typename T>
inline void InitConstValue(const LocalTensor<T>& dst, const InitConstValueParams<T>& p, LAEMU_LOC)
{
    using namespace longattn_emu::detail;
    const Loc loc = LAEMU_HERE;
    const bool l1 = dst.emu_mem == Mem::L1;
    const char* api = "InitConstValue";
    BeginOp(l1 ? PIPE_MTE2 : PIPE_MTE1, api, loc);
    if (!l1)
        RequireLocal(dst, Mem::L0A, Mem::L0B, api, "dst", loc);
    else
        RequireLocal(dst, Mem::L1, Mem::L1, api, "dst", loc);
    CheckRange(p.repeatTimes, 0, 32767, api, "repeatTimes", loc);
    CheckRange(p.blockNum, 0, 32767, api, "blockNum", loc);
    CheckRange(p.dstGap, 0, 32767, api, "dstGap", loc);
    const uint64_t blk = l1 ? 32u : 512u;
    const auto d8 = dst.template ReinterpretCast<uint8_t>();
    for (uint64_t r = 0; r < p.repeatTimes; ++r)
        for (uint64_t b = 0; b < p.blockNum; ++b) {
            const uint64_t off = (r * (p.blockNum + p.dstGap) + b) * blk;
            uint8_t* pd = LocalSpan(d8, off, blk, "InitConstValue block", loc);
            TrackLocal(dst.emu_mem, dst.emu_off + static_cast<uint32_t>(off), static_cast<uint32_t>(blk), true);
            for (uint64_t k = 0; k < blk; k += sizeof(T)) longattn_emu::detail::StoreAs<T>(pd + k, p.initValue);
        }
}
template <typename T>
inline void Fill(const LocalTensor<T>& dst, const InitConstValueParams<T>& p, LAEMU_LOC)
{
    InitConstValue(dst, p, LAEMU_LOC_FWD);
}

// ---- Mmad (PIPE_M): C[m x n] (=|+=) A[m x k] * B[k x n] with fp32 (int32 for int8) accumulation -----------
template <typename Tc, typename Ta, typename Tb>
inline void Mmad(const LocalTensor<Tc>& dst, const LocalTensor<Ta>& fm, const LocalTensor<Tb>& filter,
                 const MmadParams& p, LAEMU_LOC)
{
    using namespace longattn_emu::detail;
    static_assert(std::is_same<Ta, Tb>::value, "Mmad: left and right matrices must have the same type (A2/A3)");
    static_assert(
        (std::is_same<Ta, half>::value || std::is_same<Ta, bfloat16_t>::value || std::is_same<Ta, float>::value)
            ? std::is_same<Tc, float>::value
            : (std::is_same<Ta, int8_t>::value && std::is_same<Tc, int32_t>::value),
        "Mmad: supported (A, B, C) types are (half|bfloat16_t|float, same, float) and (int8_t, int8_t, int32_t)");
    const Loc loc = LAEMU_HERE;
    const char* api = "Mmad";
    BeginOp(PIPE_M, api, loc);
    RequireLocal(dst, Mem::L0C, Mem::L0C, api, "dst (C)", loc);
    RequireLocal(fm, Mem::L0A, Mem::L0A, api, "fm (A)", loc);
    RequireLocal(filter, Mem::L0B, Mem::L0B, api, "filter (B)", loc);
    if (dst.emu_off % 1024u != 0) Fatal(loc, "Mmad: dst (C) L0C address 0x%x is not 1024-byte aligned", dst.emu_off);
    CheckRange(p.m, 0, 4095, api, "m", loc);
    CheckRange(p.n, 0, 4095, api, "n", loc);
    CheckRange(p.k, 0, 4095, api, "k", loc);
    if (p.cmatrixSource) Fatal(loc, "Mmad: cmatrixSource (bias-table initialisation) is not emulated");
    {  // work counters: MACs as issued; fractal steps (16 x 16 x K0, K0 = 32 B of the input type), the
       // cube's per-cycle unit in the performance model
        const uint64_t k0 = 32 / sizeof(Ta);
        CoreCtx& c = Core(loc);
        c.cubeMacs += static_cast<uint64_t>(p.m) * p.n * p.k;
        c.cubeFractals += ((p.m + 15u) / 16u) * ((p.n + 15u) / 16u) * ((p.k + k0 - 1) / k0);
    }
    if (p.kDirectionAlign && !std::is_same<Ta, float>::value)
        Fatal(loc, "Mmad: kDirectionAlign only applies to float inputs");
    if (p.m == 0 || p.n == 0 || p.k == 0) return;
    constexpr uint32_t K0 = 32 / sizeof(Ta);
    const uint32_t M1 = (p.m + 15) / 16, N1 = (p.n + 15) / 16;
    const uint32_t kAlign = p.kDirectionAlign ? (p.k + 15) / 16 * 16 : (p.k + K0 - 1) / K0 * K0;
    const uint32_t K1 = kAlign / K0;
    const uint64_t aBytes = static_cast<uint64_t>(M1) * K1 * 512, bBytes = static_cast<uint64_t>(K1) * N1 * 512;
    const uint64_t cBytes = static_cast<uint64_t>(M1) * N1 * 1024;
    const uint8_t* pa = LocalSpan(fm.template ReinterpretCast<uint8_t>(), 0, aBytes, "Mmad A (L0A)", loc);
    const uint8_t* pb = LocalSpan(filter.template ReinterpretCast<uint8_t>(), 0, bBytes, "Mmad B (L0B)", loc);
    uint8_t* pc = LocalSpan(dst.template ReinterpretCast<uint8_t>(), 0, cBytes, "Mmad C (L0C)", loc);
    TrackLocal(fm.emu_mem, fm.emu_off, static_cast<uint32_t>(aBytes), false);
    TrackLocal(filter.emu_mem, filter.emu_off, static_cast<uint32_t>(bBytes), false);
    const bool accumulate = p.isBias || !p.cmatrixInitVal;
    if (accumulate) TrackLocal(dst.emu_mem, dst.emu_off, static_cast<uint32_t>(cBytes), false);
    TrackLocal(dst.emu_mem, dst.emu_off, static_cast<uint32_t>(cBytes), true);
    // Zz / Zn / Nz addressing (see the header comment). GEMV mode (page *Mmad*, constraints): with m = 1
    // the hardware reads L0A as one ND row, A[0][kk] at element kk, not in the Zz fractal layout; the
    // two agree only for k <= K0 (one fractal row). Emulated as the hardware does: a kernel that keeps
    // a one-row A in Zz layout computes wrong results here as on a 910B / 910C.
    const bool gemv = p.m == 1;
    auto aAt = [&](uint32_t i, uint32_t kk) {
        if (gemv) return LoadAs<Ta>(pa + static_cast<uint64_t>(kk) * sizeof(Ta));
        return LoadAs<Ta>(pa + (static_cast<uint64_t>(i / 16) * K1 + kk / K0) * 512 +
                          ((i % 16) * K0 + kk % K0) * sizeof(Ta));
    };
    auto bAt = [&](uint32_t kk, uint32_t j) {
        return LoadAs<Tb>(pb + (static_cast<uint64_t>(kk / K0) * N1 + j / 16) * 512 +
                          ((j % 16) * K0 + kk % K0) * sizeof(Tb));
    };
    for (uint32_t i = 0; i < p.m; ++i)
        for (uint32_t j = 0; j < p.n; ++j) {
            uint8_t* cp = pc + (static_cast<uint64_t>(j / 16) * M1 + i / 16) * 1024 + ((i % 16) * 16 + j % 16) * 4;
            if constexpr (std::is_same<Tc, int32_t>::value) {
                int64_t acc = accumulate ? LoadAs<int32_t>(cp) : 0;
                for (uint32_t kk = 0; kk < p.k; ++kk)
                    acc += static_cast<int64_t>(aAt(i, kk)) * static_cast<int64_t>(bAt(kk, j));
                StoreAs<int32_t>(cp, static_cast<int32_t>(acc));
            } else {
                float acc = accumulate ? LoadAs<float>(cp) : 0.f;
                for (uint32_t kk = 0; kk < p.k; ++kk)
                    acc += static_cast<float>(aAt(i, kk)) * static_cast<float>(bAt(kk, j));
                StoreAs<float>(cp, acc);
            }
        }
}

// ---- scalar data-cache maintenance with CANN's template parameters (page *DataCacheCleanAndInvalid*) ------
// GM is coherent in the emulator, so this is a no-op (README "Blind spots"); it exists so that kernels can
// write the call the device needs before a scalar GetValue of GM that another pipe or core wrote (the
// indexer's Fixpipe ReLU probe). The int-parameter placeholder in emu_datacopy.h stays for old callers.
enum class CacheLine : uint64_t { SINGLE_CACHE_LINE = 0, ENTIRE_DATA_CACHE };
enum class DcciDst : uint64_t { CACHELINE_ALL = 0, CACHELINE_UB, CACHELINE_OUT, CACHELINE_ATOMIC };
template <typename T, CacheLine entireType, DcciDst dcciDst>
inline void DataCacheCleanAndInvalid(const GlobalTensor<T>& dst, LAEMU_LOC)
{
    longattn_emu::detail::BeginOp(PIPE_S, "DataCacheCleanAndInvalid", LAEMU_HERE);
    (void)dst;
}

// ---- Fixpipe L0C (NZ) -> GM (ND), PIPE_FIX ---------------------------------------------------------------
// For matrix nd, row i < mSize, column j < nSize:
//   GM[nd*dstNdStride + i*dstStride + j] = cvt(relu?(L0C[nd*srcNdStride*256 + (j/16)*srcStride*16 + i*16 + j%16]))
// quantPre: NoQuant (same type), F322F16 (float->half, RINT), F322BF16 (float->bfloat16_t, RINT).
template <typename T, typename U, const FixpipeConfig& config = CFG_ROW_MAJOR>
inline void Fixpipe(const GlobalTensor<T>& dst, const LocalTensor<U>& src, const FixpipeParamsV220& p, LAEMU_LOC)
{
    using namespace longattn_emu::detail;
    static_assert(std::is_same<U, float>::value || std::is_same<U, int32_t>::value,
                  "Fixpipe: L0C holds float or int32_t");
    const Loc loc = LAEMU_HERE;
    const char* api = "Fixpipe(L0C->GM)";
    BeginOp(PIPE_FIX, api, loc);
    if (config.format != CO2Layout::ROW_MAJOR) Fatal(loc, "Fixpipe: only CFG_ROW_MAJOR (NZ2ND) output is emulated");
    RequireLocal(src, Mem::L0C, Mem::L0C, api, "src", loc);
    CheckRange(p.nSize, 0, 4095, api, "nSize", loc);
    CheckRange(p.mSize, 0, 8192, api, "mSize", loc);
    CheckRange(p.srcStride, 0, 65535, api, "srcStride", loc);
    CheckRange(p.ndNum, 0, 65535, api, "ndNum", loc);
    CheckRange(p.srcNdStride, 0, 512, api, "srcNdStride", loc);
    CheckRange(p.dstNdStride, 0, 65535, api, "dstNdStride", loc);
    if (p.isChannelSplit) Fatal(loc, "Fixpipe: channel split is not emulated");
    const bool toHalf = p.quantPre == F322F16, toBf16 = p.quantPre == F322BF16;
    if (p.quantPre != NoQuant && !toHalf && !toBf16)
        Fatal(loc, "Fixpipe: quantPre %d is not emulated (NoQuant, F322F16, F322BF16 are)",
              static_cast<int>(p.quantPre));
    constexpr bool f2h = std::is_same<T, half>::value && std::is_same<U, float>::value;
    constexpr bool f2b = std::is_same<T, bfloat16_t>::value && std::is_same<U, float>::value;
    if ((p.quantPre == NoQuant && !std::is_same<T, U>::value) || (toHalf && !f2h) || (toBf16 && !f2b))
        Fatal(loc,
              "Fixpipe: quantPre does not match the %s -> %s conversion (use NoQuant for same types, F322F16 for "
              "float->half, F322BF16 for float->bfloat16_t; it is not inferred)",
              TypeName<U>(), TypeName<T>());
    if (p.ndNum == 0 || p.mSize == 0 || p.nSize == 0) return;
    if (p.srcStride < p.mSize)
        Fatal(loc,
              "Fixpipe: srcStride = %u rows is smaller than mSize = %u (column blocks would overlap; normally "
              "ceil(m/16)*16)",
              p.srcStride, p.mSize);
    if (p.dstStride < p.nSize)
        Fatal(loc, "Fixpipe: dstStride = %u elements per GM row is smaller than nSize = %u", p.dstStride, p.nSize);
    std::vector<T> row(p.nSize);
    const auto s8 = src.template ReinterpretCast<uint8_t>();
    // ReLU on the fly: finite values and infinities as max(x, 0); a NaN as the emulated hardware
    // behaviour says (LONGATTN_EMU_FIXPIPE_RELU_NAN, emu_runtime.h: undocumented on the device).
    const FixpipeReluNan reluNan = p.reluEn ? FixpipeReluNanMode() : FixpipeReluNan::Keep;
    for (uint32_t nd = 0; nd < p.ndNum; ++nd)
        for (uint32_t i = 0; i < p.mSize; ++i) {
            for (uint32_t j = 0; j < p.nSize; ++j) {
                const uint64_t e = static_cast<uint64_t>(nd) * p.srcNdStride * 256 +
                                   static_cast<uint64_t>(j / 16) * p.srcStride * 16 + static_cast<uint64_t>(i) * 16 +
                                   j % 16;
                const uint8_t* ps = LocalSpan(s8, e * 4, 4, "Fixpipe L0C source", loc);
                TrackLocal(src.emu_mem, src.emu_off + static_cast<uint32_t>(e * 4), 4, false);
                U v = LoadAs<U>(ps);
                if (p.reluEn) {
                    if (v < U(0)) v = U(0);
                    if constexpr (std::is_same<U, float>::value) {
                        if (v != v &&
                            (reluNan == FixpipeReluNan::Zero || (reluNan == FixpipeReluNan::Sign && std::signbit(v))))
                            v = 0.0f;
                    }
                }
                if constexpr (std::is_same<T, half>::value)
                    row[j] = FloatToHalf(static_cast<float>(v), RoundMode::CAST_RINT);
                else if constexpr (std::is_same<T, bfloat16_t>::value)
                    row[j] = FloatToBf16(static_cast<float>(v), RoundMode::CAST_RINT);
                else
                    row[j] = static_cast<T>(v);
            }
            const uint64_t d = static_cast<uint64_t>(nd) * p.dstNdStride + static_cast<uint64_t>(i) * p.dstStride;
            T* pd = GmSpan(dst, d, p.nSize, "Fixpipe GM destination row", loc);
            GmWrite(pd, reinterpret_cast<const uint8_t*>(row.data()), p.nSize, loc);
        }
}

}  // namespace AscendC
