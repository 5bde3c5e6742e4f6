"""What a run folder says about itself: run.json, results.parquet and the pairs that are done.

Everything here is read from storage alone, so the driver, `splice status` and a resumed run agree. A pair is
done if and only if `pairs/<id>/_SUCCESS` exists and matches its files (pipeline/runs/run_folder.py); results.parquet
adds the status of the others (failed with its error, damaged or pending) and the cost of each.
"""
from __future__ import annotations

import io
import json
import logging
import os
import socket
import subprocess
import sys
import time
from datetime import datetime, timezone

import pandas as pd

from pipeline import __version__
from pipeline.runs import layout
from pipeline.runs.run_folder import (FORMAT, RunMismatch, Scan, damaged_row, read_record, row_from_marker,  # noqa: F401
                         row_from_meta)
from pipeline.storage import Storage, redact, redact_url

log = logging.getLogger(__name__)
RESULT_COLUMNS = ["pair_id", "status", "error", "seconds", "device", "attempts", "method", "weights_id",
                  "started_at", "finished_at", "wall_seconds"]
STATUSES = ("done", "failed", "pending")
FLUSH_SECONDS = 5.0
# settings that may change between invocations of one run without making its outputs incomparable
CHANGEABLE_SETTINGS = ("log_every", "checkpoint_every")


def done_pair_ids(storage: Storage, run: str) -> set[str]:
    """Pair ids with `_SUCCESS`, from one listing of the run folder."""
    markers = storage.glob(layout.join(run, layout.PAIRS, "*", layout.SUCCESS))
    return {marker.rstrip("/").split("/")[-2] for marker in markers}


def read_results(storage: Storage, run: str) -> pd.DataFrame | None:
    url = layout.join(run, layout.RESULTS)
    try:
        return pd.read_parquet(io.BytesIO(storage.read_bytes(url)))
    except FileNotFoundError:
        return None
    except Exception as exc:  # a damaged table is rebuilt from the pair folders
        log.warning("ignoring unreadable %s (%s)", redact_url(url), exc)
        return None


class ResultsTable:
    """One row per manifest pair; kept in memory by the driver and written to results.parquet."""

    def __init__(self, storage: Storage, run: str, pair_ids: list[str], found: Scan):
        self.storage, self.run = storage, run
        self.url = layout.join(run, layout.RESULTS)
        previous = read_results(storage, run)
        previous = {} if previous is None else {r["pair_id"]: r for r in previous.to_dict("records")}
        self.rows: dict[str, dict] = {}
        for pair_id in pair_ids:
            old = previous.get(pair_id)
            if pair_id in found.done:
                self.rows[pair_id] = (old if old and old.get("status") == "done"
                                      else row_from_marker(storage, run, pair_id, found.markers.get(pair_id)))
            elif pair_id in found.damaged:
                self.rows[pair_id] = damaged_row(pair_id, found.damaged[pair_id])
            elif old and old.get("status") == "failed":
                self.rows[pair_id] = old  # still failed until a new attempt says otherwise
            else:
                self.rows[pair_id] = {"pair_id": pair_id, "status": "pending"}
        self._written = 0.0

    def update(self, row: dict) -> None:
        self.rows[row["pair_id"]] = row

    def maybe_write(self) -> None:
        if time.monotonic() - self._written >= FLUSH_SECONDS:
            self.write()

    def write(self) -> None:
        frame = pd.DataFrame(list(self.rows.values()))
        for column in RESULT_COLUMNS:
            if column not in frame.columns:
                frame[column] = None
        frame = frame[RESULT_COLUMNS].astype({"pair_id": str, "status": str})
        frame["attempts"] = pd.to_numeric(frame["attempts"]).astype("Int64")
        for column in ("seconds", "wall_seconds"):
            frame[column] = pd.to_numeric(frame[column]).astype("float64")
        for column in ("error", "device", "method", "weights_id", "started_at", "finished_at"):
            frame[column] = frame[column].astype(object).where(frame[column].notna(), None)
        buffer = io.BytesIO()
        frame.to_parquet(buffer, index=False)
        self.storage.write_bytes(self.url, buffer.getvalue())
        self._written = time.monotonic()

    def counts(self) -> dict[str, int]:
        counts = dict.fromkeys(STATUSES, 0)
        for row in self.rows.values():
            counts[row["status"]] = counts.get(row["status"], 0) + 1
        return counts

    def failures(self) -> list[tuple[str, str]]:
        return [(r["pair_id"], r.get("error") or "") for r in self.rows.values() if r["status"] == "failed"]

    def weights_ids(self) -> list[str]:
        return sorted({r["weights_id"] for r in self.rows.values() if isinstance(r.get("weights_id"), str)})

    def mark_done(self, found: Scan) -> None:
        """Pairs whose _SUCCESS appeared without their row reaching the driver (e.g. interrupted just then)."""
        for pair_id in found.done & self.rows.keys():
            if self.rows[pair_id].get("status") != "done":
                self.rows[pair_id] = row_from_marker(self.storage, self.run, pair_id, found.markers.get(pair_id))


# --- run.json ------------------------------------------------------------------------------------------------

def read_run_record(storage: Storage, run: str) -> dict | None:
    return read_record(storage, run)


def settings_mismatch(existing: dict | None, run: str, method, config) -> str | None:
    """Why the run folder's finished pairs are not comparable with `method` and `config` now, or None."""
    if not existing:
        return None
    try:
        _check_same_settings(existing, run, method.name, method.settings(config))
    except RunMismatch as exc:
        return str(exc)
    return None


def write_run_record(storage: Storage, settings, method, manifest, *, previous: dict | None = None,
                     finished: dict | None = None, weights_ids: list[str] | None = None,
                     existing: dict | None = None, inputs: dict | None = None) -> dict:
    """Write run.json: at the start (after the driver checked an `existing` one agrees), and again at the end.

    `inputs`: each pair's input URIs (redacted), fingerprints and per-pair settings (run_folder.pair_inputs)."""
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    if previous is None:
        method_settings = method.settings(settings.config)
        record = {
            "format": FORMAT,
            "method": method.name,
            "settings": method_settings,
            "backbone": settings.config.backbone if method.uses_backbone else None,
            "backbone_fallback": getattr(settings, "backbone_fallback", None) if method.uses_backbone else None,
            "backbone_weights_ids": (existing or {}).get("backbone_weights_ids", []),
            "code_version": {"splice_pipeline": __version__, "git_commit": _git_commit()},
            "manifest": redact_url(manifest.url),
            "pairs": len(manifest),
            "resources": {"gpus_per_pair": settings.gpus_per_pair, "cpus_per_pair": settings.cpus_per_pair,
                          "gpus_per_task": getattr(settings, "gpus_per_task", None),
                          "pack": getattr(settings, "pack", None),
                          "max_retries": settings.max_retries},
            "ray_address": redact_url(settings.address or os.environ.get("RAY_ADDRESS") or "embedded"),
            "storage_options": redact(settings.storage_options),
            "created_at": (existing or {}).get("created_at", now),
            "invocations": [*(existing or {}).get("invocations", []),
                            {"started_at": now, "host": socket.gethostname(), "force": settings.force,
                             "limit": settings.limit, "only": list(settings.only), "python": sys.version.split()[0]}],
            "inputs": inputs if inputs is not None else (existing or {}).get("inputs", {}),
        }
    else:
        record = dict(previous)
        record["invocations"] = [*record["invocations"][:-1], {**record["invocations"][-1], "finished_at": now, **(finished or {})}]
        record["backbone_weights_ids"] = sorted(set(record.get("backbone_weights_ids", [])) | set(weights_ids or []))
        record["counts"] = finished
    record["updated_at"] = now
    storage.write_bytes(layout.join(settings.out, layout.RUN_JSON), json.dumps(record, indent=2, default=str).encode())
    return record


def _check_same_settings(existing: dict, run: str, method: str, settings: dict) -> None:
    if existing.get("method") != method:
        raise RunMismatch(f"run {redact_url(run)} was made with method {existing.get('method')!r}, not {method!r}: "
                          f"write to another --out, or pass --force to redo every pair with {method!r}")
    old = {k: v for k, v in (existing.get("settings") or {}).items() if k not in CHANGEABLE_SETTINGS}
    new = json.loads(json.dumps({k: v for k, v in settings.items() if k not in CHANGEABLE_SETTINGS}, default=str))
    changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    if changed:
        diffs = ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in changed[:8])
        raise RunMismatch(f"run {redact_url(run)} was made with other settings ({diffs}): its finished pairs would not "
                          f"be comparable. Write to another --out, or pass --force to redo every pair")


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=os.path.dirname(os.path.abspath(__file__)),
                             capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None
