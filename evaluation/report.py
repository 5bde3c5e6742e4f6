"""`splice report`: benchmark tables (tables.md, tables.csv, tables.tex) and report.html for one or more evaluated runs.

report.html holds the tables, the metric definitions (which classes layout_miou counts), per-metric distribution
plots and loss curves as inline SVG, and a grid of thumbnails (structure | appearance | each method's output) for a
seeded sample of pairs; thumbnails are JPEG files under thumbs/ referenced by relative links, so the folder can be
zipped and opened anywhere.

The report is written into a staging folder beside REPORT_DIR and moved into place at the end (under a lock, so
two reports never write one folder): a killed report leaves the previous report intact, or none, never a mix.
Runs are compared pair by pair: the same run given twice is refused, and pairs with the same pair_id but other
inputs in different runs are named in a warning.
"""
from __future__ import annotations

import io
import logging
import os
import posixpath
import shutil
import uuid
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from PIL import Image

from pipeline import layout, run_folder
from pipeline.fault_injection import pause_at
from pipeline.images import decode_image, downscale_to, max_input_bytes
from pipeline.storage import Storage, absolute, is_local, redact_url

from . import html_report, runio, svg, tables
from .evaluate import EVALUATION_JSON

log = logging.getLogger(__name__)

THUMB_SIDE = 224
LOSS_PAIRS = 24  # loss curves: at most this many pairs per method are read
LOSS_TERMS = ["total", "appearance", "structure", "identity", "full_appearance", "full_structure"]


@dataclass
class RunData:
    run: runio.Run
    label: str  # the method's name, made unique among the runs
    metrics: pd.DataFrame  # one row per manifest pair (pairs never evaluated: status 'not evaluated')
    evaluation: dict  # eval/evaluation.json
    files: dict  # pair_id -> {file name -> stamp}


@dataclass
class ReportSummary:
    out_dir: str
    methods: list[str]
    pairs: int
    warnings: list[str] = field(default_factory=list)

    def line(self) -> str:
        text = f"report of {', '.join(self.methods)} ({self.pairs} pairs) -> {redact_url(self.out_dir)}/report.html"
        return text + "".join(f"\nwarning: {w}" for w in self.warnings)


def build_report(run_urls: list[str], out_dir: str, *, reference: str | None = None, group_by: list[str] | None = None,
                 thumbnails: int = 12, storage: Storage | None = None, n_boot: int = 2000, seed: int = 0,
                 pairs: str = "common") -> ReportSummary:
    storage = storage or Storage()
    # 1. load every run's manifest and eval/metrics.parquet; check they compare the same pairs
    runs = _load_runs(storage, run_urls)
    warnings = _input_warnings(runs)
    frame = pd.concat([r.metrics for r in runs], ignore_index=True)
    out_dir = absolute(out_dir)
    run_folder.check_target(storage, out_dir, what="report folder", create=False)
    parent, name = _split(out_dir)
    with run_folder.lock(storage, parent, "splice report", name=f".{name}.lock", break_stale=True):
        _clean_leftovers(storage, parent, name)
        staging = layout.join(parent, f".{name}.staging-{uuid.uuid4().hex[:12]}")
        try:
            summary = _write_report(storage, runs, frame, staging, reference, group_by, thumbnails, n_boot, seed, pairs)
            pause_at("report-before-publish")
            _publish(storage, staging, out_dir)
        finally:
            _remove_tree(storage, staging)
    return ReportSummary(out_dir, summary.methods, summary.pairs, warnings)


def _write_report(storage, runs, frame, out_dir, reference, group_by, thumbnails, n_boot, seed, pairs) -> ReportSummary:
    """Steps 2-5 into `out_dir` (the staging folder)."""
    # 2. the tables, in three formats
    try:
        table = tables.build_tables(frame, group_by=group_by, reference=reference, n_boot=n_boot, seed=seed, pairs=pairs)
    except ValueError as exc:
        raise runio.RunError(str(exc)) from exc
    table.notes += [f"{r.label} was run with RANDOM backbone weights, not the preset's DINO: {r.run.info['backbone_fallback']}"
                    for r in runs if r.run.info.get("backbone_fallback")]
    storage.write_bytes(layout.join(out_dir, "tables.md"), tables.to_markdown(table).encode())
    storage.write_bytes(layout.join(out_dir, "tables.csv"), tables.to_csv(table).encode())
    storage.write_bytes(layout.join(out_dir, "tables.tex"), tables.to_latex(table).encode())

    # 3. plots: the distribution of each metric per method, loss curves of trained methods
    distributions = [_distribution(frame, metric, runs) for metric in table.metrics]
    losses = [chart for r in runs if (chart := _loss_chart(storage, r, seed)) is not None]

    # 4. thumbnails of a seeded sample of pairs
    grid = _thumbnails(storage, runs, out_dir, thumbnails, seed)

    # 5. report.html
    page = html_report.render(table, runs=runs, distributions=distributions, losses=losses, grid=grid)
    storage.write_bytes(layout.join(out_dir, "report.html"), page.encode())
    return ReportSummary(out_dir, [r.label for r in runs], int(frame["pair_id"].nunique()))


def _load_runs(storage: Storage, run_urls: list[str]) -> list[RunData]:
    if not run_urls:
        raise runio.RunError("give at least one run folder to report on")
    seen = Counter(absolute(url).rstrip("/") for url in run_urls)
    twice = [url for url, count in seen.items() if count > 1]
    if twice:
        raise runio.RunError(f"run {redact_url(twice[0])} is given more than once: each run is one method in the "
                             f"tables; give each run once")
    runs = []
    counts = Counter()
    loaded = [runio.read_run(storage, url) for url in run_urls]
    names = Counter(r.method for r in loaded)
    for run in loaded:
        counts[run.method] += 1
        label = run.method if names[run.method] == 1 else f"{run.method} ({posixpath.basename(run.url.rstrip('/'))})"
        if names[run.method] > 1 and label in [r.label for r in runs]:
            label = f"{run.method} #{counts[run.method]}"
        url = runio.metrics_url(run.url)
        if not storage.exists(url):
            raise runio.RunError(f"run {redact_url(run.url)} ({run.method}) has not been evaluated: run "
                                 f"`splice evaluate {redact_url(run.url)}` first")
        try:
            stored = runio.read_parquet(storage, url)
        except runio.RunError as exc:
            raise runio.RunError(f"{exc}: run `splice evaluate {redact_url(run.url)}` to rewrite it") from None
        evaluation = runio.read_json_if_any(storage, layout.join(run.url, layout.EVAL, EVALUATION_JSON))
        runs.append(RunData(run, label, _per_pair(run, stored, label), evaluation, runio.pair_files(storage, run.url)))
    return runs


def _per_pair(run: runio.Run, stored: pd.DataFrame, label: str) -> pd.DataFrame:
    """Every manifest pair once: its stored metrics row, or status 'not evaluated' if evaluation has not seen it."""
    keep = [c for c in run.manifest.columns if c in ("pair_id", "dataset", "domain", "split")]
    merged = run.manifest[keep].merge(stored.drop(columns=[c for c in ("dataset", "domain", "method") if c in stored]),
                                      on="pair_id", how="left")
    never = merged["status"].isna()
    merged.loc[never, "error"] = f"not evaluated yet: run `splice evaluate {redact_url(run.url)}`"
    merged.loc[never, "status"] = "not evaluated"
    merged["method"] = label
    return merged


def _distribution(frame: pd.DataFrame, metric: str, runs: list[RunData]) -> dict:
    info = tables.METRICS[metric]
    ok = frame[frame["status"] == "ok"]
    series = {r.label: ok.loc[ok["method"] == r.label, metric].dropna().to_numpy() for r in runs}
    note = f"{info.better} is better"
    return {"metric": metric, "svg": svg.strip_plot(f"{metric} {tables.ARROWS[info.better]}", series, note)}


def _loss_chart(storage: Storage, run: RunData, seed: int) -> dict | None:
    """Median of each loss term per step over a sample of pairs, and each sampled pair's total (faint)."""
    with_losses = sorted(p for p, names in run.files.items() if layout.LOSSES in names)
    if not with_losses:
        return None
    rng = np.random.default_rng(seed)
    sample = sorted(rng.choice(with_losses, min(LOSS_PAIRS, len(with_losses)), replace=False))
    curves = []
    for pair_id in sample:
        try:
            curves.append(runio.read_parquet(storage, layout.pair_file(run.run.url, pair_id, layout.LOSSES)).assign(pair_id=pair_id))
        except (runio.RunError, OSError) as exc:
            log.warning("loss curves: skipping pair '%s' of %s (%s)", pair_id, run.label, exc)
    curves = [c for c in curves if len(c)]  # methods that do not train write empty loss tables
    if not curves:
        return None
    losses = pd.concat(curves, ignore_index=True)
    lines = [{"label": f"pair {p}", "x": part["step"], "y": part["total"], "color": "#999", "width": 0.7,
              "opacity": 0.5, "legend": False} for p, part in losses.groupby("pair_id")] if "total" in losses else []
    terms = [t for t in LOSS_TERMS if t in losses.columns]
    median = losses.groupby("step")[terms].median().reset_index()
    for index, term in enumerate(terms):
        lines.append({"label": f"median {term}", "x": median["step"], "y": median[term], "color": svg.color(index), "width": 2})
    title = f"{run.label}: loss terms ({len(curves)} of {len(with_losses)} pairs)"
    return {"method": run.label, "svg": svg.line_plot(title, lines, log_y=True)}


def _thumbnails(storage: Storage, runs: list[RunData], out_dir: str, count: int, seed: int) -> list[dict]:
    """Sample pairs (seeded) and write thumbs/<pair>/{structure,appearance,mN}.jpg; one dict per pair for the grid."""
    manifest = runs[0].run.manifest
    ids = sorted(manifest["pair_id"].astype(str))
    rng = np.random.default_rng(seed)
    sample = sorted(rng.choice(ids, min(count, len(ids)), replace=False)) if ids and count > 0 else []
    records = manifest.set_index(manifest["pair_id"].astype(str))
    grid = []
    for pair_id in sample:
        record = records.loc[pair_id]
        cells = [_thumb(storage, record["structure_uri"], out_dir, pair_id, "structure"),
                 _thumb(storage, record["appearance_uri"], out_dir, pair_id, "appearance")]
        outputs = []
        for index, run in enumerate(runs):
            row = run.metrics.set_index("pair_id").loc[pair_id] if pair_id in set(run.metrics["pair_id"]) else None
            status = row["status"] if row is not None else "not in run"
            has_output = layout.OUTPUT_PNG in run.files.get(pair_id, {}) and layout.SUCCESS in run.files.get(pair_id, {})
            cell = (_thumb(storage, layout.pair_file(run.run.url, pair_id, layout.OUTPUT_PNG), out_dir, pair_id, f"m{index}")
                    if has_output else {"src": None, "error": f"{status}: {row['error'] if row is not None else ''}"})
            cell["values"] = {m: row[m] for m in tables.METRICS if row is not None and m in row and pd.notna(row[m])}
            cell["status"] = status
            outputs.append(cell)
        grid.append({"pair_id": pair_id, "structure": cells[0], "appearance": cells[1], "outputs": outputs})
    return grid


def _thumb(storage: Storage, url: str, out_dir: str, pair_id: str, name: str) -> dict:
    relative = f"thumbs/{pair_id}/{name}.jpg"
    try:
        image = downscale_to(decode_image(storage.read_input(url, max_bytes=max_input_bytes()), redact_url(url)), THUMB_SIDE)
    except Exception as exc:  # a thumbnail that cannot be made is shown as such, never fails the report
        return {"src": None, "error": f"unreadable: {exc}"}
    buffer = io.BytesIO()
    Image.fromarray(image.permute(1, 2, 0).numpy()).save(buffer, format="JPEG", quality=85)
    storage.write_bytes(layout.join(out_dir, relative), buffer.getvalue())
    return {"src": relative, "error": None}


# --- pairs compared across runs ------------------------------------------------------------------------------

def _input_warnings(runs: list[RunData]) -> list[str]:
    """Pairs with the same pair_id but other inputs in different runs: their scores do not compare the same pair."""
    first: dict[str, tuple[str, tuple, dict]] = {}
    differing: dict[str, str] = {}
    for data in runs:
        recorded = (data.run.info.get("inputs") or {}) if isinstance(data.run.info, dict) else {}
        for record in data.run.manifest[["pair_id", "structure_uri", "appearance_uri"]].to_dict("records"):
            pair_id = str(record["pair_id"])
            fingerprints = recorded.get(pair_id) or {}
            key = (redact_url(str(record["structure_uri"])), redact_url(str(record["appearance_uri"])))
            if pair_id not in first:
                first[pair_id] = (data.label, key, fingerprints)
                continue
            label, old_key, old_prints = first[pair_id]
            content = all(run_folder.same_content(old_prints.get(r), fingerprints.get(r)) for r in ("structure", "appearance"))
            if (old_key != key or not content) and pair_id not in differing:
                differing[pair_id] = f"{pair_id} ({label} vs {data.label})"
    if not differing:
        return []
    shown = ", ".join(list(differing.values())[:8]) + (f" and {len(differing) - 8} more" if len(differing) > 8 else "")
    message = (f"{len(differing)} pair(s) have the same pair_id but other inputs in different runs, so their scores "
               f"do not compare the same pair: {shown}")
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
    staged = sorted(p[len(source.rstrip("/")) + 1:] for p in fs.find(source))
    page = "report.html"
    storage.remove(layout.join(out_dir, page))
    for relative in [p for p in staged if p != page] + [page]:
        fs.copy(f"{source.rstrip('/')}/{relative}", f"{target.rstrip('/')}/{relative}")
    fs.invalidate_cache(target)
    stale = [p for p in fs.find(target) if p[len(target.rstrip("/")) + 1:] not in staged]
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
