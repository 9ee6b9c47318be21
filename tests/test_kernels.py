"""snowtrain.kernels: the torch references against float64 math written here, independently;
the fused operators' registration and autograd (on CPU, through their CPU implementations, which
follow the CUDA kernels' contract); the per-op backend selection; and, on a GPU (`gpu` marker),
the CUDA kernels against float64."""
from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch

from snowtrain import kernels
from snowtrain.kernels import external, ops, reference
from snowtrain.testing import run_distributed

F64 = torch.float64


@pytest.fixture(autouse=True)
def default_backends():
    kernels.configure(None)
    yield
    kernels.configure(None)


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    got, want = got.detach().double().cpu(), want.detach().double().cpu()
    return ((got - want).norm() / want.norm().clamp_min(1e-30)).item()


# ----------------------------------------------------------------- float64 math, written here

def f64_rmsnorm(x, w, eps):
    x, w = x.double(), w.double()
    out = torch.empty_like(x)
    flat, fo = x.reshape(-1, x.shape[-1]), out.view(-1, x.shape[-1])
    for r in range(flat.shape[0]):
        ms = sum(v * v for v in flat[r].tolist()) / flat.shape[1]
        fo[r] = flat[r] / math.sqrt(ms + eps) * w
    return out


def f64_swiglu(g, u):
    g, u = g.double(), u.double()
    return g / (1 + torch.exp(-g)) * u


def f64_rope_tables(seq, dim, theta):
    cos = torch.empty(seq, dim, dtype=F64)
    sin = torch.empty(seq, dim, dtype=F64)
    for p in range(seq):
        for i in range(dim // 2):
            angle = p * theta ** (-2.0 * i / dim)
            cos[p, i] = cos[p, i + dim // 2] = math.cos(angle)
            sin[p, i] = sin[p, i + dim // 2] = math.sin(angle)
    return cos, sin


def f64_rope(x, seq_positions_theta):
    """Rotate each pair (x[i], x[i + d/2]) by the angle p * theta^(-2i/d)."""
    theta = seq_positions_theta
    x = x.double()
    b, s, h, d = x.shape
    out = torch.empty_like(x)
    for p in range(s):
        for i in range(d // 2):
            a = p * theta ** (-2.0 * i / d)
            c, sn = math.cos(a), math.sin(a)
            x1, x2 = x[:, p, :, i], x[:, p, :, i + d // 2]
            out[:, p, :, i] = x1 * c - x2 * sn
            out[:, p, :, i + d // 2] = x2 * c + x1 * sn
    return out


def f64_cross_entropy(logits, target):
    logits = logits.double()
    m = logits.max(-1, keepdim=True).values
    lse = (logits - m).exp().sum(-1).log() + m.squeeze(-1)
    return lse - logits.gather(-1, target.unsqueeze(-1)).squeeze(-1)


# ------------------------------------------------------------------------- torch references

@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-6), (torch.bfloat16, 1e-2), (F64, 1e-12)])
def test_reference_rmsnorm_forward(dtype, tol):
    x = (torch.randn(3, 5, 48, generator=gen(1)) * 3).to(dtype)
    w = torch.randn(48, generator=gen(2)).to(dtype)
    y = reference.rmsnorm(x, w, 1e-5)
    assert y.dtype == dtype and rel_err(y, f64_rmsnorm(x, w, 1e-5)) < tol


def test_reference_rmsnorm_backward():
    x = torch.randn(4, 24, generator=gen(3), dtype=F64, requires_grad=True)
    w = torch.randn(24, generator=gen(4), dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, w: reference.rmsnorm(x, w, 1e-5), (x, w))
    g = torch.randn(4, 24, generator=gen(5), dtype=F64)
    (reference.rmsnorm(x, w, 1e-5) * g).sum().backward()
    # closed form: dx = r (w g - xhat mean(w g xhat)), dw = sum g xhat
    r = 1 / torch.sqrt((x.detach() ** 2).mean(-1, keepdim=True) + 1e-5)
    xhat = x.detach() * r
    dx = r * (w.detach() * g - xhat * (w.detach() * g * xhat).mean(-1, keepdim=True))
    torch.testing.assert_close(x.grad, dx)
    torch.testing.assert_close(w.grad, (g * xhat).sum(0))


def test_reference_add_rmsnorm():
    x = torch.randn(2, 3, 16, generator=gen(6), dtype=F64, requires_grad=True)
    res = torch.randn(2, 3, 16, generator=gen(7), dtype=F64, requires_grad=True)
    w = torch.randn(16, generator=gen(8), dtype=F64, requires_grad=True)
    y, h = reference.add_rmsnorm(x, res, w, 1e-6)
    torch.testing.assert_close(h, x + res)
    torch.testing.assert_close(y, f64_rmsnorm(x + res, w, 1e-6))
    assert torch.autograd.gradcheck(lambda *a: reference.add_rmsnorm(*a, 1e-6), (x, res, w))


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-6), (torch.bfloat16, 1e-2)])
def test_reference_swiglu(dtype, tol):
    g = (torch.randn(5, 40, generator=gen(9)) * 4).to(dtype)
    u = torch.randn(5, 40, generator=gen(10)).to(dtype)
    assert rel_err(reference.swiglu(g, u), f64_swiglu(g, u)) < tol
    g64 = g.double().requires_grad_()
    u64 = u.double().requires_grad_()
    assert torch.autograd.gradcheck(reference.swiglu, (g64, u64))
    # d/dg silu(g) = s (1 + g (1 - s))
    reference.swiglu(g64, u64).sum().backward()
    s = torch.sigmoid(g64.detach())
    torch.testing.assert_close(g64.grad, u64.detach() * s * (1 + g64.detach() * (1 - s)))
    torch.testing.assert_close(u64.grad, g64.detach() * s)


def test_reference_rope_tables():
    cos, sin = reference.rope_cos_sin(12, 16, 500.0)
    want_cos, want_sin = f64_rope_tables(12, 16, 500.0)
    assert cos.dtype == torch.float32 and cos.shape == (12, 16)
    torch.testing.assert_close(cos.double(), want_cos, atol=2e-6, rtol=0)
    torch.testing.assert_close(sin.double(), want_sin, atol=2e-6, rtol=0)


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-6), (torch.bfloat16, 1e-2), (F64, 1e-12)])
def test_reference_rope_forward(dtype, tol):
    x = torch.randn(2, 7, 3, 8, generator=gen(11)).to(dtype)
    cos, sin = f64_rope_tables(7, 8, 10000.0)
    y = reference.apply_rope(x, cos.to(torch.float32 if dtype != F64 else F64),
                             sin.to(torch.float32 if dtype != F64 else F64))
    assert y.dtype == dtype and rel_err(y, f64_rope(x, 10000.0)) < tol


def test_reference_rope_backward_and_qk():
    cos, sin = f64_rope_tables(5, 8, 100.0)
    q = torch.randn(2, 5, 4, 8, generator=gen(12), dtype=F64, requires_grad=True)
    k = torch.randn(2, 5, 2, 8, generator=gen(13), dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda q, k: reference.apply_rope_qk(q, k, cos, sin), (q, k))
    # a rotation: the gradient is the inverse rotation of the upstream gradient
    g = torch.randn(2, 5, 4, 8, generator=gen(14), dtype=F64)
    (reference.apply_rope(q, cos, sin) * g).sum().backward()
    torch.testing.assert_close(q.grad, f64_rope_inverse(g, 100.0))


def f64_rope_inverse(x, theta):
    b, s, h, d = x.shape
    out = torch.empty_like(x)
    for p in range(s):
        for i in range(d // 2):
            a = -p * theta ** (-2.0 * i / d)
            c, sn = math.cos(a), math.sin(a)
            x1, x2 = x[:, p, :, i], x[:, p, :, i + d // 2]
            out[:, p, :, i] = x1 * c - x2 * sn
            out[:, p, :, i + d // 2] = x2 * c + x1 * sn
    return out


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-6), (torch.bfloat16, 1e-2)])
def test_reference_cross_entropy(dtype, tol):
    logits = (torch.randn(2, 6, 50, generator=gen(15)) * 5).to(dtype)
    target = torch.randint(0, 50, (2, 6), generator=gen(16))
    loss = reference.vocab_parallel_cross_entropy(logits, target)
    assert loss.shape == (2, 6) and loss.dtype == torch.float32
    assert rel_err(loss, f64_cross_entropy(logits.reshape(-1, 50), target.reshape(-1)).view(2, 6)) < tol


def test_reference_cross_entropy_backward():
    logits = torch.randn(6, 30, generator=gen(17), dtype=F64, requires_grad=True)
    target = torch.randint(0, 30, (6,), generator=gen(18))
    # the reference computes in fp32 whatever the input: finite differences need a larger step
    assert torch.autograd.gradcheck(lambda l: reference.vocab_parallel_cross_entropy(l, target),
                                    (logits,), eps=1e-3, atol=2e-3, rtol=1e-2)
    w = torch.rand(6, generator=gen(19), dtype=F64)
    (reference.vocab_parallel_cross_entropy(logits, target) * w).sum().backward()
    p = torch.softmax(logits.detach(), -1)
    p[torch.arange(6), target] -= 1
    torch.testing.assert_close(logits.grad, p * w[:, None])


# ------------------------------------------- the fused operators, through their CPU implementations

def fused_cases(dtype=F64):
    """(name, fused fn, reference fn, inputs) on small shapes."""
    g = gen(20)
    x = torch.randn(3, 4, 32, generator=g, dtype=dtype)
    res = torch.randn(3, 4, 32, generator=g, dtype=dtype)
    w = torch.randn(32, generator=g, dtype=dtype)
    gate, up = torch.randn(5, 24, generator=g, dtype=dtype) * 3, torch.randn(5, 24, generator=g, dtype=dtype)
    cos, sin = (t.to(dtype) for t in reference.rope_cos_sin(6, 16, 10000.0, dtype=F64))
    q = torch.randn(2, 6, 4, 16, generator=g, dtype=dtype)
    k = torch.randn(2, 6, 2, 16, generator=g, dtype=dtype)
    logits = torch.randn(2, 5, 40, generator=g, dtype=dtype) * 3
    target = torch.randint(0, 40, (2, 5), generator=g)
    return [
        ("rmsnorm", lambda x, w: ops.rmsnorm(x, w, 1e-5), lambda x, w: reference.rmsnorm(x, w, 1e-5), (x, w)),
        ("add_rmsnorm", lambda x, r, w: ops.add_rmsnorm(x, r, w, 1e-5),
         lambda x, r, w: reference.add_rmsnorm(x, r, w, 1e-5), (x, res, w)),
        ("swiglu", ops.swiglu, reference.swiglu, (gate, up)),
        ("rope", lambda q: ops.apply_rope(q, cos, sin), lambda q: reference.apply_rope(q, cos, sin), (q,)),
        ("rope_qk", lambda q, k: ops.apply_rope_qk(q, k, cos, sin),
         lambda q, k: reference.apply_rope_qk(q, k, cos, sin), (q, k)),
        ("cross_entropy", lambda l: ops.vocab_parallel_cross_entropy(l, target),
         lambda l: f64_cross_entropy(l.reshape(-1, 40), target.reshape(-1)).view(2, 5), (logits,)),
    ]


def _outputs(out):
    return list(out) if isinstance(out, (tuple, list)) else [out]


@pytest.mark.parametrize("case", [c[0] for c in fused_cases()])
def test_fused_op_matches_reference_and_gradcheck(case):
    name, fused, ref, inputs = next(c for c in fused_cases() if c[0] == case)
    a = [t.clone().requires_grad_() for t in inputs]
    b = [t.clone().requires_grad_() for t in inputs]
    out_a, out_b = _outputs(fused(*a)), _outputs(ref(*b))
    for oa, ob in zip(out_a, out_b):
        torch.testing.assert_close(oa.double(), ob.double())
    weights = [torch.randn(o.shape, generator=gen(21), dtype=o.dtype) for o in out_a]
    sum(((o * w).sum() for o, w in zip(out_a, weights))).backward()
    sum(((o * w).sum() for o, w in zip(out_b, weights))).backward()
    for ta, tb in zip(a, b):
        torch.testing.assert_close(ta.grad, tb.grad)
    assert torch.autograd.gradcheck(fused, tuple(t.clone().requires_grad_() for t in inputs),
                                    fast_mode=True)


@pytest.mark.parametrize("case", [c[0] for c in fused_cases()])
def test_fused_op_bf16_contract(case):
    """bf16 in, bf16 out (fp32 losses), fp32 math: close to float64 of the same inputs."""
    name, fused, ref, inputs = next(c for c in fused_cases(torch.float32) if c[0] == case)
    xs = [t.to(torch.bfloat16) for t in inputs]
    outs = _outputs(fused(*[t.clone() for t in xs]))
    wants = _outputs(ref(*[t.double() for t in xs]))
    for o, want in zip(outs, wants):
        assert o.dtype == (torch.float32 if name == "cross_entropy" else torch.bfloat16)
        assert rel_err(o, want) < 1e-2


def test_opcheck_every_operator():
    g = gen(22)
    x, r = torch.randn(3, 5, 16, generator=g), torch.randn(3, 5, 16, generator=g)
    w = torch.randn(16, generator=g)
    cos, sin = reference.rope_cos_sin(5, 8, 10000.0)
    q, k = torch.randn(2, 5, 3, 8, generator=g), torch.randn(2, 5, 1, 8, generator=g)
    logits, target = torch.randn(7, 11, generator=g), torch.randint(0, 20, (7,), generator=g)

    def rg(t):
        return t.clone().requires_grad_()

    O = ops.ops
    for op, args in [
        (O.rmsnorm_fwd, (rg(x), rg(w), 1e-5)), (O.rmsnorm_fwd, (x.bfloat16(), w, 1e-5)),
        (O.add_rmsnorm_fwd, (rg(x), rg(r), rg(w), 1e-5)),
        (O.rmsnorm_bwd, (x, x, w, torch.rand(3, 5, generator=g), None)),
        (O.rmsnorm_bwd, (x, x, w, torch.rand(3, 5, generator=g), r)),
        (O.swiglu_fwd, (rg(x), rg(r))), (O.swiglu_bwd, (x, x, r)),
        (O.rmsnorm_fwd, (rg(x.transpose(0, 1)), rg(w), 1e-5)),  # non-contiguous input
        (O.rope, (rg(q), cos, sin, False)), (O.rope, (rg(q), cos, sin, True)),
        (O.rope, (rg(torch.randn(2, 3, 5, 8, generator=g).transpose(1, 2)), cos, sin, False)),
        (O.rope_qk, (rg(q), rg(k), cos, sin, False)),
        (O.ce_fwd, (logits, target, 5)), (O.ce_bwd, (torch.rand(7, generator=g), logits, target,
                                                     torch.rand(7, generator=g), 5)),
    ]:
        torch.library.opcheck(op, args)


def test_rope_transpose_is_the_adjoint():
    cos, sin = reference.rope_cos_sin(6, 16, 10.0, dtype=F64)
    x, y = torch.randn(2, 6, 3, 16, dtype=F64, generator=gen(23)), torch.randn(2, 6, 3, 16, dtype=F64, generator=gen(24))
    lhs = (ops.ops.rope(x, cos, sin, False) * y).sum()
    rhs = (x * ops.ops.rope(y, cos, sin, True)).sum()
    assert abs(lhs - rhs) < 1e-10


def test_fused_functions_compile_without_graph_breaks():
    cos, sin = reference.rope_cos_sin(8, 16, 10000.0)

    def block(x, w, gate, up, q, k, logits, target):
        y, h = ops.add_rmsnorm(x, x, w, 1e-5)
        q2, k2 = ops.apply_rope_qk(q, k, cos, sin)
        loss = ops.vocab_parallel_cross_entropy(logits, target)
        return (ops.rmsnorm(y, w, 1e-5).sum() + h.sum() + ops.swiglu(gate, up).sum()
                + q2.sum() + k2.sum() + ops.apply_rope(q, cos, sin).sum() + loss.sum())

    g = gen(25)
    args = [torch.randn(2, 8, 32, generator=g), torch.randn(32, generator=g), torch.randn(4, 8, generator=g),
            torch.randn(4, 8, generator=g), torch.randn(1, 8, 2, 16, generator=g),
            torch.randn(1, 8, 1, 16, generator=g), torch.randn(8, 20, generator=g)]
    args = [a.requires_grad_() for a in args] + [torch.randint(0, 20, (8,), generator=g)]
    eager = block(*args)
    grads = torch.autograd.grad(eager, args[:-1])
    torch._dynamo.reset()
    compiled = torch.compile(block, backend="aot_eager", fullgraph=True)
    out = compiled(*args)
    torch.testing.assert_close(out, eager)
    for a, b in zip(torch.autograd.grad(out, args[:-1]), grads):
        torch.testing.assert_close(a, b)


def _fused_ce_worker(logits, target, weights):
    from snowtrain.distributed import init_distributed
    st = init_distributed(tensor_parallel=2)
    shard = logits.chunk(2, dim=-1)[st.tp_rank].clone().requires_grad_()
    loss = ops.vocab_parallel_cross_entropy(shard, target, st.tp_rank * shard.shape[-1], st.tp_group, 2)
    (loss * weights).sum().backward()
    return loss.detach(), shard.grad


@pytest.mark.slow
def test_fused_cross_entropy_over_two_ranks_matches_float64():
    """The fused path's all-reduces (max; then picked logit and rescaled sum-exp) over 2 gloo ranks."""
    g = gen(26)
    logits = torch.randn(32, 200, generator=g, dtype=F64) * 4
    target = torch.randint(0, 200, (32,), generator=g)
    weights = torch.rand(32, generator=g, dtype=F64)
    results = run_distributed(_fused_ce_worker, 2, logits.float(), target, weights.float())
    ref_logits = logits.clone().requires_grad_()
    ref = f64_cross_entropy(ref_logits, target)
    (ref * weights).sum().backward()
    for loss, _ in results:
        torch.testing.assert_close(loss.double(), ref.detach(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(torch.cat([g for _, g in results], -1).double(), ref_logits.grad,
                               rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------------- dispatch

def test_default_is_torch_everywhere():
    assert kernels.current() == kernels.KernelsConfig()
    assert all(kernels.backend_for(op) == "torch" for op in kernels.OPS)


def test_configure_takes_the_model_config_mapping():
    cfg = kernels.configure({"rmsnorm": "fused", "swiglu": "Fused ", "rope": "torch", "cross_entropy": "fused"})
    assert cfg.backends() == {"rmsnorm": "fused", "swiglu": "fused", "rope": "torch", "cross_entropy": "fused"}
    # configure sets every op: those not named go back to torch
    kernels.configure({"rope": "fused"})
    assert {op: kernels.backend_for(op) for op in kernels.OPS} == {
        "rmsnorm": "torch", "swiglu": "torch", "rope": "fused", "cross_entropy": "torch"}
    kernels.configure("fused")
    assert set(kernels.current().backends().values()) == {"fused"}
    kernels.configure(kernels.KernelsConfig(swiglu="fused", strict=True))
    assert kernels.backend_for("swiglu") == "fused" and kernels.current().strict

    class Section:  # e.g. a config dataclass with these attributes
        rmsnorm, swiglu, rope, cross_entropy = "torch", "torch", "fused", None
    kernels.configure(Section())
    assert kernels.backend_for("rope") == "fused" and kernels.backend_for("cross_entropy") == "torch"


def test_set_backends_and_use_backends_change_only_the_named_ops():
    kernels.configure({"rmsnorm": "fused"})
    kernels.set_backends(rope="fused")
    assert kernels.backend_for("rmsnorm") == "fused" and kernels.backend_for("rope") == "fused"
    with kernels.use_backends({"rmsnorm": "torch"}, swiglu="fused"):
        assert kernels.backend_for("rmsnorm") == "torch" and kernels.backend_for("swiglu") == "fused"
    assert kernels.backend_for("rmsnorm") == "fused" and kernels.backend_for("swiglu") == "torch"


def test_unknown_op_and_backend_are_errors_that_change_nothing():
    kernels.configure({"rmsnorm": "fused"})
    with pytest.raises(kernels.KernelConfigError, match="unknown kernel op 'rmsnrom'.*did you mean 'rmsnorm'"):
        kernels.configure({"rmsnrom": "fused"})
    with pytest.raises(kernels.KernelConfigError, match="unknown backend 'fusd'.*did you mean 'fused'"):
        kernels.set_backends(swiglu="fusd")
    with pytest.raises(kernels.KernelConfigError, match="unknown kernel op"):
        kernels.backend_for("attention")
    with pytest.raises(kernels.KernelConfigError, match="must be a string"):
        kernels.configure({"rope": 3})
    with pytest.raises(kernels.KernelConfigError):
        kernels.configure(42)
    assert kernels.backend_for("rmsnorm") == "fused"  # unchanged by the failed calls


@pytest.mark.parametrize("backend, package", [("te", "transformer_engine"), ("apex", "apex")])
def test_missing_te_or_apex_is_a_clear_error(monkeypatch, backend, package):
    monkeypatch.setattr(external, "installed", lambda b: False)
    with pytest.raises(kernels.KernelBackendUnavailable, match=f"'{backend}'.*'{package}'.*not installed"):
        kernels.configure({"rmsnorm": backend})
    assert issubclass(kernels.KernelBackendUnavailable, ImportError)
    assert kernels.backend_for("rmsnorm") == "torch"


def test_te_and_apex_only_for_the_ops_they_offer(monkeypatch):
    monkeypatch.setattr(external, "installed", lambda b: True)
    with pytest.raises(kernels.KernelConfigError, match="'te' has no swiglu kernel"):
        kernels.configure({"swiglu": "te"})
    with pytest.raises(kernels.KernelConfigError, match="'apex' has no cross_entropy kernel"):
        kernels.configure({"cross_entropy": "apex"})
    kernels.configure({"rmsnorm": "apex", "rope": "te", "cross_entropy": "te"})
    assert kernels.backend_for("cross_entropy") == "te"


def test_te_missing_for_real_names_the_package():
    if external.installed("te"):
        pytest.skip("Transformer Engine is installed here")
    with pytest.raises(ImportError, match="Transformer Engine"):
        kernels.set_backends(cross_entropy="te")


def test_fused_on_cpu_falls_back_with_one_warning():
    kernels.configure("fused")
    x, w = torch.randn(2, 8), torch.rand(8)
    with pytest.warns(kernels.KernelFallbackWarning, match=r"kernels.rmsnorm: backend 'fused' cannot run \(the tensors are on cpu\)"):
        y = kernels.rmsnorm(x, w, 1e-5)
    torch.testing.assert_close(y, reference.rmsnorm(x, w, 1e-5))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no second warning for the same op and reason
        kernels.rmsnorm(x, w, 1e-5)
        kernels.add_rmsnorm(x, x, w, 1e-5)
    with pytest.warns(kernels.KernelFallbackWarning, match="kernels.swiglu"):
        kernels.swiglu(x, x)
    assert kernels.effective_backend("rmsnorm", x) == "torch"


def test_fused_strict_raises_instead_of_falling_back():
    kernels.configure({"cross_entropy": "fused"}, strict=True)
    with pytest.raises(kernels.KernelFallbackError, match="cross_entropy.*tensors are on cpu"):
        kernels.vocab_parallel_cross_entropy(torch.randn(4, 10), torch.randint(0, 10, (4,)))
    kernels.configure({"cross_entropy": "fused", "strict": True})
    assert kernels.current().strict


def test_extension_is_not_loaded_on_this_cpu_machine():
    if torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    assert kernels.load_extension() is False
    assert kernels.extension_error() and ("CPU build" in kernels.extension_error()
                                          or "no CUDA device" in kernels.extension_error())
    assert kernels.prepare() == {op: "torch" for op in kernels.OPS}


def test_every_dispatched_function_matches_its_reference_under_any_backend_choice():
    cases = {c[0]: c for c in fused_cases(torch.float32)}
    cos, sin = reference.rope_cos_sin(6, 16, 10000.0)
    for backend in ("torch", "fused"):
        kernels.configure(backend)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", kernels.KernelFallbackWarning)
            x, w = cases["rmsnorm"][3]
            torch.testing.assert_close(kernels.rmsnorm(x, w, 1e-5), reference.rmsnorm(x, w, 1e-5))
            q, k = cases["rope_qk"][3]
            torch.testing.assert_close(kernels.apply_rope_qk(q, k, cos, sin)[1], reference.apply_rope(k, cos, sin))
            g, u = cases["swiglu"][3]
            torch.testing.assert_close(kernels.swiglu(g, u), reference.swiglu(g, u))


def test_model_loss_is_the_same_with_fused_selected_on_cpu():
    from snowtrain.config import ModelConfig
    from snowtrain.model import Llama
    cfg = ModelConfig(num_layers=1, hidden_size=32, ffn_hidden_size=64, num_attention_heads=2,
                      vocab_size=64, max_seq_len=16)
    tokens = torch.randint(0, 64, (2, 16), generator=gen(27))
    model = Llama(cfg, seed=1)
    ref = model(tokens, tokens.roll(-1, 1))[0]
    kernels.configure("fused")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", kernels.KernelFallbackWarning)
        got = model(tokens, tokens.roll(-1, 1))[0]
    torch.testing.assert_close(got, ref)


# --------------------------------------------------------------------------- GPU (CUDA kernels)

GPU_SHAPES = {
    "rmsnorm": [(4, 2048), (3, 7, 1000), (2, 5120), (1, 33)],
    "swiglu": [(2, 128, 5632), (3, 1001), (1, 7)],
    "rope": [((2, 64, 16, 128), 2), ((1, 17, 4, 64), 4), ((1, 9, 3, 10), 1)],  # (q shape, kv heads)
    "cross_entropy": [(64, 64000), (37, 1001), (5, 8)],
}


@pytest.fixture
def cuda_ext():
    if not kernels.load_extension(verbose=True):
        pytest.fail(f"the CUDA extension did not build/load: {kernels.extension_error()}")
    kernels.configure("fused", strict=True)
    return torch.device("cuda")


def _check(got, want, dtype, what):
    assert not torch.isnan(got).any(), f"{what}: NaN"
    err = rel_err(got, want)
    assert err < (1e-2 if dtype == torch.bfloat16 else 1e-5), f"{what}: relative error {err:.2e}"


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("wdtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("shape", GPU_SHAPES["rmsnorm"])
def test_gpu_rmsnorm(cuda_ext, dtype, wdtype, shape):
    g = torch.Generator(device="cuda").manual_seed(0)
    x = (torch.randn(shape, device="cuda", generator=g) * 2).to(dtype).requires_grad_()
    r = torch.randn(shape, device="cuda", generator=g).to(dtype).requires_grad_()
    w = (1 + 0.1 * torch.randn(shape[-1], device="cuda", generator=g)).to(wdtype).requires_grad_()
    dy = torch.randn(shape, device="cuda", generator=g).to(dtype)
    dh = torch.randn(shape, device="cuda", generator=g).to(dtype)
    x64, r64, w64 = (t.detach().double().requires_grad_() for t in (x, r, w))
    y = kernels.rmsnorm(x, w, 1e-5)
    y64 = reference.rmsnorm(x64, w64, 1e-5)
    assert y.dtype == dtype
    _check(y, y64, dtype, "rmsnorm fwd")
    gx, gw = torch.autograd.grad(y, (x, w), dy)
    gx64, gw64 = torch.autograd.grad(y64, (x64, w64), dy.double())
    _check(gx, gx64, dtype, "rmsnorm dx")
    _check(gw, gw64, wdtype, "rmsnorm dw")
    y, h = kernels.add_rmsnorm(x, r, w, 1e-5)
    y64, h64 = reference.add_rmsnorm(x64, r64, w64, 1e-5)
    _check(y, y64, dtype, "add_rmsnorm y")
    _check(h, h64, dtype, "add_rmsnorm h")
    grads = torch.autograd.grad((y, h), (x, r, w), (dy, dh))
    grads64 = torch.autograd.grad((y64, h64), (x64, r64, w64), (dy.double(), dh.double()))
    for a, b, n, t in zip(grads, grads64, ("dx", "dres", "dw"), (dtype, dtype, wdtype)):
        _check(a, b, t, f"add_rmsnorm {n}")  # dw is rounded to the weight's dtype


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("shape", GPU_SHAPES["swiglu"])
def test_gpu_swiglu(cuda_ext, dtype, shape):
    g = torch.Generator(device="cuda").manual_seed(1)
    gate = (torch.randn(shape, device="cuda", generator=g) * 3).to(dtype).requires_grad_()
    up = torch.randn(shape, device="cuda", generator=g).to(dtype).requires_grad_()
    dy = torch.randn(shape, device="cuda", generator=g).to(dtype)
    g64, u64 = (t.detach().double().requires_grad_() for t in (gate, up))
    out, out64 = kernels.swiglu(gate, up), reference.swiglu(g64, u64)
    _check(out, out64, dtype, "swiglu fwd")
    for a, b, n in zip(torch.autograd.grad(out, (gate, up), dy),
                       torch.autograd.grad(out64, (g64, u64), dy.double()), ("dgate", "dup")):
        _check(a, b, dtype, f"swiglu {n}")


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("shape, kv", GPU_SHAPES["rope"])
def test_gpu_rope(cuda_ext, dtype, shape, kv):
    b, s, h, d = shape
    g = torch.Generator(device="cuda").manual_seed(2)
    q = torch.randn(shape, device="cuda", generator=g).to(dtype).requires_grad_()
    k = torch.randn(b, s, kv, d, device="cuda", generator=g).to(dtype).requires_grad_()
    cos, sin = reference.rope_cos_sin(s, d, 10000.0, device="cuda")
    dq, dk = torch.randn_like(q), torch.randn_like(k)
    q64, k64 = (t.detach().double().requires_grad_() for t in (q, k))
    c64, s64 = cos.double(), sin.double()
    outs = kernels.apply_rope_qk(q, k, cos, sin)
    outs64 = reference.apply_rope_qk(q64, k64, c64, s64)
    for a, b_, n in zip(outs, outs64, "qk"):
        _check(a, b_, dtype, f"rope fwd {n}")
    _check(kernels.apply_rope(q, cos, sin), outs64[0], dtype, "rope fwd single")
    for a, b_, n in zip(torch.autograd.grad(outs, (q, k), (dq, dk)),
                        torch.autograd.grad(outs64, (q64, k64), (dq.double(), dk.double())), "qk"):
        _check(a, b_, dtype, f"rope bwd {n}")


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("rows, cols", GPU_SHAPES["cross_entropy"])
def test_gpu_cross_entropy(cuda_ext, dtype, rows, cols):
    g = torch.Generator(device="cuda").manual_seed(3)
    logits = (torch.randn(rows, cols, device="cuda", generator=g) * 4).to(dtype).requires_grad_()
    target = torch.randint(0, cols, (rows,), device="cuda", generator=g)
    w = torch.rand(rows, device="cuda", generator=g)
    l64 = logits.detach().double().requires_grad_()
    loss = kernels.vocab_parallel_cross_entropy(logits, target)
    loss64 = f64_cross_entropy(l64, target)
    assert loss.dtype == torch.float32
    _check(loss, loss64, torch.float32 if dtype == torch.float32 else torch.bfloat16, "ce loss")
    (grad,) = torch.autograd.grad(loss, logits, w)
    (grad64,) = torch.autograd.grad(loss64, l64, w.double())
    assert grad.dtype == dtype
    _check(grad, grad64, dtype, "ce grad")
    # a shard that does not hold some targets (as with tensor parallelism): same as the reference
    shard = logits.detach()[:, : cols // 2 + 1].requires_grad_()
    ref_shard = shard.detach().float().requires_grad_()
    got = kernels.vocab_parallel_cross_entropy(shard, target, 0)
    want = reference.vocab_parallel_cross_entropy(ref_shard, target, 0)
    _check(got, want, torch.bfloat16, "ce shard loss")
    _check(torch.autograd.grad(got.sum(), shard)[0], torch.autograd.grad(want.sum(), ref_shard)[0],
           dtype, "ce shard grad")


@pytest.mark.gpu
def test_gpu_fused_ops_compile_fullgraph(cuda_ext):
    cos, sin = reference.rope_cos_sin(16, 64, 10000.0, device="cuda")

    def f(x, w, gate, up, q, logits, target):
        y = kernels.rmsnorm(x, w, 1e-5)
        loss = kernels.vocab_parallel_cross_entropy(logits, target)
        return y.float().sum() + kernels.swiglu(gate, up).float().sum() + \
            kernels.apply_rope(q, cos, sin).float().sum() + loss.sum()

    dev, bf = "cuda", torch.bfloat16
    args = [torch.randn(16, 256, device=dev, dtype=bf), torch.ones(256, device=dev),
            torch.randn(16, 512, device=dev, dtype=bf), torch.randn(16, 512, device=dev, dtype=bf),
            torch.randn(1, 16, 4, 64, device=dev, dtype=bf), torch.randn(16, 1000, device=dev, dtype=bf)]
    args = [a.requires_grad_() for a in args] + [torch.randint(0, 1000, (16,), device=dev)]
    eager = f(*args)
    grads = torch.autograd.grad(eager, args[:-1])
    out = torch.compile(f, fullgraph=True)(*args)
    torch.testing.assert_close(out, eager, rtol=1e-3, atol=1e-2)
    for a, b in zip(torch.autograd.grad(out, args[:-1]), grads):
        torch.testing.assert_close(a, b, rtol=2e-2, atol=2e-2)


@pytest.mark.gpu
def test_gpu_tiny_llama_fused_matches_torch(cuda_ext):
    from snowtrain.config import ModelConfig
    from snowtrain.model import Llama
    cfg = ModelConfig(num_layers=2, hidden_size=256, ffn_hidden_size=704, num_attention_heads=4,
                      num_kv_heads=2, vocab_size=1000, max_seq_len=128)
    model = Llama(cfg, seed=1, dtype=torch.bfloat16, device="cuda")
    tokens = torch.randint(0, 1000, (2, 128), device="cuda")
    results = {}
    for backend in ("torch", "fused"):
        kernels.configure(backend, strict=backend == "fused")
        model.zero_grad(set_to_none=True)
        loss, count = model(tokens, tokens.roll(-1, 1))
        (loss / count).backward()
        results[backend] = ((loss / count).item(), {n: p.grad.float().clone() for n, p in model.named_parameters()})
    assert abs(results["fused"][0] - results["torch"][0]) < 2e-2
    for name, g in results["torch"][1].items():
        assert rel_err(results["fused"][1][name], g) < 5e-2, name


def test_the_build_compiles_every_kernel_source():
    from snowtrain.kernels import build
    names = {p.name for p in build.sources()}
    assert names == {p.name for p in build.CSRC.glob("*.cu")} | {"binding.cpp"}
    assert {"rmsnorm.cu", "swiglu.cu", "rope.cu", "cross_entropy.cu"} <= names


# ---------------------------------------------------------------- the GPU benchmark script

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_kernels_gpu.py"


def _bench(tmp_path, *extra):
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    env.pop("OUT", None)
    proc = subprocess.run([sys.executable, str(BENCH), "--smoke", "--skip-compile", "--write",
                           "--out-dir", str(tmp_path), *extra], capture_output=True, text=True,
                          timeout=300, env=env)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    (jpath,) = tmp_path.glob("kernels-*.json")
    assert (tmp_path / jpath.name.replace(".json", ".md")).exists()
    res = json.loads(jpath.read_text())
    assert all(s["status"] == "ok" for s in res["sections"].values()), res["sections"]
    assert {c["op"] for c in res["checks"]} == {"rmsnorm", "add_rmsnorm", "swiglu", "rope", "cross_entropy"}
    assert all(c["ok"] for c in res["checks"]), [c for c in res["checks"] if not c["ok"]]
    return res


def test_gpu_benchmark_script_smoke_run(tmp_path):
    """bench_kernels_gpu.py --smoke (CPU here): every section runs on tiny shapes and the report
    is written, so the one GPU run is not lost to a bug in the script."""
    res = _bench(tmp_path)
    for t in res["timings"]:
        assert "fused_fwd_bwd" in t and "eager_fwd_bwd" in t, t
    runs = res["model"]["runs"]
    assert set(runs) == {"torch", "fused"} and all(r["tokens_per_s"] > 0 for r in runs.values())
    same = res["model"]["loss_same_weights"]
    assert abs(same["torch"] - same["fused"]) < 1e-4
    mg = res["megatron"]
    assert mg.get("params", 0) > 0 or "not importable" in mg.get("skipped", ""), mg


def test_gpu_benchmark_script_runs_a_section_in_its_own_process(tmp_path):
    res = _bench(tmp_path, "--isolate", "on", "--skip-timing", "--skip-model", "--skip-megatron")
    assert set(res["sections"]) == {"checks"}


def test_gpu_benchmark_section_time_limit():
    spec = importlib.util.spec_from_file_location("bench_kernels_gpu", BENCH)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    start = time.monotonic()
    with pytest.raises(bench.SectionTimeout):
        with bench.time_limit(1):
            try:
                time.sleep(5)
            except Exception:  # a per-item handler must not swallow the section's timeout
                pass
    assert time.monotonic() - start < 3
