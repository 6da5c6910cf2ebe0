"""Peers: other formulations of the same computation, run on the same inputs in the same run.

Every peer runs on the case's ``DenseView`` (the per-sequence contiguous cache dense model code holds,
plus a boolean mask that is True exactly on the keys the sparse call attends), so it computes the
same function over the same key set, only densely. Outputs are compared with ours (max |diff| of the
attention output; for index outputs, the fraction of our selected entries the peer also selected).

- ``dense_einsum``: the plain formulation of general model code (DeepSeek REF / HF eager style):
  scores over ALL keys in the input dtype, ``.float()``, ``-inf`` where masked, the sink logit appended
  as one more column, softmax, drop the sink column, probabilities in the input dtype @ values.
  Layer cases first run the dense indexer: per-head scores over all entries (fp32, like the package
  contract and DeepGEMM's logits), relu, weighted sum over heads, ``-inf`` where invisible,
  ``torch.topk``, then scatter the selection into the mask. Index cases stop after ``topk``.
- ``dense_einsum_fp32``: the same over an fp32 copy of the cache (made once, untimed): the precision
  the reference computes in, so a speed-up is not an artefact of a slow bf16 matmul (CPUs without
  AMX multiply bf16 slower than fp32).
- ``dense_sdpa``: ``torch.nn.functional.scaled_dot_product_attention`` with the boolean mask over the
  full context (``enable_gqa`` for the single KV head). The sink is exact via one extra key: every
  key gets a zero (D+1)-th dim, the sink key is e_D * (1/scale) with value 0 in the first D dims, and
  q's (D+1)-th dim holds sink[h], so the sink key's logit is sink[h]; the extra output dim is dropped.
- ``flex_attention`` (CUDA only here): ``torch.nn.attention.flex_attention`` with a block mask built
  from the same boolean mask (outside the timed call), compiled for the case's shape during the
  untimed setup (one call; its seconds are recorded as ``setup_compile_s``), ``return_lse`` for the
  sink factor.
- ``flash_mla`` (if ``import flash_mla`` works, CUDA): ``flash_mla_sparse_fwd`` on one flat KV
  tensor [window rows | compressed rows] with the combined index rows (the bf16 sparse kernel).
- ``flashinfer``: recorded as skipped with the reason (its DSv4 sparse kernels need an adapter this
  harness does not have yet, and SM100+).

A dense peer is skipped, with the reason recorded, when its estimated memory (dense cache copy +
[B, Tq, H, keys] scores) exceeds the memory limit or its estimated time exceeds ``peer_max_s``.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import time
from typing import Callable, Dict, Optional, Tuple

import torch
import torch.nn.functional as F

from .cases import Case, DenseView, dense_shape
from .device import synchronize

NEG_INF = float("-inf")
ATTN_GROUPS = ("sparse_attention.decode", "sparse_attention.prefill")
# Groups whose peers select the compressed keys themselves (dense indexer, then attention): the CSA
# composite and the CSA HybridAttention layer. The SWA / HCA layers attend a known key set (the mask).
LAYER_GROUPS = ("csa_layer.decode", "csa_layer.prefill", "hybrid_attention.csa.decode",
                "hybrid_attention.csa.prefill")  # fmt: skip
INDEXER_GROUPS = ("indexer_topk.decode", "indexer_topk.prefill")


# ------------------------------------------------------------------------------------------ dense math
def dense_indexer(v: DenseView) -> Tuple[torch.Tensor, torch.Tensor]:
    """Top-k entry ids [B, Tq, k] (logical) and whether each is a real (visible) pick."""
    B, Tq, Hi, Di = v.iq.shape
    N = v.ikeys.shape[1]
    s = torch.matmul(v.iq.float().reshape(B, Tq * Hi, Di), v.ikeys.float().transpose(1, 2))  # [B, Tq*Hi, N]
    s = s.relu_().view(B, Tq, Hi, N).mul_(v.iw.float().unsqueeze(-1))
    score = s.sum(dim=2)  # [B, Tq, N]
    del s
    invisible = torch.arange(N, device=score.device).view(1, 1, N) >= v.visible_end.long().unsqueeze(-1)
    score.masked_fill_(invisible, NEG_INF)
    val, idx = torch.topk(score, min(v.topk, N), dim=-1)
    return idx, val > NEG_INF


def _layer_mask(v: DenseView) -> torch.Tensor:
    idx, valid = dense_indexer(v)
    mask = v.window_mask.clone()
    mask.scatter_(2, v.comp_offset + idx, valid)  # ids are distinct per row: no write collides
    return mask


def einsum_attention(v: DenseView, mask: torch.Tensor, keys: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``keys``: the cache in another dtype (fp32 variant); default ``v.keys`` (the input dtype)."""
    B, Tq, H, D = v.q.shape
    keys = v.keys if keys is None else keys
    q = v.q.to(keys.dtype)
    s = torch.matmul(q.reshape(B, Tq * H, D), keys.transpose(1, 2))  # [B, Tq*H, width] in the cache dtype
    s = s.float().mul_(v.scale).view(B, Tq, H, -1)
    s.masked_fill_(~mask.unsqueeze(2), NEG_INF)
    s = torch.cat([s, v.sink.float().view(1, 1, H, 1).expand(B, Tq, H, 1)], dim=-1)
    p = torch.softmax(s, dim=-1)[..., :-1].to(keys.dtype)
    del s
    out = torch.matmul(p.reshape(B, Tq * H, -1), keys)
    return out.view(B * Tq, H, D).to(v.q.dtype)


class _SdpaInputs:
    """q and keys with the extra sink dim (built once, outside the timed call)."""

    def __init__(self, v: DenseView):
        B, Tq, H, D = v.q.shape
        width = v.keys.shape[1]
        dt = v.keys.dtype
        kx = torch.zeros(B, 1 + width, D + 1, dtype=dt, device=v.keys.device)
        kx[:, 0, D] = 1.0 / v.scale
        kx[:, 1:, :D] = v.keys
        qx = torch.zeros(B, H, Tq, D + 1, dtype=dt, device=v.q.device)
        qx[..., :D] = v.q.transpose(1, 2)
        qx[..., D] = v.sink.to(dt).view(1, H, 1)
        self.q, self.k, self.D, self.scale = qx, kx.unsqueeze(1), D, v.scale
        self.gqa = _has_enable_gqa()
        if not self.gqa:
            self.k = self.k.expand(B, H, 1 + width, D + 1)

    def attend(self, mask: torch.Tensor) -> torch.Tensor:
        B, Tq, width = mask.shape
        m = torch.cat([torch.ones(B, Tq, 1, dtype=torch.bool, device=mask.device), mask], dim=-1).unsqueeze(1)
        kw = {"enable_gqa": True} if self.gqa else {}
        out = F.scaled_dot_product_attention(self.q, self.k, self.k, attn_mask=m, scale=self.scale, **kw)
        H = out.shape[1]
        return out[..., : self.D].transpose(1, 2).reshape(B * Tq, H, self.D)


def _has_enable_gqa() -> bool:
    import inspect

    try:
        return "enable_gqa" in inspect.signature(F.scaled_dot_product_attention).parameters
    except (TypeError, ValueError):
        return tuple(int(x) for x in torch.__version__.split(".")[:2]) >= (2, 5)


# ------------------------------------------------------------------------------------------ peers
@dataclasses.dataclass(frozen=True)
class Peer:
    name: str
    description: str
    unavailable: Callable[[torch.device], Optional[str]]  # why it cannot run on this device (None: can)
    setup: Callable[[Case, DenseView], Callable[[], torch.Tensor]]  # untimed setup -> timed callable
    dense: bool = True  # subject to the dense memory / time estimate


def _cpu_or_accel(device: torch.device) -> Optional[str]:
    return None


def _setup_einsum(case: Case, v: DenseView):
    if case.group in INDEXER_GROUPS:
        return lambda: dense_indexer(v)[0].flatten(0, 1)
    if case.group in LAYER_GROUPS:
        return lambda: einsum_attention(v, _layer_mask(v))
    return lambda: einsum_attention(v, v.mask)


def _setup_einsum_fp32(case: Case, v: DenseView):
    if case.group in INDEXER_GROUPS:
        raise _NotApplicable("the indexer peer already scores in fp32 (dense_einsum)")
    keys32 = v.keys.float()  # an fp32 model's cache (built once, outside the timed call)
    if case.group in LAYER_GROUPS:
        return lambda: einsum_attention(v, _layer_mask(v), keys32)
    return lambda: einsum_attention(v, v.mask, keys32)


def _setup_sdpa(case: Case, v: DenseView):
    if case.group in INDEXER_GROUPS:
        raise _NotApplicable("not an attention op")
    si = _SdpaInputs(v)
    if case.group in LAYER_GROUPS:
        return lambda: si.attend(_layer_mask(v))
    return lambda: si.attend(v.mask)


class _NotApplicable(Exception):
    pass


def _flex_unavailable(device: torch.device) -> Optional[str]:
    if device.type != "cuda":
        return "GPU only in this harness (on CPU flex_attention needs an inductor C++ compile per shape)"
    try:
        from torch.nn.attention import flex_attention  # noqa: F401
    except Exception as exc:
        return f"torch.nn.attention.flex_attention not importable: {exc}"
    return None


def _setup_flex(case: Case, v: DenseView):
    if case.group not in ATTN_GROUPS:
        raise _NotApplicable("runs on the attention ops only (the mask is given)")
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    B, Tq, H, D = v.q.shape
    width = v.keys.shape[1]
    mask = v.mask

    def mask_mod(b, h, q_idx, kv_idx):
        return mask[b, q_idx, kv_idx]

    bm = create_block_mask(mask_mod, B, None, Tq, width, device=v.q.device)
    flex = torch.compile(flex_attention, dynamic=False)
    q = v.q.transpose(1, 2).contiguous()
    k = v.keys.unsqueeze(1)
    sink = v.sink.float().view(1, H, 1)

    def fn():
        out, lse = flex(q, k, k, block_mask=bm, scale=v.scale, enable_gqa=True, return_lse=True)
        g = torch.sigmoid(lse.float() - sink)
        g = torch.where(torch.isneginf(lse), torch.zeros_like(g), g)
        return (out.float() * g.unsqueeze(-1)).to(v.q.dtype).transpose(1, 2).reshape(B * Tq, H, D)

    # Compile here, in the untimed setup: torch.compile specialises per shape (dynamic=False), and the
    # 13-17 s compile of each decode shape was the timed "first call" of the H200 run of 2026-12-04
    # (bench/results/cuda-h200-2026-12-04-run1.json), recorded as the peer's only sample.
    t0 = time.perf_counter()
    fn()
    synchronize(v.q.device)
    fn.compile_s = time.perf_counter() - t0  # type: ignore[attr-defined]
    return fn


def _flash_mla_unavailable(device: torch.device) -> Optional[str]:
    if device.type != "cuda":
        return "CUDA only"
    if importlib.util.find_spec("flash_mla") is None:
        return "flash_mla is not installed"
    return None


def _setup_flash_mla(case: Case, v: DenseView):
    if case.group not in ATTN_GROUPS:
        raise _NotApplicable("runs on the attention ops only")
    import flash_mla

    sf = v.sparse()
    q, kv, idx = sf["q"], sf["kv"].unsqueeze(1), sf["indices"]
    pad = (-idx.shape[1]) % 128  # the kernels take top-k widths in blocks
    if pad:
        idx = torch.cat([idx, torch.full((idx.shape[0], pad), -1, dtype=idx.dtype, device=idx.device)], 1)
    idx = idx.unsqueeze(1).contiguous()
    scale = v.scale

    def fn():
        res = flash_mla.flash_mla_sparse_fwd(q, kv, idx, scale, d_v=q.shape[-1], attn_sink=sf["sink"])
        return res[0]

    return fn


def _flashinfer_unavailable(device: torch.device) -> Optional[str]:
    if device.type != "cuda":
        return "CUDA only"
    if importlib.util.find_spec("flashinfer") is None:
        return "flashinfer is not installed"
    return "installed, but this harness has no adapter for its DSv4 sparse kernels yet (SM100+)"


PEERS: Dict[str, Peer] = {
    p.name: p
    for p in (
        Peer("dense_sdpa", "torch SDPA, boolean mask over the full context (exact sink via an extra key)",
             _cpu_or_accel, _setup_sdpa),
        Peer("dense_einsum", "plain model-code formulation: scores over all keys, -inf mask, sink column, softmax",
             _cpu_or_accel, _setup_einsum),
        Peer("dense_einsum_fp32", "the same in fp32 over an fp32 copy of the cache (the reference's precision)",
             _cpu_or_accel, _setup_einsum_fp32),
        Peer("flex_attention", "torch FlexAttention with a block mask from the same mask (compiled)",
             _flex_unavailable, _setup_flex),
        Peer("flash_mla", "FlashMLA flash_mla_sparse_fwd over one flat KV tensor", _flash_mla_unavailable,
             _setup_flash_mla, dense=False),
        Peer("flashinfer", "FlashInfer DSv4 sparse MLA", _flashinfer_unavailable, lambda c, v: None, dense=False),
    )
}  # fmt: skip


def estimate(case: Case, peer: str, bandwidth: float, peak_lowp: Optional[float], peak_fp32: Optional[float]):
    """(peak bytes, seconds) a dense peer is expected to need on this case (order of magnitude)."""
    s = dense_shape(case.params)
    B, Tq, H, D, width, e = s["B"], s["Tq"], s["H"], s["D"], s["width"], s["elt"]
    scores = B * Tq * H * (width + 1)
    mem = B * width * D * e + 2 * B * Tq * width  # dense cache copy + masks
    flops = 0.0
    if case.group not in INDEXER_GROUPS:
        mem += scores * 16 + (B * (width + 1) * (D + 1) * e if peer == "dense_sdpa" else 0)
        if peer == "dense_einsum_fp32":
            mem += B * width * D * 4 + scores * 4
            peak_lowp = peak_fp32
        flops += 4.0 * scores * D
    indexer = case.group in INDEXER_GROUPS or case.group in LAYER_GROUPS
    if indexer:
        N, Hi, Di = s["N"], s["Hi"], s["Di"]
        mem += B * N * Di * (e + 4) + B * Tq * Hi * N * 4 + B * Tq * N * 8
        flops += 2.0 * B * Tq * Hi * Di * N
    peak_lowp = peak_lowp or 1e11
    peak_fp32 = peak_fp32 or 1e11
    idx_flops = 2.0 * B * Tq * s["Hi"] * s["Di"] * s["N"] if indexer else 0.0
    seconds = (flops - idx_flops) / (0.5 * peak_lowp) + idx_flops / (0.5 * peak_fp32) + 2.0 * mem / bandwidth
    return int(mem), float(seconds)


def compute_dtype(case: Case, name: str) -> str:
    """The dtype whose matmul rate is the peer's compute ceiling."""
    if name == "dense_einsum_fp32" or case.group in INDEXER_GROUPS:
        return "fp32"
    dt = str(case.params.get("dtype", "bf16"))
    return "bf16" if dt == "fp8" else dt  # FP8 pools: the dense cache holds the rows in bf16 (exact)
