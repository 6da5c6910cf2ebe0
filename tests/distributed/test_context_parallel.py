"""Decode context parallelism on 2 and 4 gloo ranks (separate processes): top-k ids identical to one
device, attention within the fp32 bound of one device and identical on every rank; uneven shards,
ranks holding nothing, sequences shorter than the rank count; a failing rank raises on every rank."""

import pytest
import torch
from longattn.distributed import PageShards, decode_comm_bytes

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
