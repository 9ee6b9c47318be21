"""`data-prep`: the offline data pipeline's command line."""
from __future__ import annotations

import argparse
import sys


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="data-prep", description=__doc__)
    sub = ap.add_subparsers(dest="cmd", required=True)

    q = sub.add_parser("quickstart", help="toy-scale data on the embedded corpus")
    q.add_argument("--out", default="runs/quickstart/data")
    q.add_argument("--max-mb", type=float, default=8.0, help="most corpus text to read")
    q.add_argument("--fraction", type=float, default=0.035, help="share of the embedded files to sample")
    q.add_argument("--vocab-size", type=int, default=4096)
    q.add_argument("--seed", type=int, default=1234)

    i = sub.add_parser("inspect", help="print counts of a .bin/.idx dataset and decode a sample")
    i.add_argument("prefix", help="dataset prefix (path without .bin/.idx)")
    i.add_argument("--tokenizer", help="sentencepiece model to decode with")
    i.add_argument("--sample", type=int, default=0, help="document to decode")
    i.add_argument("--max-tokens", type=int, default=64)

    args = ap.parse_args(argv)
    if args.cmd == "quickstart":
        from .quickstart import run_quickstart_data
        run_quickstart_data(args.out, max_mb=args.max_mb, fraction=args.fraction, vocab_size=args.vocab_size, seed=args.seed)
    elif args.cmd == "inspect":
        from .indexed import inspect_dataset
        try:
            print(inspect_dataset(args.prefix, tokenizer_model=args.tokenizer, sample=args.sample,
                                  max_tokens=args.max_tokens))
        except (OSError, ValueError) as e:
            print(f"data-prep inspect: {e}", file=sys.stderr)
            return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
