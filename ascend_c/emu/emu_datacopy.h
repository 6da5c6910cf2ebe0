// SPDX-License-Identifier: Apache-2.0
// longattn Ascend C CPU emulator: GM <-> UB/L1 data movement (DataCopy, DataCopyPad), pad value
// and DMA atomics.
//
// Pipes (documented "API pipe types" table): GM->local = PIPE_MTE2, UB->GM = PIPE_MTE3,
// UB->UB = PIPE_V. Strict checks where hardware silently misbehaves: a count-form copy whose byte
// size is not a multiple of 32 aborts (hardware rounds it down), UB/L1 addresses must be 32-byte
// aligned, GM addresses aligned to sizeof(T), parameter ranges are checked before truncation.
#pragma once

#include "emu_memory.h"

namespace longattn_emu {
namespace detail {

template <typename T>
inline void CheckLocalAlign(const AscendC::LocalTensor<T>& t, uint32_t align, const char* api, Loc loc)
{
    if (t.emu_off % align != 0)
        Fatal(loc, "%s: %s address 0x%x is not %u-byte aligned", api, MemName(t.emu_mem), t.emu_off, align);
}
template <typename T>
inline void CheckGmAlign(const T* p, const char* api, Loc loc)
{
    if (reinterpret_cast<uintptr_t>(p) % sizeof(T) != 0)
        Fatal(loc, "%s: GM address %p is not aligned to sizeof(%s)=%zu", api, static_cast<const void*>(p),
              TypeName<T>(), sizeof(T));
}
inline void CheckRange(uint64_t v, uint64_t lo, uint64_t hi, const char* api, const char* field, Loc loc)
{
    if (v < lo || v > hi)
        Fatal(loc, "%s: %s = %llu out of range [%llu, %llu]", api, field, static_cast<unsigned long long>(v),
              static_cast<unsigned long long>(lo), static_cast<unsigned long long>(hi));
}
template <typename T>
inline void RequireMem(const AscendC::LocalTensor<T>& t, bool ub, bool l1, const char* api, Loc loc)
{
    const bool ok = (ub && t.emu_mem == Mem::UB) || (l1 && t.emu_mem == Mem::L1);
    if (!ok)
        Fatal(loc, "%s: a LocalTensor in %s (TPosition %s) is not a valid operand here (expected %s%s%s)", api,
              MemName(t.emu_mem), PositionName(t.emu_pos), ub ? "UB" : "", (ub && l1) ? " or " : "", l1 ? "L1" : "");
}

// One GM write of `bytes` bytes honouring the core's DMA atomic mode (SetAtomicAdd & co.).
inline std::mutex& GmAtomicMutex(const void* p)
{
    static std::mutex stripes[64];
    return stripes[(reinterpret_cast<uintptr_t>(p) >> 6) & 63u];
}
template <typename T>
inline void GmWrite(T* dst, const uint8_t* src, uint64_t count, Loc loc)
{
    CoreCtx& c = *tlsCore;
    if (c.atomicOp == 0) {
        std::memcpy(dst, src, count * sizeof(T));
    } else {
        if (c.atomicType == nullptr || std::strcmp(c.atomicType, TypeName<T>()) != 0)
            Fatal(loc, "DMA atomic mode was set for %s but the copy moves %s elements", c.atomicType, TypeName<T>());
        uint8_t* d8 = reinterpret_cast<uint8_t*>(dst);  // GM rows may be unaligned (DataCopyPad)
        for (uint64_t i = 0; i < count; ++i) {
            std::lock_guard<std::mutex> lk(GmAtomicMutex(d8 + i * sizeof(T)));
            const float a = static_cast<float>(LoadAs<T>(d8 + i * sizeof(T)));
            const float b = static_cast<float>(LoadAs<T>(src + i * sizeof(T)));
            float r = c.atomicOp == 1 ? a + b : (c.atomicOp == 2 ? (a > b ? a : b) : (a < b ? a : b));
            StoreAs<T>(d8 + i * sizeof(T), FromFloatRne<T>(r));
        }
    }
    TrackGmWrite(dst, count * sizeof(T));
}
template <>
inline void GmWrite<int32_t>(int32_t* dst, const uint8_t* src, uint64_t count, Loc loc)
{
    CoreCtx& c = *tlsCore;
    if (c.atomicOp == 0) {
        std::memcpy(dst, src, count * sizeof(int32_t));
    } else {
        if (c.atomicType == nullptr || std::strcmp(c.atomicType, TypeName<int32_t>()) != 0)
            Fatal(loc, "DMA atomic mode was set for %s but the copy moves int32_t elements", c.atomicType);
        uint8_t* d8 = reinterpret_cast<uint8_t*>(dst);
        for (uint64_t i = 0; i < count; ++i) {
            std::lock_guard<std::mutex> lk(GmAtomicMutex(d8 + i * 4));
            const int32_t b = LoadAs<int32_t>(src + i * 4);
            const int32_t a = LoadAs<int32_t>(d8 + i * 4);
            StoreAs<int32_t>(d8 + i * 4, c.atomicOp == 1
                                             ? static_cast<int32_t>(static_cast<uint32_t>(a) + static_cast<uint32_t>(b))
                                             : (c.atomicOp == 2 ? (a > b ? a : b) : (a < b ? a : b)));
        }
    }
    TrackGmWrite(dst, count * sizeof(int32_t));
}

}  // namespace detail
}  // namespace longattn_emu

namespace AscendC {

// ---- DataCopy, count form: count * sizeof(T) must be a multiple of 32 bytes. ----------------------
template <typename T>
inline void DataCopy(const LocalTensor<T>& dst, const GlobalTensor<T>& src, uint32_t count, LAEMU_LOC)
{
    using namespace longattn_emu::detail;
    const Loc loc = LAEMU_HERE;
    BeginOp(PIPE_MTE2, "DataCopy(GM->local)", loc);
    RequireMem(dst, true, true, "DataCopy(GM->local)", loc);
    if ((static_cast<uint64_t>(count) * sizeof(T)) % 32u != 0)
        Fatal(loc,
              "DataCopy: count*sizeof(T) = %llu bytes is not a multiple of 32 (count=%u, T=%s); hardware would "
              "silently copy only %llu bytes. Use DataCopyPad for unaligned sizes",
              static_cast<unsigned long long>(count) * sizeof(T), count, TypeName<T>(),
              static_cast<unsigned long long>(count) * sizeof(T) / 32u * 32u);
    CheckLocalAlign(dst, 32, "DataCopy", loc);
    if (count == 0) return;
    CheckGmAlign(src.emu_ptr, "DataCopy", loc);
    const T* s = GmSpan(src, 0, count, "DataCopy(GM->local) source", loc);
    uint8_t* d = LocalSpan(dst, 0, count, "DataCopy(GM->local) destination", loc);
    TrackGmRead(s, count * sizeof(T));
    TrackLocal(dst.emu_mem, dst.emu_off, count * sizeof(T), true);
    std::memcpy(d, s, count * sizeof(T));
}

template <typename T>
inline void DataCopy(const GlobalTensor<T>& dst, const LocalTensor<T>& src, uint32_t count, LAEMU_LOC)
{
    using namespace longattn_emu::detail;
    const Loc loc = LAEMU_HERE;
    BeginOp(PIPE_MTE3, "DataCopy(local->GM)", loc);
    RequireMem(src, true, true, "DataCopy(local->GM)", loc);
    if ((static_cast<uint64_t>(count) * sizeof(T)) % 32u != 0)
        Fatal(loc,
              "DataCopy: count*sizeof(T) = %llu bytes is not a multiple of 32 (count=%u, T=%s); hardware would "
              "silently copy only %llu bytes. Use DataCopyPad for unaligned sizes",
              static_cast<unsigned long long>(count) * sizeof(T), count, TypeName<T>(),
              static_cast<unsigned long long>(count) * sizeof(T) / 32u * 32u);
    CheckLocalAlign(src, 32, "DataCopy", loc);
    if (count == 0) return;
    CheckGmAlign(dst.emu_ptr, "DataCopy", loc);
    const uint8_t* s = LocalSpan(src, 0, count, "DataCopy(local->GM) source", loc);
    T* d = GmSpan(dst, 0, count, "DataCopy(local->GM) destination", loc);
    TrackLocal(src.emu_mem, src.emu_off, count * sizeof(T), false);
    GmWrite(d, s, count, loc);
}

// UB -> UB (PIPE_V).
template <typename T>
inline void DataCopy(const LocalTensor<T>& dst, const LocalTensor<T>& src, uint32_t count, LAEMU_LOC)
{
    using namespace longattn_emu::detail;
    const Loc loc = LAEMU_HERE;
    BeginOp(PIPE_V, "DataCopy(UB->UB)", loc);
    RequireMem(dst, true, false, "DataCopy(UB->UB)", loc);
    RequireMem(src, true, false, "DataCopy(UB->UB)", loc);
    if ((static_cast<uint64_t>(count) * sizeof(T)) % 32u != 0)
        Fatal(loc, "DataCopy: count*sizeof(T) = %llu bytes is not a multiple of 32 (count=%u, T=%s)",
              static_cast<unsigned long long>(count) * sizeof(T), count, TypeName<T>());
    CheckLocalAlign(dst, 32, "DataCopy", loc);
    CheckLocalAlign(src, 32, "DataCopy", loc);
    if (count == 0) return;
    const uint8_t* s = LocalSpan(src, 0, count, "DataCopy(UB->UB) source", loc);
    uint8_t* d = LocalSpan(dst, 0, count, "DataCopy(UB->UB) destination", loc);
    TrackLocal(src.emu_mem, src.emu_off, count * sizeof(T), false);
    TrackLocal(dst.emu_mem, dst.emu_off, count * sizeof(T), true);
    std::memmove(d, s, count * sizeof(T));
}

// ---- DataCopy, DataCopyParams form: blockCount blocks of blockLen*32 bytes; gaps in 32 B units. ----
namespace emu_internal {
inline void CheckCopyParams(const DataCopyParams& p, longattn_emu::detail::Loc loc)
{
    using longattn_emu::detail::CheckRange;
    CheckRange(p.blockCount, 0, 4095, "DataCopy(DataCopyParams)", "blockCount", loc);
    CheckRange(p.blockLen, 0, 65535, "DataCopy(DataCopyParams)", "blockLen", loc);
    CheckRange(p.srcStride, 0, 65535, "DataCopy(DataCopyParams)", "srcStride", loc);
    CheckRange(p.dstStride, 0, 65535, "DataCopy(DataCopyParams)", "dstStride", loc);
}
}  // namespace emu_internal

template <typename T>
inline void DataCopy(const LocalTensor<T>& dst, const GlobalTensor<T>& src, const DataCopyParams& p, LAEMU_LOC)
{
    using namespace longattn_emu::detail;
    const Loc loc = LAEMU_HERE;
    BeginOp(PIPE_MTE2, "DataCopy(GM->local, DataCopyParams)", loc);
    RequireMem(dst, true, true, "DataCopy(GM->local)", loc);
    emu_internal::CheckCopyParams(p, loc);
    CheckLocalAlign(dst, 32, "DataCopy", loc);
    if (p.blockCount == 0 || p.blockLen == 0) return;  // documented NOP
    CheckGmAlign(src.emu_ptr, "DataCopy", loc);
    const uint64_t len = p.blockLen * 32ull;
    for (uint64_t i = 0; i < p.blockCount; ++i) {
        const uint64_t so = i * (p.blockLen + p.srcStride) * 32ull, dO = i * (p.blockLen + p.dstStride) * 32ull;
        const uint8_t* s = reinterpret_cast<const uint8_t*>(
            GmSpan(src.template ReinterpretCast<uint8_t>(), so, len, "DataCopy(GM->local) source", loc));
        uint8_t* d =
            LocalSpan(dst.template ReinterpretCast<uint8_t>(), dO, len, "DataCopy(GM->local) destination", loc);
        TrackGmRead(s, len);
        TrackLocal(dst.emu_mem, dst.emu_off + static_cast<uint32_t>(dO), static_cast<uint32_t>(len), true);
        std::memcpy(d, s, len);
    }
}

template <typename T>
inline void DataCopy(const GlobalTensor<T>& dst, const LocalTensor<T>& src, const DataCopyParams& p, LAEMU_LOC)
{
    using namespace longattn_emu::detail;
    const Loc loc = LAEMU_HERE;
    BeginOp(PIPE_MTE3, "DataCopy(local->GM, DataCopyParams)", loc);
    RequireMem(src, true, true, "DataCopy(local->GM)", loc);
    emu_internal::CheckCopyParams(p, loc);
    CheckLocalAlign(src, 32, "DataCopy", loc);
    if (p.blockCount == 0 || p.blockLen == 0) return;
    CheckGmAlign(dst.emu_ptr, "DataCopy", loc);
    if ((p.blockLen * 32ull) % sizeof(T) != 0) Fatal(loc, "DataCopy: block length is not a whole number of elements");
    const uint64_t n = p.blockLen * 32ull / sizeof(T);
    for (uint64_t i = 0; i < p.blockCount; ++i) {
        const uint64_t so = i * (p.blockLen + p.srcStride) * 32ull, dO = i * (p.blockLen + p.dstStride) * 32ull;
        const uint8_t* s =
            LocalSpan(src.template ReinterpretCast<uint8_t>(), so, n * sizeof(T), "DataCopy(local->GM) source", loc);
        T* d = GmSpan(dst, dO / sizeof(T), n, "DataCopy(local->GM) destination", loc);
        TrackLocal(src.emu_mem, src.emu_off + static_cast<uint32_t>(so), static_cast<uint32_t>(n * sizeof(T)), false);
        GmWrite(d, s, n, loc);
    }
}

template <typename T>
inline void DataCopy(const LocalTensor<T>& dst, const LocalTensor<T>& src, const DataCopyParams& p, LAEMU_LOC)
{
    using namespace longattn_emu::detail;
    const Loc loc = LAEMU_HERE;
    BeginOp(PIPE_V, "DataCopy(UB->UB, DataCopyParams)", loc);
    RequireMem(dst, true, false, "DataCopy(UB->UB)", loc);
    RequireMem(src, true, false, "DataCopy(UB->UB)", loc);
    emu_internal::CheckCopyParams(p, loc);
    CheckLocalAlign(dst, 32, "DataCopy", loc);
    CheckLocalAlign(src, 32, "DataCopy", loc);
    if (p.blockCount == 0 || p.blockLen == 0) return;
    const uint64_t len = p.blockLen * 32ull;
    for (uint64_t i = 0; i < p.blockCount; ++i) {
        const uint64_t so = i * (p.blockLen + p.srcStride) * 32ull, dO = i * (p.blockLen + p.dstStride) * 32ull;
        const uint8_t* s = LocalSpan(src.template ReinterpretCast<uint8_t>(), so, len, "DataCopy(UB->UB) source", loc);
        uint8_t* d = LocalSpan(dst.template ReinterpretCast<uint8_t>(), dO, len, "DataCopy(UB->UB) destination", loc);
        TrackLocal(src.emu_mem, src.emu_off + static_cast<uint32_t>(so), static_cast<uint32_t>(len), false);
        TrackLocal(dst.emu_mem, dst.emu_off + static_cast<uint32_t>(dO), static_cast<uint32_t>(len), true);
        std::memmove(d, s, len);
    }
}

// ---- DataCopyPad -----------------------------------------------------------------------------------
// Pad value used when isPad is false (documented SetPadValue register).
template <typename T>
inline void SetPadValue(T value, LAEMU_LOC)
{
    longattn_emu::detail::CoreCtx& c = longattn_emu::detail::Core(LAEMU_HERE);
    c.padValueBits = 0;
    std::memcpy(&c.padValueBits, &value, sizeof(T));
    c.padValueSet = true;
}

// GM -> UB. Row i: src = GM + i*(blockLen + srcStride) bytes; dst row = UB + i*(rowBytes + dstStride*32)
// where rowBytes = ceil32(leftPadding*sizeof(T) + blockLen + rightPadding*sizeof(T)). Inside a row:
// [left pad][data][right pad][dummy up to 32 B]. Pad/dummy contents (documented):
//   isPad=true            -> paddingValue for pads and dummy;
//   isPad=false, pads > 0 -> SetPadValue value if set, else garbage (the emulator writes 0xFF bytes);
//   no pads              -> dummy = the row's first element (documented), or SetPadValue value if set.
template <typename T>
inline void DataCopyPad(const LocalTensor<T>& dst, const GlobalTensor<T>& src, const DataCopyExtParams& p,
                        const DataCopyPadExtParams<T>& pad, LAEMU_LOC)
{
    using namespace longattn_emu::detail;
    const Loc loc = LAEMU_HERE;
    const char* api = "DataCopyPad(GM->UB)";
    BeginOp(PIPE_MTE2, api, loc);
    RequireMem(dst, true, false, api, loc);
    CheckRange(p.blockCount, 0, 4095, api, "blockCount", loc);
    CheckRange(p.blockLen, 0, 2097151, api, "blockLen (bytes)", loc);
    CheckLocalAlign(dst, 32, api, loc);
    if (p.blockLen % sizeof(T) != 0)
        Fatal(loc, "%s: blockLen = %u bytes is not a multiple of sizeof(%s) = %zu", api, p.blockLen, TypeName<T>(),
              sizeof(T));
    if (pad.leftPadding * sizeof(T) > 32 || pad.rightPadding * sizeof(T) > 32)
        Fatal(loc, "%s: leftPadding/rightPadding (%u/%u elements) exceed 32 bytes", api, pad.leftPadding,
              pad.rightPadding);
    if (p.blockCount == 0 || p.blockLen == 0) return;
    const uint64_t lb = pad.leftPadding * sizeof(T), rb = pad.rightPadding * sizeof(T);
    const uint64_t used = lb + p.blockLen + rb;
    const uint64_t rowBytes = (used + 31u) / 32u * 32u;
    CoreCtx& c = *tlsCore;
    for (uint64_t i = 0; i < p.blockCount; ++i) {
        const uint64_t so = i * (static_cast<uint64_t>(p.blockLen) + p.srcStride);
        const uint64_t dO = i * (rowBytes + static_cast<uint64_t>(p.dstStride) * 32u);
        const uint8_t* s = GmSpan(src.template ReinterpretCast<uint8_t>(), so, p.blockLen, "DataCopyPad source", loc);
        uint8_t* d = LocalSpan(dst.template ReinterpretCast<uint8_t>(), dO, rowBytes, "DataCopyPad destination", loc);
        TrackGmRead(s, p.blockLen);
        TrackLocal(dst.emu_mem, dst.emu_off + static_cast<uint32_t>(dO), static_cast<uint32_t>(rowBytes), true);
        // pad/dummy fill value
        uint8_t fill[sizeof(T)];
        bool garbage = false;
        if (pad.isPad) {
            std::memcpy(fill, &pad.paddingValue, sizeof(T));
        } else if (c.padValueSet) {
            std::memcpy(fill, &c.padValueBits, sizeof(T));
        } else if (lb == 0 && rb == 0) {
            std::memcpy(fill, s, sizeof(T));  // dummy = first element of the row
        } else {
            garbage = true;
        }
        for (uint64_t off = 0; off < rowBytes; off += sizeof(T)) {
            if (off >= lb && off < lb + p.blockLen) continue;
            if (garbage)
                std::memset(d + off, 0xFF, sizeof(T));
            else
                std::memcpy(d + off, fill, sizeof(T));
        }
        std::memcpy(d + lb, s, p.blockLen);
    }
}

// UB -> GM. Row i: src = UB + i*(ceil32(blockLen) + srcStride*32); dst = GM + i*(blockLen + dstStride bytes).
template <typename T>
inline void DataCopyPad(const GlobalTensor<T>& dst, const LocalTensor<T>& src, const DataCopyExtParams& p, LAEMU_LOC)
{
    using namespace longattn_emu::detail;
    const Loc loc = LAEMU_HERE;
    const char* api = "DataCopyPad(UB->GM)";
    BeginOp(PIPE_MTE3, api, loc);
    RequireMem(src, true, false, api, loc);
    CheckRange(p.blockCount, 0, 4095, api, "blockCount", loc);
    CheckRange(p.blockLen, 0, 2097151, api, "blockLen (bytes)", loc);
    CheckLocalAlign(src, 32, api, loc);
    if (p.blockLen % sizeof(T) != 0)
        Fatal(loc, "%s: blockLen = %u bytes is not a multiple of sizeof(%s) = %zu", api, p.blockLen, TypeName<T>(),
              sizeof(T));
    if (p.blockCount == 0 || p.blockLen == 0) return;
    const uint64_t rowBytes = (static_cast<uint64_t>(p.blockLen) + 31u) / 32u * 32u;
    const uint64_t n = p.blockLen / sizeof(T);
    for (uint64_t i = 0; i < p.blockCount; ++i) {
        const uint64_t so = i * (rowBytes + static_cast<uint64_t>(p.srcStride) * 32u);
        const uint64_t dO = i * (static_cast<uint64_t>(p.blockLen) + p.dstStride);
        const uint8_t* s =
            LocalSpan(src.template ReinterpretCast<uint8_t>(), so, p.blockLen, "DataCopyPad source", loc);
        T* d = reinterpret_cast<T*>(
            GmSpan(dst.template ReinterpretCast<uint8_t>(), dO, p.blockLen, "DataCopyPad destination", loc));
        TrackLocal(src.emu_mem, src.emu_off + static_cast<uint32_t>(so), p.blockLen, false);
        GmWrite(d, s, n, loc);
    }
}

// ---- DMA atomics (UB->GM and L0C->GM writes): 8.5.0 names. -------------------------------------------
template <typename T>
inline void SetAtomicAdd(LAEMU_LOC)
{
    auto& c = longattn_emu::detail::Core(LAEMU_HERE);
    c.atomicOp = 1;
    c.atomicType = longattn_emu::detail::TypeName<T>();
}
template <typename T>
inline void SetAtomicMax(LAEMU_LOC)
{
    auto& c = longattn_emu::detail::Core(LAEMU_HERE);
    c.atomicOp = 2;
    c.atomicType = longattn_emu::detail::TypeName<T>();
}
template <typename T>
inline void SetAtomicMin(LAEMU_LOC)
{
    auto& c = longattn_emu::detail::Core(LAEMU_HERE);
    c.atomicOp = 3;
    c.atomicType = longattn_emu::detail::TypeName<T>();
}
inline void SetAtomicNone(LAEMU_LOC)
{
    auto& c = longattn_emu::detail::Core(LAEMU_HERE);
    c.atomicOp = 0;
    c.atomicType = nullptr;
}
inline void DisableDmaAtomic(LAEMU_LOC) { SetAtomicNone(LAEMU_LOC_FWD); }

// Scalar GM cache maintenance: a no-op on the CPU (GM is coherent here; see README blind spots).
template <typename T, int cacheLine = 0, int dcciDst = 0>
inline void DataCacheCleanAndInvalid(const GlobalTensor<T>&)
{
}

}  // namespace AscendC
