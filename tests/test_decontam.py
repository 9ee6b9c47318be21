"""Decontamination against the installed HumanEval and benchmark files written here."""
import gzip
import json
import sysconfig
from pathlib import Path

import pytest

from data_prep.decontam import (BenchmarkError, DecontamConfig, Decontaminator, docstrings,
                                humaneval_path, load_humaneval, merge_stats)


@pytest.fixture(scope="module")
def humaneval():
    with gzip.open(humaneval_path(), "rt") as f:
        return {p["task_id"]: p for p in map(json.loads, f)}


@pytest.fixture(scope="module")
def deco():
    return Decontaminator({})


def test_humaneval_loads_offline(humaneval):
    tasks = load_humaneval()
    assert len(tasks) == 164 == len(humaneval)
    assert tasks[0].benchmark == "humaneval" and tasks[0].task_id == "HumanEval/0"
    assert {f for f, _ in tasks[0].texts} == {"prompt", "solution", "test"}


def test_embedded_solution_matches(humaneval, deco):
    sol = humaneval["HumanEval/0"]["canonical_solution"]
    # Different indentation, line breaks and case, inside other code.
    changed = "\n".join("\t\t" + line.strip().upper() for line in sol.splitlines() if line.strip())
    text = ("import os\n\nclass Helper:\n    def near(self, numbers, threshold):\n"
            + changed.replace(" = ", "  =\n ") + "\n\n\ndef other():\n    return os.sep\n")
    m = deco.match(text)
    assert m is not None
    assert (m.benchmark, m.task_id, m.field) == ("humaneval", "HumanEval/0", "solution")


def test_prompt_docstring_matches(humaneval, deco):
    prompt = humaneval["HumanEval/12"]["prompt"]
    doc = docstrings(prompt)[0]
    text = f"def pick(strings):\n    '''{doc}'''\n    return max(strings, key=len)\n"
    text = text.replace("\n    ", "\n  ")                # re-indented
    m = deco.find(text)
    assert m is not None and (m.benchmark, m.task_id, m.field) == ("humaneval", "HumanEval/12",
                                                                   "prompt")


def test_ordinary_code_does_not_match(deco):
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    for rel in ["json/decoder.py", "heapq.py", "bisect.py", "textwrap.py"]:
        assert deco.find((stdlib / rel).read_text()) is None, rel


def test_trivial_solutions_skipped(tmp_path):
    bench = tmp_path / "tiny.jsonl"
    bench.write_text(json.dumps({"task_id": "t/1", "solution": "    return x + y\n"}) + "\n"
                     + json.dumps({"task_id": "t/2", "solution": "    pass\n    return None\n"})
                     + "\n")
    d = Decontaminator({"humaneval": False, "benchmarks": [str(bench)]})
    assert d.num_strings == 0 and d.stats()["benchmarks"]["tiny"]["skipped_trivial"] == 2
    assert d.match("def add(x, y):\n    return x + y\n") is None
    # HumanEval/53's solution is `return x + y`: never a match on its own.
    assert Decontaminator({}).find("def add(x, y):\n    return x + y\n") is None


MBPP = [
    {"task_id": 2, "prompt": "Write a function to find the shared elements from the given two "
                             "lists.",
     "code": "def similar_elements(test_tup1, test_tup2):\n"
             "  res = tuple(set(test_tup1) & set(test_tup2))\n  return (res) ",
     "test_list": ["assert similar_elements((3, 4), (5, 4)) == (4,)"]},
    {"task_id": "Mbpp/3", "benchmark": "mbpp-plus", "prompt": "Write a python function to "
     "identify non-prime numbers.", "solution": ["import math\ndef is_not_prime(n):\n"
                                                  "    result = False\n    return result"]},
]


def test_user_benchmark_matches(tmp_path):
    path = tmp_path / "mbpp.jsonl.gz"
    with gzip.open(path, "wt") as f:
        for row in MBPP:
            f.write(json.dumps(row) + "\n")
    cfg = DecontamConfig.from_dict({"benchmarks": [str(path)]})
    d = Decontaminator(cfg)
    code = "# utils\ndef similar_elements(test_tup1, test_tup2):\n    res = tuple(set(test_tup1) " \
           "&  set(test_tup2))\n    return (res)\n"
    m = d.match(code)
    assert (m.benchmark, m.task_id, m.field) == ("mbpp", "2", "solution")
    m = d.match("/* TODO: write a Python function to identify\n   non-prime numbers. */\nint x;\n")
    assert (m.benchmark, m.task_id, m.field) == ("mbpp-plus", "Mbpp/3", "prompt")
    assert d.match("def unrelated():\n    return 42\n") is None
    s = d.stats()
    assert s["files"] == 3 and s["matched"] == 2
    assert s["by_benchmark"] == {"mbpp": 1, "mbpp-plus": 1}
    assert s["by_task"] == {"mbpp": {"2": 1}, "mbpp-plus": {"Mbpp/3": 1}}
    assert s["benchmarks"]["humaneval"]["tasks"] == 164
    both = merge_stats(s, s)
    assert both["matched"] == 4 and both["by_task"]["mbpp"]["2"] == 2
    assert both["benchmarks"] == s["benchmarks"]
    json.dumps(both)


def test_broken_benchmark_line(tmp_path):
    path = tmp_path / "ds1000.jsonl"
    path.write_text(json.dumps({"task_id": "a", "prompt": "x" * 50}) + "\n"
                    + '{"task_id": "b", "prompt": "oops\n'
                    + json.dumps({"task_id": "c", "prompt": "y" * 50}) + "\n")
    with pytest.raises(BenchmarkError, match=r"ds1000\.jsonl:2"):
        Decontaminator({"humaneval": False, "benchmarks": [str(path)]})
    path.write_text(json.dumps({"task_id": "a", "answer": "no known field"}) + "\n")
    with pytest.raises(BenchmarkError, match=r"ds1000\.jsonl:1"):
        Decontaminator({"humaneval": False, "benchmarks": [str(path)]})
    with pytest.raises(BenchmarkError, match="missing.jsonl"):
        Decontaminator({"benchmarks": [str(tmp_path / "missing.jsonl")]})


def test_config_errors():
    with pytest.raises(ValueError, match="did you mean 'min_chars'"):
        DecontamConfig.from_dict({"min_char": 10})
    with pytest.raises(ValueError, match="mode"):
        DecontamConfig.from_dict({"mode": "fuzzy"})
    with pytest.raises(ValueError, match="ngram"):
        DecontamConfig.from_dict({"ngram": 0})


def test_ngram_mode(tmp_path):
    solution = ("Natalia sold clips to forty eight of her friends in April and then she sold half "
                "as many clips in May")
    path = tmp_path / "gsm.jsonl"
    path.write_text(json.dumps({"task_id": "gsm/7", "solution": solution}) + "\n")
    d = Decontaminator({"humaneval": False, "benchmarks": [str(path)], "mode": "ngram"})
    w = solution.split()
    twelve = "x = 1  # " + " ".join(w[3:15]).upper() + ", then more words here\n"
    eleven = "x = 1  # " + " ".join(w[3:14]) + " and other words here\n"
    m = d.match(twelve)
    assert (m.benchmark, m.task_id, m.field) == ("gsm", "gsm/7", "solution")
    assert m.text == " ".join(w[3:15]).lower()
    assert d.match(eleven) is None
    # Punctuation and layout between the words do not matter.
    assert d.match("\n".join(f"({x})," for x in w[:12])) is not None
    strict = Decontaminator({"humaneval": False, "benchmarks": [str(path)], "mode": "ngram",
                             "ngram_threshold": 2})
    assert strict.match(twelve) is None and strict.match(" ".join(w[3:16])) is not None
