// SPDX-License-Identifier: Apache-2.0
// Shared helpers for the emulator's C++ test programs (host side only: std:: is fine here).
#pragma once

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <vector>

#include "../../common/ascendc_compat.h"

namespace emu_test {

inline int& Failures()
{
    static int n = 0;
    return n;
}

#define EXPECT_TRUE(cond, ...) \
    do { \
        if (!(cond)) { \
            std::fprintf(stderr, "FAILED %s:%d: %s: ", __FILE__, __LINE__, #cond); \
            std::fprintf(stderr, __VA_ARGS__); \
            std::fprintf(stderr, "\n"); \
            ++::emu_test::Failures(); \
        } \
    } while (0)

// |got - want| <= atol + rtol*|want| for every element; reports the first few mismatches.
template <typename A, typename B>
inline bool AllClose(const char* what, const A& got, const B& want, double atol, double rtol)
{
    size_t bad = 0;
    double worst = 0;
    if (got.size() != want.size()) {
        std::fprintf(stderr, "FAILED %s: size %zu vs %zu\n", what, got.size(), want.size());
        ++Failures();
        return false;
    }
    for (size_t i = 0; i < got.size(); ++i) {
        const double g = static_cast<double>(static_cast<float>(got[i]));
        const double w = static_cast<double>(static_cast<float>(want[i]));
        const double err = std::fabs(g - w);
        const bool ok = (std::isnan(g) && std::isnan(w)) || err <= atol + rtol * std::fabs(w);
        if (!ok) {
            if (bad < 5) std::fprintf(stderr, "  %s[%zu]: got %.8g want %.8g\n", what, i, g, w);
            ++bad;
        }
        if (err > worst && std::isfinite(err)) worst = err;
    }
    if (bad) {
        std::fprintf(stderr, "FAILED %s: %zu of %zu elements differ (max abs err %.3g)\n", what, bad, got.size(),
                     worst);
        ++Failures();
        return false;
    }
    return true;
}

inline std::vector<float> RandomFloats(size_t n, uint32_t seed, float lo = -1.f, float hi = 1.f)
{
    std::mt19937 g(seed);
    std::uniform_real_distribution<float> d(lo, hi);
    std::vector<float> v(n);
    for (auto& x : v) x = d(g);
    return v;
}

inline int Finish(const char* name)
{
    if (Failures()) {
        std::fprintf(stderr, "%s: %d check(s) failed\n", name, Failures());
        return 1;
    }
    std::printf("%s: all checks passed\n", name);
    return 0;
}

}  // namespace emu_test
