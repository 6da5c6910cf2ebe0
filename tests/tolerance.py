"""Error bounds for comparing an fp32-accumulating implementation with the float64 oracle.

Derived, not tuned (u = unit roundoff of the accumulation type, 2**-24 for fp32):

- A logit l = s * <q, k> over D terms has an fp32 error of at most ~ (D + 2) * u * L, where
  L = s * sum_d |q_d * k_d| (the classic dot-product bound, |fl(sum) - sum| <= n u sum|terms|).
- A perturbation of every logit by at most dl changes the softmax weights relatively by <= 2 dl (to
  first order) and lse by <= dl; weighting the value rows and summing K of them adds (K + 2) * u
  relative to max |v|. So |out - out_oracle| <= (2 dl + (K + 4) u) * Vmax and |lse - lse_oracle| <=
  dl + (K + 2) u * (1 + |lse|).
- A low-precision output (bf16/fp16) adds one rounding of the result: <= 2**-p * |out| with p = 8 for
  bf16 and 11 for fp16 (half an ulp, p = mantissa bits + 1).

The bounds are worst-case (first order); a factor 2 covers second-order terms. They scale with the
data, so huge logits get proportionally larger absolute bounds, as they must.
"""

from __future__ import annotations

import torch

U32 = 2.0**-24
OUT_ROUNDING = {torch.float32: 2.0**-24, torch.bfloat16: 2.0**-8, torch.float16: 2.0**-11}


def logit_magnitude(q: torch.Tensor, rows: torch.Tensor, scale: float) -> float:
    """L = max over (token, head, row) of s * sum_d |q_d k_d| (an upper bound over all used keys)."""
    if rows.numel() == 0 or q.numel() == 0:
        return 0.0
    qa = q.double().abs().reshape(-1, q.shape[-1])
    ka = rows.double().abs().reshape(-1, rows.shape[-1])
    return float((qa @ ka.T).max()) * scale


def attention_bounds(q, rows, scale: float, num_keys: int, out_dtype: torch.dtype, sink_factor: bool = False):
    """(out_atol, out_rtol, lse_atol) for sparse attention over ``num_keys`` keys from ``rows``."""
    D = q.shape[-1]
    L = logit_magnitude(q, rows, scale)
    dl = (D + 2) * U32 * L
    vmax = float(rows.double().abs().max()) if rows.numel() else 0.0
    extra = 4 * U32 if sink_factor else 0.0  # the sigmoid factor's own rounding
    out_atol = 2 * ((2 * dl + (num_keys + 4) * U32 + extra) * vmax) + 1e-30
    lse_atol = 2 * (dl + (num_keys + 2) * U32 * (1 + L)) + 1e-30
    return out_atol, 2 * OUT_ROUNDING[out_dtype], lse_atol


def assert_close(actual: torch.Tensor, expected: torch.Tensor, atol: float, rtol: float, what: str) -> None:
    """|actual - expected| <= atol + rtol * |expected| elementwise, with identical inf/NaN masks."""
    a = actual.double().cpu()
    e = expected.double().cpu()
    assert a.shape == e.shape, f"{what}: shape {tuple(a.shape)} != {tuple(e.shape)}"
    assert torch.equal(torch.isnan(a), torch.isnan(e)), f"{what}: NaN positions differ"
    inf_a, inf_e = torch.isinf(a), torch.isinf(e)
    assert torch.equal(inf_a, inf_e) and torch.equal(a[inf_a], e[inf_e]), f"{what}: inf positions/signs differ"
    fin = ~(torch.isnan(e) | inf_e)
    err = (a[fin] - e[fin]).abs()
    bound = atol + rtol * e[fin].abs()
    if err.numel() and bool((err > bound).any()):
        i = int(torch.argmax(err - bound))
        raise AssertionError(
            f"{what}: max error {float(err.max()):.3e} exceeds bound (atol {atol:.3e}, rtol {rtol:.1e}); "
            f"worst element {float(a[fin][i]):.6e} vs {float(e[fin][i]):.6e}"
        )


# Low-precision outputs (bf16 / fp16) of a kernel backend: FlashAttention's rule. The kernel's error
# against the float64 oracle is at most twice the error of a PyTorch run of the same math at the
# kernel's precision (tests/helpers/sparse.py ``lowp_sparse_attention``), plus a floor far below a bf16
# ulp: 2**-16 of the largest output, or 1e-6 of the largest value row (at least 1e-6).
LOWP_FLOOR = 2.0**-16


def assert_lowp_rule(out, ref_out, lowp_out, what, value_max=0.0):
    """max |out - ref| <= 2 max |lowp - ref| + floor; ``out`` must be finite."""
    a, r, b = out.double().cpu(), ref_out.double().cpu(), lowp_out.double().cpu()
    assert torch.isfinite(a).all(), f"{what}: non-finite output"
    err = float((a - r).abs().max()) if a.numel() else 0.0
    base = float((b - r).abs().max()) if b.numel() else 0.0
    floor = max(LOWP_FLOOR * (float(r.abs().max()) if r.numel() else 0.0), 1e-6 * max(value_max, 1.0))
    assert err <= 2 * base + floor, f"{what}: error {err:.3e} > 2 x low-precision error {base:.3e} + {floor:.1e}"
    return err, base
