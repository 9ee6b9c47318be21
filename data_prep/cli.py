"""`data-prep`: the offline data pipeline's command line."""
from __future__ import annotations

import argparse
import os
import sys


def main(argv=None) -> int:
    try:
        return _main(argv)
    except KeyboardInterrupt:  # every stage saves its finished units atomically
        print("data-prep: interrupted; finished work is kept: run the same command again to "
              "resume", file=sys.stderr)
        return 130


def _main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="data-prep", description=__doc__)
    sub = ap.add_subparsers(dest="cmd", required=True)

    phases = {
        "phase1": ("raw code -> filtered, deduplicated, decontaminated, repository-grouped, "
                   "tokenized datasets", "the intermediate results"),
        "phase2": ("phase-1 output -> quality annotator scores -> the top files per language up "
                   "to the token target", "the scores and head"),
        "phase3": ("phase-2 seeds -> synthetic files written by an LLM through an "
                   "OpenAI-compatible endpoint -> checked, deduplicated, tokenized datasets",
                   "the answers saved"),
    }
    for name, (what, kept) in phases.items():
        p = sub.add_parser(name, help=f"{what} (run under mpirun/srun for many ranks)")
        p.add_argument("--config", required=True, help=f"pipeline YAML (see configs/data_prep/{name}.yaml)")
        p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
        p.add_argument("--restart", action="store_true",
                       help=f"discard {kept} of an earlier run with another config")
        p.add_argument("--no-progress", action="store_true")

    t = sub.add_parser("tokenize", help="JSONL documents -> a .bin/.idx dataset (end-of-document appended)")
    t.add_argument("--input", nargs="+", required=True, help="JSONL files (.jsonl or .jsonl.gz)")
    t.add_argument("--field", default="content", help="the JSON field holding the text")
    t.add_argument("--tokenizer", required=True, help="sentencepiece model written by data-prep")
    t.add_argument("--output", required=True, help="dataset prefix (without .bin/.idx)")
    t.add_argument("--workers", type=int, default=None, help="encoder processes (default: all cores)")

    i = sub.add_parser("inspect", help="print counts of a .bin/.idx dataset and decode a sample")
    i.add_argument("prefix", help="dataset prefix (path without .bin/.idx)")
    i.add_argument("--tokenizer", help="sentencepiece model to decode with")
    i.add_argument("--sample", type=int, default=0, help="document to decode")
    i.add_argument("--max-tokens", type=int, default=64)

    args = ap.parse_args(argv)
    if args.cmd == "phase1":
        from snowtrain.config import ConfigError
        from .pipeline import Phase1, load_phase1_config
        from .sources import SourceError
        try:
            cfg = load_phase1_config(args.config, args.overrides)
            Phase1(cfg, restart=args.restart, progress=not args.no_progress,
                   config_file=args.config).run()
        except (ConfigError, SourceError) as e:
            print(f"data-prep phase1: {e}", file=sys.stderr)
            return 2
    elif args.cmd == "phase2":
        return _phase2(args)
    elif args.cmd == "phase3":
        return _phase3(args)
    elif args.cmd == "tokenize":
        from snowtrain.progress import progress_bar
        from .indexed import remove_stale_temp_files
        from .tokenize import encode_to_dataset, jsonl_texts
        from .tokenizer import Tokenizer
        try:
            for path in remove_stale_temp_files(args.output):
                print(f"removed {path}, left by a killed run", file=sys.stderr)
            total = sum(os.path.getsize(p) for p in args.input)
            with progress_bar(total, "tokenize", "B", unit_scale=True) as bar:
                docs, tokens = encode_to_dataset(jsonl_texts(args.input, args.field), Tokenizer(args.tokenizer),
                                                 args.output, workers=args.workers, progress=bar.update)
        except (OSError, ValueError) as e:
            print(f"data-prep tokenize: {e}", file=sys.stderr)
            return 2
        print(f"wrote {args.output}.bin/.idx: {docs} documents, {tokens} tokens")
    elif args.cmd == "inspect":
        from .indexed import inspect_dataset
        try:
            print(inspect_dataset(args.prefix, tokenizer_model=args.tokenizer, sample=args.sample,
                                  max_tokens=args.max_tokens))
        except (OSError, ValueError) as e:
            print(f"data-prep inspect: {e}", file=sys.stderr)
            return 2
    return 0


def _phase2(args) -> int:
    """2: a config, input or encoder problem."""
    from snowtrain.config import ConfigError
    from .pipeline.phase2 import Phase2
    from .pipeline.phase2_config import load_phase2_config
    from .sources import SourceError
    try:
        cfg = load_phase2_config(args.config, args.overrides)
        Phase2(cfg, restart=args.restart, progress=not args.no_progress,
               config_file=args.config).run()
    except (ConfigError, SourceError) as e:
        print(f"data-prep phase2: {e}", file=sys.stderr)
        return 2
    return 0


def _phase3(args) -> int:
    """2: a config, input or endpoint problem (nothing requested); 1: too many requests failed
    (the answers received are kept; run again)."""
    from snowtrain.config import ConfigError
    from .pipeline.phase3 import Phase3, Phase3Failed
    from .pipeline.phase3_config import load_phase3_config
    from .synth.client import EndpointError
    try:
        cfg = load_phase3_config(args.config, args.overrides)
        Phase3(cfg, restart=args.restart, progress=not args.no_progress, config_file=args.config).run()
    except ConfigError as e:
        print(f"data-prep phase3: {e}", file=sys.stderr)
        return 2
    except EndpointError as e:
        print(f"data-prep phase3: {args.config}, key 'endpoint.base_url': {e}\n  fix: start the "
              "server (vLLM: vllm serve MODEL --port 8000; the quickstart: snowtrain serve ...) "
              "or check endpoint.base_url", file=sys.stderr)
        return 2
    except Phase3Failed as e:
        print(f"data-prep phase3: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
