// SPDX-License-Identifier: Apache-2.0
// longattn Ascend C CPU emulator: intra-core sync (PipeBarrier, SetFlag/WaitFlag), inter-core sync
// (CrossCoreSetFlag/WaitFlag, SyncAll) and the launchers (LaunchVector/LaunchCube/LaunchMix).
//
// Intra-core: every API call completes synchronously on the CPU, so flags are bookkeeping: a
// WaitFlag without an earlier matching SetFlag aborts ("would hang on hardware"), a double
// SetFlag aborts (documented as undefined), and a core that ends with a pending SetFlag aborts.
// They also feed the pipe-hazard tracker. Inter-core: real counting semaphores (mutex + condition
// variable) with a watchdog (LONGATTN_EMU_TIMEOUT_S, default 20 s).
#pragma once

#include <thread>

#include "emu_memory.h"

namespace AscendC {

template <pipe_t pipe>
inline void PipeBarrier(LAEMU_LOC)
{
    using namespace longattn_emu::detail;
    static_assert(pipe != PIPE_S, "PipeBarrier<PIPE_S> is not supported (documented)");
    CoreCtx& c = Core(LAEMU_HERE);
    if (pipe == PIPE_ALL && c.hazardOn) {
        BeginOp(PIPE_S, "PipeBarrier<PIPE_ALL>", LAEMU_HERE);
        BarrierAll(c);
    } else if (c.hazardOn) {  // every op of `pipe` issued so far completes before the pipe's next op
        c.vc[pipe].v[pipe] = c.clock;
    }
}

template <HardEvent event>
inline void SetFlag(int32_t eventID, LAEMU_LOC)
{
    using namespace longattn_emu::detail;
    CoreCtx& c = Core(LAEMU_HERE);
    const EventInfo& e = EventTable(event);
    if (eventID < 0 || eventID > 7)
        Fatal(LAEMU_HERE, "SetFlag<HardEvent::%s>(%d): event id out of range [0, 7]", e.name, eventID);
    if (!(c.kind == longattn_emu::CoreKind::AIV ? e.onAiv : e.onAic))
        Fatal(LAEMU_HERE, "SetFlag<HardEvent::%s>: event does not exist on an %s core (NPU arch 2201)", e.name,
              c.kind == longattn_emu::CoreKind::AIV ? "AIV" : "AIC");
    FlagRec& f = c.flags[static_cast<int>(event)][eventID];
    if (f.set)
        Fatal(LAEMU_HERE,
              "SetFlag<HardEvent::%s>(%d) twice without a WaitFlag in between (undefined behaviour on hardware; "
              "first set at %s:%d)",
              e.name, eventID, f.setLoc.file ? BaseName(f.setLoc.file) : "?", f.setLoc.line);
    // The event-id pool: ids of an event that this core's TQues synchronise with are handed out by the
    // TPipe (queues, AllocEventID, FetchEventID). A literal id there can be one a queue holds now or
    // will take next (undefined behaviour, can hang on hardware), whatever the emulator's order; ids
    // from the pool never collide (queues skip allocated, fetched and set ids).
    const int ev = static_cast<int>(event);
    if (c.queueEvent[ev] && !c.eventIdBusy[ev][eventID] && !c.fetched[ev][eventID])
        Fatal(LAEMU_HERE,
              "SetFlag<HardEvent::%s>(%d): a hand-picked event id on an event this core's TQues synchronise "
              "with (their ids come from the same pool; a collision is undefined on hardware and can hang). "
              "Take the id from TPipe::FetchEventID<HardEvent::%s>() or AllocEventID",
              e.name, eventID, e.name);
    c.fetched[ev][eventID] = false;
    if (c.hazardOn) {
        BeginOp(e.src, "SetFlag", LAEMU_HERE);
        f.snap = SnapshotOf(c, e.src);
    }
    f.set = true;
    f.setLoc = LAEMU_HERE;
}

template <HardEvent event>
inline void WaitFlag(int32_t eventID, LAEMU_LOC)
{
    using namespace longattn_emu::detail;
    CoreCtx& c = Core(LAEMU_HERE);
    const EventInfo& e = EventTable(event);
    if (eventID < 0 || eventID > 7)
        Fatal(LAEMU_HERE, "WaitFlag<HardEvent::%s>(%d): event id out of range [0, 7]", e.name, eventID);
    FlagRec& f = c.flags[static_cast<int>(event)][eventID];
    if (!f.set)
        Fatal(LAEMU_HERE,
              "WaitFlag<HardEvent::%s>(%d) without a matching earlier SetFlag<HardEvent::%s>(%d) on this core "
              "(would hang on hardware)",
              e.name, eventID, e.name, eventID);
    if (c.hazardOn) {
        BeginOp(e.dst, "WaitFlag", LAEMU_HERE);
        JoinInto(c, e.dst, f.snap);
    }
    f.set = false;
}

}  // namespace AscendC

namespace longattn_emu {
namespace detail {

inline std::chrono::steady_clock::time_point Deadline(double s)
{
    return std::chrono::steady_clock::now() + std::chrono::microseconds(static_cast<int64_t>(s * 1e6));
}

inline void BumpCounter(LaunchCtx& L, CoreCtx* core, uint16_t flag, Loc loc)
{
    int& v = L.counter[core->index][flag];
    if (++v > 15) {
        char d[128];
        DescribeCore(core, d, sizeof(d));
        Fatal(loc, "cross-core flag %u counter of %s exceeds 15 (too many CrossCoreSetFlag without waits)", flag, d);
    }
}

inline void CrossSet(int mode, int pipe, uint16_t flag, Loc loc)
{
    CoreCtx& c = Core(loc);
    LaunchCtx& L = *c.launch;
    if (mode != 0 && mode != 1 && mode != 2)
        Fatal(loc, "CrossCoreSetFlag<%d, ...>: only modes 0, 1, 2 exist on Atlas A2/A3 (mode 4 is Ascend 950 only)",
              mode);
    if (pipe == PIPE_S || pipe == PIPE_ALL)
        Fatal(loc, "CrossCoreSetFlag<%d, %s>: PIPE_S and PIPE_ALL are not allowed", mode, PipeName(pipe));
    if (flag > 10)
        Fatal(loc,
              "CrossCoreSetFlag: flag id %u out of the documented range [0, 10] on Atlas A2/A3 (11-14 are SyncAll's)",
              flag);
    if ((mode == 1 || mode == 2) && L.kind != LaunchKind::Mix)
        Fatal(loc, "CrossCoreSetFlag<%d>: modes 1 and 2 need a mixed AIC+AIV launch (LaunchMix)", mode);
    if (mode == 1 && c.kind != CoreKind::AIV)
        Fatal(loc, "CrossCoreSetFlag<1>: mode 1 synchronises the two AIVs; called on an AIC");
    if (c.hazardOn) {
        // The set is issued on `pipe` once its earlier work is done: GM writes of other pipes must
        // already be ordered before `pipe`, or the partner may read stale data.
        BeginOp(pipe, "CrossCoreSetFlag", loc);
        for (int w = 0; w < kNumPipes; ++w) {
            if (w == pipe || c.lastGmWrite[w] == 0 || c.lastGmWrite[w] <= c.vc[pipe].v[w]) continue;
            char other[256];
            DescribeOp(c, c.lastGmWrite[w], other, sizeof(other));
            Fatal(loc,
                  "pipe hazard (cross-core): CrossCoreSetFlag<%d, %s>(%u) does not wait for the GM write by %s (%s); "
                  "the other core may read stale data. Use CrossCoreSetFlag<%d, %s> or order %s before %s first",
                  mode, PipeName(pipe), flag, PipeName(w), other, mode, PipeName(w), PipeName(w), PipeName(pipe));
        }
        const VClock s = SnapshotOf(c, pipe);
        for (int p = 0; p < kNumPipes; ++p)
            if (s.v[p] > c.crossSnap.v[p]) c.crossSnap.v[p] = s.v[p];
    }
    std::lock_guard<std::mutex> lk(L.mu);
    if (mode == 0) {
        L.pend0[c.index][flag]++;
        bool all = true;
        for (auto& p : L.cores)
            if (p->kind == c.kind && L.pend0[p->index][flag] < 1) all = false;
        if (all)
            for (auto& p : L.cores)
                if (p->kind == c.kind) {
                    L.pend0[p->index][flag]--;
                    BumpCounter(L, p.get(), flag, loc);
                }
    } else if (mode == 1) {
        CoreCtx* other = L.Aiv(c.group, 1 - c.subBlockIdx);
        L.pend1[c.index][flag]++;
        if (L.pend1[other->index][flag] >= 1) {
            L.pend1[c.index][flag]--;
            L.pend1[other->index][flag]--;
            BumpCounter(L, &c, flag, loc);
            BumpCounter(L, other, flag, loc);
        }
    } else if (c.kind == CoreKind::AIC) {
        BumpCounter(L, L.Aiv(c.group, 0), flag, loc);
        BumpCounter(L, L.Aiv(c.group, 1), flag, loc);
    } else {
        CoreCtx* other = L.Aiv(c.group, 1 - c.subBlockIdx);
        L.pend2[c.index][flag]++;
        if (L.pend2[other->index][flag] >= 1) {
            L.pend2[c.index][flag]--;
            L.pend2[other->index][flag]--;
            BumpCounter(L, L.Aic(c.group), flag, loc);
        }
    }
    L.cv.notify_all();
}

// True when no core that could still set `flag` for core c (under `mode`) is alive.
inline bool CrossWaitImpossible(LaunchCtx& L, CoreCtx& c, int mode, uint16_t flag, char* why, size_t n)
{
    if (mode == 2 && L.kind == LaunchKind::Mix) {
        if (c.kind == CoreKind::AIV) {
            if (L.Aic(c.group)->exited) {
                std::snprintf(why, n, "the AIC of AI core %lld has already exited", static_cast<long long>(c.group));
                return true;
            }
        } else {
            for (int s = 0; s < 2; ++s) {
                CoreCtx* v = L.Aiv(c.group, s);
                if (v->exited && L.pend2[v->index][flag] == 0) {
                    std::snprintf(why, n, "AIV sub-block %d of AI core %lld has already exited", s,
                                  static_cast<long long>(c.group));
                    return true;
                }
            }
        }
    } else if (mode == 1 && L.kind == LaunchKind::Mix && c.kind == CoreKind::AIV) {
        CoreCtx* v = L.Aiv(c.group, 1 - c.subBlockIdx);
        if (v->exited && L.pend1[v->index][flag] == 0) {
            std::snprintf(why, n, "the partner AIV has already exited");
            return true;
        }
    } else if (mode == 0) {
        for (auto& p : L.cores)
            if (p->kind == c.kind && p->exited && L.pend0[p->index][flag] == 0) {
                std::snprintf(why, n, "core index %d of the same kind has already exited", p->index);
                return true;
            }
    }
    return false;
}

inline void CrossWait(int mode, uint16_t flag, Loc loc)
{
    CoreCtx& c = Core(loc);
    LaunchCtx& L = *c.launch;
    if (flag > 10)
        Fatal(loc,
              "CrossCoreWaitFlag: flag id %u out of the documented range [0, 10] on Atlas A2/A3 (11-14 are SyncAll's)",
              flag);
    std::unique_lock<std::mutex> lk(L.mu);
    const auto deadline = Deadline(L.timeoutS);
    while (L.counter[c.index][flag] == 0) {
        char why[160];
        if (CrossWaitImpossible(L, c, mode, flag, why, sizeof(why))) {
            lk.unlock();
            Fatal(loc, "CrossCoreWaitFlag: flag %u can never be set (%s); this would hang on hardware", flag, why);
        }
        if (L.cv.wait_until(lk, deadline) == std::cv_status::timeout && L.counter[c.index][flag] == 0) {
            lk.unlock();
            Fatal(loc,
                  "CrossCoreWaitFlag: flag %u not set within %.2f s (LONGATTN_EMU_TIMEOUT_S) - deadlock: no partner "
                  "core issued the matching CrossCoreSetFlag",
                  flag, L.timeoutS);
        }
    }
    L.counter[c.index][flag]--;
    lk.unlock();
    if (c.hazardOn) {
        // A wait returns only after the partner saw this core's earlier sets (round-trip protocols),
        // so everything those sets covered is complete before any later op of this core.
        BeginOp(PIPE_S, "CrossCoreWaitFlag", loc);
        for (int q = 0; q < kNumPipes; ++q) JoinInto(c, q, c.crossSnap);
    }
}

inline void SyncAllImpl(bool aivOnly, Loc loc)
{
    CoreCtx& c = Core(loc);
    LaunchCtx& L = *c.launch;
    if (aivOnly && c.kind == CoreKind::AIC)
        Fatal(loc, "SyncAll<true>() on an AIC core: mixed kernels must use SyncAll<false>() (documented)");
    if (c.hazardOn) {
        BeginOp(PIPE_S, "SyncAll", loc);
        BarrierAll(c);
    }
    const int which = aivOnly ? 0 : 1;
    uint32_t participants = 0;
    for (auto& p : L.cores)
        if (!aivOnly || p->kind == CoreKind::AIV) ++participants;
    std::unique_lock<std::mutex> lk(L.mu);
    const uint64_t gen = L.barGen[which];
    if (++L.barArrived[which] == participants) {
        L.barArrived[which] = 0;
        ++L.barGen[which];
        L.cv.notify_all();
        return;
    }
    const auto deadline = Deadline(L.timeoutS);
    while (L.barGen[which] == gen) {
        for (auto& p : L.cores)
            if ((!aivOnly || p->kind == CoreKind::AIV) && p->exited) {
                lk.unlock();
                Fatal(loc, "SyncAll: core index %d exited without reaching SyncAll (would hang on hardware)", p->index);
            }
        if (L.cv.wait_until(lk, deadline) == std::cv_status::timeout && L.barGen[which] == gen) {
            const uint32_t arrived = L.barArrived[which];
            lk.unlock();
            Fatal(loc, "SyncAll: only %u of %u cores arrived within %.2f s (LONGATTN_EMU_TIMEOUT_S) - deadlock",
                  arrived, participants, L.timeoutS);
        }
    }
}

// End-of-kernel checks for one core (runs on the core's thread).
inline void FinishCore(CoreCtx& c)
{
    for (int e = 0; e < kNumEvents; ++e)
        for (int id = 0; id < 8; ++id) {
            const FlagRec& f = c.flags[e][id];
            if (f.set)
                Fatal(f.setLoc,
                      "kernel ended with an unmatched SetFlag<HardEvent::%s>(%d): no WaitFlag consumed it (leaves "
                      "the hardware flag set for the next kernel)",
                      EventTable(static_cast<AscendC::HardEvent>(e)).name, id);
        }
    std::lock_guard<std::mutex> lk(c.launch->mu);
    c.exited = true;
    c.launch->cv.notify_all();
}

// ---- work counters of finished launches (the performance model's input) -------------------------
struct CoreCounters {
    bool aic = false;
    int64_t group = 0;  // AI core
    uint64_t ops[kNumPipes] = {};
    uint64_t gmRead[kNumPipes] = {}, gmWrite[kNumPipes] = {};
    uint64_t ubRead = 0, ubWrite = 0, macs = 0, fractals = 0;
};
struct LaunchCounters {
    const char* kind = "vector";  // vector | cube | mix
    uint32_t blockDim = 0;
    std::vector<CoreCounters> cores;
};
inline std::mutex& CountersMutex()
{
    static std::mutex m;
    return m;
}
inline std::vector<LaunchCounters>& RecordedLaunches()  // guarded by CountersMutex()
{
    static std::vector<LaunchCounters> v;
    return v;
}
inline void RecordCounters(const LaunchCtx& L)
{
    LaunchCounters r;
    r.kind = L.kind == LaunchKind::Vector ? "vector" : L.kind == LaunchKind::Cube ? "cube" : "mix";
    r.blockDim = L.blockDim;
    for (const auto& c : L.cores) {
        CoreCounters k;
        k.aic = c->kind == CoreKind::AIC;
        k.group = c->group;
        for (int p = 0; p < kNumPipes; ++p) {
            k.ops[p] = c->opsPerPipe[p];
            k.gmRead[p] = c->gmReadBytes[p];
            k.gmWrite[p] = c->gmWriteBytes[p];
        }
        k.ubRead = c->localReadBytes;
        k.ubWrite = c->localWriteBytes;
        k.macs = c->cubeMacs;
        k.fractals = c->cubeFractals;
        r.cores.push_back(k);
    }
    std::lock_guard<std::mutex> g(CountersMutex());
    auto& v = RecordedLaunches();
    if (v.size() < 4096) v.push_back(std::move(r));  // bounded: a caller that never reads them loses the rest
}

template <class F>
inline void RunLaunch(LaunchKind kind, uint32_t blockDim, F& fn)
{
    if (tlsCore) Fatal(Loc{nullptr, 0}, "nested emulator launch from inside a kernel");
    if (blockDim == 0 || blockDim > 4096)
        Fatal(Loc{nullptr, 0}, "launch: blockDim %u out of range [1, 4096]", blockDim);
    LaunchCtx L;
    L.kind = kind;
    L.blockDim = blockDim;
    L.timeoutS = TimeoutSeconds();
    const bool hazard = HazardEnabledAtRuntime();
    auto addCore = [&](CoreKind k, int64_t g, int64_t sub) {
        auto core = std::make_unique<CoreCtx>();
        core->kind = k;
        core->launch = &L;
        core->index = static_cast<int>(L.cores.size());
        core->group = g;
        core->blockNum = blockDim;
        core->hazardOn = hazard;
        if (kind == LaunchKind::Mix && k == CoreKind::AIV) {
            core->blockIdx = 2 * g + sub;
            core->subBlockIdx = sub;
            core->subBlockNum = 2;
            core->taskRatio = 2;
        } else {
            core->blockIdx = g;
        }
        core->AllocArenas();
        L.cores.push_back(std::move(core));
    };
    for (uint32_t g = 0; g < blockDim; ++g) {
        if (kind == LaunchKind::Vector) addCore(CoreKind::AIV, g, 0);
        if (kind == LaunchKind::Cube) addCore(CoreKind::AIC, g, 0);
        if (kind == LaunchKind::Mix) {
            addCore(CoreKind::AIC, g, 0);
            addCore(CoreKind::AIV, g, 0);
            addCore(CoreKind::AIV, g, 1);
        }
    }
    const std::array<int, 16> zero{};
    L.counter.assign(L.cores.size(), zero);
    L.pend0.assign(L.cores.size(), zero);
    L.pend1.assign(L.cores.size(), zero);
    L.pend2.assign(L.cores.size(), zero);

    std::vector<std::thread> threads;
    threads.reserve(L.cores.size());
    for (auto& core : L.cores) {
        CoreCtx* cp = core.get();
        threads.emplace_back([cp, &fn]() {
            tlsCore = cp;
            fn();
            FinishCore(*cp);
            tlsCore = nullptr;
        });
    }
    for (auto& t : threads) t.join();
    RecordCounters(L);

    // Every cross-core set must have been consumed by a wait.
    for (auto& core : L.cores)
        for (int f = 0; f < 16; ++f) {
            const int pending =
                L.counter[core->index][f] + L.pend0[core->index][f] + L.pend1[core->index][f] + L.pend2[core->index][f];
            if (pending != 0) {
                tlsCore = core.get();  // for the core description in the message
                Fatal(Loc{nullptr, 0},
                      "launch ended with cross-core flag %d still pending on this core (a CrossCoreSetFlag had no "
                      "matching CrossCoreWaitFlag)",
                      f);
            }
        }
}

}  // namespace detail

// The work counters of the launches finished since the last call (and forget them).
inline std::vector<detail::LaunchCounters> TakeLaunchCounters()
{
    std::lock_guard<std::mutex> g(detail::CountersMutex());
    std::vector<detail::LaunchCounters> out;
    out.swap(detail::RecordedLaunches());
    return out;
}

// Run fn() once per core. Vector: blockDim AIV cores. Cube: blockDim AIC cores.
// Mix (KERNEL_TYPE_MIX_AIC_1_2): blockDim AI cores, each 1 AIC + 2 AIV threads, all concurrent.
template <class F>
inline void LaunchVector(uint32_t blockDim, F&& fn)
{
    detail::RunLaunch(LaunchKind::Vector, blockDim, fn);
}
template <class F>
inline void LaunchCube(uint32_t blockDim, F&& fn)
{
    detail::RunLaunch(LaunchKind::Cube, blockDim, fn);
}
template <class F>
inline void LaunchMix(uint32_t blockDim, F&& fn)
{
    detail::RunLaunch(LaunchKind::Mix, blockDim, fn);
}

}  // namespace longattn_emu

namespace AscendC {

// modeId 0: all cores of the caller's kind; 1: the two AIVs of one AI core; 2: AIC <-> both AIVs.
template <uint8_t modeId, pipe_t pipe>
inline void CrossCoreSetFlag(uint16_t flagId, LAEMU_LOC)
{
    longattn_emu::detail::CrossSet(modeId, pipe, flagId, LAEMU_HERE);
}
// On Atlas A2/A3 the template arguments of the wait have no effect on hardware (documented); the
// emulator only uses modeId to detect waits that can never be satisfied.
template <uint8_t modeId = 0xFF, pipe_t pipe = PIPE_ALL>
inline void CrossCoreWaitFlag(uint16_t flagId, LAEMU_LOC)
{
    longattn_emu::detail::CrossWait(modeId, flagId, LAEMU_HERE);
}

template <bool isAIVOnly = true>
inline void SyncAll(LAEMU_LOC)
{
    longattn_emu::detail::SyncAllImpl(isAIVOnly, LAEMU_HERE);
}

// Debug print from kernel code (AscendC::printf / PRINTF); goes to stdout, serialised.
inline void printf(const char* fmt, ...) __attribute__((format(printf, 1, 2)));
inline void printf(const char* fmt, ...)
{
    static std::mutex m;
    std::lock_guard<std::mutex> lk(m);
    va_list ap;
    va_start(ap, fmt);
    std::vprintf(fmt, ap);
    va_end(ap);
    std::fflush(stdout);
}

// System workspace, as on the device (page *GetUserWorkspace*): GetUserWorkspace ignores its argument
// and returns the system workspace base set by SetSysWorkspace plus the 16 MiB the library reserves on
// arch 2201. A kernel direct-call build sets no base unless the kernel calls SetSysWorkspace (or is
// built with HAVE_WORKSPACE): without it the device returns a bogus address, so the emulator aborts.
inline void SetSysWorkspace(GM_ADDR workspace, LAEMU_LOC)
{
    longattn_emu::detail::Core(LAEMU_HERE).sysWorkspace = workspace;
}
inline GM_ADDR GetUserWorkspace(GM_ADDR workspace, LAEMU_LOC)
{
    (void)workspace;
    longattn_emu::detail::CoreCtx& c = longattn_emu::detail::Core(LAEMU_HERE);
    if (c.sysWorkspace == nullptr)
        longattn_emu::detail::Fatal(
            LAEMU_HERE,
            "GetUserWorkspace without a system workspace: on the device it ignores its argument "
            "and returns the base set by SetSysWorkspace (or a HAVE_WORKSPACE build's wrapper) "
            "+ 16 MiB; in a direct-call build without either that address is invalid");
    return c.sysWorkspace + 16u * 1024u * 1024u;
}

}  // namespace AscendC

#define PRINTF AscendC::printf
