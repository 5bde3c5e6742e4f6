"""Options every command spells the same way: `-o/--out`, `--storage-option`, name lists.

Conventions (one way for the whole CLI):
- the place a command writes to is `-o/--out`;
- a list of names is ONE comma-separated value (`--metrics selfsim,dino_i`, `--only p1,p2`); the flag may also be
  repeated (`--only p1 --only p2`), and the values are joined;
- a KEY=VALUE setting is one flag per pair, repeated (`--storage-option anon=true --storage-option k=v`,
  `--set lr=1e-3 --set steps=500`).
No option takes a variable number of values (`nargs="+"`), so none swallows the positionals after it.

This module imports only the standard library: building the parser must stay quick (see `pipeline.cli.main`).
"""

from __future__ import annotations

import argparse
import sys


class _Store(argparse.Action):
    """A plain store that warns once, on stderr, when the value came through a deprecated spelling."""

    def __init__(self, option_strings, dest, old_spellings: tuple[str, ...] = (), **kwargs):
        super().__init__(option_strings, dest, **kwargs)
        self.old_spellings = old_spellings

    def __call__(self, parser, namespace, values, option_string=None):
        if option_string in self.old_spellings:
            print(f"warning: {option_string} is deprecated; use {'/'.join(self.option_strings)}", file=sys.stderr)
        setattr(namespace, self.dest, values)


def add_out_argument(
    parser: argparse.ArgumentParser,
    *,
    help: str,
    metavar: str = "OUT",
    required: bool = True,
    old_spellings: tuple[str, ...] = (),
) -> argparse.Action:
    """`-o/--out`, where the command writes. `old_spellings`: older spellings that still work, hidden from --help,
    with a one-line warning (one action, so `required` and "given twice" behave as for `-o/--out`)."""
    action = parser.add_argument(
        "-o",
        "--out",
        *old_spellings,
        dest="out",
        required=required,
        metavar=metavar,
        help=help,
        action=_Store,
        old_spellings=old_spellings,
    )
    # the parser still knows the old spellings (it looks them up by string); help, usage and errors show -o/--out only
    action.option_strings = ["-o", "--out"]
    return action


def add_storage_arguments(parser: argparse.ArgumentParser) -> None:
    """--storage-option KEY=VALUE, repeated: options of every non-local filesystem."""
    parser.add_argument(
        "--storage-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="fsspec option for non-local storage, one per flag (repeat it), e.g. "
        "--storage-option endpoint_url=http://host:9000 --storage-option anon=true "
        "(s3 endpoint also from AWS_ENDPOINT_URL); never logged",
    )


def comma_list(text: str) -> list[str]:
    """An argparse type: 'a, b,,c' -> ['a', 'b', 'c']."""
    return [item.strip() for item in text.split(",") if item.strip()]


class _ExtendCommaList(argparse.Action):
    def __call__(self, parser, namespace, values, option_string=None):
        so_far = getattr(namespace, self.dest, None)
        so_far = [] if so_far is None or so_far is self.default else so_far  # the first flag replaces the default
        setattr(namespace, self.dest, [*so_far, *comma_list(values)])


def add_list_argument(parser: argparse.ArgumentParser, *flags: str, metavar: str, help: str, default=None) -> None:
    """A list of names: one comma-separated value, and the flag may be repeated (values are joined).
    The namespace holds a list, or `default` when the flag is not given."""
    parser.add_argument(
        *flags,
        action=_ExtendCommaList,
        default=default,
        metavar=metavar,
        help=f"{help} (comma-separated; the flag may be repeated)",
    )
