"""How the Ascend C emulator extension is built: its sources and compiler flags.

Read by ``backends/ascend_sim.py`` (the build on first use) and by ``setup.py``
(``LONGATTN_BUILD_ASCEND_SIM=1``, which loads this file by path), so it imports only the standard
library.
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Tuple

REPO = Path(__file__).resolve().parents[3]
ASCEND_C = REPO / "ascend_c"
CSRC = REPO / "csrc" / "ascend_sim"
EXT_NAME = "longattn_ascend_sim"
SOURCES = (
    "ascend_sim_ext.cpp",
    "append_kv_emu.cpp",
    "sparse_attention_emu.cpp",
    "compress_kv_emu.cpp",
    "compress_pool_emu.cpp",
    "indexer_topk_emu.cpp",
    "emu_counters.cpp",
    "combine_emu.cpp",
)


def source_paths(root: Path = REPO) -> List[str]:
    return [str(root / "csrc" / "ascend_sim" / s) for s in SOURCES]


def build_flags(asan: bool = False, root: Path = REPO) -> Tuple[List[str], List[str]]:
    """(compiler flags, linker flags) of the emulator extension."""
    cflags = ["-DLONGATTN_ASCEND_EMU", "-Wall", "-Werror", f"-I{root}", "-pthread"]
    ldflags = ["-pthread"]
    if asan:  # AddressSanitizer + UndefinedBehaviorSanitizer (any UB report aborts)
        cflags += ["-O0", "-fsanitize=address,undefined", "-fno-sanitize-recover=undefined", "-fno-omit-frame-pointer"]
        ldflags += ["-fsanitize=address,undefined"]
    else:
        cflags += ["-O2"]
    return cflags, ldflags
