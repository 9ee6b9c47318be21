"""The files inside a data-prep output folder: each dataset document split back at its
<file_sep> markers into (language, repository, path, tokens, text).

Later phases read earlier phases' outputs through this, so they need nothing but the folder
(manifest.json, <lang>_text_document.{bin,idx}, tokenizer/). A file's tokens are the exact
slice of the document's tokens the previous phase trained on, marker line included.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from snowtrain.config import ConfigError

from .indexed import read_index
from .tokenizer import FILE_SEP, REPO_NAME, Tokenizer


@dataclass(slots=True)
class DatasetFile:
    lang: str
    repo: str
    path: str
    doc: int                # document number in the language's dataset
    index: int              # file number inside the document
    tokens: np.ndarray      # "<file_sep>path\n" + content, without <eod>
    content: str

    @property
    def id(self) -> str:
        return f"{self.lang}/{self.doc}/{self.index}"


class PhaseOutput:
    """A finished data-prep output folder."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        manifest = self.folder / "manifest.json"
        if not manifest.is_file():
            raise FileNotFoundError(f"{manifest} not found: {self.folder} is not a finished "
                                    "data-prep output; run the earlier phase first")
        self.manifest = json.loads(manifest.read_text())
        self.languages = sorted(self.manifest.get("datasets") or self.manifest["languages"])
        for lang in self.manifest.get("datasets") or ():
            for suffix in (".idx", ".bin"):
                if not Path(self.prefix(lang) + suffix).is_file():
                    raise ConfigError(
                        f"{self.prefix(lang) + suffix} is missing: {self.folder} is not a complete "
                        "data-prep output", key="input", fix="run the phase that wrote it again "
                        "(it resumes), or point input at a complete output folder")
        self.tokenizer = Tokenizer(self.folder / "tokenizer" / "tokenizer.model")
        self._bins: dict[str, tuple] = {}

    def prefix(self, lang: str) -> str:
        return str(self.folder / f"{lang}_text_document")

    def _open(self, lang: str):
        if lang not in self._bins:
            if lang not in self.languages:
                raise KeyError(f"{self.folder} has no dataset for language {lang!r}; "
                               f"it has {self.languages}")
            info = read_index(self.prefix(lang))
            data = np.memmap(self.prefix(lang) + ".bin", dtype=info.dtype, mode="r")
            self._bins[lang] = (info, data)
        return self._bins[lang]

    def num_documents(self, lang: str) -> int:
        return len(self._open(lang)[0].document_indices) - 1

    def document_tokens(self, lang: str, doc: int) -> np.ndarray:
        info, data = self._open(lang)
        first, last = info.document_indices[doc], info.document_indices[doc + 1]
        start = info.offsets[first] // info.dtype.itemsize if last > first else 0
        n = int(info.sequence_lengths[first:last].sum())
        return np.asarray(data[start:start + n])

    def files(self, lang: str, start: int = 0, stop: int | None = None) -> Iterator[DatasetFile]:
        """The files of documents [start, stop) in order."""
        stop = self.num_documents(lang) if stop is None else stop
        for doc in range(start, stop):
            yield from split_document(self.document_tokens(lang, doc), self.tokenizer, lang, doc)


def split_document(tokens: np.ndarray, tok: Tokenizer, lang: str, doc: int) -> Iterator[DatasetFile]:
    """A repository document is "<repo_name>repo\\n" then files each opening with
    "<file_sep>path\\n"; a document without markers is one file with no repository or path."""
    sp = tok.special
    if len(tokens) and tokens[-1] == sp.eod:
        tokens = tokens[:-1]
    seps = np.flatnonzero(tokens == sp.file_sep)
    repo = ""
    if len(tokens) and tokens[0] == sp.repo_name:
        end = seps[0] if len(seps) else len(tokens)
        repo = tok.decode(tokens[:end])[len(REPO_NAME):].rstrip("\n")
    if not len(seps):
        if not repo and len(tokens):
            yield DatasetFile(lang, "", "", doc, 0, tokens, tok.decode(tokens))
        return
    bounds = [*seps.tolist(), len(tokens)]
    for i in range(len(seps)):
        piece = tokens[bounds[i]:bounds[i + 1]]
        text = tok.decode(piece)[len(FILE_SEP):]
        path, _, content = text.partition("\n")
        yield DatasetFile(lang, repo, path, doc, i, piece, content)
