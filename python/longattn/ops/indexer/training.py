"""The lightning indexer's training loss (DeepSeek-V3.2 / V4): ``longattn.indexer_kl_loss``.

For query token t over its candidate entries C_t, the target is the main attention's distribution
over those entries, summed over heads and renormalised (detached):

    p_t(j) = (1/H) sum_h softmax_{j in C_t}(scale <q_th, kv_j>)

and the indexer's distribution is ``softmax_{j in C_t}(I_tj)`` with
``I_tj = sum_h w_th relu(<iq_th, ik_j>)`` (the indexer's score). The loss is
``KL(p_t || softmax(I_t))`` averaged over the tokens that have a candidate. Dense warm-up stage:
C_t = every visible entry (``j < visible_end[t]``); sparse stage: the selected entries (``indices``).

Blockwise: entries in blocks (dense) or the K selected rows per token (sparse), token chunks within
``longattn.memory.chunk_budget_bytes()``; two passes (log-sum-exps, then the KL), nothing ``[T, N]``
kept. The backward recomputes the blocks: ``dI_tj = g_t (softmax(I_t)_j - p_t(j))``, then through the
score into the indexer's q, weights and keys (``index_add_`` for the keys: deterministic on CPU).
Gradients flow only into the indexer's inputs (the target is detached). fp32 (float64 inputs: float64).
Registered as the custom op ``torch.ops.longattn.indexer_kl_loss`` (a fake implementation and its
backward through ``torch.library``; it returns the loss and the log-sum-exps the backward reuses).
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch

from ..._checks import FLOAT_DTYPES, INDEX_DTYPES, ArgChecker
from ...cache.fp8_index import Fp8IndexKeyPool
from ...memory import chunk_budget_bytes, rows_per_chunk

# q, kv, iq, iw, ik, ve, indices of a token chunk
_Args = Tuple[
    torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, Optional[torch.Tensor]
]

NEG_INF = float("-inf")
DENSE_BLOCK = 1024  # entries per block of the dense stage


def _blocks(n_vis_max: int, T: int, indices: Optional[torch.Tensor]):
    """(j0, j1) entry blocks of the dense stage, or one block of the K selected columns (sparse)."""
    if indices is not None:
        return [(0, indices.shape[1])]
    return [(j0, min(n_vis_max, j0 + DENSE_BLOCK)) for j0 in range(0, n_vis_max, DENSE_BLOCK)]


def _block(q, kv, iq, iw, ik, ve, indices, j0, j1, scale):
    """Attention logits s [Tc, H, B], indexer pre-activations a [Tc, Hi, B], scores I [Tc, B], the
    candidate mask [Tc, B], the keys' rows [Tc, B] (for the scatter) and the gathered ik [Tc, B, Di]."""
    Tc = q.shape[0]
    if indices is None:
        rows = torch.arange(j0, j1, device=q.device).expand(Tc, -1)
        mask = rows < ve.unsqueeze(1)
    else:
        ids = indices[:, j0:j1].long()
        mask = (ids >= 0) & (ids < ve.unsqueeze(1)) & (ids < kv.shape[0])
        rows = torch.where(mask, ids, 0)
    k = torch.where(mask.unsqueeze(-1), kv[rows].to(q.dtype), 0.0)  # never reads a row it does not use
    kk = torch.where(mask.unsqueeze(-1), ik[rows].to(q.dtype), 0.0)
    s = (scale * torch.einsum("thd,tbd->thb", q, k)).masked_fill(~mask.unsqueeze(1), NEG_INF)
    a = torch.einsum("thd,tbd->thb", iq, kk)
    score = torch.einsum("th,thb->tb", iw, torch.relu(a)).masked_fill(~mask, NEG_INF)
    return s, a, score, mask, rows, kk


def _plan(q, iq, kv, ik, ve):
    """(token chunk, largest visible count) of one call (the same in the forward and the backward)."""
    T = q.shape[0]
    per_token = (q.shape[1] + iq.shape[1] + 4) * 4 * DENSE_BLOCK * 3 + (kv.shape[1] + ik.shape[1]) * 4 * DENSE_BLOCK
    return max(1, rows_per_chunk(per_token, T, chunk_budget_bytes())), (int(ve.max()) if T else 0)


@torch.library.custom_op("longattn::indexer_kl_loss", mutates_args=())
def _kl_op(
    q: torch.Tensor, kv: torch.Tensor, iq: torch.Tensor, iw: torch.Tensor, ik: torch.Tensor, ve: torch.Tensor,
    indices: Optional[torch.Tensor], scale: float,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:  # fmt: skip
    """(loss, lse_s [T, H], lse_i [T]): the loss and the log-sum-exps its backward reuses."""
    cdt = torch.float64 if iq.dtype == torch.float64 else torch.float32
    T = q.shape[0]
    step, n_max = _plan(q, iq, kv, ik, ve)
    losses = torch.zeros(T, dtype=cdt, device=q.device)
    lse_s = torch.full((T, q.shape[1]), NEG_INF, dtype=cdt, device=q.device)
    lse_i = torch.full((T,), NEG_INF, dtype=cdt, device=q.device)
    for t0 in range(0, T, step):
        t1 = min(T, t0 + step)
        args = _chunk_args(q, kv, iq, iw, ik, ve, indices, t0, t1, cdt)
        blocks = _blocks(n_max, t1 - t0, args[6])
        for j0, j1 in blocks:  # pass 1: log-sum-exps over the candidates
            s, _, score, _, _, _ = _block(*args, j0, j1, scale)
            lse_s[t0:t1] = torch.logaddexp(lse_s[t0:t1], torch.logsumexp(s, -1))
            lse_i[t0:t1] = torch.logaddexp(lse_i[t0:t1], torch.logsumexp(score, -1))
        for j0, j1 in blocks:  # pass 2: KL(p || softmax(I))
            s, _, score, mask, _, _ = _block(*args, j0, j1, scale)
            p = _target(s, lse_s[t0:t1], mask)
            log_q = score - lse_i[t0:t1].unsqueeze(1)
            losses[t0:t1] += torch.where(p > 0, p * (torch.log(p) - log_q), 0.0).sum(-1)
    counted = torch.isfinite(lse_i)  # tokens with at least one candidate
    loss = torch.where(counted, losses, 0.0).sum() / counted.sum().clamp_min(1)
    return loss.to(iq.dtype), lse_s, lse_i


@_kl_op.register_fake
def _kl_fake(q, kv, iq, iw, ik, ve, indices, scale):
    cdt = torch.float64 if iq.dtype == torch.float64 else torch.float32
    T, H = q.shape[0], q.shape[1]
    return iq.new_empty(()), q.new_empty((T, H), dtype=cdt), q.new_empty((T,), dtype=cdt)


def _kl_setup(ctx, inputs, output) -> None:
    q, kv, iq, iw, ik, ve, indices, scale = inputs
    ctx.scale = scale
    ctx.save_for_backward(q, kv, iq, iw, ik, ve, indices, output[1], output[2])


def _kl_backward(ctx, grad, _g_lse_s, _g_lse_i):
    q, kv, iq, iw, ik, ve, indices, lse_s, lse_i = ctx.saved_tensors
    d_iq, d_iw, d_ik = _kl_backward_op(q, kv, iq, iw, ik, ve, indices, ctx.scale, lse_s, lse_i, grad)
    return None, None, d_iq, d_iw, d_ik, None, None, None


@torch.library.custom_op("longattn::indexer_kl_loss_backward", mutates_args=())
def _kl_backward_op(
    q: torch.Tensor, kv: torch.Tensor, iq: torch.Tensor, iw: torch.Tensor, ik: torch.Tensor, ve: torch.Tensor,
    indices: Optional[torch.Tensor], scale: float, lse_s: torch.Tensor, lse_i: torch.Tensor, grad: torch.Tensor,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:  # fmt: skip
    """Recomputes the blocks: ``dI = g (softmax(I) - p) / n``, then through relu into q, w and keys
    (a custom op of its own: its block loop depends on the data, so a traced graph calls it whole)."""
    cdt = lse_s.dtype
    T = q.shape[0]
    step, n_max = _plan(q, iq, kv, ik, ve)
    d_iq = torch.zeros(iq.shape, dtype=cdt, device=iq.device)
    d_iw = torch.zeros(iw.shape, dtype=cdt, device=iw.device)
    d_ik = torch.zeros(ik.shape, dtype=cdt, device=ik.device)
    counted = torch.isfinite(lse_i)
    g_t = torch.where(counted, grad.to(cdt) / counted.sum().clamp_min(1), 0.0)  # d loss / d KL_t
    for t0 in range(0, T, step):
        t1 = min(T, t0 + step)
        args = _chunk_args(q, kv, iq, iw, ik, ve, indices, t0, t1, cdt)
        for j0, j1 in _blocks(n_max, t1 - t0, args[6]):
            s, a, score, mask, rows, kk = _block(*args, j0, j1, scale)
            p = _target(s, lse_s[t0:t1], mask)
            soft_i = torch.where(mask, torch.exp(score - lse_i[t0:t1].unsqueeze(1)), 0.0)
            d_score = g_t[t0:t1].unsqueeze(1) * (soft_i - p)  # [Tc, B]
            d_a = d_score.unsqueeze(1) * args[3].unsqueeze(-1) * (a > 0)  # [Tc, Hi, B]
            d_iw[t0:t1] += torch.einsum("tb,thb->th", d_score, torch.relu(a))
            d_iq[t0:t1] += torch.einsum("thb,tbd->thd", d_a, kk)
            d_rows = torch.where(mask.unsqueeze(-1), torch.einsum("thb,thd->tbd", d_a, args[2]), 0.0)
            d_ik.index_add_(0, rows.reshape(-1), d_rows.reshape(-1, ik.shape[1]))
    return d_iq.to(iq.dtype), d_iw.to(iw.dtype), d_ik.to(ik.dtype)


@_kl_backward_op.register_fake
def _kl_backward_fake(q, kv, iq, iw, ik, ve, indices, scale, lse_s, lse_i, grad):
    return torch.empty_like(iq), torch.empty_like(iw), torch.empty_like(ik)


_kl_op.register_autograd(_kl_backward, setup_context=_kl_setup)


def _chunk_args(q, kv, iq, iw, ik, ve, indices, t0, t1, cdt) -> _Args:
    return (q[t0:t1].to(cdt), kv, iq[t0:t1].to(cdt), iw[t0:t1].to(cdt), ik, ve[t0:t1].long(),
            None if indices is None else indices[t0:t1])  # fmt: skip


def _target(s: torch.Tensor, lse_s: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """p [Tc, B]: the heads' softmaxes over the candidates (each over its own lse), averaged."""
    ok = torch.isfinite(lse_s).unsqueeze(-1)
    return torch.where(ok, torch.exp(s - lse_s.unsqueeze(-1)), 0.0).mean(1) * mask


def indexer_kl_loss(
    q: torch.Tensor,
    kv: torch.Tensor,
    index_q: torch.Tensor,
    index_weights: torch.Tensor,
    index_k: torch.Tensor,
    visible_end: torch.Tensor,
    *,
    indices: Optional[torch.Tensor] = None,
    softmax_scale: Optional[float] = None,
) -> torch.Tensor:
    """The indexer's KL loss (module docstring): a scalar, differentiable in ``index_q``,
    ``index_weights`` and ``index_k`` (the attention side, ``q`` and ``kv``, is the detached target).

    Args:
        q: ``[T, H, D]`` the attention's queries; kv: ``[N, D]`` the compressed entries it reads.
        index_q ``[T, Hi, Di]``, index_weights ``[T, Hi]``, index_k ``[N, Di]``: the indexer's inputs.
        visible_end: ``[T]`` int, token t's candidates are entries ``j < visible_end[t]``.
        indices: ``[T, K]`` entry ids (-1 padded): the sparse stage's candidates (the selected
            entries, distinct as ``indexer_topk`` gives them: a repeated id counts twice); ids outside
            ``[0, visible_end[t])`` are not candidates. None: the dense warm-up stage (every visible entry).
        softmax_scale: the attention's scale (default ``D ** -0.5``).
    """
    chk = ArgChecker("indexer_kl_loss")
    dtypes = FLOAT_DTYPES + (torch.float64,)
    chk.tensor("q", q, ("T", "H", "D"), dtypes)
    chk.tensor("kv", kv, ("N", "D"), dtypes)
    chk.tensor("index_q", index_q, ("T", "Hi", "Di"), dtypes)
    chk.tensor("index_weights", index_weights, ("T", "Hi"), dtypes)
    if isinstance(index_k, Fp8IndexKeyPool):
        chk.fail(
            "`index_k` must be a float tensor [N, Di] with gradients; FP8 index-key pools (Fp8IndexKeyPool) "
            "are for inference (indexer_topk / indexer_logits)",
            TypeError,
        )
    chk.tensor("index_k", index_k, ("N", "Di"), dtypes)
    chk.tensor("visible_end", visible_end, ("T",), INDEX_DTYPES)
    T, H, D = q.shape
    for name, x, axis, n, what in (
        ("kv", kv, 1, D, "the head dim D of q"),
        ("index_q", index_q, 0, T, "one row per token of q"),
        ("index_weights", index_weights, 0, T, "one row per token of q"),
        ("index_weights", index_weights, 1, index_q.shape[1], "one weight per indexer head of index_q"),
        ("index_k", index_k, 0, kv.shape[0], "one key per entry of kv"),
        ("index_k", index_k, 1, index_q.shape[2], "the indexer head dim Di of index_q"),
        ("visible_end", visible_end, 0, T, "one per token of q"),
    ):
        chk.dim(name, x, axis, n, what)
    if indices is not None:
        chk.tensor("indices", indices, ("T", "K"), INDEX_DTYPES)
        chk.dim("indices", indices, 0, T, "one row per token of q")
    scale = D**-0.5 if softmax_scale is None else chk.finite_scale("softmax_scale", softmax_scale)
    ve = visible_end.clamp(0, kv.shape[0])
    return _kl_op(q.detach(), kv.detach(), index_q, index_weights, index_k, ve, indices, scale)[0]
