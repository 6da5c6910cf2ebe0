"""Shared pieces of the fuzz suite: special values, memory layouts, fp32 non-finite classes, reports.

fp32 classes. The backends accumulate in fp32, the oracle (tests/oracle.py) in float64, so a dot
product that overflows fp32 (a "+inf logit" of the rules) is finite in float64. ``dot_classes``
decides, from the exact float64 products, what every fp32 evaluation order must give:

- NaN if a product is NaN (NaN input, 0 * inf) or products overflow to both +inf and -inf;
- +inf / -inf if some product is beyond ``OVF_HI`` (far above FLT_MAX = 3.4e38, even after a
  softmax scale >= 0.044 or log2(e) is folded in first) with one sign only;
- finite otherwise.
It is *ambiguous* (the element is skipped and counted, never guessed) when a product lies in the band
[OVF_LO, OVF_HI] or the finite products' absolute sum reaches OVF_LO (then some summation order might
overflow and another not). The generators keep such cases rare: "huge" special values are 1e30 (fp16:
6e4) and "big" ones 1e18, so products are either <= ~1e36 or >= 1e48.
"""

from __future__ import annotations

import collections
import math
from typing import Dict, List, Optional

import torch

from tests.tolerance import OUT_ROUNDING, U32  # noqa: F401  (re-exported for the op modules)

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
DTYPE_NAME = {v: k for k, v in DTYPES.items()}
INT_DTYPES = {"i32": torch.int32, "i64": torch.int64}
INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1

FLT_MAX = 3.4028234663852886e38
OVF_LO, OVF_HI = 1e37, 1e41
# absolute error floor of one fp32 product / sum term near zero: a result below the normal range may be
# flushed to zero (FTZ on GPUs / NPUs) or rounded to a subnormal: at most 2**-126 per term.
TINY = 2.0**-126
# an output rounded to a dtype may underflow to 0 (or be flushed): the smallest normal of the dtype
OUT_TINY = {torch.float32: 2.0**-126, torch.bfloat16: 2.0**-126, torch.float16: 2.0**-14}

NAN, INF = float("nan"), float("inf")

HUGE = {torch.float32: 1e30, torch.bfloat16: 1e30, torch.float16: 6.0e4}
BIG = {torch.float32: 1e18, torch.bfloat16: 1e18, torch.float16: 2.0e3}
SUBNORMAL = {torch.float32: 1e-40, torch.bfloat16: 1e-40, torch.float16: 3e-6}
_NEG_NAN_BITS = {
    torch.float32: (torch.int32, -4194304),
    torch.bfloat16: (torch.int16, -64),
    torch.float16: (torch.int16, -512),
}

SPECIAL_KINDS = ("nan", "-nan", "inf", "-inf", "huge", "-huge", "big", "-big", "-0", "sub", "-sub", "zero")
NONFINITE_KINDS = ("nan", "-nan", "inf", "-inf")


def special_scalar(kind: str, dtype: torch.dtype, huge: Optional[float] = None, big: Optional[float] = None):
    """A 1-element tensor of ``dtype`` holding the special value ``kind`` (bit exact for -NaN)."""
    if kind == "-nan":
        idt, bits = _NEG_NAN_BITS[dtype]
        return torch.tensor([bits], dtype=idt).view(dtype)
    h = HUGE[dtype] if huge is None else huge
    b = BIG[dtype] if big is None else big
    value = {
        "nan": NAN, "inf": INF, "-inf": -INF, "huge": h, "-huge": -h, "big": b, "-big": -b,
        "-0": -0.0, "sub": SUBNORMAL[dtype], "-sub": -SUBNORMAL[dtype], "zero": 0.0,
    }[kind]  # fmt: skip
    return torch.tensor([value], dtype=torch.float64).to(dtype)


def set_special(x: torch.Tensor, pos: int, kind: str, huge=None, big=None) -> None:
    """x.view(-1)[pos % numel] = kind (x contiguous, floating)."""
    if x.numel() == 0:
        return
    flat = x.view(-1)
    i = pos % flat.numel()
    flat[i : i + 1].copy_(special_scalar(kind, x.dtype, huge, big))


def bulk(shape, g: torch.Generator, dtype: torch.dtype, magnitude: float = 1.0, values: str = "gauss") -> torch.Tensor:
    """Random values: gauss (randn * magnitude), int (integers in [-3, 3]) or coarse (multiples of 1/2)."""
    if values == "int":
        x = torch.randint(-3, 4, shape, generator=g).to(torch.float64)
    elif values == "coarse":
        x = torch.randint(-6, 7, shape, generator=g).to(torch.float64) / 2
    else:
        x = torch.randn(shape, generator=g, dtype=torch.float64) * magnitude
    return x.to(dtype)


# ----------------------------------------------------------------------------------------------------
# memory layouts: the same logical values behind other strides; the gaps hold poison
# ----------------------------------------------------------------------------------------------------
LAYOUTS = ("contig", "pad_last", "stride0", "stride1", "transpose01")


def with_layout(x: torch.Tensor, layout: str, poison=None) -> torch.Tensor:
    """A tensor equal to ``x`` with another memory layout (gaps filled with ``poison``: NaN for floats,
    0 for integers, i.e. a valid slot that would give a wrong but finite answer if read)."""
    if layout == "contig" or x.dim() == 0:
        return x.clone()
    if poison is None:
        poison = NAN if x.is_floating_point() else 0
    s = list(x.shape)
    if layout == "pad_last":
        big = torch.full(s[:-1] + [s[-1] + 3], poison, dtype=x.dtype)
        big[..., : s[-1]] = x
        return big[..., : s[-1]]
    if layout == "stride0":
        big = torch.full([2 * s[0]] + s[1:], poison, dtype=x.dtype)
        big[::2] = x
        return big[::2]
    if layout == "stride1" and x.dim() >= 2:
        big = torch.full([s[0], 2 * s[1]] + s[2:], poison, dtype=x.dtype)
        big[:, ::2] = x
        return big[:, ::2]
    if layout == "transpose01" and x.dim() >= 2:
        return x.transpose(0, 1).contiguous().transpose(0, 1)
    return x.clone()


def layout_ok(layout: str, ndim: int) -> str:
    if ndim == 1 and layout not in ("contig", "stride0"):
        return "contig"
    return layout


def is_strided(*xs) -> bool:
    return any(isinstance(x, torch.Tensor) and x.numel() > 1 and not x.is_contiguous() for x in xs)


# ----------------------------------------------------------------------------------------------------
# fp32 classes of dot products (see the module docstring)
# ----------------------------------------------------------------------------------------------------
FIN, NANC, POS, NEG = 0, 1, 2, 3


def dot_classes(a: torch.Tensor, b: torch.Tensor):
    """Classes of ``sum(a * b, -1)`` evaluated in fp32 (a, b float64 holding fp32-representable values,
    broadcastable). Returns (cls, value, mag, amb): the class (FIN / NANC / POS / NEG), the float64 sum
    of the finite products, the sum of their absolute values (the dot-product error scale), and whether
    the class depends on the evaluation order."""
    p = a * b
    ap = p.abs()
    nan = torch.isnan(p).any(-1)
    pinf = (p > OVF_HI).any(-1)
    ninf = (p < -OVF_HI).any(-1)
    fin = ap < OVF_LO
    band = ((ap >= OVF_LO) & (ap <= OVF_HI)).any(-1)
    pf = torch.where(fin, p, torch.zeros((), dtype=p.dtype))
    val = pf.sum(-1)
    mag = pf.abs().sum(-1)
    cls = torch.full(val.shape, FIN, dtype=torch.int64)
    cls = torch.where(pinf, torch.full_like(cls, POS), cls)
    cls = torch.where(ninf, torch.full_like(cls, NEG), cls)
    hard_nan = nan | (pinf & ninf)
    cls = torch.where(hard_nan, torch.full_like(cls, NANC), cls)
    amb = (band | (mag >= OVF_LO)) & ~hard_nan
    return cls, val, mag, amb


def round_overflow(want: torch.Tensor, dtype: torch.dtype, atol, rtol: float):
    """``want`` (float64, the exact result) as an output in ``dtype`` holds it: values at or past the
    dtype's overflow threshold (its max plus half an ulp there, where round-to-nearest-even goes to
    inf) are +-inf. Returns (want, ambiguous): ambiguous marks finite values whose error bound
    (``atol + rtol * |want|``) straddles the threshold, so either a finite value or an inf is right."""
    fi = torch.finfo(dtype)
    thr = fi.max + 0.5 * fi.eps * fi.max / (2.0 - fi.eps)
    mag = want.abs()
    bound = atol + rtol * mag + thr * 2.0**-20  # + a margin for the oracle's own rounding near the threshold
    ambiguous = torch.isfinite(want) & (mag + bound >= thr) & (mag - bound < thr)
    over = torch.isfinite(want) & (mag >= thr)
    return torch.where(over, want.sign() * INF, want), ambiguous


def scalar_class(x: float) -> int:
    if math.isnan(x):
        return NANC
    if x == INF:
        return POS
    if x == -INF:
        return NEG
    return FIN


# ----------------------------------------------------------------------------------------------------
# per-example report
# ----------------------------------------------------------------------------------------------------
class Report:
    """What one example exercised (rule categories) and which rules it broke (first message each)."""

    def __init__(self):
        self.exercised: Dict[str, int] = collections.Counter()
        self.violations: Dict[str, str] = {}
        self.violation_counts: Dict[str, int] = collections.Counter()
        self.ambiguous = 0

    def hit(self, cat: str, n: int = 1) -> None:
        if n:
            self.exercised[cat] += n

    def fail(self, cat: str, msg: str) -> None:
        self.exercised[cat] += 0 if cat in self.exercised else 1
        self.violation_counts[cat] += 1
        self.violations.setdefault(cat, msg)

    def as_dict(self) -> dict:
        return dict(
            exercised=dict(self.exercised),
            violations=dict(self.violations),
            violation_counts=dict(self.violation_counts),
            ambiguous=self.ambiguous,
        )


def fmt_idx(idx) -> str:
    return "[" + ", ".join(str(int(i)) for i in idx) + "]"


def check_values(report: Report, cat: str, got: torch.Tensor, want: torch.Tensor, atol, rtol: float, what: str,
                 mask: Optional[torch.Tensor] = None, exact_zero_sign: bool = False) -> bool:  # fmt: skip
    """Elementwise: NaN exactly where ``want`` is NaN, +-inf exactly where it is (same sign), finite
    values within ``atol + rtol * |want|`` (``atol`` a float or a tensor broadcastable to ``want``).
    ``mask`` restricts the comparison to some elements. Records a violation under ``cat``; returns ok."""
    g = got.detach().double().cpu()
    w = want.double()
    if g.shape != w.shape:
        report.fail(cat, f"{what}: shape {list(g.shape)} != {list(w.shape)}")
        return False
    if mask is None:
        mask = torch.ones(w.shape, dtype=torch.bool)
    if not bool(mask.any()):
        return True
    atol_t = (
        torch.as_tensor(atol, dtype=torch.float64).expand(w.shape)
        if not isinstance(atol, torch.Tensor)
        else atol.double().expand(w.shape)
    )
    wn, gn = torch.isnan(w), torch.isnan(g)
    bad_nan = mask & (wn != gn)
    if bool(bad_nan.any()):
        i = bad_nan.nonzero()[0].tolist()
        report.fail(
            cat, f"{what}: NaN mismatch at {fmt_idx(i)}: got {float(g[tuple(i)])!r}, want {float(w[tuple(i)])!r}"
        )
        return False
    wi, gi = torch.isinf(w), torch.isinf(g)
    bad_inf = mask & ~wn & ((wi != gi) | (wi & (g != w)))
    if bool(bad_inf.any()):
        i = bad_inf.nonzero()[0].tolist()
        report.fail(
            cat, f"{what}: inf mismatch at {fmt_idx(i)}: got {float(g[tuple(i)])!r}, want {float(w[tuple(i)])!r}"
        )
        return False
    fin = mask & ~wn & ~wi
    err = torch.where(fin, (g - w).abs(), torch.zeros((), dtype=torch.float64))
    bound = atol_t + rtol * w.abs()
    over = fin & (err > bound)
    if bool(over.any()):
        ratio = torch.where(over, err / bound.clamp_min(1e-300), torch.zeros((), dtype=torch.float64))
        i = torch.nonzero(ratio == ratio.max())[0].tolist()
        t = tuple(i)
        report.fail(
            cat,
            f"{what}: value at {fmt_idx(i)} is {float(g[t])!r}, want {float(w[t])!r} (error {float(err[t]):.3e} > "
            f"bound {float(bound[t]):.3e} = atol {float(atol_t[t]):.3e} + rtol {rtol:.1e} * |want|; "
            f"{int(over.sum())} elements over)",
        )
        return False
    return True


def first_line(msg: str, n: int = 400) -> str:
    msg = " ".join(str(msg).split())
    return msg if len(msg) <= n else msg[: n - 3] + "..."


def tensor_summary(x) -> str:
    if not isinstance(x, torch.Tensor):
        return type(x).__name__
    s = f"{DTYPE_NAME.get(x.dtype, str(x.dtype).replace('torch.', ''))}{list(x.shape)}"
    if x.numel() > 1 and not x.is_contiguous():
        s += f" strides{list(x.stride())}"
    return s


def lowp_bits(dtype: torch.dtype) -> int:
    """p of a low-precision dtype (half an ulp = 2**-p relative): bf16 8, fp16 11, fp32 24."""
    return {torch.float32: 24, torch.bfloat16: 8, torch.float16: 11}[dtype]


def draw_specials(draw, st, targets: List[str], max_n: int, kinds=SPECIAL_KINDS):
    """A hypothesis draw of [[target, position, kind], ...]."""
    if not targets:
        return []
    return draw(
        st.lists(
            st.tuples(st.sampled_from(targets), st.integers(0, 1 << 20), st.sampled_from(kinds)).map(list),
            max_size=max_n,
        )
    )
