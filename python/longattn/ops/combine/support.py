"""What each backend can do for ``merge_attention_states`` / ``apply_attention_sink`` (declarations
only): reference and triton take every valid call; ascend_sim / ascend (ascend_c/combine) every call
whose outs have fewer than 2**31 elements (``ascend.py``)."""

from __future__ import annotations

import functools

from ...backends.base import Impl
from . import ascend

_KERNELS = "longattn.ops.combine."
MERGE_IMPLS = {
    "reference": Impl(_KERNELS + "reference:run_merge"),
    "triton": Impl(_KERNELS + "triton_combine:run_merge"),
    "ascend_sim": Impl(functools.partial(ascend.run_merge, "ascend_sim"), ascend.merge_reasons),
    "ascend": Impl(functools.partial(ascend.run_merge, "ascend"), ascend.merge_reasons),
}
SINK_IMPLS = {
    "reference": Impl(_KERNELS + "reference:run_sink"),
    "triton": Impl(_KERNELS + "triton_combine:run_sink"),
    "ascend_sim": Impl(functools.partial(ascend.run_sink, "ascend_sim"), ascend.sink_reasons),
    "ascend": Impl(functools.partial(ascend.run_sink, "ascend"), ascend.sink_reasons),
}
