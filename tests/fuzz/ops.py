"""The fuzzed ops: name -> strategy, targeted examples, build / run / check, backends, rule categories.

``examples`` is the default number of *generated* examples per backend in CI (the targeted ones come
on top). The Triton interpreter (~0.1-0.5 s per call) and the emulator are slow, so they get fewer.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Dict, Optional, Sequence, Tuple

from . import op_append, op_combine, op_compress, op_indexer, op_sparse


@dataclasses.dataclass(frozen=True)
class FuzzOp:
    name: str
    backends: Tuple[str, ...]
    categories: Tuple[str, ...]
    strategy: Callable
    targeted: Callable
    build: Callable
    run: Callable
    check: Callable
    describe: Optional[Callable] = None
    not_applicable: Dict[str, Sequence[str]] = dataclasses.field(default_factory=dict)
    examples: Dict[str, int] = dataclasses.field(default_factory=dict)

    def applicable(self, backend: str) -> Tuple[str, ...]:
        na = set(self.not_applicable.get(backend, ()))
        return ("no_exception",) + tuple(c for c in self.categories if c not in na)


OPS: Dict[str, FuzzOp] = {
    op.name: op
    for op in [
        FuzzOp("sparse_attention", op_sparse.BACKENDS, op_sparse.CATEGORIES, op_sparse.strategy, op_sparse.targeted,
               op_sparse.build, op_sparse.run, op_sparse.check, not_applicable=op_sparse.NOT_APPLICABLE,
               examples={"reference": 40, "triton": 10, "ascend_sim": 25}),
        FuzzOp("merge_attention_states", op_combine.BACKENDS, op_combine.MERGE_CATEGORIES, op_combine.merge_strategy,
               op_combine.merge_targeted, op_combine.merge_build, op_combine.merge_run, op_combine.merge_check,
               examples={"reference": 40, "triton": 15, "ascend_sim": 40}),
        FuzzOp("apply_attention_sink", op_combine.BACKENDS, op_combine.SINK_CATEGORIES, op_combine.sink_strategy,
               op_combine.sink_targeted, op_combine.sink_build, op_combine.sink_run, op_combine.sink_check,
               examples={"reference": 40, "triton": 15, "ascend_sim": 40}),
        FuzzOp("indexer_logits", op_indexer.BACKENDS, op_indexer.LOGITS_CATEGORIES,
               lambda backend=None: op_indexer.strategy(False, backend), lambda: op_indexer.targeted(False),
               op_indexer.build, op_indexer.logits_run, op_indexer.logits_check,
               examples={"reference": 30, "triton": 10, "ascend_sim": 20}),
        FuzzOp("indexer_topk", op_indexer.BACKENDS, op_indexer.TOPK_CATEGORIES,
               lambda backend=None: op_indexer.strategy(True, backend), lambda: op_indexer.targeted(True),
               op_indexer.build, op_indexer.topk_run, op_indexer.topk_check,
               examples={"reference": 30, "triton": 10, "ascend_sim": 20}),
        FuzzOp("compress_pool", op_compress.POOL_BACKENDS, op_compress.POOL_CATEGORIES, op_compress.pool_strategy,
               op_compress.pool_targeted, op_compress.pool_build, op_compress.pool_run, op_compress.pool_check,
               examples={"reference": 40, "triton": 12, "ascend_sim": 40}),
        FuzzOp("compress_kv", op_compress.KV_BACKENDS, op_compress.KV_CATEGORIES, op_compress.kv_strategy,
               op_compress.kv_targeted, op_compress.kv_build, op_compress.kv_run, op_compress.kv_check,
               describe=op_compress.kv_describe, examples={"reference": 25, "triton": 6, "ascend_sim": 15}),
        FuzzOp("append_kv", op_append.BACKENDS, op_append.CATEGORIES, op_append.strategy, op_append.targeted,
               op_append.build, op_append.run, op_append.check, describe=lambda kw, ctx=None: op_append.describe(kw),
               examples={"reference": 40, "triton": 12, "ascend_sim": 25}),
    ]
}  # fmt: skip

ALL_BACKENDS = ("reference", "triton", "ascend_sim")


def pairs():
    """Every (op, backend) fuzzed on CPU."""
    return [(name, b) for name, op in OPS.items() for b in op.backends]
