"""Checkpoint layout, atomic commit, retention, async saves and resume.

Layout under the checkpoint dir::

    <dir>/latest                         JSON pointer to the last committed checkpoint
    <dir>/<phase>/step_<N:08d>/          DCP files (.metadata, __<rank>_0.distcp),
                                         extra.json, config.yaml, COMMITTED
    <dir>/<phase>/.tmp_step_<N>/         a save in progress (or the leftover of a crashed one)

A save writes into ``.tmp_step_<N>``; once every rank has written (DCP gathers every rank's
write result before rank 0 writes ``.metadata``), rank 0 writes the ``COMMITTED`` marker (a
manifest of every file and its size), fsyncs, renames the folder to ``step_<N>`` (the commit
point) and atomically replaces ``latest``. A crash at any moment leaves the previous checkpoint
and ``latest`` untouched; leftovers are removed by the next save or resume.

Methods that touch checkpoints (``save``, ``wait``, ``find_latest``, ``final_checkpoint``,
``load``, ``close``) are collective in a distributed run: call them on every rank. Rank 0
decides what is on disk and broadcasts it, so ranks never disagree.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import time
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch
import torch.distributed as dist
import yaml
from torch.distributed.checkpoint.api import CheckpointException

from snowtrain.checkpoint.sharded import (
    async_save_state,
    is_distributed,
    load_state,
    read_metadata,
    save_state,
    storage_files,
)
from snowtrain.config import CheckpointConfig, config_from_dict, config_to_dict, diff_configs, resolve_path

__all__ = ["CheckpointError", "CheckpointInfo", "CheckpointManager", "verify_checkpoint"]

log = logging.getLogger(__name__)

MARKER = "COMMITTED"
EXTRA = "extra.json"
CONFIG = "config.yaml"
LATEST = "latest"
TMP_PREFIX = ".tmp_step_"
TRASH_PREFIX = ".trash_"
FORMAT_VERSION = 1


class CheckpointError(RuntimeError):
    """A checkpoint is missing, corrupted or incomplete (the message names the folder)."""


@dataclass(frozen=True)
class CheckpointInfo:
    path: Path
    phase: str
    step: int
    phase_end: bool
    seq: int
    committed_at: float


# --------------------------------------------------------------------------- file helpers


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - e.g. Windows
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover - some filesystems refuse fsync on dirs
        pass
    finally:
        os.close(fd)


def _write_durable(path: Path, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def _replace_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp.{os.getpid()}.{uuid.uuid4().hex[:8]}")
    _write_durable(tmp, text)
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _read_marker(path: Path) -> dict | None:
    try:
        data = json.loads((path / MARKER).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _info(path: Path, marker: dict) -> CheckpointInfo:
    return CheckpointInfo(
        path=path,
        phase=str(marker.get("phase", path.parent.name)),
        step=int(marker.get("step", -1)),
        phase_end=bool(marker.get("phase_end", False)),
        seq=int(marker.get("seq", 0)),
        committed_at=float(marker.get("committed_at", 0.0)),
    )


def _manifest(folder: Path) -> dict[str, int]:
    files = {}
    for p in sorted(folder.rglob("*")):
        if p.is_file() and p.name != MARKER:
            files[p.relative_to(folder).as_posix()] = p.stat().st_size
    return files


def verify_checkpoint(path: str | os.PathLike) -> list[str]:
    """Problems that make ``path`` unusable (empty list: the checkpoint is complete).

    Checks the COMMITTED marker, every file of its manifest (present, with the recorded size),
    that the DCP metadata is readable and that every data file it references is long enough,
    and that extra.json parses. Reads no tensor data.
    """
    path = Path(path)
    if not path.is_dir():
        return ["the folder does not exist"]
    problems: list[str] = []
    marker = _read_marker(path)
    if marker is None:
        problems.append(
            f"no readable {MARKER} marker (the save never finished, or the marker was removed)"
        )
    else:
        files = marker.get("files")
        if not isinstance(files, dict):
            problems.append(f"{MARKER} marker has no file list")
        else:
            for rel, size in sorted(files.items()):
                p = path / rel
                if not p.is_file():
                    problems.append(f"missing file {rel}")
                elif p.stat().st_size != int(size):
                    problems.append(f"file {rel} has {p.stat().st_size} bytes, expected {size} (truncated?)")
    try:
        metadata = read_metadata(path)
    except Exception as e:  # noqa: BLE001 - any failure means unreadable
        problems.append(f"unreadable DCP metadata (.metadata): {type(e).__name__}: {e}")
    else:
        for rel, need in sorted(storage_files(metadata).items()):
            p = path / rel
            if not p.is_file():
                if f"missing file {rel}" not in problems:
                    problems.append(f"missing file {rel}")
            elif p.stat().st_size < need:
                msg = f"file {rel} has {p.stat().st_size} bytes, the metadata needs {need} (truncated?)"
                if not any(x.startswith(f"file {rel} ") for x in problems):
                    problems.append(msg)
    try:
        extra = json.loads((path / EXTRA).read_text())
        if not isinstance(extra, dict):
            problems.append(f"{EXTRA} does not hold a JSON object")
    except OSError:
        if f"missing file {EXTRA}" not in problems:
            problems.append(f"missing file {EXTRA}")
    except ValueError as e:
        problems.append(f"{EXTRA} is not valid JSON: {e}")
    return problems


# --------------------------------------------------------------------------- manager


@dataclass
class _Pending:
    step: int
    phase: str
    final: Path
    future: Future


class CheckpointManager:
    """Saves, commits, prunes and finds checkpoints of one run.

    Args:
        config: the run's ``checkpoint`` section (dir, keep_last, keep_phase_ends, async_save).
        dir: checkpoint root; defaults to ``config.dir`` (``${VAR}`` expanded).
        state: the ParallelState (recorded in the marker: tp/dp sizes); optional.
        run_config: the resolved RunConfig, written to each checkpoint's config.yaml
            (``save(config=...)`` overrides it per save).
        process_group: group for DCP's coordination and the manager's own collectives.
            Default: a new gloo group over all ranks (created here, so construct the manager
            on every rank); a private group keeps an async save's background collectives apart
            from the trainer's.
    """

    def __init__(
        self,
        config: CheckpointConfig,
        dir: str | os.PathLike | None = None,  # noqa: A002 - mirrors config.dir
        *,
        state: Any = None,
        run_config: Any = None,
        process_group: Any = None,
    ):
        self.config = config
        self.root = Path(resolve_path(str(dir if dir is not None else config.dir), key="checkpoint.dir"))
        self.state = state
        self.run_config = run_config
        if is_distributed():
            self.pg = process_group if process_group is not None else dist.new_group(backend="gloo")
            self.rank = dist.get_rank(self.pg)
            self.world_size = dist.get_world_size(self.pg)
        else:
            self.pg = None
            self.rank, self.world_size = 0, 1
        self._executor: ThreadPoolExecutor | None = None
        self._pending: _Pending | None = None

    # ----------------------------------------------------------------- collectives

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def _distributed(self) -> bool:
        return self.pg is not None and self.world_size > 1

    def _agree(self, ok: bool) -> bool:
        """True on every rank iff ``ok`` on every rank (doubles as a barrier)."""
        if not self._distributed():
            return ok
        t = torch.tensor([1 if ok else 0], dtype=torch.int32)
        dist.all_reduce(t, op=dist.ReduceOp.MIN, group=self.pg)
        return bool(t.item())

    def _bcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank."""
        if not self._distributed():
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=dist.get_global_rank(self.pg, 0), group=self.pg)
        return box[0]

    def _rank0(self, fn, *args, **kwargs):
        """Run ``fn`` on rank 0, broadcast its result; its exception is raised on every rank."""
        result, error = None, None
        if self.is_main:
            try:
                result = fn(*args, **kwargs)
            except Exception as e:  # noqa: BLE001 - re-raised below, on every rank
                error = e
        status = self._bcast(("ok", result) if error is None else ("error", f"{type(error).__name__}: {error}"))
        if error is not None:
            raise error
        if status[0] == "error":
            exc = CheckpointError if "CheckpointError" in status[1] else RuntimeError
            raise exc(f"on rank 0: {status[1]}")
        return status[1]

    # ----------------------------------------------------------------- layout

    def step_dir(self, phase: str, step: int) -> Path:
        return self.root / _check_phase(phase) / f"step_{int(step):08d}"

    def _tmp_dir(self, phase: str, step: int) -> Path:
        return self.root / _check_phase(phase) / f"{TMP_PREFIX}{int(step)}"

    def list_checkpoints(self, phase: str | None = None) -> list[CheckpointInfo]:
        """Folders with a readable COMMITTED marker, oldest first (not verified further)."""
        out = []
        if not self.root.is_dir():
            return out
        for phase_dir in sorted(p for p in self.root.iterdir() if p.is_dir() and not p.name.startswith(".")):
            if phase is not None and phase_dir.name != phase:
                continue
            for d in sorted(phase_dir.glob("step_*")):
                marker = _read_marker(d) if d.is_dir() else None
                if marker is not None:
                    out.append(_info(d, marker))
        return sorted(out, key=lambda i: (i.seq, i.committed_at, i.step))

    def _read_latest(self) -> tuple[Path | None, str | None]:
        """(path the pointer names, problem reading it)."""
        f = self.root / LATEST
        if not f.exists():
            return None, None
        try:
            rel = json.loads(f.read_text())["path"]
            return self.root / rel, None
        except (OSError, ValueError, KeyError, TypeError) as e:
            return None, f"cannot read {f}: {type(e).__name__}: {e}"

    def _cleanup_leftovers(self) -> None:
        """Remove tmp folders of crashed saves and half-deleted checkpoints (rank 0)."""
        if not self.root.is_dir():
            return
        keep = self._tmp_dir(self._pending.phase, self._pending.step) if self._pending else None
        for phase_dir in self.root.iterdir():
            if not phase_dir.is_dir():
                continue
            for d in phase_dir.iterdir():
                if d.is_dir() and (d.name.startswith(TMP_PREFIX) or d.name.startswith(TRASH_PREFIX)) and d != keep:
                    log.warning("removing %s, the leftover of an interrupted checkpoint save/delete", d)
                    shutil.rmtree(d, ignore_errors=True)
        for f in self.root.glob(f".{LATEST}.tmp.*"):
            f.unlink(missing_ok=True)

    # ----------------------------------------------------------------- save

    def save(
        self,
        state: Mapping[str, Any],
        step: int,
        phase: str,
        *,
        phase_end: bool = False,
        config: Any = None,
        async_save: bool | None = None,
    ) -> Path:
        """Save ``state`` (``{"model": ..., "optim": ..., "extra": json-able dict}``) as
        ``<dir>/<phase>/step_<step>`` and return that path (collective).

        Synchronous saves return once the checkpoint is committed. Async saves (default:
        ``config.async_save``) return once the tensors are copied to CPU memory; the write and
        the commit finish in the background (``wait()`` to join). A new save first waits for
        the previous one. ``phase_end=True`` marks the phase's final checkpoint (kept by
        retention when keep_phase_ends, found by ``final_checkpoint``).
        """
        self.wait()
        step = int(step)
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        _check_phase(phase)
        async_save = self.config.async_save if async_save is None else async_save
        extra = dict(state.get("extra") or {})
        try:
            extra_text = json.dumps(extra, indent=2, sort_keys=True, allow_nan=True)
        except (TypeError, ValueError) as e:
            raise TypeError(f"state['extra'] must be JSON-serialisable: {e}") from None
        tensors = {k: v for k, v in state.items() if k != "extra"}
        run_config = config if config is not None else self.run_config
        tmp, final = self._tmp_dir(phase, step), self.step_dir(phase, step)
        info = {
            "format": FORMAT_VERSION,
            "step": step,
            "phase": phase,
            "phase_end": bool(phase_end),
            "world_size": self.world_size,
            "tp_size": getattr(self.state, "tp_size", None),
            "dp_size": getattr(self.state, "dp_size", None),
        }

        def prepare() -> None:
            self._cleanup_leftovers()
            if tmp.exists():
                shutil.rmtree(tmp)
            tmp.mkdir(parents=True)
            _write_durable(tmp / EXTRA, extra_text + "\n")
            if run_config is not None:
                _write_durable(tmp / CONFIG, _dump_config(run_config))

        self._rank0(prepare)  # also the barrier: no rank writes before tmp exists

        if async_save:
            dcp_future = async_save_state(tensors, tmp, process_group=self.pg)
            if self._executor is None:
                self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="snowtrain-ckpt")
            fut = self._executor.submit(self._finish_write, dcp_future, tmp, final, info)
            self._pending = _Pending(step, phase, final, fut)
            log.info("checkpoint step %d (%s): staged, writing %s in the background", step, phase, final)
            return final

        error: BaseException | None = None
        try:
            _dcp_call(save_state, f"writing checkpoint {final} (into {tmp})", tensors, tmp, process_group=self.pg)
            if self.is_main:
                self._commit(tmp, final, info)
        except Exception as e:  # noqa: BLE001 - settled collectively below
            error = e
        self._settle(error, step)
        log.info("checkpoint step %d (%s) committed: %s", step, phase, final)
        return final

    def _finish_write(self, dcp_future: Future, tmp: Path, final: Path, info: dict) -> None:
        """Background thread: wait for every rank's write (DCP), then commit on rank 0."""
        _dcp_call(dcp_future.result, f"writing checkpoint {final} (into {tmp})")
        if self.is_main:
            self._commit(tmp, final, info)

    def _settle(self, error: BaseException | None, step: int) -> None:
        ok = self._agree(error is None)
        if error is not None:
            raise error
        if not ok:
            raise CheckpointError(f"checkpoint save of step {step} failed on another rank (see its log)")

    def wait(self) -> Path | None:
        """Finish the pending async save (write + commit) on every rank; its path, or None."""
        pending, self._pending = self._pending, None
        if pending is None:
            return None
        error: BaseException | None = None
        try:
            pending.future.result()
        except Exception as e:  # noqa: BLE001 - settled collectively
            error = e
        self._settle(error, pending.step)
        log.info("checkpoint step %d (%s) committed: %s", pending.step, pending.phase, pending.final)
        return pending.final

    @property
    def pending(self) -> bool:
        return self._pending is not None

    def close(self) -> None:
        """Wait for a pending save and stop the background thread."""
        try:
            self.wait()
        finally:
            if self._executor is not None:
                self._executor.shutdown(wait=True)
                self._executor = None

    def __enter__(self) -> "CheckpointManager":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _commit(self, tmp: Path, final: Path, info: dict) -> None:
        """Rank 0, after every rank wrote: marker, fsync, rename (the commit), latest, retention."""
        seq = max((i.seq for i in self.list_checkpoints()), default=0) + 1
        old = _read_marker(final) if final.exists() else None
        if old is not None and old.get("phase_end"):
            info = dict(info, phase_end=True)  # an interval save never un-marks a phase end
        marker = dict(info, seq=seq, committed_at=time.time(), files=_manifest(tmp))
        _write_durable(tmp / MARKER, json.dumps(marker, indent=2, sort_keys=True) + "\n")
        _fsync_dir(tmp)
        trash = None
        if final.exists():  # the same step saved again (e.g. a phase-end save after an interval save)
            trash = final.with_name(f"{TRASH_PREFIX}{final.name}.{uuid.uuid4().hex[:8]}")
            (final / MARKER).unlink(missing_ok=True)
            os.rename(final, trash)
        os.rename(tmp, final)  # the commit point
        _fsync_dir(final.parent)
        _replace_atomic(
            self.root / LATEST,
            json.dumps({"path": final.relative_to(self.root).as_posix(), "phase": info["phase"],
                        "step": info["step"], "phase_end": info["phase_end"], "seq": seq}, indent=2) + "\n",
        )
        if trash is not None:
            shutil.rmtree(trash, ignore_errors=True)
        try:
            self._apply_retention(keep=final)
        except Exception as e:  # noqa: BLE001 - pruning must not fail a good save
            log.warning("checkpoint retention failed (nothing was lost): %s", e)

    def _apply_retention(self, keep: Path | None = None) -> list[Path]:
        infos = self.list_checkpoints()
        kept = {i.path for i in infos[-max(int(self.config.keep_last), 1):]}
        if self.config.keep_phase_ends:
            kept |= {i.path for i in infos if i.phase_end}
        if keep is not None:
            kept.add(keep)
        removed = []
        for i in infos:
            if i.path in kept:
                continue
            # Unmark first: a half-deleted folder must never look committed.
            (i.path / MARKER).unlink(missing_ok=True)
            trash = i.path.with_name(f"{TRASH_PREFIX}{i.path.name}.{uuid.uuid4().hex[:8]}")
            os.rename(i.path, trash)
            shutil.rmtree(trash, ignore_errors=True)
            removed.append(i.path)
            log.info("retention: removed checkpoint %s", i.path)
        return removed

    # ----------------------------------------------------------------- resume

    def find_latest(self, phase: str | None = None) -> Path | None:
        """The newest complete checkpoint (optionally of one phase), or None (collective).

        Follows ``latest``; if that checkpoint is corrupted or partial, logs a warning naming
        the folder and falls back to the newest older one that verifies; raises CheckpointError
        when there are checkpoints but every one is damaged. Removes leftovers of crashed saves.
        """
        self.wait()
        return self._rank0(self._find_latest_local, phase)

    def _find_latest_local(self, phase: str | None) -> Path | None:
        self._cleanup_leftovers()
        pointer, problem = self._read_latest()
        if problem:
            log.warning("checkpoint pointer is unreadable (%s); scanning %s for checkpoints", problem, self.root)
        candidates = [i.path for i in reversed(self.list_checkpoints(phase))]
        if pointer is not None and (phase is None or pointer.parent.name == phase):
            # The pointer's target first unless a newer committed one exists (a crash after the
            # rename but before ``latest`` was replaced leaves a complete, newer checkpoint).
            marker = _read_marker(pointer)
            pseq = int(marker.get("seq", 0)) if marker else None
            newer = [] if pseq is None else [
                p for p in candidates if p != pointer and int((_read_marker(p) or {}).get("seq", 0)) > pseq]
            candidates = newer + [pointer] + [p for p in candidates if p != pointer and p not in newer]
        bad: list[Path] = []
        for path in candidates:
            problems = verify_checkpoint(path)
            if not problems:
                if bad:
                    log.warning("resuming from %s, the newest complete checkpoint", path)
                return path
            bad.append(path)
            log.warning(
                "checkpoint %s is corrupted or incomplete (%s); falling back to the previous one",
                path, "; ".join(problems),
            )
        if bad:  # never start over silently: retention would then delete them
            raise CheckpointError(
                f"no complete checkpoint{f' of {phase}' if phase else ''} under {self.root}: "
                f"{', '.join(p.name for p in bad)} damaged (see the warnings above); repair one, "
                "or move them away (or set checkpoint.resume=false) to start over")
        return None

    def final_checkpoint(self, phase: str, *, missing_ok: bool = False) -> Path | None:
        """The phase-end checkpoint of ``phase`` (for ``init_from: previous``; collective).

        Raises CheckpointError when there is none (or returns None with ``missing_ok``).
        """
        self.wait()
        _check_phase(phase)

        def find() -> Path | None:
            infos = [i for i in reversed(self.list_checkpoints(phase)) if i.phase_end]
            for i in infos:
                problems = verify_checkpoint(i.path)
                if not problems:
                    return i.path
                log.warning("phase-end checkpoint %s is corrupted or incomplete (%s)", i.path, "; ".join(problems))
            if missing_ok:
                return None
            have = [i.path.name for i in self.list_checkpoints(phase)]
            raise CheckpointError(
                f"no complete phase-end checkpoint for phase '{phase}' under {self.root / phase} "
                f"(committed there: {have or 'none'}); run that phase to its end first, or set "
                "init_from to a checkpoint path"
            )

        return self._rank0(find)

    def previous_good(self, path: str | os.PathLike) -> Path | None:
        """The newest complete checkpoint older than ``path`` (rank-local, no collective)."""
        path = Path(path)
        marker = _read_marker(path)
        older = self.list_checkpoints()
        if marker is not None:
            older = [i for i in older if i.seq < int(marker.get("seq", 0))]
        for i in reversed(older):
            if i.path != path and not verify_checkpoint(i.path):
                return i.path
        return None

    def verify(self, path: str | os.PathLike) -> None:
        """Raise CheckpointError naming the folder (and the previous good one) if ``path`` is damaged."""
        path = Path(path)
        problems = verify_checkpoint(path)
        if problems:
            prev = self.previous_good(path)
            hint = (f"; the previous complete checkpoint is {prev}" if prev is not None
                    else "; no older complete checkpoint exists under " + str(self.root))
            raise CheckpointError(
                f"checkpoint {path} is corrupted or incomplete: {'; '.join(problems)}{hint} "
                "(load that one, or delete the damaged folder and resume)"
            )

    def load(self, path: str | os.PathLike, state_dict: dict[str, Any]) -> dict:
        """Fill ``state_dict`` (same keys as saved, any mesh/placements) in place from the
        checkpoint ``path`` and return its extra dict (also merged into ``state_dict['extra']``
        when that is a dict). Collective; a damaged checkpoint raises CheckpointError.
        """
        self.wait()
        path = self._resolve(path)
        self._rank0(self.verify, path)
        tensors = {k: v for k, v in state_dict.items() if k != "extra"}
        try:
            load_state(tensors, path, process_group=self.pg)
        except (Exception, CheckpointException) as e:
            raise CheckpointError(
                f"loading checkpoint {path} failed: {type(e).__name__}: {e}\n  (the template's keys "
                "must match the saved ones, with the same global shapes; placements may differ)"
            ) from e
        for k, v in tensors.items():  # DCP may replace non-tensor leaves
            state_dict[k] = v
        extra = json.loads((path / EXTRA).read_text())
        if isinstance(state_dict.get("extra"), dict):
            state_dict["extra"].update(extra)
        log.info("loaded checkpoint %s", path)
        return extra

    def _resolve(self, path: str | os.PathLike) -> Path:
        """A checkpoint path, absolute or relative to the checkpoint root (``p1/step_00000100``)."""
        path = Path(path)
        if not path.is_absolute() and not path.exists() and (self.root / path).exists():
            return self.root / path
        return path

    def read_extra(self, path: str | os.PathLike) -> dict:
        return json.loads((Path(path) / EXTRA).read_text())

    def info(self, path: str | os.PathLike) -> CheckpointInfo:
        path = Path(path)
        marker = _read_marker(path)
        if marker is None:
            raise CheckpointError(f"checkpoint {path} has no readable {MARKER} marker")
        return _info(path, marker)

    def load_config_diff(self, path: str | os.PathLike, current_config: Any) -> list[str]:
        """Differences ``key: saved -> current`` between a checkpoint's config.yaml and the
        current config (empty when equal, or when the checkpoint has no config.yaml)."""
        f = Path(path) / CONFIG
        if not f.is_file():
            log.warning("checkpoint %s has no %s; cannot compare configs", path, CONFIG)
            return []
        saved = yaml.safe_load(f.read_text()) or {}
        current = config_to_dict(current_config) if dataclasses.is_dataclass(current_config) else dict(current_config)
        if dataclasses.is_dataclass(current_config):
            try:  # normalise types the way the current schema reads them
                saved = config_to_dict(config_from_dict(saved, type(current_config)))
            except Exception:  # noqa: BLE001 - an older schema: compare the raw mappings
                pass
        return diff_configs(saved, current)


def _dcp_call(fn, what: str, *args, **kwargs):
    """DCP raises CheckpointException, a BaseException: turn it into a CheckpointError."""
    try:
        return fn(*args, **kwargs)
    except CheckpointException as e:
        raise CheckpointError(f"{what} failed: {e}") from e


def _check_phase(phase: str) -> str:
    if not isinstance(phase, str) or not phase or phase.startswith(".") or "/" in phase or "\\" in phase \
            or phase == LATEST:
        raise ValueError(f"invalid phase name {phase!r} for a checkpoint folder")
    return phase


def _dump_config(cfg: Any) -> str:
    data = config_to_dict(cfg) if dataclasses.is_dataclass(cfg) else dict(cfg)
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=False)
