"""The `snowtrain_kernels::*` custom operators and the differentiable functions built on them.

Schemas, fake (meta) implementations, autograd formulas and CPU implementations are registered
here, in Python; the CUDA implementations come from the C++ extension (csrc/binding.cpp, loaded
by `snowtrain.kernels.build`), which registers kernels for the same operators. Because every op
has a fake implementation and its autograd is registered through `torch.library`, the fused
functions trace through torch.compile without graph breaks.

The CPU implementations are written in torch and follow the exact contract of the CUDA kernels
(same saved statistics, same backward formulas, fp32 math for bf16/fp32 inputs): they let the
registration and autograd wiring be tested on machines without a GPU (`opcheck`, gradcheck),
and they are what a CUDA result is compared against in the GPU tests. They are not meant to be
fast; the dispatcher in `snowtrain.kernels.dispatch` never sends CPU tensors here.

Operators (rows = all leading dimensions flattened; statistics are fp32, float64 for float64):

    rmsnorm_fwd(x, weight, eps) -> (y, rstd)
    add_rmsnorm_fwd(x, residual, weight, eps) -> (y, h, rstd)   h = x + residual, y = norm(h)
    rmsnorm_bwd(grad_y, x, weight, rstd, grad_res?) -> (grad_x, grad_weight)
    swiglu_fwd(gate, up) -> out;  swiglu_bwd(grad, gate, up) -> (grad_gate, grad_up)
    rope(x, cos, sin, transpose) -> y;  rope_qk(q, k, cos, sin, transpose) -> (q', k')
    ce_fwd(logits, target, vocab_start) -> (row_max, sum_exp, target_logit)
    ce_bwd(grad_loss, logits, target, lse, vocab_start) -> grad_logits
"""
from __future__ import annotations

import torch
import torch.distributed as dist

NAMESPACE = "snowtrain_kernels"

_SCHEMAS = {
    "rmsnorm_fwd": "(Tensor x, Tensor weight, float eps) -> (Tensor, Tensor)",
    "add_rmsnorm_fwd": "(Tensor x, Tensor residual, Tensor weight, float eps) -> (Tensor, Tensor, Tensor)",
    "rmsnorm_bwd": "(Tensor grad_y, Tensor x, Tensor weight, Tensor rstd, Tensor? grad_res) -> (Tensor, Tensor)",
    "swiglu_fwd": "(Tensor gate, Tensor up) -> Tensor",
    "swiglu_bwd": "(Tensor grad, Tensor gate, Tensor up) -> (Tensor, Tensor)",
    "rope": "(Tensor x, Tensor cos, Tensor sin, bool transpose) -> Tensor",
    "rope_qk": "(Tensor q, Tensor k, Tensor cos, Tensor sin, bool transpose) -> (Tensor, Tensor)",
    "ce_fwd": "(Tensor logits, Tensor target, int vocab_start) -> (Tensor, Tensor, Tensor)",
    "ce_bwd": "(Tensor grad_loss, Tensor logits, Tensor target, Tensor lse, int vocab_start) -> Tensor",
}

_lib = torch.library.Library(NAMESPACE, "DEF")
for _name, _schema in _SCHEMAS.items():
    _lib.define(_name + _schema)

ops = getattr(torch.ops, NAMESPACE)


def _stat_dtype(t: torch.Tensor) -> torch.dtype:
    """Statistics and math: fp32 for bf16/fp16/fp32 inputs, float64 for float64."""
    return torch.promote_types(t.dtype, torch.float32)


# ------------------------------------------------------------------------------ fake (meta) impls
# Every output is a new contiguous tensor (the CUDA kernels make their inputs contiguous).

def _new(t: torch.Tensor) -> torch.Tensor:
    return t.new_empty(t.shape)


@torch.library.register_fake(f"{NAMESPACE}::rmsnorm_fwd", lib=_lib)
def _(x, weight, eps):
    return _new(x), x.new_empty(x.shape[:-1], dtype=_stat_dtype(x))


@torch.library.register_fake(f"{NAMESPACE}::add_rmsnorm_fwd", lib=_lib)
def _(x, residual, weight, eps):
    return _new(x), _new(x), x.new_empty(x.shape[:-1], dtype=_stat_dtype(x))


@torch.library.register_fake(f"{NAMESPACE}::rmsnorm_bwd", lib=_lib)
def _(grad_y, x, weight, rstd, grad_res):
    return _new(x), _new(weight)


@torch.library.register_fake(f"{NAMESPACE}::swiglu_fwd", lib=_lib)
def _(gate, up):
    return _new(gate)


@torch.library.register_fake(f"{NAMESPACE}::swiglu_bwd", lib=_lib)
def _(grad, gate, up):
    return _new(gate), _new(up)


@torch.library.register_fake(f"{NAMESPACE}::rope", lib=_lib)
def _(x, cos, sin, transpose):
    return _new(x)


@torch.library.register_fake(f"{NAMESPACE}::rope_qk", lib=_lib)
def _(q, k, cos, sin, transpose):
    return _new(q), _new(k)


@torch.library.register_fake(f"{NAMESPACE}::ce_fwd", lib=_lib)
def _(logits, target, vocab_start):
    rows = logits.shape[0]
    d = _stat_dtype(logits)
    return logits.new_empty(rows, dtype=d), logits.new_empty(rows, dtype=d), logits.new_empty(rows, dtype=d)


@torch.library.register_fake(f"{NAMESPACE}::ce_bwd", lib=_lib)
def _(grad_loss, logits, target, lse, vocab_start):
    return _new(logits)


# -------------------------------------------------------------- CPU impls (the kernels' contract)

def _rmsnorm_fwd_math(h, weight, eps):
    hf = h.to(_stat_dtype(h))
    rstd = torch.rsqrt(hf.pow(2).mean(-1) + eps)
    y = hf * rstd.unsqueeze(-1) * weight.to(hf.dtype)
    return y.to(h.dtype), rstd


def _rmsnorm_fwd_cpu(x, weight, eps):
    return _rmsnorm_fwd_math(x, weight, eps)


def _add_rmsnorm_fwd_cpu(x, residual, weight, eps):
    h = (x.to(_stat_dtype(x)) + residual.to(_stat_dtype(x))).to(x.dtype)  # rounded like the kernel
    y, rstd = _rmsnorm_fwd_math(h, weight, eps)
    return y, h, rstd


def _rmsnorm_bwd_cpu(grad_y, x, weight, rstd, grad_res):
    d = _stat_dtype(x)
    xf, dy, w = x.to(d), grad_y.to(d), weight.to(d)
    r = rstd.to(d).unsqueeze(-1)
    xhat = xf * r
    c = (w * dy * xhat).mean(-1, keepdim=True)
    dx = r * (w * dy - xhat * c)
    if grad_res is not None:
        dx = dx + grad_res.to(d)
    dw = (dy * xhat).reshape(-1, x.shape[-1]).sum(0)
    return dx.to(x.dtype), dw.to(weight.dtype)


def _swiglu_fwd_cpu(gate, up):
    d = _stat_dtype(gate)
    g, u = gate.to(d), up.to(d)
    return (g * torch.sigmoid(g) * u).to(gate.dtype)


def _swiglu_bwd_cpu(grad, gate, up):
    d = _stat_dtype(gate)
    dy, g, u = grad.to(d), gate.to(d), up.to(d)
    s = torch.sigmoid(g)
    dg = dy * u * s * (1 + g * (1 - s))
    du = dy * g * s
    return dg.to(gate.dtype), du.to(up.dtype)


def _rope_math(x, cos, sin, transpose):
    d = _stat_dtype(x)
    xf = x.to(d)
    c = cos.to(d)[None, :, None, :]
    s = sin.to(d)[None, :, None, :]
    half = x.shape[-1] // 2
    a, b = xf[..., :half], xf[..., half:]
    c1, c2, s1, s2 = c[..., :half], c[..., half:], s[..., :half], s[..., half:]
    if transpose:
        out = torch.cat([a * c1 + b * s2, b * c2 - a * s1], dim=-1)
    else:
        out = torch.cat([a * c1 - b * s1, b * c2 + a * s2], dim=-1)
    return out.to(x.dtype)


def _rope_cpu(x, cos, sin, transpose):
    return _rope_math(x, cos, sin, transpose)


def _rope_qk_cpu(q, k, cos, sin, transpose):
    return _rope_math(q, cos, sin, transpose), _rope_math(k, cos, sin, transpose)


def _target_columns(target, vocab_start, cols):
    local = target.long() - vocab_start
    inside = (local >= 0) & (local < cols)
    return local.masked_fill(~inside, 0), inside


def _ce_fwd_cpu(logits, target, vocab_start):
    lf = logits.to(_stat_dtype(logits))
    vmax = lf.max(dim=-1).values
    sum_exp = (lf - vmax.unsqueeze(-1)).exp().sum(-1)
    local, inside = _target_columns(target, vocab_start, logits.shape[-1])
    picked = lf.gather(-1, local.unsqueeze(-1)).squeeze(-1).masked_fill(~inside, 0.0)
    return vmax, sum_exp, picked


def _ce_bwd_cpu(grad_loss, logits, target, lse, vocab_start):
    d = _stat_dtype(logits)
    p = (logits.to(d) - lse.to(d).unsqueeze(-1)).exp()
    local, inside = _target_columns(target, vocab_start, logits.shape[-1])
    p.scatter_add_(-1, local.unsqueeze(-1), -inside.to(d).unsqueeze(-1))
    return (p * grad_loss.to(d).unsqueeze(-1)).to(logits.dtype)


def _contiguous_outputs(fn):
    def impl(*args):
        out = fn(*args)
        if isinstance(out, tuple):
            return tuple(o.contiguous() for o in out)
        return out.contiguous()
    impl.__name__ = fn.__name__
    return impl


for _name, _fn in {"rmsnorm_fwd": _rmsnorm_fwd_cpu, "add_rmsnorm_fwd": _add_rmsnorm_fwd_cpu,
                   "rmsnorm_bwd": _rmsnorm_bwd_cpu, "swiglu_fwd": _swiglu_fwd_cpu,
                   "swiglu_bwd": _swiglu_bwd_cpu, "rope": _rope_cpu, "rope_qk": _rope_qk_cpu,
                   "ce_fwd": _ce_fwd_cpu, "ce_bwd": _ce_bwd_cpu}.items():
    _lib.impl(_name, _contiguous_outputs(_fn), "CPU")


# ------------------------------------------------------------------------------------ autograd

def _rmsnorm_setup(ctx, inputs, output):
    x, weight, _ = inputs
    ctx.save_for_backward(x, weight, output[1])


def _rmsnorm_backward(ctx, grad_y, _grad_rstd):
    x, weight, rstd = ctx.saved_tensors
    dx, dw = ops.rmsnorm_bwd(grad_y, x, weight, rstd, None)
    return dx, dw, None


def _add_rmsnorm_setup(ctx, inputs, output):
    _, _, weight, _ = inputs
    _, h, rstd = output
    ctx.save_for_backward(h, weight, rstd)


def _add_rmsnorm_backward(ctx, grad_y, grad_h, _grad_rstd):
    h, weight, rstd = ctx.saved_tensors
    if grad_y is None:
        grad_y = torch.zeros_like(h)
    dh, dw = ops.rmsnorm_bwd(grad_y, h, weight, rstd, grad_h)
    return dh, dh, dw, None


def _swiglu_setup(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _swiglu_backward(ctx, grad):
    gate, up = ctx.saved_tensors
    return ops.swiglu_bwd(grad, gate, up)


def _rope_setup(ctx, inputs, output):
    ctx.save_for_backward(inputs[1], inputs[2])
    ctx.transpose = inputs[-1]


def _rope_backward(ctx, grad):
    cos, sin = ctx.saved_tensors
    return ops.rope(grad, cos, sin, not ctx.transpose), None, None, None


def _rope_qk_setup(ctx, inputs, output):
    ctx.save_for_backward(inputs[2], inputs[3])
    ctx.transpose = inputs[-1]


def _rope_qk_backward(ctx, grad_q, grad_k):
    cos, sin = ctx.saved_tensors
    t = not ctx.transpose
    if grad_q is None or grad_k is None:  # one of the outputs was not used
        gq = None if grad_q is None else ops.rope(grad_q, cos, sin, t)
        gk = None if grad_k is None else ops.rope(grad_k, cos, sin, t)
    else:
        gq, gk = ops.rope_qk(grad_q, grad_k, cos, sin, t)
    return gq, gk, None, None, None


torch.library.register_autograd(f"{NAMESPACE}::rmsnorm_fwd", _rmsnorm_backward,
                                setup_context=_rmsnorm_setup, lib=_lib)
torch.library.register_autograd(f"{NAMESPACE}::add_rmsnorm_fwd", _add_rmsnorm_backward,
                                setup_context=_add_rmsnorm_setup, lib=_lib)
torch.library.register_autograd(f"{NAMESPACE}::swiglu_fwd", _swiglu_backward,
                                setup_context=_swiglu_setup, lib=_lib)
torch.library.register_autograd(f"{NAMESPACE}::rope", _rope_backward,
                                setup_context=_rope_setup, lib=_lib)
torch.library.register_autograd(f"{NAMESPACE}::rope_qk", _rope_qk_backward,
                                setup_context=_rope_qk_setup, lib=_lib)


# ------------------------------------------------------------ differentiable fused functions

def rmsnorm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return ops.rmsnorm_fwd(x, weight, float(eps))[0]


def add_rmsnorm(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor,
                eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    y, h, _ = ops.add_rmsnorm_fwd(x, residual, weight, float(eps))
    return y, h


def swiglu(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    return ops.swiglu_fwd(gate, up)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    return ops.rope(x, cos, sin, False)


def apply_rope_qk(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor,
                  sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return ops.rope_qk(q, k, cos, sin, False)


class _FusedVocabParallelCE(torch.autograd.Function):
    """Vocab-parallel cross-entropy on the fused kernels: one read of the logits forward (local
    max and sum-exp online, rescaled to the global max after its all-reduce), one read and one
    write backward; saves the input-dtype logits and one fp32 log-sum-exp per row."""

    @staticmethod
    def forward(ctx, logits, target, vocab_start, group, world):
        vmax, sum_exp, target_logit = ops.ce_fwd(logits, target, vocab_start)
        gmax = vmax
        if world > 1:
            gmax = vmax.clone()
            dist.all_reduce(gmax, op=dist.ReduceOp.MAX, group=group)
            sum_exp = sum_exp * torch.exp(vmax - gmax)
        local = target - vocab_start
        inside = (local >= 0) & (local < logits.shape[-1])
        picked = torch.where(inside, target_logit - gmax, torch.zeros_like(target_logit))
        if world > 1:
            both = torch.stack([picked, sum_exp])
            dist.all_reduce(both, group=group)
            picked, sum_exp = both[0], both[1]
        log_sum = sum_exp.log()
        ctx.save_for_backward(logits, target, gmax + log_sum)
        ctx.vocab_start = vocab_start
        return log_sum - picked

    @staticmethod
    def backward(ctx, grad_loss):
        logits, target, lse = ctx.saved_tensors
        grad = ops.ce_bwd(grad_loss.contiguous(), logits, target, lse, ctx.vocab_start)
        return grad, None, None, None, None


def vocab_parallel_cross_entropy(logits: torch.Tensor, target: torch.Tensor, vocab_start: int = 0,
                                 group=None, world: int = 1) -> torch.Tensor:
    """Per-token loss [*] (fp32) from logits [*, vocab/world]; see the reference's docstring."""
    shape = target.shape
    loss = _FusedVocabParallelCE.apply(logits.reshape(-1, logits.shape[-1]), target.reshape(-1),
                                       int(vocab_start), group, int(world))
    return loss.view(shape)
