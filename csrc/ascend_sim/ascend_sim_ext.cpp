// SPDX-License-Identifier: Apache-2.0
// Torch extension "longattn_ascend_sim": runs the Ascend C kernels (ascend_c/<op>/op_kernel) on CPU
// tensors through the clean-room emulator (ascend_c/emu). The host side (checks, index
// normalisation, plans, tiling, poisoned outputs and workspaces) is csrc/common/host_ops.h, shared
// with the NPU binding; here only the launch policy: longattn_emu::Launch{Vector,Mix} with the GIL
// released while the emulated cores run.

// The extension is built with -Wall -Werror like the kernels; GCC 12 reports a false positive inside
// pybind11's argument dispatcher at -O1 (the AddressSanitizer build), silenced for this file only.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <torch/extension.h>

#include "csrc/ascend_sim/launchers.h"
#include "csrc/common/host_ops.h"

namespace la = longattn_ascend;

namespace {

// Emulated device: `cores` AI cores (1 AIC + 2 AIV each), as chosen by the caller.
struct EmuDevice {
    uint32_t cores;
    uint32_t AiCores() const { return cores; }
    uint32_t VectorCores() const { return 2 * cores; }
    bool PoisonWorkspace() const { return true; }  // unwritten workspace reads show as NaN / -1
    void AppendKv(void* pool, const void* rows, const int32_t* slots, const la::AppendKvTiling& t)
    {
        pybind11::gil_scoped_release nogil;
        la::LaunchAppendKv(pool, rows, slots, t);
    }
    void SparseAttention(const la::SparseAttentionArgs& a, const la::SparseAttentionTiling& t)
    {
        pybind11::gil_scoped_release nogil;
        la::LaunchSparseAttention(a, t);
    }
    void CompressKv(const la::CompressKvArgs& a, const la::CompressKvTiling& t)
    {
        pybind11::gil_scoped_release nogil;
        la::LaunchCompressKv(a, t);
    }
    void CompressPool(const la::CompressPoolArgs& a, const la::CompressPoolTiling& t)
    {
        pybind11::gil_scoped_release nogil;
        la::LaunchCompressPool(a, t);
    }
    void IndexerTopk(const la::IndexerTopkArgs& a, const la::IndexerTopkTiling& t)
    {
        pybind11::gil_scoped_release nogil;
        la::LaunchIndexerTopk(a, t);
    }
    void MergeAttentionStates(const la::MergeArgs& a, const la::CombineTiling& t)
    {
        pybind11::gil_scoped_release nogil;
        la::LaunchMergeAttentionStates(a, t);
    }
    void ApplyAttentionSink(const la::SinkArgs& a, const la::CombineTiling& t)
    {
        pybind11::gil_scoped_release nogil;
        la::LaunchApplyAttentionSink(a, t);
    }
    void MergePartialStates(const la::MergePartialsArgs& a, const la::MergePartialsTiling& t)
    {
        pybind11::gil_scoped_release nogil;
        la::LaunchMergePartialStates(a, t);
    }
};

EmuDevice Device(int64_t num_cores)
{
    TORCH_CHECK(num_cores >= 1 && num_cores <= 1024, "num_cores must be in [1, 1024]");
    return EmuDevice{static_cast<uint32_t>(num_cores)};
}

void CheckCpu(std::initializer_list<const at::Tensor*> ts)
{
    for (const at::Tensor* t : ts)
        TORCH_CHECK(t->device().is_cpu(), "ascend_sim runs on CPU tensors (the emulator runs on the host)");
}

void AppendKv(at::Tensor pool, int64_t page_size, at::Tensor rows, at::Tensor slot_mapping, int64_t num_cores)
{
    CheckCpu({&pool, &rows, &slot_mapping});
    EmuDevice dev = Device(num_cores);
    la::host::AppendKv(dev, pool, page_size, rows, slot_mapping);
}

// kv / extra_kv: a float pool (page size 0) or the uint8 data of an FP8 pool (page size > 0).
std::tuple<at::Tensor, at::Tensor> SparseAttention(at::Tensor q, at::Tensor kv, int64_t kv_page_size,
                                                   at::Tensor indices, c10::optional<at::Tensor> topk_length,
                                                   c10::optional<at::Tensor> extra_kv, int64_t extra_page_size,
                                                   c10::optional<at::Tensor> extra_indices,
                                                   c10::optional<at::Tensor> extra_topk_length,
                                                   c10::optional<at::Tensor> attn_sink, double softmax_scale,
                                                   bool out_f32, int64_t num_cores)
{
    CheckCpu({&q, &kv, &indices});
    EmuDevice dev = Device(num_cores);
    return la::host::SparseAttention(dev, q, kv, kv_page_size, indices, topk_length, extra_kv, extra_page_size,
                                     extra_indices, extra_topk_length, attn_sink, softmax_scale, out_f32);
}

void CompressKv(at::Tensor a, at::Tensor b, at::Tensor positions, at::Tensor token_rows, int64_t ratio, bool overlap,
                at::Tensor state, at::Tensor state_block_table, at::Tensor out, int64_t out_page_size,
                at::Tensor out_block_table, at::Tensor norm_weight, double eps, at::Tensor rope_inv_freq,
                int64_t num_cores)
{
    CheckCpu({&a, &b, &state, &out});
    EmuDevice dev = Device(num_cores);
    la::host::CompressKv(dev, a, b, positions, token_rows, ratio, overlap, state, state_block_table, out, out_page_size,
                         out_block_table, norm_weight, eps, rope_inv_freq);
}

at::Tensor CompressPool(at::Tensor a, at::Tensor b, int64_t ratio, bool overlap, int64_t num_cores)
{
    CheckCpu({&a, &b});
    EmuDevice dev = Device(num_cores);
    return la::host::CompressPool(dev, a, b, ratio, overlap);
}

std::vector<at::Tensor> Indexer(at::Tensor q, at::Tensor weights, at::Tensor index_k, at::Tensor visible_end,
                                int64_t topk, c10::optional<at::Tensor> block_table, c10::optional<at::Tensor> seq_ids,
                                bool return_slots, bool logits_mode, int64_t num_cores)
{
    CheckCpu({&q, &weights, &index_k});
    EmuDevice dev = Device(num_cores);
    return la::host::Indexer(dev, q, weights, index_k, visible_end, topk, block_table, seq_ids, return_slots,
                             logits_mode);
}

std::tuple<at::Tensor, at::Tensor> MergeAttentionStates(at::Tensor out_a, at::Tensor lse_a, at::Tensor out_b,
                                                        at::Tensor lse_b, int64_t num_cores)
{
    CheckCpu({&out_a, &lse_a, &out_b, &lse_b});
    EmuDevice dev = Device(num_cores);
    return la::host::MergeAttentionStates(dev, out_a, lse_a, out_b, lse_b);
}

at::Tensor ApplyAttentionSink(at::Tensor out, at::Tensor lse, at::Tensor attn_sink, int64_t num_cores)
{
    CheckCpu({&out, &lse, &attn_sink});
    EmuDevice dev = Device(num_cores);
    return la::host::ApplyAttentionSink(dev, out, lse, attn_sink);
}

// partial_out [T, S, H, D] fp32, partial_lse [T, S, H], attn_sink [H] or None, out_dtype: a DataTypeCode.
std::tuple<at::Tensor, at::Tensor> MergePartialStates(at::Tensor partial_out, at::Tensor partial_lse,
                                                      c10::optional<at::Tensor> attn_sink, int64_t out_dtype,
                                                      int64_t num_cores)
{
    CheckCpu({&partial_out, &partial_lse});
    if (attn_sink.has_value()) CheckCpu({&*attn_sink});
    EmuDevice dev = Device(num_cores);
    return la::host::MergePartialStates(dev, partial_out, partial_lse, attn_sink, out_dtype);
}

pybind11::dict MergePartialsTilingInfo(int64_t rows, int64_t H, int64_t S, int64_t D, int64_t dtype_code, bool has_sink,
                                       int64_t num_cores)
{
    const la::MergePartialsTiling t =
        la::host::MergePartialsTilingOf(rows, H, S, D, dtype_code, has_sink, Device(num_cores).VectorCores());
    pybind11::dict d;
    d["block_dim"] = t.blockDim;
    d["rows_per_core"] = t.rowsPerCore;
    d["batch_rows"] = t.batchRows;
    d["chunk_rows"] = t.chunkRows;
    d["col_tile"] = t.colTile;
    d["ub_bytes"] = t.ubBytes;
    d["max_partials"] = la::kMergePartialsMaxS;
    return d;
}

// mode: 0 merge, 1 sink; rows = T * H.
pybind11::dict CombineTilingInfo(int64_t mode, int64_t rows, int64_t H, int64_t D, int64_t dtype_code,
                                 int64_t num_cores)
{
    const la::CombineTiling t =
        la::host::CombineTilingOf(mode, rows, H, D, dtype_code, Device(num_cores).VectorCores());
    pybind11::dict d;
    d["block_dim"] = t.blockDim;
    d["rows_per_core"] = t.rowsPerCore;
    d["batch_rows"] = t.batchRows;
    d["chunk_rows"] = t.chunkRows;
    d["col_tile"] = t.colTile;
    d["sink_table_len"] = t.sinkTableLen;
    d["ub_bytes"] = t.ubBytes;
    return d;
}

// q of dtype_code over kv of kv_code (a DataTypeCode; 3: an FP8 pool) and a second stream of extra_code
// (-1: none); out_f32: the split-KV partials' fp32 out (keyword, default false).
pybind11::dict SparseAttentionTilingInfo(int64_t T, int64_t H, int64_t D, int64_t dtype_code, int64_t kv_code,
                                         int64_t extra_code, int64_t num_cores, bool out_f32)
{
    const la::SparseAttentionTiling t =
        la::host::SparseAttentionTilingOf(T, H, D, dtype_code, kv_code, extra_code, Device(num_cores).cores, out_f32);
    pybind11::dict d;
    d["dtype"] = t.dtype;
    d["out_f32"] = t.outF32;
    d["has_cvt"] = t.hasCvt;
    d["has_fp8"] = t.hasFp8;
    d["cvt_rows"] = t.cvtRows;
    d["block_dim"] = t.blockDim;
    d["heads_per_task"] = t.headsPerTask;
    d["head_groups"] = t.headGroups;
    d["k_tile"] = t.kTile;
    d["d_chunk"] = t.dChunk;
    d["block_keys"] = t.blockKeys;
    d["share_groups"] = t.shareGroups;
    d["share_cap"] = t.shareCap;
    d["gather_rows"] = t.gatherRows;
    d["ub_bytes"] = t.ubBytes;
    d["l1_bytes"] = t.l1Bytes;
    d["ws_per_core"] = t.wsPerCore;
    return d;
}

// The work counters of the emulated launches since the last call: [{kind, block_dim, cores: [{aic, group,
// ops, gm_read, gm_write (per pipe: S, V, M, MTE1, MTE2, MTE3, FIX), ub_read, ub_write, macs, fractals}]}].
pybind11::list TakeLaunchWork()
{
    static const char* kPipes[la::kEmuPipes] = {"S", "V", "M", "MTE1", "MTE2", "MTE3", "FIX"};
    auto per_pipe = [](const uint64_t* v) {
        pybind11::dict d;
        for (int p = 0; p < la::kEmuPipes; ++p) d[kPipes[p]] = v[p];
        return d;
    };
    pybind11::list launches;
    for (const la::EmuLaunchWork& w : la::TakeEmuLaunchWork()) {
        pybind11::list cores;
        for (const la::EmuCoreWork& c : w.cores) {
            pybind11::dict d;
            d["aic"] = c.aic;
            d["group"] = c.group;
            d["ops"] = per_pipe(c.ops);
            d["gm_read"] = per_pipe(c.gmRead);
            d["gm_write"] = per_pipe(c.gmWrite);
            d["ub_read"] = c.ubRead;
            d["ub_write"] = c.ubWrite;
            d["macs"] = c.macs;
            d["fractals"] = c.fractals;
            cores.append(d);
        }
        pybind11::dict l;
        l["kind"] = w.kind;
        l["block_dim"] = w.blockDim;
        l["cores"] = cores;
        launches.append(l);
    }
    return launches;
}

pybind11::dict CompressPoolTilingInfo(int64_t S, int64_t W, int64_t ratio, bool overlap, int64_t dtype_code,
                                      int64_t num_cores)
{
    const la::CompressPoolTiling t =
        la::host::CompressPoolTilingOf(S, W, ratio, overlap, dtype_code, Device(num_cores).VectorCores());
    pybind11::dict d;
    d["block_dim"] = t.blockDim;
    d["tile_dim"] = t.tileDim;
    d["num_tiles"] = t.numTiles;
    d["chunk_rows"] = t.chunkRows;
    d["num_tasks"] = t.numTasks;
    d["ub_bytes"] = t.ubBytes;
    return d;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m)
{
    m.doc() = "longattn Ascend C kernels on the CPU emulator (ascend_c/emu)";
    m.def("append_kv", &AppendKv, "append_kv (in place)");
    m.def("sparse_attention", &SparseAttention, "sparse_attention -> (out, lse)");
    m.def("compress_kv", &CompressKv, "compress_kv (in place: state, out)");
    m.def("compress_pool", &CompressPool, "compress_pool -> entries [S // ratio, d] fp32");
    m.def("indexer", &Indexer, "indexer_topk -> [indices, lengths] / indexer_logits -> [logits]");
    m.def("merge_attention_states", &MergeAttentionStates, "merge_attention_states -> (out, lse)");
    m.def("apply_attention_sink", &ApplyAttentionSink, "apply_attention_sink -> out");
    m.def("combine_tiling", &CombineTilingInfo, "tiling fields of a merge (mode 0) / sink (mode 1) call");
    m.def("merge_partial_states", &MergePartialStates, "merge_partial_states -> (out, lse)");
    m.def("merge_partials_tiling", &MergePartialsTilingInfo, "tiling fields of a merge_partial_states call");
    m.def("sparse_attention_tiling", &SparseAttentionTilingInfo, "tiling fields of a sparse_attention call",
          pybind11::arg("T"), pybind11::arg("H"), pybind11::arg("D"), pybind11::arg("dtype_code"),
          pybind11::arg("kv_code"), pybind11::arg("extra_code"), pybind11::arg("num_cores"), pybind11::kw_only(),
          pybind11::arg("out_f32") = false);
    m.def("compress_pool_tiling", &CompressPoolTilingInfo, "tiling fields of a compress_pool call");
    m.def("take_launch_work", &TakeLaunchWork, "work counters of the emulated launches since the last call");
}
