"""``torch.ops.longattn.*`` are public entry points: a direct call is validated exactly like the public
function (it used to reach the backends unchecked: a short ``topk_length`` or ``weights`` was read past
its end, Triton ``append_kv`` wrote past the pool), on every backend, before anything is written."""

import longattn
import pytest
import torch
from longattn.ops.op import get_op

BACKENDS = ["reference", "triton", "ascend_sim"]
T, H, D = 3, 2, 64


def _sparse(**over):
    a = dict(q=torch.randn(T, H, D), kv=torch.randn(16, D), kv_page_size=0,
             indices=torch.zeros(T, 4, dtype=torch.int32), topk_length=None, extra_kv=None, extra_page_size=0,
             extra_indices=None, extra_topk_length=None, attn_sink=None, softmax_scale=0.125)  # fmt: skip
    a.update(over)
    return "sparse_attention", list(a.values())


def _indexer(**over):
    a = dict(q=torch.randn(T, 2, 16), weights=torch.randn(T, 2), index_k=torch.randn(10, 16),
             visible_end=torch.full((T,), 10, dtype=torch.int32), topk=4, block_table=None, seq_ids=None,
             return_slots=False)  # fmt: skip
    a.update(over)
    return "indexer_topk", list(a.values())


def _compress(**over):
    a = dict(a=torch.randn(T, 2 * 8), b=torch.randn(T, 2 * 8), positions=torch.arange(T),
             token_rows=torch.zeros(T, dtype=torch.int32), ratio=4, overlap=True, state=torch.zeros(2, 4, 32),
             state_block_table=torch.tensor([[0, 1]], dtype=torch.int32), out=torch.zeros(2, 2, 8), out_page_size=0,
             out_block_table=torch.tensor([[0, 1]], dtype=torch.int32), norm_weight=torch.ones(8), eps=1e-6,
             rope_inv_freq=torch.ones(2))  # fmt: skip
    a.update(over)
    return "compress_kv", list(a.values())


def _append(**over):
    a = dict(pool=torch.zeros(4, 4, D), page_size=0, rows=torch.randn(T, D),
             slot_mapping=torch.tensor([0, 5, 9], dtype=torch.int32))  # fmt: skip
    a.update(over)
    return "append_kv", list(a.values())


CASES = {
    "short topk_length": (_sparse(topk_length=torch.zeros(1, dtype=torch.int32)), "`topk_length`"),
    "short attn_sink": (_sparse(attn_sink=torch.zeros(1)), "`attn_sink`"),
    "narrow kv": (_sparse(kv=torch.randn(16, D // 2)), "`kv`"),
    "short weights": (_indexer(weights=torch.randn(1, 2)), "`weights`"),
    "short visible_end": (_indexer(visible_end=torch.zeros(1, dtype=torch.int32)), "`visible_end`"),
    "short seq_ids": (
        _indexer(
            index_k=torch.randn(2, 5, 16),
            block_table=torch.zeros(1, 2, dtype=torch.int32),
            seq_ids=torch.zeros(1, dtype=torch.int32),
        ),
        "`seq_ids`",
    ),  # fmt: skip
    "topk 0": (_indexer(topk=0), "`topk`"),
    "short positions": (_compress(positions=torch.arange(1)), "`positions`"),
    "short norm_weight": (_compress(norm_weight=torch.ones(3)), "`norm_weight`"),
    "state width": (_compress(state=torch.zeros(2, 4, 8)), "`state`"),
    "too-wide rows": (_append(rows=torch.randn(T, 2 * D)), "`pool`"),
    "short slot_mapping": (_append(slot_mapping=torch.zeros(1, dtype=torch.int32)), "`slot_mapping`"),
    "fp8 page size": (_append(pool=torch.zeros(2, 600, dtype=torch.uint8), page_size=1), "Fp8KVPool"),
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", sorted(CASES))
def test_direct_calls_are_validated(case, backend):
    (name, args), words = CASES[case]
    written = [a.clone() for a in args if isinstance(a, torch.Tensor)]
    with pytest.raises((ValueError, TypeError)) as info:
        get_op(name).custom_op(*args, backend)
    assert words in str(info.value), str(info.value)
    for before, now in zip(written, [a for a in args if isinstance(a, torch.Tensor)]):
        assert torch.equal(before.nan_to_num(7.0), now.nan_to_num(7.0)), "a refused call wrote an input"


def test_direct_call_validates_once_public_call_once(monkeypatch):
    """The public function validates, and its custom op takes the prepared inputs without preparing
    them again; a direct custom-op call prepares them itself."""
    op = get_op("sparse_attention")
    calls = []
    real = op._from_schema
    monkeypatch.setattr(op, "_from_schema", lambda *a: calls.append(1) or real(*a))
    q, kv, idx = torch.randn(2, 2, 16), torch.randn(8, 16), torch.zeros(2, 3, dtype=torch.int32)
    longattn.sparse_attention(q, kv, idx)
    assert calls == []
    op.custom_op(q, kv, 0, idx, None, None, 0, None, None, None, 0.25, None)
    assert calls == [1]
