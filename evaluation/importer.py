"""`splice import`: outputs of a method run elsewhere (STROTSS, Swapping Autoencoder, WCT2, Cross-Image Attention,
...) brought into the run layout, so that they are evaluated and tabled exactly like our own runs.

Where the outputs are, in one of three ways:
- a flat folder ROOT of images named by pair_id: <pair_id>.png | .jpg | .jpeg | .webp (any case);
- `pattern`: a template under ROOT with `{pair_id}` and glob wildcards, e.g. '{pair_id}/ours/*' (the Splice
  authors' layout, outputs beside the inputs) or 'strotss/{pair_id}.*' (Wild-Pairs' sibling folders); {pair_id}
  stands for each manifest pair_id in turn (so 'wct2/{pair_id}_*' finds WCT2's '0_cat5_decoder_encoder_skip..jpg'
  for pair 0_cat5); exactly one image must match per pair;
Outputs stay under ROOT: a pattern with '..' or an absolute one is refused, and so is a symbolic link that leads out
of ROOT (unless `follow_symlinks`, `--follow-symlinks`).
- `csv`: a CSV of pair_id,output_uri (relative paths resolve against the CSV's folder).
Every image is decoded (any mode: RGBA over white, 16-bit scaled, any size; an unreadable one is caught here, not
later) and stored as pairs/<pair_id>/output.png with a meta.json and _SUCCESS. A pair with no image, or with
several where one was expected, is recorded in results.parquet as 'missing' (the error says which), one with an
unreadable image as 'failed' (run_folder.PairStatus); all are counted in the tables rather than dropped. The run
folder is written through RunFolder, as `splice run` writes it: run.json with its format, the manifest validated
once here, _SUCCESS with the files' sizes and hashes.

An import is a writer like `splice run`: it takes the run folder's lock, and it never writes into a run of another
method, a run made by `splice run`, or over outputs already there, unless `force`.
"""

from __future__ import annotations

import functools
import io
import json
import logging
import os
import posixpath
import re
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone

import pandas as pd

from manifests.builders import IMAGE_EXTENSIONS
from manifests.schema import PAIR_ID, manifest_folder, read_manifest, resolve_uri
from pipeline.errors import SpliceError
from pipeline.method.images import DEFAULT_MAX_PIXELS, ImageError, decode_image, encode_png, max_input_bytes
from pipeline.runs import layout
from pipeline.runs.rerun import pair_inputs
from pipeline.runs.run_folder import PairStatus, RunFolder
from pipeline.storage import Storage, is_local, redact_text, redact_url

log = logging.getLogger(__name__)

EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp")  # in order of preference when a pair has several


class ImportRefused(SpliceError, ValueError):
    """An import that cannot go ahead as asked."""


@dataclass(frozen=True)
class NoOutput:
    """Why a pair has no output to import: 'missing' (nothing matched) or 'ambiguous' (several did)."""

    kind: str
    error: str


@dataclass
class ImportSummary:
    run: str
    method: str
    imported: int
    missing: int  # no output matched (ambiguous ones included)
    failed: int  # an output matched but cannot be read as an image
    ambiguous: int = 0  # several outputs matched
    unmatched: dict[str, list[str]] = field(default_factory=dict)  # 'missing' / 'ambiguous' -> their pair_ids

    def line(self) -> str:
        named = "".join(
            f"; {kind}: {', '.join(ids[:10])}{f' and {len(ids) - 10} more' if len(ids) > 10 else ''}"
            for kind, ids in self.unmatched.items()
            if ids
        )
        return (
            f"imported {self.imported} output(s) of {self.method} into {redact_url(self.run)}: {self.imported} "
            f"matched, {self.missing - self.ambiguous} missing, {self.ambiguous} ambiguous, {self.failed} unreadable"
            f"{named} (each in {redact_url(layout.join(self.run, layout.RESULTS))}); next: splice evaluate "
            f"{redact_url(self.run)}"
        )


def import_outputs(
    method: str,
    outputs_dir: str | None,
    manifest_url: str,
    out_url: str,
    *,
    storage: Storage | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    pattern: str | None = None,
    csv: str | None = None,
    force: bool = False,
    follow_symlinks: bool = False,
    break_lock: bool = False,
) -> ImportSummary:
    storage = storage or Storage()
    if (outputs_dir is None) == (csv is None) or (pattern and csv):
        raise ImportRefused(
            "give the outputs as ROOT (a folder of <pair_id>.png), ROOT --pattern TEMPLATE, or --csv FILE"
        )
    outputs_dir = outputs_dir or manifest_folder(csv)
    # 1. validate: a method name, a manifest, an --out that is not the input folder, a writable target
    if not method or not PAIR_ID.fullmatch(method):
        raise ImportRefused(f"method name {method!r}: use letters, digits, '.', '_' or '-' (e.g. strotss, wct2)")
    if storage.fs(outputs_dir) == storage.fs(out_url):
        raise ImportRefused(f"--out {redact_url(out_url)} is the outputs folder itself: write the run somewhere else")
    parsed = read_manifest(manifest_url, storage)
    manifest = parsed.frame  # validated (the one validation of this run's manifest), image URIs absolute
    folder = RunFolder(storage, out_url)
    folder.check_target()

    with folder.lock("splice import", break_lock=break_lock):  # one writer at a time, `splice run` included
        # 2. never into another method's run, a trained run, or over existing outputs (unless force)
        _check_existing(folder, method, set(manifest["pair_id"]), force)
        found, problems = _match(storage, manifest, outputs_dir, pattern, csv, follow_symlinks)
        inputs = pair_inputs(storage, parsed.pairs())
        return _import(
            folder, method, outputs_dir, manifest_url, manifest, found, problems, inputs, max_pixels, pattern, csv
        )


def _check_existing(folder: RunFolder, method: str, pair_ids: set[str], force: bool) -> None:
    out_url = folder.url
    existing = folder.record() or {}
    if force:
        return
    if existing.get("method") not in (None, method):
        raise ImportRefused(
            f"--out {redact_url(out_url)} already holds a run of method {existing['method']!r}: "
            f"import {method!r} into another folder (or pass --force to replace its outputs)"
        )
    if existing and not existing.get("imported"):
        raise ImportRefused(
            f"--out {redact_url(out_url)} holds a run made by `splice run` ({existing.get('method')}): "
            f"import into another folder (or pass --force to replace its outputs)"
        )
    done = sorted(p for p, files in folder.list_pairs().items() if p in pair_ids and layout.OUTPUT_PNG in files)
    if done:
        shown = ", ".join(done[:8]) + (f" and {len(done) - 8} more" if len(done) > 8 else "")
        raise ImportRefused(
            f"--out {redact_url(out_url)} already holds outputs of {len(done)} pair(s) ({shown}): "
            f"import into another folder, or pass --force to replace them"
        )


def _match(storage: Storage, manifest, outputs_dir: str, pattern: str | None, csv: str | None, follow_symlinks: bool):
    """Match the files in OUTPUTS_DIR (or the pattern's or CSV's) to pair ids: (found, problems)."""
    if pattern or csv:
        matched = dict(
            match_outputs(
                storage,
                list(manifest["pair_id"]),
                root=outputs_dir,
                pattern=pattern,
                csv=csv,
                follow_symlinks=follow_symlinks,
            )
        )
        found = {p: m for p, m in matched.items() if isinstance(m, str)}
        problems = {p: m for p, m in matched.items() if isinstance(m, NoOutput)}
        if not found:
            example = next(iter(problems.values())).error if problems else ""
            raise ImportRefused(
                f"no output matched any pair of the manifest ({example}): check ROOT, the pattern or "
                f"the CSV against the manifest's pair_ids (e.g. {manifest['pair_id'].iloc[0]})"
            )
        return found, problems
    return _outputs_by_pair(storage, outputs_dir, set(manifest["pair_id"]), follow_symlinks)


def _import(
    folder: RunFolder, method, outputs_dir, manifest_url, manifest, found, problems, inputs, max_pixels, pattern, csv
) -> ImportSummary:
    # 3. write each pair's output.png, meta.json and _SUCCESS (last)
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")

    def one(pair_id: str) -> dict:
        row = _import_pair(folder, method, pair_id, found.get(pair_id), outputs_dir, max_pixels, started)
        return {**row, "error": problems[pair_id].error} if pair_id in problems else row

    with ThreadPoolExecutor(8) as pool:
        rows = list(pool.map(one, manifest["pair_id"]))

    # 4. the run's manifest, results and run.json
    folder.write_manifest(manifest)
    folder.write_results(rows)
    folder.write_inputs(inputs)
    folder.write_record(
        {
            "method": method,
            "imported": True,
            "imported_from": redact_url(csv or outputs_dir),
            "pattern": pattern,
            "manifest": redact_url(manifest_url),
            "started_at": started,
            "pairs": int(len(manifest)),
        }
    )
    counts = pd.Series([row["status"] for row in rows]).value_counts()
    ambiguous = {p for p, problem in problems.items() if problem.kind == "ambiguous"}
    summary = ImportSummary(
        folder.url,
        method,
        int(counts.get(PairStatus.DONE.value, 0)),
        int(counts.get(PairStatus.MISSING.value, 0)),
        int(counts.get(PairStatus.FAILED.value, 0)),
        len(ambiguous),
        {
            "missing": [
                row["pair_id"]
                for row in rows
                if row["status"] == PairStatus.MISSING.value and row["pair_id"] not in ambiguous
            ],
            "ambiguous": sorted(ambiguous),
        },
    )
    log.info(summary.line())
    return summary


def _outputs_by_pair(
    storage: Storage, outputs_dir: str, pair_ids: set[str], follow_symlinks: bool
) -> tuple[dict[str, str], dict[str, NoOutput]]:
    fs, root = storage.fs(outputs_dir)
    try:
        names = sorted(posixpath.basename(p.rstrip("/")) for p in fs.ls(root, detail=False))
    except FileNotFoundError as exc:
        raise ImportRefused(f"outputs folder {redact_url(outputs_dir)} does not exist") from exc
    found: dict[str, str] = {}
    problems: dict[str, NoOutput] = {}
    unmatched = []
    inside = _inside(storage, outputs_dir, follow_symlinks)
    for name in sorted(names, key=lambda n: _preference(n)):
        stem, ext = os.path.splitext(name)
        if ext.lower() not in EXTENSIONS:
            continue
        if stem in pair_ids and stem not in found and not inside(layout.join(root, name)):
            problems[stem] = NoOutput(
                "missing",
                f"the output of pair '{stem}' ({redact_url(layout.join(outputs_dir, name))}) is a symbolic link to "
                f"outside ROOT: not read; pass --follow-symlinks if it is meant",
            )
            continue
        if stem not in pair_ids:
            unmatched.append(name)
        elif stem in found:
            log.warning("pair '%s' has several outputs; using %s, ignoring %s", stem, found[stem], name)
        else:
            found[stem] = name
    if unmatched:
        log.warning(
            "%d file(s) in %s match no pair_id of the manifest (e.g. %s); outputs must be named <pair_id>%s",
            len(unmatched),
            redact_url(outputs_dir),
            ", ".join(unmatched[:5]),
            "|".join(EXTENSIONS),
        )
    if pair_ids and not found:
        raise ImportRefused(
            f"no file in {redact_url(outputs_dir)} is named after a pair_id of the manifest "
            f"(expected e.g. {sorted(pair_ids)[0]}.png): check the folder and the manifest"
        )
    return found, {p: problem for p, problem in problems.items() if p not in found}


def match_outputs(
    storage: Storage,
    pair_ids: list[str],
    *,
    root: str | None = None,
    pattern: str | None = None,
    csv: str | None = None,
    follow_symlinks: bool = False,
) -> Iterator[tuple[str, str | NoOutput]]:
    """(pair_id, output URL) for every pair with exactly one output, (pair_id, NoOutput) for the others.

    `pattern` is a template under `root` with `{pair_id}` and glob wildcards (*, ?, [..], **), resolved per pair:
    `{pair_id}` stands for each manifest pair_id, glob-escaped (from one listing, whatever the number of pairs). It
    stays under `root`: no '..', and no symbolic link out of it unless `follow_symlinks`. `csv` is a file of pair_id,output_uri. Images only (by extension, hidden files
    skipped); files that name no pair of the manifest are logged.
    """
    wanted = set(pair_ids)
    candidates: dict[str, list[str]] = {}
    refused: dict[str, list[str]] = {}  # pair_id -> matches that lie outside ROOT (through a symlink)
    if csv:
        where = f"CSV {redact_url(csv)}"
        for pair_id, uri in _csv_rows(storage, csv):
            candidates.setdefault(pair_id, []).append(uri)
    else:
        _check_pattern(pattern)
        where = f"{redact_url(layout.join(root, pattern))}"
        fs, base = storage.fs(root)
        if not fs.isdir(base):
            raise ImportRefused(f"outputs folder {redact_url(root)} does not exist")
        base = base.rstrip("/")
        fs.invalidate_cache()
        inside = _inside(storage, root, follow_symlinks)
        listed = fs.glob(f"{base}/{pattern.replace('{pair_id}', '*')}")  # one listing, whatever the number of pairs
        for path in listed:
            name = posixpath.basename(path)
            if name.startswith(".") or posixpath.splitext(name)[1].lower() not in IMAGE_EXTENSIONS:
                continue
            relative = path[len(base) + 1 :]
            ids = _pair_ids_in(relative, pattern, wanted)
            if not ids:
                candidates.setdefault(relative, [])  # names no pair of the manifest: logged below
            for pair_id in ids:
                url = storage.url(fs, path)
                (candidates if inside(path) else refused).setdefault(pair_id, []).append(url)
    strangers = sorted(set(candidates) - wanted)
    if strangers:
        log.warning(
            "%d output(s) matched by %s name no pair_id of the manifest (e.g. %s)",
            len(strangers),
            where,
            ", ".join(strangers[:5]),
        )
    for pair_id in pair_ids:
        found = sorted(set(candidates.get(pair_id, [])))
        if len(found) == 1:
            yield pair_id, found[0]
        elif not found and pair_id in refused:
            outside = ", ".join(redact_url(f) for f in sorted(refused[pair_id])[:3])
            yield (
                pair_id,
                NoOutput(
                    "missing",
                    f"the output of pair '{pair_id}' matched by {where} ({outside}) is a symbolic link to outside "
                    f"ROOT: not read; pass --follow-symlinks if it is meant",
                ),
            )
        elif not found:
            yield pair_id, NoOutput("missing", f"no output of pair '{pair_id}' in {where}")
        else:
            shown = ", ".join(redact_url(f) for f in found[:5]) + (" ..." if len(found) > 5 else "")
            yield (
                pair_id,
                NoOutput(
                    "ambiguous",
                    f"{len(found)} outputs of pair '{pair_id}' match {where} ({shown}); "
                    f"make the pattern match one, or list the outputs in a --csv",
                ),
            )


def _check_pattern(pattern: str | None) -> None:
    """One line for a pattern that names no pair or leaves ROOT."""
    if not pattern or "{pair_id}" not in pattern:
        raise ImportRefused(
            f"--pattern {pattern!r} must contain {{pair_id}}, e.g. '{{pair_id}}/ours/*' or 'strotss/{{pair_id}}.*'"
        )
    if (
        pattern.startswith(("/", "\\"))
        or re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", pattern)
        or ".." in re.split(r"[/\\]", pattern)
    ):
        raise ImportRefused(
            f"--pattern {pattern!r} leaves ROOT: it must be a path under ROOT (no '..', not absolute); give the "
            f"folder the outputs are in as ROOT instead"
        )


def _pair_ids_in(relative: str, pattern: str, wanted: set[str]) -> list[str]:
    """The manifest pair_ids p for which `relative` (a path under ROOT) matches `pattern` with {pair_id} replaced by
    p, glob-escaped: the same as globbing the pattern once per pair, from one listing. A pair_id is never guessed
    by a greedy wildcard: 'wct2/{pair_id}_*' finds pair 0_cat5 in 'wct2/0_cat5_decoder_encoder_skip..jpg'."""
    head, _, tail = pattern.partition("{pair_id}")
    if not any(c in head for c in "*?["):
        starts = [len(head)] if relative.startswith(head) else []
    else:
        head_regex = _glob_regex(head)
        starts = [i for i in range(len(relative) + 1) if head_regex.fullmatch(relative[:i])]
    found = []
    for start in starts:
        stop = relative.find("/", start)
        stop = len(relative) if stop < 0 else stop
        for end in range(start + 1, min(stop, start + PAIR_ID_MAX) + 1):
            pair_id = relative[start:end]
            if pair_id in wanted and _tail_regex(tail, pair_id).fullmatch(relative[end:]):
                found.append(pair_id)
    return sorted(set(found))


PAIR_ID_MAX = 128  # manifests.schema.PAIR_ID: at most 128 characters


@functools.lru_cache(maxsize=4096)
def _tail_regex(tail: str, pair_id: str) -> re.Pattern:
    """The pattern after its first {pair_id}, any later {pair_id} being `pair_id` itself."""
    return re.compile(re.escape(pair_id).join(_glob_regex(part).pattern for part in tail.split("{pair_id}")))


@functools.lru_cache(maxsize=256)
def _glob_regex(pattern: str) -> re.Pattern:
    """A glob over paths relative to ROOT as a regex (glob rules: * and ? stay within one folder, ** crosses
    folders)."""
    out = []
    for token in re.findall(r"\*\*/?|\*|\?|\[[^\]]*\]|.", pattern, flags=re.S):
        if token.startswith("**"):
            out.append("(?:.*/)?" if token.endswith("/") else ".*")
        elif token == "*":
            out.append("[^/]*")
        elif token == "?":
            out.append("[^/]")
        elif token.startswith("[") and len(token) > 2:
            out.append("[" + ("^" + token[2:-1] if token[1] == "!" else token[1:-1]).replace("\\", "\\\\") + "]")
        else:
            out.append(re.escape(token))
    return re.compile("".join(out))


def _inside(storage: Storage, root: str, follow_symlinks: bool):
    """A test of whether a listed path of ROOT's filesystem really lies under ROOT: on a local disk, where its
    symbolic links lead (object stores have none); always true with `follow_symlinks`."""
    if follow_symlinks or not is_local(root):
        return lambda path: True
    real_root = os.path.realpath(storage.fs(root)[1])

    def inside(path: str) -> bool:
        real = os.path.realpath(path)
        return real == real_root or real.startswith(real_root.rstrip(os.sep) + os.sep)

    return inside


def _csv_rows(storage: Storage, url: str) -> list[tuple[str, str]]:
    try:
        frame = pd.read_csv(io.BytesIO(storage.read_bytes(url)), dtype=str, skipinitialspace=True)
    except FileNotFoundError:
        raise ImportRefused(f"CSV {redact_url(url)} does not exist") from None
    except (ValueError, pd.errors.ParserError) as exc:
        raise ImportRefused(
            f"CSV {redact_url(url)} cannot be parsed ({exc}): expected a header pair_id,output_uri"
        ) from exc
    if not {"pair_id", "output_uri"} <= set(frame.columns):
        raise ImportRefused(
            f"CSV {redact_url(url)} needs the columns pair_id,output_uri (it has: {', '.join(frame.columns)})"
        )
    base = manifest_folder(url)
    return [
        (str(p).strip(), resolve_uri(str(u).strip(), base))
        for p, u in zip(frame["pair_id"], frame["output_uri"])
        if isinstance(p, str) and isinstance(u, str) and u.strip()
    ]


def _preference(name: str) -> int:
    ext = os.path.splitext(name)[1].lower()
    return EXTENSIONS.index(ext) if ext in EXTENSIONS else len(EXTENSIONS)


def _import_pair(
    folder: RunFolder, method: str, pair_id: str, name: str | None, outputs_dir: str, max_pixels: int, started: str
) -> dict:
    row = {
        "pair_id": pair_id,
        "status": PairStatus.DONE.value,
        "error": None,
        "seconds": None,
        "device": None,
        "attempts": 1,
        "method": method,
    }
    pair = folder.pair(pair_id)
    if name is None:
        pair.unmark()  # a pair imported before and now gone is no longer done
        return {
            **row,
            "status": PairStatus.MISSING.value,
            "attempts": 0,
            "error": f"{method} has no output for pair '{pair_id}' in {redact_url(outputs_dir)}",
        }
    source = (
        name if "://" in name or os.path.isabs(name) else layout.join(outputs_dir, name)
    )  # a name in OUTPUTS_DIR, or a URL
    try:
        data = folder.storage.read_input(source, max_bytes=max_input_bytes(max_pixels))
        image = decode_image(data, f"output {redact_url(source)}", max_pixels)
    except (ImageError, OSError) as exc:
        pair.unmark()
        return {**row, "status": PairStatus.FAILED.value, "error": redact_text(f"pair '{pair_id}': {exc}")}
    pair.write_files(
        {
            layout.OUTPUT_PNG: encode_png(image),
            layout.META_JSON: json.dumps(
                {
                    "method": method,
                    "status": PairStatus.DONE.value,
                    "imported": True,
                    "source": redact_url(source),
                    "imported_at": started,
                    "height": int(image.shape[1]),
                    "width": int(image.shape[2]),
                },
                indent=2,
            ).encode(),
        },
        row=row,
    )
    return row
