"""Repository trees on disk: each top-level folder of a root is a repository; language by extension.

The quickstart's embedded corpus is such a tree: the Python standard library and the installed
packages' sources, present on every machine that runs snowtrain.
"""
from __future__ import annotations

import hashlib
import os
import site
import sysconfig
from collections import Counter
from pathlib import Path
from typing import Iterator

from ..records import Record, language_of
from .errors import MissingSourceError, check_languages
from .parquet import size_limit

SKIP_DIRS = {"__pycache__", ".git", ".hg", ".svn", "node_modules", "site-packages", "dist-packages"}


def embedded_roots() -> list[Path]:
    """The standard library and every site-packages folder of this interpreter."""
    roots = [Path(sysconfig.get_paths()["stdlib"])]
    for p in [*site.getsitepackages(), sysconfig.get_paths()["purelib"]]:
        p = Path(p)
        if p.is_dir() and p not in roots:
            roots.append(p)
    return roots


def _keep_by_hash(key: str, fraction: float) -> bool:
    if fraction >= 1.0:
        return True
    h = int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "little")
    return h < fraction * 2**64


class TreeSource:
    """Yields one Record per source file, in a deterministic order (roots, repos, paths sorted).

    Files that are not valid UTF-8, empty, or above `max_file_bytes` are counted in `dropped`
    (by reason) rather than yielded; `sample_fraction` keeps a stable hash-chosen subset and
    `max_total_bytes` stops after that much content.
    """

    def __init__(self, roots, *, languages=None, max_file_bytes: int = 1 << 20,
                 max_notebook_bytes: int | None = None, sample_fraction: float = 1.0,
                 max_total_bytes: int | None = None):
        self.roots = [Path(r) for r in roots]
        for r in self.roots:
            if not r.is_dir():
                raise MissingSourceError(f"source folder {r} does not exist; give a folder whose "
                                         "top-level subfolders are repositories")
        self.languages = check_languages(languages)
        self.max_file_bytes, self.max_notebook_bytes = max_file_bytes, max_notebook_bytes
        self.sample_fraction = sample_fraction
        self.max_total_bytes = max_total_bytes
        self.dropped: Counter = Counter()
        self.read = 0

    def _repos(self, root: Path) -> Iterator[tuple[str, Path, bool]]:
        # Loose files at the top of a root form one repository named after the root.
        yield root.name, root, False
        for entry in sorted(os.scandir(root), key=lambda e: e.name):
            if entry.is_dir(follow_symlinks=False) and entry.name not in SKIP_DIRS \
                    and not entry.name.endswith((".dist-info", ".egg-info")):
                yield entry.name, Path(entry.path), True

    def _files(self, top: Path, recursive: bool) -> Iterator[Path]:
        if not recursive:
            yield from sorted(p for p in top.iterdir() if p.is_file() and not p.is_symlink())
            return
        for dirpath, dirnames, filenames in os.walk(top):
            dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS)
            for name in sorted(filenames):
                yield Path(dirpath) / name

    def units(self) -> list[tuple[Path, str, Path, bool]]:
        """Independent pieces of work: (root, repository name, folder, recursive)."""
        return [(root, repo, top, rec) for root in self.roots for repo, top, rec in self._repos(root)]

    def iter_unit(self, unit) -> Iterator[Record]:
        root, repo, top, recursive = unit
        for path in self._files(top, recursive):
            lang = language_of(path.name)
            if lang is None or (self.languages and lang not in self.languages):
                continue
            rel = path.relative_to(top).as_posix()
            rid = f"{root.name}/{repo}/{rel}"
            if not _keep_by_hash(rid, self.sample_fraction):
                continue
            self.read += 1
            try:
                size = path.stat().st_size
                if size > size_limit(lang, self.max_file_bytes, self.max_notebook_bytes):
                    self.dropped["too_large"] += 1
                    continue
                data = path.read_bytes()
            except OSError:
                self.dropped["unreadable"] += 1
                continue
            if not data.strip():
                self.dropped["empty"] += 1
                continue
            try:
                text = data.decode("utf-8")
            except UnicodeDecodeError:
                self.dropped["invalid_utf8"] += 1
                continue
            yield Record(id=rid, content=text, lang=lang, repo=f"{root.name}/{repo}",
                         path=rel, source=str(path))

    def __iter__(self) -> Iterator[Record]:
        total = 0
        for unit in self.units():
            for rec in self.iter_unit(unit):
                yield rec
                total += len(rec.content.encode())
                if self.max_total_bytes and total >= self.max_total_bytes:
                    return
