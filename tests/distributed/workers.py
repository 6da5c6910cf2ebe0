"""What each rank runs in the CP tests (module-level functions: spawned processes import them).

Every rank builds the same single-device problem from a seed (paged compressed KV + index keys of
several sequences, a window, decode tokens), computes the single-device answer with the ordinary ops,
then its CP answer from its own shard (``PageShards.shard_pool``), and asserts they agree:
top-k ids bit for bit, attention within the derived fp32 bound (tests/tolerance.py).
"""

from __future__ import annotations

import dataclasses
import random
from typing import List, Optional

import longattn
import torch
import torch.distributed as dist
from longattn.distributed import CPError, PageShards, cp_indexer_topk, cp_sparse_attention

from tests.layers.helpers import D, layer_weights, make_manager, make_sequence, run_schedule, schedules, tiny_layer
from tests.tolerance import U32, assert_close, attention_bounds


@dataclasses.dataclass
class Problem:
    index_k: torch.Tensor  # [P, ps, Di] single-device pools (page ids shared by both)
    kv: torch.Tensor  # [P, ps, D]
    block_table: torch.Tensor  # [B, max_pages]
    seq_ids: torch.Tensor  # [T]
    visible_end: torch.Tensor  # [T] compressed entries each token sees
    q_idx: torch.Tensor  # [T, Hi, Di]
    weights: torch.Tensor  # [T, Hi]
    q: torch.Tensor  # [T, H, D]
    window: torch.Tensor  # [Nw, D] (held by rank 0 in CP)
    window_idx: torch.Tensor  # [T, Kw]
    attn_sink: torch.Tensor  # [H]


def build_problem(seed: int, page_size: int, lengths: List[int], T: int, integer_valued: bool,
                  H: int = 5, D: int = 32, Hi: int = 3, Di: int = 16) -> Problem:  # fmt: skip
    g = torch.Generator().manual_seed(seed)
    B = len(lengths)
    max_pages = max(1, max(-(-n // page_size) for n in lengths) + 1)  # one unused column (-1) at least
    used = sum(-(-n // page_size) for n in lengths)
    P = used + 3  # pages no sequence uses (never read)
    perm = torch.randperm(P, generator=g)
    block_table = torch.full((B, max_pages), -1, dtype=torch.int32)
    k = 0
    for b, n in enumerate(lengths):
        for p in range(-(-n // page_size)):
            block_table[b, p] = int(perm[k])
            k += 1

    def values(*shape):
        if integer_valued:  # exact fp32 scores: massive ties, ids decide
            return torch.randint(-1, 2, shape, generator=g).float()
        return torch.randn(*shape, generator=g)

    seq_ids = torch.randint(0, B, (T,), generator=g, dtype=torch.int32)
    n_of = torch.tensor(lengths)[seq_ids.long()]
    visible_end = (torch.rand(T, generator=g) * (n_of + 1).float()).long().clamp(max=n_of)
    visible_end[: min(T, B)] = n_of[: min(T, B)]  # some tokens see their whole sequence
    Nw, Kw = 7, 4
    return Problem(
        index_k=values(P, page_size, Di),
        kv=torch.randn(P, page_size, D, generator=g),
        block_table=block_table,
        seq_ids=seq_ids,
        visible_end=visible_end.to(torch.int32),
        q_idx=values(T, Hi, Di),
        weights=values(T, Hi),
        q=torch.randn(T, H, D, generator=g),
        window=torch.randn(Nw, D, generator=g),
        window_idx=torch.randint(-1, Nw, (T, Kw), generator=g, dtype=torch.int32),
        attn_sink=torch.randn(H, generator=g),
    )


def _slots(p: Problem, ids: torch.Tensor, page_size: int) -> torch.Tensor:
    """Single-device slots of global entry ids (the same mapping, with the whole table)."""
    return PageShards(1, 0, page_size).local_slots(ids, p.block_table, p.seq_ids)


def _check_attention(p: Problem, out, lse, ref_out, ref_lse, num_keys: int, world: int, what: str) -> None:
    rows = torch.cat([p.window, p.kv.reshape(-1, p.kv.shape[-1])])
    scale = p.q.shape[-1] ** -0.5
    # both results are within the bound of the exact value; the CP merge adds world - 1 merges
    # (a few roundings each, counted as extra summed terms) and one more sink factor.
    out_atol, out_rtol, lse_atol = attention_bounds(p.q, rows, scale, num_keys + 4 * world, torch.float32, True)
    assert_close(out, ref_out, 2 * out_atol, out_rtol, f"{what} out")
    assert_close(lse, ref_lse, 2 * lse_atol + 4 * world * U32, 0.0, f"{what} lse")


def csa_decode(rank: int, world: int, seed: int, page_size: int, lengths: List[int], T: int, topk: int,
               integer_valued: bool, backend: Optional[str], fp8_index: bool = False) -> None:  # fmt: skip
    """CSA decode: cp_indexer_topk ids == indexer_topk ids on one device (bit for bit, every rank);
    cp_sparse_attention over window (rank 0) + each rank's selected entries == one device. ``fp8_index``:
    the index keys as FP8 index-key pools (one device's and each rank's shard, quantised per entry)."""
    p = build_problem(seed, page_size, lengths, T, integer_valued)
    keys_1 = longattn.quantize_index_k_fp8(p.index_k) if fp8_index else p.index_k
    ids_1, len_1 = longattn.indexer_topk(p.q_idx, p.weights, keys_1, p.visible_end, topk,
                                         block_table=p.block_table, seq_ids=p.seq_ids)  # fmt: skip
    out_1, lse_1 = longattn.sparse_attention(p.q, p.window, p.window_idx, extra_kv=p.kv.reshape(-1, p.kv.shape[-1]),
                                             extra_indices=_slots(p, ids_1, page_size), extra_topk_length=len_1,
                                             attn_sink=p.attn_sink)  # fmt: skip

    shards = PageShards(world, rank, page_size)
    index_k, bt = shards.shard_pool(p.index_k, p.block_table)
    if fp8_index:
        index_k = longattn.quantize_index_k_fp8(index_k)
    kv, bt_kv = shards.shard_pool(p.kv, p.block_table)
    assert torch.equal(bt, bt_kv)
    ids, lengths_cp = cp_indexer_topk(p.q_idx, p.weights, index_k, p.visible_end, topk, shards=shards,
                                      block_table=bt, seq_ids=p.seq_ids, backend=backend)  # fmt: skip
    assert torch.equal(ids, ids_1), f"rank {rank}: ids differ from one device\n{ids}\n{ids_1}"
    assert torch.equal(lengths_cp, len_1)

    slots = shards.local_slots(shards.to_local(ids), bt, p.seq_ids)
    flat_kv = kv.reshape(-1, kv.shape[-1])
    if rank == 0:
        out, lse = cp_sparse_attention(p.q, p.window, p.window_idx, extra_kv=flat_kv, extra_indices=slots,
                                       attn_sink=p.attn_sink, backend=backend)  # fmt: skip
    else:
        out, lse = cp_sparse_attention(p.q, flat_kv, slots, attn_sink=p.attn_sink, backend=backend)
    _check_attention(p, out, lse, out_1, lse_1, p.window_idx.shape[1] + topk, world, f"rank {rank}")
    _same_on_every_rank(out, lse)


def hca_decode(rank: int, world: int, seed: int, page_size: int, lengths: List[int], T: int) -> None:
    """HCA decode (no indexer): each rank attends to all its visible entries; == one device."""
    p = build_problem(seed, page_size, lengths, T, integer_valued=False)
    n_max = int(p.visible_end.max()) if T else 0
    all_ids = torch.arange(n_max).expand(T, n_max)
    all_ids = torch.where(all_ids < p.visible_end.long().unsqueeze(1), all_ids, -1)
    out_1, lse_1 = longattn.sparse_attention(p.q, p.window, p.window_idx, extra_kv=p.kv.reshape(-1, p.kv.shape[-1]),
                                             extra_indices=_slots(p, all_ids, page_size),
                                             attn_sink=p.attn_sink)  # fmt: skip
    shards = PageShards(world, rank, page_size)
    kv, bt = shards.shard_pool(p.kv, p.block_table)
    slots = shards.local_slots(shards.local_visible_ids(p.visible_end), bt, p.seq_ids)
    flat_kv = kv.reshape(-1, kv.shape[-1])
    if rank == 0:
        out, lse = cp_sparse_attention(p.q, p.window, p.window_idx, extra_kv=flat_kv, extra_indices=slots,
                                       attn_sink=p.attn_sink)  # fmt: skip
    else:
        out, lse = cp_sparse_attention(p.q, flat_kv, slots, attn_sink=p.attn_sink)
    _check_attention(p, out, lse, out_1, lse_1, p.window_idx.shape[1] + n_max, world, f"rank {rank}")
    _same_on_every_rank(out, lse)


def _same_on_every_rank(out: torch.Tensor, lse: torch.Tensor) -> None:
    """Every rank holds the same bits (rank 0's broadcast compared)."""
    for x in (out, lse):
        ref = x.clone()
        dist.broadcast(ref, src=0)
        assert torch.equal(ref.nan_to_num(7.0), x.nan_to_num(7.0)), "ranks disagree"


def failing_rank(rank: int, world: int, how: str) -> None:
    """A malformed argument on rank 1 (or a replicated argument that differs) raises CPError naming
    rank 1 on every rank, and the group stays usable afterwards (no rank is left in a collective)."""
    p = build_problem(3, 2, [9, 4], 3, integer_valued=False)
    shards = PageShards(world, rank, 2)
    index_k, bt = shards.shard_pool(p.index_k, p.block_table)
    q_idx, topk = p.q_idx, 4
    if rank == 1 and how == "bad_shape":
        q_idx = q_idx[:, :, :-1]  # Di mismatch with the index keys: indexer_topk refuses it
    if rank == 1 and how == "different_topk":
        topk = 5
    try:
        cp_indexer_topk(q_idx, p.weights, index_k, p.visible_end, topk, shards=shards, block_table=bt,
                        seq_ids=p.seq_ids)  # fmt: skip
    except CPError as exc:
        assert exc.rank == 1, exc
        if how == "bad_shape":
            assert "indexer_topk" in exc.message and "q" in exc.message, exc.message
    else:
        raise AssertionError(f"rank {rank}: no CPError")
    flag = torch.ones(1)
    dist.all_reduce(flag)  # the group still works on every rank
    assert float(flag) == world


def layer_equals_one_device(rank: int, world: int, kind: str, page_size: int, seed: int, kv_dtype_name: str) -> None:
    """HybridAttention over a sharded CacheManager (every rank the same steps and inputs) == the
    single-device layer, for one prefill, chunked prefill and interleaved decode of 3 sequences: the
    compressed entries are the same bits (the same compressor code on replicated rings), the top-k the
    same ids, so the outputs differ only by the merge's roundings."""
    kv_dtype = getattr(torch, kv_dtype_name)
    layer = tiny_layer(kind)
    g = torch.Generator().manual_seed(seed)
    lengths = {"a": 37, "b": 21, "c": 9}
    seqs = {nm: make_sequence(layer, S, g) for nm, S in lengths.items()}
    weights = layer_weights(layer, g)
    shards = PageShards(world, rank, page_size)

    def one_device(L, ps):
        return longattn.HybridAttention(L, make_manager(L, ps), kv_dtype=kv_dtype)

    def sharded(L, ps):
        return longattn.HybridAttention(L, make_manager(L, ps, shards=shards), kv_dtype=kv_dtype)

    for how, sched in schedules(lengths, random.Random(seed)).items():
        ref = run_schedule(layer, page_size, seqs, sched, weights, make_layer=one_device)
        got = run_schedule(layer, page_size, seqs, sched, weights, make_layer=sharded)
        for nm, s in seqs.items():
            assert not torch.isnan(got[nm]).any(), f"{how} {nm}: unwritten outputs"
            rows = torch.cat([s["kv"], torch.ones(1, D) * 4])  # window rows and RMS-normalised entries
            out_atol, out_rtol, _ = attention_bounds(s["q"], rows, layer.softmax_scale, 64 + 4 * world,
                                                     torch.float32, True)  # fmt: skip
            if kv_dtype != torch.float32:  # rows stored in bf16 on both sides: same rounding, same bound
                out_rtol = 2 * 2.0**-8
            assert_close(got[nm], ref[nm], 2 * out_atol, out_rtol, f"rank {rank} {kind} {how} seq {nm}")
            _same_on_every_rank(got[nm], got[nm][:, 0, 0].contiguous())


def layer_bad_argument_on_one_rank(rank: int, world: int) -> None:
    """A wrong-shape compressor norm weight on rank 1 only: every rank raises CPError naming rank 1
    and no rank wrote its caches (the next good step gives the single-device result)."""
    layer = tiny_layer("csa")
    g = torch.Generator().manual_seed(2)
    seq = make_sequence(layer, 12, g)
    shards = PageShards(world, rank, 4)
    att = longattn.HybridAttention(layer, make_manager(layer, 4, shards=shards), kv_dtype=torch.float32)
    ref = longattn.HybridAttention(layer, make_manager(layer, 4), kv_dtype=torch.float32)
    for a in (att, ref):
        a.manager.add_sequence("s")
    bad = torch.ones(D + 1) if rank == 1 else torch.ones(D)
    plan = att.manager.plan(["s"], [0, 12])
    inputs = {k: v for k, v in seq.items() if k not in ("q", "kv")}
    try:
        att(plan, seq["q"], seq["kv"], compress_norm_weight=bad, **inputs)
    except CPError as exc:
        assert exc.rank == 1 and "compress_norm_weight" in exc.message, exc
    else:
        raise AssertionError("no CPError")
    before = [p.clone() for p in att.pools()]
    assert all(torch.equal(b, p) for b, p in zip(before, att.pools()))
    assert all(float(p.abs().sum()) == 0.0 for p in att.pools()), "a pool was written by the failed step"
    out = att(plan, seq["q"], seq["kv"], **inputs)  # the newest plan may be run again
    want = ref(ref.manager.plan(["s"], [0, 12]), seq["q"], seq["kv"], **inputs)
    torch.testing.assert_close(out, want, atol=1e-5, rtol=1e-5)


def random_module(cfg, idx: int, scale: Optional[float] = None):
    """DeepseekV4Attention layer ``idx`` of ``cfg`` with random weights (seed ``idx``): ``scale`` times
    N(0, 1), or N(0, 1 / fan_in) for matrices (O(1) activations) when ``scale`` is None."""
    from longattn.nn import DeepseekV4Attention

    m = DeepseekV4Attention(cfg, idx).eval()
    g = torch.Generator().manual_seed(idx)
    with torch.no_grad():
        for p in m.parameters():
            std = scale if scale is not None else (p.shape[-1] ** -0.5 if p.dim() == 2 else 1.0)
            p.copy_(torch.randn(p.shape, generator=g) * std)
    return m


def module_equals_one_device(rank: int, world: int, idx: int) -> None:
    """longattn.nn.DeepseekV4Attention over a PagedKVCache with ``group="world"``: chunked prefill then
    decode give the single-device module's outputs (weights identical on every rank)."""
    from longattn.configs import ModelConfig
    from longattn.nn import PagedKVCache

    cfg = ModelConfig(
        name="tiny-cp", dim=24, n_layers=3, n_heads=4, q_lora_rank=12, o_groups=2, o_lora_rank=8, index_topk=4,
        compress_ratios=(0, 4, 8, 0), head_dim=32, rope_dim=8, window=6, index_n_heads=4, index_head_dim=16,
    )  # fmt: skip
    m = random_module(cfg, idx, scale=0.3)
    x = torch.randn(2, 31, cfg.dim, generator=torch.Generator().manual_seed(100 + idx))
    caches = [
        PagedKVCache([m.layer], max_batch_size=2, max_context=31, page_size=2, group=grp) for grp in (None, "world")
    ]
    outs = [[], []]
    with torch.no_grad():
        for a, b in ((0, 17), (17, 18), (18, 29), (29, 30), (30, 31)):
            for cache, out in zip(caches, outs):
                cache.begin_step(2, b - a)
                out.append(m(x[:, a:b], cache=cache)[0])
    one, cp = torch.cat(outs[0], 1), torch.cat(outs[1], 1)
    torch.testing.assert_close(cp, one, atol=1e-5, rtol=1e-5)  # merges of O(1) outputs: a few fp32 ulps
    assert caches[1].shards is not None and caches[1].shards.world == world
    _same_on_every_rank(cp.contiguous(), cp[..., 0].contiguous())


def swapped_generate_equals_one_device(rank: int, world: int) -> None:
    """A transformers DeepSeek-V4 model swapped with ``group="world"``: greedy ``generate`` on every rank
    (same prompt) gives the tokens of the single-device swapped model, and of transformers' own."""
    import copy

    from longattn.integrations.transformers import swap_attention
    from transformers import DeepseekV4ForCausalLM

    from tests.nn.helpers import randomize_attention, tiny_config

    torch.manual_seed(0)
    model = DeepseekV4ForCausalLM(tiny_config()).eval()
    g = torch.Generator().manual_seed(1)
    for layer in model.model.layers:
        randomize_attention(layer.self_attn, g)
    with torch.no_grad():
        model.model.embed_tokens.weight.normal_(0, 1, generator=g)
    ids = torch.randint(1, 128, (2, 140), generator=torch.Generator().manual_seed(9))
    kw = dict(max_new_tokens=8, min_new_tokens=8, do_sample=False)
    one = swap_attention(copy.deepcopy(model), page_size=4).generate(ids, **kw)
    cp = swap_attention(copy.deepcopy(model), page_size=4, group="world").generate(ids, **kw)
    assert torch.equal(cp, one), (rank, cp[:, 140:], one[:, 140:])
    assert torch.equal(one, model.generate(ids, **kw))


# --- prefill: query tokens sharded (TokenShards) ----------------------------------------------------------
def _recording_topk(calls: list):
    """Wrap ``longattn.ops.indexer.indexer_topk`` (what the module imports per call) to record its ids."""
    import longattn.ops.indexer as indexer_ops

    real = indexer_ops.indexer_topk

    def record(*args, **kwargs):
        ids, lengths = real(*args, **kwargs)
        calls.append(ids)
        return ids, lengths

    indexer_ops.indexer_topk = record
    return lambda: setattr(indexer_ops, "indexer_topk", real)


def prefill_equals_one_device(rank: int, world: int, idx: int, lengths: List[int], dtype_name: str) -> None:
    """DeepseekV4Attention.forward_cp over TokenShards == forward_train of the whole sequence on one
    device: the indexer's ids bit for bit (the halo-computed entries and keys are the single-device
    ones), outputs within a few fp32 ulps (the projections of a shorter row block may round
    differently), the same gathered sequence on every rank."""
    from longattn.distributed import TokenShards

    from tests.nn.helpers import tiny_layer

    dtype = getattr(torch, dtype_name)
    m = tiny_layer(idx).to(dtype)
    for S in lengths:
        x = torch.randn(S, m.q_a_proj.weight.shape[1], generator=torch.Generator().manual_seed(S)).to(dtype)
        one, cp = [], []
        undo = _recording_topk(one)
        try:
            with torch.no_grad():
                ref = m.forward_train(x.unsqueeze(0))[0]
        finally:
            undo()
        shards = TokenShards(world, rank, S)
        undo = _recording_topk(cp)
        try:
            got = m.forward_cp(shards.take(x), shards)
        finally:
            undo()
        assert got.shape == (shards.count(), ref.shape[1]) and got.dtype == dtype
        assert len(one) == len(cp) == (1 if m.kind == "csa" else 0)
        if cp:  # this rank's tokens' ids == the single-device ids of those tokens
            assert torch.equal(cp[0], shards.take(one[0])), f"rank {rank} S={S}: ids differ from one device"
        full = shards.gather(got)
        tol = 1e-5 if dtype == torch.float32 else 2 * 2.0**-8  # bf16: one rounding of O(1) outputs either way
        torch.testing.assert_close(full, ref, atol=tol, rtol=tol, msg=lambda s, S=S: f"rank {rank} S={S}: {s}")
        if S:
            _same_on_every_rank(full.float().contiguous(), full[:, 0].float().contiguous())


def prefill_bad_input_on_one_rank(rank: int, world: int) -> None:
    """A wrong-width hidden state, a plan without its cache layer, a plan of another sequence length,
    each on one rank only: CPError naming that rank on every rank, no hang, nothing written."""
    from longattn.cache import CacheManager
    from longattn.distributed import TokenShards

    from tests.nn.helpers import tiny_layer

    m = tiny_layer(1)
    shards = TokenShards(world, rank, 20)
    x = torch.randn(shards.count(), 32 if rank != 1 else 31)
    try:
        m.forward_cp(x, shards)
    except CPError as exc:
        assert exc.rank == 1 and "hidden_states" in exc.message, exc
    else:
        raise AssertionError(f"rank {rank}: no CPError")
    # a plan without its cache layer (rank 2), then a plan of another length (rank 1)
    mgr = CacheManager.for_layers([m.layer], max_seqs=2, max_context=40, max_step_tokens=40, page_size=4)
    layer = longattn.HybridAttention(m.layer, mgr, kv_dtype=torch.float32)
    x = torch.randn(shards.count(), 32)
    for bad, what in ((2, "both `plan` and `cache_layer`"), (1, "ending at 24 tokens")):
        mgr.add_sequence(bad)
        plan = mgr.plan_prefilled(bad, 24 if rank == bad == 1 else 20, 8)
        try:
            m.forward_cp(x, shards, plan=plan, cache_layer=None if rank == bad == 2 else layer)
        except CPError as exc:
            assert exc.rank == bad and what in exc.message, exc
        else:
            raise AssertionError(f"rank {rank}: no CPError")
    assert all(float(p.abs().sum()) == 0.0 for p in layer.pools()), "a refused call wrote the caches"
    flag = torch.ones(1)
    dist.all_reduce(flag)  # the group still works on every rank
    assert float(flag) == world


def _pool_bits(pool) -> Optional[torch.Tensor]:
    """A copy of a pool's storage (an FP8 pool's bytes), or None."""
    return None if pool is None else (pool.data if hasattr(pool, "data") else pool).clone()


def prefill_then_decode_equals_one_device(rank: int, world: int, idx: int, S: int, page_size: int,
                                          sharded: bool, kv_format: str) -> None:  # fmt: skip
    """forward_cp with ``plan_prefilled`` + the layer's caches, then 3 decode steps of forward_paged
    on every rank (decode CP over PageShards when ``sharded``, else a replicated cache): the decode
    outputs equal a single-device paged prefill + decode, and the cache holds the same entries."""
    from longattn.cache import CacheManager
    from longattn.distributed import TokenShards

    from tests.nn.helpers import tiny_layer

    if kv_format == "fp8":  # the FP8 record holds 512-d rows (V4's latent head)
        from longattn.configs import ModelConfig

        cfg = ModelConfig(
            name="tiny-fp8", dim=32, n_layers=3, n_heads=2, q_lora_rank=16, o_groups=2, o_lora_rank=8, index_topk=3,
            compress_ratios=(0, 4, 8, 0), head_dim=512, rope_dim=64, window=6, index_n_heads=2, index_head_dim=64,
        )  # fmt: skip
        m = random_module(cfg, idx)
    else:
        m = tiny_layer(idx)
    L = m.layer
    x = torch.randn(S + 3, m.q_a_proj.weight.shape[1], generator=torch.Generator().manual_seed(S))

    def make(shards):
        mgr = CacheManager.for_layers([L], max_seqs=1, max_context=S + 3, max_step_tokens=S + 3,
                                      page_size=page_size, shards=shards)  # fmt: skip
        return longattn.HybridAttention(L, mgr, kv_dtype=torch.float32, kv_format=kv_format,
                                        group=None if shards is None else dist.group.WORLD)  # fmt: skip

    one = make(None)
    one.manager.add_sequence("s")
    with torch.no_grad():
        pre_1 = m.forward_paged(x[:S], one.manager.plan(["s"], [0, S]), one)
        names = ("compressed_pool", "index_pool", "state_pool", "index_state_pool")
        pools_1 = {n: _pool_bits(getattr(one, n)) for n in names}
        dec_1 = [m.forward_paged(x[S + i : S + i + 1], one.manager.plan(["s"], [0, 1]), one) for i in range(3)]

    cp = make(PageShards(world, rank, page_size) if sharded else None)
    cp.manager.add_sequence("s")
    shards = TokenShards(world, rank, S)
    tail = min(S, max(L.window - 1, 2 * L.compress_ratio if L.compress_ratio else 0))
    plan = cp.manager.plan_prefilled("s", S, tail)
    pre = shards.gather(m.forward_cp(shards.take(x[:S]), shards, plan=plan, cache_layer=cp))
    if kv_format == "float":  # (an FP8 paged prefill attends to the quantised rows; forward_cp does not)
        torch.testing.assert_close(pre, pre_1, atol=1e-5, rtol=1e-5)
    if not sharded:  # the same pages: the compressed, index-key and ring pools hold the same bits
        for name in names:
            got = _pool_bits(getattr(cp, name))
            assert (got is None) == (pools_1[name] is None)
            assert got is None or torch.equal(got, pools_1[name]), f"rank {rank}: {name} differs from one device's"
    with torch.no_grad():
        dec = [m.forward_paged(x[S + i : S + i + 1], cp.manager.plan(["s"], [0, 1]), cp) for i in range(3)]
    for i, (a, b) in enumerate(zip(dec, dec_1)):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5, msg=lambda s, i=i: f"rank {rank} decode {i}: {s}")
