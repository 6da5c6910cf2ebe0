"""Packaging. ``pip install .`` installs the pure-Python package (no compilation).

Compiled pieces are built on demand, never at import time: the Ascend C emulator extension is built
lazily on first use (see ``ascend_c/README.md``); the NPU build needs CANN (``ascend_c/build_npu.sh``).
Two opt-in switches build them here instead (they need torch at build time, so install with
``--no-build-isolation``):

* ``LONGATTN_BUILD_ASCEND_SIM=1``: the emulator extension as ``longattn._ascend_sim``;
* ``LONGATTN_BUILD_NPU=1``: runs ``ascend_c/build_npu.sh`` (needs ``ASCEND_HOME_PATH``) and installs
  ``liblongattn_ascend_npu.so`` into ``longattn/_lib`` (written, never run: no CANN was available).
"""

import os
import shutil
import subprocess
from pathlib import Path

from setuptools import setup

ROOT = Path(__file__).resolve().parent
kwargs = {}

if os.environ.get("LONGATTN_BUILD_ASCEND_SIM") == "1":
    from torch.utils.cpp_extension import BuildExtension, CppExtension

    sources = ["ascend_sim_ext.cpp", "append_kv_emu.cpp", "sparse_attention_emu.cpp", "compress_kv_emu.cpp",
               "indexer_topk_emu.cpp"]
    kwargs["ext_modules"] = [
        CppExtension(
            "longattn._ascend_sim",
            sources=[f"csrc/ascend_sim/{s}" for s in sources],
            extra_compile_args=["-O2", "-DLONGATTN_ASCEND_EMU", "-Wall", "-Werror", f"-I{ROOT}", "-pthread"],
            extra_link_args=["-pthread"],
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
