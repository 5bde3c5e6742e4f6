"""Which file is each pair's output, for `splice import` (importer.py): a flat folder of <pair_id>.<ext>, a
`--pattern` under ROOT with `{pair_id}` and glob wildcards, or a `--csv` of pair_id,output_uri. Outputs stay under
ROOT (no '..', no symbolic link out of it unless `follow_symlinks`); a pair with no match or several is a `NoOutput`.
"""

from __future__ import annotations

import functools
import io
import logging
import os
import posixpath
import re
from collections.abc import Iterator
from dataclasses import dataclass

import pandas as pd

from manifests.builders import IMAGE_EXTENSIONS
from manifests.schema import manifest_folder, resolve_uri
from pipeline.errors import SpliceError
from pipeline.runs import layout
from pipeline.storage import Storage, is_local, redact_url

log = logging.getLogger(__name__)

EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp")  # in order of preference when a pair has several


class ImportRefused(SpliceError, ValueError):
    """An import that cannot go ahead as asked."""


@dataclass(frozen=True)
class NoOutput:
    """Why a pair has no output to import: 'missing' (nothing matched) or 'ambiguous' (several did)."""

    kind: str
    error: str


def outputs_by_pair(
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
