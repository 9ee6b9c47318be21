"""One optimizer step over a rank's micro-batches: the loss is the mean over every unmasked
token of the global batch, so any split into data-parallel ranks and micro-batches gives the
same gradient."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.profiler import record_function


class NonFiniteLoss(RuntimeError):
    pass


@dataclass
class StepResult:
    loss: float
    grad_norm: float
    tokens: int          # unmasked tokens in the global batch
    skipped: bool = False


def _all_reduce(t: torch.Tensor, group, distributed: bool) -> torch.Tensor:
    if distributed:
        dist.all_reduce(t, group=group)
    return t


def train_step(model, optimizer, microbatches: list[dict], lr: float, pstate=None,
               on_nonfinite: str = "stop") -> StepResult:
    distributed = pstate is not None and pstate.world_size > 1
    dp_group = pstate.dp_group if pstate is not None else None
    device = optimizer.device
    count = sum(mb["loss_mask"].sum() for mb in microbatches).to(device=device, dtype=torch.float64)
    total = _all_reduce(count.reshape(1), dp_group, distributed).item()
    if total <= 0:
        raise ValueError("every token of this global batch is masked out of the loss")
    optimizer.zero_grad()
    loss_acc = torch.zeros((), dtype=torch.float64, device=device)
    for i, mb in enumerate(microbatches):
        optimizer.last_microbatch = i == len(microbatches) - 1
        with record_function("forward"):
            loss_sum, _ = model(mb["tokens"].to(device), mb["labels"].to(device), mb["loss_mask"].to(device))
        with record_function("backward"):
            (loss_sum / total).backward()
        loss_acc += loss_sum.detach().double()
    loss = _all_reduce(loss_acc.reshape(1), dp_group, distributed).item() / total
    with record_function("grad_sync"):
        optimizer.finish_grad_sync()
    norm = optimizer.grad_norm()
    finite = torch.tensor([float(math.isfinite(loss) and math.isfinite(norm))], device=device)
    if distributed:  # every rank must take the same decision
        dist.all_reduce(finite, op=dist.ReduceOp.MIN)
    if finite.item() < 1:
        if on_nonfinite == "skip":
            optimizer.zero_grad()
            return StepResult(loss, norm, int(total), skipped=True)
        raise NonFiniteLoss(f"loss {loss} / gradient norm {norm} is not finite")
    with record_function("optimizer"):
        optimizer.step(lr, norm)
    return StepResult(loss, norm, int(total))
