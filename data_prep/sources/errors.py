"""What the sources raise on input they cannot read, and the input checks they share.

A `SourceError` is raised for problems with a whole input (a missing file, a shard that is not
parquet or is truncated, a required column that is absent): the run cannot silently go on without
that data. Problems with single records are not errors: the sources count them in `dropped` (by
reason) and remember the first few in `problems`.
"""
from __future__ import annotations

import glob
from pathlib import Path
from typing import NamedTuple
from snowtrain.config import suggest


class SourceError(Exception):
    """An input file (or a pattern naming input files) cannot be read as the source expects."""


class MissingSourceError(SourceError, FileNotFoundError):
    """An input that does not exist (still a FileNotFoundError for callers that expect one)."""


class Problem(NamedTuple):
    """One dropped record worth showing in a manifest: where it was and why it was dropped."""
    file: str
    line: int           # 1-based line (JSONL) or 0-based row (parquet)
    reason: str         # the `dropped` key it was counted under
    detail: str = ""


# Keys every source maps to its own column / field names.
MAPPING_KEYS = ("content", "lang", "ext", "repo", "path", "stars", "licenses", "id")

_GLOB_CHARS = set("*?[")



def check_mapping(mapping, defaults: dict, option: str) -> dict:
    """Defaults overridden by `mapping`; a value of None means the input has no such column."""
    out = dict(defaults)
    for key, value in (mapping or {}).items():
        if key not in defaults:
            raise ValueError(f"unknown {option} key '{key}'{suggest(key, defaults)}; "
                             f"the keys are {sorted(defaults)}")
        if value is not None and not isinstance(value, str):
            raise ValueError(f"{option}['{key}'] must be a column name or None, got {value!r}")
        out[key] = value
    if not out.get("content"):
        raise ValueError(f"{option}['content'] must name the column holding the file contents")
    return out


def check_languages(languages) -> set[str] | None:
    """The languages to keep (our names), or None for all; ValueError for an unknown name."""
    from ..records import LANGUAGES
    for lang in languages or ():
        if lang not in LANGUAGES:
            raise ValueError(f"unknown language '{lang}'{suggest(str(lang), LANGUAGES)}; "
                             f"choose from {', '.join(LANGUAGES)}")
    return set(languages) if languages else None


def resolve_inputs(paths_or_globs, suffixes: tuple[str, ...], what: str) -> list[Path]:
    """Files named by paths, glob patterns or folders (searched recursively for `suffixes`),
    deduplicated and sorted. A path that does not exist, or a pattern or folder that matches
    nothing, is a SourceError: an input list that silently shrinks is a wrong dataset."""
    if isinstance(paths_or_globs, (str, Path)):
        paths_or_globs = [paths_or_globs]
    files: set[Path] = set()
    for item in paths_or_globs:
        text = str(item)
        if _GLOB_CHARS & set(text):
            found = [Path(p) for p in glob.glob(text, recursive=True) if Path(p).is_file()]
            if not found:
                raise SourceError(f"the pattern {text} matches no {what} files; check the path "
                                  "(patterns are expanded with glob, '**' recursively)")
            files.update(found)
            continue
        p = Path(text)
        if p.is_dir():
            found = [q for q in p.rglob("*") if q.is_file() and q.name.endswith(suffixes)]
            if not found:
                raise SourceError(f"the folder {p} holds no {what} files (*{', *'.join(suffixes)})")
            files.update(found)
        elif p.is_file():
            files.add(p)
        else:
            raise SourceError(f"{what} input {p} does not exist; fix the path or remove it from "
                              "the input list")
    return sorted(files)
