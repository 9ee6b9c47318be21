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

from .config import ConfigError, PhaseConfig, RunConfig, check_batch_layout
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
    dp = check_layout(cfg, ph, gpus)
    for key, value, example in (("--mfu", mfu, "0.4 (a fraction of peak)"), ("--peak-tflops", peak_tflops, "989"),
                                ("--gpu-memory-gib", gpu_memory_gib, "80")):
        if not value > 0:
            raise ConfigError(f"must be positive, got {value}", key=key, fix=f"e.g. {key} {example}")
    if mfu > 1:
        raise ConfigError(f"is a fraction of peak and cannot exceed 1, got {mfu}", key="--mfu",
                          fix="e.g. --mfu 0.4 for 40%")
    n = count_parameters(cfg.model)
    fpt = flops_per_token(cfg, ph.seq_len)
    steps = steps_for_phase(ph)
    tokens_step = ph.global_batch_size * ph.seq_len
    mem = memory_per_gpu(cfg, ph, tp, dp)
    per_gpu_tokens_s = mfu * peak_tflops * 1e12 / fpt
    seconds = ph.tokens * fpt / (gpus * peak_tflops * 1e12 * mfu)
    accum = ph.global_batch_size // (dp * ph.micro_batch_size)
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
    lines += data_lines(cfg, ph)
    return "\n".join(lines)


# Repeating data beyond about 4 epochs adds little (Muennighoff et al. 2023, data-constrained
# scaling); the recipe's phase 2 repeats its top files 4 times.
MANY_EPOCHS = 4.0


def data_lines(cfg: RunConfig, ph: PhaseConfig, file=None) -> list[str]:
    """The phase's blend, from the datasets' .idx files: each dataset's training tokens, weight
    and about how many epochs of it the phase draws. Data not there yet is one line saying so."""
    from .data.sources import blend_weights, open_sources
    index = [p.name for p in cfg.phases].index(ph.name)
    try:
        sources = open_sources(ph.datasets, seq_len=ph.seq_len, valid_fraction=cfg.data.valid_fraction,
                               key_prefix=f"phases[{index}]", file=file)
    except ConfigError as e:
        return [f"  data                 not read yet ({str(e).splitlines()[0]})"]
    weights, how = blend_weights(sources)
    samples = steps_for_phase(ph) * ph.global_batch_size
    width = max(len(s.name) for s in sources)
    lines = [f"  data                 {len(sources)} datasets, weights from {how}; epochs = samples "
             "drawn / samples in the training split"]
    for s, w in zip(sources, weights):
        epochs = w * samples / s.samples_per_epoch(ph.seq_len)   # open_sources ensures >= 1
        note = f"  <- over {MANY_EPOCHS:g} epochs: repeats add little beyond that" if epochs > MANY_EPOCHS else ""
        lines.append(f"    {s.name:{width}s}  {s.train_tokens:>15,} tokens  weight {w:.4f}  "
                     f"~{epochs:,.2f} epochs{note}")
    return lines


def check_layout(cfg: RunConfig, ph: PhaseConfig, gpus: int) -> int:
    """The data-parallel size on `gpus` GPUs, under the rules snowtrain train enforces (world
    divisible by tensor_parallel, global batch a whole number of micro-batches per rank); else
    a ConfigError with the nearest GPU counts that work."""
    tp, gbs, mbs = cfg.parallel.tensor_parallel, ph.global_batch_size, ph.micro_batch_size
    valid = [tp * d for d in range(1, gbs // mbs + 1) if gbs % (d * mbs) == 0]
    nearest = ", ".join(map(str, sorted(sorted(valid, key=lambda g: (abs(g - gpus), g))[:4])))
    if gpus < 1:
        raise ConfigError(f"must be a positive number of GPUs, got {gpus}", key="--gpus",
                          fix=f"give one of {nearest}" if valid else "e.g. --gpus 8")
    if gpus % tp:
        raise ConfigError(f"tensor_parallel={tp} does not divide --gpus {gpus}", key="parallel.tensor_parallel",
                          fix=f"plan for a multiple of {tp} GPUs (nearest that also fit the batch: {nearest}), "
                              "or change parallel.tensor_parallel")
    dp = gpus // tp
    if cfg.parallel.data_parallel is not None and cfg.parallel.data_parallel != dp:
        raise ConfigError(f"parallel.data_parallel={cfg.parallel.data_parallel} but {gpus} GPUs / "
                          f"tensor_parallel={tp} give {dp}", key="parallel.data_parallel",
                          fix=f"plan for {cfg.parallel.data_parallel * tp} GPUs or set data_parallel: null")
    check_batch_layout(gbs, mbs, dp, key=f"phases.{ph.name}.global_batch_size",
                       fix=f"plan for {nearest} GPUs, or make global_batch_size a multiple of "
                           f"data_parallel x micro_batch_size = {dp * mbs}")
    return dp


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
