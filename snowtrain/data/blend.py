"""Blend schedule: which dataset every global sample of a phase comes from, in segments.

A phase's sample stream is cut into *segments*, each with its own blend weights. Within a
segment, sample ``k`` (0-based, counted from the segment start) goes to the dataset ``d`` that
maximises ``w_d * (k + 1) - c_d`` where ``c_d`` is how many of the segment's first ``k`` samples
went to ``d`` (ties: lowest ``d``). This greedy error-minimising rule keeps every dataset's count
within one sample of ``w_d * k`` over every prefix of the segment.

Every dataset keeps one counter across segments: the ``n``-th sample a dataset contributes to
the phase is sample ``n`` of its own (epoch-concatenated) GPTDataset stream. When the weights
change at sample ``S`` a new segment starts there, the greedy counts restart, and every dataset
continues from the sample where it stopped: nothing repeated, nothing skipped.

This module is pure Python + numpy (no torch, no megatron) and JSON-able throughout.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Mapping, Optional, Sequence

import numpy as np

__all__ = [
    "BlendCursor",
    "BlendSchedule",
    "DataPosition",
    "Segment",
    "greedy_picks",
    "normalize_weights",
    "steps_for_phase",
    "weights_from_tokens",
]


def steps_for_phase(tokens: int, global_batch_size: int, seq_len: int) -> int:
    """Optimizer steps needed to see ``tokens`` tokens: ceil(tokens / (gbs * seq_len))."""
    if global_batch_size < 1 or seq_len < 1:
        raise ValueError(f"global_batch_size ({global_batch_size}) and seq_len ({seq_len}) "
                         "must be positive")
    if tokens < 0:
        raise ValueError(f"token budget must be >= 0, got {tokens}")
    per_step = int(global_batch_size) * int(seq_len)
    return -(-int(tokens) // per_step)


def normalize_weights(weights: Sequence[float]) -> list[float]:
    """Weights scaled to sum to 1; negative, non-finite or all-zero weights are a ValueError."""
    w = [float(x) for x in weights]
    if not w:
        raise ValueError("no weights")
    if any(not math.isfinite(x) or x < 0 for x in w):
        raise ValueError(f"weights must be finite and >= 0, got {w}")
    total = math.fsum(w)
    if total <= 0:
        raise ValueError(f"weights must not all be zero, got {w}")
    return [x / total for x in w]


def weights_from_tokens(num_tokens: Sequence[int], repeats: Sequence[float]) -> list[float]:
    """Blend weights proportional to tokens x repeat (how often each dataset is seen)."""
    if len(num_tokens) != len(repeats):
        raise ValueError("num_tokens and repeats differ in length")
    return normalize_weights([float(t) * float(r) for t, r in zip(num_tokens, repeats)])


def greedy_picks(weights: Sequence[float], k0: int, counts: list, n: int) -> list[int]:
    """The next ``n`` dataset choices of a segment whose first ``k0`` samples are done.

    ``counts[d]`` is how many of those ``k0`` went to ``d``; it is updated in place. Pure Python
    on purpose: the arithmetic (``w * (k + 1) - c`` in IEEE doubles) is the same on every rank.
    """
    w = [float(x) for x in weights]
    num = len(w)
    out = [0] * n
    for i in range(n):
        k1 = k0 + i + 1
        best = 0
        best_err = w[0] * k1 - counts[0]
        for d in range(1, num):
            err = w[d] * k1 - counts[d]
            if err > best_err:
                best, best_err = d, err
        out[i] = best
        counts[best] += 1
    return out


@dataclass
class Segment:
    """A stretch of the phase with fixed weights, from global sample ``start_sample`` on."""
    start_sample: int
    # Normalized weights by dataset name (names absent here have weight 0).
    weights: dict[str, float]
    # Optimizer step (steps completed in the phase) at which the segment starts.
    step: int = 0
    # Per-dataset counters when the segment started (sample index each dataset continues from).
    start_consumed: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"start_sample": int(self.start_sample), "step": int(self.step),
                "weights": {k: float(v) for k, v in self.weights.items()},
                "start_consumed": {k: int(v) for k, v in self.start_consumed.items()}}

    @classmethod
    def from_dict(cls, d: Mapping) -> "Segment":
        return cls(start_sample=int(d["start_sample"]), step=int(d.get("step", 0)),
                   weights={str(k): float(v) for k, v in d["weights"].items()},
                   start_consumed={str(k): int(v) for k, v in d.get("start_consumed", {}).items()})


class BlendSchedule:
    """Segments over an ordered list of dataset names; maps global samples to datasets."""

    def __init__(self, names: Sequence[str], segments: Sequence[Segment] = ()):
        self.names = list(names)
        if len(set(self.names)) != len(self.names):
            raise ValueError(f"duplicate dataset names {self.names}")
        self._index = {n: i for i, n in enumerate(self.names)}
        self.segments: list[Segment] = []
        for s in segments:
            self.add(s)

    def add_name(self, name: str) -> int:
        if name not in self._index:
            self._index[name] = len(self.names)
            self.names.append(name)
        return self._index[name]

    def index(self, name: str) -> int:
        return self._index[name]

    def add(self, segment: Segment) -> None:
        """Append a segment; one starting where the last one starts replaces it."""
        for n in list(segment.weights) + list(segment.start_consumed):
            self.add_name(n)
        if self.segments and segment.start_sample < self.segments[-1].start_sample:
            raise ValueError(f"segment at sample {segment.start_sample} starts before the last "
                             f"one (sample {self.segments[-1].start_sample})")
        if self.segments and segment.start_sample == self.segments[-1].start_sample:
            self.segments[-1] = segment
        else:
            self.segments.append(segment)

    def weight_vector(self, segment: Segment) -> list[float]:
        return [float(segment.weights.get(n, 0.0)) for n in self.names]

    def _vec(self, mapping: Mapping[str, int]) -> list[int]:
        return [int(mapping.get(n, 0)) for n in self.names]

    def segment_at(self, sample: int) -> int:
        if not self.segments or sample < self.segments[0].start_sample:
            raise ValueError(f"no blend segment covers sample {sample}")
        i = len(self.segments) - 1
        while self.segments[i].start_sample > sample:
            i -= 1
        return i

    def cursor(self, sample: int = 0, consumed: Optional[Mapping[str, int]] = None) -> "BlendCursor":
        """A cursor at global ``sample``; ``consumed`` (per-dataset counters there) is required
        unless ``sample`` is a segment start (then the segment's ``start_consumed`` is used)."""
        i = self.segment_at(sample)
        seg = self.segments[i]
        if consumed is None:
            if sample != seg.start_sample:
                return self.cursor(seg.start_sample).advance_to(sample)
            consumed = seg.start_consumed
        totals = self._vec(consumed)
        base = self._vec(seg.start_consumed)
        counts = [t - b for t, b in zip(totals, base)]
        return BlendCursor(self, i, sample, counts, totals)

    def assign(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        """(dataset index, per-dataset sample index) of global samples [start, stop), replayed
        from the start of the segment holding ``start``."""
        return self.cursor(start).take(stop - start)

    def check_counts(self, sample: int, consumed: Mapping[str, int]) -> None:
        """ValueError unless ``consumed`` at ``sample`` is what the rule can produce."""
        seg = self.segments[self.segment_at(sample)]
        k = sample - seg.start_sample
        w = self.weight_vector(seg)
        counts = [t - b for t, b in zip(self._vec(consumed), self._vec(seg.start_consumed))]
        bad = [f"{n}: {c} samples after {k} (weight {wd:.6g})" for n, c, wd in
               zip(self.names, counts, w) if c < 0 or abs(c - wd * k) >= 1 + 1e-6]
        if sum(counts) != k or bad:
            raise ValueError(
                "the data position does not fit its blend segment (segment from sample "
                f"{seg.start_sample}, now at sample {sample}, {sum(counts)} counted): "
                + ("; ".join(bad) or "counts do not add up"))


class BlendCursor:
    """Walks the schedule forward from a position, carrying the greedy state."""

    def __init__(self, schedule: BlendSchedule, seg_index: int, sample: int, counts: list,
                 totals: list):
        self.schedule, self.seg_index, self.sample = schedule, seg_index, int(sample)
        self.counts, self.totals = list(counts), list(totals)

    def copy(self) -> "BlendCursor":
        return BlendCursor(self.schedule, self.seg_index, self.sample, self.counts, self.totals)

    def _segment_end(self) -> Optional[int]:
        segs = self.schedule.segments
        return segs[self.seg_index + 1].start_sample if self.seg_index + 1 < len(segs) else None

    def _enter_next_segment(self) -> None:
        self.seg_index += 1
        seg = self.schedule.segments[self.seg_index]
        self.totals = self.schedule._vec(seg.start_consumed)
        self.counts = [0] * len(self.totals)

    def take(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """The next ``n`` samples' (dataset index, per-dataset index); advances the cursor."""
        if n < 0:
            raise ValueError(f"cannot take {n} samples")
        ds = np.empty(n, dtype=np.int64)
        per = np.empty(n, dtype=np.int64)
        pos = 0
        while pos < n:
            end = self._segment_end()
            while end is not None and self.sample >= end:
                self._enter_next_segment()
                end = self._segment_end()
            chunk = n - pos if end is None else min(n - pos, end - self.sample)
            seg = self.schedule.segments[self.seg_index]
            k0 = self.sample - seg.start_sample
            width = len(self.schedule.names)
            if len(self.counts) < width:  # names added after the cursor was made
                self.counts += [0] * (width - len(self.counts))
                self.totals += [0] * (width - len(self.totals))
            picks = greedy_picks(self.schedule.weight_vector(seg), k0, self.counts, chunk)
            for i, d in enumerate(picks):
                ds[pos + i] = d
                per[pos + i] = self.totals[d]
                self.totals[d] += 1
            pos += chunk
            self.sample += chunk
        return ds, per

    def advance_to(self, sample: int) -> "BlendCursor":
        if sample < self.sample:
            raise ValueError(f"cursor at {self.sample} cannot move back to {sample}")
        while self.sample < sample:
            self.take(min(sample - self.sample, 1 << 16))
        return self

    def upper_bound_consumed(self, stop: int) -> list[int]:
        """Per-dataset counters at global sample ``stop`` (>= now) are at most these, assuming no
        further segment (the rule keeps every count below ``w * k + 1``)."""
        if self.seg_index != len(self.schedule.segments) - 1:
            raise ValueError("upper bounds are for the last segment")
        seg = self.schedule.segments[self.seg_index]
        k_end = stop - seg.start_sample
        base = self.schedule._vec(seg.start_consumed)
        out = []
        for d, wd in enumerate(self.schedule.weight_vector(seg)):
            cap = 0 if wd <= 0 else min(k_end, int(math.floor(wd * k_end)) + 1)
            out.append(max(self.totals[d], base[d] + cap))
        return out


@dataclass
class DataPosition:
    """Where a phase's data stream stands: JSON-able, saved in every checkpoint."""
    phase: str
    step: int = 0
    consumed_samples: int = 0
    per_dataset_consumed: dict[str, int] = field(default_factory=dict)
    segments: list[Segment] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"phase": self.phase, "step": int(self.step),
                "consumed_samples": int(self.consumed_samples),
                "per_dataset_consumed": {k: int(v) for k, v in self.per_dataset_consumed.items()},
                "segments": [s.to_dict() for s in self.segments]}

    @classmethod
    def from_dict(cls, d: Mapping) -> "DataPosition":
        try:
            return cls(phase=str(d["phase"]), step=int(d.get("step", 0)),
                       consumed_samples=int(d["consumed_samples"]),
                       per_dataset_consumed={str(k): int(v)
                                             for k, v in d["per_dataset_consumed"].items()},
                       segments=[Segment.from_dict(s) for s in d["segments"]])
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"malformed data position {dict(d)!r}: {e}") from None
