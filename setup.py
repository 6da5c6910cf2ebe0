"""Packaging. ``pip install .`` installs the pure-Python package (no compilation).

Compiled pieces are built on demand, never at import time: the Ascend C emulator extension is built
lazily on first use (see ``ascend_c/README.md``); the NPU build needs CANN (``ascend_c/build_npu.sh``).
Two opt-in switches build them here instead (they need torch at build time, so install with
``--no-build-isolation``):

* ``LONGATTN_BUILD_ASCEND_SIM=1``: the emulator extension as ``longattn._ascend_sim``;
* ``LONGATTN_BUILD_NPU=1``: runs ``ascend_c/build_npu.sh`` (needs ``ASCEND_HOME_PATH``) and installs
  ``liblongattn_ascend_npu.so`` into ``longattn/_lib`` (written, never run: no CANN was available).
"""

import importlib.util
import os
import shutil
import subprocess
from pathlib import Path

from setuptools import setup

ROOT = Path(__file__).resolve().parent
kwargs = {}


def _ascend_sim_build():
    """The emulator's sources and flags, from the module the lazy build uses (loaded by path: the
    package itself is not importable before it is installed)."""
    path = ROOT / "python" / "longattn" / "backends" / "ascend_sim_build.py"
    spec = importlib.util.spec_from_file_location("longattn_ascend_sim_build", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


if os.environ.get("LONGATTN_BUILD_ASCEND_SIM") == "1":
    from torch.utils.cpp_extension import BuildExtension, CppExtension

    build = _ascend_sim_build()
    cflags, ldflags = build.build_flags(root=ROOT)
    kwargs["ext_modules"] = [
        CppExtension(
            "longattn._ascend_sim",
            sources=[str(Path(p).relative_to(ROOT)) for p in build.source_paths(ROOT)],
            extra_compile_args=cflags,
            extra_link_args=ldflags,
        )
    ]
    kwargs["cmdclass"] = {"build_ext": BuildExtension}

if os.environ.get("LONGATTN_BUILD_NPU") == "1":
    if not os.environ.get("ASCEND_HOME_PATH"):
        raise SystemExit("LONGATTN_BUILD_NPU=1 needs ASCEND_HOME_PATH (a CANN toolkit; source its set_env.sh)")
    subprocess.run(["bash", str(ROOT / "ascend_c" / "build_npu.sh")], check=True)
    lib_dir = ROOT / "python" / "longattn" / "_lib"
    lib_dir.mkdir(exist_ok=True)
    shutil.copy2(ROOT / "ascend_c" / "build_npu" / "liblongattn_ascend_npu.so", lib_dir)
    kwargs["package_data"] = {"longattn": ["_lib/*.so"]}

setup(**kwargs)
