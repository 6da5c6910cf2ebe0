// SPDX-License-Identifier: Apache-2.0
// Sort32 / MrgSort (the top-k building blocks, including index extraction with Gather),
// DataCopyPad with odd byte lengths and padding, strided DataCopyParams copies, DMA atomics,
// SyncAll, cross-core modes 0 and 1, TQue queries and TPipe event ids.
#include <algorithm>
#include <cstring>
#include <numeric>

#include "test_common.h"

using namespace AscendC;

struct Pair {
    float score;
    uint32_t index;
};

static std::vector<Pair> StableDesc(std::vector<Pair> v)
{
    std::stable_sort(v.begin(), v.end(), [](const Pair& a, const Pair& b) { return a.score > b.score; });
    return v;
}

// Scores with deliberate ties; Sort32 per group of 32, MrgSort of the 4 groups, indices via Gather.
static void TestSortMerge()
{
    const uint32_t N = 128;
    std::vector<float> scores(N);
    std::mt19937 g(9);
    for (uint32_t i = 0; i < N; ++i) scores[i] = static_cast<float>(static_cast<int>(g() % 40) - 20) * 0.5f;
    std::vector<float> sorted32(2 * N), merged(2 * N);
    std::vector<uint32_t> topIdx(N);
    longattn_emu::LaunchVector(1, [&] {
        TPipe pipe;
        TBuf<TPosition::VECCALC> bs, bi, bd, bm, bo, bx;
        pipe.InitBuffer(bs, N * 4);
        pipe.InitBuffer(bi, N * 4);
        pipe.InitBuffer(bd, N * 8);
        pipe.InitBuffer(bm, N * 8);
        pipe.InitBuffer(bo, N * 4);
        pipe.InitBuffer(bx, N * 4);
        LocalTensor<float> s = bs.Get<float>(), d = bd.Get<float>(), m = bm.Get<float>(), o = bo.Get<float>();
        LocalTensor<uint32_t> idx = bi.Get<uint32_t>(), off = bx.Get<uint32_t>();
        for (uint32_t i = 0; i < N; ++i) s.SetValue(i, scores[i]);
        CreateVecIndex(idx.ReinterpretCast<int32_t>(), 0, N);
        Sort32(d, s, idx, N / 32);
        for (uint32_t i = 0; i < 2 * N; ++i) sorted32[i] = d.GetValue(i);
        const uint16_t lens[4] = {32, 32, 32, 32};
        MrgSort(m, MrgSortSrcList<float>(d[0], d[64], d[128], d[192]), MrgSort4Info(lens, false, 15, 1));
        for (uint32_t i = 0; i < 2 * N; ++i) merged[i] = m.GetValue(i);
        // Index of pair i sits at byte 8*i + 4: gather it (offsets are in bytes).
        for (uint32_t i = 0; i < N; ++i) off.SetValue(i, 8 * i + 4);
        Gather(o, m, off, 0, N);
        for (uint32_t i = 0; i < N; ++i) topIdx[i] = o.ReinterpretCast<uint32_t>().GetValue(i);
    });
    for (uint32_t grp = 0; grp < 4; ++grp) {
        std::vector<Pair> in;
        for (uint32_t i = 0; i < 32; ++i) in.push_back({scores[grp * 32 + i], grp * 32 + i});
        auto want = StableDesc(in);
        for (uint32_t i = 0; i < 32; ++i) {
            uint32_t gi;
            std::memcpy(&gi, &sorted32[2 * (grp * 32 + i) + 1], 4);
            EXPECT_TRUE(sorted32[2 * (grp * 32 + i)] == want[i].score && gi == want[i].index,
                        "Sort32 group %u pos %u: (%g,%u) want (%g,%u)", grp, i, sorted32[2 * (grp * 32 + i)], gi,
                        want[i].score, want[i].index);
        }
    }
    std::vector<Pair> all;
    for (uint32_t i = 0; i < N; ++i) all.push_back({scores[i], i});
    auto want = StableDesc(all);
    for (uint32_t i = 0; i < N; ++i) {
        uint32_t gi;
        std::memcpy(&gi, &merged[2 * i + 1], 4);
        EXPECT_TRUE(merged[2 * i] == want[i].score && gi == want[i].index && topIdx[i] == want[i].index,
                    "MrgSort pos %u: (%g,%u,%u) want (%g,%u)", i, merged[2 * i], gi, topIdx[i], want[i].score,
                    want[i].index);
    }
}

// Half scores: (score, reserved, index) layout, exhausted suspension and multi-repeat merges.
static void TestSortHalfAndSuspension()
{
    std::vector<float> raw = emu_test::RandomFloats(64, 33, -5.f, 5.f);
    longattn_emu::LaunchVector(1, [&] {
        TPipe pipe;
        TBuf<TPosition::VECCALC> bs, bi, bd, bm;
        pipe.InitBuffer(bs, 256);  // 128 B of scores, padded so that Sort32's dst is 256-byte aligned
        pipe.InitBuffer(bi, 64 * 4);
        pipe.InitBuffer(bd, 64 * 8);
        pipe.InitBuffer(bm, 64 * 8);
        LocalTensor<half> s = bs.Get<half>(), d = bd.Get<half>(), m = bm.Get<half>();
        LocalTensor<uint32_t> idx = bi.Get<uint32_t>();
        for (uint32_t i = 0; i < 64; ++i) {
            s.SetValue(i, static_cast<half>(raw[i]));
            idx.SetValue(i, 1000 + i);
        }
        Sort32(d, s, idx, 2);
        for (uint32_t r = 0; r < 2; ++r)
            for (uint32_t i = 0; i < 32; ++i) {
                const uint32_t p = r * 32 + i;
                const float sc = static_cast<float>(d.GetValue(4 * p));
                const uint32_t ix = d.ReinterpretCast<uint32_t>().GetValue(2 * p + 1);
                EXPECT_TRUE(ix >= 1000 + r * 32 && ix < 1032 + r * 32 &&
                                sc == static_cast<float>(static_cast<half>(raw[ix - 1000])),
                            "half Sort32 layout at %u", p);
                if (i > 0) EXPECT_TRUE(static_cast<float>(d.GetValue(4 * (p - 1))) >= sc, "half Sort32 order at %u", p);
            }
        // Queue 1 has only 5 pairs: with suspension the merge stops right after it runs dry.
        const uint16_t lens[4] = {5, 32, 0, 0};
        MrgSort(m, MrgSortSrcList<half>(d[0], d[128], d[0], d[0]), MrgSort4Info(lens, true, 3, 1));
        uint16_t c1, c2, c3, c4;
        GetMrgSortResult(c1, c2, c3, c4);
        EXPECT_TRUE(c1 == 5 && c2 < 32 && c3 == 0 && c4 == 0, "GetMrgSortResult %u %u %u %u", c1, c2, c3, c4);
        for (uint32_t i = 1; i < static_cast<uint32_t>(c1 + c2); ++i)
            EXPECT_TRUE(static_cast<float>(m.GetValue(4 * (i - 1))) >= static_cast<float>(m.GetValue(4 * i)),
                        "suspended merge order at %u", i);
    });
    // Two repeats of four contiguous 8-pair queues (float).
    longattn_emu::LaunchVector(1, [&] {
        TPipe pipe;
        TBuf<TPosition::VECCALC> bq, bo;
        pipe.InitBuffer(bq, 64 * 8);
        pipe.InitBuffer(bo, 64 * 8);
        LocalTensor<float> q = bq.Get<float>(), o = bo.Get<float>();
        for (uint32_t rep = 0; rep < 2; ++rep)
            for (uint32_t k = 0; k < 4; ++k)
                for (uint32_t i = 0; i < 8; ++i) {
                    const uint32_t p = rep * 32 + k * 8 + i;
                    q.SetValue(2 * p, 100.f * rep + 8.f * (3 - k) - static_cast<float>(i));  // descending per queue
                    q.ReinterpretCast<uint32_t>().SetValue(2 * p + 1, p);
                }
        const uint16_t lens[4] = {8, 8, 8, 8};
        MrgSort(o, MrgSortSrcList<float>(q[0], q[16], q[32], q[48]), MrgSort4Info(lens, false, 15, 2));
        for (uint32_t rep = 0; rep < 2; ++rep)
            for (uint32_t i = 0; i < 32; ++i)
                EXPECT_TRUE(o.GetValue(2 * (rep * 32 + i)) == 100.f * rep + 24.f - i, "repeat merge rep %u pos %u", rep,
                            i);
    });
}

static void TestDataCopyPad()
{
    // int8 rows of 47 bytes with a 5-byte source gap and one 32-byte destination gap block.
    const uint32_t rows = 3, len = 47, srcGap = 5;
    std::vector<int8_t> src(rows * (len + srcGap));
    for (size_t i = 0; i < src.size(); ++i) src[i] = static_cast<int8_t>(i * 7 + 1);
    std::vector<int8_t> ub(rows * 96, 0), back(rows * (len + 3), 99);
    // half rows of 3 elements with left/right padding of value 7.
    std::vector<half> hsrc = {half(1.f), half(2.f), half(3.f), half(4.f), half(5.f), half(6.f)};
    std::vector<half> hub(2 * 16);
    // float rows of 5 elements, dummy from SetPadValue.
    std::vector<float> fsrc = {1, 2, 3, 4, 5};
    std::vector<float> fub(8);
    // Strided DataCopyParams: blocks of 8 floats, source gap 1 block, destination gap 2 blocks.
    std::vector<float> strided(64);
    std::iota(strided.begin(), strided.end(), 0.f);
    std::vector<float> sub(3 * 24, -1.f);
    longattn_emu::LaunchVector(1, [&] {
        TPipe pipe;
        TBuf<TPosition::VECCALC> b8, bh, bf, bs;
        pipe.InitBuffer(b8, rows * 96);
        pipe.InitBuffer(bh, 64);
        pipe.InitBuffer(bf, 32);
        pipe.InitBuffer(bs, 3 * 24 * 4);
        GlobalTensor<int8_t> g8, gback;
        g8.SetGlobalBuffer(src.data(), src.size());
        gback.SetGlobalBuffer(back.data(), back.size());
        LocalTensor<int8_t> t8 = b8.Get<int8_t>();
        DataCopyPad(t8, g8, DataCopyExtParams(rows, len, srcGap, 1, 0), DataCopyPadExtParams<int8_t>(false, 0, 0, 0));
        GlobalTensor<half> gh;
        gh.SetGlobalBuffer(hsrc.data(), hsrc.size());
        LocalTensor<half> th = bh.Get<half>();
        DataCopyPad(th, gh, DataCopyExtParams(2, 3 * 2, 0, 0, 0), DataCopyPadExtParams<half>(true, 2, 1, half(7.f)));
        GlobalTensor<float> gf, gs;
        gf.SetGlobalBuffer(fsrc.data(), fsrc.size());
        gs.SetGlobalBuffer(strided.data(), strided.size());
        LocalTensor<float> tf = bf.Get<float>(), ts = bs.Get<float>();
        SetPadValue(-1.f);
        DataCopyPad(tf, gf, DataCopyExtParams(1, 5 * 4, 0, 0, 0), DataCopyPadExtParams<float>(false, 0, 0, 0.f));
        DataCopy(ts, gs, DataCopyParams(3, 1, 1, 2));
        SetFlag<HardEvent::MTE2_S>(EVENT_ID0);  // explicit (PIPE_S is auto-synced on the AIV anyway)
        WaitFlag<HardEvent::MTE2_S>(EVENT_ID0);
        for (uint32_t i = 0; i < ub.size(); ++i) ub[i] = t8.GetValue(i);
        for (uint32_t i = 0; i < hub.size(); ++i) hub[i] = th.GetValue(i);
        for (uint32_t i = 0; i < fub.size(); ++i) fub[i] = tf.GetValue(i);
        for (uint32_t i = 0; i < sub.size(); ++i) sub[i] = ts.GetValue(i);
        // UB -> GM: the 47 data bytes of each row; 3-byte gaps in GM stay untouched.
        SetFlag<HardEvent::MTE2_MTE3>(EVENT_ID0);
        WaitFlag<HardEvent::MTE2_MTE3>(EVENT_ID0);
        DataCopyPad(gback, t8, DataCopyExtParams(rows, len, 1, 3, 0));
    });
    for (uint32_t r = 0; r < rows; ++r) {
        for (uint32_t j = 0; j < 64; ++j) {
            const int8_t want =
                j < len ? src[r * (len + srcGap) + j] : src[r * (len + srcGap)];  // dummy = first element
            EXPECT_TRUE(ub[r * 96 + j] == want, "DataCopyPad int8 row %u byte %u: %d want %d", r, j, ub[r * 96 + j],
                        want);
        }
        for (uint32_t j = 0; j < len; ++j)
            EXPECT_TRUE(back[r * (len + 3) + j] == src[r * (len + srcGap) + j], "UB->GM row %u byte %u", r, j);
        for (uint32_t j = len; j < len + 3; ++j) EXPECT_TRUE(back[r * (len + 3) + j] == 99, "UB->GM gap byte touched");
    }
    for (uint32_t r = 0; r < 2; ++r)
        for (uint32_t j = 0; j < 16; ++j) {
            const float want = (j >= 2 && j < 5) ? static_cast<float>(hsrc[r * 3 + j - 2]) : 7.f;
            EXPECT_TRUE(static_cast<float>(hub[r * 16 + j]) == want, "DataCopyPad half row %u elem %u", r, j);
        }
    for (uint32_t j = 0; j < 8; ++j)
        EXPECT_TRUE(fub[j] == (j < 5 ? fsrc[j] : -1.f), "DataCopyPad SetPadValue elem %u", j);
    for (uint32_t b = 0; b < 3; ++b)
        for (uint32_t j = 0; j < 8; ++j)
            EXPECT_TRUE(sub[b * 24 + j] == strided[b * 16 + j], "strided DataCopy block %u elem %u", b, j);
}

// DMA atomic add from 4 cores, then SyncAll and a read of the neighbour's slice.
static void TestAtomicsAndSyncAll()
{
    const uint32_t blocks = 4, n = 64;
    std::vector<float> acc(n, 0.5f), slices(blocks * n, 0.f), out(blocks * n, 0.f);
    longattn_emu::LaunchVector(blocks, [&] {
        TPipe pipe;
        TBuf<TPosition::VECCALC> b;
        pipe.InitBuffer(b, n * 4);
        LocalTensor<float> t = b.Get<float>();
        const int64_t me = GetBlockIdx();
        GlobalTensor<float> ga, gs, go;
        ga.SetGlobalBuffer(acc.data(), n);
        gs.SetGlobalBuffer(slices.data(), blocks * n);
        go.SetGlobalBuffer(out.data(), blocks * n);
        Duplicate(t, static_cast<float>(me + 1), n);
        SetFlag<HardEvent::V_MTE3>(EVENT_ID0);
        WaitFlag<HardEvent::V_MTE3>(EVENT_ID0);
        SetAtomicAdd<float>();
        DataCopy(ga, t, n);
        SetAtomicNone();
        DataCopy(gs[me * n], t, n);
        SyncAll();  // every slice is in GM now
        const int64_t next = (me + 1) % blocks;
        DataCopy(t, gs[next * n], n);
        SetFlag<HardEvent::MTE2_MTE3>(EVENT_ID1);
        WaitFlag<HardEvent::MTE2_MTE3>(EVENT_ID1);
        DataCopy(go[me * n], t, n);
    });
    std::vector<float> wantAcc(n, 0.5f + 1 + 2 + 3 + 4);
    emu_test::AllClose("atomic add", acc, wantAcc, 0, 0);
    for (uint32_t c = 0; c < blocks; ++c)
        for (uint32_t i = 0; i < n; ++i)
            EXPECT_TRUE(out[c * n + i] == static_cast<float>((c + 1) % blocks + 1), "SyncAll neighbour read core %u",
                        c);
}

// Cross-core modes 0 (all AIVs) and 1 (the two AIVs of one AI core) in a mixed launch.
static void TestCrossCoreModes()
{
    const uint32_t cores = 2;
    std::vector<float> buf(cores * 2 * 8, 0.f), seen(cores * 2, 0.f), seen0(cores * 2, 0.f), back(cores * 2, 0.f);
    longattn_emu::LaunchMix(cores, [&] {
        if ASCEND_IS_AIC {
            CrossCoreSetFlag<0, PIPE_M>(1);  // mode 0 among the AICs
            CrossCoreWaitFlag<0>(1);
            CrossCoreWaitFlag<2>(7);  // relay: both AIVs -> AIC -> both AIVs (mode 2)
            CrossCoreSetFlag<2, PIPE_MTE2>(8);
            return;
        }
        TPipe pipe;
        TBuf<TPosition::VECCALC> b;
        pipe.InitBuffer(b, 64);
        LocalTensor<float> t = b.Get<float>();
        const int64_t me = GetBlockIdx();  // 2*core + sub
        GlobalTensor<float> g;
        g.SetGlobalBuffer(buf.data(), buf.size());
        Duplicate(t, static_cast<float>(me + 10), 8);
        SetFlag<HardEvent::V_MTE3>(EVENT_ID0);
        WaitFlag<HardEvent::V_MTE3>(EVENT_ID0);
        DataCopy(g[me * 8], t, 8);
        CrossCoreSetFlag<1, PIPE_MTE3>(5);  // both AIVs of this AI core
        CrossCoreWaitFlag<1>(5);
        const int64_t partner = me ^ 1;
        seen[me] = g.GetValue(partner * 8);
        CrossCoreSetFlag<0, PIPE_MTE3>(6);  // every AIV of the launch
        CrossCoreWaitFlag<0>(6);
        seen0[me] = g.GetValue(((me + 2) % (2 * cores)) * 8);
        // Round trip through the AIC, then MTE2 re-reads this core's own MTE3 output: ordered by the
        // CrossCoreSetFlag<2, PIPE_MTE3> -> AIC -> CrossCoreWaitFlag chain (no local flag needed).
        CrossCoreSetFlag<2, PIPE_MTE3>(7);
        CrossCoreWaitFlag<2>(8);
        DataCopy(t, g[me * 8], 8);
        back[me] = t.GetValue(0);
    });
    for (uint32_t v = 0; v < 2 * cores; ++v) {
        EXPECT_TRUE(seen[v] == static_cast<float>((v ^ 1) + 10), "mode 1: AIV %u saw %g", v, seen[v]);
        EXPECT_TRUE(seen0[v] == static_cast<float>((v + 2) % (2 * cores) + 10), "mode 0: AIV %u saw %g", v, seen0[v]);
        EXPECT_TRUE(back[v] == static_cast<float>(v + 10), "mode 2 round trip: AIV %u read back %g", v, back[v]);
    }
}

static void TestQueueQueriesAndEventIds()
{
    longattn_emu::LaunchVector(1, [&] {
        TPipe pipe;
        TQue<TPosition::VECIN, 2> q;
        pipe.InitBuffer(q, 2, 100);  // rounded up to 128 bytes
        EXPECT_TRUE(q.VacantInQue() && !q.HasTensorInQue() && q.HasIdleBuffer(), "fresh queue state");
        auto a = q.AllocTensor<float>();
        EXPECT_TRUE(a.GetSize() == 32 && a.GetLength() == 128, "AllocTensor size %u", a.GetSize());
        auto b = q.AllocTensor<float>();
        EXPECT_TRUE(!q.HasIdleBuffer() && b.GetPhyAddr() == a.GetPhyAddr() + 128, "second buffer");
        Duplicate(a, 1.f, 32);
        Duplicate(b, 2.f, 32);
        q.EnQue(a);
        q.EnQue(b);
        EXPECT_TRUE(!q.VacantInQue() && q.GetTensorCountInQue() == 2, "queue full");
        auto x = q.DeQue<float>();
        auto y = q.DeQue<float>();
        EXPECT_TRUE(x.GetValue(0) == 1.f && y.GetValue(0) == 2.f, "FIFO order");
        q.FreeTensor(x);
        q.FreeTensor(y);
        TEventID e0 = pipe.AllocEventID<HardEvent::V_MTE3>();
        TEventID e1 = pipe.AllocEventID<HardEvent::V_MTE3>();
        EXPECT_TRUE(e0 != e1, "AllocEventID distinct");
        SetFlag<HardEvent::V_MTE3>(e1);
        WaitFlag<HardEvent::V_MTE3>(e1);
        pipe.ReleaseEventID<HardEvent::V_MTE3>(e0);
        pipe.ReleaseEventID<HardEvent::V_MTE3>(e1);
        EXPECT_TRUE(pipe.FetchEventID<HardEvent::V_MTE3>() == 0, "FetchEventID");
    });
}

// Copy-through a single VECIN buffer (MTE2 -> MTE3, no vector op): the TQue handoffs order the pipes.
static void TestCopyThroughQueue()
{
    std::vector<float> src = emu_test::RandomFloats(256, 44), dst(256, 0.f);
    longattn_emu::LaunchVector(1, [&] {
        TPipe pipe;
        TQue<TPosition::VECIN, 1> q;
        pipe.InitBuffer(q, 1, 64 * sizeof(float));
        GlobalTensor<float> gs, gd;
        gs.SetGlobalBuffer(src.data(), src.size());
        gd.SetGlobalBuffer(dst.data(), dst.size());
        for (uint32_t t = 0; t < 4; ++t) {
            LocalTensor<float> x = q.AllocTensor<float>();
            DataCopy(x, gs[t * 64], 64);
            q.EnQue(x);
            x = q.DeQue<float>();  // orders MTE2 before V only: the copy-out waits for the copy-in itself
            longattn_compat::PipeWait<HardEvent::MTE2_MTE3>(pipe);
            DataCopy(gd[t * 64], x, 64);
            longattn_compat::PipeWait<HardEvent::MTE3_MTE2>(pipe);  // before the next copy-in reuses x
            q.FreeTensor(x);
        }
    });
    emu_test::AllClose("copy-through VECIN", dst, src, 0, 0);
}

// Overlapping copy-outs ordered by PipeBarrier<PIPE_MTE3>: the later one wins, no hazard reported.
static void TestOverlappingCopyOutsWithBarrier()
{
    std::vector<float> dst(96, 0.f), want(96, 1.f);
    for (uint32_t i = 32; i < 96; ++i) want[i] = 2.f;
    longattn_emu::LaunchVector(1, [&] {
        TPipe pipe;
        TBuf<TPosition::VECCALC> a, b;
        pipe.InitBuffer(a, 256);
        pipe.InitBuffer(b, 256);
        GlobalTensor<float> gd;
        gd.SetGlobalBuffer(dst.data(), dst.size());
        Duplicate(a.Get<float>(), 1.0f, 64);
        Duplicate(b.Get<float>(), 2.0f, 64);
        longattn_compat::PipeWait<HardEvent::V_MTE3>(pipe);
        DataCopy(gd, a.Get<float>(), 64);
        PipeBarrier<PIPE_MTE3>();
        DataCopy(gd[32], b.Get<float>(), 64);
    });
    emu_test::AllClose("overlapping copy-outs with PipeBarrier<PIPE_MTE3>", dst, want, 0, 0);
}

int main()
{
    TestSortMerge();
    TestSortHalfAndSuspension();
    TestDataCopyPad();
    TestAtomicsAndSyncAll();
    TestCrossCoreModes();
    TestQueueQueriesAndEventIds();
    TestCopyThroughQueue();
    TestOverlappingCopyOutsWithBarrier();
    return emu_test::Finish("test_sort_copy");
}
