"""The ceilings' matmul size choice (bench/ceilings.py): a slow CPU dtype must not stall the run."""

import torch

from bench import ceilings


def test_cpu_matmul_size_shrinks_until_one_product_fits_the_budget():
    """No time to spend: the first size (256); all the time in the world: the requested size; a budget
    of a second: a size between."""
    cpu = torch.device("cpu")
    assert ceilings.matmul_size(cpu, torch.float32, 4096, call_s=0.0) == 256
    assert ceilings.matmul_size(cpu, torch.float32, 4096, call_s=1e9) == 4096
    assert ceilings.matmul_size(cpu, torch.float32, 128, call_s=0.0) == 128  # below the floor: as asked
    n = ceilings.matmul_size(cpu, torch.float32, 4096, call_s=1.0)
    assert n in (256, 512, 1024, 2048, 4096)


def test_accelerator_matmul_size_is_the_requested_one():
    assert ceilings.matmul_size(torch.device("cuda"), torch.bfloat16, 8192, call_s=0.0) == 8192
