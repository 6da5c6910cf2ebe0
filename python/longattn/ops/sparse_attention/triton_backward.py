"""Triton kernel for the backward of ``sparse_attention`` (float pools; the math of backward.py).

Grid: one program per query token; it walks its heads in blocks of ``BLOCK_H`` (the M dimension of
its matmuls) and both index rows in blocks of ``BLOCK_N`` keys, recomputing the probabilities from
the saved log-sum-exps (nothing ``[T, K]`` was kept by the forward):

    s = scale q k^T,  p = exp(s - L),  dp = dout k^T,  ds = p (dp - delta) + dlse exp(s - lse)
    dq += scale ds k,   d row += scale ds^T q + p^T dout    (the row is key and value)

``L = logaddexp(lse, sink)``, ``delta = <dout, out>`` and the sink's gradient are ``[T, H]``
elementwise terms computed by the launcher in PyTorch. Row gradients go to an fp32 ``[num_slots, D]``
buffer with ``tl.atomic_add`` (fast, summation order not fixed), or, when PyTorch's deterministic mode
is on, to a ``[tokens, K, D]`` workspace that the program owns (no race: one program per token adds
all its head blocks) and that is summed into the rows in a fixed order (``_add_rows_in_fixed_order``)
in token chunks (deterministic; costs one workspace write and read, ``T * K * D * 4`` bytes, per chunk).

The head dim is walked in tiles of ``BLOCK_D`` (64): per key block, ``s`` and ``dp`` are summed over
the tiles, then each tile's ``dq`` (the token's own fp32 rows: read, add, write) and row gradient are
produced; nothing spills at D = 512 (tests/triton/sm90_compile.py). ``s`` and ``dp`` take their
inputs as they are when q, dout and both pools share one 16-bit dtype (``CDT``: tensor cores, and the
products of two bf16 / fp16 numbers are exact in fp32, so nothing is lost), else widened to fp32;
the other three products have an fp32 operand (``ds``, ``p``) and are fp32 dots (FMA on NVIDIA,
fp32 MFMA on AMD). q / dout tiles are reloaded per key block; no async copies.
"""

from __future__ import annotations

from typing import List, Optional, Tuple

import torch
import triton
import triton.language as tl

from ...memory import chunk_budget_bytes, rows_per_chunk
from ..triton_utils import AMD_TILES, TL_DTYPE, cast_in, interpreting, next_power_of_2, tile_capability
from .reference import valid_mask

_NEG_INF = tl.constexpr(float("-inf"))


@triton.jit
def _stream_bwd(
    p_q_t, stride_qh, stride_qd, p_do_t, stride_doh, stride_dod, p_dq_t, b_L, b_lse, b_delta, b_dlse, b_has,
    o_h, m_h, p_kv, stride_row, stride_d, num_slots, p_idx_row, stride_ik, n_pos, p_dkv, p_ws_row, ws_col0,
    scale, D, HAS_DLSE: tl.constexpr, ATOMIC: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    CDT: tl.constexpr,
):  # fmt: skip
    """One index row of one token for a block of heads ``o_h``. Per key block: ``s`` and ``dp`` summed
    over head-dim tiles, then per tile: ``dq`` (this token's fp32 rows, owned by this program: read,
    add, write) and the rows' gradient."""
    for n0 in range(0, n_pos, BLOCK_N):
        o_n = n0 + tl.arange(0, BLOCK_N)
        m_n = o_n < n_pos
        b_idx = tl.load(p_idx_row + o_n.to(tl.int64) * stride_ik, mask=m_n, other=-1).to(tl.int64)
        m_n = m_n & (b_idx >= 0) & (b_idx < num_slots)
        i_slot = tl.where(m_n, b_idx, 0)
        b_s = tl.zeros([o_h.shape[0], BLOCK_N], dtype=tl.float32)
        b_dp = tl.zeros([o_h.shape[0], BLOCK_N], dtype=tl.float32)
        for d0 in range(0, D, BLOCK_D):  # [BLOCK_H, BLOCK_N] = sum over head-dim tiles
            o_d = d0 + tl.arange(0, BLOCK_D)
            m_d = o_d < D
            b_k = cast_in(tl.load(p_kv + i_slot[:, None] * stride_row + o_d[None, :] * stride_d,
                                  mask=m_n[:, None] & m_d[None, :], other=0.0), CDT)  # fmt: skip
            m_hd = m_h[:, None] & m_d[None, :]
            b_q = tl.load(p_q_t + o_h[:, None] * stride_qh + o_d[None, :] * stride_qd, mask=m_hd, other=0.0)
            b_do = tl.load(p_do_t + o_h[:, None] * stride_doh + o_d[None, :] * stride_dod, mask=m_hd, other=0.0)
            b_s += tl.dot(cast_in(b_q, CDT), tl.trans(b_k), input_precision="ieee")
            b_dp += tl.dot(cast_in(b_do, CDT), tl.trans(b_k), input_precision="ieee")
        b_s = tl.where(m_n[None, :], b_s * scale, _NEG_INF)
        b_p = tl.where(b_has[:, None] & m_h[:, None], tl.exp(b_s - b_L[:, None]), 0.0)
        b_ds = b_p * (b_dp - b_delta[:, None])
        if HAS_DLSE:
            b_ds += b_dlse[:, None] * tl.where(b_has[:, None], tl.exp(b_s - b_lse[:, None]), 0.0)
        b_ds = tl.where(m_n[None, :] & m_h[:, None], b_ds, 0.0)
        for d0 in range(0, D, BLOCK_D):
            o_d = d0 + tl.arange(0, BLOCK_D)
            m_d = o_d < D
            m_nd = m_n[:, None] & m_d[None, :]
            m_hd = m_h[:, None] & m_d[None, :]
            b_k = cast_in(tl.load(p_kv + i_slot[:, None] * stride_row + o_d[None, :] * stride_d, mask=m_nd,
                                  other=0.0), tl.float32)  # fmt: skip
            b_q = tl.load(p_q_t + o_h[:, None] * stride_qh + o_d[None, :] * stride_qd, mask=m_hd, other=0.0)
            b_do = tl.load(p_do_t + o_h[:, None] * stride_doh + o_d[None, :] * stride_dod, mask=m_hd, other=0.0)
            b_q = cast_in(b_q, tl.float32)
            b_do = cast_in(b_do, tl.float32)
            p_dq = p_dq_t + o_h[:, None] * D + o_d[None, :]
            b_dq = tl.load(p_dq, mask=m_hd, other=0.0) + tl.dot(b_ds, b_k, input_precision="ieee") * scale
            tl.store(p_dq, b_dq, mask=m_hd)
            # [BLOCK_N, BLOCK_D]: the rows' gradient from this head block
            b_dk = tl.dot(tl.trans(b_ds), b_q, input_precision="ieee") * scale
            b_dk += tl.dot(tl.trans(b_p), b_do, input_precision="ieee")
            if ATOMIC:
                tl.atomic_add(p_dkv + i_slot[:, None] * D + o_d[None, :], b_dk, mask=m_nd)
            else:  # this token's own workspace rows: columns ws_col0 + n
                p_w = p_ws_row + (ws_col0 + o_n)[:, None].to(tl.int64) * D + o_d[None, :]
                m_w = (o_n < n_pos)[:, None] & m_d[None, :]
                tl.store(p_w, tl.load(p_w, mask=m_w, other=0.0) + b_dk, mask=m_w)


@triton.jit
def _sparse_attn_bwd_kernel(
    p_q, stride_qt, stride_qh, stride_qd, p_do, stride_dot, stride_doh, stride_dod,
    p_L, p_lse, p_delta, p_dlse, p_dq,
    p_kv, stride_kr, stride_kd, num_slots, p_idx, stride_it, stride_ik, p_len, K,
    p_kv2, stride_k2r, stride_k2d, num_slots2, p_idx2, stride_i2t, stride_i2k, p_len2, K2,
    p_dkv, p_dkv2, p_ws, t_base, H, D, scale,
    HAS_LEN: tl.constexpr, HAS_EXTRA: tl.constexpr, HAS_ELEN: tl.constexpr, HAS_DLSE: tl.constexpr,
    ATOMIC: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    CDT: tl.constexpr,
):  # fmt: skip
    """Program = one query token (``t_base + program id``); ``p_dq`` fp32 ``[T, H, D]`` zeroed."""
    i_loc = tl.program_id(0).to(tl.int64)
    t = t_base + i_loc
    n1 = K
    if HAS_LEN:
        n1 = tl.minimum(tl.maximum(tl.load(p_len + t).to(tl.int32), 0), K)
    n2 = K2
    if HAS_ELEN:
        n2 = tl.minimum(tl.maximum(tl.load(p_len2 + t).to(tl.int32), 0), K2)
    p_ws_row = p_ws + i_loc * (K + K2) * D
    for h0 in range(0, H, BLOCK_H):
        o_h = h0 + tl.arange(0, BLOCK_H)
        m_h = o_h < H
        o_th = t * H + o_h
        b_L = tl.load(p_L + o_th, mask=m_h, other=0.0)
        b_lse = tl.load(p_lse + o_th, mask=m_h, other=float("-inf"))
        b_delta = tl.load(p_delta + o_th, mask=m_h, other=0.0)
        b_dlse = tl.load(p_dlse + o_th, mask=m_h, other=0.0)
        b_has = b_lse != _NEG_INF
        _stream_bwd(p_q + t * stride_qt, stride_qh, stride_qd, p_do + t * stride_dot, stride_doh, stride_dod,
                    p_dq + t * H * D, b_L, b_lse, b_delta, b_dlse, b_has, o_h, m_h, p_kv, stride_kr, stride_kd,
                    num_slots, p_idx + t * stride_it, stride_ik, n1, p_dkv, p_ws_row, 0, scale, D,
                    HAS_DLSE, ATOMIC, BLOCK_N, BLOCK_D, CDT)  # fmt: skip
        if HAS_EXTRA:
            _stream_bwd(p_q + t * stride_qt, stride_qh, stride_qd, p_do + t * stride_dot, stride_doh, stride_dod,
                        p_dq + t * H * D, b_L, b_lse, b_delta, b_dlse, b_has, o_h, m_h, p_kv2, stride_k2r,
                        stride_k2d, num_slots2, p_idx2 + t * stride_i2t, stride_i2k, n2, p_dkv2, p_ws_row, K, scale,
                        D, HAS_DLSE, ATOMIC, BLOCK_N, BLOCK_D, CDT)  # fmt: skip


def compute_dtype(q: torch.Tensor, dout: torch.Tensor, pools: List[torch.Tensor]) -> torch.dtype:
    """The dtype ``s = q k^T`` and ``dp = dout k^T`` are computed in: the inputs' own when they share a
    16-bit float dtype (exact products, fp32 accumulation), else fp32; fp32 under the interpreter
    (its bf16 dots are wrong: ../shared/docs/toolchain.md), as the forward's ``compute_dtype``."""
    dtypes = {q.dtype, dout.dtype, *(p.dtype for p in pools)}
    if interpreting() or len(dtypes) > 1 or q.dtype not in (torch.bfloat16, torch.float16):
        return torch.float32
    return q.dtype


def default_config(
    H: int,
    D: int,
    device: Optional[torch.device] = None,
    capability: Optional[Tuple[int, int]] = None,
    dtype: torch.dtype = torch.float32,
) -> dict:
    """Tiles: ``BLOCK_H`` heads x ``BLOCK_N`` keys x ``BLOCK_D`` head dims, warps, for ``s`` / ``dp``
    computed in ``dtype`` (``compute_dtype``). ``capability`` as in the forward's ``default_config``
    (queried from ``device`` when None). Chosen from offline compiles (D = 512 / 576, triton
    3.6.0-3.9.0; never timed on a GPU). A head block re-reads its keys and adds its share of each
    row's gradient (atomics), so fewer, larger head blocks move less.

    - NVIDIA, 16-bit: sm_90 up to 64 heads x 16 x 64, 8 warps (wgmma for ``s`` / ``dp``, computed
      once, 248 registers, no spills); sm_80 / sm_89 up to 32 heads x 16 x 64, 8 warps (mma.sync,
      Triton's layout computing ``s`` / ``dp`` 4 times; 175-244 registers, no spills: 64 heads spill
      160-348 B with triton 3.9.0, 64 x 16 x 32 20 B on sm_89).
    - NVIDIA fp32, and the interpreter: 16 x 16 x 64, 8 warps (178 registers, no spills; 64-head
      fp32 tiles spill 640+ B on sm_90, 4 warps 8 B).
    - AMD (gfx942): the forward's AMD rule (no product computed twice, no VGPR spilled to scratch,
      then the most heads): up to 64 heads with one wave per 16 of them (an MFMA gives each wave 16
      rows), 64 x 16 x 64 x 4 waves at H >= 64: 200-228 VGPRs, no spill but 2 VGPRs with triton 3.6.0
      (budgeted in tests/triton). The NVIDIA fp32 tile's 8 waves computed every product 8 times
      there."""
    block_d = min(64, max(16, next_power_of_2(D)))
    block_h = max(16, min(64, next_power_of_2(H)))
    if device is None or device.type != "cuda" or interpreting():
        capability = None
    else:
        capability = capability or tile_capability(device)
    if capability == AMD_TILES:
        return dict(BLOCK_H=block_h, BLOCK_N=16, BLOCK_D=block_d, num_warps=block_h // 16)
    if capability is not None and dtype != torch.float32:  # NVIDIA, 16-bit
        block_h = block_h if capability >= (9, 0) else min(block_h, 32)
    else:  # NVIDIA fp32, or the interpreter
        block_h = 16
    return dict(BLOCK_H=block_h, BLOCK_N=16, BLOCK_D=block_d, num_warps=8)


def sparse_attention_backward(
    q: torch.Tensor,
    streams: List[Tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]],
    attn_sink: Optional[torch.Tensor],
    scale: float,
    out: torch.Tensor,
    lse: torch.Tensor,
    dout: Optional[torch.Tensor],
    dlse: Optional[torch.Tensor],
    deterministic: Optional[bool] = None,
    config: Optional[dict] = None,
):
    """Gradients ``(dq, [d rows per stream], dsink)`` like ``backward.sparse_attention_backward``; uses
    the forward's ``out`` for ``delta``. ``deterministic`` (default: PyTorch's deterministic mode)."""
    T, H, D = q.shape
    dev = q.device
    if deterministic is None:
        deterministic = torch.are_deterministic_algorithms_enabled()
    lse = lse.to(torch.float32).contiguous()
    do = dout if dout is not None else torch.zeros_like(q)
    delta = (do.to(torch.float32) * out.to(torch.float32)).sum(-1).contiguous()  # [T, H]
    has = lse != float("-inf")
    dsink = None
    if attn_sink is None:
        big_l = lse
    else:
        sink = attn_sink.to(torch.float32)
        big_l = torch.logaddexp(lse, sink.unsqueeze(0)).contiguous()
        p_sink = torch.where(has, torch.sigmoid(sink.unsqueeze(0) - lse), torch.zeros_like(lse))
        dsink = -(p_sink * delta).sum(0)
    dl = (dlse.to(torch.float32) if dlse is not None else torch.zeros_like(lse)).contiguous()
    dq = torch.zeros(T, H, D, dtype=torch.float32, device=dev)
    drows = [torch.zeros(rows.shape[0], D, dtype=torch.float32, device=dev) for rows, _, _ in streams]
    if T == 0:
        return dq, drows, dsink
    (kv, idx, length) = streams[0]
    extra = streams[1] if len(streams) > 1 else None
    (kv2, idx2, length2) = extra if extra is not None else (kv, idx, None)
    K, K2 = idx.shape[1], (idx2.shape[1] if extra is not None else 0)
    cdt = compute_dtype(q, do, [rows for rows, _, _ in streams])
    cfg = default_config(H, D, dev, dtype=cdt)
    if config:
        cfg.update(config)
    dummy = torch.zeros(1, dtype=torch.int32, device=dev)
    # deterministic: per-token workspace rows, token chunks within the memory budget
    step = T if not deterministic else rows_per_chunk(max(1, (K + K2) * D * 4), T, chunk_budget_bytes())
    for t0 in range(0, T, step):
        t1 = min(T, t0 + step)
        ws = torch.zeros((t1 - t0) * (K + K2) * D if deterministic else 1, dtype=torch.float32, device=dev)
        _sparse_attn_bwd_kernel[(t1 - t0,)](
            q, q.stride(0), q.stride(1), q.stride(2), do, do.stride(0), do.stride(1), do.stride(2),
            big_l, lse, delta, dl, dq,
            kv, kv.stride(0), kv.stride(1), kv.shape[0], idx, idx.stride(0), idx.stride(1),
            length if length is not None else dummy, K,
            kv2, kv2.stride(0), kv2.stride(1), kv2.shape[0], idx2, idx2.stride(0), idx2.stride(1),
            length2 if length2 is not None else dummy, K2,
            drows[0], drows[-1], ws, t0, H, D, float(scale),
            HAS_LEN=length is not None, HAS_EXTRA=extra is not None, HAS_ELEN=length2 is not None,
            HAS_DLSE=dlse is not None, ATOMIC=not deterministic, CDT=TL_DTYPE[cdt], **cfg,
        )  # fmt: skip
        if deterministic:  # sum the workspace rows into the pools' rows in a fixed order
            w = ws.view(t1 - t0, K + K2, D)
            for i, (rows, ix, ln) in enumerate(streams):
                lo, hi = (0, K) if i == 0 else (K, K + K2)
                ids = ix[t0:t1].long()
                ok = valid_mask(rows, ids, 0, None if ln is None else ln[t0:t1])
                _add_rows_in_fixed_order(drows[i], torch.where(ok, ids, 0).reshape(-1),
                                         torch.where(ok.unsqueeze(-1), w[:, lo:hi], 0.0).reshape(-1, D))  # fmt: skip
    return dq, drows, dsink


def _add_rows_in_fixed_order(dst: torch.Tensor, ids: torch.Tensor, vals: torch.Tensor) -> None:
    """``dst[ids[j]] += vals[j]`` with a summation order that does not change between runs. On CUDA,
    ``index_add_`` uses atomics (any order) unless PyTorch's deterministic mode is on, while
    ``index_put_(accumulate=True)`` always sorts the indices and sums each row's values in that order
    (what deterministic ``index_add_`` runs); on the CPU ``index_add_`` is a serial loop."""
    if dst.is_cuda:
        dst.index_put_((ids,), vals, accumulate=True)
    else:
        dst.index_add_(0, ids, vals)
