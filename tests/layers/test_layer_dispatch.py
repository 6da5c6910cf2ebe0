"""A layer step checks each op's arguments once and chooses each op's backend once: the ops'
prepare() run in HybridAttention.prepare, before anything is written, and their custom ops take
those prepared inputs without validating or selecting again."""

import longattn
import pytest
import torch
from longattn.backends import registry
from longattn.ops.op import all_ops

from tests.layers.helpers import make_manager, make_sequence, tiny_layer

CALLS = {"swa": 2, "csa": 5, "hca": 3}  # append + attention; + compress; + index compress + top-k


@pytest.mark.parametrize("backend", [None, "reference"])
@pytest.mark.parametrize("kind", ["swa", "csa", "hca"])
def test_one_check_and_one_selection_per_op(kind, backend, monkeypatch):
    layer = tiny_layer(kind)
    m = make_manager(layer, 4)
    att = longattn.HybridAttention(layer, m, kv_dtype=torch.float32, backend=backend)
    m.add_sequence("a")
    x = make_sequence(layer, 9, torch.Generator().manual_seed(0))
    selects, rebuilt = [], []
    real_select = registry.select
    monkeypatch.setattr(registry, "select", lambda op, *a, **k: selects.append(op) or real_select(op, *a, **k))
    for op in all_ops():
        real = op._from_schema
        monkeypatch.setattr(op, "_from_schema", lambda *a, _real=real, _op=op.name: rebuilt.append(_op) or _real(*a))
    with torch.no_grad():
        att(m.plan(["a"], [0, 9]), **x)
    assert len(selects) == CALLS[kind], selects
    assert rebuilt == []  # no op checked its inputs a second time
