#!/usr/bin/env python3
"""snowtrain's fused CUDA kernels on one GPU, in one run of about 6 minutes:

1. build: the extension (csrc/) with torch.utils.cpp_extension.load (ninja; without ninja,
   csrc/setup.py build_ext is used instead);
2. checks: every kernel against float64 references on fresh random inputs of several shapes,
   forward and backward, bf16 (and fp32): relative error (norm-wise) within 1e-2 for bf16, no
   NaN, and every output element written (the allocator's cache is filled with 0xFF bytes, NaN
   in bf16 and fp32, first, so an element a kernel leaves unwritten shows up as NaN);
3. training steps of the 1.3B recipe model (configs/model/snowcoder-1.3b.yaml, seq 8192, bf16,
   micro-batch 1) with snowtrain's Llama + DistributedOptimizer + train_step, fused kernels off
   and on, eager and then with each block under torch.compile (model.compile; skipped with
   --skip-compile): tokens/s and MFU (FLOPs/token = 6N + 12 L h s, peak by the card's name: 989 TFLOP/s
   for H100/H200 SXM), activation checkpointing off if it fits, else on;
4. baseline: forward+backward of megatron-core's GPTModel at the same shape, bf16 weights,
   local layer spec with its core attention swapped for torch's scaled_dot_product_attention
   (flash attention, as snowtrain uses; the stock local spec's unfused attention keeps
   [heads, s, s] scores and would be measured instead only if that swap fails);
5. kernel timings at the 1.3B model's shapes (seq 8192, micro-batch 1): fused vs torch eager vs
   torch.compile of the reference, forward and forward+backward: GPU time per run with CUDA
   events, median of many runs, the L2 cache flushed before each and the GPU held busy while
   the runs are queued, so the time is the kernels' and not Python's launch overhead.

Each section runs in its own process (a kernel fault poisons the CUDA context; a hang in C code
ignores signals; --isolate off runs them here, the default with --smoke) under a time limit
carved from --budget-s (default 400 s), killed 20 s past it; the results are rewritten after
every section to
<out-dir>/kernels-<card>-<date>.md and .json, so a run cut short still leaves what it measured.
<out-dir> defaults to $OUT when that is set, else benchmarks/results. The markdown report is
printed at the end.

    python benchmarks/bench_kernels_gpu.py                 # everything
    python benchmarks/bench_kernels_gpu.py --skip-megatron --steps 5
    python benchmarks/bench_kernels_gpu.py --smoke         # tiny shapes, also on CPU: checks the script

Works from a plain copy of the repository (no `pip install -e .` needed): the repository root is
put on sys.path. Needs torch with CUDA, nvcc, ninja, pyyaml; megatron-core for the baseline
(skipped, with a note, when it is missing). --smoke checks the operators' CPU implementations
(the kernels' contract) in float32/bf16, times them, runs two steps of a tiny model and builds
megatron-core's TransformerConfig and GPTModel on CPU (megatron needs CUDA for a forward).
"""
from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import faulthandler
import gc
import json
import os
import platform
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

PEAK_TFLOPS = 989.0  # H100 SXM dense bf16 (H200 too)
# dense bf16 peaks by device name (datasheets); the first match wins, else PEAK_TFLOPS
PEAKS = (("h100 pcie", 756.0), ("h100 nvl", 835.0), ("h100", 989.0), ("h200", 989.0),
         ("h800", 989.0), ("a100", 312.0), ("l40s", 362.0))
MFU_GOAL = 0.45
# per section: (time cap in s, least time worth starting it with)
# (the timings keep 90 s: the per-kernel goals need them more than the compiled 1.3B runs, the
# model section's last and first cut)
SECTIONS = {"checks": (75, 10), "model": (200, 75), "megatron": (100, 45), "timings": (150, 90)}
STARTUP_S = 15  # a section's process start (torch, the extension) and its kill grace, reserved
BUILD_LIMIT_S = 240


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-config", default=str(REPO / "configs/model/snowcoder-1.3b.yaml"),
                   help="model YAML for the training steps (default: the 1.3B recipe)")
    p.add_argument("--seq", type=int, default=8192, help="sequence length (default 8192)")
    p.add_argument("--steps", type=int, default=6, help="timed training steps per setting")
    p.add_argument("--warmup-steps", type=int, default=2, help="untimed training steps first")
    p.add_argument("--iters", type=int, default=50, help="timed runs per kernel measurement")
    p.add_argument("--warmup", type=int, default=5, help="untimed runs per kernel measurement")
    p.add_argument("--checkpointing", choices=("auto", "on", "off"), default="auto",
                   help="activation checkpointing of the 1.3B model: auto = off unless it OOMs")
    p.add_argument("--peak-tflops", type=float, default=None,
                   help=f"peak bf16 TFLOP/s for MFU (default: by the card's name, e.g. 989 for "
                        f"H100/H200 SXM, 756 for H100 PCIe; {PEAK_TFLOPS} when unknown)")
    p.add_argument("--budget-s", type=float, default=400.0,
                   help="wall-clock budget of the whole run; sections get time limits from it")
    p.add_argument("--skip-checks", action="store_true", help="skip the correctness checks")
    p.add_argument("--skip-timing", action="store_true", help="skip the kernel timings")
    p.add_argument("--skip-compile", action="store_true",
                   help="no torch.compile: neither of the references nor of the 1.3B model")
    p.add_argument("--skip-model", action="store_true", help="skip the 1.3B training steps")
    p.add_argument("--skip-megatron", action="store_true", help="skip the megatron-core baseline")
    p.add_argument("--out-dir", default=os.environ.get("OUT") or str(REPO / "benchmarks/results"),
                   help="where kernels-<card>-<date>.md/.json go (default: $OUT if set, else "
                        "benchmarks/results)")
    p.add_argument("--smoke", action="store_true",
                   help="tiny shapes and few runs, allowed on CPU (checks the script, writes "
                        "nothing unless --write)")
    p.add_argument("--write", action="store_true", help="with --smoke: write the results anyway")
    p.add_argument("--verbose-build", action="store_true", help="show the compiler output")
    p.add_argument("--isolate", choices=("auto", "on", "off"), default="auto",
                   help="run each section in its own process (auto: yes, except with --smoke)")
    # internal: one section in a child process
    p.add_argument("--section", choices=("checks", "timings", "model", "megatron"), help=argparse.SUPPRESS)
    p.add_argument("--part-file", help=argparse.SUPPRESS)
    p.add_argument("--section-limit", type=float, default=600.0, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


class SectionTimeout(BaseException):
    """A section ran past its limit (a BaseException, so per-item `except Exception` lets it by)."""


@contextlib.contextmanager
def time_limit(seconds: float):
    """Raise SectionTimeout in the main thread after `seconds` (SIGALRM; not inside C calls)."""
    if not hasattr(signal, "setitimer"):
        yield
        return

    def handler(signum, frame):
        raise SectionTimeout(f"ran past its limit of {seconds:.0f} s")
    old = signal.signal(signal.SIGALRM, handler)
    signal.setitimer(signal.ITIMER_REAL, max(1.0, seconds))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def free_memory(torch) -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.empty_cache()


# ---------------------------------------------------------------------------------- build

def ensure_ninja() -> bool:
    """ninja on PATH: as is, next to this python, or from the `ninja` package (no network)."""
    if shutil.which("ninja"):
        return True
    dirs = [Path(sys.executable).parent]
    try:
        import ninja
        dirs.append(Path(getattr(ninja, "BIN_DIR", Path(ninja.__file__).parent / "data" / "bin")))
    except ImportError:
        pass
    for d in dirs:
        if (d / "ninja").exists():
            os.environ["PATH"] = f"{d}{os.pathsep}{os.environ.get('PATH', '')}"
            return True
    return False


def build_extension(torch, verbose: bool) -> dict:
    from snowtrain import kernels
    from snowtrain.kernels import build

    info = {"method": None, "seconds": None, "error": None}
    if not os.environ.get("TORCH_CUDA_ARCH_LIST"):
        major, minor = torch.cuda.get_device_capability()
        os.environ["TORCH_CUDA_ARCH_LIST"] = f"{major}.{minor}"
    info["arch"] = os.environ["TORCH_CUDA_ARCH_LIST"]
    start = time.perf_counter()
    if ensure_ninja():
        info["method"] = "torch.utils.cpp_extension.load (ninja)"
        ok = kernels.load_extension(verbose=verbose, force=True)
    else:  # setuptools without ninja: slower, serial, but needs nothing more
        info["method"] = "csrc/setup.py build_ext (no ninja)"
        out = Path(tempfile.mkdtemp(prefix="snowtrain_kernels_"))
        cmd = [sys.executable, "setup.py", "build_ext", "--build-lib", str(out),
               "--build-temp", str(out / "tmp")]
        proc = subprocess.run(cmd, cwd=REPO / "csrc", capture_output=not verbose, text=True)
        libs = sorted(out.glob("snowtrain_kernels_C*.so"))
        if proc.returncode != 0 or not libs:
            info["error"] = f"setup.py build_ext failed:\n{(proc.stdout or '')[-3000:]}{(proc.stderr or '')[-3000:]}"
            return info
        os.environ["SNOWTRAIN_KERNELS_LIB"] = str(libs[0])
        ok = kernels.load_extension(verbose=verbose, force=True)
    info["seconds"] = round(time.perf_counter() - start, 1)
    info["path"] = build._state.get("path")
    if ok and not os.environ.get("SNOWTRAIN_KERNELS_LIB"):
        # the sections' processes load this file instead of asking ninja again
        from torch.utils import cpp_extension
        lib = Path(cpp_extension._get_build_directory(build.MODULE_NAME, False)) / f"{build.MODULE_NAME}.so"
        if lib.exists():
            os.environ["SNOWTRAIN_KERNELS_LIB"] = info["library"] = str(lib)
    if not ok:
        info["error"] = (kernels.extension_error() or "unknown error")[-6000:]
    return info


# --------------------------------------------------------------------------------- timing

def timer(torch, fn, iters: int, warmup: int) -> dict:
    """Median (and quartiles) of `iters` runs of fn in milliseconds. On a GPU: the GPU time of
    each run between CUDA events, with the L2 cache flushed before it (as triton's do_bench), and
    the GPU held by a sleep kernel while all runs are queued, so that what is timed is the
    kernels and not the CPU's launching of them (the per-call Python cost of a dispatcher is real
    but hides behind the matmuls in training; the training-step section measures it end to end).
    On CPU (smoke runs): wall clock."""
    for _ in range(warmup):
        fn()
    if not torch.cuda.is_available():
        times = []
        for _ in range(iters):
            t = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t) * 1e3)
        return _summary(times)
    torch.cuda.synchronize()
    t = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    launch_ms = (time.perf_counter() - t) * 1e3  # an upper bound of the CPU's time per run
    flush = _l2_flush_buffer(torch)
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(iters)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(iters)]
    if launch_ms < 50:  # (longer work keeps the GPU busy by itself)
        torch.cuda._sleep(int(_cycles_per_ms(torch) * 2 * iters * (launch_ms + 0.1)))
    for s, e in zip(starts, ends):
        flush.zero_()
        s.record()
        fn()
        e.record()
    torch.cuda.synchronize()
    return _summary([s.elapsed_time(e) for s, e in zip(starts, ends)])


def _summary(times: list[float]) -> dict:
    q = statistics.quantiles(times, n=4) if len(times) > 1 else [times[0]] * 3
    return {"median_ms": statistics.median(times), "p25_ms": q[0], "p75_ms": q[2], "runs": len(times)}


_CACHE: dict = {}


def _l2_flush_buffer(torch):
    """256 MiB, written before each timed run: more than any GPU's L2 (50 MiB on an H100)."""
    if "flush" not in _CACHE:
        _CACHE["flush"] = torch.empty(256 * 2**20, dtype=torch.int8, device="cuda")
    return _CACHE["flush"]


def _cycles_per_ms(torch) -> float:
    """The GPU clock as torch.cuda._sleep sees it (measured once with CUDA events)."""
    if "cycles" not in _CACHE:
        cycles = 20_000_000
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        torch.cuda._sleep(cycles)
        e.record()
        torch.cuda.synchronize()
        _CACHE["cycles"] = cycles / max(s.elapsed_time(e), 1e-3)
    return _CACHE["cycles"]


# ------------------------------------------------------------------------------- op cases

def op_cases(smoke: bool):
    """Per op, shapes for the checks; the last one is the 1.3B model's (used for timing)."""
    if smoke:
        return {"rmsnorm": [(2, 64), (3, 5, 33)], "add_rmsnorm": [(2, 64)],
                "swiglu": [(2, 8, 40), (7,)], "rope": [((1, 8, 4, 16), 2), ((1, 5, 2, 10), 1)],
                "cross_entropy": [(16, 100), (5, 33)]}
    return {
        "rmsnorm": [(3, 7, 1000), (1, 33), (4096, 4096), (1, 8192, 2048)],
        "add_rmsnorm": [(3, 7, 1000), (1, 8192, 2048)],
        "swiglu": [(3, 1001), (1, 7), (1, 8192, 5632)],
        "rope": [((1, 9, 3, 10), 1), ((2, 64, 8, 64), 2), ((1, 8192, 16, 128), 16)],
        "cross_entropy": [(5, 8), (37, 1001), (1024, 32000), (8192, 64000)],
    }


CE_VOCAB_START = 7  # the checks' logits are a shard holding ids [7, 7 + cols)


def make_inputs(torch, op, shape, dtype, dev, gen):
    """(differentiable inputs, constants) for one op and shape."""
    def rnd(*s, scale=1.0):
        return (torch.randn(*s, device=dev, generator=gen) * scale).to(dtype)

    if op in ("rmsnorm", "add_rmsnorm"):
        w = (1 + 0.1 * torch.randn(shape[-1], device=dev, generator=gen)).to(dtype)
        xs = [rnd(*shape, scale=2.0)] + ([rnd(*shape)] if op == "add_rmsnorm" else []) + [w]
        return xs, {}
    if op == "swiglu":
        return [rnd(*shape, scale=3.0), rnd(*shape)], {}
    if op == "rope":
        (b, s, h, d), kv = shape
        from snowtrain.kernels.reference import rope_cos_sin
        cos, sin = rope_cos_sin(s, d, 10000.0, device=dev)
        return [rnd(b, s, h, d), rnd(b, s, kv, d)], {"cos": cos, "sin": sin}
    if op == "cross_entropy":
        rows, cols = shape
        # ids on both sides of the shard [7, 7 + cols) and the ignore index -100 (rows the
        # caller masks out of the loss)
        target = torch.randint(0, cols + 2 * CE_VOCAB_START, (rows,), device=dev, generator=gen)
        target[::7] = -100
        return [rnd(rows, cols, scale=4.0)], {"target": target, "vocab_start": CE_VOCAB_START}
    raise ValueError(op)


def run_op(op, impl, xs, consts):
    """impl: 'fused' (snowtrain.kernels with the fused backend on CUDA; on CPU the operators'
    CPU implementations, snowtrain.kernels.ops), or a module offering the reference functions."""
    from snowtrain import kernels
    from snowtrain.kernels import ops
    mod = (kernels if xs[0].is_cuda else ops) if impl == "fused" else impl
    if op == "rmsnorm":
        return [mod.rmsnorm(xs[0], xs[1], 1e-5)]
    if op == "add_rmsnorm":
        return list(mod.add_rmsnorm(xs[0], xs[1], xs[2], 1e-5))
    if op == "swiglu":
        return [mod.swiglu(xs[0], xs[1])]
    if op == "rope":
        return list(mod.apply_rope_qk(xs[0], xs[1], consts["cos"], consts["sin"]))
    if op == "cross_entropy":
        return [mod.vocab_parallel_cross_entropy(xs[0], consts["target"], consts["vocab_start"])]
    raise ValueError(op)


def f64_reference(torch, op, xs, consts):
    """float64 math written here (not the reference module), on the same device."""
    x = [t.detach().double().requires_grad_() for t in xs]
    if op in ("rmsnorm", "add_rmsnorm"):
        h = x[0] + x[1] if op == "add_rmsnorm" else x[0]
        w = x[-1]
        y = h / torch.sqrt(h.pow(2).mean(-1, keepdim=True) + 1e-5) * w
        outs = [y, h] if op == "add_rmsnorm" else [y]
    elif op == "swiglu":
        outs = [x[0] * torch.sigmoid(x[0]) * x[1]]
    elif op == "rope":
        c, s = consts["cos"].double(), consts["sin"].double()

        def rot(t):
            half = t.shape[-1] // 2
            a, b = t[..., :half], t[..., half:]
            return torch.cat([-b, a], -1)
        outs = [t * c[None, :, None] + rot(t) * s[None, :, None] for t in x]
    elif op == "cross_entropy":
        logits = x[0]
        local = consts["target"] - consts["vocab_start"]
        inside = (local >= 0) & (local < logits.shape[-1])
        picked = logits.gather(-1, local.clamp(0, logits.shape[-1] - 1)[:, None]).squeeze(-1)
        # a target outside the shard picks the (constant) row max: loss = log sum exp(x - max)
        rmax = logits.detach().amax(-1)
        outs = [torch.logsumexp(logits, -1) - torch.where(inside, picked, rmax)]
    return x, outs


def poison_cache(torch, sizes_bytes):
    """Fill the caching allocator with 0xFF blocks (NaN as bf16 and as fp32) of these sizes, then
    free them: the next allocations of those sizes likely reuse them, so an output element a
    kernel leaves unwritten shows up as NaN."""
    if not torch.cuda.is_available():
        return
    blocks = [torch.full((max(1, n),), 255, dtype=torch.uint8, device="cuda") for n in sizes_bytes]
    del blocks


def check_op(torch, op, shape, dtype, dev, seed) -> dict:
    gen = torch.Generator(device=dev).manual_seed(seed)
    xs, consts = make_inputs(torch, op, shape, dtype, dev, gen)
    xs = [t.requires_grad_() for t in xs]
    x64, outs64 = f64_reference(torch, op, xs, consts)
    grads_up = [torch.randn(o.shape, device=dev, generator=gen).to(torch.float32 if op == "cross_entropy" else dtype)
                for o in outs64]
    nbytes = [t.numel() * t.element_size() for t in xs] * 3
    poison_cache(torch, nbytes)
    outs = run_op(op, "fused", xs, consts)
    poison_cache(torch, nbytes)
    grads = torch.autograd.grad(outs, xs, grads_up)
    grads64 = torch.autograd.grad(outs64, x64, [g.double() for g in grads_up])
    tol = 1e-2 if dtype == torch.bfloat16 else 1e-5
    rec = {"op": op, "shape": str(shape), "dtype": str(dtype).replace("torch.", ""), "errors": {}, "ok": True}
    for kind, got_list, want_list in (("fwd", outs, outs64), ("bwd", grads, grads64)):
        for i, (got, want) in enumerate(zip(got_list, want_list)):
            nan = int(torch.isnan(got).sum().item())
            err = ((got.double() - want).norm() / want.norm().clamp_min(1e-30)).item()
            rec["errors"][f"{kind}{i}"] = {"rel": err, "nan": nan}
            if nan or not err < tol or got.dtype != (torch.float32 if op == "cross_entropy" and kind == "fwd" else dtype):
                rec["ok"] = False
    return rec


def run_checks(torch, args, dev, results, save) -> None:
    results["checks"] = checks = []
    seed = 100
    for op, shapes in op_cases(args.smoke).items():
        for shape in shapes:
            for dtype in (torch.bfloat16, torch.float32) if shape == shapes[0] else (torch.bfloat16,):
                seed += 1
                try:
                    rec = check_op(torch, op, shape, dtype, dev, seed)
                except Exception as e:  # noqa: BLE001
                    rec = {"op": op, "shape": str(shape), "dtype": str(dtype).replace("torch.", ""),
                           "ok": False, "errors": {}, "exception": f"{type(e).__name__}: {e}"}
                    results["errors"].append(f"check {op} {shape}: {traceback.format_exc(limit=4)}")
                checks.append(rec)
                worst = max((v["rel"] for v in rec["errors"].values()), default=float("nan"))
                log(f"  {op:14s} {str(shape):22s} {rec['dtype']:9s} worst rel {worst:.2e} "
                    f"{'ok' if rec['ok'] else 'FAILED ' + rec.get('exception', '')}")
                save()
        free_memory(torch)


def time_op(torch, op, shape, dev, args, which: tuple, res: dict) -> dict:
    """Times the implementations in `which` ("fused", "eager", "compile"); fills `res` as it
    goes (a timeout keeps what was measured) and the speedups of what it holds."""
    from snowtrain.kernels import reference
    gen = torch.Generator(device=dev).manual_seed(1)
    dtype = torch.bfloat16
    xs, consts = make_inputs(torch, op, shape, dtype, dev, gen)
    if op == "cross_entropy":  # time the model's case: every target in the (only) shard
        consts = {"target": torch.randint(0, shape[1], (shape[0],), device=dev, generator=gen),
                  "vocab_start": 0}
    xs = [t.requires_grad_() for t in xs]
    with torch.no_grad():
        outs = run_op(op, reference, xs, consts)
    ups = [torch.randn_like(o, dtype=torch.float32 if op == "cross_entropy" else dtype) for o in outs]
    del outs

    def fwd(impl):
        return lambda: run_op(op, impl, xs, consts)

    def fwd_bwd(impl):
        def f():
            o = run_op(op, impl, xs, consts)
            torch.autograd.grad(o, xs, ups)
        return f

    impls = {k: v for k, v in (("fused", "fused"), ("eager", reference)) if k in which}
    if "compile" in which:
        class Compiled:  # the reference functions under torch.compile
            pass
        for name in ("rmsnorm", "add_rmsnorm", "swiglu", "apply_rope_qk", "vocab_parallel_cross_entropy"):
            setattr(Compiled, name, staticmethod(torch.compile(getattr(reference, name))))
        impls["compile"] = Compiled
    for name, impl in impls.items():
        try:
            for phase, make in (("fwd", fwd), ("fwd_bwd", fwd_bwd)):
                fn = make(impl)
                with torch.no_grad() if phase == "fwd" else contextlib.nullcontext():
                    if name == "compile":  # the first call compiles: time it apart
                        t0 = time.perf_counter()
                        fn()
                        sync(torch)
                        res[f"compile_{phase}_first_call_s"] = round(time.perf_counter() - t0, 1)
                    res[f"{name}_{phase}"] = timer(torch, fn, args.iters, args.warmup)
        except Exception as e:  # noqa: BLE001 - report and go on
            res[f"{name}_error"] = f"{type(e).__name__}: {e}"[:2000]
    for phase in ("fwd", "fwd_bwd"):
        f = res.get(f"fused_{phase}", {}).get("median_ms")
        for other in ("eager", "compile"):
            o = res.get(f"{other}_{phase}", {}).get("median_ms")
            if f and o:
                res[f"speedup_vs_{other}_{phase}"] = o / f
    return res


def run_timings(torch, args, dev, results, limit_s: float, save) -> None:
    """Fused and eager for every op first (seconds), then torch.compile of the references op
    by op (~10-30 s each, two graphs) while time is left, so a short section still has them all."""
    results["timings"] = timings = []
    start = time.monotonic()
    cases = list(op_cases(args.smoke).items())

    def one(op, shape, which, t):
        try:
            time_op(torch, op, shape, dev, args, which, t)
        except Exception as e:  # noqa: BLE001
            t["error"] = f"{type(e).__name__}: {e}"
            results["errors"].append(f"timing {op}: {traceback.format_exc(limit=4)}")
        free_memory(torch)
        save()

    for op, shapes in cases:
        t = {"op": op, "shape": str(shapes[-1])}
        timings.append(t)
        one(op, shapes[-1], ("fused", "eager"), t)
        log(f"  {op:14s} fwd+bwd fused {fmt_ms(t.get('fused_fwd_bwd'))} ms, eager "
            f"{fmt_ms(t.get('eager_fwd_bwd'))} ms")
    if args.skip_compile:
        return
    for (op, shapes), t in zip(cases, timings):
        if limit_s - (time.monotonic() - start) < 30:
            t["compile_skipped"] = "not enough time left"
            continue
        one(op, shapes[-1], ("compile",), t)
        log(f"  {op:14s} fwd+bwd torch.compile {fmt_ms(t.get('compile_fwd_bwd'))} ms")


# ------------------------------------------------------------------------------ 1.3B model

def load_model_config(path: str, seq: int, smoke: bool):
    import yaml
    from snowtrain.config import ModelConfig, config_from_dict
    data = yaml.safe_load(Path(path).read_text())
    cfg = config_from_dict(data, ModelConfig, file=path)
    if smoke:
        cfg = ModelConfig(num_layers=2, hidden_size=64, ffn_hidden_size=176, num_attention_heads=4,
                          vocab_size=512, max_seq_len=seq)
    cfg.max_seq_len = max(cfg.max_seq_len, seq)
    return cfg


def peak_tflops(torch, args) -> float:
    if args.peak_tflops:
        return args.peak_tflops
    name = torch.cuda.get_device_name().lower() if torch.cuda.is_available() else ""
    return next((peak for key, peak in PEAKS if key in name), PEAK_TFLOPS)


def flops_per_token(cfg, seq: int) -> float:
    from snowtrain.model.llama import count_parameters
    return 6.0 * count_parameters(cfg) + 12.0 * cfg.num_layers * cfg.hidden_size * seq


def model_steps(torch, args, dev, fused_ok: bool, out: dict, save) -> dict:
    """Fills `out` as it goes (a timeout keeps what was measured)."""
    from snowtrain import kernels
    from snowtrain.config import RunConfig
    from snowtrain.model import Llama
    from snowtrain.model.llama import count_parameters
    from snowtrain.optim import DistributedOptimizer
    from snowtrain.step import train_step

    seq = args.seq
    mcfg = load_model_config(args.model_config, seq, args.smoke)
    dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    run_cfg = RunConfig(model=mcfg)
    run_cfg.precision.compute_dtype = "bf16" if dtype == torch.bfloat16 else "fp32"
    out.update({"model_config": args.model_config, "seq_len": seq, "micro_batch": 1,
                "params": count_parameters(mcfg), "flops_per_token": flops_per_token(mcfg, seq),
                "peak_tflops": peak_tflops(torch, args), "dtype": str(dtype).replace("torch.", ""), "runs": {}})
    backends = ("torch", "fused") if fused_ok else ("torch",)
    if not fused_ok:
        out["note"] = "the extension is not loaded: torch kernels only"
    gen = torch.Generator(device="cpu").manual_seed(0)
    tokens = torch.randint(0, mcfg.vocab_size, (1, seq + 1), generator=gen)
    mb = {"tokens": tokens[:, :-1].contiguous(), "labels": tokens[:, 1:].contiguous(),
          "loss_mask": torch.ones(1, seq, dtype=torch.float32)}
    on_dev = {k: v.to(dev) for k, v in mb.items()}
    ckpt_choices = {"auto": [False, True], "on": [True], "off": [False]}[args.checkpointing]
    model = opt = None
    try:
        t0 = time.perf_counter()
        model = Llama(mcfg, seed=1234, dtype=dtype, device=dev)
        out["init_s"] = round(time.perf_counter() - t0, 1)
        # the same weights, one forward per backend: the losses must agree
        out["loss_same_weights"] = {}
        for backend in backends:
            kernels.configure(backend, strict=backend == "fused" and dev.type == "cuda")
            try:
                with torch.no_grad():
                    loss, n = model(on_dev["tokens"], on_dev["labels"], on_dev["loss_mask"])
                out["loss_same_weights"][backend] = (loss / n).item()
            except Exception as e:  # noqa: BLE001 - the torch steps are still worth having
                if backend == "torch" or isinstance(e, torch.cuda.OutOfMemoryError):
                    raise
                out["fused_error"] = f"{type(e).__name__}: {e}"[:2000]
                log(f"  the fused forward failed, torch kernels only: {out['fused_error']}")
                backends = ("torch",)
        log(f"  loss on the same weights: {out['loss_same_weights']}")
        save()
        opt = DistributedOptimizer(model, run_cfg)
        for ckpt in ckpt_choices:
            try:
                mcfg.activation_checkpointing = ckpt
                out["activation_checkpointing"] = ckpt
                out["runs"] = {}
                # eager first; then each block under torch.compile (model.compile), which needs
                # its first steps to compile and is cut short first when time runs out
                variants = [(b, False) for b in backends]
                if not args.skip_compile:
                    variants += [(b, True) for b in reversed(backends)]  # fused first
                for backend, compiled in variants:
                    name = backend + (" + compile" if compiled else "")
                    kernels.configure(backend, strict=backend == "fused" and dev.type == "cuda")
                    if compiled and not getattr(model.layers[0], "_compiled_call_impl", None):
                        for block in model.layers:
                            block.compile()
                    if dev.type == "cuda":
                        torch.cuda.reset_peak_memory_stats()
                    t_warm = time.perf_counter()
                    for _ in range(args.warmup_steps):
                        train_step(model, opt, [mb], lr=1e-5)
                    sync(torch)
                    warm_s = time.perf_counter() - t_warm
                    times, losses = [], []
                    for _ in range(args.steps):
                        t = time.perf_counter()
                        r = train_step(model, opt, [mb], lr=1e-5)
                        sync(torch)
                        times.append(time.perf_counter() - t)
                        losses.append(r.loss)
                    step_s = statistics.median(times)
                    tps = seq / step_s
                    run = out["runs"][name] = {
                        "step_s": step_s, "tokens_per_s": tps, "warmup_s": round(warm_s, 1),
                        "mfu": tps * out["flops_per_token"] / (out["peak_tflops"] * 1e12),
                        "loss_first": losses[0], "loss_last": losses[-1],
                        "max_memory_gib": (torch.cuda.max_memory_allocated() / 2**30) if dev.type == "cuda" else None,
                    }
                    fb = timer(torch, lambda: model(on_dev["tokens"], on_dev["labels"],
                                                    on_dev["loss_mask"])[0].backward(),
                               max(2, args.steps // 2), 1)
                    opt.zero_grad()
                    run["fwd_bwd_ms"] = fb["median_ms"]
                    log(f"  1.3B {name:15s}: {step_s * 1e3:8.1f} ms/step, {tps:9.0f} tokens/s, "
                        f"MFU {run['mfu'] * 100:5.1f}%, fwd+bwd {fb['median_ms']:.1f} ms, "
                        f"max memory {run['max_memory_gib'] or 0:.1f} GiB")
                    save()
                break
            except torch.cuda.OutOfMemoryError as e:
                log(f"  out of memory with activation_checkpointing={ckpt}: {str(e).splitlines()[0]}")
                out[f"oom_checkpointing_{ckpt}"] = True
                model.zero_grad(set_to_none=True)
                free_memory(torch)
    finally:
        kernels.configure("fused", strict=dev.type == "cuda")
        model = opt = None
        free_memory(torch)
    return out


def sync(torch):
    if torch.cuda.is_available():
        torch.cuda.synchronize()


# --------------------------------------------------------------------------- megatron-core

def sdpa_core_attention_class(torch):
    """A core-attention module for megatron-core's layer spec that runs torch's fused
    scaled_dot_product_attention (causal; flash attention on a GPU) in place of the local spec's
    DotProductAttention, which materialises [b, heads, s, s] scores. Same interface: q, k, v
    [s, b, heads (or groups), head_dim] in, [s, b, heads * head_dim] out."""
    import torch.nn.functional as F

    class SDPACoreAttention(torch.nn.Module):
        def __init__(self, config, layer_number, attn_mask_type, attention_type,
                     attention_dropout=None, softmax_scale=None, cp_comm_type=None,
                     pg_collection=None, **_unused):
            super().__init__()
            self.config = config
            self.softmax_scale = softmax_scale

        def forward(self, query, key, value, attention_mask, attn_mask_type=None,
                    attention_bias=None, packed_seq_params=None):
            assert attention_bias is None and packed_seq_params is None
            q, k, v = (t.permute(1, 2, 0, 3) for t in (query, key, value))  # [b, h, s, d]
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=self.softmax_scale,
                                                 enable_gqa=k.shape[1] != q.shape[1])
            return out.permute(2, 0, 1, 3).reshape(query.shape[0], query.shape[1], -1)

    return SDPACoreAttention


def megatron_baseline(torch, args, dev, out: dict, save=lambda: None) -> dict:
    """GPTModel at the 1.3B shape, bf16 weights (as megatron's Float16Module makes them), local
    spec with SDPA core attention; on CPU (smoke) it is only built and its attention checked."""
    try:
        import megatron.core
    except Exception as e:  # noqa: BLE001
        out["skipped"] = f"megatron-core is not importable ({type(e).__name__}: {e})"
        return out
    import torch.distributed as dist
    import torch.nn.functional as F
    from megatron.core import parallel_state
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
    from megatron.core.models.gpt.gpt_model import GPTModel
    from megatron.core.tensor_parallel.random import model_parallel_cuda_manual_seed
    from megatron.core.transformer.transformer_config import TransformerConfig

    out["version"] = getattr(megatron.core, "__version__", None)
    mcfg = load_model_config(args.model_config, args.seq, args.smoke)
    seq = args.seq
    if not dist.is_initialized():
        out["backend"] = _init_one_rank(torch, dist, dev, out)
    # no teardown: destroying an NCCL group can hang in C code, and this process ends anyway
    parallel_state.initialize_model_parallel(tensor_model_parallel_size=1,
                                             pipeline_model_parallel_size=1)
    if dev.type == "cuda":
        model_parallel_cuda_manual_seed(1234)
    dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    tokens = torch.randint(0, mcfg.vocab_size, (1, seq), device=dev)
    labels = torch.randint(0, mcfg.vocab_size, (1, seq), device=dev)
    position_ids = torch.arange(seq, device=dev)[None]
    mask = torch.triu(torch.ones(1, 1, seq, seq, dtype=torch.bool, device=dev), diagonal=1)
    sdpa = sdpa_core_attention_class(torch)
    out["sdpa_check_max_error"] = _check_sdpa_core_attention(torch, sdpa, dev)

    def spec(core: str):
        s = get_gpt_layer_local_spec(normalization="RMSNorm")
        if core == "sdpa":
            s.submodules.self_attention.submodules.core_attention = sdpa
        return s

    # SDPA first (no [s, s] scores: try without recomputation); the stock local spec's unfused
    # attention keeps ~6 GiB of scores a layer at seq 8192, so it is recomputed
    attempts = [("sdpa", None), ("sdpa", "selective"), ("local", "selective"), ("local", "full")]
    for core, recompute in attempts:
        model = None
        try:
            extra = {}
            if recompute == "selective":
                extra = dict(recompute_granularity="selective")
            elif recompute == "full":
                extra = dict(recompute_granularity="full", recompute_method="uniform",
                             recompute_num_layers=1)
            cfg = TransformerConfig(
                num_layers=mcfg.num_layers, hidden_size=mcfg.hidden_size,
                ffn_hidden_size=mcfg.ffn_hidden_size, num_attention_heads=mcfg.num_attention_heads,
                num_query_groups=mcfg.kv_heads, kv_channels=mcfg.head_dim,
                normalization="RMSNorm", layernorm_epsilon=mcfg.norm_eps, gated_linear_unit=True,
                activation_func=F.silu, add_bias_linear=False, hidden_dropout=0.0,
                attention_dropout=0.0, init_method_std=mcfg.init_std, params_dtype=dtype,
                bf16=dtype == torch.bfloat16, pipeline_dtype=dtype,
                use_cpu_initialization=dev.type != "cuda", **extra)
            model = GPTModel(config=cfg, transformer_layer_spec=spec(core),
                             vocab_size=mcfg.vocab_size, max_sequence_length=seq,
                             share_embeddings_and_output_weights=mcfg.tie_embeddings,
                             position_embedding_type="rope", rotary_base=int(mcfg.rope_theta))
            model = model.to(device=dev, dtype=dtype)  # the norms' weights too
            label = ("local spec, core attention: torch SDPA" if core == "sdpa"
                     else "local spec (unfused core attention)")
            out.update(spec=label, recompute=recompute or "none", seq_len=seq, micro_batch=1,
                       params=sum(p.numel() for p in model.parameters()))
            if dev.type != "cuda":
                out["fwd_bwd"] = "not run on CPU (megatron-core needs CUDA for it): model built"
                log(f"  megatron-core GPTModel built ({out['params']} parameters); no forward on CPU")
                break

            def fwd_bwd():
                loss = model(tokens, position_ids, mask, labels=labels)
                loss.float().mean().backward()
            torch.cuda.reset_peak_memory_stats()
            t = timer(torch, fwd_bwd, max(3, args.steps // 2), 1)
            out.update(fwd_bwd_ms=t["median_ms"], fwd_bwd=t,
                       max_memory_gib=torch.cuda.max_memory_allocated() / 2**30)
            save()
            log(f"  megatron-core GPTModel ({label}, recompute={out['recompute']}): fwd+bwd "
                f"{t['median_ms']:.1f} ms")
            break
        except torch.cuda.OutOfMemoryError as e:
            log(f"  megatron-core out of memory ({core}, recompute={recompute}): {str(e).splitlines()[0]}")
            out[f"oom_{core}_{recompute or 'none'}"] = True
        except Exception as e:  # noqa: BLE001 - the next attempt may still measure
            if core != "sdpa":
                raise
            out["sdpa_error"] = f"{type(e).__name__}: {e}"[:2000]
            log(f"  megatron-core with SDPA attention failed ({out['sdpa_error'][:300]}); "
                "trying the stock local spec")
        finally:
            model = None
            free_memory(torch)
    return out


def _check_sdpa_core_attention(torch, sdpa, dev) -> float:
    """The swapped-in attention against plain causal softmax attention (float32)."""
    s, b, h, d = 16, 2, 4, 8
    g = torch.Generator(device="cpu").manual_seed(0)
    q, k, v = (torch.randn(s, b, h, d, generator=g).to(dev) for _ in range(3))
    got = sdpa(None, 1, None, "self", softmax_scale=None)(q, k, v, None).float().cpu()
    qb, kb, vb = (t.permute(1, 2, 0, 3).double().cpu() for t in (q, k, v))
    scores = qb @ kb.transpose(-1, -2) / d ** 0.5
    scores = scores.masked_fill(torch.ones(s, s, dtype=torch.bool).triu(1), float("-inf"))
    want = (scores.softmax(-1) @ vb).permute(2, 0, 1, 3).reshape(s, b, h * d)
    err = (got.double() - want).abs().max().item()
    if err > 1e-3:
        raise AssertionError(f"the SDPA core attention differs from softmax attention by {err}")
    return err


def _init_one_rank(torch, dist, dev, out: dict) -> str:
    """A 1-rank process group: NCCL on a GPU, checked with one all-reduce (megatron's
    cross-entropy all-reduces even at TP=1), else gloo (which also reduces CUDA tensors)."""
    if dev.type == "cuda":
        torch.cuda.set_device(0)
    for backend in (("nccl", "gloo") if dev.type == "cuda" else ("gloo",)):
        try:
            dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{_free_port()}",
                                    rank=0, world_size=1)
            t = torch.ones(1, device=dev)
            dist.all_reduce(t)
            sync(torch)
            return backend
        except Exception as e:  # noqa: BLE001
            out[f"{backend}_error"] = f"{type(e).__name__}: {e}"[:1000]
            log(f"  process group with {backend} failed: {type(e).__name__}: {e}")
            with contextlib.suppress(Exception):
                dist.destroy_process_group()
    raise RuntimeError("no 1-rank process group could be made (nccl, gloo)")


def _free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ----------------------------------------------------------------------------------- report

def card_name(torch) -> str:
    if torch.cuda.is_available():
        name = torch.cuda.get_device_name()
    else:
        name = "cpu-" + platform.machine()
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def goals(results: dict) -> dict:
    g = {}
    checks = results.get("checks")
    if checks:
        g["every kernel matches float64 (fwd and bwd)"] = all(c["ok"] for c in checks)
    for t in results.get("timings", []):
        if "fused_fwd" not in t:
            continue
        g[f"{t['op']}: faster than eager"] = all(t.get(f"speedup_vs_eager_{p}", 0) > 1 for p in ("fwd", "fwd_bwd"))
        g[f"{t['op']}: no slower than torch.compile"] = (
            all(t.get(f"speedup_vs_compile_{p}", 0) >= 1 for p in ("fwd", "fwd_bwd"))
            if "compile_fwd_bwd" in t else None)
    runs = {k: v for k, v in results.get("model", {}).get("runs", {}).items() if "fused" in k}
    if runs:  # the best configuration with the fused kernels (eager or compiled)
        best = max(runs, key=lambda k: runs[k]["mfu"])
        g[f"1.3B {best}: MFU >= 45%"] = runs[best]["mfu"] >= MFU_GOAL
        mg = results.get("megatron", {}).get("fwd_bwd_ms")
        fb = runs[best].get("fwd_bwd_ms")
        g[f"1.3B {best}: fwd+bwd faster than megatron-core"] = (fb < mg) if (mg and fb) else None
    return g


def fmt_ms(d):
    return f"{d['median_ms']:.3f}" if isinstance(d, dict) and "median_ms" in d else "-"


def render_report(results: dict) -> str:
    L = [f"# snowtrain fused kernels on {results['card_name']} ({results['date']})", "",
         f"Command: `{results['command']}`  ",
         f"torch {results['torch']}, CUDA {results['cuda']}, Python {results['python']}, "
         f"build: {results.get('build', {}).get('method')} ({results.get('build', {}).get('seconds')} s)", ""]
    if results.get("sections"):
        L += ["Sections: " + ", ".join(f"{k} {v['status']} ({v.get('seconds', 0):.0f} s)"
                                       for k, v in results["sections"].items()), ""]
    if results.get("checks"):
        bad = [c for c in results["checks"] if not c["ok"]]
        L += ["## Correctness vs float64", "",
              f"{len(results['checks'])} checks (forward and backward, poisoned allocator), "
              f"{len(bad)} failed.", "", "| op | shape | dtype | worst rel. error | NaN | ok |",
              "| --- | --- | --- | --- | --- | --- |"]
        for c in results["checks"]:
            worst = max((v["rel"] for v in c["errors"].values()), default=float("nan"))
            nans = sum(v["nan"] for v in c["errors"].values())
            ok = "yes" if c["ok"] else f"**no** {c.get('exception', '')}"[:200]
            L.append(f"| {c['op']} | {c['shape']} | {c['dtype']} | {worst:.2e} | {nans} | {ok} |")
        L.append("")
    if results.get("timings"):
        L += ["## Kernel times (bf16, median ms of GPU time per run: CUDA events, L2 flushed, launches queued ahead)", "",
              "| op | shape | fused fwd | eager fwd | compile fwd | fused fwd+bwd | eager fwd+bwd | compile fwd+bwd | x eager | x compile |",
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for t in results["timings"]:
            se = t.get("speedup_vs_eager_fwd_bwd")
            sc = t.get("speedup_vs_compile_fwd_bwd")
            L.append(f"| {t['op']} | {t['shape']} | {fmt_ms(t.get('fused_fwd'))} | {fmt_ms(t.get('eager_fwd'))} | "
                     f"{fmt_ms(t.get('compile_fwd'))} | {fmt_ms(t.get('fused_fwd_bwd'))} | {fmt_ms(t.get('eager_fwd_bwd'))} | "
                     f"{fmt_ms(t.get('compile_fwd_bwd'))} | {f'{se:.2f}' if se else '-'} | {f'{sc:.2f}' if sc else '-'} |")
        errs = [f"- {t['op']}: {k} = {v}" for t in results["timings"] for k, v in t.items()
                if k.endswith("error") or k == "compile_skipped"]
        L += [""] + errs + ([""] if errs else [])
    m = results.get("model")
    if m and m.get("runs"):
        L += [f"## Training step: {Path(m['model_config']).name}, seq {m['seq_len']}, micro-batch 1, "
              f"{m['dtype']}, activation checkpointing {m.get('activation_checkpointing')}", "",
              f"N = {m['params'] / 1e9:.3f} B, FLOPs/token = 6N + 12 L h s = {m['flops_per_token'] / 1e9:.2f} G, "
              f"peak {m['peak_tflops']} TFLOP/s (12 L h s counts full attention, the usual convention; "
              f"causal attention executes half of it); loss of one forward on the same weights: "
              f"{m.get('loss_same_weights')}", "",
              "| kernels | step (ms) | tokens/s | MFU | fwd+bwd (ms) | max memory (GiB) | loss first / last | warm-up steps (s) |",
              "| --- | --- | --- | --- | --- | --- | --- | --- |"]
        for b, r in m["runs"].items():
            mem = f"{r['max_memory_gib']:.1f}" if r.get("max_memory_gib") else "-"
            fb = f"{r['fwd_bwd_ms']:.1f}" if r.get("fwd_bwd_ms") else "-"
            L.append(f"| {b} | {r['step_s'] * 1e3:.1f} | {r['tokens_per_s']:.0f} | {r['mfu'] * 100:.1f}% | "
                     f"{fb} | {mem} | {r['loss_first']:.4f} / {r['loss_last']:.4f} | {r.get('warmup_s', '-')} |")
        L.append("")
    mg = results.get("megatron")
    if mg:
        L += ["## Baseline: megatron-core GPTModel, same shape, bf16 weights", ""]
        if "fwd_bwd_ms" in mg:
            L.append(f"forward+backward {mg['fwd_bwd_ms']:.1f} ms (megatron-core {mg.get('version')}, "
                     f"{mg.get('spec')}, recompute: {mg['recompute']}, "
                     f"{mg['params'] / 1e9:.3f} B parameters, max memory {mg.get('max_memory_gib', 0):.1f} GiB)")
        else:
            L.append(f"not measured: {mg.get('skipped') or mg.get('error') or mg.get('fwd_bwd') or 'out of memory'}")
        L.append("")
    if results.get("goals"):
        L += ["## Goals", ""] + [f"- {k}: {'met' if v else ('not met' if v is False else 'n/a')}"
                                 for k, v in results["goals"].items()] + [""]
    if results.get("errors"):
        L += ["## Errors", ""] + [f"- {e}" for e in results["errors"]] + [""]
    return "\n".join(L)


def write_report(results: dict, out_dir: Path) -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = f"kernels-{results['card']}-{results['date']}"
    jpath, mpath = out_dir / f"{stem}.json", out_dir / f"{stem}.md"
    results["goals"] = goals(results)
    for path, text in ((jpath, json.dumps(results, indent=2, default=str) + "\n"),
                       (mpath, render_report(results))):
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(text)
        os.replace(tmp, path)
    return jpath, mpath


# ------------------------------------------------------------------------------------- main

# in running order: the 1.3B step and its baseline before the (compile-heavy) kernel timings
TITLES = {"checks": "checking every kernel against float64",
          "model": "training steps", "megatron": "megatron-core baseline",
          "timings": "timing kernels (fused / eager / torch.compile of the reference)"}


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    os.replace(tmp, path)


def run_section_body(args, name: str, limit: float, part: dict, save) -> str:
    """Run one section here, filling `part` (and calling save) as it goes; returns its status."""
    import torch
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    fused_ok = True
    if name != "megatron":  # (importing snowtrain.kernels imports torch._dynamo: ~2 s)
        from snowtrain import kernels
        if dev.type == "cuda":
            # the parent built the extension (cached on disk): load it, never rebuild here
            fused_ok = os.environ.get("SNOWTRAIN_BENCH_FUSED") == "1" and kernels.load_extension()
        kernels.configure("fused", strict=dev.type == "cuda")
    bodies = {
        "checks": lambda: run_checks(torch, args, dev, part, save),
        "timings": lambda: run_timings(torch, args, dev, part, limit, save),
        "model": lambda: model_steps(torch, args, dev, fused_ok, part.setdefault("model", {}), save),
        "megatron": lambda: megatron_baseline(torch, args, dev, part.setdefault("megatron", {}), save),
    }
    status = "ok"
    try:
        with time_limit(limit):
            bodies[name]()
    except SectionTimeout as e:
        status = f"timed out: {e}"
        part["errors"].append(f"{name}: {e}")
    except Exception as e:  # noqa: BLE001
        status = f"failed: {type(e).__name__}: {e}"[:500]
        part["errors"].append(f"{name}: {traceback.format_exc(limit=6)}")
        if name == "megatron":
            part["megatron"]["error"] = f"{type(e).__name__}: {e}"[:2000]
    with contextlib.suppress(Exception):
        free_memory(torch)
    save()
    return status


def section_main(args) -> int:
    """One section in this (child) process; its results go to --part-file as they come."""
    faulthandler.enable()  # a crash or a hang (dumped before the parent's kill) shows where
    faulthandler.dump_traceback_later(args.section_limit + 10, exit=False)
    part = {"errors": []}
    path = Path(args.part_file)
    part["status"] = run_section_body(args, args.section, args.section_limit, part,
                                      lambda: _write_json(path, part))
    _write_json(path, part)
    return 0 if part["status"] == "ok" else 1


def _merge(name: str, part: dict, status: str, results: dict) -> str:
    results["errors"] += part.pop("errors", [])
    part.pop("status", None)
    results.update(part)
    if status != "ok" and name == "megatron" and "megatron" in results:
        results["megatron"].setdefault("error", status)
    if status != "ok" and not any(e.startswith(name) for e in results["errors"]):
        results["errors"].append(f"{name}: {status}")
    return status


def run_section(name: str, args, argv: list[str], limit: float, results: dict) -> str:
    """Run one section in a child process (a kernel fault poisons its CUDA context, a hang in C
    code ignores signals): soft limit inside the child, hard kill 20 s later; merge its part.
    Without isolation (--smoke), in this process."""
    if not isolate(args):
        part = {"errors": []}
        return _merge(name, part, run_section_body(args, name, limit, part, lambda: None), results)
    part_file = Path(tempfile.mkdtemp(prefix="bench_kernels_")) / f"{name}.json"
    cmd = [sys.executable, str(Path(__file__).resolve()), *argv, "--section", name,
           "--part-file", str(part_file), "--section-limit", f"{limit:.0f}"]
    try:
        rc = subprocess.run(cmd, timeout=limit + 20).returncode
        status = None
    except subprocess.TimeoutExpired:
        rc, status = None, f"killed after {limit + 20:.0f} s"
    part = {}
    if part_file.exists():
        try:
            part = json.loads(part_file.read_text())
        except ValueError as e:
            results["errors"].append(f"{name}: unreadable results ({e})")
    status = status or part.get("status") or f"the child exited with {rc} (a signal if < 0)"
    return _merge(name, part, status, results)


def isolate(args) -> bool:
    return args.isolate == "on" or (args.isolate == "auto" and not args.smoke)


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.smoke:
        args.iters, args.warmup = min(args.iters, 3), min(args.warmup, 1)
        args.steps, args.warmup_steps = min(args.steps, 2), min(args.warmup_steps, 1)
        args.seq = min(args.seq, 32)
    if args.section:
        return section_main(args)
    t_start = time.monotonic()
    faulthandler.enable()
    import torch

    if not torch.cuda.is_available() and not args.smoke:
        print(f"bench_kernels_gpu.py needs a CUDA GPU: torch {torch.__version__} "
              f"(CUDA {torch.version.cuda}) sees none. Run it on a GPU machine; "
              f"--smoke runs tiny shapes on CPU to check the script itself.", file=sys.stderr)
        return 2
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")

    now = _dt.datetime.now()
    results = {
        "card": card_name(torch),
        "card_name": torch.cuda.get_device_name() if dev.type == "cuda" else platform.processor() or "cpu",
        "date": now.strftime("%Y-%m-%d"), "time": now.isoformat(timespec="seconds"),
        "command": " ".join(shlex.quote(a) for a in [sys.executable, *sys.argv]),
        "torch": torch.__version__, "cuda": torch.version.cuda, "python": platform.python_version(),
        "smoke": args.smoke, "budget_s": args.budget_s, "sections": {}, "errors": [],
    }
    writing = not args.smoke or args.write

    def save():
        if writing:
            try:
                write_report(results, Path(args.out_dir))
            except Exception as e:  # noqa: BLE001
                log(f"  could not write the report: {type(e).__name__}: {e}")

    log(f"torch {torch.__version__} (CUDA {torch.version.cuda}) on {results['card_name']}, "
        f"python {platform.python_version()}, budget {args.budget_s:.0f} s, results in {args.out_dir}")
    if dev.type == "cuda":
        log(f"building the extension for {results['card_name']} (limit {BUILD_LIMIT_S} s) ...")
        results["build"] = {"method": "in progress"}
        save()
        t0 = time.monotonic()
        try:
            with time_limit(BUILD_LIMIT_S):
                results["build"] = build_extension(torch, args.verbose_build)
        except (Exception, SectionTimeout) as e:  # noqa: BLE001
            results["build"] = {"error": f"{type(e).__name__}: {e}"}
        results["sections"]["build"] = {"status": "failed" if results["build"].get("error") else "ok",
                                        "seconds": time.monotonic() - t0}
        if results["build"].get("error"):
            log(f"  the extension did not build:\n{results['build']['error']}")
            results["errors"].append(f"build: {results['build']['error']}")
        else:
            log(f"  built in {results['build']['seconds']} s ({results['build']['method']})")
    else:
        results["build"] = {"method": "none (smoke run on CPU: the ops' CPU implementations)"}
    fused_ok = dev.type != "cuda" or results["build"].get("error") is None
    os.environ["SNOWTRAIN_BENCH_FUSED"] = "1" if fused_ok else "0"
    save()

    todo = {"checks": not args.skip_checks and fused_ok, "timings": not args.skip_timing and fused_ok,
            "model": not args.skip_model, "megatron": not args.skip_megatron}
    names = list(TITLES)
    for i, name in enumerate(names):
        if not todo[name]:
            continue
        cap, least = SECTIONS[name]
        later = sum(SECTIONS[n][1] + STARTUP_S for n in names[i + 1:] if todo[n])
        limit = min(cap, args.budget_s - (time.monotonic() - t_start) - later)
        if args.smoke:
            limit = max(limit, 120.0)
        if limit < least:
            results["sections"][name] = {"status": "skipped: out of time", "seconds": 0}
            log(f"{TITLES[name]}: skipped, {limit:.0f} s left for it")
            save()
            continue
        log(f"{TITLES[name]} (limit {limit:.0f} s) ...")
        t0 = time.monotonic()
        status = run_section(name, args, argv, limit, results)
        results["sections"][name] = {"status": status, "seconds": time.monotonic() - t0}
        if status != "ok":
            log(f"  {name}: {status}")
        save()

    results["total_s"] = round(time.monotonic() - t_start, 1)
    results["goals"] = goals(results)
    save()
    print("\n" + "=" * 100 + "\n" + render_report(results) + "\n" + "=" * 100, flush=True)
    if writing:
        log(f"wrote the report to {args.out_dir} ({results['total_s']} s in all)")
    failed = [c for c in results.get("checks", []) if not c["ok"]]
    return 1 if failed or results["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
