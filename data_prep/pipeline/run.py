"""What every data-prep phase run shares: its ranks, output and work folders, the work-folder
stamp check, logging, progress bars, the units a rank owns and stage timings."""
from __future__ import annotations

import re
import shutil
import time
from pathlib import Path

import yaml

from snowtrain.config import ConfigError
from snowtrain.progress import progress_bar

from ..comm import world
from ..store import write_pickle, write_text


class PipelineRun:
    name = "data-prep"

    def __init__(self, cfg, *, comm=None, progress: bool = True, config_file=None):
        self.cfg = cfg
        self.config_file = config_file
        self.comm = comm or world()
        self.rank, self.size = self.comm.Get_rank(), self.comm.Get_size()
        self.out = Path(cfg.output)
        self.work = Path(cfg.work_dir) if cfg.work_dir else self.out / ".work"
        self.progress = progress and self.rank == 0
        self.timings: dict[str, float] = {}
        output, input_ = Path(cfg.output).resolve(), getattr(cfg, "input", None)
        if input_ is not None:
            input_ = Path(input_).resolve()
            if output == input_ or input_ in output.parents or output in input_.parents:
                raise ConfigError(
                    f"output {cfg.output} is {'the same folder as' if output == input_ else 'nested with'}"
                    f" input {cfg.input}: the run would overwrite what it reads", file=config_file,
                    key="output", fix="give an output folder outside the input folder")

    def on_rank0(self, fn):
        """fn() on rank 0: its result on every rank, or its exception raised on every rank, so
        that none waits forever at the next barrier."""
        result = error = None
        if self.rank == 0:
            try:
                result = fn()
            except Exception as e:  # re-raised on every rank below
                error = e
        result, error = self.comm.bcast((result, error), root=0)
        if error is not None:
            raise error
        return result

    def check_work_dir(self, restart: bool) -> None:
        """The phase's _check_work_dir, then the removal of what killed runs left half-written,
        on rank 0 (see on_rank0) before any rank writes."""
        def check():
            self._check_work_dir(restart)
            return remove_temp_files(self.out, self.work)
        removed = self.on_rank0(check)
        if removed:
            self.log(f"removed {len(removed)} temporary file(s) a killed run left, e.g. {removed[0]}")

    def _check_work_dir(self, restart: bool) -> None:
        raise NotImplementedError

    def write_stamp(self, stamp: Path, text: str, restart: bool, *, ignore=(), clear=(), added=None,
                    discards: str = "the intermediate results") -> None:
        """Writes the run stamp `text` (YAML) to `stamp`; --restart first deletes the work folder
        and `clear`. An earlier stamp that differs is replaced while the work folder holds nothing
        else yet; otherwise the keys that differ, less the top-level keys `ignore` (which cannot
        change the outputs), are a ConfigError listing them (old -> new)."""
        if restart:
            for folder in (self.work, *clear):
                if folder.exists():
                    shutil.rmtree(folder)
        elif stamp.exists() and stamp.read_text() != text and self._has_work(clear):
            old, new = (_flat({k: v for k, v in read_stamp(t, a).items() if k not in ignore})
                        for t, a in ((stamp.read_text(), added), (text, None)))
            changed = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
            if changed:
                raise ConfigError(
                    f"{self.work} holds a run with other values of " + "; ".join(
                        f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in changed),
                    file=self.config_file, key=changed[0],
                    fix=f"undo the change, start over with --restart (deletes {discards}) or give "
                        "another output / work_dir")
        write_text(stamp, text)

    def _has_work(self, clear=()) -> bool:
        """Whether the work folder (or `clear`) holds anything but run stamps (config.yaml)."""
        return any(p.is_file() and p.name != "config.yaml"
                   for folder in (self.work, *clear) for p in folder.rglob("*"))

    def log(self, msg: str) -> None:
        if self.rank == 0:
            print(f"[{self.name}] {msg}", flush=True)

    def bar(self, total, desc, unit="unit"):
        return progress_bar(total, desc, unit, enabled=self.progress)

    def mine(self, n: int) -> list[int]:
        """Unit i belongs to rank i mod ranks."""
        return [i for i in range(n) if i % self.size == self.rank]

    def timed(self, name, fn):
        t = time.time()
        result = fn()
        self.timings[name] = round(time.time() - t, 3)
        return result

    def deduplicate(self, items: list, lang: dict[str, str], id_of, done: Path) -> None:
        """Exact, then near dedup of every rank's items (records or (id, text) pairs) as one
        corpus; rank 0 writes {"exact"|"near": {id: {..., "lang"}}} to `done`."""
        from ..dedup import exact_dedup, near_dedup
        result: dict = {"exact": {}, "near": {}}
        if self.cfg.exact_dedup.enabled:
            self.log("exact dedup")
            res = exact_dedup(items, self.cfg.exact_dedup.options, comm=self.comm)
            result["exact"] = {i: {**d, "lang": lang[i]} for i, d in res.dropped.items()}
            items = [x for x in items if id_of(x) not in res.dropped]
        if self.cfg.near_dedup.enabled:
            self.log("near dedup (MinHash LSH)")
            res = near_dedup(items, self.cfg.near_dedup.options, comm=self.comm,
                             progress=self.progress)
            result["near"] = {i: {**d, "lang": lang[i]} for i, d in res.dropped.items()}
        parts = self.comm.gather(result, root=0)
        if self.rank == 0:
            merged: dict = {"exact": {}, "near": {}}
            for part in parts:
                for kind in merged:
                    merged[kind].update(part[kind])
            write_pickle(done, {k: dict(sorted(v.items())) for k, v in merged.items()})
        self.comm.barrier()


def read_stamp(text: str, added: dict | None = None) -> dict:
    """A run stamp (YAML); a key in `added` (keys newer than the stamp, with their defaults) that
    the stamp lacks reads as its default, since the run that wrote it behaved so."""
    return {**(added or {}), **(yaml.safe_load(text) or {})}


def changed_keys(stamp: Path, text: str, added: dict | None = None) -> set[str]:
    """The top-level keys whose values differ between the run stamp at `stamp` and `text` (both
    YAML); empty when there is no stamp yet or nothing differs."""
    if not stamp.exists() or stamp.read_text() == text:
        return set()
    old, new = read_stamp(stamp.read_text(), added), read_stamp(text)
    return {k for k in old.keys() | new.keys() if old.get(k) != new.get(k)}


# The temporary names of store.py and the plots (.NAME.tmp.PID; earlier versions' plots used
# .NAME.tmp.png) and of indexed.py (NAME.bin.tmp.PID.TAG, .idx too): what a writer killed before
# its rename leaves behind.
_TEMP_NAME = re.compile(r"^\..+\.tmp\.(\d+|png)$|\.(bin|idx)\.tmp\.\d+\.[0-9a-f]+$")


def remove_temp_files(*folders: Path) -> list[str]:
    """Deletes the temporary files under `folders`; -> their paths. Only at the start of a run:
    a run owns its output and work folders, so no writer can be using one (any pid, any node)."""
    removed = []
    for folder in folders:
        if folder.is_dir():
            for path in sorted(folder.rglob("*")):
                if _TEMP_NAME.search(path.name) and path.is_file():
                    path.unlink(missing_ok=True)
                    removed.append(str(path))
    return removed


def _flat(d, prefix: str = "") -> dict:
    """{dotted key: value} of nested dicts and lists of dicts (sources.0.paths, as --set names them)."""
    items = d.items() if isinstance(d, dict) else enumerate(d)
    out = {}
    for k, v in items:
        key = f"{prefix}{k}"
        if isinstance(v, dict) or (isinstance(v, list) and any(isinstance(x, dict) for x in v)):
            out.update(_flat(v, key + ".") if v else {key: v})
        else:
            out[key] = v
    return out
