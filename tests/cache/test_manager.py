"""CacheManager: page allocation, freeing, errors before any change, plans."""

import pytest
import torch
from longattn.cache import CacheError, CacheFullError, CacheManager, UnknownSequenceError


def manager(page_size=4, window_pages=20, comp_pages=10, state_pages=10, window=8, ratios=(4,)):
    return CacheManager(
        ratios=ratios,
        page_size=page_size,
        num_window_pages=window_pages,
        num_compressed_pages={r: comp_pages for r in ratios},
        num_state_pages={r: state_pages for r in ratios},
        window=window,
    )


def snapshot(m):
    return (
        m.window_alloc.num_free,
        {r: a.num_free for r, a in m.compressed_alloc.items()},
        {r: a.num_free for r, a in m.state_alloc.items()},
        {s: m.seq_len(s) for s in list(m._seqs)},
    )


@pytest.mark.parametrize("page_size", [1, 3, 16, 64, 256])
def test_pages_follow_the_window_and_entries(page_size):
    m = manager(page_size=page_size, window_pages=200, comp_pages=200, state_pages=40)
    m.add_sequence("s")
    ring_pages = -(-8 // min(page_size, 8))
    assert m.state_alloc[4].num_free == 40 - ring_pages
    plan = m.plan(["s"], [0, 100])
    used = 200 - m.window_alloc.num_free
    assert used == -(-100 // page_size)  # a prefill chunk holds all its tokens
    assert 200 - m.compressed_alloc[4].num_free == -(-25 // page_size)
    assert plan.window_indices.shape == (100, 8) and plan.window_slots.shape == (100,)
    assert torch.all(plan.window_indices[0, :7] == -1) and torch.all(plan.window_indices[7:] >= 0)
    assert torch.equal(plan.window_indices[:, -1], plan.window_slots)  # the token itself is the newest key
    assert plan.compressed[4].visible_end.tolist() == [(p + 1) // 4 for p in range(100)]
    for _ in range(30):  # decode: window pages are recycled, at most ceil(8 / page) + 1 held
        m.plan(["s"], [0, 1])
        assert 200 - m.window_alloc.num_free <= -(-8 // page_size) + 1
    m.free_sequence("s")
    assert (m.window_alloc.num_free, m.compressed_alloc[4].num_free, m.state_alloc[4].num_free) == (200, 200, 40)


def test_window_slots_are_consistent_across_steps():
    """A token's slot stays where it was written until its page is recycled."""
    m = manager(page_size=3, window_pages=50)
    m.add_sequence(0)
    p1 = m.plan([0], [0, 5])
    p2 = m.plan([0], [0, 2])
    # token at position 5 sees positions 0..5 ; their slots are those given when they were written
    assert p2.window_indices[0, -6:].tolist() == p1.window_slots.tolist() + [p2.window_slots[0].item()]


def test_cache_full_changes_nothing():
    m = manager(window_pages=4, comp_pages=2)
    m.add_sequence("a")
    m.add_sequence("b")
    m.plan(["a"], [0, 4])
    before = snapshot(m)
    with pytest.raises(CacheFullError, match="window pool: need 5 free pages, only 3 of 4 are free"):
        m.plan(["a", "b"], [0, 1, 17])
    assert snapshot(m) == before
    with pytest.raises(CacheFullError, match=r"compressed pool \(ratio 4\)"):
        m2 = manager(window_pages=100, comp_pages=1)
        m2.add_sequence(1)
        m2.plan([1], [0, 17])  # 4 entries -> 1 page of 4: fine ... then 5 entries
        m2.plan([1], [0, 4])
    with pytest.raises(CacheFullError, match="compressor state pool"):
        m3 = manager(state_pages=2)
        m3.add_sequence(1)
        m3.add_sequence(2)


def test_sequence_errors():
    m = manager()
    m.add_sequence("a")
    with pytest.raises(CacheError, match="already in the cache"):
        m.add_sequence("a")
    with pytest.raises(UnknownSequenceError, match="'zz' is not in the cache"):
        m.plan(["zz"], [0, 1])
    m.free_sequence("a")
    with pytest.raises(UnknownSequenceError, match="never added, or freed"):
        m.free_sequence("a")  # double free
    with pytest.raises(UnknownSequenceError):
        m.seq_len("a")


def test_plan_input_errors_change_nothing():
    m = manager(window_pages=40)
    m.add_sequence("a")
    m.add_sequence("b")
    m.plan(["a", "b"], [0, 3, 5])
    before = snapshot(m)
    with pytest.raises(
        ValueError, match=r"positions of sequence 'b' must continue at 2 .*token 2 has position 3, expected 2"
    ):
        m.plan(["a", "b"], [0, 2, 3], positions=torch.tensor([3, 4, 3]))  # b skips
    with pytest.raises(ValueError, match=r"token 0 has position 2, expected 3"):
        m.plan(["a"], [0, 1], positions=torch.tensor([2]))  # a goes backwards
    with pytest.raises(ValueError, match=r"`cu_seqlens` must be \[B\+1\] = \[3\]"):
        m.plan(["a", "b"], [0, 3])
    with pytest.raises(ValueError, match="never decrease"):
        m.plan(["a", "b"], [0, 3, 2])
    with pytest.raises(ValueError, match=r"`positions` must be \[T\] = \[4\]"):
        m.plan(["a", "b"], [0, 3, 4], positions=torch.arange(5))
    with pytest.raises(CacheError, match="appears twice"):
        m.plan(["a", "a"], [0, 1, 2])
    assert snapshot(m) == before
    plan = m.plan(["b", "a"], [0, 1, 3], positions=torch.tensor([2, 3, 4]))
    assert plan.positions.tolist() == [2, 3, 4] and plan.token_rows.tolist() == [0, 1, 1]


def test_for_layers_sizes_pools():
    from longattn.configs import V4_FLASH

    m = CacheManager.for_layers(
        [V4_FLASH.layer(i) for i in (0, 2, 3)], max_seqs=2, max_context=1 << 20, max_step_tokens=512, page_size=64
    )
    assert m.ratios == (4, 128)
    assert m.compressed_alloc[4].num_pages == 2 * 4096 and m.compressed_alloc[128].num_pages == 2 * 128
    for s in range(2):
        m.add_sequence(s)
    m.plan([0, 1], [0, 256, 512])


@pytest.mark.parametrize(
    "cu",
    [[0, 1.5, 3], torch.tensor([0.0, 2.0, 3.0]), [False, True, True], torch.tensor([0, 1, 2], dtype=torch.bool)],
    ids=["fraction", "integral floats", "bool list", "bool tensor"],
)
def test_plan_refuses_non_integer_cu_seqlens(cu):
    m = CacheManager(ratios=(4,), page_size=4, num_window_pages=16, num_compressed_pages={4: 8}, num_state_pages={4: 8})
    m.add_sequence("a")
    m.add_sequence("b")
    with pytest.raises(TypeError, match="plan: `cu_seqlens` must hold integers"):
        m.plan(["a", "b"], cu)
    assert m.seq_len("a") == 0 and m.seq_len("b") == 0
    with pytest.raises(TypeError, match="plan: `positions` must hold integers"):
        m.plan(["a", "b"], [0, 1, 2], positions=[0.0, 0.0])


def test_plan_prefilled_takes_tail_window_pages_and_every_entry_page():
    """A context-parallel prefill's plan: the tail's positions, window pages for the tail only (a
    1,000-token prefill takes the pages of its last positions, not 250), compressed pages for all 250
    entries; a refused call changes nothing."""
    m = manager(page_size=4, window_pages=6, comp_pages=70, state_pages=2, window=8)
    m.add_sequence("s")
    before = snapshot(m)
    with pytest.raises(ValueError, match=r"`tail` must be in \[8, num_tokens=1000\]"):
        m.plan_prefilled("s", 1000, 7)
    with pytest.raises(UnknownSequenceError):
        m.plan_prefilled("t", 10, 8)
    with pytest.raises(CacheFullError):
        m.plan_prefilled("s", 1200, 8)  # 300 entries: 75 pages > 70
    assert snapshot(m) == before
    plan = m.plan_prefilled("s", 1000, 8)
    assert plan.positions.tolist() == list(range(992, 1000))
    assert m.seq_len("s") == 1000
    assert sorted(m._seqs["s"].window_pages) == [246, 247, 248, 249]  # positions 985..999
    assert len(m._seqs["s"].compressed_pages[4]) == 250 // 4 + 1
    with pytest.raises(CacheError, match="already holds 1000 tokens"):
        m.plan_prefilled("s", 10, 8)
