"""BigCodeBench's own problem files (BigCodeBench-Complete, full or hard), scored as bigcodebench
0.2.5 scores a base model.

A line holds `task_id` (BigCodeBench/N), `complete_prompt` (imports, signature and docstring: what
the model continues), `code_prompt` (imports and signature), `canonical_solution`, `test` (a
`unittest` class named TestCases), `entry_point` and `libs`. Its codegen gives a direct-completion
model `complete_prompt` with its stop sequences, sanitizes prompt + completion (sanitize.py,
BigCodeBench's flavour), and its evaluation runs the "calibrated" solution, `code_prompt` + a
`pass` body + the sanitized code (so the prompt's imports are there even when the sanitizer drops
them), with the test class, under its limits (_bcb_harness.py). A task passes when every test
passes. Its canonical solutions are run too: a task whose canonical solution fails here usually
needs a library this Python lacks, and counts as failed, as in BigCodeBench.
"""
from __future__ import annotations

import ast
import hashlib
import importlib.util
import json
import os
import sys
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path

from .execution import Limits, run_program
from .plus import STOP as PLUS_STOP
from .plus_check import harness_source as plus_harness
from .sanitize import sanitize

FIELDS = ("task_id", "complete_prompt", "code_prompt", "canonical_solution", "test", "entry_point")
# provider/utility.py's EOS plus extra_eos_for_direct_completion("bigcodebench"): the same list
# as EvalPlus's for HumanEval.
STOP = PLUS_STOP["humaneval"]
MAX_NEW_TOKENS = 1280                   # run_codegen's default
TIMEOUT_S = 240.0                       # eval/utils.py TIMEOUT_LIMIT: the test suite's limit (+1 s)
MEMORY_GIB = 30.0                       # evaluate()'s max_as_limit and max_data_limit (30 * 1024 MiB)
STACK_MIB = 10                          # evaluate()'s max_stack_limit
STARTUP_S = 5.0                         # the process's wall clock beyond the suite's limit


@dataclass(frozen=True)
class BcbTask:
    code_prompt: str
    libs: tuple[str, ...]
    reference: str          # complete_prompt + "\n" + canonical_solution, as get_groundtruth runs it
    digest: str             # of the task's fields, so a changed file is refused on resume


def is_bcb_object(obj: dict) -> bool:
    return "complete_prompt" in obj or "code_prompt" in obj


def _libs(value, where: str, error) -> tuple[str, ...]:
    if isinstance(value, list):
        libs = value
    else:
        try:
            libs = ast.literal_eval(value) if value else []
        except (ValueError, SyntaxError):
            libs = None
    if not isinstance(libs, list) or not all(isinstance(x, str) for x in libs):
        raise error(f"{where}: 'libs' must be a list of library names (or its text), got {value!r}")
    return tuple(libs)


def parse_bcb_object(obj: dict, where: str, error):
    """-> (prompt for the model, test, entry_point, canonical_solution, BcbTask); `error(msg)`
    makes the exception to raise (problems.ProblemError, with the file and line)."""
    missing = [k for k in FIELDS if k not in obj]
    if missing:
        raise error(f"{where}: missing {', '.join(missing)} (a BigCodeBench task needs {', '.join(FIELDS)})")
    for k in FIELDS:
        if not isinstance(obj[k], str):
            raise error(f"{where}: '{k}' must be a string, got {type(obj[k]).__name__}")
    if not obj["entry_point"].isidentifier():
        raise error(f"{where}: entry_point {obj['entry_point']!r} is not a Python name")
    if "TestCases" not in obj["test"]:
        raise error(f"{where}: 'test' defines no TestCases class (BigCodeBench's tests are a "
                    "unittest.TestCase named TestCases)")
    libs = _libs(obj.get("libs"), where, error)
    raw = json.dumps([obj[k] for k in FIELDS], sort_keys=True).encode()
    task = BcbTask(obj["code_prompt"], libs, obj["complete_prompt"] + "\n" + obj["canonical_solution"],
                   hashlib.sha256(raw).hexdigest()[:16])
    return obj["complete_prompt"], obj["test"], obj["entry_point"], obj["canonical_solution"], task


def solution(problem, completion: str) -> str:
    """What BigCodeBench's evaluate runs for a base model's completion (calibrated); its providers
    turn tabs into four spaces before its codegen sanitizes."""
    code = sanitize(problem.prompt + completion.replace("\t", "    "), problem.entry_point, "bigcodebench")
    return problem.bigcodebench.code_prompt + "\n    pass\n" + code


@lru_cache(maxsize=1)
def _harness() -> str:
    return plus_harness() + "\n" + Path(__file__).with_name("_bcb_harness.py").read_text(encoding="utf-8")


def bcb_program(code: str, test: str, limits: Limits, trusted: bool = False) -> str:
    """`trusted`: the canonical solution, run as trusted_exec runs it (its module-level code before
    the I/O and subprocess patches, which then cover only the test suite)."""
    data = {"code": code, "test": test, "suite_limit_s": limits.timeout_s + 1, "trusted": trusted,
            "memory_mib": int(limits.memory_gib * 1024), "stack_mib": STACK_MIB}
    return _harness() + f"\n_check_bcb({data!r})\n"


def _run(source: str, limits: Limits) -> dict:
    # BigCodeBench limits wall clock, memory and stack only, and its programs see the evaluator's
    # PATH (tasks run `python3` and other tools): this interpreter's folder first
    outer = replace(limits, timeout_s=limits.timeout_s + STARTUP_S, file_size_mib=None, cpu_limit=False)
    path = os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", os.defpath)])
    passed, result = run_program(source, outer, env={"PATH": path})
    return {"passed": passed, "result": result}


def check_bcb(problem, completion: str, limits: Limits) -> dict:
    """-> {"passed", "result"} for a completion (results read as execution.run_program's)."""
    return _run(bcb_program(solution(problem, completion), problem.test, limits), limits)


def check_canonical(problem, limits: Limits) -> dict:
    """The task's canonical solution under the same harness: does this environment pass it?"""
    return _run(bcb_program(problem.bigcodebench.reference, problem.test, limits, trusted=True), limits)


def missing_libraries(problems) -> list[str]:
    """The tasks' libraries that this Python cannot import (the programs run with it)."""
    libs = sorted({lib for p in problems if p.bigcodebench for lib in p.bigcodebench.libs})
    missing = []
    for lib in libs:
        try:
            found = importlib.util.find_spec(lib) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            missing.append(lib)
    return missing
