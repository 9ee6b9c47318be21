"""The Llama model (RMSNorm, SwiGLU, RoPE, multi-head or grouped-query attention, no biases),
built from tensor-parallel layers. Read top to bottom: Attention, MLP, Block, Llama."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from .. import kernels
from ..config import ModelConfig
from .parallel import (ColumnParallelLinear, RowParallelLinear, TPGroup, VocabParallelEmbedding,
                       copy_to_tp, scaled_std)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float, dtype=torch.float32, device=None):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim, dtype=dtype, device=device))
        self.weight.tp_dim = None  # replicated on every tensor-parallel rank
        self.weight.global_shape = (dim,)

    def forward(self, x):
        return kernels.rmsnorm(x, self.weight, self.eps)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig, tp: TPGroup, layer: int, seed: int, dtype, device):
        super().__init__()
        self.heads = cfg.num_attention_heads // tp.size
        self.kv_heads = cfg.kv_heads // tp.size
        self.head_dim = cfg.head_dim
        h, kv = cfg.hidden_size, cfg.kv_heads * cfg.head_dim
        common = dict(seed=seed, dtype=dtype, device=device)
        self.q = ColumnParallelLinear(h, h, tp, name=f"layers.{layer}.attn.q", std=cfg.init_std, **common)
        self.k = ColumnParallelLinear(h, kv, tp, name=f"layers.{layer}.attn.k", std=cfg.init_std, **common)
        self.v = ColumnParallelLinear(h, kv, tp, name=f"layers.{layer}.attn.v", std=cfg.init_std, **common)
        self.o = RowParallelLinear(h, h, tp, name=f"layers.{layer}.attn.o",
                                   std=scaled_std(cfg.init_std, cfg.num_layers), **common)

    def forward(self, x, cos, sin):
        b, s, _ = x.shape
        q = self.q(x).view(b, s, self.heads, self.head_dim)
        k = self.k(x).view(b, s, self.kv_heads, self.head_dim)
        v = self.v(x).view(b, s, self.kv_heads, self.head_dim)
        q, k = kernels.apply_rope_qk(q, k, cos, sin)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # [b, heads, s, head_dim]
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True,
                                             enable_gqa=self.kv_heads != self.heads)
        return self.o(out.transpose(1, 2).reshape(b, s, self.heads * self.head_dim))


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig, tp: TPGroup, layer: int, seed: int, dtype, device):
        super().__init__()
        h, f = cfg.hidden_size, cfg.ffn_hidden_size
        common = dict(seed=seed, dtype=dtype, device=device)
        self.gate = ColumnParallelLinear(h, f, tp, name=f"layers.{layer}.mlp.gate", std=cfg.init_std, **common)
        self.up = ColumnParallelLinear(h, f, tp, name=f"layers.{layer}.mlp.up", std=cfg.init_std, **common)
        self.down = RowParallelLinear(f, h, tp, name=f"layers.{layer}.mlp.down",
                                      std=scaled_std(cfg.init_std, cfg.num_layers), **common)

    def forward(self, x):
        return self.down(kernels.swiglu(self.gate(x), self.up(x)))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, tp: TPGroup, layer: int, seed: int, dtype, device):
        super().__init__()
        self.attn_norm = RMSNorm(cfg.hidden_size, cfg.norm_eps, dtype, device)
        self.attn = Attention(cfg, tp, layer, seed, dtype, device)
        self.mlp_norm = RMSNorm(cfg.hidden_size, cfg.norm_eps, dtype, device)
        self.mlp = MLP(cfg, tp, layer, seed, dtype, device)

    def forward(self, x, cos, sin):
        attn = self.attn(self.attn_norm(x), cos, sin)
        normed, x = kernels.add_rmsnorm(attn, x, self.mlp_norm.weight, self.mlp_norm.eps)
        return x + self.mlp(normed)


class Llama(nn.Module):
    """forward(tokens) -> vocab-parallel logits [b, s, vocab/tp];
    forward(tokens, labels, loss_mask) -> (loss sum over unmasked tokens, unmasked token count)."""

    def __init__(self, cfg: ModelConfig, tp: TPGroup = TPGroup(), *, seed: int = 1234,
                 dtype=torch.float32, device=None):
        super().__init__()
        self.cfg, self.tp = cfg, tp
        common = dict(seed=seed, dtype=dtype, device=device)
        self.embed = VocabParallelEmbedding(cfg.vocab_size, cfg.hidden_size, tp, name="embed",
                                            std=cfg.init_std, **common)
        self.layers = nn.ModuleList(Block(cfg, tp, i, **common) for i in range(cfg.num_layers))
        if cfg.compile:  # per block, in place: parameter names (checkpoints) do not change
            for block in self.layers:
                block.compile()
        self.norm = RMSNorm(cfg.hidden_size, cfg.norm_eps, dtype, device)
        self.lm_head = None if cfg.tie_embeddings else ColumnParallelLinear(
            cfg.hidden_size, cfg.vocab_size, tp, name="lm_head", std=cfg.init_std, **common)
        cos, sin = kernels.rope_cos_sin(cfg.max_seq_len, cfg.head_dim, cfg.rope_theta, device)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)

    def logits(self, tokens):
        s = tokens.shape[1]
        if s > self.cfg.max_seq_len:
            raise ValueError(f"sequence of {s} tokens exceeds model.max_seq_len={self.cfg.max_seq_len}")
        cos, sin = self.rope_cos[:s], self.rope_sin[:s]
        x = self.embed(tokens)
        for layer in self.layers:
            if self.cfg.activation_checkpointing and self.training:
                x = checkpoint(layer, x, cos, sin, use_reentrant=False)
            else:
                x = layer(x, cos, sin)
        x = self.norm(x)
        if self.lm_head is not None:
            return self.lm_head(x)
        return F.linear(copy_to_tp(x, self.tp), self.embed.weight)

    def forward(self, tokens, labels=None, loss_mask=None):
        logits = self.logits(tokens)
        if labels is None:
            return logits
        losses = kernels.vocab_parallel_cross_entropy(
            logits, labels, self.embed.start, self.tp.group, self.tp.size)
        if loss_mask is None:
            return losses.sum(), losses.new_tensor(float(losses.numel()))
        mask = loss_mask.to(losses.dtype)
        return (losses * mask).sum(), mask.sum()


def count_parameters(cfg: ModelConfig) -> int:
    """Global parameter count of the model a config describes."""
    h, f, v, L = cfg.hidden_size, cfg.ffn_hidden_size, cfg.vocab_size, cfg.num_layers
    kv = cfg.kv_heads * cfg.head_dim
    per_layer = h * h * 2 + h * kv * 2 + 3 * h * f + 2 * h
    return v * h * (1 if cfg.tie_embeddings else 2) + L * per_layer + h
