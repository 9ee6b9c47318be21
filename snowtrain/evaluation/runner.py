"""One evaluation: generate completions, run them, score them. Both stages resume.

<out>/run.json       the settings; rerunning with other generation settings is refused
<out>/samples.jsonl  a line per completion, appended as each is generated
<out>/results.jsonl  a line per executed completion, appended as each finishes
<out>/summary.json   pass@k and counts, written last

EvalPlus files (plus.py) get two verdicts per completion: `passed`/`result` (base and plus inputs,
EvalPlus's "plus" score) and `base_passed`/`base_result` (base inputs only); the summary adds
base_pass@k and its counts. BigCodeBench files (bigcodebench.py) also run each task's canonical
solution once (<out>/canonical.jsonl): the summary says how many pass in this environment.
"""
from __future__ import annotations

import functools
import hashlib
import json
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from pathlib import Path

from data_prep.store import write_text

from .backends import DEFAULT_STOP, TOO_LONG, Completion
from .bigcodebench import check_bcb, check_canonical, missing_libraries
from .evoeval import check_evo
from .execution import Limits, program, run_jobs, run_program
from .plus_check import check_plus
from .problems import Problem, problems_digest

KS = (1, 10, 100)


class EvalError(Exception):
    """An output folder that holds another run (a user error: exit 2)."""


@dataclass(frozen=True)
class Generation:
    samples: int = 1
    temperature: float = 0.0
    top_p: float = 1.0
    max_new_tokens: int = 512
    stop: tuple = DEFAULT_STOP
    seed: int = 0


def pass_at_k(n: int, c: int, k: int) -> float:
    """Chen et al.'s unbiased estimator 1 - C(n-c, k) / C(n, k), as a product that stays
    accurate for large n (their numerically stable form)."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass@{k} needs 0 <= c <= n and 1 <= k <= n (n={n}, c={c})")
    if n - c < k:
        return 1.0
    miss = 1.0
    for i in range(n - c + 1, n + 1):
        miss *= 1.0 - k / i
    return 1.0 - miss


def sample_seed(seed: int, task_id: str, index: int) -> int:
    """A per-sample seed: the same completion whatever order or concurrency produced it."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{task_id}:{index}".encode()).digest()[:7], "big")


class Log:
    """An append-only JSONL file keyed by (task_id, sample); the last line for a key wins. A torn
    last line (a crash mid-write) is dropped, and the file rewritten without it."""

    def __init__(self, path: Path):
        self.path, self.lock = path, threading.Lock()

    def load(self) -> dict[tuple[str, int], dict]:
        if not self.path.exists():
            return {}
        raw = self.path.read_bytes()
        records, good = {}, []
        for line in raw.splitlines():
            try:
                rec = json.loads(line)
                key = (rec["task_id"], rec["sample"])
            except (ValueError, KeyError, TypeError):
                continue
            records[key] = rec
            good.append(line)
        if len(good) != len(raw.splitlines()) or (raw and not raw.endswith(b"\n")):
            write_text(self.path, "".join(ln.decode() + "\n" for ln in good))
        return records

    def append(self, record: dict) -> None:
        line = json.dumps(record) + "\n"
        with self.lock, open(self.path, "a", encoding="utf-8") as f:
            f.write(line)

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)


def _check_run(out: Path, run: dict, results: list[Log], say) -> None:
    path = out / "run.json"
    if path.exists():
        try:
            old = json.loads(path.read_text())
        except ValueError:
            old = {}
        differ = [k for k in ("benchmark", "problems_digest", "model", "generation") if old.get(k) != run[k]]
        if differ:
            detail = "; ".join(f"{k}: {old.get(k)} -> {run[k]}" for k in differ)
            raise EvalError(f"{out} holds an evaluation with other settings ({detail}): pass another "
                            "--out, or delete the folder to start over")
        if old.get("execution") != run["execution"]:
            say(f"execution settings changed ({old.get('execution')} -> {run['execution']}): "
                "running every completion again")
            for log in results:
                log.clear()
    write_text(path, json.dumps(run, indent=2) + "\n")


def _bar(total: int, desc: str, progress: bool):
    from ..progress import progress_bar
    return progress_bar(total, desc, "sample", enabled=progress and total > 0)


def _generate(backend, todo, gen: Generation, samples: dict, log: Log, bar) -> None:
    def keep(item, c: Completion):
        p, i = item
        rec = {"task_id": p.task_id, "sample": i, "completion": c.text,
               "finish_reason": c.finish_reason, "tokens": c.tokens}
        log.append(rec)
        samples[(p.task_id, i)] = rec
        bar.update()

    def one(item):
        p, i = item
        keep(item, backend.complete(p.prompt, max_tokens=gen.max_new_tokens, temperature=gen.temperature,
                                    top_p=gen.top_p, stop=gen.stop, seed=sample_seed(gen.seed, p.task_id, i)))

    size = getattr(backend, "batch_size", 1)
    if size > 1:
        # prompts of like length share a batch: less padding (samples of one problem are neighbours)
        todo = sorted(todo, key=lambda item: len(item[0].prompt))
        for start in range(0, len(todo), size):
            batch = todo[start:start + size]
            done = backend.complete_batch([(p.prompt, sample_seed(gen.seed, p.task_id, i)) for p, i in batch],
                                          max_tokens=gen.max_new_tokens, temperature=gen.temperature,
                                          top_p=gen.top_p, stop=gen.stop)
            for item, c in zip(batch, done):
                keep(item, c)
        return
    if backend.concurrency <= 1:
        for item in todo:
            one(item)
        return
    with ThreadPoolExecutor(backend.concurrency) as pool:
        futures = [pool.submit(one, item) for item in todo]
        try:
            for f in as_completed(futures):
                f.result()
        except BaseException:
            for f in futures:  # stop queued requests; those in flight finish and are kept
                f.cancel()
            raise


def _job(p: Problem, completion: str, limits: Limits):
    """A call that runs the completion's program(s) -> the verdicts of its results line."""
    if p.evalplus:
        return lambda: check_plus(p, completion, limits)
    if p.bigcodebench:
        return lambda: check_bcb(p, completion, limits)
    if p.evoeval:
        return lambda: check_evo(p, completion, limits)

    def run():
        passed, result = run_program(program(p.prompt, completion, p.test, p.entry_point), limits)
        return {"passed": passed, "result": result}
    return run


def _done(p: Problem, rec: dict | None) -> bool:
    return rec is not None and (not p.evalplus or "base_passed" in rec)


def _scores(results: dict, problems: list[Problem], samples: int, prefix: str = "") -> dict:
    """pass@k and counts from the `passed`/`result` verdicts, or with prefix "base_" the
    base_passed/base_result ones."""
    correct = [sum(results[(p.task_id, i)][f"{prefix}passed"] for i in range(samples)) for p in problems]
    outcomes = [results[(p.task_id, i)][f"{prefix}result"] for p in problems for i in range(samples)]
    return {
        f"{prefix}pass@k": {f"pass@{k}": sum(pass_at_k(samples, c, k) for c in correct) / len(problems)
                            for k in KS if k <= samples},
        f"{prefix}problems_solved": sum(c > 0 for c in correct),
        f"{prefix}samples_passed": sum(correct),
        f"{prefix}results": {"passed": sum(r == "passed" for r in outcomes),
                             "failed": sum(r.startswith("failed") for r in outcomes),
                             "timed out": sum(r == "timed out" for r in outcomes)},
    }


def _canonical_summary(canonical: dict, problems: list[Problem]) -> dict:
    failed = [p.task_id for p in problems if not canonical[(p.task_id, 0)]["passed"]]
    return {"canonical": {"passed": len(problems) - len(failed), "problems": len(problems), "failed": failed},
            "missing_libraries": missing_libraries(problems)}


def evaluate(backend, *, model: str, benchmark: str, problems: list[Problem], out: str | Path,
             gen: Generation = Generation(), limits: Limits = Limits(), limit: int | None = None,
             workers: int | None = None, problems_file: str | None = None, progress: bool = True,
             say=lambda msg: print(msg, file=sys.stderr, flush=True)) -> dict:
    """Evaluates `backend` on problems[:limit] into `out`; -> the summary (also summary.json)."""
    start = time.time()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    run = {"benchmark": benchmark, "problems_file": problems_file,
           "problems_digest": problems_digest(problems), "model": model,
           "generation": {**asdict(gen), "stop": list(gen.stop)}, "execution": asdict(limits)}
    sample_log, result_log = Log(out / "samples.jsonl"), Log(out / "results.jsonl")
    canonical_log = Log(out / "canonical.jsonl")
    _check_run(out, run, [result_log, canonical_log], say)
    problems = problems[:limit] if limit else problems
    keys = [(p, i) for p in problems for i in range(gen.samples)]

    samples = sample_log.load()
    if not samples:
        result_log.clear()  # results without their completions cannot be trusted
    todo = [(p, i) for p, i in keys if (p.task_id, i) not in samples]
    with _bar(len(todo), f"{benchmark}: generate", progress) as bar:
        _generate(backend, todo, gen, samples, sample_log, bar)
    generated_s = time.time() - start

    results = result_log.load()
    for p, i in todo:  # completions made now are run now, whatever an older results line says
        results.pop((p.task_id, i), None)
    pending = [(p, i) for p, i in keys if not _done(p, results.get((p.task_id, i)))]
    runnable = []
    for p, i in pending:
        s = samples[(p.task_id, i)]
        if s["finish_reason"] == TOO_LONG:
            why = "failed: the prompt is longer than the model's context"
            rec = {"task_id": p.task_id, "sample": i, "passed": False, "result": why}
            if p.evalplus:
                rec.update(base_passed=False, base_result=why)
            result_log.append(rec)
            results[(p.task_id, i)] = rec
        else:
            runnable.append((result_log, results, p, i, _job(p, s["completion"], limits)))
    canonical = canonical_log.load()
    for p in problems:  # does this environment pass the task's own solution?
        if p.bigcodebench and (p.task_id, 0) not in canonical:
            runnable.append((canonical_log, canonical, p, 0, functools.partial(check_canonical, p, limits)))
    with _bar(len(runnable), f"{benchmark}: execute", progress) as bar:
        for j, verdicts in run_jobs([r[4] for r in runnable], workers):
            log, done, p, i, _ = runnable[j]
            rec = {"task_id": p.task_id, "sample": i, **verdicts}
            log.append(rec)
            done[(p.task_id, i)] = rec
            bar.update()

    plus = any(p.evalplus for p in problems)
    summary = {
        "benchmark": benchmark, "problems_file": problems_file, "model": model,
        "problems": len(problems), "samples_per_problem": gen.samples,
        **_scores(results, problems, gen.samples),
        **(_scores(results, problems, gen.samples, "base_") if plus else {}),
        **(_canonical_summary(canonical, problems) if any(p.bigcodebench for p in problems) else {}),
        "prompts_too_long": sum(samples[(p.task_id, i)]["finish_reason"] == TOO_LONG for p, i in keys),
        "generation": run["generation"], "execution": run["execution"],
        "this_run": {"generated": len(todo), "executed": len(pending),
                     "generate_s": round(generated_s, 2), "total_s": round(time.time() - start, 2)},
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    write_text(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    return summary


def summary_line(s: dict) -> str:
    scores = ", ".join(f"{k} {v:.4f}" for k, v in s["pass@k"].items())
    if s["samples_per_problem"] == 1:
        count = f"{s['samples_passed']}/{s['problems']}"
    else:
        count = f"{s['problems']} problems x {s['samples_per_problem']} samples"
    line = f"{s['benchmark']}: {scores} ({count})"
    if "base_pass@k" in s:  # an EvalPlus file: the plus score above, the base score here
        base = s["base_pass@k"]
        scores = (f"{base['pass@1']:.4f}" if list(base) == ["pass@1"]
                  else ", ".join(f"{k} {v:.4f}" for k, v in base.items()))
        line += f", base {scores}"
        if s["samples_per_problem"] == 1:
            line += f" ({s['base_samples_passed']}/{s['problems']})"
    canonical = s.get("canonical")
    if canonical and canonical["passed"] < canonical["problems"]:
        line += (f"; the canonical solution fails here on {canonical['problems'] - canonical['passed']} "
                 f"of {canonical['problems']} tasks")
        if s.get("missing_libraries"):
            line += f" (missing: {', '.join(s['missing_libraries'])})"
    if s["prompts_too_long"]:
        line += f"; {s['prompts_too_long']} prompt(s) longer than the model's context, counted as failed"
    return line
