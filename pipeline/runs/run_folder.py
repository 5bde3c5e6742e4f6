"""The rules of a run folder (DESIGN.md, "Storage layout of a run"), in one place, format 2.

Every command that writes or judges a run folder (`splice run`, `import`, `evaluate`, `status`, `report`) goes
through here:
- the target: `check_target` refuses, before anything is written, a missing bucket (never created), bad
  credentials, a file in place of the folder and a read-only location, each with one line naming the URL;
- what a run was made from: `pair_inputs` (each pair's input URIs, redacted, a cheap content fingerprint and its
  per-pair settings), recorded in run.json and compared on every re-run (`changed_pairs`);
- the lock: `lock` (one writer at a time, with fencing; see run_lock.RunLock);
- markers that mean something: `_SUCCESS` holds the size and sha256 of the pair's files and its results row
  (`success_marker`); `scan` verifies them (sizes from one listing; hashes with verify=True) and tells done pairs
  from damaged ones;
- results rebuilt from the markers (`results_rows`) wherever results.parquet or a meta.json is unreadable.

Older folders (run.json without `format`, empty `_SUCCESS`) still read: an empty marker means "sizes unknown", so
a pair counts as done if its output.png exists and is not empty (with verify=True: if it decodes).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable

from pipeline.runs import layout
from pipeline.errors import SpliceError
from pipeline.runs.run_lock import RunLock
from pipeline.storage import Storage, StorageError, http_status, is_local, redact_text, redact_url

log = logging.getLogger(__name__)

FORMAT = 2  # run.json "format": 1 (or absent) before input records and _SUCCESS contents, 2 since
HASHED_INPUT_BYTES = 64 << 10  # local inputs up to this size are fingerprinted by content hash, larger by size+mtime
LISTING_THREADS = 16
LISTED_FOLDER_MIN = 32  # remote inputs: a folder holding this many of them is listed once instead of asked per object
PAIR_SETTINGS = ("seed", "steps", "backbone")  # per-pair overrides a manifest may carry


class RunFolderError(SpliceError):
    """A run folder that cannot be used as it stands; the message says which and what to do."""


class RunMismatch(SpliceError):
    """A run folder was started with other settings or inputs than the ones asked for now."""


# --- the target ----------------------------------------------------------------------------------------------

def check_target(storage: Storage, url: str, *, what: str = "--out", create: bool = True) -> None:
    """Fail with one line (StorageError, exit 2) unless `url` can be a run folder: never creates a bucket."""
    name = redact_url(url)
    if is_local(url):
        _check_local_target(storage.fs(url)[1], name, what, create)
        return
    fs, path = storage.fs(url)
    bucket = path.split("/", 1)[0]
    try:
        fs.invalidate_cache(bucket)
        fs.info(bucket)  # one request (HEAD bucket); never a listing of a large bucket
        is_file = path.rstrip("/") != bucket and fs.isfile(path.rstrip("/"))
    except FileNotFoundError:
        raise StorageError(f"bucket {bucket!r} of {what} {name} does not exist: create it first (splice never creates "
                           f"buckets), or check the URL for a typo") from None
    except Exception as exc:  # credentials, endpoint, network: one line that says what to check
        raise StorageError(describe_access_error(exc, f"{what} {name}")) from None
    if is_file:
        raise StorageError(f"{what} {name} is a file, not a run folder: give a folder URL (a new one, or the --out of "
                           f"an earlier run)")


def _check_local_target(path: str, name: str, what: str, create: bool) -> None:
    if os.path.exists(path) and not os.path.isdir(path):
        raise StorageError(f"{what} {name} is a file, not a run folder: give a folder path (a new one, or the --out of "
                           f"an earlier run)")
    existing = path
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise StorageError(f"{what} {name} cannot be created: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK):
        raise StorageError(f"{what} {name} cannot be written ({existing} is read-only): choose a writable location, "
                           f"or check its permissions and that its filesystem is not mounted read-only")
    if create:
        try:
            os.makedirs(path, exist_ok=True)
        except OSError as exc:
            raise StorageError(f"{what} {name} cannot be created ({exc.strerror or exc}): choose a writable location, "
                               f"or check its permissions and free space") from None


def describe_access_error(exc: BaseException, what: str) -> str:
    """One line for an error met while reaching a store: credentials, a missing bucket, the endpoint."""
    status = http_status(exc)
    text = redact_text(f"{type(exc).__name__}: {exc}".splitlines()[0])[:200]
    if isinstance(exc, PermissionError) or status in (401, 403):
        return (f"{what}: the store refused these credentials ({text}): check the key and secret (--storage-option "
                f"key=... secret=..., or AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY) and that they may use this bucket")
    if not status and (isinstance(exc, OSError) or any(w in type(exc).__name__.lower() for w in ("connect", "endpoint"))):
        return (f"{what}: cannot reach the store ({text}): check the endpoint (endpoint_url, AWS_ENDPOINT_URL) "
                f"and the network")
    return f"{what}: the store answered with an error ({text}): check the URL, the endpoint and the credentials"


# --- run.json ------------------------------------------------------------------------------------------------

def read_record(storage: Storage, run: str) -> dict | None:
    """run.json, or None if there is none; a format newer than this code reads is a clear error."""
    url = layout.join(run, layout.RUN_JSON)
    try:
        record = storage.read_json(url)
    except FileNotFoundError:
        return None
    except ValueError as exc:
        log.warning("ignoring unreadable %s (%s)", redact_url(url), exc)
        return None
    if not isinstance(record, dict):
        log.warning("ignoring %s: not a JSON object", redact_url(url))
        return None
    version = record.get("format", 1)
    if not isinstance(version, int) or version > FORMAT:
        raise RunFolderError(f"run {redact_url(run)} has run.json format {version!r}, newer than this splice-pipeline "
                             f"reads (format {FORMAT} and older): upgrade splice-pipeline to use it")
    return record


# --- what a run was made from --------------------------------------------------------------------------------

def fingerprint(storage: Storage, uri: str, listed: dict | None = None) -> dict | None:
    """A cheap content fingerprint: size and sha256 (small local files), size and mtime (larger ones), size and
    ETag (objects; from `listed`, a listing of its folder, if given). None if the input cannot be listed (its
    pair will fail and say why)."""
    try:
        if is_local(uri):
            path = storage.fs(uri)[1]
            info = os.stat(path)
            found = {"size": info.st_size, "mtime_ns": info.st_mtime_ns}
            if os.path.isfile(path) and info.st_size <= HASHED_INPUT_BYTES:
                with open(path, "rb") as handle:
                    found["sha256"] = hashlib.sha256(handle.read()).hexdigest()
            return found
        fs, path = storage.fs(uri)
        info = (listed or {}).get(path) or fs.info(path)
        version = next((str(info[k]).strip('"') for k in ("ETag", "etag", "md5Hash", "crc32c", "generation",
                                                          "LastModified", "last_modified", "mtime") if info.get(k)), None)
        return {"size": info.get("size"), "version": version}
    except Exception:  # unreadable now: nothing to compare; the pair itself reports the error
        return None


def _listings(storage: Storage, uris: list[str]) -> dict[str, dict]:
    """path -> listing entry for remote inputs, one listing per folder holding several of them (not one request
    per object)."""
    folders: dict[str, list[str]] = {}
    for uri in uris:
        if not is_local(uri) and "?" not in uri:
            folders.setdefault(uri.rsplit("/", 1)[0], []).append(uri)

    def listing(folder: str) -> dict:
        try:
            fs, path = storage.fs(folder)
            return {entry["name"]: entry for entry in fs.ls(path, detail=True)}
        except Exception:  # fall back to one request per object
            return {}

    shared = [folder for folder, members in folders.items() if len(members) >= LISTED_FOLDER_MIN]
    with ThreadPoolExecutor(LISTING_THREADS) as pool:
        return {k: v for found in pool.map(listing, shared) for k, v in found.items()}


def pair_inputs(storage: Storage, pairs) -> dict[str, dict]:
    """pair_id -> {structure_uri, appearance_uri (redacted), structure, appearance (fingerprints), settings}.

    `pairs`: PairSpec-like objects (pair_id, structure_uri, appearance_uri, seed, steps, backbone)."""
    pairs = list(pairs)
    uris = sorted({uri for pair in pairs for uri in (pair.structure_uri, pair.appearance_uri)})
    listed = _listings(storage, uris)
    with ThreadPoolExecutor(LISTING_THREADS) as pool:
        prints = dict(zip(uris, pool.map(lambda uri: fingerprint(storage, uri, listed), uris)))
    return {pair.pair_id: {"structure_uri": redact_url(pair.structure_uri),
                           "appearance_uri": redact_url(pair.appearance_uri),
                           "structure": prints[pair.structure_uri], "appearance": prints[pair.appearance_uri],
                           "settings": {k: getattr(pair, k, None) for k in PAIR_SETTINGS}}
            for pair in pairs}


def changed_pairs(old: dict[str, dict], new: dict[str, dict]) -> dict[str, str]:
    """pair_id -> what differs, for pairs recorded in both with other inputs or per-pair settings."""
    changed = {}
    for pair_id in sorted(old.keys() & new.keys()):
        was, now = old[pair_id] or {}, new[pair_id]
        reasons = []
        for role in ("structure", "appearance"):
            if was.get(f"{role}_uri") != now[f"{role}_uri"]:
                reasons.append(f"{role} {was.get(f'{role}_uri')} -> {now[f'{role}_uri']}")
            elif not same_content(was.get(role), now[role]):
                reasons.append(f"{role} image {now[f'{role}_uri']} has changed")
        for key in PAIR_SETTINGS:
            before, after = (was.get("settings") or {}).get(key), now["settings"].get(key)
            if before != after:
                reasons.append(f"{key} {before!r} -> {after!r}")
        if reasons:
            changed[pair_id] = "; ".join(reasons)
    return changed


def same_content(a: dict | None, b: dict | None) -> bool:
    if not a or not b:
        return True  # unknown on one side: nothing to go by
    if a.get("sha256") and b.get("sha256"):
        return a["sha256"] == b["sha256"]
    return all(a.get(k) == b.get(k) for k in ("size", "mtime_ns", "version"))


def describe_changes(changed: dict[str, str], limit: int = 10) -> str:
    lines = [f"  {pair_id}: {why}" for pair_id, why in list(changed.items())[:limit]]
    if len(changed) > limit:
        lines.append(f"  ... and {len(changed) - limit} more")
    return "\n".join(lines)


# --- a re-run of the same folder ------------------------------------------------------------------------

@dataclass
class RerunPlan:
    existing: dict | None  # run.json as found
    inputs: dict  # what run.json records of each pair's inputs from now on
    manifest_frame: object  # the run's manifest.parquet from now on
    found: Scan  # done pairs (those to redo removed) and damaged ones
    unmark: set  # pairs whose _SUCCESS goes before any work: redone


def plan_rerun(storage: Storage, run: str, manifest, selected: set[str], *, force: bool, verify: bool,
               settings_check: Callable[[dict | None], str | None]) -> RerunPlan:
    """What a `splice run` of `manifest` into `run` may do: refuse (RunMismatch) when the run-level settings differ
    (`settings_check(run.json)` says why) or when done pairs were made from other inputs or per-pair settings,
    unless `force`, which then redoes exactly the pairs concerned (every selected pair for a settings change);
    damaged pairs are redone."""
    existing = read_record(storage, run)
    mismatch = settings_check(existing)
    found = scan(storage, run, verify=verify)
    inputs = pair_inputs(storage, manifest.pairs())
    old_inputs = (existing or {}).get("inputs") or {}
    if existing and "inputs" not in existing:
        log.info("run.json of %s (format %s) records no pair inputs: they are recorded from now on",
                 redact_url(run), existing.get("format", 1))
    changed = changed_pairs(old_inputs, inputs)
    with_outputs = found.done | set(found.damaged)
    changed_done = {p: why for p, why in changed.items() if p in with_outputs}
    if not force:
        if mismatch:
            raise RunMismatch(mismatch)
        if changed_done:
            raise RunMismatch(
                f"run {redact_url(run)} holds outputs of {len(changed_done)} pair(s) made from other inputs or "
                f"settings than the manifest {redact_url(manifest.url)} gives them now:\n"
                f"{describe_changes(changed_done)}\nwrite to another --out, or pass --force to redo exactly "
                f"these pairs")
    redo = set()
    if force:
        redo = selected if mismatch or not changed_done else set(changed_done) & selected
    kept_old = set(changed_done) - redo  # changed and done, but outside the selection: keep their old record
    for pair_id in set(changed) - set(changed_done):  # not done: a checkpoint of the old inputs must not be resumed
        storage.remove(layout.pair_file(run, pair_id, layout.CHECKPOINT))
    if found.damaged:
        log.warning("%d pair(s) marked done no longer match their _SUCCESS and are redone: %s", len(found.damaged),
                    "; ".join(f"{p}: {why}" for p, why in list(found.damaged.items())[:5]))
    unmark = (found.done & redo) | set(found.damaged)
    found.done -= redo
    recorded = {**old_inputs, **{p: v for p, v in inputs.items() if p not in kept_old}}
    return RerunPlan(existing, recorded, _run_manifest_frame(storage, run, manifest, kept_old), found, unmark)


def _run_manifest_frame(storage: Storage, run: str, manifest, kept_old: set[str]):
    """The manifest as run: the new rows, except the rows of done pairs kept with their old inputs; rows of pairs
    the new manifest no longer names are kept too (their outputs stay), so nothing is silently replaced."""
    import io

    import pandas as pd

    try:
        old = pd.read_parquet(io.BytesIO(storage.read_bytes(layout.join(run, layout.MANIFEST))))
    except FileNotFoundError:
        return manifest.frame
    except Exception as exc:  # unreadable: the new manifest is all there is
        log.warning("ignoring unreadable %s (%s)", redact_url(layout.join(run, layout.MANIFEST)), exc)
        return manifest.frame
    new_ids = set(manifest.frame["pair_id"])
    frame = manifest.frame[~manifest.frame["pair_id"].isin(kept_old)]
    keep = old[old["pair_id"].isin(kept_old) | ~old["pair_id"].isin(new_ids)]
    if (~old["pair_id"].isin(new_ids)).any():
        log.info("%d pair(s) of the run's earlier manifest are not in %s: kept in the run's manifest.parquet",
                 int((~old["pair_id"].isin(new_ids)).sum()), redact_url(manifest.url))
    return pd.concat([frame, keep], ignore_index=True) if len(keep) else frame


# --- the lock ------------------------------------------------------------------------------------------------

def lock(storage: Storage, run: str, command: str, **options) -> RunLock:
    """The run folder's lock for `command` (not yet acquired); see run_lock.RunLock."""
    return RunLock(storage, run, command=command, **options)


# --- _SUCCESS markers ----------------------------------------------------------------------------------------

def success_marker(pair_id: str, files: dict[str, bytes], row: dict) -> bytes:
    """The body of a pair's `_SUCCESS`: size and sha256 of each file written before it, and its results row."""
    return json.dumps({
        "format": FORMAT, "pair_id": pair_id,
        "files": {name: {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()} for name, data in files.items()},
        "row": row,
    }, indent=1, default=str).encode()


@dataclass
class Scan:
    """What the pair folders say: pairs done (verified), pairs whose marker does not match their files."""
    done: set[str] = field(default_factory=set)
    damaged: dict[str, str] = field(default_factory=dict)  # pair_id -> what is wrong
    markers: dict[str, dict | None] = field(default_factory=dict)  # pair_id -> marker (None: old, empty marker)


def scan(storage: Storage, run: str, *, verify: bool = False) -> Scan:
    """Check every `_SUCCESS` against its pair's files: sizes from one listing, sha256 too with verify=True."""
    listing = list_pairs(storage, run)
    marked = sorted(p for p, files in listing.items() if layout.SUCCESS in files)
    with ThreadPoolExecutor(LISTING_THREADS) as pool:
        verdicts = list(pool.map(lambda p: _check_pair(storage, run, p, listing[p], verify), marked))
    result = Scan()
    for pair_id, (marker, problem) in zip(marked, verdicts):
        result.markers[pair_id] = marker
        if problem:
            result.damaged[pair_id] = problem
        else:
            result.done.add(pair_id)
    return result


def list_pair_files(storage: Storage, run: str) -> dict[str, dict[str, dict]]:
    """pair_id -> {file name -> the store's listing info (size, ETag or mtime, ...)} for every file under
    <run>/pairs/, in one listing."""
    fs, root = storage.fs(layout.join(run, layout.PAIRS))
    try:
        fs.invalidate_cache(root)
        found = fs.find(root, detail=True)
    except FileNotFoundError:
        return {}
    prefix = root.rstrip("/") + "/"
    files: dict[str, dict[str, dict]] = {}
    for path, info in found.items():
        relative = path[len(prefix):] if path.startswith(prefix) else ""
        if relative.count("/") == 1:
            pair_id, name = relative.split("/")
            files.setdefault(pair_id, {})[name] = info
    return files


def list_pairs(storage: Storage, run: str) -> dict[str, dict[str, int | None]]:
    """pair_id -> {file name -> size} for every file under <run>/pairs/, in one listing."""
    return {pair_id: {name: info.get("size") for name, info in files.items()}
            for pair_id, files in list_pair_files(storage, run).items()}


def _check_pair(storage: Storage, run: str, pair_id: str, sizes: dict, verify: bool) -> tuple[dict | None, str | None]:
    marker_url = layout.pair_file(run, pair_id, layout.SUCCESS)
    try:
        body = storage.read_bytes(marker_url)
    except FileNotFoundError:  # removed since the listing: not done
        return None, "its _SUCCESS disappeared while being checked"
    marker = _parse_marker(body)
    if marker is None:  # an older run's empty marker: sizes unknown, check what can be checked
        if not sizes.get(layout.OUTPUT_PNG):
            return None, f"{layout.OUTPUT_PNG} is missing or empty"
        if verify and not _decodes(storage, layout.pair_file(run, pair_id, layout.OUTPUT_PNG)):
            return None, f"{layout.OUTPUT_PNG} does not decode"
        return None, None
    for name, expected in (marker.get("files") or {}).items():
        if name not in sizes:
            return marker, f"{name} is missing"
        if sizes[name] is not None and sizes[name] != expected.get("size"):
            return marker, f"{name} has {sizes[name]} bytes, _SUCCESS recorded {expected.get('size')}"
        if verify:
            try:
                data = storage.read_bytes(layout.pair_file(run, pair_id, name))
            except FileNotFoundError:
                return marker, f"{name} is missing"
            if hashlib.sha256(data).hexdigest() != expected.get("sha256"):
                return marker, f"{name} differs from what _SUCCESS recorded (sha256)"
    return marker, None


def _parse_marker(body: bytes) -> dict | None:
    if not body.strip():
        return None
    try:
        marker = json.loads(body)
    except ValueError:
        return None
    return marker if isinstance(marker, dict) and isinstance(marker.get("files"), dict) else None


def _decodes(storage: Storage, url: str) -> bool:
    from pipeline.method.images import ImageError, decode_image

    try:
        decode_image(storage.read_bytes(url), redact_url(url))
    except (ImageError, OSError):
        return False
    return True


# --- results rows from the markers ---------------------------------------------------------------------------

def row_from_marker(storage: Storage, run: str, pair_id: str, marker: dict | None) -> dict:
    """The results row of a done pair: from its marker, else (older runs) from its meta.json."""
    if marker and isinstance(marker.get("row"), dict):
        return {**marker["row"], "pair_id": pair_id, "status": "done", "error": None}
    return row_from_meta(storage, layout.pair_dir(run, pair_id), pair_id)


def row_from_meta(storage: Storage, pair_dir: str, pair_id: str) -> dict:
    """The results row of a done pair, from its meta.json (whatever is readable of it)."""
    try:
        meta = storage.read_json(layout.join(pair_dir, layout.META_JSON))
    except (OSError, ValueError):
        meta = {}
    if not isinstance(meta, dict):  # garbage: the row keeps what the marker and listing say
        log.warning("ignoring %s: not a JSON object", redact_url(layout.join(pair_dir, layout.META_JSON)))
        meta = {}
    return {"pair_id": pair_id, "status": "done", "error": None, "seconds": meta.get("seconds"),
            "device": meta.get("device_name") or meta.get("device"), "attempts": meta.get("attempt"),
            "method": meta.get("method"), "weights_id": meta.get("weights_id"),
            "started_at": meta.get("started_at"), "finished_at": meta.get("finished_at")}


def damaged_row(pair_id: str, problem: str) -> dict:
    return {"pair_id": pair_id, "status": "pending",
            "error": f"pair {pair_id!r} is damaged ({problem}): `splice run` redoes it"}


def results_rows(storage: Storage, run: str, pair_ids: list[str], found: Scan | None = None) -> list[dict]:
    """results.parquet rebuilt from the pair folders alone: done (verified), damaged (pending), pending."""
    found = found or scan(storage, run)
    rows = []
    for pair_id in pair_ids:
        if pair_id in found.done:
            rows.append(row_from_marker(storage, run, pair_id, found.markers.get(pair_id)))
        elif pair_id in found.damaged:
            rows.append(damaged_row(pair_id, found.damaged[pair_id]))
        else:
            rows.append({"pair_id": pair_id, "status": "pending"})
    return rows
