"""The ``ascend_sim`` backend: longattn's Ascend C kernels, run on CPU tensors by the emulator.

The kernels in ``ascend_c/<op>/op_kernel`` are compiled with g++ against the clean-room Ascend C
CPU emulator (``ascend_c/emu``, ``-DLONGATTN_ASCEND_EMU``) into a torch extension
(``csrc/ascend_sim``). Every AI core runs as threads (1 AIC + 2 AIV per core for mixed kernels)
with the emulator's strict checks on: an out-of-bounds access, a missing pipe synchronisation or an
over-budget buffer aborts the process with a ``[longattn-emu] FATAL`` message (run untrusted
configurations in a subprocess).

Nothing is compiled at import: the extension is built on first use with
``torch.utils.cpp_extension.load`` into ``$TORCH_EXTENSIONS_DIR/longattn_ascend_sim`` (default
``~/.cache/longattn/torch_extensions``), or ahead of time as ``longattn._ascend_sim`` by
``LONGATTN_BUILD_ASCEND_SIM=1 pip install --no-build-isolation .``. It is a correctness vehicle
(slow: one scalar loop per emulated instruction), not a fast CPU backend; it is therefore never in
the default dispatch order: select it with ``backend="ascend_sim"``.

Environment: ``LONGATTN_ASCEND_SIM_CORES`` (emulated AI cores per launch, default 4),
``LONGATTN_ASCEND_SIM_ASAN=1`` (build and load an AddressSanitizer + UndefinedBehaviorSanitizer
variant; the process must be started with libasan preloaded), ``LONGATTN_ASCEND_SIM_VERBOSE=1``
(show the compiler output).
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import os
import shutil
from pathlib import Path
from typing import Optional

from .._env import positive_int
from .ascend_sim_build import ASCEND_C, CSRC, EXT_NAME, SOURCES, build_flags, source_paths
from .base import Backend

DEFAULT_CORES = 4


def num_cores() -> int:
    return positive_int("LONGATTN_ASCEND_SIM_CORES", DEFAULT_CORES)


def compiler() -> Optional[str]:
    """The C++ compiler the extension is built with: $CXX if it resolves, else g++ / c++ on PATH."""
    cxx = os.environ.get("CXX")
    if cxx:
        return shutil.which(cxx)
    return shutil.which("g++") or shutil.which("c++")


def _prebuilt() -> bool:
    return importlib.util.find_spec("longattn._ascend_sim") is not None


def _unavailable() -> Optional[str]:
    if _prebuilt():
        return None
    missing = [str(p) for p in [ASCEND_C / "emu" / "ascendc_emu.h"] + [CSRC / s for s in SOURCES] if not p.exists()]
    if missing:
        return (
            "the Ascend C kernel sources are not present (a source checkout is needed; missing "
            + ", ".join(missing[:2])
            + ")"
        )
    if compiler() is None:
        cxx = os.environ.get("CXX")
        found = f"CXX={cxx!r} was not found" if cxx else "no g++ / c++ on PATH"
        return (
            f"no C++ compiler ({found}; install g++ >= 9 or set CXX): the emulator extension is compiled on first use"
        )
    if shutil.which("ninja") is None and importlib.util.find_spec("ninja") is None:
        return "ninja is not installed (pip install ninja): torch.utils.cpp_extension needs it to build the emulator"
    return None


def build_directory(name: str = EXT_NAME) -> Path:
    """Where the extension is built: one folder per source checkout (two checkouts, e.g. git
    worktrees, must not rebuild each other's library under a loaded process)."""
    root = os.environ.get("TORCH_EXTENSIONS_DIR") or os.path.join(
        os.path.expanduser("~"), ".cache", "longattn", "torch_extensions"
    )
    checkout = hashlib.sha1(str(ASCEND_C.resolve()).encode()).hexdigest()[:10]
    path = Path(root) / f"{name}-{checkout}"
    path.mkdir(parents=True, exist_ok=True)
    return path


@functools.cache
def extension():
    """The emulator extension: the ahead-of-time build (``longattn._ascend_sim``, from
    ``LONGATTN_BUILD_ASCEND_SIM=1 pip install``) if present, else built on first use (cached on disk)."""
    asan = os.environ.get("LONGATTN_ASCEND_SIM_ASAN") == "1"
    if not asan and _prebuilt():
        return importlib.import_module("longattn._ascend_sim")
    problem = _unavailable()
    if problem is not None:
        raise RuntimeError(f"ascend_sim backend unavailable: {problem}")
    from torch.utils import cpp_extension

    name = EXT_NAME + ("_asan" if asan else "")
    cflags, ldflags = build_flags(asan)
    if os.environ.get("CXX") is None:
        os.environ["CXX"] = compiler()  # cpp_extension reads CXX
    try:
        return cpp_extension.load(
            name=name,
            sources=source_paths(),
            extra_cflags=cflags,
            extra_ldflags=ldflags,
            build_directory=str(build_directory(name)),
            verbose=os.environ.get("LONGATTN_ASCEND_SIM_VERBOSE") == "1",
        )
    except Exception as exc:  # the compiler output is in the message; say what failed and how to see more
        raise RuntimeError(
            f"building the Ascend C emulator extension ({name}) with {compiler()} failed "
            f"(LONGATTN_ASCEND_SIM_VERBOSE=1 shows the build log): {exc}"
        ) from exc


def kernel(name: str):
    """The emulator build's entry point ``name`` (``append_kv``, ``sparse_attention``, ``compress_kv``,
    ``compress_pool``, ``indexer``, ``merge_attention_states``, ``apply_attention_sink``,
    ``merge_partial_states``), taking the NPU build's arguments (the AI-core count is added here)."""
    fn, cores = getattr(extension(), name), num_cores()
    return lambda *args: fn(*args, cores)


BACKEND = Backend(
    name="ascend_sim",
    description="Ascend C kernels on the CPU emulator (ascend_c/emu; slow, for correctness; built on first use)",
    device_types=("cpu",),
    unavailable=_unavailable(),
)
