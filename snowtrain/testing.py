"""Test helpers: run a function in N real OS processes that form one torch.distributed job."""

from __future__ import annotations

import multiprocessing as mp
import os
import pickle
import queue as queue_mod
import time
import traceback
from typing import Any, Callable, Mapping

__all__ = ["DistributedTestError", "run_distributed"]

# Launcher variables the children must not inherit from the parent (e.g. pytest under srun).
_CLEARED_PREFIXES = ("SLURM_", "TORCHELASTIC_")
_CLEARED_VARS = ("GROUP_RANK", "ROLE_RANK", "ROLE_WORLD_SIZE", "LOCAL_WORLD_SIZE")


class DistributedTestError(RuntimeError):
    """A rank raised (or died) inside ``run_distributed``."""

    def __init__(self, rank: int, world_size: int, detail: str):
        self.rank = rank
        self.detail = detail
        super().__init__(f"rank {rank} of {world_size} failed:\n{detail}")


def _free_port() -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world_size: int, env: dict[str, str | None], payload: bytes, results) -> None:
    # Set the env before unpickling fn: that import pulls in torch, which reads OMP_NUM_THREADS.
    for key in list(os.environ):
        if key.startswith(_CLEARED_PREFIXES) or key in _CLEARED_VARS:
            del os.environ[key]
    for key, value in env.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    try:
        fn, args, kwargs = pickle.loads(payload)
        try:
            out = fn(*args, **kwargs)
        finally:
            _destroy_quietly()
        # Pickle here: a Queue pickles in a background thread and would swallow the error.
        results.put((rank, True, pickle.dumps(out)))
    except BaseException:
        results.put((rank, False, traceback.format_exc()))


def _destroy_quietly() -> None:
    try:
        import torch.distributed as dist

        from snowtrain.distributed import destroy_distributed

        if dist.is_available() and dist.is_initialized():
            destroy_distributed()
    except Exception:
        pass


def run_distributed(
    fn: Callable[..., Any],
    world_size: int,
    *args: Any,
    timeout_s: float = 120,
    env: Mapping[str, str | None] | Callable[[int], Mapping[str, str | None]] | None = None,
    **kwargs: Any,
) -> list:
    """Run ``fn(*args, **kwargs)`` in ``world_size`` spawned processes; return results by rank.

    Each child gets a torchrun-style env (MASTER_ADDR=127.0.0.1, a free MASTER_PORT, RANK,
    WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE), OMP_NUM_THREADS=1 and no SLURM_* variables,
    so ``init_distributed()`` inside ``fn`` rendezvouses with its siblings. ``env`` adds
    overrides: a dict for every rank, or a callable ``rank -> dict``; a value of None
    removes the variable. The process group is destroyed after ``fn`` returns.

    ``fn`` must be a module-level function (spawn pickles it by reference); its
    arguments and return value must be picklable.

    Raises DistributedTestError (naming the rank and carrying its traceback) when a rank
    raises or dies, TimeoutError naming the ranks still running after ``timeout_s``.
    The remaining children are killed in both cases.
    """
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    try:
        payload = pickle.dumps((fn, args, kwargs))
    except Exception as e:
        raise TypeError(
            f"run_distributed: cannot pickle fn/args/kwargs ({e}); fn must be a module-level "
            "function and its arguments picklable"
        ) from e

    port = str(_free_port())
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    procs = []
    try:
        for rank in range(world_size):
            child_env: dict[str, str | None] = {
                "MASTER_ADDR": "127.0.0.1",
                "MASTER_PORT": port,
                "RANK": str(rank),
                "WORLD_SIZE": str(world_size),
                "LOCAL_RANK": str(rank),
                "LOCAL_WORLD_SIZE": str(world_size),
                "OMP_NUM_THREADS": "1",
            }
            if env is not None:
                child_env.update(env(rank) if callable(env) else env)
            p = ctx.Process(
                target=_worker,
                args=(rank, world_size, child_env, payload, results),
                name=f"run_distributed-rank{rank}",
                daemon=False,  # daemonic processes may not start children (e.g. DataLoader workers)
            )
            p.start()
            procs.append(p)
        return _collect(procs, results, world_size, timeout_s)
    finally:
        for p in procs:
            if p.is_alive():
                p.terminate()
        for p in procs:
            p.join(5)
            if p.is_alive():
                p.kill()
                p.join()
        results.close()
        results.join_thread()


def _collect(procs, results, world_size: int, timeout_s: float) -> list:
    deadline = time.monotonic() + timeout_s
    done: dict[int, Any] = {}
    errors: dict[int, str] = {}

    def drain(wait: float) -> None:
        end = time.monotonic() + wait
        while True:
            try:
                rank, ok, data = results.get(timeout=max(0.0, end - time.monotonic()))
            except queue_mod.Empty:
                return
            if ok:
                done[rank] = pickle.loads(data)
            else:
                errors[rank] = data

    while len(done) + len(errors) < world_size:
        drain(0.1)
        if not errors:
            # A child that died without reporting (segfault, os._exit, OOM kill).
            dead = [r for r, p in enumerate(procs)
                    if p.exitcode is not None and r not in done and r not in errors]
            if dead:
                drain(1.0)  # its message may still be in the pipe
                for r in dead:
                    if r not in done and r not in errors:
                        errors[r] = f"process exited with code {procs[r].exitcode} without reporting a result"
        if errors:
            # Give siblings that failed at the same moment a chance to report too.
            drain(1.0)
            first = min(errors)
            detail = errors[first]
            others = sorted(set(errors) - {first})
            if others:
                detail += f"\n(ranks {others} also failed)"
            raise DistributedTestError(first, world_size, detail)
        if time.monotonic() > deadline:
            running = [r for r in range(world_size) if r not in done]
            raise TimeoutError(
                f"run_distributed: ranks {running} of {world_size} still running after {timeout_s}s; "
                "all children were killed"
            )
    return [done[r] for r in range(world_size)]
