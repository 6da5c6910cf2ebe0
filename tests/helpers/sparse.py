"""sparse_attention checks shared by the op x backend tests (tests/ops) and the backend-specific ones.

Tolerance rules (one copy):

- fp32, and the reference in every dtype: the derived bound of ``tests/tolerance.py`` against the
  float64 oracle (``check_against_oracle``).
- bf16 / fp16 on a kernel backend (FlashAttention's rule): max |kernel - oracle| <= 2 * max |lowp -
  oracle| + floor (``tests.tolerance.assert_lowp_rule``), where ``lowp`` is ``lowp_sparse_attention``,
  a PyTorch run of the same math at the precision the backend's matrix unit uses: fp32 logits of the
  low-precision inputs, P rounded to the input dtype before P.V, output rounded (Triton: tensor cores
  accumulate in fp32); or, where the matrix unit writes its results in the input dtype (the Ascend C
  cube unit), q.k^T and P.V rounded to it as well (``LOWP_ROUNDS_MATMULS``; a backend not listed gets
  that looser model). lse is fp32 in every case and meets the derived fp32 bound. The Ascend C kernel
  computes in fp32 where a pool does not convert into q's dtype exactly (fp16 queries over FP8 pools,
  pools of another float dtype: ``ascend.compute_dtype``): those calls get the fp32 rule.
"""

from __future__ import annotations

import torch

from tests import oracle
from tests.helpers.specials import INF, NAN, NEG_NAN, neg_nan  # noqa: F401
from tests.tolerance import assert_close, assert_lowp_rule, attention_bounds

# Whether a backend's bf16 / fp16 kernels round q.k^T and P.V to the input dtype (see the module doc).
LOWP_ROUNDS_MATMULS = {"triton": False, "ascend_sim": True, "ascend": True}


def rows_of(kv, D: int) -> torch.Tensor:
    """A pool's rows [N, D] (an FP8 pool dequantised)."""
    if isinstance(kv, torch.Tensor):
        return kv.reshape(-1, D)
    from longattn.cache import dequantize_kv_fp8

    return dequantize_kv_fp8(kv).reshape(-1, D)


def oracle_args(args: dict) -> dict:
    """``args`` with both pools as float rows on the CPU (what the oracle reads)."""
    D = args["q"].shape[-1]
    a = {k: (v.cpu() if isinstance(v, torch.Tensor) else v) for k, v in args.items()}
    a["kv"] = rows_of(args["kv"], D).cpu()
    if args.get("extra_kv") is not None:
        a["extra_kv"] = rows_of(args["extra_kv"], D).cpu()
    return a


def oracle_of(args: dict):
    """(out, lse) of the float64 oracle for sparse_attention keyword arguments."""
    a = oracle_args(args)
    return oracle.sparse_attention(
        a["q"],
        a["kv"],
        a["indices"],
        topk_length=a.get("topk_length"),
        extra_kv_rows=a.get("extra_kv"),
        extra_indices=a.get("extra_indices"),
        extra_topk_length=a.get("extra_topk_length"),
        attn_sink=a.get("attn_sink"),
        softmax_scale=a.get("softmax_scale"),
    )


def _bound_inputs(args: dict):
    a = oracle_args(args)
    q = a["q"]
    rows = [a["kv"]] + ([a["extra_kv"]] if a.get("extra_kv") is not None else [])
    rows = torch.cat([r.double() for r in rows])
    num_keys = a["indices"].shape[1] + (a["extra_indices"].shape[1] if a.get("extra_kv") is not None else 0)
    scale = a.get("softmax_scale") or q.shape[-1] ** -0.5
    return q, rows, num_keys, scale


def check_against_oracle(out, lse, args, what):
    """One backend's (out, lse) vs the oracle under the derived fp32 error bound (plus one rounding of
    a low-precision output)."""
    q, rows, num_keys, scale = _bound_inputs(args)
    out_atol, out_rtol, lse_atol = attention_bounds(
        q, rows, scale, num_keys, q.dtype, sink_factor=args.get("attn_sink") is not None
    )
    ref_out, ref_lse = oracle_of(args)
    assert out.dtype == q.dtype and tuple(out.shape) == tuple(q.shape)
    assert lse.dtype == torch.float32 and tuple(lse.shape) == tuple(q.shape[:2])
    assert_close(lse, ref_lse, lse_atol, 0.0, f"{what}: lse")
    assert_close(out, ref_out.to(q.dtype) if q.dtype != torch.float32 else ref_out, out_atol, out_rtol, f"{what}: out")


def _valid_keys(rows, idx_row, length):
    n = rows.shape[0]
    idx = idx_row.long()[: max(0, min(len(idx_row), length))]
    idx = idx[(idx >= 0) & (idx < n)]
    return rows[idx]


def lowp_sparse_attention(args: dict, rounds_matmuls: bool = False) -> torch.Tensor:
    """The same math at a matrix unit's precision, in PyTorch: logits of the input-dtype values (fp32;
    rounded to the input dtype when ``rounds_matmuls``), p = exp(l - max) in fp32, P rounded to q's
    dtype before P.V (fp32 accumulation; the result rounded to the input dtype when
    ``rounds_matmuls``), the sum of P in fp32, output rounded to q's dtype. Returns out [T, H, D]
    (q's dtype, CPU)."""
    a = oracle_args(args)
    q = a["q"]
    T, H, D = q.shape
    dt = q.dtype
    scale = a.get("softmax_scale") or D**-0.5
    streams = [(a["kv"], a["indices"], a.get("topk_length"))]
    if a.get("extra_indices") is not None:
        streams.append((a["extra_kv"], a["extra_indices"], a.get("extra_topk_length")))
    sink = a.get("attn_sink")
    out = torch.zeros(T, H, D, dtype=torch.float32)
    for t in range(T):
        keys = []
        for rows, idx, lengths in streams:
            length = idx.shape[1] if lengths is None else int(lengths[t])
            keys.append(_valid_keys(rows.to(dt), idx[t], length))
        k = torch.cat(keys) if keys else torch.zeros(0, D, dtype=dt)
        if k.shape[0] == 0:
            continue
        if rounds_matmuls:
            logits = (q[t] @ k.T).to(dt).float() * scale  # [H, n]
        else:
            logits = (q[t].float() @ k.float().T) * scale
        m = logits.max(dim=1, keepdim=True).values
        p = torch.exp(logits - m)
        denom = p.sum(dim=1, keepdim=True)
        pv = (p.to(dt) @ k).float() if rounds_matmuls else p.to(dt).float() @ k.float()
        o = pv / denom
        if sink is not None:
            lse = (m + torch.log(denom)).squeeze(1)
            o = o * torch.sigmoid(lse - sink.float()).unsqueeze(1)
        out[t] = o
    return out.to(dt)


def computes_in_fp32(backend: str, args: dict) -> bool:
    """Whether ``backend`` runs these low-precision queries in fp32 (the Ascend C kernel does for pools
    that do not convert into q's dtype exactly)."""
    if backend not in ("ascend_sim", "ascend"):
        return False
    from longattn.ops.sparse_attention import ascend

    pools = [args["kv"]] + ([args["extra_kv"]] if args.get("extra_kv") is not None else [])
    return ascend.compute_dtype(args["q"].dtype, [ascend.pool_kind(p) for p in pools]) == torch.float32


def check_sparse(out, lse, args, what, backend="reference"):
    """fp32 (and the reference in every dtype, and kernels computing in fp32): the derived bound on out
    and lse. bf16 / fp16 on a kernel backend: the 2x rule on out with the backend's precision model,
    the derived bound on lse."""
    q = args["q"]
    if q.dtype == torch.float32 or backend == "reference" or computes_in_fp32(backend, args):
        check_against_oracle(out, lse, args, what)
        return
    ref_out, ref_lse = oracle_of(args)
    qc, rows, num_keys, scale = _bound_inputs(args)
    _, _, lse_atol = attention_bounds(qc, rows, scale, num_keys, q.dtype)
    assert out.dtype == q.dtype and lse.dtype == torch.float32
    assert_close(lse, ref_lse, lse_atol, 0.0, f"{what}: lse")
    lowp = lowp_sparse_attention(args, LOWP_ROUNDS_MATMULS.get(backend, True))
    vmax = float(rows.abs().max()) if rows.numel() else 0.0
    assert_lowp_rule(out, ref_out, lowp, f"{what}: out", value_max=vmax)


# ---------------------------------------------------------------------------------------------------
# FP8 pools
# ---------------------------------------------------------------------------------------------------
def fp8_pool(P, page, g, device="cpu", surround=False):
    """An FP8 pool of P pages of ``page`` 512-d rows spanning many scale ranges (an exact 448 * 2**3
    amax, tiny negatives); ``surround``: its bytes inside a buffer of NaN-ish pages (0x7F = e4m3 NaN)."""
    from longattn.cache import Fp8KVPool, quantize_kv_fp8
    from longattn.cache.fp8 import page_bytes

    kv = torch.randn(P, page, 512, generator=g) * torch.logspace(-5, 3, 512)  # many scale ranges
    kv.view(-1, 512)[0, :64] = 448.0 * 2.0**3
    kv.view(-1, 512)[1, :448] = -1e-30  # tiny negatives (e4m3 subnormals / zero)
    pool = quantize_kv_fp8(kv.to(device))
    if surround:
        pb = page_bytes(page)
        big = torch.full((P + 2, pb), 0x7F, dtype=torch.uint8, device=device)
        big[1 : P + 1] = pool.data
        pool = Fp8KVPool(big[1 : P + 1], page)
    return pool


def fp8_pool_inputs(page, dtype, device="cpu"):
    """sparse_attention arguments over an FP8 pool inside a buffer of e4m3-NaN pages (``fp8_pool``) and
    a float second stream, with indices of every invalid kind (out of range, -1, INT32_MAX, INT32_MIN);
    tensors on ``device``."""
    g = torch.Generator().manual_seed(page)
    P = max(2, 80 // page)
    pool = fp8_pool(P, page, g, device=device, surround=True)
    T, H = 3, 5
    n = pool.num_slots
    idx = torch.randint(-3, n + 3, (T, 40), generator=g).int()
    idx[0, 0], idx[1, 0] = 2**31 - 1, -(2**31)
    ekv = torch.randn(30, 512, generator=g)
    eidx = torch.randint(-1, 30, (T, 9), generator=g).int()
    args = dict(q=torch.randn(T, H, 512, generator=g).to(dtype), indices=idx, topk_length=None,
                extra_kv=ekv.to(dtype), extra_indices=eidx, extra_topk_length=None,
                attn_sink=torch.randn(H, generator=g), softmax_scale=None)  # fmt: skip
    args = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in args.items()}
    args["kv"] = pool
    return args


# ---------------------------------------------------------------------------------------------------
# non-finite logits (ops/sparse_attention/README.md, "Edge semantics")
# ---------------------------------------------------------------------------------------------------
def sparse_nonfinite_inputs(D=64, H=4, dtype=torch.float32):
    """Sparse attention inputs covering the non-finite logit rule (sparse_attention/README.md), one
    token per situation, the special keys at different positions of K = 48 index slots (so that they
    fall into different key blocks / splits). Returns (args, expected lse class [T, H]) with classes
    "nan", "+inf", "-inf", "fin"; out must be NaN for nan / +inf, 0 for -inf, finite otherwise."""
    g = torch.Generator().manual_seed(7)
    T, N, K = 12, 60, 48
    kv = torch.randn(N, D, generator=g)
    kv[7, 3] = NAN  # a NaN key row
    kv[11] = 0.0
    kv[11, 0] = 1e20  # big rows: q[..., 0] = +-1e20 gives a +inf / -inf logit (fp32 overflow)
    kv[12] = 0.0
    kv[12, 0] = 2e20
    q = torch.randn(T, H, D, generator=g)
    normal = torch.tensor([i for i in range(N) if i not in (7, 11, 12)], dtype=torch.int32)
    idx = torch.stack([normal[torch.randperm(len(normal), generator=g)[:K]] for _ in range(T)])
    want = [["fin"] * H for _ in range(T)]
    idx[0, 2] = 7  # NaN key in the first block
    idx[1, 20] = 7  # ... a middle block
    idx[2, 47] = 7  # ... the last position
    for t in (0, 1, 2):
        want[t] = ["nan"] * H
    q[3, 1, 5] = NAN  # NaN in q: that head only
    want[3][1] = "nan"
    idx[4, 40] = 11  # the big key late in the row
    q[4, :, 0] = 0.0
    q[4, 0, 0], q[4, 2, 0] = 1e20, -1e20  # head 0: +inf logit; head 2: -inf logit (weight 0)
    want[4][0] = "+inf"
    idx[5] = -1
    idx[5, [0, 17, 33, 46]] = torch.tensor([11, 12, 11, 12], dtype=torch.int32)  # only big keys
    q[5, :, 0] = 0.0
    q[5, 0, 0], q[5, 2, 0] = 1e20, -1e20  # head 2: every used logit -inf -> out 0, lse -inf
    want[5][0], want[5][2] = "+inf", "-inf"
    idx[6, 1], idx[6, 45] = 7, 11  # NaN key early, +inf logit late: NaN wins
    q[6, 0, 0] = 1e20
    want[6] = ["nan"] * H
    idx[7, 1], idx[7, 45] = 11, 7  # +inf logit early, NaN key late: NaN wins
    q[7, 0, 0] = 1e20
    want[7] = ["nan"] * H
    idx[8] = -1  # no valid key at all
    want[8] = ["-inf"] * H
    idx[9, 30] = 12  # a -inf logit among finite ones (head 3), a +inf one (head 1)
    q[9, 3, 0], q[9, 1, 0] = -1e20, 1e20
    want[9][1] = "+inf"
    lengths = torch.full((T,), K, dtype=torch.int32)
    lengths[10] = 20
    idx[10, 30] = 7  # a NaN key past topk_length: never read, finite result
    idx[11, 5] = 7
    lengths[11] = 5  # ... just past the length
    args = dict(q=q.to(dtype), kv=kv.to(dtype), indices=idx, topk_length=lengths, attn_sink=None, softmax_scale=None)
    return args, want


def check_sparse_nonfinite(out, lse, want, ref_out=None, ref_lse=None, sink_nan_heads=(), rtol=1e-5, what=""):
    """The classes of ``want`` exactly; finite cells within ``rtol`` x max|ref cell| of ``ref_out``
    (and lse within 1e-5 (1 + |lse|)) when given. Heads in ``sink_nan_heads`` had a NaN sink: their
    out is NaN unless the lse is -inf."""
    out, lse = out.float().cpu(), lse.cpu()
    T, H = lse.shape
    for t in range(T):
        for h in range(H):
            c, l, o = want[t][h], lse[t, h], out[t, h]
            cell = f"{what}: token {t} head {h} ({c})"
            if c == "nan":
                assert bool(l.isnan()) and bool(o.isnan().all()), f"{cell}: lse {l}, out {o[:4]}"
            elif c == "+inf":
                assert l == INF and bool(o.isnan().all()), f"{cell}: lse {l}, out {o[:4]}"
            elif c == "-inf":
                assert l == -INF and bool((o == 0).all()), f"{cell}: lse {l}, out {o[:4]}"
            else:
                assert bool(torch.isfinite(l)), f"{cell}: lse {l}"
                if h in sink_nan_heads:
                    assert bool(o.isnan().all()), f"{cell}: NaN sink, out {o[:4]}"
                    continue
                assert bool(torch.isfinite(o).all()), f"{cell}: out {o[:4]}"
                if ref_out is not None:
                    r, rl = ref_out[t, h].double().cpu(), float(ref_lse[t, h])
                    assert abs(float(l) - rl) <= 1e-5 * (1 + abs(rl)), f"{cell}: lse {float(l)} vs {rl}"
                    err = float((o.double() - r).abs().max())
                    assert err <= rtol * float(r.abs().max()) + 1e-6, f"{cell}: out differs by {err:.3e}"


def attention_rule(q, kv, indices, scale, sink):
    """(out [T, H, D], lse [T, H]) float64 by the non-finite rule, classifying the fp32 logits (the
    kernels and the reference compute q . k in fp32: overflow to +-inf happens there); finite rows by
    the oracle."""
    q, kv, indices = q.cpu(), kv.cpu(), indices.cpu()
    T, H, D = q.shape
    out, lse = oracle.sparse_attention(
        q, kv, indices, attn_sink=sink.cpu() if sink is not None else None, softmax_scale=scale
    )
    for t in range(T):
        keys = [int(i) for i in indices[t].tolist() if 0 <= int(i) < kv.shape[0]]
        if not keys:
            continue
        logits = (q[t].float() @ kv[keys].float().T) * scale  # [H, n]
        for h in range(H):
            lg = logits[h]
            if torch.isnan(lg).any():
                out[t, h], lse[t, h] = NAN, NAN
            elif torch.isposinf(lg).any():
                out[t, h], lse[t, h] = NAN, INF
            elif torch.isneginf(lg).all():
                out[t, h], lse[t, h] = 0.0, -INF
    return out, lse


def assert_rule_cells(want_out, want_lse, cells) -> None:
    """The (token, head, kind) cells that a non-finite test planted, as ``attention_rule`` classifies them:
    "nan" (out and lse NaN), "inf" (lse +inf, out NaN) or "empty" (lse -inf, out 0): a check that the
    test's inputs make the cases it claims."""
    for t, h, what in cells:
        if what == "nan":
            assert torch.isnan(want_lse[t, h]) and torch.isnan(want_out[t, h]).all(), (t, h, what)
        elif what == "inf":
            assert want_lse[t, h] == INF and torch.isnan(want_out[t, h]).all(), (t, h, what)
        else:
            assert want_lse[t, h] == -INF and (want_out[t, h] == 0).all(), (t, h, what)


# --- the Triton backward against the PyTorch one (tests/triton) ---


def backward_case(seed, T, H, D, n1, n2, K1, K2, sink):
    """fp32 inputs of a two-stream backward: ``(q, kv, idx, extra, eidx, elen, sink, dout, dlse)``,
    window indices with invalid / out-of-range entries, a repeated extra index, partial and zero
    extra lengths, and (T > 2) a token 1 without any key."""
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(T, H, D, generator=g)
    kv, extra = torch.randn(n1, D, generator=g), torch.randn(n2, D, generator=g)
    idx = torch.randint(-2, n1 + 3, (T, K1), generator=g, dtype=torch.int32)
    eidx = torch.randint(0, n2, (T, K2), generator=g, dtype=torch.int32)
    if K2 > 1:
        eidx[:, 1] = eidx[:, 0]  # repeated
    elen = torch.randint(0, K2 + 2, (T,), generator=g, dtype=torch.int32)
    if T > 2:
        idx[1], elen[1] = -1, 0  # a token without any key
    s = {"none": None, "finite": torch.randn(H, generator=g), "+inf": torch.full((H,), float("inf")),
         "-inf": torch.full((H,), float("-inf"))}[sink]  # fmt: skip
    dout, dlse = torch.randn(T, H, D, generator=g), torch.randn(T, H, generator=g)
    return q, kv, idx, extra, eidx, elen, s, dout, dlse


def forward_for_backward(q, kv, idx, extra, eidx, elen, sink, scale):
    """The reference forward's ``(out, lse)`` of a ``backward_case``."""
    import longattn

    return longattn.sparse_attention(q, kv, idx, extra_kv=extra, extra_indices=eidx, extra_topk_length=elen,
                                     attn_sink=sink, softmax_scale=scale, backend="reference")  # fmt: skip


def check_triton_backward(case, config=None, dtype=torch.float32):
    """The Triton backward (``config``: its tiles; None: the launcher's) of a ``backward_case`` against
    the PyTorch backward (itself checked against float64 autograd in tests/ops), atomic and
    deterministic paths. fp32 both ways, different summation orders: each gradient element is a sum of
    <= K + D products and O(10) elementwise terms, so 8 (K + D + 8) units of fp32 rounding, relative to
    the gradient's largest element. ``dtype`` bf16 / fp16: q, the pools and dout are rounded to it
    and the kernel gets them so (its q.k^T and dout.k^T then run on 16-bit inputs, whose products
    are exact in fp32); the PyTorch backward gets the same values in fp32, so the same bound holds."""
    from longattn.ops.sparse_attention import backward as ref_bwd
    from longattn.ops.sparse_attention import triton_backward as tri_bwd

    from tests.helpers.device import DEVICE

    q, kv, idx, extra, eidx, elen, s, dout, dlse = case
    low = [x.to(dtype) for x in (q, kv, extra, dout)]  # what the kernel gets
    q, kv, extra, dout = (x.float() for x in low)
    T, K1, K2, D = q.shape[0], idx.shape[1], eidx.shape[1], q.shape[2]
    scale = D**-0.5
    out, lse = forward_for_backward(q, kv, idx, extra, eidx, elen, s, scale)
    want = ref_bwd.sparse_attention_backward(q, [(kv, idx, None), (extra, eidx, elen)], s, scale, lse, dout, dlse)
    q_, kv_, extra_, dout_ = (x.to(DEVICE) for x in low)
    idx_, eidx_, elen_, s_, out_, lse_, dlse_ = (
        x.to(DEVICE) if isinstance(x, torch.Tensor) else x for x in (idx, eidx, elen, s, out, lse, dlse)
    )
    tol = 8 * (K1 + K2 + D + 8) * 2.0**-24
    for deterministic in (False, True):
        got = tri_bwd.sparse_attention_backward(q_, [(kv_, idx_, None), (extra_, eidx_, elen_)], s_, scale, out_, lse_,
                                                dout_, dlse_, deterministic=deterministic, config=config)  # fmt: skip
        what = f"config={config} deterministic={deterministic}"
        for name, a, b in (("dq", got[0], want[0]), ("dkv", got[1][0], want[1][0]), ("dextra", got[1][1], want[1][1])):
            err = (a.cpu() - b).abs().max().item() if b.numel() else 0.0
            assert err <= tol * (1 + b.abs().max().item() if b.numel() else 1), f"{name} {what}: {err:.3e}"
        if want[2] is not None:
            assert torch.allclose(got[2].cpu(), want[2], atol=tol, rtol=tol), what
        if T > 2:
            assert bool((got[0][1] == 0).all()), what  # token 1 used no key
