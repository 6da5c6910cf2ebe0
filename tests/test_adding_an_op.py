"""Adding an op is one new folder (README.md, "Adding an op"): an op package written outside the
library, in the layout of ``python/longattn/ops/<op>/`` (op.py, support.py, reference.py), becomes a
checked custom op with backend dispatch, ``longattn.info()`` listing and opcheck, with no file of the
library edited. Run in a subprocess: the new custom op must not stay registered in the test process."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

OP_PY = '''
"""scale_rows(x [T, D], s [T]) -> x * s[:, None]: the smallest op with an inputs type."""
import dataclasses
from typing import Optional

import torch

from longattn._checks import ArgChecker
from longattn.ops.op import Op

from .support import IMPLS


@dataclasses.dataclass(frozen=True)
class Inputs:
    x: torch.Tensor
    s: torch.Tensor

    @property
    def device(self):
        return self.x.device

    def to_schema(self):
        return (self.x, self.s)


def prepare(x, s) -> Inputs:
    chk = ArgChecker("scale_rows")
    chk.tensor("x", x, ("T", "D"))
    chk.tensor("s", s, ("T",))
    chk.dim("s", s, 0, x.shape[0], "one scale per row of x")
    return Inputs(x, s)


OP = Op(
    "test_only_scale_rows",
    "(Tensor x, Tensor s, str? backend) -> Tensor",
    inputs_type=Inputs,
    from_schema=prepare,
    fake=lambda x, s, backend: torch.empty_like(x),
    impls=IMPLS,
)


def scale_rows(x, s, *, backend: Optional[str] = None):
    return OP.run(prepare(x, s), backend)
'''

SUPPORT_PY = """
from longattn.backends.base import Impl

IMPLS = {"reference": Impl("extra_ops.scale_rows.reference:run")}
"""

REFERENCE_PY = """
def run(inp):
    return inp.x * inp.s[:, None].to(inp.x.dtype)
"""

CHECK = """
import pytest
import torch
import longattn
from longattn.backends import BackendError
from longattn.ops.op import get_op, ops_of_backend

from extra_ops.scale_rows.op import scale_rows

x, s = torch.randn(5, 7), torch.randn(5)
assert torch.equal(scale_rows(x, s), x * s[:, None])                     # dispatch to the reference
assert torch.equal(torch.ops.longattn.test_only_scale_rows(x, s, None), x * s[:, None])
with pytest.raises(ValueError, match="`s`"):                            # checked at the custom op too
    torch.ops.longattn.test_only_scale_rows(x, torch.randn(4), None)
with pytest.raises(BackendError, match="triton"):                        # declared support only
    scale_rows(x, s, backend="triton")
assert "test_only_scale_rows" in ops_of_backend("reference")
assert "test_only_scale_rows" in longattn.info(print_report=False)       # listed with its backends
assert get_op("test_only_scale_rows").impls.keys() == {"reference"}
torch.library.opcheck(torch.ops.longattn.test_only_scale_rows.default, (x, s, None))
print("NEW OP OK")
"""


def test_a_new_op_is_one_folder(tmp_path):
    pkg = tmp_path / "extra_ops" / "scale_rows"
    pkg.mkdir(parents=True)
    (tmp_path / "extra_ops" / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / "op.py").write_text(textwrap.dedent(OP_PY))
    (pkg / "support.py").write_text(textwrap.dedent(SUPPORT_PY))
    (pkg / "reference.py").write_text(textwrap.dedent(REFERENCE_PY))
    (tmp_path / "check.py").write_text(textwrap.dedent(CHECK))
    env_path = os.pathsep.join([str(tmp_path), str(REPO / "python")])
    r = subprocess.run(
        [sys.executable, str(tmp_path / "check.py")],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": env_path},
        timeout=300,
    )
    assert r.returncode == 0 and "NEW OP OK" in r.stdout, r.stdout + r.stderr
