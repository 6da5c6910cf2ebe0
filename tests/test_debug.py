import pytest
import torch
from longattn import debug


def test_check_indices_reports_offenders():
    idx = torch.tensor([[0, -1, 5, 9], [-3, 2, 1, 4]], dtype=torch.int32)
    r = debug.check_indices(idx, torch.zeros(3, 2, 8))  # paged pool: 6 slots
    assert (r.num_slots, r.counted, r.padding, r.negative, r.out_of_range) == (6, 8, 1, 1, 1)
    assert not r.ok and (0, 3, 9) in r.examples and (1, 0, -3) in r.examples
    assert "first offending" in str(r)
    with pytest.raises(ValueError, match="1 negative"):
        debug.check_indices(idx, 6, raise_on_error=True)


def test_check_indices_respects_topk_length():
    idx = torch.tensor([[0, 99], [1, 2]])
    r = debug.check_indices(idx, 10, topk_length=torch.tensor([1, 2]))
    assert r.ok and r.counted == 3


def test_check_block_table():
    assert not debug.check_block_table(torch.tensor([[0, 1, 7]]), 4).ok
    assert debug.check_block_table(torch.tensor([[0, 1, -1]]), 4).ok
