"""Near deduplication: MinHash LSH candidates, verified by true Jaccard similarity, clustered by
connected components over the verified edges, one survivor per cluster.

With an mpi4py communicator each rank passes its own shard:

1. each rank shingles and signs its own files (global document number = rank offset + index);
2. band keys go to the rank owning the bucket (key mod size, one Alltoallv); bucket owners list the
   pairs sharing a bucket and send each pair to the rank holding its lower-numbered document;
3. that rank fetches, from their holders, the shingle sets (or, without verification, the
   signatures), preference keys and ids of the other documents it needs, and verifies its pairs;
4. the verified edges, with the preference keys and ids of their endpoints, are gathered on rank 0,
   which builds the clusters and picks survivors; each rank gets back the decisions for its files.

Every decision depends only on the documents' contents, ids and preference fields, never on the
number of ranks or on which rank holds which file: 1 rank and N ranks give identical results.
Memory: rank 0 holds every verified edge (about 24 bytes each) and the ids of their endpoints;
run exact_dedup first, as candidate pairs grow with the square of a bucket's size.
"""
from __future__ import annotations

import hashlib
import time
from bisect import bisect_right
from dataclasses import dataclass, fields
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from .common import (DedupResult, Doc, Progress, as_comm, as_docs, check_preference,
                     check_unique_ids, exchange_arrays, owner_of, preference_key, split_by)
from .lsh import band_keys, candidate_pairs, decide_clusters, unique_pairs
from .minhash import U64, estimate_jaccard, jaccard, minhash, permutations, shingle_batch


@dataclass
class NearDedupConfig:
    ngram: int = 5              # tokens per shingle
    num_perm: int = 256         # MinHash permutations
    bands: int = 25             # LSH bands ...
    rows: int = 10              # ... of this many signature values (bands * rows <= num_perm)
    seed: int = 42              # seeds the permutations
    threshold: float = 0.7      # Jaccard similarity a candidate pair needs to be an edge
    verify: bool = True         # False: every candidate pair is an edge (MinHash estimate reported)
    preference: Sequence[str] = ("license", "stars", "id")   # survivor order, see preference_key
    batch_bytes: int = 1 << 20  # text hashed per vectorised batch
    cache_shingles: bool = True  # keep shingle hashes (8 bytes a token) for verification; False:
                                 # recompute them for the candidate files only
    bucket_window: int = 64     # a file is paired with at most this many others per LSH bucket
                                # (all pairs in buckets of up to bucket_window + 1 files)

    def __post_init__(self):
        for name in ("ngram", "num_perm", "bands", "rows", "seed", "batch_bytes", "bucket_window"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
                raise ValueError(f"near dedup option {name!r} must be an integer, got {v!r}")
            setattr(self, name, int(v))
        for name in ("ngram", "num_perm", "bands", "rows", "batch_bytes", "bucket_window"):
            if getattr(self, name) < 1:
                raise ValueError(f"near dedup option {name!r} must be >= 1, "
                                 f"got {getattr(self, name)}")
        if self.bands * self.rows > self.num_perm:
            raise ValueError(f"bands * rows = {self.bands * self.rows} exceeds num_perm = "
                             f"{self.num_perm}")
        if isinstance(self.threshold, bool) or not isinstance(self.threshold, (int, float)):
            raise ValueError(f"near dedup option 'threshold' must be a number, "
                             f"got {self.threshold!r}")
        self.threshold = float(self.threshold)
        if not 0.0 < self.threshold <= 1.0:
            raise ValueError(f"near dedup option 'threshold' must be in (0, 1], "
                             f"got {self.threshold}")
        for name in ("verify", "cache_shingles"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"near dedup option {name!r} must be true or false, "
                                 f"got {getattr(self, name)!r}")
        self.preference = check_preference(self.preference)

    @classmethod
    def from_dict(cls, d: dict | None) -> "NearDedupConfig":
        d = dict(d or {})
        known = [f.name for f in fields(cls)]
        for key in d:
            if key not in known:
                raise ValueError(f"unknown near dedup option {key!r}; known: {', '.join(known)}")
        return cls(**d)


def _id_hash(ident: str) -> int:
    return int.from_bytes(hashlib.blake2b(ident.encode("utf-8", "surrogatepass"),
                                          digest_size=8).digest(), "little")


def _batches(docs: Sequence[Doc], idx: Sequence[int], batch_bytes: int):
    """Consecutive runs of idx whose texts add up to about batch_bytes characters."""
    run, size = [], 0
    for i in idx:
        run.append(i)
        size += len(docs[i].text) + 1
        if size >= batch_bytes:
            yield run
            run, size = [], 0
    if run:
        yield run


def _unique_per_file(flat: np.ndarray, counts: np.ndarray) -> list[np.ndarray]:
    """Each file's sorted distinct shingles, from shingle_batch's output."""
    owner = np.repeat(np.arange(len(counts)), counts)
    order = np.lexsort((flat, owner))
    flat, owner = flat[order], owner[order]
    keep = np.ones(len(flat), dtype=bool)
    keep[1:] = (flat[1:] != flat[:-1]) | (owner[1:] != owner[:-1])
    flat, owner = flat[keep], owner[keep]
    bounds = np.searchsorted(owner, np.arange(len(counts) + 1))
    return [flat[bounds[k]: bounds[k + 1]] for k in range(len(counts))]


class _Shingles:
    """Shingle hashes kept from the MinHash pass (or recomputed), per file on demand."""

    def __init__(self, docs: Sequence[Doc], cfg: "NearDedupConfig"):
        self.docs, self.cfg = docs, cfg
        self.batches: list[tuple[int, np.ndarray, np.ndarray]] = []   # first file, flat, offsets

    def keep(self, first: int, flat: np.ndarray, counts: np.ndarray) -> None:
        self.batches.append((first, flat, np.concatenate([[0], np.cumsum(counts)])))

    def sets(self, idx: Sequence[int]) -> dict[int, np.ndarray]:
        """{local index: sorted distinct shingle hashes} for the files idx (ascending)."""
        out: dict[int, np.ndarray] = {}
        if self.batches:
            firsts = [b[0] for b in self.batches]
            for i in idx:
                first, flat, offs = self.batches[bisect_right(firsts, i) - 1]
                out[i] = np.unique(flat[offs[i - first]: offs[i - first + 1]])
            return out
        for run in _batches(self.docs, idx, self.cfg.batch_bytes):
            flat, counts = shingle_batch([self.docs[i].text for i in run], self.cfg.ngram)
            out.update(zip(run, _unique_per_file(flat, counts)))
        return out


def _minhash_pass(docs: Sequence[Doc], cfg: "NearDedupConfig", progress: Progress | None,
                  cache: _Shingles | None) -> tuple[np.ndarray, np.ndarray]:
    a, b = permutations(cfg.num_perm, cfg.seed)
    sig = np.empty((len(docs), cfg.num_perm), dtype=np.uint32)
    has = np.zeros(len(docs), dtype=bool)
    total = sum(len(d.text) for d in docs)
    done = 0
    for run in _batches(docs, range(len(docs)), cfg.batch_bytes):
        texts = [docs[i].text for i in run]
        flat, counts = shingle_batch(texts, cfg.ngram)
        sig[run[0]: run[-1] + 1] = minhash(flat, counts, a, b)
        has[run[0]: run[-1] + 1] = counts > 0
        if cache is not None:
            cache.keep(run[0], flat, counts)
        done += sum(map(len, texts))
        if progress is not None:
            progress.update("near: minhash", done, total)
    return sig, has


def signatures(docs: Iterable, config: NearDedupConfig | dict | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
    """MinHash signatures [files x num_perm] uint32 and a mask of the files that have tokens."""
    cfg = config if isinstance(config, NearDedupConfig) else NearDedupConfig.from_dict(config)
    return _minhash_pass(as_docs(docs), cfg, None, None)


def near_dedup(docs: Iterable, config: NearDedupConfig | dict | None = None, comm=None, *,
               progress: bool | Callable[[str, int, int], Any] = False) -> DedupResult:
    """Drops near-duplicate files, keeping one preferred file per cluster.

    docs: Records, (id, text[, stars[, licenses[, path]]]) tuples or mappings. With an mpi4py
    communicator each rank passes only its own shard and gets the decisions for it; the result
    is the same whatever the number of ranks and the split. Files without any token are kept
    and never match. See DedupResult for the output."""
    cfg = config if isinstance(config, NearDedupConfig) else NearDedupConfig.from_dict(config)
    comm = as_comm(comm)
    rank, size = comm.Get_rank(), comm.Get_size()
    docs = as_docs(docs)
    if size == 1:
        check_unique_ids(docs)
    prog = Progress(progress, rank)
    timings: dict[str, float] = {}
    t = time.perf_counter()
    t_start = t

    def lap(name: str) -> None:
        nonlocal t
        now = time.perf_counter()
        timings[name] = now - t
        t = now

    n = len(docs)
    counts = np.array(comm.allgather(n), dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
    n_total, base = int(counts.sum()), int(offsets[rank])

    # 1. signatures of this rank's files
    shingles = _Shingles(docs, cfg)
    sig, has = _minhash_pass(docs, cfg, prog,
                             shingles if cfg.verify and cfg.cache_shingles else None)
    valid = np.flatnonzero(has)
    lap("minhash")

    # 2. band keys -> bucket owners -> candidate pairs -> holder of the pair's lower document
    keys = band_keys(sig[valid], cfg.bands, cfg.rows).reshape(-1)
    refs = np.repeat(valid.astype(np.int64) + base, cfg.bands)
    id_order = np.repeat(np.array([_id_hash(docs[i].id) for i in valid.tolist()], dtype=U64),
                         cfg.bands)
    if cfg.verify:
        del sig
        sig = None
    rows = np.stack([keys, refs.astype(U64), id_order], axis=1)
    del keys, refs, id_order
    (parts,) = split_by((rows[:, 0] % U64(size)).astype(np.int64), size, rows)
    got = np.concatenate(exchange_arrays(comm, parts))
    del rows, parts
    lo, hi, biggest = candidate_pairs(got[:, 0], got[:, 1].astype(np.int64), got[:, 2], n_total,
                                      window=cfg.bucket_window)
    del got
    pairs = np.stack([lo, hi], axis=1)
    (parts,) = split_by(owner_of(lo, offsets), size, pairs)
    got = np.concatenate(exchange_arrays(comm, parts))
    lo, hi = unique_pairs(got[:, 0], got[:, 1], n_total)
    del got, parts, pairs
    lap("candidates")

    # 3. what the pairs need: local files, and remote files fetched from their holders
    hi_owner = owner_of(hi, offsets)
    remote = np.unique(hi[hi_owner != rank])
    (ask,) = split_by(owner_of(remote, offsets), size, remote)
    asked = exchange_arrays(comm, ask)              # asked[s]: my files that rank s needs
    local_needed = np.unique(np.concatenate(
        [lo - base, hi[hi_owner == rank] - base] + [a - base for a in asked])).tolist()
    meta_local = {base + i: (preference_key(docs[i], cfg.preference), docs[i].id)
                  for i in local_needed}
    meta_in = comm.alltoall([[meta_local[int(r)] for r in a] for a in asked])
    meta = dict(meta_local)
    for refs_from, metas in zip(ask, meta_in):
        meta.update(zip(refs_from.tolist(), metas))
    if cfg.verify:
        sets = {base + i: s for i, s in shingles.sets(local_needed).items()}
        del shingles
        lens = [np.array([len(sets[int(r)]) for r in a], dtype=np.int64) for a in asked]
        flat = [np.concatenate([sets[int(r)] for r in a]) if len(a) else np.empty(0, U64)
                for a in asked]
        lens_in = exchange_arrays(comm, lens)
        flat_in = exchange_arrays(comm, flat)
        for refs_from, ln, fl in zip(ask, lens_in, flat_in):
            ends = np.cumsum(ln)
            for r, e, l in zip(refs_from.tolist(), ends.tolist(), ln.tolist()):
                sets[r] = fl[e - l: e]
        data = sets
    else:
        rows_out = [sig[np.asarray(a - base, dtype=np.int64)] for a in asked]
        rows_in = exchange_arrays(comm, rows_out)
        data = {base + i: sig[i] for i in local_needed}
        for refs_from, rws in zip(ask, rows_in):
            data.update(zip(refs_from.tolist(), rws))
    lap("exchange")

    # 4. verification
    sim = np.empty(len(lo), dtype=np.float64)
    measure = jaccard if cfg.verify else estimate_jaccard
    lo_l, hi_l = lo.tolist(), hi.tolist()
    for k in range(len(lo_l)):
        sim[k] = measure(data[lo_l[k]], data[hi_l[k]])
        if k % 4096 == 4095:
            prog.update("near: verify", k + 1, len(lo_l))
    edge = sim >= cfg.threshold if cfg.verify else np.ones(len(lo), dtype=bool)
    e_lo, e_hi, e_sim = lo[edge], hi[edge], sim[edge]
    e_meta = {r: meta[r] for r in np.unique(np.concatenate([e_lo, e_hi])).tolist()}
    del data
    lap("verify")

    # 5. clusters on rank 0, decisions back to the holders
    gathered = comm.gather((e_lo, e_hi, e_sim, e_meta, len(lo), biggest, len(valid), n), root=0)
    if rank == 0:
        all_meta: dict = {}
        for g in gathered:
            all_meta.update(g[3])
        g_lo = np.concatenate([g[0] for g in gathered])
        g_hi = np.concatenate([g[1] for g in gathered])
        g_sim = np.concatenate([g[2] for g in gathered])
        decided, n_clusters = decide_clusters(g_lo, g_hi, g_sim, all_meta)
        per_rank: list[list] = [[] for _ in range(size)]
        refs_dropped = sorted(decided)
        holders = owner_of(np.array(refs_dropped, dtype=np.int64), offsets).tolist()
        for ref, holder in zip(refs_dropped, holders):
            s, nb, sm = decided[ref]
            per_rank[holder].append((ref, all_meta[s][1], all_meta[nb][1], float(sm)))
        n_docs = sum(g[7] for g in gathered)
        stats = {"docs": n_docs, "kept": n_docs - len(decided), "dropped": len(decided),
                 "no_tokens": n_docs - sum(g[6] for g in gathered),
                 "candidate_pairs": sum(g[4] for g in gathered), "edges": len(g_lo),
                 "clusters": n_clusters, "largest_bucket": max(g[5] for g in gathered),
                 "ranks": size}
    else:
        per_rank, stats = None, None
    mine = comm.scatter(per_rank, root=0)
    stats = comm.bcast(stats, root=0)
    lap("cluster")

    dropped_at = {ref - base: (s, nb, sm) for ref, s, nb, sm in mine}
    kept_ids = [d.id for i, d in enumerate(docs) if i not in dropped_at]
    dropped = {docs[i].id: {"duplicate_of": s, "neighbour": nb, "jaccard": sm}
               for i, (s, nb, sm) in sorted(dropped_at.items())}
    prog.close()
    timings["total"] = time.perf_counter() - t_start
    return DedupResult("near", kept_ids, dropped, stats, timings)
