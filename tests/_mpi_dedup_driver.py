"""Run under mpiexec by tests/test_dedup_mpi.py: every rank deduplicates its own uneven,
interleaved shard of a generated corpus and writes its decisions to <out>/rank<k>.json.

    mpiexec -n 3 python tests/_mpi_dedup_driver.py OUT_DIR [SEED [empty-rank0]]
"""
from __future__ import annotations

import json
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mpi4py import MPI  # noqa: E402

from data_prep.dedup import exact_dedup, near_dedup  # noqa: E402
from data_prep.dedup.synthetic import code_corpus  # noqa: E402

# The configurations compared with a single process (the test imports this list).
CONFIGS = {
    "near": {},
    # 64 bands of 2 rows: chains and ~0.55 pairs become candidates, verified at 0.7
    "near_chains": {"num_perm": 128, "bands": 64, "rows": 2},
    "near_loose": {"num_perm": 128, "bands": 64, "rows": 2, "threshold": 0.5,
                   "preference": ["stars", "path"]},
    "near_noverify": {"verify": False, "num_perm": 128, "bands": 32, "rows": 4},
    "near_recompute": {"cache_shingles": False, "batch_bytes": 4096, "bucket_window": 8},
}
CORPUS = {"n_unique": 120, "n_near": 20, "n_exact": 6, "n_empty": 3, "n_families": 4,
          "n_chains": 4, "n_medium": 6}


def corpus(seed: int):
    """The generated corpus plus a flood of 90 copies of one file (more than a bucket window)."""
    c = code_corpus(seed=seed, **CORPUS)
    first = c.docs[0]
    c.docs += [(f"flood{k:03d}", first[1], k % 5, ("MIT",) if k % 2 else (), f"p/{k}.py")
               for k in range(90)]
    return c


def shard_of(docs: list, rank: int, size: int, seed: int, empty_first: bool = False) -> list:
    """An uneven, interleaved split: rank r takes a doc with weight r + 1, in a seeded pattern
    (rank 0 none at all with empty_first)."""
    rng = random.Random(seed * 7919 + size)
    weights = [0 if (r == 0 and empty_first) else r + 1 for r in range(size)]
    owners = rng.choices(range(size), weights=weights, k=len(docs))
    return [d for d, o in zip(docs, owners) if o == rank]


def main() -> int:
    out = Path(sys.argv[1])
    seed = int(sys.argv[2]) if len(sys.argv) > 2 else 0
    empty_first = len(sys.argv) > 3 and sys.argv[3] == "empty-rank0"
    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    mine = shard_of(corpus(seed).docs, rank, size, seed, empty_first)
    result = {"rank": rank, "size": size, "ids": [d[0] for d in mine]}
    for name, cfg in CONFIGS.items():
        result[name] = near_dedup(mine, cfg, comm=comm).as_dict()
    result["exact"] = exact_dedup(mine, comm=comm).as_dict()
    (out / f"rank{rank}.json").write_text(json.dumps(result, indent=1, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
