"""`splice report`: benchmark tables (tables.md, tables.csv, tables.tex) and report.html for one or more evaluated runs.

report.html is one file by default (images embedded within a size budget, see evaluation.report.images): the
tables, warnings collected once, the structure/appearance trade-off, examples, the worst and best pairs per metric
and method, a sortable and filterable per-pair table, a view per pair, distributions and loss curves
(evaluation.report.html). `assets="external"` writes the images as files under assets/ beside it instead.

The report is written into a staging folder beside REPORT_DIR and moved into place at the end (under a lock, so
two reports never write one folder): a killed report leaves the previous report intact, or none, never a mix.
Runs are compared pair by pair: the same run given twice is refused, and pairs with the same pair_id but other
inputs in different runs are named in a warning. Every run is read through its RunFolder: its manifest (with the
dataset/domain labels the tables group by), results and eval/metrics.parquet, statuses in the one vocabulary.
"""

from __future__ import annotations

import logging
import os
import posixpath
import shutil
import uuid
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from evaluation.registry import describe, remember
from evaluation.report import html as html_report
from evaluation.report import pairs as report_pairs
from evaluation.report import published as published_rows
from evaluation.report import statistics, svg, tables
from evaluation.report.images import build_store
from evaluation.report.notes import collect_warnings, metric_descriptions
from evaluation.report.pairs import LABEL_COLUMNS, LOSS_TERMS
from pipeline.runs import hooks, layout
from pipeline.runs.rerun import same_content
from pipeline.runs.run_folder import PairListing, PairStatus, Run, RunFolder, RunFolderError, check_target
from pipeline.runs.run_lock import RunLock
from pipeline.storage import Storage, absolute, is_local, redact_url

log = logging.getLogger(__name__)

LOSS_PAIRS = 24  # the loss chart of a method: faint totals of at most this many pairs, medians over all


@dataclass
class RunData:
    run: Run
    label: str  # the method's name, made unique among the runs
    metrics: pd.DataFrame  # one row per manifest pair, labels from the manifest (never evaluated: 'pending')
    evaluation: dict  # eval/evaluation.json
    listing: PairListing  # what one listing of its pair folders says: done, damaged, pending, their files


@dataclass
class ReportSummary:
    out_dir: str
    methods: list[str]
    pairs: int
    warnings: list[str] = field(default_factory=list)

    def line(self) -> str:
        text = f"report of {', '.join(self.methods)} ({self.pairs} pairs) -> {redact_url(self.out_dir)}/report.html"
        return text + "".join(f"\nwarning: {w}" for w in self.warnings)


def build_report(
    run_urls: list[str],
    out_dir: str,
    *,
    reference: str | None = None,
    group_by: list[str] | None = None,
    thumbnails: int = 12,
    storage: Storage | None = None,
    n_boot: int = 2000,
    seed: int = 0,
    assets: str = "inline",
    extremes: int = 5,
    pairs: str = "common",
    break_lock: bool = False,
    labels: dict[str, str] | None = None,
    published: list | None = None,
) -> ReportSummary:
    """`labels`: run URL -> the method's label in the tables (default: run.json's method); `published`: numbers typed
    in from elsewhere, shown in their own rows and never in our statistics (evaluation.report.published)."""
    storage = storage or Storage()
    # 1. load every run's manifest and eval/metrics.parquet; check they compare the same pairs
    runs = _load_runs(storage, run_urls, labels)
    warnings = _input_warnings(runs)
    frame = pd.concat([r.metrics for r in runs], ignore_index=True)
    out_dir = absolute(out_dir)
    check_target(storage, out_dir, what="report folder", create=False)
    parent, name = _split(out_dir)
    with RunLock(
        storage, parent, command="splice report", name=f".{name}.lock", break_stale=True, break_lock=break_lock
    ):
        _clean_leftovers(storage, parent, name)
        staging = layout.join(parent, f".{name}.staging-{uuid.uuid4().hex[:12]}")
        try:
            summary = _write_report(
                storage,
                runs,
                frame,
                staging,
                reference,
                group_by,
                thumbnails,
                n_boot,
                seed,
                pairs,
                assets,
                extremes,
                published or [],
            )
            hooks.point("report.before_publish")
            _publish(storage, staging, out_dir)
        finally:
            _remove_tree(storage, staging)
    return ReportSummary(out_dir, summary.methods, summary.pairs, warnings)


def _write_report(
    storage, runs, frame, out_dir, reference, group_by, thumbnails, n_boot, seed, pairs, assets, extremes, published
) -> ReportSummary:
    """Steps 2-6 into `out_dir` (the staging folder)."""
    # 2. the tables, in three formats
    try:
        table = statistics.build_tables(
            frame, group_by=group_by, reference=reference, n_boot=n_boot, seed=seed, pairs=pairs
        )
    except ValueError as exc:
        raise RunFolderError(str(exc)) from exc
    table.notes += [
        f"{r.label} was run with RANDOM backbone weights, not the preset's DINO: {r.run.info['backbone_fallback']}"
        for r in runs
        if r.run.info.get("backbone_fallback")
    ]
    table.notes += published_rows.protocol_warnings(published)
    markdown = tables.to_markdown(table) + published_rows.markdown(published, table.metrics)
    storage.write_bytes(layout.join(out_dir, "tables.md"), markdown.encode())
    storage.write_bytes(layout.join(out_dir, "tables.csv"), tables.to_csv(table).encode())
    latex = tables.to_latex(table) + published_rows.latex(published, table.metrics)
    storage.write_bytes(layout.join(out_dir, "tables.tex"), latex.encode())
    if published:  # their own file: never rows of our tables.csv
        storage.write_bytes(layout.join(out_dir, "published.csv"), published_rows.csv(published).encode())

    # 3. per pair: every method's outcome, a seeded sample, the worst and best, loss curves
    records = report_pairs.pair_records(runs)
    sample = report_pairs.sample_pairs(records, thumbnails, seed)
    ranked = report_pairs.extremes(records, [r.label for r in runs], table.metrics, extremes)
    pair_losses = report_pairs.read_losses(storage, runs, records)
    report_pairs.attach_loss_curves(records, pair_losses)

    # 4. plots: the trade-off, the distribution of each metric per method, loss curves of trained methods
    tradeoff = _tradeoff(table, records, [r.label for r in runs])
    distributions = [_distribution(frame, metric, runs) for metric in table.metrics]
    losses = [chart for r in runs if (chart := _loss_chart(r, pair_losses, seed)) is not None]

    # 5. images: embedded (or under assets/), the sampled and the ranked pairs first
    first = sample + [p for item in ranked for _, worst, best in item.rows for p, _ in worst + best]
    store = build_store(storage, report_pairs.image_sources(records, runs, first), out_dir, assets, seed=seed)

    # 6. report.html
    classes = next((r.evaluation.get("layout_classes") for r in runs if r.evaluation.get("layout_classes")), None)
    page = html_report.render(
        table,
        runs=runs,
        warnings=collect_warnings(runs, table, records, store),
        descriptions=metric_descriptions(runs, table.metrics),
        distributions=distributions,
        losses=losses,
        tradeoff=tradeoff,
        records=records,
        sample=sample,
        extremes=ranked,
        k=extremes,
        store=store,
        layout_classes=classes,
        published=published_rows.html(published, table.metrics),
    )
    storage.write_bytes(layout.join(out_dir, "report.html"), page.encode())
    return ReportSummary(out_dir, [r.label for r in runs], int(frame["pair_id"].nunique()))


def _load_runs(storage: Storage, run_urls: list[str], labels: dict[str, str] | None = None) -> list[RunData]:
    if not run_urls:
        raise RunFolderError("give at least one run folder to report on")
    seen = Counter(absolute(url).rstrip("/") for url in run_urls)
    twice = [url for url, count in seen.items() if count > 1]
    if twice:
        raise RunFolderError(
            f"run {redact_url(twice[0])} is given more than once: each run is one method in the "
            f"tables; give each run once"
        )
    runs = []
    counts = Counter()
    loaded = [RunFolder(storage, url).read() for url in run_urls]
    names = Counter(r.method for r in loaded)
    for run in loaded:
        counts[run.method] += 1
        label = run.method if names[run.method] == 1 else f"{run.method} ({posixpath.basename(run.url.rstrip('/'))})"
        if names[run.method] > 1 and label in [r.label for r in runs]:
            label = f"{run.method} #{counts[run.method]}"
        given = (labels or {}).get(run.url) or (labels or {}).get(absolute(run.url))
        label = given if given and given not in [r.label for r in runs] else label
        try:
            stored = run.folder.metrics()
        except RunFolderError as exc:
            raise RunFolderError(f"{exc}: run `splice evaluate {redact_url(run.url)}` to rewrite it") from None
        if stored is None:
            raise RunFolderError(
                f"run {redact_url(run.url)} ({run.method}) has not been evaluated: run "
                f"`splice evaluate {redact_url(run.url)}` first"
            )
        evaluation = run.folder.evaluation()
        remember(
            evaluation.get("metrics") or {}
        )  # plug-in metrics evaluated elsewhere: labelled as they were described
        runs.append(RunData(run, label, _per_pair(run, stored, label), evaluation, run.folder.listing()))
    return runs


def _per_pair(run: Run, stored: pd.DataFrame, label: str) -> pd.DataFrame:
    """Every manifest pair once, with its labels from the run's manifest (the one place they are kept) and its
    stored metrics row; 'pending' with the reason if evaluation has not seen it yet."""
    keep = [c for c in run.manifest.columns if c in ("pair_id", *LABEL_COLUMNS)]
    # metrics.parquet of format 2 carried copies of the labels: the manifest's are the ones
    merged = run.manifest[keep].merge(
        stored.drop(columns=[c for c in (*LABEL_COLUMNS, "method") if c in stored]), on="pair_id", how="left"
    )
    never = merged["status"].isna()
    merged.loc[never, "error"] = f"not evaluated yet: run `splice evaluate {redact_url(run.url)}`"
    merged.loc[never, "status"] = PairStatus.PENDING.value
    merged["method"] = label
    return merged


def _distribution(frame: pd.DataFrame, metric: str, runs: list[RunData]) -> dict:
    info = describe(metric)
    ok = frame[statistics.metric_done(frame, metric)]
    series = {r.label: ok.loc[ok["method"] == r.label, metric].to_numpy() for r in runs}
    note = f"{info.better} is better"
    return {
        "metric": metric,
        "svg": svg.strip_plot(
            f"{metric} {tables.ARROWS[info.better]}", series, note, x_label=f"{metric} per pair ({info.aspect})"
        ),
    }


def _tradeoff(table: statistics.Tables, records, methods: list[str]) -> str:
    """Structure metric (x) against appearance metric (y): per-pair points and each method's mean with its CI."""
    structure = next((m for m in table.metrics if describe(m).aspect == "structure"), None)
    appearance = next((m for m in table.metrics if describe(m).aspect == "appearance"), None)
    if structure is None or appearance is None:
        return ""
    overall = {row.method: row for row in table.groups[0].rows}
    series = []
    for index, method in enumerate(methods):
        row = overall.get(method)
        cx, cy = (row.cells.get(structure), row.cells.get(appearance)) if row else (None, None)
        both = [
            r.outputs[index].values
            for r in records
            if structure in r.outputs[index].values and appearance in r.outputs[index].values
        ]
        series.append(
            {
                "label": method,
                "x": [v[structure] for v in both],
                "y": [v[appearance] for v in both],
                "mean_x": cx.mean if cx else float("nan"),
                "mean_y": cy.mean if cy else float("nan"),
                "x_ci": (cx.low, cx.high) if cx else (float("nan"),) * 2,
                "y_ci": (cy.low, cy.high) if cy else (float("nan"),) * 2,
            }
        )
    arrows = tables.ARROWS
    ideal = (
        "left" if describe(structure).better == "lower" else "right",
        "top" if describe(appearance).better == "higher" else "bottom",
    )
    return svg.scatter_plot(
        f"{structure} against {appearance}",
        series,
        f"{structure} {arrows[describe(structure).better]} (structure kept)",
        f"{appearance} {arrows[describe(appearance).better]} (appearance taken)",
        note=f"better: {ideal[1]} {ideal[0]}; bars: 95% CI of the mean; dots: pairs",
    )


def _loss_chart(run: RunData, pair_losses: dict, seed: int) -> dict | None:
    """Median of each loss term per step over the pairs, and a sample of pairs' totals (faint)."""
    curves = [
        frame.assign(pair_id=p)
        for (method, p), frame in sorted(pair_losses.items(), key=lambda i: i[0])
        if method == run.label
    ]
    if not curves:  # methods that do not train write empty loss tables
        return None
    rng = np.random.default_rng(seed)
    faint = sorted(rng.choice(len(curves), min(LOSS_PAIRS, len(curves)), replace=False))
    losses = pd.concat(curves, ignore_index=True)
    lines = [
        {
            "label": f"pair {curves[i]['pair_id'].iloc[0]}",
            "x": curves[i]["step"],
            "y": curves[i]["total"],
            "color": "#999",
            "width": 0.7,
            "opacity": 0.5,
            "legend": False,
        }
        for i in faint
        if "total" in curves[i]
    ]
    terms = [t for t in LOSS_TERMS if t in losses.columns]
    median = losses.groupby("step")[terms].median().reset_index()
    for index, term in enumerate(terms):  # a term that was never on draws nothing and gets no legend entry
        lines.append(
            {"label": f"median {term}", "x": median["step"], "y": median[term], "color": svg.color(index), "width": 2}
        )
    title = f"{run.label}: loss terms (median of {len(curves)} pairs; grey: {len(faint)} pairs' totals)"
    return {"method": run.label, "svg": svg.line_plot(title, lines, log_y=True, y_label="loss (log scale)")}


# --- pairs compared across runs ------------------------------------------------------------------------------


def _input_warnings(runs: list[RunData]) -> list[str]:
    """Pairs with the same pair_id but other inputs in different runs: their scores do not compare the same pair."""
    first: dict[str, tuple[str, tuple, dict]] = {}
    differing: dict[str, str] = {}
    for data in runs:
        recorded = data.run.folder.inputs(data.run.info if isinstance(data.run.info, dict) else {})
        for record in data.run.manifest[["pair_id", "structure_uri", "appearance_uri"]].to_dict("records"):
            pair_id = str(record["pair_id"])
            fingerprints = recorded.get(pair_id) or {}
            key = (redact_url(str(record["structure_uri"])), redact_url(str(record["appearance_uri"])))
            if pair_id not in first:
                first[pair_id] = (data.label, key, fingerprints)
                continue
            label, old_key, old_prints = first[pair_id]
            content = all(same_content(old_prints.get(r), fingerprints.get(r)) for r in ("structure", "appearance"))
            if (old_key != key or not content) and pair_id not in differing:
                differing[pair_id] = f"{pair_id} ({label} vs {data.label})"
    if not differing:
        return []
    shown = ", ".join(list(differing.values())[:8]) + (f" and {len(differing) - 8} more" if len(differing) > 8 else "")
    message = (
        f"{len(differing)} pair(s) have the same pair_id but other inputs in different runs, so their scores "
        f"do not compare the same pair: {shown}"
    )
    log.warning("%s", message)
    return [message]


# --- writing the report folder as a whole --------------------------------------------------------------------


def _split(url: str) -> tuple[str, str]:
    url = url.rstrip("/")
    parent, _, name = url.rpartition("/")
    return (parent or "/"), name


def _publish(storage: Storage, staging: str, out_dir: str) -> None:
    """Move the staged report into place: locally by renaming folders (the old report is intact until the new one
    is complete); on object stores by copying with report.html removed first and written last."""
    if is_local(out_dir):
        parent, name = _split(out_dir)
        old = os.path.join(parent, f".{name}.old-{uuid.uuid4().hex[:12]}")
        if os.path.exists(out_dir):
            os.rename(out_dir, old)
        os.rename(staging, out_dir)
        shutil.rmtree(old, ignore_errors=True)
        return
    fs, target = storage.fs(out_dir)
    _, source = storage.fs(staging)
    fs.invalidate_cache(source)
    staged = sorted(p[len(source.rstrip("/")) + 1 :] for p in fs.find(source))
    page = "report.html"
    storage.remove(layout.join(out_dir, page))
    for relative in [p for p in staged if p != page] + [page]:
        fs.copy(f"{source.rstrip('/')}/{relative}", f"{target.rstrip('/')}/{relative}")
    fs.invalidate_cache(target)
    stale = [p for p in fs.find(target) if p[len(target.rstrip("/")) + 1 :] not in staged]
    if stale:
        fs.rm(stale)


def _remove_tree(storage: Storage, url: str) -> None:
    if is_local(url):
        shutil.rmtree(storage.fs(url)[1], ignore_errors=True)
        return
    fs, path = storage.fs(url)
    try:
        fs.rm(path, recursive=True)
    except FileNotFoundError:
        pass


def _clean_leftovers(storage: Storage, parent: str, name: str) -> None:
    """Staging and old folders of reports that were killed (we hold the lock: nobody else is writing them)."""
    if not is_local(parent):
        return
    folder = storage.fs(parent)[1]
    if not os.path.isdir(folder):
        return
    for entry in os.listdir(folder):
        if entry.startswith((f".{name}.staging-", f".{name}.old-")):
            shutil.rmtree(os.path.join(folder, entry), ignore_errors=True)
