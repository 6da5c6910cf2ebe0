"""The Triton backend in the dispatcher: CUDA tensors pick it, CPU tensors only under the interpreter,
what it declines (reasons) falls back to the reference with a warning, and importing longattn (or
the backend module) never imports triton."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings

import longattn
import pytest
import torch
from longattn.backends import BackendError, registry

from tests.helpers.device import CAN_RUN_TRITON as CAN_RUN
from tests.helpers.device import DEVICE, INTERPRET
from tests.helpers.device import TRITON_SKIP_REASON as SKIP_REASON
from tests.helpers.dispatch import reasons, selected

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def stub_args(D=8, kv=None):
    return dict(
        q=torch.randn(2, 3, D),
        kv=torch.randn(5, D) if kv is None else kv,
        indices=torch.zeros(2, 4, dtype=torch.int32),
        topk_length=None,
        extra_kv=None,
        extra_indices=None,
        extra_topk_length=None,
        attn_sink=None,
        softmax_scale=D**-0.5,
    )


def test_registered_and_first_for_cuda():
    assert "triton" in registry.backend_names()
    assert registry.default_order(torch.device("cuda")) == ("triton", "reference")
    assert registry.default_order(torch.device("cpu")) == ("reference",)


IDX_FIELDS = dict(q=torch.randn(1, 2, 16), weights=torch.randn(1, 2), index_k=torch.randn(10, 16),
                  visible_end=torch.tensor([10]), block_table=None, seq_ids=None, return_slots=False)  # fmt: skip


@pytest.mark.skipif(not CAN_RUN, reason=SKIP_REASON)
def test_select_picks_triton_for_cuda_tensors():
    """The dispatcher with a CUDA device and stub arguments picks Triton for every op (selection only
    looks at shapes; nothing is launched)."""
    cuda = torch.device("cuda")
    assert selected("sparse_attention", cuda, **stub_args()) == "triton"
    t, lse = torch.randn(2, 3, 4), torch.randn(2, 3)
    assert selected("merge_attention_states", cuda, out_a=t, lse_a=lse, out_b=t, lse_b=lse) == "triton"
    assert selected("indexer_topk", cuda, **IDX_FIELDS, topk=4) == "triton"
    assert selected("compress_pool", cuda, a=torch.empty(8, 4), b=torch.empty(8, 4), ratio=4, overlap=False) == "triton"


@pytest.mark.skipif(not CAN_RUN, reason=SKIP_REASON)
def test_declined_calls_fall_back_with_a_warning(monkeypatch):
    monkeypatch.setattr(registry, "_warned", set())
    cuda = torch.device("cuda")
    with pytest.warns(RuntimeWarning, match=r"backend 'triton' declined \(head dim D=2048 > 1024"):
        assert selected("sparse_attention", cuda, **stub_args(D=2048)) == "reference"

    class OddPool:  # a pool object the kernels cannot read
        num_slots, head_dim, device = 4, 8, torch.device("cpu")

        def gather_rows(self, slots):
            return torch.zeros(len(slots), 8)

    with pytest.warns(RuntimeWarning, match=r"`kv`: cannot use OddPool pools"):
        assert selected("sparse_attention", cuda, **stub_args(kv=OddPool())) == "reference"
    with pytest.warns(RuntimeWarning, match=r"topk=4096 > 2048"):
        assert selected("indexer_topk", cuda, **IDX_FIELDS, topk=4096) == "reference"


@pytest.mark.skipif(not CAN_RUN, reason=SKIP_REASON)
def test_fp8_pool_is_accepted():
    from longattn.cache import Fp8KVPool

    pool = Fp8KVPool.empty(2, 4)
    assert reasons("triton", "sparse_attention", torch.device(DEVICE), **stub_args(D=512, kv=pool)) == []


@pytest.mark.skipif(not (CAN_RUN and INTERPRET), reason="needs the Triton interpreter (TRITON_INTERPRET=1)")
def test_forced_triton_on_cpu_runs_under_the_interpreter():
    q, kv = torch.randn(2, 3, 16), torch.randn(7, 16)
    idx = torch.tensor([[0, 3, -1], [6, 7, 2]], dtype=torch.int32)
    out, lse = longattn.sparse_attention(q, kv, idx, backend="triton")
    ref = longattn.sparse_attention(q, kv, idx, backend="reference")
    torch.testing.assert_close(out, ref[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(lse, ref[1], atol=1e-5, rtol=1e-5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        longattn.sparse_attention(q, kv, idx)  # CPU default order: reference, silently


def _run(code: str, interpret: str | None):
    env = dict(os.environ)
    env.pop("TRITON_INTERPRET", None)
    if interpret is not None:
        env["TRITON_INTERPRET"] = interpret
    env["PYTHONPATH"] = os.pathsep.join([os.path.join(ROOT, "python"), ROOT, env.get("PYTHONPATH", "")])
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT)


def test_cpu_without_interpreter_is_declined():
    """Without TRITON_INTERPRET=1 the backend takes CUDA tensors only: backend="triton" on CPU
    tensors raises and explains why."""
    code = (
        "import torch, longattn\n"
        "from longattn.backends import BackendError\n"
        "q, kv, idx = torch.randn(1, 2, 8), torch.randn(3, 8), torch.zeros(1, 2, dtype=torch.int32)\n"
        "longattn.sparse_attention(q, kv, idx)\n"
        "try:\n"
        "    longattn.sparse_attention(q, kv, idx, backend='triton')\n"
        "    print('RAN')\n"
        "except BackendError as e:\n"
        "    print('DECLINED', str(e).replace(chr(10), ' '))\n"
    )
    res = _run(code, interpret="0")
    assert res.returncode == 0, res.stderr
    out = res.stdout
    if torch.cuda.is_available():
        assert "runs on cuda tensors, got cpu tensors" in out
    else:
        assert "DECLINED" in out and ("no CUDA device" in out or "triton is not installed" in out), out


def test_import_and_info_do_not_import_triton():
    code = (
        "import sys, longattn\n"
        "from longattn.backends import registry\n"
        "b = registry.get_backend('triton')\n"
        "report = longattn.info(print_report=False)\n"
        "print('triton' in sys.modules, 'triton [' in report)\n"
    )
    res = _run(code, interpret="1")
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["False", "True"], res.stdout


@pytest.mark.skipif(not CAN_RUN, reason=SKIP_REASON)
def test_forced_backend_reports_reasons():
    with pytest.raises(BackendError, match=r"triton: head dim D=2048 > 1024"):
        q = torch.randn(1, 1, 2048, device=DEVICE)
        longattn.sparse_attention(
            q,
            torch.randn(2, 2048, device=DEVICE),
            torch.zeros(1, 1, dtype=torch.int32, device=DEVICE),
            backend="triton",
        )
