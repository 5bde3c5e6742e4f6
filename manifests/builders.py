"""Manifests from the layouts datasets are published in: AFHQ folders, a pairs folder (`<pair>/structure.*` +
`<pair>/appearance.*`, or the Splice authors' `dataroot` layout `<pair>/A/*` + `<pair>/B/*`), two parallel folders
matched by file stem (Wild-Pairs: `structures/<n>.jpg` + `textures/<n>.jpg`), or a CSV.

Each builder returns a manifest frame (validated by the caller) whose image URIs are absolute, so the manifest
can be written anywhere; what the builder found (the layout, files it could not pair) is in `frame.attrs["notes"]`
for the command to print. Listing goes through fsspec, so a root may be local or in object storage.
"""

from __future__ import annotations

import io
import itertools
import posixpath
import random
import re

import pandas as pd

from manifests.schema import LABELS, PAIR_ID, ManifestError, manifest_folder, resolve_uri
from pipeline.storage import Storage, redact_url

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")
AFHQ_DOMAINS = ("cat", "dog", "wild")
STRING_COLUMNS = ("pair_id", "structure_uri", "appearance_uri", *LABELS, "backbone")
DIRECTIONS = ("AtoB", "BtoA")  # as the Splice authors' --direction: AtoB keeps A as the structure image
NAMED_LAYOUT = "<pair>/structure.* + <pair>/appearance.*"
DATAROOT_LAYOUT = "<pair>/A/* + <pair>/B/* (the Splice authors' dataroot layout; A is the structure image)"
MAX_LISTED = 10


SOURCES = ("afhq", "pairs-dir", "folders", "csv")


def build(
    source: str,
    root: str,
    *,
    appearances: str | None = None,
    pairs: int | None = None,
    domains: list[str] | None = None,
    split: str = "train",
    seed: int = 0,
    cross_domain: str | None = None,
    direction: str = "AtoB",
    storage: Storage | None = None,
) -> pd.DataFrame:
    """The pairs frame of one builder, as `splice manifest build SOURCE` and a bench spec's datasets make it (not yet
    validated; notes for the console in `frame.attrs`). `root` is the CSV file for csv and the structures folder
    for folders (`appearances` the other); `cross_domain` is the text of --cross-domain ('all' or 'cat->dog,...')."""
    if source == "afhq":
        domains = list(domains or AFHQ_DOMAINS)
        cross = parse_cross_domain(cross_domain, domains) if cross_domain else None
        frame = build_afhq(
            root, pairs=pairs, domains=domains, split=split, seed=seed, cross_domain=cross, storage=storage
        )
    elif source == "pairs-dir":
        frame = build_pairs_dir(root, storage=storage)
    elif source == "folders":
        frame = build_folders(root, appearances, storage=storage)
    elif source == "csv":
        frame = build_csv(root, storage=storage)
    else:
        raise ManifestError(f"unknown manifest builder {source!r}: one of {', '.join(SOURCES)}")
    return apply_direction(frame, direction)


def build_afhq(
    root: str,
    *,
    pairs: int | None = None,
    domains: list[str] | None = None,
    split: str = "train",
    seed: int = 0,
    cross_domain: list[tuple[str, str]] | None = None,
    storage: Storage | None = None,
) -> pd.DataFrame:
    """Pairs drawn from `ROOT/<split>/<domain>/*.jpg`, reproducibly from `seed`.

    Within a domain by default; with `cross_domain` (e.g. [("cat", "dog")]) the structure image comes from the
    first domain and the appearance image from the second, as the paper's AFHQ comparison does. Without `pairs`,
    every image of a (structure) domain is the structure of one pair; with it, `pairs` pairs in all, split evenly
    over the domains (or directions), no ordered pair twice.
    """
    storage = storage or Storage()
    directions = list(cross_domain) if cross_domain else [(d, d) for d in (domains or AFHQ_DOMAINS)]
    used = list(dict.fromkeys(d for direction in directions for d in direction))
    images = {domain: _images_in(storage, f"{root.rstrip('/')}/{split}/{domain}") for domain in used}
    need = {d: (2 if (d, d) in directions else 1) for d in used}
    short = [
        f"{d} ({len(found)} image(s) in {redact_url(root)}/{split}/{d})"
        for d, found in images.items()
        if len(found) < need[d]
    ]
    if short:
        raise ManifestError(
            f"AFHQ root {redact_url(root)}: each domain needs at least {max(need.values())} image(s) to "
            f"pair; too few in {', '.join(short)}. Expected the layout ROOT/train|val/cat|dog|wild/*.jpg"
        )
    rng = random.Random(seed)
    names = [_direction_name(s, a) for s, a in directions]
    per_direction = _spread(pairs, names) if pairs is not None else {n: None for n in names}
    rows = []
    for (source, target), name in zip(directions, names):
        drawn = _draw_pairs(images[source], images[target], per_direction[name], rng, f"domain {name}")
        for index, (structure, appearance) in enumerate(drawn):
            row = {
                "pair_id": f"afhq-{split}-{name}-{index:05d}",
                "structure_uri": structure,
                "appearance_uri": appearance,
                "dataset": "afhq",
                "domain": name if source == target else f"{source}->{target}",
                "split": split,
            }
            if cross_domain:
                row.update(structure_domain=source, appearance_domain=target)
            rows.append(row)
    frame = pd.DataFrame(rows)
    frame.attrs["notes"] = [
        f"pairs drawn {'across' if cross_domain else 'within'} domains: "
        + ", ".join(f"{s}->{a}" if s != a else s for s, a in directions)
    ]
    return frame


def parse_cross_domain(text: str, domains: list[str]) -> list[tuple[str, str]]:
    """'cat->dog,dog:cat' -> [('cat', 'dog'), ('dog', 'cat')]; 'all' -> every ordered pair of distinct `domains`."""
    if text == "all":
        if len(domains) < 2:
            raise ManifestError("--cross-domain needs at least two --domains (e.g. --domains cat,dog)")
        return [(s, a) for s, a in itertools.permutations(domains, 2)]
    directions = []
    for item in (t.strip() for t in text.split(",") if t.strip()):
        source, sep, target = item.replace("->", ":").partition(":")
        if not sep or not source or not target or source == target:
            raise ManifestError(
                f"--cross-domain {text!r}: give directions as SOURCE->TARGET (or SOURCE:TARGET), "
                f"comma-separated, between different domains, e.g. cat->dog,dog->cat"
            )
        directions.append((source, target))
    return directions


def build_pairs_dir(root: str, *, storage: Storage | None = None) -> pd.DataFrame:
    """One pair per sub-folder: `ROOT/<pair_id>/structure.*` + `appearance.*`, or `ROOT/<pair_id>/A/*` + `B/*`.

    In the `A/B` (dataroot) layout each of A/ and B/ must hold exactly one image; other sub-folders of a pair
    (other methods' outputs, e.g. `<pair>/ours/`) are ignored. The layout found is in `frame.attrs["notes"]`.
    """
    storage = storage or Storage()
    fs, base = storage.fs(root)
    if not fs.isdir(base):
        raise ManifestError(f"pairs folder {redact_url(root)} does not exist or is not a folder")
    base = base.rstrip("/")
    folders = sorted(
        p
        for p in (posixpath.basename(d.rstrip("/")) for d in fs.ls(base, detail=False) if fs.isdir(d))
        if not p.startswith(".")
    )
    if not folders:
        raise ManifestError(
            f"pairs folder {redact_url(root)} has no pair folders (expected {NAMED_LAYOUT}, or {DATAROOT_LAYOUT})"
        )
    named: dict[str, dict[str, list[str]]] = {}
    for path in sorted(fs.glob(f"{base}/*/*")):
        folder, name = posixpath.split(path)
        stem, extension = posixpath.splitext(name)
        if extension.lower() in IMAGE_EXTENSIONS and stem in ("structure", "appearance"):
            named.setdefault(posixpath.basename(folder), {"structure": [], "appearance": []})[stem].append(
                storage.url(fs, path)
            )
    dataroot: dict[str, dict[str, list[str]]] = {}
    for side, role in (("A", "structure"), ("B", "appearance")):
        for path in sorted(fs.glob(f"{base}/*/{side}/*")):
            name = posixpath.basename(path)
            if posixpath.splitext(name)[1].lower() in IMAGE_EXTENSIONS and not name.startswith("."):
                pair_id = posixpath.basename(posixpath.dirname(posixpath.dirname(path)))
                dataroot.setdefault(pair_id, {"structure": [], "appearance": []})[role].append(storage.url(fs, path))
    rows, problems, layouts = [], [], {NAMED_LAYOUT: 0, DATAROOT_LAYOUT: 0}
    for pair_id in folders:
        if pair_id in named and pair_id in dataroot:
            problems.append(f"{pair_id}/ has both structure.*/appearance.* and A/ B/ images; keep one layout")
            continue
        found, where = (
            (named[pair_id], {"structure": "structure.*", "appearance": "appearance.*"})
            if pair_id in named
            else (dataroot.get(pair_id), {"structure": "A/*", "appearance": "B/*"})
        )
        if found is None:
            problems.append(f"{pair_id}/ has neither structure.* + appearance.* images nor A/ + B/ folders of images")
            continue
        layouts[NAMED_LAYOUT if pair_id in named else DATAROOT_LAYOUT] += 1
        bad = False
        for role in ("structure", "appearance"):
            files = found[role]
            if len(files) != 1:
                what = "no" if not files else f"{len(files)} ({', '.join(posixpath.basename(f) for f in files)})"
                problems.append(f"{pair_id}/ has {what} {where[role]} image(s); it needs exactly one")
                bad = True
        if not bad:
            rows.append(
                {"pair_id": pair_id, "structure_uri": found["structure"][0], "appearance_uri": found["appearance"][0]}
            )
    if problems:
        raise ManifestError(
            f"pairs folder {redact_url(root)}: "
            + "; ".join(problems[:MAX_LISTED])
            + (f" and {len(problems) - MAX_LISTED} more" if len(problems) > MAX_LISTED else "")
        )
    frame = pd.DataFrame(rows).assign(dataset=posixpath.basename(base))
    frame.attrs["notes"] = [
        "layout: "
        + " and ".join(
            f"{name} ({count} pair(s))" if all(layouts.values()) else name for name, count in layouts.items() if count
        )
    ]
    return frame


def build_folders(structures: str, appearances: str, *, storage: Storage | None = None) -> pd.DataFrame:
    """Pairs from two parallel folders whose images share file stems (`structures/12.jpg` + `textures/12.png`).

    The stem is the pair_id (characters outside [A-Za-z0-9._-] become '_'). Images found in only one of the
    folders are listed in `frame.attrs["notes"]`, never silently dropped; none in common is an error.
    """
    storage = storage or Storage()
    sides = {}
    for role, folder in (("structure", structures), ("appearance", appearances)):
        fs, path = storage.fs(folder)
        if not fs.isdir(path):
            raise ManifestError(f"{role} folder {redact_url(folder)} does not exist or is not a folder")
        by_stem: dict[str, list[str]] = {}
        for url in _images_in(storage, folder):
            by_stem.setdefault(posixpath.splitext(posixpath.basename(url))[0], []).append(url)
        repeated = [
            f"{stem} ({', '.join(posixpath.basename(u) for u in urls)})"
            for stem, urls in by_stem.items()
            if len(urls) > 1
        ]
        if repeated:
            raise ManifestError(
                f"{role} folder {redact_url(folder)} has several images with the same name: "
                f"{'; '.join(repeated[:MAX_LISTED])}; keep one per name"
            )
        sides[role] = by_stem
    common = sorted(set(sides["structure"]) & set(sides["appearance"]))
    if not common:
        raise ManifestError(
            f"no image of {redact_url(structures)} has a namesake in {redact_url(appearances)}: pairs "
            f"are matched by file name without extension (structures/12.jpg + textures/12.png)"
        )
    ids = {stem: _pair_id(stem) for stem in common}
    clashes = sorted(stem for stem in common if list(ids.values()).count(ids[stem]) > 1)
    if clashes:
        raise ManifestError(f"file names {', '.join(clashes[:MAX_LISTED])} all become the same pair_id; rename them")
    frame = pd.DataFrame(
        [
            {
                "pair_id": ids[stem],
                "structure_uri": sides["structure"][stem][0],
                "appearance_uri": sides["appearance"][stem][0],
                "dataset": _dataset_name(storage, structures),
            }
            for stem in common
        ]
    )
    notes = [f"matched {len(common)} pair(s) by file name"]
    for role, folder, other in (("structure", structures, "appearance"), ("appearance", appearances, "structure")):
        alone = sorted(set(sides[role]) - set(common))
        if alone:
            shown = ", ".join(posixpath.basename(sides[role][s][0]) for s in alone[:MAX_LISTED])
            more = f" and {len(alone) - MAX_LISTED} more" if len(alone) > MAX_LISTED else ""
            notes.append(
                f"{len(alone)} {role} image(s) in {redact_url(folder)} have no {other} image of the same "
                f"name and are left out: {shown}{more}"
            )
    renamed = [f"{s} -> {i}" for s, i in ids.items() if s != i]
    if renamed:
        notes.append(
            f"{len(renamed)} pair_id(s) differ from their file names (only [A-Za-z0-9._-] allowed): "
            + ", ".join(renamed[:MAX_LISTED])
        )
    frame.attrs["notes"] = notes
    return frame


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
        raise ManifestError(
            f"CSV {redact_url(url)} cannot be parsed ({exc}): expected a header row with "
            f"pair_id,structure_uri,appearance_uri"
        ) from exc
    base = manifest_folder(url)
    for column in ("structure_uri", "appearance_uri"):
        if column in frame.columns:
            frame[column] = [
                resolve_uri(v.strip(), base) if isinstance(v, str) and v.strip() else v for v in frame[column]
            ]
    return frame


def apply_direction(frame: pd.DataFrame, direction: str) -> pd.DataFrame:
    """'AtoB' keeps the frame; 'BtoA' swaps structure and appearance (and their domains), as the authors' option."""
    if direction not in DIRECTIONS:
        raise ManifestError(f"--direction {direction!r}: use AtoB or BtoA")
    if direction == "AtoB" or "structure_uri" not in frame.columns or "appearance_uri" not in frame.columns:
        return frame
    swapped = frame.rename(
        columns={
            "structure_uri": "appearance_uri",
            "appearance_uri": "structure_uri",
            "structure_domain": "appearance_domain",
            "appearance_domain": "structure_domain",
        }
    )
    swapped = swapped[list(frame.columns)]
    swapped.attrs = {
        **frame.attrs,
        "notes": [*frame.attrs.get("notes", []), "direction BtoA: structure and appearance swapped"],
    }
    return swapped


# --- helpers -------------------------------------------------------------------------------------------------


def _images_in(storage: Storage, folder: str) -> list[str]:
    fs, path = storage.fs(folder)
    if not fs.isdir(path):
        return []
    return sorted(
        storage.url(fs, p)
        for p in fs.ls(path, detail=False)
        if posixpath.splitext(p)[1].lower() in IMAGE_EXTENSIONS and not posixpath.basename(p).startswith(".")
    )


def _pair_id(stem: str) -> str:
    cleaned = re.sub(r"[^A-Za-z0-9._-]", "_", stem)[:128]
    return cleaned if PAIR_ID.fullmatch(cleaned) and cleaned not in (".", "..") else f"pair_{cleaned}"[:128]


def _dataset_name(storage: Storage, folder: str) -> str:
    _, path = storage.fs(folder)
    parent = posixpath.dirname(path.rstrip("/"))
    return posixpath.basename(parent) or posixpath.basename(path.rstrip("/"))


def _direction_name(source: str, target: str) -> str:
    return source if source == target else f"{source}2{target}"


def _spread(total: int, names: list[str]) -> dict[str, int]:
    if total < 1:
        raise ManifestError(f"--pairs must be at least 1, got {total}")
    share, extra = divmod(total, len(names))
    return {d: share + (1 if i < extra else 0) for i, d in enumerate(names)}


def _draw_pairs(
    structures: list[str], appearances: list[str], count: int | None, rng: random.Random, name: str
) -> list[tuple[str, str]]:
    """Distinct ordered (structure, appearance) pairs, never an image with itself."""
    if count is None:  # every structure image once
        return [(s, rng.choice([a for a in appearances if a != s])) for s in structures]
    same = structures is appearances
    possible = len(structures) * len(appearances) - (len(structures) if same else 0)
    if count > possible:
        raise ManifestError(
            f"{name}: {count} pairs asked for, but the images make only {possible} distinct pairs; "
            f"ask for fewer --pairs"
        )
    if count * 3 > possible:  # dense: sample from the full list
        everything = [(s, a) for s in structures for a in appearances if s != a]
        return rng.sample(everything, count)
    chosen: dict[tuple[str, str], None] = {}
    while len(chosen) < count:
        if same:
            structure, appearance = rng.sample(structures, 2)
        else:
            structure, appearance = rng.choice(structures), rng.choice(appearances)
        chosen.setdefault((structure, appearance))
    return list(chosen)
