// SPDX-License-Identifier: Apache-2.0
// longattn Ascend C CPU emulator: numeric conversions with explicit rounding modes.
//
// Semantics from the documented RoundMode enum (Cast page): RINT = nearest/ties-to-even,
// ROUND = nearest/ties-away, FLOOR, CEIL, TRUNC, ODD = round-to-odd. Overflow follows IEEE 754
// directed-rounding rules (RINT/ROUND -> inf, TRUNC/ODD -> max finite, FLOOR/CEIL by sign).
// Float -> int32 saturates and maps NaN to 0 (hardware behaviour undocumented; see README).
//
// Checked against independent references (tests/test_numeric.cpp, "conversion sweep": integer-bit
// rounding for half / bf16 in all six modes, libm for the integer roundings, the host conversion
// under each fenv rounding mode for int32 -> float): these helpers implement exactly the IEEE 754
// conversions they name, subnormals and overflow included. Where real hardware may differ (not
// documented, not checkable here):
//  * NaN: FloatToBf16 returns the canonical 0x7FC0 for every NaN (sign and payload dropped, torch's
//    scalar rule); a device conversion may keep the sign (0xFFC0 for -NaN) or the payload.
//    FloatToHalf keeps the NaN's sign and top payload bits (the host's conversion). DoubleToInt32
//    gives 0 for NaN (devices often give 0 or INT32_MIN).
//  * Subnormal fp32 inputs / results are honoured here; a vector unit that flushes denormals to zero
//    would give +-0 where these give a subnormal (e.g. float -> bf16 of 1e-40).
//  * CAST_ODD and the directed modes follow IEEE overflow rules (max finite instead of inf where the
//    mode rounds toward zero); the Cast page documents the modes, not the overflow results.
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>

#include "emu_types.h"

namespace longattn_emu {
namespace detail {

inline double RoundIntegralMag(double q, AscendC::RoundMode mode);
// Round a double to an integral value with the given mode (exact for |q| < 2^52); a zero result
// keeps the sign of q (IEEE: -0.3 rounds to -0).
inline double RoundIntegral(double q, AscendC::RoundMode mode)
{
    const double r = RoundIntegralMag(q, mode);
    return r == 0.0 ? std::copysign(0.0, q) : r;
}
inline double RoundIntegralMag(double q, AscendC::RoundMode mode)
{
    using AscendC::RoundMode;
    if (!std::isfinite(q)) return q;
    switch (mode) {
        case RoundMode::CAST_FLOOR: return std::floor(q);
        case RoundMode::CAST_CEIL: return std::ceil(q);
        case RoundMode::CAST_TRUNC: return std::trunc(q);
        case RoundMode::CAST_ROUND: return std::round(q);  // halfway away from zero
        case RoundMode::CAST_ODD: {
            double t = std::trunc(q);
            if (t == q) return t;
            if (std::fmod(t, 2.0) != 0.0) return t;  // already odd
            return t + (q > 0 ? 1.0 : -1.0);
        }
        case RoundMode::CAST_NONE:
        case RoundMode::CAST_RINT:
        default: {
            double f = std::floor(q);
            double d = q - f;
            if (d < 0.5) return f;
            if (d > 0.5) return f + 1.0;
            return (std::fmod(f, 2.0) == 0.0) ? f : f + 1.0;  // tie: to even
        }
    }
}

// Binary floating formats the emulator rounds into.
struct FloatFormat {
    int mantBits;  // explicit fraction bits
    int emin;      // exponent of the smallest normal
    int emax;      // exponent of the largest finite
};
constexpr FloatFormat kFmtHalf{10, -14, 15};
constexpr FloatFormat kFmtBf16{7, -126, 127};
constexpr FloatFormat kFmtFloat{23, -126, 127};

// Round a finite double into `fmt` with `mode`; returns the exactly representable result
// (as a double), +-inf on overflow for the nearest modes. NaN/inf pass through.
inline double RoundToFormat(double x, FloatFormat fmt, AscendC::RoundMode mode)
{
    using AscendC::RoundMode;
    if (x == 0.0 || !std::isfinite(x)) return x;
    int e = std::ilogb(std::fabs(x));
    if (e < fmt.emin) e = fmt.emin;  // subnormal range: fixed quantum
    const double ulp = std::ldexp(1.0, e - fmt.mantBits);
    const double r = RoundIntegral(x / ulp, mode) * ulp;
    const double maxFinite = (2.0 - std::ldexp(1.0, -fmt.mantBits)) * std::ldexp(1.0, fmt.emax);
    if (std::fabs(r) <= maxFinite) return r;
    const double inf = std::numeric_limits<double>::infinity();
    const bool pos = x > 0;
    switch (mode) {
        case RoundMode::CAST_TRUNC:
        case RoundMode::CAST_ODD: return pos ? maxFinite : -maxFinite;
        case RoundMode::CAST_FLOOR: return pos ? maxFinite : -inf;
        case RoundMode::CAST_CEIL: return pos ? inf : -maxFinite;
        default: return pos ? inf : -inf;
    }
}

inline half FloatToHalf(float f, AscendC::RoundMode mode)
{
    // The rounded value is exactly representable in half, so the final conversion is exact.
    return static_cast<half>(static_cast<float>(RoundToFormat(static_cast<double>(f), kFmtHalf, mode)));
}

inline bfloat16_t FloatToBf16(float f, AscendC::RoundMode mode)
{
    if (std::isnan(f)) return bfloat16_t::FromBits(0x7FC0u);
    const float r = static_cast<float>(RoundToFormat(static_cast<double>(f), kFmtBf16, mode));
    return bfloat16_t::FromBits(static_cast<uint16_t>(FloatBits(r) >> 16));  // exact: low bits 0
}

inline int32_t DoubleToInt32(double x, AscendC::RoundMode mode)
{
    if (std::isnan(x)) return 0;
    const double r = RoundIntegral(x, mode);
    if (r >= 2147483647.0) return std::numeric_limits<int32_t>::max();
    if (r <= -2147483648.0) return std::numeric_limits<int32_t>::min();
    return static_cast<int32_t>(r);
}

inline float Int32ToFloat(int32_t v, AscendC::RoundMode mode)
{
    return static_cast<float>(RoundToFormat(static_cast<double>(v), kFmtFloat, mode));
}

// Value of any supported element type as double (exact for every type used here).
template <typename T>
inline double ToDouble(T v)
{
    return static_cast<double>(static_cast<float>(v));
}
template <> inline double ToDouble<int32_t>(int32_t v) { return static_cast<double>(v); }
template <> inline double ToDouble<uint32_t>(uint32_t v) { return static_cast<double>(v); }
template <> inline double ToDouble<int64_t>(int64_t v) { return static_cast<double>(v); }
template <> inline double ToDouble<int16_t>(int16_t v) { return static_cast<double>(v); }
template <> inline double ToDouble<uint16_t>(uint16_t v) { return static_cast<double>(v); }
template <> inline double ToDouble<int8_t>(int8_t v) { return static_cast<double>(v); }
template <> inline double ToDouble<uint8_t>(uint8_t v) { return static_cast<double>(v); }

// Arithmetic result of type T from a float-computed value: RNE into T (vector unit rounding).
template <typename T>
inline T FromFloatRne(float v)
{
    return static_cast<T>(v);
}
template <> inline bfloat16_t FromFloatRne<bfloat16_t>(float v) { return bfloat16_t(v); }

template <typename T> struct IsFloatLike : std::false_type {};
template <> struct IsFloatLike<float> : std::true_type {};
template <> struct IsFloatLike<half> : std::true_type {};
template <> struct IsFloatLike<bfloat16_t> : std::true_type {};

template <typename T> inline const char* TypeName() { return "?"; }
template <> inline const char* TypeName<float>() { return "float"; }
template <> inline const char* TypeName<half>() { return "half"; }
template <> inline const char* TypeName<bfloat16_t>() { return "bfloat16_t"; }
template <> inline const char* TypeName<int32_t>() { return "int32_t"; }
template <> inline const char* TypeName<uint32_t>() { return "uint32_t"; }
template <> inline const char* TypeName<int16_t>() { return "int16_t"; }
template <> inline const char* TypeName<uint16_t>() { return "uint16_t"; }
template <> inline const char* TypeName<int8_t>() { return "int8_t"; }
template <> inline const char* TypeName<uint8_t>() { return "uint8_t"; }
template <> inline const char* TypeName<int64_t>() { return "int64_t"; }
template <> inline const char* TypeName<uint64_t>() { return "uint64_t"; }

inline const char* RoundModeName(AscendC::RoundMode m)
{
    switch (m) {
        case AscendC::RoundMode::CAST_NONE: return "CAST_NONE";
        case AscendC::RoundMode::CAST_RINT: return "CAST_RINT";
        case AscendC::RoundMode::CAST_FLOOR: return "CAST_FLOOR";
        case AscendC::RoundMode::CAST_CEIL: return "CAST_CEIL";
        case AscendC::RoundMode::CAST_ROUND: return "CAST_ROUND";
        case AscendC::RoundMode::CAST_TRUNC: return "CAST_TRUNC";
        case AscendC::RoundMode::CAST_ODD: return "CAST_ODD";
        default: return "CAST_HYBRID";
    }
}

}  // namespace detail
}  // namespace longattn_emu
