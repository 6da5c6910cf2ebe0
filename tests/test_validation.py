"""Bad input raises ValueError/TypeError naming the op, the argument, the expectation and the value."""

import math

import longattn
import pytest
import torch

T, H, D, N, K = 4, 3, 16, 20, 6


def good():
    return dict(q=torch.randn(T, H, D), kv=torch.randn(N, D), indices=torch.zeros(T, K, dtype=torch.int32))


BAD_SPARSE = [
    # (override, exception, words that must appear in the message)
    (dict(q=torch.randn(T, D)), ValueError, ["sparse_attention", "`q`", "3-D", "[T, H, D]", "[4, 16]"]),
    (dict(q=torch.randn(T, H, D).int()), TypeError, ["`q`", "float32 or bfloat16 or float16", "int32"]),
    (dict(kv=torch.randn(N, D + 1)), ValueError, ["`kv`", "dim 1 must be 16", "got 17"]),
    (dict(kv=torch.randn(2, 3, 4, D)), ValueError, ["`kv`", "4-D"]),
    (dict(kv=[1, 2]), TypeError, ["`kv`", "list"]),
    (dict(indices=torch.zeros(T, K)), TypeError, ["`indices`", "int32 or int64", "float32"]),
    (dict(indices=torch.zeros(T + 1, K, dtype=torch.int32)), ValueError, ["`indices`", "dim 0 must be 4", "got 5"]),
    (dict(indices=torch.zeros(T, dtype=torch.int32)), ValueError, ["`indices`", "2-D", "[T, K]"]),
    (dict(topk_length=torch.zeros(T + 2, dtype=torch.int32)), ValueError, ["`topk_length`", "dim 0 must be 4"]),
    (dict(topk_length=torch.zeros(T)), TypeError, ["`topk_length`", "int32 or int64"]),
    (dict(attn_sink=torch.zeros(H + 1)), ValueError, ["`attn_sink`", "dim 0 must be 3", "got 4"]),
    (dict(softmax_scale=float("nan")), ValueError, ["`softmax_scale`", "finite", "nan"]),
    (dict(softmax_scale=math.inf), ValueError, ["`softmax_scale`", "finite", "inf"]),
    (dict(softmax_scale="0.1"), TypeError, ["`softmax_scale`", "str"]),
    (dict(extra_kv=torch.randn(5, D)), ValueError, ["`extra_kv` and `extra_indices`"]),
    (dict(extra_indices=torch.zeros(T, 2, dtype=torch.int32)), ValueError, ["`extra_kv` and `extra_indices`"]),
    (
        dict(extra_kv=torch.randn(5, D), extra_indices=torch.zeros(T - 1, 2, dtype=torch.int32)),
        ValueError,
        ["`extra_indices`", "dim 0 must be 4", "got 3"],
    ),
    (dict(extra_topk_length=torch.zeros(T, dtype=torch.int32)), ValueError, ["`extra_topk_length` needs"]),
    (dict(q=torch.randn(T, 0, D)), ValueError, ["H >= 1"]),
    (dict(kv=torch.randn(N, D, device="meta")), ValueError, ["one device", "`q` is on cpu", "`kv` is on meta"]),
    (dict(kv=torch.randn(4, 5, D)[:, ::2]), ValueError, ["viewable"]),
]


@pytest.mark.parametrize("override,exc,words", BAD_SPARSE, ids=lambda x: None)
def test_sparse_attention_bad_input(override, exc, words):
    args = good()
    args.update(override)
    with pytest.raises(exc) as info:
        longattn.sparse_attention(**args)
    for w in words:
        assert w in str(info.value), f"{w!r} not in {str(info.value)!r}"


def test_out_of_range_indices_are_not_errors():
    args = good()
    args["indices"] = torch.tensor([[-1, N, 10**9, -7, 0, 1]] * T, dtype=torch.int32)
    longattn.sparse_attention(**args)


def idx_good():
    return dict(
        q=torch.randn(T, 2, 8), weights=torch.randn(T, 2), index_k=torch.randn(30, 8), visible_end=torch.full((T,), 30)
    )


BAD_INDEXER = [
    (dict(q=torch.randn(T, 8)), ValueError, ["indexer_topk", "`q`", "3-D"]),
    (dict(weights=torch.randn(T, 3)), ValueError, ["`weights`", "[4, 2]", "[4, 3]"]),
    (dict(weights=torch.ones(T, 2, dtype=torch.int64)), TypeError, ["`weights`", "int64"]),
    (dict(index_k=torch.randn(30, 9)), ValueError, ["`index_k`", "dim 1 must be 8", "got 9"]),
    (dict(visible_end=torch.full((T,), 3.0)), TypeError, ["`visible_end`", "int32 or int64", "float32"]),
    (dict(visible_end=torch.full((T + 1,), 3)), ValueError, ["`visible_end`", "dim 0 must be 4"]),
    (dict(topk=0), ValueError, ["`topk`", "> 0", "got 0"]),
    (dict(topk=-3), ValueError, ["`topk`", "> 0", "got -3"]),
    (dict(topk=2.5), TypeError, ["`topk`", "int", "float"]),
    (dict(block_table=torch.zeros(1, 2, dtype=torch.int32)), ValueError, ["`block_table` and `seq_ids`"]),
    (
        dict(block_table=torch.zeros(1, 2, dtype=torch.int32), seq_ids=torch.zeros(T, dtype=torch.int32)),
        ValueError,
        ["`index_k`", "3-D", "[num_pages, page_size, Di]"],
    ),
    (
        dict(
            index_k=torch.randn(3, 4, 8),
            block_table=torch.zeros(1, 2),
            seq_ids=torch.zeros(T, dtype=torch.int32),
        ),
        TypeError,
        ["`block_table`", "int32 or int64"],
    ),
    (
        dict(
            index_k=torch.randn(3, 4, 8),
            block_table=torch.zeros(1, 2, dtype=torch.int32),
            seq_ids=torch.zeros(T - 1, dtype=torch.int32),
        ),
        ValueError,
        ["`seq_ids`", "dim 0 must be 4"],
    ),
    (dict(return_slots=1), TypeError, ["`return_slots`", "bool"]),
]


@pytest.mark.parametrize("override,exc,words", BAD_INDEXER, ids=lambda x: None)
def test_indexer_bad_input(override, exc, words):
    args = dict(idx_good(), topk=4)
    args.update(override)
    with pytest.raises(exc) as info:
        longattn.indexer_topk(**args)
    for w in words:
        assert w in str(info.value), f"{w!r} not in {str(info.value)!r}"


def test_merge_and_sink_bad_input():
    o, lse = torch.randn(T, H, D), torch.randn(T, H)
    with pytest.raises(ValueError, match=r"merge_attention_states: `out_b` has shape \[4, 3, 15\]"):
        longattn.merge_attention_states(o, lse, torch.randn(T, H, D - 1), lse)
    with pytest.raises(ValueError, match=r"`lse_b` must be \[T, H\] = \[4, 3\]"):
        longattn.merge_attention_states(o, lse, o, torch.randn(T, H + 1))
    with pytest.raises(TypeError, match=r"`out_b` has dtype"):
        longattn.merge_attention_states(o, lse, o.bfloat16(), lse)
    with pytest.raises(ValueError, match=r"apply_attention_sink: `attn_sink` has shape \[2\]"):
        longattn.apply_attention_sink(o, lse, torch.zeros(2))


def test_compress_pool_bad_input():
    a = torch.randn(8, 6)
    with pytest.raises(ValueError, match=r"compress_pool: `b` must have the shape of `a` \[8, 6\], got \[8, 4\]"):
        longattn.compress_pool(a, torch.randn(8, 4), 4, True)
    with pytest.raises(ValueError, match=r"`ratio` must be > 0, got 0"):
        longattn.compress_pool(a, a, 0, False)
    with pytest.raises(ValueError, match=r"even width"):
        longattn.compress_pool(torch.randn(8, 5), torch.randn(8, 5), 4, True)
    with pytest.raises(TypeError, match=r"`overlap` must be a bool"):
        longattn.compress_pool(a, a, 4, "yes")
