"""`splice import`: outputs of a method run elsewhere (STROTSS, Swapping Autoencoder, WCT2, Cross-Image Attention,
...) brought into the run layout, so that they are evaluated and tabled exactly like our own runs.

OUTPUTS_DIR holds one image per pair named by pair_id: <pair_id>.png | .jpg | .jpeg | .webp (any case). Every
image is decoded (so an unreadable one is caught here, not later) and stored as pairs/<pair_id>/output.png with a
meta.json and _SUCCESS. A pair with no image is recorded in results.parquet as 'missing', one with an unreadable
image as 'failed'; both are counted in the tables rather than dropped.
"""
from __future__ import annotations

import logging
import os
import posixpath
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone

import pandas as pd

from pipeline import layout
from pipeline.errors import SpliceError
from pipeline.images import DEFAULT_MAX_PIXELS, ImageError, decode_image, encode_png
from pipeline.manifest import PAIR_ID, read_manifest
from pipeline.storage import Storage, redact_url

from . import runio

log = logging.getLogger(__name__)

EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp")  # in order of preference when a pair has several


class ImportRefused(SpliceError, ValueError):
    """An import that cannot go ahead as asked."""


@dataclass
class ImportSummary:
    run: str
    method: str
    imported: int
    missing: int
    failed: int

    def line(self) -> str:
        return (f"imported {self.imported} output(s) of {self.method} into {self.run} ({self.missing} missing, "
                f"{self.failed} unreadable); next: splice evaluate {self.run}")


def import_outputs(method: str, outputs_dir: str, manifest_url: str, out_url: str, *, storage: Storage | None = None,
                   max_pixels: int = DEFAULT_MAX_PIXELS) -> ImportSummary:
    storage = storage or Storage()
    # 1. validate: a method name, a manifest, an --out that is not the input folder nor another method's run
    if not method or not PAIR_ID.fullmatch(method):
        raise ImportRefused(f"method name {method!r}: use letters, digits, '.', '_' or '-' (e.g. strotss, wct2)")
    if storage.fs(outputs_dir) == storage.fs(out_url):
        raise ImportRefused(f"--out {redact_url(out_url)} is the outputs folder itself: write the run somewhere else")
    manifest = read_manifest(manifest_url, storage).frame  # validated, image URIs absolute
    existing = runio.read_json_if_any(storage, layout.join(out_url, layout.RUN_JSON))
    if existing.get("method") not in (None, method):
        raise ImportRefused(f"--out {redact_url(out_url)} already holds a run of method {existing['method']!r}: "
                           f"import {method!r} into another folder")

    # 2. match the files in OUTPUTS_DIR to pair ids
    found = _outputs_by_pair(storage, outputs_dir, set(manifest["pair_id"]))

    # 3. write each pair's output.png, meta.json and _SUCCESS (last)
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")

    def one(pair_id: str) -> dict:
        return _import_pair(storage, out_url, method, pair_id, found.get(pair_id), outputs_dir, max_pixels, started)

    with ThreadPoolExecutor(8) as pool:
        results = pd.DataFrame(list(pool.map(one, manifest["pair_id"])))

    # 4. the run's manifest, results and run.json
    runio.write_parquet(storage, layout.join(out_url, layout.MANIFEST), manifest)
    runio.write_parquet(storage, layout.join(out_url, layout.RESULTS), results)
    storage.write_json(layout.join(out_url, layout.RUN_JSON), {
        "method": method, "imported": True, "imported_from": redact_url(outputs_dir),
        "manifest": redact_url(manifest_url), "started_at": started, "pairs": int(len(manifest)),
    })
    counts = results["status"].value_counts()
    summary = ImportSummary(out_url, method, int(counts.get("done", 0)), int(counts.get("missing", 0)),
                            int(counts.get("failed", 0)))
    log.info(summary.line())
    return summary


def _outputs_by_pair(storage: Storage, outputs_dir: str, pair_ids: set[str]) -> dict[str, str]:
    fs, root = storage.fs(outputs_dir)
    try:
        names = sorted(posixpath.basename(p.rstrip("/")) for p in fs.ls(root, detail=False))
    except FileNotFoundError as exc:
        raise ImportRefused(f"outputs folder {redact_url(outputs_dir)} does not exist") from exc
    found: dict[str, str] = {}
    unmatched = []
    for name in sorted(names, key=lambda n: _preference(n)):
        stem, ext = os.path.splitext(name)
        if ext.lower() not in EXTENSIONS:
            continue
        if stem not in pair_ids:
            unmatched.append(name)
        elif stem in found:
            log.warning("pair '%s' has several outputs; using %s, ignoring %s", stem, found[stem], name)
        else:
            found[stem] = name
    if unmatched:
        log.warning("%d file(s) in %s match no pair_id of the manifest (e.g. %s); outputs must be named <pair_id>%s",
                    len(unmatched), redact_url(outputs_dir), ", ".join(unmatched[:5]), "|".join(EXTENSIONS))
    if pair_ids and not found:
        raise ImportRefused(f"no file in {redact_url(outputs_dir)} is named after a pair_id of the manifest "
                           f"(expected e.g. {sorted(pair_ids)[0]}.png): check the folder and the manifest")
    return found


def _preference(name: str) -> int:
    ext = os.path.splitext(name)[1].lower()
    return EXTENSIONS.index(ext) if ext in EXTENSIONS else len(EXTENSIONS)


def _import_pair(storage: Storage, out_url: str, method: str, pair_id: str, name: str | None, outputs_dir: str,
                 max_pixels: int, started: str) -> dict:
    row = {"pair_id": pair_id, "status": "done", "error": None, "seconds": None, "device": None, "attempts": 1}
    success = layout.pair_file(out_url, pair_id, layout.SUCCESS)
    if name is None:
        storage.remove(success)  # a pair imported before and now gone is no longer done
        return {**row, "status": "missing", "attempts": 0,
                "error": f"{method} has no output for pair '{pair_id}' in {redact_url(outputs_dir)}"}
    source = layout.join(outputs_dir, name)
    try:
        image = decode_image(storage.read_bytes(source), f"output {redact_url(source)}", max_pixels)
    except (ImageError, OSError) as exc:
        storage.remove(success)
        return {**row, "status": "failed", "error": f"pair '{pair_id}': {exc}"}
    storage.remove(success)  # while rewriting, the pair is not done
    storage.write_bytes(layout.pair_file(out_url, pair_id, layout.OUTPUT_PNG), encode_png(image))
    storage.write_json(layout.pair_file(out_url, pair_id, layout.META_JSON), {
        "method": method, "status": "done", "imported": True, "source": redact_url(source),
        "imported_at": started, "height": int(image.shape[1]), "width": int(image.shape[2]),
    })
    storage.write_bytes(success, b"")
    return row
