"""JSON Lines shards (`.jsonl`, or gzip-compressed `.jsonl.gz`): one object per line, one file each.

Files are read in sorted order, line by line (memory stays at one line). Field names default to
content, lang, ext, repo, path, stars, licenses, id and can be remapped with `fields=`:

    JsonlSource(["dump/*.jsonl.gz"], fields={"content": "text", "path": "file_path"})

Only the content field is needed; the rest fall back as in `ParquetSource` (language from `ext`
or `path`; id "<file name>:<line>"). A file that does not exist, is not gzip when named `.gz`, or
ends mid-stream raises `SourceError`. Bad lines are counted in `dropped`: "broken_json",
"invalid_utf8", "missing_content" (not an object, or no text content), "empty", "too_large",
"unknown_language", "other_language"; the first few are remembered, with file and line number,
in `problems`. Blank lines are not records and are skipped.
"""
from __future__ import annotations

import gzip
import json
import zlib
from collections import Counter
from pathlib import Path
from typing import Iterator

from ..records import Record
from .errors import (MAPPING_KEYS, Problem, SourceError, check_languages, check_mapping,
                     resolve_inputs)
from .parquet import MAX_PROBLEMS, as_licenses, as_stars, content_too_large, language_from, size_limit

JSONL_FIELDS = {k: k for k in MAPPING_KEYS}


class JsonlSource:
    """Yields one Record per JSON object line of `.jsonl` / `.jsonl.gz` files."""

    def __init__(self, paths_or_globs, *, fields: dict | None = None, languages=None,
                 max_file_bytes: int = 1 << 20, max_notebook_bytes: int | None = None):
        self.fields = check_mapping(fields, JSONL_FIELDS, "fields")
        self.files = resolve_inputs(paths_or_globs, (".jsonl", ".jsonl.gz", ".json.gz", ".ndjson"),
                                    "JSONL")
        self.languages = check_languages(languages)
        self.max_file_bytes, self.max_notebook_bytes = max_file_bytes, max_notebook_bytes
        self.dropped: Counter = Counter()
        self.read = 0
        self.yielded = 0
        self.problems: list[Problem] = []

    def _drop(self, reason: str, path: Path, line: int, detail: str = "") -> None:
        self.dropped[reason] += 1
        if len(self.problems) < MAX_PROBLEMS and reason != "other_language":
            self.problems.append(Problem(str(path), line, reason, detail[:200]))

    @staticmethod
    def _lines(path: Path) -> Iterator[tuple[int, bytes]]:
        lineno = 0
        try:
            with open(path, "rb") as raw, \
                    (gzip.open(raw, "rb") if path.name.endswith(".gz") else raw) as f:
                for lineno, line in enumerate(f, 1):
                    yield lineno, line
        except (gzip.BadGzipFile, EOFError, zlib.error) as e:
            raise SourceError(
                f"{path}: the gzip stream is broken after line {lineno} ({e}); the file is "
                "probably truncated or corrupt: re-download it or remove it from the input list"
            ) from e
        except FileNotFoundError as e:
            raise SourceError(f"JSONL input {path} does not exist (any more); fix the path or "
                              "remove it from the input list") from e

    def __iter__(self) -> Iterator[Record]:
        f = self.fields
        for path in self.files:
            name = path.name
            for lineno, raw in self._lines(path):
                if not raw.strip():
                    continue
                self.read += 1
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    self._drop("invalid_utf8", path, lineno, str(e))
                    continue
                try:
                    obj = json.loads(line)
                except ValueError as e:
                    self._drop("broken_json", path, lineno, str(e))
                    continue
                if not isinstance(obj, dict) or not isinstance(obj.get(f["content"]), str):
                    self._drop("missing_content", path, lineno,
                               f"no text field '{f['content']}'" if isinstance(obj, dict)
                               else f"a JSON {type(obj).__name__}, not an object")
                    continue
                get = lambda key: obj.get(f[key]) if f[key] is not None else None  # noqa: E731
                text = obj[f["content"]]
                lang = language_from(get("lang"), get("ext"), get("path"))
                if lang is None:
                    self._drop("unknown_language", path, lineno, str(get("lang")))
                    continue
                if self.languages and lang not in self.languages:
                    self._drop("other_language", path, lineno)
                    continue
                if not text.strip():
                    self._drop("empty", path, lineno)
                    continue
                if content_too_large(text, size_limit(lang, self.max_file_bytes, self.max_notebook_bytes)):
                    self._drop("too_large", path, lineno)
                    continue
                try:
                    text.encode("utf-8")
                except UnicodeEncodeError as e:   # lone surrogates from "\ud800" escapes
                    self._drop("invalid_utf8", path, lineno, str(e))
                    continue
                rid = get("id")
                rid = str(rid) if rid not in (None, "") else f"{name}:{lineno}"
                self.yielded += 1
                yield Record(id=rid, content=text, lang=lang, repo=str(get("repo") or "unknown"),
                             path=str(get("path") or rid), stars=as_stars(get("stars")),
                             licenses=as_licenses(get("licenses")), source=str(path),
                             meta={"line": lineno})
