"""`splice evaluate`: metrics of a run's stored outputs, computed incrementally into <run>/eval/metrics.parquet.

One row per manifest pair: pair_id, method, status (the run folder's one vocabulary, run_folder.PairStatus: 'done'
when its metrics are computed; 'pending' (never run or not finished), 'failed', 'missing' or 'damaged' as the run
says; 'error' when its files cannot be read or a metric fails), error, the output's content hash, training cost
from results.parquet (train_seconds, train_device, train_peak_memory_bytes), and per metric its value with
provenance columns `<metric>__version` and `<metric>__model` (backbone spec and weights id; random weights end in
'@random') and its own outcome, `<metric>__status` (done / error) and `<metric>__error`: a metric that fails never
hides another's value, and its failure stays until it succeeds; the pair is 'error' while any of its metrics failed. Labels (dataset, domain) stay in the run's manifest.parquet; the report joins them from there.

Everything is read and written through the run folder (pipeline/runs/run_folder.py). metrics.parquet is read,
merged and written under the lock of eval/ (`RunFolder.eval_lock`): two evaluations of one run at once, e.g. with
other metrics, both keep their rows and columns; `splice run` may go on filling the folder meanwhile.

Re-running computes only what is missing: pairs not evaluated yet, metrics newly asked for or whose version or
model changed, and outputs whose content hash changed (an output whose listing stamp, i.e. size and ETag or
modification time, is unchanged is not re-read). `force` recomputes everything asked for.
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass
from datetime import datetime, timezone

import pandas as pd
import torch

from evaluation.backends import Backend, LocalBackend, PairTask, PairUpdate
from evaluation.distributed import RayBackend
from evaluation.models import EvalSettings, best_device
from evaluation.registry import describe, metric_columns
from pipeline.runs import hooks, layout
from pipeline.runs.run_folder import COST_COLUMNS, PairListing, PairStatus, Run, RunFolder, RunFolderError
from pipeline.storage import Storage, redact_url

log = logging.getLogger(__name__)

SAVE_EVERY_S = 30.0  # rewrite metrics.parquet at least this often during a long evaluation
SAVE_LOCK_WAIT_S = 120.0  # another evaluation saving into the same eval/: wait this long for it


@dataclass
class EvaluateSummary:
    run: str
    computed: int  # pairs that had something (re)computed
    up_to_date: int
    statuses: dict[str, int]
    metrics: list[str]
    skipped: dict[str, str]
    metrics_url: str = ""

    def line(self) -> str:
        states = ", ".join(f"{n} {s}" for s, n in sorted(self.statuses.items()))
        text = (
            f"{redact_url(self.run)}: {self.computed} pair(s) evaluated, {self.up_to_date} up to date ({states}); "
            f"metrics {', '.join(self.metrics) or 'none'} -> {redact_url(self.metrics_url)}"
        )
        if self.skipped:  # why (and how to provide the weights) was logged once when the models were loaded
            text += f"; skipped {', '.join(self.skipped)} (weights not available, see the warnings)"
        return text


def evaluate_run(
    run_url: str,
    settings: EvalSettings = EvalSettings(),
    *,
    storage: Storage | None = None,
    device: torch.device | str | None = None,
    address: str | None = None,
    force: bool = False,
    progress: bool = True,
    break_lock: bool = False,
) -> EvaluateSummary:
    storage = storage or Storage()
    # 1. read the run: manifest, results, one listing of the pair files, what was evaluated before
    folder = RunFolder(storage, run_url)
    run = folder.read()
    listing = folder.listing()  # which pairs are done, damaged, pending
    stored = _stored_rows(folder)

    # 2. the models (locally, or on the Ray workers) and the provenance id of every available metric
    address = address or os.environ.get("RAY_ADDRESS")  # as `splice run` does
    backend: Backend
    if address:
        backend = RayBackend(address, settings, storage.options)
    else:
        backend = LocalBackend(settings, device or best_device(), storage)
    ids, skipped, classes = backend.model_info()

    # 3. plan: which pairs have outputs, and what is stale for each
    rows, tasks = _plan(run, listing, stored, ids, force)

    # 4. compute, merging results into the rows as they come and saving now and then
    from tqdm.auto import tqdm

    bar = tqdm(total=len(tasks), unit="pair", desc=f"evaluate {run.method}", disable=not progress or not tasks)
    last_save = time.monotonic()
    for updates in backend.run(_chunks(tasks, settings.batch_size * 4)):
        for update in updates:
            _merge(rows[update.pair_id], update, ids)
        bar.update(len(updates))
        if time.monotonic() - last_save > SAVE_EVERY_S:
            _save(folder, rows, ids, skipped, classes, break_lock)
            last_save = time.monotonic()
    bar.close()
    backend.close()

    # 5. write metrics.parquet and evaluation.json
    _save(folder, rows, ids, skipped, classes, break_lock)
    statuses = pd.Series([r["status"] for r in rows.values()]).value_counts().to_dict() if rows else {}
    recomputed = {t.pair_id for t in tasks}
    up_to_date = sum(1 for p, r in rows.items() if p not in recomputed and r.get("status") == PairStatus.DONE)
    return EvaluateSummary(run_url, len(tasks), up_to_date, statuses, list(ids), skipped, folder.metrics_url)


def _plan(run: Run, listing: PairListing, stored, ids, force):
    """Rows for every manifest pair (stored values kept where still valid) and the tasks of pairs to (re)compute."""
    results = {}
    if run.results is not None and "pair_id" in run.results:
        results = run.results.drop_duplicates("pair_id", keep="last").set_index("pair_id").to_dict("index")
    rows, tasks = {}, []
    for record in run.manifest.to_dict("records"):
        pair_id = str(record["pair_id"])
        old = stored.get(pair_id, {})
        row = {k: v for k, v in old.items() if k not in ("dataset", "domain")}  # labels: in the manifest (format 3)
        row.update(pair_id=pair_id, method=run.method, **_cost(results.get(pair_id)))
        rows[pair_id] = row
        state = listing.state(pair_id)  # the run folder's word, from one listing
        if state == PairStatus.DAMAGED:  # marked done, output gone
            _clear_metrics(row)
            row.update(
                output_sha256=None,
                output_stamp=None,
                status=PairStatus.DAMAGED.value,
                error=f"pair '{pair_id}' is damaged: {layout.OUTPUT_PNG} is missing though {layout.SUCCESS} "
                f"marks it done; `splice run` again redoes it (`splice status` lists damaged pairs)",
            )
            continue
        if state != PairStatus.DONE:
            _clear_metrics(row)
            row.update(output_sha256=None, output_stamp=None, **_failure(pair_id, results.get(pair_id)))
            continue
        stamp = listing.output_stamp(pair_id)
        fresh = () if force else tuple(m for m in ids if _is_fresh(old, m, ids[m]))
        same_stamp = not force and old.get("output_stamp") == stamp and old.get("status") == PairStatus.DONE
        if same_stamp and all(m in fresh for m in ids):
            continue  # nothing to do
        row["output_stamp"] = stamp
        tasks.append(
            PairTask(
                pair_id,
                record["structure_uri"],
                record["appearance_uri"],
                output_url=run.folder.pair_file(pair_id, layout.OUTPUT_PNG),
                known_hash=old.get("output_sha256") if not force else None,
                fresh=fresh,
                wanted=tuple(ids),
            )
        )
    return rows, tasks


def _is_fresh(old: dict, metric: str, model_id: str) -> bool:
    value = old.get(metric)
    return (
        value is not None
        and not _isnan(value)
        and old.get(f"{metric}__version") == describe(metric).version
        and old.get(f"{metric}__model") == model_id
    )


def _merge(row: dict, update: PairUpdate, ids: dict[str, str]) -> None:
    """An evaluation's result for one pair into its row: each metric's value and status (done, or error with its
    reason) on its own, so a failing metric never hides another's value and its failure stays until it succeeds."""
    row["evaluated_at"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    if update.changed:
        _clear_metrics(row)  # values of another output are no longer this pair's
    if update.output_sha256:
        row["output_sha256"] = update.output_sha256
    for metric, value in update.values.items():
        row.update({metric: value, **_provenance(metric, ids), _status(metric): DONE, _error(metric): None})
    failed = {m: update.image_error for m in ids} if update.image_error else update.errors
    for metric, error in failed.items():
        row.update({metric: None, **_provenance(metric, ids), _status(metric): ERROR, _error(metric): error})
    row.update(status=DONE, error=None)  # evaluated: what its metrics' statuses say, next
    row.update(pair_status(row))


DONE, ERROR = PairStatus.DONE.value, PairStatus.ERROR.value


def _status(metric: str) -> str:
    return f"{metric}__status"


def _error(metric: str) -> str:
    return f"{metric}__error"


def _provenance(metric: str, ids: dict[str, str]) -> dict:
    return {f"{metric}__version": describe(metric).version, f"{metric}__model": ids[metric]}


def pair_status(row: dict) -> dict:
    """{'status', 'error'} of an evaluated pair from its metrics' own statuses: 'error' (with each failed metric's
    reason) while any metric failed, else 'done'. Rows of older evaluations (no per-metric status) and pairs
    without an output (pending, failed, missing, damaged) keep theirs."""
    if row.get("status") not in (DONE, ERROR):
        return {}
    statuses = {m: row.get(_status(m)) for m in metric_columns(row)}
    if not any(isinstance(s, str) for s in statuses.values()):
        return {}
    errors = {m: _text(row.get(_error(m))) or "failed" for m, s in statuses.items() if s == ERROR}
    if not errors:
        return {"status": DONE, "error": None}
    reasons = list(dict.fromkeys(errors.values()))
    if len(reasons) == 1 and len(errors) > 1:
        return {"status": ERROR, "error": f"{', '.join(errors)}: {reasons[0]}"}
    return {"status": ERROR, "error": "; ".join(f"{m}: {e}" for m, e in errors.items())}


def _cost(result: dict | None) -> dict:
    """Training cost of a pair, as its run recorded it in results.parquet."""
    return {column: _value((result or {}).get(key)) for key, column in COST_COLUMNS.items()}


def _failure(pair_id: str, result: dict | None) -> dict:
    """The row of a pair without an output: the run's word for it (failed, missing, damaged), else pending."""
    status = PairStatus.of((result or {}).get("status"))
    if status in (PairStatus.FAILED, PairStatus.MISSING, PairStatus.DAMAGED):
        error = _text(result.get("error")) or f"no output ({status} in the run, no error recorded)"
        return {"status": status.value, "error": error}
    return {
        "status": PairStatus.PENDING.value,
        "error": f"pair '{pair_id}' has no {layout.OUTPUT_PNG} with {layout.SUCCESS}: not run or not finished yet",
    }


def _clear_metrics(row: dict) -> None:
    for metric in metric_columns(row):
        for key in (metric, f"{metric}__version", f"{metric}__model", _status(metric), _error(metric)):
            row.pop(key, None)


def _stored_rows(folder: RunFolder) -> dict[str, dict]:
    try:
        frame = folder.metrics()
    except RunFolderError as exc:  # e.g. truncated by a killed writer: everything is computed again
        log.warning("%s: computing every metric again", exc)
        return {}
    if frame is None:
        return {}
    metrics = metric_columns(frame.columns)
    return {
        str(r["pair_id"]): {k: v for k, v in r.items() if not _isnan(v) or _kept_nan(k, r, metrics)}
        for r in frame.to_dict("records")
    }


def _kept_nan(column: str, row: dict, metrics: list[str]) -> bool:
    """A NaN that is a result: the value of a metric that was computed (its version recorded), e.g. NaN for a
    pair where it is undefined. Dropping it would drop the metric's column once no pair has a number."""
    return column in metrics and isinstance(row.get(f"{column}__version"), str)


def _save(
    folder: RunFolder, rows: dict, ids: dict, skipped: dict, classes: list | None, break_lock: bool = False
) -> None:
    """Write metrics.parquet and evaluation.json under the eval/ lock, merged with what another evaluation saved
    meanwhile: its metrics' columns and the rows of pairs this one does not know are kept, never lost."""
    hooks.point("evaluate.before_save")
    with folder.eval_lock(wait=SAVE_LOCK_WAIT_S, break_stale=True, break_lock=break_lock):
        stored = _stored_rows(folder)
        merged = {pair_id: _merge_stored(stored.get(pair_id), row, ids) for pair_id, row in rows.items()}
        for row in merged.values():
            row.update(pair_status(row))  # another evaluation's failed metric keeps the pair 'error
        merged.update({pair_id: row for pair_id, row in stored.items() if pair_id not in merged})
        try:
            others = folder.evaluation().get("metrics") or {}
        except RunFolderError as exc:
            log.warning("%s: rewriting it", exc)
            others = {}
        _write(folder, merged, ids, skipped, classes, others)


def _merge_stored(stored: dict | None, row: dict, ids: dict) -> dict:
    """`row`, with the columns of metrics this evaluation did not compute taken from what is stored now (if they
    were computed on the same output)."""
    if not stored or stored.get("output_sha256") != row.get("output_sha256"):
        return row
    metrics = set(metric_columns([*row, *stored]))
    merged = {k: v for k, v in row.items() if k.split("__")[0] not in metrics or k.split("__")[0] in ids}
    merged.update({k: v for k, v in stored.items() if k.split("__")[0] in metrics and k.split("__")[0] not in ids})
    return merged


def _write(folder: RunFolder, rows: dict, ids: dict, skipped: dict, classes: list | None, others: dict) -> None:
    front = [
        "pair_id",
        "method",
        "status",
        "error",
        "output_sha256",
        "output_stamp",
        *COST_COLUMNS.values(),
        "evaluated_at",
    ]
    frame = pd.DataFrame(list(rows.values()))
    metrics = metric_columns(frame.columns)
    per_metric = (lambda m: f"{m}__version", lambda m: f"{m}__model", _status, _error)
    frame = frame.reindex(columns=front + [c for m in metrics for c in (m, *(name(m) for name in per_metric))])
    for metric in metrics:
        frame[metric] = frame[metric].astype("float64")
        for column in (_status(metric), _error(metric)):
            frame[column] = frame[column].astype(object).where(frame[column].notna(), None)
    frame["status"] = [PairStatus.of(s).value for s in frame["status"]]
    folder.write_metrics(frame)
    described = {
        m: {
            "version": describe(m).version,
            "model": ids[m],
            "better": describe(m).better,
            "summary": describe(m).summary,
            "aspect": describe(m).aspect,
            "source": describe(m).source,
        }
        for m in ids
    }
    described = {**{m: v for m, v in others.items() if m in frame.columns and m not in ids}, **described}
    folder.write_evaluation(
        {
            "updated_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "metrics": described,
            "skipped": skipped,
            "layout_classes": classes,  # the segmenter's classes, all counted by layout_miou
        }
    )


def _chunks(tasks: list, size: int):
    for start in range(0, len(tasks), size):
        yield tasks[start : start + size]


def _text(value) -> str | None:
    return None if value is None or _isnan(value) else str(value)


def _value(value):
    return None if value is None or _isnan(value) or value is pd.NA else value


def _isnan(value) -> bool:
    return isinstance(value, float) and math.isnan(value)
