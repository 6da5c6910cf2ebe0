"""Running one op on one backend in the op x backend tests (tests/ops).

The ``backend`` fixture (tests/conftest.py) is parametrised over every registered backend
(``registry.backend_names()`` at collection time) and skips, with the backend's own reason, those that
cannot run on the test device (``tests/helpers/device.py``). Inside a test, ``call`` runs an op with
``backend=name`` and turns that backend's refusal of the call (``BackendError``: its declared
``reasons``) into a skip that quotes them, so a backend that implements part of an op gets the rest of
the suite for free. ``declines`` asks without running.

Cost: a backend that emulates its device on this machine (the Ascend C emulator; the Triton interpreter
on CPU tensors) runs a kernel thousands of times slower than the reference. Cases sized for the
reference only (large shapes, long sweeps) call ``skip_if_emulated``: a case keeps running on every
backend it ran on before the op x backend layout, and new combinations are added where they are cheap.
"""

from __future__ import annotations

from typing import List, Optional

import pytest
import torch
from longattn.backends import registry
from longattn.ops.op import get_op

from tests.helpers.device import DEVICE, ON_GPU

REFERENCE = "reference"


def backend_names() -> List[str]:
    """Every registered backend, in registration order (the ``backend`` fixture's parameters)."""
    return registry.backend_names()


def device_reason(name: str, device=DEVICE) -> Optional[str]:
    """Why backend ``name`` cannot run on the test device at all (None: it can)."""
    return registry.get_backend(name).device_reason(torch.device(device))


def implements(op: str, name: str) -> bool:
    return name in get_op(op).impls


def _reasons_in(message: str, name: str) -> str:
    """The reasons of backend ``name`` in a BackendError message (its ``  - name: ...`` line)."""
    for line in message.splitlines():
        if line.startswith(f"  - {name}: "):
            return line[len(f"  - {name}: ") :]
    return message.splitlines()[0] if message else ""


def call(fn, *args, backend: str, **kwargs):
    """``fn(*args, backend=backend, **kwargs)``; a refusal of the call by ``backend`` (``BackendError``)
    becomes ``pytest.skip`` with that backend's reasons."""
    try:
        return fn(*args, backend=backend, **kwargs)
    except registry.BackendError as exc:
        pytest.skip(f"{backend} declines: {_reasons_in(str(exc), backend)}")


def declines(op: str, name: str, inputs, device=None) -> List[str]:
    """Why backend ``name`` declines the op's prepared ``inputs`` (empty: it accepts)."""
    return get_op(op).reasons(name, inputs, torch.device(device) if device is not None else None)


def skip_unless_implements(op: str, name: str) -> None:
    """Skip (before building any input) when backend ``name`` has no implementation of ``op``."""
    if not implements(op, name):
        pytest.skip(f"{name} does not implement {op}")


# Backends whose kernels are emulated on this machine, and how: the Ascend C emulator runs compiled
# C++ (tens of times the reference's cost); the Triton interpreter (no GPU) runs every program of a
# launch in Python (thousands of times).
EMULATED = {"ascend_sim": "the Ascend C CPU emulator"}
INTERPRETED = set()
if not ON_GPU:
    EMULATED["triton"] = "the Triton interpreter"
    INTERPRETED.add("triton")


def emulated(name: str) -> bool:
    return name in EMULATED


def skip_if_emulated(name: str, what: str = "a large shape", interpreted_only: bool = False) -> None:
    """Skip a case sized for native backends when ``name`` runs under an emulator here (``EMULATED``);
    ``interpreted_only``: only under the interpreter (the compiled emulator runs it)."""
    if name in (INTERPRETED if interpreted_only else EMULATED):
        where = (
            "the reference, compiled emulators and native backends"
            if interpreted_only
            else "the reference and native backends"
        )
        pytest.skip(f"{what}: too slow under {EMULATED[name]} (runs on {where})")


def other_or_reference(op: str, name: str) -> str:
    """``name`` if it implements ``op`` (a helper op of a composite check), else the reference."""
    return name if implements(op, name) else REFERENCE
