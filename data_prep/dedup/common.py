"""What exact and near deduplication share: the input documents, the survivor preference, the
result, progress reporting and the MPI exchanges (with a stand-in communicator for one process)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from ..comm import SingleProcess

from ..records import Record

# --------------------------------------------------------------------------- documents


@dataclass(slots=True)
class Doc:
    """One input file as deduplication sees it."""
    id: str
    text: str
    stars: int = 0
    licenses: tuple[str, ...] = ()
    path: str = ""


def _licenses(value) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,) if value else ()
    return tuple(str(v) for v in value)


def as_doc(item) -> Doc:
    """A Record, a Doc, a tuple (id, text[, stars[, licenses[, path]]]) or a mapping with keys
    id, content (or text), stars, licenses, path."""
    if isinstance(item, Doc):
        return item
    if isinstance(item, Record):
        return Doc(str(item.id), item.content, int(item.stars or 0), _licenses(item.licenses),
                   item.path)
    if isinstance(item, dict):
        if "id" not in item:
            raise ValueError("a document mapping needs an 'id'")
        text = item.get("content", item.get("text"))
        if text is None:
            raise ValueError(f"document {item['id']!r} has neither 'content' nor 'text'")
        return Doc(str(item["id"]), text, int(item.get("stars") or 0),
                   _licenses(item.get("licenses")), item.get("path") or "")
    if isinstance(item, (tuple, list)):
        if not 2 <= len(item) <= 5:
            raise ValueError("a document tuple is (id, text[, stars[, licenses[, path]]]), "
                             f"got {len(item)} fields")
        ident, text, *rest = item
        stars = int(rest[0] or 0) if len(rest) > 0 else 0
        lic = _licenses(rest[1]) if len(rest) > 1 else ()
        path = (rest[2] or "") if len(rest) > 2 else ""
        return Doc(str(ident), text, stars, lic, path)
    raise TypeError(f"cannot read a document from {type(item).__name__}")


def as_docs(items: Iterable) -> list[Doc]:
    docs = [as_doc(x) for x in items]
    for d in docs:
        if not isinstance(d.text, str):
            raise TypeError(f"document {d.id!r}: text must be str, got {type(d.text).__name__}")
    return docs


def check_unique_ids(docs: Sequence[Doc]) -> None:
    seen: set[str] = set()
    for d in docs:
        if d.id in seen:
            raise ValueError(f"duplicate document id {d.id!r}: ids must be unique")
        seen.add(d.id)


# --------------------------------------------------------------------------- preference

# Licence classes, best first. SPDX ids are compared lower-cased, without "-only"/"-or-later"/"+".
PERMISSIVE = frozenset("""
mit mit-0 mit-cmu mit-modern-variant x11 apache-2.0 apache-1.1 apache-1.0 isc 0bsd unlicense cc0-1.0
zlib zlib-acknowledgement bsl-1.0 python-2.0 psf-2.0 cnri-python wtfpl upl-1.0 ncsa postgresql
ms-pl afl-3.0 afl-2.1 ecl-2.0 artistic-2.0 unicode-dfs-2016 curl libpng cc-by-4.0 cc-by-3.0 hpnd
""".split())
WEAK_COPYLEFT = ("lgpl", "mpl", "epl", "cddl", "ms-rl", "eupl", "osl", "cecill-c", "cc-by-sa")
STRONG_COPYLEFT = ("gpl", "agpl", "sspl", "cecill", "rpl")
UNKNOWN = frozenset({"", "unknown", "noassertion", "none", "other", "unlicensed", "proprietary"})

LICENSE_RANKS = {"permissive": 0, "weak-copyleft": 1, "copyleft": 2, "other": 3, "unknown": 4}


def _license_class(spdx: str) -> str:
    s = spdx.strip().lower()
    for suffix in ("-only", "-or-later", "+"):
        if s.endswith(suffix):
            s = s[: -len(suffix)]
    if s in UNKNOWN:
        return "unknown"
    if s in PERMISSIVE or s.startswith("bsd") or s.startswith("mit"):
        return "permissive"
    if s.startswith(WEAK_COPYLEFT):
        return "weak-copyleft"
    if s.startswith(STRONG_COPYLEFT):
        return "copyleft"
    return "other"


def license_rank(licenses: Sequence[str]) -> int:
    """0 for a permissive licence (MIT, Apache-2.0, BSD*, ...), 1 weak copyleft (LGPL, MPL, EPL),
    2 copyleft (GPL, AGPL), 3 any other licence, 4 none or unknown. A file under several licences
    takes the best of them (the user may choose any)."""
    if not licenses:
        return LICENSE_RANKS["unknown"]
    return min(LICENSE_RANKS[_license_class(x)] for x in licenses)


PREFERENCES = ("license", "stars", "path", "id")


def check_preference(preference: Sequence[str]) -> tuple[str, ...]:
    if isinstance(preference, str):
        raise ValueError(f"preference must be a list of keys, got the string {preference!r}")
    pref = tuple(preference)
    for key in pref:
        if key not in PREFERENCES:
            raise ValueError(f"unknown preference key {key!r}; "
                             f"choose from {', '.join(PREFERENCES)}")
    if len(set(pref)) != len(pref):
        raise ValueError(f"preference lists a key twice: {list(pref)}")
    return pref


def preference_key(doc: Doc, preference: Sequence[str]) -> tuple:
    """Sort key of a document, smallest = best survivor. "license": most permissive first;
    "stars": most stars first; "path": shortest path first, then lexicographic; "id": smallest id.
    The id always ends the key, so that the choice never depends on input order or sharding."""
    key: list = []
    for p in preference:
        if p == "license":
            key.append(license_rank(doc.licenses))
        elif p == "stars":
            key.append(-int(doc.stars))
        elif p == "path":
            key.extend((len(doc.path), doc.path))
        elif p == "id":
            key.append(doc.id)
    if "id" not in preference:
        key.append(doc.id)
    return tuple(key)


# --------------------------------------------------------------------------- result


@dataclass
class DedupResult:
    """Decisions for the documents this process passed in (on MPI: this rank's shard).

    kept_ids: ids kept, in input order. dropped: {id: {"duplicate_of": survivor id,
    "neighbour": id of a document it was verified similar to (the survivor when directly similar),
    "jaccard": similarity to that neighbour}}. stats: counts over all ranks (identical on every
    rank). timings: seconds per stage on this rank."""
    method: str
    kept_ids: list[str]
    dropped: dict[str, dict]
    stats: dict = field(default_factory=dict)
    timings: dict = field(default_factory=dict)

    @property
    def n_docs(self) -> int:
        return len(self.kept_ids) + len(self.dropped)

    @property
    def n_kept(self) -> int:
        return len(self.kept_ids)

    @property
    def n_dropped(self) -> int:
        return len(self.dropped)

    def is_kept(self, doc_id: str) -> bool:
        return doc_id not in self.dropped

    def as_dict(self) -> dict:
        return {"method": self.method, "kept_ids": list(self.kept_ids),
                "dropped": {k: dict(v) for k, v in self.dropped.items()},
                "stats": dict(self.stats), "timings": dict(self.timings)}


# --------------------------------------------------------------------------- progress


class Progress:
    """progress=False: silent; True: tqdm bars on rank 0 only (stderr); a callable is called as
    progress(stage, done, total) on every rank."""

    def __init__(self, progress: bool | Callable[[str, int, int], Any], rank: int):
        self.callback = progress if callable(progress) else None
        self.bars = bool(progress) and self.callback is None and rank == 0
        self._bar = None
        self._stage = None

    def update(self, stage: str, done: int, total: int, unit: str = "B") -> None:
        if self.callback is not None:
            self.callback(stage, done, total)
            return
        if not self.bars:
            return
        if stage != self._stage:
            self.close()
            from snowtrain.progress import progress_bar
            self._bar = progress_bar(total, stage, unit, unit_scale=True, leave=False)
            self._stage = stage
        self._bar.update(done - self._bar.n)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        self._bar = None
        self._stage = None


# --------------------------------------------------------------------------- communication


def as_comm(comm):
    return SingleProcess() if comm is None else comm


def exchange_arrays(comm, parts: Sequence[np.ndarray]) -> list[np.ndarray]:
    """All-to-all of numpy arrays: parts[d] goes to rank d; returns the arrays received, indexed
    by source rank. Every part has the same dtype and the same shape after the first axis."""
    size = comm.Get_size()
    if len(parts) != size:
        raise ValueError(f"{len(parts)} parts for {size} ranks")
    if size == 1:
        return [np.ascontiguousarray(parts[0])]
    from mpi4py import MPI

    first = parts[0]
    tail, dtype = first.shape[1:], first.dtype
    parts = [np.ascontiguousarray(p, dtype=dtype).reshape((-1,) + tail) for p in parts]
    row_bytes = max(1, int(np.prod(tail, dtype=np.int64)) * dtype.itemsize)
    send_counts = [int(p.shape[0]) for p in parts]
    recv_counts = comm.alltoall(send_counts)
    if max(send_counts + recv_counts) >= 2**31:
        raise ValueError("an all-to-all part exceeds 2**31 rows; use more ranks or smaller batches")
    send = (np.concatenate(parts) if any(send_counts) else np.empty((0,) + tail, dtype))
    recv = np.empty((sum(recv_counts),) + tail, dtype)
    sdispl = np.concatenate([[0], np.cumsum(send_counts)[:-1]]).astype(np.int64).tolist()
    rdispl = np.concatenate([[0], np.cumsum(recv_counts)[:-1]]).astype(np.int64).tolist()
    row = MPI.BYTE.Create_contiguous(row_bytes).Commit()
    try:
        comm.Alltoallv([send.view(np.uint8).reshape(-1), send_counts, sdispl, row],
                       [recv.view(np.uint8).reshape(-1), recv_counts, rdispl, row])
    finally:
        row.Free()
    return [recv[d: d + c] for d, c in zip(rdispl, recv_counts)]


def owner_of(ref: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Rank holding each global document number, given the ranks' first numbers (offsets)."""
    return np.searchsorted(offsets, ref, side="right") - 1


def split_by(dest: np.ndarray, size: int, *arrays: np.ndarray) -> list[list[np.ndarray]]:
    """For each array, its rows grouped by destination rank: out[i][d] are arrays[i]'s rows for d.
    Keeps the original order within each destination."""
    order = np.argsort(dest, kind="stable")
    bounds = np.searchsorted(dest[order], np.arange(size + 1))
    out = []
    for a in arrays:
        s = a[order]
        out.append([s[bounds[d]: bounds[d + 1]] for d in range(size)])
    return out
