// SPDX-License-Identifier: Apache-2.0
// Numeric conversions: bfloat16_t round-to-nearest-even (hand-computed bit patterns, optionally a
// dump of torch's float -> bfloat16 results given as argv[1]), half RINT against the compiler's
// IEEE conversion, and every Cast rounding mode through the vector Cast API in a kernel.
#include <cfenv>
#include <cinttypes>
#include <climits>
#include <cstring>

#include "test_common.h"

using namespace AscendC;
using longattn_emu::detail::BitsFloat;
using longattn_emu::detail::FloatBits;

static uint16_t Bf16Bits(float f) { return bfloat16_t(f).emu_bits; }

static void TestBf16HandPatterns()
{
    struct Case {
        uint32_t in;
        uint16_t out;
        const char* what;
    } cases[] = {
        {0x3F800000u, 0x3F80u, "1.0"},
        {0x3F808000u, 0x3F80u, "tie, even below -> down"},
        {0x3F818000u, 0x3F82u, "tie, odd below -> up"},
        {0x3F808001u, 0x3F81u, "just above a tie -> up"},
        {0x3F807FFFu, 0x3F80u, "just below a tie -> down"},
        {0xBF808000u, 0xBF80u, "negative tie -> even"},
        {0x7F800000u, 0x7F80u, "+inf"},
        {0xFF800000u, 0xFF80u, "-inf"},
        {0x7FC00001u, 0x7FC0u, "quiet NaN -> canonical"},
        {0xFF800001u, 0x7FC0u, "negative signalling NaN -> canonical"},
        {0x7F7FFFFFu, 0x7F80u, "FLT_MAX rounds to +inf"},
        {0x7F7F7FFFu, 0x7F7Fu, "largest value rounding down to bf16 max"},
        {0x00000001u, 0x0000u, "smallest subnormal -> +0"},
        {0x00008000u, 0x0000u, "subnormal tie, even below -> 0"},
        {0x00018000u, 0x0002u, "subnormal tie, odd below -> up"},
        {0x00008001u, 0x0001u, "subnormal above tie -> up"},
        {0x007FFFFFu, 0x0080u, "largest subnormal rounds to smallest normal"},
        {0x80000000u, 0x8000u, "-0"},
    };
    for (const Case& c : cases) {
        const uint16_t got = Bf16Bits(BitsFloat(c.in));
        EXPECT_TRUE(got == c.out, "bf16(0x%08x) = 0x%04x, want 0x%04x (%s)", c.in, got, c.out, c.what);
    }
    // bf16 -> float is exact.
    EXPECT_TRUE(static_cast<float>(bfloat16_t::FromBits(0x3F81u)) == 1.0078125f, "bf16 0x3F81 -> float");
    EXPECT_TRUE(FloatBits(static_cast<float>(bfloat16_t::FromBits(0x0001u))) == 0x00010000u, "bf16 subnormal -> float");
    EXPECT_TRUE(std::isnan(static_cast<float>(bfloat16_t::FromBits(0x7FC0u))), "bf16 NaN -> float NaN");
}

// argv dump: uint32 count, then count float bit patterns, then count torch bf16 bit patterns.
static void TestBf16AgainstTorchDump(const char* path)
{
    FILE* f = std::fopen(path, "rb");
    EXPECT_TRUE(f != nullptr, "cannot open %s", path);
    if (!f) return;
    uint32_t n = 0;
    bool ok = std::fread(&n, 4, 1, f) == 1;
    std::vector<uint32_t> in(n);
    std::vector<uint16_t> want(n);
    ok = ok && std::fread(in.data(), 4, n, f) == n && std::fread(want.data(), 2, n, f) == n;
    std::fclose(f);
    EXPECT_TRUE(ok && n > 0, "truncated dump %s", path);
    size_t bad = 0;
    for (uint32_t i = 0; i < n; ++i) {
        const uint16_t got = Bf16Bits(BitsFloat(in[i]));
        // NaN payloads differ between torch's scalar (0x7FC0) and vectorised (0xFFFF) paths; the
        // emulator returns 0x7FC0. Only require a NaN for NaN inputs.
        const bool bothNan = std::isnan(BitsFloat(in[i])) && (got & 0x7F80u) == 0x7F80u && (got & 0x7Fu) &&
                             (want[i] & 0x7F80u) == 0x7F80u && (want[i] & 0x7Fu);
        if (got != want[i] && !bothNan) {
            if (bad < 5) std::fprintf(stderr, "  bf16(0x%08x): emu 0x%04x torch 0x%04x\n", in[i], got, want[i]);
            ++bad;
        }
    }
    EXPECT_TRUE(bad == 0, "%zu of %u values differ from torch's bfloat16 rounding", bad, n);
    std::printf("compared %u float -> bfloat16 conversions with torch\n", n);
}

// The generic rounding code in RINT mode must agree with the compiler's float -> _Float16.
static void TestHalfRintMatchesIeee()
{
    std::mt19937 g(3);
    size_t bad = 0;
    for (int i = 0; i < 200000; ++i) {
        uint32_t bits = g();
        if (i % 4 == 0) bits = (bits & 0x807FFFFFu) | ((100u + (bits >> 24) % 60u) << 23);  // near the half range
        const float f = BitsFloat(bits);
        if (std::isnan(f)) continue;
        const half want = static_cast<half>(f);
        const half got = longattn_emu::detail::FloatToHalf(f, RoundMode::CAST_RINT);
        uint16_t wb, gb;
        std::memcpy(&wb, &want, 2);
        std::memcpy(&gb, &got, 2);
        if (wb != gb && bad++ < 5) std::fprintf(stderr, "  half(0x%08x): emu 0x%04x ieee 0x%04x\n", bits, gb, wb);
    }
    EXPECT_TRUE(bad == 0, "%zu float->half RINT conversions differ from IEEE", bad);
}

// Run one Cast through the vector API on an AIV core.
template <typename D, typename S>
static std::vector<D> KernelCast(const std::vector<S>& in, RoundMode mode)
{
    std::vector<D> out(in.size());
    longattn_emu::LaunchVector(1, [&] {
        TPipe pipe;
        TBuf<TPosition::VECCALC> bs, bd;
        pipe.InitBuffer(bs, 1024);
        pipe.InitBuffer(bd, 1024);
        LocalTensor<S> s = bs.Get<S>();
        LocalTensor<D> d = bd.Get<D>();
        for (size_t i = 0; i < in.size(); ++i) s.SetValue(i, in[i]);
        Cast(d, s, mode, in.size());
        for (size_t i = 0; i < in.size(); ++i) out[i] = d.GetValue(i);
    });
    return out;
}

static float H(float v) { return v; }

static void TestCastModes()
{
    const RoundMode modes[] = {RoundMode::CAST_RINT, RoundMode::CAST_ROUND, RoundMode::CAST_FLOOR, RoundMode::CAST_CEIL,
                               RoundMode::CAST_TRUNC};
    // float -> int32_t
    {
        const std::vector<float> in = {2.5f, -2.5f, 3.5f, 1.49f, -1.51f, 0.5f, -0.5f, 3e9f, -3e9f};
        const int32_t want[5][9] = {
            {2, -2, 4, 1, -2, 0, 0, 2147483647, -2147483647 - 1},   // RINT
            {3, -3, 4, 1, -2, 1, -1, 2147483647, -2147483647 - 1},  // ROUND (ties away)
            {2, -3, 3, 1, -2, 0, -1, 2147483647, -2147483647 - 1},  // FLOOR
            {3, -2, 4, 2, -1, 1, 0, 2147483647, -2147483647 - 1},   // CEIL
            {2, -2, 3, 1, -1, 0, 0, 2147483647, -2147483647 - 1},   // TRUNC
        };
        for (int m = 0; m < 5; ++m) {
            auto got = KernelCast<int32_t, float>(in, modes[m]);
            for (size_t i = 0; i < in.size(); ++i)
                EXPECT_TRUE(got[i] == want[m][i], "float->int32 %s(%g) = %d want %d",
                            longattn_emu::detail::RoundModeName(modes[m]), in[i], got[i], want[m][i]);
        }
    }
    // float -> half: exact tie (1 + 2^-11), three-quarter point, overflow, subnormal tie.
    {
        const float u = std::ldexp(1.f, -10);  // half ulp at 1
        const std::vector<float> in = {1.f + u / 2, -(1.f + u / 2), 1.f + 0.75f * u,
                                       70000.f,     -70000.f,       std::ldexp(1.f, -25)};
        const float inf = INFINITY, tiny = std::ldexp(1.f, -24);
        const float want[6][6] = {
            {1.f, -1.f, 1.f + u, inf, -inf, 0.f},                     // RINT
            {1.f + u, -(1.f + u), 1.f + u, inf, -inf, tiny},          // ROUND
            {1.f, -(1.f + u), 1.f, 65504.f, -inf, 0.f},               // FLOOR
            {1.f + u, -1.f, 1.f + u, inf, -65504.f, tiny},            // CEIL
            {1.f, -1.f, 1.f, 65504.f, -65504.f, 0.f},                 // TRUNC
            {1.f + u, -(1.f + u), 1.f + u, 65504.f, -65504.f, tiny},  // ODD
        };
        const RoundMode hmodes[] = {RoundMode::CAST_RINT, RoundMode::CAST_ROUND, RoundMode::CAST_FLOOR,
                                    RoundMode::CAST_CEIL, RoundMode::CAST_TRUNC, RoundMode::CAST_ODD};
        for (int m = 0; m < 6; ++m) {
            auto got = KernelCast<half, float>(in, hmodes[m]);
            for (size_t i = 0; i < in.size(); ++i)
                EXPECT_TRUE(static_cast<float>(got[i]) == H(want[m][i]), "float->half %s(%.9g) = %.9g want %.9g",
                            longattn_emu::detail::RoundModeName(hmodes[m]), in[i], static_cast<float>(got[i]),
                            want[m][i]);
        }
        auto none = KernelCast<half, float>(in, RoundMode::CAST_NONE);  // NONE == RINT for lossy casts
        for (size_t i = 0; i < in.size(); ++i)
            EXPECT_TRUE(static_cast<float>(none[i]) == want[0][i], "float->half CAST_NONE(%.9g)", in[i]);
    }
    // float -> bfloat16_t
    {
        const float u = std::ldexp(1.f, -7);
        const std::vector<float> in = {1.f + u / 2, -(1.f + u / 2), 1.f + 0.25f * u};
        const float want[5][3] = {
            {1.f, -1.f, 1.f},         {1.f + u, -(1.f + u), 1.f}, {1.f, -(1.f + u), 1.f},
            {1.f + u, -1.f, 1.f + u}, {1.f, -1.f, 1.f},
        };
        for (int m = 0; m < 5; ++m) {
            auto got = KernelCast<bfloat16_t, float>(in, modes[m]);
            for (size_t i = 0; i < in.size(); ++i)
                EXPECT_TRUE(static_cast<float>(got[i]) == want[m][i], "float->bf16 %s(%.9g) = %.9g want %.9g",
                            longattn_emu::detail::RoundModeName(modes[m]), in[i], static_cast<float>(got[i]),
                            want[m][i]);
        }
    }
    // int32_t -> float around 2^24, float -> float (round to integral), half/bf16 -> float exact.
    {
        const std::vector<int32_t> in = {16777217, -16777217, 16777219};
        const float want[5][3] = {{16777216.f, -16777216.f, 16777220.f},
                                  {16777218.f, -16777218.f, 16777220.f},
                                  {16777216.f, -16777218.f, 16777218.f},
                                  {16777218.f, -16777216.f, 16777220.f},
                                  {16777216.f, -16777216.f, 16777218.f}};
        for (int m = 0; m < 5; ++m) {
            auto got = KernelCast<float, int32_t>(in, modes[m]);
            for (size_t i = 0; i < in.size(); ++i)
                EXPECT_TRUE(got[i] == want[m][i], "int32->float %s(%d) = %.1f want %.1f",
                            longattn_emu::detail::RoundModeName(modes[m]), in[i], got[i], want[m][i]);
        }
        auto r = KernelCast<float, float>({2.5f, -0.5f, 7.7f}, RoundMode::CAST_RINT);
        EXPECT_TRUE(r[0] == 2.f && r[1] == 0.f && r[2] == 8.f, "float->float RINT");
        auto h = KernelCast<float, half>({half(0.333f), half(-65504.f)}, RoundMode::CAST_NONE);
        EXPECT_TRUE(h[0] == static_cast<float>(half(0.333f)) && h[1] == -65504.f, "half->float exact");
        auto b = KernelCast<float, bfloat16_t>({bfloat16_t::FromBits(0x3F81u)}, RoundMode::CAST_NONE);
        EXPECT_TRUE(b[0] == 1.0078125f, "bf16->float exact");
        auto bi = KernelCast<int32_t, bfloat16_t>({bfloat16_t(2.5f), bfloat16_t(-2.5f)}, RoundMode::CAST_RINT);
        EXPECT_TRUE(bi[0] == 2 && bi[1] == -2, "bf16->int32 RINT");
    }
}

// ---- sweep: every conversion helper against independent references ------------------------------
// The emulator rounds through doubles (RoundToFormat / RoundIntegral); the references below work on
// the integer bits (half, bf16) or use libm (integers), so a mistake in one is not repeated in the
// other. Inputs: every exponent x both signs x mantissas around every bit position, plus a stride
// through all 2^32 patterns; NaN inputs are checked separately (canonical / documented choices).
namespace sweep {

enum class M { RINT, ROUND, FLOOR, CEIL, TRUNC, ODD };
constexpr M kModes[] = {M::RINT, M::ROUND, M::FLOOR, M::CEIL, M::TRUNC, M::ODD};
RoundMode ToRoundMode(M m)
{
    switch (m) {
        case M::RINT: return RoundMode::CAST_RINT;
        case M::ROUND: return RoundMode::CAST_ROUND;
        case M::FLOOR: return RoundMode::CAST_FLOOR;
        case M::CEIL: return RoundMode::CAST_CEIL;
        case M::TRUNC: return RoundMode::CAST_TRUNC;
        default: return RoundMode::CAST_ODD;
    }
}

// Round the magnitude n + rem / (2 * halfUlp) to an integer (neg: the sign, for FLOOR / CEIL).
uint64_t RoundMag(uint64_t n, uint64_t rem, uint64_t halfUlp, bool neg, M m)
{
    const bool inexact = rem != 0;
    bool up = false;
    switch (m) {
        case M::RINT: up = rem > halfUlp || (rem == halfUlp && (n & 1)); break;
        case M::ROUND: up = rem >= halfUlp; break;
        case M::FLOOR: up = inexact && neg; break;
        case M::CEIL: up = inexact && !neg; break;
        case M::TRUNC: break;
        case M::ODD: return inexact ? (n | 1u) : n;
    }
    return n + (up ? 1u : 0u);
}

int BitLen(uint64_t v) { return v ? 64 - __builtin_clzll(v) : 0; }

// float bits -> bf16 bits (finite or inf input): drop the low 16 bits of the float encoding.
uint16_t RefBf16(uint32_t fb, M m)
{
    const bool neg = fb >> 31;
    const uint32_t mag = fb & 0x7FFFFFFFu;
    const uint64_t hi = RoundMag(mag >> 16, mag & 0xFFFFu, 0x8000u, neg, m);
    return static_cast<uint16_t>((neg ? 0x8000u : 0u) | hi);  // a carry into 0x7F80 is the IEEE overflow to inf
}

// float bits -> half bits (finite or inf input), IEEE overflow rules per mode.
uint16_t RefHalf(uint32_t fb, M m)
{
    const bool neg = fb >> 31;
    const uint16_t sgn = neg ? 0x8000u : 0u;
    const uint32_t ex = (fb >> 23) & 0xFFu, fr = fb & 0x7FFFFFu;
    if (ex == 255) return sgn | 0x7C00u;
    if (ex == 0 && fr == 0) return sgn;
    const uint64_t M_ = ex ? (fr | 0x800000u) : fr;
    const int E = ex ? static_cast<int>(ex) - 150 : -149;  // value = M_ * 2^E
    const int e = BitLen(M_) - 1 + E;                      // binade
    int qe = (e < -14 ? -14 : e) - 10;                     // half quantum 2^qe
    const int shift = qe - E;                               // > 0 for every float input
    uint64_t n, rem, halfUlp;
    if (shift >= 40) {  // far below the quantum: n = 0, rem < half an ulp but non-zero
        n = 0;
        rem = 1;
        halfUlp = 2;
    } else {
        n = M_ >> shift;
        rem = M_ & ((1ull << shift) - 1);
        halfUlp = 1ull << (shift - 1);
    }
    n = RoundMag(n, rem, halfUlp, neg, m);
    if (n == 2048) {  // carry into the next binade
        n = 1024;
        ++qe;
    }
    const bool overflow = n >= 1024 && qe + 25 > 30;
    if (overflow) {
        const bool toInf = m == M::RINT || m == M::ROUND || (m == M::FLOOR && neg) || (m == M::CEIL && !neg);
        return sgn | (toInf ? 0x7C00u : 0x7BFFu);
    }
    if (n < 1024) return sgn | static_cast<uint16_t>(n);  // subnormal (qe == -24) or zero
    return sgn | static_cast<uint16_t>(((qe + 25) << 10) | (n - 1024));
}

double RefIntegral(double x, M m)
{
    switch (m) {
        case M::RINT: return std::nearbyint(x);  // default environment: ties to even
        case M::ROUND: return std::round(x);
        case M::FLOOR: return std::floor(x);
        case M::CEIL: return std::ceil(x);
        default: return std::trunc(x);
    }
}

std::vector<uint32_t> Patterns()
{
    std::vector<uint32_t> v;
    std::vector<uint32_t> mants = {0u, 0x7FFFFFu, 0x400000u, 0x7FFFFEu, 0x155555u};
    for (int k = 0; k < 23; ++k) {
        const uint32_t b = 1u << k;
        for (uint32_t x : {b, b - 1, b + 1, b | 0x400000u, (b - 1) | 0x400000u, 3u * b}) mants.push_back(x & 0x7FFFFFu);
    }
    for (uint32_t ex = 0; ex < 255; ++ex)
        for (uint32_t mt : mants)
            for (uint32_t sg : {0u, 1u}) v.push_back((sg << 31) | (ex << 23) | mt);
    for (uint64_t b = 0; b < (1ull << 32); b += 40009) v.push_back(static_cast<uint32_t>(b));
    v.push_back(0x7F800000u);
    v.push_back(0xFF800000u);
    return v;
}

}  // namespace sweep

static void TestConversionSweep()
{
    using namespace sweep;
    namespace d = longattn_emu::detail;
    const std::vector<uint32_t> pats = Patterns();
    size_t bad = 0, checked = 0;
    for (uint32_t fb : pats) {
        const float f = BitsFloat(fb);
        if (std::isnan(f)) continue;
        for (M m : kModes) {
            const RoundMode rm = ToRoundMode(m);
            // float -> half
            half h = d::FloatToHalf(f, rm);
            uint16_t hb;
            std::memcpy(&hb, &h, 2);
            const uint16_t hw = RefHalf(fb, m);
            if (hb != hw && bad++ < 8)
                std::fprintf(stderr, "  half %s(0x%08x): emu 0x%04x ref 0x%04x\n", d::RoundModeName(rm), fb, hb, hw);
            // float -> bf16 (the helper implements ODD too; Cast accepts the other five)
            const uint16_t bb = d::FloatToBf16(f, rm).emu_bits, bw = RefBf16(fb, m);
            if (bb != bw && bad++ < 8)
                std::fprintf(stderr, "  bf16 %s(0x%08x): emu 0x%04x ref 0x%04x\n", d::RoundModeName(rm), fb, bb, bw);
            if (m == M::ODD) continue;
            // float -> int32 (saturating) and float -> float (integral value, zero keeps its sign)
            const double r = RefIntegral(static_cast<double>(f), m);
            const int32_t iw =
                std::isinf(r)
                    ? (r > 0 ? INT32_MAX : INT32_MIN)
                    : (r >= 2147483647.0 ? INT32_MAX : (r <= -2147483648.0 ? INT32_MIN : static_cast<int32_t>(r)));
            const int32_t ig = d::DoubleToInt32(static_cast<double>(f), rm);
            if (ig != iw && bad++ < 8)
                std::fprintf(stderr, "  int32 %s(%.9g): emu %d ref %d\n", d::RoundModeName(rm), f, ig, iw);
            const float fg = AscendC::emu_internal::CastOne<float, float>(f, rm);
            const float fw = static_cast<float>(r);
            if (FloatBits(fg) != FloatBits(fw) && bad++ < 8)
                std::fprintf(stderr, "  float->float %s(%.9g): emu %.9g ref %.9g\n", d::RoundModeName(rm), f, fg, fw);
            checked += 4;
        }
    }
    // int32 -> float: the conversion under the matching fenv rounding mode (volatile: no folding).
    const int fenvModes[] = {FE_TONEAREST, FE_DOWNWARD, FE_UPWARD, FE_TOWARDZERO};
    const RoundMode rms[] = {RoundMode::CAST_RINT, RoundMode::CAST_FLOOR, RoundMode::CAST_CEIL, RoundMode::CAST_TRUNC};
    std::mt19937 g(11);
    for (int k = 0; k < 4; ++k) {
        for (int i = 0; i < 20000; ++i) {
            volatile int32_t v = static_cast<int32_t>(g()) >> (g() % 31);
            std::fesetround(fenvModes[k]);
            volatile float want = static_cast<float>(v);
            std::fesetround(FE_TONEAREST);
            const float got = d::Int32ToFloat(v, rms[k]);
            if (FloatBits(got) != FloatBits(want) && bad++ < 8)
                std::fprintf(stderr, "  int32->float %s(%d): emu %.9g ref %.9g\n", d::RoundModeName(rms[k]),
                             static_cast<int32_t>(v), got, static_cast<float>(want));
            ++checked;
        }
    }
    // NaN: the documented choices (README "Choices" 5): bf16 0x7FC0 whatever the sign / payload, half
    // stays NaN, integers 0.
    for (uint32_t nb : {0x7FC00000u, 0xFFC00000u, 0x7F800001u, 0xFFFFFFFFu}) {
        const float f = BitsFloat(nb);
        for (M m : kModes) {
            const RoundMode rm = ToRoundMode(m);
            EXPECT_TRUE(d::FloatToBf16(f, rm).emu_bits == 0x7FC0u, "bf16 of NaN 0x%08x", nb);
            EXPECT_TRUE(std::isnan(static_cast<float>(d::FloatToHalf(f, rm))), "half of NaN 0x%08x", nb);
            if (m != M::ODD) EXPECT_TRUE(d::DoubleToInt32(static_cast<double>(f), rm) == 0, "int32 of NaN");
        }
    }
    EXPECT_TRUE(bad == 0, "%zu of %zu conversions differ from the independent references", bad, checked);
    std::printf("conversion sweep: %zu conversions checked\n", checked);
}

int main(int argc, char** argv)
{
    TestBf16HandPatterns();
    if (argc > 1) TestBf16AgainstTorchDump(argv[1]);
    TestHalfRintMatchesIeee();
    TestCastModes();
    TestConversionSweep();
    return emu_test::Finish("test_numeric");
}
