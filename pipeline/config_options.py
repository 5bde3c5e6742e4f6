"""Command-line options generated from a frozen configuration dataclass (e.g. `TrainConfig`): one option per field,
plus `--preset NAME`, `--config FILE` and `--set KEY=VALUE`, resolved in one documented order.

A field `full_image_every: int = setting(75, "...")` becomes `--full-image-every N`, with the field's help text
(metadata "help"), its choices (metadata "choices"), and a type read from its annotation: bool (`--x/--no-x`),
int, float, str, `X | None` (the value `none` clears it), tuples (comma-separated: `--betas 0,0.99`) and lists of
any length (`tuple[str, ...]`: comma-separated, the flag may be repeated). Metadata "flag" renames the option
(`domains` is `--domain`), "shown" replaces its default in the help.

Precedence, lowest first (`PRECEDENCE`): the preset, the command's own defaults, the config file, `--set`, the
option flags. Unknown keys and bad values are errors that name the key, where it came from and what is valid.

Nothing here imports torch (or the config's module beyond the dataclass): `splice --help` stays quick.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import json
import os
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pipeline.errors import SpliceError

PRECEDENCE = "preset < command defaults < --config FILE < --set KEY=VALUE < option flags"
NONE_WORDS = ("none", "null")
TRUE_WORDS = ("true", "yes", "on", "1")
FALSE_WORDS = ("false", "no", "off", "0")


class ConfigError(SpliceError):
    """A configuration value that cannot be used: names the key, where it came from and what is valid."""


# --- the type of one field ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FieldKind:
    """What one dataclass field accepts."""

    name: str
    base: type  # bool, int, float or str (the element type, for tuples)
    optional: bool = False  # `X | None`
    length: int | None = None  # tuples: the number of elements (None: not a tuple)
    choices: tuple = ()
    help: str = ""
    many: bool = False  # tuple[X, ...]: any number of elements
    flag_name: str = ""  # the option's name when not the field's
    shown: str = ""  # the default as the help says it, when not the value

    @property
    def flag(self) -> str:
        return "--" + (self.flag_name or self.name).replace("_", "-")

    def describe(self) -> str:
        if self.choices:
            what = "one of " + ", ".join(map(str, self.choices))
        elif self.many:
            what = f"comma-separated {_WORDS[self.base]}s"
        elif self.length is not None:
            what = f"{self.length} comma-separated {_WORDS[self.base]}s"
        else:
            what = f"{'an' if self.base is int else 'a'} {_WORDS[self.base]}"
        return what + (" or none" if self.optional else "")

    def parse(self, text: str) -> Any:
        """A value from a command-line string; ValueError says what was expected."""
        text = text.strip()
        if self.optional and text.lower() in NONE_WORDS:
            return None
        if self.many:
            return tuple(self._scalar(item.strip(), text) for item in text.split(",") if item.strip())
        if self.length is not None:
            items = [item for item in text.split(",") if item.strip()]
            if len(items) != self.length:
                raise ValueError(f"expected {self.describe()}, got {text!r}")
            return tuple(self._scalar(item.strip(), text) for item in items)
        return self._check_choice(self._scalar(text, text))

    def coerce(self, value: Any) -> Any:
        """A value from a config file (JSON/TOML types; strings are parsed as on the command line)."""
        if isinstance(value, str) and self.base is not str:
            return self.parse(value)
        if value is None:
            if self.optional:
                return None
            raise ValueError(f"expected {self.describe()}, got null")
        if self.many:
            if not isinstance(value, (list, tuple)):
                raise ValueError(f"expected a list of {_WORDS[self.base]}s, got {value!r}")
            return tuple(self._typed(item, value) for item in value)
        if self.length is not None:
            if not isinstance(value, (list, tuple)) or len(value) != self.length:
                raise ValueError(f"expected a list of {self.length} {_WORDS[self.base]}s, got {value!r}")
            return tuple(self._typed(item, value) for item in value)
        return self._check_choice(self._typed(value, value))

    def _scalar(self, text: str, whole: str) -> Any:
        try:
            if self.base is bool:
                if text.lower() in TRUE_WORDS:
                    return True
                if text.lower() in FALSE_WORDS:
                    return False
                raise ValueError(text)
            return self.base(text)
        except ValueError:
            raise ValueError(f"expected {self.describe()}, got {whole!r}") from None

    def _typed(self, value: Any, whole: Any) -> Any:
        ok = (
            isinstance(value, bool)
            if self.base is bool
            else isinstance(value, int) and not isinstance(value, bool)
            if self.base is int
            else isinstance(value, (int, float)) and not isinstance(value, bool)
            if self.base is float
            else isinstance(value, str)
        )
        if not ok:
            raise ValueError(f"expected {self.describe()}, got {whole!r}")
        return float(value) if self.base is float else value

    def _check_choice(self, value: Any) -> Any:
        if self.choices and value not in self.choices:
            raise ValueError(f"expected {self.describe()}, got {value!r}")
        return value


_WORDS = {bool: "boolean (true/false)", int: "integer", float: "number", str: "string"}


def field_kinds(cls: type) -> dict[str, FieldKind]:
    """Every field of the dataclass `cls`, by name, with what it accepts."""
    hints = typing.get_type_hints(cls)
    kinds = {}
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        base, optional, length = _unpack(hints[f.name], f"{cls.__name__}.{f.name}")
        kinds[f.name] = FieldKind(
            f.name,
            base,
            optional,
            None if length == -1 else length,
            tuple(f.metadata.get("choices", ())),
            f.metadata.get("help", ""),
            many=length == -1,
            flag_name=f.metadata.get("flag", ""),
            shown=f.metadata.get("shown", ""),
        )
    return kinds


def _unpack(hint, where: str) -> tuple[type, bool, int | None]:
    """(element type, optional, number of elements: None for a scalar, -1 for any)"""
    optional = False
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        if len(rest) == 1:
            optional, hint = True, rest[0]
            args = typing.get_args(hint)
    if typing.get_origin(hint) is tuple and len(args) == 2 and args[1] is Ellipsis and args[0] in _WORDS:
        return args[0], optional, -1  # tuple[str, ...]: any number
    if typing.get_origin(hint) is tuple and args and all(a is args[0] for a in args) and args[0] in _WORDS:
        return args[0], optional, len(args)  # tuple[float, float]: a fixed number of one type
    if hint in _WORDS:
        return hint, optional, None
    raise TypeError(f"{where}: a command-line option cannot be made for type {hint!r}")


# --- adding the options to a parser ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ConfigOptions:
    """How one command exposes a configuration dataclass on its command line."""

    cls: type  # the frozen dataclass, e.g. TrainConfig
    presets: Mapping[str, Any] = field(default_factory=dict)  # name -> instance of cls; none: no --preset
    default_preset: str | None = None
    command_defaults: Mapping[str, Any] = field(default_factory=dict)  # this command's defaults over the preset
    title: str = "settings"
    help_notes: Mapping[str, str] = field(default_factory=dict)  # field -> sentence appended to its help here

    def add_to(self, parser: argparse.ArgumentParser, preset_help: str = "") -> None:
        """--preset, --config, --set and one flag per field, in an argument group. Flags default to "not given"
        (argparse.SUPPRESS), so `resolve` knows what the command line set."""
        kinds = field_kinds(self.cls)
        unknown = sorted(set(self.command_defaults) - set(kinds))
        if unknown:
            raise TypeError(f"command defaults name no field of {self.cls.__name__}: {unknown}")
        precedence = PRECEDENCE if self.presets else PRECEDENCE.split(" < ", 1)[1]
        group = parser.add_argument_group(
            self.title, f"every field of {self.cls.__name__}. Precedence, lowest first: {precedence}."
        )
        if self.presets:
            group.add_argument(
                "--preset",
                choices=list(self.presets),
                default=None,
                help=(preset_help or f"starting values (default {self.default_preset})").replace("%", "%%"),
            )
        group.add_argument(
            "--config",
            metavar="FILE",
            dest="config_file",
            help="JSON or TOML file of settings (a mapping of field names to values; a recorded configuration "
            "also works: a splice run's run.json, a pair's meta.json, a train-net output's train.json)",
        )
        group.add_argument(
            "--set",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            dest="config_set",
            help="one setting, by field name (repeat the flag for more), e.g. --set lr=1e-3",
        )
        defaults = self.defaults()
        for name, kind in kinds.items():
            shown = kind.shown if kind.shown and name not in self.command_defaults else _show(defaults.get(name))
            text = " ".join(t for t in (kind.help, self.help_notes.get(name, "")) if t)
            listed = "comma-separated; the flag may be repeated; " if kind.many else ""
            text = f"{text} ({listed}default {shown})".replace("%", "%%")
            if kind.base is bool and kind.length is None and not kind.optional and not kind.many:
                group.add_argument(
                    kind.flag, dest=name, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS, help=text
                )
                continue
            if kind.many:
                group.add_argument(
                    kind.flag,
                    dest=name,
                    type=_argparse_type(kind),
                    action=_ExtendTuple,
                    default=argparse.SUPPRESS,
                    metavar=_WORDS_METAVAR.get(kind.base, "X") + ",...",
                    help=text,
                )
                continue
            metavar = (
                "{" + ",".join(map(str, kind.choices)) + "}"
                if kind.choices
                else ",".join(["X"] * kind.length)
                if kind.length
                else "N"
                if kind.base is int
                else "X"
                if kind.base is float
                else "SPEC"
            )
            group.add_argument(
                kind.flag,
                dest=name,
                type=_argparse_type(kind),
                default=argparse.SUPPRESS,
                metavar=metavar,
                help=text,
            )
        parser.set_defaults(config_options=self)

    def defaults(self, preset: str | None = None) -> dict:
        """The values before any file or flag: the preset's (or the dataclass's), then this command's."""
        start = self.presets[preset or self.default_preset] if self.presets else self.cls()
        return {**dataclasses.asdict(start), **self.command_defaults}

    def resolve(self, args: argparse.Namespace) -> Resolved:
        """The configuration the command line asks for (see PRECEDENCE)."""
        kinds = field_kinds(self.cls)
        file_values, file_preset = ({}, None)
        if getattr(args, "config_file", None):
            file_values, file_preset = load_config_file(args.config_file, kinds)
        preset = getattr(args, "preset", None) or file_preset or self.default_preset
        if preset is not None and preset not in self.presets:
            valid = f"valid: {', '.join(self.presets)}" if self.presets else f"{self.title} have no presets"
            raise ConfigError(f"{args.config_file}: unknown preset {preset!r}; {valid}")
        set_values = parse_set(getattr(args, "config_set", []) or [], kinds)
        flag_values = {name: getattr(args, name) for name in kinds if hasattr(args, name)}
        values = {**self.defaults(preset), **file_values, **set_values, **flag_values}
        try:
            config = self.cls(**values)
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"invalid {self.title}: {exc}") from exc
        return Resolved(config, preset, frozenset({**file_values, **set_values, **flag_values}))


@dataclass(frozen=True)
class Resolved:
    config: Any  # the configuration dataclass instance
    preset: str | None  # None: the command has no presets
    explicit: frozenset[str]  # fields set by a config file, --set or a flag (not by the preset or the command)


def resolve_config(args: argparse.Namespace) -> Resolved:
    """The configuration of a command whose parser got `ConfigOptions.add_to`."""
    return args.config_options.resolve(args)


_WORDS_METAVAR = {str: "NAME", int: "N", float: "X"}


class _ExtendTuple(argparse.Action):
    """A list option (`tuple[X, ...]`): each flag's comma-separated values are added to the ones before."""

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, (*getattr(namespace, self.dest, ()), *values))


def _argparse_type(kind: FieldKind):
    def convert(text: str):
        try:
            return kind.parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    convert.__name__ = kind.name  # argparse names the type in some messages
    return convert


def _show(value) -> str:
    if value is None:
        return "none"
    if isinstance(value, tuple):
        return ",".join(map(str, value))
    return str(value).lower() if isinstance(value, bool) else str(value)


# --- --set and --config ------------------------------------------------------------------------------------------


def _key(raw: str, kinds: Mapping[str, FieldKind], source: str) -> str:
    key = raw.strip().replace("-", "_")
    if key in kinds:
        return key
    close = difflib.get_close_matches(key, list(kinds), n=1)
    hint = f" (did you mean {close[0]}?)" if close else ""
    raise ConfigError(f"{source}: unknown setting {raw.strip()!r}{hint}; valid: {', '.join(kinds)}")


def parse_set(items: list[str], kinds: Mapping[str, FieldKind]) -> dict:
    """--set KEY=VALUE items -> {field: value}; the last of a repeated key wins."""
    values = {}
    for item in items:
        source = f"--set {item}"
        if "=" not in item:
            raise ConfigError(f"{source}: expected KEY=VALUE, e.g. --set lr=1e-3")
        raw, text = item.split("=", 1)
        key = _key(raw, kinds, source)
        try:
            values[key] = kinds[key].parse(text)
        except ValueError as exc:
            raise ConfigError(f"{source}: {key}: {exc}") from None
    return values


def load_config_file(path: str, kinds: Mapping[str, FieldKind]) -> tuple[dict, str | None]:
    """A JSON or TOML file -> ({field: value}, preset named in it or None).

    The file is a mapping of field names to values, optionally with "preset"; or a splice run's run.json (its
    "settings"), a pair's meta.json (its "config") or a train-net output's train.json (its "config"), so a recorded
    configuration can be run again."""
    try:
        with open(os.path.expanduser(path), "rb") as stream:
            data = stream.read()
    except OSError as exc:
        raise ConfigError(f"--config {path}: cannot be read ({exc.strerror or exc})") from None
    if path.lower().endswith(".toml"):
        mapping = _parse_toml(data, path)
    else:
        try:
            mapping = json.loads(data)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ConfigError(f"--config {path}: not valid JSON ({exc}); a .toml name reads it as TOML") from None
    if not isinstance(mapping, dict):
        raise ConfigError(
            f"--config {path}: expected a mapping of setting names to values, got {type(mapping).__name__}"
        )
    if isinstance(mapping.get("settings"), dict) and "format" in mapping:  # run.json
        mapping = mapping["settings"]
    elif isinstance(mapping.get("config"), dict) and "pair_id" in mapping:  # meta.json
        mapping = mapping["config"]
    elif isinstance(mapping.get("config"), dict) and str(mapping.get("format", "")).startswith("splicenet-train/"):
        mapping = mapping["config"]  # a train-net output's train.json
    mapping = dict(mapping)
    preset = mapping.pop("preset", None)
    values = {}
    for raw, value in mapping.items():
        key = _key(str(raw), kinds, f"--config {path}")
        try:
            values[key] = kinds[key].coerce(value)
        except ValueError as exc:
            raise ConfigError(f"--config {path}: {key}: {exc}") from None
    return values, preset


def _parse_toml(data: bytes, path: str) -> dict:
    try:
        import tomllib  # Python 3.11+
    except ModuleNotFoundError:
        try:
            import tomli as tomllib
        except ModuleNotFoundError:
            raise ConfigError(
                f"--config {path}: reading TOML needs Python 3.11+ (or the tomli package); "
                f"give the settings as JSON instead"
            ) from None
    try:
        return tomllib.loads(data.decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise ConfigError(f"--config {path}: not valid TOML ({exc})") from None
