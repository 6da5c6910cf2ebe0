// SPDX-License-Identifier: Apache-2.0
// Vector-core kernels written in idiomatic Ascend C style, run on the emulator and checked against
// plain CPU loops: double-buffered multi-block vector add, a row softmax built from WholeReduce /
// Brcb / repeat-form Sub+Div / Exp, and a sweep over the other vector APIs.
#include <algorithm>
#include <numeric>

#include "test_common.h"

using namespace AscendC;

// ------------------------------------------------------------------------------------------------
// 1. z = x + y, TPipe + TQue (num 2, depth 2) double buffering, blocks split the vector.
// ------------------------------------------------------------------------------------------------
constexpr int32_t BUFFER_NUM = 2;

template <typename T>
class KernelAdd {
public:
    __aicore__ inline KernelAdd() {}
    __aicore__ inline void Init(GM_ADDR x, GM_ADDR y, GM_ADDR z, uint32_t totalLength, uint32_t tileLength)
    {
        blockLength_ = totalLength / GetBlockNum();
        tileLength_ = tileLength;
        tileNum_ = blockLength_ / tileLength;
        xGm_.SetGlobalBuffer((__gm__ T*)x + blockLength_ * GetBlockIdx(), blockLength_);
        yGm_.SetGlobalBuffer((__gm__ T*)y + blockLength_ * GetBlockIdx(), blockLength_);
        zGm_.SetGlobalBuffer((__gm__ T*)z + blockLength_ * GetBlockIdx(), blockLength_);
        pipe_.InitBuffer(inQueueX_, BUFFER_NUM, tileLength_ * sizeof(T));
        pipe_.InitBuffer(inQueueY_, BUFFER_NUM, tileLength_ * sizeof(T));
        pipe_.InitBuffer(outQueueZ_, BUFFER_NUM, tileLength_ * sizeof(T));
    }
    __aicore__ inline void Process()
    {
        // Prefetch one tile ahead so both buffers of the input queues are in flight.
        CopyIn(0);
        for (uint32_t i = 0; i < tileNum_; ++i) {
            if (i + 1 < tileNum_) CopyIn(i + 1);
            Compute();
            CopyOut(i);
        }
    }

private:
    __aicore__ inline void CopyIn(uint32_t progress)
    {
        LocalTensor<T> xLocal = inQueueX_.template AllocTensor<T>();
        LocalTensor<T> yLocal = inQueueY_.template AllocTensor<T>();
        DataCopy(xLocal, xGm_[progress * tileLength_], tileLength_);
        DataCopy(yLocal, yGm_[progress * tileLength_], tileLength_);
        inQueueX_.EnQue(xLocal);
        inQueueY_.EnQue(yLocal);
    }
    __aicore__ inline void Compute()
    {
        LocalTensor<T> xLocal = inQueueX_.template DeQue<T>();
        LocalTensor<T> yLocal = inQueueY_.template DeQue<T>();
        LocalTensor<T> zLocal = outQueueZ_.template AllocTensor<T>();
        Add(zLocal, xLocal, yLocal, tileLength_);
        outQueueZ_.EnQue(zLocal);
        inQueueX_.FreeTensor(xLocal);
        inQueueY_.FreeTensor(yLocal);
    }
    __aicore__ inline void CopyOut(uint32_t progress)
    {
        LocalTensor<T> zLocal = outQueueZ_.template DeQue<T>();
        DataCopy(zGm_[progress * tileLength_], zLocal, tileLength_);
        outQueueZ_.FreeTensor(zLocal);
    }

    TPipe pipe_;
    TQue<TPosition::VECIN, BUFFER_NUM> inQueueX_, inQueueY_;
    TQue<TPosition::VECOUT, BUFFER_NUM> outQueueZ_;
    GlobalTensor<T> xGm_, yGm_, zGm_;
    uint32_t blockLength_ = 0, tileLength_ = 0, tileNum_ = 0;
};

template <typename T>
__global__ __aicore__ void add_custom(GM_ADDR x, GM_ADDR y, GM_ADDR z, uint32_t totalLength, uint32_t tileLength)
{
    KernelAdd<T> op;
    op.Init(x, y, z, totalLength, tileLength);
    op.Process();
}

template <typename T>
static void TestAdd(uint32_t blocks, uint32_t total, uint32_t tile, const char* name)
{
    auto xf = emu_test::RandomFloats(total, 1), yf = emu_test::RandomFloats(total, 2);
    std::vector<T> x(total), y(total), z(total, T(0)), want(total);
    for (uint32_t i = 0; i < total; ++i) {
        x[i] = static_cast<T>(xf[i]);
        y[i] = static_cast<T>(yf[i]);
        want[i] = static_cast<T>(static_cast<float>(x[i]) + static_cast<float>(y[i]));
    }
    longattn_emu::LaunchVector(blocks, [&] {
        add_custom<T>((GM_ADDR)x.data(), (GM_ADDR)y.data(), (GM_ADDR)z.data(), total, tile);
    });
    emu_test::AllClose(name, z, want, 0, 0);
}

// ------------------------------------------------------------------------------------------------
// 2. Row softmax over rows of 64 floats (one 256-byte repeat per row), 8 rows per tile.
// ------------------------------------------------------------------------------------------------
class KernelSoftmax {
public:
    static constexpr uint32_t D = 64, ROWS = 8;
    __aicore__ inline void Init(GM_ADDR x, GM_ADDR y, uint32_t rowsPerBlock)
    {
        rows_ = rowsPerBlock;
        xGm_.SetGlobalBuffer((__gm__ float*)x + GetBlockIdx() * rowsPerBlock * D, rowsPerBlock * D);
        yGm_.SetGlobalBuffer((__gm__ float*)y + GetBlockIdx() * rowsPerBlock * D, rowsPerBlock * D);
        pipe_.InitBuffer(inQ_, 2, ROWS * D * sizeof(float));
        pipe_.InitBuffer(outQ_, 2, ROWS * D * sizeof(float));
        pipe_.InitBuffer(rowStat_, ROWS * sizeof(float));
        pipe_.InitBuffer(bcast_, ROWS * 8 * sizeof(float));
    }
    __aicore__ inline void Process()
    {
        for (uint32_t t = 0; t < rows_ / ROWS; ++t) {
            LocalTensor<float> x = inQ_.AllocTensor<float>();
            DataCopy(x, xGm_[t * ROWS * D], ROWS * D);
            inQ_.EnQue(x);
            Compute();
            LocalTensor<float> y = outQ_.DeQue<float>();
            DataCopy(yGm_[t * ROWS * D], y, ROWS * D);
            outQ_.FreeTensor(y);
        }
    }

private:
    __aicore__ inline void Compute()
    {
        LocalTensor<float> x = inQ_.DeQue<float>();
        LocalTensor<float> y = outQ_.AllocTensor<float>();
        LocalTensor<float> stat = rowStat_.Get<float>();
        LocalTensor<float> b = bcast_.Get<float>();
        // Row broadcast operand: block j of repeat r reads the single 32-byte block r of `b`.
        const BinaryRepeatParams rowParams(1, 1, 0, 8, 8, 1);
        WholeReduceMax(stat, x, D, ROWS, 1, 1, 8, ReduceOrder::ORDER_ONLY_VALUE);
        Brcb(b, stat, 1, BrcbRepeatParams(1, 8));
        Sub(y, x, b, D, ROWS, rowParams);
        Exp(y, y, ROWS * D);
        WholeReduceSum(stat, y, D, ROWS, 1, 1, 8);
        Brcb(b, stat, 1, BrcbRepeatParams(1, 8));
        Div(y, y, b, D, ROWS, rowParams);
        outQ_.EnQue(y);
        inQ_.FreeTensor(x);
    }

    TPipe pipe_;
    TQue<TPosition::VECIN, 1> inQ_;
    TQue<TPosition::VECOUT, 1> outQ_;
    TBuf<TPosition::VECCALC> rowStat_, bcast_;
    GlobalTensor<float> xGm_, yGm_;
    uint32_t rows_ = 0;
};

static void TestSoftmax()
{
    const uint32_t blocks = 4, rowsPerBlock = 32, D = KernelSoftmax::D, n = blocks * rowsPerBlock * D;
    auto x = emu_test::RandomFloats(n, 7, -4.f, 4.f);
    std::vector<float> y(n, 0.f), want(n);
    for (uint32_t r = 0; r < blocks * rowsPerBlock; ++r) {
        float m = -INFINITY, s = 0.f;
        for (uint32_t j = 0; j < D; ++j) m = std::max(m, x[r * D + j]);
        for (uint32_t j = 0; j < D; ++j) s += std::exp(x[r * D + j] - m);
        for (uint32_t j = 0; j < D; ++j) want[r * D + j] = std::exp(x[r * D + j] - m) / s;
    }
    longattn_emu::LaunchVector(blocks, [&] {
        KernelSoftmax op;
        op.Init((GM_ADDR)x.data(), (GM_ADDR)y.data(), rowsPerBlock);
        op.Process();
    });
    emu_test::AllClose("softmax", y, want, 1e-6, 1e-5);
}

// ------------------------------------------------------------------------------------------------
// 3. Sweep of the remaining vector APIs on one core; results read back with GetValue (PIPE_S is
//    ordered automatically against PIPE_V on the AIV).
// ------------------------------------------------------------------------------------------------
static void TestVectorApis()
{
    const uint32_t N = 256;
    auto a = emu_test::RandomFloats(N, 11, -3.f, 3.f), b = emu_test::RandomFloats(N, 12, 0.5f, 2.f);
    std::vector<float> got(N);
    longattn_emu::LaunchVector(1, [&] {
        TPipe pipe;
        TBuf<TPosition::VECCALC> bufA, bufB, bufC, bufT, bufM, bufI;
        pipe.InitBuffer(bufA, N * 4);
        pipe.InitBuffer(bufB, N * 4);
        pipe.InitBuffer(bufC, N * 4);
        pipe.InitBuffer(bufT, N * 4);
        pipe.InitBuffer(bufM, 64);
        pipe.InitBuffer(bufI, N * 4);
        GlobalTensor<float> ga, gb;
        ga.SetGlobalBuffer(a.data(), N);
        gb.SetGlobalBuffer(b.data(), N);
        LocalTensor<float> ta = bufA.Get<float>(), tb = bufB.Get<float>(), tc = bufC.Get<float>(),
                           tt = bufT.Get<float>();
        DataCopy(ta, ga, N);
        DataCopy(tb, gb, N);
        SetFlag<HardEvent::MTE2_V>(EVENT_ID0);  // TBuf tensors: order MTE2 before V by hand
        WaitFlag<HardEvent::MTE2_V>(EVENT_ID0);

        auto check = [&](const char* what, auto ref, double tol) {
            for (uint32_t i = 0; i < N; ++i) got[i] = tc.GetValue(i);
            std::vector<float> want(N);
            for (uint32_t i = 0; i < N; ++i) want[i] = ref(a[i], b[i]);
            emu_test::AllClose(what, got, want, tol, tol);
        };
        Sub(tc, ta, tb, N);
        check("Sub", [](float x, float y) { return x - y; }, 0);
        Mul(tc, ta, tb, N);
        check("Mul", [](float x, float y) { return x * y; }, 0);
        Div(tc, ta, tb, N);
        check("Div", [](float x, float y) { return x / y; }, 0);
        Max(tc, ta, tb, N);
        check("Max", [](float x, float y) { return std::max(x, y); }, 0);
        Min(tc, ta, tb, N);
        check("Min", [](float x, float y) { return std::min(x, y); }, 0);
        Adds(tc, ta, 1.5f, N);
        check("Adds", [](float x, float) { return x + 1.5f; }, 0);
        Muls(tc, ta, -2.f, N);
        check("Muls", [](float x, float) { return x * -2.f; }, 0);
        Maxs(tc, ta, 0.25f, N);
        check("Maxs", [](float x, float) { return std::max(x, 0.25f); }, 0);
        Mins(tc, ta, 0.25f, N);
        check("Mins", [](float x, float) { return std::min(x, 0.25f); }, 0);
        Exp(tc, ta, N);
        check("Exp", [](float x, float) { return std::exp(x); }, 1e-6);
        Ln(tc, tb, N);
        check("Ln", [](float, float y) { return std::log(y); }, 1e-6);
        Abs(tc, ta, N);
        check("Abs", [](float x, float) { return std::fabs(x); }, 0);
        Relu(tc, ta, N);
        check("Relu", [](float x, float) { return x > 0 ? x : 0.f; }, 0);
        Sqrt(tc, tb, N);
        check("Sqrt", [](float, float y) { return std::sqrt(y); }, 1e-7);
        Rsqrt(tc, tb, N);
        check("Rsqrt", [](float, float y) { return 1.f / std::sqrt(y); }, 1e-6);
        Reciprocal(tc, tb, N);
        check("Reciprocal", [](float, float y) { return 1.f / y; }, 1e-7);
        Duplicate(tc, 3.f, N);
        check("Duplicate", [](float, float) { return 3.f; }, 0);
        Axpy(tc, ta, 2.f, N);  // tc = 3 + 2a
        check("Axpy", [](float x, float) { return 3.f + 2.f * x; }, 1e-6);
        DataCopy(tc, ta, N);  // UB -> UB
        check("DataCopy UB->UB", [](float x, float) { return x; }, 0);

        // In-place (full aliasing) is allowed.
        DataCopy(tc, ta, N);
        Adds(tc, tc, 1.f, N);
        check("Adds in place", [](float x, float) { return x + 1.f; }, 0);

        // Repeat form with strides: every other 32-byte block of a (srcBlkStride 2), 2 repeats.
        Duplicate(tc, 0.f, N);
        Muls(tc, ta, 10.f, 64, 2, UnaryRepeatParams(1, 2, 8, 16));
        for (uint32_t r = 0; r < 2; ++r)
            for (uint32_t e = 0; e < 64; ++e) {
                const uint32_t srcIdx = r * 128 + (e / 8) * 16 + e % 8;
                EXPECT_TRUE(tc.GetValue(r * 64 + e) == a[srcIdx] * 10.f, "strided Muls r=%u e=%u", r, e);
            }
        // Bit-mask mode: only even elements of one repeat.
        Duplicate(tc, -1.f, N);
        const uint64_t evenMask[2] = {0x5555555555555555ull, 0};
        Add(tc, ta, tb, evenMask, 1, BinaryRepeatParams());
        for (uint32_t e = 0; e < 64; ++e)
            EXPECT_TRUE(tc.GetValue(e) == (e % 2 == 0 ? a[e] + b[e] : -1.f), "bitmask Add e=%u", e);

        // CreateVecIndex.
        CreateVecIndex(tc, 5.f, N);
        for (uint32_t i = 0; i < N; i += 37) EXPECT_TRUE(tc.GetValue(i) == 5.f + i, "CreateVecIndex %u", i);

        // Whole-vector reductions with the documented tmp size; count not a multiple of a repeat.
        LocalTensor<float> tm = bufM.Get<float>();
        const int32_t cnt = 200;
        ReduceMax(tm, ta, tt, cnt, true);
        const size_t im = std::max_element(a.begin(), a.begin() + cnt) - a.begin();
        float idxBits = tm.GetValue(1);
        uint32_t idx;
        std::memcpy(&idx, &idxBits, 4);
        EXPECT_TRUE(tm.GetValue(0) == a[im] && idx == im, "ReduceMax value %g idx %u (want %g at %zu)", tm.GetValue(0),
                    idx, a[im], im);
        ReduceMin(tm, ta, tt, cnt, false);
        EXPECT_TRUE(tm.GetValue(0) == *std::min_element(a.begin(), a.begin() + cnt), "ReduceMin");
        ReduceSum(tm, ta, tt, cnt);
        const double s = std::accumulate(a.begin(), a.begin() + cnt, 0.0);
        EXPECT_TRUE(std::fabs(tm.GetValue(0) - s) < 1e-4, "ReduceSum %g vs %g", tm.GetValue(0), s);

        // WholeReduceMax with [value, index] pairs per repeat (index = position inside the repeat).
        WholeReduceMax(tc, ta, 64, 4, 1, 1, 8);
        for (uint32_t r = 0; r < 4; ++r) {
            const size_t k = std::max_element(a.begin() + r * 64, a.begin() + r * 64 + 64) - (a.begin() + r * 64);
            float ib = tc.GetValue(2 * r + 1);
            uint32_t ii;
            std::memcpy(&ii, &ib, 4);
            EXPECT_TRUE(tc.GetValue(2 * r) == a[r * 64 + k] && ii == k, "WholeReduceMax repeat %u", r);
        }

        // CompareScalar + Select (tensor/scalar) = relu; Compare + Select (tensor/tensor) = max.
        LocalTensor<uint8_t> mask = bufM.Get<uint8_t>();
        CompareScalar(mask, ta, 0.f, CMPMODE::GT, N);
        Select(tc, mask, ta, 0.f, SELMODE::VSEL_TENSOR_SCALAR_MODE, N);
        check("CompareScalar+Select", [](float x, float) { return x > 0 ? x : 0.f; }, 0);
        Compare(mask, ta, tb, CMPMODE::GE, N);
        Select(tc, mask, ta, tb, SELMODE::VSEL_TENSOR_TENSOR_MODE, N);
        check("Compare+Select", [](float x, float y) { return x >= y ? x : y; }, 0);

        // Gather with byte offsets: reverse order.
        LocalTensor<uint32_t> off = bufI.Get<uint32_t>();
        for (uint32_t i = 0; i < N; ++i) off.SetValue(i, (N - 1 - i) * 4);
        Gather(tc, ta, off, 0, N);
        for (uint32_t i = 0; i < N; ++i) EXPECT_TRUE(tc.GetValue(i) == a[N - 1 - i], "Gather %u", i);

        // Cast float -> half -> float (RINT) in the kernel.
        LocalTensor<half> th = bufT.Get<half>();
        Cast(th, ta, RoundMode::CAST_RINT, N);
        Cast(tc, th, RoundMode::CAST_NONE, N);
        check("Cast roundtrip", [](float x, float) { return static_cast<float>(static_cast<half>(x)); }, 0);
    });
}

// Half-precision arithmetic rounds like IEEE binary16.
static void TestHalfArith()
{
    const uint32_t N = 128;
    auto a = emu_test::RandomFloats(N, 21, -100.f, 100.f), b = emu_test::RandomFloats(N, 22, -100.f, 100.f);
    std::vector<half> ha(N), hb(N), out(N), want(N);
    for (uint32_t i = 0; i < N; ++i) {
        ha[i] = static_cast<half>(a[i]);
        hb[i] = static_cast<half>(b[i]);
        want[i] = static_cast<half>(static_cast<float>(ha[i]) * static_cast<float>(hb[i]));
    }
    longattn_emu::LaunchVector(1, [&] {
        TPipe pipe;
        TQue<TPosition::VECIN, 1> qa, qb;
        TQue<TPosition::VECOUT, 1> qc;
        pipe.InitBuffer(qa, 1, N * 2);
        pipe.InitBuffer(qb, 1, N * 2);
        pipe.InitBuffer(qc, 1, N * 2);
        GlobalTensor<half> ga, gb, gc;
        ga.SetGlobalBuffer(ha.data(), N);
        gb.SetGlobalBuffer(hb.data(), N);
        gc.SetGlobalBuffer(out.data(), N);
        auto la = qa.AllocTensor<half>();
        auto lb = qb.AllocTensor<half>();
        DataCopy(la, ga, N);
        DataCopy(lb, gb, N);
        qa.EnQue(la);
        qb.EnQue(lb);
        la = qa.DeQue<half>();
        lb = qb.DeQue<half>();
        auto lc = qc.AllocTensor<half>();
        Mul(lc, la, lb, N);
        qc.EnQue(lc);
        qa.FreeTensor(la);
        qb.FreeTensor(lb);
        lc = qc.DeQue<half>();
        DataCopy(gc, lc, N);
        qc.FreeTensor(lc);
    });
    emu_test::AllClose("half Mul", out, want, 0, 0);
}

int main()
{
    TestAdd<float>(8, 8 * 2048, 256, "add float 8 blocks");
    TestAdd<half>(4, 4 * 1024, 128, "add half 4 blocks");
    TestSoftmax();
    TestVectorApis();
    TestHalfArith();
    return emu_test::Finish("test_vector_kernels");
}
