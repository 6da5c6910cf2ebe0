"""No host synchronisation on the Triton op path: a call never waits for the device.

Every public op is called with ``backend="triton"`` on CPU tensors (the interpreter's backend) while its
kernel launches are stubbed (bench/host_overhead.py ``stub_kernels``; the interpreter itself copies
tensors to the host, a GPU launch does not), under ``SyncDetector``: a dispatch mode that records
every tensor -> Python conversion (``.item()``, ``bool(t)``, ``int(t)``, a tensor in an ``if``),
every data-dependent shape (``nonzero``, boolean masks, ``unique``, ...) and ``.tolist()`` /
``.cpu()``. Both paths of a call are checked: a plain eager call (``Op.run`` runs the backend itself)
and the custom op's (autograd, compile, ``torch.ops.longattn.*``). On a GPU each of these would stall
the launch queue (README.md, "Host-side cost of an op call"). No timing is asserted here.
"""

import longattn
import pytest
import torch
from longattn.cache import Fp8KVPool, quantize_kv_fp8
from longattn.configs import RopeConfig
from longattn.rope import inv_freq

from bench.host_overhead import SyncDetector, count_syncs, stub_kernels
from tests.helpers.device import CAN_RUN_TRITON, INTERPRET

pytestmark = pytest.mark.skipif(
    not (CAN_RUN_TRITON and INTERPRET), reason="needs the Triton interpreter (TRITON_INTERPRET=1) for CPU tensors"
)

H, D, PAGE = 128, 512, 16


def _sparse(pool: str, split: bool):
    g = torch.Generator().manual_seed(0)
    q = torch.randn(1, H, D, generator=g).bfloat16()
    win = torch.randn(8, PAGE, D, generator=g).bfloat16()  # paged window pool
    comp = torch.randn(64, PAGE, D, generator=g).bfloat16()
    if pool == "fp8":
        comp = quantize_kv_fp8(comp)
    k2 = 512 if split else 16  # 128 + 512 keys over 2 head blocks: split-KV and the combine launch
    win_idx = torch.randint(-1, 8 * PAGE, (1, 128), generator=g).int()
    comp_idx = torch.randint(-1, 64 * PAGE, (1, k2), generator=g).int()
    return lambda: longattn.sparse_attention(
        q, win, win_idx, topk_length=torch.tensor([100], dtype=torch.int32), extra_kv=comp,
        extra_indices=comp_idx, extra_topk_length=torch.tensor([k2 - 3]), attn_sink=torch.randn(H, generator=g),
        backend="triton",
    )  # fmt: skip


def _indexer(paged: bool, logits: bool = False):
    g = torch.Generator().manual_seed(0)
    q, w = torch.randn(2, 64, 128, generator=g).bfloat16(), torch.randn(2, 64, generator=g)
    ve = torch.tensor([700, 1024], dtype=torch.int32)
    kw = {}
    k = torch.randn(1024, 128, generator=g).bfloat16()
    if paged:
        k = k.view(-1, PAGE, 128)
        kw = dict(
            block_table=torch.randperm(64, generator=g).int().view(1, 64), seq_ids=torch.zeros(2, dtype=torch.int32)
        )
    if logits:
        return lambda: longattn.indexer_logits(q, w, k, ve, **kw, backend="triton")
    return lambda: longattn.indexer_topk(q, w, k, ve, 512, **kw, return_slots=paged, backend="triton")


def _combine(sink: bool):
    g = torch.Generator().manual_seed(0)
    oa, ob = torch.randn(1, H, D, generator=g).bfloat16(), torch.randn(1, H, D, generator=g).bfloat16()
    la, lb = torch.randn(1, H, generator=g), torch.randn(1, H, generator=g)
    if sink:
        return lambda: longattn.apply_attention_sink(oa, la, torch.randn(H, generator=g), backend="triton")
    return lambda: longattn.merge_attention_states(oa, la, ob, lb, backend="triton")


def _append(pool: str):
    rows, slots = torch.randn(2, D).bfloat16(), torch.tensor([3, -1])
    p = Fp8KVPool.empty(4, PAGE) if pool == "fp8" else torch.zeros(4, PAGE, D, dtype=torch.bfloat16)
    return lambda: longattn.append_kv(p, rows, slots, backend="triton")


def _compress(ratio: int, overlap: bool, out: str):
    c = 2 if overlap else 1
    a, b = torch.randn(2, c * D).bfloat16(), torch.randn(2, c * D).bfloat16()
    pool = Fp8KVPool.empty(4, PAGE) if out == "fp8" else torch.zeros(4, PAGE, D, dtype=torch.bfloat16)
    kw = dict(ratio=ratio, overlap=overlap, state=torch.zeros(1, c * ratio, 2 * c * D),
              state_block_table=torch.zeros(1, 1, dtype=torch.int32), out=pool,
              out_block_table=torch.arange(4, dtype=torch.int32).view(1, 4), norm_weight=torch.ones(D), eps=1e-6,
              rope_inv_freq=inv_freq(RopeConfig(160000.0), 64, "cpu"))  # fmt: skip
    pos = torch.tensor([ratio * 3 - 2, ratio * 3 - 1])
    return lambda: longattn.compress_kv(a, b, pos, torch.zeros(2, dtype=torch.int32), **kw, backend="triton")


CALLS = {
    "sparse_attention bf16 pools, split-KV": lambda: _sparse("bf16", True),
    "sparse_attention FP8 pool, split-KV": lambda: _sparse("fp8", True),
    "sparse_attention bf16 pools, one split": lambda: _sparse("bf16", False),
    "indexer_topk flat": lambda: _indexer(False),
    "indexer_topk paged, slots": lambda: _indexer(True),
    "indexer_logits paged": lambda: _indexer(True, logits=True),
    "merge_attention_states": lambda: _combine(False),
    "apply_attention_sink": lambda: _combine(True),
    "append_kv bf16 paged pool": lambda: _append("bf16"),
    "append_kv FP8 pool": lambda: _append("fp8"),
    "compress_kv CSA FP8 out": lambda: _compress(4, True, "fp8"),
    "compress_kv HCA bf16 out": lambda: _compress(128, False, "bf16"),
    "compress_pool": lambda: (lambda a: lambda: longattn.compress_pool(a, a, 4, True, backend="triton"))(
        torch.randn(16, 2 * D)
    ),
}


@pytest.mark.parametrize("path", ["eager", "dispatcher", "direct"])
@pytest.mark.parametrize("name", list(CALLS))
def test_triton_op_path_has_no_host_sync(name, path, monkeypatch):
    """``direct``: as a direct ``torch.ops.longattn.*`` call, which validates the schema arguments again
    (``from_schema``: pools rebuilt from their tensors)."""
    from longattn.ops import op as op_module

    call = CALLS[name]()
    with stub_kernels() as launches:
        call()
    assert launches, "the call never reached a Triton launch"
    if path == "direct":
        monkeypatch.setattr(op_module, "_same_args", lambda a, b: False)  # the custom op prepares again
    syncs = count_syncs(call, "eager" if path == "eager" else "dispatcher")
    assert not syncs, "host synchronisations on the Triton op path:\n" + "\n".join(map(str, syncs))


def test_detector_sees_a_reintroduced_item(monkeypatch):
    """A regression that reads a tensor on the host (here an ``.item()`` in the sparse launcher) fails
    the test above, and the report names the line."""
    from longattn.ops.sparse_attention import triton_sparse_attention as tsa

    real = tsa.compute_dtype

    def with_sync(q, pools):
        if q.abs().max().item() > 1e30:  # an innocent-looking guard: a device sync on a GPU
            pass
        return real(q, pools)

    monkeypatch.setattr(tsa, "compute_dtype", with_sync)
    for path in ("eager", "dispatcher"):
        syncs = count_syncs(CALLS["sparse_attention bf16 pools, one split"](), path)
        assert len(syncs) == 1, syncs
        assert "test_host_syncs.py" not in syncs[0].where[0] and "triton_sparse_attention.py" in syncs[0].where[0]


def test_detector_kinds():
    """Each kind of host read is recorded once (the detector itself, outside any op)."""
    x = torch.randn(4)
    with SyncDetector() as det:
        x.sum().item()
        bool(x[0] > 0)
        int(x[1])
        x.nonzero()
        x[x > 0]
        x.tolist()
        x.cpu()
        x.to("cpu")
        x.to(torch.float64)  # not a sync
        torch.repeat_interleave(x, torch.tensor([1, 2, 1, 0]))
    assert len(det.syncs) == 9, [s.kind for s in det.syncs]
    assert torch.Tensor.tolist is torch._C.TensorBase.tolist  # the patches are undone


def test_plain_eager_calls_skip_the_dispatcher_and_give_its_results(monkeypatch):
    """``Op.run`` runs the backend itself when nothing observes the call, and takes the custom op
    otherwise (here: a gradient through it); both give the same outputs as a direct custom-op call."""
    from longattn.ops import op as op_module

    real, dispatched = op_module._Handoff, []
    monkeypatch.setattr(op_module, "_Handoff", lambda *a: dispatched.append(a[0]) or real(*a))
    g = torch.Generator().manual_seed(0)
    oa, ob = torch.randn(3, 4, 8, generator=g), torch.randn(3, 4, 8, generator=g)
    la, lb = torch.randn(3, 4, generator=g), torch.randn(3, 4, generator=g)
    for backend in ("reference", "triton"):
        dispatched.clear()
        plain = longattn.merge_attention_states(oa, la, ob, lb, backend=backend)
        assert dispatched == []
        direct = torch.ops.longattn.merge_attention_states(oa, la, ob, lb, backend)
        with torch.no_grad():  # no graph to record: plain
            longattn.merge_attention_states(oa.requires_grad_(), la, ob, lb, backend=backend)
        assert dispatched == []
        grad = longattn.merge_attention_states(oa, la, ob, lb, backend=backend)
        oa.requires_grad_(False)
        assert dispatched == ["merge_attention_states"] and grad[0].grad_fn is not None
        for x, y, z in zip(plain, direct, grad):
            assert torch.equal(x, y) and torch.equal(x, z.detach())


def test_a_torch_without_the_probed_hooks_always_takes_the_dispatcher(monkeypatch):
    """``_unobserved`` asks private torch hooks; where one is missing (another torch release), every call
    must take the custom op (correct, only slower) instead of failing."""
    from longattn.ops import op as op_module

    monkeypatch.delattr(torch._C._functorch, "peek_interpreter_stack")
    assert op_module._probes_exist() is False
    monkeypatch.setattr(op_module, "_CAN_SKIP_DISPATCH", op_module._probes_exist())
    real, dispatched = op_module._Handoff, []
    monkeypatch.setattr(op_module, "_Handoff", lambda *a: dispatched.append(a[0]) or real(*a))
    oa, la = torch.zeros(2, 3, 8), torch.zeros(2, 3)
    out, lse = longattn.merge_attention_states(oa, la, oa, la, backend="reference")
    assert dispatched == ["merge_attention_states"] and torch.equal(lse, la + torch.log(torch.tensor(2.0)))


def test_cached_dummies_work_in_and_out_of_inference_mode(monkeypatch):
    """The launchers' cached dummy tensors (``triton_utils.dummy``) are made outside inference mode, so
    a first call under ``torch.inference_mode()`` does not leave an inference tensor that a later call
    (which the interpreter copies every argument back into) could not write."""
    from longattn.ops import triton_utils

    monkeypatch.setattr(triton_utils, "_DUMMIES", {})
    g = torch.Generator().manual_seed(0)
    q, kv = torch.randn(2, 2, 16, generator=g), torch.randn(8, 16, generator=g)
    idx = torch.tensor([[0, 3, -1], [7, 2, 9]], dtype=torch.int32)
    with torch.inference_mode():
        first = longattn.sparse_attention(q, kv, idx, backend="triton")  # no sink / lengths: dummies
    assert not any(t.is_inference() for t in triton_utils._DUMMIES.values())
    again = longattn.sparse_attention(q, kv, idx, backend="triton")
    ref = longattn.sparse_attention(q, kv, idx, backend="reference")
    for a, b, r in zip(first, again, ref):
        assert torch.equal(a, b) and torch.allclose(a, r, atol=1e-5, rtol=1e-5)
