// SPDX-License-Identifier: Apache-2.0
// indexer_topk: pieces shared by the cube (AIC) and vector (AIV) sides.
#pragma once

#include "../../common/ascendc_compat.h"
#include "../op_host/indexer_topk_tiling.h"

namespace longattn_ascend {
namespace idx {

constexpr uint16_t kFlagS = 0;  // AIC -> AIV: scores of a block are in wsS[buf]
constexpr uint16_t kFlagC = 2;  // AIV -> AIC: wsS[buf] has been read (may be overwritten)
constexpr uint16_t kFlagX = 4;  // AIV <-> AIV (mode 1): AIV 1's candidate list is in wsList[buf]
constexpr uint16_t kFlagP = 5;  // AIC -> AIV (mode 2, once per launch): the Fixpipe ReLU probe is in wsProbe

// ---- the Fixpipe ReLU probe ---------------------------------------------------------------------------
// Whether Fixpipe's ReLU (FixpipeParamsV220::reluEn) keeps a NaN is undocumented. Once per launch the AIC
// of every AI core computes a 16 x 16 tile whose entries hold NaN made every way a score can become NaN
// (a +NaN and a -NaN input, 0 * inf, inf - inf, each times +1, -1 and 0) next to +-inf and +-finite
// values, Fixpipes rows 0..2 of it with reluEn to wsProbe, and the AIC and both AIVs read it back (the
// same function of the same bytes, so they always agree). Only if every entry is what relu-keeping-NaN
// gives (NaN stays NaN, whatever its sign; -inf and negatives become 0; +inf and positives stay) does
// the launch take the fast path: the AIC Fixpipes every block with reluEn and the AIVs use the scores
// as they come; otherwise the AIC Fixpipes raw scores and the AIVs apply the exact Relu + NaN Select.
//
// Probe inputs (the cube type T, two 32-B k-blocks of C0 elements; set by InitConstValue on the integer
// view, so exact bit patterns): A rows 0 / 1 / 2..15 = +1 / -1 / 0 in both k-blocks; B (key) rows
// (block 0 | block 1): 0: +NaN | 0, 1: -NaN | 0, 2: +inf | 0, 3: -inf | 0, 4: +inf | -inf, 5: -1 | 0,
// 6: +1 | 0, 7..15: 0 | 0.
template <typename T>
struct ProbeBits;
template <>
struct ProbeBits<half> {
    using U = uint16_t;
    static constexpr U kOne = 0x3C00, kNegOne = 0xBC00, kInf = 0x7C00, kNegInf = 0xFC00, kNan = 0x7E00,
                       kNegNan = 0xFE00;
};
template <>
struct ProbeBits<bfloat16_t> {
    using U = uint16_t;
    static constexpr U kOne = 0x3F80, kNegOne = 0xBF80, kInf = 0x7F80, kNegInf = 0xFF80, kNan = 0x7FC0,
                       kNegNan = 0xFFC0;
};
template <>
struct ProbeBits<float> {
    using U = uint32_t;
    static constexpr U kOne = 0x3F800000u, kNegOne = 0xBF800000u, kInf = 0x7F800000u, kNegInf = 0xFF800000u,
                       kNan = 0x7FC00000u, kNegNan = 0xFFC00000u;
};

// Expected relu of probe entry (row i < kIdxProbeRows, column j < 7; columns 7..15 are 0): 0 = zero,
// 1 = +inf, 2 = NaN (either sign), 3 = +C0 (C0 products of 1 x 1).
constexpr uint8_t kProbeWant[kIdxProbeRows][7] = {{2, 2, 1, 0, 2, 0, 3}, {2, 2, 0, 1, 2, 3, 0}, {2, 2, 2, 2, 2, 0, 0}};

// True when the Fixpipe ReLU kept every NaN of the probe (and treated the rest as max(x, 0)). The probe
// was written by the AIC's FIX pipe: read with scalar loads after the caller's synchronisation, each 64-B
// row's line flushed from the scalar data cache first.
__aicore__ inline bool ProbeKeepsNaN(AscendC::GlobalTensor<float>& probe, float c0)
{
    using namespace AscendC;
    bool ok = true;
    for (uint32_t i = 0; i < kIdxProbeRows; ++i) {
        GlobalTensor<float> row = probe[i * 16];
        DataCacheCleanAndInvalid<float, CacheLine::SINGLE_CACHE_LINE, DcciDst::CACHELINE_OUT>(row);
        for (uint32_t j = 0; j < 16; ++j) {
            const float v = probe.GetValue(i * 16 + j);
            const uint8_t want = j < 7 ? kProbeWant[i][j] : 0;
            const bool match = want == 2 ? v != v : (want == 1 ? v > 3.4028235e38f : (want == 3 ? v == c0 : v == 0.0f));
            ok = ok && match;
        }
    }
    return ok;
}

// Entries [0, visible) of a token, in blocks of kIdxBlock; seq < 0: no valid sequence (paged).
struct TokenInfo {
    uint32_t visible;
    int32_t seq;
    uint32_t blocks;
};

class TokenReader {
public:
    __aicore__ inline void Init(GM_ADDR visibleEnd, GM_ADDR seqIds, const IndexerTopkTiling& t)
    {
        t_ = &t;
        visGm_.SetGlobalBuffer((__gm__ int32_t*)visibleEnd, t.numTokens);
        if (t.paged) seqGm_.SetGlobalBuffer((__gm__ int32_t*)seqIds, t.numTokens);
    }
    __aicore__ inline TokenInfo Get(uint32_t token)
    {
        TokenInfo r;
        const int32_t v = visGm_.GetValue(token);
        r.visible = v <= 0 ? 0u : MinU(static_cast<uint32_t>(v), t_->numEntries);
        r.seq = 0;
        if (t_->paged) {
            r.seq = seqGm_.GetValue(token);
            if (r.seq < 0 || static_cast<uint32_t>(r.seq) >= t_->btRows) {
                r.seq = -1;
                r.visible = 0;
            }
        }
        r.blocks = CeilDivU(r.visible, kIdxBlock);
        return r;
    }

private:
    const IndexerTopkTiling* t_ = nullptr;
    AscendC::GlobalTensor<int32_t> visGm_, seqGm_;
};

}  // namespace idx
}  // namespace longattn_ascend
