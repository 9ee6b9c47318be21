"""`snowtrain`: the trainer's command line."""
from __future__ import annotations

import argparse
import sys

from .config import ConfigError, dump_config, load_config


def _config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, help="recipe YAML")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="dotted override, e.g. --set optim.lr=3e-4 (repeatable)")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="snowtrain", description=__doc__)
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("config", help="validate a recipe and print it fully resolved")
    _config_args(c)
    args = ap.parse_args(argv)
    try:
        if args.cmd == "config":
            print(dump_config(load_config(args.config, args.overrides)), end="")
    except ConfigError as e:
        print(f"snowtrain: config error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
