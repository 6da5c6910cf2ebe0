// SPDX-License-Identifier: Apache-2.0
// Planted bugs: each case is a small kernel with exactly one mistake that real hardware would
// silently mis-execute, hang on, or trap on. Run as `planted_bugs <case>`: the emulator must abort
// (non-zero exit) with a specific "[longattn-emu] FATAL" message on stderr. `planted_bugs --list`
// prints the case names. If a case returns normally the program exits 0, which the pytest driver
// reports as a missed bug.
#include <cstring>
#include <string>

#include "test_common.h"

using namespace AscendC;

namespace {

std::vector<float> gIn(1024, 1.f), gOut(1024, 0.f);

// One AIV core with a pipe and float TBufs; `body` gets them.
template <class F>
void OnAiv(F body)
{
    longattn_emu::LaunchVector(1, [&] {
        TPipe pipe;
        TBuf<TPosition::VECCALC> a, b;
        pipe.InitBuffer(a, 256);
        pipe.InitBuffer(b, 256);
        GlobalTensor<float> gin, gout;
        gin.SetGlobalBuffer(gIn.data(), 1024);
        gout.SetGlobalBuffer(gOut.data(), 1024);
        body(pipe, a.Get<float>(), b.Get<float>(), gin, gout);
    });
}

void DataCopy17Floats()
{
    OnAiv([](TPipe&, LocalTensor<float> a, LocalTensor<float>, GlobalTensor<float> gin, GlobalTensor<float>) {
        DataCopy(a, gin, 17);  // 68 bytes: hardware silently copies 64
    });
}

void UbOverBudget()
{
    longattn_emu::LaunchVector(1, [] {
        TPipe pipe;
        TQue<TPosition::VECIN, 2> q;
        TQue<TPosition::VECOUT, 2> o;
        pipe.InitBuffer(q, 2, 64 * 1024);
        pipe.InitBuffer(o, 2, 32 * 1024);  // 128 KB + 64 KB > 192 KB - 8 KB - 256 B
    });
}

void DeQueEmpty()
{
    longattn_emu::LaunchVector(1, [] {
        TPipe pipe;
        TQue<TPosition::VECIN, 1> q;
        pipe.InitBuffer(q, 1, 256);
        LocalTensor<float> x = q.DeQue<float>();  // nothing was EnQue'd
        (void)x;
    });
}

void FreeTwice()
{
    longattn_emu::LaunchVector(1, [] {
        TPipe pipe;
        TQue<TPosition::VECIN, 1> q;
        pipe.InitBuffer(q, 1, 256);
        LocalTensor<float> x = q.AllocTensor<float>();
        q.FreeTensor(x);
        q.FreeTensor(x);
    });
}

void EnQueBeyondDepth()
{
    longattn_emu::LaunchVector(1, [] {
        TPipe pipe;
        TQue<TPosition::VECIN, 1> q;  // depth 1, two buffers
        pipe.InitBuffer(q, 2, 256);
        LocalTensor<float> x = q.AllocTensor<float>();
        LocalTensor<float> y = q.AllocTensor<float>();
        q.EnQue(x);
        q.EnQue(y);  // second EnQue without a DeQue
    });
}

void AllocBeyondNum()
{
    longattn_emu::LaunchVector(1, [] {
        TPipe pipe;
        TQue<TPosition::VECIN, 1> q;
        pipe.InitBuffer(q, 1, 256);
        LocalTensor<float> x = q.AllocTensor<float>();
        LocalTensor<float> y = q.AllocTensor<float>();  // only one buffer
        (void)x;
        (void)y;
    });
}

void L0aMisaligned()
{
    longattn_emu::LaunchCube(1, [] {
        TPipe pipe;
        TBuf<TPosition::A1> l1;
        TBuf<TPosition::A2> l0a;
        pipe.InitBuffer(l1, 4096);
        pipe.InitBuffer(l0a, 4096);
        LocalTensor<half> a1 = l1.Get<half>(), a2 = l0a.Get<half>();
        LoadData(a2[100], a1, LoadData2DParams(0, 1, 1, 0, 0, false, 0));  // 200-byte offset in L0A
    });
}

void L0aOverBudget()
{
    longattn_emu::LaunchCube(1, [] {
        TPipe pipe;
        TQue<TPosition::A2, 2> q;
        pipe.InitBuffer(q, 2, 33 * 1024);  // 66 KB > 64 KB of L0A
    });
}

void MmadKTooLarge()
{
    longattn_emu::LaunchCube(1, [] {
        TPipe pipe;
        TBuf<TPosition::A2> l0a;
        TBuf<TPosition::B2> l0b;
        TBuf<TPosition::CO1> l0c;
        pipe.InitBuffer(l0a, 32 * 1024);
        pipe.InitBuffer(l0b, 32 * 1024);
        pipe.InitBuffer(l0c, 1024);
        MmadParams p;
        p.m = 16;
        p.n = 16;
        p.k = 5000;  // > 4095
        Mmad(l0c.Get<float>(), l0a.Get<half>(), l0b.Get<half>(), p);
    });
}

void RepeatTimeTooLarge()
{
    OnAiv([](TPipe&, LocalTensor<float> a, LocalTensor<float> b, GlobalTensor<float>, GlobalTensor<float>) {
        Add(a, a, b, 64, 300, BinaryRepeatParams());  // uint8_t on hardware: silently 44
    });
}

void GmOutOfBounds()
{
    longattn_emu::LaunchVector(1, [] {
        TPipe pipe;
        TBuf<TPosition::VECCALC> a;
        pipe.InitBuffer(a, 256);
        GlobalTensor<float> g;
        g.SetGlobalBuffer(gIn.data(), 64);      // the kernel's tensor has 64 elements
        DataCopy(a.Get<float>(), g[32], 64);    // reads elements 32..95
    });
}

void LocalOutOfBounds()
{
    OnAiv([](TPipe&, LocalTensor<float> a, LocalTensor<float>, GlobalTensor<float>, GlobalTensor<float>) {
        a.SetValue(64, 1.f);  // buffer holds 64 floats
    });
}

void LocalOutOfBoundsVector()
{
    OnAiv([](TPipe&, LocalTensor<float> a, LocalTensor<float> b, GlobalTensor<float>, GlobalTensor<float>) {
        Add(a, a, b, 100);  // 100 > 64 elements
    });
}

void WaitFlagWithoutSetFlag()
{
    OnAiv([](TPipe&, LocalTensor<float>, LocalTensor<float>, GlobalTensor<float>, GlobalTensor<float>) {
        WaitFlag<HardEvent::MTE2_V>(EVENT_ID0);
    });
}

void UnmatchedSetFlag()
{
    OnAiv([](TPipe&, LocalTensor<float>, LocalTensor<float>, GlobalTensor<float>, GlobalTensor<float>) {
        SetFlag<HardEvent::V_MTE3>(EVENT_ID1);  // never waited
    });
}

void DoubleSetFlag()
{
    OnAiv([](TPipe&, LocalTensor<float>, LocalTensor<float>, GlobalTensor<float>, GlobalTensor<float>) {
        SetFlag<HardEvent::V_MTE3>(EVENT_ID0);
        SetFlag<HardEvent::V_MTE3>(EVENT_ID0);
    });
}

// A literal event id on an event the core's queues use (VECIN: MTE2 -> V): it may be the id the
// queue's EnQue holds (undefined on hardware, can hang).
void HandPickedQueueEventId()
{
    longattn_emu::LaunchVector(1, [] {
        TPipe pipe;
        TQue<TPosition::VECIN, 1> q;
        pipe.InitBuffer(q, 1, 256);
        SetFlag<HardEvent::MTE2_V>(EVENT_ID0);
        WaitFlag<HardEvent::MTE2_V>(EVENT_ID0);
    });
}

// A fetched id is good for one SetFlag / WaitFlag pair; reusing it later is a hand-picked id again.
void FetchedEventIdReused()
{
    longattn_emu::LaunchVector(1, [] {
        TPipe pipe;
        TQue<TPosition::VECOUT, 1> q;
        pipe.InitBuffer(q, 1, 256);
        const TEventID id = pipe.FetchEventID<HardEvent::V_MTE3>();
        SetFlag<HardEvent::V_MTE3>(id);
        WaitFlag<HardEvent::V_MTE3>(id);
        SetFlag<HardEvent::V_MTE3>(id);
        WaitFlag<HardEvent::V_MTE3>(id);
    });
}

// Copy-through: a VECIN tile DeQue'd and copied straight to GM. The queue orders MTE2 before V only
// (TQue<VECIN> = TQueBind<GM, VECIN>), so MTE3 can read the tile before the copy-in lands.
void VecinCopyThrough()
{
    longattn_emu::LaunchVector(1, [] {
        TPipe pipe;
        TQue<TPosition::VECIN, 1> q;
        pipe.InitBuffer(q, 1, 256);
        GlobalTensor<float> gin, gout;
        gin.SetGlobalBuffer(gIn.data(), 1024);
        gout.SetGlobalBuffer(gOut.data(), 1024);
        LocalTensor<float> t = q.AllocTensor<float>();
        DataCopy(t, gin, 64);
        q.EnQue(t);
        t = q.DeQue<float>();
        DataCopy(gout, t, 64);  // missing: MTE2 -> MTE3
        q.FreeTensor(t);
    });
}

// A zero fill of an L1 tile and a copy into it: two MTE2 writes of the same bytes, unordered without
// PipeBarrier<PIPE_MTE2> (overlapping destinations of one MTE pipe may complete out of order).
void SamePipeOverlapWithoutBarrier()
{
    longattn_emu::LaunchCube(1, [] {
        TPipe pipe;
        TBuf<TPosition::A1> l1;
        pipe.InitBuffer(l1, 1024);
        GlobalTensor<half> g;
        static std::vector<half> src(256, half(1));
        g.SetGlobalBuffer(src.data(), src.size());
        LocalTensor<half> t = l1.Get<half>();
        InitConstValue(t, InitConstValueParams<half>(1, 1024 / 32, 0, half(0)));
        DataCopy(t, g, 256);  // missing: PipeBarrier<PIPE_MTE2>()
    });
}

// Two copy-outs to the same GM bytes: unordered on MTE3 without PipeBarrier<PIPE_MTE3>.
void GmOverlapWithoutBarrier()
{
    OnAiv([](TPipe&, LocalTensor<float> a, LocalTensor<float> b, GlobalTensor<float>, GlobalTensor<float> gout) {
        Duplicate(a, 1.0f, 64);
        Duplicate(b, 2.0f, 64);
        PipeBarrier<PIPE_ALL>();
        DataCopy(gout, a, 64);
        DataCopy(gout[32], b, 64);  // overlaps floats 32..63; missing: PipeBarrier<PIPE_MTE3>()
    });
}

// GetUserWorkspace in a direct-call build that never set the system workspace: a bogus address on
// the device (it ignores its argument).
void UserWorkspaceWithoutSysWorkspace()
{
    longattn_emu::LaunchVector(1, [] {
        GM_ADDR ws = GetUserWorkspace(reinterpret_cast<GM_ADDR>(gOut.data()));
        (void)ws;
    });
}

// The AIC never sets flag 3: the AIV waits forever on hardware; the watchdog fires.
void CrossCoreNeverSet()
{
    longattn_emu::LaunchMix(1, [] {
        if ASCEND_IS_AIV {
            CrossCoreWaitFlag(3);
        }
    });
}

// Same, but the wait names mode 2: detected as soon as the AIC has exited.
void CrossCoreSetterExited()
{
    longattn_emu::LaunchMix(1, [] {
        if ASCEND_IS_AIV {
            CrossCoreWaitFlag<2, PIPE_MTE2>(3);
        }
    });
}

void CrossCoreUnconsumed()
{
    longattn_emu::LaunchMix(1, [] {
        if ASCEND_IS_AIC {
            CrossCoreSetFlag<2, PIPE_FIX>(2);  // no AIV ever waits
        }
    });
}

void SyncAllMissing()
{
    longattn_emu::LaunchVector(2, [] {
        if (GetBlockIdx() == 0) SyncAll();  // block 1 never arrives
    });
}

// Pipe hazards (the tracker): a TBuf has no automatic synchronisation.
void MissingSyncRaw()
{
    OnAiv([](TPipe&, LocalTensor<float> a, LocalTensor<float> b, GlobalTensor<float> gin, GlobalTensor<float>) {
        DataCopy(a, gin, 64);
        // missing: SetFlag<HardEvent::MTE2_V>(0); WaitFlag<HardEvent::MTE2_V>(0);
        Add(b, a, a, 64);
    });
}

void MissingSyncWar()
{
    OnAiv([](TPipe&, LocalTensor<float> a, LocalTensor<float> b, GlobalTensor<float> gin, GlobalTensor<float>) {
        DataCopy(a, gin, 64);
        SetFlag<HardEvent::MTE2_V>(EVENT_ID0);
        WaitFlag<HardEvent::MTE2_V>(EVENT_ID0);
        Add(b, a, a, 64);
        // missing: SetFlag<HardEvent::V_MTE2>/WaitFlag before overwriting `a`
        DataCopy(a, gin[64], 64);
    });
}

void CrossCoreWrongPipe()
{
    std::vector<float>& ws = gOut;
    longattn_emu::LaunchMix(1, [&] {
        if ASCEND_IS_AIV {
            TPipe pipe;
            TBuf<TPosition::VECCALC> a;
            pipe.InitBuffer(a, 256);
            GlobalTensor<float> g;
            g.SetGlobalBuffer(ws.data(), 1024);
            LocalTensor<float> t = a.Get<float>();
            Duplicate(t, 1.f, 64);
            SetFlag<HardEvent::V_MTE3>(EVENT_ID0);
            WaitFlag<HardEvent::V_MTE3>(EVENT_ID0);
            DataCopy(g[GetSubBlockIdx() * 64], t, 64);
            CrossCoreSetFlag<2, PIPE_V>(1);  // should be PIPE_MTE3: the GM write may not be done
        } else {
            CrossCoreWaitFlag<2>(1);
        }
    });
}

void UseAfterFree()
{
    longattn_emu::LaunchVector(1, [] {
        TPipe pipe;
        TQue<TPosition::VECIN, 1> q;
        pipe.InitBuffer(q, 1, 256);
        LocalTensor<float> x = q.AllocTensor<float>();
        q.FreeTensor(x);
        x.SetValue(0, 1.f);
    });
}

void FreeForeignTensor()
{
    longattn_emu::LaunchVector(1, [] {
        TPipe pipe;
        TQue<TPosition::VECIN, 1> q1, q2;
        pipe.InitBuffer(q1, 1, 256);
        pipe.InitBuffer(q2, 1, 256);
        LocalTensor<float> x = q1.AllocTensor<float>();
        q2.FreeTensor(x);
    });
}

void CastUnsupported()
{
    longattn_emu::LaunchVector(1, [] {
        TPipe pipe;
        TBuf<TPosition::VECCALC> a, b;
        pipe.InitBuffer(a, 256);
        pipe.InitBuffer(b, 256);
        Cast(b.Get<bfloat16_t>(), a.Get<half>(), RoundMode::CAST_RINT, 64);  // no half -> bf16 on A2/A3
    });
}

void DataCopyUbMisaligned()
{
    OnAiv([](TPipe&, LocalTensor<float> a, LocalTensor<float>, GlobalTensor<float> gin, GlobalTensor<float>) {
        DataCopy(a[4], gin, 8);  // UB address 16: not 32-byte aligned
    });
}

void CompareCountNot256()
{
    longattn_emu::LaunchVector(1, [] {
        TPipe pipe;
        TBuf<TPosition::VECCALC> a, m;
        pipe.InitBuffer(a, 256);
        pipe.InitBuffer(m, 64);
        CompareScalar(m.Get<uint8_t>(), a.Get<float>(), 0.f, CMPMODE::GT, 40);  // 160 bytes
    });
}

void GmUnsized()
{
    longattn_emu::LaunchVector(1, [] {
        TPipe pipe;
        TBuf<TPosition::VECCALC> a;
        pipe.InitBuffer(a, 256);
        GlobalTensor<float> g;
        g.SetGlobalBuffer(gIn.data());
        DataCopy(a.Get<float>(), g, 64);
    });
}

void DataCopyPadBadLen()
{
    OnAiv([](TPipe&, LocalTensor<float> a, LocalTensor<float>, GlobalTensor<float> gin, GlobalTensor<float>) {
        DataCopyPad(a, gin, DataCopyExtParams(1, 6, 0, 0, 0), DataCopyPadExtParams<float>(false, 0, 0, 0.f));
    });
}

void FixpipeQuantMismatch()
{
    std::vector<half> out(256);
    longattn_emu::LaunchCube(1, [&] {
        TPipe pipe;
        TBuf<TPosition::CO1> c;
        pipe.InitBuffer(c, 1024);
        GlobalTensor<half> g;
        g.SetGlobalBuffer(out.data(), out.size());
        FixpipeParamsV220 p;
        p.nSize = 16;
        p.mSize = 16;
        p.srcStride = 16;
        p.dstStride = 16;  // quantPre left at NoQuant: float -> half needs F322F16
        Fixpipe<half, float, CFG_ROW_MAJOR>(g, c.Get<float>(), p);
    });
}

void Sort32NanScore()
{
    longattn_emu::LaunchVector(1, [] {
        TPipe pipe;
        TBuf<TPosition::VECCALC> d, sc, ix;
        pipe.InitBuffer(d, 256);
        pipe.InitBuffer(sc, 128);
        pipe.InitBuffer(ix, 128);
        LocalTensor<float> scores = sc.Get<float>();
        Duplicate(scores, 1.0f, 32);
        Duplicate(ix.Get<int32_t>(), 0, 32);
        scores.SetValue(5, std::nanf(""));
        Sort32(d.Get<float>(), scores, ix.Get<uint32_t>(), 1);
    });
}

struct Case {
    const char* name;
    void (*fn)();
};
const Case kCases[] = {
    {"datacopy_17_floats", DataCopy17Floats},
    {"ub_over_budget", UbOverBudget},
    {"deque_empty", DeQueEmpty},
    {"free_twice", FreeTwice},
    {"enque_beyond_depth", EnQueBeyondDepth},
    {"alloc_beyond_num", AllocBeyondNum},
    {"l0a_misaligned", L0aMisaligned},
    {"l0a_over_budget", L0aOverBudget},
    {"mmad_k_too_large", MmadKTooLarge},
    {"repeat_time_too_large", RepeatTimeTooLarge},
    {"gm_out_of_bounds", GmOutOfBounds},
    {"local_out_of_bounds", LocalOutOfBounds},
    {"local_out_of_bounds_vector", LocalOutOfBoundsVector},
    {"waitflag_without_setflag", WaitFlagWithoutSetFlag},
    {"unmatched_setflag", UnmatchedSetFlag},
    {"double_setflag", DoubleSetFlag},
    {"handpicked_queue_event_id", HandPickedQueueEventId},
    {"fetched_event_id_reused", FetchedEventIdReused},
    {"vecin_copy_through", VecinCopyThrough},
    {"same_pipe_overlap_without_barrier", SamePipeOverlapWithoutBarrier},
    {"gm_overlap_without_barrier", GmOverlapWithoutBarrier},
    {"user_workspace_without_sys_workspace", UserWorkspaceWithoutSysWorkspace},
    {"crosscore_never_set", CrossCoreNeverSet},
    {"crosscore_setter_exited", CrossCoreSetterExited},
    {"crosscore_unconsumed", CrossCoreUnconsumed},
    {"syncall_missing", SyncAllMissing},
    {"missing_sync_raw", MissingSyncRaw},
    {"missing_sync_war", MissingSyncWar},
    {"crosscore_wrong_pipe", CrossCoreWrongPipe},
    {"use_after_free", UseAfterFree},
    {"free_foreign_tensor", FreeForeignTensor},
    {"cast_unsupported", CastUnsupported},
    {"datacopy_ub_misaligned", DataCopyUbMisaligned},
    {"compare_count_not_256", CompareCountNot256},
    {"gm_unsized", GmUnsized},
    {"datacopypad_bad_len", DataCopyPadBadLen},
    {"fixpipe_quant_mismatch", FixpipeQuantMismatch},
    {"sort32_nan_score", Sort32NanScore},
};

}  // namespace

int main(int argc, char** argv)
{
    if (argc < 2) {
        std::fprintf(stderr, "usage: %s <case>|--list\n", argv[0]);
        return 2;
    }
    if (std::strcmp(argv[1], "--list") == 0) {
        for (const Case& c : kCases) std::printf("%s\n", c.name);
        return 0;
    }
    for (const Case& c : kCases)
        if (std::strcmp(argv[1], c.name) == 0) {
            c.fn();
            std::printf("planted bug '%s' was NOT detected\n", c.name);
            return 0;
        }
    std::fprintf(stderr, "unknown case %s\n", argv[1]);
    return 2;
}
