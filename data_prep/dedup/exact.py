"""Exact deduplication: files with byte-identical content (128-bit BLAKE2b of the UTF-8 bytes) keep
one survivor each, chosen by the preference. Under MPI each hash is decided by the rank that owns
it (hash mod size), so the result does not depend on how files are spread over ranks."""
from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from .common import (DedupResult, Progress, as_comm, as_docs, check_preference, check_unique_ids,
                     preference_key)


def content_hash(text: str) -> bytes:
    """128-bit BLAKE2b of the content's UTF-8 bytes (lone surrogates kept as they are)."""
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).digest()


@dataclass
class ExactDedupConfig:
    preference: Sequence[str] = ("license", "stars", "id")

    def __post_init__(self):
        self.preference = check_preference(self.preference)

    @classmethod
    def from_dict(cls, d: dict | None) -> "ExactDedupConfig":
        d = dict(d or {})
        for key in d:
            if key not in cls.__dataclass_fields__:
                raise ValueError(f"unknown exact dedup option {key!r}; "
                                 f"known: {', '.join(cls.__dataclass_fields__)}")
        return cls(**d)


def exact_dedup(docs: Iterable, config: ExactDedupConfig | dict | None = None, comm=None, *,
                progress: bool | Callable[[str, int, int], Any] = False) -> DedupResult:
    """Drops every file whose content is identical to a preferred one.

    docs: Records, (id, text[, stars[, licenses[, path]]]) tuples or mappings; with an mpi4py
    communicator, each rank passes only its own shard and gets the decisions for it."""
    if not isinstance(config, ExactDedupConfig):
        config = ExactDedupConfig.from_dict(config)
    comm = as_comm(comm)
    rank, size = comm.Get_rank(), comm.Get_size()
    docs = as_docs(docs)
    if size == 1:
        check_unique_ids(docs)
    prog = Progress(progress, rank)
    t0 = time.perf_counter()

    outgoing: list[list] = [[] for _ in range(size)]
    total = sum(len(d.text) for d in docs)
    done = 0
    for i, d in enumerate(docs):
        h = content_hash(d.text)
        owner = int.from_bytes(h[:8], "little") % size
        outgoing[owner].append((h, i, preference_key(d, config.preference), d.id))
        done += len(d.text)
        if i % 1024 == 1023:
            prog.update("exact: hash", done, total)
    prog.update("exact: hash", total, total)
    t1 = time.perf_counter()

    incoming = comm.alltoall(outgoing)
    groups: dict[bytes, list] = {}
    for src, items in enumerate(incoming):
        for h, i, key, ident in items:
            groups.setdefault(h, []).append((key, ident, src, i))
    decisions: list[list] = [[] for _ in range(size)]
    n_groups = 0
    for members in groups.values():
        if len(members) < 2:
            continue
        n_groups += 1
        members.sort(key=lambda m: m[0])
        survivor = members[0][1]
        for _key, _ident, src, i in members[1:]:
            decisions[src].append((i, survivor))
    mine = comm.alltoall(decisions)
    t2 = time.perf_counter()

    dropped_at = {}
    for items in mine:
        for i, survivor in items:
            dropped_at[i] = survivor
    kept_ids = [d.id for i, d in enumerate(docs) if i not in dropped_at]
    dropped = {docs[i].id: {"duplicate_of": s, "neighbour": s, "jaccard": 1.0}
               for i, s in sorted(dropped_at.items())}
    counts = [int(c) for c in comm.allreduce(np.array([len(docs), len(dropped), n_groups],
                                                       dtype=np.int64))]
    prog.close()
    stats = {"docs": counts[0], "dropped": counts[1], "kept": counts[0] - counts[1],
             "duplicate_groups": counts[2], "ranks": size}
    return DedupResult("exact", kept_ids, dropped, stats,
                       {"hash": t1 - t0, "decide": t2 - t1, "total": time.perf_counter() - t0})
