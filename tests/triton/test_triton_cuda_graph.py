"""A layer's decode step, every op on the Triton backend, without a host synchronisation and replayed
from a CUDA graph (what an inference engine captures once per batch-size bucket).

``HybridAttention.prepare`` does the checks and the host-side planning; ``run`` only launches kernels
(append_kv, compress_kv, the indexer's select path, sparse_attention). Checked here: ``run`` under
``torch.cuda.set_sync_debug_mode("error")`` (any synchronising call raises), a capture of ``run``, and
replays that equal eager runs bit for bit, also after the step's inputs were overwritten in place.
GPU only: CUDA graphs need a CUDA device, the interpreter has none.
"""

from __future__ import annotations

import pytest
import torch

from tests.helpers.device import ON_GPU

pytestmark = pytest.mark.skipif(not ON_GPU, reason="CUDA graphs need a CUDA device (not the interpreter)")


def _decode_step(kind, device="cuda"):
    """(layer module, prepared decode step of 2 sequences after a 20-token prefill, fresh inputs)."""
    import longattn
    from longattn.cache import CacheManager

    from tests.layers.helpers import layer_weights, make_sequence, tiny_layer

    layer = tiny_layer(kind)
    g = torch.Generator().manual_seed(7)
    S = 20
    seqs = {nm: make_sequence(layer, S + 2, g) for nm in ("a", "b")}
    weights = {k: v.to(device) for k, v in layer_weights(layer, g).items()}
    r = layer.compress_ratio
    m = CacheManager(ratios=(r,) if r else (), page_size=4, num_window_pages=64,
                     num_compressed_pages={r: 64} if r else {}, num_state_pages={r: 64} if r else {},
                     window=layer.window, device=device)  # fmt: skip
    att = longattn.HybridAttention(layer, m, kv_dtype=torch.bfloat16, backend="triton")

    def inputs(t0, t1):
        x = {k: torch.cat([s[k][t0:t1] for s in seqs.values()]).to(device) for k in seqs["a"]}
        x["q"] = x["q"].to(torch.bfloat16)
        x["kv"] = x["kv"].to(torch.bfloat16)
        return x

    for nm in seqs:
        m.add_sequence(nm)
    att(m.plan(list(seqs), torch.tensor([0, S, 2 * S])), **inputs(0, S), **weights)  # the prefill
    plan = m.plan(list(seqs), torch.tensor([0, 1, 2]))
    now = inputs(S, S + 1)
    step = att.prepare(plan, now.pop("q"), now.pop("kv"), **now, **weights)
    return att, step, inputs(S + 1, S + 2)


@pytest.mark.parametrize("kind", ["swa", "csa", "hca"])
def test_decode_step_replays_from_a_cuda_graph(kind):
    att, step, other = _decode_step(kind)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        eager = att.run(step)  # also the JIT warm-up of every kernel of the step
    finally:
        torch.cuda.set_sync_debug_mode(0)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # torch's recipe: one run on a side stream before the capture
        att.run(step)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = att.run(step)
    captured.fill_(float("nan"))  # poison: the replay must write every element
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(captured, eager), f"{kind}: the replay differs from the eager run"
    # new query values in the step's own tensors: the replay reads them, as an engine's static buffers
    step.q.copy_(other["q"])
    want = att.run(step)
    captured.fill_(float("nan"))
    graph.replay()
    torch.cuda.synchronize()
    assert not torch.equal(want, eager) and torch.equal(captured, want), f"{kind}: replay after an input update"
