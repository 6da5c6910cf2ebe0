// SPDX-License-Identifier: Apache-2.0
// longattn Ascend C CPU emulator: sort primitives Sort32 and MrgSort (PIPE_V).
//
// Documented (score, index) layout, 8 bytes per pair:
//   float scores: element 2i = score (low 4 bytes), element 2i+1 = uint32 index bits (high 4 bytes);
//   half scores : element 4i = score (low 2 bytes), elements 4i+1 = reserved (the emulator writes 0),
//                 elements 4i+2..4i+3 = uint32 index (high 4 bytes, little endian).
// Sort32 sorts each group of 32 scores descending; equal scores keep input order (documented:
// for score[i] == score[j] with i > j, j comes first). MrgSort merges up to 4 sorted queues
// descending; on equal scores the emulator takes the lower-numbered queue first (undocumented).
// NaN scores abort (both APIs): the documentation does not say where a NaN sorts, so a kernel must
// not depend on it (replace NaN scores before sorting); +-inf sort as ordinary values.
#pragma once

#include <algorithm>
#include <numeric>
#include <vector>

#include "emu_vector.h"

namespace AscendC {

template <typename T>
struct MrgSortSrcList {
    LocalTensor<T> src1;
    LocalTensor<T> src2;
    LocalTensor<T> src3;
    LocalTensor<T> src4;
    MrgSortSrcList() = default;
    MrgSortSrcList(const LocalTensor<T>& s1, const LocalTensor<T>& s2, const LocalTensor<T>& s3,
                   const LocalTensor<T>& s4)
        : src1(s1), src2(s2), src3(s3), src4(s4)
    {
    }
};

namespace emu_internal {
struct ScorePair {
    float score;
    uint32_t index;
};
template <typename T>
inline ScorePair LoadPair(const uint8_t* p)
{
    ScorePair r;
    r.score = static_cast<float>(longattn_emu::detail::LoadAs<T>(p));
    std::memcpy(&r.index, p + 4, 4);
    return r;
}
template <typename T>
inline void StorePair(uint8_t* p, const ScorePair& s)
{
    std::memset(p, 0, 8);
    longattn_emu::detail::StoreAs<T>(p, longattn_emu::detail::FromFloatRne<T>(s.score));
    std::memcpy(p + 4, &s.index, 4);
}
}  // namespace emu_internal

// dst: repeatTime * 32 pairs (256 B per repeat); src0: scores; src1: uint32 indices.
template <typename T>
inline void Sort32(const LocalTensor<T>& dst, const LocalTensor<T>& src0, const LocalTensor<uint32_t>& src1,
                   const int32_t repeatTime, LAEMU_LOC)
{
    using namespace longattn_emu::detail;
    static_assert(std::is_same<T, half>::value || std::is_same<T, float>::value, "Sort32: half or float scores");
    const Loc loc = LAEMU_HERE;
    BeginOp(PIPE_V, "Sort32", loc);
    CheckRepeat(repeatTime, "Sort32", loc);
    // Documented per-iteration alignment: dst 256 B, src0 128 B (float) / 64 B (half), src1 128 B.
    CheckVecOperand(dst, "Sort32", "dst", loc, 256);
    CheckVecOperand(src0, "Sort32", "src0", loc, 32 * sizeof(T));
    CheckVecOperand(src1, "Sort32", "src1", loc, 128);
    if (repeatTime == 0) return;
    const uint64_t n = static_cast<uint64_t>(repeatTime) * 32;
    const uint8_t* ps = VecSpan(src0, n, false, "Sort32", "src0", loc);
    const uint8_t* pi = VecSpan(src1, n, false, "Sort32", "src1", loc);
    uint8_t* pd = VecSpan(dst.template ReinterpretCast<uint8_t>(), n * 8, true, "Sort32", "dst", loc);
    const uint64_t db = dst.emu_off, de = db + n * 8;
    if ((src0.emu_off < de && db < src0.emu_off + n * sizeof(T)) || (src1.emu_off < de && db < src1.emu_off + n * 4))
        Fatal(loc, "Sort32: destination overlaps a source");
    for (int32_t r = 0; r < repeatTime; ++r) {
        std::vector<emu_internal::ScorePair> v(32);
        for (int i = 0; i < 32; ++i) {
            v[i].score = static_cast<float>(LoadAs<T>(ps + (r * 32 + i) * sizeof(T)));
            v[i].index = LoadAs<uint32_t>(pi + (r * 32 + i) * 4);
            if (std::isnan(v[i].score))
                Fatal(loc,
                      "Sort32: score %d of repeat %d is NaN: where the hardware sorts a NaN is undocumented "
                      "(replace NaN scores before sorting)",
                      i, r);
        }
        std::stable_sort(v.begin(), v.end(), [](const emu_internal::ScorePair& a, const emu_internal::ScorePair& b) {
            return a.score > b.score;
        });
        for (int i = 0; i < 32; ++i) emu_internal::StorePair<T>(pd + (r * 32 + i) * 8, v[i]);
    }
}

// Merge up to 4 descending queues of (score, index) pairs into dst.
template <typename T>
inline void MrgSort(const LocalTensor<T>& dst, const MrgSortSrcList<T>& srcList, const MrgSort4Info& params, LAEMU_LOC)
{
    using namespace longattn_emu::detail;
    static_assert(std::is_same<T, half>::value || std::is_same<T, float>::value, "MrgSort: half or float");
    const Loc loc = LAEMU_HERE;
    BeginOp(PIPE_V, "MrgSort", loc);
    CheckRepeat(params.repeatTimes, "MrgSort", loc);
    const int nq = params.validBit == 3 ? 2 : params.validBit == 7 ? 3 : params.validBit == 15 ? 4 : 0;
    if (nq == 0) Fatal(loc, "MrgSort: validBit = %u must be 3, 7 or 15", params.validBit);
    CheckVecOperand(dst, "MrgSort", "dst", loc, 32);
    const LocalTensor<T>* q[4] = {&srcList.src1, &srcList.src2, &srcList.src3, &srcList.src4};
    for (int k = 0; k < nq; ++k) {
        CheckRange(params.elementLengths[k], 0, 4095, "MrgSort", "elementLengths[k]", loc);
        if (q[k]->emu_mem != Mem::UB) Fatal(loc, "MrgSort: queue %d is not a UB tensor", k + 1);
        if (q[k]->emu_off % 8 != 0)
            Fatal(loc, "MrgSort: queue %d address 0x%x is not 8-byte aligned", k + 1, q[k]->emu_off);
    }
    if (params.repeatTimes == 0) return;
    uint64_t total = 0;
    for (int k = 0; k < nq; ++k) total += params.elementLengths[k];
    if (params.repeatTimes > 1) {
        // Documented preconditions for repeats: 4 equal contiguous queues, no suspension.
        bool ok = nq == 4 && !params.ifExhaustedSuspension;
        for (int k = 1; k < 4 && ok; ++k)
            ok = params.elementLengths[k] == params.elementLengths[0] &&
                 q[k]->emu_off == q[0]->emu_off + k * params.elementLengths[0] * 8u;
        if (!ok)
            Fatal(loc,
                  "MrgSort: repeatTimes > 1 needs 4 equal-length contiguous queues, validBit 15 and "
                  "ifExhaustedSuspension = false (documented)");
    }
    for (uint32_t rep = 0; rep < params.repeatTimes; ++rep) {
        std::vector<emu_internal::ScorePair> in[4];
        for (int k = 0; k < nq; ++k) {
            const uint64_t base = rep * total * 8;
            const uint8_t* p = LocalSpan(q[k]->template ReinterpretCast<uint8_t>(), base,
                                         params.elementLengths[k] * 8ull, "MrgSort source queue", loc);
            TrackLocal(q[k]->emu_mem, q[k]->emu_off + static_cast<uint32_t>(base), params.elementLengths[k] * 8u,
                       false);
            for (uint32_t i = 0; i < params.elementLengths[k]; ++i) {
                in[k].push_back(emu_internal::LoadPair<T>(p + i * 8));
                if (std::isnan(in[k][i].score))
                    Fatal(loc,
                          "MrgSort: source queue %d holds a NaN score at pair %u: where the hardware merges a "
                          "NaN is undocumented (replace NaN scores before sorting)",
                          k + 1, i);
                if (i > 0 && in[k][i].score > in[k][i - 1].score)
                    Fatal(loc, "MrgSort: source queue %d is not sorted descending at pair %u", k + 1, i);
            }
        }
        std::vector<emu_internal::ScorePair> out;
        size_t pos[4] = {0, 0, 0, 0};
        for (;;) {
            int best = -1;
            for (int k = 0; k < nq; ++k)
                if (pos[k] < in[k].size() && (best < 0 || in[k][pos[k]].score > in[best][pos[best]].score)) best = k;
            if (best < 0) break;
            out.push_back(in[best][pos[best]++]);
            if (params.ifExhaustedSuspension && pos[best] == in[best].size()) break;
        }
        const uint64_t dbase = rep * total * 8;
        for (int k = 0; k < nq; ++k) {
            const uint64_t qb = q[k]->emu_off + rep * total * 8, qe = qb + params.elementLengths[k] * 8ull;
            if (qb < dst.emu_off + dbase + out.size() * 8 && dst.emu_off + dbase < qe)
                Fatal(loc, "MrgSort: destination overlaps source queue %d (not supported)", k + 1);
        }
        uint8_t* pd =
            LocalSpan(dst.template ReinterpretCast<uint8_t>(), dbase, out.size() * 8, "MrgSort destination", loc);
        TrackLocal(dst.emu_mem, dst.emu_off + static_cast<uint32_t>(dbase), static_cast<uint32_t>(out.size() * 8),
                   true);
        for (size_t i = 0; i < out.size(); ++i) emu_internal::StorePair<T>(pd + i * 8, out[i]);
        CoreCtx& c = *tlsCore;
        for (int k = 0; k < 4; ++k) c.mrgSortResult[k] = static_cast<uint16_t>(k < nq ? pos[k] : 0);
    }
}

// Number of pairs consumed from each queue by the last MrgSort (meaningful with ifExhaustedSuspension).
inline void GetMrgSortResult(uint16_t& mrgSortList1, uint16_t& mrgSortList2, uint16_t& mrgSortList3,
                             uint16_t& mrgSortList4, LAEMU_LOC)
{
    longattn_emu::detail::CoreCtx& c = longattn_emu::detail::Core(LAEMU_HERE);
    mrgSortList1 = c.mrgSortResult[0];
    mrgSortList2 = c.mrgSortResult[1];
    mrgSortList3 = c.mrgSortResult[2];
    mrgSortList4 = c.mrgSortResult[3];
}

// High-level form (element counts in pairs; sortedNum receives consumed counts).
template <typename T, bool isExhaustedSuspension = false>
inline void MrgSort(const LocalTensor<T>& dst, const MrgSortSrcList<T>& sortList, const uint16_t elementCountList[4],
                    uint32_t sortedNum[4], uint16_t validBit, const int32_t repeatTimes, LAEMU_LOC)
{
    MrgSort4Info info(elementCountList, isExhaustedSuspension, validBit, 1);
    info.repeatTimes = static_cast<uint32_t>(repeatTimes);  // keep out-of-range values for the check
    MrgSort(dst, sortList, info, LAEMU_LOC_FWD);
    const auto& c = longattn_emu::detail::Core(LAEMU_HERE);
    for (int k = 0; k < 4; ++k) sortedNum[k] = c.mrgSortResult[k];
}

}  // namespace AscendC
