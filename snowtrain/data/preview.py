"""`snowtrain samples`: the training samples of a step, as the trainer takes them: which dataset
each comes from, its index there, and its text (decoded with the run's tokenizer). For checking
a blend or a new dataset before spending GPU hours, or for looking at what a loss spike saw."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..config import ConfigError, RunConfig


@dataclass
class StepSample:
    sample: int          # global sample index in the phase
    dataset: str
    index: int           # the sample's index in its dataset's stream
    tokens: np.ndarray   # the seq_len input ids (the labels are these shifted by one)


def step_samples(data, step: int) -> list[StepSample]:
    """The global batch of optimizer step `step` (1-based, as the logs count), in order."""
    gbs = data.phase.global_batch_size
    if not 1 <= step <= data.total_steps:
        raise ConfigError(f"--step {step} is outside the phase's steps 1..{data.total_steps}",
                          key="--step", fix=f"give a step from 1 to {data.total_steps}")
    start = (step - 1) * gbs
    ds, per = data.assign(start, start + gbs)
    return [StepSample(start + i, data.names[int(d)], int(j),
                       np.asarray(data.sample(int(d), int(j))["tokens"]))
            for i, (d, j) in enumerate(zip(ds, per))]


def load_checkpoint_data(data, checkpoint) -> str | None:
    """`data` positioned as a run resuming from `checkpoint` with this config would be: its blend
    history, then the config's weights from its step on. -> the blend change, if any."""
    path = Path(checkpoint) / "extra.json"
    try:
        state = json.loads(path.read_text())["data"]
        return data.load_state_dict(state)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ConfigError(f"cannot take the data position from it ({type(e).__name__}: {e})", file=path,
                          key="--checkpoint", fix="give a checkpoint folder (step_N) of this phase") from None


def samples_text(cfg: RunConfig, phase: str, step: int, count: int, chars: int, config_file=None,
                 checkpoint=None) -> str:
    from data_prep.tokenizer import Tokenizer

    from .phase import PhaseData
    from ..config import resolve_path
    data = PhaseData.from_config(cfg, phase, config_file=config_file)
    change = load_checkpoint_data(data, checkpoint) if checkpoint else None
    tok = Tokenizer(resolve_path(cfg.tokenizer, "tokenizer", config_file)) if cfg.tokenizer else None
    rows = step_samples(data, step)
    lines = [f"{phase} step {step}/{data.total_steps}: samples {rows[0].sample}-{rows[-1].sample}, "
             f"{data.seq_len} tokens each, weights from {data.weights_from}"
             + (f"; the blend of {checkpoint} and after it" if checkpoint else "")]
    if change:
        lines.append(f"  ({change})")
    shown = rows[:count] if count else rows
    width = max(len(r.dataset) for r in shown)
    for r in shown:
        if tok is not None:
            body = repr(tok.decode(r.tokens.tolist())[:chars])
        else:
            body = " ".join(map(str, r.tokens[:max(1, chars // 4)].tolist())) + " ... (token ids: no tokenizer in the config)"
        lines.append(f"  sample {r.sample:>8}  {r.dataset:{width}s} #{r.index:<8} {body}")
    if len(shown) < len(rows):
        lines.append(f"  ... {len(rows) - len(shown)} more (--count 0 shows all)")
    counts = {}
    for r in rows:
        counts[r.dataset] = counts.get(r.dataset, 0) + 1
    lines.append("  this step: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    return "\n".join(lines)
