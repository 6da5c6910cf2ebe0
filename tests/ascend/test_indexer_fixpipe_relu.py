"""The Ascend C indexer's ReLU in the Fixpipe (ascend_c/indexer_topk/README.md, "NaN scores").

Whether the Fixpipe's ReLU (``FixpipeParamsV220::reluEn``) keeps a NaN is undocumented, so every launch
probes it (the AIC Fixpipes a tile of NaNs made every way a score can become NaN) and takes the fast path
(relu in the Fixpipe, no Compare / Relu / Select on the AIVs) only where it keeps them. The emulator plays
three hardware behaviours (``LONGATTN_EMU_FIXPIPE_RELU_NAN``: ``keep``, the default; ``zero``: every NaN
becomes 0; ``sign``: a sign-bit ReLU that zeroes -NaN only). Here: the NaN / special-value tests of
tests/ops/test_indexer.py pass under each, the probe picks the path the behaviour allows (vector
operations per block, from the emulator's work counters), and the results are the same on both paths."""

import os
import subprocess
import sys

import longattn
import pytest
import torch
from longattn.backends import ascend_sim

from tests.helpers.indexer import int_inputs, nan_inputs, same_values
from tests.ops import test_indexer as ops_tests

pytestmark = pytest.mark.skipif(
    ascend_sim.BACKEND.unavailable is not None, reason=f"ascend_sim: {ascend_sim.BACKEND.unavailable}"
)
SIM = "ascend_sim"
MODES = ["keep", "zero", "sign"]
ENV = "LONGATTN_EMU_FIXPIPE_RELU_NAN"

# The special-value tests of the op suite, with their parameters (each a function of the backend).
NAN_CASES = {
    "nan_rank_as_pos_inf": lambda b: ops_tests.test_topk_nan_scores_rank_as_pos_inf(b, 8),
    "nan_paged": ops_tests.test_topk_nan_scores_paged,
    "nan_paged_missing_page": ops_tests.test_topk_nan_scores_paged_missing_page,
    "nan_overflow_fp32": lambda b: ops_tests.test_topk_nan_and_overflowing_scores(b, torch.float32, 40),
    "nan_overflow_bf16": lambda b: ops_tests.test_topk_nan_and_overflowing_scores(b, torch.bfloat16, 8),
    "nan_overflow_fp16": lambda b: ops_tests.test_topk_nan_and_overflowing_scores(b, torch.float16, 8),
    "negative_weights_inf": ops_tests.test_negative_weights_and_inf_scores_stay_selectable,
    "overflowing_scores": lambda b: ops_tests.test_overflowing_scores_stay_selectable(b, -1.0),
    "negative_zero": ops_tests.test_negative_zero_ties_with_positive_zero,
}


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize("case", list(NAN_CASES))
@pytest.mark.parametrize("mode", MODES)
def test_special_values_under_every_fixpipe_relu(monkeypatch, mode, case):
    monkeypatch.setenv(ENV, mode)
    NAN_CASES[case](SIM)


def _vector_ops(mode, fn, monkeypatch):
    """V-pipe operations of the AIVs and the launch results, with the Fixpipe ReLU emulated as ``mode``."""
    monkeypatch.setenv(ENV, mode)
    ext = ascend_sim.extension()
    ext.take_launch_work()
    out = fn()
    (launch,) = ext.take_launch_work()
    return sum(c["ops"]["V"] for c in launch["cores"] if not c["aic"]), out


@pytest.mark.parametrize("logits", [False, True])
def test_fast_path_drops_three_vector_ops_per_block(monkeypatch, logits):
    """Where the Fixpipe ReLU keeps NaN (``keep``) each AIV skips exactly Compare + Relu + Select per block
    (one emulated V operation each); where it does not (``zero``: NaN -> 0; ``sign``: -NaN -> 0) the probe
    keeps the exact path. Same results on every path (NaN scores included)."""
    monkeypatch.setenv("LONGATTN_ASCEND_SIM_CORES", "2")
    q, w, k = nan_inputs(T=3, Hi=5, Di=16, N=300)
    ve = torch.tensor([300, 129, 0])  # 3 + 2 + 0 blocks of 128 entries; 2 cores, tokens round-robin
    blocks = 3 + 2
    if logits:
        fn = lambda: longattn.indexer_logits(q, w, k, ve, backend=SIM)  # noqa: E731
    else:
        fn = lambda: longattn.indexer_topk(q, w, k, ve, 20, backend=SIM)  # noqa: E731
    ops, outs = {}, {}
    for mode in MODES:
        ops[mode], outs[mode] = _vector_ops(mode, fn, monkeypatch)
    assert ops["zero"] == ops["sign"], ops
    assert ops["zero"] - ops["keep"] == 3 * blocks * 2, ops  # two AIVs per block
    ref = longattn.indexer_logits(q, w, k, ve, backend="reference")
    for mode in MODES:
        if logits:
            assert same_values(outs[mode], ref), mode
        else:
            assert torch.equal(outs[mode][0], outs["keep"][0]) and torch.equal(outs[mode][1], outs["keep"][1])


def test_fast_path_scores_equal_exact_path_on_random_inputs(monkeypatch):
    """Fixpipe ReLU and the AIVs' Relu give the same fp32 logits bit for bit on real-valued inputs."""
    g = torch.Generator().manual_seed(4)
    q, w, k = torch.randn(2, 7, 32, generator=g), torch.randn(2, 7, generator=g), torch.randn(200, 32, generator=g)
    ve = torch.tensor([200, 77])
    got = {}
    for mode in ("keep", "zero"):
        monkeypatch.setenv(ENV, mode)
        got[mode] = longattn.indexer_logits(q, w, k, ve, backend=SIM)
    assert torch.equal(got["keep"], got["zero"])


def test_unknown_behaviour_name_aborts():
    """A misspelt LONGATTN_EMU_FIXPIPE_RELU_NAN is an emulator FATAL naming the variable and the choices."""
    code = (
        "import torch, longattn\n"
        "from tests.helpers.indexer import int_inputs\n"
        "q, w, k = int_inputs(1, 2, 16, 10)\n"
        "longattn.indexer_topk(q, w, k, torch.tensor([10]), 2, backend='ascend_sim')\n"
    )
    env = dict(os.environ, **{ENV: "nan"})
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode != 0
    assert f'{ENV} = "nan": expected keep, zero or sign' in proc.stderr, proc.stderr[-2000:]


def test_int_inputs_exact_under_every_behaviour(monkeypatch):
    """Integer inputs over several blocks: id for id equal to the reference under each behaviour."""
    q, w, k = int_inputs(3, 6, 32, 400, lo=-1, hi=2, g=torch.Generator().manual_seed(2))
    ve = torch.tensor([400, 260, 5])
    ref = longattn.indexer_topk(q, w, k, ve, 33, backend="reference")
    for mode in MODES:
        monkeypatch.setenv(ENV, mode)
        idx, ln = longattn.indexer_topk(q, w, k, ve, 33, backend=SIM)
        assert torch.equal(idx, ref[0]) and torch.equal(ln, ref[1]), mode
