"""The `splice` command line: one sub-command per module in `COMMAND_MODULES`, each exposing `register(subparsers)`."""
from __future__ import annotations

import argparse
import importlib
import sys

from .console import configure_logging
from .errors import SpliceError

COMMAND_MODULES = [
    "pipeline.commands.train",  # splice train
    "pipeline.commands.manifest",  # splice manifest build|validate
    "pipeline.commands.run",  # splice run
    "pipeline.commands.demo",  # splice demo
    "pipeline.commands.status",  # splice status
    "evaluation.commands",  # splice evaluate | report | import
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="splice",
        description="Semantic appearance transfer (Splice) over whole datasets: train, run, evaluate, report.",
    )
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="-v: this project's debug messages (and tracebacks of failed pairs); -vv: also other "
                             "libraries' info messages")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(args.verbose)
    try:
        return int(args.handler(args) or 0)
    except SpliceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: run the same command again to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
