// SPDX-License-Identifier: Apache-2.0
// longattn Ascend C CPU emulator: vector (PIPE_V) operations on UB tensors.
//
// Two forms, as documented ("SIMD computation" pages):
//  * count form   op(dst, src..., count): the first `count` elements, contiguous;
//  * repeat form  op(dst, src..., mask, repeatTime, params): `repeatTime` (<= 255) repeats of 256 B
//    (8 DataBlocks of 32 B). Element e of repeat r of an operand lives at
//    base + (r*repStride + (e / elemsPerBlock)*blkStride)*32 + (e % elemsPerBlock)*sizeof(T);
//    mask is either a count of leading elements (1..256/sizeof(T)) or a bit mask (mask[0] bit i =
//    element i, mask[1] = elements 64..127; 32-bit types only use mask[0]).
// Arithmetic on half/bfloat16_t is computed in float and rounded to nearest-even into T; integer
// arithmetic wraps. Operands must be UB tensors with 32-byte aligned addresses.
#pragma once

#include <algorithm>
#include <vector>

#include "emu_memory.h"

namespace longattn_emu {
namespace detail {

template <typename T>
inline void CheckVecOperand(const AscendC::LocalTensor<T>& t, const char* api, const char* name, Loc loc,
                            uint32_t align = 32)
{
    if (t.emu_mem != Mem::UB)
        Fatal(loc, "%s: operand %s must be a UB tensor (VECIN/VECOUT/VECCALC), got %s", api, name, MemName(t.emu_mem));
    if (t.emu_off % align != 0)
        Fatal(loc, "%s: operand %s UB address 0x%x is not %u-byte aligned", api, name, t.emu_off, align);
}

// Contiguous operand of a count-form op: check and record the access, return the bytes.
template <typename T>
inline uint8_t* VecSpan(const AscendC::LocalTensor<T>& t, uint64_t count, bool write, const char* api, const char* name,
                        Loc loc, uint32_t align = 32)
{
    CheckVecOperand(t, api, name, loc, align);
    char what[96];
    std::snprintf(what, sizeof(what), "%s %s", api, name);
    uint8_t* p = LocalSpan(t, 0, count, what, loc);
    TrackLocal(t.emu_mem, t.emu_off, static_cast<uint32_t>(count * sizeof(T)), write);
    return p;
}

// Count-form dst/src may alias completely (in place) but not partially (documented constraint).
template <typename D, typename S>
inline void CheckNoPartialOverlap(const AscendC::LocalTensor<D>& d, uint64_t dn, const AscendC::LocalTensor<S>& s,
                                  uint64_t sn, const char* api, Loc loc)
{
    const uint64_t db = d.emu_off, de = db + dn * sizeof(D), sb = s.emu_off, se = sb + sn * sizeof(S);
    if (db < se && sb < de && !(db == sb && sizeof(D) == sizeof(S)))
        Fatal(loc,
              "%s: destination UB [0x%llx, 0x%llx) partially overlaps a source [0x%llx, 0x%llx) (only full "
              "in-place aliasing is allowed)",
              api, static_cast<unsigned long long>(db), static_cast<unsigned long long>(de),
              static_cast<unsigned long long>(sb), static_cast<unsigned long long>(se));
}

inline void CheckCount(int64_t count, const char* api, Loc loc)
{
    if (count < 0) Fatal(loc, "%s: count = %lld is negative", api, static_cast<long long>(count));
}

enum class BinOp { Add, Sub, Mul, Div, Max, Min };
enum class UnOp { Exp, Ln, Abs, Relu, Sqrt, Rsqrt, Reciprocal, Copy };

template <typename T>
inline T ApplyBin(BinOp op, T a, T b)
{
    if constexpr (IsFloatLike<T>::value) {
        const float x = static_cast<float>(a), y = static_cast<float>(b);
        float r = 0.f;
        switch (op) {
            case BinOp::Add: r = x + y; break;
            case BinOp::Sub: r = x - y; break;
            case BinOp::Mul: r = x * y; break;
            case BinOp::Div: r = x / y; break;
            case BinOp::Max: r = x > y ? x : y; break;
            case BinOp::Min: r = x < y ? x : y; break;
        }
        return FromFloatRne<T>(r);
    } else {
        using U = std::make_unsigned_t<T>;
        const U x = static_cast<U>(a), y = static_cast<U>(b);
        switch (op) {
            case BinOp::Add: return static_cast<T>(static_cast<U>(x + y));
            case BinOp::Sub: return static_cast<T>(static_cast<U>(x - y));
            case BinOp::Mul: return static_cast<T>(static_cast<U>(x * y));
            case BinOp::Div: return b == 0 ? T(0) : static_cast<T>(a / b);
            case BinOp::Max: return a > b ? a : b;
            case BinOp::Min: return a < b ? a : b;
        }
        return T(0);
    }
}

template <typename T>
inline T ApplyUn(UnOp op, T a)
{
    if constexpr (IsFloatLike<T>::value) {
        const float x = static_cast<float>(a);
        float r = 0.f;
        switch (op) {
            case UnOp::Exp: r = std::exp(x); break;
            case UnOp::Ln: r = std::log(x); break;
            case UnOp::Abs: r = std::fabs(x); break;
            case UnOp::Relu: r = x > 0.f ? x : 0.f; break;
            case UnOp::Sqrt: r = std::sqrt(x); break;
            case UnOp::Rsqrt: r = 1.0f / std::sqrt(x); break;
            case UnOp::Reciprocal: r = 1.0f / x; break;
            case UnOp::Copy: return a;
        }
        return FromFloatRne<T>(r);
    } else {
        switch (op) {
            case UnOp::Abs: return a < 0 ? static_cast<T>(-static_cast<int64_t>(a)) : a;
            case UnOp::Relu: return a > 0 ? a : T(0);
            default: return a;
        }
    }
}

template <typename T>
constexpr bool kVecArith = std::is_same<T, half>::value || std::is_same<T, float>::value ||
                           std::is_same<T, int16_t>::value || std::is_same<T, int32_t>::value;
template <typename T>
constexpr bool kVecFloat = std::is_same<T, half>::value || std::is_same<T, float>::value;

template <typename T>
inline void BinaryCount(const AscendC::LocalTensor<T>& dst, const AscendC::LocalTensor<T>& a,
                        const AscendC::LocalTensor<T>& b, int64_t count, BinOp op, const char* api, Loc loc)
{
    BeginOp(PIPE_V, api, loc);
    CheckCount(count, api, loc);
    if (count == 0) return;
    const uint8_t* pa = VecSpan(a, count, false, api, "src0", loc);
    const uint8_t* pb = VecSpan(b, count, false, api, "src1", loc);
    uint8_t* pd = VecSpan(dst, count, true, api, "dst", loc);
    CheckNoPartialOverlap(dst, count, a, count, api, loc);
    CheckNoPartialOverlap(dst, count, b, count, api, loc);
    for (int64_t i = 0; i < count; ++i)
        StoreAs<T>(pd + i * sizeof(T), ApplyBin(op, LoadAs<T>(pa + i * sizeof(T)), LoadAs<T>(pb + i * sizeof(T))));
}

template <typename T>
inline void ScalarCount(const AscendC::LocalTensor<T>& dst, const AscendC::LocalTensor<T>& a, T s, int64_t count,
                        BinOp op, const char* api, Loc loc)
{
    BeginOp(PIPE_V, api, loc);
    CheckCount(count, api, loc);
    if (count == 0) return;
    const uint8_t* pa = VecSpan(a, count, false, api, "src", loc);
    uint8_t* pd = VecSpan(dst, count, true, api, "dst", loc);
    CheckNoPartialOverlap(dst, count, a, count, api, loc);
    for (int64_t i = 0; i < count; ++i) StoreAs<T>(pd + i * sizeof(T), ApplyBin(op, LoadAs<T>(pa + i * sizeof(T)), s));
}

template <typename T>
inline void UnaryCount(const AscendC::LocalTensor<T>& dst, const AscendC::LocalTensor<T>& a, int64_t count, UnOp op,
                       const char* api, Loc loc)
{
    BeginOp(PIPE_V, api, loc);
    CheckCount(count, api, loc);
    if (count == 0) return;
    const uint8_t* pa = VecSpan(a, count, false, api, "src", loc);
    uint8_t* pd = VecSpan(dst, count, true, api, "dst", loc);
    CheckNoPartialOverlap(dst, count, a, count, api, loc);
    for (int64_t i = 0; i < count; ++i) StoreAs<T>(pd + i * sizeof(T), ApplyUn(op, LoadAs<T>(pa + i * sizeof(T))));
}

// ---- repeat form ------------------------------------------------------------------------------------
struct MaskBits {
    uint64_t w[2];
    bool Test(uint32_t e) const { return (w[e >> 6] >> (e & 63u)) & 1u; }
    bool Empty() const { return w[0] == 0 && w[1] == 0; }
};
template <typename T>
inline MaskBits MaskFromCount(uint64_t mask, const char* api, Loc loc)
{
    const uint64_t per = 256 / sizeof(T);
    if (mask > per)
        Fatal(loc, "%s: mask = %llu out of range [0, %llu] (continuous mode, %s)", api,
              static_cast<unsigned long long>(mask), static_cast<unsigned long long>(per), TypeName<T>());
    MaskBits m{{0, 0}};
    for (uint64_t e = 0; e < mask; ++e) m.w[e >> 6] |= 1ull << (e & 63u);
    return m;
}
template <typename T>
inline MaskBits MaskFromArray(const uint64_t mask[], const char* api, Loc loc)
{
    MaskBits m{{mask[0], sizeof(T) >= 4 ? 0ull : mask[1]}};
    if (sizeof(T) >= 4 && mask[1] != 0)
        Fatal(loc, "%s: mask[1] must be 0 for %zu-byte types (only %zu elements per repeat)", api, sizeof(T),
              256 / sizeof(T));
    return m;
}
inline void CheckRepeat(int64_t repeatTime, const char* api, Loc loc)
{
    if (repeatTime < 0 || repeatTime > 255)
        Fatal(loc, "%s: repeatTime = %lld out of range [0, 255] (hardware would truncate it to %lld)", api,
              static_cast<long long>(repeatTime), static_cast<long long>(repeatTime & 255));
}
inline void CheckStride(uint64_t v, uint64_t hi, const char* api, const char* field, Loc loc)
{
    if (v > hi)
        Fatal(loc, "%s: %s = %llu out of range [0, %llu]", api, field, static_cast<unsigned long long>(v),
              static_cast<unsigned long long>(hi));
}

// Address of element e of repeat r of operand t, bounds-checked; records the access.
template <typename T>
inline uint8_t* RepElem(const AscendC::LocalTensor<T>& t, uint64_t r, uint32_t e, uint64_t blkStride,
                        uint64_t repStride, bool write, const char* what, Loc loc)
{
    constexpr uint32_t perBlk = 32 / sizeof(T);
    const uint64_t rel = (r * repStride + (e / perBlk) * blkStride) * 32u + (e % perBlk) * sizeof(T);
    uint8_t* p = LocalSpan(t.template ReinterpretCast<uint8_t>(), rel, sizeof(T), what, loc);
    TrackLocal(t.emu_mem, t.emu_off + static_cast<uint32_t>(rel), sizeof(T), write);
    return p;
}

template <typename T>
inline void BinaryRepeat(const AscendC::LocalTensor<T>& dst, const AscendC::LocalTensor<T>& a,
                         const AscendC::LocalTensor<T>& b, MaskBits m, int64_t repeatTime,
                         const AscendC::BinaryRepeatParams& p, BinOp op, const char* api, Loc loc)
{
    BeginOp(PIPE_V, api, loc);
    CheckRepeat(repeatTime, api, loc);
    CheckStride(p.dstRepStride, 255, api, "dstRepStride", loc);
    CheckStride(p.src0RepStride, 255, api, "src0RepStride", loc);
    CheckStride(p.src1RepStride, 255, api, "src1RepStride", loc);
    CheckStride(p.dstBlkStride, 255, api, "dstBlkStride", loc);
    CheckStride(p.src0BlkStride, 255, api, "src0BlkStride", loc);
    CheckStride(p.src1BlkStride, 255, api, "src1BlkStride", loc);
    if (p.dstBlkStride == 0) Fatal(loc, "%s: dstBlkStride = 0 is undefined behaviour (documented)", api);
    CheckVecOperand(dst, api, "dst", loc);
    CheckVecOperand(a, api, "src0", loc);
    CheckVecOperand(b, api, "src1", loc);
    if (repeatTime == 0 || m.Empty()) return;
    for (int64_t r = 0; r < repeatTime; ++r)
        for (uint32_t e = 0; e < 256 / sizeof(T); ++e) {
            if (!m.Test(e)) continue;
            const T x = LoadAs<T>(RepElem(a, r, e, p.src0BlkStride, p.src0RepStride, false, api, loc));
            const T y = LoadAs<T>(RepElem(b, r, e, p.src1BlkStride, p.src1RepStride, false, api, loc));
            StoreAs<T>(RepElem(dst, r, e, p.dstBlkStride, p.dstRepStride, true, api, loc), ApplyBin(op, x, y));
        }
}

// Unary/scalar repeat form: `scalarOp` selects op(x, s) (a BinOp) instead of a UnOp.
template <typename T>
inline void UnaryRepeat(const AscendC::LocalTensor<T>& dst, const AscendC::LocalTensor<T>& a, MaskBits m,
                        int64_t repeatTime, const AscendC::UnaryRepeatParams& p, bool scalarForm, UnOp uop, BinOp bop,
                        T s, const char* api, Loc loc)
{
    BeginOp(PIPE_V, api, loc);
    CheckRepeat(repeatTime, api, loc);
    CheckStride(p.dstRepStride, 255, api, "dstRepStride", loc);
    CheckStride(p.srcRepStride, 255, api, "srcRepStride", loc);
    CheckStride(p.dstBlkStride, 65535, api, "dstBlkStride", loc);
    CheckStride(p.srcBlkStride, 65535, api, "srcBlkStride", loc);
    if (p.dstBlkStride == 0) Fatal(loc, "%s: dstBlkStride = 0 is undefined behaviour (documented)", api);
    CheckVecOperand(dst, api, "dst", loc);
    CheckVecOperand(a, api, "src", loc);
    if (repeatTime == 0 || m.Empty()) return;
    for (int64_t r = 0; r < repeatTime; ++r)
        for (uint32_t e = 0; e < 256 / sizeof(T); ++e) {
            if (!m.Test(e)) continue;
            const T x = LoadAs<T>(RepElem(a, r, e, p.srcBlkStride, p.srcRepStride, false, api, loc));
            const T y = scalarForm ? ApplyBin(bop, x, s) : ApplyUn(uop, x);
            StoreAs<T>(RepElem(dst, r, e, p.dstBlkStride, p.dstRepStride, true, api, loc), y);
        }
}

// Binary-tree sum of v (adjacent pairs first, as documented for ReduceDataBlock/ReduceSum),
// rounding every partial sum to T.
template <typename T>
inline T TreeSum(std::vector<float>& v)
{
    if (v.empty()) return T(0);
    size_t n = v.size();
    while (n > 1) {
        size_t k = 0;
        for (size_t i = 0; i + 1 < n; i += 2) v[k++] = static_cast<float>(FromFloatRne<T>(v[i] + v[i + 1]));
        if (n % 2) v[k++] = v[n - 1];
        n = k;
    }
    return FromFloatRne<T>(v[0]);
}

// Index bits stored in an element of type T (documented: read them back with a reinterpret cast).
template <typename T>
inline T IndexAsElem(uint32_t idx)
{
    T v;
    if (sizeof(T) == 2) {
        const uint16_t b = static_cast<uint16_t>(idx);
        std::memcpy(&v, &b, 2);
    } else {
        std::memcpy(&v, &idx, sizeof(T));
    }
    return v;
}

}  // namespace detail
}  // namespace longattn_emu

#define LAEMU_BINARY_OP(Name, OPK, TYPECOND) \
    template <typename T> \
    inline void Name(const LocalTensor<T>& dst, const LocalTensor<T>& src0, const LocalTensor<T>& src1, \
                     const int32_t& count, LAEMU_LOC) \
    { \
        static_assert(TYPECOND, #Name ": unsupported element type on Atlas A2/A3"); \
        longattn_emu::detail::BinaryCount(dst, src0, src1, count, longattn_emu::detail::BinOp::OPK, #Name, \
                                          LAEMU_HERE); \
    } \
    template <typename T, bool isSetMask = true> \
    inline void Name(const LocalTensor<T>& dst, const LocalTensor<T>& src0, const LocalTensor<T>& src1, uint64_t mask, \
                     int32_t repeatTime, const BinaryRepeatParams& params, LAEMU_LOC) \
    { \
        static_assert(TYPECOND, #Name ": unsupported element type on Atlas A2/A3"); \
        static_assert(isSetMask, #Name ": isSetMask=false (mask set by SetVectorMask) is not emulated"); \
        longattn_emu::detail::BinaryRepeat(dst, src0, src1, \
                                           longattn_emu::detail::MaskFromCount<T>(mask, #Name, LAEMU_HERE), \
                                           repeatTime, params, longattn_emu::detail::BinOp::OPK, #Name, LAEMU_HERE); \
    } \
    template <typename T, bool isSetMask = true> \
    inline void Name(const LocalTensor<T>& dst, const LocalTensor<T>& src0, const LocalTensor<T>& src1, \
                     const uint64_t mask[], int32_t repeatTime, const BinaryRepeatParams& params, LAEMU_LOC) \
    { \
        static_assert(TYPECOND, #Name ": unsupported element type on Atlas A2/A3"); \
        static_assert(isSetMask, #Name ": isSetMask=false (mask set by SetVectorMask) is not emulated"); \
        longattn_emu::detail::BinaryRepeat(dst, src0, src1, \
                                           longattn_emu::detail::MaskFromArray<T>(mask, #Name, LAEMU_HERE), \
                                           repeatTime, params, longattn_emu::detail::BinOp::OPK, #Name, LAEMU_HERE); \
    }

#define LAEMU_SCALAR_OP(Name, OPK, TYPECOND) \
    template <typename T> \
    inline void Name(const LocalTensor<T>& dst, const LocalTensor<T>& src, const T& scalar, const int32_t& count, \
                     LAEMU_LOC) \
    { \
        static_assert(TYPECOND, #Name ": unsupported element type on Atlas A2/A3"); \
        longattn_emu::detail::ScalarCount(dst, src, scalar, count, longattn_emu::detail::BinOp::OPK, #Name, \
                                          LAEMU_HERE); \
    } \
    template <typename T, bool isSetMask = true> \
    inline void Name(const LocalTensor<T>& dst, const LocalTensor<T>& src, const T& scalar, uint64_t mask, \
                     int32_t repeatTime, const UnaryRepeatParams& params, LAEMU_LOC) \
    { \
        static_assert(TYPECOND, #Name ": unsupported element type on Atlas A2/A3"); \
        static_assert(isSetMask, #Name ": isSetMask=false (mask set by SetVectorMask) is not emulated"); \
        longattn_emu::detail::UnaryRepeat(dst, src, longattn_emu::detail::MaskFromCount<T>(mask, #Name, LAEMU_HERE), \
                                          repeatTime, params, true, longattn_emu::detail::UnOp::Copy, \
                                          longattn_emu::detail::BinOp::OPK, scalar, #Name, LAEMU_HERE); \
    } \
    template <typename T, bool isSetMask = true> \
    inline void Name(const LocalTensor<T>& dst, const LocalTensor<T>& src, const T& scalar, const uint64_t mask[], \
                     int32_t repeatTime, const UnaryRepeatParams& params, LAEMU_LOC) \
    { \
        static_assert(TYPECOND, #Name ": unsupported element type on Atlas A2/A3"); \
        static_assert(isSetMask, #Name ": isSetMask=false (mask set by SetVectorMask) is not emulated"); \
        longattn_emu::detail::UnaryRepeat(dst, src, longattn_emu::detail::MaskFromArray<T>(mask, #Name, LAEMU_HERE), \
                                          repeatTime, params, true, longattn_emu::detail::UnOp::Copy, \
                                          longattn_emu::detail::BinOp::OPK, scalar, #Name, LAEMU_HERE); \
    }

#define LAEMU_UNARY_OP(Name, OPK, TYPECOND) \
    template <typename T> \
    inline void Name(const LocalTensor<T>& dst, const LocalTensor<T>& src, const int32_t& count, LAEMU_LOC) \
    { \
        static_assert(TYPECOND, #Name ": unsupported element type on Atlas A2/A3"); \
        longattn_emu::detail::UnaryCount(dst, src, count, longattn_emu::detail::UnOp::OPK, #Name, LAEMU_HERE); \
    } \
    template <typename T, bool isSetMask = true> \
    inline void Name(const LocalTensor<T>& dst, const LocalTensor<T>& src, uint64_t mask, int32_t repeatTime, \
                     const UnaryRepeatParams& params, LAEMU_LOC) \
    { \
        static_assert(TYPECOND, #Name ": unsupported element type on Atlas A2/A3"); \
        static_assert(isSetMask, #Name ": isSetMask=false (mask set by SetVectorMask) is not emulated"); \
        longattn_emu::detail::UnaryRepeat(dst, src, longattn_emu::detail::MaskFromCount<T>(mask, #Name, LAEMU_HERE), \
                                          repeatTime, params, false, longattn_emu::detail::UnOp::OPK, \
                                          longattn_emu::detail::BinOp::Add, T(0), #Name, LAEMU_HERE); \
    } \
    template <typename T, bool isSetMask = true> \
    inline void Name(const LocalTensor<T>& dst, const LocalTensor<T>& src, const uint64_t mask[], int32_t repeatTime, \
                     const UnaryRepeatParams& params, LAEMU_LOC) \
    { \
        static_assert(TYPECOND, #Name ": unsupported element type on Atlas A2/A3"); \
        static_assert(isSetMask, #Name ": isSetMask=false (mask set by SetVectorMask) is not emulated"); \
        longattn_emu::detail::UnaryRepeat(dst, src, longattn_emu::detail::MaskFromArray<T>(mask, #Name, LAEMU_HERE), \
                                          repeatTime, params, false, longattn_emu::detail::UnOp::OPK, \
                                          longattn_emu::detail::BinOp::Add, T(0), #Name, LAEMU_HERE); \
    }

namespace AscendC {

LAEMU_BINARY_OP(Add, Add, longattn_emu::detail::kVecArith<T>)
LAEMU_BINARY_OP(Sub, Sub, longattn_emu::detail::kVecArith<T>)
LAEMU_BINARY_OP(Mul, Mul, longattn_emu::detail::kVecArith<T>)
LAEMU_BINARY_OP(Div, Div, longattn_emu::detail::kVecFloat<T>)
LAEMU_BINARY_OP(Max, Max, longattn_emu::detail::kVecArith<T>)
LAEMU_BINARY_OP(Min, Min, longattn_emu::detail::kVecArith<T>)

LAEMU_SCALAR_OP(Adds, Add, longattn_emu::detail::kVecArith<T>)
LAEMU_SCALAR_OP(Muls, Mul, longattn_emu::detail::kVecArith<T>)
LAEMU_SCALAR_OP(Maxs, Max, longattn_emu::detail::kVecArith<T>)
LAEMU_SCALAR_OP(Mins, Min, longattn_emu::detail::kVecArith<T>)

LAEMU_UNARY_OP(Exp, Exp, longattn_emu::detail::kVecFloat<T>)
LAEMU_UNARY_OP(Ln, Ln, longattn_emu::detail::kVecFloat<T>)
LAEMU_UNARY_OP(Abs, Abs, longattn_emu::detail::kVecFloat<T>)
LAEMU_UNARY_OP(Relu, Relu, (longattn_emu::detail::kVecFloat<T> || std::is_same<T, int32_t>::value))
LAEMU_UNARY_OP(Sqrt, Sqrt, longattn_emu::detail::kVecFloat<T>)
LAEMU_UNARY_OP(Rsqrt, Rsqrt, longattn_emu::detail::kVecFloat<T>)
LAEMU_UNARY_OP(Reciprocal, Reciprocal, longattn_emu::detail::kVecFloat<T>)

// dst = src * scalar + dst (count form, same element type).
template <typename T>
inline void Axpy(const LocalTensor<T>& dst, const LocalTensor<T>& src, const T& scalar, const int32_t& count, LAEMU_LOC)
{
    using namespace longattn_emu::detail;
    static_assert(kVecFloat<T>, "Axpy: unsupported element type");
    const Loc loc = LAEMU_HERE;
    BeginOp(PIPE_V, "Axpy", loc);
    CheckCount(count, "Axpy", loc);
    if (count == 0) return;
    const uint8_t* ps = VecSpan(src, count, false, "Axpy", "src", loc);
    uint8_t* pd = VecSpan(dst, count, false, "Axpy", "dst", loc);
    TrackLocal(dst.emu_mem, dst.emu_off, static_cast<uint32_t>(count * sizeof(T)), true);
    CheckNoPartialOverlap(dst, count, src, count, "Axpy", loc);
    for (int32_t i = 0; i < count; ++i) {
        const float r = static_cast<float>(LoadAs<T>(ps + i * sizeof(T))) * static_cast<float>(scalar) +
                        static_cast<float>(LoadAs<T>(pd + i * sizeof(T)));
        StoreAs<T>(pd + i * sizeof(T), FromFloatRne<T>(r));
    }
}

// ---- fills ------------------------------------------------------------------------------------------
template <typename T>
inline void Duplicate(const LocalTensor<T>& dst, const T& scalarValue, const int32_t& count, LAEMU_LOC)
{
    using namespace longattn_emu::detail;
    const Loc loc = LAEMU_HERE;
    BeginOp(PIPE_V, "Duplicate", loc);
    CheckCount(count, "Duplicate", loc);
    if (count == 0) return;
    uint8_t* pd = VecSpan(dst, count, true, "Duplicate", "dst", loc);
    for (int32_t i = 0; i < count; ++i) StoreAs<T>(pd + i * sizeof(T), scalarValue);
}
template <typename T, bool isSetMask = true>
inline void Duplicate(const LocalTensor<T>& dst, const T& scalarValue, uint64_t mask, int32_t repeatTime,
                      uint32_t dstBlockStride, uint32_t dstRepeatStride, LAEMU_LOC)
{
    static_assert(isSetMask, "isSetMask=false (mask set by SetVectorMask) is not emulated");
    using namespace longattn_emu::detail;
    const Loc loc = LAEMU_HERE;
    BeginOp(PIPE_V, "Duplicate", loc);
    const MaskBits m = MaskFromCount<T>(mask, "Duplicate", loc);
    CheckRepeat(repeatTime, "Duplicate", loc);
    CheckStride(dstRepeatStride, 255, "Duplicate", "dstRepeatStride", loc);
    CheckVecOperand(dst, "Duplicate", "dst", loc);
    if (dstBlockStride == 0) Fatal(loc, "Duplicate: dstBlockStride = 0 is undefined behaviour (documented)");
    for (int32_t r = 0; r < repeatTime; ++r)
        for (uint32_t e = 0; e < 256 / sizeof(T); ++e)
            if (m.Test(e))
                StoreAs<T>(RepElem(dst, r, e, dstBlockStride, dstRepeatStride, true, "Duplicate", loc), scalarValue);
}

// dst[i] = firstValue + i.
template <typename T>
inline void CreateVecIndex(const LocalTensor<T>& dst, const T& firstValue, uint32_t count, LAEMU_LOC)
{
    using namespace longattn_emu::detail;
    const Loc loc = LAEMU_HERE;
    BeginOp(PIPE_V, "CreateVecIndex", loc);
    if (count == 0) return;
    uint8_t* pd = VecSpan(dst, count, true, "CreateVecIndex", "dst", loc);
    for (uint32_t i = 0; i < count; ++i) {
        if constexpr (IsFloatLike<T>::value)
            StoreAs<T>(pd + i * sizeof(T), FromFloatRne<T>(static_cast<float>(firstValue) + static_cast<float>(i)));
        else
            StoreAs<T>(pd + i * sizeof(T), static_cast<T>(firstValue + static_cast<T>(i)));
    }
}

// Broadcast: element i*8+j of src fills the 32-byte block dst + (i*dstRepStride + j*dstBlkStride)*32.
template <typename T>
inline void Brcb(const LocalTensor<T>& dst, const LocalTensor<T>& src, int32_t repeatTime,
                 const BrcbRepeatParams& repeatParams, LAEMU_LOC)
{
    using namespace longattn_emu::detail;
    static_assert(sizeof(T) == 2 || sizeof(T) == 4, "Brcb: 16- or 32-bit element types only (A2/A3)");
    const Loc loc = LAEMU_HERE;
    BeginOp(PIPE_V, "Brcb", loc);
    CheckRepeat(repeatTime, "Brcb", loc);
    CheckVecOperand(dst, "Brcb", "dst", loc);
    CheckVecOperand(src, "Brcb", "src", loc);
    if (repeatParams.dstBlkStride == 0) Fatal(loc, "Brcb: dstBlkStride = 0 is undefined behaviour (documented)");
    if (repeatTime == 0) return;
    const uint8_t* ps = VecSpan(src, static_cast<uint64_t>(repeatTime) * 8, false, "Brcb", "src", loc);
    std::vector<T> vals(static_cast<size_t>(repeatTime) * 8);
    for (size_t i = 0; i < vals.size(); ++i) vals[i] = LoadAs<T>(ps + i * sizeof(T));
    const uint64_t sb = src.emu_off, se = sb + vals.size() * sizeof(T);
    for (int32_t i = 0; i < repeatTime; ++i)
        for (uint32_t j = 0; j < 8; ++j) {
            const uint64_t rel =
                (static_cast<uint64_t>(i) * repeatParams.dstRepStride + j * repeatParams.dstBlkStride) * 32u;
            const uint64_t ab = dst.emu_off + rel;
            if (ab < se && sb < ab + 32) Fatal(loc, "Brcb: source and destination overlap (not supported)");
            uint8_t* pd = LocalSpan(dst.template ReinterpretCast<uint8_t>(), rel, 32, "Brcb dst", loc);
            TrackLocal(dst.emu_mem, static_cast<uint32_t>(ab), 32, true);
            for (uint32_t k = 0; k < 32 / sizeof(T); ++k) StoreAs<T>(pd + k * sizeof(T), vals[i * 8 + j]);
        }
}

// ---- Cast ---------------------------------------------------------------------------------------------
namespace emu_internal {
template <typename D, typename S>
inline bool CastSupported(RoundMode m)
{
    const bool directed = m == RoundMode::CAST_RINT || m == RoundMode::CAST_FLOOR || m == RoundMode::CAST_CEIL ||
                          m == RoundMode::CAST_ROUND || m == RoundMode::CAST_TRUNC;
    if (std::is_same<S, float>::value && std::is_same<D, half>::value)
        return directed || m == RoundMode::CAST_ODD || m == RoundMode::CAST_NONE;
    if (std::is_same<S, float>::value && (std::is_same<D, bfloat16_t>::value || std::is_same<D, int32_t>::value ||
                                          std::is_same<D, float>::value || std::is_same<D, int16_t>::value))
        return directed;
    if ((std::is_same<S, half>::value || std::is_same<S, bfloat16_t>::value) && std::is_same<D, float>::value)
        return m == RoundMode::CAST_NONE;
    if ((std::is_same<S, half>::value || std::is_same<S, bfloat16_t>::value) && std::is_same<D, int32_t>::value)
        return directed;
    if (std::is_same<S, int32_t>::value && std::is_same<D, float>::value) return directed || m == RoundMode::CAST_NONE;
    if (std::is_same<S, int16_t>::value && std::is_same<D, half>::value) return directed || m == RoundMode::CAST_NONE;
    if (std::is_same<S, int16_t>::value && std::is_same<D, float>::value) return m == RoundMode::CAST_NONE;
    return false;
}
template <typename D, typename S>
inline D CastOne(S v, RoundMode m)
{
    using namespace longattn_emu::detail;
    const RoundMode mm = (m == RoundMode::CAST_NONE) ? RoundMode::CAST_RINT : m;
    if constexpr (std::is_same<D, half>::value) {
        return FloatToHalf(static_cast<float>(ToDouble(v)), mm);
    } else if constexpr (std::is_same<D, bfloat16_t>::value) {
        return FloatToBf16(static_cast<float>(ToDouble(v)), mm);
    } else if constexpr (std::is_same<D, int32_t>::value) {
        return DoubleToInt32(ToDouble(v), mm);
    } else if constexpr (std::is_same<D, int16_t>::value) {
        const int32_t r = DoubleToInt32(ToDouble(v), mm);
        return static_cast<int16_t>(r > 32767 ? 32767 : (r < -32768 ? -32768 : r));
    } else if constexpr (std::is_same<D, float>::value) {
        if (std::is_same<S, float>::value) {  // float -> float: round to an integral value
            const double x = ToDouble(v);
            return std::isfinite(x) ? static_cast<float>(RoundIntegral(x, mm)) : static_cast<float>(x);
        }
        if (std::is_same<S, int32_t>::value) return Int32ToFloat(static_cast<int32_t>(ToDouble(v)), mm);
        return static_cast<float>(ToDouble(v));  // half/bf16/int16 -> float: exact
    } else {
        return D(0);
    }
}
}  // namespace emu_internal

// Supported pairs (Atlas A2/A3 table): float->half (RINT FLOOR CEIL ROUND TRUNC ODD NONE=RINT),
// float->bfloat16_t/int32_t/int16_t/float (RINT FLOOR CEIL ROUND TRUNC), half/bf16->float (NONE),
// half/bf16->int32_t (directed), int32_t->float (directed, NONE=RINT), int16_t->half, int16_t->float.
template <typename D, typename S>
inline void Cast(const LocalTensor<D>& dst, const LocalTensor<S>& src, const RoundMode& roundMode, uint32_t count,
                 LAEMU_LOC)
{
    using namespace longattn_emu::detail;
    const Loc loc = LAEMU_HERE;
    BeginOp(PIPE_V, "Cast", loc);
    if (!emu_internal::CastSupported<D, S>(roundMode))
        Fatal(loc, "Cast %s -> %s with %s is not supported on Atlas A2/A3 (see the Cast support table in README)",
              TypeName<S>(), TypeName<D>(), RoundModeName(roundMode));
    if (count == 0) return;
    const uint8_t* ps = VecSpan(src, count, false, "Cast", "src", loc);
    uint8_t* pd = VecSpan(dst, count, true, "Cast", "dst", loc);
    CheckNoPartialOverlap(dst, count, src, count, "Cast", loc);
    std::vector<D> out(count);
    for (uint32_t i = 0; i < count; ++i) out[i] = emu_internal::CastOne<D, S>(LoadAs<S>(ps + i * sizeof(S)), roundMode);
    std::memcpy(pd, out.data(), count * sizeof(D));
}

// Scalar conversions (documented scalar Cast, PIPE_S) and the older ToFloat/ToBfloat16 names.
inline bfloat16_t Cast(const float& fVal) { return bfloat16_t(fVal); }
inline float Cast(const bfloat16_t& bVal) { return static_cast<float>(bVal); }
inline float ToFloat(const bfloat16_t& bVal) { return static_cast<float>(bVal); }
inline bfloat16_t ToBfloat16(const float& fVal) { return bfloat16_t(fVal); }

// ---- compare / select ------------------------------------------------------------------------------
namespace emu_internal {
template <typename T>
inline bool CmpOne(T a, T b, CMPMODE mode)
{
    const double x = longattn_emu::detail::ToDouble(a), y = longattn_emu::detail::ToDouble(b);
    switch (mode) {
        case CMPMODE::LT: return x < y;
        case CMPMODE::GT: return x > y;
        case CMPMODE::EQ: return x == y;
        case CMPMODE::LE: return x <= y;
        case CMPMODE::GE: return x >= y;
        case CMPMODE::NE: return x != y;
    }
    return false;
}
template <typename T, typename U>
inline void CompareImpl(const LocalTensor<U>& dst, const LocalTensor<T>& src0, const LocalTensor<T>* src1, T scalar,
                        CMPMODE mode, uint32_t count, const char* api, longattn_emu::detail::Loc loc)
{
    using namespace longattn_emu::detail;
    static_assert(std::is_same<U, uint8_t>::value || std::is_same<U, int8_t>::value, "Compare: dst must be uint8_t");
    static_assert(std::is_same<T, half>::value || std::is_same<T, float>::value || std::is_same<T, int32_t>::value,
                  "Compare: half, float or int32_t (EQ only) sources on A2/A3");
    BeginOp(PIPE_V, api, loc);
    if (std::is_same<T, int32_t>::value && mode != CMPMODE::EQ)
        Fatal(loc, "%s: int32_t sources only support CMPMODE::EQ on Atlas A2/A3", api);
    if ((static_cast<uint64_t>(count) * sizeof(T)) % 256u != 0)
        Fatal(loc, "%s: count*sizeof(T) = %llu bytes is not a multiple of 256; hardware silently ignores the tail", api,
              static_cast<unsigned long long>(count) * sizeof(T));
    if (count == 0) return;
    const uint8_t* pa = VecSpan(src0, count, false, api, "src0", loc);
    const uint8_t* pb = src1 ? VecSpan(*src1, count, false, api, "src1", loc) : nullptr;
    uint8_t* pd = VecSpan(dst, count / 8, true, api, "dst", loc);
    std::vector<uint8_t> bits(count / 8, 0);
    for (uint32_t i = 0; i < count; ++i) {
        const T a = LoadAs<T>(pa + i * sizeof(T));
        const T b = pb ? LoadAs<T>(pb + i * sizeof(T)) : scalar;
        if (CmpOne(a, b, mode)) bits[i / 8] |= static_cast<uint8_t>(1u << (i % 8));
    }
    std::memcpy(pd, bits.data(), bits.size());
}
}  // namespace emu_internal

// Bit i of the dst byte stream (LSB first) = compare(src0[i], src1[i]); count*sizeof(T) % 256 == 0.
template <typename T, typename U>
inline void Compare(const LocalTensor<U>& dst, const LocalTensor<T>& src0, const LocalTensor<T>& src1, CMPMODE cmpMode,
                    uint32_t count, LAEMU_LOC)
{
    emu_internal::CompareImpl(dst, src0, &src1, T(0), cmpMode, count, "Compare", LAEMU_HERE);
}
// CANN 8.5.0 name (renamed Compares in 9.0).
template <typename T, typename U>
inline void CompareScalar(const LocalTensor<U>& dst, const LocalTensor<T>& src0, const T src1Scalar, CMPMODE cmpMode,
                          uint32_t count, LAEMU_LOC)
{
    emu_internal::CompareImpl(dst, src0, static_cast<const LocalTensor<T>*>(nullptr), src1Scalar, cmpMode, count,
                              "CompareScalar", LAEMU_HERE);
}

// Select, count form. Bit i of selMask (LSB-first byte stream) chooses src0[i] (1) or src1 (0).
// VSEL_TENSOR_SCALAR_MODE takes a scalar src1, VSEL_TENSOR_TENSOR_MODE a tensor.
template <typename T, typename U>
inline void Select(const LocalTensor<T>& dst, const LocalTensor<U>& selMask, const LocalTensor<T>& src0, T src1,
                   SELMODE selMode, uint32_t count, LAEMU_LOC)
{
    using namespace longattn_emu::detail;
    const Loc loc = LAEMU_HERE;
    BeginOp(PIPE_V, "Select", loc);
    if (selMode != SELMODE::VSEL_TENSOR_SCALAR_MODE)
        Fatal(loc, "Select(dst, selMask, src0, scalar, ...) needs SELMODE::VSEL_TENSOR_SCALAR_MODE");
    if (count == 0) return;
    const uint8_t* pm =
        VecSpan(selMask.template ReinterpretCast<uint8_t>(), (count + 7) / 8, false, "Select", "selMask", loc);
    const uint8_t* pa = VecSpan(src0, count, false, "Select", "src0", loc);
    uint8_t* pd = VecSpan(dst, count, true, "Select", "dst", loc);
    CheckNoPartialOverlap(dst, count, src0, count, "Select", loc);
    for (uint32_t i = 0; i < count; ++i) {
        const bool bit = (pm[i / 8] >> (i % 8)) & 1u;
        StoreAs<T>(pd + i * sizeof(T), bit ? LoadAs<T>(pa + i * sizeof(T)) : src1);
    }
}
template <typename T, typename U>
inline void Select(const LocalTensor<T>& dst, const LocalTensor<U>& selMask, const LocalTensor<T>& src0,
                   const LocalTensor<T>& src1, SELMODE selMode, uint32_t count, LAEMU_LOC)
{
    using namespace longattn_emu::detail;
    const Loc loc = LAEMU_HERE;
    BeginOp(PIPE_V, "Select", loc);
    if (selMode != SELMODE::VSEL_TENSOR_TENSOR_MODE)
        Fatal(loc,
              "Select(dst, selMask, src0, src1Tensor, ...): only SELMODE::VSEL_TENSOR_TENSOR_MODE is emulated "
              "(mode 0 needs the compare-mask register)");
    if (count == 0) return;
    const uint8_t* pm =
        VecSpan(selMask.template ReinterpretCast<uint8_t>(), (count + 7) / 8, false, "Select", "selMask", loc);
    const uint8_t* pa = VecSpan(src0, count, false, "Select", "src0", loc);
    const uint8_t* pb = VecSpan(src1, count, false, "Select", "src1", loc);
    uint8_t* pd = VecSpan(dst, count, true, "Select", "dst", loc);
    CheckNoPartialOverlap(dst, count, src0, count, "Select", loc);
    CheckNoPartialOverlap(dst, count, src1, count, "Select", loc);
    for (uint32_t i = 0; i < count; ++i) {
        const bool bit = (pm[i / 8] >> (i % 8)) & 1u;
        StoreAs<T>(pd + i * sizeof(T), LoadAs<T>((bit ? pa : pb) + i * sizeof(T)));
    }
}

// ---- Gather: dst[i] = src[(srcBaseAddr + srcOffset[i]) / sizeof(T)], offsets in BYTES. -------------------
template <typename T>
inline void Gather(const LocalTensor<T>& dst, const LocalTensor<T>& src, const LocalTensor<uint32_t>& srcOffset,
                   const uint32_t srcBaseAddr, const uint32_t count, LAEMU_LOC)
{
    using namespace longattn_emu::detail;
    const Loc loc = LAEMU_HERE;
    BeginOp(PIPE_V, "Gather", loc);
    if (count == 0) return;
    CheckVecOperand(src, "Gather", "src", loc);
    const uint8_t* po = VecSpan(srcOffset, count, false, "Gather", "srcOffset", loc);
    uint8_t* pd = VecSpan(dst, count, true, "Gather", "dst", loc);
    if (dst.emu_off == src.emu_off) Fatal(loc, "Gather: source and destination must not be the same buffer");
    std::vector<T> out(count);
    for (uint32_t i = 0; i < count; ++i) {
        const uint64_t byte = static_cast<uint64_t>(srcBaseAddr) + LoadAs<uint32_t>(po + i * 4);
        if (byte % sizeof(T) != 0)
            Fatal(loc, "Gather: srcBaseAddr + srcOffset[%u] = %llu bytes is not aligned to sizeof(%s)", i,
                  static_cast<unsigned long long>(byte), TypeName<T>());
        const uint8_t* ps =
            LocalSpan(src.template ReinterpretCast<uint8_t>(), byte, sizeof(T), "Gather src element", loc);
        TrackLocal(src.emu_mem, src.emu_off + static_cast<uint32_t>(byte), sizeof(T), false);
        out[i] = LoadAs<T>(ps);
    }
    std::memcpy(pd, out.data(), count * sizeof(T));
}

// ---- reductions ----------------------------------------------------------------------------------------
namespace emu_internal {
// Gather the active elements of one repeat (value, position in the repeat).
template <typename T>
inline void RepeatValues(const LocalTensor<T>& src, int64_t r, const longattn_emu::detail::MaskBits& m,
                         uint64_t srcBlkStride, uint64_t srcRepStride, std::vector<float>& vals,
                         std::vector<uint32_t>& pos, const char* api, longattn_emu::detail::Loc loc)
{
    vals.clear();
    pos.clear();
    for (uint32_t e = 0; e < 256 / sizeof(T); ++e) {
        if (!m.Test(e)) continue;
        vals.push_back(static_cast<float>(longattn_emu::detail::LoadAs<T>(
            longattn_emu::detail::RepElem(src, r, e, srcBlkStride, srcRepStride, false, api, loc))));
        pos.push_back(e);
    }
}
template <typename T>
inline void WholeReduceImpl(int kind /*0 max 1 min 2 sum*/, const LocalTensor<T>& dst, const LocalTensor<T>& src,
                            longattn_emu::detail::MaskBits m, int32_t repeatTime, int32_t dstRepStride,
                            int32_t srcBlkStride, int32_t srcRepStride, ReduceOrder order, const char* api,
                            longattn_emu::detail::Loc loc)
{
    using namespace longattn_emu::detail;
    static_assert(std::is_same<T, half>::value || std::is_same<T, float>::value, "WholeReduce*: half or float");
    BeginOp(PIPE_V, api, loc);
    CheckRepeat(repeatTime, api, loc);
    CheckStride(static_cast<uint64_t>(dstRepStride < 0 ? 1 << 20 : dstRepStride), 65535, api, "dstRepStride", loc);
    CheckStride(static_cast<uint64_t>(srcBlkStride < 0 ? 1 << 20 : srcBlkStride), 65535, api, "srcBlkStride", loc);
    CheckStride(static_cast<uint64_t>(srcRepStride < 0 ? 1 << 20 : srcRepStride), 65535, api, "srcRepStride", loc);
    CheckVecOperand(src, api, "src", loc);
    // Destination unit and alignment (documented table): sum / value-only: one element;
    // value+index: two elements' worth; index-only: 4 bytes.
    uint32_t unit = sizeof(T);
    if (kind != 2 && (order == ReduceOrder::ORDER_VALUE_INDEX || order == ReduceOrder::ORDER_INDEX_VALUE))
        unit = 2 * sizeof(T);
    if (kind != 2 && order == ReduceOrder::ORDER_ONLY_INDEX) unit = 4;
    CheckVecOperand(dst, api, "dst", loc, unit);
    if (repeatTime == 0 || m.Empty()) return;
    std::vector<float> vals;
    std::vector<uint32_t> pos;
    for (int32_t r = 0; r < repeatTime; ++r) {
        RepeatValues(src, r, m, srcBlkStride, srcRepStride, vals, pos, api, loc);
        const uint64_t rel = static_cast<uint64_t>(r) * dstRepStride * unit;
        uint8_t* pd = LocalSpan(dst.template ReinterpretCast<uint8_t>(), rel, unit, api, loc);
        TrackLocal(dst.emu_mem, dst.emu_off + static_cast<uint32_t>(rel), unit, true);
        if (kind == 2) {
            // Whole-repeat binary tree over the 256/sizeof(T) slots, masked-off slots as 0.
            std::vector<float> slots(256 / sizeof(T), 0.f);
            for (size_t i = 0; i < vals.size(); ++i) slots[pos[i]] = vals[i];
            StoreAs<T>(pd, TreeSum<T>(slots));
            continue;
        }
        size_t best = 0;
        for (size_t i = 1; i < vals.size(); ++i)
            if (kind == 0 ? vals[i] > vals[best] : vals[i] < vals[best]) best = i;  // ties: smallest index
        const T v = FromFloatRne<T>(vals[best]);
        const uint32_t idx = pos[best];
        switch (order) {
            case ReduceOrder::ORDER_VALUE_INDEX:
                StoreAs<T>(pd, v);
                StoreAs<T>(pd + sizeof(T), IndexAsElem<T>(idx));
                break;
            case ReduceOrder::ORDER_INDEX_VALUE:
                StoreAs<T>(pd, IndexAsElem<T>(idx));
                StoreAs<T>(pd + sizeof(T), v);
                break;
            case ReduceOrder::ORDER_ONLY_VALUE: StoreAs<T>(pd, v); break;
            case ReduceOrder::ORDER_ONLY_INDEX: StoreAs<uint32_t>(pd, idx); break;
        }
    }
}
}  // namespace emu_internal

// Per-repeat reductions (CANN 8.5.0 names; ReduceRepeat<...> in 9.1). The index is the position
// inside the repeat, stored as raw bits of T (uint16 for half, uint32 for float).
template <typename T, bool isSetMask = true>
inline void WholeReduceMax(const LocalTensor<T>& dst, const LocalTensor<T>& src, const int32_t mask,
                           const int32_t repeatTime, const int32_t dstRepStride, const int32_t srcBlkStride,
                           const int32_t srcRepStride, ReduceOrder order = ReduceOrder::ORDER_VALUE_INDEX, LAEMU_LOC)
{
    static_assert(isSetMask, "isSetMask=false (mask set by SetVectorMask) is not emulated");
    const auto m = longattn_emu::detail::MaskFromCount<T>(mask < 0 ? 1 << 20 : mask, "WholeReduceMax", LAEMU_HERE);
    emu_internal::WholeReduceImpl(0, dst, src, m, repeatTime, dstRepStride, srcBlkStride, srcRepStride, order,
                                  "WholeReduceMax", LAEMU_HERE);
}
template <typename T, bool isSetMask = true>
inline void WholeReduceMax(const LocalTensor<T>& dst, const LocalTensor<T>& src, const uint64_t mask[],
                           const int32_t repeatTime, const int32_t dstRepStride, const int32_t srcBlkStride,
                           const int32_t srcRepStride, ReduceOrder order = ReduceOrder::ORDER_VALUE_INDEX, LAEMU_LOC)
{
    static_assert(isSetMask, "isSetMask=false (mask set by SetVectorMask) is not emulated");
    emu_internal::WholeReduceImpl(0, dst, src,
                                  longattn_emu::detail::MaskFromArray<T>(mask, "WholeReduceMax", LAEMU_HERE),
                                  repeatTime, dstRepStride, srcBlkStride, srcRepStride, order, "WholeReduceMax",
                                  LAEMU_HERE);
}
template <typename T, bool isSetMask = true>
inline void WholeReduceMin(const LocalTensor<T>& dst, const LocalTensor<T>& src, const int32_t mask,
                           const int32_t repeatTime, const int32_t dstRepStride, const int32_t srcBlkStride,
                           const int32_t srcRepStride, ReduceOrder order = ReduceOrder::ORDER_VALUE_INDEX, LAEMU_LOC)
{
    static_assert(isSetMask, "isSetMask=false (mask set by SetVectorMask) is not emulated");
    const auto m = longattn_emu::detail::MaskFromCount<T>(mask < 0 ? 1 << 20 : mask, "WholeReduceMin", LAEMU_HERE);
    emu_internal::WholeReduceImpl(1, dst, src, m, repeatTime, dstRepStride, srcBlkStride, srcRepStride, order,
                                  "WholeReduceMin", LAEMU_HERE);
}
template <typename T, bool isSetMask = true>
inline void WholeReduceSum(const LocalTensor<T>& dst, const LocalTensor<T>& src, const int32_t mask,
                           const int32_t repeatTime, const int32_t dstRepStride, const int32_t srcBlkStride,
                           const int32_t srcRepStride, LAEMU_LOC)
{
    static_assert(isSetMask, "isSetMask=false (mask set by SetVectorMask) is not emulated");
    const auto m = longattn_emu::detail::MaskFromCount<T>(mask < 0 ? 1 << 20 : mask, "WholeReduceSum", LAEMU_HERE);
    emu_internal::WholeReduceImpl(2, dst, src, m, repeatTime, dstRepStride, srcBlkStride, srcRepStride,
                                  ReduceOrder::ORDER_ONLY_VALUE, "WholeReduceSum", LAEMU_HERE);
}
template <typename T, bool isSetMask = true>
inline void WholeReduceSum(const LocalTensor<T>& dst, const LocalTensor<T>& src, const uint64_t mask[],
                           const int32_t repeatTime, const int32_t dstRepStride, const int32_t srcBlkStride,
                           const int32_t srcRepStride, LAEMU_LOC)
{
    static_assert(isSetMask, "isSetMask=false (mask set by SetVectorMask) is not emulated");
    emu_internal::WholeReduceImpl(2, dst, src,
                                  longattn_emu::detail::MaskFromArray<T>(mask, "WholeReduceSum", LAEMU_HERE),
                                  repeatTime, dstRepStride, srcBlkStride, srcRepStride, ReduceOrder::ORDER_ONLY_VALUE,
                                  "WholeReduceSum", LAEMU_HERE);
}

namespace emu_internal {
// Documented sharedTmpBuffer sizes (elements) for the count forms.
template <typename T>
inline uint64_t ReduceTmpElems(uint64_t count, bool maxMin, bool calIndex)
{
    const uint64_t perBlk = 32 / sizeof(T), perRep = 256 / sizeof(T);
    auto roundUp = [](uint64_t v, uint64_t a) { return (v + a - 1) / a * a; };
    const uint64_t firstRepeat = std::max<uint64_t>(1, (count + perRep - 1) / perRep);
    if (!maxMin) return roundUp(firstRepeat, perBlk);
    const uint64_t it1 = firstRepeat * 2;
    if (!calIndex) return roundUp(it1, perBlk);
    const uint64_t it2Start = roundUp(it1, perBlk);
    const uint64_t it2Out = roundUp(it1, perRep) / perRep * 2;
    const uint64_t it2End = roundUp(it2Out, perBlk);
    uint64_t need = it2Start + it2End;
    if (it2Out > 2) {
        const uint64_t it3Out = roundUp(it2Out, perRep) / perRep * 2;
        need = it2Start + it2End + roundUp(it3Out, perBlk);
    }
    return need;
}
template <typename T>
inline void ReduceCountImpl(int kind, const LocalTensor<T>& dst, const LocalTensor<T>& src, const LocalTensor<T>& tmp,
                            int32_t count, bool calIndex, const char* api, longattn_emu::detail::Loc loc)
{
    using namespace longattn_emu::detail;
    static_assert(std::is_same<T, half>::value || std::is_same<T, float>::value, "Reduce*: half or float");
    BeginOp(PIPE_V, api, loc);
    CheckCount(count, api, loc);
    if (count == 0) return;
    if (std::is_same<T, half>::value && calIndex && count > 65536)
        Fatal(loc, "%s: half indices are limited to 65535 (count=%d)", api, count);
    const uint8_t* ps = VecSpan(src, count, false, api, "src", loc);
    const uint64_t need = ReduceTmpElems<T>(count, kind != 2, calIndex);
    CheckVecOperand(tmp, api, "sharedTmpBuffer", loc);
    if (tmp.GetSize() < need)
        Fatal(loc, "%s: sharedTmpBuffer holds %u elements but %llu are required for count=%d (documented formula)", api,
              tmp.GetSize(), static_cast<unsigned long long>(need), count);
    uint8_t* pt = VecSpan(tmp, need, true, api, "sharedTmpBuffer", loc);
    const uint32_t outElems = (kind != 2 && calIndex) ? 2 : 1;
    CheckVecOperand(dst, api, "dst", loc, static_cast<uint32_t>(sizeof(T) * outElems));
    uint8_t* pd = LocalSpan(dst, 0, outElems, api, loc);
    TrackLocal(dst.emu_mem, dst.emu_off, outElems * sizeof(T), true);
    std::vector<float> v(count);
    for (int32_t i = 0; i < count; ++i) v[i] = static_cast<float>(LoadAs<T>(ps + i * sizeof(T)));
    T value;
    uint32_t index = 0;
    if (kind == 2) {
        // Mode 2 (documented): binary tree inside each repeat, then a binary tree over repeat sums.
        const size_t perRep = 256 / sizeof(T);
        std::vector<float> sums;
        for (size_t r = 0; r * perRep < v.size(); ++r) {
            std::vector<float> slots(perRep, 0.f);
            for (size_t e = 0; e < perRep && r * perRep + e < v.size(); ++e) slots[e] = v[r * perRep + e];
            sums.push_back(static_cast<float>(TreeSum<T>(slots)));
        }
        value = TreeSum<T>(sums);
    } else {
        size_t best = 0;
        for (size_t i = 1; i < v.size(); ++i)
            if (kind == 0 ? v[i] > v[best] : v[i] < v[best]) best = i;
        value = FromFloatRne<T>(v[best]);
        index = static_cast<uint32_t>(best);
    }
    std::memset(pt, 0xFF, need * sizeof(T));  // the work buffer is clobbered
    StoreAs<T>(pd, value);
    if (outElems == 2) StoreAs<T>(pd + sizeof(T), longattn_emu::detail::IndexAsElem<T>(index));
}
}  // namespace emu_internal

// Whole-vector reductions, count form: dst[0] = value, dst[1] = index bits (when calIndex).
template <typename T>
inline void ReduceMax(const LocalTensor<T>& dst, const LocalTensor<T>& src, const LocalTensor<T>& sharedTmpBuffer,
                      const int32_t count, bool calIndex = false, LAEMU_LOC)
{
    emu_internal::ReduceCountImpl(0, dst, src, sharedTmpBuffer, count, calIndex, "ReduceMax", LAEMU_HERE);
}
template <typename T>
inline void ReduceMin(const LocalTensor<T>& dst, const LocalTensor<T>& src, const LocalTensor<T>& sharedTmpBuffer,
                      const int32_t count, bool calIndex = false, LAEMU_LOC)
{
    emu_internal::ReduceCountImpl(1, dst, src, sharedTmpBuffer, count, calIndex, "ReduceMin", LAEMU_HERE);
}
template <typename T>
inline void ReduceSum(const LocalTensor<T>& dst, const LocalTensor<T>& src, const LocalTensor<T>& sharedTmpBuffer,
                      const int32_t count, LAEMU_LOC)
{
    emu_internal::ReduceCountImpl(2, dst, src, sharedTmpBuffer, count, false, "ReduceSum", LAEMU_HERE);
}

}  // namespace AscendC
