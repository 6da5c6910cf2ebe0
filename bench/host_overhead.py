"""Host-side cost of the op-call path of the Triton backend, measured on a CPU with the kernels stubbed.

    python -m bench.host_overhead [--repeats 7] [--number 300] [--json PATH] [--baseline OLD.json]

What it measures (CPU figures of the Python host path, never GPU timings): every public op at
DeepSeek-V4 decode shapes (H = 128, D = 512; the indexer 64 x 128 over 262,144 entries) is called
with ``backend="triton"`` on CPU tensors (``TRITON_INTERPRET=1``, set here before triton is
imported) while every Triton kernel launch is replaced by a no-op recorder (``stub_kernels``: each
JIT kernel's ``run``; ``torch.topk`` too, a device launch on a GPU). Everything before the launches
runs for real: validation, the custom-op boundary, dispatch, the launcher's Python, workspace
allocation. Per case:

- ``op``: the public call (``longattn.<op>(..., backend="triton")``);
- ``launcher``: the Triton module's ``run(inputs)`` alone on inputs prepared once (what a caller that
  launches directly pays; bench/triton_grid.py's "launcher" figure);
- ``prepare``: the validation alone, ``select``: the backend choice alone;
- ``overhead = op - launcher``: what the op path adds;
- ``syncs``: host synchronisations on the path of one call (``SyncDetector``): every tensor -> Python
  conversion (``aten._local_scalar_dense``: ``.item()``, ``bool(t)``, ``int(t)``, ``float(t)``, a tensor
  in an ``if``), data-dependent shapes (``nonzero``, ``masked_select``, ``unique``, boolean-mask
  indexing, ``repeat_interleave`` without ``output_size``), and ``.tolist()`` / ``.numpy()`` /
  ``.cpu()`` / ``.to("cpu")``, each with the longattn frames that made it.

Times are the minimum over ``--repeats`` of the mean of ``--number`` calls, in microseconds (on a
shared CPU other processes only ever add time; the medians are in the JSON too). A second run with
``--baseline`` embeds an earlier JSON's figures as "before" for comparison.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import gc
import importlib
import json
import os
import statistics
import sys
import time
import traceback
from typing import Callable, Dict, Iterator, List, Optional, Tuple

if __name__ == "__main__" and "triton" not in sys.modules:  # as a script only: importing it changes nothing
    os.environ.setdefault("TRITON_INTERPRET", "1")  # CPU tensors take the Triton path (before triton is imported)

import longattn
import torch
from torch.utils._python_dispatch import TorchDispatchMode

TRITON_MODULES = (
    "longattn.ops.sparse_attention.triton_sparse_attention",
    "longattn.ops.indexer.triton_indexer",
    "longattn.ops.combine.triton_combine",
    "longattn.ops.append.triton_append",
    "longattn.ops.compress.triton_compress",
)
_ROOT = os.path.dirname(os.path.abspath(longattn.__file__)) + os.sep


# ---------------------------------------------------------------------------------------------------------
# kernel stubs
# ---------------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def stub_kernels(topk: bool = True) -> Iterator[List[Tuple[str, object]]]:
    """Replace every Triton kernel launch of the ops' launchers by a recorder (and ``torch.topk`` by an
    uninitialised result of its shape, when ``topk``); yields the list of (kernel, grid) launched."""
    import triton

    launches: List[Tuple[str, object]] = []
    patched = []
    for name in TRITON_MODULES:
        mod = importlib.import_module(name)
        for attr, obj in vars(mod).items():
            if isinstance(obj, triton.runtime.KernelInterface) and "run" not in vars(obj):

                def run(*args, grid=None, warmup=False, _name=attr, **kwargs):
                    launches.append((_name, grid))

                obj.run = run
                patched.append(obj)
    real_topk = torch.topk

    def fake_topk(x, k, dim=-1, largest=True, sorted=True):
        shape = list(x.shape)
        shape[dim] = k
        launches.append(("torch.topk", tuple(shape)))
        return torch.return_types.topk(
            (torch.empty(shape, dtype=x.dtype, device=x.device), torch.empty(shape, dtype=torch.int64, device=x.device))
        )

    if topk:
        torch.topk = fake_topk
    try:
        yield launches
    finally:
        torch.topk = real_topk
        for obj in patched:
            del obj.run


# ---------------------------------------------------------------------------------------------------------
# host-sync detector
# ---------------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Sync:
    kind: str
    where: List[str]  # longattn frames, innermost first ("ops/op.py:123 in run")

    def __str__(self) -> str:
        return f"{self.kind} at {' <- '.join(self.where[:4]) or '(outside longattn)'}"


def _longattn_frames(skip: int = 2) -> List[str]:
    frames = []
    for fs in reversed(traceback.extract_stack()[:-skip]):
        if fs.filename.startswith(_ROOT):
            frames.append(f"{fs.filename[len(_ROOT) :]}:{fs.lineno} in {fs.name}")
    return frames


_SYNC_ATEN = {
    "aten::_local_scalar_dense": "tensor -> Python scalar (.item() / bool / int / float / if t)",
    # below the autograd key (inside a custom op's implementation) the composite ops arrive undecomposed
    "aten::item": "tensor -> Python scalar (.item() / int / float)",
    "aten::is_nonzero": "bool(tensor) (an if on a tensor, .any() / .all() in a condition)",
    "aten::allclose": "torch.allclose (host bool)",
    "aten::nonzero": "nonzero (data-dependent shape)",
    "aten::nonzero_numpy": "nonzero (data-dependent shape)",
    "aten::argwhere": "argwhere (data-dependent shape)",
    "aten::nonzero_static": None,  # fixed shape: no sync
    "aten::masked_select": "masked_select (data-dependent shape)",
    "aten::_unique": "unique (data-dependent shape)",
    "aten::_unique2": "unique (data-dependent shape)",
    "aten::unique_dim": "unique (data-dependent shape)",
    "aten::unique_consecutive": "unique (data-dependent shape)",
    "aten::equal": "torch.equal (host bool)",
}


class SyncDetector(TorchDispatchMode):
    """Records every host synchronisation of the code run under it (see the module docstring).

    A ``TorchDispatchMode`` sees the aten ops of the call, including those of the longattn custom ops'
    implementations (run under the mode here); the Python-only conversions (``tolist``, ``numpy``,
    ``cpu``, ``to("cpu")``) are patched on ``torch.Tensor`` while active."""

    def __init__(self) -> None:
        super().__init__()
        self.syncs: List[Sync] = []
        self._saved: Dict[str, object] = {}
        self._depth = 0  # re-entered for the custom ops' implementations: patch once

    # -- aten level ---------------------------------------------------------------------------------------
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = func._schema.name
        if func.namespace == "longattn":  # the custom op's real implementation, under this mode again
            from longattn.ops.op import get_op

            with self:
                return get_op(name.split("::", 1)[1])._real(*args, **kwargs)
        what = _SYNC_ATEN.get(name)
        if what is None and name == "aten::repeat_interleave" and kwargs.get("output_size") is None:
            if any(isinstance(a, torch.Tensor) for a in args[:2]):
                what = "repeat_interleave without output_size (data-dependent shape)"
        if what is None and name in ("aten::index", "aten::index_put", "aten::index_put_"):
            idx = args[1] if len(args) > 1 else ()
            if any(isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8) for i in idx or ()):
                what = "boolean-mask indexing (data-dependent shape)"
        if what is not None:
            self.syncs.append(Sync(what, _longattn_frames()))
        return func(*args, **kwargs)

    # -- Python level -------------------------------------------------------------------------------------
    def _patch(self, attr: str, what: str, when: Optional[Callable] = None) -> None:
        real = getattr(torch.Tensor, attr)
        self._saved[attr] = real
        detector = self

        def wrapper(t, *args, **kwargs):
            if when is None or when(t, *args, **kwargs):
                detector.syncs.append(Sync(what, _longattn_frames()))
            return real(t, *args, **kwargs)

        setattr(torch.Tensor, attr, wrapper)

    def __enter__(self):
        if self._depth == 0:
            self._patch("tolist", ".tolist()")
            self._patch("numpy", ".numpy()")
            self._patch("cpu", ".cpu()")
            self._patch("to", '.to("cpu")', lambda t, *a, **k: _to_cpu(a, k))
        self._depth += 1
        return super().__enter__()

    def __exit__(self, *exc):
        self._depth -= 1
        if self._depth == 0:
            for attr, real in self._saved.items():
                setattr(torch.Tensor, attr, real)
            self._saved.clear()
        return super().__exit__(*exc)


def _to_cpu(args, kwargs) -> bool:
    dev = kwargs.get("device", args[0] if args and isinstance(args[0], (str, torch.device)) else None)
    return dev is not None and torch.device(dev).type == "cpu"


def count_syncs(fn: Callable[[], object], path: str = "eager") -> List[Sync]:
    """The host synchronisations of one call of ``fn`` (kernels stubbed: see ``stub_kernels``).

    ``path``: "eager" is the path of a plain call (``Op.run`` calls the backend directly: the detector,
    itself a dispatch mode, is not counted as an observer); "dispatcher" the path through the custom
    op (what autograd, compile, modes and direct ``torch.ops.longattn.*`` calls take)."""
    from longattn.ops import op as op_module

    if path not in ("eager", "dispatcher"):
        raise ValueError(f"path must be 'eager' or 'dispatcher', got {path!r}")
    real = getattr(op_module, "_unobserved", None)  # (None: a version without the eager path)
    if path == "eager" and real is not None:
        op_module._unobserved = lambda args, device: True  # type: ignore[attr-defined]
    try:
        with stub_kernels():
            with SyncDetector() as det:
                fn()
    finally:
        if real is not None:
            op_module._unobserved = real  # type: ignore[attr-defined]
    return det.syncs


# ---------------------------------------------------------------------------------------------------------
# cases: V4 decode shapes
# ---------------------------------------------------------------------------------------------------------
H, D, WINDOW, PAGE = 128, 512, 128, 64


@dataclasses.dataclass
class Case:
    name: str
    op: str  # the custom op's name (get_op)
    call: Callable[[], object]  # the public op call, backend="triton"
    prepare: Callable[[], object]  # the op's validation, -> prepared inputs


def _sparse_case(name: str, comp_keys: int, pool: str, topk_length: bool) -> Case:
    from longattn.cache import quantize_kv_fp8
    from longattn.ops.sparse_attention import op as sa

    g = torch.Generator().manual_seed(0)
    T = 1
    q = torch.randn(T, H, D, generator=g).bfloat16()
    win = torch.randn(4 * WINDOW // PAGE, PAGE, D, generator=g).bfloat16()  # paged window pool
    n_comp = max(4 * comp_keys, 4096)
    comp = torch.randn(n_comp // PAGE, PAGE, D, generator=g).bfloat16()
    if pool == "fp8":
        comp = quantize_kv_fp8(comp)
    win_idx = torch.randint(0, 4 * WINDOW, (T, WINDOW), generator=g).int()
    comp_idx = torch.randint(0, n_comp, (T, comp_keys), generator=g).int()
    sink = torch.randn(H, generator=g)
    kw = dict(extra_kv=comp, extra_indices=comp_idx, attn_sink=sink, softmax_scale=D**-0.5)
    if topk_length:
        kw.update(topk_length=torch.full((T,), WINDOW, dtype=torch.int32),
                  extra_topk_length=torch.full((T,), comp_keys, dtype=torch.int32))  # fmt: skip
    return Case(
        name,
        "sparse_attention",
        lambda: longattn.sparse_attention(q, win, win_idx, **kw, backend="triton"),
        lambda: sa.prepare(
            q, win, win_idx, kw.get("topk_length"), comp, comp_idx, kw.get("extra_topk_length"), sink, D**-0.5
        ),  # fmt: skip
    )


def _indexer_case(name: str, entries: int, paged: bool) -> Case:
    from longattn.ops.indexer import op as ix

    g = torch.Generator().manual_seed(0)
    T, Hi, Di, topk = 1, 64, 128, 512
    q = torch.randn(T, Hi, Di, generator=g).bfloat16()
    w = torch.randn(T, Hi, generator=g)
    ve = torch.full((T,), entries, dtype=torch.int32)
    if paged:
        k = torch.randn(entries // PAGE, PAGE, Di, generator=g).bfloat16()
        kw = dict(block_table=torch.arange(entries // PAGE, dtype=torch.int32).view(1, -1),
                  seq_ids=torch.zeros(T, dtype=torch.int32), return_slots=True)  # fmt: skip
    else:
        k = torch.randn(entries, Di, generator=g).bfloat16()
        kw = {}
    return Case(
        name,
        "indexer_topk",
        lambda: longattn.indexer_topk(q, w, k, ve, topk, **kw, backend="triton"),
        lambda: ix.prepare(
            "indexer_topk", q, w, k, ve, kw.get("block_table"), kw.get("seq_ids"), topk, kw.get("return_slots", False)
        ),  # fmt: skip
    )


def _combine_cases() -> List[Case]:
    from longattn.ops.combine import op as cb

    g = torch.Generator().manual_seed(0)
    T = 1
    oa, ob = (torch.randn(T, H, D, generator=g).bfloat16() for _ in range(2))
    la, lb = (torch.randn(T, H, generator=g) for _ in range(2))
    sink = torch.randn(H, generator=g)
    return [
        Case("merge_attention_states T=1", "merge_attention_states",
             lambda: longattn.merge_attention_states(oa, la, ob, lb, backend="triton"),
             lambda: cb.prepare_merge(oa, la, ob, lb)),
        Case("apply_attention_sink T=1", "apply_attention_sink",
             lambda: longattn.apply_attention_sink(oa, la, sink, backend="triton"),
             lambda: cb.prepare_sink(oa, la, sink)),
    ]  # fmt: skip


def _append_case(name: str, pool: str) -> Case:
    from longattn.cache import Fp8KVPool
    from longattn.ops.append import op as ap

    g = torch.Generator().manual_seed(0)
    rows = torch.randn(1, D, generator=g).bfloat16()
    slots = torch.tensor([5], dtype=torch.int64)
    p = Fp8KVPool.empty(64, PAGE) if pool == "fp8" else torch.zeros(64, PAGE, D, dtype=torch.bfloat16)
    return Case(name, "append_kv", lambda: longattn.append_kv(p, rows, slots, backend="triton"),
                lambda: ap.prepare(p, rows, slots))  # fmt: skip


def _compress_case(name: str, ratio: int, overlap: bool, out: str) -> Case:
    from longattn.cache import Fp8KVPool
    from longattn.configs import RopeConfig
    from longattn.ops.compress import op as cp
    from longattn.rope import inv_freq

    g = torch.Generator().manual_seed(0)
    c = 2 if overlap else 1
    a = torch.randn(1, c * D, generator=g).bfloat16()
    b = torch.randn(1, c * D, generator=g).bfloat16()
    pos = torch.tensor([ratio * 10 - 1])
    rows = torch.zeros(1, dtype=torch.int32)
    state = torch.zeros(1, c * ratio, 2 * c * D)
    sbt = torch.zeros(1, 1, dtype=torch.int32)
    pool = Fp8KVPool.empty(4, PAGE) if out == "fp8" else torch.zeros(4, PAGE, D, dtype=torch.bfloat16)
    obt = torch.arange(4, dtype=torch.int32).view(1, 4)
    kw = dict(ratio=ratio, overlap=overlap, state=state, state_block_table=sbt, out=pool, out_block_table=obt,
              norm_weight=torch.ones(D), eps=1e-6, rope_inv_freq=inv_freq(RopeConfig(160000.0), 64, "cpu"))  # fmt: skip
    return Case(
        name,
        "compress_kv",
        lambda: longattn.compress_kv(a, b, pos, rows, **kw, backend="triton"),
        lambda: cp.prepare_compress_kv(a, b, pos, rows, *kw.values()),
    )


def cases() -> List[Case]:
    """Every public op at V4 decode shapes (T = 1), the Triton path."""
    from longattn.ops.compress import op as cp
    from longattn.ops.indexer import op as ix

    g = torch.Generator().manual_seed(0)
    pa, pb = torch.randn(512, D, generator=g).bfloat16(), torch.randn(512, D, generator=g).bfloat16()
    iq, iw = torch.randn(1, 64, 128, generator=g).bfloat16(), torch.randn(1, 64, generator=g)
    ik, ive = torch.randn(4096, 128, generator=g).bfloat16(), torch.full((1,), 4096, dtype=torch.int32)
    return [
        _sparse_case("sparse_attention CSA T=1 128+512 bf16 pools", 512, "bf16", True),
        _sparse_case("sparse_attention CSA T=1 128+512 FP8 pool", 512, "fp8", True),
        _sparse_case("sparse_attention HCA T=1 128+8192 bf16 pools", 8192, "bf16", False),
        _sparse_case("sparse_attention HCA T=1 128+8192 FP8 pool", 8192, "fp8", False),
        _indexer_case("indexer_topk T=1 top-512 of 262144 paged", 262144, True),
        _indexer_case("indexer_topk T=1 top-512 of 262144 flat", 262144, False),
        Case("indexer_logits T=1 4096 entries", "indexer_logits",
             lambda: longattn.indexer_logits(iq, iw, ik, ive, backend="triton"),
             lambda: ix.prepare("indexer_logits", iq, iw, ik, ive)),
        *_combine_cases(),
        _append_case("append_kv T=1 bf16 paged pool", "bf16"),
        _append_case("append_kv T=1 FP8 pool", "fp8"),
        _compress_case("compress_kv CSA T=1 FP8 out", 4, True, "fp8"),
        _compress_case("compress_kv HCA T=1 bf16 out", 128, False, "bf16"),
        Case("compress_pool HCA 512 tokens", "compress_pool",
             lambda: longattn.compress_pool(pa, pb, 128, False, backend="triton"),
             lambda: cp.prepare_pool(pa, pb, 128, False)),
    ]  # fmt: skip


# ---------------------------------------------------------------------------------------------------------
# timing
# ---------------------------------------------------------------------------------------------------------
def time_us(fn: Callable[[], object], number: int, repeats: int) -> Tuple[float, float]:
    """(median, min) over ``repeats`` of the mean time of ``number`` calls, in microseconds."""
    for _ in range(max(3, number // 10)):
        fn()
    runs = []
    gc.collect()
    gc.disable()
    try:
        for _ in range(repeats):
            t0 = time.perf_counter()
            for _ in range(number):
                fn()
            runs.append((time.perf_counter() - t0) / number * 1e6)
    finally:
        gc.enable()
    return statistics.median(runs), min(runs)


def measure(case: Case, number: int, repeats: int) -> Dict[str, object]:
    from longattn.backends import registry
    from longattn.ops.op import get_op

    op = get_op(case.op)
    inputs = case.prepare()
    launcher = op.impls["triton"].function()
    with stub_kernels() as launches:
        case.call()
        n_launch = len(launches)
        kinds = sorted({k for k, _ in launches})
        t_op = time_us(case.call, number, repeats)
        t_launch = time_us(lambda: launcher(inputs), number, repeats)
        t_prep = time_us(case.prepare, number, repeats)
        t_sel = time_us(lambda: registry.select(op.name, op.impls, inputs.device, inputs, "triton"), number, repeats)
    syncs = count_syncs(case.call) + count_syncs(case.call, "dispatcher")
    return {
        "case": case.name,
        "op": case.op,
        "op_us": round(t_op[1], 2),
        "launcher_us": round(t_launch[1], 2),
        "overhead_us": round(t_op[1] - t_launch[1], 2),
        "prepare_us": round(t_prep[1], 2),
        "select_us": round(t_sel[1], 2),
        "median_us": {
            "op": round(t_op[0], 2),
            "launcher": round(t_launch[0], 2),
            "prepare": round(t_prep[0], 2),
            "select": round(t_sel[0], 2),
        },  # fmt: skip
        "launches": n_launch,
        "launched": kinds,
        "syncs": len(syncs),  # both paths: a plain call and the custom op's
        "sync_sites": [str(s) for s in syncs],
    }


def main(argv=None) -> Dict[str, object]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=60)
    ap.add_argument("--number", type=int, default=50)
    ap.add_argument("--only", nargs="*", default=None, help="substrings of case names")
    ap.add_argument("--json", default=None, help="write results here (default: print only)")
    ap.add_argument("--baseline", default=None, help="an earlier JSON of this script: shown as 'before'")
    args = ap.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET") != "1":
        raise SystemExit("run with TRITON_INTERPRET=1 (CPU tensors on the Triton path), set before triton is imported")
    from .results import machine_info

    torch.set_num_threads(1)
    before = {}
    if args.baseline:
        with open(args.baseline) as f:
            base = json.load(f)
        before = {r["case"]: r for r in base["results"]}
    rows = []
    print("CPU host-side cost of the Triton op path, kernels stubbed (us per call, min over repeats; not GPU timings)")
    head = f"{'case':46s} {'op':>8s} {'launcher':>9s} {'overhead':>9s} {'prepare':>8s} {'select':>7s} {'syncs':>5s}"
    print(head + ("   before: op / overhead / syncs" if before else ""))
    for case in cases():
        if args.only and not any(s in case.name for s in args.only):
            continue
        r = measure(case, args.number, args.repeats)
        rows.append(r)
        line = (f"{r['case']:46s} {r['op_us']:8.1f} {r['launcher_us']:9.1f} {r['overhead_us']:9.1f} "
                f"{r['prepare_us']:8.1f} {r['select_us']:7.1f} {r['syncs']:5d}")  # fmt: skip
        b = before.get(r["case"])
        if b:
            line += f"   {b['op_us']:8.1f} / {b['overhead_us']:6.1f} / {b['syncs']}"
        print(line, flush=True)
        for s in r["sync_sites"]:
            print(f"      sync: {s}")
    doc: Dict[str, object] = {
        "what": "CPU host-side microseconds of one op call on the Triton path with every kernel launch stubbed "
        "(TRITON_INTERPRET=1, CPU tensors, one torch thread; minimum over repeats of the mean of `number` calls, "
        "medians in median_us); op = public call, launcher = the Triton module's "
        "run(inputs) alone, overhead = op - launcher. Host syncs counted by bench.host_overhead.SyncDetector. "
        "Not GPU timings.",
        "date": datetime.date.today().isoformat(),
        "command": "python -m bench.host_overhead " + " ".join(argv if argv is not None else sys.argv[1:]),
        "number": args.number,
        "repeats": args.repeats,
        "machine": machine_info(torch.device("cpu")),
        "results": rows,
    }
    if before:
        doc["before"] = {"git": base.get("machine", {}).get("git"), "results": base["results"]}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(doc, f, indent=1)
            f.write("\n")
        print(f"wrote {args.json}")
    return doc


if __name__ == "__main__":
    main()
