"""Parquet shards in the layout of The Stack v1 (one row per source file), read with bounded memory.

Files are read in sorted order, row groups in order and `batch_size` rows at a time
(`pyarrow.parquet.ParquetFile.iter_batches`), so memory stays at about one batch whatever the
shard size. Column names default to The Stack v1's and can be remapped with `columns=`:

    ParquetSource(["shards/*.parquet"], columns={"content": "text", "lang": None})

Only `content` is required. Missing optional columns fall back to defaults: language from the
extension column or the path, stars 0, licences (), repo "unknown", path = the record id. The id is
`hexsha` when present, else "<shard file name>:<row>".

A file that is not parquet, is truncated or lacks the content column raises `SourceError` (checked
for every file before the first record is yielded); single bad rows are counted in `dropped`:
"empty", "too_large", "invalid_utf8", "unknown_language", "other_language" (outside `languages`).
`read == yielded + sum(dropped.values())` always holds.
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Iterator

from ..records import LANGUAGES, Record, language_of
from .errors import Problem, SourceError, check_languages, check_mapping, resolve_inputs

STACK_V1_COLUMNS = {
    "content": "content", "lang": "lang", "ext": "ext", "repo": "max_stars_repo_name",
    "path": "max_stars_repo_path", "stars": "max_stars_count",
    "licenses": "max_stars_repo_licenses", "id": "hexsha",
}

# Language names as The Stack (v1/v2), GitHub linguist and common exports spell them -> ours.
LANGUAGE_ALIASES = {
    "c++": "cpp", "cplusplus": "cpp", "cuda": "cpp", "c#": "csharp", "c-sharp": "csharp",
    "cs": "csharp", "jupyter notebook": "jupyter", "jupyter-notebook": "jupyter",
    "ipython notebook": "jupyter", "ipynb": "jupyter", "js": "javascript", "node": "javascript",
    "ts": "typescript", "tsx": "typescript", "py": "python", "python3": "python",
    "golang": "go", "rs": "rust", "rb": "ruby", "kt": "kotlin", "sh": "shell", "bash": "shell",
    "zsh": "shell", "shell script": "shell", "shellscript": "shell", "objective-c++": None,
}
_OUR_LANGUAGES = set(LANGUAGES)
MAX_PROBLEMS = 20


def normalise_language(value) -> str | None:
    """'Python' -> 'python', 'C++' -> 'cpp', 'Jupyter Notebook' -> 'jupyter', ...; None when the
    value names no language of ours."""
    if not isinstance(value, str):
        return None
    name = value.strip().lower()
    if name in _OUR_LANGUAGES:
        return name
    return LANGUAGE_ALIASES.get(name)


def language_from(lang, ext, path) -> str | None:
    """The source's language column first, then the extension column, then the path."""
    found = normalise_language(lang)
    if found is None and isinstance(ext, str) and ext:
        found = language_of("x." + ext.lstrip("."))
    if found is None and isinstance(path, str) and path:
        found = language_of(path)
    return found


def size_limit(lang: str, max_file_bytes: int, max_notebook_bytes: int | None) -> int:
    """The largest content read for a file of `lang`: notebooks that become scripts are read up to
    `max_notebook_bytes` (their JSON carries outputs and images), max_file_bytes applies to the script."""
    return max_notebook_bytes if lang == "jupyter" and max_notebook_bytes else max_file_bytes


def content_too_large(text: str, max_bytes: int) -> bool:
    n = len(text)
    if n > max_bytes:                 # every character is at least one byte
        return True
    if 4 * n <= max_bytes:            # ... and at most four
        return False
    return len(text.encode("utf-8", "surrogatepass")) > max_bytes


def as_licenses(value) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,) if value else ()
    return tuple(str(v) for v in value if v is not None)


def as_stars(value) -> int:
    try:
        return max(int(value), 0) if value is not None else 0
    except (TypeError, ValueError):
        return 0


class ParquetSource:
    """Yields one Record per row of parquet shards (The Stack v1 layout by default)."""

    def __init__(self, paths_or_globs, *, columns: dict | None = None, languages=None,
                 max_file_bytes: int = 1 << 20, max_notebook_bytes: int | None = None,
                 batch_size: int = 512):
        self.columns = check_mapping(columns, STACK_V1_COLUMNS, "columns")
        self.files = resolve_inputs(paths_or_globs, (".parquet", ".parq"), "parquet")
        self.languages = check_languages(languages)
        self.max_file_bytes, self.max_notebook_bytes = max_file_bytes, max_notebook_bytes
        self.batch_size = batch_size
        self.dropped: Counter = Counter()
        self.read = 0
        self.yielded = 0
        self.problems: list[Problem] = []
        self._present: dict[Path, dict[str, str]] | None = None

    # ------------------------------------------------------------------ opening and checking
    def _open(self, path: Path):
        import pyarrow as pa
        import pyarrow.parquet as pq
        try:
            return pq.ParquetFile(path)
        except (pa.ArrowException, OSError, ValueError) as e:
            raise SourceError(
                f"{path} is not a readable parquet file ({type(e).__name__}: {e}); it is probably "
                "truncated or corrupt: re-download the shard or remove it from the input list"
            ) from e

    def _check(self, path: Path, pf) -> dict[str, str]:
        """{key: column} for the mapped columns this file has; SourceError without content."""
        import pyarrow as pa
        schema = pf.schema_arrow
        names = schema.names
        content = self.columns["content"]
        if content not in names:
            raise SourceError(
                f"{path} has no column '{content}' for the file contents; its columns are "
                f"{names}. Map the contents column with the columns option, e.g. "
                f"columns={{'content': '<name>'}}")
        ctype = schema.field(content).type
        if not (pa.types.is_string(ctype) or pa.types.is_large_string(ctype)
                or pa.types.is_binary(ctype) or pa.types.is_large_binary(ctype)):
            raise SourceError(f"{path}: column '{content}' has type {ctype}, not text; map the "
                              "contents column with the columns option")
        return {k: c for k, c in self.columns.items() if c is not None and c in names}

    def validate(self) -> None:
        """Opens every file's footer: fails before the first record, not after hours of work."""
        if self._present is None:
            present = {}
            for path in self.files:
                present[path] = self._check(path, self._open(path))
            self._present = present

    # ------------------------------------------------------------------ reading
    def _drop(self, reason: str, path: Path, row: int, detail: str = "") -> None:
        self.dropped[reason] += 1
        if len(self.problems) < MAX_PROBLEMS and reason not in ("other_language",):
            self.problems.append(Problem(str(path), row, reason, detail))

    def _batches(self, path: Path, present: dict[str, str]):
        import pyarrow as pa
        pf = self._open(path)
        names = list(dict.fromkeys(present.values()))
        row = 0
        try:
            for batch in pf.iter_batches(batch_size=self.batch_size, columns=names):
                cols = {}
                for key, col in present.items():
                    arr = batch.column(batch.schema.get_field_index(col))
                    if key == "content" and (pa.types.is_string(arr.type)
                                             or pa.types.is_large_string(arr.type)):
                        # Decode ourselves, so invalid UTF-8 is a counted drop, not a crash.
                        arr = arr.cast(pa.large_binary() if pa.types.is_large_string(arr.type)
                                       else pa.binary())
                    cols[key] = arr.to_pylist()
                yield row, batch.num_rows, cols
                row += batch.num_rows
        except (pa.ArrowException, OSError) as e:
            raise SourceError(
                f"{path}: reading failed near row {row} ({type(e).__name__}: {e}); the shard is "
                "probably truncated or corrupt: re-download it or remove it from the input list"
            ) from e

    def __iter__(self) -> Iterator[Record]:
        self.validate()
        for path in self.files:
            present = self._present[path]
            shard = path.name
            for start, n, cols in self._batches(path, present):
                content_col = cols["content"]
                get = lambda key, i: cols[key][i] if key in cols else None  # noqa: E731
                for i in range(n):
                    row = start + i
                    self.read += 1
                    lang = language_from(get("lang", i), get("ext", i), get("path", i))
                    if lang is None:
                        self._drop("unknown_language", path, row, str(get("lang", i)))
                        continue
                    if self.languages and lang not in self.languages:
                        self._drop("other_language", path, row)
                        continue
                    data = content_col[i]
                    if data is None or not data.strip():
                        self._drop("empty", path, row)
                        continue
                    if len(data) > size_limit(lang, self.max_file_bytes, self.max_notebook_bytes):
                        self._drop("too_large", path, row, f"{len(data)} bytes")
                        continue
                    try:
                        text = data.decode("utf-8")
                    except UnicodeDecodeError as e:
                        self._drop("invalid_utf8", path, row, str(e))
                        continue
                    rid = get("id", i)
                    rid = str(rid) if rid not in (None, "") else f"{shard}:{row}"
                    repo = get("repo", i) or "unknown"
                    rpath = get("path", i) or rid
                    self.yielded += 1
                    yield Record(id=rid, content=text, lang=lang, repo=str(repo), path=str(rpath),
                                 stars=as_stars(get("stars", i)),
                                 licenses=as_licenses(get("licenses", i)),
                                 source=str(path), meta={"row": row})
