"""The run folder's lock, `<run>/_LOCK`: one writer at a time (`splice run`, `import`, `evaluate`, `report`).

Created exclusively (O_EXCL locally, a conditional put on S3), renewed by a heartbeat, and a fence: a holder whose
lock was taken over notices and stops writing. `--break-lock` never takes the lock of a holder alive on this host.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from datetime import datetime, timezone

from pipeline.errors import SpliceError
from pipeline.runs import layout
from pipeline.storage import Storage, ensure_folder, redact_text, redact_url
from pipeline.transient import with_retries

log = logging.getLogger(__name__)
LOCK_HEARTBEAT_S = 20.0  # a running `splice run` rewrites its lock this often ...
LOCK_STALE_S = 120.0  # ... so a lock not rewritten for this long belongs to a run that died


class LockLost(SpliceError):
    """This command's lock was taken over by another one (e.g. with --break-lock): it must stop writing."""


class RunLocked(SpliceError):
    """Another command holds the run folder's lock."""


class RunLock:
    """`<run>/_LOCK`, created exclusively, so that two commands never write the same run folder at once.

    Creation uses exclusive mode ("xb": O_EXCL locally, a conditional put with If-None-Match on S3); a
    filesystem without it falls back to check-then-write and reads the lock back to confirm it is ours.
    The lock is a fence too: a holder whose lock was taken over (`--break-lock`) notices at its next heartbeat
    (`lost`), and `check()` before a final write raises `LockLost`, so an ousted command stops writing.
    """

    def __init__(
        self,
        storage: Storage,
        run_url: str,
        *,
        break_lock: bool = False,
        break_stale: bool = False,
        command: str = "splice run",
        name: str | None = None,
        wait: float = 0.0,
    ):
        self.storage = storage
        self.url = layout.join(run_url, name or layout.LOCK)
        self.folder = run_url
        self.break_lock = break_lock  # take over a lock whose holder cannot be shown to be alive
        self.break_stale = break_stale  # take over only a stale lock (safe for automatic retries)
        self.command = command  # who holds it, for the messages of those who find it held
        self.wait = wait  # seconds to wait for a held lock before giving up (short critical sections)
        self.token = uuid.uuid4().hex
        self.since = datetime.now(timezone.utc).isoformat(timespec="seconds")
        self.held = False
        self.lost: dict | None = None  # the holder that took this lock over, once noticed
        self._stop = threading.Event()
        self._heartbeat: threading.Thread | None = None

    def acquire(self) -> RunLock:
        deadline = time.monotonic() + self.wait
        while True:
            try:
                return self._acquire_once()
            except RunLocked:
                if time.monotonic() >= deadline:
                    raise
                time.sleep(min(0.2, max(0.0, deadline - time.monotonic())))

    def _acquire_once(self) -> RunLock:
        if (self.break_lock or self.break_stale) and self.storage.exists(self.url):
            holder = self._read()
            stale = stale_reason(holder)
            if self.break_lock and not stale and holder and _alive_here(holder):
                raise RunLocked(
                    f"run folder {redact_url(self.folder)} is locked by a `{holder.get('command', 'splice run')}` that is "
                    f"still running on this host ({self._describe(holder)}): --break-lock only takes over the lock of a "
                    f"command that died. Wait for it, or stop it first"
                )
            if self.break_lock or stale:
                log.warning(
                    "breaking the lock %s (held by %s%s)",
                    redact_url(self.url),
                    self._describe(holder),
                    f"; {stale}" if stale else "",
                )
                self.storage.remove(self.url)
        fs, path = self.storage.fs(self.url)
        try:
            with_retries(lambda: self._create_exclusive(fs, path, self._body()), what=f"locking {redact_url(self.url)}")
        except FileExistsError:
            pass  # ours if a retried conditional put had in fact succeeded the first time: read it back
        if (self._read() or {}).get("token") != self.token:  # held by another, or lost a check-then-write race
            raise self._locked_error()
        self.held = True
        self._heartbeat = threading.Thread(target=self._renew, name="splice-run-lock", daemon=True)
        self._heartbeat.start()
        return self

    def release(self) -> None:
        self._stop.set()
        if self._heartbeat is not None:
            self._heartbeat.join(timeout=10)
        try:
            if self.held and (self._read() or {}).get("token") == self.token:
                self.storage.remove(self.url)
        finally:
            self.held = False

    def check(self) -> None:
        """Raise LockLost if another command has taken this lock over (read from storage now)."""
        if self.lost is None:
            holder = self._read()
            if (holder or {}).get("token") != self.token:
                self.lost = holder or {}
        if self.lost is not None:
            raise LockLost(
                f"the lock of {redact_url(self.folder)} was taken over by another command "
                f"({self._describe(self.lost)}): this `{self.command}` stopped writing there"
            )

    def _body(self) -> bytes:
        return json.dumps(
            {
                "token": self.token,
                "command": self.command,
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "since": self.since,
                "heartbeat": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            }
        ).encode()

    def _renew(self) -> None:
        """Rewrite the lock every LOCK_HEARTBEAT_S while held, so a lock that stops being renewed shows a dead run."""
        while not self._stop.wait(LOCK_HEARTBEAT_S):
            try:
                holder = self._read()
                if (holder or {}).get("token") != self.token:
                    self.lost = holder or {}
                    log.warning(
                        "the lock %s was taken over by another command (%s): this `%s` stops writing",
                        redact_url(self.url),
                        self._describe(holder),
                        self.command,
                    )
                    return
                self.storage.write_bytes(self.url, self._body())
            except Exception as exc:  # a missed heartbeat must not stop the run; the next one may succeed
                log.warning("could not renew the lock %s (%s)", redact_url(self.url), redact_text(exc))

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

    @staticmethod
    def _create_exclusive(fs, path: str, body: bytes) -> None:
        ensure_folder(fs, fs._parent(path))
        try:
            with fs.open(path, "xb") as handle:
                handle.write(body)
            return
        except (ValueError, NotImplementedError, TypeError):  # no exclusive mode here: check, then write
            pass
        if fs.exists(path):
            raise FileExistsError(path)
        fs.pipe_file(path, body)

    def _read(self) -> dict | None:
        try:
            value = json.loads(self.storage.read_bytes(self.url))
        except (FileNotFoundError, ValueError):
            return None
        return value if isinstance(value, dict) else None

    def _locked_error(self) -> RunLocked:
        holder = self._read()
        reason = stale_reason(holder)
        stale = f" The lock looks stale: {reason}; --break-stale-lock takes it over." if reason else ""
        who = (holder or {}).get("command", "splice run")
        return RunLocked(
            f"run folder {redact_url(self.folder)} is locked by another `{who}` "
            f"({self._describe(holder)}).{stale} Wait for it to finish, write to another --out, or, if that command "
            f"is certainly dead, run again with --break-lock"
        )

    @staticmethod
    def _describe(holder: dict | None) -> str:
        if not holder:
            return "holder unknown"
        return f"host {holder.get('host')}, pid {holder.get('pid')}, since {holder.get('since')}"


def _alive_here(holder: dict) -> bool:
    return holder.get("host") == socket.gethostname() and _pid_alive(holder.get("pid"))


def stale_reason(holder: dict | None, now: datetime | None = None) -> str | None:
    """Why a lock's holder is dead ('its process ... is gone', 'not renewed for N s'), or None if it may be alive."""
    if not holder:
        return None
    if holder.get("host") == socket.gethostname() and not _pid_alive(holder.get("pid")):
        return f"its process (pid {holder.get('pid')}) is no longer running on this host"
    try:
        beat = datetime.fromisoformat(holder.get("heartbeat") or holder.get("since"))
    except (TypeError, ValueError):
        return None
    age = ((now or datetime.now(timezone.utc)) - beat).total_seconds()
    if age > LOCK_STALE_S:
        return (
            f"it has not been renewed for {age:.0f} s (a running `splice run` renews it every {LOCK_HEARTBEAT_S:.0f} s)"
        )
    return None


def _pid_alive(pid) -> bool:
    try:
        os.kill(int(pid), 0)
    except (OSError, TypeError, ValueError) as exc:
        return isinstance(exc, PermissionError)
    return True
