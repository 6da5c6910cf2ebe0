"""Facts written once: the FP8 record layout lives in longattn/cache/fp8.py; the C++ side (Ascend C
kernels and host code) states the same numbers in ascend_c/common/longattn_types.h, checked here."""

import re
from pathlib import Path

from longattn.cache import fp8
from longattn.ops.compress import ascend as compress_ascend

ROOT = Path(__file__).resolve().parents[1]


def _cpp_constants(path: Path):
    text = path.read_text()
    return {m[0]: int(m[1], 0) for m in re.findall(r"constexpr\s+\w+\s+(k\w+)\s*=\s*(0x[0-9A-Fa-f]+|\d+)\s*;", text)}


def test_fp8_record_constants_match_the_cpp_header():
    c = _cpp_constants(ROOT / "ascend_c" / "common" / "longattn_types.h")
    assert c["kFp8HeadDim"] == fp8.HEAD_DIM
    assert c["kFp8NopeDim"] == fp8.NOPE_DIM
    assert c["kFp8RopeDim"] == fp8.ROPE_DIM
    assert c["kFp8Tile"] == fp8.TILE
    assert c["kFp8NumTiles"] == fp8.NUM_TILES
    assert c["kFp8DataBytes"] == fp8.DATA_BYTES
    assert c["kFp8ScaleBytes"] == fp8.SCALE_BYTES
    assert c["kFp8RecordBytes"] == fp8.RECORD_BYTES
    assert c["kFp8QuantizerUbBytes"] == compress_ascend.FP8_QUANTIZER_UB  # the Ascend limits' mirror


def test_no_other_python_module_restates_the_record():
    """Python code outside cache/fp8.py takes the record's numbers from it (no second copy to drift)."""
    record = r"FP8_(DATA_BYTES|SCALE_BYTES|NOPE\w*|TILE\w*|HEAD_DIM|RECORD_BYTES|ROPE\w*)"
    pattern = re.compile(r"^\s*_?" + record + r"\s*=\s*(tl\.constexpr\()?\s*\d", re.M)
    offenders = [
        str(p.relative_to(ROOT))
        for p in (ROOT / "python" / "longattn").rglob("*.py")
        if p.name != "fp8.py" and pattern.search(p.read_text())
    ]
    assert offenders == []
