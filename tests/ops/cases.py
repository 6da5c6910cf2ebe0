"""Input factories for sparse attention, shared by every backend's tests (a non-test module: import it).

A case is a named, seeded recipe; ``make_sparse_inputs`` turns it into the keyword arguments of
``longattn.sparse_attention``. Adversarial knobs: index patterns (invalid, out of range, negative,
duplicates, all invalid), topk_length patterns, sinks (finite, +inf, -inf, mixed), huge logits,
odd page sizes, non-power-of-two heads.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import torch

INT32_MAX = 2**31 - 1


@dataclasses.dataclass(frozen=True)
class SparseCase:
    name: str
    T: int = 3
    H: int = 3
    D: int = 64
    N: int = 37  # slots of the first stream
    K: int = 16  # index row width of the first stream
    N2: int = 0  # slots of the second stream (0: one stream)
    K2: int = 0
    dtype: torch.dtype = torch.float32
    page: Optional[int] = None  # paged pool view [N // page, page, D] (N must divide)
    pattern: str = "mixed"  # random | mixed | all_invalid | duplicates | in_range | window | window_dups | prefix
    pattern2: Optional[str] = None  # the second stream's (None: pattern)
    lengths: str = "none"  # none | partial | zero | over | growing
    lengths2: Optional[str] = None  # the second stream's (None: lengths)
    sink: str = "none"  # none | finite | pos_inf | neg_inf | mixed
    magnitude: float = 1.0  # scales q and kv (huge logits when large)
    scale: Optional[float] = None
    seed: int = 0

    def __str__(self) -> str:
        return self.name


def _index_rows(g: torch.Generator, T: int, K: int, N: int, pattern: str) -> torch.Tensor:
    idx = torch.randint(0, max(N, 1), (T, K), generator=g)
    if pattern == "in_range" or K == 0:
        return idx.to(torch.int32) if N > 0 else torch.full((T, K), -1, dtype=torch.int32)
    if pattern == "all_invalid":
        bad = torch.tensor([-1, -2, N, N + 7, INT32_MAX, -(2**31)])
        return bad[torch.randint(0, len(bad), (T, K), generator=g)].to(torch.int32)
    if pattern in ("window", "window_dups"):  # a prefill window: token t reads rows t-K+1 .. t (ascending)
        idx = torch.arange(T).unsqueeze(1) - K + 1 + torch.arange(K).unsqueeze(0)
        idx = torch.where(idx < 0, torch.full_like(idx, -1), idx % max(N, 1))
        if pattern == "window_dups":
            idx[:, 1::3] = idx[:, -1:]  # and some entries repeat the row's last (own) row
        return idx.to(torch.int32)
    if pattern == "prefix":  # HCA: every token names rows 0 .. K-1 (lengths say how many it sees)
        return torch.arange(K).repeat(T, 1).to(torch.int32)
    if pattern == "duplicates":
        idx[:, 1::2] = idx[:, :1]  # every other entry repeats the first index of its row
        return idx.to(torch.int32)
    # random/mixed: ~30% invalid of every kind
    r = torch.rand(T, K, generator=g)
    idx = torch.where(r < 0.10, torch.full_like(idx, -1), idx)
    if pattern == "mixed":
        idx = torch.where((r >= 0.10) & (r < 0.15), torch.full_like(idx, N), idx)
        idx = torch.where((r >= 0.15) & (r < 0.20), torch.full_like(idx, INT32_MAX), idx)
        idx = torch.where((r >= 0.20) & (r < 0.25), torch.full_like(idx, -3), idx)
        idx = torch.where((r >= 0.25) & (r < 0.30), torch.full_like(idx, -(2**31)), idx)
    return idx.to(torch.int32)


def _lengths(g: torch.Generator, T: int, K: int, how: str) -> Optional[torch.Tensor]:
    if how == "none":
        return None
    if how == "zero":
        return torch.zeros(T, dtype=torch.int32)
    if how == "over":
        return torch.full((T,), K + 5, dtype=torch.int32)
    if how == "growing":  # causal prefixes: token t sees (t + 1) // 2 entries (clipped to K)
        return ((torch.arange(T) + 1) // 2).clamp(max=K).to(torch.int32)
    lens = torch.randint(0, K + 1, (T,), generator=g)
    lens[0] = 0 if T > 1 else lens[0]
    return lens.to(torch.int32)


def _sink(g: torch.Generator, H: int, how: str) -> Optional[torch.Tensor]:
    if how == "none":
        return None
    if how == "finite":
        return torch.randn(H, generator=g) * 2
    if how == "pos_inf":
        return torch.full((H,), float("inf"))
    if how == "neg_inf":
        return torch.full((H,), float("-inf"))
    s = torch.randn(H, generator=g) * 2
    s[0::3] = float("inf")
    s[1::3] = float("-inf")
    return s


def make_sparse_inputs(case: SparseCase, device="cpu") -> dict:
    g = torch.Generator().manual_seed(case.seed)
    q = torch.randn(case.T, case.H, case.D, generator=g) * case.magnitude
    kv = torch.randn(case.N, case.D, generator=g) * case.magnitude
    args = dict(
        q=q.to(case.dtype),
        kv=kv.to(case.dtype),
        indices=_index_rows(g, case.T, case.K, case.N, case.pattern),
        topk_length=_lengths(g, case.T, case.K, case.lengths),
        attn_sink=_sink(g, case.H, case.sink),
        softmax_scale=case.scale,
    )
    if case.K2:
        kv2 = torch.randn(case.N2, case.D, generator=g) * case.magnitude
        args["extra_kv"] = kv2.to(case.dtype)
        args["extra_indices"] = _index_rows(g, case.T, case.K2, case.N2, case.pattern2 or case.pattern)
        args["extra_topk_length"] = _lengths(g, case.T, case.K2, case.lengths2 or case.lengths)
    if case.page:
        args["kv"] = args["kv"].view(case.N // case.page, case.page, case.D)
    return {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in args.items()}


SPARSE_CASES = [
    SparseCase("basic"),
    SparseCase("two_streams", N2=23, K2=9),
    SparseCase("two_streams_partial_len", N2=23, K2=9, lengths="partial", sink="finite"),
    SparseCase("all_invalid", pattern="all_invalid", N2=5, K2=4, sink="finite"),
    SparseCase("duplicates", pattern="duplicates"),
    SparseCase("len_zero", lengths="zero", N2=11, K2=5),
    SparseCase("len_over", lengths="over"),
    SparseCase("sink_finite", sink="finite"),
    SparseCase("sink_pos_inf", sink="pos_inf"),
    SparseCase("sink_neg_inf", sink="neg_inf"),
    SparseCase("sink_mixed", H=7, sink="mixed", N2=9, K2=3),
    SparseCase("huge_logits", magnitude=30.0, sink="finite"),
    SparseCase("huge_logits_two", magnitude=60.0, N2=13, K2=7, lengths="partial"),
    SparseCase("h1", H=1, sink="finite"),
    SparseCase("h64_d512", T=2, H=64, D=512, N=50, K=12, N2=20, K2=6, sink="finite"),
    SparseCase("d512_bf16", T=2, H=3, D=512, N=40, K=10, dtype=torch.bfloat16, sink="finite"),
    SparseCase("bf16_two", dtype=torch.bfloat16, N2=23, K2=9, lengths="partial", sink="mixed"),
    SparseCase("fp16", dtype=torch.float16, sink="finite"),
    SparseCase("paged_odd", N=35, page=7, N2=9, K2=5),
    SparseCase("paged_1", N=12, page=1, sink="finite"),
    SparseCase("k0", K=0, N2=10, K2=4),
    SparseCase("t0", T=0),
    SparseCase("empty_pool", N=0, K=6, N2=10, K2=4),
    SparseCase("custom_scale", scale=0.37, N2=6, K2=3),
    SparseCase("d128_h5", H=5, D=128, K=20, lengths="partial"),
] + [  # prefill-shaped: a chunk's tokens share rows (the reference gathers them once: attend_shared)
    SparseCase("window_prefill", T=12, H=4, D=64, N=60, K=20, pattern="window", sink="finite"),
    SparseCase("hca_prefix", T=20, H=3, D=64, N=12, K=12, pattern="prefix", lengths="growing"),
    SparseCase("window_dups_bf16", T=16, H=5, D=128, N=70, K=32, pattern="window_dups", dtype=torch.bfloat16),
    SparseCase(
        "window_and_prefix_paged",
        T=8,
        D=64,
        N=48,
        K=16,
        page=6,
        N2=10,
        K2=10,
        pattern="window",
        pattern2="prefix",
        lengths2="growing",
        sink="finite",
    ),
    SparseCase("t12_mixed_two_streams", T=12, H=2, N=30, K=9, N2=25, K2=5, lengths="partial", sink="mixed"),
]

# Shapes that cross the kernels' tiles (first written for the Ascend C tiling: 128-key blocks, head
# groups, D = 576 in two passes, fp16 over two blocks); every backend runs them.
TILING_CASES = [
    SparseCase("multi_block", T=3, H=4, D=128, N=300, K=200, N2=50, K2=70, lengths="partial", sink="finite"),
    SparseCase("multi_block_bf16", T=3, H=4, D=128, N=300, K=200, N2=50, K2=70, dtype=torch.bfloat16, sink="finite"),
    SparseCase("head_groups_h80", T=2, H=80, D=64, N=90, K=70, sink="mixed"),
    SparseCase("d256_h20_dups", T=2, H=20, D=256, N=40, K=65, pattern="duplicates", sink="finite"),
    SparseCase("many_tokens", T=11, H=2, D=64, N=20, K=9, N2=7, K2=3, lengths="partial"),
    SparseCase("exact_block", T=2, H=3, D=64, N=200, K=128, pattern="in_range"),
    SparseCase("d576_fp32", T=1, H=16, D=576, N=30, K=70, sink="finite"),
    SparseCase("d576_bf16", T=1, H=16, D=576, N=30, K=70, dtype=torch.bfloat16),
    SparseCase("fp16_two_blocks", T=2, H=6, D=64, N=100, K=100, dtype=torch.float16, N2=9, K2=5, sink="mixed"),
]
