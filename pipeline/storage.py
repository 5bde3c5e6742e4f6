"""Where files live: fsspec URLs to filesystems, storage options, bounded reads, retries and redaction.

Every location (manifest, images, run folder) is an fsspec URL: a local path, file://, s3://, gs://, ...
`--storage-option KEY=VALUE` options go to every non-local filesystem; dotted keys nest
(`client_kwargs.region_name=eu-west-1`). For s3://, the endpoint comes from `endpoint_url` or, failing that,
AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL (any S3-compatible store: MinIO, Ceph, R2, ...).

Transient errors (connection resets, timeouts, throttling; pipeline/transient.py) are retried with exponential backoff; errors that
will not go away by retrying (not found, permission denied, already exists) are raised at once. Retries happen
here only: s3fs and botocore are set to one attempt each (with short connect / read timeouts), so attempts never
multiply, and a store that does not answer at all is reported as `StoreUnreachable` within NO_ANSWER_WINDOW_S
(plus one timeout), naming the URL and what to check.

Protocols: local paths and file://, s3:// (s3fs), gs:// (gcsfs), az:// and abfs:// (adlfs), and whatever else
fsspec knows; storage options go to the filesystem as they are.
Credentials never leave this module in readable form: `redact` (pipeline.redaction, the one redaction) is applied to
whatever is logged or recorded, and a URL of an object store that carries credentials itself is refused.
"""

from __future__ import annotations

import json
import logging
import os
import re
import stat
import threading
import uuid
from collections.abc import Callable
from typing import TypeVar

import fsspec

from pipeline.errors import SpliceError, StorageError
from pipeline.filesystems import library_options, open_filesystem
from pipeline.redaction import (  # noqa: F401  (redact re-exported: callers redact through storage)
    has_userinfo,
    redact,
    redact_text,
    redact_url,
)
from pipeline.transient import with_retries

log = logging.getLogger(__name__)
T = TypeVar("T")

LOCAL_PROTOCOLS = ("file", "local")
HTTP_PROTOCOLS = ("http", "https")
USERINFO_PROTOCOLS = (*HTTP_PROTOCOLS, "ftp", "sftp", "ssh", "smb", "webdav")  # user:password@ in the URL is theirs
READ_TIMEOUT_S = 120.0  # one read of one input (image, manifest) may take at most this long
READ_CHUNK = 1 << 20


class InputRefused(SpliceError, OSError):
    """An input that is not read at all: not a regular file, or larger than the byte cap. Never retried."""


# --- options -------------------------------------------------------------------------------------------------


def parse_storage_options(pairs: list[str] | None) -> dict:
    """['key=v', 'client_kwargs.region_name=x', 'anon=true'] -> nested dict with ints/bools/JSON parsed."""
    options: dict = {}
    for item in pairs or []:
        name, sep, raw = item.partition("=")
        if not sep or not name.strip():
            raise SpliceError(f"storage option {item!r} is not KEY=VALUE (e.g. endpoint_url=http://127.0.0.1:9000)")
        target = options
        *parents, leaf = name.strip().split(".")
        for parent in parents:
            target = target.setdefault(parent, {})
        target[leaf] = _parse_value(raw)
    return options


def _parse_value(raw: str):
    text = raw.strip()
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    if re.fullmatch(r"-?\d+", text):
        return int(text)
    if text[:1] in "{[":
        try:
            return json.loads(text)
        except ValueError:
            pass
    return raw


# --- filesystems ---------------------------------------------------------------------------------------------


def protocol_of(url: str) -> str:
    match = re.match(r"^([A-Za-z][A-Za-z0-9+.-]*)://", url)
    return match.group(1).lower() if match else "file"


def is_local(url: str) -> bool:
    return protocol_of(url) in LOCAL_PROTOCOLS


def absolute(url: str) -> str:
    """Local paths (and file:// URLs) as absolute paths, so other processes with other working folders agree."""
    if not is_local(url):
        return url
    return os.path.abspath(os.path.expanduser(url.removeprefix("file://")))


class Storage:
    """Turns URLs into (filesystem, path) with the user's storage options; one filesystem per protocol."""

    def __init__(self, options: dict | None = None):
        self.options = dict(options or {})
        self._filesystems: dict[str, fsspec.AbstractFileSystem] = {}

    def fs(self, url: str) -> tuple[fsspec.AbstractFileSystem, str]:
        protocol = protocol_of(url)
        if protocol not in USERINFO_PROTOCOLS and has_userinfo(url):
            raise StorageError(
                f"{redact_url(url)} was given with credentials inside the URL (KEY:SECRET@), which are masked and "
                f"not used: give them as --storage-option key=... secret=..., or in the environment "
                f"(AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, GOOGLE_APPLICATION_CREDENTIALS, AZURE_STORAGE_*)"
            )
        if protocol not in self._filesystems:
            try:
                self._filesystems[protocol] = open_filesystem(protocol, self._options_for(protocol))
            except (ImportError, ValueError) as exc:
                raise StorageError(f"cannot open {redact_url(url)}: {redact_text(str(exc))}") from exc
        fs = self._filesystems[protocol]
        path = fs._strip_protocol(url)
        if protocol in LOCAL_PROTOCOLS:
            path = os.path.abspath(os.path.expanduser(path))
        return fs, path

    def _options_for(self, protocol: str) -> dict:
        if protocol in LOCAL_PROTOCOLS:
            return {"auto_mkdir": True}
        options = dict(self.options)
        if protocol in ("s3", "s3a"):
            endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
            if endpoint and "endpoint_url" not in options and "endpoint_url" not in options.get("client_kwargs", {}):
                options["endpoint_url"] = endpoint
        return library_options(protocol, options)

    def url(self, fs: fsspec.AbstractFileSystem, path: str) -> str:
        """The URL of `path` on `fs` (plain paths for local files)."""
        protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
        if protocol in LOCAL_PROTOCOLS:
            return path
        used = next((p for p, opened in self._filesystems.items() if opened is fs), None)  # az:// stays az://
        return f"{used}://{path.lstrip('/')}" if used and used not in LOCAL_PROTOCOLS else fs.unstrip_protocol(path)

    # small helpers, all retried on transient errors

    def read_bytes(self, url: str) -> bytes:
        fs, path = self.fs(url)
        return with_retries(lambda: fs.cat_file(path), what=f"reading {redact_url(url)}")

    def write_bytes(self, url: str, data: bytes) -> None:
        """Write a whole file so a reader sees the old or the new content, never a part (see `write_whole`)."""
        fs, path = self.fs(url)
        with_retries(lambda: write_whole(fs, path, data), what=f"writing {redact_url(url)}")

    def read_input(self, url: str, *, max_bytes: int, timeout: float = READ_TIMEOUT_S) -> bytes:
        """Read an input (image, manifest) with limits: only a regular file or object, at most `max_bytes` (checked
        from its size before reading and again while reading), each try at most `timeout` seconds."""
        fs, path = self.fs(url)
        name = redact_url(url)

        def read() -> bytes:
            size = _regular_size(fs, path, name, is_local(url))
            if size is not None and size > max_bytes:
                raise InputRefused(
                    f"{name} has {size} bytes, above the cap of {max_bytes} bytes for one input: "
                    f"check it is the right file, or raise the cap (--max-input-bytes)"
                )
            if not is_local(url) and protocol_of(url) not in HTTP_PROTOCOLS:
                data = fs.cat_file(path)  # an object of the listed size (checked above), in one request
                if len(data) > max_bytes:
                    raise InputRefused(
                        f"{name} is larger than the cap of {max_bytes} bytes for one input: check "
                        f"it is the right file, or raise the cap (--max-input-bytes)"
                    )
                if size is not None and len(data) != size:  # a dropped connection can look like a short object
                    raise ConnectionError(f"reading {name} returned {len(data)} of its {size} bytes")
                return data
            if is_local(url):
                opener = lambda: open(path, "rb")  # noqa: E731
            else:
                # one streamed GET, which reports its real HTTP status; a size is given only so that fsspec skips its
                # HEAD probe, which turns every error status (403, 500) into "not found"
                opener = lambda: fs.open(path, "rb", block_size=0, size=max_bytes + 1)  # noqa: E731
            chunks, total = [], 0
            with opener() as handle:
                while chunk := handle.read(READ_CHUNK):
                    total += len(chunk)
                    if total > max_bytes:  # the file grew, or its listed size was wrong
                        raise InputRefused(
                            f"{name} is larger than the cap of {max_bytes} bytes for one input: check "
                            f"it is the right file, or raise the cap (--max-input-bytes)"
                        )
                    chunks.append(chunk)
            return b"".join(chunks)

        timeout_error = f"reading {name} took longer than {timeout:.0f} s"
        return with_retries(
            lambda: call_with_timeout(read, timeout, timeout_error=timeout_error), what=f"reading {name}"
        )

    def exists(self, url: str) -> bool:
        fs, path = self.fs(url)
        fs.invalidate_cache(path)  # another process may have written it since we last listed
        return with_retries(lambda: fs.exists(path), what=f"checking {redact_url(url)}")

    def read_json(self, url: str) -> dict:
        return json.loads(self.read_bytes(url))

    def write_json(self, url: str, value: dict) -> None:
        self.write_bytes(url, json.dumps(value, indent=2, default=str).encode())

    def remove(self, url: str) -> None:
        fs, path = self.fs(url)

        def remove():
            try:
                fs.rm_file(path)
            except FileNotFoundError:
                pass

        with_retries(remove, what=f"removing {redact_url(url)}")

    def glob(self, pattern: str) -> list[str]:
        fs, path = self.fs(pattern)
        fs.invalidate_cache()  # other processes write here: never answer from a stale listing
        return [
            self.url(fs, p) for p in sorted(with_retries(lambda: fs.glob(path), what=f"listing {redact_url(pattern)}"))
        ]


def _regular_size(fs, path: str, name: str, local: bool) -> int | None:
    """The size of a regular file or object; anything else (FIFO, device, socket, directory) is refused by type,
    before it is opened (opening a FIFO blocks; a device never ends)."""
    if local:
        mode = os.stat(path).st_mode  # follows symlinks: a loop raises ELOOP, a permanent error
        if stat.S_ISREG(mode):
            return os.stat(path).st_size
        kind = (
            "a directory"
            if stat.S_ISDIR(mode)
            else "a FIFO (named pipe)"
            if stat.S_ISFIFO(mode)
            else "a device"
            if stat.S_ISCHR(mode) or stat.S_ISBLK(mode)
            else "a socket"
            if stat.S_ISSOCK(mode)
            else "not a regular file"
        )
        raise InputRefused(f"{name} is {kind}, not a regular file: only image files can be read")
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    if protocol in HTTP_PROTOCOLS:  # a URL is one object; its size is checked while it streams
        return None
    info = fs.info(path)
    if info.get("type", "file") != "file":
        raise InputRefused(f"{name} is a {info.get('type')}, not a file: give the URL of one image")
    size = info.get("size")
    return int(size) if isinstance(size, (int, float)) else None


def call_with_timeout(fn: Callable[[], T], timeout: float, *, timeout_error: str, name: str = "splice-read") -> T:
    """fn()'s value (or its exception, raised here) if it returns within `timeout`; else TimeoutError(timeout_error)
    at the deadline, fn going on in a daemon thread named `name` (a read that hangs is retried as transient)."""
    outcome: dict = {}

    def target():
        try:
            outcome["value"] = fn()
        except BaseException as exc:  # handed to the caller
            outcome["error"] = exc

    thread = threading.Thread(target=target, name=name, daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise TimeoutError(timeout_error)
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def _remove_quietly(path: str) -> None:
    try:
        os.remove(path)
    except OSError:
        pass


def is_local_fs(fs: fsspec.AbstractFileSystem) -> bool:
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return protocol in LOCAL_PROTOCOLS


def ensure_folder(fs, path: str) -> None:
    """Create a local folder; object stores have no folders, and creating one there may create a BUCKET."""
    if is_local_fs(fs):
        fs.makedirs(path, exist_ok=True)


def write_whole(fs, path: str, data: bytes) -> None:
    """Write a whole file so a reader sees the old or the new content, never a part: on a local disk a temporary
    file renamed over the target (its folder created); object stores replace an object atomically on put."""
    if not is_local_fs(fs):
        fs.pipe_file(path, data)
        return
    os.makedirs(os.path.dirname(path), exist_ok=True)
    temporary = f"{path}.{uuid.uuid4().hex}.tmp"
    try:
        with open(temporary, "wb") as handle:
            handle.write(data)
        os.replace(temporary, path)
    except BaseException:  # e.g. disk full: never leave a temporary file behind
        _remove_quietly(temporary)
        raise
