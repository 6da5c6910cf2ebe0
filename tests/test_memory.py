"""The reference's chunk budget: environment, process-wide and per-thread scoped values."""

import threading

import pytest
from longattn import memory


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "0", "-3", "lots"])
def test_bad_env_budget_names_the_variable(monkeypatch, value):
    monkeypatch.setenv("LONGATTN_CHUNK_MB", value)
    with pytest.raises(ValueError, match=f"LONGATTN_CHUNK_MB must be a .*number of MiB.*got '{value}'"):
        memory.chunk_budget_bytes()


def test_env_budget(monkeypatch):
    monkeypatch.setenv("LONGATTN_CHUNK_MB", "1.5")
    assert memory.chunk_budget_bytes() == 3 << 19


def test_scoped_budget_is_per_thread():
    """Two threads each inside their own ``chunk_budget`` see their own value the whole time (it was
    one global: a thread leaving its block reset the other's)."""
    seen = {}
    entered = threading.Barrier(2)
    left = threading.Barrier(2)

    def worker(name, budget, leave_first):
        with memory.chunk_budget(budget):
            entered.wait()
            if not leave_first:
                left.wait()  # the other thread has left its block
            seen[name] = memory.chunk_budget_bytes()
        if leave_first:
            left.wait()

    threads = [
        threading.Thread(target=worker, args=("a", 1000, True)),
        threading.Thread(target=worker, args=("b", 2000, False)),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert seen == {"a": 1000, "b": 2000}
    assert memory.chunk_budget_bytes() == memory.DEFAULT_CHUNK_BYTES


def test_nested_and_process_budgets():
    memory.set_chunk_budget(5000)
    try:
        with memory.chunk_budget(100):
            with memory.chunk_budget(7):
                assert memory.chunk_budget_bytes() == 7
            assert memory.chunk_budget_bytes() == 100
        assert memory.chunk_budget_bytes() == 5000
    finally:
        memory.set_chunk_budget(None)
    with pytest.raises(ValueError, match="> 0 bytes"):
        memory.set_chunk_budget(0)
    with pytest.raises(TypeError, match="int number of bytes"):
        memory.chunk_budget(1.5).__enter__()
