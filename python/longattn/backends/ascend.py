"""The ``ascend`` backend: longattn's Ascend C kernels on an Ascend NPU (torch_npu).

The same kernel sources as ``ascend_sim`` (``ascend_c/<op>/op_kernel``), built for the NPU by
``ascend_c/build_npu.sh`` (CMake, needs a CANN toolkit in ``ASCEND_HOME_PATH``; or
``LONGATTN_BUILD_NPU=1 pip install --no-build-isolation .``) into ``liblongattn_ascend_npu.so``,
which registers the raw kernel ops ``torch.ops.longattn_ascend.*`` (csrc/ascend_npu). Python decides
the backend (``registry.select``, once per call) and calls them; the binding checks nothing the Python
side already decided. The support matrix is the ``ascend_sim`` one (same kernels and tilings), declared
once per op in ``ops/<op>/ascend.py``.

Status: written, never compiled or run on an NPU (no CANN toolkit or device was available); the
kernels themselves are verified on the CPU emulator only (``backend="ascend_sim"``).

torch_npu is imported only on the first op call, and only when it is installed; importing this
module imports neither torch_npu nor the library. The library is looked for in
``$LONGATTN_ASCEND_NPU_LIB``, next to this package (``longattn/_lib``), in ``$LONGATTN_NPU_BUILD_DIR`` and
in ``ascend_c/build_npu``.
"""

from __future__ import annotations

import functools
import importlib.util
import os
from pathlib import Path
from typing import Optional

import torch

from .base import Backend

LIB_NAME = "liblongattn_ascend_npu.so"
REPO = Path(__file__).resolve().parents[3]


def library_path() -> Optional[Path]:
    """The kernel library: ``$LONGATTN_ASCEND_NPU_LIB``, ``longattn/_lib``, the build folder of
    ``ascend_c/build_npu.sh`` (``$LONGATTN_NPU_BUILD_DIR``, default ``ascend_c/build_npu``)."""
    build_dir = os.environ.get("LONGATTN_NPU_BUILD_DIR")
    candidates = [os.environ.get("LONGATTN_ASCEND_NPU_LIB")]
    candidates += [
        str(Path(__file__).resolve().parents[1] / "_lib" / LIB_NAME),
        str(Path(build_dir) / LIB_NAME) if build_dir else None,
        str(REPO / "ascend_c" / "build_npu" / LIB_NAME),
    ]
    for c in candidates:
        if c and Path(c).is_file():
            return Path(c)
    return None


def _unavailable() -> Optional[str]:
    if importlib.util.find_spec("torch_npu") is None:
        return "torch_npu is not installed (the NPU path needs torch_npu and a CANN toolkit)"
    if library_path() is None:
        return (
            f"the NPU kernels are not built ({LIB_NAME} not found): run ascend_c/build_npu.sh with ASCEND_HOME_PATH "
            "set, or LONGATTN_BUILD_NPU=1 pip install --no-build-isolation ."
        )
    return None


@functools.cache
def ops():
    """Import torch_npu, load the kernel library (first call only) and return torch.ops.longattn_ascend."""
    problem = _unavailable()
    if problem is not None:
        raise RuntimeError(f"ascend backend unavailable: {problem}")
    import torch_npu  # noqa: F401  (registers the NPU device with torch)

    torch.ops.load_library(str(library_path()))
    return torch.ops.longattn_ascend


def kernel(name: str):
    """The NPU build's raw kernel op ``name`` (``torch.ops.longattn_ascend.<name>``); the same
    arguments as ``ascend_sim.kernel(name)``."""
    return getattr(ops(), name)


def ai_cores(backend: str) -> int:
    """AI cores of the device ``backend`` runs on ("ascend_sim": the emulated cores; "ascend": the NPU's,
    from torch_npu's device properties, else a 910B2's 24): what the ops' small-batch split choices use."""
    if backend == "ascend_sim":
        from . import ascend_sim

        return ascend_sim.num_cores()  # read per call: the environment may change it
    return _npu_ai_cores()


@functools.cache
def _npu_ai_cores() -> int:
    """The NPU's AI cores, asked once (every decode step's split choice reads it)."""
    try:
        npu = torch.npu  # type: ignore[attr-defined]  # registered by torch_npu
        props = npu.get_device_properties(npu.current_device())
        return int(getattr(props, "cube_core_num", 0)) or 24
    except Exception:  # noqa: BLE001 - any failure: the 910B2's count (only the split choice depends on it)
        return 24


def kernel_of(backend: str, name: str):
    """Entry point ``name`` of the Ascend C kernels in the build that ``backend`` runs ("ascend": the NPU
    library; "ascend_sim": the emulator extension). Both take the same arguments."""
    if backend == "ascend_sim":
        from . import ascend_sim

        return ascend_sim.kernel(name)
    return kernel(name)


BACKEND = Backend(
    name="ascend",
    description="Ascend C kernels on an Ascend NPU via torch_npu (written, never compiled or run on an NPU)",
    device_types=("npu", "privateuseone"),
    unavailable=_unavailable(),
    preferred_on=("npu", "privateuseone"),
)
