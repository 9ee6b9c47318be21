"""Writing a phase's output folder: the tokenizer beside the datasets, and large text files
written atomically while streaming."""
from __future__ import annotations

import os
import shutil
from contextlib import contextmanager
from pathlib import Path

TOKENIZER_FILES = ("tokenizer.model", "special_tokens.json")


def copy_tokenizer(model: str | os.PathLike, out: str | os.PathLike) -> Path:
    """Copies tokenizer.model (and special_tokens.json beside it) into <out>/tokenizer/, each
    file atomically; returns the folder."""
    tok_dir = Path(out) / "tokenizer"
    tok_dir.mkdir(parents=True, exist_ok=True)
    for name in TOKENIZER_FILES:
        src = Path(model).parent / name
        if src.exists():
            tmp = tok_dir / f".{name}.tmp"
            shutil.copyfile(src, tmp)
            os.replace(tmp, tok_dir / name)
    return tok_dir


@contextmanager
def atomic_writer(path: str | os.PathLike):
    """A text file open for writing under a temporary name, renamed into place on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.{os.getpid()}")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
