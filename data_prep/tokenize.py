"""Tokenize documents into a Megatron indexed dataset, end-of-document appended.

sentencepiece encodes each batch on all the threads it is given (its C++ workers need no
pickling between processes), and the writer buffers tokens in large chunks.
"""
from __future__ import annotations

import gzip
import json
import os
from pathlib import Path
from typing import Iterable, Iterator

from .indexed import IndexedDatasetWriter
from .tokenizer import Tokenizer


def encode_to_dataset(texts: Iterable[str], tok: Tokenizer, prefix: str | os.PathLike, *,
                      threads: int | None = None, batch: int = 256, append_eod: bool = True,
                      progress=None) -> tuple[int, int]:
    """Writes one document per text to prefix.bin/.idx atomically; returns (documents, tokens)."""
    eod = tok.special.eod
    with IndexedDatasetWriter(str(prefix), vocab_size=tok.vocab_size) as w:
        chunk: list[str] = []

        def flush():
            for ids in tok.encode(chunk, threads=threads):
                if append_eod:
                    ids.append(eod)
                w.add_document(ids)
            if progress is not None:
                progress(sum(len(t) for t in chunk))
            chunk.clear()

        for text in texts:
            chunk.append(text)
            if len(chunk) >= batch:
                flush()
        if chunk:
            flush()
    return w.num_documents, w.num_tokens


def jsonl_texts(paths, field: str = "content") -> Iterator[str]:
    """The `field` of every line of JSONL files (.gz too); a bad line is an error naming it."""
    for path in map(Path, paths):
        opener = gzip.open if path.name.endswith(".gz") else open
        with opener(path, "rt", encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    yield json.loads(line)[field]
                except (json.JSONDecodeError, KeyError, TypeError) as e:
                    raise ValueError(f"{path}:{n}: no '{field}' text ({type(e).__name__}: {e}); "
                                     "fix the line or choose the field with --field") from None
