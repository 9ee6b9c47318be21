"""`snowtrain eval` on EvalPlus's own files (HumanEval+, MBPP+) against EvalPlus itself: for right,
wrong-on-plus-only, wrong, raising, looping and nearly-right float completions of HumanEval and
MBPP-style tasks (tuple inputs, set equality, not-None outputs, floats, find_zero, surface_Area),
our base and plus verdicts equal evalplus.eval.untrusted_check's on the same solution (sanitized by
EvalPlus's own sanitizer), inputs and expected outputs (evalplus.gen.util.trusted_exec); our MBPP
input fix-ups equal EvalPlus's; the runner's summary, the command line end to end with a tiny
model, resume, and file:line errors."""
from __future__ import annotations

import ast
import gzip
import importlib.util
import inspect
import json
import multiprocessing
import re
import textwrap
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from reference_tools import tool_sanitize

from snowtrain import cli
from snowtrain.evaluation.backends import TOO_LONG, Completion
from snowtrain.evaluation.execution import Limits
from snowtrain.evaluation.plus import STOP, candidate_code, mbpp_inputs
from snowtrain.evaluation.plus_check import check_plus
from snowtrain.evaluation.problems import ProblemError, load_benchmark, load_problems
from snowtrain.evaluation.runner import EvalError, Generation, evaluate, summary_line


@pytest.fixture(scope="module")
def evalplus_eval():
    """EvalPlus's checking code: the reference (scripts/setup.sh installs it without its deps)."""
    return pytest.importorskip("evalplus.eval", reason="EvalPlus (pip install --no-deps evalplus; psutil) "
                               "is the reference these tests compare with")


@pytest.fixture(scope="module")
def humaneval():
    return {p.task_id: p for p in load_benchmark("humaneval", None)[2]}


def _evalplus_mbpp_deserialize():
    """EvalPlus's own mbpp_deserialize_inputs, taken from its source: evalplus.data imports
    `datasets`, which a --no-deps install lacks."""
    spec = importlib.util.find_spec("evalplus")
    source = (Path(spec.submodule_search_locations[0]) / "data" / "mbpp.py").read_text()
    fn = next(n for n in ast.parse(source).body
              if isinstance(n, ast.FunctionDef) and n.name == "mbpp_deserialize_inputs")
    namespace = {}
    exec(compile(ast.Module([fn], []), "evalplus/data/mbpp.py", "exec"), namespace)
    return namespace["mbpp_deserialize_inputs"]


def _find_zero_fixed(evalplus_eval):
    """unsafe_execute's source with the find_zero fix of EvalPlus's later source, and whether it
    was needed: in 0.3.1 the special oracle's `continue` skips counting the input as passed, so
    every find_zero completion fails."""
    src = textwrap.dedent(inspect.getsource(evalplus_eval.unsafe_execute))
    fixed, n = re.subn(r"(\n *assert abs\(_poly\(\*inp, out\)\) <= atol\n)( +)continue\n",
                       lambda m: f"{m[1]}{m[2]}details[i] = True\n{m[2]}progress.value += 1\n"
                                 f"{m[2]}continue\n", src)
    assert n == 1 or re.search(r"<= atol\n +details\[i\] = True\n", src), "unknown find_zero oracle"
    return fixed, n == 1


def _fixed_untrusted_check(evalplus_eval):
    """untrusted_check with the find_zero fix (EvalPlus's own when its release has it)."""
    fixed, needed = _find_zero_fixed(evalplus_eval)
    if not needed:
        return evalplus_eval.untrusted_check
    namespace = dict(vars(evalplus_eval))
    exec(fixed, namespace)
    exec(textwrap.dedent(inspect.getsource(evalplus_eval.untrusted_check)), namespace)
    return namespace["untrusted_check"]


# ---- tasks in EvalPlus's format ----

def _he(p, base, plus, atol=0):
    return {"task_id": p.task_id, "prompt": p.prompt, "entry_point": p.entry_point,
            "canonical_solution": p.canonical_solution, "test": p.test, "contract": "",
            "base_input": base, "plus_input": plus, "atol": atol}


def _mbpp(n, entry_point, text, canonical, base, plus, atol=0):
    return {"task_id": f"Mbpp/{n}", "prompt": f'"""\n{text}\n"""\n', "entry_point": entry_point,
            "canonical_solution": canonical, "test": "", "contract": "",
            "base_input": base, "plus_input": plus, "atol": atol}


def humaneval_tasks(he):
    return [
        _he(he["HumanEval/0"], [[[1.0, 2.0, 3.0], 0.5], [[1.0, 2.8, 3.0, 4.0, 5.0, 2.0], 0.3]],
            [[[1.0, 2.0], 1.5], [[], 1.0], [[5.0, 5.5, 9.0], 0.1]]),
        _he(he["HumanEval/2"], [[3.5], [1.33], [123.456]], [[0.0001], [1000000.25], [7.0]]),
        _he(he["HumanEval/4"], [[[1.0, 2.0, 3.0]]], [[[1.0, 2.0, 3.0, 4.0]], [[1e9, 3e9]]]),
        _he(he["HumanEval/32"], [[[1, 2]], [[-6, 11, -6, 1]]], [[[-3, -6, -7, 7]], [[-10, -2]]], 1e-6),
    ]


def mbpp_tasks():
    return [
        _mbpp(2, "similar_elements", "Write a function to find the shared elements from the given two lists.\n"
              "assert set(similar_elements((3, 4, 5, 6),(5, 7, 4, 10))) == set((4, 5))",
              "def similar_elements(test_tup1, test_tup2):\n  return tuple(set(test_tup1) & set(test_tup2))\n",
              [[[3, 4, 5, 6], [5, 7, 4, 10]], [[1, 2, 3, 4], [5, 4, 3, 7]], [[11, 12, 14, 13], [17, 15, 14, 13]]],
              [[[1, 2, 3], [4, 5, 6]], [[1, 1, 2], [2, 2, 3]]]),
        _mbpp(63, "max_difference", "Write a function to find the maximum difference between available pairs "
              "in the given tuple list.\nassert max_difference([(3, 5), (1, 7), (10, 3), (1, 2)]) == 7",
              "def max_difference(test_list):\n  temp = [abs(b - a) for a, b in test_list]\n  return max(temp)\n",
              [[[[3, 5], [1, 7], [10, 13], [1, 2]]], [[[4, 6], [2, 17], [9, 13], [11, 12]]]],
              [[[[5, -3], [1, 1]]], [[[0, 0]]]]),
        _mbpp(124, "angle_complex", "Write a function to get the angle of a complex number.\n"
              "assert math.isclose(angle_complex(0,1j), 1.5707963267948966, rel_tol=0.001)",
              "import cmath\ndef angle_complex(a,b):\n  angle=cmath.phase(a+b)\n  return angle\n",
              [[0, "1j"], [2, "1j"], [0, "2j"]], [[-1, "1j"], [3.5, "-2j"]]),
        _mbpp(581, "surface_Area", "Write a python function to find the surface area of a square pyramid "
              "with a given base edge and height.\nassert surface_Area(3,4) == 33",
              "def surface_Area(b,s):\n    return 2 * b * s + pow(b,2)\n",
              [[3, 4], [4, 5], [1, 2]], [[10, 20], [7, 1]]),
        _mbpp(787, "text_match_three", "Write a function that matches a string that has an a followed by "
              "three 'b'.\nassert not text_match_three(\"ac\")",
              "import re\ndef text_match_three(text):\n        patterns = 'ab{3}?'\n"
              "        return re.search(patterns, text)\n",
              [["ac"], ["dc"], ["abbbba"]], [["caacabbbba"], [""], ["abbb"]]),
        # outputs that are floats for some inputs only: the atol EvalPlus enforces after a float
        # output holds for the inputs after it, so the order of inputs matters
        _mbpp(901, "halves", "Write a function that halves odd numbers and floor-halves even ones.",
              "def halves(xs):\n    return [x / 2 if x % 2 else x // 2 for x in xs]\n",
              [[[3]], [[3, 4]]], [[[3, 4]], [[3]]]),
    ]


BODY_0 = ("    for i, a in enumerate(numbers):\n        for j, b in enumerate(numbers):\n"
          "            if i != j and abs(a - b) < threshold:\n                return True\n    return False\n")
MAD = "    m = sum(numbers) / len(numbers)\n    mad = sum(abs(x - m) for x in numbers) / len(numbers)\n"
# (task_id, completion, base passes, plus passes)
CASES = [
    ("HumanEval/0", BODY_0, True, True),
    ("HumanEval/0", "    if not numbers:\n        return True\n" + BODY_0, True, False),  # wrong on [] only
    ("HumanEval/0", "    return True\n", False, False),
    # sanitized as EvalPlus's codegen does: a tail cut at the token limit and stray top-level
    # code go, so these pass
    ("HumanEval/0", BODY_0 + "\n\ndef extra(xs):\n    return [x for x in", True, True),
    ("HumanEval/0", BODY_0 + "\nassert has_close_elements([1.0, 1.05], 0.1) is False\n", True, True),
    ("HumanEval/0", "    raise ValueError('boom')\n    return False\n", False, False),
    ("HumanEval/0", "    print('noise')\n\tprint('tab')\n" + BODY_0, True, True),    # output swallowed, tabs
    ("HumanEval/0", "    return open('x').read() == ''\n", False, False),             # open is disabled
    ("HumanEval/0", "    import os\n    os.getcwd()\n" + BODY_0, False, False),     # so is os.getcwd
    ("HumanEval/0", "    import sys\n    sys.stdout.buffer.write(b'')\n" + BODY_0, False, False),  # swallowed
    ("HumanEval/2", "    return number % 1.0\n", True, True),
    ("HumanEval/2", "    return number - int(number) + 1e-9\n", True, True),          # within atol 1e-6
    ("HumanEval/2", "    return number - int(number) + 1e-3\n", False, False),
    ("HumanEval/2", "    return 0.0 if number < 0.001 else number % 1.0 + 1e-3 * (number > 1e5)\n", True, False),
    ("HumanEval/2", "    return round(number % 1.0, 2)\n", False, False),
    ("HumanEval/2", "    while True:\n        pass\n", False, False),
    ("HumanEval/4", "    import statistics\n    m = statistics.mean(numbers)\n"
                    "    return sum(abs(x - m) for x in numbers) / len(numbers)\n", True, True),
    ("HumanEval/4", "    return 2 / 3\n", True, False),
    ("HumanEval/4", f"{MAD}    return mad * (1 + 5e-8)\n", True, True),           # within rtol 1e-7 at 1e9
    ("HumanEval/4", f"{MAD}    return mad * (1 + 5e-7)\n", True, False),          # beyond it
    ("HumanEval/4", "    return 1\n", False, False),                                  # an int, not a float
    ("HumanEval/4", "    while True:\n        try:\n            while True:\n                pass\n"
                    "        except BaseException:\n            pass\n    return 0.0\n", False, False),  # swallows the alarm
    ("HumanEval/32", None, True, True),                                               # the canonical one
    ("HumanEval/32", "    import numpy as np\n    r = np.roots(xs[::-1])\n"
                     "    return float(r[np.argmin(abs(r.imag))].real)\n", True, True),  # maybe another root
    ("HumanEval/32", "    return 0.0\n", False, False),
    ("Mbpp/2", "def similar_elements(a, b):\n    return tuple(sorted(set(a) & set(b), reverse=True))\n",
     True, True),
    ("Mbpp/2", "def similar_elements(a, b):\n    return [x for x in a if x in b]\n", True, True),
    ("Mbpp/2", "def similar_elements(a, b):\n    assert isinstance(a, tuple)\n    return set(a) & set(b)\n",
     True, True),                                                                     # tuples, as EvalPlus
    ("Mbpp/2", "def similar_elements(a, b):\n    return tuple(x for x in a if x in b) if len(a) > 3 else (1,)\n",
     True, False),
    ("Mbpp/2", "def similar_elements(a, b):\n    return tuple(set(a) | set(b))\n", False, False),
    ("Mbpp/63", "def max_difference(pairs):\n    assert all(isinstance(p, tuple) for p in pairs)\n"
                "    return max(abs(a - b) for a, b in pairs)\n", True, True),
    ("Mbpp/63", "def max_difference(pairs):\n    return max(b - a for a, b in pairs)\n", True, False),
    ("Mbpp/124", "import math\ndef angle_complex(a, b):\n    return math.atan2(b.imag, a)\n", True, True),
    ("Mbpp/124", "import math\ndef angle_complex(a, b):\n    return math.atan2(b.imag, a) + 1e-3\n", False, False),
    ("Mbpp/124", "import math\ndef angle_complex(a, b):\n    return abs(math.atan2(b.imag, a))\n", True, False),
    ("Mbpp/581", "def surface_Area(b, s):\n    return b * b + 2 * b * s\n", True, True),
    ("Mbpp/581", "import math\ndef surface_Area(b, h):\n"
                 "    return round(b * b + 2 * b * math.sqrt((b / 2) ** 2 + h * h))\n",
     True, True),                                                                     # the oracle's reading
    ("Mbpp/581", "def surface_Area(b, s):\n    return b * s\n", False, False),
    ("Mbpp/787", "import re\ndef text_match_three(text):\n    return re.search('abbb', text) is not None\n",
     True, True),
    ("Mbpp/787", "import re\ndef text_match_three(text):\n    return re.search('ab{3}', text)\n", True, True),
    ("Mbpp/787", "def text_match_three(text):\n    return 'Found' if 'abbb' in text else 'Not matched!'\n",
     False, False),                                                                   # never None
    ("Mbpp/787", "def text_match_three(text):\n    return 'abbb' in text and text != 'abbb'\n", True, False),
    ("Mbpp/787", "exit()\n", False, False),                                           # exit is disabled
    ("Mbpp/901", "def halves(xs):\n    return [x / 2 if x % 2 else x // 2 for x in xs]\n", True, True),
    ("Mbpp/901", "def halves(xs):\n    return [x / 2 + 1e-9 if x % 2 else x // 2 for x in xs]\n", True, False),
]


def _write(path: Path, objs) -> Path:
    path.write_text("".join(json.dumps(o) + "\n" for o in objs))
    return path


@pytest.fixture(scope="module")
def plus_files(tmp_path_factory, humaneval):
    d = tmp_path_factory.mktemp("plus")
    return _write(d / "HumanEvalPlus-mini.jsonl", humaneval_tasks(humaneval)), \
        _write(d / "MbppPlus-mini.jsonl", mbpp_tasks())


def _reference(obj, completion, deserialize, untrusted_check):
    """EvalPlus's verdicts, computed as its evaluate() does: expected outputs from trusted_exec,
    the solution its codegen builds, check_correctness's two untrusted_checks (fast_check)."""
    from evalplus.eval import MBPP_OUTPUT_NOT_NONE_TASKS
    from evalplus.gen.util import trusted_exec
    dataset = "mbpp" if obj["task_id"].startswith("Mbpp/") else "humaneval"
    solution = tool_sanitize("evalplus")(obj["prompt"].strip() + "\n" + completion.replace("\t", "    "),
                                         obj["entry_point"])
    stats = []
    for key in ("base_input", "plus_input"):
        inputs = deserialize(obj["task_id"], obj[key]) if dataset == "mbpp" else obj[key]
        not_none = dataset == "mbpp" and obj["entry_point"] in MBPP_OUTPUT_NOT_NONE_TASKS
        expected, ref_time = trusted_exec(obj["prompt"] + obj["canonical_solution"], inputs,
                                          obj["entry_point"], record_time=True, output_not_none=not_none)
        stats.append(untrusted_check(dataset, solution, inputs, obj["entry_point"], expected, obj["atol"],
                                     ref_time, fast_check=True)[0])
    return stats[0] == "pass", stats[0] == stats[1] == "pass"


def test_verdicts_equal_evalplus(plus_files, humaneval, evalplus_eval):
    if multiprocessing.get_start_method() != "fork":
        pytest.skip("the find_zero reference is a patched function that only a forked process can run")
    objs = {o["task_id"]: o for o in humaneval_tasks(humaneval) + mbpp_tasks()}
    problems = {p.task_id: p for f in plus_files for p in load_problems(f)}
    cases = [(t, objs[t]["canonical_solution"] if c is None else c, b, pl) for t, c, b, pl in CASES]
    # EvalPlus first, one check at a time: it forks, which is best done without other threads
    deserialize, fixed = _evalplus_mbpp_deserialize(), _fixed_untrusted_check(evalplus_eval)
    ref = [_reference(objs[t], c, deserialize, fixed if t == "HumanEval/32" else evalplus_eval.untrusted_check)
           for t, c, _, _ in cases]
    with ThreadPoolExecutor(4) as pool:
        ours = list(pool.map(lambda case: check_plus(problems[case[0]], case[1], Limits(timeout_s=10)), cases))
    for (task_id, completion, base, plus), r, o in zip(cases, ref, ours):
        assert (o["base_passed"], o["passed"]) == r == (base, plus), (task_id, completion, o, r)
        for k in ("base_", ""):
            assert (o[f"{k}result"] == "passed") == o[f"{k}passed"]
            assert o[f"{k}result"] in ("passed", "timed out") or o[f"{k}result"].startswith("failed: ")
    by_case = {(t, c): o for (t, c, _, _), o in zip(cases, ours)}
    assert by_case[("HumanEval/2", "    while True:\n        pass\n")]["base_result"] == "timed out"
    swallows_alarm = next(c for t, c, _, _ in CASES if "BaseException" in (c or ""))
    assert by_case[("HumanEval/4", swallows_alarm)]["result"] == "timed out"    # the whole-check limit
    assert by_case[("HumanEval/4", "    return 1\n")]["base_result"] == \
        "failed: base input 1/1: returned int, expected float"
    assert by_case[("HumanEval/0", "    raise ValueError('boom')\n    return False\n")]["result"] == \
        "failed: base input 1/2: ValueError: boom"
    assert by_case[("HumanEval/0", CASES[1][1])]["result"] == "failed: plus input 2/3: wrong output"


def test_evalplus_031_fails_every_find_zero(humaneval, evalplus_eval):
    """The reason HumanEval/32 is checked with the fix: 0.3.1 fails even the canonical solution."""
    if not _find_zero_fixed(evalplus_eval)[1]:
        pytest.skip("this EvalPlus release has the find_zero fix")
    obj = humaneval_tasks(humaneval)[3]
    base, plus = _reference(obj, obj["canonical_solution"], None, evalplus_eval.untrusted_check)
    assert (base, plus) == (False, False)


def test_mbpp_input_fixups_equal_evalplus(evalplus_eval):
    theirs = _evalplus_mbpp_deserialize()
    shapes = [[[[1, 2], [3, 4]]], [[[[1, 2], [3, 4]], [[5, 6]]]], [[[[1, 2], [3, 4]], 5]], [[7, [1, 2]]],
              [[[[1, 2], []]]], [[1.5, "2j"]], [["1+2j"]], [[[1, 2], 3, 4]], [[{"a": [1, 2]}, 5]],
              [[[1, [2, [3]]], [4]]], [[[[1, 2], 3]]], [[[1, 2], [3, [4]]], [[5, 6], [7, 8]]]]
    compared = 0
    for n in range(1, 1000):
        for raw in shapes:
            outcome = []
            for fn in (mbpp_inputs, theirs):
                try:
                    value = fn(f"Mbpp/{n}", json.loads(json.dumps(raw)))
                    outcome.append(repr(value))  # repr tells tuple, list, set, dict, complex apart
                except Exception as e:
                    outcome.append(type(e).__name__)
            assert outcome[0] == outcome[1], (n, raw, outcome)
            compared += "Error" not in outcome[0]
    assert compared > 5000


# ---- the runner and the command line ----

class Fake:
    """Per task: the canonical solution, one wrong on plus inputs only, or a wrong one."""
    concurrency = 1
    PLAN = {"HumanEval/0": "    if not numbers:\n        return True\n" + BODY_0,
            "HumanEval/2": "    return number % 1.0\n", "HumanEval/4": "    return 1\n"}

    def __init__(self, problems):
        self.by_prompt = {p.prompt: p for p in problems}
        self.calls = 0

    def complete(self, prompt, *, max_tokens, temperature, top_p, stop, seed):
        self.calls += 1
        p = self.by_prompt[prompt]
        if p.task_id == "HumanEval/32":
            return Completion("", TOO_LONG, 0)
        return Completion(self.PLAN[p.task_id], "stop", 5)


def _run(problems, out, backend, **kw):
    return evaluate(backend, model="fake", benchmark="HumanEvalPlus-mini", problems=problems, out=out,
                    workers=2, progress=False, say=lambda m: None, limits=Limits(timeout_s=10), **kw)


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_runner_reports_base_and_plus(tmp_path, plus_files):
    problems = load_problems(plus_files[0])
    assert [p.prompt for p in problems] == [p.prompt.strip() + "\n" for p in problems]
    fake = Fake(problems)
    s = _run(problems, tmp_path, fake)
    assert s["pass@k"] == {"pass@1": 0.25} and s["base_pass@k"] == {"pass@1": 0.5}
    assert (s["samples_passed"], s["base_samples_passed"], s["problems_solved"], s["base_problems_solved"]) == \
        (1, 2, 1, 2)
    assert s["results"] == {"passed": 1, "failed": 3, "timed out": 0}
    assert s["base_results"] == {"passed": 2, "failed": 2, "timed out": 0} and s["prompts_too_long"] == 1
    assert summary_line(s) == ("HumanEvalPlus-mini: pass@1 0.2500 (1/4), base 0.5000 (2/4); "
                               "1 prompt(s) longer than the model's context, counted as failed")
    results = {r["task_id"]: r for r in _jsonl(tmp_path / "results.jsonl")}
    assert results["HumanEval/0"] == {"task_id": "HumanEval/0", "sample": 0, "passed": False,
                                      "result": "failed: plus input 2/3: wrong output",
                                      "base_passed": True, "base_result": "passed"}
    assert results["HumanEval/32"]["base_result"] == "failed: the prompt is longer than the model's context"
    assert json.loads((tmp_path / "summary.json").read_text())["base_pass@k"] == {"pass@1": 0.5}
    # resume: nothing again; a results line without the base verdict is run again
    s = _run(problems, tmp_path, fake)
    assert fake.calls == 4 and s["this_run"]["executed"] == 0 and s["pass@k"] == {"pass@1": 0.25}
    lines = _jsonl(tmp_path / "results.jsonl")
    (tmp_path / "results.jsonl").write_text("".join(
        json.dumps({k: v for k, v in r.items() if not k.startswith("base_")} if r["task_id"] == "HumanEval/2"
                   else r) + "\n" for r in lines))
    s = _run(problems, tmp_path, fake)
    assert s["this_run"]["executed"] == 1 and s["base_pass@k"] == {"pass@1": 0.5}
    # a changed problems file (other plus inputs, same prompts) is refused
    objs = [json.loads(line) for line in plus_files[0].read_text().splitlines()]
    objs[1]["plus_input"].append([2.5])
    changed = load_problems(_write(tmp_path / "changed.jsonl", objs))
    with pytest.raises(EvalError, match="problems_digest"):
        _run(changed, tmp_path, fake)
    # with samples: pass@k for both
    s = _run(problems, tmp_path / "sampled", Fake(problems), gen=Generation(samples=10, temperature=0.5), limit=1)
    assert s["pass@k"] == {"pass@1": 0.0, "pass@10": 0.0} and s["base_pass@k"] == {"pass@1": 1.0, "pass@10": 1.0}
    assert summary_line(s) == ("HumanEvalPlus-mini: pass@1 0.0000, pass@10 0.0000 (1 problems x 10 samples), "
                               "base pass@1 1.0000, pass@10 1.0000")


pytestmark = pytest.mark.usefixtures("keep_torch_threads")


def eval_cli(*args) -> int:
    return cli.main(["eval", *map(str, args), "--quiet"])


def test_tiny_model_end_to_end(tmp_path, hf_dir, capsys, plus_files):
    for file, dataset in zip(plus_files, ("humaneval", "mbpp")):
        out = tmp_path / dataset
        assert eval_cli(hf_dir, "--problems", file, "--limit", 2, "--out", out) == 0
        line = capsys.readouterr().out.strip().splitlines()[-1]
        s = json.loads((out / "summary.json").read_text())
        results = _jsonl(out / "results.jsonl")
        assert s["generation"]["stop"] == list(STOP[dataset]) and s["generation"]["max_new_tokens"] == 768
        assert s["problems"] == 2 and len(results) == 2 and all("base_passed" in r for r in results)
        plus, base = sum(r["passed"] for r in results), sum(r["base_passed"] for r in results)
        assert s["pass@k"] == {"pass@1": plus / 2} and s["base_pass@k"] == {"pass@1": base / 2}
        assert line == f"{file.name[:-6]}: pass@1 {plus / 2:.4f} ({plus}/2), base {base / 2:.4f} ({base}/2)"
        for sample in _jsonl(out / "samples.jsonl"):
            assert not any(stop in sample["completion"] for stop in STOP[dataset])
        # resume: nothing generated or run again
        assert eval_cli(hf_dir, "--problems", file, "--limit", 2, "--out", out) == 0
        again = json.loads((out / "summary.json").read_text())
        assert again["this_run"]["generated"] == again["this_run"]["executed"] == 0
        assert again["pass@k"] == s["pass@k"] and again["base_pass@k"] == s["base_pass@k"]
    # the same prompts with other plus inputs: refused
    objs = [json.loads(line) for line in plus_files[0].read_text().splitlines()]
    objs[0]["plus_input"] = objs[0]["plus_input"][:1]
    changed = _write(tmp_path / plus_files[0].name, objs)
    assert eval_cli(hf_dir, "--problems", changed, "--limit", 2, "--out", tmp_path / "humaneval") == 2
    assert "problems_digest" in capsys.readouterr().err


def test_prompt_and_candidate_follow_evalplus_codegen(plus_files):
    p = load_problems(plus_files[1])[0]
    assert p.prompt == '"""\nWrite a function to find the shared elements from the given two lists.\n' \
                       'assert set(similar_elements((3, 4, 5, 6),(5, 7, 4, 10))) == set((4, 5))\n"""\n'
    assert p.test == "" and p.evalplus.dataset == "mbpp" and p.evalplus.atol == 0
    assert candidate_code(p.prompt, "def similar_elements(a, b):\n\treturn 1\nprint(2)\n", p.entry_point) == \
        "def similar_elements(a, b):\n    return 1"


def test_bad_evalplus_files_name_the_file_and_line(tmp_path, capsys, humaneval, plus_files):
    good = humaneval_tasks(humaneval)[0]
    mb = mbpp_tasks()[0]
    cases = {
        "missing.jsonl": ([good, {k: v for k, v in good.items() if k != "plus_input"}],
                          ":2: missing plus_input (an EvalPlus task needs"),
        "prefix.jsonl": ([{**good, "task_id": "Other/1"}], ":1: task_id 'Other/1' is not an EvalPlus task"),
        "inputs.jsonl": ([good, {**mb, "task_id": "HumanEval/9", "base_input": {"a": 1}}],
                         ":2: 'base_input' must be a list of argument lists, got dict"),
        "args.jsonl": ([{**good, "plus_input": [[1], 2]}],
                       ":1: plus_input[1] must be a list of arguments, got int"),
        "atol.jsonl": ([{**good, "atol": "small"}], ":1: 'atol' must be a number >= 0"),
        "fixup.jsonl": ([{**mb, "base_input": [[3, 4]]}],
                        ":1: base_input does not fit EvalPlus's input format for Mbpp/2 (TypeError"),
        "mixed.jsonl": ([good, mb], ":2: 'Mbpp/2' is not a task of the same EvalPlus dataset as line 1's"),
        "kinds.jsonl": ([vars(next(iter(humaneval.values()))), good],
                        ":2: an EvalPlus task (base_input, plus_input) in a file of HumanEval-format"),
        "dup.jsonl": ([good, good], ":2: task_id 'HumanEval/0' already on line 1"),
        "mbppid.jsonl": ([{**mb, "task_id": "Mbpp/x"}], ":1: task_id 'Mbpp/x': an MBPP+ task is Mbpp/<number>"),
    }
    for name, (objs, expected) in cases.items():
        file = _write(tmp_path / name, [{k: v for k, v in o.items() if k != "evalplus"} for o in objs])
        assert eval_cli(tmp_path, "--problems", file, "--out", tmp_path / "o") == 2, name
        assert f"{file}{expected}" in capsys.readouterr().err, name
    with pytest.raises(ProblemError, match=r"he\.jsonl:2: missing base_input, plus_input, atol"):
        load_problems(_write(tmp_path / "he.jsonl", [good, vars(next(iter(humaneval.values())))]))
    # as EvalPlus releases them: gzip, the benchmark named after the file
    with gzip.open(tmp_path / "HumanEvalPlus-v0.1.10.jsonl.gz", "wt") as f:
        f.write(plus_files[0].read_text())
    name, _, problems = load_benchmark(None, tmp_path / "HumanEvalPlus-v0.1.10.jsonl.gz")
    assert name == "HumanEvalPlus-v0.1.10" and [p.task_id for p in problems] == \
        ["HumanEval/0", "HumanEval/2", "HumanEval/4", "HumanEval/32"]
