"""Tests of the Triton backend (kernels vs the float64 oracle and the reference).

Device-agnostic: with a CUDA device and ``TRITON_INTERPRET`` not "1" (e.g. ``TRITON_INTERPRET=0``;
tests/conftest.py defaults it to "1") they run the compiled kernels on the GPU; otherwise on CPU
tensors through the Triton interpreter. Inputs are built on the CPU and moved to ``DEVICE``.

Tolerance rules:
- fp32: the derived bound of ``tests/tolerance.py`` (via ``check_against_oracle``).
- bf16 / fp16 (FlashAttention's rule): max |kernel - oracle| <= 2 * max |lowp - oracle| + floor,
  where ``lowp`` is ``lowp_sparse_attention`` below, a PyTorch run of the same math at the precision
  a tensor-core kernel uses (fp32 logits from the low-precision inputs, P rounded to the input dtype
  before P.V, output rounded), and floor = 2**-16 * max |oracle| (tiny next to a bf16 ulp, 2**-8).
  lse is fp32 in every case and meets the derived fp32 bound.
"""

from __future__ import annotations

import importlib.util
import os

import pytest
import torch

HAS_TRITON = importlib.util.find_spec("triton") is not None
INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
ON_GPU = torch.cuda.is_available() and not INTERPRET
DEVICE = "cuda" if ON_GPU else "cpu"
CAN_RUN = HAS_TRITON and (INTERPRET or ON_GPU)
SKIP_REASON = (
    "triton is not installed: the Triton backend is not tested"
    if not HAS_TRITON
    else "no CUDA device and TRITON_INTERPRET != 1: the Triton kernels cannot run here"
)
requires_triton = pytest.mark.skipif(not CAN_RUN, reason=SKIP_REASON)

LOWP_FLOOR = 2.0**-16


def to_device(args: dict) -> dict:
    return {k: (v.to(DEVICE) if isinstance(v, torch.Tensor) else v) for k, v in args.items()}


def canonical(args: dict) -> dict:
    """The op's canonical keyword arguments (what a backend receives) from make_sparse_inputs."""
    a = dict(args)
    D = a["q"].shape[-1]
    if isinstance(a["kv"], torch.Tensor):
        a["kv"] = a["kv"].reshape(-1, D)
    for k in ("extra_kv", "extra_indices", "extra_topk_length"):
        a.setdefault(k, None)
    if a.get("softmax_scale") is None:
        a["softmax_scale"] = D**-0.5
    if a.get("attn_sink") is not None:
        a["attn_sink"] = a["attn_sink"].float()
    return a


def _rows_of(kv, D):
    if isinstance(kv, torch.Tensor):
        return kv.reshape(-1, D)
    from longattn.cache import dequantize_kv_fp8

    return dequantize_kv_fp8(kv).reshape(-1, D)


def _valid_keys(rows, idx_row, length):
    n = rows.shape[0]
    idx = idx_row.long()[: max(0, min(len(idx_row), length))]
    idx = idx[(idx >= 0) & (idx < n)]
    return rows[idx]


def lowp_sparse_attention(args: dict):
    """The same math at tensor-core precision, in PyTorch: fp32 logits of the input-dtype values,
    p = exp(l - max) in fp32, P rounded to q's dtype before P.V (fp32 accumulation), the sum of P in
    fp32, output rounded to q's dtype. Returns out [T, H, D] (q's dtype, CPU)."""
    q = args["q"].cpu()
    T, H, D = q.shape
    dt = q.dtype
    scale = args.get("softmax_scale") or D**-0.5
    streams = [(_rows_of(args["kv"], D).cpu(), args["indices"].cpu(), args.get("topk_length"))]
    if args.get("extra_indices") is not None:
        streams.append(
            (_rows_of(args["extra_kv"], D).cpu(), args["extra_indices"].cpu(), args.get("extra_topk_length"))
        )
    sink = args.get("attn_sink")
    out = torch.zeros(T, H, D, dtype=torch.float32)
    for t in range(T):
        keys = []
        for rows, idx, lengths in streams:
            length = idx.shape[1] if lengths is None else int(lengths[t])
            keys.append(_valid_keys(rows.to(dt).float(), idx[t], length))
        k = torch.cat(keys) if keys else torch.zeros(0, D)
        if k.shape[0] == 0:
            continue
        logits = (q[t].float() @ k.T) * scale  # [H, n]
        m = logits.max(dim=1, keepdim=True).values
        p = torch.exp(logits - m)
        denom = p.sum(dim=1, keepdim=True)
        o = (p.to(dt).float() @ k) / denom
        if sink is not None:
            lse = (m + torch.log(denom)).squeeze(1)
            g = torch.sigmoid(lse - sink.cpu().float())
            o = o * g.unsqueeze(1)
        out[t] = o
    return out.to(dt)


def assert_lowp_rule(out, ref_out, lowp_out, what):
    """max |out - ref| <= 2 max |lowp - ref| + floor (identical non-finite masks; see module doc)."""
    a, r, b = out.double().cpu(), ref_out.double().cpu(), lowp_out.double().cpu()
    assert torch.isfinite(a).all(), f"{what}: non-finite output"
    err = float((a - r).abs().max()) if a.numel() else 0.0
    base = float((b - r).abs().max()) if b.numel() else 0.0
    floor = LOWP_FLOOR * (float(r.abs().max()) if r.numel() else 0.0) + 1e-30
    assert err <= 2 * base + floor, f"{what}: error {err:.3e} > 2 x low-precision error {base:.3e} + {floor:.1e}"
    return err, base
