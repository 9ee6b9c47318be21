"""snowtrain's `fused` kernel backend end to end on the CPU: the `snowtrain_kernels` operators on
CPU tensors go through csrc/binding.cpp to the emulated kernels (build.build(torch_binding=True)),
and the dispatcher is told to accept CPU tensors. Used in its own processes (it replaces the
operators' CPU implementations for the rest of the process) by tests/test_kernels_emulated.py:

    python tests/cuda_emu/emulated_fused.py LIB      # single-process checks; prints "ok ..."
"""
from __future__ import annotations

import ctypes
import sys
from pathlib import Path

import torch

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

MODEL = dict(num_layers=2, hidden_size=64, ffn_hidden_size=176, num_attention_heads=4,
             num_kv_heads=2, vocab_size=512, max_seq_len=64)
STEPS, BATCH, SEQ = 3, 2, 32


def activate(lib_path: str) -> ctypes.CDLL:
    """Register the emulated binding for CPU tensors and let `fused` run on them."""
    from snowtrain.kernels import dispatch, ops  # noqa: F401  (the operators come first)
    torch.ops.load_library(lib_path)
    original = dispatch._fused_problem

    def cpu_is_the_device(tensors, dtype_tensors):
        problem = original(tensors, dtype_tensors)
        return None if problem and problem.startswith("the tensors are on cpu") else problem

    dispatch._fused_problem = cpu_is_the_device
    return ctypes.CDLL(lib_path)


def launches(lib: ctypes.CDLL) -> list[str]:
    lib.emu_launch_log.restype = ctypes.c_char_p
    return lib.emu_launch_log().decode().splitlines()


def train_losses(backend: str, dtype: str = "fp32", tp: int = 1) -> list[float]:
    """Losses of STEPS training steps of a tiny GQA Llama with the given kernel backend; under
    run_distributed with tp=2 each rank holds half of every layer and of the vocabulary."""
    from snowtrain import kernels
    from snowtrain.config import ModelConfig, RunConfig
    from snowtrain.model import Llama, TPGroup
    from snowtrain.optim import DistributedOptimizer
    from snowtrain.step import train_step

    pstate = None
    if tp > 1:
        from snowtrain.distributed import init_distributed
        pstate = init_distributed(tensor_parallel=tp)
    kernels.configure(backend, strict=backend == "fused")
    cfg = RunConfig(model=ModelConfig(**MODEL))
    cfg.precision.compute_dtype = dtype
    cfg.optim.lr = 3e-3
    model = Llama(cfg.model, TPGroup.from_state(pstate) if pstate else TPGroup(), seed=9,
                  dtype=torch.bfloat16 if dtype == "bf16" else torch.float32)
    opt = DistributedOptimizer(model, cfg, pstate)
    g = torch.Generator().manual_seed(5)
    losses = []
    for _ in range(STEPS):
        tokens = torch.randint(0, MODEL["vocab_size"], (BATCH, SEQ + 1), generator=g)
        mb = {"tokens": tokens[:, :-1], "labels": tokens[:, 1:],
              "loss_mask": (torch.rand(BATCH, SEQ, generator=g) > 0.1).float()}
        losses.append(train_step(model, opt, [mb], 3e-3, pstate).loss)
    return losses


def tp_worker(lib_path: str) -> tuple[list[float], list[float], int]:
    """One rank of a TP=2 run: (torch losses, fused losses, kernel launches of the fused run)."""
    lib = activate(lib_path)
    want = train_losses("torch", tp=2)
    lib.emu_reset()
    got = train_losses("fused", tp=2)
    return want, got, len(launches(lib))


def close(got: list[float], want: list[float], rtol: float) -> bool:
    return all(abs(a - b) <= rtol * abs(b) for a, b in zip(got, want)) and len(got) == len(want)


def main(lib_path: str) -> int:
    from snowtrain import kernels
    from snowtrain.kernels import reference

    lib = activate(lib_path)
    failures = []
    # each op through the dispatcher, against the torch reference, outputs and input gradients
    g = torch.Generator().manual_seed(3)
    cos, sin = reference.rope_cos_sin(24, 32, 10000.0)
    for dtype, tol in ((torch.float32, 1e-5), (torch.bfloat16, 2e-2)):
        x, res = (torch.randn(2, 24, 200, generator=g).to(dtype) for _ in range(2))
        w = (1 + 0.1 * torch.randn(200, generator=g)).to(dtype)
        gate, up = (torch.randn(3, 5, 301, generator=g).to(dtype) for _ in range(2))
        q, k = (torch.randn(2, 24, h, 32, generator=g).to(dtype) for h in (4, 2))
        logits = (4 * torch.randn(48, 1000, generator=g)).to(dtype)
        target = torch.randint(0, 1000, (48,), generator=g)
        cases = {
            "rmsnorm": (lambda m, x, w: m.rmsnorm(x, w, 1e-5), (x, w)),
            "add_rmsnorm": (lambda m, x, r, w: torch.cat(m.add_rmsnorm(x, r, w, 1e-5), -1), (x, res, w)),
            "swiglu": (lambda m, a, b: m.swiglu(a, b), (gate, up)),
            "rope_qk": (lambda m, a, b: torch.cat(m.apply_rope_qk(a, b, cos, sin), 2), (q, k)),
            "cross_entropy": (lambda m, z: m.vocab_parallel_cross_entropy(z, target), (logits,)),
        }
        for name, (fn, inputs) in cases.items():
            outs = {}
            for backend in ("torch", "fused"):
                kernels.configure(backend, strict=backend == "fused")
                lib.emu_reset()
                xs = [t.clone().requires_grad_() for t in inputs]
                out = fn(kernels if backend == "fused" else reference, *xs)
                up_grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(7)).to(out.dtype)
                grads = torch.autograd.grad(out, xs, up_grad)
                outs[backend] = (out.detach(), grads, len(launches(lib)))
            (want, want_g, _), (got, got_g, n) = outs["torch"], outs["fused"]
            if n == 0:
                failures.append(f"{name} {dtype}: no emulated kernel ran")
            for what, a, b in (("out", got, want), *((f"grad {i}", a, b) for i, (a, b) in enumerate(zip(got_g, want_g)))):
                err = ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30)).item()
                if not err <= tol:
                    failures.append(f"{name} {dtype} {what}: relative error {err:.2e}")
    # a tiny Llama trained a few steps: the fused backend's losses are the torch backend's
    for dtype, rtol in (("fp32", 1e-4), ("bf16", 2e-2)):
        want = train_losses("torch", dtype)
        lib.emu_reset()
        got = train_losses("fused", dtype)
        if not launches(lib):
            failures.append(f"llama {dtype}: no emulated kernel ran")
        if not close(got, want, rtol):
            failures.append(f"llama {dtype}: fused losses {got} vs torch {want}")
    if failures:
        print("\n".join(failures))
        return 1
    print(f"ok: ops and a tiny Llama (fp32, bf16) through binding.cpp on emulated kernels; bf16 "
          f"losses fused {got} vs torch {want}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
