// SPDX-License-Identifier: Apache-2.0
// longattn Ascend C CPU emulator: tensors (LocalTensor, GlobalTensor), TPipe, TQue, TBuf and the
// system-variable functions (GetBlockIdx ...).
//
// Memory model: each core owns its local memories (UB on an AIV; L1/L0A/L0B/L0C on an AIC), all
// poisoned with 0xFF bytes at launch. TPipe::InitBuffer carves buffers out of them bump-pointer
// style under the documented budgets. Every element access is bounds-checked against the buffer
// the tensor was derived from; every GM access against the size given to SetGlobalBuffer.
#pragma once

#include "emu_runtime.h"

namespace longattn_emu {
namespace detail {

inline bool CurrentIsAiv() { return Core().kind == CoreKind::AIV; }
inline bool CurrentIsAic() { return Core().kind == CoreKind::AIC; }

// Producer and consumer pipes (bit masks) of the sync a TQue at this position performs: EnQue/DeQue
// order producers before consumers, FreeTensor/AllocTensor consumers before producers. TQue<VECIN> is
// TQueBind<GM, VECIN>: its events are MTE2_V / V_MTE2 only; TQue<VECOUT> (VECOUT -> GM) V_MTE3 / MTE3_V
// only. A VECIN tile copied straight to GM by MTE3 (copy-through) is NOT ordered by the queue (only
// TQueBind<VECIN, VECOUT> orders MTE2 before MTE3); the hazard tracker reports it.
inline uint32_t QueProducerPipes(AscendC::TPosition p)
{
    using AscendC::TPosition;
    switch (p) {
        case TPosition::VECIN: return 1u << PIPE_MTE2;
        case TPosition::VECOUT: return 1u << PIPE_V;
        case TPosition::A1:
        case TPosition::B1: return 1u << PIPE_MTE2;
        case TPosition::A2:
        case TPosition::B2: return 1u << PIPE_MTE1;
        case TPosition::CO1: return 1u << PIPE_M;
        default: return 0;
    }
}
inline uint32_t QueConsumerPipes(AscendC::TPosition p)
{
    using AscendC::TPosition;
    switch (p) {
        case TPosition::VECIN: return 1u << PIPE_V;
        case TPosition::VECOUT: return 1u << PIPE_MTE3;
        case TPosition::A1:
        case TPosition::B1: return 1u << PIPE_MTE1;
        case TPosition::A2:
        case TPosition::B2: return 1u << PIPE_M;
        case TPosition::CO1: return 1u << PIPE_FIX;
        default: return 0;
    }
}
// The events a TQue's own synchronisation uses (page *TPipe-TQue auto sync*): EnQue sets and DeQue
// waits producer -> consumer; FreeTensor sets and AllocTensor waits consumer -> producer. Their ids come
// from the same per-event pool as AllocEventID / FetchEventID, so a hand-set SetFlag on one of these
// events must take its id from that pool (the emulator checks it; see SetFlag).
inline int FirstPipe(uint32_t mask);
inline int QueForwardEvent(AscendC::TPosition p)
{
    const uint32_t prod = QueProducerPipes(p), cons = QueConsumerPipes(p);
    return prod && cons ? EventForPipes(FirstPipe(prod), FirstPipe(cons)) : -1;
}
inline int QueReverseEvent(AscendC::TPosition p)
{
    const uint32_t prod = QueProducerPipes(p), cons = QueConsumerPipes(p);
    return prod && cons ? EventForPipes(FirstPipe(cons), FirstPipe(prod)) : -1;
}
inline int FreeEventId(const CoreCtx& c, int e)  // lowest id nobody holds, has set or was handed
{
    for (int i = 0; i < 8; ++i)
        if (!c.eventIdBusy[e][i] && !c.queueHeld[e][i] && !c.fetched[e][i] && !c.flags[e][i].set) return i;
    return -1;
}
inline int FirstPipe(uint32_t mask)
{
    for (int p = 0; p < kNumPipes; ++p)
        if (mask & (1u << p)) return p;
    return PIPE_S;
}
// Join of the snapshots of every pipe in `mask` (what a set issued after all of them would carry).
inline VClock SnapshotOfMask(CoreCtx& c, uint32_t mask)
{
    VClock r{};
    for (int p = 0; p < kNumPipes; ++p) {
        if (!(mask & (1u << p))) continue;
        const VClock s = SnapshotOf(c, p);
        for (int k = 0; k < kNumPipes; ++k)
            if (s.v[k] > r.v[k]) r.v[k] = s.v[k];
    }
    return r;
}
inline void JoinIntoMask(CoreCtx& c, uint32_t mask, const VClock& s)
{
    for (int p = 0; p < kNumPipes; ++p)
        if (mask & (1u << p)) JoinInto(c, p, s);
}

}  // namespace detail
}  // namespace longattn_emu

#define ASCEND_IS_AIV (::longattn_emu::detail::CurrentIsAiv())
#define ASCEND_IS_AIC (::longattn_emu::detail::CurrentIsAic())
#define ASCEND_IS_NOT_AIV (!::longattn_emu::detail::CurrentIsAiv())
#define ASCEND_IS_NOT_AIC (!::longattn_emu::detail::CurrentIsAic())

namespace AscendC {

// ---- system variables ----------------------------------------------------------------------------
// Mix (1 AIC : 2 AIV) launches follow the documented numbering: on the AIC GetBlockIdx() is in
// [0, numBlocks); on an AIV it is in [0, 2*numBlocks) and equals 2*aiCore + GetSubBlockIdx().
// GetBlockNum() returns the launch's numBlocks on both kinds; GetTaskRatio() is 1 (AIC) / 2 (AIV).
inline int64_t GetBlockIdx() { return longattn_emu::detail::Core().blockIdx; }
inline int64_t GetBlockNum() { return longattn_emu::detail::Core().blockNum; }
inline int64_t GetSubBlockIdx() { return longattn_emu::detail::Core().subBlockIdx; }
inline int64_t GetSubBlockNum() { return longattn_emu::detail::Core().subBlockNum; }
inline int64_t GetTaskRatio() { return longattn_emu::detail::Core().taskRatio; }

template <typename T> class LocalTensor;
template <typename T> class GlobalTensor;

}  // namespace AscendC

namespace longattn_emu {
namespace detail {

// Validate that elements [elemOff, elemOff + count) of t are accessible; return their address.
template <typename T>
inline uint8_t* LocalSpan(const AscendC::LocalTensor<T>& t, uint64_t elemOff, uint64_t count, const char* what,
                          Loc loc);
template <typename T>
inline T* GmSpan(const AscendC::GlobalTensor<T>& g, uint64_t elemOff, uint64_t count, const char* what, Loc loc);

template <typename T>
inline T LoadAs(const uint8_t* p)
{
    T v;
    std::memcpy(&v, p, sizeof(T));
    return v;
}
template <typename T>
inline void StoreAs(uint8_t* p, T v)
{
    std::memcpy(p, &v, sizeof(T));
}

}  // namespace detail
}  // namespace longattn_emu

namespace AscendC {

// ---- LocalTensor ---------------------------------------------------------------------------------
template <typename T>
class LocalTensor {
public:
    using PrimType = T;
    // Emulator state (public so the emulator's free functions can use it; kernels must not).
    longattn_emu::detail::Mem emu_mem = longattn_emu::detail::Mem::NONE;
    TPosition emu_pos = TPosition::GM;
    uint32_t emu_off = 0;     // byte address of element 0 inside its memory
    uint32_t emu_regBeg = 0;  // bytes this tensor may touch: [emu_regBeg, emu_regEnd)
    uint32_t emu_regEnd = 0;
    uint32_t emu_size = 0;    // elements
    int32_t emu_slot = -1;    // TQue slot (for use-after-free checks), -1 for TBuf tensors
    uint32_t emu_gen = 0;
    longattn_emu::detail::CoreCtx* emu_core = nullptr;

    LocalTensor() = default;

    // Sub-view starting `offset` elements later; keeps the parent's buffer bounds.
    LocalTensor operator[](uint32_t offset) const
    {
        LocalTensor r = *this;
        r.emu_off = emu_off + offset * static_cast<uint32_t>(sizeof(T));
        r.emu_size = offset < emu_size ? emu_size - offset : 0;
        return r;
    }
    T GetValue(uint32_t index, LAEMU_LOC) const
    {
        longattn_emu::detail::BeginOp(PIPE_S, "LocalTensor::GetValue", LAEMU_HERE);
        const uint8_t* p = longattn_emu::detail::LocalSpan(*this, index, 1, "GetValue", LAEMU_HERE);
        longattn_emu::detail::TrackLocal(emu_mem, emu_off + index * sizeof(T), sizeof(T), false);
        return longattn_emu::detail::LoadAs<T>(p);
    }
    void SetValue(uint32_t index, T value, LAEMU_LOC) const
    {
        longattn_emu::detail::BeginOp(PIPE_S, "LocalTensor::SetValue", LAEMU_HERE);
        uint8_t* p = longattn_emu::detail::LocalSpan(*this, index, 1, "SetValue", LAEMU_HERE);
        longattn_emu::detail::TrackLocal(emu_mem, emu_off + index * sizeof(T), sizeof(T), true);
        longattn_emu::detail::StoreAs<T>(p, value);
    }
    // Scalar reference access (treated as a PIPE_S read and write for the hazard tracker).
    T& operator()(uint32_t index, LAEMU_LOC) const
    {
        longattn_emu::detail::BeginOp(PIPE_S, "LocalTensor::operator()", LAEMU_HERE);
        uint8_t* p = longattn_emu::detail::LocalSpan(*this, index, 1, "operator()", LAEMU_HERE);
        longattn_emu::detail::TrackLocal(emu_mem, emu_off + index * sizeof(T), sizeof(T), false);
        longattn_emu::detail::TrackLocal(emu_mem, emu_off + index * sizeof(T), sizeof(T), true);
        return *reinterpret_cast<T*>(p);
    }
    uint32_t GetSize() const { return emu_size; }
    void SetSize(uint32_t size) { emu_size = size; }
    uint32_t GetLength() const { return emu_size * static_cast<uint32_t>(sizeof(T)); }
    uint64_t GetPhyAddr() const { return emu_off; }
    uint64_t GetPhyAddr(uint32_t offset) const { return emu_off + offset * sizeof(T); }
    TPosition GetPosition() const { return emu_pos; }
    template <typename U>
    LocalTensor<U> ReinterpretCast() const
    {
        LocalTensor<U> r;
        r.emu_mem = emu_mem;
        r.emu_pos = emu_pos;
        r.emu_off = emu_off;
        r.emu_regBeg = emu_regBeg;
        r.emu_regEnd = emu_regEnd;
        r.emu_size = static_cast<uint32_t>(static_cast<uint64_t>(emu_size) * sizeof(T) / sizeof(U));
        r.emu_slot = emu_slot;
        r.emu_gen = emu_gen;
        r.emu_core = emu_core;
        return r;
    }
};

// ---- GlobalTensor --------------------------------------------------------------------------------
template <typename T>
class GlobalTensor {
public:
    using PrimType = T;
    T* emu_ptr = nullptr;              // element 0 of this view
    const uint8_t* emu_regBeg = nullptr;  // bytes given to SetGlobalBuffer
    const uint8_t* emu_regEnd = nullptr;
    uint64_t emu_size = 0;
    bool emu_sized = false;

    GlobalTensor() = default;
    void SetGlobalBuffer(__gm__ T* buffer, uint64_t bufferSize)
    {
        emu_ptr = buffer;
        emu_size = bufferSize;
        emu_sized = true;
        emu_regBeg = reinterpret_cast<const uint8_t*>(buffer);
        emu_regEnd = emu_regBeg + bufferSize * sizeof(T);
    }
    // Without a size nothing can be bounds-checked: every access then aborts (see README).
    void SetGlobalBuffer(__gm__ T* buffer)
    {
        emu_ptr = buffer;
        emu_size = 0;
        emu_sized = false;
        emu_regBeg = emu_regEnd = reinterpret_cast<const uint8_t*>(buffer);
    }
    const T* GetPhyAddr() const { return emu_ptr; }
    T* GetPhyAddr(uint64_t offset) const { return emu_ptr + offset; }
    uint64_t GetSize() const { return emu_size; }
    GlobalTensor operator[](uint64_t offset) const
    {
        GlobalTensor r = *this;
        r.emu_ptr = emu_ptr + offset;
        r.emu_size = offset < emu_size ? emu_size - offset : 0;
        return r;
    }
    T GetValue(uint64_t offset, LAEMU_LOC) const
    {
        longattn_emu::detail::BeginOp(PIPE_S, "GlobalTensor::GetValue", LAEMU_HERE);
        return *longattn_emu::detail::GmSpan(*this, offset, 1, "GetValue", LAEMU_HERE);
    }
    void SetValue(uint64_t offset, T value, LAEMU_LOC)  // non-const, as CANN 8.5.0
    {
        longattn_emu::detail::BeginOp(PIPE_S, "GlobalTensor::SetValue", LAEMU_HERE);
        *longattn_emu::detail::GmSpan(*this, offset, 1, "SetValue", LAEMU_HERE) = value;
    }
    T& operator()(uint64_t offset, LAEMU_LOC) const
    {
        return *longattn_emu::detail::GmSpan(*this, offset, 1, "operator()", LAEMU_HERE);
    }
    template <typename U>
    GlobalTensor<U> ReinterpretCast() const
    {
        GlobalTensor<U> r;
        r.emu_ptr = reinterpret_cast<U*>(emu_ptr);
        r.emu_regBeg = emu_regBeg;
        r.emu_regEnd = emu_regEnd;
        r.emu_size = emu_size * sizeof(T) / sizeof(U);
        r.emu_sized = emu_sized;
        return r;
    }
    template <typename... A>
    void SetL2CacheHint(A...) const
    {
    }
};

}  // namespace AscendC

namespace longattn_emu {
namespace detail {

template <typename T>
inline uint8_t* LocalSpan(const AscendC::LocalTensor<T>& t, uint64_t elemOff, uint64_t count, const char* what, Loc loc)
{
    if (t.emu_mem == Mem::NONE || t.emu_core == nullptr)
        Fatal(loc, "%s: LocalTensor is empty (not obtained from AllocTensor/DeQue/TBuf::Get)", what);
    CoreCtx& c = Core(loc);
    if (t.emu_core != &c) Fatal(loc, "%s: LocalTensor belongs to another core", what);
    if (t.emu_slot >= 0) {
        const SlotRec& s = c.slots[t.emu_slot];
        if (s.gen != t.emu_gen || s.state == SlotState::Free)
            Fatal(loc, "%s: LocalTensor used after FreeTensor (stale tensor of a TQue<%s> buffer)", what,
                  PositionName(t.emu_pos));
    }
    const uint64_t b = t.emu_off + elemOff * sizeof(T);
    const uint64_t e = b + count * sizeof(T);
    if (count == 0)
        return c.arena[static_cast<int>(t.emu_mem)].base + (b < c.arena[static_cast<int>(t.emu_mem)].phys ? b : 0);
    if (b < t.emu_regBeg || e > t.emu_regEnd)
        Fatal(loc,
              "LocalTensor out-of-bounds: %s touches %s bytes [0x%llx, 0x%llx) (elements [%llu, %llu) of a "
              "%s tensor at 0x%x) but its buffer spans [0x%x, 0x%x) (TPosition %s)",
              what, MemName(t.emu_mem), static_cast<unsigned long long>(b), static_cast<unsigned long long>(e),
              static_cast<unsigned long long>(elemOff), static_cast<unsigned long long>(elemOff + count), TypeName<T>(),
              t.emu_off, t.emu_regBeg, t.emu_regEnd, PositionName(t.emu_pos));
    return c.arena[static_cast<int>(t.emu_mem)].base + b;
}

template <typename T>
inline T* GmSpan(const AscendC::GlobalTensor<T>& g, uint64_t elemOff, uint64_t count, const char* what, Loc loc)
{
    if (!g.emu_sized)
        Fatal(loc,
              "%s: GlobalTensor has no size (SetGlobalBuffer(ptr) without a size); the emulator cannot "
              "bounds-check it - pass the element count",
              what);
    const uint8_t* b = reinterpret_cast<const uint8_t*>(g.emu_ptr + elemOff);
    const uint8_t* e = b + count * sizeof(T);
    if (count > 0 && (b < g.emu_regBeg || e > g.emu_regEnd))
        Fatal(loc,
              "GlobalTensor out-of-bounds: %s touches bytes [%+lld, %+lld) relative to the start of the "
              "GlobalTensor set by SetGlobalBuffer, which has %lld bytes (%llu %s elements)",
              what, static_cast<long long>(b - g.emu_regBeg), static_cast<long long>(e - g.emu_regBeg),
              static_cast<long long>(g.emu_regEnd - g.emu_regBeg),
              static_cast<unsigned long long>((g.emu_regEnd - g.emu_regBeg) / sizeof(T)), TypeName<T>());
    return g.emu_ptr + elemOff;
}

template <typename T>
inline uint32_t PhysAddr(const AscendC::LocalTensor<T>& t)
{
    return t.emu_off;
}

// ---- queue base ----------------------------------------------------------------------------------
class QueBase {
public:
    static constexpr uint32_t kMaxBuffers = 32;
    AscendC::TPosition emu_pos;
    int32_t emu_depth;
    uint32_t emu_num = 0;
    uint32_t emu_len = 0;  // bytes per buffer (aligned)
    uint32_t emu_base = 0;
    Mem emu_mem = Mem::NONE;
    uint32_t emu_id = 0;
    int32_t emu_slotBase = -1;
    uint32_t emu_nextAlloc = 0;
    uint32_t emu_fifo[kMaxBuffers] = {};
    uint32_t emu_head = 0, emu_count = 0;
    CoreCtx* emu_core = nullptr;

    QueBase(AscendC::TPosition pos, int32_t depth) : emu_pos(pos), emu_depth(depth) {}
    QueBase(const QueBase&) = delete;
    QueBase& operator=(const QueBase&) = delete;

    void Bind(CoreCtx& c, uint32_t num, uint32_t len, uint32_t base, Mem m)
    {
        emu_core = &c;
        emu_num = num;
        emu_len = len;
        emu_base = base;
        emu_mem = m;
        emu_id = c.nextQueueId++;
        emu_slotBase = static_cast<int32_t>(c.slots.size());
        for (uint32_t i = 0; i < num; ++i) {
            SlotRec r;
            r.queueId = emu_id;
            c.slots.push_back(r);
        }
    }
    void RequireInit(const char* api, Loc loc) const
    {
        if (emu_num == 0)
            Fatal(loc, "%s on a TQue<%s> that was never passed to TPipe::InitBuffer", api, PositionName(emu_pos));
        if (emu_core != &Core(loc)) Fatal(loc, "%s: TQue belongs to another core", api);
    }
    SlotRec& Slot(uint32_t i) const { return emu_core->slots[emu_slotBase + i]; }

    template <typename T>
    AscendC::LocalTensor<T> MakeTensor(uint32_t i) const
    {
        AscendC::LocalTensor<T> t;
        t.emu_mem = emu_mem;
        t.emu_pos = emu_pos;
        t.emu_off = emu_base + i * emu_len;
        t.emu_regBeg = t.emu_off;
        t.emu_regEnd = t.emu_off + emu_len;
        t.emu_size = emu_len / static_cast<uint32_t>(sizeof(T));
        t.emu_slot = emu_slotBase + static_cast<int32_t>(i);
        t.emu_gen = Slot(i).gen;
        t.emu_core = emu_core;
        return t;
    }
    // Index of the buffer `t` denotes, after checking it came from this queue and is not a sub-view.
    template <typename T>
    uint32_t Owned(const AscendC::LocalTensor<T>& t, const char* api, Loc loc) const
    {
        const int32_t rel = t.emu_slot - emu_slotBase;
        if (t.emu_core != emu_core || t.emu_slot < 0 || rel < 0 || rel >= static_cast<int32_t>(emu_num))
            Fatal(loc, "%s of a tensor not allocated from this TQue<%s> (queue #%u)", api, PositionName(emu_pos),
                  emu_id);
        if (t.emu_off != emu_base + static_cast<uint32_t>(rel) * emu_len)
            Fatal(loc, "%s needs the tensor returned by AllocTensor/DeQue, not a sub-view (offset 0x%x)", api,
                  t.emu_off);
        return static_cast<uint32_t>(rel);
    }

    template <typename T>
    AscendC::LocalTensor<T> DoAlloc(Loc loc)
    {
        RequireInit("AllocTensor", loc);
        CoreCtx& c = *emu_core;
        uint32_t found = emu_num;
        for (uint32_t k = 0; k < emu_num; ++k) {
            uint32_t i = (emu_nextAlloc + k) % emu_num;
            if (Slot(i).state == SlotState::Free) {
                found = i;
                break;
            }
        }
        if (found == emu_num)
            Fatal(loc,
                  "AllocTensor beyond the %u buffers of TQue<%s> (queue #%u): every buffer is allocated or "
                  "queued; a FreeTensor is missing or InitBuffer num is too small",
                  emu_num, PositionName(emu_pos), emu_id);
        int& outstanding = c.outstandingAllocs[static_cast<int>(emu_pos)];
        if (++outstanding > 8)
            Fatal(loc,
                  "AllocTensor: more than 8 tensors allocated and not freed on TPosition %s (hardware limit "
                  "for all queues of one position)",
                  PositionName(emu_pos));
        emu_nextAlloc = (found + 1) % emu_num;
        SlotRec& s = Slot(found);
        const uint32_t prod = QueProducerPipes(emu_pos);
        if (c.hazardOn && s.snapValid && prod) JoinIntoMask(c, prod, s.snap);  // WAR handoff
        s.snapValid = false;
        s.state = SlotState::Allocated;
        return MakeTensor<T>(found);
    }
    template <typename T>
    bool DoEnQue(const AscendC::LocalTensor<T>& t, Loc loc)
    {
        RequireInit("EnQue", loc);
        const uint32_t i = Owned(t, "EnQue", loc);
        SlotRec& s = Slot(i);
        if (s.gen != t.emu_gen || s.state == SlotState::Free)
            Fatal(loc, "EnQue of a tensor that was already freed (TQue<%s>)", PositionName(emu_pos));
        if (s.state == SlotState::Enqueued)
            Fatal(loc, "EnQue of a tensor that is already in the queue (TQue<%s>)", PositionName(emu_pos));
        if (static_cast<int32_t>(emu_count) >= emu_depth)
            Fatal(loc,
                  "EnQue beyond queue depth: TQue<%s, depth=%d> already holds %u tensor(s); DeQue first or "
                  "raise the depth",
                  PositionName(emu_pos), emu_depth, emu_count);
        CoreCtx& c = *emu_core;
        const uint32_t prod = QueProducerPipes(emu_pos);
        if (c.hazardOn && prod) {
            BeginOp(FirstPipe(prod), "TQue::EnQue", loc);
            s.snap = SnapshotOfMask(c, prod);
            s.snapValid = true;
        }
        const int ev = QueForwardEvent(emu_pos);
        if (ev >= 0) {
            const int id = FreeEventId(c, ev);
            if (id < 0)
                Fatal(loc,
                      "TQue<%s>::EnQue: no free id of HardEvent::%s (8 per event type; held by queues, "
                      "AllocEventID or hand-set flags)",
                      PositionName(emu_pos), EventTable(static_cast<AscendC::HardEvent>(ev)).name);
            c.queueHeld[ev][id] = true;
            s.heldEvent = static_cast<int8_t>(ev);
            s.heldId = static_cast<int8_t>(id);
        }
        s.state = SlotState::Enqueued;
        emu_fifo[(emu_head + emu_count) % kMaxBuffers] = i;
        ++emu_count;
        return true;
    }
    template <typename T>
    AscendC::LocalTensor<T> DoDeQue(Loc loc)
    {
        RequireInit("DeQue", loc);
        if (emu_count == 0)
            Fatal(loc, "DeQue on an empty TQue<%s> (queue #%u): nothing was EnQue'd; this would hang on hardware",
                  PositionName(emu_pos), emu_id);
        const uint32_t i = emu_fifo[emu_head];
        emu_head = (emu_head + 1) % kMaxBuffers;
        --emu_count;
        SlotRec& s = Slot(i);
        CoreCtx& c = *emu_core;
        const uint32_t cons = QueConsumerPipes(emu_pos);
        if (c.hazardOn && cons && s.snapValid) JoinIntoMask(c, cons, s.snap);
        s.snapValid = false;
        if (s.heldEvent >= 0) c.queueHeld[s.heldEvent][s.heldId] = false;
        s.heldEvent = s.heldId = -1;
        s.state = SlotState::Dequeued;
        return MakeTensor<T>(i);
    }
    template <typename T>
    void DoFree(const AscendC::LocalTensor<T>& t, Loc loc)
    {
        RequireInit("FreeTensor", loc);
        const uint32_t i = Owned(t, "FreeTensor", loc);
        SlotRec& s = Slot(i);
        if (s.gen != t.emu_gen || s.state == SlotState::Free)
            Fatal(loc, "FreeTensor twice: this TQue<%s> buffer was already freed (or the tensor is a stale copy)",
                  PositionName(emu_pos));
        if (s.state == SlotState::Enqueued)
            Fatal(loc, "FreeTensor of a tensor that is still queued (EnQue'd but not DeQue'd) in TQue<%s>",
                  PositionName(emu_pos));
        CoreCtx& c = *emu_core;
        const uint32_t cons = QueConsumerPipes(emu_pos);
        if (c.hazardOn && cons) {
            BeginOp(FirstPipe(cons), "TQue::FreeTensor", loc);
            s.snap = SnapshotOfMask(c, cons);
            s.snapValid = true;
        }
        s.state = SlotState::Free;
        ++s.gen;
        --c.outstandingAllocs[static_cast<int>(emu_pos)];
    }
};

class TBufBase {
public:
    AscendC::TPosition emu_pos;
    uint32_t emu_base = 0;
    uint32_t emu_len = 0;
    Mem emu_mem = Mem::NONE;
    CoreCtx* emu_core = nullptr;
    explicit TBufBase(AscendC::TPosition pos) : emu_pos(pos) {}

    template <typename T>
    AscendC::LocalTensor<T> Make(uint32_t byteOff, uint32_t bytes, Loc loc) const
    {
        if (emu_len == 0) Fatal(loc, "TBuf<%s>::Get before TPipe::InitBuffer", PositionName(emu_pos));
        if (emu_core != &Core(loc)) Fatal(loc, "TBuf belongs to another core");
        if (static_cast<uint64_t>(byteOff) + bytes > emu_len)
            Fatal(loc, "LocalTensor out-of-bounds: TBuf<%s>::Get asks for bytes [%u, %llu) of a %u-byte buffer",
                  PositionName(emu_pos), byteOff, static_cast<unsigned long long>(byteOff) + bytes, emu_len);
        AscendC::LocalTensor<T> t;
        t.emu_mem = emu_mem;
        t.emu_pos = emu_pos;
        t.emu_off = emu_base + byteOff;
        t.emu_regBeg = t.emu_off;
        t.emu_regEnd = t.emu_off + bytes;
        t.emu_size = bytes / static_cast<uint32_t>(sizeof(T));
        t.emu_core = emu_core;
        return t;
    }
};

}  // namespace detail
}  // namespace longattn_emu

namespace AscendC {

template <TPosition pos, int32_t depth, auto mask = 0>
class TQue : public longattn_emu::detail::QueBase {
public:
    static_assert(depth >= 1, "the emulator does not support depth-0 (in-place) TQue");
    TQue() : QueBase(pos, depth) {}
    template <typename T>
    LocalTensor<T> AllocTensor(LAEMU_LOC)
    {
        return DoAlloc<T>(LAEMU_HERE);
    }
    template <typename T>
    bool EnQue(const LocalTensor<T>& tensor, LAEMU_LOC)
    {
        return DoEnQue(tensor, LAEMU_HERE);
    }
    template <typename T>
    LocalTensor<T> DeQue(LAEMU_LOC)
    {
        return DoDeQue<T>(LAEMU_HERE);
    }
    template <typename T>
    void FreeTensor(LocalTensor<T>& tensor, LAEMU_LOC)
    {
        DoFree(tensor, LAEMU_HERE);
    }
    bool VacantInQue() const { return static_cast<int32_t>(emu_count) < depth; }
    bool HasTensorInQue() const { return emu_count > 0; }
    int32_t GetTensorCountInQue() const { return static_cast<int32_t>(emu_count); }
    bool HasIdleBuffer() const
    {
        for (uint32_t i = 0; i < emu_num; ++i)
            if (Slot(i).state == longattn_emu::detail::SlotState::Free) return true;
        return false;
    }
    void FreeAllEvent() {}
};

template <TPosition pos = TPosition::VECCALC>
class TBuf : public longattn_emu::detail::TBufBase {
public:
    TBuf() : TBufBase(pos) {}
    template <typename T>
    LocalTensor<T> Get(LAEMU_LOC) const
    {
        return Make<T>(0, emu_len - emu_len % static_cast<uint32_t>(sizeof(T)), LAEMU_HERE);
    }
    template <typename T>
    LocalTensor<T> Get(uint32_t len, LAEMU_LOC) const
    {
        return Make<T>(0, len * static_cast<uint32_t>(sizeof(T)), LAEMU_HERE);
    }
    template <typename T>
    LocalTensor<T> GetWithOffset(uint32_t size, uint32_t bufOffset, LAEMU_LOC) const
    {
        if (bufOffset % 32u != 0)
            longattn_emu::detail::Fatal(LAEMU_HERE, "TBuf::GetWithOffset: bufOffset %u is not 32-byte aligned",
                                        bufOffset);
        return Make<T>(bufOffset, size * static_cast<uint32_t>(sizeof(T)), LAEMU_HERE);
    }
};

// ---- TPipe ---------------------------------------------------------------------------------------
class TPipe {
public:
    explicit TPipe(LAEMU_LOC)
    {
        longattn_emu::detail::CoreCtx& c = longattn_emu::detail::Core(LAEMU_HERE);
        if (c.activePipe != nullptr)
            longattn_emu::detail::Fatal(LAEMU_HERE,
                                        "a second TPipe was constructed while another is alive on this core");
        c.activePipe = this;
        for (auto& u : c.pipeUsed) u = 0;
        core_ = &c;
    }
    ~TPipe() { Destroy(); }
    TPipe(const TPipe&) = delete;
    TPipe& operator=(const TPipe&) = delete;

    void Destroy()
    {
        if (core_ && core_->activePipe == this) {
            core_->activePipe = nullptr;
            for (auto& u : core_->pipeUsed) u = 0;
        }
        core_ = nullptr;
    }
    void Reset()
    {
        if (core_)
            for (auto& u : core_->pipeUsed) u = 0;
    }

    template <class Q>
    bool InitBuffer(Q& que, uint32_t num, uint32_t len, LAEMU_LOC)
    {
        static_assert(std::is_base_of<longattn_emu::detail::QueBase, Q>::value,
                      "InitBuffer(que, num, len) needs a TQue");
        using namespace longattn_emu::detail;
        CoreCtx& c = Live(LAEMU_HERE);
        if (que.emu_num != 0)
            Fatal(LAEMU_HERE, "TPipe::InitBuffer called twice for the same TQue<%s>", PositionName(que.emu_pos));
        if (num == 0 || num > QueBase::kMaxBuffers)
            Fatal(LAEMU_HERE, "TPipe::InitBuffer(TQue<%s>): num=%u out of range [1, %u]", PositionName(que.emu_pos),
                  num, QueBase::kMaxBuffers);
        const Mem m = CheckPos(c, que.emu_pos, LAEMU_HERE);
        uint32_t alignedLen = 0;
        const uint32_t base = Carve(c, m, num, len, &alignedLen, PositionName(que.emu_pos), "TQue", LAEMU_HERE);
        que.Bind(c, num, alignedLen, base, m);
        for (const int ev : {QueForwardEvent(que.emu_pos), QueReverseEvent(que.emu_pos)})
            if (ev >= 0) c.queueEvent[ev] = true;
        return true;
    }
    template <TPosition p>
    bool InitBuffer(TBuf<p>& buf, uint32_t len, LAEMU_LOC)
    {
        using namespace longattn_emu::detail;
        CoreCtx& c = Live(LAEMU_HERE);
        if (buf.emu_len != 0)
            Fatal(LAEMU_HERE, "TPipe::InitBuffer called twice for the same TBuf<%s>", PositionName(p));
        const Mem m = CheckPos(c, p, LAEMU_HERE);
        uint32_t alignedLen = 0;
        buf.emu_base = Carve(c, m, 1, len, &alignedLen, PositionName(p), "TBuf", LAEMU_HERE);
        buf.emu_len = alignedLen;
        buf.emu_mem = m;
        buf.emu_core = &c;
        return true;
    }

    // Event ids for SetFlag/WaitFlag (0..7 per event type).
    template <HardEvent evt>
    TEventID AllocEventID(LAEMU_LOC)
    {
        longattn_emu::detail::CoreCtx& c = Live(LAEMU_HERE);
        const int i = longattn_emu::detail::FreeEventId(c, static_cast<int>(evt));
        if (i >= 0) {
            c.eventIdBusy[static_cast<int>(evt)][i] = true;
            return static_cast<TEventID>(i);
        }
        longattn_emu::detail::Fatal(LAEMU_HERE, "AllocEventID<%s>: all 8 event ids are in use (ReleaseEventID missing)",
                                    longattn_emu::detail::EventTable(evt).name);
    }
    template <HardEvent evt>
    void ReleaseEventID(TEventID id, LAEMU_LOC)
    {
        auto& busy = Live(LAEMU_HERE).eventIdBusy[static_cast<int>(evt)];
        if (id < 0 || id > 7 || !busy[id])
            longattn_emu::detail::Fatal(LAEMU_HERE, "ReleaseEventID<%s>(%d): id was not allocated",
                                        longattn_emu::detail::EventTable(evt).name, id);
        busy[id] = false;
    }
    template <HardEvent evt>
    TEventID FetchEventID(LAEMU_LOC)
    {
        return FetchEventID(evt, laFile, laLine);
    }
    TEventID FetchEventID(HardEvent evt, LAEMU_LOC)
    {
        // A free id (not allocated, not held by a queue, not set) for one SetFlag/WaitFlag pair.
        longattn_emu::detail::CoreCtx& c = Live(LAEMU_HERE);
        const int id = longattn_emu::detail::FreeEventId(c, static_cast<int>(evt));
        if (id < 0)
            longattn_emu::detail::Fatal(LAEMU_HERE, "FetchEventID<%s>: no free event id",
                                        longattn_emu::detail::EventTable(evt).name);
        c.fetched[static_cast<int>(evt)][id] = true;
        return static_cast<TEventID>(id);
    }

private:
    longattn_emu::detail::CoreCtx* core_ = nullptr;

    longattn_emu::detail::CoreCtx& Live(longattn_emu::detail::Loc loc)
    {
        longattn_emu::detail::CoreCtx& c = longattn_emu::detail::Core(loc);
        if (core_ != &c || c.activePipe != this)
            longattn_emu::detail::Fatal(loc, "TPipe used after Destroy() or on another core");
        return c;
    }
    static longattn_emu::detail::Mem CheckPos(longattn_emu::detail::CoreCtx& c, TPosition p,
                                              longattn_emu::detail::Loc loc)
    {
        using namespace longattn_emu::detail;
        const Mem m = PositionMem(p);
        if (m == Mem::NONE)
            Fatal(loc, "TPipe::InitBuffer: TPosition %s is not emulated (use VECIN/VECOUT/VECCALC/A1/B1/A2/B2/CO1)",
                  PositionName(p));
        if (!MemOnCore(m, c.kind))
            Fatal(loc, "TPipe::InitBuffer: TPosition %s (%s) does not exist on an %s core", PositionName(p), MemName(m),
                  c.kind == longattn_emu::CoreKind::AIV ? "AIV" : "AIC");
        return m;
    }
    static uint32_t Carve(longattn_emu::detail::CoreCtx& c, longattn_emu::detail::Mem m, uint32_t num, uint32_t len,
                          uint32_t* alignedLen, const char* posName, const char* kind, longattn_emu::detail::Loc loc)
    {
        using namespace longattn_emu::detail;
        const uint32_t a = MemAlign(m);
        const uint64_t blk = (static_cast<uint64_t>(len) + a - 1) / a * a;  // len rounded up, as documented
        uint32_t& used = c.pipeUsed[static_cast<int>(m)];
        const uint64_t base = (static_cast<uint64_t>(used) + a - 1) / a * a;
        const uint64_t need = blk * num;
        const uint64_t budget = MemBudgetBytes(m);
        if (len == 0) Fatal(loc, "TPipe::InitBuffer(%s<%s>): len is 0", kind, posName);
        if (base + need > budget)
            Fatal(loc,
                  "TPipe::InitBuffer(%s<%s>, num=%u, len=%u): %s budget exceeded: requested %llu bytes, remaining "
                  "%llu of %llu usable bytes%s",
                  kind, posName, num, len, MemName(m), static_cast<unsigned long long>(need),
                  static_cast<unsigned long long>(budget > base ? budget - base : 0),
                  static_cast<unsigned long long>(budget),
                  m == Mem::UB ? " (UB 192 KB - 8 KB reserved - 256 B; LONGATTN_EMU_UB_BYTES)" : "");
        used = static_cast<uint32_t>(base + need);
        *alignedLen = static_cast<uint32_t>(blk);
        return static_cast<uint32_t>(base);
    }
};

}  // namespace AscendC
