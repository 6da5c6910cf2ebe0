"""Packaging. ``pip install .`` installs the pure-Python package (no compilation).

Compiled pieces are built on demand, never at import time: the Ascend C emulator extension is built
lazily on first use (see ``ascend_c/README.md``); the NPU build needs CANN (``ascend_c/build_npu.sh``).
"""

from setuptools import setup

setup()
