"""The `splice` command line: one sub-command per module in `COMMAND_MODULES`, each exposing `register(subparsers)`.

Start-up time: building the parser imports only the standard library and this project's light modules; each
command's handler imports torch, Ray, pandas and fsspec when it runs. This laziness is measured to matter
(benchmarks/cli_startup.py, 2-core CPU; benchmarks/RESULTS.md): `splice --help` takes 0.1-0.2 s this way and
~1.7 s (idle machine) to ~10 s (loaded) when building the parser imports torch, as it did before.
tests/test_cli_options.py checks that building the parser imports no heavy library.
"""

from __future__ import annotations

import argparse
import importlib
import signal
import sys
import threading
import traceback

from pipeline import __version__
from pipeline.cli.console import configure_logging
from pipeline.errors import SpliceError

COMMAND_MODULES = [
    "pipeline.cli.train",  # splice train
    "pipeline.cli.manifest",  # splice manifest build|validate
    "pipeline.cli.run",  # splice run
    "pipeline.cli.train_net",  # splice train-net
    "pipeline.cli.demo",  # splice demo
    "pipeline.cli.status",  # splice status
    "pipeline.cli.splicenet",  # splice splicenet modes
    "pipeline.cli.evaluate",  # splice evaluate
    "pipeline.cli.report",  # splice report
    "pipeline.cli.import_outputs",  # splice import
    "pipeline.cli.bench",  # splice bench
    "pipeline.cli.weights",  # splice weights fetch | status | export
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="splice",
        description="Semantic appearance transfer (Splice) over whole datasets: train, run, evaluate, report.",
    )
    parser.add_argument("--version", action="version", version=f"splice {__version__}")
    parser.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=0,
        help="-v: this project's debug messages (and tracebacks of failed pairs); -vv: also other "
        "libraries' info messages",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread so that locks are released and results written on the way out."""


_terminated = threading.Event()  # set by the handler: libraries may re-raise our KeyboardInterrupt as their own


def _on_sigterm(signum, frame):
    _terminated.set()
    raise Terminated()


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from pipeline.storage import redact_text  # after parsing: `--help` needs no fsspec

    configure_logging(args.verbose)
    _terminated.clear()
    previous = (
        signal.signal(signal.SIGTERM, _on_sigterm) if threading.current_thread() is threading.main_thread() else None
    )
    try:
        return int(args.handler(args) or 0)
    except SpliceError as exc:
        print(f"error: {redact_text(exc)}", file=sys.stderr)
        return 2
    except OSError as exc:  # storage trouble that reached here: one line, no traceback
        reason = exc.strerror or str(exc) or type(exc).__name__
        where = f" ({exc.filename})" if getattr(exc, "filename", None) else ""
        print(
            redact_text(f"error: {reason}{where}: check the location, its permissions and free space"), file=sys.stderr
        )
        return 2
    except Exception:  # a bug, or a library's error nobody caught: its traceback, with credentials masked
        print(redact_text(traceback.format_exc()).rstrip(), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        if _terminated.is_set():
            print("terminated: run the same command again to resume", file=sys.stderr)
            return 143
        print("interrupted: run the same command again to resume", file=sys.stderr)
        return 130
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
