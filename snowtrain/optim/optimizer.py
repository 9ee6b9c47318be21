"""Mixed-precision AdamW with bucketed data-parallel gradient reduction and optional ZeRO-1.

Gradients of the (bf16 or fp32) model parameters are accumulated into fp32 (configurable) main
gradient buckets by hooks that run as the backward pass produces them; on the last micro-batch a
bucket's reduction starts (asynchronously) as soon as all its parameters are done, overlapping the
rest of the backward pass. The optimizer updates fp32 master weights and copies them back.

ZeRO-1 shards the master weights and Adam moments across the data-parallel group: every
parameter is cut into `dp` near-equal chunks along a dimension that tensor parallelism does not
split (the DTensor `Shard` convention: chunk size ceil(n / dp), trailing chunks may be empty).
Buckets then lay out every rank's chunks contiguously, so the reduction is one reduce-scatter and
the weight update one all-gather per bucket.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
import torch.distributed as dist
from torch import nn

from ..config import RunConfig


def zero_dim(p: nn.Parameter) -> int:
    """The dimension ZeRO-1 chunks: not the tensor-parallel one."""
    tp_dim = getattr(p, "tp_dim", None)
    return 1 if (tp_dim == 0 and p.dim() > 1) else 0


def chunk_bounds(n: int, parts: int, index: int) -> tuple[int, int]:
    size = math.ceil(n / parts) if n else 0
    return min(index * size, n), min((index + 1) * size, n)


@dataclass
class _Entry:
    """One parameter's place in a bucket: per DP rank, the offset and length of its chunk."""
    name: str
    param: nn.Parameter
    dim: int
    bounds: list[tuple[int, int]]     # per DP rank, [start, end) along dim
    offsets: list[int]                # per DP rank, offset of the chunk in the bucket buffer
    sizes: list[int]                  # per DP rank, elements of the chunk

    def chunk(self, t: torch.Tensor, r: int) -> torch.Tensor:
        a, b = self.bounds[r]
        return t.narrow(self.dim, a, b - a)


class _Bucket:
    def __init__(self, entries: list[_Entry], section: int, dp: int, dtype, device):
        self.entries = entries
        self.section = section        # elements per DP rank's section (ZeRO) or whole (plain)
        self.grad = torch.zeros(section * dp, dtype=dtype, device=device)
        self.pending = len(entries)
        self.work = None


class DistributedOptimizer:
    """AdamW over fp32 masters; see the module docstring. `model` parameters must carry `tp_dim`
    (None for replicated) as snowtrain's parallel layers set it."""

    def __init__(self, model: nn.Module, cfg: RunConfig, pstate=None):
        self.cfg = cfg
        self.zero = cfg.parallel.zero1
        self.dp = pstate.dp_size if pstate is not None else 1
        self.dp_rank = pstate.dp_rank if pstate is not None else 0
        self.tp_rank = pstate.tp_rank if pstate is not None else 0
        self.dp_group = pstate.dp_group if pstate is not None else None
        self.tp_group = pstate.tp_group if pstate is not None else None
        self.world_group = None  # default group for ZeRO norms
        self.distributed = pstate is not None and pstate.world_size > 1
        grad_dtype = torch.float32 if cfg.precision.grad_reduce_dtype == "fp32" else torch.bfloat16
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        self.params = [p for _, p in named]
        device = self.params[0].device
        self.device = device
        parts = self.dp if self.zero else 1
        # Buckets in reverse order: the backward pass produces the last layers' gradients first.
        bucket_elems = max(1, int(cfg.parallel.grad_bucket_mb * 2**20 / torch.finfo(grad_dtype).bits * 8))
        self.buckets: list[_Bucket] = []
        self.entry_of: dict[nn.Parameter, tuple[_Bucket, _Entry]] = {}
        group: list[tuple[str, nn.Parameter]] = []
        for i, (name, p) in enumerate(reversed(named)):
            group.append((name, p))
            if sum(q.numel() for _, q in group) >= bucket_elems or i == len(named) - 1:
                self._make_bucket(group, parts, grad_dtype, device)
                group = []
        # fp32 masters of this rank's chunks, in the optimizer's parameter groups
        self.masters: dict[nn.Parameter, torch.Tensor] = {}
        decay, no_decay = [], []
        for p in self.params:
            _, e = self.entry_of[p]
            r = self.dp_rank if self.zero else 0
            m = e.chunk(p.detach(), r).to(torch.float32).clone()
            self.masters[p] = m
            (decay if p.dim() >= 2 else no_decay).append(m)
        self.optimizer = self._make_torch_optimizer(decay, no_decay, device)
        self.last_microbatch = True
        self._hooks = [p.register_post_accumulate_grad_hook(self._on_grad) for p in self.params]

    # ------------------------------------------------------------------ set-up
    def _make_bucket(self, group, parts, dtype, device):
        entries, per_rank = [], [0] * parts
        for name, p in group:
            dim = zero_dim(p)
            bounds = [chunk_bounds(p.shape[dim], parts, r) for r in range(parts)]
            row = p.numel() // p.shape[dim] if p.shape[dim] else 0
            sizes = [(b - a) * row for a, b in bounds]
            offsets = []
            for r in range(parts):
                offsets.append(per_rank[r])
                per_rank[r] += sizes[r]
            entries.append(_Entry(name, p, dim, bounds, offsets, sizes))
        section = max(per_rank)
        bucket = _Bucket(entries, section, parts, dtype, device)
        for e in entries:
            e.offsets = [r * section + off for r, off in enumerate(e.offsets)]
            self.entry_of[e.param] = (bucket, e)
        self.buckets.append(bucket)

    def _make_torch_optimizer(self, decay, no_decay, device):
        o = self.cfg.optim
        groups = [{"params": decay, "weight_decay": o.weight_decay},
                  {"params": no_decay, "weight_decay": 0.0}]
        kwargs = dict(lr=o.lr, betas=tuple(o.betas), eps=o.eps)
        impl = o.impl
        if impl == "apex":
            try:
                from apex.optimizers import FusedAdam
            except ImportError as e:
                raise RuntimeError("optim.impl=apex but apex is not installed; install apex or "
                                   "use optim.impl=auto") from e
            opt = FusedAdam(groups, adam_w_mode=True, **kwargs)
        else:
            fused = device.type == "cuda" and impl in ("auto", "fused")
            opt = torch.optim.AdamW(groups, fused=fused or None, foreach=None if fused else True, **kwargs)
        for g in opt.param_groups:  # moments exist from the start so checkpoints have a fixed shape
            for m in g["params"]:
                opt.state[m] = {"step": torch.zeros((), dtype=torch.float32,
                                                    device=m.device if device.type == "cuda" else "cpu"),
                                "exp_avg": torch.zeros_like(m), "exp_avg_sq": torch.zeros_like(m)}
        return opt

    # ------------------------------------------------------------------ gradients
    def zero_grad(self):
        for b in self.buckets:
            b.grad.zero_()
            b.pending = len(b.entries)
            b.work = None
        for p in self.params:
            p.grad = self._grad_view(p)

    def _grad_view(self, p):
        """p's slot in its bucket as its .grad, where autograd can accumulate into it directly
        (same dtype, a contiguous slot: no ZeRO chunking); else None."""
        bucket, e = self.entry_of[p]
        if p.dtype != bucket.grad.dtype or (self.zero and e.sizes[0] != p.numel()):
            return None
        return bucket.grad[e.offsets[0]:e.offsets[0] + p.numel()].view_as(p)

    def _on_grad(self, p: nn.Parameter):
        bucket, e = self.entry_of[p]
        g = p.grad
        slot = bucket.grad[e.offsets[0]:e.offsets[0] + p.numel()]
        if g.data_ptr() != slot.data_ptr():  # not accumulated in place (dtype differs, or ZeRO)
            if e.sizes[0] == p.numel() or not self.zero:
                slot.add_(g.reshape(-1))
            else:
                for r in range(self.dp):
                    if e.sizes[r]:
                        bucket.grad[e.offsets[r]:e.offsets[r] + e.sizes[r]].add_(e.chunk(g, r).reshape(-1))
            p.grad = None
        if self.last_microbatch:
            bucket.pending -= 1
            if bucket.pending == 0:
                self._reduce(bucket)

    def _reduce(self, bucket: _Bucket):
        if self.dp == 1:
            return
        if self.zero:
            mine = bucket.grad[self.dp_rank * bucket.section:(self.dp_rank + 1) * bucket.section]
            bucket.work = dist.reduce_scatter_tensor(mine, bucket.grad, group=self.dp_group, async_op=True)
        else:
            bucket.work = dist.all_reduce(bucket.grad, group=self.dp_group, async_op=True)

    def finish_grad_sync(self):
        for b in self.buckets:
            if b.pending:  # parameters that got no gradient this step (unused) still reduce
                b.pending = 0
                self._reduce(b)
            if b.work is not None:
                b.work.wait()
                b.work = None

    def _my_grad(self, p) -> torch.Tensor:
        bucket, e = self.entry_of[p]
        r = self.dp_rank if self.zero else 0
        shape = list(p.shape)
        a, b = e.bounds[r]
        shape[e.dim] = b - a
        return bucket.grad[e.offsets[r]:e.offsets[r] + e.sizes[r]].view(shape)

    # ------------------------------------------------------------------ the step
    def grad_norm(self) -> float:
        """The true global L2 norm: sharded gradients summed over their shards, gradients
        replicated across tensor-parallel ranks counted once."""
        grads = [self._my_grad(p) for p in self.params
                 if getattr(p, "tp_dim", None) is not None or self.tp_rank == 0]
        grads = [g for g in grads if g.numel()]
        total = (torch.stack(torch._foreach_norm(grads)).double().pow(2).sum() if grads
                 else torch.zeros((), dtype=torch.float64, device=self.device))
        if self.distributed:
            # ZeRO: every rank holds distinct chunks, so sum over the world; otherwise over TP.
            group = None if self.zero else self.tp_group
            if group is not None or self.zero:
                dist.all_reduce(total, group=group)
        return math.sqrt(total.item())

    def step(self, lr: float, norm: Optional[float] = None) -> float:
        """Clips to optim.grad_clip by the global norm, updates, copies back. Returns the norm
        before clipping (pass it in when already computed)."""
        self.finish_grad_sync()
        if norm is None:
            norm = self.grad_norm()
        clip = self.cfg.optim.grad_clip
        scale = clip / (norm + 1e-6) if clip > 0 and norm > clip else 1.0
        grads = [self._my_grad(p).to(torch.float32) for p in self.masters]
        if scale != 1.0:  # in place: the buckets are zeroed before the next step
            torch._foreach_mul_(grads, scale)
        for m, g in zip(self.masters.values(), grads):
            m.grad = g
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.step()
        for m in self.masters.values():
            m.grad = None
        self._copy_back()
        return norm

    @torch.no_grad()
    def _copy_back(self):
        if not self.zero or self.dp == 1:
            torch._foreach_copy_(list(self.masters), list(self.masters.values()))
            return
        for b in self.buckets:
            flat = torch.empty(b.section * self.dp, dtype=b.entries[0].param.dtype, device=self.device)
            mine = flat[self.dp_rank * b.section:(self.dp_rank + 1) * b.section]
            for e in b.entries:
                off = e.offsets[self.dp_rank] - self.dp_rank * b.section
                mine[off:off + e.sizes[self.dp_rank]].copy_(self.masters[e.param].reshape(-1))
            dist.all_gather_into_tensor(flat, mine, group=self.dp_group)
            for e in b.entries:
                for r in range(self.dp):
                    if e.sizes[r]:
                        e.chunk(e.param, r).copy_(flat[e.offsets[r]:e.offsets[r] + e.sizes[r]]
                                                  .view(e.chunk(e.param, r).shape))

    # ------------------------------------------------------------------ state
    def named_state(self) -> dict[str, dict[str, torch.Tensor]]:
        """Per parameter name: this rank's chunk of master, exp_avg, exp_avg_sq."""
        out = {}
        for p, m in self.masters.items():
            _, e = self.entry_of[p]
            st = self.optimizer.state[m]
            out[e.name] = {"master": m, "exp_avg": st["exp_avg"], "exp_avg_sq": st["exp_avg_sq"]}
        return out

    def set_step(self, step: int):
        for st in self.optimizer.state.values():
            st["step"].fill_(float(step))

    @torch.no_grad()
    def reload_params_from_masters(self):
        self._copy_back()

    @torch.no_grad()
    def load_weights(self, local: dict[str, torch.Tensor]):
        """New weights, per parameter name this rank's tensor-parallel shard (at any precision):
        each master takes its chunk in fp32, then the parameters are refreshed from the masters."""
        r = self.dp_rank if self.zero else 0
        for p, m in self.masters.items():
            _, e = self.entry_of[p]
            m.copy_(e.chunk(local[e.name].to(device=m.device, dtype=torch.float32), r))
        self._copy_back()

    @torch.no_grad()
    def reset_moments(self):
        """A new phase keeps the weights and starts Adam afresh."""
        for st in self.optimizer.state.values():
            st["exp_avg"].zero_()
            st["exp_avg_sq"].zero_()
            st["step"].zero_()

    def zero_chunk_info(self, name_to_param=None) -> dict[str, tuple[int, int, int]]:
        """name -> (dim, start, end) of this rank's chunk (for checkpoint placements)."""
        r = self.dp_rank if self.zero else 0
        return {e.name: (e.dim, *e.bounds[r]) for _, e in self.entry_of.values()}
