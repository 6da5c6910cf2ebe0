"""LONGATTN_* variables: a malformed value raises ValueError naming the variable and the expected
form; valid values are used (README.md, "Environment variables")."""

import pytest
import torch

from tests.helpers.device import HAS_TRITON

BAD = ["", "x", "0", "-3", "2.5", "4,4", "a,b"]


@pytest.mark.parametrize("raw", BAD[1:])
def test_ascend_sim_cores(monkeypatch, raw):
    from longattn.backends import ascend_sim

    monkeypatch.setenv("LONGATTN_ASCEND_SIM_CORES", raw)
    with pytest.raises(ValueError, match="LONGATTN_ASCEND_SIM_CORES must be an integer >= 1"):
        ascend_sim.num_cores()
    monkeypatch.setenv("LONGATTN_ASCEND_SIM_CORES", "3")
    assert ascend_sim.num_cores() == 3
    monkeypatch.setenv("LONGATTN_ASCEND_SIM_CORES", "")
    assert ascend_sim.num_cores() == ascend_sim.DEFAULT_CORES


@pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed")
@pytest.mark.parametrize("raw", ["1", "16,x,4,1", "16,16,0,1", "16,16,4,1,9"])
def test_triton_tile_overrides(monkeypatch, raw):
    from longattn.ops.compress import triton_compress
    from longattn.ops.indexer import triton_indexer
    from longattn.ops.sparse_attention import triton_sparse_attention

    cpu = torch.device("cpu")
    calls = {
        "LONGATTN_TRITON_SPARSE_CFG": lambda: triton_sparse_attention.default_config(16, 64, torch.float32, cpu),
        "LONGATTN_TRITON_INDEXER_CFG": lambda: triton_indexer.default_config(16, 64, cpu),
        "LONGATTN_TRITON_COMPRESS_CFG": lambda: triton_compress.default_config(64, 4, 2, cpu),
    }
    for name, call in calls.items():
        monkeypatch.setenv(name, raw)
        with pytest.raises(ValueError, match=name):
            call()
        monkeypatch.delenv(name)
    monkeypatch.setenv("LONGATTN_TRITON_SPARSE_CFG", "32,16,8,2")
    assert calls["LONGATTN_TRITON_SPARSE_CFG"]() == dict(BLOCK_H=32, BLOCK_N=16, num_warps=8, num_stages=2)


def test_npu_library_is_found_in_the_build_dir(monkeypatch, tmp_path):
    from longattn.backends import ascend

    monkeypatch.delenv("LONGATTN_ASCEND_NPU_LIB", raising=False)
    (tmp_path / ascend.LIB_NAME).write_bytes(b"")
    monkeypatch.setenv("LONGATTN_NPU_BUILD_DIR", str(tmp_path))
    assert ascend.library_path() == tmp_path / ascend.LIB_NAME
