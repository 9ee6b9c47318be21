"""Validation loss on the held-out split of each of a phase's datasets.

`data.valid_fraction` makes megatron-core keep the last documents of every dataset out of its
training split; this measures the model on the first `validation.sequences` sequences of each
held-out split (megatron's own shuffled GPTDataset of the split, built once per phase): the
per-dataset loss, and their mean weighted by the phase's current blend (the loss of a batch drawn
as training draws them). Data-parallel ranks share the sequences and add up (loss, tokens); the
tensor-parallel ranks of a DP rank see the same sequences, as in training. Phase 2 repeats its
top files four times: its held-out files are where over-fitting shows.
"""
from __future__ import annotations

import torch
import torch.distributed as dist


class Validator:
    """Builds the validation splits of `data`'s datasets (collective: call on every rank)."""

    def __init__(self, data, pstate, *, sequences: int, micro_batch_size: int):
        self.data, self.pstate = data, pstate
        self.micro_batch_size = max(1, int(micro_batch_size))
        self.splits = {}
        for stream in data.streams:
            split = stream.build_valid()
            if split is not None and len(split):
                self.splits[stream.name] = (split, min(int(sequences), len(split)))

    def __bool__(self) -> bool:
        return bool(self.splits)

    @torch.no_grad()
    def run(self, model) -> dict[str, float]:
        """{"valid_loss": blend-weighted mean, "valid_loss/<dataset>": loss, ...} (every rank)."""
        ps = self.pstate
        was_training = model.training
        model.eval()
        try:
            totals = torch.zeros(len(self.splits), 2, dtype=torch.float64, device=ps.device)
            for row, (split, n) in enumerate(self.splits.values()):
                mine = list(range(ps.dp_rank, n, ps.dp_size))
                for i in range(0, len(mine), self.micro_batch_size):
                    items = [split[j] for j in mine[i:i + self.micro_batch_size]]
                    batch = {k: torch.stack([it[k] for it in items]).to(ps.device)
                             for k in ("tokens", "labels", "loss_mask")}
                    loss_sum, count = model(batch["tokens"], batch["labels"], batch["loss_mask"])
                    totals[row, 0] += loss_sum.double()
                    totals[row, 1] += count.double()
            if ps.dp_size > 1:
                dist.all_reduce(totals, group=ps.dp_group)
        finally:
            model.train(was_training)
        losses = {name: (t[0] / t[1]).item() for name, t in zip(self.splits, totals)}
        weights = self.data.weights
        mass = sum(weights.get(name, 0.0) for name in losses)
        out = {"valid_loss": (sum(weights.get(name, 0.0) * v for name, v in losses.items()) / mass
                              if mass > 0 else sum(losses.values()) / len(losses))}
        out.update({f"valid_loss/{name}": v for name, v in losses.items()})
        return out
