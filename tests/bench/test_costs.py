"""The FLOP / byte models on hand-counted cases, and the counts the builders feed them."""

import pytest
import torch

from bench import cases, costs


def test_sparse_attention_cost_hand_counted():
    # T=2 tokens, H=3 heads, D=4, 5 keys in all (5 distinct rows), bf16 pool and q, 4 index columns, one
    # lengths vector: FLOPs 4*3*4*5 = 240; bytes: rows 5*4*2 = 40, q+out 2*2*3*4*2 = 96,
    # indices 4*2*4 = 32, lengths 4*2 = 8, lse 4*2*3 = 24 -> 200.
    c = costs.sparse_attention_cost(T=2, H=3, D=4, keys=5, unique_rows=5, kv_elt=2, q_elt=2, index_cols=4, n_lengths=1)
    assert c.flops == 240
    assert c.bytes == 200
    assert c.terms["kv_rows"]["bytes"] == 40 and c.terms["qk_pv"]["flops"] == 240
    assert c.intensity == pytest.approx(1.2)


def test_indexer_cost_hand_counted():
    # T=1, Hi=2, Di=3, 10 visible entries, paged (B=1, 3 pages), topk 4:
    # FLOPs (2*3+2)*2*10 = 160; bytes: keys 10*3*2 = 60, q 1*2*3*2 = 12, weights 4*1*2 = 8,
    # visible_end 4 + block table 4*1*3 = 12 + seq ids 4 = 20, indices 4*1*4 = 16 + lengths 4 = 20 -> 120.
    c = costs.indexer_topk_cost(T=1, Hi=2, Di=3, entries=10, unique_entries=10, k_elt=2, q_elt=2, topk=4, B=1,
                                max_pages=3)  # fmt: skip
    assert c.flops == 160
    assert c.bytes == 120


def test_merge_and_compress_cost_hand_counted():
    m = costs.merge_cost(T=2, H=2, D=4, elt=2)
    assert m.flops == 3 * 16 and m.bytes == 3 * 16 * 2 + 3 * 4 * 4
    # overlap, ratio 2, d 3, S 5 tokens -> 2 entries, 4 slots each: FLOPs 5*2*3*4 = 120;
    # inputs 2 tensors * 4 tokens * 6 channels * 4 B = 192, entries 2*3*4 = 24.
    c = costs.compress_pool_cost(S=5, ratio=2, d=3, overlap=True, in_elt=4)
    assert c.flops == 120 and c.bytes == 192 + 24


def test_cost_sum_and_floors():
    a = costs.Cost(100.0, 10.0, "a", {"x": {"flops": 100.0, "bytes": 10.0}})
    b = costs.Cost(1.0, 1000.0, "b", {"x": {"flops": 1.0, "bytes": 1000.0}})
    s = a + b
    assert (s.flops, s.bytes) == (101.0, 1010.0) and set(s.terms) == {"x", "x#2"}
    f = costs.floors(s, bandwidth=1000.0, peak_flops=10.0)  # memory 1.01 s, compute 10.1 s
    assert f["bound"] == "compute" and f["floor_s"] == pytest.approx(10.1)
    f = costs.floors(s, bandwidth=100.0, peak_flops=1e6)
    assert f["bound"] == "memory" and f["floor_s"] == pytest.approx(10.1)
    assert costs.floors(s, None, None)["bound"] is None


def test_v4_flash_1m_decode_step_matches_the_anchor_arithmetic():
    """docs/deepseek-v4-attention.md section 10: the indexer reads all 262,144 keys (64 MiB in bf16),
    attention 640 rows."""
    case = cases.REGISTRY["csa_layer.decode"].case(preset="v4-flash", context=1 << 20, batch=1, page_size=64,
                                                   dtype="bf16")  # fmt: skip
    stats = {"T": 1, "entries": 262144, "unique_entries": 262144, "k_elt": 2, "iq_elt": 2, "B": 1, "max_pages": 4096,
             "keys": 640, "unique_rows": 640, "index_cols": 640, "n_lengths": 1, "kv_elt": 2, "q_elt": 2}  # fmt: skip
    c = case.cost(stats)
    assert c.terms["index_keys"]["bytes"] == 262144 * 128 * 2 == 64 << 20
    assert c.terms["kv_rows"]["bytes"] == 640 * 512 * 2
    assert c.terms["scores"]["flops"] == 258 * 64 * 262144
    assert c.terms["qk_pv"]["flops"] == 4 * 64 * 512 * 640
    # ~124 FLOP/B for the indexer with 132-B FP8 keys; bf16 keys halve it: ~64 FLOP/B, memory-bound on GPUs
    assert 60 < c.terms["scores"]["flops"] / c.terms["index_keys"]["bytes"] < 70


def test_builders_count_decode_keys_exactly():
    case = cases.REGISTRY["csa_layer.decode"].case(preset="v4-flash", context=8192, batch=2, page_size=64,
                                                   dtype="bf16")  # fmt: skip
    s = case.build(torch.device("cpu")).stats
    assert s["keys"] == 2 * (128 + 512) and s["unique_rows"] == s["keys"]
    assert s["entries"] == 2 * 2048 and s["unique_entries"] == 2 * 2048
    assert s["max_pages"] == 2048 // 64


def test_builders_count_prefill_union_exactly():
    # HCA prefill, context 1024, chunk 64: tokens p = 960..1023. Window: 128 keys each, rows 960-127..1023
    # = 191 distinct. Compressed: (p+1)//128 = 7 visible entries for 63 tokens and 8 for the last: 449 keys,
    # 8 distinct entries.
    case = cases.REGISTRY["sparse_attention.prefill"].case(preset="v4-flash", kind="hca", context=1024, chunk=64,
                                                           page_size=16, dtype="bf16")  # fmt: skip
    s = case.build(torch.device("cpu")).stats
    assert s["keys"] == 64 * 128 + 63 * 7 + 8
    assert s["unique_rows"] == 191 + 8
    assert s["index_cols"] == 128 + 8


def test_append_kv_cost_hand_counted():
    # T=3 rows of D=4 bf16 values into 10-byte rows through int32 slots: 3*4*2 + 3*10 + 3*4 = 66 B, 0 FLOP.
    c = costs.append_kv_cost(T=3, D=4, src_elt=2, row_bytes=10, slot_elt=4)
    assert c.flops == 0 and c.bytes == 66
    assert c.terms["rows_written"]["bytes"] == 30
    # the FP8 record: 584 B per row written
    assert costs.append_kv_cost(T=1, D=512, src_elt=2, row_bytes=584).bytes == 1024 + 584 + 4


def test_compress_kv_cost_hand_counted():
    # d=4, ratio 2 with overlap (c=2, ring 4), one emission reading 3 ring (position, half) pairs, one ring
    # row written, bf16 inputs, 8-byte entries, rope_dim 2, B=1 with one ring page:
    # FLOPs 5*2*2*4 = 80 (pool) + 4*4 + 3*2 = 22 (norm, rope) -> 102;
    # bytes: inputs 2*1*2*4*2 = 32, ring read 3*2*4*4 = 96, ring write 1*2*2*4*4 = 64, entry 8,
    # metadata 12*1 + 4*1*1 + 4*1 + 4*4 + 2*2 = 40 -> 240.
    c = costs.compress_kv_cost(T=1, d=4, ratio=2, overlap=True, emissions=1, ring_read_pairs=3, ring_rows_written=1,
                               in_elt=2, row_bytes=8, rope_dim=2, B=1, ring_pages=1)  # fmt: skip
    assert c.flops == 102 and c.bytes == 240
    assert c.terms["ring_read"]["bytes"] == 96 and c.terms["pool"]["flops"] == 80
    # no emission: only the inputs, the ring write and the metadata
    c = costs.compress_kv_cost(T=1, d=4, ratio=2, overlap=True, emissions=0, ring_read_pairs=0, ring_rows_written=1,
                               in_elt=2, row_bytes=8, rope_dim=2, B=1, ring_pages=1)  # fmt: skip
    assert c.flops == 0 and c.bytes == 32 + 64 + (12 + 4 + 16 + 4)


def test_plan_cost_is_the_metadata_bytes():
    c = costs.plan_cost(tensor_bytes={"positions": 8.0, "window_indices": 512.0})
    assert c.flops == 0 and c.bytes == 520 and set(c.terms) == {"positions", "window_indices"}


def test_sparse_attention_cost_counts_fp8_records():
    c = costs.sparse_attention_cost(T=1, H=1, D=512, keys=2, unique_rows=2, kv_elt=1, q_elt=2, index_cols=2,
                                    kv_row_bytes=584)  # fmt: skip
    assert c.terms["kv_rows"]["bytes"] == 2 * 584


@pytest.mark.parametrize(
    "positions,rows,ratio,overlap,expected",
    [
        # decode at p=7, CSA (ratio 4, ring 8): positions 0..3 half A (previous block), 4..6 half B
        ([7], [0], 4, True, (1, 7, 1)),
        # two sequences, each its own run
        ([7, 7], [0, 1], 4, True, (2, 14, 2)),
        # no emission: the ring is only written
        ([6], [0], 4, True, (0, 0, 1)),
        # HCA (ratio 128, no overlap) decode at p=127: the 127 earlier positions
        ([127], [0], 128, False, (1, 127, 1)),
        # chunk 8..15: emission 11 needs 4..7 (half A), emission 15 lies inside the chunk; ring 8 rows written
        (list(range(8, 16)), [0] * 8, 4, True, (2, 4, 8)),
        # chunk 6..13: emission 7 needs 0..3 (A) + 4, 5 (B); emission 11 needs 4, 5 (A): 8 pairs
        (list(range(6, 14)), [0] * 8, 4, True, (2, 8, 8)),
        # a short chunk at the start of a sequence: positions < 0 are absent
        ([0, 1, 2, 3], [0] * 4, 4, True, (1, 0, 4)),
    ],
)  # fmt: skip
def test_compressor_counts_hand_counted(positions, rows, ratio, overlap, expected):
    from bench.cases_cache import compressor_counts

    c = compressor_counts(positions, rows, ratio, overlap)
    assert (c["emissions"], c["ring_read_pairs"], c["ring_rows_written"]) == expected


def test_hybrid_csa_1m_decode_step_cost_adds_its_parts():
    """One V4-Flash CSA layer decode at 1M: the indexer keys (64 MiB) dominate; the compressors read 7
    ring half-rows each (28 KiB at d=512, 7 KiB at d=128); attention 640 rows of 1 KiB."""
    case = cases.REGISTRY["hybrid_attention.csa.decode"].case(preset="v4-flash", context=1 << 20, batch=1,
                                                              page_size=64, dtype="bf16")  # fmt: skip
    stats = {"T": 1, "B": 1, "src_elt": 2, "q_elt": 2, "slot_elt": 4, "kv_elt": 2, "kv_row_bytes": 1024,
             "entries": 262144, "unique_entries": 262144, "k_elt": 2, "iq_elt": 2, "max_pages": 4096, "keys": 640,
             "unique_rows": 640, "index_cols": 640, "n_lengths": 1, "emissions": 1, "ring_read_pairs": 7,
             "ring_rows_written": 1, "ring_pages": 1}  # fmt: skip
    c = case.cost(stats)
    t = c.terms
    assert t["indexer.index_keys"]["bytes"] == 64 << 20
    assert t["attention.kv_rows"]["bytes"] == 640 * 1024
    assert t["compress.ring_read"]["bytes"] == 7 * 2 * 512 * 4
    assert t["index_compress.ring_read"]["bytes"] == 7 * 2 * 128 * 4
    assert t["append.rows_written"]["bytes"] == 1024
    assert t["compress.pool"]["flops"] == 5 * 8 * 512 and t["index_compress.pool"]["flops"] == 5 * 8 * 128
    assert c.flops == pytest.approx(sum(v["flops"] for v in t.values()))
    assert c.bytes == pytest.approx(sum(v["bytes"] for v in t.values()))
    # the SWA layer: append + window attention only
    swa = cases.REGISTRY["hybrid_attention.swa.decode"].case(preset="v4-flash", context=1 << 17, batch=1,
                                                             page_size=64, dtype="bf16")  # fmt: skip
    s = {"T": 1, "B": 1, "src_elt": 2, "q_elt": 2, "slot_elt": 4, "kv_elt": 2, "kv_row_bytes": 1024, "keys": 128,
         "unique_rows": 128, "index_cols": 128, "n_lengths": 0}  # fmt: skip
    c = swa.cost(s)
    assert c.flops == 4 * 64 * 512 * 128
    assert c.bytes == (1024 + 1024 + 4) + (128 * 1024 + 2 * 64 * 512 * 2 + 4 * 128 + 4 * 64)
