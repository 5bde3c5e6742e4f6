"""The benchmark spec of `splice bench SPEC.toml`: a TOML file naming datasets, methods, metrics, the reference
method, the grouping, the output URL and (optionally) published numbers to show beside ours. The schema is in
docs/bench.md; every error is one line that names the file and the key, e.g.

    afhq.toml: methods.splice-paper.preset: unknown preset 'papr' (one of: paper, authors, preview)

`load_spec(path)` reads and checks the whole file before anything runs. Training settings of a method resolve as
`splice run` resolves them (pipeline/config_options.py): preset < run's defaults < `settings` < `set`.
"""

from __future__ import annotations

import difflib
import hashlib
import os

from pipeline.bench.schema import (
    BUILDERS,
    EVAL_KEYS,
    IMPORT_KEYS,
    METHOD_KEYS,
    NAME,
    PUBLISHED_KEYS,
    RUN_CHECKPOINT_EVERY,
    RUN_KEYS,
    SPLICENET_OPTIONS,
    TOP_KEYS,
    BenchSpec,
    DatasetSpec,
    MethodSpec,
    Published,
    SpecError,
    describe_spec,
    settings_fingerprint,
)
from pipeline.config_options import ConfigError, ConfigOptions, field_kinds, parse_set
from pipeline.errors import SpliceError
from pipeline.method.config import PRESETS, TrainConfig
from pipeline.storage import protocol_of

__all__ = [
    "RUN_CHECKPOINT_EVERY",
    "BenchSpec",
    "DatasetSpec",
    "MethodSpec",
    "Published",
    "SpecError",
    "describe_spec",
    "load_spec",
    "parse_spec",
    "settings_fingerprint",
]


def load_spec(path: str, overrides: dict | None = None) -> BenchSpec:
    """Read and check a spec file; `overrides` replace top-level values (e.g. {"out": ...} from --out)."""
    try:
        with open(os.path.expanduser(path), "rb") as stream:
            data = stream.read()
    except OSError as exc:
        raise SpecError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    return parse_spec(data, path, overrides)


def parse_spec(data: bytes, path: str = "spec.toml", overrides: dict | None = None) -> BenchSpec:
    import tomllib

    where = os.path.basename(path)
    try:
        text = data.decode("utf-8")
        raw = tomllib.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        raise SpecError(f"{where}: not valid TOML ({exc})") from None
    raw.update({k: v for k, v in (overrides or {}).items() if v is not None})
    check = _Checker(where, os.path.dirname(os.path.abspath(path)))
    check.keys(raw, TOP_KEYS, "")
    out = check.location(check.need(raw, "out", str, ""), "out")
    datasets = {name: check.dataset(name, value) for name, value in check.table(raw, "datasets", required=True).items()}
    methods = {name: check.method(name, value, datasets) for name, value in check.table(raw, "methods", True).items()}
    metrics = check.metrics(raw.get("metrics"))
    reference = check.optional(raw, "reference", str, "")
    if reference is not None and reference not in methods:
        raise check.error("reference", f"{reference!r} is not a method of this spec (one of: {', '.join(methods)})")
    pairs = check.optional(raw, "pairs", str, "") or "common"
    if pairs not in ("common", "all"):
        raise check.error("pairs", f"expected common or all, got {pairs!r}")
    return BenchSpec(
        path=os.path.abspath(path),
        sha256=hashlib.sha256(data).hexdigest(),
        text=text,
        name=check.optional(raw, "name", str, "") or os.path.splitext(where)[0],
        out=out,
        datasets=datasets,
        methods=methods,
        metrics=metrics,
        reference=reference,
        group_by=tuple(check.names(raw.get("group_by"), "group_by")),
        pairs=pairs,
        storage_options=dict(check.table(raw, "storage_options")),
        run=check.run(check.table(raw, "run")),
        evaluation=check.evaluation(check.table(raw, "evaluation")),
        published=tuple(check.published(i, item, datasets) for i, item in enumerate(check.array(raw, "published"))),
    )


class _Checker:
    def __init__(self, where: str, folder: str):
        self.where, self.folder = where, folder

    def error(self, key: str, message: str) -> SpecError:
        return SpecError(f"{self.where}: {key}: {message}" if key else f"{self.where}: {message}")

    def keys(self, table: dict, valid: tuple[str, ...], prefix: str) -> None:
        for key in table:
            if key not in valid:
                close = difflib.get_close_matches(key, valid, n=1)
                hint = f" (did you mean {close[0]}?)" if close else ""
                raise self.error(f"{prefix}{key}", f"unknown key{hint}; valid: {', '.join(valid)}")

    def need(self, table: dict, key: str, kind: type | tuple, prefix: str):
        if key not in table:
            raise self.error(f"{prefix}{key}", "missing (required)")
        return self.optional(table, key, kind, prefix)

    def optional(self, table: dict, key: str, kind: type | tuple, prefix: str):
        value = table.get(key)
        if value is None:
            return None
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if isinstance(value, bool) and bool not in kinds or not isinstance(value, kinds):
            names = " or ".join(_KIND_NAMES.get(k, k.__name__) for k in kinds)
            raise self.error(f"{prefix}{key}", f"expected {names}, got {value!r}")
        return value

    def table(self, raw: dict, key: str, required: bool = False) -> dict:
        value = raw.get(key)
        if value is None:
            if required:
                raise self.error(key, f"missing: add at least one [{key}.NAME] table")
            return {}
        if not isinstance(value, dict) or (required and not value):
            raise self.error(key, f"expected a table of [{key}.NAME] entries, got {value!r}")
        return value

    def array(self, raw: dict, key: str) -> list:
        value = raw.get(key) or []
        if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
            raise self.error(key, f"expected [[{key}]] tables, got {value!r}")
        return value

    def names(self, value, key: str) -> list[str]:
        if value is None:
            return []
        if isinstance(value, str):
            value = [item.strip() for item in value.split(",") if item.strip()]
        if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
            raise self.error(key, f"expected a list of names, got {value!r}")
        return value

    def location(self, value: str, key: str) -> str:
        """A URL as given, or a local path made absolute relative to the spec's folder."""
        if not value:
            raise self.error(key, "empty")
        if protocol_of(value) not in ("file", "local"):
            return value
        value = value[len("file://") :] if value.startswith("file://") else value
        return os.path.normpath(os.path.join(self.folder, os.path.expanduser(value)))

    def dataset(self, name: str, table) -> DatasetSpec:
        prefix = f"datasets.{name}."
        if not NAME.fullmatch(name):
            raise self.error(f"datasets.{name}", "name: use letters, digits, '.', '_' or '-' (a folder name)")
        if not isinstance(table, dict):
            raise self.error(f"datasets.{name}", f"expected a table, got {table!r}")
        builder = self.need(table, "builder", str, prefix)
        if builder not in BUILDERS:
            raise self.error(f"{prefix}builder", f"unknown builder {builder!r} (one of: {', '.join(BUILDERS)})")
        required, optional = BUILDERS[builder]
        self.keys(table, ("builder", *required, *optional), prefix)
        args = {}
        for key in required:
            args[key] = self.location(self.need(table, key, str, prefix), prefix + key)
        for key in optional:
            if key in ("pairs", "seed"):
                value = self.optional(table, key, int, prefix)
                if value is not None and value < (1 if key == "pairs" else 0):
                    raise self.error(prefix + key, f"must be at least {1 if key == 'pairs' else 0}, got {value}")
            elif key == "domains":
                value = self.names(table.get(key), prefix + key) or None
            elif key == "cross_domain":
                value = table.get(key)
                value = ",".join(value) if isinstance(value, list) else self.optional(table, key, (str, bool), prefix)
            else:
                value = self.optional(table, key, str, prefix)
            if value is not None:
                args[key] = value
        if args.get("split", "train") not in ("train", "val"):
            raise self.error(f"{prefix}split", f"expected train or val, got {args['split']!r}")
        if args.get("direction", "AtoB") not in ("AtoB", "BtoA"):
            raise self.error(f"{prefix}direction", f"expected AtoB or BtoA, got {args['direction']!r}")
        return DatasetSpec(name, builder, args)

    def method(self, name: str, table, datasets: dict) -> MethodSpec:
        prefix = f"methods.{name}."
        if not NAME.fullmatch(name):
            raise self.error(f"methods.{name}", "name: use letters, digits, '.', '_' or '-' (a folder name)")
        if not isinstance(table, dict):
            raise self.error(f"methods.{name}", f"expected a table, got {table!r}")
        method = self.optional(table, "method", str, prefix) or "splice"
        only = None
        if "datasets" in table:
            only = tuple(self.names(table["datasets"], prefix + "datasets"))
            unknown = [d for d in only if d not in datasets]
            if unknown:
                raise self.error(f"{prefix}datasets", f"unknown dataset {unknown[0]!r} (one of: {', '.join(datasets)})")
        if method == "import":
            self.keys(table, IMPORT_KEYS, prefix)
            source = {
                "root": self.location(self.optional(table, "root", str, prefix) or "", prefix + "root")
                if table.get("root")
                else None,
                "pattern": self.optional(table, "pattern", str, prefix),
                "csv": self.location(table["csv"], prefix + "csv")
                if self.optional(table, "csv", str, prefix)
                else None,
                "follow_symlinks": bool(self.optional(table, "follow_symlinks", bool, prefix)),
            }
            if (source["root"] is None) == (source["csv"] is None):
                raise self.error(f"{prefix}root", "give root (with or without pattern) or csv, not both or neither")
            if source["pattern"] and not source["root"]:
                raise self.error(f"{prefix}pattern", "needs root, the folder it is relative to")
            return MethodSpec(name, "import", source=source, datasets=only)
        self.keys(table, METHOD_KEYS, prefix)
        method = self._method_name(method, prefix)
        options = {key: table[key] for key in SPLICENET_OPTIONS if key in table}
        if options and method != "splicenet":
            raise self.error(prefix + next(iter(options)), f"applies to method splicenet only, not {method}")
        if method == "splicenet":
            if not options.get("net"):
                raise self.error(
                    f"{prefix}net", "missing: method splicenet needs its net (a `splice train-net` output)"
                )
            options["checkpoint"] = self.location(self.optional(options, "net", str, prefix), prefix + "net")
            del options["net"]  # RunSettings.method_options' name for it, as `splice run --net`
            self.optional(table, "appearance_strength", (int, float), prefix)
            self.optional(table, "net_resolution", str, prefix)
        config, explicit = self._config(table, prefix)
        return MethodSpec(name, method, config, explicit, options, datasets=only)

    def _method_name(self, method: str, prefix: str) -> str:
        from pipeline import plugins
        from pipeline.method.registry import available, get_method

        if plugins.is_py_spec(method):
            module, sep, fn = method[len(plugins.PY_PREFIX) :].rpartition(":")
            if sep and module.endswith(".py") and not os.path.isabs(os.path.expanduser(module)):
                method = f"{plugins.PY_PREFIX}{os.path.join(self.folder, module)}:{fn}"  # relative to the spec
        try:
            get_method(method)
        except SpliceError as exc:
            known = f"one of: {', '.join(available())}, import, or a plug-in py:MODULE:FN"
            reason = str(exc).split(":")[0] if not plugins.is_py_spec(method) else str(exc)
            raise self.error(f"{prefix}method", f"{reason} ({known})") from None
        return method

    def _config(self, table: dict, prefix: str) -> tuple[TrainConfig, frozenset]:
        kinds = field_kinds(TrainConfig)
        preset = self.optional(table, "preset", str, prefix) or "paper"
        if preset not in PRESETS:
            raise self.error(f"{prefix}preset", f"unknown preset {preset!r} (one of: {', '.join(PRESETS)})")
        settings = self.optional(table, "settings", dict, prefix) or {}
        values = {}
        for raw_key, value in settings.items():
            key = str(raw_key).replace("-", "_")
            if key not in kinds:
                close = difflib.get_close_matches(key, list(kinds), n=1)
                hint = f" (did you mean {close[0]}?)" if close else ""
                raise self.error(f"{prefix}settings.{raw_key}", f"unknown setting{hint}; valid: {', '.join(kinds)}")
            try:
                values[key] = kinds[key].coerce(value)
            except ValueError as exc:
                raise self.error(f"{prefix}settings.{raw_key}", str(exc)) from None
        items = table.get("set") or []
        if isinstance(items, str) or not isinstance(items, list) or not all(isinstance(i, str) for i in items):
            raise self.error(f"{prefix}set", f'expected a list of "KEY=VALUE" strings, got {items!r}')
        try:
            values.update(parse_set(items, kinds))
        except ConfigError as exc:
            raise self.error(f"{prefix}set", str(exc).removeprefix("--set ")) from None
        options = ConfigOptions(TrainConfig, PRESETS, "paper", {"checkpoint_every": RUN_CHECKPOINT_EVERY})
        try:
            config = TrainConfig(**{**options.defaults(preset), **values})
        except (ValueError, TypeError) as exc:
            raise self.error(f"{prefix}settings", f"invalid training settings: {exc}") from None
        return config, frozenset(values)

    def metrics(self, value) -> tuple[str, ...] | None:
        names = self.names(value, "metrics")
        if not names:
            return None
        from evaluation.registry import get_metric

        for index, name in enumerate(names):
            try:
                get_metric(name)
            except SpliceError as exc:
                raise self.error(f"metrics[{index}]", str(exc)) from None
        return tuple(names)

    def run(self, table: dict) -> dict:
        self.keys(table, RUN_KEYS, "run.")
        checks = {
            "address": str,
            "gpus_per_task": (int, float),
            "cpus_per_task": (int, float),
            "pack": (int, str),
            "max_retries": int,
            "compile": str,
            "concurrency": int,
        }
        values = {key: self.optional(table, key, kind, "run.") for key, kind in checks.items() if key in table}
        if isinstance(values.get("pack"), str) and values["pack"] != "auto":
            raise self.error("run.pack", f"expected a number of pairs or auto, got {values['pack']!r}")
        if values.get("pack") == "auto":
            values["pack"] = None
        if values.get("compile", "auto") not in ("auto", "on", "off"):
            raise self.error("run.compile", f"expected auto, on or off, got {values['compile']!r}")
        for key in ("gpus_per_task", "cpus_per_task", "max_retries"):
            if values.get(key) is not None and values[key] < 0:
                raise self.error(f"run.{key}", f"must be 0 or more, got {values[key]}")
        for key in ("concurrency", "pack"):
            if values.get(key) is not None and values[key] < 1:
                raise self.error(f"run.{key}", f"must be at least 1, got {values[key]}")
        return values

    def evaluation(self, table: dict) -> dict:
        self.keys(table, EVAL_KEYS, "evaluation.")
        values = {}
        for key in EVAL_KEYS:
            if key in table:
                values[key] = self.optional(table, key, int if key == "batch_size" else str, "evaluation.")
        if values.get("batch_size") is not None and values["batch_size"] < 1:
            raise self.error("evaluation.batch_size", f"must be at least 1, got {values['batch_size']}")
        return values

    def published(self, index: int, item: dict, datasets: dict) -> Published:
        prefix = f"published[{index}]."
        self.keys(item, PUBLISHED_KEYS, prefix)
        dataset = self.optional(item, "dataset", str, prefix)
        if dataset is not None and dataset not in datasets:
            raise self.error(f"{prefix}dataset", f"unknown dataset {dataset!r} (one of: {', '.join(datasets)})")
        ci = item.get("ci")
        if ci is not None and (not isinstance(ci, list) or len(ci) != 2 or not all(_number(v) for v in ci)):
            raise self.error(f"{prefix}ci", f"expected [low, high], got {ci!r}")
        protocol = item.get("protocol")
        return Published(
            method=self.need(item, "method", str, prefix),
            dataset=dataset,
            metric=self.need(item, "metric", str, prefix),
            value=float(self.need(item, "value", (int, float), prefix)),
            source=self.need(item, "source", str, prefix),
            protocol=None if protocol is None else str(protocol),
            ci=tuple(float(v) for v in ci) if ci else None,
            n=self.optional(item, "n", int, prefix),
        )


_KIND_NAMES = {str: "a string", int: "an integer", float: "a number", bool: "true/false", dict: "a table"}


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
