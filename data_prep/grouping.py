"""Repository-level documents: the files of one repository and one language, in seeded random
order, each introduced by a marker with its path (the recipe groups by language, then repo)."""
from __future__ import annotations

import hashlib
import random
from collections import defaultdict
from dataclasses import dataclass
from typing import Iterable, Iterator

from .records import Record
from .tokenizer import FILE_SEP, REPO_NAME


@dataclass(slots=True)
class Document:
    lang: str
    repo: str
    part: int               # a repository larger than max_chars is split at file boundaries
    text: str
    file_ids: list[str]


def _file_order(repo_files: list[Record], lang: str, repo: str, seed: int) -> list[Record]:
    # Seeded by (seed, lang, repo) so the order does not depend on how the input was sharded.
    key = hashlib.blake2b(f"{seed}\0{lang}\0{repo}".encode(), digest_size=8).digest()
    files = sorted(repo_files, key=lambda r: (r.path, r.id))
    random.Random(int.from_bytes(key, "little")).shuffle(files)
    return files


def render_file(rec: Record) -> str:
    body = rec.content if rec.content.endswith("\n") else rec.content + "\n"
    return f"{FILE_SEP}{rec.path}\n{body}"


def repository_documents(records: Iterable[Record], *, seed: int = 0,
                         max_chars: int = 1 << 20) -> Iterator[Document]:
    """Groups records by (lang, repo); yields documents sorted by (lang, repo, part)."""
    groups: dict[tuple[str, str], list[Record]] = defaultdict(list)
    for rec in records:
        groups[(rec.lang, rec.repo)].append(rec)
    for (lang, repo) in sorted(groups):
        header = f"{REPO_NAME}{repo}\n"
        part, chunks, ids, size = 0, [header], [], len(header)
        for rec in _file_order(groups[(lang, repo)], lang, repo, seed):
            text = render_file(rec)
            if ids and size + len(text) > max_chars:
                yield Document(lang, repo, part, "".join(chunks), ids)
                part, chunks, ids, size = part + 1, [header], [], len(header)
            chunks.append(text)
            ids.append(rec.id)
            size += len(text)
        if ids:
            yield Document(lang, repo, part, "".join(chunks), ids)
