"""Reading a run's stored files for evaluation and reports (layout: pipeline/runs/layout.py, storage: pipeline/storage.py).

Evaluation reads run.json (the method's name), manifest.parquet, results.parquet (why a pair failed), and per pair
output.png, meta.json (cost) and _SUCCESS; it writes only under <run>/eval/.
"""
from __future__ import annotations

import io
import logging
import posixpath
from dataclasses import dataclass

import pandas as pd

from pipeline.runs import layout, run_folder
from pipeline.errors import SpliceError
from manifests.schema import resolve_uris, validate_frame
from pipeline.storage import Storage, redact_url

log = logging.getLogger(__name__)

METRICS_PARQUET = "metrics.parquet"  # under <run>/eval/


class RunError(SpliceError, ValueError):
    """A run folder that cannot be evaluated or reported as it stands; the message says which and why."""


@dataclass
class Run:
    url: str
    method: str
    info: dict  # run.json
    manifest: pd.DataFrame  # pair_id, structure_uri, appearance_uri (absolute), dataset, domain, ...
    results: pd.DataFrame | None  # results.parquet, if written


def metrics_url(run_url: str) -> str:
    return layout.join(run_url, layout.EVAL, METRICS_PARQUET)


def read_run(storage: Storage, run_url: str) -> Run:
    """run.json, manifest.parquet and results.parquet of a run; a folder without them is a `RunError`."""
    manifest_url = layout.join(run_url, layout.MANIFEST)
    if not storage.exists(manifest_url):
        raise RunError(f"{redact_url(run_url)} is not a run folder: it has no {layout.MANIFEST}. Give the --out of a "
                       f"`splice run`, or create one from another method's outputs with `splice import`")
    info = run_folder.read_record(storage, run_url) or {}
    method = info.get("method") or posixpath.basename(run_url.rstrip("/"))
    if "method" not in info:
        log.warning("%s: run.json names no method; calling it %r", redact_url(run_url), method)
    # the run's copy holds absolute URIs; any relative one is taken relative to the run folder
    manifest = resolve_uris(validate_frame(read_parquet(storage, manifest_url), redact_url(manifest_url)), run_url)
    results = _results(storage, run_url, list(manifest["pair_id"]))
    return Run(run_url, str(method), info, manifest.reset_index(drop=True), results)


def _results(storage: Storage, run_url: str, pair_ids: list[str]) -> pd.DataFrame | None:
    """results.parquet; if it is unreadable (e.g. truncated), rebuilt from the pair folders' markers instead."""
    url = layout.join(run_url, layout.RESULTS)
    if not storage.exists(url):
        return None
    try:
        return read_parquet(storage, url)
    except RunError as exc:
        log.warning("%s; using the pair folders' _SUCCESS markers instead (`splice run` on the same --out rewrites "
                    "it)", exc)
        return pd.DataFrame(run_folder.results_rows(storage, run_url, pair_ids))


def pair_files(storage: Storage, run_url: str) -> dict[str, dict[str, str]]:
    """pair_id -> {file name -> stamp} for every file under <run>/pairs/, in one listing.

    A stamp (size and ETag, checksum or modification time) changes when the file is rewritten; evaluation uses it
    to avoid re-reading outputs whose content hash it already knows.
    """
    return {pair_id: {name: _stamp(info) for name, info in files.items()}
            for pair_id, files in run_folder.list_pair_files(storage, run_url).items()}


def _stamp(info: dict) -> str:
    version = next((info[k] for k in ("ETag", "etag", "md5Hash", "crc32c", "mtime", "LastModified", "last_modified",
                                      "updated", "created") if info.get(k) is not None), "")
    return f"{info.get('size')}:{version}"


def read_parquet(storage: Storage, url: str) -> pd.DataFrame:
    try:
        return pd.read_parquet(io.BytesIO(storage.read_bytes(url)))
    except FileNotFoundError:
        raise
    except Exception as exc:
        raise RunError(f"{redact_url(url)} is not a readable Parquet file ({type(exc).__name__}: "
                       f"{str(exc).splitlines()[0][:200] if str(exc) else ''})") from exc


def write_parquet(storage: Storage, url: str, frame: pd.DataFrame) -> None:
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    storage.write_bytes(url, buffer.getvalue())


def read_json_if_any(storage: Storage, url: str) -> dict:
    """A JSON object file, or {} if it does not exist."""
    try:
        value = storage.read_json(url)
    except FileNotFoundError:
        return {}
    except ValueError as exc:
        raise RunError(f"{redact_url(url)} is not valid JSON ({exc}); fix or remove it") from exc
    return value if isinstance(value, dict) else {}
