"""A phase's training data: the blend of its datasets, its position, and its batches.

    data = PhaseData.from_config(cfg, "phase2")
    if checkpoint: data.load_state_dict(checkpoint["data"])   # may start a new blend segment
    for micro_batches in data.batches():                      # one list per optimizer step
        train_step(micro_batches)
        if time_to_save: save({"data": data.state_dict(), ...})

The position advances when a step's micro-batches are handed out, so a state saved after
running step N resumes with step N+1, exactly.
"""
from __future__ import annotations

import logging
import math
import os
from typing import Iterator, Mapping, Optional

import numpy as np
import torch

from snowtrain.config import ConfigError, PhaseConfig, RunConfig, resolve_path
from snowtrain.data.blend import BlendCursor, BlendSchedule, DataPosition, Segment, steps_for_phase
from snowtrain.data.samples import DatasetStream
from snowtrain.data.sources import DatasetSource, blend_weights, check_token_ids, open_sources

logger = logging.getLogger("snowtrain.data")

__all__ = ["PhaseData", "STATE_VERSION"]

STATE_VERSION = 1
_WEIGHT_RTOL = 1e-9


def _dist():
    import torch.distributed as dist
    return dist if dist.is_available() and dist.is_initialized() else None


def _is_main() -> bool:
    d = _dist()
    return d is None or d.get_rank() == 0


def _collate(samples: list[dict]) -> dict:
    out = {k: torch.stack([s[k] for s in samples]) for k in
           ("tokens", "labels", "loss_mask", "position_ids")}
    out["sample_ids"] = torch.tensor([s["sample_id"] for s in samples], dtype=torch.int64)
    return out


class _SampleFetcher(torch.utils.data.Dataset):
    """Map-style view for DataLoader workers: key (global, dataset, per-dataset) -> sample."""

    def __init__(self, streams: list[DatasetStream]):
        self.streams = streams

    def __len__(self) -> int:  # not used: keys come from the batch sampler
        return 0

    def __getitem__(self, key) -> dict:
        g, d, n = (int(x) for x in key)
        item = dict(self.streams[d][n])
        item["sample_id"] = (g, d, n)
        return item


class PhaseData:
    """The datasets, blend schedule and position of one training phase.

    Args:
        phase: the phase's config (datasets, tokens, batch sizes, seq_len).
        seed: the run seed (megatron's shuffles).
        vocab_size: the model's vocabulary; every token id must be below it (None: no check).
        cache_dir: where megatron caches its sample indices (shared by all ranks).
        valid_fraction: documents of each dataset held out for validation (megatron split).
        phase_index: the phase's index in ``phases`` (for error keys).
        config_file: the YAML file (for error messages).
        num_workers: DataLoader worker processes for batches() (0: load in this process).

    Construction is collective in a distributed run (rank 0 builds megatron's index cache
    first); call it on every rank. It works without torch.distributed too.
    """

    def __init__(self, phase: PhaseConfig, *, seed: int = 1234, vocab_size: Optional[int] = None,
                 cache_dir: Optional[str] = None, valid_fraction: float = 0.0,
                 phase_index: Optional[int] = None, config_file=None, num_workers: int = 0):
        self.phase = phase
        self.seed = int(seed)
        self.seq_len = int(phase.seq_len)
        self.vocab_size = vocab_size
        self.valid_fraction = float(valid_fraction)
        self.num_workers = int(num_workers)
        self.config_file = config_file
        self.key_prefix = f"phases[{phase_index if phase_index is not None else phase.name}]"
        if self.seq_len < 1:
            raise ConfigError(f"seq_len must be positive, got {self.seq_len}",
                              file=config_file, key=f"{self.key_prefix}.seq_len",
                              fix="set e.g. seq_len: 8192")
        self.cache_dir = os.path.abspath(cache_dir) if cache_dir else None

        self.sources: list[DatasetSource] = open_sources(
            phase.datasets, seq_len=self.seq_len, valid_fraction=self.valid_fraction,
            key_prefix=self.key_prefix, file=config_file)
        self.token_ranges = check_token_ids(self.sources, vocab_size, self.cache_dir, config_file)
        self.names = [s.name for s in self.sources]
        self.config_weights, self.weights_from = blend_weights(self.sources)

        self.streams = [DatasetStream(s, seed=self.seed, seq_len=self.seq_len,
                                      cache_dir=self.cache_dir,
                                      valid_fraction=self.valid_fraction) for s in self.sources]
        weights = dict(zip(self.names, self.config_weights))
        self.schedule = BlendSchedule(self.names)
        self.position = DataPosition(phase=phase.name, per_dataset_consumed={n: 0 for n in self.names})
        self._start_segment(Segment(start_sample=0, step=0, weights=weights,
                                    start_consumed=dict(self.position.per_dataset_consumed)))
        self.last_blend_change: Optional[str] = None
        self._ensure(self.budget_samples)

    # ------------------------------------------------------------------ construction helpers

    @classmethod
    def from_config(cls, cfg: RunConfig, phase: str | int, *, cache_dir: Optional[str] = None,
                    config_file=None, num_workers: Optional[int] = None) -> "PhaseData":
        """The data of ``cfg``'s phase (by name or index). The cache goes to data.cache_dir, or
        ``<checkpoint.dir>/data_cache`` when that is null."""
        if isinstance(phase, int):
            index = phase
        else:
            cfg.phase(phase)  # ConfigError naming the phases if unknown
            index = [p.name for p in cfg.phases].index(phase)
        if cache_dir is None:
            if cfg.data.cache_dir:
                cache_dir = resolve_path(cfg.data.cache_dir, "data.cache_dir", config_file)
            else:
                cache_dir = os.path.join(
                    resolve_path(cfg.checkpoint.dir, "checkpoint.dir", config_file), "data_cache")
        return cls(cfg.phases[index], seed=cfg.seed, vocab_size=cfg.model.vocab_size,
                   cache_dir=cache_dir, valid_fraction=cfg.data.valid_fraction,
                   phase_index=index, config_file=config_file,
                   num_workers=cfg.data.num_workers if num_workers is None else num_workers)

    def _start_segment(self, seg: Segment) -> None:
        self.schedule.add(seg)
        self.position.segments = self.schedule.segments
        self._cursor = self.schedule.cursor(self.position.consumed_samples,
                                            self.position.per_dataset_consumed)

    # ------------------------------------------------------------------ sizes

    @property
    def total_steps(self) -> int:
        """Steps of the phase's token budget at its configured global batch size."""
        return steps_for_phase(self.phase.tokens, self.phase.global_batch_size, self.seq_len)

    @property
    def budget_samples(self) -> int:
        return self.total_steps * self.phase.global_batch_size

    def remaining_steps(self, global_batch_size: Optional[int] = None) -> int:
        gbs = global_batch_size or self.phase.global_batch_size
        return -(-max(0, self.budget_samples - self.position.consumed_samples) // gbs)

    @property
    def weights(self) -> dict[str, float]:
        """The current segment's (normalized) weights."""
        return dict(self.schedule.segments[-1].weights)

    @property
    def samples_per_epoch(self) -> dict[str, int]:
        return {s.name: s.samples_per_epoch for s in self.streams}

    def epochs_consumed(self) -> dict[str, float]:
        return {s.name: self.position.per_dataset_consumed.get(s.name, 0) / s.samples_per_epoch
                for s in self.streams}

    def describe(self) -> str:
        """A few lines for the log: datasets, tokens, weights, planned epochs."""
        lines = [f"phase '{self.phase.name}': {self.total_steps} steps x "
                 f"{self.phase.global_batch_size} samples x {self.seq_len} tokens, weights from "
                 f"{self.weights_from}, at step {self.position.step}"]
        w = self.weights
        for s in self.streams:
            planned = w.get(s.name, 0.0) * self.budget_samples / s.samples_per_epoch
            lines.append(f"  {s.name}: {s.source.train_tokens} tokens, {s.samples_per_epoch} "
                         f"samples/epoch, weight {w.get(s.name, 0.0):.4f} (~{planned:.2f} epochs "
                         f"in the phase)  {s.source.prefix}")
        return "\n".join(lines)

    # ------------------------------------------------------------------ epochs

    def _ensure(self, stop_sample: int) -> None:
        """Builds every epoch the stream can need up to global sample ``stop_sample``
        (collective: the decision depends only on the shared position)."""
        stop = max(stop_sample, self.position.consumed_samples)
        bound = self._cursor.upper_bound_consumed(stop)
        for stream in self.streams:
            stream.ensure_samples(bound[self.schedule.index(stream.name)])

    # ------------------------------------------------------------------ state

    def state_dict(self) -> dict:
        """JSON-able position: phase, step, consumed samples, per-dataset counters, segments."""
        state = self.position.to_dict()
        state.update({
            "version": STATE_VERSION, "seed": self.seed, "seq_len": self.seq_len,
            "datasets": {s.name: {"path": s.source.prefix, "num_tokens": s.source.train_tokens,
                                  "samples_per_epoch": s.samples_per_epoch} for s in self.streams},
        })
        return state

    def load_state_dict(self, state: Mapping, *, strict: bool = True) -> Optional[str]:
        """Resume from ``state``. If the config's weights differ from the state's current ones, a
        new blend segment starts at the current sample; returns (and logs) what changed, else
        None. Collective in a distributed run (it may build epochs); call it on every rank."""
        pos = DataPosition.from_dict(state)
        if pos.phase != self.phase.name:
            raise ValueError(
                f"the data state is for phase '{pos.phase}', this is phase '{self.phase.name}'; "
                "a new phase starts its data from the beginning: do not load the previous "
                "phase's data state")
        for key, mine in (("seq_len", self.seq_len), ("seed", self.seed)):
            if key in state and int(state[key]) != mine and strict:
                raise ValueError(
                    f"the data state was saved with {key}={state[key]}, the config has {mine}: "
                    f"the sample streams would differ; restore {key}={state[key]} to resume "
                    "(or pass strict=False to resume positions anyway)")
        if not pos.segments:
            raise ValueError("the data state has no blend segments")
        notes = []
        for name, info in (state.get("datasets") or {}).items():
            if name in self.names:
                src = self.sources[self.names.index(name)]
                if int(info.get("num_tokens", src.train_tokens)) != src.train_tokens:
                    notes.append(f"{name} now has {src.train_tokens} tokens "
                                 f"(was {info['num_tokens']}): its samples differ from before")

        schedule = BlendSchedule(self.names)
        for seg in pos.segments:
            schedule.add(seg)
        consumed = {n: 0 for n in schedule.names}
        consumed.update(pos.per_dataset_consumed)
        if sum(consumed.values()) != pos.consumed_samples:
            raise ValueError(f"the data state is inconsistent: per-dataset counters sum to "
                             f"{sum(consumed.values())}, consumed_samples is {pos.consumed_samples}")
        schedule.check_counts(pos.consumed_samples, consumed)

        self.schedule = schedule
        self.position = DataPosition(phase=pos.phase, step=pos.step,
                                     consumed_samples=pos.consumed_samples,
                                     per_dataset_consumed=consumed, segments=schedule.segments)
        self._cursor = schedule.cursor(pos.consumed_samples, consumed)

        old = schedule.segments[-1].weights
        new = dict(zip(self.names, self.config_weights))
        names = list(new) + [n for n in old if n not in new]
        changed = [n for n in names if not math.isclose(old.get(n, 0.0), new.get(n, 0.0),
                                                        rel_tol=_WEIGHT_RTOL, abs_tol=1e-12)]
        message = None
        if changed:
            parts = []
            for n in changed:
                a, b = old.get(n), new.get(n)
                if a is None:
                    parts.append(f"{n} added ({b:.4g})")
                elif b is None:
                    parts.append(f"{n} removed ({a:.4g}->0)")
                else:
                    parts.append(f"{n} {a:.4g}->{b:.4g}")
            message = (f"blend change at step {pos.step} (sample {pos.consumed_samples}): "
                       + ", ".join(parts))
            self._start_segment(Segment(start_sample=pos.consumed_samples, step=pos.step,
                                        weights=new, start_consumed=dict(consumed)))
        if notes:
            message = "; ".join(([message] if message else []) + notes)
        if message and _is_main():
            logger.warning(message)
        self.last_blend_change = message
        self._ensure(self.budget_samples)
        return message

    # ------------------------------------------------------------------ samples and batches

    def assign(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        """(dataset index, per-dataset index) of global samples [start, stop)."""
        if start == self.position.consumed_samples:
            return self._cursor.copy().take(stop - start)
        return self.schedule.assign(start, stop)

    def sample(self, dataset: int, index: int) -> dict:
        """Sample ``index`` of dataset ``dataset``'s stream (megatron GPTDataset item)."""
        return self.streams[dataset][index]

    def batches(self, global_batch_size: Optional[int] = None,
                micro_batch_size: Optional[int] = None, dp_rank: Optional[int] = None,
                dp_size: Optional[int] = None, num_steps: Optional[int] = None,
                num_workers: Optional[int] = None) -> Iterator[list[dict]]:
        """Per optimizer step, this data-parallel rank's micro-batches.

        DP rank ``r`` gets samples ``[r * per_rank, (r + 1) * per_rank)`` of each global batch,
        cut into micro-batches: dicts of ``tokens``, ``labels`` ([mbs, seq_len] int64),
        ``loss_mask`` (float), ``position_ids`` and ``sample_ids`` ([mbs, 3]: global sample,
        dataset index, per-dataset index). ``num_steps`` defaults to the rest of the phase.
        The position advances as each step is handed out. dp_rank/dp_size default to
        snowtrain.distributed's state (else 0/1). Collective (it may build epochs) on every rank.
        """
        gbs = int(global_batch_size or self.phase.global_batch_size)
        mbs = int(micro_batch_size or self.phase.micro_batch_size)
        if dp_rank is None or dp_size is None:
            r, s = 0, 1
            try:
                from snowtrain.distributed import get_state
                st = get_state()
                r, s = st.dp_rank, st.dp_size
            except RuntimeError:
                pass
            dp_rank = r if dp_rank is None else dp_rank
            dp_size = s if dp_size is None else dp_size
        if gbs < 1 or mbs < 1 or dp_size < 1 or not 0 <= dp_rank < dp_size:
            raise ValueError(f"bad batch layout: global_batch_size={gbs}, micro_batch_size={mbs}, "
                             f"dp_rank={dp_rank}, dp_size={dp_size}")
        if gbs % dp_size:
            raise ValueError(f"global_batch_size={gbs} is not divisible by the data-parallel size "
                             f"{dp_size}: use a multiple of {dp_size}")
        per_rank = gbs // dp_size
        if per_rank % mbs:
            raise ValueError(f"each data-parallel rank gets {per_rank} samples per step, not a "
                             f"multiple of micro_batch_size={mbs}")
        steps = self.remaining_steps(gbs) if num_steps is None else int(num_steps)
        start = self.position.consumed_samples
        self._ensure(max(self.budget_samples, start + steps * gbs))
        workers = self.num_workers if num_workers is None else int(num_workers)
        return self._iterate(start, steps, gbs, mbs, dp_rank, per_rank, workers)

    def _rank_keys(self, cursor: BlendCursor, gbs: int, mbs: int, dp_rank: int, per_rank: int):
        g0 = cursor.sample
        ds, per = cursor.take(gbs)
        lo = dp_rank * per_rank
        keys = [(g0 + i, int(ds[i]), int(per[i])) for i in range(lo, lo + per_rank)]
        return [keys[i:i + mbs] for i in range(0, per_rank, mbs)], ds

    def _iterate(self, start: int, steps: int, gbs: int, mbs: int, dp_rank: int,
                 per_rank: int, workers: int) -> Iterator[list[dict]]:
        cursor = self.schedule.cursor(start, self.position.per_dataset_consumed)
        loader_iter = None
        if workers > 0 and steps > 0:
            sampler_cursor = cursor.copy()

            def micro_keys():
                for _ in range(steps):
                    yield from self._rank_keys(sampler_cursor, gbs, mbs, dp_rank, per_rank)[0]

            loader = torch.utils.data.DataLoader(
                _SampleFetcher(self.streams), batch_sampler=micro_keys(), num_workers=workers,
                collate_fn=_collate)
            loader_iter = iter(loader)
        num_micro = per_rank // mbs
        for _ in range(steps):
            if self.position.consumed_samples != cursor.sample:
                raise RuntimeError(
                    f"the data position moved to sample {self.position.consumed_samples} while "
                    f"an iterator expected {cursor.sample}: make a new one with batches()")
            step_start = cursor.sample
            micro, ds = self._rank_keys(cursor, gbs, mbs, dp_rank, per_rank)
            if loader_iter is not None:
                out = [next(loader_iter) for _ in range(num_micro)]
            else:
                out = []
                for keys in micro:
                    samples = []
                    for g, d, n in keys:
                        item = dict(self.streams[d][n])
                        item["sample_id"] = (g, d, n)
                        samples.append(item)
                    out.append(_collate(samples))
            # Commit the step before handing it out: a checkpoint taken after it resumes next.
            counts = np.bincount(ds, minlength=len(self.schedule.names))
            for d, c in enumerate(counts):
                if c:
                    name = self.schedule.names[d]
                    self.position.per_dataset_consumed[name] = (
                        self.position.per_dataset_consumed.get(name, 0) + int(c))
            self.position.consumed_samples = step_start + gbs
            self.position.step += 1
            self._cursor = cursor.copy()
            yield out
