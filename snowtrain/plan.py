"""What a run will cost before it spends GPU hours: parameters, FLOPs, steps, memory, time.

FLOPs per token (training, forward + backward) = 6 N + 12 L h s: 6 per parameter per token for
the matrix multiplies, plus attention's score and value products (4 L h s forward, x3 with the
backward). MFU = achieved FLOPs / (GPUs x peak). Memory per GPU (bytes), with N_tp = N / TP:
  weights   2 N_tp (bf16) or 4 N_tp (fp32)
  gradients 4 N_tp (fp32 main gradients) or 2 N_tp (bf16 reduction)
  optimizer 12 N_tp (fp32 master, exp_avg, exp_avg_sq), divided by DP with ZeRO-1
  activations per micro-batch (flash attention, no sequence parallelism; Korthikanti et al. 2022):
            L s b h (10 + 24 / TP) bf16 bytes, or 2 s b h per layer plus one layer's worth with
            activation checkpointing; plus the loss: s b V / TP x (2 + 4 + 4) for bf16 logits,
            their fp32 copy and the fp32 softmax kept for the backward.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from .config import PhaseConfig, RunConfig
from .model.llama import count_parameters

GiB = 2**30
H100_BF16_PEAK_TFLOPS = 989.0


def flops_per_token(cfg: RunConfig, seq_len: int) -> float:
    m = cfg.model
    # An untied input embedding is a lookup, not a matrix multiply: no FLOPs.
    matmul_params = count_parameters(m) - (0 if m.tie_embeddings else m.vocab_size * m.hidden_size)
    return 6.0 * matmul_params + 12.0 * m.num_layers * m.hidden_size * seq_len


def steps_for_phase(phase: PhaseConfig) -> int:
    return math.ceil(phase.tokens / (phase.global_batch_size * phase.seq_len))


@dataclass
class MemoryEstimate:
    weights: float
    gradients: float
    optimizer: float
    activations: float
    loss: float

    @property
    def total(self) -> float:
        return self.weights + self.gradients + self.optimizer + self.activations + self.loss


def memory_per_gpu(cfg: RunConfig, phase: PhaseConfig, tp: int, dp: int) -> MemoryEstimate:
    m = cfg.model
    n_tp = count_parameters(m) / tp
    bf16 = cfg.precision.compute_dtype == "bf16"
    act_bytes = 2 if bf16 else 4
    s, b, h, L = phase.seq_len, phase.micro_batch_size, m.hidden_size, m.num_layers
    per_layer = s * b * h * (10 + 24 / tp) * act_bytes / 2
    if m.activation_checkpointing:
        acts = L * s * b * h * act_bytes + per_layer
    else:
        acts = L * per_layer
    return MemoryEstimate(
        weights=n_tp * (2 if bf16 else 4),
        gradients=n_tp * (4 if cfg.precision.grad_reduce_dtype == "fp32" else 2),
        optimizer=12 * n_tp / (dp if cfg.parallel.zero1 else 1),
        activations=acts,
        loss=s * b * m.vocab_size / tp * (act_bytes + 8),
    )


def plan_text(cfg: RunConfig, phase_name: str, gpus: int, mfu: float = 0.5,
              peak_tflops: float = H100_BF16_PEAK_TFLOPS, gpu_memory_gib: float = 80.0) -> str:
    ph = cfg.phase(phase_name)
    tp = cfg.parallel.tensor_parallel
    dp = max(1, gpus // tp)
    n = count_parameters(cfg.model)
    fpt = flops_per_token(cfg, ph.seq_len)
    steps = steps_for_phase(ph)
    tokens_step = ph.global_batch_size * ph.seq_len
    mem = memory_per_gpu(cfg, ph, tp, dp)
    per_gpu_tokens_s = mfu * peak_tflops * 1e12 / fpt
    seconds = ph.tokens * fpt / (gpus * peak_tflops * 1e12 * mfu)
    accum = ph.global_batch_size // max(1, dp * ph.micro_batch_size)
    lines = [
        f"plan for {cfg.name} / {ph.name} on {gpus} GPUs (TP={tp}, DP={dp}"
        f"{', ZeRO-1' if cfg.parallel.zero1 else ''})",
        f"  parameters           {_si(n, 'B' if n >= 1e9 else 'M')}",
        f"  FLOPs per token      {fpt / 1e9:.2f} GFLOP (6N + 12 L h s, training)" if fpt >= 1e8 else
        f"  FLOPs per token      {fpt / 1e6:.2f} MFLOP (6N + 12 L h s, training)",
        f"  tokens per step      {tokens_step:,} ({ph.global_batch_size} x {ph.seq_len})",
        f"  steps in phase       {steps:,} for {ph.tokens / 1e9:g} B tokens" if ph.tokens >= 1e8 else
        f"  steps in phase       {steps:,} for {ph.tokens:,} tokens",
        f"  micro-batches/step   {accum} per rank of {ph.micro_batch_size} sequences",
        f"  memory per GPU       {mem.total / GiB:.1f} GiB = weights {mem.weights / GiB:.1f} + "
        f"gradients {mem.gradients / GiB:.1f} + optimizer {mem.optimizer / GiB:.1f} + "
        f"activations {mem.activations / GiB:.1f} + loss {mem.loss / GiB:.1f}",
        f"  at {mfu:.0%} MFU          {per_gpu_tokens_s:,.0f} tokens/s per GPU "
        f"({peak_tflops:g} TFLOP/s peak); phase takes {seconds / 3600:.2g} h "
        f"({seconds / 86400:.2f} days, {seconds * gpus / 3600:,.0f} GPU-hours)",
    ]
    problem = fit_problem(cfg, ph, tp, dp, gpu_memory_gib)
    lines.append(f"  fits {gpu_memory_gib:g} GiB?      " + ("yes" if problem is None else f"NO: {problem}"))
    return "\n".join(lines)


def _si(n: float, unit: str) -> str:
    return f"{n / 1e9:.3f} B" if unit == "B" else f"{n / 1e6:.3f} M"


def fit_problem(cfg: RunConfig, ph: PhaseConfig, tp: int, dp: int, gpu_memory_gib: float) -> str | None:
    """None when the layout fits (90% of the card), else what to change."""
    mem = memory_per_gpu(cfg, ph, tp, dp)
    if mem.total <= 0.9 * gpu_memory_gib * GiB:
        return None
    hints = []
    if not cfg.parallel.zero1 and dp > 1:
        hints.append("set parallel.zero1=true")
    if not cfg.model.activation_checkpointing:
        hints.append("set model.activation_checkpointing=true")
    if ph.micro_batch_size > 1:
        hints.append(f"lower phases.{ph.name}.micro_batch_size")
    hints.append("raise parallel.tensor_parallel")
    return (f"needs about {mem.total / GiB:.1f} GiB per GPU, more than 90% of {gpu_memory_gib:g} GiB; "
            + ", or ".join(hints))
