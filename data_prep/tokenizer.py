"""A sentencepiece BPE tokenizer for code, with the special tokens the recipe's documents use.

Byte fallback, identity normalisation and no dummy prefix make every input round-trip exactly.
The marker strings below are user-defined symbols, so a marker inside a document's text always
encodes to its single id.
"""
from __future__ import annotations

import io
import json
import os
import random
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, Iterator

from .store import write_bytes

TOKENIZER_FILES = ("tokenizer.model", "special_tokens.json")

PAD, UNK, EOD = "<pad>", "<unk>", "<eod>"
REPO_NAME, FILE_SEP = "<repo_name>", "<file_sep>"
# Reserved for fill-in-the-middle training; not used by the recipe's phases.
FIM = ("<fim_prefix>", "<fim_middle>", "<fim_suffix>", "<fim_pad>")
MARKERS = (REPO_NAME, FILE_SEP, *FIM)


@dataclass(frozen=True)
class SpecialTokens:
    pad: int
    unk: int
    eod: int
    repo_name: int
    file_sep: int
    fim_prefix: int
    fim_middle: int
    fim_suffix: int
    fim_pad: int


def _chunks(texts: Iterable[str], chunk_chars: int) -> Iterator[str]:
    """Splits documents at line boundaries: sentencepiece trains on 'sentences' of bounded size."""
    for text in texts:
        buf, n = [], 0
        for line in text.splitlines(keepends=True):
            buf.append(line)
            n += len(line)
            if n >= chunk_chars:
                yield "".join(buf)
                buf, n = [], 0
        if buf:
            yield "".join(buf)


def train_tokenizer(texts: Iterable[str], out_dir: str | os.PathLike, vocab_size: int,
                    *, sample_chunks: int = 2_000_000, seed: int = 0, threads: int | None = None,
                    chunk_chars: int = 4000) -> Path:
    """Trains on (a seeded reservoir sample of) `texts`; writes tokenizer.model and
    special_tokens.json atomically into out_dir and returns the model path."""
    import sentencepiece as spm

    rng = random.Random(seed)
    sample: list[str] = []
    for i, chunk in enumerate(_chunks(texts, chunk_chars)):
        if len(sample) < sample_chunks:
            sample.append(chunk)
        elif (j := rng.randrange(i + 1)) < sample_chunks:
            sample[j] = chunk
    if not sample:
        raise ValueError("no text to train the tokenizer on: every document was dropped upstream")
    model = io.BytesIO()
    try:
        _train(spm, sample, model, vocab_size, threads, chunk_chars)
    except RuntimeError as e:
        if "Vocabulary size too high" in str(e):
            raise ValueError(f"the tokenizer's vocab_size={vocab_size} is too large for so little "
                             f"text ({str(e).split('Please')[-1].strip()}): lower the vocab size or "
                             "give more data") from None
        need = re.search(r"smaller than required_chars\. (\d+) vs (\d+)", str(e))
        if need:
            raise ValueError(f"the tokenizer's vocab_size={vocab_size} is smaller than the {need.group(2)} "
                             "pieces every character of the text plus the special tokens need: raise "
                             "the vocab size") from None
        raise
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model_path = out / "tokenizer.model"
    write_bytes(model_path, model.getvalue())
    tok = Tokenizer(model_path)
    write_bytes(out / "special_tokens.json",
                  json.dumps(asdict(tok.special), indent=2).encode())
    return model_path


def _train(spm, sample, model, vocab_size, threads, chunk_chars) -> None:
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(sample), model_writer=model, vocab_size=vocab_size,
        model_type="bpe", byte_fallback=True, character_coverage=0.9999,
        pad_id=0, unk_id=1, bos_id=-1, eos_id=2, pad_piece=PAD, unk_piece=UNK, eos_piece=EOD,
        user_defined_symbols=[*MARKERS, "\n"], normalization_rule_name="identity",
        remove_extra_whitespaces=False, add_dummy_prefix=False, allow_whitespace_only_pieces=True,
        split_digits=True, max_sentence_length=4 * chunk_chars + 16, seed_sentencepiece_size=10**6,
        num_threads=threads or os.cpu_count() or 1, minloglevel=2)


def copy_tokenizer(model: str | os.PathLike, out: str | os.PathLike) -> Path:
    """Copies tokenizer.model (and special_tokens.json beside it) into <out>/tokenizer/, each
    file atomically, so every output folder carries the tokenizer its tokens need."""
    tok_dir = Path(out) / "tokenizer"
    for name in TOKENIZER_FILES:
        src = Path(model).parent / name
        if src.exists():
            write_bytes(tok_dir / name, src.read_bytes())
    return tok_dir


class Tokenizer:
    """A trained model plus its special-token ids."""

    def __init__(self, model_path: str | os.PathLike):
        import sentencepiece as spm

        self.path = Path(model_path)
        if not self.path.is_file():
            raise FileNotFoundError(f"tokenizer model {self.path} not found; train one with "
                                    "data-prep phase1 or pass the right path")
        try:
            self.sp = spm.SentencePieceProcessor(model_file=str(self.path))
        except RuntimeError as e:   # sentencepiece's "could not parse ModelProto"
            raise ValueError(f"{self.path} is not a sentencepiece model ({e}); give the "
                             "tokenizer.model a data-prep run wrote") from None
        ids = {name: self.sp.piece_to_id(piece) for name, piece in
               [("pad", PAD), ("unk", UNK), ("eod", EOD), ("repo_name", REPO_NAME),
                ("file_sep", FILE_SEP), *[(p.strip("<>"), p) for p in FIM]]}
        missing = [n for n, i in ids.items() if i == self.sp.unk_id() and n != "unk"]
        if missing:
            raise ValueError(f"{self.path} lacks the special tokens {missing}: it was not trained "
                             "by snowtrain's data-prep; train a tokenizer with data-prep")
        self.special = SpecialTokens(**ids)

    @property
    def vocab_size(self) -> int:
        return self.sp.get_piece_size()

    def encode(self, texts: list[str], threads: int | None = None) -> list[list[int]]:
        return self.sp.encode(texts, num_threads=threads or os.cpu_count() or 1)

    def decode(self, ids) -> str:
        return self.sp.decode([int(i) for i in ids])
