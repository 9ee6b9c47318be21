"""Seeds: how many per language, which file each comes from, and which lines.

Everything is a function of the config's seed and the input folder, never of ranks or timing:

- counts: `language_shares` fixes some languages' shares (python: 0.5); the remaining share is
  split over the other languages in proportion to their input token counts; the total is cut
  into integer counts by largest remainder.
- files: each language's files are put in a seeded random order and taken in turn (one pass per
  round when more seeds than files are asked for), so a seed file is uniform over files.
- lines: 1 to 15 consecutive lines (a random count) from a random position, drawn from a
  generator seeded by the config seed, the file's id and the round; the window starts on a
  non-blank line and its trailing blank lines are dropped (and, with a character limit, so are
  the lines past it). A file with no such line passes its seed on to the next file in the order.
"""
from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass

import numpy as np

from ..dataset_files import PhaseOutput
from ..indexed import read_index
from ..tokenizer import FILE_SEP, REPO_NAME

SCAN_TOKENS = 1 << 26   # tokens compared per step when looking for file markers


def _stable_int(*parts) -> int:
    h = hashlib.blake2b("\0".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(h, "little")


# ----------------------------------------------------------------------------- counts

def language_tokens(output: PhaseOutput, languages: list[str]) -> dict[str, int]:
    return {lang: int(read_index(output.prefix(lang)).sequence_lengths.sum(dtype=np.int64))
            for lang in languages}


def seed_counts(num_seeds: int, shares: dict[str, float], tokens: dict[str, int]) -> dict[str, int]:
    """Seeds per language (see the module docstring); `tokens` names every language used."""
    fixed = {k: float(v) for k, v in shares.items() if k in tokens}
    rest = [k for k in tokens if k not in fixed]
    left = max(0.0, 1.0 - sum(fixed.values()))
    rest_tokens = sum(tokens[k] for k in rest)
    weights = dict(fixed)
    if rest and rest_tokens > 0:
        weights.update({k: left * tokens[k] / rest_tokens for k in rest})
    else:
        weights.update({k: 0.0 for k in rest})
    total = sum(weights.values())
    if total <= 0:
        raise ValueError("every language has a zero share: no seeds to draw")
    exact = {k: num_seeds * w / total for k, w in weights.items()}
    counts = {k: int(v) for k, v in exact.items()}
    by_remainder = sorted(exact, key=lambda k: (-(exact[k] - counts[k]), k))
    for k in by_remainder[:num_seeds - sum(counts.values())]:
        counts[k] += 1
    return dict(sorted(counts.items()))


# ----------------------------------------------------------------------------- files

def _document_bounds(info) -> tuple[np.ndarray, np.ndarray]:
    """First token and end token of every document (positions in the .bin)."""
    cum = np.concatenate([[0], np.cumsum(info.sequence_lengths, dtype=np.int64)])
    first, last = info.document_indices[:-1], info.document_indices[1:]
    return cum[first], cum[last]


def _marker_positions(data: np.ndarray, token: int) -> np.ndarray:
    parts = [np.flatnonzero(np.asarray(data[i:i + SCAN_TOKENS]) == token) + i
             for i in range(0, len(data), SCAN_TOKENS)]
    return np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, np.int64)


def file_spans(output: PhaseOutput, lang: str) -> np.ndarray:
    """int64 rows (doc, index in doc, first token, end token) of every file of a language, in
    the order PhaseOutput.files gives them; token positions count from the document's start."""
    sp = output.tokenizer.special
    info = read_index(output.prefix(lang))
    data = np.memmap(output.prefix(lang) + ".bin", dtype=info.dtype, mode="r")
    starts, ends = _document_bounds(info)
    nonempty = ends > starts
    # a document ends with <eod>, which belongs to no file
    ends = ends - (nonempty & (np.asarray(data[np.maximum(ends - 1, 0)]) == sp.eod))
    seps = _marker_positions(data, sp.file_sep)
    doc = np.searchsorted(starts, seps, side="right") - 1
    inside = (doc >= 0) & (seps < ends[np.maximum(doc, 0)])
    seps, doc = seps[inside], doc[inside]
    last_in_doc = np.r_[doc[1:] != doc[:-1], True]
    file_end = np.where(last_in_doc, ends[doc], np.r_[seps[1:], 0])
    first_file = np.searchsorted(doc, doc, side="left")     # seps are sorted, so docs are too
    rows = [np.stack([doc, np.arange(len(doc)) - first_file, seps, file_end], axis=1)]
    # a document without markers (and without a repository header) is one file
    plain = np.flatnonzero((np.bincount(doc, minlength=len(starts)) == 0) & (ends > starts))
    plain = plain[np.asarray(data[starts[plain]]) != sp.repo_name]
    rows.append(np.stack([plain, np.zeros_like(plain), starts[plain], ends[plain]], axis=1))
    spans = np.concatenate(rows).astype(np.int64)
    spans[:, 2:] -= starts[spans[:, 0]][:, None]
    return spans[np.lexsort((spans[:, 1], spans[:, 0]))]


@dataclass
class SeedFile:
    id: str         # DatasetFile.id: "<lang>/<doc>/<index>"
    repo: str
    path: str
    content: str


def read_file(output: PhaseOutput, lang: str, span) -> SeedFile:
    """One file by its span, decoding only its tokens (and the repository header)."""
    tok = output.tokenizer
    doc, index, start, end = (int(x) for x in span)
    tokens = output.document_tokens(lang, doc)
    text = tok.decode(tokens[start:end])
    path, content = "", text
    if text.startswith(FILE_SEP):
        path, _, content = text[len(FILE_SEP):].partition("\n")
    repo = ""
    if len(tokens) and tokens[0] == tok.special.repo_name:
        seps = np.flatnonzero(tokens[:start + 1] == tok.special.file_sep)
        head = tokens[:seps[0]] if len(seps) else tokens[:start]
        repo = tok.decode(head)[len(REPO_NAME):].split("\n")[0]
    return SeedFile(f"{lang}/{doc}/{index}", repo, path, content)


# ----------------------------------------------------------------------------- lines

def seed_window(content: str, rng: random.Random, min_lines: int = 1, max_lines: int = 15,
                max_chars: int | None = None):
    """(first line, end line) 0-based half-open, or None when the file has no non-blank line
    (of at most max_chars characters). With max_chars, the window ends before the line that
    would make it longer (for teachers with a short context)."""
    lines = content.split("\n")
    starts = [i for i, line in enumerate(lines)
              if line.strip() and (max_chars is None or len(line) + 1 <= max_chars)]
    if not starts:
        return None
    k = rng.randint(min_lines, max_lines)
    first = rng.choice(starts)
    end = min(first + k, len(lines))
    if max_chars is not None:
        size, stop = 0, first
        while stop < end and size + len(lines[stop]) + 1 <= max_chars:
            size += len(lines[stop]) + 1
            stop += 1
        end = stop
    while not lines[end - 1].strip():
        end -= 1
    return first, end


@dataclass
class Seed:
    index: int          # position in the run's seed list
    lang: str
    file_id: str
    repo: str
    path: str
    first_line: int     # 1-based, inclusive
    last_line: int
    text: str           # the lines, each ending with "\n"

    def provenance(self) -> dict:
        return {"file": self.file_id, "repo": self.repo, "path": self.path,
                "lines": [self.first_line, self.last_line]}


def file_order(n_files: int, seed: int, lang: str, rnd: int) -> np.ndarray:
    return np.random.default_rng([seed, _stable_int("files", lang) % 2**32, rnd]).permutation(n_files)


def draw_seed(output: PhaseOutput, lang: str, spans: np.ndarray, j: int, index: int, *,
              seed: int, min_lines: int, max_lines: int, max_chars: int | None = None,
              orders: dict | None = None) -> Seed:
    """The seed number j of a language (index: its number in the whole run)."""
    n = len(spans)
    orders = {} if orders is None else orders
    for step in range(n):
        k = j + step
        rnd, pos = divmod(k, n)
        if rnd not in orders:
            orders[rnd] = file_order(n, seed, lang, rnd)
        f = read_file(output, lang, spans[orders[rnd][pos]])
        # step > 0: this file stands in for an empty one, so it must not repeat its own window
        rng = random.Random(f"{seed}\0{f.id}\0{rnd}\0{step}")
        window = seed_window(f.content, rng, min_lines, max_lines, max_chars)
        if window is None:
            continue
        first, end = window
        lines = f.content.split("\n")[first:end]
        return Seed(index, lang, f.id, f.repo, f.path, first + 1, end,
                    "".join(line + "\n" for line in lines))
    raise ValueError(f"no {lang} file in {output.folder} has a non-blank line (short enough) to "
                     "draw a seed from")
