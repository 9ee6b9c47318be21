"""`snowtrain`: the trainer's command line.

  snowtrain train --config R.yaml --phase phase1 [--set k=v]   (under torchrun or srun)
  snowtrain plan  --config R.yaml --phase phase1 --gpus 64
  snowtrain plot  LOG_DIR_OR_METRICS.jsonl ... --out loss.png
  snowtrain samples --config R.yaml --phase phase1 --step 1200   (what a step trains on)
  snowtrain config --config R.yaml [--set k=v]
  snowtrain export CHECKPOINT_DIR --out hf_model/      (Hugging Face Llama format)
  snowtrain serve  HF_MODEL_OR_CHECKPOINT --port 8000  (OpenAI-compatible HTTP API)
  snowtrain eval   HF_MODEL_OR_CHECKPOINT | --endpoint URL  (HumanEval pass@1; runs model-written code)
  snowtrain eval-report EVAL_DIR ... [--out report.md --plot report.png]

Exit codes of train: 0 the phase finished (or --max-steps reached), 3 stopped on SIGUSR1,
SIGTERM or a first Ctrl-C with a checkpoint saved (requeue and it resumes), 2 a configuration
error, 4 hung (training.hang_timeout_s), 1 anything else. Signals reach the ranks directly under srun (one task per GPU, as launch/slurm does);
torchrun's agent does not forward SIGUSR1 and reports a worker's exit 3 as 1.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .config import ConfigError, dump_config, load_config

EXIT_STOPPED = 3


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return value


def _config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, help="recipe YAML")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="dotted override, e.g. --set optim.lr=3e-4 (repeatable)")


def _train(args) -> int:
    cfg = load_config(args.config, args.overrides)  # before the slow imports: typos fail fast
    phases = [p.name for p in cfg.phases] if args.phase == "all" else [args.phase]
    from .config import check_dataset_paths
    for name in phases:  # every phase's data before the first step, not days later
        cfg.phase(name)
        check_dataset_paths(cfg, name, file=args.config)
    from .distributed import destroy_distributed, get_state
    from .train import train_phase
    try:
        for name in phases:
            result = train_phase(cfg, name, config_file=args.config, max_steps=args.max_steps)
            if get_state().is_main:
                print(f"snowtrain: {name} {result.status} at step {result.step}/{result.steps}"
                      f"{f', loss {result.last_loss:.4f}' if result.last_loss is not None else ''}",
                      flush=True)
            if result.status == "stopped":
                return EXIT_STOPPED
            if result.status != "complete":
                break
    finally:
        destroy_distributed()
    return 0


def _plot(args) -> int:
    from .metrics import plot_loss

    files = []
    for p in map(Path, args.paths):
        if not p.exists():
            print(f"snowtrain plot: {p} does not exist (give a log folder or a metrics.jsonl)",
                  file=sys.stderr)
            return 2
        files += sorted(p.rglob("metrics.jsonl")) if p.is_dir() else [p]
    if not files:
        print(f"snowtrain plot: no metrics.jsonl under {args.paths}", file=sys.stderr)
        return 2
    print(plot_loss(files, args.out))
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="snowtrain", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train", help="train one phase (or all, in order)")
    _config_args(t)
    t.add_argument("--phase", required=True, help="phase name, or 'all'")
    t.add_argument("--max-steps", type=_positive_int, default=None,
                   help="stop after this many steps (a checkpoint is not forced)")
    p = sub.add_parser("plan", help="parameters, FLOPs, steps, memory and time of a phase")
    _config_args(p)
    p.add_argument("--phase", required=True)
    p.add_argument("--gpus", type=int, default=8)
    p.add_argument("--mfu", type=float, default=0.5)
    p.add_argument("--gpu-memory-gib", type=float, default=80.0)
    p.add_argument("--peak-tflops", type=float, default=None, help="default: training.peak_tflops")
    c = sub.add_parser("config", help="validate a recipe and print it fully resolved")
    _config_args(c)
    sm = sub.add_parser("samples", help="the training samples of a step: dataset, index and text")
    _config_args(sm)
    sm.add_argument("--phase", required=True)
    sm.add_argument("--step", type=int, default=1, help="1-based, as the logs count (default 1)")
    sm.add_argument("--count", type=int, default=8, help="samples shown (0: the whole global batch)")
    sm.add_argument("--chars", type=int, default=160, help="characters of each sample shown")
    sm.add_argument("--checkpoint", default=None,
                    help="a checkpoint of the phase: its blend history, then the config's weights")
    pl = sub.add_parser("plot", help="plot the loss curve across phases to a PNG")
    pl.add_argument("paths", nargs="+", help="log folders or metrics.jsonl files")
    pl.add_argument("--out", default="loss.png")
    e = sub.add_parser("export", help="write a checkpoint in the Hugging Face Llama format")
    e.add_argument("checkpoint", help="a checkpoint folder, e.g. checkpoints/phase3/step_00001192")
    e.add_argument("--out", required=True)
    e.add_argument("--dtype", choices=["bfloat16", "float32"], default="bfloat16")
    e.add_argument("--tokenizer", default=None, help="default: the run config's tokenizer")
    s = sub.add_parser("serve", help="serve a model over an OpenAI-compatible HTTP API")
    s.add_argument("model", help="a folder written by snowtrain export, or a checkpoint folder")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8000, help="0 picks a free port")
    s.add_argument("--name", default=None, help="the model name clients send (default: MODEL as given)")
    s.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    s.add_argument("--max-new-tokens-limit", type=int, default=None, help="largest max_tokens a request may ask")
    s.add_argument("--max-batch", type=int, default=16,
                   help="requests decoded together (16): those waiting when the model is free")
    s.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    s.add_argument("--device", default="auto", help="auto (a GPU when there is one), cpu, cuda or cuda:N")
    s.add_argument("--chat-template", default=None, help="a text file with a {messages} placeholder")
    s.add_argument("--api-key-env", default=None, metavar="VAR", help="require 'Authorization: Bearer $VAR'")
    s.add_argument("--tokenizer", default=None, help="default: MODEL's tokenizer.model (or the run config's)")
    from .evaluation.command import add_arguments as eval_arguments
    eval_arguments(sub.add_parser("eval", help="pass@k on HumanEval or a problems file (executes model-written code)"))
    r = sub.add_parser("eval-report", help="evaluations side by side, beside the paper's numbers")
    r.add_argument("paths", nargs="+", help="evaluation output folders (searched for summary.json) or files")
    r.add_argument("--out", default=None, help="also write the markdown table here")
    r.add_argument("--plot", default=None, metavar="PNG", help="and a bar chart here")
    args = ap.parse_args(argv)
    try:
        if args.cmd == "config":
            print(dump_config(load_config(args.config, args.overrides)), end="")
        elif args.cmd == "plan":
            from .plan import plan_text
            cfg = load_config(args.config, args.overrides)
            print(plan_text(cfg, args.phase, args.gpus, args.mfu,
                            args.peak_tflops or cfg.training.peak_tflops, args.gpu_memory_gib))
        elif args.cmd == "train":
            return _train(args)
        elif args.cmd == "plot":
            return _plot(args)
        elif args.cmd == "samples":
            from .data.preview import samples_text
            cfg = load_config(args.config, args.overrides)
            print(samples_text(cfg, args.phase, args.step, args.count, args.chars, config_file=args.config,
                               checkpoint=args.checkpoint))
        elif args.cmd == "export":
            import torch
            from .export import export_checkpoint
            print(export_checkpoint(args.checkpoint, args.out, dtype=getattr(torch, args.dtype),
                                    tokenizer=args.tokenizer))
        elif args.cmd == "serve":
            from .serve import serve_command
            return serve_command(args)
        elif args.cmd == "eval":
            from .evaluation.command import eval_command
            return eval_command(args)
        elif args.cmd == "eval-report":
            from .evaluation.report import report_command
            return report_command(args)
    except ConfigError as e:
        print(f"snowtrain: config error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
