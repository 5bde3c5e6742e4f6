"""What the `splice` commands print to the terminal: log lines, progress bars, nothing twice.

- Log lines carry a timestamp, the level and the logger: `2026-11-27 10:25:05 WARNING pipeline.runs.fanout: ...`.
- `-v` shows this project's debug messages (loggers `pipeline` and `evaluation`), `-vv` also other libraries' INFO;
  other libraries' debug output (botocore, urllib3, fsspec, ray) is never switched on by -v.
- No credential is printed: every record's text (and traceback) is masked by the one redaction (`RedactFilter`).
- Each distinct message is printed once per command (`OnceFilter`): the same warning from several runs, models or
  retries of a loop says it once.
- Progress bars show only where stderr is a terminal unless forced with `--progress` / `--no-progress`; log lines
  go through tqdm.write so that they never tear a bar.
"""

from __future__ import annotations

import argparse
import logging
import sys

from pipeline.redaction import redact_text

PROJECT_LOGGERS = ("pipeline", "evaluation")
FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
DATE_FORMAT = "%Y-%m-%d %H:%M:%S"


class OnceFilter(logging.Filter):
    """Drops a record whose level and text were already emitted through this handler (debug records pass)."""

    def __init__(self):
        super().__init__()
        self.seen: set[tuple[int, str]] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno <= logging.DEBUG:
            return True
        key = (record.levelno, record.getMessage())
        if key in self.seen:
            return False
        self.seen.add(key)
        return True


class RedactFilter(logging.Filter):
    """Masks credentials in every record's text (pipeline.redaction), whichever library logged it."""

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        masked = redact_text(text)
        if masked != text:
            record.msg, record.args = masked, ()
        if record.exc_info and not record.exc_text:  # a logged traceback: formatted now, masked
            record.exc_text = redact_text(logging.Formatter().formatException(record.exc_info))
            record.exc_info = None
        return True


class TqdmHandler(logging.Handler):
    """Prints through tqdm.write, above any progress bar on the same stream; by default to whatever sys.stderr is
    at the time (so a redirected or captured stderr is honoured)."""

    def __init__(self, stream=None):
        super().__init__()
        self.stream = stream

    def emit(self, record: logging.LogRecord) -> None:
        try:
            from tqdm import tqdm

            tqdm.write(self.format(record), file=self.stream or sys.stderr)
        except Exception:  # logging must never raise
            self.handleError(record)


def configure_logging(verbosity: int = 0, stream=None) -> logging.Handler:
    """One handler on the root logger; project loggers at INFO (DEBUG with -v), the others at WARNING (INFO with -vv).

    Re-configuring (a second `main()` in the same process, as tests do) replaces the handler and forgets what was
    printed: "once" is per command.
    """
    root = logging.getLogger()
    for handler in [h for h in root.handlers if getattr(h, "splice_console", False)]:
        root.removeHandler(handler)
    handler = TqdmHandler(stream)
    handler.splice_console = True
    handler.setFormatter(logging.Formatter(FORMAT, DATE_FORMAT))
    handler.addFilter(RedactFilter())
    handler.addFilter(OnceFilter())
    root.addHandler(handler)
    root.setLevel(logging.INFO if verbosity >= 2 else logging.WARNING)
    for name in PROJECT_LOGGERS:
        logging.getLogger(name).setLevel(logging.DEBUG if verbosity >= 1 else logging.INFO)
    return handler


def add_progress_argument(parser: argparse.ArgumentParser) -> None:
    """--progress / --no-progress, shared by every command that shows a bar (default: only on a terminal)."""
    parser.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="show progress bars (default: only when stderr is a terminal)",
    )


def progress_enabled(asked: bool | None, stream=None) -> bool:
    """--progress / --no-progress as given, else whether `stream` (stderr) is a terminal."""
    if asked is not None:
        return asked
    stream = stream or sys.stderr
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False
