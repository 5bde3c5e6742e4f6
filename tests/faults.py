"""Fault injection for tests/test_fault_tolerance.py: a local S3 store that fails on purpose, and process control.

- `FaultyProxy`: a small HTTP proxy in front of a local S3 server (moto) that fails chosen requests (an error
  status, an error after the write has landed, a dropped connection, a delay) and logs every request, so a test
  can check the order in which objects really landed. `FaultyS3` puts one in front of a bucket; clients in any
  process reach it through the environment from `FaultyS3.client_env()`.
- `free_port`, `start_session`, `kill_session`: run a command tree (a Ray cluster, a driver with its embedded Ray)
  in a session of its own and end exactly that session, whatever its processes did with their process groups.
- `wait_for` (poll a condition, with a deadline) and `finishes_within` (a call, with a deadline): how tests wait,
  instead of fixed sleeps and asserts on measured durations.
- `hook` and `fault_env`: this file is also the test hook module of pipeline/runs/hooks.py. `fault_env(plan)` gives
  the environment that installs it; the plan (SPLICE_TEST_FAULTS) says what happens at which hook point:
    kill-once=ID1,ID2:    on the pair's first attempt the worker writes a partial output.png and exits hard (os._exit);
    kill-after-write=ID3: on the first attempt the worker exits hard just after writing the complete pair;
    sleep=S:              every pair sleeps S seconds after reading its images;
    hold=ID1,ID2:PATH:    those pairs wait after reading their images until PATH exists (a run interrupted while
                          they are held has a known set of finished pairs, however fast the others ran);
    eval-sleep=S:         every chunk of `splice evaluate` on Ray sleeps S seconds before it starts;
    pause=POINT:PATH:     a command reaching hook point POINT creates PATH.waiting, then waits until PATH exists, so
                          that a test can act (run a second command, kill this one) at a known point.
    record=PATH:          every hook point reached appends a line "POINT PAIR_ID" to PATH (PAIR_ID "-" where the point
                          has none), in any process: what a command did, without timing it (`recorded(PATH)`).
  e.g. "kill-once=k1;kill-after-write=k2;sleep=1.5". Parts are separated by ';'.
"""

from __future__ import annotations

import http.client
import os
import re
import signal
import socket
import subprocess
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

S3_ERRORS = {
    403: ("InvalidAccessKeyId", "The AWS Access Key Id you provided does not exist in our records."),
    500: ("InternalError", "We encountered an internal error. Please try again."),
    503: ("SlowDown", "Please reduce your request rate."),
}


# --- processes -----------------------------------------------------------------------------------------------


_HANDED_OUT: set[int] = set()  # ports this process already gave out: the OS may offer a just-closed port again


def free_port() -> int:
    """A free port on 127.0.0.1, never one this process handed out before (two components of one Ray node given the
    same port fail to start)."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port


def start_session(cmd: list[str], *, env: dict, log_path, cwd=None) -> subprocess.Popen:
    """Start `cmd` as the leader of a new session; everything it spawns stays in that session."""
    log = open(log_path, "ab")
    try:
        return subprocess.Popen(
            cmd,
            env=env,
            cwd=cwd,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    finally:
        log.close()


def session_pids(sid: int) -> list[int]:
    """Live (not zombie) processes of session `sid`."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.getsid(int(entry)) == sid and not _is_zombie(int(entry)):
                    pids.append(int(entry))
            except (ProcessLookupError, PermissionError, FileNotFoundError):
                pass
    return pids


def _is_zombie(pid: int) -> bool:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0] == "Z"


def kill_session(process: subprocess.Popen, *, term_first: float = 0.0) -> None:
    """End every process of the session `process` leads (Ray workers put themselves in process groups of their own,
    so killpg would miss them). With term_first, send SIGTERM and wait that long before SIGKILL."""
    sid = process.pid
    if term_first and process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=term_first)
        except subprocess.TimeoutExpired:
            pass
    for _ in range(50):
        pids = [p for p in session_pids(sid) if p != os.getpid()]
        if not pids:
            break
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.1)
    if process.poll() is None:
        process.wait(timeout=10)


def wait_for(predicate, *, timeout: float, interval: float = 0.1, what: str = "condition"):
    """Poll `predicate()` until it returns something true, and return that; fail with a TimeoutError naming `what`
    after `timeout` seconds. The way tests wait for something to happen: never a fixed sleep, never an assert on
    how long something took (a loaded machine makes both flaky); `timeout` is a generous limit, not an expectation."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def finishes_within(seconds: float, fn, *, what: str):
    """fn()'s value (or its exception, raised here) if it returns within `seconds`; else a TimeoutError naming
    `what`, at the deadline (fn goes on in a daemon thread). For what must not hang or back off for long (a dead
    store reported, a FIFO refused): a generous deadline that fails at once and says what hung, instead of timing
    the call and asserting on the difference afterwards (which a hang never reaches)."""
    from pipeline.storage import call_with_timeout  # the storage's own deadline, so one thread-and-join exists

    return call_with_timeout(
        fn, seconds, timeout_error=f"{what}: still running after {seconds:.0f} s", name=f"finishes_within: {what}"
    )


# --- crashes and delays at the pipeline's hook points (pipeline/runs/hooks.py) -------------------------------

HOOKS_ENV = "SPLICE_TEST_HOOKS"  # = pipeline.runs.hooks.HOOKS_ENV: names this file as the hook module
FAULTS_ENV = "SPLICE_TEST_FAULTS"  # the plan (see the module docstring)


def fault_env(plan: str) -> dict:
    """Environment variables that install this module's hook with `plan`, in this process and all it starts."""
    return {HOOKS_ENV: os.path.abspath(__file__), FAULTS_ENV: plan}


def _plan() -> list[tuple[str, str]]:
    parts = filter(None, (p.strip() for p in os.environ.get(FAULTS_ENV, "").split(";")))
    return [tuple(part.partition("=")[::2]) for part in parts]


def hook(point: str, **context) -> None:
    """Called by pipeline.runs.hooks.point(point, **context) wherever the pipeline marks a hook point."""
    for name, value in _plan():
        if (
            point == "pair.started"
            and name == "kill-once"
            and context["attempt"] == 1
            and context["pair_id"] in value.split(",")
        ):
            from pipeline.runs import layout

            context["storage"].write_bytes(layout.join(context["pair_dir"], layout.OUTPUT_PNG), b"\x89PNG half-written")
            os._exit(1)
        elif (
            point == "pair.written"
            and name == "kill-after-write"
            and context["attempt"] == 1
            and context["pair_id"] in value.split(",")
        ):
            os._exit(1)
        elif (point, name) in (("pair.inputs_read", "sleep"), ("evaluate.chunk", "eval-sleep")):
            time.sleep(float(value))
        elif (
            point == "pair.inputs_read" and name == "hold" and context["pair_id"] in value.partition(":")[0].split(",")
        ):
            _pause(value.partition(":")[2])
        elif name == "pause" and value.partition(":")[0] == point:
            _pause(value.partition(":")[2])
        elif name == "record":
            with open(value, "a") as f:  # one short append per line: whole lines, whatever the process
                f.write(f"{point} {context.get('pair_id', '-')}\n")


def recorded(path) -> list[tuple[str, str]]:
    """The (point, pair_id) lines a `record=PATH` plan wrote, in order; [] if none was reached."""
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [tuple(line.split(" ", 1)) for line in f.read().splitlines()]


def _pause(path: str, timeout: float = 300.0) -> None:
    """Wait until `path` exists (after creating `path`.waiting to say so); at once if it already exists."""
    if not path or os.path.exists(path):
        return
    open(f"{path}.waiting", "w").close()
    deadline = time.monotonic() + timeout
    while not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.05)


# --- the faulty store ----------------------------------------------------------------------------------------


@dataclass
class Rule:
    """Fail matching requests: the first `times` per object key (None: every one).

    action: 'error' (answer `status` without forwarding: the write never lands), 'error-after' (forward, then answer
    `status`: the write landed but the client is told it failed), 'reset' (drop the connection without an answer),
    'delay' (forward after `seconds`).
    """

    method: str
    key: str  # regular expression, searched in the object key
    action: str = "error"
    status: int = 500
    times: int | None = 1
    seconds: float = 0.0
    hits: dict = field(default_factory=dict)  # key -> requests matched so far

    def applies(self, method: str, key: str) -> bool:
        if method != self.method or not re.search(self.key, key):
            return False
        count = self.hits.get(key, 0)
        self.hits[key] = count + 1
        return self.times is None or count < self.times


@dataclass(frozen=True)
class Entry:
    """One request the proxy saw: `landed` is whether it reached the store and the store accepted it."""

    seq: int
    method: str
    key: str
    status: int  # what the client was told (0: connection dropped)
    landed: bool
    fault: str | None


class FaultyProxy(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, upstream: tuple[str, int]):
        super().__init__(("127.0.0.1", 0), _ProxyHandler)
        self.upstream = upstream
        self.rules: list[Rule] = []
        self.log: list[Entry] = []
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def match(self, method: str, key: str) -> Rule | None:
        with self.lock:
            for rule in self.rules:
                if rule.applies(method, key):
                    return rule
        return None

    def record(self, method, key, status, landed, fault) -> None:
        with self.lock:
            self.log.append(Entry(len(self.log), method, key, status, landed, fault))


class _ProxyHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):  # quiet
        pass

    def _handle(self):
        server: FaultyProxy = self.server
        body = self._read_body()
        key = _object_key(self.path)
        rule = server.match(self.command, key)
        if rule and rule.action == "reset":
            server.record(self.command, key, 0, False, "reset")
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        if rule and rule.action == "error":
            server.record(self.command, key, rule.status, False, "error")
            return self._send_error(rule.status)
        if rule and rule.action == "delay":
            time.sleep(rule.seconds)
        status, headers, payload = self._forward(body)
        landed = 200 <= status < 300
        if rule and rule.action == "error-after":
            server.record(self.command, key, rule.status, landed, "error-after")
            return self._send_error(rule.status)
        server.record(self.command, key, status, landed, rule.action if rule else None)
        self.send_response(status)
        for name, value in headers:
            if name.lower() not in (
                "connection",
                "transfer-encoding",
                "content-length",
                "keep-alive",
                "date",
                "server",
            ):
                self.send_header(name, value)
        length = dict((k.lower(), v) for k, v in headers).get("content-length") if self.command == "HEAD" else None
        self.send_header("Content-Length", length or str(len(payload)))  # HEAD: the object's length, as S3 says it
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _forward(self, body: bytes):
        connection = http.client.HTTPConnection(*self.server.upstream, timeout=60)
        try:
            headers = {k: v for k, v in self.headers.items() if k.lower() not in ("transfer-encoding", "connection")}
            if body or self.command in ("PUT", "POST"):
                headers["Content-Length"] = str(len(body))
            connection.request(self.command, self.path, body=body, headers=headers)
            response = connection.getresponse()
            return response.status, response.getheaders(), response.read()
        finally:
            connection.close()

    def _send_error(self, status: int):
        code, message = S3_ERRORS.get(status, ("InternalError", "injected fault"))
        payload = (
            f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code><Message>{message}</Message>'
            f"<RequestId>injected-fault</RequestId></Error>"
        ).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)


def _object_key(path: str) -> str:
    """'/bucket/a/b.png?x=1' -> 'a/b.png' (path-style addressing, as clients use with an IP endpoint)."""
    parts = urllib.parse.unquote(urllib.parse.urlsplit(path).path).lstrip("/").split("/", 1)
    return parts[1] if len(parts) == 2 else ""


class FaultyS3:
    """A bucket on a local S3 server (conftest's moto `s3_server`), reached directly or through a FaultyProxy."""

    def __init__(self, endpoint: str, bucket: str, key: str, secret: str):
        self.direct_url, self.bucket = endpoint, bucket
        self.credentials = {
            "AWS_ACCESS_KEY_ID": key,
            "AWS_SECRET_ACCESS_KEY": secret,
            "AWS_DEFAULT_REGION": "us-east-1",
        }
        parts = urllib.parse.urlsplit(endpoint)
        self.proxy = FaultyProxy((parts.hostname, parts.port))
        self._thread = threading.Thread(target=self.proxy.serve_forever, daemon=True)
        self._thread.start()
        self.url = self.proxy.url

    def client_env(self, *, through_proxy: bool = True, max_attempts: int = 2) -> dict:
        """Environment for a process that uses this store: endpoint, credentials, few botocore retries (so that
        faults reach the pipeline's own retries instead of being absorbed by botocore's)."""
        return {
            **self.credentials,
            "AWS_ENDPOINT_URL": self.url if through_proxy else self.direct_url,
            "AWS_MAX_ATTEMPTS": str(max_attempts),
            "AWS_RETRY_MODE": "standard",
            "AWS_EC2_METADATA_DISABLED": "true",
        }

    def client(self):
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.direct_url,
            region_name=self.credentials["AWS_DEFAULT_REGION"],
            aws_access_key_id=self.credentials["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=self.credentials["AWS_SECRET_ACCESS_KEY"],
        )

    def put(self, key: str, data: bytes) -> None:
        self.client().put_object(Bucket=self.bucket, Key=key, Body=data)

    def get(self, key: str) -> bytes:
        return self.client().get_object(Bucket=self.bucket, Key=key)["Body"].read()

    def keys(self, prefix: str = "") -> list[str]:
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix)
        return sorted(o["Key"] for page in pages for o in page.get("Contents", []))

    def close(self) -> None:
        self.proxy.shutdown()
        self.proxy.server_close()
