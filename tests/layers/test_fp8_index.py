"""HybridAttention with FP8 indexer keys (``index_format="fp8"``: an ``Fp8IndexKeyPool``, vLLM's 132-B
indexer K record) over mixed batches of prefill chunks and decode steps of several sequences:

- the FP8 pool's records are exactly ``quantize_index_k_fp8`` of a float run's index entries (the
  same steps into an fp32 index pool, side by side);
- the indexer's selections and the layer's output equal those of a float-index run whose index keys
  are replaced, after every write, by their dequantised FP8 values (a power-of-two scale makes
  ``scale * <q, e4m3>`` and ``<q, scale * e4m3>`` the same fp32 number);
- any split into chunks and decode steps gives the same output (the quantisation is per entry);
- ``fit_pools`` grows the FP8 pool with its records; bad ``index_format`` values are refused.
Reference and Triton (the interpreter on a CPU)."""

import random

import longattn
import pytest
import torch
from longattn.cache import Fp8IndexKeyPool, dequantize_index_k_fp8, quantize_index_k_fp8

from tests.helpers.device import DEVICE
from tests.layers.helpers import layer_weights, make_manager, make_sequence, schedules, tiny_layer

LENGTHS = {"a": 37, "b": 21, "c": 9}


class _Wrapped:
    """A prepared op call of a layer step, run with ``after(result)`` called after it."""

    def __init__(self, call, after):
        self.call, self.after = call, after
        self.inputs = call.inputs

    def run(self, backend, **changes):
        result = self.call.run(backend, **changes)
        self.after(result)
        return result


def _fake_quantised(pool: torch.Tensor) -> None:
    """The float index pool's keys replaced by their dequantised FP8 values (value-idempotent: keys
    already replaced keep their values; never-written zero keys stay zero)."""
    pool.copy_(dequantize_index_k_fp8(quantize_index_k_fp8(pool)))


def _run_side_by_side(layer, page_size, seqs, schedule, weights, backend):
    """The schedule on three layers: float index keys (F), FP8 index keys (Q), float keys replaced by
    their FP8 values after every write (G). Returns (outputs {name: (F, Q, G)}, the three layers,
    top-k selections of Q and G per step)."""
    made = {}
    for name, fmt in (("F", "float"), ("Q", "fp8"), ("G", "float")):
        made[name] = longattn.HybridAttention(layer, make_manager(layer, page_size), kv_dtype=torch.float32,
                                              index_format=fmt, backend=backend)  # fmt: skip
    assert isinstance(made["Q"].index_pool, Fp8IndexKeyPool) and made["F"].index_pool.dtype == torch.float32
    done = {nm: 0 for nm in seqs}
    outs = {nm: {k: torch.full_like(s["q"], float("nan")) for k in made} for nm, s in seqs.items()}
    selections = {"Q": [], "G": []}
    for step_ in schedule:
        ids, counts = [nm for nm, _ in step_], [n for _, n in step_]
        cu = torch.tensor([0] + counts).cumsum(0)
        inputs = {k: torch.cat([seqs[nm][k][done[nm] : done[nm] + n] for nm, n in step_]) for k in seqs[ids[0]]}
        inputs = {k: v.to(DEVICE) for k, v in inputs.items()}
        w = {k: v.to(DEVICE) for k, v in weights.items()}
        for name, att in made.items():
            m = att.manager
            for nm in ids:
                if nm not in m:
                    m.add_sequence(nm)
            plan = m.plan(ids, cu.to(DEVICE))
            args = dict(inputs)
            step = att.prepare(plan, args.pop("q"), args.pop("kv"), **args, **w)
            if name == "G":
                pool = att.index_pool
                step.index_compress = _Wrapped(step.index_compress, lambda _, p=pool: _fake_quantised(p))
            if name in selections:
                step.topk = _Wrapped(step.topk, lambda r, n=name: selections[n].append(r[0].clone()))
            out = att.run(step).cpu()
            for (nm, n), t0 in zip(step_, cu[:-1].tolist()):
                outs[nm][name][done[nm] : done[nm] + n] = out[t0 : t0 + n]
        for nm, n in step_:
            done[nm] += n
    return outs, made, selections


def _check_records(made, layer):
    """Q's FP8 records == quantize_index_k_fp8 of F's fp32 index entries at every written slot; every
    other slot of Q untouched (zero bytes)."""
    F, Q = made["F"].index_pool.cpu(), made["Q"].index_pool
    Di = layer.index_head_dim
    written = F.reshape(-1, Di).ne(0).any(-1)  # random keys: a written entry is never all-zero
    expected = sum(S // layer.compress_ratio for S in LENGTHS.values())
    assert int(written.sum()) == expected, f"{int(written.sum())} written index entries, expected {expected}"
    want = quantize_index_k_fp8(F)
    have = Fp8IndexKeyPool(Q.data.cpu(), Q.page_size, Q.dim)
    hv, hs = have._views()
    wv, ws = want._views()
    hv, hs, wv, ws = hv.reshape(-1, Di), hs.reshape(-1), wv.reshape(-1, Di), ws.reshape(-1)
    assert torch.equal(hv[written], wv[written]), f"{int((hv[written] != wv[written]).sum())} e4m3 bytes differ"
    assert torch.equal(hs[written].view(torch.int32), ws[written].view(torch.int32)), "scales differ"
    assert not hv[~written].any() and not hs[~written].view(torch.int32).any(), "an unwritten slot was written"


@pytest.mark.parametrize("backend", ["reference", "triton"])
@pytest.mark.parametrize("page_size", [1, 3, 16])
def test_fp8_index_keys_in_mixed_batches(backend, page_size):
    if backend == "triton" and page_size != 3:
        pytest.skip("the Triton interpreter: one page size (the kernels take the page size as an argument)")
    layer = tiny_layer("csa")
    g = torch.Generator().manual_seed(11 + page_size)
    seqs = {nm: make_sequence(layer, S, g) for nm, S in LENGTHS.items()}
    weights = layer_weights(layer, g)
    scheds = schedules(LENGTHS, random.Random(page_size))
    if backend == "triton":  # (the interpreter: the decode schedule alone is ~70 steps of 3 layers)
        scheds.pop("decode")
    results = {}
    for how, sched in scheds.items():
        outs, made, sel = _run_side_by_side(layer, page_size, seqs, sched, weights, backend)
        _check_records(made, layer)
        assert len(sel["Q"]) == len(sel["G"]) == len(sched)
        for k, (q, gg) in enumerate(zip(sel["Q"], sel["G"])):
            assert torch.equal(q, gg), f"{how} step {k}: FP8 index selections differ from the dequantised run's"
        for nm in seqs:
            o = outs[nm]
            assert not torch.isnan(o["Q"]).any(), f"{how}: unwritten outputs"
            torch.testing.assert_close(o["Q"], o["G"], atol=1e-6, rtol=0, msg=f"{how} seq {nm}: Q vs G")
        results[how] = outs
    for nm in seqs:  # chunked prefill / decode == one prefill, with FP8 index keys
        for how in results:
            torch.testing.assert_close(
                results[how][nm]["Q"], results["one_prefill"][nm]["Q"], atol=1e-5, rtol=0, msg=f"{how} seq {nm}"
            )
    # the FP8 index keys change what the indexer sees: some top-k differs from the float run somewhere
    # (else this test could not tell the formats apart); the outputs stay close (same compressed keys)
    whole = results["one_prefill"]
    assert any(not torch.equal(whole[nm]["Q"], whole[nm]["F"]) for nm in seqs)


def test_fp8_index_pool_grows_with_its_records():
    layer = tiny_layer("csa")
    m = make_manager(layer, 2, pages=4)
    att = longattn.HybridAttention(layer, m, kv_dtype=torch.float32, index_format="fp8")
    assert att.index_pool in att.pools() and att.index_format == "fp8"
    keys = torch.randn(8, layer.index_head_dim)
    att.index_pool.write_rows(torch.arange(8), keys)
    before = att.index_pool.data.clone()
    m.compressed_alloc[4].grow(9)
    att.fit_pools()
    pool = att.index_pool
    assert isinstance(pool, Fp8IndexKeyPool) and pool.num_pages == 9 and (pool.page_size, pool.dim) == (2, 16)
    assert torch.equal(pool.data[:4], before) and not pool.data[4:].any()


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(index_format="bf16"), "index_format must be 'float' or 'fp8', got 'bf16'"),
        (dict(index_format=None), "index_format must be 'float' or 'fp8', got None"),
    ],
)
def test_bad_index_format(kwargs, match):
    layer = tiny_layer("csa")
    with pytest.raises(ValueError, match=match):
        longattn.HybridAttention(layer, make_manager(layer, 2), **kwargs)


def test_fp8_index_needs_a_multiple_of_16():
    import dataclasses

    layer = dataclasses.replace(tiny_layer("csa"), index_head_dim=24)
    with pytest.raises(ValueError, match="multiple of 16, layer has index_head_dim 24"):
        longattn.HybridAttention(layer, make_manager(layer, 2), index_format="fp8")
    longattn.HybridAttention(layer, make_manager(layer, 2), index_format="float")  # float keys: any width
    swa = tiny_layer("swa")  # no indexer: the option is accepted and allocates nothing
    assert longattn.HybridAttention(swa, make_manager(swa, 2), index_format="fp8").index_pool is None
