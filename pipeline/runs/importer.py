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
method, a run made by `splice run`, or over outputs already there, unless `force`. It belongs to the run layer (it
writes run folders); which file is each pair's output is import_match.py's business.
"""

from __future__ import annotations

import json
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone

import pandas as pd

from manifests.schema import PAIR_ID, manifest_folder, read_manifest
from pipeline.method.images import DEFAULT_MAX_PIXELS, ImageError, decode_image, encode_png, max_input_bytes
from pipeline.runs import layout
from pipeline.runs.import_match import ImportRefused, NoOutput, match_outputs, outputs_by_pair
from pipeline.runs.rerun import pair_inputs
from pipeline.runs.run_folder import PairStatus, RunFolder
from pipeline.storage import Storage, redact_text, redact_url

log = logging.getLogger(__name__)


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
    done = sorted(p for p in folder.listing().with_file(layout.OUTPUT_PNG) if p in pair_ids)  # marked or not
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
    return outputs_by_pair(storage, outputs_dir, set(manifest["pair_id"]), follow_symlinks)


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
