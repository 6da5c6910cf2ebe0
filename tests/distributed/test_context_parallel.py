"""Decode context parallelism on 2 and 4 gloo ranks (separate processes): top-k ids identical to one
device, attention within the fp32 bound of one device and identical on every rank; uneven shards,
ranks holding nothing, sequences shorter than the rank count; a failing rank raises on every rank."""

import pytest
import torch
from longattn.distributed import PageShards, TokenShards, decode_comm_bytes, prefill_comm_bytes

from tests.distributed import workers
from tests.distributed.ranks import run_ranks
from tests.helpers.device import CAN_RUN_TRITON, TRITON_SKIP_REASON

# Compressed entries per sequence: empty, shorter than one page, shorter than the rank count in
# pages, uneven (not a multiple of world * page), and long enough for several pages per rank.
LENGTHS = [0, 1, 5, 37, 70]


@pytest.mark.parametrize("world", [2, 4])
@pytest.mark.parametrize("integer_valued", [False, True], ids=["random", "ties"])
def test_csa_decode_equals_one_device(world, integer_valued):
    run_ranks(world, workers.csa_decode, 11 + world, 3, LENGTHS, 9, 6, integer_valued, None)


@pytest.mark.skipif(not CAN_RUN_TRITON, reason=TRITON_SKIP_REASON)
def test_csa_decode_on_triton():
    """The local ops and the merge on the Triton backend (interpreter on CPU): integer-valued index
    inputs make every backend's scores exact, so the ids must still equal one device's bit for bit."""
    run_ranks(2, workers.csa_decode, 17, 3, [0, 5, 23], 3, 5, True, "triton")


@pytest.mark.parametrize("integer_valued", [False, True], ids=["random", "ties"])
def test_csa_decode_fp8_index_keys_equals_one_device(integer_valued):
    """FP8 index-key pools (one device's and each rank's shard): the ranks rescore their local top-k
    from the pool's e4m3 values and scales, so the ids equal one device's over the FP8 pool."""
    run_ranks(2, workers.csa_decode, 13, 3, LENGTHS, 9, 6, integer_valued, None, True)


def test_csa_decode_topk_larger_than_any_shard():
    """topk 40 > every rank's share of a 70-entry sequence: the merge fills from all ranks."""
    run_ranks(2, workers.csa_decode, 5, 4, [70, 3], 4, 40, False, None)


@pytest.mark.parametrize("world", [2, 4])
def test_hca_decode_equals_one_device(world):
    run_ranks(world, workers.hca_decode, 21 + world, 2, LENGTHS, 7)


@pytest.mark.parametrize("how", ["bad_shape", "different_topk"])
def test_a_failing_rank_raises_on_every_rank(how):
    run_ranks(3, workers.failing_rank, how, timeout=120)


@pytest.mark.parametrize("world", [2, 3])
@pytest.mark.parametrize("kind", ["csa", "hca", "swa"])
def test_layer_over_sharded_caches_equals_one_device(kind, world):
    run_ranks(world, workers.layer_equals_one_device, kind, 3, 40 + world, "float32")


def test_layer_over_sharded_bf16_caches_equals_one_device():
    run_ranks(2, workers.layer_equals_one_device, "csa", 2, 7, "bfloat16")


@pytest.mark.parametrize("idx", [0, 1, 2], ids=["swa", "csa", "hca"])
def test_deepseek_v4_module_with_a_process_group_equals_one_device(idx):
    run_ranks(2, workers.module_equals_one_device, idx)


def test_swapped_transformers_model_generates_with_a_group():
    pytest.importorskip("transformers", reason="transformers is not installed (pip install longattn[transformers])")
    try:
        from transformers import DeepseekV4ForCausalLM  # noqa: F401
    except ImportError:
        pytest.skip("this transformers has no DeepSeek-V4")
    run_ranks(2, workers.swapped_generate_equals_one_device, timeout=600)


def test_layer_bad_argument_on_one_rank_writes_nothing_anywhere():
    run_ranks(2, workers.layer_bad_argument_on_one_rank, timeout=120)


# --- the layout, without processes ---------------------------------------------------------------
@pytest.mark.parametrize("world,page", [(1, 1), (2, 3), (4, 2), (3, 5)])
def test_page_shards_partition_every_entry_once(world, page):
    j = torch.arange(0, 200)
    owners = PageShards(world, 0, page).owner(j)
    for r in range(world):
        s = PageShards(world, r, page)
        local = s.to_local(j)
        mine = owners == r
        assert torch.equal(local >= 0, mine)
        assert torch.equal(s.to_global(local[mine]), j[mine])  # round trip
        assert torch.equal(local[mine], torch.arange(int(mine.sum())))  # contiguous local numbering
        for n in [0, 1, page - 1, page, world * page + 1, 199]:
            assert int(s.local_count(torch.tensor([n]))) == int((mine & (j < n)).sum()), (r, n)
    assert bool((PageShards(world, 0, page).owner(torch.tensor([-1, -5])) == -1).all())


def test_shard_pool_keeps_only_own_pages_and_invalid_ids():
    pool = torch.arange(6).float().view(6, 1, 1)
    bt = torch.tensor([[4, 0, 5, -1], [2, 9, 1, 3]], dtype=torch.int32)  # 9: outside the pool
    local, lbt = PageShards(2, 1, 1).shard_pool(pool, bt)
    assert lbt.tolist() == [[0, -1], [-1, 1]]  # columns 1 and 3: pages 0, -1 / 9, 3
    assert local.view(-1).tolist() == [0.0, 3.0]


def test_comm_bytes_model():
    b = decode_comm_bytes(world=8, tokens=1, topk=1024, heads=128, head_dim=512)
    assert b["topk_keys"] == 7 * 1024 * 8 and b["partials"] == 7 * 128 * (512 * 2 + 4)


# --- prefill: query tokens sharded ---------------------------------------------------------------------------
# Sequence lengths: empty, shorter than the rank count, chunks shorter than the halo (window 8, CSA
# blocks of 2 x 4, HCA blocks of 8), and uneven chunks longer than it.
PREFILL_LENGTHS = [0, 1, 3, 9, 37, 70]


@pytest.mark.parametrize("world", [2, 4])
@pytest.mark.parametrize("idx", [0, 1, 2], ids=["swa", "csa", "hca"])
def test_prefill_equals_one_device(world, idx):
    run_ranks(world, workers.prefill_equals_one_device, idx, PREFILL_LENGTHS, "float32")


def test_prefill_bf16_equals_one_device():
    run_ranks(3, workers.prefill_equals_one_device, 1, [5, 50], "bfloat16")


def test_prefill_bad_input_on_one_rank_raises_everywhere():
    run_ranks(3, workers.prefill_bad_input_on_one_rank, timeout=120)


@pytest.mark.parametrize("world", [1, 2, 3, 4])
@pytest.mark.parametrize("S", [0, 1, 7, 8, 100, 101])
def test_token_shards_partition_and_balance(world, S):
    """Every token on exactly one rank, each rank's rows in position order per chunk; the causal work
    (sum of positions + 1) of the ranks within S of each other (one token per chunk boundary's rounding),
    where contiguous blocks differ by about S^2 / world."""
    shards = [TokenShards(world, r, S) for r in range(world)]
    pos = torch.cat([s.positions for s in shards])
    assert sorted(pos.tolist()) == list(range(S))
    assert [s.count() for s in shards] == [len(s.positions) for s in shards]
    work = [int((s.positions + 1).sum()) for s in shards]
    assert max(work) - min(work) <= S, work
    if world > 1 and S >= 100:
        blocks = [sum(range(r * S // world + 1, (r + 1) * S // world + 1)) for r in range(world)]
        assert max(blocks) - min(blocks) > 10 * (max(work) - min(work) + 1)
    x = torch.arange(S * 2).view(S, 2)
    assert torch.equal(shards[-1].take(x)[:, 0], 2 * shards[-1].positions)


def test_token_shards_rejects_bad_arguments():
    with pytest.raises(ValueError, match="rank"):
        TokenShards(2, 2, 10)
    with pytest.raises(ValueError, match="num_tokens"):
        TokenShards(2, 0, -1)
    with pytest.raises(ValueError, match="num_tokens=10"):
        TokenShards(2, 0, 10).take(torch.zeros(9, 1))


def test_prefill_comm_bytes_model():
    b = prefill_comm_bytes(world=8, tokens=1 << 20, dim=7168, halo=127, ratio=4, entry_bytes=584, key_bytes=132)
    assert b["halo"] == 7 * 2 * 127 * 7168 * 2
    assert b["entries"] == (262144 - 32768) * 584 and b["index_keys"] == (262144 - 32768) * 132


@pytest.mark.parametrize("sharded", [True, False], ids=["page_sharded", "replicated"])
@pytest.mark.parametrize("idx", [0, 1, 2], ids=["swa", "csa", "hca"])
def test_prefill_fills_the_caches_for_decode(idx, sharded):
    """Query-sharded prefill that writes the paged caches, then decode: equals one device."""
    run_ranks(2, workers.prefill_then_decode_equals_one_device, idx, 45, 4, sharded, "float")


@pytest.mark.parametrize("S", [0, 2, 13])
def test_prefill_fills_fp8_caches_for_short_sequences(S):
    run_ranks(3, workers.prefill_then_decode_equals_one_device, 1, S, 2, True, "fp8")
