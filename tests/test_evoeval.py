"""`snowtrain eval` on EvoEval's own files against evoeval 0.1.0 itself: for right, wrong, nearly
right (floats), wrongly typed, raising, exiting, looping and chatty completions of EvoEval-style
tasks, and others that pass only through evoeval's special oracles (a palindrome of another case,
another root in the interval, another pair of factors), our verdict equals
evoeval.eval_test.untrusted_check's on the expected outputs evoeval's get_groundtruth computes
(EvalPlus's trusted_exec); then the loader's errors, the stop sequences and the command line end to
end with a tiny model."""
from __future__ import annotations

import json
import multiprocessing
import pickle
from collections import Counter  # noqa: F401 - evoeval's evaluate.py has it for the input texts
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from snowtrain import cli
from snowtrain.evaluation import evoeval
from snowtrain.evaluation.execution import Limits
from snowtrain.evaluation.problems import ProblemError, load_problems


def _task(n, signature, doc, body, inputs):
    name = signature.split("(")[0]
    return {"task_id": f"EvoEval/{n}", "prompt": f'def {signature}:\n    """{doc}"""\n', "entry_point": name,
            "canonical_solution": body, "inputs": inputs, "parent": f"HumanEval/{n}"}


DIFFICULT = [
    _task(0, "odd_square_mean(xs)", "Mean of the squares of the odd numbers in xs (0.0 when none).",
          "    odd = [x * x for x in xs if x % 2 == 1]\n    return sum(odd) / len(odd) if odd else 0.0\n",
          ["[1, 2, 3]", "[]", "[7]", "[1, 3, 5, 8]"]),
    _task(10, "make_palindrome(string)", "Shortest palindrome, case-insensitively, that starts with string.",
          "    for i in range(len(string) + 1):\n        tail = string[i:]\n"
          "        if tail.lower() == tail[::-1].lower():\n            return string + string[:i][::-1]\n",
          ["'cat'", "'Abc'", "''", "'aBa'"]),
    _task(32, "find_zero(xs, interval)", "A root of the polynomial xs in the interval, or None.",
          "    lo, hi = interval\n    f = lambda x: sum(c * x ** i for i, c in enumerate(xs))\n"
          "    if f(lo) * f(hi) > 0:\n        return None\n    for _ in range(200):\n        mid = (lo + hi) / 2\n"
          "        if f(lo) * f(mid) <= 0:\n            hi = mid\n        else:\n            lo = mid\n    return lo\n",
          ["[-1, 0, 1], (0, 2)", "[1, 0, 1], (0, 1)", "[-6, 1, 1], (0, 5)"]),
    _task(5, "pairs(xs)", "Adjacent pairs of xs as a tuple of tuples.",
          "    return tuple((xs[i], xs[i + 1]) for i in range(len(xs) - 1))\n",
          ["[1, 2, 3]", "[]"]),
    _task(7, "top(counts, k)", "The k most common keys of a Counter, most common first.",
          "    return [key for key, _ in counts.most_common(k)]\n",
          ["Counter('abca'), 2", "Counter({'x': 2, 'y': 5}), 1"]),
]
CREATIVE = [
    _task(69, "magic_pair(arr, target)", "Indices i < j with arr[i] * arr[j] == target, or 'No magic today'.",
          "    for i in range(len(arr)):\n        for j in range(i + 1, len(arr)):\n"
          "            if arr[i] * arr[j] == target:\n                return (i, j)\n    return 'No magic today'\n",
          ["[2, 3, 4, 6], 12", "[1, 2], 5", "[3, 4, 2, 6], 12"]),
]

# (file, task, completion, passes)
CASES = [
    ("difficult", 0, DIFFICULT[0]["canonical_solution"], True),
    ("difficult", 0, "    odd = [x * x for x in xs if x % 2]\n    return sum(odd) / len(odd) + 1e-9 if odd else 0.0\n",
     True),                                                                    # within atol 1e-6
    ("difficult", 0, "    odd = [x * x for x in xs if x % 2]\n    return sum(odd) / len(odd) if odd else 0\n",
     False),                                                                   # 0, not 0.0: types differ
    ("difficult", 0, "    return sum(x * x for x in xs)\n", False),
    ("difficult", 0, "    print('thinking ' * 100)\n" + DIFFICULT[0]["canonical_solution"], True),
    ("difficult", 0, "    raise ValueError('no')\n", False),
    ("difficult", 0, "    exit(0)\n", False),                                 # exit is gone
    ("difficult", 0, "    while True:\n        pass\n", False),
    ("difficult", 10, DIFFICULT[1]["canonical_solution"], True),
    ("difficult", 10, "    for i in range(len(string) + 1):\n        tail = string[i:]\n"
                      "        if tail.lower() == tail[::-1].lower():\n"
                      "            return string + string[:i][::-1].upper()\n", True),  # oracle: any case
    ("difficult", 10, "    return string + string[::-1]\n", False),          # a palindrome, not the shortest
    ("difficult", 32, DIFFICULT[2]["canonical_solution"], True),
    ("difficult", 32, "    lo, hi = interval\n    f = lambda x: sum(c * x ** i for i, c in enumerate(xs))\n"
                      "    if f(lo) * f(hi) > 0:\n        return None\n    return [x / 1000 for x in range(lo * 1000, "
                      "hi * 1000 + 1) if abs(f(x / 1000)) <= 0.01][0]\n", True),        # within 2e-2
    ("difficult", 32, "    return interval[0]\n", False),
    ("difficult", 5, DIFFICULT[3]["canonical_solution"], True),
    ("difficult", 5, "    return [(xs[i], xs[i + 1]) for i in range(len(xs) - 1)]\n", False),  # a list
    ("difficult", 7, DIFFICULT[4]["canonical_solution"], True),                # inputs built with Counter
    ("difficult", 7, "    return sorted(counts)[:k]\n", False),
    ("creative", 69, CREATIVE[0]["canonical_solution"], True),
    ("creative", 69, "    for j in range(len(arr) - 1, -1, -1):\n        for i in range(j):\n"
                     "            if arr[i] * arr[j] == target:\n                return (i, j)\n"
                     "    return 'No magic today'\n", True),                  # another pair: the oracle
    ("creative", 69, "    return (0, 1)\n", False),
]


def _write(path: Path, objs) -> Path:
    path.write_text("".join(json.dumps(o) + "\n" for o in objs))
    return path


@pytest.fixture(scope="module")
def evo_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("evo")
    return {"difficult": _write(d / "EvoEval_difficult.jsonl", DIFFICULT),
            "creative": _write(d / "EvoEval_creative.jsonl", CREATIVE)}


@pytest.fixture(scope="module")
def evo_check():
    module = pytest.importorskip("evoeval.eval_test", reason="evoeval (pip install --no-deps evoeval) "
                                 "is the reference these tests compare with")
    return module.untrusted_check


def _reference(untrusted_check, dataset, task, completion) -> bool:
    """evoeval's verdict as its evaluate() makes it for one of the five main benchmarks."""
    from evalplus.gen.util import trusted_exec
    inputs = [eval(f"[{i}]") for i in task["inputs"]]
    expected, ref_time = trusted_exec(task["prompt"] + "\n" + task["canonical_solution"], inputs,
                                      task["entry_point"], record_time=True, output_not_none=False)
    stat, _ = untrusted_check(dataset, task["prompt"] + completion, inputs, task["entry_point"],
                              task_id=task["task_id"], expected=expected, atol=0, ref_time=ref_time,
                              fast_check=True, min_time_limit=1, gt_time_limit_factor=4.0)
    return stat == "pass"


def test_verdicts_equal_evoeval(evo_files, evo_check):
    if multiprocessing.get_start_method() != "fork":
        pytest.skip("evoeval's untrusted_check is run here as it runs on Linux, in a forked process")
    tasks = {(k, int(t["task_id"].split("/")[1])): t for k, ts in (("difficult", DIFFICULT), ("creative", CREATIVE))
             for t in ts}
    problems = {(k, int(p.task_id.split("/")[1])): p for k, f in evo_files.items() for p in load_problems(f)}
    ref = [_reference(evo_check, f"EvoEval_{k}", tasks[(k, n)], c) for k, n, c, _ in CASES]
    with ThreadPoolExecutor(2) as pool:
        ours = list(pool.map(lambda case: evoeval.check_evo(problems[case[:2]], case[2], Limits(timeout_s=10)),
                             CASES))
    for (k, n, completion, want), r, o in zip(CASES, ref, ours):
        assert (o["passed"], r) == (want, want), (k, n, completion, o)
        assert (o["result"] == "passed") == o["passed"]
    results = [o["result"] for o in ours]
    assert results[2] == "failed: input 2/4: wrong output"  # 0, not 0.0, for []
    assert results[5] == "failed: input 1/4: ValueError: no"
    assert results[7] == "timed out"


def test_loader_prompt_and_errors(evo_files, tmp_path):
    p = load_problems(evo_files["difficult"])[0]
    assert p.kind == "evoeval" and p.prompt == DIFFICULT[0]["prompt"] and p.test == ""
    assert p.evoeval.dataset == "evoeval_difficult" and evoeval.kind_of("EvoEval_tool_use") == "tool_use"
    assert pickle.loads(p.evoeval.inputs) == [[[1, 2, 3]], [[]], [[7]], [[1, 3, 5, 8]]]  # argument lists
    counted = pickle.loads(load_problems(evo_files["difficult"])[4].evoeval.inputs)
    assert counted == [[Counter("abca"), 2], [Counter({"x": 2, "y": 5}), 1]]   # evoeval's names: Counter
    good = DIFFICULT[0]
    cases = {
        "missing": ([good, {k: v for k, v in good.items() if k != "canonical_solution"}],
                    ":2: missing canonical_solution (an EvoEval task needs"),
        "inputs_type": ([{**good, "inputs": [[1, 2]]}], ":1: 'inputs' must be a list of argument-list texts"),
        "bad_input": ([{**good, "inputs": ["1, (2"]}], ":1: inputs[0] is not an argument list"),
        "unknown_name": ([{**good, "inputs": ["[1]", "no_such_name(2)"]}],
                         ":1: inputs[1] cannot be evaluated (NameError"),
        "dup": ([good, good], ":2: task_id 'EvoEval/0' already on line 1"),
        "mixed": ([good, {**good, "task_id": "EvoEval/1", "complete_prompt": "x", "code_prompt": "y"}],
                  ":2: the fields of a BigCodeBench task (complete_prompt, code_prompt) and of an EvoEval task"),
    }
    for name, (objs, expected) in cases.items():
        path = _write(tmp_path / f"{name}.jsonl", objs)
        with pytest.raises(ProblemError) as e:
            load_problems(path)
        assert f"{path}{expected}" in str(e.value), (name, str(e.value))


pytestmark = pytest.mark.usefixtures("keep_torch_threads")


def test_tiny_model_end_to_end(tmp_path, hf_dir, capsys, evo_files):
    out = tmp_path / "evo"
    args = ["eval", str(hf_dir), "--problems", str(evo_files["difficult"]), "--out", str(out), "--quiet"]
    assert cli.main(args) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    s = json.loads((out / "summary.json").read_text())
    assert s["generation"]["stop"] == list(evoeval.STOP) and s["generation"]["max_new_tokens"] == 512
    assert s["benchmark"] == "EvoEval_difficult" and s["problems"] == 5
    passed = s["samples_passed"]
    assert line == f"EvoEval_difficult: pass@1 {passed / 5:.4f} ({passed}/5)"
    for sample in (json.loads(x) for x in (out / "samples.jsonl").read_text().splitlines()):
        assert not any(stop in sample["completion"] for stop in evoeval.STOP)
    assert cli.main(args) == 0
    again = json.loads((out / "summary.json").read_text())
    assert again["this_run"]["generated"] == again["this_run"]["executed"] == 0
    assert "warning" not in capsys.readouterr().err
    renamed = _write(tmp_path / "test.jsonl", DIFFICULT)   # a name that says which oracles? none
    assert cli.main(["eval", str(hf_dir), "--problems", str(renamed), "--out", str(tmp_path / "r"), "--quiet",
                     "--limit", "1"]) == 0
    assert "'test' names none of EvoEval's benchmarks" in capsys.readouterr().err
