#!/usr/bin/env python3
"""snowtrain's fused CUDA kernels on one GPU, in one run of a few minutes:

1. build: the extension (csrc/) with torch.utils.cpp_extension.load (ninja; `pip install ninja`
   is tried when it is missing; without ninja, csrc/setup.py build_ext is used instead);
2. checks: every kernel against float64 references on fresh random inputs of several shapes,
   forward and backward, bf16 (and fp32): relative error (norm-wise) within 1e-2 for bf16, no
   NaN, and every output element written (the allocator's cache is filled with NaN first, so an
   element a kernel leaves unwritten shows up as NaN);
3. kernel timings at the 1.3B model's shapes (seq 8192, micro-batch 1): fused vs torch eager vs
   torch.compile of the reference, forward and forward+backward, median of many runs timed with
   CUDA events;
4. training steps of the 1.3B recipe model (configs/model/snowcoder-1.3b.yaml, seq 8192, bf16,
   micro-batch 1) with snowtrain's Llama + DistributedOptimizer + train_step, fused kernels off
   and on: tokens/s and MFU (FLOPs/token = 6N + 12 L h s, peak 989 TFLOP/s by default),
   activation checkpointing off if it fits, else on;
5. baseline: forward+backward of megatron-core's GPTModel (local layer spec) at the same shape.

Results: benchmarks/results/kernels-<card>-<date>.md and .json (card, date, command, all numbers,
and whether the goals were met: each fused kernel faster than eager and no slower than
torch.compile; the 1.3B step at >= 45% MFU and faster than the megatron-core baseline).

    python benchmarks/bench_kernels_gpu.py                 # everything (~3-6 minutes on an H100)
    python benchmarks/bench_kernels_gpu.py --skip-megatron --steps 5
    python benchmarks/bench_kernels_gpu.py --smoke         # tiny shapes, also on CPU: checks the script

Works from a plain copy of the repository (no `pip install -e .` needed): the repository root is
put on sys.path. Needs torch with CUDA, nvcc, pyyaml; megatron-core for the baseline (skipped,
with a note, when it is missing).
"""
from __future__ import annotations

import argparse
import datetime as _dt
import gc
import json
import os
import platform
import re
import shlex
import shutil
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

PEAK_TFLOPS = 989.0  # H100 SXM dense bf16
MFU_GOAL = 0.45


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-config", default=str(REPO / "configs/model/snowcoder-1.3b.yaml"),
                   help="model YAML for the training steps (default: the 1.3B recipe)")
    p.add_argument("--seq", type=int, default=8192, help="sequence length (default 8192)")
    p.add_argument("--steps", type=int, default=8, help="timed training steps per setting")
    p.add_argument("--warmup-steps", type=int, default=3, help="untimed training steps first")
    p.add_argument("--iters", type=int, default=100, help="timed runs per kernel measurement")
    p.add_argument("--warmup", type=int, default=10, help="untimed runs per kernel measurement")
    p.add_argument("--checkpointing", choices=("auto", "on", "off"), default="auto",
                   help="activation checkpointing of the 1.3B model: auto = off unless it OOMs")
    p.add_argument("--peak-tflops", type=float, default=PEAK_TFLOPS,
                   help=f"peak bf16 TFLOP/s for MFU (default {PEAK_TFLOPS}, H100 SXM)")
    p.add_argument("--skip-checks", action="store_true", help="skip the correctness checks")
    p.add_argument("--skip-timing", action="store_true", help="skip the kernel timings")
    p.add_argument("--skip-compile", action="store_true", help="do not time torch.compile")
    p.add_argument("--skip-model", action="store_true", help="skip the 1.3B training steps")
    p.add_argument("--skip-megatron", action="store_true", help="skip the megatron-core baseline")
    p.add_argument("--out-dir", default=str(REPO / "benchmarks/results"),
                   help="where kernels-<card>-<date>.md/.json go")
    p.add_argument("--smoke", action="store_true",
                   help="tiny shapes and few runs, allowed on CPU (checks the script, writes "
                        "nothing unless --write)")
    p.add_argument("--write", action="store_true", help="with --smoke: write the results anyway")
    p.add_argument("--verbose-build", action="store_true", help="show the compiler output")
    return p.parse_args(argv)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ---------------------------------------------------------------------------------- build

def ensure_ninja() -> bool:
    if shutil.which("ninja"):
        return True
    try:
        import ninja  # noqa: F401
        bindir = Path(ninja.BIN_DIR) if hasattr(ninja, "BIN_DIR") else None
        if bindir and (bindir / "ninja").exists():
            os.environ["PATH"] = f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}"
            return True
    except ImportError:
        pass
    log("ninja is missing: pip install ninja")
    try:
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "ninja"], check=True,
                       timeout=180)
    except (subprocess.SubprocessError, OSError) as e:
        log(f"  could not install ninja ({e})")
        return False
    scripts = Path(sys.executable).parent
    os.environ["PATH"] = f"{scripts}{os.pathsep}{os.environ.get('PATH', '')}"
    return shutil.which("ninja") is not None


def build_extension(torch, verbose: bool) -> dict:
    from snowtrain import kernels
    from snowtrain.kernels import build

    info = {"method": None, "seconds": None, "error": None}
    if not os.environ.get("TORCH_CUDA_ARCH_LIST") and torch.cuda.is_available():
        major, minor = torch.cuda.get_device_capability()
        os.environ["TORCH_CUDA_ARCH_LIST"] = f"{major}.{minor}"
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
    if not ok:
        info["error"] = kernels.extension_error()
    return info


# --------------------------------------------------------------------------------- timing

def timer(torch, fn, iters: int, warmup: int) -> dict:
    """Median (and quartiles) of `iters` runs of fn in milliseconds: CUDA events per run on a
    GPU, wall clock on CPU (smoke runs)."""
    for _ in range(warmup):
        fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        starts = [torch.cuda.Event(enable_timing=True) for _ in range(iters)]
        ends = [torch.cuda.Event(enable_timing=True) for _ in range(iters)]
        for s, e in zip(starts, ends):
            s.record()
            fn()
            e.record()
        torch.cuda.synchronize()
        times = [s.elapsed_time(e) for s, e in zip(starts, ends)]
    else:
        times = []
        for _ in range(iters):
            t = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t) * 1e3)
    q = statistics.quantiles(times, n=4) if len(times) > 1 else [times[0]] * 3
    return {"median_ms": statistics.median(times), "p25_ms": q[0], "p75_ms": q[2], "runs": len(times)}


# ------------------------------------------------------------------------------- op cases

def op_cases(torch, smoke: bool, dev):
    """Per op, shapes for the checks; the last one is the 1.3B model's (used for timing)."""
    if smoke:
        return {"rmsnorm": [(2, 64), (3, 5, 33)], "add_rmsnorm": [(2, 64)],
                "swiglu": [(2, 8, 40), (7,)], "rope": [((1, 8, 4, 16), 2), ((1, 5, 2, 10), 1)],
                "cross_entropy": [(16, 100), (5, 33)]}
    return {
        "rmsnorm": [(3, 7, 1000), (1, 33), (4096, 4096), (8192, 2048)],
        "add_rmsnorm": [(3, 7, 1000), (8192, 2048)],
        "swiglu": [(3, 1001), (1, 7), (8192, 5632)],
        "rope": [((1, 9, 3, 10), 1), ((2, 64, 8, 64), 2), ((1, 8192, 16, 128), 16)],
        "cross_entropy": [(5, 8), (37, 1001), (1024, 32000), (8192, 64000)],
    }


def make_inputs(torch, op, shape, dtype, dev, gen):
    """(differentiable inputs, constants, upstream gradients factory) for one op and shape."""
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
        target = torch.randint(0, cols, (rows,), device=dev, generator=gen)
        return [rnd(rows, cols, scale=4.0)], {"target": target}
    raise ValueError(op)


def run_op(op, impl, xs, consts):
    """impl: 'fused' (through snowtrain.kernels with the fused backend), or a module offering
    the reference functions (snowtrain.kernels.reference)."""
    from snowtrain import kernels
    mod = kernels if impl == "fused" else impl
    if op == "rmsnorm":
        return [mod.rmsnorm(xs[0], xs[1], 1e-5)]
    if op == "add_rmsnorm":
        return list(mod.add_rmsnorm(xs[0], xs[1], xs[2], 1e-5))
    if op == "swiglu":
        return [mod.swiglu(xs[0], xs[1])]
    if op == "rope":
        return list(mod.apply_rope_qk(xs[0], xs[1], consts["cos"], consts["sin"]))
    if op == "cross_entropy":
        return [mod.vocab_parallel_cross_entropy(xs[0], consts["target"])]
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
        lse = torch.logsumexp(logits, -1)
        outs = [lse - logits.gather(-1, consts["target"][:, None]).squeeze(-1)]
    return x, outs


def poison_cache(torch, sizes_bytes):
    """Fill the caching allocator with NaN blocks of these sizes, then free them: the next
    allocations of those sizes get NaN-filled memory, so unwritten output elements stay NaN."""
    if not torch.cuda.is_available():
        return
    blocks = [torch.full((max(1, n // 4),), float("nan"), device="cuda") for n in sizes_bytes]
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
            if nan or not err < tol:
                rec["ok"] = False
    return rec


def time_op(torch, op, shape, dev, args, compile_ok: bool) -> dict:
    from snowtrain.kernels import reference
    gen = torch.Generator(device=dev).manual_seed(1)
    dtype = torch.bfloat16
    xs, consts = make_inputs(torch, op, shape, dtype, dev, gen)
    xs = [t.requires_grad_() for t in xs]
    with torch.no_grad():
        outs = run_op(op, reference, xs, consts)
    ups = [torch.randn_like(o, dtype=torch.float32 if op == "cross_entropy" else dtype) for o in outs]
    res = {"op": op, "shape": str(shape)}

    def fwd(impl):
        return lambda: run_op(op, impl, xs, consts)

    def fwd_bwd(impl):
        def f():
            o = run_op(op, impl, xs, consts)
            torch.autograd.grad(o, xs, ups)
        return f

    impls = {"fused": "fused", "eager": reference}
    if compile_ok:
        class Compiled:  # the reference functions under torch.compile
            pass
        for name in ("rmsnorm", "add_rmsnorm", "swiglu", "apply_rope_qk", "vocab_parallel_cross_entropy"):
            setattr(Compiled, name, staticmethod(torch.compile(getattr(reference, name))))
        impls["compile"] = Compiled
    for name, impl in impls.items():
        try:
            with torch.no_grad():
                res[f"{name}_fwd"] = timer(torch, fwd(impl), args.iters, args.warmup)
            res[f"{name}_fwd_bwd"] = timer(torch, fwd_bwd(impl), args.iters, args.warmup)
        except Exception as e:  # noqa: BLE001 - report and go on
            res[f"{name}_error"] = f"{type(e).__name__}: {e}"
    for phase in ("fwd", "fwd_bwd"):
        f = res.get(f"fused_{phase}", {}).get("median_ms")
        for other in ("eager", "compile"):
            o = res.get(f"{other}_{phase}", {}).get("median_ms")
            if f and o:
                res[f"speedup_vs_{other}_{phase}"] = o / f
    return res


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


def flops_per_token(cfg, seq: int) -> float:
    from snowtrain.model.llama import count_parameters
    return 6.0 * count_parameters(cfg) + 12.0 * cfg.num_layers * cfg.hidden_size * seq


def model_steps(torch, args, dev) -> dict:
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
    out = {"model_config": args.model_config, "seq_len": seq, "micro_batch": 1,
           "params": count_parameters(mcfg), "flops_per_token": flops_per_token(mcfg, seq),
           "peak_tflops": args.peak_tflops, "dtype": str(dtype).replace("torch.", ""), "runs": {}}
    gen = torch.Generator(device="cpu").manual_seed(0)
    tokens = torch.randint(0, mcfg.vocab_size, (1, seq + 1), generator=gen)
    mb = {"tokens": tokens[:, :-1].contiguous(), "labels": tokens[:, 1:].contiguous(),
          "loss_mask": torch.ones(1, seq, dtype=torch.float32)}
    ckpt_choices = {"auto": [False, True], "on": [True], "off": [False]}[args.checkpointing]
    model = opt = None
    for ckpt in ckpt_choices:
        try:
            mcfg.activation_checkpointing = ckpt
            if model is None:
                model = Llama(mcfg, seed=1234, dtype=dtype, device=dev)
                opt = DistributedOptimizer(model, run_cfg)
            out["runs"] = {}
            for backend in ("torch", "fused"):
                kernels.configure(backend, strict=backend == "fused" and dev.type == "cuda")
                for _ in range(args.warmup_steps):
                    train_step(model, opt, [mb], lr=1e-5)
                sync(torch)
                times, losses = [], []
                for _ in range(args.steps):
                    t = time.perf_counter()
                    r = train_step(model, opt, [mb], lr=1e-5)
                    sync(torch)
                    times.append(time.perf_counter() - t)
                    losses.append(r.loss)
                on_dev = {k: v.to(dev) for k, v in mb.items()}
                fb = timer(torch, lambda: model(on_dev["tokens"], on_dev["labels"],
                                                on_dev["loss_mask"])[0].backward(),
                           max(2, args.steps), 1)
                model.zero_grad(set_to_none=True)
                step_s = statistics.median(times)
                tps = seq / step_s
                out["runs"][backend] = {
                    "step_s": step_s, "tokens_per_s": tps,
                    "mfu": tps * out["flops_per_token"] / (args.peak_tflops * 1e12),
                    "fwd_bwd_ms": fb["median_ms"], "loss_first": losses[0], "loss_last": losses[-1],
                    "max_memory_gib": (torch.cuda.max_memory_allocated() / 2**30) if dev.type == "cuda" else None,
                }
                log(f"  1.3B {backend:5s}: {step_s * 1e3:8.1f} ms/step, {tps:9.0f} tokens/s, "
                    f"MFU {out['runs'][backend]['mfu'] * 100:5.1f}%, fwd+bwd {fb['median_ms']:.1f} ms")
                if dev.type == "cuda":
                    torch.cuda.reset_peak_memory_stats()
            out["activation_checkpointing"] = ckpt
            break
        except torch.cuda.OutOfMemoryError as e:
            log(f"  out of memory with activation_checkpointing={ckpt}: {str(e).splitlines()[0]}")
            out[f"oom_checkpointing_{ckpt}"] = True
            if model is not None:
                model.zero_grad(set_to_none=True)
            gc.collect()
            torch.cuda.empty_cache()
    kernels.configure("fused", strict=dev.type == "cuda")
    model = opt = None
    gc.collect()
    if dev.type == "cuda":
        torch.cuda.empty_cache()
    return out


def sync(torch):
    if torch.cuda.is_available():
        torch.cuda.synchronize()


# --------------------------------------------------------------------------- megatron-core

def megatron_baseline(torch, args, dev) -> dict:
    try:
        import megatron.core  # noqa: F401  (is it there at all?)
    except Exception as e:  # noqa: BLE001
        return {"skipped": f"megatron-core is not importable ({type(e).__name__}: {e})"}
    import torch.distributed as dist
    import torch.nn.functional as F
    from megatron.core import parallel_state
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
    from megatron.core.models.gpt.gpt_model import GPTModel
    from megatron.core.tensor_parallel.random import model_parallel_cuda_manual_seed
    from megatron.core.transformer.transformer_config import TransformerConfig

    mcfg = load_model_config(args.model_config, args.seq, args.smoke)
    seq = args.seq
    if not dist.is_initialized():
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(_free_port()))
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo", rank=0, world_size=1)
    parallel_state.initialize_model_parallel(1, 1)
    if dev.type == "cuda":
        model_parallel_cuda_manual_seed(1234)
    dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    out = {"spec": "get_gpt_layer_local_spec(normalization='RMSNorm')", "seq_len": seq,
           "micro_batch": 1}
    tokens = torch.randint(0, mcfg.vocab_size, (1, seq), device=dev)
    labels = torch.randint(0, mcfg.vocab_size, (1, seq), device=dev)
    position_ids = torch.arange(seq, device=dev)[None]
    mask = torch.triu(torch.ones(1, 1, seq, seq, dtype=torch.bool, device=dev), diagonal=1)
    for recompute in (None, "selective", "full"):
        model = None
        try:
            extra = {}
            if recompute == "full":
                extra = dict(recompute_granularity="full", recompute_method="uniform", recompute_num_layers=1)
            elif recompute == "selective":
                extra = dict(recompute_granularity="selective")
            cfg = TransformerConfig(
                num_layers=mcfg.num_layers, hidden_size=mcfg.hidden_size,
                ffn_hidden_size=mcfg.ffn_hidden_size, num_attention_heads=mcfg.num_attention_heads,
                num_query_groups=mcfg.kv_heads, kv_channels=mcfg.head_dim,
                normalization="RMSNorm", layernorm_epsilon=mcfg.norm_eps, gated_linear_unit=True,
                activation_func=F.silu, add_bias_linear=False, hidden_dropout=0.0,
                attention_dropout=0.0, init_method_std=mcfg.init_std, params_dtype=dtype,
                bf16=dtype == torch.bfloat16, pipeline_dtype=dtype,
                use_cpu_initialization=dev.type != "cuda", **extra)
            model = GPTModel(config=cfg, transformer_layer_spec=get_gpt_layer_local_spec(normalization="RMSNorm"),
                             vocab_size=mcfg.vocab_size, max_sequence_length=seq,
                             share_embeddings_and_output_weights=mcfg.tie_embeddings,
                             position_embedding_type="rope", rotary_base=int(mcfg.rope_theta)).to(dev)

            def fwd_bwd():
                loss = model(tokens, position_ids, mask, labels=labels)
                loss.float().mean().backward()
            t = timer(torch, fwd_bwd, max(2, args.steps), 2)
            out.update(recompute=recompute or "none", fwd_bwd_ms=t["median_ms"],
                       params=sum(p.numel() for p in model.parameters()))
            log(f"  megatron-core GPTModel (local spec, recompute={recompute}): fwd+bwd {t['median_ms']:.1f} ms")
            break
        except torch.cuda.OutOfMemoryError as e:
            log(f"  megatron-core out of memory with recompute={recompute}: {str(e).splitlines()[0]}")
            out[f"oom_recompute_{recompute}"] = True
        finally:
            model = None
            gc.collect()
            if dev.type == "cuda":
                torch.cuda.empty_cache()
    parallel_state.destroy_model_parallel()
    return out


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
    for t in results.get("timings", []):
        ok_eager = all(t.get(f"speedup_vs_eager_{p}", 0) > 1 for p in ("fwd", "fwd_bwd"))
        ok_compile = (all(t.get(f"speedup_vs_compile_{p}", 0) >= 1 for p in ("fwd", "fwd_bwd"))
                      if "compile_fwd" in t else None)
        g[f"{t['op']}: faster than eager"] = ok_eager
        g[f"{t['op']}: no slower than torch.compile"] = ok_compile
    runs = results.get("model", {}).get("runs", {})
    if "fused" in runs:
        g["1.3B fused: MFU >= 45%"] = runs["fused"]["mfu"] >= MFU_GOAL
        mg = results.get("megatron", {}).get("fwd_bwd_ms")
        g["1.3B fused: fwd+bwd faster than megatron-core"] = (runs["fused"]["fwd_bwd_ms"] < mg) if mg else None
    return g


def fmt_ms(d):
    return f"{d['median_ms']:.3f}" if isinstance(d, dict) and "median_ms" in d else "-"


def write_report(results: dict, out_dir: Path) -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = f"kernels-{results['card']}-{results['date']}"
    jpath, mpath = out_dir / f"{stem}.json", out_dir / f"{stem}.md"
    jpath.write_text(json.dumps(results, indent=2, default=str) + "\n")
    L = [f"# snowtrain fused kernels on {results['card_name']} ({results['date']})", "",
         f"Command: `{results['command']}`  ",
         f"torch {results['torch']}, CUDA {results['cuda']}, build: {results['build'].get('method')} "
         f"({results['build'].get('seconds')} s)", ""]
    if results.get("checks"):
        bad = [c for c in results["checks"] if not c["ok"]]
        L += ["## Correctness vs float64", "",
              f"{len(results['checks'])} checks (forward and backward, NaN-poisoned allocator), "
              f"{len(bad)} failed.", "", "| op | shape | dtype | worst rel. error | NaN | ok |",
              "| --- | --- | --- | --- | --- | --- |"]
        for c in results["checks"]:
            worst = max(v["rel"] for v in c["errors"].values()) if c["errors"] else float("nan")
            nans = sum(v["nan"] for v in c["errors"].values())
            L.append(f"| {c['op']} | {c['shape']} | {c['dtype']} | {worst:.2e} | {nans} | {'yes' if c['ok'] else '**no**'} |")
        L.append("")
    if results.get("timings"):
        L += ["## Kernel times (bf16, median ms, CUDA events)", "",
              "| op | shape | fused fwd | eager fwd | compile fwd | fused fwd+bwd | eager fwd+bwd | compile fwd+bwd | x eager | x compile |",
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for t in results["timings"]:
            se = t.get("speedup_vs_eager_fwd_bwd")
            sc = t.get("speedup_vs_compile_fwd_bwd")
            L.append(f"| {t['op']} | {t['shape']} | {fmt_ms(t.get('fused_fwd'))} | {fmt_ms(t.get('eager_fwd'))} | "
                     f"{fmt_ms(t.get('compile_fwd'))} | {fmt_ms(t.get('fused_fwd_bwd'))} | {fmt_ms(t.get('eager_fwd_bwd'))} | "
                     f"{fmt_ms(t.get('compile_fwd_bwd'))} | {se and f'{se:.2f}'} | {sc and f'{sc:.2f}'} |")
        L.append("")
    m = results.get("model")
    if m and m.get("runs"):
        L += [f"## Training step: {Path(m['model_config']).name}, seq {m['seq_len']}, micro-batch 1, "
              f"{m['dtype']}, activation checkpointing {m.get('activation_checkpointing')}", "",
              f"N = {m['params'] / 1e9:.3f} B, FLOPs/token = 6N + 12 L h s = {m['flops_per_token'] / 1e9:.2f} G, "
              f"peak {m['peak_tflops']} TFLOP/s", "",
              "| kernels | step (ms) | tokens/s | MFU | fwd+bwd (ms) | max memory (GiB) |",
              "| --- | --- | --- | --- | --- | --- |"]
        for b, r in m["runs"].items():
            mem = f"{r['max_memory_gib']:.1f}" if r.get("max_memory_gib") else "-"
            L.append(f"| {b} | {r['step_s'] * 1e3:.1f} | {r['tokens_per_s']:.0f} | {r['mfu'] * 100:.1f}% | "
                     f"{r['fwd_bwd_ms']:.1f} | {mem} |")
        L.append("")
    mg = results.get("megatron")
    if mg:
        L += ["## Baseline: megatron-core GPTModel (local spec), same shape", ""]
        if "fwd_bwd_ms" in mg:
            L.append(f"forward+backward {mg['fwd_bwd_ms']:.1f} ms (recompute: {mg['recompute']}, "
                     f"{mg['params'] / 1e9:.3f} B parameters)")
        else:
            L.append(f"not measured: {mg.get('skipped') or mg.get('error') or 'out of memory'}")
        L.append("")
    if results.get("goals"):
        L += ["## Goals", ""] + [f"- {k}: {'met' if v else ('not met' if v is False else 'n/a')}"
                                 for k, v in results["goals"].items()] + [""]
    if results.get("errors"):
        L += ["## Errors", ""] + [f"- {e}" for e in results["errors"]] + [""]
    mpath.write_text("\n".join(L))
    return jpath, mpath


# ------------------------------------------------------------------------------------- main

def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    if not torch.cuda.is_available() and not args.smoke:
        print(f"bench_kernels_gpu.py needs a CUDA GPU: torch {torch.__version__} "
              f"(CUDA {torch.version.cuda}) sees none. Run it on a GPU machine; "
              f"--smoke runs tiny shapes on CPU to check the script itself.", file=sys.stderr)
        return 2
    if args.smoke:
        args.iters, args.warmup = min(args.iters, 3), min(args.warmup, 1)
        args.steps, args.warmup_steps = min(args.steps, 2), min(args.warmup_steps, 1)
        args.seq = min(args.seq, 32)
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    from snowtrain import kernels

    now = _dt.datetime.now()
    results = {
        "card": card_name(torch),
        "card_name": torch.cuda.get_device_name() if dev.type == "cuda" else platform.processor() or "cpu",
        "date": now.strftime("%Y-%m-%d"), "time": now.isoformat(timespec="seconds"),
        "command": " ".join(shlex.quote(a) for a in [sys.executable, *sys.argv]),
        "torch": torch.__version__, "cuda": torch.version.cuda, "python": platform.python_version(),
        "smoke": args.smoke, "errors": [],
    }
    if dev.type == "cuda":
        log(f"building the extension for {results['card_name']} ...")
        results["build"] = build_extension(torch, args.verbose_build)
        if results["build"].get("error"):
            print(f"the extension did not build: {results['build']['error']}", file=sys.stderr)
            results["errors"].append(f"build: {results['build']['error']}")
        else:
            log(f"  built in {results['build']['seconds']} s ({results['build']['method']})")
    else:
        results["build"] = {"method": "none (smoke run on CPU: the ops' CPU implementations)"}
    fused_ok = dev.type != "cuda" or kernels.extension_loaded()
    kernels.configure("fused", strict=dev.type == "cuda")
    cases = op_cases(torch, args.smoke, dev)

    if not args.skip_checks and fused_ok:
        log("checking every kernel against float64 ...")
        results["checks"] = []
        seed = 100
        for op, shapes in cases.items():
            for shape in shapes:
                for dtype in (torch.bfloat16, torch.float32) if shape == shapes[0] or len(shapes) == 1 else (torch.bfloat16,):
                    seed += 1
                    try:
                        rec = check_op(torch, op, shape, dtype, dev, seed)
                    except Exception as e:  # noqa: BLE001
                        rec = {"op": op, "shape": str(shape), "dtype": str(dtype), "ok": False,
                               "errors": {}, "exception": f"{type(e).__name__}: {e}"}
                        results["errors"].append(f"check {op} {shape}: {traceback.format_exc(limit=3)}")
                    results["checks"].append(rec)
                    worst = max((v["rel"] for v in rec["errors"].values()), default=float("nan"))
                    log(f"  {op:14s} {str(shape):22s} {rec.get('dtype', ''):9s} worst rel {worst:.2e} "
                        f"{'ok' if rec['ok'] else 'FAILED'}")
        if dev.type == "cuda":
            torch.cuda.empty_cache()

    if not args.skip_timing and fused_ok:
        log("timing kernels (fused / eager / torch.compile of the reference) ...")
        results["timings"] = []
        for op, shapes in cases.items():
            try:
                t = time_op(torch, op, shapes[-1], dev, args, compile_ok=not args.skip_compile)
            except Exception as e:  # noqa: BLE001
                t = {"op": op, "shape": str(shapes[-1]), "error": f"{type(e).__name__}: {e}"}
                results["errors"].append(f"timing {op}: {traceback.format_exc(limit=3)}")
            results["timings"].append(t)
            log(f"  {op:14s} fwd+bwd fused {fmt_ms(t.get('fused_fwd_bwd'))} ms, eager "
                f"{fmt_ms(t.get('eager_fwd_bwd'))} ms, compile {fmt_ms(t.get('compile_fwd_bwd'))} ms")
            if dev.type == "cuda":
                torch.cuda.empty_cache()

    if not args.skip_model and fused_ok:
        log(f"training steps of {Path(args.model_config).name} at seq {args.seq} ...")
        try:
            results["model"] = model_steps(torch, args, dev)
        except Exception as e:  # noqa: BLE001
            results["errors"].append(f"model: {traceback.format_exc(limit=5)}")
            log(f"  model steps failed: {type(e).__name__}: {e}")

    if not args.skip_megatron:
        log("megatron-core baseline ...")
        try:
            results["megatron"] = megatron_baseline(torch, args, dev)
        except Exception as e:  # noqa: BLE001
            results["megatron"] = {"error": f"{type(e).__name__}: {e}"}
            results["errors"].append(f"megatron: {traceback.format_exc(limit=5)}")
            log(f"  megatron baseline failed: {type(e).__name__}: {e}")

    results["goals"] = goals(results)
    if not args.smoke or args.write:
        jpath, mpath = write_report(results, Path(args.out_dir))
        log(f"wrote {mpath} and {jpath}")
    else:
        print(json.dumps(results["goals"], indent=2))
    failed = [c for c in results.get("checks", []) if not c["ok"]]
    return 1 if failed or results["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
