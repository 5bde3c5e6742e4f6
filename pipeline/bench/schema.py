"""The benchmark spec's schema: its keys, and what a parsed spec is (BenchSpec, DatasetSpec, MethodSpec,
Published); the settings fingerprint that names a method's run folder; the spec as bench.json records it. Reading
and checking a file: spec.py. The schema's documentation: docs/bench.md."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from dataclasses import dataclass, field
from typing import Any

from pipeline.errors import SpliceError
from pipeline.method.config import TrainConfig

RUN_CHECKPOINT_EVERY = 100  # as `splice run` (pipeline/cli/run.py; tests/test_bench.py checks they agree)
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")  # dataset and method names: a folder name and a table label
BUILDERS = {  # builder -> (required keys, optional keys)
    "afhq": (("root",), ("split", "pairs", "seed", "domains", "cross_domain")),
    "pairs-dir": (("root",), ("direction",)),
    "folders": (("structures", "appearances"), ("direction",)),
    "csv": (("path",), ("direction",)),
    "manifest": (("url",), ()),
}
TOP_KEYS = (
    "name",
    "out",
    "metrics",
    "reference",
    "group_by",
    "pairs",
    "storage_options",
    "run",
    "evaluation",
    "datasets",
    "methods",
    "published",
)
RUN_KEYS = ("address", "gpus_per_task", "cpus_per_task", "pack", "max_retries", "compile", "concurrency")
EVAL_KEYS = ("metric_backbone", "lpips_weights", "segmenter", "segmenter_weights", "batch_size", "device")
METHOD_KEYS = ("method", "preset", "settings", "set", "datasets", "net", "appearance_strength", "net_resolution")
IMPORT_KEYS = ("method", "root", "pattern", "csv", "follow_symlinks", "datasets")
SPLICENET_OPTIONS = ("net", "appearance_strength", "net_resolution")  # `splice run`'s --net, ...
PUBLISHED_KEYS = ("method", "dataset", "metric", "value", "source", "protocol", "ci", "n")


class SpecError(SpliceError, ValueError):
    """A spec that cannot be used: one line naming the file, the key and what is valid."""


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    builder: str  # afhq | pairs-dir | folders | csv | manifest
    args: dict  # the builder's arguments, local paths made absolute (relative to the spec's folder)


@dataclass(frozen=True)
class MethodSpec:
    name: str  # the spec's key: the method's label in the tables and the first part of its run folder's name
    method: str  # splice | a reference method | splicenet | py:... plug-in | import
    config: TrainConfig | None = None  # resolved training settings (None for imports)
    explicit: frozenset = frozenset()  # settings given in the spec (not by the preset or the run's defaults)
    options: dict = field(
        default_factory=dict
    )  # splicenet's method options: checkpoint (the spec's net), strength, ...
    source: dict = field(default_factory=dict)  # import: root, pattern, csv, follow_symlinks
    datasets: tuple[str, ...] | None = None  # only these datasets (None: every one)

    @property
    def imported(self) -> bool:
        return self.method == "import"


@dataclass(frozen=True)
class Published:
    """A number a user typed in from elsewhere (a paper's table), shown in its own labelled row, never ours."""

    method: str
    dataset: str | None
    metric: str
    value: float
    source: str
    protocol: str | None = None  # the metric's protocol version the value follows (ours: evaluation.registry)
    ci: tuple[float, float] | None = None
    n: int | None = None


@dataclass(frozen=True)
class BenchSpec:
    path: str
    sha256: str  # of the file's bytes
    text: str
    name: str
    out: str
    datasets: dict[str, DatasetSpec]
    methods: dict[str, MethodSpec]
    metrics: tuple[str, ...] | None  # None: the default metrics whose weights are available
    reference: str | None
    group_by: tuple[str, ...]
    pairs: str  # report --pairs: common | all
    storage_options: dict
    run: dict  # RUN_KEYS
    evaluation: dict  # EVAL_KEYS
    published: tuple[Published, ...] = ()

    def methods_for(self, dataset: str) -> list[MethodSpec]:
        return [m for m in self.methods.values() if m.datasets is None or dataset in m.datasets]


def settings_fingerprint(method: MethodSpec, config: TrainConfig | None = None, options: dict | None = None) -> str:
    """8 hex digits of the sha256 of what makes the method's outputs what they are: its name (and version), the
    settings its run records as making outputs comparable (rerun.settings_mismatch's, without those a run may change
    between invocations) and its options; for imports, where the outputs come from. Resources (GPUs, packs) are not
    in it: they do not change a result."""
    if method.imported:
        identity: dict[str, Any] = {"import": method.source}
    else:
        from pipeline.method.registry import get_method
        from pipeline.runs.rerun import comparable_settings

        found = get_method(method.method)
        settings = comparable_settings(found, config or method.config)
        identity = {
            "method": found.name,
            "version": found.version,
            "settings": settings,
            "options": options if options is not None else method.options,
        }
    canonical = json.dumps(identity, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:8]


# --- checking, key by key -----------------------------------------------------------------------------------------


def describe_spec(spec: BenchSpec) -> dict:
    """The spec as bench.json records it: what was parsed (settings resolved), beside its text and hash."""
    return {
        "name": spec.name,
        "out": spec.out,
        "datasets": {n: {"builder": d.builder, **d.args} for n, d in spec.datasets.items()},
        "methods": {
            n: {
                "method": m.method,
                **({"settings": m.config.to_dict()} if m.config else {}),
                **({"options": m.options} if m.options else {}),
                **({"source": m.source} if m.source else {}),
                **({"datasets": list(m.datasets)} if m.datasets else {}),
            }
            for n, m in spec.methods.items()
        },
        "metrics": list(spec.metrics) if spec.metrics else None,
        "reference": spec.reference,
        "group_by": list(spec.group_by),
        "pairs": spec.pairs,
        "published": [dataclasses.asdict(p) for p in spec.published],
    }
