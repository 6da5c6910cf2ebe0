// SPDX-License-Identifier: Apache-2.0
// sparse_attention: pieces shared by the cube (AIC) and vector (AIV) sides.
#pragma once

#include "../../common/ascendc_compat.h"
#include "../op_host/sparse_attention_tiling.h"

namespace longattn_ascend {
namespace sa {

// Cross-core flags (per AI core; +buf for the two workspace buffers).
constexpr uint16_t kFlagKv = 0;  // AIV -> AIC: gathered rows of a block are in wsKv[buf] (and wsVt[buf])
constexpr uint16_t kFlagS = 2;   // AIC -> AIV: logits of a block are in wsS[buf]
constexpr uint16_t kFlagP = 4;   // AIV -> AIC: probabilities of a block are in wsP[buf]
constexpr uint16_t kFlagO = 6;   // AIC -> AIV: P.V of a block is in wsO[buf]

// The valid keys of one query token, in order: stream 0 positions [0, L0), then stream 1
// positions [0, L1), L = min(width, max(0, topk_length)); a key is valid iff 0 <= slot < numSlots.
// Invalid entries are skipped without ever being used as an address. Index values are read with
// scalar GM loads (inputs only: no other core writes them, so no cache maintenance is needed).
class KeyCursor {
public:
    __aicore__ inline void Init(GM_ADDR idx0, GM_ADDR len0, GM_ADDR idx1, GM_ADDR len1, const SparseAttentionTiling& t)
    {
        t_ = &t;
        idx_[0].SetGlobalBuffer((__gm__ int32_t*)idx0, static_cast<uint64_t>(t.numTokens) * t.width0);
        idx_[1].SetGlobalBuffer((__gm__ int32_t*)idx1, static_cast<uint64_t>(t.numTokens) * t.width1);
        if (t.hasLen0) len_[0].SetGlobalBuffer((__gm__ int32_t*)len0, t.numTokens);
        if (t.hasLen1) len_[1].SetGlobalBuffer((__gm__ int32_t*)len1, t.numTokens);
    }
    __aicore__ inline void Reset(uint32_t token)
    {
        token_ = token;
        stream_ = 0;
        pos_ = 0;
        limit_[0] = Limit(0, t_->width0, t_->hasLen0);
        limit_[1] = Limit(1, t_->width1, t_->hasLen1);
    }
    // Next valid key: its stream (0/1) and slot. False when the token has no more keys.
    __aicore__ inline bool Next(uint32_t& stream, uint32_t& slot)
    {
        while (stream_ < 2) {
            if (pos_ < limit_[stream_]) {
                const uint32_t width = stream_ == 0 ? t_->width0 : t_->width1;
                const uint32_t n = stream_ == 0 ? t_->numSlots0 : t_->numSlots1;
                const int32_t v = idx_[stream_].GetValue(static_cast<uint64_t>(token_) * width + pos_);
                ++pos_;
                if (v >= 0 && static_cast<uint32_t>(v) < n) {
                    stream = stream_;
                    slot = static_cast<uint32_t>(v);
                    return true;
                }
            } else {
                ++stream_;
                pos_ = 0;
            }
        }
        return false;
    }
    __aicore__ inline uint32_t CountValid(uint32_t token)
    {
        Reset(token);
        uint32_t n = 0, s = 0, slot = 0;
        while (Next(s, slot)) ++n;
        Reset(token);
        return n;
    }

private:
    __aicore__ inline uint32_t Limit(uint32_t s, uint32_t width, uint32_t hasLen)
    {
        if (width == 0) return 0;
        if (!hasLen) return width;
        const int32_t l = len_[s].GetValue(token_);
        return l <= 0 ? 0u : MinU(static_cast<uint32_t>(l), width);
    }
    const SparseAttentionTiling* t_ = nullptr;
    AscendC::GlobalTensor<int32_t> idx_[2], len_[2];
    uint32_t token_ = 0, stream_ = 0, pos_ = 0, limit_[2] = {0, 0};
};

// Shared gather: whether a token of nv valid keys keeps its gathered rows for its later head groups (the
// first group's gather writes block b to wsKv / wsVt area b; the later groups gather nothing and read
// them there). Otherwise blocks alternate between areas 0 and 1 (seq % 2) and every group gathers.
__aicore__ inline bool KeptRows(const SparseAttentionTiling& t, uint32_t nv)
{
    return t.shareGroups != 0 && nv <= t.shareCap;
}

// Task -> (token, first head, heads) of a head group.
struct Task {
    uint32_t token, head0, heads;
};
__aicore__ inline Task MakeTask(uint32_t task, const SparseAttentionTiling& t)
{
    Task r;
    r.token = task / t.headGroups;
    r.head0 = (task % t.headGroups) * t.headsPerTask;
    r.heads = MinU(t.headsPerTask, t.numHeads - r.head0);
    return r;
}

}  // namespace sa
}  // namespace longattn_ascend
