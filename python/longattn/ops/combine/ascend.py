"""``merge_attention_states`` / ``apply_attention_sink`` on the Ascend C kernels (ascend_c/combine): what
they decline and their arguments, for the ``ascend_sim`` and ``ascend`` backends (the same kernel source;
imports neither the extension nor torch_npu until a call runs).

The kernels take any T, H >= 1, any D (columns in tiles of up to 1024, DataCopyPad for any width),
fp32 / bf16 / fp16 outs and lse / sinks of any float dtype (widened to fp32 by the host, exactly as the
reference does). They decline only what their 32-bit offsets cannot address.

A third entry of the same source, ``merge_partial_states``, is no public op: it merges the S partial
states of ``sparse_attention``'s split-KV path in one launch (``run_merge_partials``).
"""

from __future__ import annotations

from typing import List, Optional

import torch

from ...backends.ascend import kernel_of

LIMIT = 2**31
MAX_PARTIALS = 64  # kMergePartialsMaxS (ascend_c/combine/op_host/combine_tiling.h): partials of one launch
DTYPE_CODE = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2}  # DataTypeCode (common/longattn_types.h)


def _limits(T: int, H: int, D: int) -> List[str]:
    out = []
    if T * H * D >= LIMIT:
        out.append(f"the outs have T*H*D = {T * H * D} >= 2**31 elements (int32 offsets)")
    elif T * H >= LIMIT:
        out.append(f"T*H = {T * H} >= 2**31 rows (int32 offsets)")
    return out


def merge_reasons(inp) -> List[str]:
    return _limits(*inp.out_a.shape)


def sink_reasons(inp) -> List[str]:
    return _limits(*inp.out.shape)


def run_merge(backend: str, inp):
    """``MergeInputs`` -> (out, lse) on the kernel build of ``backend``."""
    out, lse = kernel_of(backend, "merge_attention_states")(inp.out_a, inp.lse_a, inp.out_b, inp.lse_b)
    return out, lse


def run_sink(backend: str, inp):
    """``SinkInputs`` -> out on the kernel build of ``backend``."""
    return kernel_of(backend, "apply_attention_sink")(inp.out, inp.lse, inp.attn_sink)


def run_merge_partials(
    backend: str,
    partial_out: torch.Tensor,
    partial_lse: torch.Tensor,
    attn_sink: Optional[torch.Tensor],
    out_dtype: torch.dtype,
):
    """Partial states ``[T, S, H, D]`` fp32 / ``[T, S, H]`` (S <= ``MAX_PARTIALS``) -> (out ``[T, H, D]`` in
    ``out_dtype``, lse ``[T, H]`` fp32): the S-way merge (merge_attention_states' rules), then the sink,
    rounded once, in one launch of the ``merge_partial_states`` kernel."""
    fn = kernel_of(backend, "merge_partial_states")
    return fn(partial_out, partial_lse, attn_sink, DTYPE_CODE[out_dtype])
