"""Megatron-style tensor-parallel layers over an explicit process group.

Column-parallel layers split the output features across the tensor-parallel group, row-parallel
layers split the input features and sum the partial results, the vocab-parallel embedding splits
the vocabulary. Weights are initialised as the full global tensor from a generator seeded by
(seed, name) and then sliced, so a model built with TP=1 and with TP=2 holds the same weights.
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Optional

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class TPGroup:
    """The tensor-parallel group a layer belongs to; size 1 needs no torch.distributed."""
    rank: int = 0
    size: int = 1
    group: Optional[dist.ProcessGroup] = None

    @classmethod
    def from_state(cls, state) -> "TPGroup":
        return cls(state.tp_rank, state.tp_size, state.tp_group)


# --------------------------------------------------------------------- communication with autograd

class _CopyToTP(torch.autograd.Function):
    """Identity forward; all-reduce of the gradient backward (the input is used by every shard)."""

    @staticmethod
    def forward(ctx, x, tp):
        ctx.tp = tp
        return x

    @staticmethod
    def backward(ctx, g):
        if ctx.tp.size > 1:
            g = g.contiguous()
            dist.all_reduce(g, group=ctx.tp.group)
        return g, None


class _ReduceFromTP(torch.autograd.Function):
    """All-reduce forward (sum the shards' partial results); identity backward."""

    @staticmethod
    def forward(ctx, x, tp):
        if tp.size > 1:
            x = x.contiguous()
            dist.all_reduce(x, group=tp.group)
        return x

    @staticmethod
    def backward(ctx, g):
        return g, None


class _GatherFromTP(torch.autograd.Function):
    """Concatenate the shards along the last dim forward; take our slice backward."""

    @staticmethod
    def forward(ctx, x, tp):
        ctx.tp = tp
        if tp.size == 1:
            return x
        parts = [torch.empty_like(x) for _ in range(tp.size)]
        dist.all_gather(parts, x.contiguous(), group=tp.group)
        return torch.cat(parts, dim=-1)

    @staticmethod
    def backward(ctx, g):
        if ctx.tp.size == 1:
            return g, None
        return g.chunk(ctx.tp.size, dim=-1)[ctx.tp.rank].contiguous(), None


def copy_to_tp(x, tp: TPGroup):
    return _CopyToTP.apply(x, tp) if tp.size > 1 else x


def reduce_from_tp(x, tp: TPGroup):
    return _ReduceFromTP.apply(x, tp) if tp.size > 1 else x


def gather_from_tp(x, tp: TPGroup):
    return _GatherFromTP.apply(x, tp) if tp.size > 1 else x


# --------------------------------------------------------------------- seeded initialisation

def seeded_generator(seed: int, name: str) -> torch.Generator:
    digest = hashlib.blake2b(f"{seed}/{name}".encode(), digest_size=8).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest, "little") & (2**63 - 1))


def init_global_normal(shape, std: float, seed: int, name: str) -> torch.Tensor:
    """The full (unsharded) weight, identical on every rank and for every parallel layout."""
    return torch.empty(shape, dtype=torch.float32).normal_(0.0, std, generator=seeded_generator(seed, name))


def shard(t: torch.Tensor, dim: int, tp: TPGroup) -> torch.Tensor:
    if t.shape[dim] % tp.size:
        raise ValueError(f"dimension {dim} of size {t.shape[dim]} is not divisible by "
                         f"tensor_parallel={tp.size}")
    return t.chunk(tp.size, dim=dim)[tp.rank].contiguous()


def _param(global_weight: torch.Tensor, dim: int, tp: TPGroup, dtype, device) -> nn.Parameter:
    p = nn.Parameter(shard(global_weight, dim, tp).to(device=device, dtype=dtype))
    # The trainer reads these to build sharded checkpoints and the true global grad norm.
    p.tp_dim = dim
    p.global_shape = tuple(global_weight.shape)
    return p


class ColumnParallelLinear(nn.Module):
    """y = x W^T with W's output rows split across the group; the output stays split."""

    def __init__(self, in_features, out_features, tp: TPGroup, *, name: str, seed: int,
                 std: float, dtype=torch.float32, device=None):
        super().__init__()
        self.tp = tp
        w = init_global_normal((out_features, in_features), std, seed, name)
        self.weight = _param(w, 0, tp, dtype, device)

    def forward(self, x):
        return F.linear(copy_to_tp(x, self.tp), self.weight)


class RowParallelLinear(nn.Module):
    """y = sum over shards of x_shard W_shard^T, input features split across the group."""

    def __init__(self, in_features, out_features, tp: TPGroup, *, name: str, seed: int,
                 std: float, dtype=torch.float32, device=None):
        super().__init__()
        self.tp = tp
        w = init_global_normal((out_features, in_features), std, seed, name)
        self.weight = _param(w, 1, tp, dtype, device)

    def forward(self, x):
        return reduce_from_tp(F.linear(x, self.weight), self.tp)


class VocabParallelEmbedding(nn.Module):
    """Each shard holds a contiguous range of the vocabulary; ids outside it contribute zeros."""

    def __init__(self, vocab_size, hidden_size, tp: TPGroup, *, name: str, seed: int,
                 std: float, dtype=torch.float32, device=None):
        super().__init__()
        self.tp = tp
        self.vocab_size = vocab_size
        self.per_rank = vocab_size // tp.size
        self.start = tp.rank * self.per_rank
        w = init_global_normal((vocab_size, hidden_size), std, seed, name)
        self.weight = _param(w, 0, tp, dtype, device)

    def forward(self, ids):
        if self.tp.size == 1:
            return F.embedding(ids, self.weight)
        local = ids - self.start
        outside = (local < 0) | (local >= self.per_rank)
        out = F.embedding(local.masked_fill(outside, 0), self.weight)
        out = out.masked_fill(outside.unsqueeze(-1), 0.0)
        return reduce_from_tp(out, self.tp)


def scaled_std(std: float, num_layers: int) -> float:
    """Output projections of residual branches get std / sqrt(2 * layers) (GPT-2, Megatron)."""
    return std / math.sqrt(2.0 * num_layers)
