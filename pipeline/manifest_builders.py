"""Manifests from common dataset layouts: AFHQ folders, a Wild-Pairs style pairs folder, or a CSV.

Each builder returns a manifest frame (validated by the caller) whose image URIs are absolute, so the manifest
can be written anywhere. Listing goes through fsspec, so a root may be local or in object storage.
"""
from __future__ import annotations

import io
import posixpath
import random

import pandas as pd

from .manifest import LABELS, ManifestError, manifest_folder, resolve_uri
from .storage import Storage, redact_url

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")
AFHQ_DOMAINS = ("cat", "dog", "wild")
STRING_COLUMNS = ("pair_id", "structure_uri", "appearance_uri", *LABELS, "backbone")


def build_afhq(root: str, *, pairs: int | None = None, domains: list[str] | None = None, split: str = "train",
               seed: int = 0, storage: Storage | None = None) -> pd.DataFrame:
    """Pairs drawn within each domain of `ROOT/<split>/<domain>/*.jpg`, reproducibly from `seed`.

    Without `pairs`, every image is the structure of one pair (its appearance drawn from the same domain);
    with it, `pairs` pairs in all, split evenly over the domains, no ordered pair twice.
    """
    storage = storage or Storage()
    domains = list(domains or AFHQ_DOMAINS)
    images = {domain: _images_in(storage, f"{root.rstrip('/')}/{split}/{domain}") for domain in domains}
    short = [f"{d} ({len(found)} image(s) in {redact_url(root)}/{split}/{d})" for d, found in images.items() if len(found) < 2]
    if short:
        raise ManifestError(f"AFHQ root {redact_url(root)}: each domain needs at least 2 images to pair; too few in "
                            f"{', '.join(short)}. Expected the layout ROOT/train|val/cat|dog|wild/*.jpg")
    rng = random.Random(seed)
    per_domain = _spread(pairs, domains) if pairs is not None else {d: None for d in domains}
    rows = []
    for domain in domains:
        for index, (structure, appearance) in enumerate(_draw_pairs(images[domain], per_domain[domain], rng, domain)):
            rows.append({"pair_id": f"afhq-{split}-{domain}-{index:05d}",
                         "structure_uri": structure, "appearance_uri": appearance,
                         "dataset": "afhq", "domain": domain, "split": split})
    return pd.DataFrame(rows)


def build_pairs_dir(root: str, *, storage: Storage | None = None) -> pd.DataFrame:
    """One pair per sub-folder `ROOT/<pair_id>/structure.*` + `ROOT/<pair_id>/appearance.*`."""
    storage = storage or Storage()
    fs, base = storage.fs(root)
    if not fs.isdir(base):
        raise ManifestError(f"pairs folder {redact_url(root)} does not exist or is not a folder")
    found: dict[str, dict[str, list[str]]] = {}
    for path in sorted(fs.glob(f"{base.rstrip('/')}/*/*")):
        folder, name = posixpath.split(path)
        stem, extension = posixpath.splitext(name)
        pair_id = posixpath.basename(folder)
        if pair_id.startswith(".") or extension.lower() not in IMAGE_EXTENSIONS or stem not in ("structure", "appearance"):
            continue
        found.setdefault(pair_id, {"structure": [], "appearance": []})[stem].append(storage.url(fs, path))
    folders = sorted(p for p in (posixpath.basename(d) for d in fs.ls(base, detail=False) if fs.isdir(d)) if not p.startswith("."))
    problems = []
    for pair_id in folders:
        for role in ("structure", "appearance"):
            files = found.get(pair_id, {}).get(role, [])
            if len(files) != 1:
                what = "no" if not files else f"{len(files)} ({', '.join(posixpath.basename(f) for f in files)})"
                problems.append(f"{pair_id}/ has {what} {role}.* image(s); it needs exactly one")
    if problems:
        raise ManifestError(f"pairs folder {redact_url(root)}: " + "; ".join(problems[:10])
                            + (f" and {len(problems) - 10} more" if len(problems) > 10 else ""))
    if not folders:
        raise ManifestError(f"pairs folder {redact_url(root)} has no pair folders (expected <pair>/structure.* + <pair>/appearance.*)")
    dataset = posixpath.basename(base.rstrip("/"))
    return pd.DataFrame([{"pair_id": p, "structure_uri": found[p]["structure"][0],
                          "appearance_uri": found[p]["appearance"][0], "dataset": dataset} for p in folders])


def build_csv(url: str, *, storage: Storage | None = None) -> pd.DataFrame:
    """A CSV with pair_id, structure_uri, appearance_uri (+ optional columns); relative paths resolve against its folder."""
    storage = storage or Storage()
    try:
        data = storage.read_bytes(url)
    except FileNotFoundError:
        raise ManifestError(f"CSV {redact_url(url)} does not exist") from None
    try:
        frame = pd.read_csv(io.BytesIO(data), dtype={c: str for c in STRING_COLUMNS}, skipinitialspace=True)
    except (ValueError, pd.errors.ParserError) as exc:
        raise ManifestError(f"CSV {redact_url(url)} cannot be parsed ({exc}): expected a header row with "
                            f"pair_id,structure_uri,appearance_uri") from exc
    base = manifest_folder(url)
    for column in ("structure_uri", "appearance_uri"):
        if column in frame.columns:
            frame[column] = [resolve_uri(v.strip(), base) if isinstance(v, str) and v.strip() else v for v in frame[column]]
    return frame


# --- helpers -------------------------------------------------------------------------------------------------

def _images_in(storage: Storage, folder: str) -> list[str]:
    fs, path = storage.fs(folder)
    if not fs.isdir(path):
        return []
    return sorted(storage.url(fs, p) for p in fs.ls(path, detail=False)
                  if posixpath.splitext(p)[1].lower() in IMAGE_EXTENSIONS and not posixpath.basename(p).startswith("."))


def _spread(total: int, domains: list[str]) -> dict[str, int]:
    if total < 1:
        raise ManifestError(f"--pairs must be at least 1, got {total}")
    share, extra = divmod(total, len(domains))
    return {d: share + (1 if i < extra else 0) for i, d in enumerate(domains)}


def _draw_pairs(images: list[str], count: int | None, rng: random.Random, domain: str) -> list[tuple[str, str]]:
    if count is None:  # every image once as structure
        return [(s, rng.choice([a for a in images if a != s])) for s in images]
    possible = len(images) * (len(images) - 1)
    if count > possible:
        raise ManifestError(f"domain {domain}: {count} pairs asked for, but {len(images)} images make only {possible} "
                            f"distinct pairs; ask for fewer --pairs")
    if count * 3 > possible:  # dense: sample from the full list
        everything = [(s, a) for s in images for a in images if s != a]
        return rng.sample(everything, count)
    chosen: dict[tuple[str, str], None] = {}
    while len(chosen) < count:
        structure, appearance = rng.sample(images, 2)
        chosen.setdefault((structure, appearance))
    return list(chosen)
