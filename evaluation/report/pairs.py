"""What the report shows per pair: every method's status, values and cost, the images to embed (in priority
order), the worst and best pairs per metric and method, and each pair's loss curves."""

from __future__ import annotations

import logging
import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from evaluation.registry import describe, metric_columns
from evaluation.report import svg
from evaluation.report.images import ImageSource
from pipeline.method.objective import OBJECTIVE_TERMS
from pipeline.runs import layout
from pipeline.runs.run_folder import PairStatus, RunFolderError

log = logging.getLogger(__name__)

LABEL_COLUMNS = ("dataset", "domain", "split")
COST_COLUMNS = ("train_seconds", "train_device", "train_peak_memory_bytes")
# the columns of losses.parquet the report plots: the objective's terms and their sum
LOSS_TERMS = ["total", *OBJECTIVE_TERMS]
LOSS_POINTS = 60  # per-pair loss curves are thinned to at most this many steps
READ_THREADS = 8


@dataclass
class Output:
    method: str  # the run's label
    status: str  # a PairStatus word, or 'not in run' (this run's manifest has no such pair)
    error: str | None
    values: dict[str, float]  # metric -> value (ok pairs only)
    cost: dict  # train_seconds, train_device, train_peak_memory_bytes where recorded
    key: str | None  # image key of the output, if it has one
    losses_svg: str | None = None  # this pair's loss curves, for methods that train


@dataclass
class PairRecord:
    pair_id: str
    labels: dict[str, str]  # dataset, domain, split where known
    structure_uri: str
    appearance_uri: str
    structure_key: str
    appearance_key: str
    outputs: list[Output] = field(default_factory=list)  # one per run, in the runs' order


@dataclass
class Extremes:
    metric: str
    rows: list[tuple[str, list[tuple[str, float]], list[tuple[str, float]]]]  # (method, worst k, best k)


def pair_records(runs) -> list[PairRecord]:
    """Every pair of any run (the first run's order first), with each run's outcome for it."""
    manifests = [r.run.manifest.assign(pair_id=r.run.manifest["pair_id"].astype(str)) for r in runs]
    order = list(dict.fromkeys(p for m in manifests for p in m["pair_id"]))
    inputs: dict[str, dict] = {}
    for manifest in manifests:
        for record in manifest.to_dict("records"):
            inputs.setdefault(record["pair_id"], record)
    rows = [
        r.metrics.assign(pair_id=r.metrics["pair_id"].astype(str)).set_index("pair_id").to_dict("index") for r in runs
    ]
    metrics = list(dict.fromkeys(m for r in runs for m in metric_columns(r.metrics.columns)))
    records = []
    for index, pair_id in enumerate(order):
        source = inputs[pair_id]
        labels = {c: str(source[c]) for c in LABEL_COLUMNS if c in source and _present(source[c])}
        record = PairRecord(
            pair_id, labels, source["structure_uri"], source["appearance_uri"], f"p{index}s", f"p{index}a"
        )
        for method_index, (run, by_pair) in enumerate(zip(runs, rows)):
            row = by_pair.get(pair_id)
            has_output = run.listing.is_done(pair_id)  # output.png under _SUCCESS, as the run folder says
            if row is None:
                record.outputs.append(
                    Output(run.label, "not in run", "this run's manifest has no such pair", {}, {}, None)
                )
                continue
            values = {m: float(row[m]) for m in metrics if m in row and _present(row[m]) and _counts(row, m)}
            cost = {c: row[c] for c in COST_COLUMNS if c in row and _present(row[c])}
            error = str(row["error"]) if _present(row.get("error")) else None
            record.outputs.append(
                Output(
                    run.label,
                    str(row.get("status")),
                    error,
                    values,
                    cost,
                    f"p{index}o{method_index}" if has_output else None,
                )
            )
        records.append(record)
    return records


def image_sources(records: list[PairRecord], runs, first: list[str]) -> list[list[ImageSource]]:
    """Each pair's images, the pairs named in `first` first (they get full-resolution images before the others)."""
    rank = {p: i for i, p in enumerate(dict.fromkeys(first))}
    ordered = sorted(records, key=lambda r: rank.get(r.pair_id, len(rank)))
    sources = []
    for record in ordered:
        items = [
            ImageSource(record.structure_key, record.structure_uri, f"structure image of pair {record.pair_id}"),
            ImageSource(record.appearance_key, record.appearance_uri, f"appearance image of pair {record.pair_id}"),
        ]
        for run, output in zip(runs, record.outputs):
            if output.key:
                items.append(
                    ImageSource(
                        output.key,
                        run.run.folder.pair_file(record.pair_id, layout.OUTPUT_PNG),
                        f"output of {run.label} for pair {record.pair_id}",
                    )
                )
        sources.append(items)
    return sources


def sample_pairs(records: list[PairRecord], count: int, seed: int) -> list[str]:
    ids = sorted(r.pair_id for r in records)
    if not ids or count <= 0:
        return []
    rng = np.random.default_rng(seed)
    return sorted(rng.choice(ids, min(count, len(ids)), replace=False).tolist())


def extremes(records: list[PairRecord], methods: list[str], metrics: list[str], k: int) -> list[Extremes]:
    """Per metric and method: the k worst and the k best pairs (ok pairs with a value; at most half of them each,
    so that no pair is both)."""
    found = []
    for metric in metrics:
        lower = describe(metric).better == "lower"
        rows = []
        for index, method in enumerate(methods):
            values = [
                (r.pair_id, r.outputs[index].values[metric])
                for r in records
                if metric in r.outputs[index].values and math.isfinite(r.outputs[index].values[metric])
            ]
            if not values:
                continue
            ranked = sorted(values, key=lambda item: item[1], reverse=not lower)  # best first
            shown = min(k, max(1, len(ranked) // 2))
            worst = list(reversed(ranked[-shown:]))
            best = ranked[:shown]
            rows.append((method, worst, best))
        if rows:
            found.append(Extremes(metric, rows))
    return found


def read_losses(storage, runs, records: list[PairRecord]) -> dict[tuple[str, str], pd.DataFrame]:
    """(method label, pair_id) -> losses.parquet of every pair of every run that stored non-empty loss tables."""
    jobs = [(run, pair_id) for run in runs for pair_id in run.listing.with_file(layout.LOSSES)]

    def read(job):
        run, pair_id = job
        try:
            return run.label, pair_id, run.run.folder.pair(pair_id).read_losses()
        except (RunFolderError, OSError) as exc:
            log.warning("loss curves: skipping pair '%s' of %s (%s)", pair_id, run.label, exc)
            return run.label, pair_id, None

    if not jobs:
        return {}
    with ThreadPoolExecutor(READ_THREADS) as pool:
        return {(m, p): frame for m, p, frame in pool.map(read, jobs) if frame is not None and len(frame)}


def attach_loss_curves(records: list[PairRecord], losses: dict[tuple[str, str], pd.DataFrame]) -> None:
    """A small loss chart in each pair's view, per method that trained on it."""
    for record in records:
        for output in record.outputs:
            frame = losses.get((output.method, record.pair_id))
            if frame is None:
                continue
            if len(frame) > LOSS_POINTS:
                frame = frame.iloc[np.unique(np.linspace(0, len(frame) - 1, LOSS_POINTS).round().astype(int))]
            lines = [
                {"label": term, "x": frame["step"], "y": frame[term], "color": svg.color(i), "width": 1.5}
                for i, term in enumerate(LOSS_TERMS)
                if term in frame
            ]
            output.losses_svg = svg.line_plot(
                f"{output.method}: losses of pair {record.pair_id}",
                lines,
                log_y=True,
                width=460,
                height=190,
                legend_width=120,
                y_label="loss (log scale)",
            )


def _present(value) -> bool:
    return value is not None and not (isinstance(value, float) and math.isnan(value)) and value is not pd.NA


def _counts(row: dict, metric: str) -> bool:
    """A metric's value counts where its own status is done (an older metrics.parquet: where the pair's is)."""
    own = row.get(f"{metric}__status")
    return own == PairStatus.DONE if _present(own) else row.get("status") == PairStatus.DONE
