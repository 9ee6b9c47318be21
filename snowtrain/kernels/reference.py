"""Torch reference implementations of the ops that fused kernels replace."""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    """At least fp32: bf16 inputs are computed in fp32, float64 stays float64."""
    return torch.promote_types(x.dtype, torch.float32)


def rmsnorm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """Llama RMSNorm, computed in fp32 and returned in x's dtype."""
    xf = x.to(_compute_dtype(x))
    y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return (y * weight.to(xf.dtype)).to(x.dtype)


def add_rmsnorm(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor,
                eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The pre-norm block's "add, then normalise": (rmsnorm(h), h) with h = x + residual."""
    h = x + residual
    return rmsnorm(h, weight, eps), h


def swiglu(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    return F.silu(gate) * up


def rope_cos_sin(seq_len: int, head_dim: int, theta: float, device=None,
                 dtype=torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin tables [seq, head_dim] in the Llama (rotate-half) layout, computed in fp32."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32, device=device) / head_dim))
    freqs = torch.outer(torch.arange(seq_len, dtype=torch.float32, device=device), inv_freq)
    emb = torch.cat([freqs, freqs], dim=-1)
    return emb.cos().to(dtype), emb.sin().to(dtype)


def _rotate_half(x):
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: [batch, seq, heads, head_dim]; cos/sin: [seq, head_dim]."""
    xf = x.to(_compute_dtype(x))
    c, s = cos[None, :, None, :].to(xf.dtype), sin[None, :, None, :].to(xf.dtype)
    return (xf * c + _rotate_half(xf) * s).to(x.dtype)


def apply_rope_qk(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor,
                  sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """apply_rope on queries and keys (which may have fewer heads)."""
    return apply_rope(q, cos, sin), apply_rope(k, cos, sin)


class _VocabParallelCE(torch.autograd.Function):
    """Cross-entropy over logits split along the vocabulary; never gathers the full logits."""

    @staticmethod
    def forward(ctx, logits, target, vocab_start, group, world):
        ctx.in_dtype = logits.dtype
        logits = logits.float()
        vmax = logits.amax(dim=-1)  # max(dim) also computes indices: ~6x slower on CPU
        if world > 1:
            dist.all_reduce(vmax, op=dist.ReduceOp.MAX, group=group)
        shifted = logits - vmax.unsqueeze(-1)
        local = target - vocab_start
        inside = (local >= 0) & (local < logits.shape[-1])
        local = local.masked_fill(~inside, 0)
        picked = shifted.gather(-1, local.unsqueeze(-1)).squeeze(-1).masked_fill(~inside, 0.0)
        exp = shifted.exp_()
        sum_exp = exp.sum(dim=-1)
        if world > 1:
            both = torch.stack([picked, sum_exp])
            dist.all_reduce(both, group=group)
            picked, sum_exp = both[0], both[1]
        loss = sum_exp.log() - picked
        exp.div_(sum_exp.unsqueeze(-1))  # now the softmax, kept for backward
        ctx.save_for_backward(exp, local, inside)
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        softmax, local, inside = ctx.saved_tensors
        grad = softmax.clone()  # not in place: a retained graph (gradcheck) may run backward again
        grad.scatter_add_(-1, local.unsqueeze(-1), -inside.to(grad.dtype).unsqueeze(-1))
        grad.mul_(grad_loss.unsqueeze(-1))
        return grad.to(ctx.in_dtype), None, None, None, None


def vocab_parallel_cross_entropy(logits: torch.Tensor, target: torch.Tensor, vocab_start: int = 0,
                                 group=None, world: int = 1) -> torch.Tensor:
    """Per-token loss [*]: logits [*, vocab/world] hold vocabulary ids [vocab_start, +shard)."""
    shape = target.shape
    loss = _VocabParallelCE.apply(logits.reshape(-1, logits.shape[-1]), target.reshape(-1),
                                  vocab_start, group, world)
    return loss.view(shape)
