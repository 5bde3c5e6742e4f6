"""What a `splice run` was made from, and what a re-run of the same folder may do.

- `pair_inputs`: each pair's input URIs (redacted), a cheap content fingerprint and its per-pair settings, recorded
  in inputs.parquet beside run.json (run.json in older folders) and compared on every re-run (`changed_pairs`);
- `plan_rerun`: refuse a re-run whose run-level settings or done pairs' inputs differ (unless --force, which then
  redoes exactly the pairs concerned), and find the pairs done, damaged and to redo;
- `run_record` / `finished_record`: the content of run.json for `splice run` (written by RunFolder.write_record).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import socket
import subprocess
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone

import pandas as pd

from pipeline import __version__
from pipeline.errors import SpliceError
from pipeline.method.pair_run import ADDED_SETTINGS
from pipeline.runs.run_folder import RunFolder, RunFolderError, Scan
from pipeline.storage import Storage, is_local, redact, redact_url

log = logging.getLogger(__name__)

HASHED_INPUT_BYTES = 64 << 10  # local inputs up to this size are fingerprinted by content hash, larger by size+mtime
LISTING_THREADS = 16
FINGERPRINT_CHUNK = 256  # inputs fingerprinted per thread task
LISTED_FOLDER_MIN = 32  # remote inputs: a folder holding this many of them is listed once instead of asked per object
PAIR_SETTINGS = ("seed", "steps", "backbone")  # per-pair overrides a manifest may carry
# settings that may change between invocations of one run without making its outputs incomparable
CHANGEABLE_SETTINGS = ("log_every", "checkpoint_every", "checkpoint")  # checkpoint: splicenet's URL (its sha256 counts)


class RunMismatch(SpliceError):
    """A run folder was started with other settings or inputs than the ones asked for now."""


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
        version = next(
            (
                str(info[k]).strip('"')
                for k in ("ETag", "etag", "md5Hash", "crc32c", "generation", "LastModified", "last_modified", "mtime")
                if info.get(k)
            ),
            None,
        )
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
    chunks = [uris[start : start + FINGERPRINT_CHUNK] for start in range(0, len(uris), FINGERPRINT_CHUNK)]
    with ThreadPoolExecutor(LISTING_THREADS) as pool:  # in chunks: one task per input costs more than its stat
        found = pool.map(lambda chunk: [fingerprint(storage, uri, listed) for uri in chunk], chunks)
        prints = dict(zip(uris, (value for chunk in found for value in chunk)))
    return {
        pair.pair_id: {
            "structure_uri": redact_url(pair.structure_uri),
            "appearance_uri": redact_url(pair.appearance_uri),
            "structure": prints[pair.structure_uri],
            "appearance": prints[pair.appearance_uri],
            "settings": {k: getattr(pair, k, None) for k in PAIR_SETTINGS},
        }
        for pair in pairs
    }


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
    inputs: dict  # what inputs.parquet records of each pair's inputs from now on
    manifest_frame: pd.DataFrame  # the run's manifest.parquet from now on
    found: Scan  # done pairs (those to redo removed) and damaged ones
    unmark: set  # pairs whose _SUCCESS goes before any work: redone


@dataclass
class Comparison:
    """A run folder against a manifest and settings, read only (`compare_run`)."""

    existing: dict | None  # run.json as found
    mismatch: str | None  # why the run-level settings differ, or None
    found: Scan  # done and damaged pairs, as stored
    inputs: dict  # the inputs of the pairs that matter (selected, done or damaged), fingerprinted now
    old_inputs: dict  # what inputs.parquet records
    changed: dict  # pair -> how its inputs or per-pair settings changed

    @property
    def changed_done(self) -> dict:
        """The changed pairs that have outputs: a run refuses them unless --force."""
        with_outputs = self.found.done | set(self.found.damaged)
        return {p: why for p, why in self.changed.items() if p in with_outputs}


def compare_run(
    folder: RunFolder,
    manifest,
    selected: set[str],
    *,
    verify: bool,
    settings_check: Callable[[dict | None], str | None],
) -> Comparison:
    """What the folder holds against what a run of `manifest` would make: reads, never writes (`splice run` acts on
    it in `plan_rerun`; `splice bench --dry-run` only reports it)."""
    existing = folder.record()
    found = folder.scan(verify=verify)
    # the pairs whose inputs matter now: those to run, and those with outputs (their inputs must not have changed);
    # the others are fingerprinted when they run, so `--only 2` of a large manifest costs 2 pairs' fingerprints
    relevant = selected | found.done | set(found.damaged)
    inputs = pair_inputs(folder.storage, [pair for pair in manifest.pairs() if pair.pair_id in relevant])
    old_inputs = folder.inputs(existing or {})
    return Comparison(existing, settings_check(existing), found, inputs, old_inputs, changed_pairs(old_inputs, inputs))


def plan_rerun(
    folder: RunFolder,
    manifest,
    selected: set[str],
    *,
    force: bool,
    verify: bool,
    settings_check: Callable[[dict | None], str | None],
) -> RerunPlan:
    """What a `splice run` of `manifest` into `folder` may do: refuse (RunMismatch) when the run-level settings
    differ (`settings_check(run.json)` says why) or when done pairs were made from other inputs or per-pair
    settings, unless `force`, which then redoes exactly the pairs concerned (every selected pair for a settings
    change); damaged pairs are redone."""
    run = folder.url
    seen = compare_run(folder, manifest, selected, verify=verify, settings_check=settings_check)
    found, changed_done = seen.found, seen.changed_done
    if seen.existing and not folder.has_inputs(seen.existing):
        log.info(
            "run.json of %s (format %s) records no pair inputs: they are recorded from now on",
            redact_url(run),
            seen.existing.get("format", 1),
        )
    if not force:
        if seen.mismatch:
            raise RunMismatch(seen.mismatch)
        if changed_done:
            raise RunMismatch(
                f"run {redact_url(run)} holds outputs of {len(changed_done)} pair(s) made from other inputs or "
                f"settings than the manifest {redact_url(manifest.url)} gives them now:\n"
                f"{describe_changes(changed_done)}\nwrite to another --out, or pass --force to redo exactly "
                f"these pairs"
            )
    redo = set()
    if force:
        redo = selected if seen.mismatch or not changed_done else set(changed_done) & selected
    kept_old = set(changed_done) - redo  # changed and done, but outside the selection: keep their old record
    for pair_id in set(seen.changed) - set(changed_done):  # not done: an old checkpoint must not be resumed
        folder.pair(pair_id).remove_checkpoint()
    if found.damaged:
        log.warning(
            "%d pair(s) marked done no longer match their _SUCCESS and are redone: %s",
            len(found.damaged),
            "; ".join(f"{p}: {why}" for p, why in list(found.damaged.items())[:5]),
        )
    unmark = (found.done & redo) | set(found.damaged)
    found.done -= redo
    recorded = {**seen.old_inputs, **{p: v for p, v in seen.inputs.items() if p not in kept_old}}
    return RerunPlan(seen.existing, recorded, _run_manifest_frame(folder, manifest, kept_old), found, unmark)


def _run_manifest_frame(folder: RunFolder, manifest, kept_old: set[str]) -> pd.DataFrame:
    """The manifest as run: the new rows, except the rows of done pairs kept with their old inputs; rows of pairs
    the new manifest no longer names are kept too (their outputs stay), so nothing is silently replaced."""
    try:
        old = folder.manifest()
    except RunFolderError as exc:  # none yet, or unreadable: the new manifest is all there is
        if folder.has_manifest():
            log.warning("ignoring %s", exc)
        return manifest.frame
    new_ids = set(manifest.frame["pair_id"])
    frame = manifest.frame[~manifest.frame["pair_id"].isin(kept_old)]
    keep = old[old["pair_id"].isin(kept_old) | ~old["pair_id"].isin(new_ids)]
    if (~old["pair_id"].isin(new_ids)).any():
        log.info(
            "%d pair(s) of the run's earlier manifest are not in %s: kept in the run's manifest.parquet",
            int((~old["pair_id"].isin(new_ids)).sum()),
            redact_url(manifest.url),
        )
    return pd.concat([frame, keep], ignore_index=True) if len(keep) else frame


# --- run.json of `splice run` --------------------------------------------------------------------------------


def comparable_settings(method, config) -> dict:
    """The settings that make a run's outputs what they are, as JSON values (run.json's `settings` without those a
    run may change between invocations): what a re-run must match, and what names a bench's run folder."""
    settings = {k: v for k, v in method.settings(config).items() if k not in CHANGEABLE_SETTINGS}
    return json.loads(json.dumps(settings, default=str))


def settings_mismatch(existing: dict | None, run: str, method, config) -> str | None:
    """Why the run folder's finished pairs are not comparable with `method` and `config` now, or None."""
    if not existing:
        return None
    if existing.get("method") != method.name:
        return (
            f"run {redact_url(run)} was made with method {existing.get('method')!r}, not {method.name!r}: "
            f"write to another --out, or pass --force to redo every pair with {method.name!r}"
        )
    old = {k: v for k, v in (existing.get("settings") or {}).items() if k not in CHANGEABLE_SETTINGS}
    new = comparable_settings(method, config)
    old.update({k: legacy for k, legacy in ADDED_SETTINGS.items() if k in new and k not in old})  # made before them
    changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    if changed:
        diffs = ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in changed[:8])
        return (
            f"run {redact_url(run)} was made with other settings ({diffs}): its finished pairs would not be "
            f"comparable. Write to another --out, or pass --force to redo every pair"
        )
    return None


def keep_crop_schedule(folder: RunFolder, method, settings):
    """`settings` for continuing `folder`: a run whose settings were recorded before the shared crop-side schedule
    (no `crop_schedule` in run.json) goes on with its pairs' own crop sides (schedule 1), so the pairs it resumes and
    the pairs it adds are made as its finished ones were. --force (redo everything) uses the settings as given."""
    if settings.force or "crop_schedule" not in method.settings(settings.config):
        return settings
    existing = folder.record()
    recorded = (existing or {}).get("settings")
    if not existing or existing.get("method") != method.name or not recorded or "crop_schedule" in recorded:
        return settings
    log.info(
        "run %s was made before the shared crop-side schedule: it goes on with per-pair crop sides (crop_schedule 1)",
        redact_url(folder.url),
    )
    legacy = {k: v for k, v in ADDED_SETTINGS.items() if k not in recorded}
    return dataclasses.replace(settings, config=settings.config.replace(**legacy))


def run_record(settings, method, manifest, *, existing: dict | None) -> dict:
    """run.json at the start of an invocation (after the driver checked an `existing` one agrees); the pairs'
    inputs are written beside it (RunFolder.write_inputs), so its size does not grow with the pairs."""
    now = _now()
    return {
        "method": method.name,
        "method_version": getattr(method, "version", None),  # a plug-in's, where it declares one
        "method_source": getattr(method, "spec", method.name),  # its name, or the plug-in spec that names it
        "settings": method.settings(settings.config),
        "backbone": settings.config.backbone if method.uses_backbone else None,
        "backbone_fallback": getattr(settings, "backbone_fallback", None) if method.uses_backbone else None,
        "backbone_weights_ids": (existing or {}).get("backbone_weights_ids", []),
        "code_version": {"splice_pipeline": __version__, "git_commit": _git_commit()},
        "manifest": redact_url(manifest.url),
        "pairs": len(manifest),
        "resources": {
            "gpus_per_pair": settings.gpus_per_pair,
            "cpus_per_task": settings.cpus_per_task,
            "gpus_per_task": getattr(settings, "gpus_per_task", None),
            "pack": getattr(settings, "pack", None),
            "max_retries": settings.max_retries,
        },
        "ray_address": redact_url(settings.address or os.environ.get("RAY_ADDRESS") or "embedded"),
        "storage_options": redact(settings.storage_options),
        "created_at": (existing or {}).get("created_at", now),
        "invocations": [
            *(existing or {}).get("invocations", []),
            {
                "started_at": now,
                "host": socket.gethostname(),
                "force": settings.force,
                "limit": settings.limit,
                "only": list(settings.only),
                "python": sys.version.split()[0],
            },
        ],
        "packing": (existing or {}).get("packing"),  # how the pairs were grouped, as the last invocation says
        "updated_at": now,
    }


def finished_record(record: dict, counts: dict, weights_ids: list[str]) -> dict:
    """run.json at the end of an invocation: its counts (done, failed, pending, and any other word of the
    vocabulary that counts a pair) and the backbone weights it used."""
    now = _now()
    counts = {word: n for word, n in counts.items() if n or word in ("done", "failed", "pending")}
    record = dict(record)
    record["invocations"] = [*record["invocations"][:-1], {**record["invocations"][-1], "finished_at": now, **counts}]
    record["backbone_weights_ids"] = sorted(set(record.get("backbone_weights_ids", [])) | set(weights_ids))
    record["counts"] = counts
    record["updated_at"] = now
    return record


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=os.path.dirname(os.path.abspath(__file__)),
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None
