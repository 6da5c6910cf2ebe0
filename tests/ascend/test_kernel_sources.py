"""Source checks of the Ascend C kernels for two device-compiler rules the g++ emulator build cannot see.

* Every function of kernel-side code (ascend_c/common/*.h, ascend_c/<op>/op_kernel/*) is ``__aicore__``:
  the device compiler rejects a call from an AI-core function to a host function (the integer helpers of
  longattn_types.h used to be plain ``inline constexpr``).
* No generic pointer in kernel-side code: a ``__gm__`` pointer stored as ``void*`` / ``const void*`` loses
  its address space on the device (compress_kv's kernel used to read its GM arguments from the host
  struct's ``const void*`` fields); GM arguments stay ``GM_ADDR`` / ``__gm__ T*``.

Each check also runs on a planted violation, so it is shown to fail."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
KERNEL_SIDE = sorted([*(REPO / "ascend_c" / "common").glob("*.h"), *(REPO / "ascend_c").glob("*/op_kernel/*")])

# A function definition or declaration line: `inline` (kernel style: every helper is inline) followed
# by a return type and a name with a parameter list.
_FUNCTION = re.compile(r"^\s*(?:template\s*<[^>]*>\s*)?(?:static\s+)?(?:__aicore__\s+)?inline\b[^;{=]*\w\s*\(")
# Generic pointers, and the host argument blocks of op_host/*_tiling.h (`<Op>Args`: const void* fields).
_GENERIC = re.compile(r"\bvoid\s*\*|\b[A-Z]\w*Args\b")


def functions_without_aicore(text: str) -> list[str]:
    return [ln.strip() for ln in text.splitlines() if _FUNCTION.match(ln) and "__aicore__" not in ln]


def generic_pointers(text: str) -> list[str]:
    code = (ln.split("//")[0] for ln in text.splitlines())
    return [ln.strip() for ln in code if _GENERIC.search(ln)]


@pytest.mark.parametrize("path", KERNEL_SIDE, ids=lambda p: str(p.relative_to(REPO)))
def test_kernel_side_functions_are_aicore(path):
    assert functions_without_aicore(path.read_text()) == []


@pytest.mark.parametrize("path", KERNEL_SIDE, ids=lambda p: str(p.relative_to(REPO)))
def test_kernel_side_code_keeps_gm_address_spaces(path):
    assert generic_pointers(path.read_text()) == []


def test_the_checks_catch_planted_violations():
    assert functions_without_aicore("inline constexpr uint32_t MinU(uint32_t a, uint32_t b) { return a; }")
    assert functions_without_aicore("template <typename T>\ninline T Twice(T x) { return x + x; }")
    assert functions_without_aicore("template <typename T> inline T Twice(T x) { return x + x; }")
    assert not functions_without_aicore("__aicore__ inline constexpr uint32_t MinU(uint32_t a, uint32_t b);")
    assert generic_pointers("    const void* a;  // [T, W]")
    assert generic_pointers("__aicore__ inline void Init(const CompressKvArgs& a, const CompressKvTiling& t)")
    assert not generic_pointers("    GM_ADDR a;  // a void* here would lose __gm__")
