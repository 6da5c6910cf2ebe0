"""The ceilings' matmul size choice (bench/ceilings.py): a slow CPU dtype must not stall the run."""

import torch

from bench import ceilings


def test_cpu_matmul_size_shrinks_until_one_product_fits_the_budget():
    """No time to spend: the first size (256); all the time in the world: the requested size; below
    the first size: as asked."""
    cpu = torch.device("cpu")
    assert ceilings.matmul_size(cpu, torch.float32, 4096, call_s=0.0) == 256
    assert ceilings.matmul_size(cpu, torch.float32, 4096, call_s=1e9) == 4096
    assert ceilings.matmul_size(cpu, torch.float32, 128, call_s=0.0) == 128


def test_cpu_matmul_size_stops_where_the_next_product_would_exceed_the_budget(monkeypatch):
    """On a clock where an n^3 product takes (n / 512)^3 x 0.2 s (256: 0.025 s, 512: 0.2 s): with a 1 s
    budget 256 -> 512 (8 x 0.025 = 0.2 s fits), not 1,024 (8 x 0.2 = 1.6 s does not)."""
    clock = [0.0]

    def fake_matmul(a, b):
        clock[0] += (a.shape[0] / 512) ** 3 * 0.2
        return a

    monkeypatch.setattr(ceilings.time, "perf_counter", lambda: clock[0])
    monkeypatch.setattr(ceilings.torch, "matmul", fake_matmul)
    assert ceilings.matmul_size(torch.device("cpu"), torch.bfloat16, 4096, call_s=1.0) == 512
    assert ceilings.matmul_size(torch.device("cpu"), torch.bfloat16, 4096, call_s=1.6) == 1024


def test_accelerator_matmul_size_is_the_requested_one():
    assert ceilings.matmul_size(torch.device("cuda"), torch.bfloat16, 8192, call_s=0.0) == 8192
