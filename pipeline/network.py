"""Whether a weights host can be reached: one quick TCP connect, so offline machines fail in seconds, not minutes."""

from __future__ import annotations

import os
import socket
import urllib.parse

OFFLINE_VARIABLES = ("SPLICE_OFFLINE",)  # set to 1 to never try a download


def reachable(url: str, offline_variables: tuple[str, ...] = (), timeout: float = 3.0) -> bool:
    """True if the host of `url` accepts a TCP connection within `timeout` s; False when an offline variable is set."""
    for variable in OFFLINE_VARIABLES + tuple(offline_variables):
        if os.environ.get(variable, "0").lower() in ("1", "true", "yes"):
            return False
    parsed = urllib.parse.urlparse(url)
    try:
        with socket.create_connection((parsed.hostname, parsed.port or 443), timeout=timeout):
            return True
    except OSError:
        return False
