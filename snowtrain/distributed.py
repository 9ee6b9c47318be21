"""Distributed harness: launcher detection, process-group init and the TP x DP rank grid.

Works under torchrun, under a bare ``srun`` (one task per GPU) and as a single process.
The grid follows Megatron: tensor-parallel ranks are adjacent
(``global_rank = dp_rank * tp + tp_rank``), so a TP group stays inside one node.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

__all__ = [
    "LaunchEnv",
    "ParallelState",
    "destroy_distributed",
    "expand_hostlist",
    "find_free_port",
    "get_state",
    "grid_ranks",
    "init_distributed",
    "launch_env",
]


# --------------------------------------------------------------------------- launch env


@dataclass(frozen=True)
class LaunchEnv:
    rank: int
    world_size: int
    local_rank: int
    master_addr: str
    master_port: int
    source: str  # "torchrun" | "slurm" | "single"


def find_free_port(host: str = "127.0.0.1") -> int:
    """A port that was free a moment ago (racy by nature; fine for rendezvous on one host)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _split_top_level(spec: str) -> list[str]:
    """Split on commas that are not inside brackets."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(spec):
        if ch == "[":
            depth += 1
            if depth > 1:
                raise ValueError(f"nested brackets are not valid in a hostlist: {spec!r}")
        elif ch == "]":
            depth -= 1
            if depth < 0:
                raise ValueError(f"unbalanced ']' in hostlist: {spec!r}")
        elif ch == "," and depth == 0:
            parts.append(spec[start:i])
            start = i + 1
    if depth:
        raise ValueError(f"unbalanced '[' in hostlist: {spec!r}")
    parts.append(spec[start:])
    return [p.strip() for p in parts if p.strip()]


def _expand_host(pattern: str, full: str) -> list[str]:
    open_ = pattern.find("[")
    if open_ < 0:
        return [pattern]
    close = pattern.index("]", open_)
    prefix, body, rest = pattern[:open_], pattern[open_ + 1 : close], pattern[close + 1 :]
    values: list[str] = []
    for item in body.split(","):
        item = item.strip()
        lo, sep, hi = item.partition("-")
        if not lo.isdigit() or (sep and not hi.isdigit()):
            raise ValueError(f"bad range {item!r} in hostlist {full!r}")
        if not sep:
            values.append(lo)
            continue
        if int(hi) < int(lo):
            raise ValueError(f"descending range {item!r} in hostlist {full!r}")
        # Slurm pads to the width of the range start: n[008-011] -> n008 .. n011.
        values.extend(str(i).zfill(len(lo)) for i in range(int(lo), int(hi) + 1))
    tails = _expand_host(rest, full)  # later bracket groups vary fastest
    return [prefix + v + t for v in values for t in tails]


def expand_hostlist(spec: str) -> list[str]:
    """Expand a Slurm hostlist, e.g. ``"gpu[001-002,010],login1,n[1-2]-ib"`` ->
    ``["gpu001", "gpu002", "gpu010", "login1", "n1-ib", "n2-ib"]``."""
    hosts: list[str] = []
    for part in _split_top_level(spec):
        hosts.extend(_expand_host(part, spec))
    return hosts


def _env_int(name: str, env: dict[str, str], default: int | None = None) -> int:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        if default is None:
            raise ValueError(f"environment variable {name} is required but not set")
        return default
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"environment variable {name}={raw!r} is not an integer") from None


def launch_env(environ: dict[str, str] | None = None) -> LaunchEnv:
    """Read rank/world/master from torchrun's env, else Slurm's, else single-process defaults."""
    env = dict(os.environ if environ is None else environ)

    if "RANK" in env and "WORLD_SIZE" in env:
        le = LaunchEnv(
            rank=_env_int("RANK", env),
            world_size=_env_int("WORLD_SIZE", env),
            local_rank=_env_int("LOCAL_RANK", env, 0),
            master_addr=env.get("MASTER_ADDR") or "127.0.0.1",
            master_port=_env_int("MASTER_PORT", env, 29500),
            source="torchrun",
        )
    elif "SLURM_PROCID" in env and "SLURM_NTASKS" in env:
        world = _env_int("SLURM_NTASKS", env)
        nodelist = env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST")
        # An exported MASTER_ADDR wins (e.g. a sbatch script picking an IB interface).
        addr = env.get("MASTER_ADDR")
        if not addr:
            hosts = expand_hostlist(nodelist) if nodelist else []
            if hosts:
                addr = hosts[0]
            elif world == 1:
                addr = "127.0.0.1"
            else:
                raise ValueError(
                    "Slurm launch with SLURM_NTASKS>1 but neither SLURM_JOB_NODELIST, "
                    "SLURM_NODELIST nor MASTER_ADDR is set; cannot find the rendezvous host"
                )
        if "MASTER_PORT" in env:
            port = _env_int("MASTER_PORT", env)
        elif "SLURM_JOB_ID" in env:
            # Same port on every task of the job, different across concurrent jobs.
            port = 20000 + _env_int("SLURM_JOB_ID", env) % 20000
        else:
            port = 29500
        le = LaunchEnv(
            rank=_env_int("SLURM_PROCID", env),
            world_size=world,
            local_rank=_env_int("SLURM_LOCALID", env, 0),
            master_addr=addr,
            master_port=port,
            source="slurm",
        )
    else:
        addr = env.get("MASTER_ADDR") or "127.0.0.1"
        le = LaunchEnv(
            rank=0,
            world_size=1,
            local_rank=0,
            master_addr=addr,
            master_port=_env_int("MASTER_PORT", env, 0) or find_free_port(),
            source="single",
        )

    if le.world_size < 1 or not 0 <= le.rank < le.world_size:
        raise ValueError(
            f"inconsistent {le.source} launch env: rank={le.rank}, world_size={le.world_size}"
        )
    return le


# --------------------------------------------------------------------------- grid


def grid_ranks(world_size: int, tp: int) -> tuple[list[list[int]], list[list[int]]]:
    """Global ranks of every TP group and every DP group (Megatron order: TP ranks adjacent)."""
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    if tp < 1 or world_size % tp:
        from .config import ConfigError
        divisors = [d for d in range(1, world_size + 1) if world_size % d == 0]
        raise ConfigError(
            f"tensor_parallel={tp} does not divide world_size={world_size}",
            key="parallel.tensor_parallel",
            fix=f"set tensor_parallel to one of {divisors}, or launch a multiple of {tp} processes")
    dp = world_size // tp
    tp_groups = [[d * tp + t for t in range(tp)] for d in range(dp)]
    dp_groups = [[d * tp + t for d in range(dp)] for t in range(tp)]
    return tp_groups, dp_groups


# --------------------------------------------------------------------------- state


@dataclass(frozen=True)
class ParallelState:
    rank: int
    world_size: int
    local_rank: int
    tp_rank: int
    tp_size: int
    dp_rank: int
    dp_size: int
    tp_group: Any  # torch.distributed.ProcessGroup
    dp_group: Any
    tp_ranks: list[int]
    dp_ranks: list[int]
    device: torch.device
    backend: str

    @property
    def is_main(self) -> bool:
        return self.rank == 0


_STATE: ParallelState | None = None


def get_state() -> ParallelState:
    if _STATE is None:
        raise RuntimeError(
            "distributed state is not initialised: call snowtrain.distributed.init_distributed() first"
        )
    return _STATE


def _pick_device(backend: str, local_rank: int) -> torch.device:
    if backend in ("nccl", "auto") and torch.cuda.is_available():
        n = torch.cuda.device_count()
        if local_rank >= n:
            raise RuntimeError(
                f"local_rank={local_rank} but only {n} CUDA device(s) are visible; "
                "launch at most one process per GPU on each node"
            )
        return torch.device("cuda", local_rank)
    if backend == "nccl":
        raise RuntimeError("backend='nccl' needs CUDA, which is not available; use 'gloo' or 'auto'")
    return torch.device("cpu")


def init_distributed(
    tensor_parallel: int = 1, backend: str = "auto", timeout_s: float = 600
) -> ParallelState:
    """Initialise torch.distributed (if needed) and build the TP/DP groups.

    If the default process group already exists it is reused; calling again with the
    same ``tensor_parallel`` returns the current state.
    """
    global _STATE
    if _STATE is not None and dist.is_initialized() and _STATE.tp_size == tensor_parallel:
        return _STATE

    if dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
        backend = str(dist.get_backend())
        local_rank = _env_int("LOCAL_RANK", dict(os.environ), 0)
        grid_ranks(world, tensor_parallel)  # validate before any group is created
        device = _pick_device("nccl" if "nccl" in backend else "gloo", local_rank)
    else:
        le = launch_env()
        rank, world, local_rank = le.rank, le.world_size, le.local_rank
        # Validate before the rendezvous so a bad config fails fast instead of at the first collective.
        grid_ranks(world, tensor_parallel)
        device = _pick_device(backend, local_rank)
        if backend == "auto":
            backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        # env:// reads these; a Slurm or single-process launch does not set them.
        for key, value in (
            ("MASTER_ADDR", le.master_addr),
            ("MASTER_PORT", le.master_port),
            ("RANK", rank),
            ("WORLD_SIZE", world),
            ("LOCAL_RANK", local_rank),
        ):
            os.environ.setdefault(key, str(value))
        dist.init_process_group(
            backend=backend,
            init_method="env://",
            rank=rank,
            world_size=world,
            timeout=timedelta(seconds=timeout_s),
        )

    tp_groups, dp_groups = grid_ranks(world, tensor_parallel)
    # torch requires every rank to create every group, in the same order.
    tp_group = dp_group = None
    tp_ranks: list[int] = []
    dp_ranks: list[int] = []
    # new_group does not inherit the default group's timeout (NCCL's own default is 10 minutes)
    timeout = timedelta(seconds=timeout_s)
    for ranks in tp_groups:
        g = dist.new_group(ranks, timeout=timeout)
        if rank in ranks:
            tp_group, tp_ranks = g, ranks
    for ranks in dp_groups:
        g = dist.new_group(ranks, timeout=timeout)
        if rank in ranks:
            dp_group, dp_ranks = g, ranks

    _STATE = ParallelState(
        rank=rank,
        world_size=world,
        local_rank=local_rank,
        tp_rank=rank % tensor_parallel,
        tp_size=tensor_parallel,
        dp_rank=rank // tensor_parallel,
        dp_size=world // tensor_parallel,
        tp_group=tp_group,
        dp_group=dp_group,
        tp_ranks=list(tp_ranks),
        dp_ranks=list(dp_ranks),
        device=device,
        backend=backend,
    )
    return _STATE


def destroy_distributed() -> None:
    """Tear down all process groups and forget the current state (safe to call twice)."""
    global _STATE
    _STATE = None
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
