"""EvalPlus's own problem files (HumanEval+, MBPP+), read as EvalPlus reads them.

An EvalPlus task keeps its tests as data: `base_input` (the original benchmark's inputs) and
`plus_input` (EvalPlus's extra ones), each a list of argument lists, plus a float tolerance `atol`.
A completion is judged by running it on every input and comparing with the canonical solution's
outputs (see plus_check.py). Here: validation with file:line errors, EvalPlus's per-task MBPP input
fix-ups (JSON has no tuples, sets or complex numbers), and how EvalPlus prompts a base model.
"""
from __future__ import annotations

import hashlib
import json
import math
import pickle
from dataclasses import dataclass

from .sanitize import sanitize

DATASETS = {"HumanEval/": "humaneval", "Mbpp/": "mbpp"}
FIELDS = ("task_id", "prompt", "entry_point", "canonical_solution", "base_input", "plus_input", "atol")

# EvalPlus's stop sequences for a direct-completion (base) model: provider/utility.py's EOS plus
# extra_eos_for_direct_completion(dataset). Used when --stop is not given.
_EOS = ("<|endoftext|>", "<|endofmask|>", "</s>", "\nif __name__", "\ndef main(", "\nprint(")
STOP = {"humaneval": _EOS + ("\ndef ", "\nclass ", "\nimport ", "\nfrom ", "\nassert "),
        "mbpp": _EOS + ('\n"""', "\nassert")}
MAX_NEW_TOKENS = 768  # EvalPlus's DecoderBase default


@dataclass(frozen=True)
class PlusTask:
    """What a completion is checked against. Inputs are pickled after the fix-ups (so tuples,
    sets and complex numbers survive into the program that runs them)."""
    dataset: str            # "humaneval" or "mbpp"
    reference: str          # prompt + canonical_solution: what EvalPlus's get_groundtruth runs
    atol: float
    base_inputs: bytes
    plus_inputs: bytes
    digest: str             # of the task's fields, so a changed file is refused on resume


def is_plus_object(obj: dict) -> bool:
    return "base_input" in obj or "plus_input" in obj


def dataset_of(task_id: str) -> str | None:
    return next((d for prefix, d in DATASETS.items() if task_id.startswith(prefix)), None)


def model_prompt(prompt: str) -> str:
    """EvalPlus's codegen gives a base model `task["prompt"].strip() + "\\n"`."""
    return prompt.strip() + "\n"


def candidate_code(prompt: str, completion: str, entry_point: str) -> str:
    """The solution EvalPlus's codegen builds for a direct-completion model: the prompt it gave
    plus the completion, whose tabs its providers turn into four spaces, sanitized (sanitize.py)."""
    return sanitize(prompt + completion.replace("\t", "    "), entry_point, "evalplus")


# ---- EvalPlus's MBPP+ input fix-ups (data/mbpp.py, mbpp_deserialize_inputs), restated ----

def _tuples(xs):
    return [tuple(x) for x in xs]


def _deep_tuple(x):
    return tuple(_deep_tuple(i) for i in x) if isinstance(x, list) else x


_EACH_ARG_TUPLE = {2, 116, 132, 143, 222, 261, 273, 394, 399, 421, 424, 429, 470, 560, 579, 596,
                   616, 630, 726, 740, 744, 809}
_ARGS_OF_TUPLES = {63, 64, 70, 94, 120, 237, 272, 299, 400, 409, 417, 438, 473, 614, 780}
_FIRST_OF_TUPLES = {75, 413, 444, 753}
_SECOND_TUPLE = {106, 750}
_FIRST_TUPLE = {250, 405, 446, 617, 720, 763, 808}
_TUPLES_OF_TUPLES = {259, 401, 445}
_DEEP_TUPLE = {580, 615, 791}


def _fix_one(n: int, inp):
    """One input (an argument list) of task Mbpp/n, as EvalPlus turns it into Python values."""
    if n in _EACH_ARG_TUPLE:
        return _tuples(inp)
    if n in _ARGS_OF_TUPLES:
        return [_tuples(arg) for arg in inp]
    if n in _FIRST_OF_TUPLES:
        return [_tuples(inp[0])] + [inp[1]]
    if n in _SECOND_TUPLE:
        return [inp[0]] + [tuple(inp[1])]
    if n == 115:  # an empty list becomes {} (a dict), as EvalPlus writes it
        return [[set(x) if isinstance(x, list) and len(x) else {} for x in inp[0]]]
    if n == 124:
        return (float(inp[0]), complex(inp[1]))
    if n in _FIRST_TUPLE:
        return [tuple(inp[0])] + [inp[1]]
    if n in _TUPLES_OF_TUPLES:
        return _tuples([_tuples(arg) for arg in inp])
    if n == 278:
        return _tuples([[tuple(x) if isinstance(x, list) else x for x in inp[0]]])
    if n == 307:
        return [tuple(inp[0])] + [inp[1], inp[2]]
    if n == 722:
        return [{k: tuple(v) for k, v in inp[0].items()}] + inp[1:]
    if n == 252:
        return [complex(inp[0])]
    if n in _DEEP_TUPLE:
        return _deep_tuple(inp)
    return inp


def mbpp_inputs(task_id: str, inputs: list) -> list:
    """EvalPlus's mbpp_deserialize_inputs: the same values for every task in its table."""
    n = int(task_id.split("/")[-1])
    return [_fix_one(n, inp) for inp in inputs]


# ---- reading one line ----

def parse_plus_object(obj: dict, where: str, error):
    """-> (prompt for the model, entry_point, canonical_solution, PlusTask); `error(msg)` makes
    the exception to raise (problems.ProblemError, with the file and line)."""
    missing = [k for k in FIELDS if k not in obj]
    if missing:
        raise error(f"{where}: missing {', '.join(missing)} (an EvalPlus task needs {', '.join(FIELDS)})")
    for k in ("task_id", "prompt", "entry_point", "canonical_solution"):
        if not isinstance(obj[k], str):
            raise error(f"{where}: '{k}' must be a string, got {type(obj[k]).__name__}")
    task_id = obj["task_id"]
    dataset = dataset_of(task_id)
    if dataset is None:
        raise error(f"{where}: task_id {task_id!r} is not an EvalPlus task (HumanEval/N or Mbpp/N), "
                    "so its checking rules are unknown")
    if dataset == "mbpp" and not task_id.split("/", 1)[1].isdigit():
        raise error(f"{where}: task_id {task_id!r}: an MBPP+ task is Mbpp/<number>")
    if not obj["entry_point"].isidentifier():
        raise error(f"{where}: entry_point {obj['entry_point']!r} is not a Python name")
    atol = obj["atol"]
    if isinstance(atol, bool) or not isinstance(atol, (int, float)) or not 0 <= atol < math.inf:
        raise error(f"{where}: 'atol' must be a number >= 0, got {atol!r}")
    pickled = []
    for k in ("base_input", "plus_input"):
        inputs = obj[k]
        if not isinstance(inputs, list):
            raise error(f"{where}: '{k}' must be a list of argument lists, got {type(inputs).__name__}")
        for j, inp in enumerate(inputs):
            if not isinstance(inp, list):
                raise error(f"{where}: {k}[{j}] must be a list of arguments, got {type(inp).__name__}")
        if dataset == "mbpp":
            try:
                inputs = mbpp_inputs(task_id, inputs)
            except Exception as e:  # a shape that EvalPlus's fix-up for this task cannot take
                raise error(f"{where}: {k} does not fit EvalPlus's input format for {task_id} "
                            f"({type(e).__name__}: {e})") from None
        pickled.append(pickle.dumps(inputs, protocol=4))
    raw = json.dumps([obj[k] for k in FIELDS], sort_keys=True).encode()
    task = PlusTask(dataset, obj["prompt"] + obj["canonical_solution"], atol, pickled[0], pickled[1],
                    hashlib.sha256(raw).hexdigest()[:16])
    return model_prompt(obj["prompt"]), obj["entry_point"], obj["canonical_solution"], task
