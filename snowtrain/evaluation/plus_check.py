"""Verdicts for a completion of an EvalPlus task, as EvalPlus's check_correctness gives them: the
base inputs and the plus inputs are two checks, each its own program (_plus_harness.py with the
task's data); the plus verdict passes only when both pass, so the plus program runs only after a
passing base one (a failing base verdict is also the plus verdict, with the same reason)."""
from __future__ import annotations

from dataclasses import replace
from functools import lru_cache
from pathlib import Path

from .execution import Limits, run_program
from .plus import candidate_code

# Inside the program, the canonical solution gets --timeout-s and the completion EvalPlus's own
# limits (at most 60 s + 2 s in all); the process's wall-clock and CPU limits sit above both.
BACKSTOP_S = 70.0


@lru_cache(maxsize=1)
def harness_source() -> str:
    return Path(__file__).with_name("_plus_harness.py").read_text(encoding="utf-8")


def plus_program(problem, completion: str, which: str, limits: Limits) -> str:
    """The program that checks `completion` on the task's `which` ("base" or "plus") inputs."""
    task = problem.evalplus
    data = {"label": which, "dataset": task.dataset, "entry_point": problem.entry_point,
            "reference": task.reference, "candidate": candidate_code(problem.prompt, completion, problem.entry_point),
            "inputs": task.base_inputs if which == "base" else task.plus_inputs,
            "atol": task.atol, "reference_limit_s": limits.timeout_s,
            "memory_bytes": int(limits.memory_gib * 2**30)}
    return harness_source() + f"\n_check({data!r})\n"


def process_limits(limits: Limits) -> Limits:
    return replace(limits, timeout_s=limits.timeout_s + BACKSTOP_S)


def check_plus(problem, completion: str, limits: Limits = Limits()) -> dict:
    """-> {"passed", "result"} (the plus verdict: base and plus inputs) and {"base_passed",
    "base_result"} (base inputs only); results read as execution.run_program's."""
    outer = process_limits(limits)
    base_passed, base_result = run_program(plus_program(problem, completion, "base", limits), outer)
    passed, result = False, base_result
    if base_passed:
        passed, result = run_program(plus_program(problem, completion, "plus", limits), outer)
    return {"passed": passed, "result": result, "base_passed": base_passed, "base_result": base_result}
