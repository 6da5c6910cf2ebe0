// SPDX-License-Identifier: Apache-2.0
// Cube path with real fractal layouts and a mixed AIC + 2 AIV kernel:
//   AIC: GM (ND) -> L1 (Nz, DataCopy + Nd2NzParams) -> L0A/L0B (LoadData, optional fractal transpose)
//        -> Mmad (split K, accumulating in L0C) -> Fixpipe (NZ -> ND) into a GM workspace,
//        then CrossCoreSetFlag<2, PIPE_FIX>.
//   AIV: CrossCoreWaitFlag, each sub-block scales half of the rows (DataCopyPad for odd widths).
// Checked against a plain CPU matmul for several sizes, including non-multiples of 16.
#include "test_common.h"

using namespace AscendC;

struct MatmulTiling {
    uint32_t M, K, N;
    uint32_t kTile;      // K per Mmad (multiple of the fractal K0); the result accumulates in L0C
    uint32_t bTransposed;  // 1: B is given as N x K (like attention keys), 0: as K x N
    float scale;
};

constexpr uint16_t kFlagCubeDone = 3;

template <typename T>
class MatmulCube {
public:
    static constexpr uint32_t C0 = 32 / sizeof(T);        // elements per 32-byte row of a fractal
    static constexpr uint32_t FRAC = 512 / sizeof(T);     // elements per 512-byte fractal
    __aicore__ inline void Init(GM_ADDR a, GM_ADDR b, GM_ADDR ws, const MatmulTiling& t)
    {
        t_ = t;
        M1_ = (t.M + 15) / 16;
        N1_ = (t.N + 15) / 16;
        K1_ = (t.K + C0 - 1) / C0;
        K1t_ = t.kTile / C0;
        const int64_t g = GetBlockIdx();  // AIC: AI core index
        aGm_.SetGlobalBuffer((__gm__ T*)a + g * t.M * t.K, t.M * t.K);
        bGm_.SetGlobalBuffer((__gm__ T*)b + g * t.K * t.N, t.K * t.N);
        wsGm_.SetGlobalBuffer((__gm__ float*)ws + g * t.M * t.N, t.M * t.N);
        pipe_.InitBuffer(qA1_, 1, M1_ * 16 * K1_ * C0 * sizeof(T));
        const uint32_t bRows = t.bTransposed ? N1_ * 16 : K1_ * C0, bCols = t.bTransposed ? K1_ * C0 : N1_ * 16;
        pipe_.InitBuffer(qB1_, 1, bRows * bCols * sizeof(T));
        pipe_.InitBuffer(qA2_, 2, M1_ * K1t_ * 512);
        pipe_.InitBuffer(qB2_, 2, K1t_ * N1_ * 512);
        pipe_.InitBuffer(qC_, 1, M1_ * N1_ * 1024);
    }
    __aicore__ inline void Process()
    {
        CopyGmToL1();
        LocalTensor<T> a1 = qA1_.DeQue<T>();
        LocalTensor<T> b1 = qB1_.DeQue<T>();
        LocalTensor<float> c = qC_.AllocTensor<float>();
        const uint32_t kTiles = (t_.K + t_.kTile - 1) / t_.kTile;
        for (uint32_t kt = 0; kt < kTiles; ++kt) {
            const uint32_t k0 = kt * t_.kTile, kThis = (t_.K - k0 < t_.kTile) ? t_.K - k0 : t_.kTile;
            const uint32_t k1This = (kThis + C0 - 1) / C0, k1Start = kt * K1t_;
            LocalTensor<T> a2 = qA2_.AllocTensor<T>();
            for (uint32_t m1 = 0; m1 < M1_; ++m1)  // Nz (L1) -> Zz (L0A): one fractal row per call
                LoadData(a2[m1 * k1This * FRAC], a1, LoadData2DParams(k1Start * M1_ + m1, k1This, M1_, 0, 0, false, 0));
            qA2_.EnQue(a2);
            LocalTensor<T> b2 = qB2_.AllocTensor<T>();
            if (t_.bTransposed) {  // L1 already holds Zn fractals in (k1, n1) order
                LoadData(b2, b1, LoadData2DParams(k1Start * N1_, k1This * N1_, 1, 0, 0, false, 0));
            } else {  // transpose every 16x16 fractal: Nz -> Zn
                for (uint32_t k1 = 0; k1 < k1This; ++k1)
                    LoadData(b2[k1 * N1_ * FRAC], b1, LoadData2DParams(k1Start + k1, N1_, K1_, 0, 0, true, 0));
            }
            qB2_.EnQue(b2);
            a2 = qA2_.DeQue<T>();
            b2 = qB2_.DeQue<T>();
            MmadParams mp;
            mp.m = t_.M;
            mp.n = t_.N;
            mp.k = kThis;
            mp.cmatrixInitVal = (kt == 0);
            Mmad(c, a2, b2, mp);
            qA2_.FreeTensor(a2);
            qB2_.FreeTensor(b2);
        }
        qA1_.FreeTensor(a1);
        qB1_.FreeTensor(b1);
        qC_.EnQue(c);
        c = qC_.DeQue<float>();
        FixpipeParamsV220 fp;
        fp.nSize = t_.N;
        fp.mSize = t_.M;
        fp.srcStride = M1_ * 16;
        fp.dstStride = t_.N;
        Fixpipe(wsGm_, c, fp);
        qC_.FreeTensor(c);
        CrossCoreSetFlag<2, PIPE_FIX>(kFlagCubeDone);
    }

private:
    __aicore__ inline void CopyGmToL1()
    {
        LocalTensor<T> a1 = qA1_.AllocTensor<T>();
        DataCopy(a1, aGm_, Nd2NzParams(1, t_.M, t_.K, 0, t_.K, M1_ * 16, 1, 0));
        qA1_.EnQue(a1);
        LocalTensor<T> b1 = qB1_.AllocTensor<T>();
        if (t_.bTransposed)
            DataCopy(b1, bGm_, Nd2NzParams(1, t_.N, t_.K, 0, t_.K, N1_ * 16, 1, 0));
        else
            DataCopy(b1, bGm_, Nd2NzParams(1, t_.K, t_.N, 0, t_.N, K1_ * C0, 1, 0));
        qB1_.EnQue(b1);
    }

    TPipe pipe_;
    TQue<TPosition::A1, 1> qA1_;
    TQue<TPosition::B1, 1> qB1_;
    TQue<TPosition::A2, 2> qA2_;
    TQue<TPosition::B2, 2> qB2_;
    TQue<TPosition::CO1, 1> qC_;
    GlobalTensor<T> aGm_, bGm_;
    GlobalTensor<float> wsGm_;
    MatmulTiling t_{};
    uint32_t M1_ = 0, N1_ = 0, K1_ = 0, K1t_ = 0;
};

class ScaleVector {
public:
    __aicore__ inline void Init(GM_ADDR ws, GM_ADDR out, const MatmulTiling& t)
    {
        t_ = t;
        const int64_t g = GetBlockIdx() / 2, sub = GetSubBlockIdx();
        const uint32_t half = (t.M + 1) / 2;
        row0_ = sub * half;
        rows_ = sub == 0 ? half : t.M - half;
        wsGm_.SetGlobalBuffer((__gm__ float*)ws + g * t.M * t.N, t.M * t.N);
        outGm_.SetGlobalBuffer((__gm__ float*)out + g * t.M * t.N, t.M * t.N);
        rowPad_ = (t.N + 7) / 8 * 8;
        pipe_.InitBuffer(inQ_, 2, rowPad_ * sizeof(float));
        pipe_.InitBuffer(outQ_, 2, rowPad_ * sizeof(float));
    }
    __aicore__ inline void Process()
    {
        CrossCoreWaitFlag(kFlagCubeDone);  // the AIC's Fixpipe output is in GM now
        const DataCopyExtParams row(1, t_.N * sizeof(float), 0, 0, 0);
        for (uint32_t r = row0_; r < row0_ + rows_; ++r) {
            LocalTensor<float> x = inQ_.AllocTensor<float>();
            DataCopyPad(x, wsGm_[r * t_.N], row, DataCopyPadExtParams<float>(false, 0, 0, 0.f));
            inQ_.EnQue(x);
            x = inQ_.DeQue<float>();
            LocalTensor<float> y = outQ_.AllocTensor<float>();
            Muls(y, x, t_.scale, rowPad_);
            outQ_.EnQue(y);
            inQ_.FreeTensor(x);
            y = outQ_.DeQue<float>();
            DataCopyPad(outGm_[r * t_.N], y, row);
            outQ_.FreeTensor(y);
        }
    }

private:
    TPipe pipe_;
    TQue<TPosition::VECIN, 2> inQ_;
    TQue<TPosition::VECOUT, 2> outQ_;
    GlobalTensor<float> wsGm_, outGm_;
    MatmulTiling t_{};
    uint32_t row0_ = 0, rows_ = 0, rowPad_ = 0;
};

template <typename T>
__global__ __aicore__ void matmul_scale_mix(GM_ADDR a, GM_ADDR b, GM_ADDR ws, GM_ADDR out, GM_ADDR tiling)
{
    KERNEL_TASK_TYPE_DEFAULT(KERNEL_TYPE_MIX_AIC_1_2);
    const auto t = longattn_compat::ReadTiling<MatmulTiling>(tiling);
    if ASCEND_IS_AIC {
        MatmulCube<T> op;
        op.Init(a, b, ws, t);
        op.Process();
    }
    if ASCEND_IS_AIV {
        ScaleVector op;
        op.Init(ws, out, t);
        op.Process();
    }
}

template <typename T>
static void RunMatmul(uint32_t M, uint32_t K, uint32_t N, uint32_t kTile, bool bT, const char* name)
{
    const uint32_t blocks = 2;
    MatmulTiling t{M, K, N, kTile, bT ? 1u : 0u, 0.5f};
    auto af = emu_test::RandomFloats(blocks * M * K, 100 + M, -1.f, 1.f);
    auto bf = emu_test::RandomFloats(blocks * K * N, 200 + N, -1.f, 1.f);
    std::vector<T> a(af.size()), b(bf.size());
    for (size_t i = 0; i < a.size(); ++i) a[i] = static_cast<T>(af[i]);
    for (size_t i = 0; i < b.size(); ++i) b[i] = static_cast<T>(bf[i]);
    std::vector<float> ws(blocks * M * N, NAN), out(blocks * M * N, NAN), want(blocks * M * N);
    for (uint32_t g = 0; g < blocks; ++g)
        for (uint32_t i = 0; i < M; ++i)
            for (uint32_t j = 0; j < N; ++j) {
                float acc = 0.f;
                for (uint32_t k = 0; k < K; ++k) {
                    const float bv = bT ? static_cast<float>(b[g * K * N + j * K + k])
                                        : static_cast<float>(b[g * K * N + k * N + j]);
                    acc += static_cast<float>(a[g * M * K + i * K + k]) * bv;
                }
                want[g * M * N + i * N + j] = acc * t.scale;
            }
    longattn_emu::LaunchMix(blocks, [&] {
        matmul_scale_mix<T>((GM_ADDR)a.data(), (GM_ADDR)b.data(), (GM_ADDR)ws.data(), (GM_ADDR)out.data(), (GM_ADDR)&t);
    });
    emu_test::AllClose(name, out, want, 1e-4, 1e-4);
}

// Mix numbering: AIC GetBlockIdx() in [0, n), AIV in [0, 2n) = 2*core + sub; GetBlockNum() = n.
static void TestMixIds()
{
    std::vector<int64_t> ids(3 * 3, -1);
    longattn_emu::LaunchMix(3, [&] {
        if ASCEND_IS_AIC {
            ids[GetBlockIdx() * 3] = GetBlockIdx() * 100 + GetBlockNum() * 10 + GetTaskRatio();
        } else {
            const int64_t core = GetBlockIdx() / 2;
            ids[core * 3 + 1 + GetSubBlockIdx()] = GetBlockIdx() * 100 + GetBlockNum() * 10 + GetSubBlockNum();
        }
    });
    for (int64_t g = 0; g < 3; ++g) {
        EXPECT_TRUE(ids[g * 3] == g * 100 + 31, "AIC ids %lld", static_cast<long long>(ids[g * 3]));
        for (int64_t s = 0; s < 2; ++s)
            EXPECT_TRUE(ids[g * 3 + 1 + s] == (2 * g + s) * 100 + 32, "AIV ids %lld",
                        static_cast<long long>(ids[g * 3 + 1 + s]));
    }
}

// Fixpipe with ReLU and F322BF16 conversion on an AIC-only launch; plus InitConstValue padding.
static void TestFixpipeReluBf16()
{
    const uint32_t M = 20, K = 32, N = 24;
    auto af = emu_test::RandomFloats(M * K, 5), bf = emu_test::RandomFloats(N * K, 6);
    std::vector<half> a(M * K), b(N * K);
    for (size_t i = 0; i < a.size(); ++i) a[i] = static_cast<half>(af[i]);
    for (size_t i = 0; i < b.size(); ++i) b[i] = static_cast<half>(bf[i]);
    std::vector<bfloat16_t> out(M * N, bfloat16_t(0.f)), want(M * N);
    for (uint32_t i = 0; i < M; ++i)
        for (uint32_t j = 0; j < N; ++j) {
            float acc = 0.f;
            for (uint32_t k = 0; k < K; ++k) acc += static_cast<float>(a[i * K + k]) * static_cast<float>(b[j * K + k]);
            want[i * N + j] = bfloat16_t(acc > 0 ? acc : 0.f);
        }
    longattn_emu::LaunchCube(1, [&] {
        const uint32_t M1 = 2, N1 = 2, K1 = 2;
        TPipe pipe;
        TBuf<TPosition::A1> l1a, l1b;
        TBuf<TPosition::A2> l0a;
        TBuf<TPosition::B2> l0b;
        TBuf<TPosition::CO1> l0c;
        pipe.InitBuffer(l1a, M1 * 16 * K * 2);
        pipe.InitBuffer(l1b, N1 * 16 * K * 2);
        pipe.InitBuffer(l0a, M1 * K1 * 512);
        pipe.InitBuffer(l0b, K1 * N1 * 512);
        pipe.InitBuffer(l0c, M1 * N1 * 1024);
        GlobalTensor<half> ga, gb;
        GlobalTensor<bfloat16_t> go;
        ga.SetGlobalBuffer(a.data(), a.size());
        gb.SetGlobalBuffer(b.data(), b.size());
        go.SetGlobalBuffer(out.data(), out.size());
        LocalTensor<half> ta1 = l1a.Get<half>(), tb1 = l1b.Get<half>(), ta2 = l0a.Get<half>(), tb2 = l0b.Get<half>();
        LocalTensor<float> tc = l0c.Get<float>();
        // Zero the L1 tiles first so the padded rows are defined (InitConstValue on L1 is PIPE_MTE2).
        InitConstValue(ta1, InitConstValueParams<half>(1, M1 * 16 * K * 2 / 32, 0, half(0)));
        InitConstValue(tb1, InitConstValueParams<half>(1, N1 * 16 * K * 2 / 32, 0, half(0)));
        PipeBarrier<PIPE_MTE2>();  // the copies below write the zeroed tiles again on the same pipe
        DataCopy(ta1, ga, Nd2NzParams(1, M, K, 0, K, M1 * 16, 1, 0));
        DataCopy(tb1, gb, Nd2NzParams(1, N, K, 0, K, N1 * 16, 1, 0));
        SetFlag<HardEvent::MTE2_MTE1>(EVENT_ID0);
        WaitFlag<HardEvent::MTE2_MTE1>(EVENT_ID0);
        for (uint32_t m1 = 0; m1 < M1; ++m1)
            LoadData(ta2[m1 * K1 * 256], ta1, LoadData2DParams(m1, K1, M1, 0, 0, false, 0));
        LoadData(tb2, tb1, LoadData2DParams(0, K1 * N1, 1, 0, 0, false, 0));
        SetFlag<HardEvent::MTE1_M>(EVENT_ID0);
        WaitFlag<HardEvent::MTE1_M>(EVENT_ID0);
        Mmad(tc, ta2, tb2, MmadParams(M, N, K, 0, false, true));
        SetFlag<HardEvent::M_FIX>(EVENT_ID0);
        WaitFlag<HardEvent::M_FIX>(EVENT_ID0);
        FixpipeParamsV220 fp;
        fp.nSize = N;
        fp.mSize = M;
        fp.srcStride = M1 * 16;
        fp.dstStride = N;
        fp.quantPre = F322BF16;
        fp.reluEn = true;
        Fixpipe<bfloat16_t, float, CFG_ROW_MAJOR>(go, tc, fp);
    });
    size_t bad = 0;
    for (size_t i = 0; i < out.size(); ++i) bad += out[i].emu_bits != want[i].emu_bits;
    EXPECT_TRUE(bad == 0, "Fixpipe ReLU + F322BF16: %zu of %zu bf16 results differ", bad, out.size());
}

// AIV -> AIC handoff, the sparse-attention gather pattern: the two AIVs gather KV rows chosen by an
// index list into a GM workspace (scalar index reads, DataCopy in/out with explicit MTE2/MTE3 flags),
// signal the AIC with CrossCoreSetFlag<2, PIPE_MTE3>; the AIC computes scores = Q . K_gathered^T.
constexpr uint16_t kFlagGathered = 4;
static void TestGatherThenMatmul()
{
    constexpr uint32_t D = 64, S = 40, TOPK = 24, M = 16;
    auto kvf = emu_test::RandomFloats(S * D, 77), qf = emu_test::RandomFloats(M * D, 78);
    std::vector<half> kv(S * D), q(M * D), ws(TOPK * D, half(0.f));
    for (size_t i = 0; i < kv.size(); ++i) kv[i] = static_cast<half>(kvf[i]);
    for (size_t i = 0; i < q.size(); ++i) q[i] = static_cast<half>(qf[i]);
    std::vector<int32_t> idx(TOPK);
    std::mt19937 g(5);
    for (auto& v : idx) v = static_cast<int32_t>(g() % S);
    std::vector<float> scores(M * TOPK, NAN), want(M * TOPK);
    for (uint32_t i = 0; i < M; ++i)
        for (uint32_t j = 0; j < TOPK; ++j) {
            float acc = 0.f;
            for (uint32_t d = 0; d < D; ++d)
                acc += static_cast<float>(q[i * D + d]) * static_cast<float>(kv[idx[j] * D + d]);
            want[i * TOPK + j] = acc;
        }
    longattn_emu::LaunchMix(1, [&] {
        if ASCEND_IS_AIV {
            TPipe pipe;
            TBuf<TPosition::VECCALC> row;
            pipe.InitBuffer(row, D * sizeof(half));
            GlobalTensor<half> kvGm, wsGm;
            GlobalTensor<int32_t> idxGm;
            kvGm.SetGlobalBuffer(kv.data(), kv.size());
            wsGm.SetGlobalBuffer(ws.data(), ws.size());
            idxGm.SetGlobalBuffer(idx.data(), idx.size());
            LocalTensor<half> r = row.Get<half>();
            const uint32_t per = TOPK / 2, j0 = GetSubBlockIdx() * per;
            for (uint32_t j = j0; j < j0 + per; ++j) {
                const int32_t slot = idxGm.GetValue(j);
                if (j != j0) {  // the previous row's MTE3 read of `r` must finish before MTE2 overwrites it
                    SetFlag<HardEvent::MTE3_MTE2>(EVENT_ID0);
                    WaitFlag<HardEvent::MTE3_MTE2>(EVENT_ID0);
                }
                DataCopy(r, kvGm[slot * D], D);
                SetFlag<HardEvent::MTE2_MTE3>(EVENT_ID0);
                WaitFlag<HardEvent::MTE2_MTE3>(EVENT_ID0);
                DataCopy(wsGm[j * D], r, D);
            }
            CrossCoreSetFlag<2, PIPE_MTE3>(kFlagGathered);
        }
        if ASCEND_IS_AIC {
            constexpr uint32_t M1 = 1, N1 = 2, K1 = D / 16;
            TPipe pipe;
            TQue<TPosition::A1, 1> qa1;
            TQue<TPosition::B1, 1> qb1;
            TQue<TPosition::A2, 1> qa2;
            TQue<TPosition::B2, 1> qb2;
            TQue<TPosition::CO1, 1> qc;
            pipe.InitBuffer(qa1, 1, M1 * 16 * D * 2);
            pipe.InitBuffer(qb1, 1, N1 * 16 * D * 2);
            pipe.InitBuffer(qa2, 1, M1 * K1 * 512);
            pipe.InitBuffer(qb2, 1, K1 * N1 * 512);
            pipe.InitBuffer(qc, 1, M1 * N1 * 1024);
            GlobalTensor<half> qGm, wsGm;
            GlobalTensor<float> sGm;
            qGm.SetGlobalBuffer(q.data(), q.size());
            wsGm.SetGlobalBuffer(ws.data(), ws.size());
            sGm.SetGlobalBuffer(scores.data(), scores.size());
            LocalTensor<half> a1 = qa1.AllocTensor<half>();
            DataCopy(a1, qGm, Nd2NzParams(1, M, D, 0, D, M1 * 16, 1, 0));
            qa1.EnQue(a1);
            CrossCoreWaitFlag<2>(kFlagGathered);  // both AIVs have written their rows
            LocalTensor<half> b1 = qb1.AllocTensor<half>();
            DataCopy(b1, wsGm, Nd2NzParams(1, TOPK, D, 0, D, N1 * 16, 1, 0));
            qb1.EnQue(b1);
            a1 = qa1.DeQue<half>();
            b1 = qb1.DeQue<half>();
            LocalTensor<half> a2 = qa2.AllocTensor<half>(), b2 = qb2.AllocTensor<half>();
            LoadData(a2, a1, LoadData2DParams(0, K1, M1, 0, 0, false, 0));
            LoadData(b2, b1, LoadData2DParams(0, K1 * N1, 1, 0, 0, false, 0));
            qa2.EnQue(a2);
            qb2.EnQue(b2);
            qa1.FreeTensor(a1);
            qb1.FreeTensor(b1);
            a2 = qa2.DeQue<half>();
            b2 = qb2.DeQue<half>();
            LocalTensor<float> c = qc.AllocTensor<float>();
            Mmad(c, a2, b2, MmadParams(M, TOPK, D, 0, false, true));
            qc.EnQue(c);
            qa2.FreeTensor(a2);
            qb2.FreeTensor(b2);
            c = qc.DeQue<float>();
            FixpipeParamsV220 fp;
            fp.nSize = TOPK;
            fp.mSize = M;
            fp.srcStride = M1 * 16;
            fp.dstStride = TOPK;
            Fixpipe(sGm, c, fp);
            qc.FreeTensor(c);
        }
    });
    emu_test::AllClose("gather (AIV) -> QK^T (AIC)", scores, want, 1e-5, 1e-5);
}

// GEMV mode (page *Mmad*, constraints): with m = 1, L0A is read as one ND row. A 1 x 32 row written
// in ND order gives the dot products at m = 1; the same bytes read as the Zz layout (m = 16, row 0)
// take k 16..31 from the second fractal (bytes 512..), so a Zz-laid-out single row is wrong at m = 1.
static void TestGemvModeAtOneRow()
{
    const uint32_t K = 32, N = 16;
    std::vector<float> out1(N), out16(N), want(N);
    longattn_emu::LaunchCube(1, [&] {
        TPipe pipe;
        TBuf<TPosition::A2> l0a;
        TBuf<TPosition::B2> l0b;
        TBuf<TPosition::CO1> l0c;
        pipe.InitBuffer(l0a, 2 * 512);
        pipe.InitBuffer(l0b, 2 * 512);
        pipe.InitBuffer(l0c, 1024);
        LocalTensor<half> a = l0a.Get<half>(), b = l0b.Get<half>();
        LocalTensor<float> c = l0c.Get<float>();
        for (uint32_t i = 0; i < 2 * 256; ++i) a.SetValue(i, half(0));
        for (uint32_t kk = 0; kk < K; ++kk) a.SetValue(kk, half(static_cast<float>(kk % 7) - 3.0f));  // ND row
        for (uint32_t kk = 0; kk < K; ++kk)  // Zn: fractal kk/16, inside column j, row kk%16
            for (uint32_t j = 0; j < N; ++j) b.SetValue((kk / 16) * 256 + j * 16 + kk % 16, half(float(j + 1)));
        for (uint32_t j = 0; j < N; ++j) {
            float acc = 0.f;
            for (uint32_t kk = 0; kk < K; ++kk) acc += (static_cast<float>(kk % 7) - 3.0f) * float(j + 1);
            want[j] = acc;
        }
        PipeBarrier<PIPE_ALL>();
        for (const uint16_t m : {uint16_t(1), uint16_t(16)}) {
            Mmad(c, a, b, MmadParams(m, N, K, 0, false, true));
            PipeBarrier<PIPE_ALL>();
            for (uint32_t j = 0; j < N; ++j) (m == 1 ? out1 : out16)[j] = c.GetValue(j);  // row 0 of C (Nz)
            PipeBarrier<PIPE_ALL>();
        }
    });
    size_t bad1 = 0, same16 = 0;
    for (uint32_t j = 0; j < N; ++j) {
        bad1 += out1[j] != want[j];
        same16 += out16[j] == want[j];
    }
    EXPECT_TRUE(bad1 == 0, "Mmad m = 1 (GEMV, ND row): %zu of %u results differ", bad1, N);
    EXPECT_TRUE(same16 == 0, "Mmad m = 16 read the ND row as Zz and still matched %zu of %u results", same16, N);
}

int main()
{
    TestMixIds();
    // half, B as K x N (fractal transpose on load) and as N x K (no transpose); odd sizes included.
    RunMatmul<half>(16, 16, 16, 16, false, "matmul half 16x16x16");
    RunMatmul<half>(40, 56, 24, 32, false, "matmul half 40x56x24 splitK");
    RunMatmul<half>(33, 70, 47, 48, false, "matmul half 33x70x47 splitK");
    RunMatmul<half>(33, 70, 47, 80, true, "matmul half 33x70x47 B^T");
    RunMatmul<half>(64, 128, 80, 64, true, "matmul half 64x128x80 B^T splitK");
    RunMatmul<bfloat16_t>(17, 40, 31, 16, true, "matmul bf16 17x40x31 B^T splitK");
    RunMatmul<bfloat16_t>(24, 48, 20, 48, false, "matmul bf16 24x48x20");
    RunMatmul<float>(33, 40, 47, 16, true, "matmul fp32 33x40x47 B^T splitK");
    RunMatmul<float>(9, 13, 5, 16, true, "matmul fp32 9x13x5 B^T");
    TestFixpipeReluBf16();
    TestGatherThenMatmul();
    TestGemvModeAtOneRow();
    return emu_test::Finish("test_cube_mix");
}
