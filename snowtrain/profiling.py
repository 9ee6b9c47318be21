"""torch.profiler around chosen training steps (`profile:` in the run config).

Steps start_step .. start_step + steps - 1 of each phase are recorded on the listed ranks; the
step before them runs under the profiler as its warm-up (as torch.profiler's own schedule does),
so the recorded steps are not the profiler's start-up. Each recording rank writes
`<dir>/<phase>-step<first>-rank<r>.json` (a Chrome / Perfetto trace: chrome://tracing or
https://ui.perfetto.dev) and `....txt` (the operators by total time). The train step marks its
forward, backward, gradient sync and optimizer parts with record_function, so they show as
named ranges in the trace.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile, schedule

from data_prep.store import write_text


class StepProfiler:
    """before_step(done) and after_step(done) around every optimizer step (`done`: the steps
    done so far); they start the profiler, advance its schedule and stop it."""

    def __init__(self, cfg, *, phase: str, phase_steps: int, rank: int, device: torch.device,
                 out_dir: Path, say=print):
        self.cfg, self.phase, self.rank, self.device, self.say = cfg, phase, rank, device, say
        self.first = cfg.start_step
        self.last = min(cfg.start_step + cfg.steps - 1, phase_steps)
        self.active = cfg.enabled and (cfg.ranks is None or rank in cfg.ranks) and self.first <= self.last
        self.out_dir = Path(out_dir)
        self.prof, self.recorded = None, 0   # recorded: the last step done under the profiler
        self._seen = False

    def before_step(self, done: int) -> None:
        step = done + 1
        if not self.active or self.prof is not None:
            return
        if not self._seen and step > self.last:
            self.say(f"profile: steps {self.first}-{self.last} of {self.phase} were done before this "
                     f"run resumed at step {done}: nothing recorded")
            self.active = False
        self._seen = True
        # the step before the recorded ones warms the profiler up; a run resumed inside the
        # window records from its first step on
        if self.active and (step == self.first - 1 or (step >= self.first and step <= self.last)):
            warmup = 1 if step < self.first else 0
            self.first = max(self.first, step)
            activities = [ProfilerActivity.CPU]
            if self.device.type == "cuda":
                activities.append(ProfilerActivity.CUDA)
            self.prof = profile(activities=activities, record_shapes=self.cfg.record_shapes,
                                profile_memory=self.cfg.memory,
                                schedule=schedule(wait=0, warmup=warmup,
                                                  active=self.last - self.first + 1, repeat=1),
                                on_trace_ready=self._write)
            self.prof.__enter__()

    def after_step(self, done: int) -> None:
        if self.prof is None:
            return
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)   # the step's kernels belong to its range
        self.recorded = done
        if done >= self.last:
            self.close()
        else:
            self.prof.step()

    def close(self) -> None:
        """Stops the profiler; a recording that the phase's end or a stop cut short is written
        with the steps it has."""
        prof, self.prof = self.prof, None
        if prof is not None:
            self.active = False
            prof.__exit__(None, None, None)

    def _write(self, prof) -> None:
        if self.recorded < self.first:
            self.say(f"profile: {self.phase} stopped before step {self.first}: nothing recorded")
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        base = self.out_dir / f"{self.phase}-step{self.first}-rank{self.rank}"   # phase names may hold dots
        tmp = self.out_dir / f".{base.name}.json.tmp.{os.getpid()}"
        prof.export_chrome_trace(str(tmp))
        os.replace(tmp, f"{base}.json")
        sort = "self_cuda_time_total" if self.device.type == "cuda" else "self_cpu_time_total"
        write_text(f"{base}.txt", prof.key_averages().table(sort_by=sort, row_limit=40) + "\n")
        self.say(f"profile of {self.phase} steps {self.first}-{self.recorded} on rank {self.rank}: "
                 f"{base}.json (open in https://ui.perfetto.dev), {base}.txt")
