// SPDX-License-Identifier: Apache-2.0
// Host side of longattn's Ascend C ops, shared by the emulator extension (csrc/ascend_sim) and the
// NPU binding (csrc/ascend_npu). ATen only: the same code runs on CPU tensors (emulator) and on NPU
// tensors (torch_npu), so the tiling and the launch arguments are computed identically.
//
// Per op: validate at the binding boundary, normalise index tensors to int32 (values outside the
// pool become -1: the kernels never see an index they could misuse), build the small per-batch
// plans with tensor ops, compute the tiling with the shared op_host code, allocate the outputs
// (poisoned with NaN / INT32_MIN so an element a kernel forgets shows up) and the workspace
// (poisoned with 0xFF), then hand GM pointers + tiling to `Dev` (the launch policy):
//   struct Dev {
//       uint32_t AiCores();  uint32_t VectorCores();
//       bool PoisonWorkspace();        // fill workspaces with 0xFF before a launch (the emulator: unwritten reads
//       show) void AppendKv(void*, const void*, const int32_t*, const AppendKvTiling&); void SparseAttention(const
//       SparseAttentionArgs&, const SparseAttentionTiling&); void CompressKv(const CompressKvArgs&, const
//       CompressKvTiling&); void CompressPool(const CompressPoolArgs&, const CompressPoolTiling&); void
//       IndexerTopk(const IndexerTopkArgs&, const IndexerTopkTiling&);
//       void MergeAttentionStates(const MergeArgs&, const CombineTiling&);
//       void ApplyAttentionSink(const SinkArgs&, const CombineTiling&);
//       void MergePartialStates(const MergePartialsArgs&, const MergePartialsTiling&);
//   };
#pragma once

#include <ATen/ATen.h>

#include <algorithm>
#include <cstdlib>
#include <limits>
#include <tuple>
#include <vector>

#include "ascend_c/append_kv/op_host/append_kv_tiling.h"
#include "ascend_c/combine/op_host/combine_tiling.h"
#include "ascend_c/compress_kv/op_host/compress_kv_tiling.h"
#include "ascend_c/compress_pool/op_host/compress_pool_tiling.h"
#include "ascend_c/indexer_topk/op_host/indexer_topk_tiling.h"
#include "ascend_c/sparse_attention/op_host/sparse_attention_tiling.h"

namespace longattn_ascend {
namespace host {

inline uint32_t DtypeCode(const at::Tensor& t, const char* what)
{
    switch (t.scalar_type()) {
        case at::kFloat: return kDtF32;
        case at::kBFloat16: return kDtBF16;
        case at::kHalf: return kDtF16;
        default: TORCH_CHECK(false, what, ": unsupported dtype ", t.scalar_type());
    }
    return 0;
}

inline uint32_t U32(int64_t v, const char* what)
{
    TORCH_CHECK(v >= 0 && v <= std::numeric_limits<int32_t>::max(), what, " = ", v, " is out of the kernel's range");
    return static_cast<uint32_t>(v);
}

// int32 copy of index values; entries outside [0, bound) become -1 (bound < 0: only the int32 range).
inline at::Tensor Index32(const at::Tensor& idx, int64_t bound)
{
    at::Tensor x = idx.to(at::kLong);
    at::Tensor bad = x.lt(0);
    bad = bad.logical_or(bound >= 0 ? x.ge(bound) : x.gt(std::numeric_limits<int32_t>::max()));
    return x.masked_fill(bad, -1).to(at::kInt).contiguous();
}

inline at::Tensor Lengths32(const c10::optional<at::Tensor>& len, int64_t width)
{
    if (!len.has_value()) return at::Tensor();
    return len->to(at::kLong).clamp(0, width).to(at::kInt).contiguous();
}

// The kernels use the whole workspace as their user workspace (no system workspace in front: they call
// no high-level API that needs one). Poisoned with 0xFF on the emulator only; no per-call fill on an NPU.
template <class Dev>
at::Tensor Workspace(Dev& dev, int64_t userBytes, const at::TensorOptions& like)
{
    const int64_t n = std::max<int64_t>(userBytes, 64);
    return dev.PoisonWorkspace() ? at::full({n}, 0xFF, like.dtype(at::kByte)) : at::empty({n}, like.dtype(at::kByte));
}

// ---- append_kv ----------------------------------------------------------------------------------------
template <class Dev>
void AppendKv(Dev& dev, at::Tensor pool, int64_t page_size, const at::Tensor& rows, const at::Tensor& slot_mapping)
{
    TORCH_CHECK(pool.is_contiguous(), "append_kv: pool must be contiguous");
    TORCH_CHECK(rows.dim() == 2, "append_kv: rows must be [T, D]");
    TORCH_CHECK(slot_mapping.dim() == 1 && slot_mapping.size(0) == rows.size(0), "append_kv: slot_mapping must be [T]");
    const int64_t T = rows.size(0), D = rows.size(1);
    uint32_t poolDt = 0, pageBytes = 0;
    int64_t numSlots = 0;
    if (page_size > 0) {  // FP8 MODEL1 pool data [num_pages, page_bytes]
        TORCH_CHECK(pool.scalar_type() == at::kByte && pool.dim() == 2,
                    "append_kv: FP8 pool data must be uint8 [P, page_bytes]");
        TORCH_CHECK(D == kFp8HeadDim, "append_kv: FP8 pools take rows of 512");
        poolDt = kDtFP8Record;
        pageBytes = U32(pool.size(1), "page_bytes");
        TORCH_CHECK(pageBytes == Fp8PageBytes(static_cast<uint32_t>(page_size)), "append_kv: bad FP8 page size");
        numSlots = pool.size(0) * page_size;
    } else {
        poolDt = DtypeCode(pool, "append_kv: pool");
        TORCH_CHECK(pool.size(-1) == D, "append_kv: pool rows must have D = ", D, " elements");
        numSlots = D > 0 ? pool.numel() / D : 0;
    }
    at::Tensor r = rows.contiguous();
    at::Tensor slots = Index32(slot_mapping, numSlots);
    AppendKvTiling t;
    AppendKvTilingCompute(t, U32(T, "T"), U32(D, "D"), U32(numSlots, "num_slots"), DtypeCode(r, "append_kv: rows"),
                          poolDt, static_cast<uint32_t>(std::max<int64_t>(page_size, 0)), pageBytes, dev.VectorCores());
    if (t.blockDim) dev.AppendKv(pool.data_ptr(), r.data_ptr(), slots.data_ptr<int32_t>(), t);
}

// ---- sparse_attention ------------------------------------------------------------------------------
// One KV stream at the binding boundary: a float pool (page_size 0: rows [.., D] of any float dtype, any
// shape viewable as rows) or the uint8 data [pages, page_bytes] of an FP8 MODEL1 pool (page_size > 0).
struct SaPool {
    at::Tensor data;  // contiguous rows [num_slots, D] or FP8 bytes [pages, page_bytes]
    SparseAttentionStream s;
};

// The sparse_attention test knobs (README.md, "Environment variables"; unset or empty: the defaults).
// LONGATTN_SA_BLOCK_KEYS = 64 / 128 / 256 caps the key block (the tiling takes the largest block <= the
// cap that fits; default 256). LONGATTN_SA_SHARE_CAP = N: valid keys of a token whose head groups share
// one gather (0: never share; default kSaShareCapKeys). A malformed value raises ValueError.
inline bool SaEnvInt(const char* name, long& n)
{
    const char* v = std::getenv(name);
    if (v == nullptr || v[0] == 0) return false;
    char* end = nullptr;
    n = std::strtol(v, &end, 10);
    TORCH_CHECK_VALUE(end != nullptr && *end == 0, name, " must be an integer, got '", v, "'");
    return true;
}
inline uint32_t SaMaxBlockKeys()
{
    long n = 0;
    if (!SaEnvInt("LONGATTN_SA_BLOCK_KEYS", n)) return kSaMaxBlockKeys;
    TORCH_CHECK_VALUE(n == 64 || n == 128 || n == 256, "LONGATTN_SA_BLOCK_KEYS must be 64, 128 or 256, got ", n);
    return static_cast<uint32_t>(n);
}
inline uint32_t SaShareCap()
{
    long n = 0;
    if (!SaEnvInt("LONGATTN_SA_SHARE_CAP", n)) return kSaShareCapKeys;
    TORCH_CHECK_VALUE(n >= 0 && n <= (1L << 20), "LONGATTN_SA_SHARE_CAP must be an integer in [0, 2^20], got ", n);
    return static_cast<uint32_t>(n);
}

inline SaPool SaPoolOf(const at::Tensor& kv, int64_t page_size, int64_t D, const char* name)
{
    SaPool p;
    if (page_size > 0) {
        TORCH_CHECK(kv.scalar_type() == at::kByte && kv.dim() == 2 && kv.is_contiguous(), "sparse_attention: FP8 ",
                    name, " data must be contiguous uint8 [pages, page_bytes]");
        TORCH_CHECK(D == kFp8HeadDim, "sparse_attention: FP8 ", name, " holds 512-dim rows, q has D = ", D);
        const uint32_t ps = U32(page_size, "page_size");
        TORCH_CHECK(kv.size(1) == static_cast<int64_t>(Fp8PageBytes(ps)), "sparse_attention: FP8 ", name, " pages of ",
                    kv.size(1), " bytes do not hold ", ps, " records");
        p.data = kv;
        p.s.kind = kDtFP8Record;
        p.s.numSlots = U32(kv.size(0) * page_size, "FP8 pool slots");
        p.s.pageSize = ps;
        p.s.pageBytes = U32(kv.size(1), "FP8 page bytes");
    } else {
        p.data = kv.reshape({-1, D}).contiguous();
        p.s.kind = DtypeCode(p.data, "sparse_attention: pool");
        p.s.numSlots = U32(p.data.size(0), "pool rows");
    }
    return p;
}

template <class Dev>
std::tuple<at::Tensor, at::Tensor> SparseAttention(
    Dev& dev, const at::Tensor& q, const at::Tensor& kv, int64_t kv_page_size, const at::Tensor& indices,
    const c10::optional<at::Tensor>& topk_length, const c10::optional<at::Tensor>& extra_kv, int64_t extra_page_size,
    const c10::optional<at::Tensor>& extra_indices, const c10::optional<at::Tensor>& extra_topk_length,
    const c10::optional<at::Tensor>& attn_sink, double softmax_scale, bool out_f32)
{
    TORCH_CHECK(q.dim() == 3, "sparse_attention: q must be [T, H, D]");
    const int64_t T = q.size(0), H = q.size(1), D = q.size(2);
    const uint32_t qDt = DtypeCode(q, "sparse_attention: q");
    TORCH_CHECK(indices.dim() == 2 && indices.size(0) == T, "sparse_attention: indices must be [T, K]");
    SaPool p0 = SaPoolOf(kv, kv_page_size, D, "kv"), p1;
    p0.s.width = U32(indices.size(1), "K");
    at::Tensor idx0 = Index32(indices, p0.s.numSlots);
    at::Tensor len0 = Lengths32(topk_length, indices.size(1));
    p0.s.hasLen = len0.defined();
    at::Tensor idx1, len1;
    if (extra_kv.has_value()) {
        TORCH_CHECK(extra_indices.has_value() && extra_indices->dim() == 2 && extra_indices->size(0) == T,
                    "sparse_attention: extra_kv needs extra_indices [T, K2]");
        p1 = SaPoolOf(*extra_kv, extra_page_size, D, "extra_kv");
        p1.s.width = U32(extra_indices->size(1), "K2");
        idx1 = Index32(*extra_indices, p1.s.numSlots);
        len1 = Lengths32(extra_topk_length, extra_indices->size(1));
        p1.s.hasLen = len1.defined();
    }
    // The compute dtype: q's, or fp32 where a pool does not convert into q's dtype exactly (q widened
    // here, out rounded once at the end, as the reference computes).
    const uint32_t dt = SparseAttentionComputeDtype(qDt, p0.s.kind, p1.s.kind);
    const char* why = SparseAttentionUnsupported(U32(D, "D"), dt, p0.s.kind, p1.s.kind);
    TORCH_CHECK(T == 0 || why[0] == 0, "sparse_attention: ", why);
    at::Tensor qc = (dt == qDt ? q : q.to(at::kFloat)).contiguous();
    at::Tensor sink;
    if (attn_sink.has_value()) sink = attn_sink->to(at::kFloat).contiguous();
    SparseAttentionTiling t;
    // out_f32: out written as fp32 rows (acc * factor, unrounded) in any compute dtype, returned as fp32 (the
    // split-KV partials); else in the compute dtype, rounded once to q's dtype where that differs.
    const uint32_t blockDim =
        SparseAttentionTilingCompute(t, U32(T, "T"), U32(H, "H"), U32(D, "D"), dt, p0.s, p1.s, sink.defined(),
                                     static_cast<float>(softmax_scale), dev.AiCores(), SaMaxBlockKeys(), SaShareCap(),
                                     out_f32 && dt != kDtF32);
    const double nan = std::numeric_limits<double>::quiet_NaN();
    at::Tensor out = at::full({T, H, D}, nan, out_f32 ? q.options().dtype(at::kFloat) : qc.options());
    at::Tensor lse = at::full({T, H}, nan, q.options().dtype(at::kFloat));
    if (T == 0) return {out_f32 ? out : out.to(q.scalar_type()), lse};
    TORCH_CHECK(blockDim > 0, "sparse_attention: no tiling for T=", T, " H=", H, " D=", D,
                " (D must be a multiple of 64 that fits the on-chip buffers)");
    at::Tensor ws = Workspace(dev, static_cast<int64_t>(blockDim) * t.wsPerCore, q.options());
    void* never = ws.data_ptr();  // stands in for absent inputs (their sizes are 0: never read)
    SparseAttentionArgs a{};
    a.q = qc.data_ptr();
    a.kv0 = p0.s.numSlots ? p0.data.data_ptr() : never;
    a.idx0 = idx0.numel() ? idx0.data_ptr<int32_t>() : static_cast<int32_t*>(never);
    a.len0 = len0.defined() ? len0.data_ptr<int32_t>() : static_cast<int32_t*>(never);
    a.kv1 = p1.s.numSlots ? p1.data.data_ptr() : never;
    a.idx1 = idx1.defined() && idx1.numel() ? idx1.data_ptr<int32_t>() : static_cast<int32_t*>(never);
    a.len1 = len1.defined() ? len1.data_ptr<int32_t>() : static_cast<int32_t*>(never);
    a.sink = sink.defined() ? sink.data_ptr<float>() : static_cast<float*>(never);
    a.out = out.data_ptr();
    a.lse = lse.data_ptr<float>();
    a.workspace = ws.data_ptr();
    dev.SparseAttention(a, t);
    return {dt == qDt || out_f32 ? out : out.to(q.scalar_type()), lse};
}

// ---- compress_kv ------------------------------------------------------------------------------------
// The per-batch plan (tensor ops): chunk start / end positions of every token, the emitting tokens,
// and cos/sin of every token's entry position (p / ratio) * ratio, in fp32 exactly as longattn.rope.
struct CompressPlan {
    at::Tensor positions, tokenRows, chunkStart, chunkEnd, emit, cosTab, sinTab;
};

inline CompressPlan PlanCompress(const at::Tensor& positions, const at::Tensor& token_rows, int64_t ratio,
                                 const at::Tensor& rope_inv_freq)
{
    CompressPlan p;
    at::Tensor pos = positions.to(at::kLong), rows = token_rows.to(at::kLong);
    const int64_t T = pos.size(0);
    at::Tensor tok = at::arange(T, pos.options());
    at::Tensor newSeq = at::ones({T}, pos.options().dtype(at::kBool));
    at::Tensor lastTok = at::ones({T}, pos.options().dtype(at::kBool));
    if (T > 1) {
        newSeq.slice(0, 1).copy_(rows.slice(0, 1).ne(rows.slice(0, 0, T - 1)));
        lastTok.slice(0, 0, T - 1).copy_(newSeq.slice(0, 1));
    }
    at::Tensor startTok = std::get<0>(at::cummax(at::where(newSeq, tok, at::zeros_like(tok)), 0));
    at::Tensor endTok = std::get<0>(at::cummin(at::where(lastTok, tok, at::full_like(tok, T)).flip({0}), 0)).flip({0});
    p.chunkStart = pos.index_select(0, startTok).contiguous();  // int64: positions are never truncated
    p.chunkEnd = pos.index_select(0, endTok).contiguous();
    // The emitting tokens, compacted to the front of a [T] list padded with -1, without a host sync
    // (nonzero would copy its count to the host): each emitting token's index in the list is the
    // running count before it; the others all write a dump slot past the end.
    at::Tensor emits = pos.add(1).remainder(ratio).eq(0);
    at::Tensor slot = at::where(emits, emits.to(at::kLong).cumsum(0).sub(1), at::full_like(tok, T));
    at::Tensor emit = at::full({T + 1}, -1, pos.options().dtype(at::kInt));
    emit.scatter_(0, slot, tok.to(at::kInt));
    p.emit = emit.slice(0, 0, T).contiguous();
    at::Tensor angles =
        pos.div(ratio, "floor").mul(ratio).to(at::kFloat).unsqueeze(-1) * rope_inv_freq.to(at::kFloat).unsqueeze(0);
    p.cosTab = at::cos(angles).contiguous();
    p.sinTab = at::sin(angles).contiguous();
    p.positions = pos.contiguous();  // int64 as given: the kernel handles any value (negative: no entry)
    p.tokenRows = Index32(rows, -1);
    return p;
}

template <class Dev>
void CompressKv(Dev& dev, const at::Tensor& a, const at::Tensor& b, const at::Tensor& positions,
                const at::Tensor& token_rows, int64_t ratio, bool overlap, at::Tensor state,
                const at::Tensor& state_block_table, at::Tensor out, int64_t out_page_size,
                const at::Tensor& out_block_table, const at::Tensor& norm_weight, double eps,
                const at::Tensor& rope_inv_freq)
{
    TORCH_CHECK(a.dim() == 2 && b.sizes() == a.sizes(), "compress_kv: a, b must be [T, c*d]");
    TORCH_CHECK(state.scalar_type() == at::kFloat && state.dim() == 3 && state.is_contiguous(),
                "compress_kv: state must be contiguous fp32 [pages, page, 2W]");
    TORCH_CHECK(ratio > 0, "compress_kv: ratio must be positive");
    const int64_t T = a.size(0), W = a.size(1), d = overlap ? W / 2 : W;
    TORCH_CHECK(state.size(2) == 2 * W, "compress_kv: state rows must be 2W");
    at::Tensor ac = a, bc = b;
    if (a.scalar_type() != b.scalar_type()) {  // one input dtype in the kernel: widen both (exact)
        ac = a.to(at::kFloat);
        bc = b.to(at::kFloat);
    }
    ac = ac.contiguous();
    bc = bc.contiguous();
    uint32_t outDt = 0, outPages = 0, outPageSize = 0, outPageBytes = 0;
    if (out_page_size > 0) {
        TORCH_CHECK(out.scalar_type() == at::kByte && out.dim() == 2 && out.is_contiguous(),
                    "compress_kv: FP8 out must be contiguous uint8 [P, page_bytes]");
        outDt = kDtFP8Record;
        outPages = U32(out.size(0), "out pages");
        outPageSize = U32(out_page_size, "out page size");
        outPageBytes = U32(out.size(1), "out page bytes");
    } else {
        TORCH_CHECK(out.dim() == 3 && out.size(2) == d && out.is_contiguous(), "compress_kv: out must be [P, page, d]");
        outDt = DtypeCode(out, "compress_kv: out");
        outPages = U32(out.size(0), "out pages");
        outPageSize = U32(out.size(1), "out page size");
    }
    const int64_t R = 2 * rope_inv_freq.numel();
    const char* why =
        CompressKvUnsupported(U32(d, "d"), U32(W, "W"), static_cast<uint32_t>(ac.element_size()), U32(R, "rope dims"),
                              out_page_size > 0, static_cast<uint32_t>(out.element_size()));
    TORCH_CHECK(why[0] == 0, "compress_kv: ", why);
    if (T == 0) return;
    CompressPlan plan = PlanCompress(positions, token_rows, ratio, rope_inv_freq);
    at::Tensor sbt = Index32(state_block_table, state.size(0));
    at::Tensor obt = Index32(out_block_table, out.size(0));
    at::Tensor nw = norm_weight.to(at::kFloat).contiguous();
    CompressKvTiling t;
    CompressKvTilingCompute(t, U32(T, "T"), U32(W, "W"), U32(ratio, "ratio"), overlap, DtypeCode(ac, "compress_kv: a"),
                            outDt, U32(state.size(0), "state pages"), U32(state.size(1), "state page"),
                            U32(sbt.size(0), "state_block_table rows"), U32(sbt.size(1), "state_block_table cols"),
                            outPages, outPageSize, outPageBytes, U32(obt.size(0), "out_block_table rows"),
                            U32(obt.size(1), "out_block_table cols"), U32(R, "rope dims"), static_cast<float>(eps),
                            U32(T, "entries (at most one per token)"), dev.VectorCores());
    if (t.blockDim == 0) return;
    void* never = nw.data_ptr();  // stands in for empty inputs (never read)
    CompressKvArgs args{};
    args.a = ac.data_ptr();
    args.b = bc.data_ptr();
    args.positions = plan.positions.data_ptr<int64_t>();
    args.tokenRows = plan.tokenRows.data_ptr<int32_t>();
    args.chunkStart = plan.chunkStart.data_ptr<int64_t>();
    args.chunkEnd = plan.chunkEnd.data_ptr<int64_t>();
    args.emitTokens = plan.emit.numel() ? plan.emit.data_ptr<int32_t>() : static_cast<int32_t*>(never);
    args.cosTab = plan.cosTab.numel() ? plan.cosTab.data_ptr<float>() : static_cast<float*>(never);
    args.sinTab = plan.sinTab.numel() ? plan.sinTab.data_ptr<float>() : static_cast<float*>(never);
    args.normWeight = nw.data_ptr<float>();
    args.state = state.data_ptr<float>();
    args.stateBt = sbt.numel() ? sbt.data_ptr<int32_t>() : static_cast<int32_t*>(never);
    args.out = out.data_ptr();
    args.outBt = obt.numel() ? obt.data_ptr<int32_t>() : static_cast<int32_t*>(never);
    dev.CompressKv(args, t);
}

// ---- compress_pool ----------------------------------------------------------------------------------
// x as the kernel reads it (dtype dt) and its row pitch in elements: rows with a unit column stride that
// do not overlap are read where they are (a slice of a wider projection costs no copy); anything else
// (transposed, broadcast rows, a pitch of 2^31 bytes or more) is made contiguous first.
inline at::Tensor PoolRows(const at::Tensor& x, at::ScalarType dt, int64_t& pitch)
{
    at::Tensor y = x.scalar_type() == dt ? x : x.to(dt);
    const int64_t S = y.size(0), W = y.size(1);
    const bool cols = W <= 1 || y.stride(1) == 1;
    const bool rows = S <= 1 || (y.stride(0) >= W && y.stride(0) * y.element_size() < (int64_t(1) << 31));
    if (!(cols && rows)) y = y.contiguous();
    pitch = S <= 1 ? W : y.stride(0);
    return y;
}

// Entries [S / ratio, d] fp32 (NaN-poisoned, every element written by the kernel).
template <class Dev>
at::Tensor CompressPool(Dev& dev, const at::Tensor& a, const at::Tensor& b, int64_t ratio, bool overlap)
{
    TORCH_CHECK(a.dim() == 2 && b.sizes() == a.sizes(), "compress_pool: a, b must be [S, c*d] of one shape");
    TORCH_CHECK(ratio > 0, "compress_pool: ratio must be positive");
    const int64_t S = a.size(0), W = a.size(1);
    TORCH_CHECK(!overlap || W % 2 == 0, "compress_pool: with overlap, the width must be even (2*d)");
    const char* why = CompressPoolUnsupported(static_cast<uint64_t>(a.numel()), static_cast<uint64_t>(b.numel()));
    TORCH_CHECK(why[0] == 0, "compress_pool: ", why);
    const int64_t d = overlap ? W / 2 : W, n = S / ratio;
    at::Tensor out = at::full({n, d}, std::numeric_limits<double>::quiet_NaN(), a.options().dtype(at::kFloat));
    if (n == 0 || d == 0) return out;
    // One input dtype in the kernel: equal dtypes as they are, different ones both widened to fp32 (exact).
    const at::ScalarType dt = a.scalar_type() == b.scalar_type() ? a.scalar_type() : at::kFloat;
    int64_t pa = 0, pb = 0;
    at::Tensor ac = PoolRows(a, dt, pa), bc = PoolRows(b, dt, pb);
    CompressPoolTiling t;
    CompressPoolTilingCompute(t, U32(S, "S"), U32(W, "W"), U32(ratio, "ratio"), overlap,
                              DtypeCode(ac, "compress_pool: a"), U32(pa, "a row pitch"), U32(pb, "b row pitch"),
                              dev.VectorCores());
    if (t.blockDim == 0) return out;
    CompressPoolArgs args{};
    args.a = ac.data_ptr();
    args.b = bc.data_ptr();
    args.out = out.data_ptr<float>();
    dev.CompressPool(args, t);
    return out;
}

// Tiling fields of a compress_pool call (tests and README tables); contiguous rows.
inline CompressPoolTiling CompressPoolTilingOf(int64_t S, int64_t W, int64_t ratio, bool overlap, int64_t dtype_code,
                                               uint32_t vectorCores)
{
    CompressPoolTiling t;
    CompressPoolTilingCompute(t, U32(S, "S"), U32(W, "W"), U32(ratio, "ratio"), overlap,
                              static_cast<uint32_t>(dtype_code), U32(W, "W"), U32(W, "W"), vectorCores);
    return t;
}

// ---- indexer_topk / indexer_logits ------------------------------------------------------------------
// Returns {indices, lengths} (top-k mode) or {logits} (logits mode).
template <class Dev>
std::vector<at::Tensor> Indexer(Dev& dev, const at::Tensor& q, const at::Tensor& weights, const at::Tensor& index_k,
                                const at::Tensor& visible_end, int64_t topk,
                                const c10::optional<at::Tensor>& block_table, const c10::optional<at::Tensor>& seq_ids,
                                bool return_slots, bool logits_mode)
{
    // q is [T, Hi, Di], or [P, T, Hi, Di]: P = 2..3 bf16 pieces whose sum is an fp16 / fp32 q, over a bf16
    // index_k (python/longattn/ops/indexer/ascend.py splits q so that a bf16 key pool is read as it is).
    TORCH_CHECK(q.dim() == 3 || q.dim() == 4, "indexer: q must be [T, Hi, Di] or [pieces, T, Hi, Di], got ", q.dim(),
                " dimensions");
    const bool pieces = q.dim() == 4;
    const int64_t P = pieces ? q.size(0) : 1, T = q.size(-3), Hi = q.size(-2), Di = q.size(-1);
    if (pieces)
        TORCH_CHECK(P >= 2 && P <= kIdxMaxPieces && q.scalar_type() == at::kBFloat16 &&
                        index_k.scalar_type() == at::kBFloat16,
                    "indexer: q pieces must be 2..", kIdxMaxPieces, " bf16 pieces over a bf16 index_k, got ", P,
                    " pieces of ", q.scalar_type(), " over ", index_k.scalar_type());
    const bool paged = block_table.has_value();
    // One element type for the cube: equal dtypes (or bf16 pieces of q over bf16 keys) as they are; other
    // pairs both widened to fp32 (exact), never index_k rounded to q's dtype (fp32 keys -> fp16 would
    // overflow to inf, -> bf16 would lose bits the reference keeps).
    const bool same = q.scalar_type() == index_k.scalar_type();
    at::Tensor qc = (same ? q : q.to(at::kFloat)).contiguous();
    at::Tensor kc = (same ? index_k : index_k.to(at::kFloat)).contiguous();
    at::Tensor w = weights.to(at::kFloat).contiguous();
    int64_t numEntries = 0, numPages = 0, pageSize = 0;
    at::Tensor bt, sid;
    if (paged) {
        TORCH_CHECK(seq_ids.has_value() && index_k.dim() == 3, "indexer: paged index_k needs block_table and seq_ids");
        numPages = index_k.size(0);
        pageSize = index_k.size(1);
        bt = Index32(*block_table, numPages);
        sid = Index32(*seq_ids, bt.size(0));
        numEntries = bt.size(1) * pageSize;
    } else {
        numEntries = index_k.size(0);
    }
    at::Tensor vis = visible_end.to(at::kLong).clamp(0, numEntries).to(at::kInt).contiguous();
    IndexerTopkTiling t;
    const uint32_t blockDim =
        IndexerTopkTilingCompute(t, U32(T, "T"), U32(Hi, "Hi"), U32(Di, "Di"), DtypeCode(qc, "indexer: q"),
                                 U32(numEntries, "entries"), paged, U32(numPages, "pages"), U32(pageSize, "page size"),
                                 paged ? U32(bt.size(0), "block_table rows") : 0,
                                 paged ? U32(bt.size(1), "block_table cols") : 0, U32(logits_mode ? 1 : topk, "topk"),
                                 logits_mode, return_slots, dev.AiCores(), static_cast<uint32_t>(P));
    at::Tensor indices, lengths, logits;
    const auto i32 = q.options().dtype(at::kInt);
    if (logits_mode) {
        logits = at::full({T, numEntries}, std::numeric_limits<double>::quiet_NaN(), q.options().dtype(at::kFloat));
    } else {
        indices = at::full({T, topk}, std::numeric_limits<int32_t>::min(), i32);
        lengths = at::full({T}, std::numeric_limits<int32_t>::min(), i32);
    }
    if (T > 0) {
        TORCH_CHECK(blockDim > 0, "indexer: no tiling for Hi=", Hi, " Di=", Di, " topk=", topk);
        at::Tensor ws = Workspace(dev, static_cast<int64_t>(blockDim) * t.wsPerCore, q.options());
        void* never = ws.data_ptr();
        IndexerTopkArgs a{};
        a.q = qc.data_ptr();
        a.weights = w.data_ptr<float>();
        a.indexK = kc.numel() ? kc.data_ptr() : never;
        a.visibleEnd = vis.data_ptr<int32_t>();
        a.blockTable = paged && bt.numel() ? bt.data_ptr<int32_t>() : static_cast<int32_t*>(never);
        a.seqIds = paged ? sid.data_ptr<int32_t>() : static_cast<int32_t*>(never);
        a.indices = logits_mode ? static_cast<int32_t*>(never) : indices.data_ptr<int32_t>();
        a.lengths = logits_mode ? static_cast<int32_t*>(never) : lengths.data_ptr<int32_t>();
        a.logits = logits_mode ? logits.data_ptr<float>() : static_cast<float*>(never);
        a.workspace = ws.data_ptr();
        dev.IndexerTopk(a, t);
    }
    if (logits_mode) return {logits};
    return {indices, lengths};
}

// ---- merge_attention_states / apply_attention_sink -----------------------------------------------------
// Rows r = t * H + h of contiguous [T*H, D] outs; lse values widened to fp32 (exact) before the kernel.
template <class Dev>
std::tuple<at::Tensor, at::Tensor> MergeAttentionStates(Dev& dev, const at::Tensor& out_a, const at::Tensor& lse_a,
                                                        const at::Tensor& out_b, const at::Tensor& lse_b)
{
    TORCH_CHECK(out_a.dim() == 3 && out_b.sizes() == out_a.sizes(),
                "merge_attention_states: out_a, out_b must be [T, H, D]");
    TORCH_CHECK(out_b.scalar_type() == out_a.scalar_type(), "merge_attention_states: out_b must have out_a's dtype");
    const int64_t T = out_a.size(0), H = out_a.size(1), D = out_a.size(2);
    TORCH_CHECK(lse_a.dim() == 2 && lse_a.size(0) == T && lse_a.size(1) == H && lse_b.sizes() == lse_a.sizes(),
                "merge_attention_states: lse_a, lse_b must be [T, H]");
    const uint32_t dt = DtypeCode(out_a, "merge_attention_states: out_a");
    const double nan = std::numeric_limits<double>::quiet_NaN();
    at::Tensor out = at::full({T, H, D}, nan, out_a.options());
    at::Tensor lse = at::full({T, H}, nan, out_a.options().dtype(at::kFloat));
    if (T * H == 0) return {out, lse};
    U32(T * H * D, "merge_attention_states: out numel");
    CombineTiling t;
    const uint32_t blockDim =
        CombineTilingCompute(t, kCombineMerge, U32(T * H, "T*H"), U32(H, "H"), U32(D, "D"), dt, dev.VectorCores());
    TORCH_CHECK(blockDim > 0, "merge_attention_states: no tiling for D=", D);
    at::Tensor oa = out_a.contiguous(), ob = out_b.contiguous();
    at::Tensor la = lse_a.to(at::kFloat).contiguous(), lb = lse_b.to(at::kFloat).contiguous();
    void* never = lse.data_ptr();  // stands in for the empty outs of D = 0 (never read)
    MergeArgs a{};
    a.outA = D ? oa.data_ptr() : never;
    a.lseA = la.data_ptr<float>();
    a.outB = D ? ob.data_ptr() : never;
    a.lseB = lb.data_ptr<float>();
    a.out = D ? out.data_ptr() : never;
    a.lse = lse.data_ptr<float>();
    dev.MergeAttentionStates(a, t);
    return {out, lse};
}

template <class Dev>
at::Tensor ApplyAttentionSink(Dev& dev, const at::Tensor& out, const at::Tensor& lse, const at::Tensor& attn_sink)
{
    TORCH_CHECK(out.dim() == 3, "apply_attention_sink: out must be [T, H, D]");
    const int64_t T = out.size(0), H = out.size(1), D = out.size(2);
    TORCH_CHECK(lse.dim() == 2 && lse.size(0) == T && lse.size(1) == H, "apply_attention_sink: lse must be [T, H]");
    TORCH_CHECK(attn_sink.dim() == 1 && attn_sink.size(0) == H, "apply_attention_sink: attn_sink must be [H]");
    const uint32_t dt = DtypeCode(out, "apply_attention_sink: out");
    at::Tensor res = at::full({T, H, D}, std::numeric_limits<double>::quiet_NaN(), out.options());
    if (res.numel() == 0) return res;
    U32(T * H * D, "apply_attention_sink: out numel");
    CombineTiling t;
    const uint32_t blockDim =
        CombineTilingCompute(t, kCombineSink, U32(T * H, "T*H"), U32(H, "H"), U32(D, "D"), dt, dev.VectorCores());
    TORCH_CHECK(blockDim > 0, "apply_attention_sink: no tiling for D=", D);
    at::Tensor o = out.contiguous();
    at::Tensor l = lse.to(at::kFloat).contiguous();
    // sink[j mod H] for j < H + batchRows: the sinks of any batch of rows are one contiguous slice.
    const int64_t len = t.sinkTableLen;
    at::Tensor table = attn_sink.to(at::kFloat).repeat({(len + H - 1) / H}).slice(0, 0, len).contiguous();
    SinkArgs a{};
    a.out = o.data_ptr();
    a.lse = l.data_ptr<float>();
    a.sinkTable = table.data_ptr<float>();
    a.result = res.data_ptr();
    dev.ApplyAttentionSink(a, t);
    return res;
}

// merge_partial_states: the S-way merge of split-KV partial states [T, S, H, D] (fp32, as the split
// attention launch writes them: partial s of token t is that launch's token t * S + s) and their lse
// [T, S, H] (any float dtype, widened exactly), the optional sink folded in, the out written in the dtype
// of DataTypeCode out_dtype (rounded once); lse [T, H] fp32. One launch for any S in 1..kMergePartialsMaxS.
template <class Dev>
std::tuple<at::Tensor, at::Tensor> MergePartialStates(Dev& dev, const at::Tensor& partial_out,
                                                      const at::Tensor& partial_lse,
                                                      const c10::optional<at::Tensor>& attn_sink, int64_t out_dtype)
{
    TORCH_CHECK(partial_out.dim() == 4, "merge_partial_states: partial_out must be [T, S, H, D], got shape ",
                partial_out.sizes());
    TORCH_CHECK(partial_out.scalar_type() == at::kFloat, "merge_partial_states: partial_out must be float32, got ",
                partial_out.scalar_type());
    const int64_t T = partial_out.size(0), S = partial_out.size(1), H = partial_out.size(2), D = partial_out.size(3);
    TORCH_CHECK(partial_lse.dim() == 3 && partial_lse.size(0) == T && partial_lse.size(1) == S &&
                    partial_lse.size(2) == H,
                "merge_partial_states: partial_lse must be [T, S, H] = [", T, ", ", S, ", ", H, "], got shape ",
                partial_lse.sizes());
    TORCH_CHECK(at::isFloatingType(partial_lse.scalar_type()),
                "merge_partial_states: partial_lse must be a float tensor, got ", partial_lse.scalar_type());
    TORCH_CHECK(S >= 1 && S <= static_cast<int64_t>(kMergePartialsMaxS), "merge_partial_states: S = ", S,
                " partials per row (partial_out.size(1)); the kernel merges 1 to ", kMergePartialsMaxS);
    at::ScalarType dtype = at::kFloat;
    switch (out_dtype) {
        case kDtF32: dtype = at::kFloat; break;
        case kDtBF16: dtype = at::kBFloat16; break;
        case kDtF16: dtype = at::kHalf; break;
        default:
            TORCH_CHECK(false, "merge_partial_states: out_dtype must be a DataTypeCode 0 (float32), 1 (bfloat16) or ",
                        "2 (float16), got ", out_dtype);
    }
    at::Tensor sink;
    if (attn_sink.has_value()) {
        TORCH_CHECK(attn_sink->dim() == 1 && attn_sink->size(0) == H, "merge_partial_states: attn_sink must be [H] = [",
                    H, "], got shape ", attn_sink->sizes());
        TORCH_CHECK(at::isFloatingType(attn_sink->scalar_type()),
                    "merge_partial_states: attn_sink must be a float tensor, got ", attn_sink->scalar_type());
        sink = attn_sink->to(at::kFloat).contiguous();
    }
    const double nan = std::numeric_limits<double>::quiet_NaN();
    at::Tensor out = at::full({T, H, D}, nan, partial_out.options().dtype(dtype));
    at::Tensor lse = at::full({T, H}, nan, partial_out.options().dtype(at::kFloat));
    if (T * H == 0) return {out, lse};
    U32(T * S * H * D, "merge_partial_states: partial_out numel");
    U32(T * S * H, "merge_partial_states: partial_lse numel");
    MergePartialsTiling t;
    const uint32_t blockDim =
        MergePartialsTilingCompute(t, U32(T * H, "T*H"), U32(H, "H"), U32(S, "S"), U32(D, "D"),
                                   static_cast<uint32_t>(out_dtype), sink.defined(), dev.VectorCores());
    TORCH_CHECK(blockDim > 0, "merge_partial_states: no tiling for S=", S, " D=", D);
    at::Tensor po = partial_out.contiguous();
    at::Tensor pl = partial_lse.to(at::kFloat).contiguous();
    float* never = lse.data_ptr<float>();  // stands in for the empty tensors of D = 0 / no sink (never read)
    MergePartialsArgs a{};
    a.partOut = D ? po.data_ptr<float>() : never;
    a.partLse = pl.data_ptr<float>();
    a.sinks = sink.defined() ? sink.data_ptr<float>() : never;
    a.out = D ? out.data_ptr() : static_cast<void*>(never);
    a.lse = lse.data_ptr<float>();
    dev.MergePartialStates(a, t);
    return {out, lse};
}

// Tiling fields of a merge_partial_states call (tests and README tables).
inline MergePartialsTiling MergePartialsTilingOf(int64_t rows, int64_t H, int64_t S, int64_t D, int64_t dtype_code,
                                                 bool has_sink, uint32_t vectorCores)
{
    MergePartialsTiling t;
    MergePartialsTilingCompute(t, U32(rows, "rows"), U32(H, "H"), U32(S, "S"), U32(D, "D"),
                               static_cast<uint32_t>(dtype_code), has_sink, vectorCores);
    return t;
}

// Tiling fields of a combine call (tests and README tables).
inline CombineTiling CombineTilingOf(int64_t mode, int64_t rows, int64_t H, int64_t D, int64_t dtype_code,
                                     uint32_t vectorCores)
{
    CombineTiling t;
    CombineTilingCompute(t, static_cast<uint32_t>(mode), U32(rows, "rows"), U32(H, "H"), U32(D, "D"),
                         static_cast<uint32_t>(dtype_code), vectorCores);
    return t;
}

// Tiling fields of a sparse_attention call (tests and README tables): q of dtype_code, kv of kv_code
// (a DataTypeCode, kDtFP8Record for an FP8 pool), a second stream of extra_code (-1: none); out_f32 as
// SparseAttention's.
inline SparseAttentionTiling SparseAttentionTilingOf(int64_t T, int64_t H, int64_t D, int64_t dtype_code,
                                                     int64_t kv_code, int64_t extra_code, uint32_t cores,
                                                     bool out_f32 = false)
{
    SparseAttentionStream s0, s1;
    s0.kind = static_cast<uint32_t>(kv_code);
    s0.numSlots = 16;
    s0.width = 16;
    if (s0.kind == kDtFP8Record) {
        s0.pageSize = 16;
        s0.pageBytes = Fp8PageBytes(16);
    }
    if (extra_code >= 0) {
        s1 = s0;
        s1.kind = static_cast<uint32_t>(extra_code);
        s1.pageSize = s1.kind == kDtFP8Record ? 16u : 0u;
        s1.pageBytes = s1.kind == kDtFP8Record ? Fp8PageBytes(16) : 0u;
    }
    const uint32_t dt = SparseAttentionComputeDtype(static_cast<uint32_t>(dtype_code), s0.kind, s1.kind);
    SparseAttentionTiling t;
    SparseAttentionTilingCompute(t, U32(T, "T"), U32(H, "H"), U32(D, "D"), dt, s0, s1, false, 1.0f, cores,
                                 SaMaxBlockKeys(), SaShareCap(), out_f32 && dt != kDtF32);
    return t;
}

}  // namespace host
}  // namespace longattn_ascend
