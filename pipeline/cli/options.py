"""Options every command spells the same way: `-o/--out`, `--storage-option`, name lists, `--domain`, `--net`,
`--address`, `--break-lock`.

Conventions (one way for the whole CLI; tests/test_cli_options.py walks every command's parser to check them):
- the place a command writes to is `-o/--out`;
- a list of names is ONE comma-separated value (`--metrics selfsim,dino_i`, `--only p1,p2`); the flag may also be
  repeated (`--only p1 --only p2`), and the values are joined; its name is singular (`--domain cat,dog`);
- a KEY=VALUE setting is one flag per pair, repeated (`--storage-option anon=true --storage-option k=v`,
  `--set lr=1e-3 --set steps=500`);
- one concept, one flag: `--net URL` is a trained SpliceNet, `--address` the Ray cluster, `--break-lock` takes over
  a dead command's lock, `--cpus-per-task`/`--gpus-per-task` a task's resources.
An older spelling kept for a while (`add_argument(..., old_spellings=...)`) still works, warns once on stderr and is
hidden from --help. No option takes a variable number of values (`nargs="+"`), so none swallows the positionals
after it.

This module imports only the standard library: building the parser must stay quick (see `pipeline.cli.main`).
"""

from __future__ import annotations

import argparse
import sys

_DEPRECATING: dict[type, type] = {}


def _deprecating(cls: type) -> type:
    """`cls` (an argparse Action class) that first warns, once per use on stderr, when the flag was given by an old
    spelling (`self.old_spellings`)."""
    if cls not in _DEPRECATING:

        def __call__(self, parser, namespace, values, option_string=None):
            if option_string in self.old_spellings:
                print(f"warning: {option_string} is deprecated; use {'/'.join(self.option_strings)}", file=sys.stderr)
            cls.__call__(self, parser, namespace, values, option_string)

        _DEPRECATING[cls] = type(f"Deprecating{cls.__name__}", (cls,), {"__call__": __call__})
    return _DEPRECATING[cls]


def add_argument(parser, *flags: str, old_spellings: tuple[str, ...] = (), **kwargs) -> argparse.Action:
    """`parser.add_argument(*flags, **kwargs)`, also accepting `old_spellings`: older spellings of the same option
    that still work, with a one-line deprecation warning, and are hidden from --help, usage and errors (one action,
    so `required` and "given twice" behave as for the new spelling)."""
    action = parser.add_argument(*flags, *old_spellings, **kwargs)
    return hide_old_spellings(action, old_spellings)


def hide_old_spellings(action: argparse.Action, old_spellings: tuple[str, ...]) -> argparse.Action:
    """Make `old_spellings` of an added action hidden, deprecated spellings (see `add_argument`)."""
    if old_spellings:
        action.__class__ = _deprecating(type(action))
        action.old_spellings = tuple(old_spellings)
        # the parser still knows the old spellings (it looks them up by string); help, usage and errors show the new
        action.option_strings = [s for s in action.option_strings if s not in old_spellings]
    return action


def add_out_argument(
    parser: argparse.ArgumentParser,
    *,
    help: str,
    metavar: str = "OUT",
    required: bool = True,
) -> argparse.Action:
    """`-o/--out`, where the command writes."""
    return parser.add_argument("-o", "--out", dest="out", required=required, metavar=metavar, help=help)


def add_domain_argument(parser: argparse.ArgumentParser, *, help: str, default=None) -> None:
    """`--domain NAME`, repeated or comma-separated: manifest domains (`--domains` before: hidden, deprecated)."""
    add_list_argument(
        parser, "--domain", dest="domain", metavar="NAME", help=help, default=default, old_spellings=("--domains",)
    )


def add_net_argument(parser, *, help: str, required: bool = False) -> argparse.Action:
    """`--net URL`: a SpliceNet, as a `splice train-net` output folder or its net.pt (`--checkpoint` before: hidden,
    deprecated; `--checkpoint-every` and the pairs' checkpoints are another thing)."""
    return add_argument(
        parser, "--net", dest="net", metavar="URL", required=required, help=help, old_spellings=("--checkpoint",)
    )


BREAK_LOCK_HELP = (
    "take over the lock this command needs (the run folder's, eval/'s or the report folder's) when the command "
    "holding it died; refused while that command is alive on this host. Only when no other command is writing there"
)


def add_break_lock_argument(parser: argparse.ArgumentParser) -> None:
    """`--break-lock`, the same on every command that takes a lock (run, import, evaluate, report, bench)."""
    parser.add_argument("--break-lock", action="store_true", help=BREAK_LOCK_HELP)


def add_address_argument(parser: argparse.ArgumentParser, *, help: str | None = None) -> None:
    """`--address`: the Ray cluster to use."""
    parser.add_argument(
        "--address",
        metavar="ADDRESS",
        help=help or "Ray cluster address (default: RAY_ADDRESS, else an embedded Ray here)",
    )


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


def add_list_argument(
    parser: argparse.ArgumentParser,
    *flags: str,
    metavar: str,
    help: str,
    default=None,
    old_spellings: tuple[str, ...] = (),
    **kwargs,
) -> argparse.Action:
    """A list of names: one comma-separated value, and the flag may be repeated (values are joined).
    The namespace holds a list, or `default` when the flag is not given."""
    return add_argument(
        parser,
        *flags,
        action=_ExtendCommaList,
        default=default,
        metavar=metavar,
        help=f"{help} (comma-separated; the flag may be repeated)",
        old_spellings=old_spellings,
        **kwargs,
    )
