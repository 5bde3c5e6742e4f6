"""Can this URL be a run (or report) folder? Checked before anything is written (RunFolder.check_target): a
missing bucket (never created), bad credentials, a file in place of the folder and a read-only location are each
refused in one line naming the URL.
"""

from __future__ import annotations

import os

from pipeline.errors import StorageError
from pipeline.storage import Storage, is_local, redact_text, redact_url
from pipeline.transient import http_status


def check_target(storage: Storage, url: str, *, what: str = "--out", create: bool = True) -> None:
    """Fail with one line (StorageError, exit 2) unless `url` can be a run (or report) folder: never creates a
    bucket."""
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
        raise StorageError(
            f"bucket {bucket!r} of {what} {name} does not exist: create it first (splice never creates "
            f"buckets), or check the URL for a typo"
        ) from None
    except Exception as exc:  # credentials, endpoint, network: one line that says what to check
        raise StorageError(describe_access_error(exc, f"{what} {name}")) from None
    if is_file:
        raise StorageError(
            f"{what} {name} is a file, not a run folder: give a folder URL (a new one, or the --out of an earlier run)"
        )


def _check_local_target(path: str, name: str, what: str, create: bool) -> None:
    if os.path.exists(path) and not os.path.isdir(path):
        raise StorageError(
            f"{what} {name} is a file, not a run folder: give a folder path (a new one, or the --out of an earlier run)"
        )
    existing = path
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise StorageError(f"{what} {name} cannot be created: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK):
        raise StorageError(
            f"{what} {name} cannot be written ({existing} is read-only): choose a writable location, "
            f"or check its permissions and that its filesystem is not mounted read-only"
        )
    if create:
        try:
            os.makedirs(path, exist_ok=True)
        except OSError as exc:
            raise StorageError(
                f"{what} {name} cannot be created ({exc.strerror or exc}): choose a writable location, "
                f"or check its permissions and free space"
            ) from None


def describe_access_error(exc: BaseException, what: str) -> str:
    """One line for an error met while reaching a store: credentials, a missing bucket, the endpoint."""
    status = http_status(exc)
    text = redact_text(f"{type(exc).__name__}: {exc}".splitlines()[0])[:200]
    if isinstance(exc, PermissionError) or status in (401, 403):
        return (
            f"{what}: the store refused these credentials ({text}): check the key and secret (--storage-option "
            f"key=... secret=..., or AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY) and that they may use this bucket"
        )
    if not status and (
        isinstance(exc, OSError) or any(w in type(exc).__name__.lower() for w in ("connect", "endpoint"))
    ):
        return (
            f"{what}: cannot reach the store ({text}): check the endpoint (endpoint_url, AWS_ENDPOINT_URL) "
            f"and the network"
        )
    return f"{what}: the store answered with an error ({text}): check the URL, the endpoint and the credentials"
