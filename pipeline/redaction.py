"""The one redaction of credentials: whatever is displayed or stored (report pages, tables, the run's manifest copy,
results.parquet, JSON, logs, errors, tracebacks) goes through `redact_url` / `redact_text` / `redact` first.

It masks user:password@ in a URL of any scheme, and signing or credential query parameters (X-Amz-Signature,
X-Amz-Credential, X-Amz-Security-Token, sig, token, access_token, ...); storage options whose key names a secret.
Standard library only, so that the console's log filter can use it before any heavy import.
"""

from __future__ import annotations

import re
import urllib.parse

SECRET_WORDS = (
    "key",
    "secret",
    "token",
    "password",
    "passwd",
    "credential",
    "session",
    "auth",
    "signature",
    "connection_string",
)
SECRET_PARAMS = ("sig", "signature", "token", "key", "password", "passwd", "secret", "credential", "code")  # exact
SECRET_PARAM_PREFIXES = ("x-amz-", "x-goog-", "x-ms-")  # every header-like signing parameter of S3, GCS, Azure
REDACTED = "***"
URL_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>`]+")
USERINFO_IN_TEXT = re.compile(r"(?<![\w/@:])[\w.%+~-]+:[^\s@/'\"<>`]+@(?=[\w.-])")  # KEY:SECRET@bucket, no scheme


def redact(options):
    """A copy of `options` with every credential-like value replaced by '***' (nested dicts too)."""
    if isinstance(options, dict):
        return {k: REDACTED if _is_secret(k) and v not in (None, "") else redact(v) for k, v in options.items()}
    if isinstance(options, list):
        return [redact(v) for v in options]
    if isinstance(options, str):
        return redact_url(options)
    return options


def redact_url(url: str) -> str:
    """Drop user:password@ (any scheme) and mask credential-like query parameters of a URL."""
    if "://" not in url:
        return url
    try:
        parts = urllib.parse.urlsplit(url)
        pairs = urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
    except ValueError:  # not parseable as a URL (e.g. a stray '['): keep only its scheme
        return url.split("://", 1)[0] + "://" + REDACTED
    netloc = f"{REDACTED}@{parts.netloc.rsplit('@', 1)[-1]}" if "@" in parts.netloc else parts.netloc
    secret = any(_is_secret_param(k) for k, _ in pairs)
    if netloc == parts.netloc and not secret:
        return url
    query = (
        urllib.parse.urlencode([(k, REDACTED if _is_secret_param(k) else v) for k, v in pairs])
        if secret
        else parts.query
    )
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def redact_text(text) -> str:
    """Any text (an error message, a traceback, a log line) with every URL in it redacted as by `redact_url`, and
    any KEY:SECRET@ left without its scheme (as libraries quote a bucket name) masked."""
    text = URL_IN_TEXT.sub(lambda match: redact_url(match.group(0)), str(text))
    return USERINFO_IN_TEXT.sub(REDACTED + "@", text)


def _is_secret_param(name: str) -> bool:
    lowered = name.lower()
    return lowered in SECRET_PARAMS or lowered.startswith(SECRET_PARAM_PREFIXES) or _is_secret(lowered)


def _is_secret(name) -> bool:
    lowered = str(name).lower()
    return any(word in lowered for word in SECRET_WORDS) and lowered not in ("key_prefix",)


def is_masked(url: str) -> bool:
    """Whether `url` is a redacted one: its credentials are no longer in it."""
    return REDACTED in url or urllib.parse.quote(REDACTED) in url


def has_userinfo(url: str) -> bool:
    """Whether a URL carries user[:password]@ before its host."""
    if "://" not in url:
        return False
    netloc = url.split("://", 1)[1].split("/", 1)[0]
    return "@" in netloc
