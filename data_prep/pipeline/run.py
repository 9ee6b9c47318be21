"""What every data-prep phase run shares: its ranks, output and work folders, the work-folder
stamp check, logging, progress bars, the units a rank owns and stage timings."""
from __future__ import annotations

import time
from pathlib import Path

from snowtrain.progress import progress_bar

from ..comm import world
from ..store import write_pickle


class PipelineRun:
    name = "data-prep"

    def __init__(self, cfg, *, comm=None, progress: bool = True):
        self.cfg = cfg
        self.comm = comm or world()
        self.rank, self.size = self.comm.Get_rank(), self.comm.Get_size()
        self.out = Path(cfg.output)
        self.work = Path(cfg.work_dir) if cfg.work_dir else self.out / ".work"
        self.progress = progress and self.rank == 0
        self.timings: dict[str, float] = {}

    def check_work_dir(self, restart: bool) -> None:
        """Runs the phase's _check_work_dir on rank 0; every rank raises its error, so none
        waits forever at the next barrier."""
        error = None
        if self.rank == 0:
            try:
                self._check_work_dir(restart)
            except Exception as e:  # re-raised on every rank below
                error = e
        error = self.comm.bcast(error, root=0)
        if error is not None:
            raise error

    def _check_work_dir(self, restart: bool) -> None:
        raise NotImplementedError

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
