"""Tokenize documents into a Megatron indexed dataset, end-of-document appended.

Code repeats itself: the same identifiers, keywords and indentation come back again and again.
A sentencepiece BPE model trained by data-prep never merges across a space that follows a
non-space, nor across a newline or a marker token, so a document's ids are the concatenation of
the ids of those chunks, and each distinct chunk needs encoding only once. Every worker checks
this on its first documents against plain encoding, and encodes plainly if it does not hold
(a tokenizer trained with other settings). Worker processes split the documents; results come
back in order as numpy arrays.
"""
from __future__ import annotations

import gzip
import json
import os
import re
import zlib
from itertools import chain
from multiprocessing import get_context
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from .indexed import IndexedDatasetWriter, dtype_for_vocab
from .tokenizer import MARKERS, Tokenizer

CHECKED_DOCS = 16       # documents each encoder compares with plain encoding
MAX_CACHE = 4_000_000   # distinct chunks kept before the cache starts afresh


class ChunkEncoder:
    def __init__(self, model_path: str):
        self.tok = Tokenizer(model_path)
        self.sp = self.tok.sp
        self.eod = self.tok.special.eod
        self.dtype = dtype_for_vocab(self.tok.vocab_size)
        specials = "|".join(re.escape(m) for m in MARKERS)
        self.pattern = re.compile(rf"\n|{specials}| *[^ \n]+| +")
        self.cache: dict[str, list[int]] = {}
        self.checked = 0
        self.cached = True

    def _plain(self, texts: list[str]) -> list[list[int]]:
        return self.sp.encode(texts)

    def encode(self, texts: list[str]) -> list[np.ndarray]:
        if not self.cached:
            ids_list = self._plain(texts)
        else:
            split = [self.pattern.findall(t) for t in texts]
            if len(self.cache) > MAX_CACHE:
                self.cache.clear()
            cache = self.cache
            miss = list({c for chunks in split for c in chunks if c not in cache})
            if miss:
                cache.update(zip(miss, self.sp.encode(miss)))
            get = cache.__getitem__
            ids_list = [list(chain.from_iterable(map(get, chunks))) for chunks in split]
            if self.checked < CHECKED_DOCS:
                n = min(len(texts), CHECKED_DOCS - self.checked)
                if self._plain(texts[:n]) != ids_list[:n]:
                    self.cached = False  # not a tokenizer this applies to: encode plainly
                    ids_list = self._plain(texts)
                self.checked += n
        out = []
        for ids in ids_list:
            ids.append(self.eod)
            out.append(np.array(ids, dtype=self.dtype))
        return out


_worker: ChunkEncoder | None = None


def _init_worker(model_path: str) -> None:
    global _worker
    _worker = ChunkEncoder(model_path)


def _encode_batch(texts: list[str]) -> list[np.ndarray]:
    return _worker.encode(texts)


def _batches(texts: Iterable[str], chars: int) -> Iterator[list[str]]:
    batch, size = [], 0
    for t in texts:
        batch.append(t)
        size += len(t)
        if size >= chars:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


class DatasetEncoder:
    """Writes datasets from texts with `workers` encoder processes (default: every core), started
    once and reused, so their chunk caches carry over from one dataset to the next."""

    def __init__(self, tok: Tokenizer, *, workers: int | None = None, batch_chars: int = 1 << 19):
        self.tok = tok
        self.batch_chars = batch_chars
        workers = max(1, workers or os.cpu_count() or 1)
        self._local = ChunkEncoder(str(tok.path)) if workers == 1 else None
        self._pool = None if workers == 1 else get_context("fork").Pool(
            workers, _init_worker, (str(tok.path),))

    def write(self, texts: Iterable[str], prefix: str | os.PathLike, progress=None) -> tuple[int, int]:
        """One document per text, end-of-document appended, to prefix.bin/.idx atomically;
        returns (documents, tokens)."""
        sizes: list[int] = []

        def sized(batches):
            for b in batches:
                sizes.append(sum(len(t) for t in b))
                yield b

        batches = sized(_batches(texts, self.batch_chars))
        results = (map(self._local.encode, batches) if self._pool is None
                   else self._pool.imap(_encode_batch, batches))
        with IndexedDatasetWriter(str(prefix), vocab_size=self.tok.vocab_size) as w:
            for i, arrays in enumerate(results):
                for a in arrays:
                    w.add_document(a)
                if progress is not None:
                    progress(sizes[i])
        return w.num_documents, w.num_tokens

    def close(self) -> None:
        if self._pool is not None:
            self._pool.terminate()
            self._pool.join()
            self._pool = None

    def __enter__(self) -> "DatasetEncoder":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def encode_to_dataset(texts: Iterable[str], tok: Tokenizer, prefix: str | os.PathLike, *,
                      workers: int | None = None, progress=None) -> tuple[int, int]:
    """One dataset with a DatasetEncoder of its own."""
    with DatasetEncoder(tok, workers=workers) as enc:
        return enc.write(texts, prefix, progress)


def jsonl_texts(paths, field: str = "content") -> Iterator[str]:
    """The `field` of every line of JSONL files (.gz too); a bad line is an error naming it."""
    for path in map(Path, paths):
        opener = gzip.open if path.name.endswith(".gz") else open
        n = 0
        try:
            with opener(path, "rt", encoding="utf-8") as f:
                for n, line in enumerate(f, 1):
                    if not line.strip():
                        continue
                    try:
                        text = json.loads(line)[field]
                    except (json.JSONDecodeError, KeyError, TypeError) as e:
                        raise ValueError(f"{path}:{n}: no '{field}' text ({type(e).__name__}: {e}); "
                                         "fix the line or choose the field with --field") from None
                    if not isinstance(text, str):
                        raise ValueError(f"{path}:{n}: '{field}' is a {type(text).__name__}, not text")
                    yield text
        except (EOFError, gzip.BadGzipFile, zlib.error, UnicodeDecodeError) as e:
            raise ValueError(f"{path}: cannot be read after line {n} ({type(e).__name__}: {e}); the "
                             "file is probably truncated or corrupt (UTF-8 JSON Lines, optionally "
                             "gzip-compressed): re-create it or leave it out") from None
