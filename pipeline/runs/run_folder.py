"""The run folder (docs/run-layout.md), format 3, and its one owner.

`RunFolder(storage, url)` is the only code that knows where a run's files are and what they hold. `splice run`,
`import`, `evaluate`, `status` and `report` read and write a run through it:
- paths: `path`, `pair` (a `PairFolder`: one pair's files with `_SUCCESS` last), `metrics_url`; names in layout.py;
- the target (`check_target`): a missing bucket, bad credentials, a file in place of the folder or a read-only
  location is refused before anything is written, in one line naming the URL;
- the lock (`lock`, and `eval_lock` for eval/): one writer at a time, with fencing (run_lock.RunLock);
- run.json (`record`, `write_record`) with its `format`; a format newer than this code reads is a clear error;
- manifest.parquet (`write_manifest`, `manifest`): validated once, by the command that creates the run (`splice
  run`, `import`), from the user's manifest; readers trust the run's copy and only check its columns;
- results.parquet (`results`, `write_results`; `ResultsTable` for the driver, results_table.py), rebuilt from the
  pairs' markers where it is unreadable;
- which pairs are done, damaged or pending: `listing` from one listing (pair_listing.PairListing: evaluate, import,
  report), `scan` with every marker checked (run, status);
- eval/metrics.parquet and eval/evaluation.json (`metrics`, `write_metrics`, `evaluation`, `write_evaluation`);
- ONE status vocabulary, `PairStatus` (pair_status.py), in every table and command.

Formats: 1: run.json without `format`, empty `_SUCCESS`; 2: input records in run.json, `_SUCCESS` with sizes,
hashes and the results row; 3: one status vocabulary (metrics.parquet says `done` where it said `ok`, the report
`pending` where it said `not evaluated`, results.parquet `damaged` where it said `pending`), cost (seconds, device,
peak memory) in results.parquet and read from there only, dataset/domain labels in manifest.parquet only (not in
meta.json nor metrics.parquet). Folders of formats 1 and 2 still read: their words are mapped (`PairStatus.of`),
their peak memory is taken from meta.json once.
"""

from __future__ import annotations

import io
import json
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pandas as pd

from manifests.schema import REQUIRED, ManifestError, read_manifest, resolve_uris
from pipeline.redaction import is_masked
from pipeline.runs import layout
from pipeline.runs.layout import FORMAT
from pipeline.runs.pair_folder import PairFolder, RunFolderError, read_parquet
from pipeline.runs.pair_listing import PairListing, Scan
from pipeline.runs.pair_status import PairStatus, status_words
from pipeline.runs.results_table import ResultsTable, damaged_row, row_from_meta
from pipeline.runs.run_lock import LockLost, RunLock
from pipeline.runs.target import check_target
from pipeline.storage import Storage, redact_text, redact_url
from pipeline.transient import with_retries

log = logging.getLogger(__name__)

__all__ = ["FORMAT", "PairListing", "PairStatus", "RunFolder", "RunFolderError", "ResultsTable", "Run", "Scan"]
LISTING_THREADS = 16
RESULT_COLUMNS = [
    "pair_id",
    "status",
    "error",
    "seconds",
    "device",
    "peak_memory_bytes",
    "attempts",
    "method",
    "weights_id",
    "started_at",
    "finished_at",
    "wall_seconds",
]
COST_COLUMNS = {"seconds": "train_seconds", "device": "train_device", "peak_memory_bytes": "train_peak_memory_bytes"}


INPUT_URIS = ("structure_uri", "appearance_uri")  # columns of inputs.parquet: text
INPUT_RECORDS = ("structure", "appearance", "settings")  # columns of inputs.parquet: JSON text (fingerprints, settings)


def _masked(uri) -> str | None:
    return redact_url(str(uri)) if isinstance(uri, str) else None


FORMAT_1_MARKERS = "format_1_markers"  # run.json of a folder begun in format 1: its empty _SUCCESS markers read


def _has_format_1_markers(record: dict | None) -> bool:
    return record is not None and (record.get("format", 1) == 1 or bool(record.get(FORMAT_1_MARKERS)))


@dataclass
class Run:
    """A run folder as evaluation and the report read it."""

    folder: RunFolder
    method: str
    info: dict  # run.json
    manifest: pd.DataFrame  # pair_id, structure_uri, appearance_uri (absolute), dataset, domain, ...
    results: pd.DataFrame | None  # results.parquet, if written (statuses in the one vocabulary)

    @property
    def url(self) -> str:
        return self.folder.url


class RunFolder:
    """A run folder by URL; every read and write of one goes through here."""

    def __init__(self, storage: Storage, url: str):
        self.storage, self.url = storage, url

    def __repr__(self) -> str:
        return f"RunFolder({redact_url(self.url)!r})"

    # --- paths ------------------------------------------------------------------------------------------------

    def path(self, *parts: str) -> str:
        return layout.join(self.url, *parts)

    def pair(self, pair_id: str) -> PairFolder:
        return PairFolder(self.storage, layout.pair_dir(self.url, pair_id), pair_id)

    def pair_file(self, pair_id: str, name: str) -> str:
        return layout.pair_file(self.url, pair_id, name)

    @property
    def metrics_url(self) -> str:
        return self.path(layout.EVAL, layout.METRICS)

    # --- the target and the lock ------------------------------------------------------------------------------

    def check_target(self, *, what: str = "--out", create: bool = True) -> None:
        check_target(self.storage, self.url, what=what, create=create)

    def lock(self, command: str, **options) -> RunLock:
        """The run folder's lock for `command` (not yet acquired): `splice run` and `import` hold it throughout."""
        return RunLock(self.storage, self.url, command=command, **options)

    def eval_lock(self, **options) -> RunLock:
        """The lock of eval/: an evaluation holds it while it reads, merges and writes metrics.parquet, so two
        evaluations never lose each other's rows or metrics (while `splice run` may go on filling the folder)."""
        return RunLock(self.storage, self.path(layout.EVAL), command="splice evaluate", **options)

    def lock_holder(self) -> dict | None:
        try:
            holder = self.storage.read_json(self.path(layout.LOCK))
        except (FileNotFoundError, ValueError):
            return None
        return holder if isinstance(holder, dict) else None

    def fence(self, token: str | None) -> None:
        """Raise LockLost unless the lock still holds `token` (checked by workers before their final writes)."""
        if not token:
            return
        holder = self.lock_holder()
        if not holder or holder.get("token") != token:
            who = f"host {holder.get('host')}, pid {holder.get('pid')}" if holder else "lock removed"
            raise LockLost(f"the run's lock was taken over by another command ({who}): this pair was not written")

    # --- run.json ---------------------------------------------------------------------------------------------

    def record(self) -> dict | None:
        """run.json, or None if there is none; a format newer than this code reads is a clear error."""
        url = self.path(layout.RUN_JSON)
        try:
            record = self.storage.read_json(url)
        except FileNotFoundError:
            return None
        except ValueError as exc:
            log.warning("ignoring unreadable %s (%s)", redact_url(url), exc)
            return None
        if not isinstance(record, dict):
            log.warning("ignoring %s: not a JSON object", redact_url(url))
            return None
        version = record.get("format", 1)
        if not isinstance(version, int) or isinstance(version, bool) or not 1 <= version <= FORMAT:
            raise RunFolderError(
                f"run {redact_url(self.url)} has run.json format {version!r}, which this "
                f"splice-pipeline does not read (formats 1 to {FORMAT}): upgrade splice-pipeline "
                f"to use it"
            )
        return record

    def write_record(self, record: dict) -> dict:
        """Write run.json in this format, small whatever the number of pairs: the pairs' inputs go to inputs.parquet
        (`write_inputs`), never here. A folder of format 1 keeps saying that its older pairs' markers are empty
        (FORMAT_1_MARKERS), so rewriting run.json never turns them into damaged pairs."""
        record = {"format": FORMAT, **{k: v for k, v in record.items() if k not in ("format", "inputs")}}
        if FORMAT_1_MARKERS not in record and _has_format_1_markers(self.record()):
            record[FORMAT_1_MARKERS] = True
        self.storage.write_json(self.path(layout.RUN_JSON), record)
        return record

    # --- inputs.parquet ---------------------------------------------------------------------------------------

    def write_inputs(self, inputs: dict[str, dict]) -> None:
        """What each pair was made from (rerun.pair_inputs): pair_id -> {structure_uri, appearance_uri (masked),
        structure, appearance (fingerprints), settings}, one row per pair; nested values as JSON text."""
        rows = [
            {
                "pair_id": pair_id,
                **{k: _masked((value or {}).get(k)) for k in INPUT_URIS},
                **{k: json.dumps((value or {}).get(k), sort_keys=True, default=str) for k in INPUT_RECORDS},
            }
            for pair_id, value in inputs.items()
        ]
        frame = pd.DataFrame(rows, columns=["pair_id", *INPUT_URIS, *INPUT_RECORDS])
        self._write_parquet(self.path(layout.INPUTS), frame.astype(object).where(frame.notna(), None))

    def inputs(self, record: dict | None = None) -> dict[str, dict]:
        """What each pair was made from, as `write_inputs` took it: from inputs.parquet, or from run.json (`record`,
        read if not given) where an older run kept it there; {} where neither records any."""
        try:
            frame = self._read_parquet(self.path(layout.INPUTS))
        except FileNotFoundError:
            record = self.record() if record is None else record
            return dict((record or {}).get("inputs") or {})
        return {
            str(row["pair_id"]): {
                **{k: row.get(k) for k in INPUT_URIS},
                **{k: json.loads(row[k]) if isinstance(row.get(k), str) else None for k in INPUT_RECORDS},
            }
            for row in frame.to_dict("records")
        }

    def has_inputs(self, record: dict | None) -> bool:
        return self.storage.exists(self.path(layout.INPUTS)) or "inputs" in (record or {})

    # --- manifest.parquet -------------------------------------------------------------------------------------

    def write_manifest(self, frame: pd.DataFrame) -> None:
        """The manifest as run: a frame the creating command has validated (manifests.schema.read_manifest), its
        image URIs with credentials masked (they stay in the manifest the run was made from, see `read`)."""
        frame = frame.reset_index(drop=True)
        for column in ("structure_uri", "appearance_uri"):
            if column in frame.columns:
                frame[column] = [redact_url(str(uri)) for uri in frame[column]]
        self._write_parquet(self.path(layout.MANIFEST), frame)

    def has_manifest(self) -> bool:
        return self.storage.exists(self.path(layout.MANIFEST))

    def manifest(self, columns: list[str] | None = None) -> pd.DataFrame:
        """The run's manifest, trusted (validated when the run was made): only its columns are checked; image
        URIs are absolute (a relative one is taken relative to the run folder)."""
        url = self.path(layout.MANIFEST)
        try:
            frame = self._read_parquet(url, columns=columns)
        except FileNotFoundError:
            raise RunFolderError(
                f"{redact_url(self.url)} is not a run folder: it has no {layout.MANIFEST}. Give the "
                f"--out of a `splice run`, or create one from another method's outputs with "
                f"`splice import`"
            ) from None
        lacking = [c for c in (columns or REQUIRED) if c in REQUIRED and c not in frame.columns]
        if lacking:
            raise RunFolderError(
                f"{redact_url(url)} lacks column(s) {', '.join(lacking)}: it was not written by "
                f"splice-pipeline; run `splice run` (or `splice import`) into a new folder"
            )
        frame = frame.assign(pair_id=frame["pair_id"].astype(str)).reset_index(drop=True)
        if {"structure_uri", "appearance_uri"} <= set(frame.columns):
            frame = resolve_uris(frame, self.url)
        return frame

    def pair_ids(self) -> list[str]:
        return list(self.manifest(columns=["pair_id"])["pair_id"])

    def read(self) -> Run:
        """run.json, manifest.parquet and results.parquet, as evaluation and the report read them."""
        manifest = self.manifest()  # first: a folder without one is not a run folder
        info = self.record() or {}
        method = info.get("method") or self.url.rstrip("/").rsplit("/", 1)[-1]
        if "method" not in info:
            log.warning("%s: run.json names no method; calling it %r", redact_url(self.url), method)
        manifest = self._with_credentials(manifest, info.get("manifest"))
        return Run(self, str(method), info, manifest, self.results(list(manifest["pair_id"])))

    def _with_credentials(self, manifest: pd.DataFrame, source: str | None) -> pd.DataFrame:
        """The run's manifest with each masked image URI (its credentials were not stored) taken back, in memory only,
        from the manifest the run was made from (run.json `manifest`), where that still names the same image."""
        columns = [c for c in ("structure_uri", "appearance_uri") if c in manifest.columns]
        masked = manifest[columns].map(lambda uri: is_masked(str(uri))).to_numpy().any() if columns else False
        if not masked:
            return manifest
        try:
            if not source or is_masked(source):
                raise ManifestError("its URL is not recorded in run.json")
            original = read_manifest(source, self.storage).frame.set_index("pair_id")
        except (ManifestError, OSError) as exc:
            log.warning(
                "%s: some input URLs carry credentials, which the run folder does not store; reading them needs the "
                "manifest the run was made from (%s), which cannot be read (%s): those inputs will not be read",
                redact_url(self.url),
                redact_url(source or "unknown"),
                redact_text(exc),
            )
            return manifest
        frame = manifest.copy()
        for column in columns:
            clear = frame["pair_id"].map(original[column]) if column in original.columns else None
            if clear is None:
                continue
            same = [isinstance(c, str) and redact_url(c) == s for c, s in zip(clear, frame[column])]
            frame[column] = [c if ok else s for c, s, ok in zip(clear, frame[column], same)]
        return frame

    # --- results.parquet --------------------------------------------------------------------------------------

    def results(self, pair_ids: list[str] | None = None) -> pd.DataFrame | None:
        """results.parquet (None if there is none), statuses in the one vocabulary. Unreadable (e.g. truncated), it
        is rebuilt from the pairs' markers for `pair_ids` (None without them). Written before format 3, it lacks
        peak memory: that is taken from the done pairs' meta.json."""
        url = self.path(layout.RESULTS)
        try:
            frame = self._read_parquet(url)
        except FileNotFoundError:
            return None
        except RunFolderError as exc:
            if pair_ids is None:
                log.warning("ignoring %s", exc)
                return None
            log.warning(
                "%s; using the pair folders' _SUCCESS markers instead (`splice run` on the same --out rewrites it)", exc
            )
            return pd.DataFrame(self.results_rows(pair_ids))
        frame = frame.assign(pair_id=frame["pair_id"].astype(str), status=status_words(frame["status"]))
        if "peak_memory_bytes" not in frame.columns:
            frame = self._cost_from_meta(frame)
        return frame

    def _cost_from_meta(self, frame: pd.DataFrame) -> pd.DataFrame:
        done = [p for p, s in zip(frame["pair_id"], frame["status"]) if s == PairStatus.DONE]
        with ThreadPoolExecutor(LISTING_THREADS) as pool:
            metas = dict(zip(done, pool.map(lambda p: self.pair(p).read_meta(), done)))
        peak = [metas.get(p, {}).get("peak_memory_bytes") for p in frame["pair_id"]]
        return frame.assign(peak_memory_bytes=pd.to_numeric(pd.Series(peak, index=frame.index, dtype=object)))

    def write_results(self, rows: list[dict]) -> None:
        frame = pd.DataFrame(rows)
        for column in RESULT_COLUMNS:
            if column not in frame.columns:
                frame[column] = None
        frame = frame[RESULT_COLUMNS].astype({"pair_id": str})
        frame["status"] = status_words(frame["status"])
        frame["attempts"] = pd.to_numeric(frame["attempts"]).astype("Int64")
        for column in ("seconds", "peak_memory_bytes", "wall_seconds"):
            frame[column] = pd.to_numeric(frame[column]).astype("float64")
        for column in ("error", "device", "method", "weights_id", "started_at", "finished_at"):
            frame[column] = frame[column].astype(object).where(frame[column].notna(), None)
        self._write_parquet(self.path(layout.RESULTS), frame)

    def results_rows(self, pair_ids: list[str], found: Scan | None = None) -> list[dict]:
        """results.parquet rebuilt from the pair folders alone: done (verified), damaged, pending."""
        found = found or self.scan()
        rows = []
        for pair_id in pair_ids:
            if pair_id in found.done:
                rows.append(self.done_row(pair_id, found.markers.get(pair_id)))
            elif pair_id in found.damaged:
                rows.append(damaged_row(pair_id, found.damaged[pair_id]))
            else:
                rows.append({"pair_id": pair_id, "status": PairStatus.PENDING.value})
        return rows

    def done_row(self, pair_id: str, marker: dict | None = None) -> dict:
        """The results row of a done pair: from its marker, else (format 1) from its meta.json."""
        if marker and isinstance(marker.get("row"), dict):
            return {**marker["row"], "pair_id": pair_id, "status": PairStatus.DONE.value, "error": None}
        return row_from_meta(pair_id, self.pair(pair_id).read_meta())

    # --- the pairs --------------------------------------------------------------------------------------------

    def listing(self) -> PairListing:
        """What one listing of <run>/pairs/ says of each pair (done, damaged, pending: `PairListing.state`), no file
        read: the one answer `evaluate`, `import` and `report` take."""
        return PairListing.read(self.storage, self.path(layout.PAIRS))

    def pairs_with(self, name: str) -> list[str]:
        """The pairs that have a file `name` now (e.g. progress.json while they train), from one glob of pairs/*/."""
        return [url.rstrip("/").split("/")[-2] for url in self.storage.glob(self.pair_file("*", name))]

    def scan(self, *, verify: bool = False) -> Scan:
        """Check every `_SUCCESS` against its pair's files: sizes from one listing, sha256 too with verify=True."""
        listing = self.listing().sizes()
        marked = sorted(p for p, files in listing.items() if layout.SUCCESS in files)
        legacy = self._marker_format() == 1  # format 1 wrote empty markers; later ones, sizes and hashes
        with ThreadPoolExecutor(LISTING_THREADS) as pool:
            verdicts = list(pool.map(lambda p: self.pair(p).check(listing[p], verify, legacy), marked))
        result = Scan()
        for pair_id, (marker, problem) in zip(marked, verdicts):
            result.markers[pair_id] = marker
            if problem:
                result.damaged[pair_id] = problem
            else:
                result.done.add(pair_id)
        return result

    def _marker_format(self) -> int:
        """The oldest format the folder's markers may be written in: 1 where run.json names none (format 1), where a
        format-1 folder was rewritten (FORMAT_1_MARKERS) or where there is no run.json to tell; else run.json's."""
        if not self.storage.exists(self.path(layout.RUN_JSON)):
            return 1
        return 1 if _has_format_1_markers(self.record()) else FORMAT

    def unmark(self, pair_ids: set[str]) -> None:
        """Remove the `_SUCCESS` of pairs to redo (before any work, so an interrupted run never leaves them done)."""
        if pair_ids:
            log.info("removing the _SUCCESS marker of %d pair(s) to redo", len(pair_ids))
            fs, _ = self.storage.fs(self.url)
            paths = [self.storage.fs(self.pair_file(p, layout.SUCCESS))[1] for p in sorted(pair_ids)]
            with_retries(lambda: fs.rm(paths), what=f"removing {len(paths)} _SUCCESS marker(s) of pairs to redo")

    # --- eval/ ------------------------------------------------------------------------------------------------

    def metrics(self) -> pd.DataFrame | None:
        """eval/metrics.parquet (None if never written), statuses in the one vocabulary; RunFolderError if it is
        unreadable."""
        try:
            frame = self._read_parquet(self.metrics_url)
        except FileNotFoundError:
            return None
        return frame.assign(pair_id=frame["pair_id"].astype(str), status=status_words(frame["status"]))

    def write_metrics(self, frame: pd.DataFrame) -> None:
        self._write_parquet(self.metrics_url, frame)

    def evaluation(self) -> dict:
        """eval/evaluation.json, or {} if there is none."""
        url = self.path(layout.EVAL, layout.EVALUATION_JSON)
        try:
            value = self.storage.read_json(url)
        except FileNotFoundError:
            return {}
        except ValueError as exc:
            raise RunFolderError(f"{redact_url(url)} is not valid JSON ({exc}); fix or remove it") from exc
        return value if isinstance(value, dict) else {}

    def write_evaluation(self, value: dict) -> None:
        self.storage.write_json(self.path(layout.EVAL, layout.EVALUATION_JSON), {"format": FORMAT, **value})

    # --- Parquet ----------------------------------------------------------------------------------------------

    def _read_parquet(self, url: str, columns: list[str] | None = None) -> pd.DataFrame:
        return read_parquet(self.storage, url, columns)  # FileNotFoundError passes

    def _write_parquet(self, url: str, frame: pd.DataFrame) -> None:
        buffer = io.BytesIO()
        frame.to_parquet(buffer, index=False)
        self.storage.write_bytes(url, buffer.getvalue())
