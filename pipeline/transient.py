"""Which storage errors are worth retrying, and the one retry loop (`with_retries`) that every read and write of
pipeline/storage.py, the run folder and its lock goes through.

Transient errors (connection resets, timeouts, throttling, 5xx) are retried with exponential backoff and jitter;
errors that will not go away by retrying (not found, permission denied, already exists, 4xx) are raised at once. A
store that does not answer at all (refused or timed-out connections) is reported as `StoreUnreachable` within
NO_ANSWER_WINDOW_S, naming what was being done and what to check.
"""

from __future__ import annotations

import errno
import logging
import random
import socket
import time
from collections.abc import Callable
from typing import TypeVar

from pipeline.errors import SpliceError, StoreUnreachable
from pipeline.redaction import redact_text

log = logging.getLogger("pipeline.storage")  # what users filter on: retries are the storage's
T = TypeVar("T")

PERMANENT_ERRORS = (
    FileNotFoundError,
    FileExistsError,
    PermissionError,
    IsADirectoryError,
    NotADirectoryError,
    ConnectionRefusedError,
)
PERMANENT_ERRNOS = {
    errno.EINVAL,
    errno.EACCES,
    errno.EPERM,
    errno.ENOSPC,
    errno.EROFS,
    errno.ENOENT,
    errno.EEXIST,
    errno.ELOOP,
    errno.ENAMETOOLONG,
    errno.EISDIR,
    errno.ENOTDIR,
    errno.ECONNREFUSED,
    errno.EDQUOT,
    errno.EFBIG,
}
NO_ANSWER_WINDOW_S = 15.0  # a store that has not answered for this long (connects refused or timing out) is reported


def is_transient(exc: BaseException) -> bool:
    """Worth retrying: network trouble, timeouts, throttling; not a missing file or a refusal."""
    if isinstance(exc, PERMANENT_ERRORS) or isinstance(exc, (SpliceError, StoreUnreachable)):
        return False
    if _refused(exc):  # nothing listens there: an address to fix, not a hiccup
        return False
    status = http_status(exc)
    if status is not None:  # 4xx: the request itself is wrong (denied, not found, bad credentials); 5xx, 429: retry
        return status >= 500 or status in (408, 429)
    if getattr(exc, "errno", None) in PERMANENT_ERRNOS:  # e.g. aiohttp's connection refused, an OSError subclass
        return False
    if isinstance(exc, (ConnectionError, TimeoutError, socket.timeout)):
        return True
    name = type(exc).__name__.lower()
    if any(
        word in name
        for word in (
            "timeout",
            "connection",
            "throttl",
            "slowdown",
            "unavailable",
            "endpoint",
            "servicerequest",
            "serviceresponse",
            "clientconnector",
        )
    ):
        return True
    if isinstance(exc, OSError):
        return exc.errno not in PERMANENT_ERRNOS
    return False


def _causes(exc: BaseException, depth: int = 6):
    while exc is not None and depth:
        yield exc
        exc, depth = exc.__cause__ or exc.__context__, depth - 1


def http_status(exc: BaseException) -> int | None:
    """The HTTP status an error carries (aiohttp's `.status`, botocore's response), if any."""
    for candidate in (exc, exc.__cause__, exc.__context__):
        if candidate is None:
            continue
        status = getattr(candidate, "status", None)
        if isinstance(status, int) and 100 <= status < 600:
            return status
        response = getattr(candidate, "response", None)
        if isinstance(response, dict):
            status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if isinstance(status, int):
                return status
    return None


def with_retries(
    fn: Callable[[], T],
    *,
    what: str,
    attempts: int = 5,
    base_delay: float = 0.25,
    max_delay: float = 8.0,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """Call fn(); on a transient error wait base_delay * 2**n (with jitter) and try again, `attempts` times in all.

    A store that does not answer at all (refused or timed-out connections) is given NO_ANSWER_WINDOW_S, then
    reported as StoreUnreachable naming what was being done and what to check."""
    started = time.monotonic()
    for attempt in range(1, attempts + 1):
        try:
            return fn()
        except Exception as exc:
            elapsed = time.monotonic() - started
            if not is_transient(exc):
                if _refused(exc):  # nothing listens at the address: not retried, but said as a dead store
                    raise unreachable(what, exc, attempt, elapsed) from exc
                raise
            delay = min(max_delay, base_delay * 2 ** (attempt - 1)) * (0.5 + random.random())
            if _no_answer(exc) and (attempt == attempts or elapsed + delay > NO_ANSWER_WINDOW_S):
                raise unreachable(what, exc, attempt, elapsed) from exc
            if attempt == attempts:
                raise
            log.warning(
                "%s failed (%s: %s); retrying in %.2fs (%d/%d)",
                what,
                type(exc).__name__,
                redact_text(exc),
                delay,
                attempt,
                attempts - 1,
            )
            sleep(delay)
    raise AssertionError("unreachable")


def _refused(exc: BaseException) -> bool:
    """A refused connection somewhere in the chain (s3fs / aiohttp / azure wrap it)."""
    return any(
        isinstance(cause, ConnectionRefusedError) or getattr(cause, "errno", None) == errno.ECONNREFUSED
        for cause in _causes(exc)
    )


def _no_answer(exc: BaseException) -> bool:
    """The store did not answer: refused or timed-out connections, as opposed to an error it answered with."""
    if isinstance(exc, (ConnectionError, TimeoutError, socket.timeout)):
        return True
    seen = exc
    for _ in range(5):  # s3fs / aiohttp wrap the connection error; look a few causes down
        name = type(seen).__name__.lower()
        if any(word in name for word in ("connect", "timeout", "endpoint", "serverdisconnected", "servicerequest")):
            return True
        seen = seen.__cause__ or seen.__context__
        if seen is None:
            return False
    return False


def unreachable(what: str, exc: BaseException, attempts: int, elapsed: float) -> StoreUnreachable:
    reason = redact_text((str(exc).strip().splitlines() or [type(exc).__name__])[0])[:300]
    return StoreUnreachable(
        f"the store did not answer while {what}: {attempts} attempt(s) in {elapsed:.1f} s ({type(exc).__name__}: "
        f"{reason}). Check the store's address (s3://: --storage-option endpoint_url=... or AWS_ENDPOINT_URL; gs://: "
        f"endpoint_url; az://: account_name or connection_string), that the store is up and reachable from this "
        f"machine (network, proxy, firewall), and the credentials"
    )
