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
