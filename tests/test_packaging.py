"""Packaging: setup.py builds the emulator extension from the same sources and flags as the build on
first use (one list, in longattn/backends/ascend_sim_build.py)."""

import runpy
from pathlib import Path

import setuptools
from longattn.backends import ascend_sim_build

ROOT = Path(__file__).resolve().parents[1]


def test_setup_builds_the_emulator_from_the_backends_source_list(monkeypatch):
    captured = {}
    monkeypatch.setattr(setuptools, "setup", lambda **kw: captured.update(kw))
    monkeypatch.setenv("LONGATTN_BUILD_ASCEND_SIM", "1")
    monkeypatch.delenv("LONGATTN_BUILD_NPU", raising=False)
    monkeypatch.chdir(ROOT)
    runpy.run_path(str(ROOT / "setup.py"), run_name="__main__")
    (ext,) = captured["ext_modules"]
    assert ext.name == "longattn._ascend_sim"
    assert [str(ROOT / s) for s in ext.sources] == ascend_sim_build.source_paths(ROOT)
    cflags, ldflags = ascend_sim_build.build_flags(root=ROOT)
    assert ext.extra_compile_args == cflags and ext.extra_link_args == ldflags
    for source in ext.sources:
        assert (ROOT / source).is_file(), source
