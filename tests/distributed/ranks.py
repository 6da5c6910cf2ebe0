"""Run a function on ``world`` gloo ranks in fresh processes (the multi-process CP tests).

``run_ranks(world, fn, *args)`` starts ``world`` spawned processes; each joins a gloo group (file
store, a 60 s collective timeout so a bug fails instead of hanging) and calls
``fn(rank, world, *args)``. An exception on any rank fails the caller with that rank's traceback; a
run longer than ``timeout`` kills every rank and fails. ``fn`` must be a module-level function (it is
pickled by name).
"""

from __future__ import annotations

import datetime
import os
import tempfile

import torch.multiprocessing as mp

COLLECTIVE_TIMEOUT_S = 60


def _entry(rank: int, world: int, store: str, fn, args) -> None:
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)  # world processes share the machine's cores
    dist.init_process_group(
        "gloo",
        init_method=f"file://{store}",
        rank=rank,
        world_size=world,
        timeout=datetime.timedelta(seconds=COLLECTIVE_TIMEOUT_S),
    )
    try:
        fn(rank, world, *args)
    finally:
        dist.destroy_process_group()


def run_ranks(world: int, fn, *args, timeout: float = 300.0) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        store = os.path.join(tmp, "store")
        ctx = mp.start_processes(_entry, args=(world, store, fn, args), nprocs=world, join=False, start_method="spawn")
        deadline = timeout
        waited = 0.0
        while not ctx.join(timeout=5):
            waited += 5
            if waited >= deadline:
                for p in ctx.processes:
                    if p.is_alive():
                        p.kill()
                raise TimeoutError(f"{world} ranks of {fn.__name__} did not finish within {timeout:.0f} s")
