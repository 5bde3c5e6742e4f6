"""The metric registry: each entry is the computation, with what it needs declared beside it.

A metric is a function decorated with `register_metric`. The decorator says what the function needs: a model role
(`model`, loaded by evaluation.models, or None), and per argument one `Need`: which image of the pair (structure,
appearance or output), seen how (a view: evaluation.views, e.g. the published protocol's 224x224 image) and which
feature of it (e.g. the [CLS] token: a feature of the model, computed by an extractor of evaluation.features; or
'image', the view itself). The engine (evaluation.engine) computes each feature once per (model, image, view) and
calls the function on batches: fn(model, *features) -> (B,) values.

    @register_metric("cls_mse", version="2", better="lower", model="vitb8", aspect="appearance",
                     needs=(Need("appearance", "native", "cls_token"), Need("output", "native", "cls_token")),
                     summary="...")
    def cls_mse(model, appearance_cls, output_cls):  # (B, D), (B, D) -> (B,)
        return mse_per_item(appearance_cls, output_cls)

The built-in metrics (evaluation.metrics) are registered when the package is imported (evaluation/__init__.py), so
whoever imports the registry knows them; the registry itself imports no metric.

Plug-ins (pipeline/plugins.py) use the same decorator in a file of their own and are named `py:MODULE:NAME` or by an
entry point of group `splice.metrics`; `get_metric` resolves either and registers it, so it is then known by name.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace

from evaluation.weights import MetricUnavailable
from pipeline import plugins

ENTRY_POINT_GROUP = "splice.metrics"
IMAGES = ("structure", "appearance", "output")
BETTER = ("lower", "higher")


@dataclass(frozen=True)
class MetricInfo:
    """What a report needs to know of a metric: also read back from a run's eval/evaluation.json, so a report
    labels a plug-in's metric without importing the plug-in."""

    name: str
    version: str  # bump when the definition changes: stored values of another version are recomputed
    better: str  # "lower" | "higher"
    model: str | None  # the model role it needs (evaluation.models), None for none
    aspect: str  # what it judges: "structure" | "appearance" | "layout" | anything a plug-in says
    summary: str  # one line, shown in reports: what it measures and which protocol it follows


@dataclass(frozen=True)
class Need:
    """One input of a metric: the `feature` of `image`, seen through `view`."""

    image: str  # "structure" | "appearance" | "output"
    view: str  # a name in evaluation.views.VIEWS, e.g. "protocol", "native", "structure_native", "structure_small"
    feature: str = "image"  # a feature of the metric's model (evaluation.features), or "image": the view itself


@dataclass(frozen=True)
class Metric(MetricInfo):
    needs: tuple[Need, ...] = ()  # the compute function's arguments after the model, in order
    compute: Callable = field(default=None, repr=False)  # (model, *features) -> (B,) float tensor
    source: str = "built-in"  # where it came from: built-in, py:MODULE:NAME or an entry point

    def __call__(self, model, *features):
        return self.compute(model, *features)


METRICS: dict[str, Metric] = {}  # name -> metric: the built-ins (evaluation.metrics) and plug-ins resolved so far
_BY_SPEC: dict[str, Metric] = {}  # plug-in spec -> its metric, resolved once per process
_DESCRIBED: dict[str, MetricInfo] = {}  # metrics known only from runs' evaluation.json (reports)


def register_metric(
    name: str,
    *,
    version: str,
    better: str,
    needs: tuple[Need, ...],
    summary: str,
    model: str | None = None,
    aspect: str = "other",
) -> Callable[[Callable], Metric]:
    """Decorator: the function becomes metric `name` (and is registered under it)."""

    def decorate(fn: Callable) -> Metric:
        metric = Metric(
            name, str(version), better, model, aspect, summary, needs=tuple(needs), compute=fn, source=_source_of(fn)
        )
        _check(metric)
        return _register(metric)

    return decorate


def get_metric(spec: str) -> Metric:
    """The metric a user named: a registered name, `py:MODULE:NAME`, or an entry point of group splice.metrics."""
    if spec in METRICS:
        return METRICS[spec]
    if spec in _BY_SPEC:
        return _BY_SPEC[spec]
    if plugins.is_py_spec(spec):
        found = plugins.load_py(spec, "metric")
    else:
        found = plugins.load_entry_point(ENTRY_POINT_GROUP, spec, "metric")
        if found is None:
            raise MetricUnavailable(
                f"unknown metric {spec!r}: use one of {', '.join(available())}; or a plug-in: "
                f"py:MODULE:NAME (MODULE importable or a path to a .py file) naming a function "
                f"decorated with evaluation.registry.register_metric, or an entry point in group "
                f"{ENTRY_POINT_GROUP} (docs/metrics.md)"
            )
    if not isinstance(found, Metric):
        raise MetricUnavailable(
            f"metric {spec!r} is a {type(found).__name__}, not a metric: decorate the function with "
            f"@evaluation.registry.register_metric(...) (docs/metrics.md)"
        )
    return _register(found, spec)


def available() -> list[str]:
    """Names a user can give: registered metrics and installed entry points."""
    return list(dict.fromkeys([*METRICS, *plugins.entry_point_names(ENTRY_POINT_GROUP)]))


def describe(name: str) -> MetricInfo:
    """What is known of metric `name`: its registry entry, else what a run's evaluation.json said of it."""
    if name in METRICS:
        return METRICS[name]
    if name in _DESCRIBED:
        return _DESCRIBED[name]
    raise MetricUnavailable(
        f"metric {name!r} is neither a metric known here nor described by the runs' "
        f"eval/evaluation.json: evaluate again with its plug-in (--metrics py:MODULE:{name}) to "
        f"describe it"
    )


def remember(described: dict[str, dict]) -> None:
    """Learn metrics from a run's evaluation.json 'metrics' (name -> version, better, model, aspect, summary), for
    those not registered in this process (plug-ins evaluated elsewhere)."""
    for name, facts in (described or {}).items():
        if name in METRICS or not isinstance(facts, dict) or facts.get("better") not in BETTER:
            continue
        _DESCRIBED[name] = MetricInfo(
            name,
            str(facts.get("version")),
            facts["better"],
            None,  # its model: per value
            str(facts.get("aspect") or "other"),
            str(facts.get("summary") or name),
        )


def metric_columns(columns) -> list[str]:
    """The metrics among a metrics.parquet's columns (known ones, and any with a `<metric>__version` column),
    registry order first, then the others in the order they appear."""
    columns = list(columns)
    present = [c for c in columns if c in METRICS or c in _DESCRIBED or f"{c}__version" in columns]
    return [m for m in METRICS if m in present] + [m for m in present if m not in METRICS]


def _register(metric: Metric, spec: str | None = None) -> Metric:
    known = METRICS.get(metric.name)
    if known is not None and known.compute is not metric.compute:
        raise MetricUnavailable(
            f"metric {spec or metric.name!r} is named {metric.name!r}, which is already "
            f"{'a built-in metric' if known.source == 'built-in' else 'taken by ' + known.source}: "
            f"give the plug-in another name"
        )
    if spec is not None and metric.source != "built-in":
        metric = replace(metric, source=spec)  # recorded in evaluation.json: how to name it again
        _BY_SPEC[spec] = metric
    METRICS[metric.name] = metric
    return metric


def _source_of(fn: Callable) -> str:
    module = getattr(fn, "__module__", "") or ""
    return "built-in" if module.startswith("evaluation.") else f"{module}.{getattr(fn, '__qualname__', fn)}"


def _check(metric: Metric) -> None:
    if metric.better not in BETTER:
        raise ValueError(f"metric {metric.name}: better must be 'lower' or 'higher', not {metric.better!r}")
    if not metric.name.isidentifier():
        raise ValueError(f"metric {metric.name!r}: its name is a column of metrics.parquet: letters, digits, _")
    if not metric.needs:
        raise ValueError(f"metric {metric.name}: declare what it needs (needs=(Need(...), ...)): at least one image")
    for need in metric.needs:
        if need.image not in IMAGES:
            raise ValueError(f"metric {metric.name}: image {need.image!r} is not one of {', '.join(IMAGES)}")
