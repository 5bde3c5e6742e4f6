"""Compute metrics for decoded pairs in batches on one device. Knows nothing of runs, storage or Ray, nor of any
metric in particular: each registry entry (evaluation.registry) says what it needs, and the engine

1. prepares every view of every image the asked-for metrics name, once per pair (evaluation.views);
2. computes every feature once per (model, image, view): one extractor pass gives all the features asked of it
   (evaluation.features), and two views of an image that come out equal are passed once;
3. calls each metric on batches of its features.

Images in a set of pairs differ in size (except under the published protocol, where all are 224x224), so each
pass groups the items of equal shapes and runs them `batch_size` at a time. A batch that fails is retried item by
item, so that one bad pair fails alone (and only for the metrics that need what failed).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from evaluation.features import EXTRACTORS, IMAGE
from evaluation.models import MetricModels
from evaluation.registry import Metric, get_metric
from evaluation.views import VIEWS


@dataclass
class PairImages:
    pair_id: str
    structure: torch.Tensor  # (3, H, W) uint8
    appearance: torch.Tensor  # (3, H', W') uint8
    output: torch.Tensor  # (3, H'', W'') uint8


@dataclass
class PairScores:
    values: dict[str, float] = field(default_factory=dict)  # metric -> value
    errors: dict[str, str] = field(default_factory=dict)  # metric -> why it could not be computed


@torch.no_grad()
def compute_metrics(
    pairs: list[PairImages], names: list[str], models: MetricModels, device: torch.device | str, batch_size: int = 8
) -> dict[str, PairScores]:
    """Compute the metrics `names` (registered names or plug-in specs, their models in `models`) for every pair
    -> pair_id -> scores."""
    metrics = [get_metric(name) for name in names]
    run = _Runner(device, batch_size)
    # 1. the views the metrics need, on the CPU
    views = _views(pairs, metrics)
    # 2. the features, one extractor pass per (model, image, distinct view)
    features = _features(views, metrics, models, run)
    # 3. each metric over batches of its features
    scores = {pair.pair_id: PairScores() for pair in pairs}
    for metric in metrics:
        model = models.get(metric.model)
        columns = [
            views[n.image, n.view]
            if n.feature == IMAGE
            else features[_model_key(models, metric), n.image, n.view, n.feature]
            for n in metric.needs
        ]
        items = [next((x for x in row if isinstance(x, Exception)), tuple(row)) for row in zip(*columns)]
        results = run(items, lambda *batches, metric=metric, model=model: (_values(metric, model, batches),))
        for pair, result in zip(pairs, results):
            if isinstance(result, Exception):
                scores[pair.pair_id].errors[metric.name] = _describe(result)
            else:
                scores[pair.pair_id].values[metric.name] = float(result[0])
    return scores


def _views(pairs: list[PairImages], metrics: list[Metric]) -> dict[tuple[str, str], list]:
    """(image, view) -> per pair: the view's (3, h, w) tensor, or the exception preparing it raised. Two views of an
    image that come out the same (e.g. an output at the structure image's size seen `native` and
    `structure_native`) are one tensor object, so that its features are computed once."""
    views: dict[tuple[str, str], list] = {}
    for need in (need for metric in metrics for need in metric.needs):
        if (need.image, need.view) not in views:
            earlier = [v for (image, _), v in views.items() if image == need.image]
            views[need.image, need.view] = [
                _view(pair, need.image, need.view, [v[i] for v in earlier]) for i, pair in enumerate(pairs)
            ]
    return views


def _features(views: dict, metrics: list[Metric], models: MetricModels, run: _Runner) -> dict[tuple, list]:
    """(model key, image, view, feature) -> per pair: the feature (a tensor) or an exception. Each extractor runs
    once per (model, image) over the distinct view tensors, asked for every feature any metric needs of them."""
    asked: dict[tuple, dict[str, list[str]]] = defaultdict(dict)  # (model key, extractor, image) -> view -> features
    for metric in metrics:
        for need in metric.needs:
            if need.feature != IMAGE:
                by_view = asked[_model_key(models, metric), _extractor(metric, need.feature), need.image]
                wanted = by_view.setdefault(need.view, [])
                if need.feature not in wanted:
                    wanted.append(need.feature)
    features: dict[tuple, list] = {}
    for (model_key, extractor, image), by_view in asked.items():
        model = models.get(model_key[0])
        items, wanted, item_of = [], [], {}  # distinct view tensors, the features asked of each; (pair, id) -> item
        for view, names in by_view.items():
            for index, tensor in enumerate(views[image, view]):
                item = item_of.setdefault((index, id(tensor)), len(items))
                if item == len(items):
                    items.append(tensor)
                    wanted.append([])
                wanted[item] += [name for name in names if name not in wanted[item]]
        given: list = [None] * len(items)  # item -> {feature: tensor} or an exception
        groups: dict[tuple, list[int]] = defaultdict(list)  # items asked for the same features run together
        for item, names in enumerate(wanted):
            groups[tuple(names)].append(item)
        for names, members in groups.items():
            results = run(
                [items[m] if isinstance(items[m], Exception) else (items[m],) for m in members],
                lambda batch, fn=extractor.run, model=model, names=names: fn(model, batch, names),
            )
            for member, result in zip(members, results):
                given[member] = result if isinstance(result, Exception) else dict(zip(names, result))
        for view, names in by_view.items():
            found = [given[item_of[index, id(tensor)]] for index, tensor in enumerate(views[image, view])]
            for name in names:
                features[model_key, image, view, name] = [f if isinstance(f, Exception) else f[name] for f in found]
    return features


def _values(metric: Metric, model, batches) -> torch.Tensor:
    values = torch.as_tensor(metric.compute(model, *batches)).reshape(-1)
    if values.numel() != batches[0].shape[0]:
        raise ValueError(
            f"metric {metric.name} gave {values.numel()} value(s) for a batch of {batches[0].shape[0]} "
            f"pairs: it must return one per pair, shape (B,)"
        )
    return values


def _view(pair: PairImages, image: str, view: str, earlier: list):
    """The view, or the very tensor of an earlier view of the same image where they are equal (so that features
    are computed once for both)."""
    try:
        tensor = VIEWS[view](pair, image)
    except Exception as exc:  # noqa: BLE001  (fails this pair's metrics that need it, not the others)
        return exc
    same = (t for t in earlier if isinstance(t, torch.Tensor) and t.shape == tensor.shape and torch.equal(t, tensor))
    return next(same, tensor)


def _model_key(models: MetricModels, metric: Metric) -> tuple:
    """Roles served by one model (e.g. --metric-backbone for both DINO roles) share their feature passes."""
    return (metric.model, id(models.get(metric.model))) if metric.model else (None, None)


def _extractor(metric: Metric, feature: str):
    if feature not in EXTRACTORS:
        raise KeyError(
            f"metric {metric.name} needs feature {feature!r}, which no extractor gives: use one of "
            f"{', '.join([*EXTRACTORS, IMAGE])} (evaluation.features)"
        )
    return EXTRACTORS[feature]


class _Runner:
    """Runs fn over items (tuples of tensors) grouped by shapes, batch_size items at a time; one result (tuple of
    tensors) or exception per item, on the CPU. An item that is already an exception stays one."""

    def __init__(self, device, batch_size: int):
        self.device = device
        self.batch_size = batch_size

    def __call__(self, items: list, fn: Callable) -> list:
        results: list = [item if isinstance(item, Exception) else None for item in items]
        groups: dict[tuple, list[int]] = defaultdict(list)
        for index, item in enumerate(items):
            if not isinstance(item, Exception):
                groups[tuple(tuple(t.shape) for t in item)].append(index)
        for indices in groups.values():
            for start in range(0, len(indices), self.batch_size):
                self._batch(items, indices[start : start + self.batch_size], fn, results)
        return results

    def _batch(self, items, indices, fn, results):
        try:
            batches = [torch.stack(parts).to(self.device) for parts in zip(*(items[i] for i in indices))]
            outputs = [t.detach().to("cpu") for t in fn(*batches)]
        except Exception as exc:  # isolate the pair that fails
            if len(indices) == 1:
                results[indices[0]] = exc
                return
            for index in indices:
                self._batch(items, [index], fn, results)
            return
        for row, index in enumerate(indices):
            results[index] = tuple(t[row] for t in outputs)


def _describe(exc: Exception) -> str:
    return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:300]
