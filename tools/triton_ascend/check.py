"""Does longattn's Triton code lower for Ascend, and does it run under triton-ascend's interpreter?

Run it in a virtual environment whose ``triton`` is triton-ascend 3.2.0 (``run_check.sh`` builds one;
triton-ascend replaces the ``triton`` package, so it never goes into the repo's main venv).

Two phases, each in its own subprocess (``TRITON_INTERPRET`` must be decided before triton is
imported, and the kernels read it at import time too):

* ``lower`` (TRITON_INTERPRET unset): every ``@triton.jit`` function in
  ``python/longattn/ops/*/triton_*.py`` is enumerated. The launchers are called on small V4-like decode
  problems (CPU tensors; the ``run`` of each kernel is replaced by a recorder, so nothing executes) to
  get the exact arguments, constexprs and options they launch with, in two launch-configuration sets:
  ``npu`` (the launchers' own choice for a non-CUDA device, i.e. what an NPU tensor gets today) and
  ``sm90`` (the tuned CUDA configs from ``default_config(..., cuda)``, 132 SMs). Each distinct launch
  goes through the JIT's own binder (signature, ``tt.divisibility`` / ``equal_to`` attributes,
  constants, as ``JITFunction.run`` does) and then ``triton.compile(ASTSource(...),
  target=GPUTarget("npu", "Ascend910B3", 0))``. The outcome is classified by the stage that failed:
  frontend (Python AST -> TTIR), ttir (TTIR passes), ttadapter (``triton-adapter-opt``: TTIR ->
  linalg/HIVM), or npubin (``bishengir-compile``, which needs CANN: "ASCEND_HOME_PATH is not set" is
  the expected stop, meaning "lowers to ttadapter"). ``@triton.jit`` helpers (device functions) are
  reported through the kernels that inline them.
* ``interp`` (TRITON_INTERPRET=1): each op runs through ``longattn.<op>(..., backend="triton")``
  on small random CPU inputs and is compared with ``backend="reference"``.

Usage: python check.py --out DIR   (writes DIR/report.json and DIR/report.md)
       python check.py --phase lower|interp --json FILE   (one phase; used by the above)
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import glob
import importlib
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
OPS_DIR = os.path.join(ROOT, "python", "longattn", "ops")
TARGET_ARCH = "Ascend910B3"
# Ascend 910B3 (Atlas A2): 20 AI cores (cube + 2 vector each) = 40 vector cores; UB 192 KB per core.
AI_CORES, VECTOR_CORES = 20, 40
MAX_GRID = 65535

LOWERS = "lowers to ttadapter (stops at missing CANN)"
FAIL_FRONT = "fails in frontend/ttir"
FAIL_ADAPTER = "fails in ttadapter conversion"
FAIL_NPUBIN = "fails in npubin (other than missing CANN)"
COMPILED = "compiled to npubin"


# ---------------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------------
def _versions() -> dict:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for d in ("torch", "numpy", "pybind11", "triton-ascend", "triton"):
        try:
            out[d] = md.version(d)
        except md.PackageNotFoundError:
            out[d] = None
    try:
        import triton

        out["triton_module"] = f"{triton.__version__} at {os.path.dirname(triton.__file__)}"
    except Exception as exc:  # noqa: BLE001 - reported
        out["triton_module"] = f"import failed: {type(exc).__name__}: {exc}"
    return out


def kernel_modules() -> list:
    """Module names of python/longattn/ops/*/triton_*.py."""
    mods = []
    for path in sorted(glob.glob(os.path.join(OPS_DIR, "*", "triton_*.py"))):
        op = os.path.basename(os.path.dirname(path))
        mods.append(f"longattn.ops.{op}.{os.path.splitext(os.path.basename(path))[0]}")
    return mods


def jit_functions() -> dict:
    """{module: {name: JITFunction}} of every @triton.jit function defined in the kernel modules."""
    from triton.runtime.jit import JITFunction

    found = {}
    for mod_name in kernel_modules():
        mod = importlib.import_module(mod_name)
        found[mod_name] = {
            n: v for n, v in vars(mod).items() if isinstance(v, JITFunction) and v.fn.__module__ == mod_name
        }
    return found


def _direct_callees(fn) -> list:
    """JITFunctions that ``fn`` calls (names in its source resolved in its module's globals)."""
    from triton.runtime.jit import JITFunction

    out = []
    for name in set(re.findall(r"\b([A-Za-z_]\w*)\s*\(", fn.src)):
        obj = fn.fn.__globals__.get(name)
        if isinstance(obj, JITFunction) and obj is not fn:
            out.append(obj)
    return out


def _callees(fn) -> list:
    """Transitive JITFunction callees of ``fn``."""
    seen, todo = {}, [fn]
    while todo:
        for c in _direct_callees(todo.pop()):
            if id(c) not in seen:
                seen[id(c)] = c
                todo.append(c)
    return list(seen.values())


def _first_error_line(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and "encounters error" not in ln]
    for pat in (
        r"timed out",
        r"Assertion|Segmentation fault|Aborted",
        r"error:",
        r"Error",
        r"not supported|unsupported|Unsupported",
        r"failed|Failed",
    ):
        for ln in lines:
            if re.search(pat, ln) and not ln.startswith("///") and "[INFO]" not in ln:
                return ln[:400]
    return lines[0][:400] if lines else ""


def bisect_adapter_passes(cmd: list, ttir: str, timeout: int) -> dict:
    """Re-run triton-adapter-opt one pass at a time (each on the previous pass's output) to name the
    pass that crashes, errors or hangs. ``cmd`` is the failed command: [tool, src, pass..., -o, dst]."""
    tool = cmd[0]
    try:
        passes = cmd[2 : cmd.index("-o")]
    except ValueError:
        return {}
    passes = [p for p in passes if p != "--mlir-print-debuginfo"]
    with tempfile.TemporaryDirectory() as tmp:
        cur = os.path.join(tmp, "in.mlir")
        with open(cur, "w") as f:
            f.write(ttir if isinstance(ttir, str) else ttir.decode())
        for i, ps in enumerate(passes):
            nxt = os.path.join(tmp, f"p{i}.mlir")
            t0 = time.time()
            try:
                r = subprocess.run([tool, cur, ps, "-o", nxt], capture_output=True, text=True, timeout=timeout)
            except subprocess.TimeoutExpired:
                return {"pass": ps, "outcome": f"timed out after {timeout} s", "passes_ok": passes[:i]}
            if r.returncode != 0:
                return {
                    "pass": ps,
                    "outcome": f"exit {r.returncode}",
                    "error": _first_error_line(r.stderr),
                    "passes_ok": passes[:i],
                    "seconds": round(time.time() - t0, 1),
                }
            cur = nxt
    return {"pass": None, "outcome": "every pass succeeded alone (the failure needs the combined pipeline)"}


def frontend_error(exc) -> tuple:
    """(one line, excerpt lines) for a CompilationError chain: the innermost @triton.jit function, its
    source line and the underlying cause."""
    frames, cause, e, seen = [], None, exc, set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if type(e).__name__ == "CompilationError" or hasattr(e, "node") and hasattr(e, "src"):
            src, node = getattr(e, "src", None) or "", getattr(e, "node", None)
            m = re.search(r"def\s+(\w+)", src)
            line = ""
            if node is not None and hasattr(node, "lineno") and src:
                lines = src.split("\n")
                if 0 < node.lineno <= len(lines):
                    line = lines[node.lineno - 1].strip()
            frames.append(
                (m.group(1) if m else "?", getattr(node, "lineno", "?"), line, getattr(e, "error_message", None))
            )
        else:
            cause = e
            break
        e = e.__cause__ or e.__context__
    msg = ""
    if cause is not None:
        msg = f"{type(cause).__name__}: {str(cause).strip().splitlines()[-1] if str(cause).strip() else ''}"
    elif frames and frames[-1][3]:
        msg = frames[-1][3].strip().splitlines()[-1]
    where = f"{frames[-1][0]} l.{frames[-1][1]}: `{frames[-1][2]}`" if frames else ""
    excerpt = [f"{'  ' * i}in {f} l.{ln}: {code}" for i, (f, ln, code, _) in enumerate(frames)]
    if cause is not None:
        excerpt += [f"{type(cause).__name__}: {ln}" for ln in str(cause).strip().splitlines()[-6:]]
    elif frames and frames[-1][3]:
        excerpt += frames[-1][3].strip().splitlines()[-6:]
    return (f"{msg} (in {where})" if where else msg), excerpt


def _error_excerpt(text: str, limit: int = 25) -> list:
    keep = []
    for ln in text.splitlines():
        s = ln.rstrip()
        if not s or s.startswith("///") or "[INFO]: The compiled kernel cache" in s or re.match(r"\s*#\d+ 0x", s):
            continue
        keep.append(s[:300])
        if len(keep) >= limit:
            break
    return keep


# ---------------------------------------------------------------------------------------------------
# phase "lower"
# ---------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def recording(kernels: dict, calls: list):
    """Replace ``run`` of each JITFunction by a recorder of (name, args, kwargs, grid)."""
    saved = {}
    for name, k in kernels.items():
        saved[name] = k.__dict__.get("run")

        def rec(*args, grid, warmup, _name=name, **kwargs):
            calls.append((_name, args, kwargs, tuple(grid) if not callable(grid) else grid))

        k.run = rec
    try:
        yield
    finally:
        for name, k in kernels.items():
            if saved[name] is None:
                del k.run
            else:
                k.run = saved[name]


@contextlib.contextmanager
def patched(mod, **attrs):
    old = {a: getattr(mod, a) for a in attrs}
    for a, v in attrs.items():
        setattr(mod, a, v)
    try:
        yield
    finally:
        for a, v in old.items():
            setattr(mod, a, v)


def v4_problems(config_set: str):
    """Yield (scenario, callable) pairs that launch the kernels on V4-Flash-like decode problems
    (H=64 heads, D=512, window 128 + 512 compressed top-k keys; indexer 64 x 128, top-512)."""
    import torch
    from longattn.cache import Fp8KVPool
    from longattn.ops.combine import triton_combine as tc
    from longattn.ops.indexer import triton_indexer as ti
    from longattn.ops.sparse_attention import triton_sparse_attention as tsa

    g = torch.Generator().manual_seed(0)
    bf16, i32 = torch.bfloat16, torch.int32
    H, D, WIN, TOPK, SLOTS = 64, 512, 128, 512, 4096
    HI, DI, PAGE = 64, 128, 64
    cuda = torch.device("cuda")
    sm90 = config_set == "sm90"

    def lazy(build, *a, **k):  # build the inputs when the scenario runs: a failing build is recorded
        return lambda: build(*a, **k)()

    def sparse(T, fp8=False):
        q = torch.randn(T, H, D, generator=g).to(bf16)
        if fp8:
            kv, ekv = Fp8KVPool.empty(SLOTS // PAGE, PAGE), Fp8KVPool.empty(SLOTS // PAGE, PAGE)
        else:
            kv, ekv = torch.randn(SLOTS, D, generator=g).to(bf16), torch.randn(SLOTS, D, generator=g).to(bf16)
        idx = torch.randint(0, SLOTS, (T, WIN), generator=g, dtype=i32)
        eidx = torch.randint(0, SLOTS, (T, TOPK), generator=g, dtype=i32)
        ln = torch.full((T,), WIN, dtype=i32)
        eln = torch.full((T,), TOPK, dtype=i32)
        sink = torch.randn(H, generator=g)
        kw = {}
        if sm90:
            cfg = tsa.default_config(H, D, bf16, cuda, fp8)
            head_blocks = -(-H // cfg["BLOCK_H"])
            with patched(tsa, _num_sms=lambda d: 132):
                splits = tsa.choose_num_splits(T * head_blocks, WIN + TOPK, cfg["BLOCK_N"], cuda,
                                               block_h=cfg["BLOCK_H"], head_dim=D)  # fmt: skip
                kw = dict(config=cfg, num_splits=splits)
        return lambda: tsa.sparse_attention(q, kv, idx, ln, ekv, eidx, eln, sink, D**-0.5, **kw)

    yield "sparse_attention decode T=1 (bf16 pools, window 128 + compressed top-512, sink)", lazy(sparse, 1)
    yield "sparse_attention decode T=128 (bf16 pools, batched decode)", lazy(sparse, 128)
    yield "sparse_attention decode T=1 (FP8 MODEL1 pools, both streams)", lazy(sparse, 1, fp8=True)

    o_a, o_b = torch.randn(4, H, D, generator=g).to(bf16), torch.randn(4, H, D, generator=g).to(bf16)
    l_a, l_b = torch.randn(4, H, generator=g), torch.randn(4, H, generator=g)
    yield "merge_attention_states T=4 bf16", lambda: tc.merge_attention_states(o_a, l_a, o_b, l_b)
    yield "apply_attention_sink T=4 bf16", lambda: tc.apply_attention_sink(o_a, l_a, torch.randn(H, generator=g))

    def indexer(T, n_entries, fn, **extra):
        pages_per_seq = n_entries // PAGE
        q = torch.randn(T, HI, DI, generator=g).to(bf16)
        w = torch.randn(T, HI, generator=g)
        k = torch.randn(T * pages_per_seq, PAGE, DI, generator=g).to(bf16)
        bt = torch.arange(T * pages_per_seq, dtype=i32).view(T, pages_per_seq)
        seq = torch.arange(T, dtype=i32)
        vis = torch.full((T,), n_entries, dtype=i32)
        kw = dict(block_table=bt, seq_ids=seq)
        if sm90:
            kw["config"] = ti.default_config(HI, DI, cuda)
        if fn == "topk":

            def run():
                ctx = patched(ti, _num_sms=lambda d: 132) if sm90 else contextlib.nullcontext()
                with ctx:
                    return ti.indexer_topk(q, w, k, vis, TOPK, return_slots=True, **kw, **extra)

            return run
        return lambda: ti.indexer_logits(q, w, k, vis, **kw)

    # KV-cache writers (ops/append, ops/compress): V4 decode, one new token for each of 4 sequences
    def append(fp8):
        ta = importlib.import_module("longattn.ops.append.triton_append")
        rows = torch.randn(4, D, generator=g).to(bf16)
        slots = torch.tensor([5, 700, 1400, 4000], dtype=torch.int64)
        pool = Fp8KVPool.empty(SLOTS // PAGE, PAGE) if fp8 else torch.zeros(SLOTS // PAGE, PAGE, D, dtype=bf16)
        return lambda: ta.append_kv(pool, rows, slots)

    yield "append_kv T=4 rows bf16 -> paged bf16 pool", lazy(append, False)
    yield "append_kv T=4 rows bf16 -> FP8 MODEL1 pool", lazy(append, True)

    def compress(ratio, overlap, fp8):
        tcmp = importlib.import_module("longattn.ops.compress.triton_compress")
        from longattn.configs import RopeConfig
        from longattn.rope import inv_freq

        B, c = 4, (2 if overlap else 1)
        ring = c * ratio
        s_ps = min(PAGE, ring)
        ring_pages = -(-ring // s_ps)
        a = torch.randn(B, c * D, generator=g).to(bf16)
        b = torch.randn(B, c * D, generator=g).to(bf16)
        pos = torch.full((B,), 4 * ratio - 1, dtype=torch.int64)  # every token emits an entry
        rows = torch.arange(B, dtype=i32)
        state = torch.zeros(B * ring_pages, s_ps, 2 * c * D)
        sbt = torch.arange(B * ring_pages, dtype=i32).view(B, ring_pages)
        out = Fp8KVPool.empty(B * 4, PAGE) if fp8 else torch.zeros(B * 4, PAGE, D, dtype=bf16)
        obt = torch.arange(B * 4, dtype=i32).view(B, 4)
        w = torch.ones(D)
        freqs = inv_freq(RopeConfig(160000.0), 64)
        kw = dict(config=tcmp.default_config(D, ratio, c, cuda)) if sm90 else {}
        return lambda: tcmp.compress_kv(a, b, pos, rows, ratio, overlap, state, sbt, out, obt, w, 1e-6, freqs, **kw)

    yield "compress_kv CSA (ratio 4, overlap) T=4, d=512 -> bf16 pool", lazy(compress, 4, True, False)
    yield "compress_kv CSA (ratio 4, overlap) T=4, d=512 -> FP8 pool", lazy(compress, 4, True, True)
    yield "compress_kv HCA (ratio 128) T=4, d=512 -> bf16 pool", lazy(compress, 128, False, False)

    yield "indexer_logits T=4, 1024 paged entries, 64x128 bf16", lazy(indexer, 4, 1024, "logits")
    yield (
        "indexer_topk T=4, 4096 paged entries, top-512 (launcher default merge: bitonic tl.topk)",
        lazy(indexer, 4, 4096, "topk"),
    )
    yield (
        "indexer_topk T=4, 4096 paged entries, top-512 (bitonic=False: rank merge, the interpreter's)",
        lazy(indexer, 4, 4096, "topk", bitonic=False),
    )


def _bind(kernel, backend, args, kwargs):
    """(signature, constants, attrs, options) exactly as JITFunction.run builds them (triton 3.2)."""
    kernel.create_binder(backend)
    bound_args, sig_and_spec, _cx, _ncx, excess = kernel.binder(*args, **kwargs)
    sigkeys = [kernel.params[i].name for i in kernel.non_constexpr_indices]
    sigvals = sig_and_spec[: len(sigkeys)]
    signature = {k: ("*i8" if v == "none" else v) for k, v in zip(sigkeys, sigvals)}
    bound_vals = tuple(bound_args.values())
    attrs = backend.get_attrs_descriptor(kernel.params, bound_vals)
    const_params = attrs.get_constants()
    constants = {
        p.name: v for (v, p) in zip(bound_vals, kernel.params) if p.is_constexpr or (p.num in const_params) or v is None
    }
    options = backend.parse_options(kwargs)
    return signature, constants, attrs, options


def _printable(v):
    if isinstance(v, (bool, int, float, str)) or v is None:
        return v
    return str(v)


def compile_for_ascend(
    kernel, signature, constants, attrs, options, ir_dir=None, tag="", adapter_timeout=120, bisect=True
):
    """triton.compile for Ascend910B3; returns a result record (status, stage, error, IR stats)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    stages_seen, irs, failed_pass = [], {}, {}
    # triton.compile's backend class comes from triton's backend registry (module "ascend"), not from
    # the triton.backends.ascend.compiler import: patch that class.
    from triton.compiler import make_backend

    backend_cls = type(make_backend(GPUTarget("npu", TARGET_ARCH, 0)))
    orig_add_stages = backend_cls.add_stages

    def add_stages(self, stages, opts):
        orig_add_stages(self, stages, opts)
        for ext, fn in list(stages.items()):

            def wrapped(src, metadata, _ext=ext, _fn=fn):
                stages_seen.append(_ext)
                run = subprocess.run
                # triton-adapter-opt has no time limit of its own (the bitonic top-k runs for many minutes)
                subprocess.run = lambda *a, **k: run(*a, **dict(k, timeout=k.get("timeout") or adapter_timeout))
                try:
                    out = _fn(src, metadata)
                except (subprocess.TimeoutExpired, subprocess.CalledProcessError) as exc:
                    if bisect and _ext == "ttadapter" and isinstance(exc.cmd, list) and "ttir" in irs:
                        subprocess.run = run
                        failed_pass.update(bisect_adapter_passes(exc.cmd, irs["ttir"], adapter_timeout))
                    if isinstance(exc, subprocess.TimeoutExpired):
                        raise RuntimeError(
                            f"timed out: {os.path.basename(str(exc.cmd[0]))} ran more than {adapter_timeout} s (killed)"
                        ) from None
                    raise
                finally:
                    subprocess.run = run
                irs[_ext] = out if isinstance(out, (str, bytes)) else str(out)
                return out

            stages[ext] = wrapped

    rec = {"stage_reached": None}
    t0 = time.time()
    backend_cls.add_stages = add_stages
    try:
        triton.compile(
            ASTSource(kernel, signature, constants, attrs),
            target=GPUTarget("npu", TARGET_ARCH, 0),
            options=options.__dict__,
        )
        rec.update(status=COMPILED)
    except Exception as exc:  # noqa: BLE001 - classified below
        text = str(exc)
        failing = stages_seen[-1] if stages_seen else "frontend"
        rec["exception"] = type(exc).__name__
        if failing == "npubin" and "ASCEND_HOME_PATH is not set" in text:
            rec.update(status=LOWERS, error="ASCEND_HOME_PATH is not set (bishengir-compile needs CANN)")
        else:
            if failing in ("frontend", "ttir"):
                status = FAIL_FRONT
            elif failing == "ttadapter":
                status = FAIL_ADAPTER
            else:
                status = FAIL_NPUBIN
            if failing == "frontend":
                line, excerpt = frontend_error(exc)
            else:
                line, excerpt = _first_error_line(text), _error_excerpt(text)
            rec.update(status=status, failed_stage=failing, error=line, error_excerpt=excerpt)
    finally:
        backend_cls.add_stages = orig_add_stages
    rec["seconds"] = round(time.time() - t0, 2)
    if failed_pass:
        rec["adapter_pass_bisect"] = failed_pass
    rec["stages_completed"] = [s for s in stages_seen if s in irs]
    for ext in ("ttir", "ttadapter"):
        if ext in irs:
            text = irs[ext] if isinstance(irs[ext], str) else irs[ext].decode("utf-8", "replace")
            rec[f"{ext}_lines"] = text.count("\n")
            if ext == "ttadapter":
                rec["ttadapter_stats"] = ttadapter_stats(text)
            if ir_dir:
                os.makedirs(ir_dir, exist_ok=True)
                with open(os.path.join(ir_dir, f"{tag}.{ext}.mlir"), "w") as f:
                    f.write(text)
    return rec


def ttadapter_stats(text: str) -> dict:
    """A few counts of the linalg/HIVM module: leftover tt.* ops (would block bishengir), loops, and
    scalar memory accesses (what unstructured gathers become)."""
    ops = re.findall(r"=\s*\"?([a-z_]+\.[a-z_.]+)", text) + re.findall(r"^\s*\"?([a-z_]+\.[a-z_.]+)", text, re.M)
    count = {}
    for op in ops:
        count[op] = count.get(op, 0) + 1
    tt_left = sorted({op for op in count if op.startswith("tt.")})
    return {
        "leftover_tt_ops": tt_left,
        "scf.for": count.get("scf.for", 0),
        "memref.load (scalar)": count.get("memref.load", 0),
        "memref.store (scalar)": count.get("memref.store", 0),
        "memref.copy": count.get("memref.copy", 0),
        "linalg ops": sum(v for k, v in count.items() if k.startswith("linalg.")),
        "hivm ops": sum(v for k, v in count.items() if k.startswith("hivm.")),
    }


# ---------------------------------------------------------------------------------------------------
# what-if: the smallest changes that make a failing launch lower (the kernels in the repo are not
# touched: a patched copy of the module is compiled from a temporary file)
# ---------------------------------------------------------------------------------------------------
E4M3_HELPER = """

@triton.jit
def _ta_e4m3_to_f32(b):
    # e4m3fn byte -> fp32 with integer ops only (Ascend 910B has no fp8 type; NaN 0x7F/0xFF ignored)
    b_i = b.to(tl.int32) & 0xFF
    b_e = (b_i >> 3) & 15
    b_m = b_i & 7
    b_norm = (((b_e + 120) << 23) | (b_m << 20)).to(tl.float32, bitcast=True)
    b_mag = tl.where(b_e > 0, b_norm, b_m.to(tl.float32) * 0.001953125)
    return tl.where((b_i & 0x80) != 0, -b_mag, b_mag)
"""

# (id, why, module, [(old, new)], helper source appended to the module)
SOURCE_FIXES = [
    (
        "fp8_int_decode",
        "decode e4m3 bytes with integer ops instead of a bitcast to tl.float8e4nv",
        "longattn.ops.sparse_attention.triton_sparse_attention",
        [("b_raw.to(tl.float8e4nv, bitcast=True).to(tl.float32)", "_ta_e4m3_to_f32(b_raw)")],
        E4M3_HELPER,
    ),
    (
        "div_rn_on_1elem_tensor",
        "tl.div_rn of two 0-d scalars -> on a [1] tensor (same values; a splat of the "
        "scalar would be folded back to a scalar by TTIR's reorder-broadcast pass)",
        "longattn.ops.compress.triton_compress",
        [
            (
                "tl.div_rn(tl.sum(b_x * b_x, axis=0), D * 1.0)",
                "tl.div_rn(tl.sum(tl.reshape(b_x * b_x, [1, BLOCK_D]), axis=1), D * 1.0)",
            )
        ],
        "",
    ),
    (
        "sort_merge",
        "top-K merge with triton-ascend's tl.sort + tl.extract_slice instead of tl.topk's bitonic network",
        "longattn.ops.indexer.triton_indexer",
        [
            ("b_add = tl.topk(b_new, K)", "b_add = tl.extract_slice(tl.sort(b_new, 0, True), [0], [K], [1])"),
            ("return tl.topk(b_both, K)", "return tl.extract_slice(tl.sort(b_both, 0, True), [0], [K], [1])"),
        ],
        "",
    ),
]
# (id, why, predicate on the constexprs, override)
CONSTEXPR_FIXES = [
    (
        "dot_prec_ieee",
        "pass DOT_PREC='ieee' instead of None (input_precision=None reaches "
        "NPUOptions.default_dot_input_precision, which triton-ascend lacks)",
        lambda c: "DOT_PREC" in c and c["DOT_PREC"] is None,
        {"DOT_PREC": "ieee"},
    ),
]
_PATCHED = {}


def _patched_module(mod_name: str, fixes: list):
    """Import a copy of ``mod_name`` with the source fixes applied (cached)."""
    import importlib.util

    key = (mod_name, tuple(f[0] for f in fixes))
    if key in _PATCHED:
        return _PATCHED[key]
    with open(importlib.import_module(mod_name).__file__) as f:
        src = f.read()
    for _id, _why, _mod, subs, helper in fixes:
        for old, new in subs:
            src = src.replace(old, new)
        src += helper
    parent, short = mod_name.rsplit(".", 1)
    path = os.path.join(tempfile.mkdtemp(prefix="ta_whatif_"), f"{short}.py")
    with open(path, "w") as f:
        f.write(src)
    spec = importlib.util.spec_from_file_location(f"{parent}._ta_whatif_{short}", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    _PATCHED[key] = mod
    return mod


def what_if(qual: str, fn, sig, consts, attrs, opts, ir_dir, tag, adapter_timeout):
    """Compile ``fn`` again with the fixes that apply to it (constexpr fixes whose predicate holds,
    source fixes whose text is in the kernel or a helper it calls); if that lowers, drop the fixes it
    does not need (one quick compile each). None when no fix applies."""
    mod_name = fn.fn.__module__
    srcs = "\n".join([fn.src] + [c.src for c in _callees(fn)])
    sfix = [f for f in SOURCE_FIXES if f[2] == mod_name and any(old in srcs for old, _ in f[3])]
    cfix = [f for f in CONSTEXPR_FIXES if f[2](consts)]
    if not sfix and not cfix:
        return None

    def attempt(cf, sf, timeout, bisect, suffix):
        consts2 = dict(consts)
        for f in cf:
            consts2.update(f[3])
        kernel = getattr(_patched_module(mod_name, sf), fn.fn.__name__) if sf else fn
        return compile_for_ascend(kernel, sig, consts2, attrs, opts, ir_dir, tag + suffix, timeout, bisect)

    try:
        r = attempt(cfix, sfix, adapter_timeout, True, "_whatif")
        if r["status"] == LOWERS and len(cfix) + len(sfix) > 1:
            for f in list(cfix) + list(sfix):  # minimise: a fix whose removal still lowers is not needed
                c2 = [x for x in cfix if x is not f]
                s2 = [x for x in sfix if x is not f]
                if attempt(c2, s2, min(adapter_timeout, 30), False, "_whatif_min")["status"] == LOWERS:
                    cfix, sfix = c2, s2
    except Exception as exc:  # noqa: BLE001
        return {
            "fixes": [f[0] for f in cfix + sfix],
            "status": "what-if failed to run",
            "error": f"{type(exc).__name__}: {exc}",
        }
    out = {"fixes": [f[0] for f in cfix + sfix]}
    out.update(
        {
            k: r.get(k)
            for k in (
                "status",
                "failed_stage",
                "error",
                "error_excerpt",
                "seconds",
                "ttadapter_lines",
                "ttadapter_stats",
                "adapter_pass_bisect",
            )
            if r.get(k) is not None
        }
    )
    return out


# ---------------------------------------------------------------------------------------------------
# construct probes: one-construct kernels that pin down what triton-ascend accepts (evidence for the
# failures above and for the what-if fixes)
# ---------------------------------------------------------------------------------------------------
def construct_probes(adapter_timeout_loop: int = 30) -> list:
    global tl  # the probe kernels resolve `tl` in this module's globals
    import triton
    import triton.language as tl

    @triton.jit
    def dot_prec_none(p, q, PREC: tl.constexpr):
        o = tl.arange(0, 16)
        a = tl.load(p + o[:, None] * 16 + o[None, :])
        tl.store(q + o[:, None] * 16 + o[None, :], tl.dot(a, tl.trans(a), input_precision=PREC))

    @triton.jit
    def fp8_bitcast(p, q):
        o = tl.arange(0, 64)
        tl.store(q + o, tl.load(p + o).to(tl.float8e4nv, bitcast=True).to(tl.float32))

    @triton.jit
    def div_rn_scalars(p, q):
        o = tl.arange(0, 64)
        x = tl.load(p + o)
        tl.store(q + o, x * tl.div_rn(tl.sum(x, axis=0), 64.0))

    @triton.jit
    def div_rn_1elem(p, q):
        o = tl.arange(0, 64)
        x = tl.load(p + o)
        tl.store(q + o, x * tl.div_rn(tl.sum(tl.reshape(x, [1, 64]), axis=1), 64.0))

    @triton.jit
    def topk_once(p, q, N: tl.constexpr, K: tl.constexpr):
        tl.store(q + tl.arange(0, K), tl.topk(tl.load(p + tl.arange(0, N)), K))

    @triton.jit
    def topk_in_loop(p, q, n, K: tl.constexpr):
        o = tl.arange(0, K)
        run = tl.full([K], -(2**63), tl.int64)
        for i in range(0, n):
            run = tl.topk(tl.reshape(tl.join(run, tl.load(p + i * K + o)), [2 * K]), K)
        tl.store(q + o, run)

    @triton.jit
    def sort_slice_in_loop(p, q, n, K: tl.constexpr):
        o = tl.arange(0, K)
        run = tl.full([K], -(2**63), tl.int64)
        for i in range(0, n):
            both = tl.reshape(tl.join(run, tl.load(p + i * K + o)), [2 * K])
            run = tl.extract_slice(tl.sort(both, 0, True), [0], [K], [1])
        tl.store(q + o, run)

    @triton.jit
    def gather_rows_dot(p_idx, p_kv, p_q, p_o, BLOCK_N: tl.constexpr, D: tl.constexpr):
        o_n = tl.arange(0, BLOCK_N)
        o_d = tl.arange(0, D)
        idx = tl.load(p_idx + o_n).to(tl.int64)
        k = tl.load(p_kv + idx[:, None] * D + o_d[None, :], mask=(idx >= 0)[:, None], other=0.0)
        qv = tl.load(p_q + o_n[:, None] * D + o_d[None, :])
        tl.store(p_o + o_n[:, None] * BLOCK_N + o_n[None, :], tl.dot(qv, tl.trans(k), input_precision="ieee"))

    @triton.jit
    def misc_control(p, q, T):
        lo = tl.program_id(0).to(tl.int64)
        hi = lo * 0 + T
        while hi - lo > 1:  # scf.while with a data-dependent trip count
            lo = lo + tl.load(p + lo).to(tl.int64)
        o = tl.arange(0, 64)
        x = tl.load(p + o).to(tl.float32)
        tl.debug_barrier()
        a, b = tl.split(tl.reshape(x, [32, 2]))
        y = tl.reshape(tl.join(tl.cos(a), tl.sin(b)), [64])
        if lo > 0:
            tl.store(q + o, y)

    P = "*fp32"
    probes = [
        ("tl.dot bf16, input_precision=None (a constexpr)", dot_prec_none, {"p": "*bf16", "q": P}, {"PREC": None}),
        ("tl.dot bf16, input_precision='ieee'", dot_prec_none, {"p": "*bf16", "q": P}, {"PREC": "ieee"}),
        ("uint8 -> tl.float8e4nv bitcast -> fp32", fp8_bitcast, {"p": "*u8", "q": P}, {}),
        ("tl.div_rn(0-d scalar, scalar)", div_rn_scalars, {"p": P, "q": P}, {}),
        ("tl.div_rn on a [1] tensor", div_rn_1elem, {"p": P, "q": P}, {}),
        ("tl.topk int64 [1024] -> 512, once", topk_once, {"p": "*i64", "q": "*i64"}, {"N": 1024, "K": 512}),
        ("tl.topk merge in a loop, K=8", topk_in_loop, {"p": "*i64", "q": "*i64", "n": "i32"}, {"K": 8}),
        ("tl.topk merge in a loop, K=16", topk_in_loop, {"p": "*i64", "q": "*i64", "n": "i32"}, {"K": 16}),
        (
            "tl.sort + tl.extract_slice merge in a loop, K=512",
            sort_slice_in_loop,
            {"p": "*i64", "q": "*i64", "n": "i32"},
            {"K": 512},
        ),
        (
            "gathered rows (indices from memory) + tl.dot",
            gather_rows_dot,
            {"p_idx": "*i32", "p_kv": P, "p_q": P, "p_o": P},
            {"BLOCK_N": 16, "D": 64},
        ),
        ("scf.while, debug_barrier, split/join, cos/sin, scalar if", misc_control, {"p": P, "q": P, "T": "i32"}, {}),
    ]
    out = []
    for name, fn, sig, cx in probes:
        r = compile_for_ascend(fn, sig, cx, None, _npu_options(), None, "", adapter_timeout_loop, bisect=False)
        out.append(
            {
                "construct": name,
                "status": r["status"],
                "error": r.get("error", "") if r["status"] != LOWERS else "",
                "seconds": r["seconds"],
            }
        )
        print(f"[construct] {r['status']:45s} {r['seconds']:6.1f}s {name}", file=sys.stderr, flush=True)
    return out


def _npu_options():
    from triton.backends.compiler import GPUTarget
    from triton.compiler import make_backend

    return make_backend(GPUTarget("npu", TARGET_ARCH, 0)).parse_options({})


def phase_lower(ir_dir=None, adapter_timeout=120) -> dict:
    import triton  # noqa: F401 - the import itself is a check
    from triton.backends.compiler import GPUTarget
    from triton.compiler import make_backend

    backend = make_backend(GPUTarget("npu", TARGET_ARCH, 0))
    found = jit_functions()
    flat = {}
    for mod, fns in found.items():
        for name, fn in fns.items():
            flat[f"{mod.rsplit('.', 1)[1]}.{name}"] = fn
    by_obj = {id(fn): qual for qual, fn in flat.items()}

    launches, scenario_errors = [], []
    for cset in ("npu", "sm90"):
        problems = v4_problems(cset)
        while True:
            calls = []
            try:
                scenario, launch = next(problems)
            except StopIteration:
                break
            except Exception as exc:  # noqa: BLE001 - a scenario that cannot be built (module missing...)
                scenario_errors.append(
                    {
                        "config_set": cset,
                        "scenario": "(building a scenario)",
                        "error": f"{type(exc).__name__}: {exc}",
                        "traceback": traceback.format_exc()[-2000:],
                    }
                )
                continue
            try:
                with recording(flat, calls):
                    launch()
            except Exception as exc:  # noqa: BLE001 - a launcher that cannot even be called
                scenario_errors.append(
                    {
                        "config_set": cset,
                        "scenario": scenario,
                        "error": f"{type(exc).__name__}: {exc}",
                        "traceback": traceback.format_exc()[-2000:],
                    }
                )
            for name, args, kwargs, grid in calls:
                launches.append(
                    dict(config_set=cset, scenario=scenario, kernel=name, args=args, kwargs=kwargs, grid=grid)
                )

    compiled = {}
    results = []
    for i, la in enumerate(launches):
        fn = flat[la["kernel"]]
        rec = {k: la[k] for k in ("config_set", "scenario", "kernel")}
        rec["grid"] = list(la["grid"])
        n_prog = 1
        for gdim in la["grid"]:
            n_prog *= int(gdim)
        rec["programs"] = n_prog
        rec["grid_ok"] = n_prog <= MAX_GRID
        try:
            sig, consts, attrs, opts = _bind(fn, backend, la["args"], la["kwargs"])
        except Exception as exc:  # noqa: BLE001
            rec.update(status=FAIL_FRONT, failed_stage="bind", error=f"{type(exc).__name__}: {exc}")
            results.append(rec)
            continue
        rec["constexprs"] = {k: _printable(v) for k, v in consts.items()}
        rec["signature"] = sig
        rec["options"] = {k: la["kwargs"][k] for k in ("num_warps", "num_stages") if k in la["kwargs"]}
        # num_warps / num_stages are left out of the key: Ascend's SIMD lowering does not read them
        # (NPUOptions uses num_warps only in the simt_only mode)
        key = (
            la["kernel"],
            json.dumps(sig, sort_keys=True),
            json.dumps(rec["constexprs"], sort_keys=True),
            str(attrs.to_dict() if hasattr(attrs, "to_dict") else attrs),
        )
        if key in compiled:
            rec.update({k: v for k, v in compiled[key].items() if k not in rec})
            rec["duplicate_of"] = compiled[key]["id"]
        else:
            tag = f"{i:02d}_{la['config_set']}_{la['kernel'].split('.')[-1]}"
            res = compile_for_ascend(fn, sig, consts, attrs, opts, ir_dir, tag, adapter_timeout)
            res["id"] = tag
            if res["status"] not in (LOWERS, COMPILED):
                wi = what_if(la["kernel"], fn, sig, consts, attrs, opts, ir_dir, tag, adapter_timeout)
                if wi:
                    res["what_if"] = wi
            compiled[key] = res
            rec.update(res)
        results.append(rec)
        wi = rec.get("what_if")
        print(
            f"[lower] {rec['config_set']:5s} {rec['kernel']:50s} {rec['status']} ({rec.get('seconds')} s)"
            + (f" | with {'+'.join(wi['fixes'])}: {wi['status']}" if wi else ""),
            file=sys.stderr,
            flush=True,
        )

    # kernels = jit functions no other jit function calls; helpers are reported through their kernels
    called = {id(c) for f in flat.values() for c in _direct_callees(f)}
    kinds = {q: ("helper" if id(f) in called else "kernel") for q, f in flat.items()}
    helper_use = {q: [] for q, k in kinds.items() if k == "helper"}
    for kq, kind in kinds.items():
        if kind == "kernel":
            for c in _callees(flat[kq]):
                if id(c) in by_obj:
                    helper_use[by_obj[id(c)]].append(kq)
    launched = {r["kernel"] for r in results}
    not_launched = sorted(q for q, k in kinds.items() if k == "kernel" and q not in launched)
    try:
        constructs = construct_probes()
    except Exception as exc:  # noqa: BLE001
        constructs = [{"construct": "(probes)", "status": "error", "error": f"{type(exc).__name__}: {exc}"}]
    return {
        "versions": _versions(),
        "target": f'GPUTarget("npu", "{TARGET_ARCH}", 0)',
        "constructs": constructs,
        "modules": kernel_modules(),
        "jit_functions": kinds,
        "helpers_used_by": helper_use,
        "kernels_without_launch": not_launched,
        "what_if_fixes": {f[0]: f[1] for f in CONSTEXPR_FIXES + SOURCE_FIXES},
        "scenario_errors": scenario_errors,
        "results": results,
    }


# ---------------------------------------------------------------------------------------------------
# phase "interp"
# ---------------------------------------------------------------------------------------------------
def _cmp(name, got, ref, atol, exact_expected=False):
    import torch

    g, r = got.double(), ref.double()
    same_nonfinite = bool(torch.equal(torch.isinf(g), torch.isinf(r)) and torch.equal(torch.isnan(g), torch.isnan(r)))
    fin = torch.isfinite(r) & torch.isfinite(g)
    err = float((g[fin] - r[fin]).abs().max()) if bool(fin.any()) else 0.0
    if same_nonfinite:
        inf = torch.isinf(r)
        same_nonfinite = bool(torch.equal(g[inf], r[inf]))
    exact = bool(torch.equal(got, ref)) if got.dtype == ref.dtype and got.shape == ref.shape else False
    ok = same_nonfinite and (exact if exact_expected else err <= atol)
    return {
        "tensor": name,
        "max_abs_err": err,
        "exact": exact,
        "nonfinite_match": same_nonfinite,
        "atol": atol,
        "ok": ok,
    }


def interp_cases():
    """(name, fn) pairs; fn(backend) returns a tuple of tensors, plus (atol per output, exact?)."""
    import longattn
    import torch
    from longattn.cache import quantize_kv_fp8

    def gen(seed):
        return torch.Generator().manual_seed(seed)

    def sparse_case(T, H, D, K1, K2, dtype, slots=64, fp8=False, seed=0):
        g = gen(seed)
        q = torch.randn(T, H, D, generator=g).to(dtype)
        if fp8:
            page = 16
            kv = quantize_kv_fp8(torch.randn(slots // page, page, D, generator=g))
            ekv = quantize_kv_fp8(torch.randn(slots // page, page, D, generator=g))
        else:
            kv = torch.randn(slots, D, generator=g).to(dtype)
            ekv = torch.randn(slots, D, generator=g).to(dtype)
        idx = torch.randint(-1, slots + 2, (T, K1), generator=g, dtype=torch.int32)  # -1 / out of range skipped
        eidx = torch.randint(0, slots, (T, K2), generator=g, dtype=torch.int32)
        ln = torch.randint(0, K1 + 1, (T,), generator=g, dtype=torch.int32)
        eln = torch.randint(0, K2 + 1, (T,), generator=g, dtype=torch.int32)
        if T > 1:
            ln[0], eln[0] = 0, 0  # a row with no key: out 0, lse -inf
        sink = torch.randn(H, generator=g)

        def run(backend):
            return longattn.sparse_attention(
                q,
                kv,
                idx,
                topk_length=ln,
                extra_kv=ekv,
                extra_indices=eidx,
                extra_topk_length=eln,
                attn_sink=sink,
                backend=backend,
            )

        atol = 1e-5 if dtype == torch.float32 else 1.6e-2
        return run, (atol, 1e-4), False

    def merge_case(dtype):
        g = gen(1)
        T, H, D = 3, 5, 40
        oa, ob = torch.randn(T, H, D, generator=g).to(dtype), torch.randn(T, H, D, generator=g).to(dtype)
        la, lb = torch.randn(T, H, generator=g), torch.randn(T, H, generator=g)
        la[0, 0] = float("-inf")
        la[1, 1] = lb[1, 1] = float("-inf")

        def run(backend):
            return longattn.merge_attention_states(oa, la, ob, lb, backend=backend)

        return run, (1e-6 if dtype == torch.float32 else 8e-3, 1e-6), False

    def sink_case(dtype):
        g = gen(2)
        T, H, D = 3, 5, 40
        o, lse, sink = (
            torch.randn(T, H, D, generator=g).to(dtype),
            torch.randn(T, H, generator=g),
            torch.randn(H, generator=g),
        )
        lse[0, 0] = float("-inf")

        def run(backend):
            return (longattn.apply_attention_sink(o, lse, sink, backend=backend),)

        return run, (1e-6 if dtype == torch.float32 else 8e-3,), False

    def indexer_case(kind, paged, T=3, Hi=4, Di=32, n=300, topk=16, dtype=torch.float32):
        g = gen(3)
        q = torch.randn(T, Hi, Di, generator=g).to(dtype)
        w = torch.randn(T, Hi, generator=g)
        vis = torch.tensor([n, n // 2, 1][:T], dtype=torch.int32)
        kw = {}
        if paged:
            page = 16
            pages_per_seq = -(-n // page)
            k = torch.randn(T * pages_per_seq + 2, page, Di, generator=g).to(dtype)
            bt = torch.randperm(T * pages_per_seq, generator=g).to(torch.int32).view(T, pages_per_seq)
            bt[1, -1] = -1  # a missing page: skipped
            kw = dict(block_table=bt, seq_ids=torch.arange(T, dtype=torch.int32))
        else:
            k = torch.randn(n, Di, generator=g).to(dtype)
        if kind == "logits":

            def run(backend):
                return (longattn.indexer_logits(q, w, k, vis, backend=backend, **kw),)

            return run, (1e-4,), False

        def run(backend):
            return longattn.indexer_topk(q, w, k, vis, topk, return_slots=paged, backend=backend, **kw)

        return run, (0, 0), True

    def append_case(fp8, src_dtype, dst_dtype=None):
        g = gen(4)
        T, D = 5, (512 if fp8 else 40)
        rows = (torch.randn(T, D, generator=g) * 3).to(src_dtype)
        slots = torch.tensor([3, -1, 17, 40, 63])  # -1 and out-of-range slots are skipped
        slots[3] = 64  # == num_slots: skipped

        def run(backend):
            if fp8:
                pool = longattn.Fp8KVPool.empty(4, 16)
                longattn.append_kv(pool, rows, slots, backend=backend)
                return (pool.data,)
            pool = torch.full((4, 16, D), float("nan"), dtype=dst_dtype)
            longattn.append_kv(pool, rows, slots, backend=backend)
            return (pool.view(torch.int16 if pool.element_size() == 2 else torch.int32),)  # bits (NaN-safe)

        return run, (0,), True

    def compress_case(ratio, overlap, out_kind, seed=5):
        from longattn.configs import RopeConfig
        from longattn.rope import inv_freq

        g = gen(seed)
        c, d, page = (2 if overlap else 1), (512 if out_kind == "fp8" else 32), 4
        lens = [2 * ratio + 1, ratio]  # two sequences: a chunk (several emissions) and a shorter one
        T = sum(lens)
        a = torch.randn(T, c * d, generator=g)
        b = torch.randn(T, c * d, generator=g)
        pos = torch.cat([torch.arange(n) for n in lens])
        rows = torch.cat([torch.full((n,), i, dtype=torch.int32) for i, n in enumerate(lens)])
        ring = c * ratio
        s_ps = min(page, ring)
        ring_pages = -(-ring // s_ps)
        sbt = torch.arange(2 * ring_pages, dtype=torch.int32).view(2, ring_pages)
        max_pages = 4
        obt = torch.arange(2 * max_pages, dtype=torch.int32).view(2, max_pages)
        w = torch.linspace(0.5, 1.5, d)
        freqs = inv_freq(RopeConfig(160000.0), min(16, d))

        def run(backend):
            state = torch.zeros(2 * ring_pages, s_ps, 2 * c * d)
            out = (
                longattn.Fp8KVPool.empty(2 * max_pages, page)
                if out_kind == "fp8"
                else torch.zeros(2 * max_pages, page, d)
            )
            longattn.compress_kv(
                a,
                b,
                pos,
                rows,
                ratio=ratio,
                overlap=overlap,
                state=state,
                state_block_table=sbt,
                out=out,
                out_block_table=obt,
                norm_weight=w,
                eps=1e-6,
                rope_inv_freq=freqs,
                backend=backend,
            )
            return (out.data if out_kind == "fp8" else out, state)

        # cos / sin / exp ulps differ from torch's (triton_compress.py docstring): a few fp32 ulps
        return run, ((0 if out_kind == "fp8" else 1e-5), 0), False

    def bitonic_case():
        ti = importlib.import_module("longattn.ops.indexer.triton_indexer")
        run_rank, _, _ = indexer_case("topk", True)
        g = gen(3)
        T, Hi, Di, n, topk = 3, 4, 32, 300, 16
        q, w = torch.randn(T, Hi, Di, generator=g), torch.randn(T, Hi, generator=g)
        k = torch.randn(n, Di, generator=g)
        vis = torch.tensor([n, n // 2, 1], dtype=torch.int32)

        def run(backend):
            if backend == "reference":
                return longattn.indexer_topk(q, w, k, vis, topk, backend="reference")
            return ti.indexer_topk(q, w, k, vis, topk, bitonic=True)  # the GPU merge (tl.topk)

        return run, (0, 0), True

    def what_if_case(fix_id, mod_name, build):
        """Run the launcher of a patched copy of ``mod_name`` (SOURCE_FIXES ``fix_id``) vs the reference."""
        fix = [f for f in SOURCE_FIXES if f[0] == fix_id]

        def run(backend):
            return build(backend, _patched_module(mod_name, fix) if backend != "reference" else None)

        return run

    def wi_fp8(backend, mod):
        g = gen(6)
        T, H, D = 2, 4, 512
        q = torch.randn(T, H, D, generator=g).to(torch.bfloat16)
        kv = quantize_kv_fp8(torch.randn(4, 16, D, generator=g) * 3)
        idx = torch.randint(-1, 64, (T, 24), generator=g, dtype=torch.int32)
        if mod is None:
            return longattn.sparse_attention(q, kv, idx, backend="reference")
        return mod.sparse_attention(q, kv, idx, None, None, None, None, None, D**-0.5)

    def wi_compress(backend, mod):
        run, _, _ = compress_case(4, True, "fp32", seed=7)
        if mod is None:
            return run("reference")
        tcmp = (
            sys.modules["longattn.ops.compress.triton_compress"]
            if "longattn.ops.compress.triton_compress" in sys.modules
            else importlib.import_module("longattn.ops.compress.triton_compress")
        )
        saved = tcmp.compress_kv
        tcmp.compress_kv = mod.compress_kv  # the backend calls triton_compress.compress_kv
        try:
            return run("triton")
        finally:
            tcmp.compress_kv = saved

    def wi_sort(backend, mod):
        g = gen(3)
        q, w, k = torch.randn(3, 4, 32, generator=g), torch.randn(3, 4, generator=g), torch.randn(300, 32, generator=g)
        vis = torch.tensor([300, 150, 1], dtype=torch.int32)
        if mod is None:
            return longattn.indexer_topk(q, w, k, vis, 16, backend="reference")
        return mod.indexer_topk(q, w, k, vis, 16, bitonic=True)

    import torch as _t

    extra = []
    if os.path.exists(os.path.join(OPS_DIR, "append", "triton_append.py")):
        extra += [
            (
                "append_kv fp32 rows -> bf16 pool (paged, skipped slots), bits",
                *append_case(False, _t.float32, _t.bfloat16),
            ),
            ("append_kv bf16 rows -> bf16 pool (bit copy)", *append_case(False, _t.bfloat16, _t.bfloat16)),
            ("append_kv fp32 rows -> FP8 MODEL1 pool, bytes", *append_case(True, _t.float32)),
        ]
    if os.path.exists(os.path.join(OPS_DIR, "compress", "triton_compress.py")):
        extra += [
            ("compress_kv CSA ratio 4 overlap d=32 -> fp32 pool, + ring state", *compress_case(4, True, "fp32")),
            ("compress_kv HCA ratio 8 d=32 -> fp32 pool, + ring state", *compress_case(8, False, "fp32")),
            ("compress_kv CSA ratio 4 overlap d=512 -> FP8 pool, + ring state", *compress_case(4, True, "fp8")),
        ]
    extra.append(
        ("indexer_topk launcher with bitonic=True (triton-ascend's tl.topk merge), flat top-16 of 300", *bitonic_case())
    )
    what_ifs = [
        (
            "what-if fp8_int_decode: sparse_attention FP8 pool, bf16 q, T=2 H=4 D=512 K=24",
            what_if_case("fp8_int_decode", "longattn.ops.sparse_attention.triton_sparse_attention", wi_fp8),
            (1.6e-2, 1e-4),
            False,
        ),
        (
            "what-if sort_merge: indexer_topk with tl.sort + tl.extract_slice merge, top-16 of 300",
            what_if_case("sort_merge", "longattn.ops.indexer.triton_indexer", wi_sort),
            (0, 0),
            True,
        ),
    ]
    if os.path.exists(os.path.join(OPS_DIR, "compress", "triton_compress.py")):
        what_ifs.append(
            (
                "what-if div_rn_on_1elem_tensor: compress_kv CSA ratio 4 d=32 -> fp32 pool",
                what_if_case("div_rn_on_1elem_tensor", "longattn.ops.compress.triton_compress", wi_compress),
                (1e-5, 0),
                False,
            )
        )

    return (
        [
            (
                "sparse_attention fp32 T=3 H=8 D=96 (tail tile), K=40+24, lengths, sink",
                *sparse_case(3, 8, 96, 40, 24, _t.float32),
            ),
            ("sparse_attention bf16 T=2 H=4 D=64, K=32+16", *sparse_case(2, 4, 64, 32, 16, _t.bfloat16, seed=1)),
            (
                "sparse_attention fp32 T=1 H=4 D=64, K=128+512 (split-KV + combine kernel)",
                *sparse_case(1, 4, 64, 128, 512, _t.float32, slots=256, seed=2),
            ),
            (
                "sparse_attention FP8 pools bf16 q T=2 H=4 D=512, K=16+16",
                *sparse_case(2, 4, 512, 16, 16, _t.bfloat16, fp8=True, seed=3),
            ),
            ("merge_attention_states fp32 T=3 H=5 D=40", *merge_case(_t.float32)),
            ("merge_attention_states bf16 T=3 H=5 D=40", *merge_case(_t.bfloat16)),
            ("apply_attention_sink fp32 T=3 H=5 D=40", *sink_case(_t.float32)),
            ("indexer_logits fp32 flat T=3 Hi=4 Di=32 N=300", *indexer_case("logits", False)),
            ("indexer_logits fp32 paged T=3 Hi=4 Di=32 N=300", *indexer_case("logits", True)),
            (
                "indexer_topk fp32 paged top-16 of 300, return_slots (partial + merge kernels)",
                *indexer_case("topk", True),
            ),
            ("indexer_topk fp32 flat top-16 of 300", *indexer_case("topk", False)),
        ]
        + extra
        + what_ifs
    )


def phase_interp() -> dict:
    import warnings

    out = {"versions": _versions(), "TRITON_INTERPRET": os.environ.get("TRITON_INTERPRET")}
    try:
        import longattn
        from longattn.backends import registry

        out["longattn"] = longattn.__file__
        be = registry.get_backend("triton")
        out["triton_backend_unavailable"] = be.unavailable
        out["triton_backend_device_types"] = list(be.device_types)
    except Exception as exc:  # noqa: BLE001
        out["import_error"] = f"{type(exc).__name__}: {exc}\n{traceback.format_exc()[-2000:]}"
        return out
    cases = []
    for name, run, atols, exact_expected in interp_cases():
        rec = {"case": name}
        t0 = time.time()
        try:
            # backend="triton" raises (never falls back) when the backend declines a call
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                got = run("triton")
            rec["seconds"] = round(time.time() - t0, 2)
            kinds = sorted({f"{w.category.__name__}: {str(w.message).splitlines()[0][:160]}" for w in caught})
            if kinds:
                rec["warnings"] = kinds
            ref = run("reference")
            rec["outputs"] = [
                _cmp(f"out{i}", a, b, atol, exact_expected) for i, (a, b, atol) in enumerate(zip(got, ref, atols))
            ]
            rec["ok"] = all(o["ok"] for o in rec["outputs"])
        except Exception as exc:  # noqa: BLE001
            rec["seconds"] = round(time.time() - t0, 2)
            rec["ok"] = False
            rec["error"] = f"{type(exc).__name__}: {str(exc)[:1500]}"
            rec["traceback"] = traceback.format_exc()[-3000:]
        print(f"[interp] {'ok  ' if rec['ok'] else 'FAIL'} {rec['seconds']:7.1f}s {name}", file=sys.stderr, flush=True)
        cases.append(rec)
    out["cases"] = cases
    return out


# ---------------------------------------------------------------------------------------------------
# driver and report
# ---------------------------------------------------------------------------------------------------
def run_phase(phase: str, timeout: int, ir_dir=None, extra=()) -> dict:
    env = dict(os.environ)
    env.pop("ASCEND_HOME_PATH", None)
    env["TRITON_CACHE_DIR"] = tempfile.mkdtemp(prefix=f"ta_cache_{phase}_")  # never a cache hit
    if phase == "interp":
        env["TRITON_INTERPRET"] = "1"
    else:
        env.pop("TRITON_INTERPRET", None)
    with tempfile.NamedTemporaryFile("r", suffix=".json", delete=False) as f:
        jpath = f.name
    cmd = [sys.executable, os.path.abspath(__file__), "--phase", phase, "--json", jpath]
    if ir_dir:
        cmd += ["--ir-dir", ir_dir]
    cmd += list(extra)
    t0 = time.time()
    try:
        p = subprocess.run(cmd, env=env, timeout=timeout, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        rc, so, se = p.returncode, p.stdout, p.stderr
    except subprocess.TimeoutExpired as exc:
        rc, so, se = "timeout", exc.stdout or "", exc.stderr or ""
        so = so.decode() if isinstance(so, bytes) else so
        se = se.decode() if isinstance(se, bytes) else se
    sys.stderr.write(se)
    data = {}
    if os.path.getsize(jpath):
        with open(jpath) as f:
            data = json.load(f)
    os.unlink(jpath)
    data["phase_rc"] = rc
    data["phase_seconds"] = round(time.time() - t0, 1)
    if rc != 0:
        data["phase_stderr_tail"] = se[-4000:]
    return data


def _short(s: str, n: int = 160) -> str:
    s = (s or "").replace("|", "\\|").replace("\n", " ")
    return s if len(s) <= n else s[: n - 1] + "…"


def case_kernels(case: str) -> list:
    """Kernels an interpreter case runs (what-if cases run patched copies: none)."""
    if case.startswith("what-if"):
        return []
    ks = []
    if case.startswith("sparse_attention"):
        ks.append("triton_sparse_attention._sparse_attn_fwd_kernel")
        if "split-KV" in case:
            ks.append("triton_sparse_attention._combine_splits_kernel")
    elif case.startswith("merge_attention_states"):
        ks.append("triton_combine._merge_states_kernel")
    elif case.startswith("apply_attention_sink"):
        ks.append("triton_combine._apply_sink_kernel")
    elif case.startswith("indexer_logits"):
        ks.append("triton_indexer._indexer_logits_kernel")
    elif case.startswith("indexer_topk"):
        ks += ["triton_indexer._indexer_topk_partial_kernel", "triton_indexer._indexer_topk_merge_kernel"]
    elif case.startswith("append_kv"):
        ks.append("triton_append._append_fp8_kernel" if "FP8" in case else "triton_append._append_float_kernel")
    elif case.startswith("compress_kv"):
        ks.append("triton_compress._compress_kv_kernel")
    return ks


def _cell_lower(records: list) -> str:
    """Summary cell of one kernel in one config set: distinct outcomes (+ what-if)."""
    if not records:
        return "-"
    parts = []
    for st in sorted({r["status"] for r in records}):
        n = sum(1 for r in records if r["status"] == st)
        short = {
            LOWERS: "lowers",
            FAIL_FRONT: "FAILS frontend",
            FAIL_ADAPTER: "FAILS ttadapter",
            FAIL_NPUBIN: "FAILS npubin",
            COMPILED: "compiled",
        }.get(st, st)
        wis = {
            ("+".join(r["what_if"]["fixes"]), r["what_if"]["status"])
            for r in records
            if r["status"] == st and r.get("what_if")
        }
        txt = f"{short} ({n}/{len(records)})" if len(records) > 1 else short
        for fixes, wst in sorted(wis):
            txt += f"; with {fixes}: {'lowers' if wst == LOWERS else wst}"
        parts.append(txt)
    return "; ".join(parts)


def _portable(text: str) -> str:
    """The report with this machine's paths replaced, so that a committed report names no machine:
    the repository root -> paths relative to it, the venv -> ``$VENV``, the temp dir -> ``$TMPDIR``
    (longest prefix first: the venv may live in the temp dir or in the repository)."""
    prefixes = {ROOT + os.sep: "", sys.prefix + os.sep: "$VENV/", tempfile.gettempdir() + os.sep: "$TMPDIR/"}
    for old in sorted(prefixes, key=len, reverse=True):
        text = text.replace(old, prefixes[old])
    return text


def write_report(out_dir: str, lower: dict, interp: dict) -> None:
    os.makedirs(out_dir, exist_ok=True)
    report = {
        "generated": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "lower": lower,
        "interp": interp,
    }
    with open(os.path.join(out_dir, "report.json"), "w") as f:
        f.write(_portable(json.dumps(report, indent=1, default=str)))

    results = lower.get("results", [])
    L = [
        "# triton-ascend check of longattn's Triton kernels\n",
        f"Generated {report['generated']} by `{os.path.relpath(os.path.abspath(__file__), ROOT)}` (see README.md "
        "there).\n",
    ]
    v = lower.get("versions") or interp.get("versions") or {}
    L.append("Environment: " + ", ".join(f"{k} {v[k]}" for k in v) + ".\n")
    L.append(
        f"Target `{lower.get('target', '?')}`; lowering with TRITON_INTERPRET unset (ASCEND_HOME_PATH unset, "
        "so a kernel that lowers stops at bishengir-compile), interpreter runs with TRITON_INTERPRET=1.\n"
    )
    if lower.get("phase_rc") != 0:
        L.append(
            f"**lower phase failed (rc {lower.get('phase_rc')})**:\n\n```\n{lower.get('phase_stderr_tail', '')}\n```\n"
        )
    if interp.get("phase_rc") != 0 or interp.get("import_error"):
        L.append(
            f"**interp phase failed (rc {interp.get('phase_rc')})**:\n\n```\n"
            f"{interp.get('import_error') or interp.get('phase_stderr_tail', '')}\n```\n"
        )

    kcases = {}
    for c in interp.get("cases", []):
        for k in case_kernels(c["case"]):
            kcases.setdefault(k, []).append(c)
    kernels = [q for q, kind in lower.get("jit_functions", {}).items() if kind == "kernel"]
    kernels = sorted(set(kernels) | {r["kernel"] for r in results})
    L.append("## Summary: kernel x {lowers for Ascend910B3?, interpreter vs reference}\n")
    L.append(
        "Config sets: **npu** = the launchers' own choice for a non-CUDA device (what an NPU tensor would get "
        'today), **sm90** = the tuned CUDA configs (`default_config(..., cuda)`, 132 SMs). "with X: lowers" = '
        "the same launch lowers once the what-if fix X is applied to a temporary copy of the module.\n"
    )
    L.append("| kernel | npu config | sm90 config | interpreter (TRITON_INTERPRET=1) |")
    L.append("|---|---|---|---|")
    for k in kernels:
        row = [f"`{k}`"]
        for cs in ("npu", "sm90"):
            row.append(_cell_lower([r for r in results if r["kernel"] == k and r["config_set"] == cs]))
        cs_ = kcases.get(k, [])
        if not cs_:
            row.append("-")
        else:
            bad = [c for c in cs_ if not c["ok"]]
            row.append(
                f"pass ({len(cs_)} case{'s' if len(cs_) > 1 else ''})"
                if not bad
                else f"{len(cs_) - len(bad)}/{len(cs_)} pass; FAIL: " + "; ".join(_short(c["case"], 70) for c in bad)
            )
        L.append("| " + " | ".join(row) + " |")
    L.append("")
    if lower.get("kernels_without_launch"):
        L.append(
            "Kernels without a launch scenario (not compiled): "
            + ", ".join(f"`{k}`" for k in lower["kernels_without_launch"])
            + "\n"
        )
    helpers = lower.get("helpers_used_by", {})
    if helpers:
        L.append(
            "Device helpers (`@triton.jit` functions inlined into the kernels, compiled through them): "
            + ", ".join(
                f"`{h}` ({', '.join(x.split('.')[-1] for x in sorted(us)) or 'no kernel'})"
                for h, us in sorted(helpers.items())
            )
            + "\n"
        )
    for e in lower.get("scenario_errors", []):
        L.append(f"- launcher error ({e['config_set']}, {e['scenario']}): `{_short(e['error'], 300)}`")
    if lower.get("what_if_fixes"):
        L.append("What-if fixes (applied only to temporary copies, never to the repo's kernels):\n")
        for fid, why in lower["what_if_fixes"].items():
            L.append(f"- `{fid}`: {why}")
        L.append("")

    if lower.get("constructs"):
        L.append("## Construct probes (one-construct kernels, same target)\n")
        L.append("| construct | result | first error line | s |")
        L.append("|---|---|---|---|")
        for c in lower["constructs"]:
            L.append(
                f"| {c['construct']} | {c['status']} | {_short(c.get('error', ''), 200)} | {c.get('seconds', '')} |"
            )
        L.append("")

    L.append("## Lowering, per launch\n")
    L.append(
        "| id | config | scenario | kernel | grid (programs) | key constexprs | result | first error line | "
        "what-if | s |"
    )
    L.append("|---|---|---|---|---|---|---|---|---|---|")
    keys = (
        "BLOCK_H",
        "BLOCK_N",
        "BLOCK_D0",
        "BLOCK_D1",
        "BLOCK_D",
        "BLOCK_S",
        "BLOCK_T",
        "SPLIT",
        "KV_FP8",
        "EKV_FP8",
        "CDT",
        "DOT_PREC",
        "TOPK_P2",
        "BLOCK_HI",
        "BLOCK_DI",
        "BITONIC",
        "FINAL",
        "ONE_TILE",
        "PAGED",
        "MODE",
        "RATIO",
        "C",
        "D",
        "R",
        "OUT_KIND",
    )
    for r in results:
        cx = r.get("constexprs", {})
        kc = " ".join(f"{k}={cx[k]}" for k in keys if k in cx)
        grid = f"{r.get('grid')} ({r.get('programs')})"
        rid = r.get("id", "") if not r.get("duplicate_of") else f"= {r['duplicate_of']}"
        wi = r.get("what_if")
        wtxt = f"{'+'.join(wi['fixes'])}: {wi['status']}" if wi else ""
        err = r.get("error", "") if r["status"] != LOWERS else ""
        L.append(
            f"| {rid} | {r['config_set']} | {_short(r['scenario'], 60)} | `{r['kernel'].split('.')[-1]}` | {grid} | "
            f"{kc} | {r['status']} | {_short(err, 220)} | {_short(wtxt, 120)} | {r.get('seconds', '')} |"
        )
    L.append("")
    fails = [r for r in results if r["status"] not in (LOWERS, COMPILED) and not r.get("duplicate_of")]
    if fails:
        L.append("### Failures in detail\n")
        for r in fails:
            L.append(
                f"**{r.get('id', r['kernel'])}** (`{r['kernel']}`, {r['config_set']}: {r['scenario']}), failed "
                f"stage `{r.get('failed_stage')}`:\n"
            )
            L.append("```\n" + "\n".join(r.get("error_excerpt") or [r.get("error", "")]) + "\n```\n")
            bis = r.get("adapter_pass_bisect")
            if bis:
                L.append(
                    f"triton-adapter-opt pass by pass: fails in `{bis.get('pass')}` ({bis.get('outcome')}); "
                    f"passes before it succeed.\n"
                )
            wi = r.get("what_if")
            if wi:
                L.append(
                    f"What-if ({', '.join(wi['fixes'])}): **{wi['status']}**"
                    + (f" — {wi.get('error')}" if wi.get("status") != LOWERS else "")
                    + "\n"
                )
    lowered = [
        r
        for r in results
        if not r.get("duplicate_of") and (r["status"] == LOWERS or (r.get("what_if") or {}).get("status") == LOWERS)
    ]
    if lowered:
        L.append("### ttadapter module statistics (launches that lower, as they are or after the what-if fixes)\n")
        L.append("| id | variant | ttir lines | ttadapter lines | scf.for | scalar memref.load | leftover tt ops |")
        L.append("|---|---|---|---|---|---|---|")
        for r in lowered:
            src = r if r["status"] == LOWERS else r["what_if"]
            st = src.get("ttadapter_stats", {})
            var = "as is" if r["status"] == LOWERS else "+".join(r["what_if"]["fixes"])
            L.append(
                f"| {r['id']} | {var} | {r.get('ttir_lines', '') if src is r else ''} | "
                f"{src.get('ttadapter_lines')} | {st.get('scf.for')} | {st.get('memref.load (scalar)')} | "
                f"{', '.join(st.get('leftover_tt_ops', [])) or 'none'} |"
            )
        L.append("")

    L.append('## Interpreter (TRITON_INTERPRET=1) vs backend="reference"\n')
    if interp.get("triton_backend_unavailable"):
        L.append(f"triton backend unavailable: {interp['triton_backend_unavailable']}\n")
    L.append("| case | result | max abs err per output (atol) | bit-exact | s |")
    L.append("|---|---|---|---|---|")
    for c in interp.get("cases", []):
        if "outputs" in c:
            errs = ", ".join(f"{o['max_abs_err']:.3g} ({o['atol']:g})" for o in c["outputs"])
            exact = ", ".join("yes" if o["exact"] else "no" for o in c["outputs"])
            res = "pass" if c["ok"] else "FAIL"
        else:
            errs, exact, res = _short(c.get("error", ""), 220), "-", "ERROR"
        L.append(f"| {c['case']} | {res} | {errs} | {exact} | {c['seconds']} |")
    L.append("")
    warn = sorted({w for c in interp.get("cases", []) for w in c.get("warnings", [])})
    if warn:
        L.append("Warnings raised while the Triton path ran: " + "; ".join(f"`{_short(w, 200)}`" for w in warn) + "\n")
    with open(os.path.join(out_dir, "report.md"), "w") as f:
        f.write(_portable("\n".join(L)))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=os.path.join(HERE, "results"))
    ap.add_argument("--phase", choices=("lower", "interp"))
    ap.add_argument("--json")
    ap.add_argument("--ir-dir", help="also write each launch's .ttir / .ttadapter MLIR here")
    ap.add_argument("--skip-interp", action="store_true")
    ap.add_argument("--timeout", type=int, default=3600, help="seconds per phase")
    ap.add_argument("--adapter-timeout", type=int, default=120, help="seconds per triton-adapter-opt run")
    a = ap.parse_args()
    if a.phase:
        sys.path.insert(0, os.path.join(ROOT, "python"))
        data = phase_lower(a.ir_dir, a.adapter_timeout) if a.phase == "lower" else phase_interp()
        with open(a.json, "w") as f:
            json.dump(data, f, indent=1, default=str)
        return
    lower = run_phase("lower", a.timeout, a.ir_dir, ["--adapter-timeout", str(a.adapter_timeout)])
    interp = {"cases": [], "phase_rc": 0, "skipped": True} if a.skip_interp else run_phase("interp", a.timeout)
    write_report(a.out, lower, interp)
    with open(os.path.join(a.out, "report.md")) as f:
        text = f.read()
    print(text.split("## Lowering, per launch")[0])  # the summary; the rest is in the file
    sys.exit(0 if lower.get("phase_rc") == 0 and interp.get("phase_rc") == 0 else 1)


if __name__ == "__main__":
    main()
