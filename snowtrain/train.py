"""The training loop of one phase: build, resume (or start from the previous phase), step,
log, checkpoint, stop cleanly on a signal or at the phase's token budget."""
from __future__ import annotations

import os
import resource
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from . import kernels
from .checkpoint import CheckpointError, CheckpointManager, Replicate, Shard, device_mesh, to_dtensor
from .config import (ConfigError, RunConfig, check_batch_layout, check_dataset_paths, resolve_path,
                     save_config)
from .data import PhaseData
from .distributed import ParallelState, init_distributed
from .hf_import import check_shape, check_tokenizer, is_hf_folder, load_hf_weights
from .metrics import MetricsLogger
from .model import Llama, TPGroup
from .optim import DistributedOptimizer, lr_at
from .optim.optimizer import zero_dim
from .plan import GiB, fit_problem, flops_per_token
from .profiling import StepProfiler
from .step import NonFiniteLoss, train_step
from .validation import Validator
from .watchdog import HangWatchdog

STOP_SIGNALS = (signal.SIGUSR1, signal.SIGTERM, signal.SIGINT)
# what a checkpoint's tensors and sample streams are laid out by: a resumed run must keep them
RESUME_FIXED = tuple(f"model.{k}" for k in ("num_layers", "hidden_size", "ffn_hidden_size",
                                             "num_attention_heads", "num_kv_heads", "vocab_size",
                                             "tie_embeddings"))


@dataclass
class PhaseResult:
    phase: str
    status: str            # "complete" | "stopped" (signal: checkpoint saved) | "max_steps"
    step: int
    steps: int
    last_loss: float | None
    checkpoint: str | None


class StopRequest:
    """Set by SIGUSR1/SIGTERM (SLURM's warning before a time limit or preemption) or a first
    Ctrl-C; every rank learns of it at the next step through an all-reduce, so all of them stop
    at the same step."""

    def __init__(self):
        self.requested = False
        self.signal = None
        self._old = {}

    def install(self):
        for sig in STOP_SIGNALS:
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread
                pass

    def uninstall(self):
        for sig, old in self._old.items():
            signal.signal(sig, old)

    def _handle(self, signum, frame):
        if signum == signal.SIGINT:
            if self.requested:  # a second Ctrl-C: stop now, without a checkpoint
                raise KeyboardInterrupt
            print("Ctrl-C: saving a checkpoint after this step, then stopping (Ctrl-C again to "
                  "stop at once, without one)", flush=True)
        self.requested, self.signal = True, signal.Signals(signum).name

    def agreed(self, pstate: ParallelState) -> bool:
        flag = torch.tensor([1.0 if self.requested else 0.0], device=pstate.device)
        if pstate.world_size > 1:
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return flag.item() > 0


def _placements(p, sharded_over_dp: bool, zero: bool):
    tp = Replicate() if p.tp_dim is None else Shard(p.tp_dim)
    dp = Shard(zero_dim(p)) if (sharded_over_dp and zero) else Replicate()
    return [dp, tp]


def checkpoint_state(model, opt: DistributedOptimizer, mesh, extra: dict | None = None,
                     with_optimizer: bool = True) -> dict:
    """The tensors of a checkpoint as DTensors over the (dp, tp) mesh: sharded the way they live
    in memory, so any other layout can read them back."""
    zero = opt.zero and opt.dp > 1
    state = {"model": {n: to_dtensor(p.data, mesh, _placements(p, False, zero), p.global_shape)
                       for n, p in model.named_parameters()}}
    if with_optimizer:
        params = dict(model.named_parameters())
        state["optim"] = {n: {k: to_dtensor(t, mesh, _placements(params[n], True, zero), params[n].global_shape)
                              for k, t in d.items()} for n, d in opt.named_state().items()}
    if extra is not None:
        state["extra"] = extra
    return state


def _memory_gib(device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / GiB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


class Trainer:
    """Everything one phase needs, built on every rank."""

    def __init__(self, cfg: RunConfig, phase: str, *, config_file=None, pstate=None):
        self.cfg, self.config_file = cfg, config_file
        self.phase = cfg.phase(phase)
        self.phase_index = [p.name for p in cfg.phases].index(phase)
        # A collective waits longer than the hang watchdog, so that a rank stuck elsewhere ends
        # every rank through the watchdog (exit 4, requeued) rather than a collective's error.
        hang = cfg.training.hang_timeout_s
        self.pstate = pstate or init_distributed(cfg.parallel.tensor_parallel, cfg.parallel.backend,
                                                 timeout_s=max(600.0, (hang or 0) + 300.0))
        ps = self.pstate
        if cfg.parallel.data_parallel is not None and cfg.parallel.data_parallel != ps.dp_size:
            raise ConfigError(f"parallel.data_parallel={cfg.parallel.data_parallel} but {ps.world_size} "
                             f"ranks / tensor_parallel={ps.tp_size} give {ps.dp_size}: launch "
                             f"{cfg.parallel.data_parallel * ps.tp_size} ranks or set data_parallel: null",
                              file=config_file, key="parallel.data_parallel",
                              fix="match the launch or leave data_parallel null")
        check_dataset_paths(cfg, phase, file=config_file)
        if cfg.profile.enabled and any(r >= ps.world_size for r in cfg.profile.ranks or []):
            raise ConfigError(f"profile.ranks={cfg.profile.ranks} but the run has {ps.world_size} rank(s)",
                              file=config_file, key="profile.ranks",
                              fix=f"list ranks below {ps.world_size}, or null for every rank")
        self._check_batch_layout()
        self._check_fit()
        kernels.configure(cfg.model.kernels)
        if any(getattr(cfg.model.kernels, op) == "fused" for op in kernels.OPS):
            kernels.prepare()  # build or load the CUDA extension before the first step
        dtype = torch.bfloat16 if cfg.precision.compute_dtype == "bf16" else torch.float32
        self.model = Llama(cfg.model, TPGroup.from_state(ps), seed=cfg.seed, dtype=dtype, device=ps.device)
        self.opt = DistributedOptimizer(self.model, cfg, ps)
        self.data = PhaseData.from_config(cfg, phase, config_file=config_file)
        self.validator = (Validator(self.data, ps, sequences=cfg.validation.sequences,
                                    micro_batch_size=self.phase.micro_batch_size)
                          if cfg.data.valid_fraction > 0 else None)
        self.mesh = device_mesh(ps) if ps.world_size > 1 else None
        self.ckpt = CheckpointManager(cfg.checkpoint, state=ps, run_config=cfg)
        log_dir = Path(resolve_path(cfg.logging.dir, "logging.dir", config_file))
        self.metrics = MetricsLogger(log_dir, enabled=ps.is_main, interval=cfg.logging.log_interval,
                                     jsonl=cfg.logging.jsonl, tensorboard=cfg.logging.tensorboard)
        if ps.is_main:
            save_config(cfg, log_dir / "config.yaml")
        self.step = 0
        self.global_step_offset = 0
        self.tokens_seen = 0
        self.steps = self.data.total_steps
        self.flops_per_token = flops_per_token(cfg, self.phase.seq_len)
        prof_dir = (Path(resolve_path(cfg.profile.dir, "profile.dir", config_file)) if cfg.profile.dir
                    else log_dir / "profile")
        self.watchdog = HangWatchdog(cfg.training.hang_timeout_s, rank=ps.rank)
        self.profiler = StepProfiler(cfg.profile, phase=self.phase.name, phase_steps=self.steps, rank=ps.rank,
                                     device=ps.device, out_dir=prof_dir, say=lambda msg: print(msg, flush=True))

    def _check_batch_layout(self):
        """Every data-parallel rank takes whole micro-batches of the global batch."""
        gbs, mbs, dp = self.phase.global_batch_size, self.phase.micro_batch_size, self.pstate.dp_size
        unit = dp * mbs
        nearest = min(range(unit, 2 * gbs + unit, unit), key=lambda g: (abs(g - gbs), g))
        check_batch_layout(gbs, mbs, dp, file=self.config_file,
                           key=f"phases[{self.phase_index}].global_batch_size",
                           fix=f"use a multiple of data_parallel x micro_batch_size = {unit} (e.g. "
                               f"{nearest}), or change micro_batch_size or the number of ranks")

    def _check_fit(self):
        ps = self.pstate
        if ps.device.type != "cuda":
            return
        cap = self.cfg.training.gpu_memory_gib or torch.cuda.get_device_properties(ps.device).total_memory / GiB
        problem = fit_problem(self.cfg, self.phase, ps.tp_size, ps.dp_size, cap)
        if problem:
            raise ConfigError(f"this layout does not fit: {problem}", file=self.config_file,
                              key="parallel", fix="see `snowtrain plan` for the estimate")

    # ------------------------------------------------------------------ start
    def restore(self) -> None:
        """Resume this phase from its latest good checkpoint, else start from the previous
        phase's final weights (init_from), else from scratch."""
        try:
            latest = self.ckpt.find_latest(phase=self.phase.name) if self.cfg.checkpoint.resume else None
        except CheckpointError as e:
            raise ConfigError(str(e), file=self.config_file, key="checkpoint.dir",
                              fix="repair or move away the damaged checkpoints") from None
        if latest is not None:
            diffs = self.ckpt.load_config_diff(latest, self.cfg)
            self._refuse_incompatible(latest, diffs)
            for line in diffs:
                self.metrics.event(f"config differs from the checkpoint's: {line}")
            template = checkpoint_state(self.model, self.opt, self.mesh, extra={})
            extra = self.ckpt.load(latest, template)
            self.opt.set_step(extra["step"])
            self.step = extra["step"]
            self.global_step_offset = extra.get("global_step", self.step) - self.step
            self.tokens_seen = extra.get("tokens_seen", 0)
            change = self.data.load_state_dict(extra["data"])
            self.metrics.event(f"resumed {self.phase.name} from {latest} at step {self.step}"
                               f" (SLURM_RESTART_COUNT={os.environ.get('SLURM_RESTART_COUNT', 0)})",
                               checkpoint=str(latest), step=self.step)
            if change:
                self.metrics.event(change, blend_change=True, step=self.step)
            return
        source = self._init_source()
        if source is None:
            return
        if is_hf_folder(source):
            key = f"phases[{self.phase_index}].init_from"
            check_shape(Path(source), self.cfg.model, file=self.config_file, key=key)
            check_tokenizer(Path(source), self.cfg.tokenizer and resolve_path(self.cfg.tokenizer, "tokenizer", self.config_file),
                            file=self.config_file, key=key)
            load_hf_weights(source, self.model, self.opt, self.pstate.tp_rank, self.pstate.tp_size,
                            file=self.config_file, key=key)
            self.metrics.event(f"{self.phase.name} starts from the Hugging Face weights of {source}",
                               init_from=str(source))
            return
        template = {"optim": {n: {"master": d["master"]} for n, d in
                              checkpoint_state(self.model, self.opt, self.mesh)["optim"].items()}}
        extra = self.ckpt.load(source, template)
        self.opt.reload_params_from_masters()
        self.opt.reset_moments()
        self.global_step_offset = extra.get("global_step", extra.get("step", 0))
        self.metrics.event(f"{self.phase.name} starts from the weights of {source}", init_from=str(source))

    def _refuse_incompatible(self, latest, diffs: list[str]) -> None:
        """A checkpoint of another run, or of another model shape or sequence length, cannot be
        continued: say which key and what to do, before loading anything."""
        seq_key = f"phases[{self.phase_index}].seq_len"
        for line in diffs:
            key, _, change = line.partition(": ")
            if key == "name" or key in RESUME_FIXED or key == seq_key:
                what = {"name": "holds another run"}.get(key, "was written with another value")
                raise ConfigError(
                    f"{latest} {what}: {key} {change}", file=self.config_file, key=key,
                    fix=f"restore {key} to the checkpoint's value to resume it, or point "
                        "checkpoint.dir at another folder (checkpoint.resume=false starts over "
                        "in this one)")

    def _init_source(self):
        init = self.phase.init_from
        if init is None or (init == "previous" and self.phase_index == 0):
            return None
        key = f"phases[{self.phase_index}].init_from"
        if init != "previous":
            path = resolve_path(init, key, self.config_file)
            if not os.path.isdir(path):
                near = sorted(str(p) for p in Path(path).parent.glob("step_*"))[-3:] \
                    if Path(path).parent.is_dir() else []
                raise ConfigError(f"{path} does not exist", file=self.config_file, key=key,
                                  fix="name a checkpoint folder (step_N) or a Hugging Face Llama folder"
                                      + (f"; in its folder: {', '.join(near)}" if near else "")
                                      + ", 'previous', or null")
            return path
        prev = self.cfg.phases[self.phase_index - 1].name
        path = self.ckpt.final_checkpoint(prev, missing_ok=True)
        if path is None:
            raise ConfigError(
                f"{self.phase.name} starts from {prev}'s final checkpoint, but {self.ckpt.root}/{prev} "
                "has none", file=self.config_file, key=key,
                fix=f"train {prev} first, or set {key} to a checkpoint path or null")
        return path

    # ------------------------------------------------------------------ loop
    def save(self, phase_end: bool = False):
        extra = {"step": self.step, "global_step": self.global_step_offset + self.step,
                 "phase": self.phase.name, "tokens_seen": self.tokens_seen,
                 "data": self.data.state_dict()}
        path = self.ckpt.save(checkpoint_state(self.model, self.opt, self.mesh, extra), self.step,
                              self.phase.name, phase_end=phase_end)
        self.watchdog.beat(f"the checkpoint of step {self.step}")
        return path

    def validate(self) -> dict | None:
        """The validation losses now (collective), logged; None without held-out data."""
        if not self.validator:
            return None
        t0 = time.time()
        losses = self.validator.run(self.model)
        self.watchdog.beat(f"validation at step {self.step}")
        self.metrics.log({"phase": self.phase.name, "step": self.step, "steps": self.steps,
                          "global_step": self.global_step_offset + self.step, **losses,
                          "valid_s": time.time() - t0}, force=True)
        return losses

    def run(self, max_steps: int | None = None) -> PhaseResult:
        ps, cfg = self.pstate, self.cfg
        stop = StopRequest()
        stop.install()
        if self.step >= self.steps:
            self.metrics.event(f"{self.phase.name} is already complete ({self.step}/{self.steps} steps)")
            return PhaseResult(self.phase.name, "complete", self.step, self.steps, None, None)
        if ps.is_main:
            print(self.data.describe(), flush=True)
        batches = self.data.batches(dp_rank=ps.dp_rank, dp_size=ps.dp_size)
        tokens_per_step = self.phase.global_batch_size * self.phase.seq_len
        t_start, first_step, last_loss, skips, status = time.time(), self.step, None, 0, "complete"
        try:
            for microbatches in batches:
                t0 = time.time()
                lr = lr_at(self.step, self.phase.schedule, self.steps, cfg.optim.lr)
                self.profiler.before_step(self.step)
                try:
                    res = train_step(self.model, self.opt, microbatches, lr, ps, cfg.training.on_nonfinite)
                except NonFiniteLoss as e:
                    # The weights are the last good ones; the bad batch counts as consumed, so a
                    # resumed run goes on with the next one.
                    self.step += 1
                    self.tokens_seen += tokens_per_step
                    path = self.save()
                    self.ckpt.wait()
                    raise NonFiniteLoss(f"{e} at step {self.step} of {self.phase.name}; the last "
                                        f"good weights are saved in {path} (resuming skips that "
                                        "batch). Lower the learning rate, check the data, or set "
                                        "training.on_nonfinite=skip") from None
                skips = skips + 1 if res.skipped else 0
                if skips > cfg.training.max_skips:
                    self.step += 1
                    path = self.save()
                    self.ckpt.wait()
                    raise NonFiniteLoss(f"{skips} non-finite steps in a row up to step {self.step}: "
                                        f"stopping; the last good weights are saved in {path}")
                self.step += 1
                self.tokens_seen += tokens_per_step
                last_loss = res.loss
                self.profiler.after_step(self.step)
                self.watchdog.beat(f"step {self.step}")
                dt = time.time() - t0
                elapsed = time.time() - t_start
                tok_s = tokens_per_step / dt
                tflops = tok_s * self.flops_per_token / ps.world_size / 1e12
                self.metrics.log({
                    "phase": self.phase.name, "step": self.step, "steps": self.steps,
                    "global_step": self.global_step_offset + self.step, "loss": res.loss, "lr": lr,
                    "grad_norm": res.grad_norm, "tokens": self.tokens_seen, "tokens_per_s": tok_s,
                    "tflops": tflops, "mfu": tflops / cfg.training.peak_tflops if ps.device.type == "cuda" else None,
                    "mem_gib": _memory_gib(ps.device), "skipped": res.skipped, "step_s": dt,
                    "eta_s": elapsed / (self.step - first_step) * (self.steps - self.step),
                }, force=self.step == self.steps)
                if self.step >= self.steps:
                    break
                if cfg.validation.interval and self.step % cfg.validation.interval == 0:
                    self.validate()
                saved = self.step % cfg.checkpoint.save_interval == 0
                if saved:
                    self.save()
                if stop.agreed(ps):
                    if not saved:
                        self.save()
                    status = "stopped"
                    self.metrics.event(f"stop requested ({stop.signal or 'another rank'}): "
                                       f"checkpoint saved at step {self.step}")
                    break
                if max_steps is not None and self.step - first_step >= max_steps:
                    status = "max_steps"
                    break
            if status == "complete":
                if self.step < self.steps:
                    raise RuntimeError(f"the data of {self.phase.name} ended at step {self.step} "
                                       f"before the phase's {self.steps} steps")
                self.validate()  # the phase-end weights, the next phase's start
                path = self.save(phase_end=True)
                self.metrics.event(f"{self.phase.name} complete at step {self.step}: {path}")
            path = self.ckpt.wait()
        finally:
            self.watchdog.stop()
            self.profiler.close()
            stop.uninstall()
        return PhaseResult(self.phase.name, status, self.step, self.steps, last_loss,
                           str(path) if path else None)

    def close(self):
        self.ckpt.close()
        self.metrics.close()


def train_phase(cfg: RunConfig, phase: str, *, config_file=None, max_steps=None) -> PhaseResult:
    trainer = Trainer(cfg, phase, config_file=config_file)
    try:
        trainer.restore()
        return trainer.run(max_steps=max_steps)
    finally:
        trainer.close()
