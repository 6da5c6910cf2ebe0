// SPDX-License-Identifier: Apache-2.0
// longattn Ascend C CPU emulator: per-core runtime state, fatal errors, local memories,
// the pipe-hazard tracker and inter-core synchronisation primitives.
//
// Execution model: every emulated core (AIV or AIC) is one std::thread. Its state lives in a
// CoreCtx reached through a thread_local pointer, so kernel code needs no extra arguments.
// Everything that would hang, trap or silently misbehave on hardware aborts the whole process
// with a "[longattn-emu] FATAL" message on stderr (see Fatal()).
#pragma once

#include <array>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <vector>

#include "emu_numeric.h"
#include "emu_types.h"

// ---- configuration (override with -D) ----------------------------------------------------------
// Usable UB per AIV: 192 KB - 8 KB reserved by the toolchain - 256 B (Atlas A2/A3, arch 2201).
#ifndef LONGATTN_EMU_UB_BYTES
#define LONGATTN_EMU_UB_BYTES (192u * 1024u - 8u * 1024u - 256u)
#endif
#ifndef LONGATTN_EMU_L1_BYTES
#define LONGATTN_EMU_L1_BYTES (512u * 1024u)
#endif
#ifndef LONGATTN_EMU_L0A_BYTES
#define LONGATTN_EMU_L0A_BYTES (64u * 1024u)
#endif
#ifndef LONGATTN_EMU_L0B_BYTES
#define LONGATTN_EMU_L0B_BYTES (64u * 1024u)
#endif
#ifndef LONGATTN_EMU_L0C_BYTES
#define LONGATTN_EMU_L0C_BYTES (128u * 1024u)
#endif
// Pipe-hazard tracker compiled in (1) or out (0); at run time LONGATTN_EMU_HAZARD=0 disables it.
#ifndef LONGATTN_EMU_HAZARD_TRACKING
#define LONGATTN_EMU_HAZARD_TRACKING 1
#endif
// Default watchdog for cross-core waits and SyncAll (seconds); env LONGATTN_EMU_TIMEOUT_S.
#ifndef LONGATTN_EMU_DEFAULT_TIMEOUT_S
#define LONGATTN_EMU_DEFAULT_TIMEOUT_S 20.0
#endif

// Caller location captured through default arguments (GCC builtins), used in error messages.
#define LAEMU_LOC const char *laFile = __builtin_FILE(), int laLine = __builtin_LINE()
#define LAEMU_LOC_DECL const char *laFile, int laLine
#define LAEMU_LOC_FWD laFile, laLine
#define LAEMU_HERE \
    ::longattn_emu::detail::Loc { laFile, laLine }

namespace longattn_emu {

enum class CoreKind : uint8_t { AIV, AIC };
enum class LaunchKind : uint8_t { Vector, Cube, Mix };

namespace detail {

struct Loc {
    const char* file;
    int line;
};

inline const char* BaseName(const char* path)
{
    const char* b = path;
    for (const char* p = path; p && *p; ++p)
        if (*p == '/') b = p + 1;
    return b ? b : "?";
}

struct CoreCtx;
inline thread_local CoreCtx* tlsCore = nullptr;
inline std::mutex& FatalMutex()
{
    static std::mutex m;
    return m;
}
inline void DescribeCore(const CoreCtx* c, char* buf, size_t n);

// Print one diagnostic and terminate the process (all emulated cores die with it).
[[noreturn]] inline void FatalV(Loc loc, const char* fmt, va_list ap)
{
    FatalMutex().lock();  // never unlocked: the first failing core reports, the others block
    char core[128];
    DescribeCore(tlsCore, core, sizeof(core));
    std::fprintf(stderr, "[longattn-emu] FATAL: ");
    std::vfprintf(stderr, fmt, ap);
    std::fprintf(stderr, "\n[longattn-emu]   on %s", core);
    if (loc.file) std::fprintf(stderr, ", called at %s:%d", BaseName(loc.file), loc.line);
    std::fprintf(stderr, "\n");
    std::fflush(stderr);
    std::abort();
}
[[noreturn]] inline void Fatal(Loc loc, const char* fmt, ...) __attribute__((format(printf, 2, 3)));
[[noreturn]] inline void Fatal(Loc loc, const char* fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    FatalV(loc, fmt, ap);
}
#define LAEMU_CHECK(cond, loc, ...) \
    do { \
        if (!(cond)) ::longattn_emu::detail::Fatal((loc), __VA_ARGS__); \
    } while (0)

inline double TimeoutSeconds()
{
    const char* s = std::getenv("LONGATTN_EMU_TIMEOUT_S");
    if (s && *s) {
        double v = std::atof(s);
        if (v > 0) return v;
    }
    return LONGATTN_EMU_DEFAULT_TIMEOUT_S;
}
inline bool HazardEnabledAtRuntime()
{
#if LONGATTN_EMU_HAZARD_TRACKING
    const char* s = std::getenv("LONGATTN_EMU_HAZARD");
    return !(s && s[0] == '0');
#else
    return false;
#endif
}

// How the emulated Fixpipe ReLU (FixpipeParamsV220::reluEn) treats a NaN in L0C: undocumented, so the
// emulator can play any of three hardware behaviours, chosen per call by LONGATTN_EMU_FIXPIPE_RELU_NAN:
//   "keep" (default; also unset / empty): relu(x) = x < 0 ? 0 : x, a NaN of either sign passes through;
//   "zero": every NaN becomes +0 (relu(x) = x > 0 ? x : 0);
//   "sign": a sign-bit ReLU, anything with the sign bit set becomes +0 (-NaN -> 0, +NaN kept).
// Kernels must not depend on it (ascend_c/indexer_topk probes it once per launch). Any other value aborts.
enum class FixpipeReluNan : uint8_t { Keep = 0, Zero, Sign };
inline FixpipeReluNan FixpipeReluNanMode()
{
    const char* s = std::getenv("LONGATTN_EMU_FIXPIPE_RELU_NAN");
    if (!s || !*s || std::strcmp(s, "keep") == 0) return FixpipeReluNan::Keep;
    if (std::strcmp(s, "zero") == 0) return FixpipeReluNan::Zero;
    if (std::strcmp(s, "sign") == 0) return FixpipeReluNan::Sign;
    Fatal(Loc{nullptr, 0}, "LONGATTN_EMU_FIXPIPE_RELU_NAN = \"%s\": expected keep, zero or sign", s);
}

// ---- physical local memories -------------------------------------------------------------------
enum class Mem : uint8_t { UB = 0, L1, L0A, L0B, L0C, COUNT, NONE = 0xFF };
constexpr int kNumMem = static_cast<int>(Mem::COUNT);
inline const char* MemName(Mem m)
{
    switch (m) {
        case Mem::UB: return "UB";
        case Mem::L1: return "L1";
        case Mem::L0A: return "L0A";
        case Mem::L0B: return "L0B";
        case Mem::L0C: return "L0C";
        default: return "none";
    }
}
// Physical size (what exists) and the budget a TPipe may allocate (what is usable).
inline uint32_t MemPhysBytes(Mem m)
{
    switch (m) {
        case Mem::UB: return 192u * 1024u;
        case Mem::L1: return 512u * 1024u;
        case Mem::L0A: return 64u * 1024u;
        case Mem::L0B: return 64u * 1024u;
        case Mem::L0C: return 128u * 1024u;
        default: return 0;
    }
}
inline uint32_t MemBudgetBytes(Mem m)
{
    switch (m) {
        case Mem::UB: return LONGATTN_EMU_UB_BYTES;
        case Mem::L1: return LONGATTN_EMU_L1_BYTES;
        case Mem::L0A: return LONGATTN_EMU_L0A_BYTES;
        case Mem::L0B: return LONGATTN_EMU_L0B_BYTES;
        case Mem::L0C: return LONGATTN_EMU_L0C_BYTES;
        default: return 0;
    }
}
// Address alignment of operands in each memory (documented general alignment constraints).
inline uint32_t MemAlign(Mem m)
{
    switch (m) {
        case Mem::L0A:
        case Mem::L0B: return 512u;
        case Mem::L0C: return 64u;
        default: return 32u;
    }
}
inline bool MemOnCore(Mem m, CoreKind k)
{
    return k == CoreKind::AIV ? (m == Mem::UB) : (m != Mem::UB && m != Mem::NONE);
}

inline Mem PositionMem(AscendC::TPosition p)
{
    using AscendC::TPosition;
    switch (p) {
        case TPosition::VECIN:
        case TPosition::VECOUT:
        case TPosition::VECCALC: return Mem::UB;
        case TPosition::A1:
        case TPosition::B1:
        case TPosition::C1:
        case TPosition::TSCM: return Mem::L1;
        case TPosition::A2: return Mem::L0A;
        case TPosition::B2: return Mem::L0B;
        case TPosition::CO1: return Mem::L0C;
        default: return Mem::NONE;
    }
}
inline const char* PositionName(AscendC::TPosition p)
{
    using AscendC::TPosition;
    switch (p) {
        case TPosition::GM: return "GM";
        case TPosition::A1: return "A1";
        case TPosition::A2: return "A2";
        case TPosition::B1: return "B1";
        case TPosition::B2: return "B2";
        case TPosition::C1: return "C1";
        case TPosition::C2: return "C2";
        case TPosition::CO1: return "CO1";
        case TPosition::CO2: return "CO2";
        case TPosition::VECIN: return "VECIN";
        case TPosition::VECOUT: return "VECOUT";
        case TPosition::VECCALC: return "VECCALC";
        case TPosition::TSCM: return "TSCM";
        default: return "other";
    }
}

// ---- pipes and events --------------------------------------------------------------------------
constexpr int kNumPipes = 7;  // S, V, M, MTE1, MTE2, MTE3, FIX (PIPE_ALL excluded)
inline const char* PipeName(int p)
{
    static const char* const names[] = {"PIPE_S",    "PIPE_V",    "PIPE_M",   "PIPE_MTE1",
                                        "PIPE_MTE2", "PIPE_MTE3", "PIPE_FIX", "PIPE_ALL"};
    return (p >= 0 && p <= 7) ? names[p] : "PIPE_?";
}

struct EventInfo {
    const char* name;
    pipe_t src;
    pipe_t dst;
    bool onAiv;  // legal on a vector core (NPU arch 2201 table)
    bool onAic;  // legal on a cube core
};
inline const EventInfo& EventTable(AscendC::HardEvent e)
{
    static const EventInfo t[] = {
        {"MTE2_V", PIPE_MTE2, PIPE_V, true, false},
        {"V_MTE2", PIPE_V, PIPE_MTE2, true, false},
        {"MTE3_V", PIPE_MTE3, PIPE_V, true, false},
        {"V_MTE3", PIPE_V, PIPE_MTE3, true, false},
        {"MTE2_MTE3", PIPE_MTE2, PIPE_MTE3, true, true},
        {"MTE3_MTE2", PIPE_MTE3, PIPE_MTE2, true, true},
        {"S_V", PIPE_S, PIPE_V, true, false},
        {"V_S", PIPE_V, PIPE_S, true, false},
        {"MTE2_S", PIPE_MTE2, PIPE_S, true, false},
        {"S_MTE2", PIPE_S, PIPE_MTE2, true, false},
        {"MTE3_S", PIPE_MTE3, PIPE_S, true, false},
        {"S_MTE3", PIPE_S, PIPE_MTE3, true, false},
        {"MTE2_MTE1", PIPE_MTE2, PIPE_MTE1, false, true},
        {"MTE1_MTE2", PIPE_MTE1, PIPE_MTE2, false, true},
        {"MTE1_M", PIPE_MTE1, PIPE_M, false, true},
        {"M_MTE1", PIPE_M, PIPE_MTE1, false, true},
        {"MTE2_M", PIPE_MTE2, PIPE_M, false, true},
        {"M_MTE2", PIPE_M, PIPE_MTE2, false, true},
        {"M_FIX", PIPE_M, PIPE_FIX, false, true},
        {"FIX_M", PIPE_FIX, PIPE_M, false, true},
        {"MTE1_FIX", PIPE_MTE1, PIPE_FIX, false, true},
        {"FIX_MTE1", PIPE_FIX, PIPE_MTE1, false, true},
        {"MTE1_MTE3", PIPE_MTE1, PIPE_MTE3, false, true},
        {"MTE3_MTE1", PIPE_MTE3, PIPE_MTE1, false, true},
        {"MTE2_FIX", PIPE_MTE2, PIPE_FIX, false, true},
        {"FIX_MTE2", PIPE_FIX, PIPE_MTE2, false, true},
        {"MTE3_FIX", PIPE_MTE3, PIPE_FIX, false, true},
        {"FIX_MTE3", PIPE_FIX, PIPE_MTE3, false, true},
        {"M_V", PIPE_M, PIPE_V, false, false},
        {"V_M", PIPE_V, PIPE_M, false, false},
        {"FIX_S", PIPE_FIX, PIPE_S, false, false},
        {"S_FIX", PIPE_S, PIPE_FIX, false, false},
    };
    static_assert(sizeof(t) / sizeof(t[0]) == static_cast<size_t>(AscendC::HardEvent::MAX_EVENT),
                  "event table out of sync with HardEvent");
    return t[static_cast<int>(e)];
}
constexpr int kNumEvents = static_cast<int>(AscendC::HardEvent::MAX_EVENT);
inline int EventForPipes(int src, int dst)  // HardEvent index of src -> dst, or -1
{
    for (int i = 0; i < kNumEvents; ++i) {
        const EventInfo& e = EventTable(static_cast<AscendC::HardEvent>(i));
        if (e.src == src && e.dst == dst) return i;
    }
    return -1;
}
inline const char* EventNameForPipes(int src, int dst)
{
    for (int i = 0; i < kNumEvents; ++i) {
        const EventInfo& e = EventTable(static_cast<AscendC::HardEvent>(i));
        if (e.src == src && e.dst == dst) return e.name;
    }
    return nullptr;
}

// ---- pipe-hazard tracker state -------------------------------------------------------------------
// Vector clock per pipe: vc[q][p] = every op of pipe p issued at time <= vc[q][p] is known complete
// before the next op of pipe q. Sync events raise entries; accesses are checked against them.
struct VClock {
    uint32_t v[kNumPipes];
};
struct BlockShadow {
    uint32_t wTime;
    uint32_t rTime[kNumPipes];
    uint8_t wPipe;  // 0xFF: never written by a tracked op
};
struct OpRec {
    uint32_t time;
    const char* api;
    const char* file;
    int line;
};
struct GmWrite {
    uintptr_t begin, end;
    uint32_t time;
    uint8_t pipe;
};

// Per-buffer bookkeeping of TQue slots (kept in the core so tensors can validate themselves).
enum class SlotState : uint8_t { Free, Allocated, Enqueued, Dequeued };
struct SlotRec {
    uint32_t gen = 1;
    SlotState state = SlotState::Free;
    uint32_t queueId = 0;
    VClock snap{};  // producer snapshot (EnQue) or consumer snapshot (FreeTensor)
    bool snapValid = false;
    int8_t heldEvent = -1;  // the event id an EnQue took from the pool, released by the DeQue
    int8_t heldId = -1;
};

struct FlagRec {
    bool set = false;
    VClock snap{};
    Loc setLoc{nullptr, 0};
};

struct LaunchCtx;

struct Arena {
    uint8_t* base = nullptr;
    uint32_t phys = 0;
    std::vector<BlockShadow> shadow;
};

struct CoreCtx {
    CoreKind kind = CoreKind::AIV;
    LaunchCtx* launch = nullptr;
    int index = 0;           // position in launch->cores
    int64_t blockIdx = 0;    // GetBlockIdx()
    int64_t blockNum = 1;    // GetBlockNum()
    int64_t group = 0;       // AI core (block group) index
    int64_t subBlockIdx = 0; // GetSubBlockIdx()
    int64_t subBlockNum = 1; // GetSubBlockNum()
    int64_t taskRatio = 1;   // GetTaskRatio()
    bool exited = false;     // guarded by launch->mu

    Arena arena[kNumMem];
    // TPipe bookkeeping
    void* activePipe = nullptr;
    uint32_t pipeUsed[kNumMem] = {0, 0, 0, 0, 0};
    uint32_t nextQueueId = 1;
    int outstandingAllocs[static_cast<int>(AscendC::TPosition::MAX) + 1] = {};
    std::vector<SlotRec> slots;
    // intra-core flags and TPipe event ids
    FlagRec flags[kNumEvents][8];
    bool eventIdBusy[kNumEvents][8] = {};  // AllocEventID'd (until ReleaseEventID)
    bool fetched[kNumEvents][8] = {};      // FetchEventID'd (until the SetFlag that uses it)
    bool queueHeld[kNumEvents][8] = {};    // taken by a TQue EnQue (until its DeQue)
    bool queueEvent[kNumEvents] = {};      // some TQue of this core synchronises with this event
    // misc per-core registers
    uint8_t* sysWorkspace = nullptr;  // SetSysWorkspace
    uint64_t padValueBits = 0;
    bool padValueSet = false;
    int atomicOp = 0;  // 0 none, 1 add, 2 max, 3 min
    const char* atomicType = nullptr;
    uint16_t mrgSortResult[4] = {0, 0, 0, 0};
    // hazard tracker
    bool hazardOn = false;
    uint32_t clock = 0;
    VClock vc[kNumPipes] = {};
    static constexpr uint32_t kOpRing = 8192;
    std::vector<OpRec> ops;
    std::vector<GmWrite> gmWrites;
    uint32_t lastGmWrite[kNumPipes] = {};
    VClock crossSnap{};  // join of the pipe snapshots of this core's CrossCoreSetFlags
    uint32_t curTime = 0;
    int curPipe = 0;
    const char* curApi = "";
    Loc curLoc{nullptr, 0};
    // work counters (always on; read by the performance model, see CoreCounters)
    uint64_t opsPerPipe[kNumPipes] = {};   // API operations issued per pipe
    uint64_t gmReadBytes[kNumPipes] = {};  // GM bytes read per pipe (MTE2 / MTE1 for DMA, S for scalar reads)
    uint64_t gmWriteBytes[kNumPipes] = {}; // GM bytes written per pipe (MTE3 / FIX for DMA, S for scalar)
    uint64_t localReadBytes = 0;           // UB bytes read by the vector pipe
    uint64_t localWriteBytes = 0;          // UB bytes written by the vector pipe
    uint64_t cubeMacs = 0;                 // multiply-accumulates of Mmad (m * n * k each)
    uint64_t cubeFractals = 0;             // Mmad fractal steps (16 x 16 x 32-byte K blocks)

    CoreCtx() = default;
    CoreCtx(const CoreCtx&) = delete;
    CoreCtx& operator=(const CoreCtx&) = delete;
    ~CoreCtx()
    {
        for (auto& a : arena) std::free(a.base);
    }
    void AllocArenas()
    {
        for (int i = 0; i < kNumMem; ++i) {
            Mem m = static_cast<Mem>(i);
            if (!MemOnCore(m, kind)) continue;
            Arena& a = arena[i];
            a.phys = MemPhysBytes(m);
            a.base = static_cast<uint8_t*>(std::aligned_alloc(4096, a.phys));
            if (!a.base) {
                std::fprintf(stderr, "[longattn-emu] FATAL: out of host memory for %s\n", MemName(m));
                std::abort();
            }
            std::memset(a.base, 0xFF, a.phys);  // poison: NaN for float types, -1 for integers
            if (hazardOn) a.shadow.assign(a.phys / 32, BlockShadow{0, {0, 0, 0, 0, 0, 0, 0}, 0xFF});
        }
        if (hazardOn) ops.assign(kOpRing, OpRec{0, "", nullptr, 0});
    }
};

inline void DescribeCore(const CoreCtx* c, char* buf, size_t n)
{
    if (!c) {
        std::snprintf(buf, n, "host thread (outside an emulator launch)");
        return;
    }
    std::snprintf(buf, n, "%s core (GetBlockIdx()=%lld of GetBlockNum()=%lld, AI core %lld, sub-block %lld)",
                  c->kind == CoreKind::AIV ? "AIV" : "AIC", static_cast<long long>(c->blockIdx),
                  static_cast<long long>(c->blockNum), static_cast<long long>(c->group),
                  static_cast<long long>(c->subBlockIdx));
}

inline CoreCtx& Core(Loc loc = Loc{nullptr, 0})
{
    if (!tlsCore)
        Fatal(loc,
              "Ascend C API called outside an emulator launch (use longattn_emu::LaunchVector/"
              "LaunchCube/LaunchMix)");
    return *tlsCore;
}

// ---- hazard tracker operations -------------------------------------------------------------------
// Begin one API operation on `pipe` (advances the core clock and records it for messages).
inline void BeginOp(int pipe, const char* api, Loc loc)
{
    CoreCtx& c = Core(loc);
    c.curPipe = pipe;
    c.curApi = api;
    c.curLoc = loc;
    ++c.opsPerPipe[pipe];
    if (!c.hazardOn) return;
    c.curTime = ++c.clock;
    if (c.clock == 0xFFFFFFF0u) Fatal(loc, "hazard tracker clock overflow (run with LONGATTN_EMU_HAZARD=0)");
    c.ops[c.curTime % CoreCtx::kOpRing] = OpRec{c.curTime, api, loc.file, loc.line};
}

inline bool AutoSynced(const CoreCtx& c, int a, int b)
{
    // AIV with the default --cce-auto-sync=on: the compiler orders PIPE_S against V/MTE2/MTE3
    // (documented auto-sync table for NPU arch 2201). Nothing is automatic on the AIC.
    return c.kind == CoreKind::AIV && (a == PIPE_S || b == PIPE_S);
}

inline void DescribeOp(const CoreCtx& c, uint32_t t, char* buf, size_t n)
{
    const OpRec& r = c.ops[t % CoreCtx::kOpRing];
    if (r.time == t && r.file)
        std::snprintf(buf, n, "%s at %s:%d", r.api, BaseName(r.file), r.line);
    else
        std::snprintf(buf, n, "an earlier op");
}

[[noreturn]] inline void HazardFail(CoreCtx& c, Mem m, uint32_t blk, int otherPipe, uint32_t otherTime,
                                    const char* kind)
{
    char other[256];
    DescribeOp(c, otherTime, other, sizeof(other));
    const bool war = kind[0] == 'W' && kind[2] == 'R';  // "WAR"
    const int src = otherPipe, dst = c.curPipe;
    const char* ev = EventNameForPipes(src, dst);
    char fix[200];
    if (ev)
        std::snprintf(fix, sizeof(fix), "SetFlag<HardEvent::%s>/WaitFlag<HardEvent::%s>", ev, ev);
    else
        std::snprintf(fix, sizeof(fix), "PipeBarrier<PIPE_ALL>()");
    Fatal(c.curLoc,
          "pipe hazard (%s): %s (%s) %s %s bytes [0x%x, 0x%x) %s %s (%s) with no synchronisation in "
          "between; on hardware these pipes run concurrently. Order them with %s, a TQue "
          "EnQue/DeQue (RAW) or FreeTensor/AllocTensor (WAR) handoff, or PipeBarrier<PIPE_ALL>()",
          kind, PipeName(c.curPipe), c.curApi, war ? "overwrites" : (kind[0] == 'R' ? "reads" : "writes"), MemName(m),
          blk * 32u, blk * 32u + 32u, war ? "still being read by" : "last written by", PipeName(otherPipe), other, fix);
}

[[noreturn]] inline void SamePipeFail(CoreCtx& c, Mem m, uint32_t blk, uint32_t otherTime)
{
    char other[256];
    DescribeOp(c, otherTime, other, sizeof(other));
    Fatal(c.curLoc,
          "pipe hazard (same-pipe WAW): %s (%s) writes %s bytes [0x%x, 0x%x) that %s on the same pipe wrote with "
          "no PipeBarrier<%s>() in between; transfers of one MTE pipe to overlapping destinations may complete "
          "out of order on hardware",
          PipeName(c.curPipe), c.curApi, MemName(m), blk * 32u, blk * 32u + 32u, other, PipeName(c.curPipe));
}

// Record an access of bytes [off, off+bytes) of local memory m by the current op.
inline void TrackLocal(Mem m, uint32_t off, uint32_t bytes, bool write)
{
    CoreCtx& c = *tlsCore;
    if (c.curPipe == PIPE_V) (write ? c.localWriteBytes : c.localReadBytes) += bytes;
    if (!c.hazardOn || bytes == 0) return;
    Arena& a = c.arena[static_cast<int>(m)];
    const int q = c.curPipe;
    const uint32_t b0 = off / 32u, b1 = (off + bytes - 1u) / 32u;
    for (uint32_t b = b0; b <= b1 && b < a.shadow.size(); ++b) {
        BlockShadow& s = a.shadow[b];
        if (s.wPipe != 0xFF && s.wPipe != q && !AutoSynced(c, s.wPipe, q) && s.wTime > c.vc[q].v[s.wPipe])
            HazardFail(c, m, b, s.wPipe, s.wTime, write ? "WAW" : "RAW");
        if (write) {
            for (int p = 0; p < kNumPipes; ++p) {
                if (p == q || AutoSynced(c, p, q)) continue;
                if (s.rTime[p] > c.vc[q].v[p]) HazardFail(c, m, b, p, s.rTime[p], "WAR");
            }
            // Two MTE2 transfers into overlapping local bytes (a DataCopy or an L1 InitConstValue) are
            // not ordered by the pipe (page *basic data movement*: overlapping destinations need
            // PipeBarrier<PIPE_MTE2>), unless a sync chain already proves the first one complete.
            if (q == PIPE_MTE2 && s.wPipe == PIPE_MTE2 && s.wTime != c.curTime && s.wTime > c.vc[q].v[q])
                SamePipeFail(c, m, b, s.wTime);
            s.wPipe = static_cast<uint8_t>(q);
            s.wTime = c.curTime;
        } else {
            s.rTime[q] = c.curTime;
        }
    }
}

// GM: only same-core RAW through MTE3/FIX writes and MTE2 reads is tracked (see README).
inline void TrackGmWrite(const void* p, uint64_t bytes)
{
    CoreCtx& c = *tlsCore;
    c.gmWriteBytes[c.curPipe] += bytes;
    if (!c.hazardOn || bytes == 0) return;
    c.lastGmWrite[c.curPipe] = c.curTime;
    const uintptr_t b = reinterpret_cast<uintptr_t>(p);
    // Overlapping GM destinations of two MTE3 transfers need PipeBarrier<PIPE_MTE3> (page *basic data
    // movement*) unless a sync chain proves the first complete. The recent writes are scanned.
    if (c.curPipe == PIPE_MTE3) {
        const int q = PIPE_MTE3;
        const size_t n = c.gmWrites.size(), first = n > 1024 ? n - 1024 : 0;
        for (size_t i = first; i < n; ++i) {
            const GmWrite& w = c.gmWrites[i];
            if (w.pipe == q && w.time != c.curTime && w.time > c.vc[q].v[q] && w.begin < b + bytes && b < w.end) {
                char other[256];
                DescribeOp(c, w.time, other, sizeof(other));
                Fatal(c.curLoc,
                      "pipe hazard (same-pipe WAW): PIPE_MTE3 (%s) writes GM [%p, +%llu) that %s on the same pipe "
                      "wrote with no PipeBarrier<PIPE_MTE3>() in between; transfers of one MTE pipe to "
                      "overlapping destinations may complete out of order on hardware",
                      c.curApi, p, static_cast<unsigned long long>(bytes), other);
            }
        }
    }
    if (!c.gmWrites.empty()) {
        GmWrite& last = c.gmWrites.back();  // merge adjacent writes of the same op
        if (last.time == c.curTime && last.end == b) {
            last.end = b + bytes;
            return;
        }
    }
    if (c.gmWrites.size() >= 16384) c.gmWrites.erase(c.gmWrites.begin(), c.gmWrites.begin() + 4096);
    c.gmWrites.push_back(GmWrite{b, b + bytes, c.curTime, static_cast<uint8_t>(c.curPipe)});
}
inline void TrackGmRead(const void* p, uint64_t bytes)
{
    CoreCtx& c = *tlsCore;
    c.gmReadBytes[c.curPipe] += bytes;
    if (!c.hazardOn || bytes == 0 || c.gmWrites.empty()) return;
    const uintptr_t b = reinterpret_cast<uintptr_t>(p), e = b + bytes;
    const int q = c.curPipe;
    size_t keep = 0;
    for (size_t i = 0; i < c.gmWrites.size(); ++i) {
        const GmWrite& w = c.gmWrites[i];
        const bool synced = w.pipe == q || w.time <= c.vc[q].v[w.pipe];
        if (!synced && w.begin < e && b < w.end) {
            char other[256];
            DescribeOp(c, w.time, other, sizeof(other));
            const char* ev = EventNameForPipes(w.pipe, q);
            Fatal(c.curLoc,
                  "pipe hazard (GM RAW): %s (%s) reads GM [%p, +%llu) written by %s (%s) on this core "
                  "with no synchronisation in between; insert SetFlag<HardEvent::%s>/WaitFlag",
                  PipeName(q), c.curApi, p, static_cast<unsigned long long>(bytes), PipeName(w.pipe), other,
                  ev ? ev : "?");
        }
        if (!synced || q != PIPE_MTE2) c.gmWrites[keep++] = w;  // drop entries MTE2 already saw
    }
    c.gmWrites.resize(keep);
}

inline VClock SnapshotOf(CoreCtx& c, int pipe)
{
    VClock s = c.vc[pipe];
    s.v[pipe] = c.clock;  // every op of `pipe` issued so far
    return s;
}
inline void JoinInto(CoreCtx& c, int pipe, const VClock& s)
{
    for (int p = 0; p < kNumPipes; ++p)
        if (s.v[p] > c.vc[pipe].v[p]) c.vc[pipe].v[p] = s.v[p];
}
inline void BarrierAll(CoreCtx& c)
{
    for (int q = 0; q < kNumPipes; ++q)
        for (int p = 0; p < kNumPipes; ++p) c.vc[q].v[p] = c.clock;
}

// ---- launch context and inter-core synchronisation ---------------------------------------------
struct LaunchCtx {
    LaunchKind kind = LaunchKind::Vector;
    uint32_t blockDim = 0;
    std::vector<std::unique_ptr<CoreCtx>> cores;
    std::mutex mu;
    std::condition_variable cv;
    double timeoutS = LONGATTN_EMU_DEFAULT_TIMEOUT_S;
    // cross-core flag counters (CrossCoreSetFlag/WaitFlag), per core and flag id
    std::vector<std::array<int, 16>> counter, pend0, pend1, pend2;
    // SyncAll barriers: [0] all AIV cores, [1] all cores
    uint32_t barArrived[2] = {0, 0};
    uint64_t barGen[2] = {0, 0};

    CoreCtx* Aic(int64_t g) { return kind == LaunchKind::Mix ? cores[3 * g].get() : cores[g].get(); }
    CoreCtx* Aiv(int64_t g, int64_t sub) { return cores[3 * g + 1 + sub].get(); }
};

}  // namespace detail
}  // namespace longattn_emu
