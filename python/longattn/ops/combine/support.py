"""What each backend can do for ``merge_attention_states`` / ``apply_attention_sink`` (declarations
only): reference and triton take every valid call; the Ascend C kernels have no combine op."""

from __future__ import annotations

from ...backends.base import Impl

_KERNELS = "longattn.ops.combine."
MERGE_IMPLS = {
    "reference": Impl(_KERNELS + "reference:run_merge"),
    "triton": Impl(_KERNELS + "triton_combine:run_merge"),
}
SINK_IMPLS = {
    "reference": Impl(_KERNELS + "reference:run_sink"),
    "triton": Impl(_KERNELS + "triton_combine:run_sink"),
}
