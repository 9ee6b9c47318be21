"""`snowtrain eval` on BigCodeBench's own files against bigcodebench 0.2.5 itself: for right, wrong,
partly right, raising, exiting, process-killing, looping, chatty and badly-ended completions of
BigCodeBench-style tasks (text, subprocesses, files in the working folder, numpy and matplotlib),
our verdict equals bigcodebench.eval.untrusted_check's on the solution its pipeline builds (its own
sanitizer, calibrated with the code prompt), and our canonical-solution check equals its
trusted_check; then the loader's file:line errors, the runner (scores, canonical.jsonl, resume) and
the command line end to end with a tiny model."""
from __future__ import annotations

import json
import multiprocessing
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from reference_tools import tool_sanitize

from snowtrain import cli
from snowtrain.evaluation import bigcodebench
from snowtrain.evaluation.backends import Completion
from snowtrain.evaluation.execution import Limits
from snowtrain.evaluation.problems import ProblemError, load_problems
from snowtrain.evaluation.runner import EvalError, evaluate, summary_line


def _task(n, imports, signature, doc, body, tests, libs):
    code_prompt = f"{imports}\ndef task_func({signature}):\n"
    return {"task_id": f"BigCodeBench/{n}", "complete_prompt": f'{imports}\n\ndef task_func({signature}):\n'
            f'    """\n    {doc}\n    """\n', "instruct_prompt": doc, "code_prompt": code_prompt,
            "canonical_solution": body, "test": "import unittest\n\nclass TestCases(unittest.TestCase):\n" + tests,
            "entry_point": "task_func", "doc_struct": "{}", "libs": repr(libs)}


TASKS = [
    _task(0, "import collections\nimport re", "text", "Count the words of a text, case-insensitively.",
          "    words = re.findall(r'\\w+', text.lower())\n    return dict(collections.Counter(words))\n",
          "    def test_basic(self):\n        self.assertEqual(task_func('a A b'), {'a': 2, 'b': 1})\n"
          "    def test_empty(self):\n        self.assertEqual(task_func(''), {})\n"
          "    def test_punct(self):\n        self.assertEqual(task_func('x, y; x!'), {'x': 2, 'y': 1})\n",
          ["collections", "re"]),
    _task(1, "import subprocess", "message", "Echo the message with the shell's echo; return its output.",
          "    out = subprocess.run(['echo', message], capture_output=True, text=True)\n"
          "    return out.stdout.strip()\n",
          "    def test_echo(self):\n        self.assertEqual(task_func('hello'), 'hello')\n"
          "    def test_two(self):\n        self.assertEqual(task_func('a b'), 'a b')\n",
          ["subprocess"]),
    _task(2, "import os", "name, lines", "Write the lines to a file in the working folder; return its size.",
          "    with open(name, 'w') as f:\n        f.write('\\n'.join(lines))\n    return os.path.getsize(name)\n",
          "    def test_size(self):\n        self.assertEqual(task_func('a.txt', ['ab', 'c']), 4)\n"
          "        self.assertTrue(os.path.exists('a.txt'))\n"
          "    def test_content(self):\n        task_func('b.txt', ['x'])\n"
          "        with open('b.txt') as f:\n            self.assertEqual(f.read(), 'x')\n",
          ["os"]),
    _task(3, "import numpy as np\nimport matplotlib.pyplot as plt", "n", "Plot the squares of 0..n-1; return the Axes.",
          "    fig, ax = plt.subplots()\n    ax.plot(np.arange(n) ** 2)\n    return ax\n",
          "    def test_line(self):\n        ax = task_func(4)\n"
          "        self.assertEqual(list(ax.get_lines()[0].get_ydata()), [0, 1, 4, 9])\n"
          "    def test_type(self):\n        import matplotlib.axes\n"
          "        self.assertIsInstance(task_func(2), matplotlib.axes.Axes)\n",
          ["numpy", "matplotlib"]),
    _task(4, "import snowtrain_no_such_lib", "x", "Needs a library that is not installed.",
          "    return snowtrain_no_such_lib.f(x)\n",
          "    def test_it(self):\n        self.assertEqual(task_func(1), 1)\n",
          ["snowtrain_no_such_lib"]),
]

# BigCodeBench's environment: an empty working folder, no file-size limit, the evaluator's PATH
# (python3), and the processes a program starts ended with it
ENV_TASK = _task(5, "import os\nimport subprocess", "n", "Write n MiB to a file, start a background sleep and "
          "return the folder's entries and what python3 prints.",
          "    with open('big.bin', 'wb') as f:\n        f.write(b'x' * (n << 20))\n"
          "    subprocess.Popen(['sleep', '61.5'])\n"
          "    out = subprocess.run(['python3', '-c', 'import numpy; print(3)'], capture_output=True, text=True)\n"
          "    return sorted(os.listdir('.')), out.stdout.strip()\n",
          "    def test_it(self):\n        self.assertEqual(os.listdir('.'), [])\n"
          "        self.assertEqual(task_func(80), (['big.bin'], '3'))\n",
          ["os", "subprocess"])


# (task, completion, passes)
CASES = [
    (0, TASKS[0]["canonical_solution"], True),
    (0, "    return {}\n", False),
    (0, "    return dict(collections.Counter(text.lower().split()))\n", False),   # passes one test of three
    (0, "    raise RuntimeError('no')\n", False),
    (0, "    exit(0)\n", False),                                                    # exit is gone
    (0, "    print('chatty ' * 1000)\n" + TASKS[0]["canonical_solution"], True),   # output swallowed
    (0, TASKS[0]["canonical_solution"] + "\n\nprint(task_func('a b'))\nassert task_func('') == {}\n\ndef tail(x):\n"
        "    return [x,", True),                                                    # sanitized away
    (0, "    import os, signal\n    os.kill(os.getppid(), signal.SIGKILL)\n" + TASKS[0]["canonical_solution"],
     True),                                                                         # the kill is refused
    (0, "    while True:\n        pass\n", False),                                  # the suite's time limit
    (1, TASKS[1]["canonical_solution"], True),
    (1, "    return subprocess.check_output(['echo', message]).decode().strip()\n", True),
    (1, "    return message.upper()\n", False),
    (2, TASKS[2]["canonical_solution"], True),
    (2, "    return 4\n", False),
    (3, TASKS[3]["canonical_solution"], True),
    (3, "    fig, ax = plt.subplots()\n    ax.plot(np.arange(n))\n    return ax\n", False),
    (4, TASKS[4]["canonical_solution"], False),
    (0, "\twords = re.findall(r'\\w+', text.lower())\n\treturn dict(collections.Counter(words))\n", True),  # tabs
    (5, ENV_TASK["canonical_solution"], True),
]


def _write(path: Path, objs) -> Path:
    path.write_text("".join(json.dumps(o) + "\n" for o in objs))
    return path


@pytest.fixture(scope="module")
def bcb_file(tmp_path_factory):
    return _write(tmp_path_factory.mktemp("bcb") / "BigCodeBench-mini.jsonl", TASKS)


def _task_of(n):
    return ENV_TASK if n == 5 else TASKS[n]


@pytest.fixture(scope="module")
def bcb_eval():
    """BigCodeBench's checking code (scripts/setup.sh installs it without its dependencies), with
    its 240 s suite limit shortened for the looping case."""
    module = pytest.importorskip("bigcodebench.eval", reason="bigcodebench (pip install --no-deps "
                                 "bigcodebench) is the reference these tests compare with")
    saved = module.TIMEOUT_LIMIT
    module.TIMEOUT_LIMIT = 2.0
    yield module
    module.TIMEOUT_LIMIT = saved


LIMITS = Limits(timeout_s=2.0, memory_gib=bigcodebench.MEMORY_GIB)


def _reference_verdict(bcb_eval, task, completion) -> bool:
    """BigCodeBench's verdict as its pipeline makes it: codegen's sanitize(prompt + completion),
    evaluate()'s calibration, check_correctness's untrusted_check with evaluate()'s limits."""
    completion = completion.replace("\t", "    ")  # as its providers do before codegen sanitizes
    solution = tool_sanitize("bigcodebench")(task["complete_prompt"] + completion, task["entry_point"])
    solution = task["code_prompt"] + "\n    pass\n" + solution
    stat, _ = bcb_eval.untrusted_check(solution, task["test"], task["entry_point"], 30 * 1024, 30 * 1024, 10,
                                       min_time_limit=1, gt_time_limit=20)
    return stat == "pass"


def test_verdicts_equal_bigcodebench(bcb_file, bcb_eval, tmp_path, monkeypatch):
    if multiprocessing.get_start_method() != "fork":
        pytest.skip("BigCodeBench's untrusted_check is run here as it runs on Linux, in a forked process")
    pytest.importorskip("matplotlib")
    import os
    import sys
    # the evaluator's environment has this interpreter's python3 (numpy included) on its PATH
    monkeypatch.setenv("PATH", os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")]))
    problems = {p.task_id: p for p in load_problems(bcb_file)}
    problems.update({p.task_id: p for p in load_problems(_write(tmp_path / "env.jsonl", [ENV_TASK]))})
    ref = [_reference_verdict(bcb_eval, _task_of(t), c) for t, c, _ in CASES]
    with ThreadPoolExecutor(2) as pool:
        ours = list(pool.map(lambda case: bigcodebench.check_bcb(problems[f"BigCodeBench/{case[0]}"], case[1],
                                                                 LIMITS), CASES))
    for (t, completion, want), r, o in zip(CASES, ref, ours):
        assert (o["passed"], r) == (want, want), (t, completion, o)
        assert (o["result"] == "passed") == o["passed"]
    results = [o["result"] for o in ours]
    assert results[1] == "failed: test_basic: AssertionError: {} != {'a': 2, 'b': 1} (and 1 more)"
    assert results[3] == "failed: test_basic: RuntimeError: no (and 2 more)"
    assert results[8] == "timed out"  # the suite's limit fires once, inside a test; the next test loops on
    assert results[15].startswith("failed: test_line: AssertionError: Lists differ: ")
    assert results[16] == "failed: ModuleNotFoundError: No module named 'snowtrain_no_such_lib'"
    # the background sleep of the environment task ended with its program, in both tools' runs
    import subprocess
    assert "sleep 61.5" not in subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout


def test_canonical_check_equals_bigcodebench(bcb_file, bcb_eval):
    if multiprocessing.get_start_method() != "fork":
        pytest.skip("BigCodeBench's trusted_check is run here as it runs on Linux, in a forked process")
    pytest.importorskip("matplotlib")
    from bigcodebench.gen.util import trusted_check
    for task, p in zip(TASKS, load_problems(bcb_file)):
        ref = trusted_check(task["complete_prompt"] + "\n" + task["canonical_solution"], task["test"],
                            task["task_id"], 30 * 1024, 30 * 1024, 10, min_time_limit=1)
        ours = bigcodebench.check_canonical(p, LIMITS)
        assert ours["passed"] == (ref["time"] is not None) == (task["task_id"] != "BigCodeBench/4"), (task, ours)


def test_prompt_stops_and_calibrated_solution(bcb_file):
    p = load_problems(bcb_file)[0]
    assert p.kind == "bigcodebench" and p.prompt == TASKS[0]["complete_prompt"] and "TestCases" in p.test
    assert p.bigcodebench.libs == ("collections", "re")
    code = bigcodebench.solution(p, "    return 1\n\nprint(task_func('x'))\n")
    assert code == (TASKS[0]["code_prompt"] + "\n    pass\n" + "import collections\nimport re\n"
                    'def task_func(text):\n    """\n    Count the words of a text, case-insensitively.\n'
                    '    """\n    return 1')
    assert bigcodebench.STOP == ("<|endoftext|>", "<|endofmask|>", "</s>", "\nif __name__", "\ndef main(",
                                 "\nprint(", "\ndef ", "\nclass ", "\nimport ", "\nfrom ", "\nassert ")


def test_bad_files_name_the_file_and_line(tmp_path):
    good = TASKS[0]
    cases = {
        "missing": ([good, {k: v for k, v in good.items() if k != "code_prompt"}], ":2: missing code_prompt"),
        "type": ([{**good, "test": 3}], ":1: 'test' must be a string, got int"),
        "no_testcases": ([{**good, "test": "def check(c):\n    pass\n"}], ":1: 'test' defines no TestCases"),
        "libs": ([{**good, "libs": "not a list ("}], ":1: 'libs' must be a list of library names"),
        "dup": ([good, good], ":2: task_id 'BigCodeBench/0' already on line 1"),
        "mixed_kinds": ([good, {"task_id": "HumanEval/0", "prompt": "def f():\n", "entry_point": "f",
                                "canonical_solution": "", "base_input": [], "plus_input": [], "atol": 0}],
                        ":2: an EvalPlus task (base_input, plus_input) in a file of BigCodeBench tasks (line 1"),
        "lost_fields": ([good, {"task_id": "BigCodeBench/9", "prompt": "x", "test": "", "entry_point": "f"}],
                        ":2: missing complete_prompt, code_prompt"),
        "both": ([{**good, "base_input": []}], ":1: the fields of an EvalPlus task"),
    }
    for name, (objs, expected) in cases.items():
        path = _write(tmp_path / f"{name}.jsonl", objs)
        with pytest.raises(ProblemError) as e:
            load_problems(path)
        assert f"{path}{expected}" in str(e.value), (name, str(e.value))


class Fake:
    """A backend that answers each task with its canonical solution, except the text task."""
    concurrency = 1

    def __init__(self):
        self.calls = 0

    def complete(self, prompt, *, max_tokens, temperature, top_p, stop, seed):
        self.calls += 1
        task = next(t for t in TASKS if t["complete_prompt"] == prompt)
        return Completion("    return {}\n" if task["task_id"] == "BigCodeBench/0" else task["canonical_solution"],
                          "stop", 5)


def test_runner_scores_and_checks_canonical_solutions(tmp_path, bcb_file):
    pytest.importorskip("matplotlib")
    problems, fake = load_problems(bcb_file), Fake()

    def run(limits=LIMITS):
        return evaluate(fake, model="fake", benchmark="BigCodeBench-mini", problems=problems, out=tmp_path,
                        workers=2, progress=False, say=lambda m: None, limits=limits)
    s = run()
    assert s["pass@k"] == {"pass@1": 0.6} and s["samples_passed"] == 3
    assert s["canonical"] == {"passed": 4, "problems": 5, "failed": ["BigCodeBench/4"]}
    assert s["missing_libraries"] == ["snowtrain_no_such_lib"]
    assert summary_line(s) == ("BigCodeBench-mini: pass@1 0.6000 (3/5); the canonical solution fails here on "
                               "1 of 5 tasks (missing: snowtrain_no_such_lib)")
    canonical = [json.loads(line) for line in (tmp_path / "canonical.jsonl").read_text().splitlines()]
    assert sorted(r["task_id"] for r in canonical) == [t["task_id"] for t in TASKS]
    # resume: nothing generated or run again, canonical solutions included
    s = run()
    assert fake.calls == 5 and s["this_run"]["executed"] == 0 and s["canonical"]["passed"] == 4
    assert len((tmp_path / "canonical.jsonl").read_text().splitlines()) == 5
    # other execution limits: every program again, the canonical ones too
    s = run(Limits(timeout_s=4.0, memory_gib=bigcodebench.MEMORY_GIB))
    assert s["this_run"]["executed"] == 5 and len((tmp_path / "canonical.jsonl").read_text().splitlines()) == 5
    # a changed test class is another problem set
    changed = [{**t, "test": t["test"] + "    def test_more(self):\n        pass\n"} for t in TASKS]
    with pytest.raises(EvalError, match="problems_digest"):
        evaluate(fake, model="fake", benchmark="BigCodeBench-mini", out=tmp_path, progress=False,
                 problems=load_problems(_write(tmp_path / "changed.jsonl", changed)), say=lambda m: None,
                 limits=LIMITS)


pytestmark = pytest.mark.usefixtures("keep_torch_threads")


def test_tiny_model_end_to_end(tmp_path, hf_dir, capsys, bcb_file):
    pytest.importorskip("matplotlib")
    out = tmp_path / "bcb"
    args = ["eval", str(hf_dir), "--problems", str(bcb_file), "--out", str(out), "--quiet", "--timeout-s", "20"]
    assert cli.main(args) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    s = json.loads((out / "summary.json").read_text())
    assert s["generation"]["stop"] == list(bigcodebench.STOP) and s["generation"]["max_new_tokens"] == 1280
    assert s["execution"]["memory_gib"] == bigcodebench.MEMORY_GIB and s["execution"]["timeout_s"] == 20
    assert s["problems"] == 5 and s["canonical"]["failed"] == ["BigCodeBench/4"]
    passed = s["samples_passed"]
    assert line == (f"BigCodeBench-mini: pass@1 {passed / 5:.4f} ({passed}/5); the canonical solution fails "
                    "here on 1 of 5 tasks (missing: snowtrain_no_such_lib)")
    for sample in (json.loads(x) for x in (out / "samples.jsonl").read_text().splitlines()):
        assert not any(stop in sample["completion"] for stop in bigcodebench.STOP)
    assert cli.main(args) == 0
    again = json.loads((out / "summary.json").read_text())
    assert again["this_run"]["generated"] == again["this_run"]["executed"] == 0
