"""Backend selection: forcing, environment, explanations, fallback warnings, lazy loading."""

import subprocess
import sys

import longattn
import pytest
import torch
from longattn.backends import BackendError, Impl, registry


def args():
    return dict(q=torch.randn(2, 2, 8), kv=torch.randn(5, 8), indices=torch.zeros(2, 3, dtype=torch.int32))


@pytest.fixture
def fake_backend(test_backend):
    """A test-only backend 'fake' that declines head dims other than 64, registered next to the others."""

    def reasons(inp):
        D = inp.q.shape[-1]
        return [] if D == 64 else [f"needs head dim 64, got {D}"]

    def run(inp):
        return torch.full_like(inp.q, 7.0), torch.zeros(inp.q.shape[:2])

    test_backend("fake", {"sparse_attention": Impl(run, reasons)})


def test_default_on_cpu_is_reference(monkeypatch):
    monkeypatch.delenv("LONGATTN_BACKEND", raising=False)
    assert registry.default_order(torch.device("cpu")) == ("reference",)
    longattn.sparse_attention(**args())


def test_unknown_backend_lists_registered(monkeypatch):
    with pytest.raises(ValueError, match=r"backend='nope' is not a backend; registered backends: reference"):
        longattn.sparse_attention(**args(), backend="nope")
    monkeypatch.setenv("LONGATTN_BACKEND", "nope")
    with pytest.raises(ValueError, match=r"LONGATTN_BACKEND='nope' is not a backend"):
        longattn.sparse_attention(**args())


def test_forced_backend_that_declines_explains_every_backend(fake_backend):
    with pytest.raises(BackendError) as info:
        longattn.sparse_attention(**args(), backend="fake")
    msg = str(info.value)
    assert "backend 'fake' was requested" in msg
    assert "fake: needs head dim 64, got 8" in msg
    assert "reference: not tried" in msg and "backend='reference'" in msg
    assert "q=[2, 2, 8] float32" in msg


def test_env_var_forces_backend(fake_backend, monkeypatch):
    monkeypatch.setenv("LONGATTN_BACKEND", "fake")
    q = torch.randn(2, 2, 64)
    out, _ = longattn.sparse_attention(q, torch.randn(5, 64), torch.zeros(2, 3, dtype=torch.int32))
    assert torch.all(out == 7.0)
    # the argument beats the environment
    out, _ = longattn.sparse_attention(q, torch.randn(5, 64), torch.zeros(2, 3, dtype=torch.int32), backend="reference")
    assert not torch.all(out == 7.0)


def test_preferred_backend_declining_falls_back_with_one_warning(test_backend, monkeypatch):
    test_backend(
        "fake",
        {"sparse_attention": Impl(lambda inp: None, lambda inp: [f"needs head dim 64, got {inp.q.shape[-1]}"])},
        preferred_on=("cpu",),
    )
    assert registry.default_order(torch.device("cpu")) == ("fake", "reference")
    monkeypatch.setattr(registry, "_warned", set())
    with pytest.warns(RuntimeWarning, match=r"backend 'fake' declined \(needs head dim 64, got 8\); using 'reference'"):
        longattn.sparse_attention(**args())
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        longattn.sparse_attention(**args())  # the same reason is not repeated
    # an op the preferred backend does not implement falls back silently
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        longattn.compress_pool(torch.randn(8, 4), torch.randn(8, 4), 4, False)


def test_backend_that_fails_to_import_is_reported(monkeypatch):
    registry.register_backend("broken", "longattn_no_such_module")
    try:
        b = registry.get_backend("broken")
        assert "failed to load" in b.unavailable and "ModuleNotFoundError" in b.unavailable
        with pytest.raises(BackendError, match=r"broken: failed to load"):
            longattn.sparse_attention(**args(), backend="broken")
        assert "broken" in longattn.info(print_report=False)
    finally:
        registry.unregister_backend("broken")


def test_info_reports_backends_and_order():
    report = longattn.info(print_report=False)
    assert "reference [any device]: available" in report
    assert "cpu: reference" in report and "chunk budget" in report


def test_import_is_light():
    """`import longattn` imports no triton, no torch_npu and compiles nothing."""
    code = "import sys, longattn; print(sorted(m for m in ('triton', 'torch_npu') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
