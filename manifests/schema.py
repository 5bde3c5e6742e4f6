"""The manifest: one Parquet row per (structure, appearance) pair. Schema in manifests/README.md.

Required columns: pair_id (unique, [A-Za-z0-9._-]{1,128}: it becomes a storage key), structure_uri,
appearance_uri (fsspec URLs, or paths relative to the manifest's folder). Optional: dataset, domain, split
(labels), seed, steps, backbone (per-pair overrides of the run's settings). Other columns are kept as they are.

A manifest is validated as a whole before any work starts; every problem is reported at once, naming the
manifest and the bad rows.
"""

from __future__ import annotations

import io
import numbers
import os
import posixpath
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from pipeline.errors import SpliceError
from pipeline.storage import Storage, is_local, protocol_of, redact_text, redact_url

REQUIRED = {"pair_id": "string", "structure_uri": "string", "appearance_uri": "string"}
OPTIONAL = {
    "dataset": "string",
    "domain": "string",
    "split": "string",
    "seed": "integer",
    "steps": "integer",
    "backbone": "string",
}
LABELS = ("dataset", "domain", "split")
PAIR_ID = re.compile(r"[A-Za-z0-9._-]{1,128}")
MAX_ROWS_SHOWN = 8


class ManifestError(SpliceError, ValueError):
    """A manifest that cannot be run as it is; the message names it, the bad rows and the fix."""


@dataclass(frozen=True)
class PairSpec:
    """One row of a validated manifest, with its image URIs resolved."""

    pair_id: str
    structure_uri: str
    appearance_uri: str
    seed: int | None = None  # per-pair overrides of the run's settings (None: the run's value)
    steps: int | None = None
    backbone: str | None = None
    labels: dict = field(default_factory=dict)  # dataset / domain / split, where given


@dataclass
class Manifest:
    url: str  # where it was read from
    frame: pd.DataFrame  # validated, image URIs resolved to absolute URLs / paths

    def __len__(self) -> int:
        return len(self.frame)

    @property
    def pair_ids(self) -> list[str]:
        return list(self.frame["pair_id"])

    def pairs(self) -> list[PairSpec]:
        columns = set(self.frame.columns)
        specs = []
        for row in self.frame.to_dict("records"):
            specs.append(
                PairSpec(
                    pair_id=row["pair_id"],
                    structure_uri=row["structure_uri"],
                    appearance_uri=row["appearance_uri"],
                    seed=_int_or_none(row.get("seed")),
                    steps=_int_or_none(row.get("steps")),
                    backbone=row.get("backbone")
                    if "backbone" in columns and isinstance(row.get("backbone"), str)
                    else None,
                    labels={k: row[k] for k in LABELS if k in columns and isinstance(row[k], str)},
                )
            )
        return specs


# --- reading and writing -------------------------------------------------------------------------------------


def read_manifest(url: str, storage: Storage | None = None) -> Manifest:
    """Read, validate and resolve a Parquet manifest; raises ManifestError before any work starts."""
    storage = storage or Storage()
    name = redact_url(url)
    try:
        data = storage.read_bytes(url)
    except FileNotFoundError:
        raise ManifestError(f"manifest {name} does not exist: build one with `splice manifest build`") from None
    except OSError as exc:
        raise ManifestError(
            f"manifest {name} cannot be read ({redact_text(exc)}): check the URL and --storage-option"
        ) from exc
    try:
        frame = pd.read_parquet(io.BytesIO(data))
    except Exception as exc:
        raise ManifestError(
            f"manifest {name} is not a Parquet file ({type(exc).__name__}): build one with `splice manifest build` "
            f"(a CSV becomes a manifest with `splice manifest build csv FILE.csv -o M.parquet`)"
        ) from exc
    frame = validate_frame(frame, name)
    return Manifest(url=url, frame=resolve_uris(frame, manifest_folder(url)))


def write_manifest(frame: pd.DataFrame, url: str, storage: Storage | None = None) -> None:
    buffer = io.BytesIO()
    frame.reset_index(drop=True).to_parquet(buffer, index=False)
    (storage or Storage()).write_bytes(url, buffer.getvalue())


# --- validation ----------------------------------------------------------------------------------------------


def validate_frame(frame: pd.DataFrame, name: str) -> pd.DataFrame:
    """Check the schema and every row; return the frame with normalised dtypes. All problems in one error."""
    if len(frame) == 0:
        raise ManifestError(f"manifest {name} is empty (no pairs): build it again and check the builder's inputs")
    missing = [column for column in REQUIRED if column not in frame.columns]
    if missing:
        raise ManifestError(
            f"manifest {name} lacks required column(s) {', '.join(missing)} (it has: {', '.join(map(str, frame.columns))}); "
            f"required: {', '.join(REQUIRED)}"
        )
    frame = frame.reset_index(drop=True).copy()
    problems: list[str] = []
    for column, kind in {**REQUIRED, **OPTIONAL}.items():
        if column not in frame.columns:
            continue
        if kind == "string":
            problems += _check_strings(frame, column, required=column in REQUIRED)
            frame[column] = frame[column].astype(object).where(frame[column].notna(), None)
        else:
            converted, column_problems = _to_integers(frame, column)
            problems += column_problems
            if converted is not None:
                frame[column] = converted
    problems += _check_pair_ids(frame)
    if "steps" in frame.columns and not problems:
        bad = frame.index[frame["steps"].notna() & (frame["steps"].fillna(1) < 1)]
        if len(bad):
            problems.append(f"steps must be >= 1 in {_rows(frame, bad)}")
    if problems:
        raise ManifestError(
            f"manifest {name} has {len(problems)} problem(s):\n  - "
            + "\n  - ".join(problems)
            + "\nfix these rows (or rebuild the manifest) and run again"
        )
    return frame


def _check_strings(frame: pd.DataFrame, column: str, required: bool) -> list[str]:
    values = frame[column]
    wrong = frame.index[values.map(lambda v: v is not None and not _is_null(v) and not isinstance(v, str))]
    problems = []
    if len(wrong):
        kinds = sorted({_kind(values[i]) for i in wrong})
        problems.append(f"column {column!r} must hold text, found {'/'.join(kinds)} in {_rows(frame, wrong)}")
    if required:
        empty = frame.index[values.map(lambda v: _is_null(v) or (isinstance(v, str) and not v.strip()))]
        if len(empty):
            problems.append(f"column {column!r} is empty in {_rows(frame, empty)}")
    return problems


def _to_integers(frame: pd.DataFrame, column: str) -> tuple[pd.Series | None, list[str]]:
    values = frame[column]
    if pd.api.types.is_bool_dtype(values) or not pd.api.types.is_numeric_dtype(values):
        numeric = values.map(
            lambda v: v if _is_null(v) or (isinstance(v, (int, float)) and not isinstance(v, bool)) else None
        )
        wrong = frame.index[values.notna() & numeric.isna()]
        if len(wrong):
            kinds = sorted({_kind(values[i]) for i in wrong})
            return None, [f"column {column!r} must hold integers, found {'/'.join(kinds)} in {_rows(frame, wrong)}"]
        values = pd.to_numeric(numeric)
    fractional = frame.index[values.notna() & (values.fillna(0) % 1 != 0)]
    if len(fractional):
        return None, [f"column {column!r} must hold integers, found fractions in {_rows(frame, fractional)}"]
    return values.astype("Int64"), []


def _check_pair_ids(frame: pd.DataFrame) -> list[str]:
    ids = frame["pair_id"]
    problems = []
    bad = frame.index[ids.map(lambda v: isinstance(v, str) and (not PAIR_ID.fullmatch(v) or v in (".", "..")))]
    if len(bad):
        problems.append(
            f"pair_id must match [A-Za-z0-9._-]{{1,128}} and not be '.' or '..' (it names a storage "
            f"folder) in {_rows(frame, bad)}"
        )
    duplicated = ids[ids.notna() & ids.duplicated(keep=False)]
    if len(duplicated):
        names = sorted(set(duplicated))
        shown = ", ".join(repr(n) for n in names[:MAX_ROWS_SHOWN]) + (" ..." if len(names) > MAX_ROWS_SHOWN else "")
        problems.append(
            f"pair_id must be unique: {len(names)} id(s) repeat ({shown}) in {_rows(frame, duplicated.index)}"
        )
    return problems


def _rows(frame: pd.DataFrame, index) -> str:
    """'row 3 (pair_id 'a'), row 7 (pair_id 'b') and 2 more' (0-based row positions)."""
    index = list(index)
    shown = []
    for i in index[:MAX_ROWS_SHOWN]:
        pair_id = frame.at[i, "pair_id"] if "pair_id" in frame.columns else None
        shown.append(f"row {i}" + (f" (pair_id {pair_id!r})" if isinstance(pair_id, str) else ""))
    more = f" and {len(index) - MAX_ROWS_SHOWN} more" if len(index) > MAX_ROWS_SHOWN else ""
    return ", ".join(shown) + more


def _kind(value) -> str:
    for kind, types in (("bool", (bool, np.bool_)), ("int", numbers.Integral), ("float", numbers.Real), ("str", str)):
        if isinstance(value, types):
            return kind
    return type(value).__name__


def _is_null(value) -> bool:
    try:
        return value is None or bool(pd.isna(value))
    except (TypeError, ValueError):
        return False


def _int_or_none(value) -> int | None:
    return None if _is_null(value) else int(value)


# --- URIs ----------------------------------------------------------------------------------------------------


def manifest_folder(url: str) -> str:
    """The folder relative image paths resolve against."""
    if is_local(url):
        return os.path.dirname(os.path.abspath(os.path.expanduser(url.removeprefix("file://"))))
    return url.rstrip("/").rsplit("/", 1)[0]


def resolve_uri(uri: str, base: str) -> str:
    """An image URI as written in a manifest -> an absolute URL (remote) or absolute path (local)."""
    if "://" in uri:
        return uri if protocol_of(uri) != "file" else uri.removeprefix("file://")
    if uri.startswith(("/", "~")):
        return os.path.abspath(os.path.expanduser(uri))
    if is_local(base):
        return os.path.normpath(os.path.join(base, uri))
    scheme, rest = base.split("://", 1)
    bucket, _, path = rest.partition("/")
    return f"{scheme}://{bucket}/" + posixpath.normpath(posixpath.join("/" + path, uri)).lstrip("/")


def resolve_uris(frame: pd.DataFrame, base: str) -> pd.DataFrame:
    frame = frame.copy()
    for column in ("structure_uri", "appearance_uri"):
        frame[column] = [resolve_uri(uri, base) for uri in frame[column]]
    return frame


# --- image check ---------------------------------------------------------------------------------------------


def check_images(
    manifest: Manifest, storage: Storage, max_pixels: int | None = None, workers: int = 8, max_bytes: int | None = None
) -> list[str]:
    """Read and decode every image (bounded reads); return one line per unreadable image (empty: all fine)."""
    from pipeline.method.images import DEFAULT_MAX_PIXELS, decode_image, max_input_bytes

    jobs = [
        (pair.pair_id, role, uri)
        for pair in manifest.pairs()
        for role, uri in (("structure", pair.structure_uri), ("appearance", pair.appearance_uri))
    ]
    limit = max_bytes or max_input_bytes(max_pixels or DEFAULT_MAX_PIXELS)

    def check(job):
        pair_id, role, uri = job
        try:
            decode_image(storage.read_input(uri, max_bytes=limit), redact_url(uri), max_pixels or DEFAULT_MAX_PIXELS)
        except FileNotFoundError:
            return f"pair {pair_id!r}: {role} image {redact_url(uri)} does not exist"
        except SpliceError as exc:
            return redact_text(f"pair {pair_id!r}: {role} image: {exc}")
        except Exception as exc:  # OSError, HTTP errors
            return redact_text(f"pair {pair_id!r}: {role} image {uri} cannot be read ({type(exc).__name__}: {exc})")
        return None

    with ThreadPoolExecutor(max_workers=workers) as pool:
        return [problem for problem in pool.map(check, jobs) if problem]
