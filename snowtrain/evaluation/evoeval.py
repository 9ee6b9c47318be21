"""EvoEval's own problem files (EvoEval_difficult, _creative, _subtle, _combine, _tool_use), scored
as evoeval 0.1.0 scores a base model.

A line holds `task_id` (EvoEval/N), `prompt`, `canonical_solution`, `entry_point` and `inputs`: the
tests are inputs, each the text of an argument list (`"[1, 2], 3"`, read as `eval(f"[{text}]")`
among the names evoeval's evaluate.py has, when the file is loaded),
and a completion passes when its output on every input equals the canonical solution's, by
EvoEval's comparison and its special oracles (_evo_harness.py). EvoEval's codegen gives a base
model the prompt as it is, with its stop sequences and up to 512 new tokens, and runs the prompt
plus the completion as generated. Which special oracles apply depends on the benchmark, as in
evoeval: it is read from the file's name (EvoEval_difficult.jsonl is "difficult").
"""
from __future__ import annotations

import ast
import hashlib
import json
import pickle
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path

from .execution import Limits, run_program
from .plus_check import harness_source as plus_harness

FIELDS = ("task_id", "prompt", "canonical_solution", "entry_point", "inputs")
KINDS = ("difficult", "creative", "subtle", "combine", "tool_use")
# codegen/model.py's EOS (HUMANEVAL_EOS + NON_CODE_EOS) and DecoderBase's max_new_tokens
STOP = ("\nclass", "\ndef", "\n#", "\n@", "\nprint", "\nif", "<|endoftext|>", "\n```", "\n</s>",
        "<|endofmask|>")
MAX_NEW_TOKENS = 512
BACKSTOP_S = 70.0  # beyond --timeout-s (the canonical solution's limit): EvoEval's own limits


@dataclass(frozen=True)
class EvoTask:
    dataset: str            # the benchmark's name, lower case: which special oracles apply
    reference: str          # prompt + "\n" + canonical_solution, as get_groundtruth runs it
    inputs: bytes           # the argument lists, evaluated and pickled
    digest: str             # of the task's fields, so a changed file is refused on resume


def is_evo_object(obj: dict) -> bool:
    return "inputs" in obj and "test" not in obj


def kind_of(benchmark: str) -> str | None:
    name = benchmark.lower()
    return next((k for k in KINDS if k in name), None)


def parse_evo_object(obj: dict, where: str, error, benchmark: str):
    """-> (prompt, entry_point, canonical_solution, EvoTask); `error(msg)` makes the exception to
    raise (problems.ProblemError, with the file and line)."""
    missing = [k for k in FIELDS if k not in obj]
    if missing:
        raise error(f"{where}: missing {', '.join(missing)} (an EvoEval task needs {', '.join(FIELDS)})")
    for k in FIELDS[:4]:
        if not isinstance(obj[k], str):
            raise error(f"{where}: '{k}' must be a string, got {type(obj[k]).__name__}")
    if not obj["entry_point"].isidentifier():
        raise error(f"{where}: entry_point {obj['entry_point']!r} is not a Python name")
    texts = obj["inputs"]
    if not isinstance(texts, list) or not all(isinstance(x, str) for x in texts):
        raise error(f"{where}: 'inputs' must be a list of argument-list texts, e.g. [\"[1, 2], 3\"]")
    inputs = []
    for j, text in enumerate(texts):
        try:
            ast.parse(f"[{text}]", mode="eval")
            inputs.append(eval(f"[{text}]", _input_names()))  # benchmark data, read as evoeval reads it
        except SyntaxError as e:
            raise error(f"{where}: inputs[{j}] is not an argument list ({e.msg}): {text[:80]!r}") from None
        except Exception as e:
            raise error(f"{where}: inputs[{j}] cannot be evaluated ({type(e).__name__}: {e}): {text[:80]!r}") from None
    try:
        pickled = pickle.dumps(inputs, protocol=4)
    except Exception as e:
        raise error(f"{where}: the inputs cannot be passed to a program ({type(e).__name__}: {e})") from None
    raw = json.dumps([obj[k] for k in FIELDS], sort_keys=True).encode()
    task = EvoTask(benchmark.lower(), obj["prompt"] + "\n" + obj["canonical_solution"], pickled,
                   hashlib.sha256(raw).hexdigest()[:16])
    return obj["prompt"], obj["entry_point"], obj["canonical_solution"], task


@lru_cache(maxsize=1)
def _input_names() -> dict:
    """The module-level names of evoeval's evaluate.py that an input text can use (its imports)."""
    import argparse
    import contextlib
    import multiprocessing
    import os
    import threading
    import time
    from collections import Counter, defaultdict
    from typing import Any, Dict, List, Tuple

    import numpy as np
    return {"argparse": argparse, "contextlib": contextlib, "json": json, "multiprocessing": multiprocessing,
            "os": os, "pickle": pickle, "threading": threading, "time": time, "Counter": Counter,
            "defaultdict": defaultdict, "Any": Any, "Dict": Dict, "List": List, "Tuple": Tuple, "np": np}


@lru_cache(maxsize=1)
def _harness() -> str:
    # EvoEval's checks use EvalPlus's reliability_guard and output swallowing: _plus_harness.py's
    return plus_harness() + "\n" + Path(__file__).with_name("_evo_harness.py").read_text(encoding="utf-8")


def evo_program(problem, completion: str, limits: Limits) -> str:
    task = problem.evoeval
    data = {"dataset": task.dataset, "task_id": problem.task_id, "entry_point": problem.entry_point,
            "reference": task.reference, "candidate": problem.prompt + completion, "inputs": task.inputs,
            "reference_limit_s": limits.timeout_s, "memory_bytes": int(limits.memory_gib * 2**30)}
    return _harness() + f"\n_check_evo({data!r})\n"


def check_evo(problem, completion: str, limits: Limits) -> dict:
    """-> {"passed", "result"} (results read as execution.run_program's)."""
    passed, result = run_program(evo_program(problem, completion, limits),
                                 replace(limits, timeout_s=limits.timeout_s + BACKSTOP_S))
    return {"passed": passed, "result": result}
