"""Learning-rate schedules, one per phase, as a function of the step within the phase."""
from __future__ import annotations

import math

from ..config import ScheduleConfig


def lr_at(step: int, sch: ScheduleConfig, total_steps: int, default_peak: float) -> float:
    """LR for optimizer step `step` (0-based) of a phase of `total_steps` steps.

    Warmup is linear from start_lr to peak over warmup_steps (step warmup_steps reaches peak).
    """
    peak = sch.peak_lr if sch.peak_lr is not None else default_peak
    warm = sch.warmup_steps
    if step < warm:
        return sch.start_lr + (peak - sch.start_lr) * (step + 1) / warm
    if sch.kind == "constant":
        return peak
    end = sch.decay_steps if sch.decay_steps is not None else total_steps
    if sch.kind == "wsd":
        decay_len = max(1, round(sch.decay_fraction * (end - warm)))
        start = end - decay_len
        if step < start:
            return peak
        frac = min(1.0, (step - start + 1) / decay_len)
        return peak + (sch.min_lr - peak) * frac
    span = max(1, end - warm)
    frac = min(1.0, (step - warm + 1) / span)
    if sch.kind == "linear":
        return peak + (sch.min_lr - peak) * frac
    if sch.kind == "cosine":
        return sch.min_lr + 0.5 * (peak - sch.min_lr) * (1.0 + math.cos(math.pi * frac))
    raise ValueError(f"unknown schedule kind {sch.kind!r}")
