"""Storage: URL -> filesystem with options, retries on transient errors, redaction, the exclusive run lock."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from fsspec.implementations.memory import MemoryFileSystem

from faults import wait_for
from pipeline.errors import SpliceError
from pipeline.runs.run_lock import RunLock, RunLocked
from pipeline.storage import Storage, parse_storage_options, redact, redact_url
from pipeline.transient import is_transient, with_retries


def test_storage_options_parse_nested_typed_values():
    options = parse_storage_options(
        [
            "endpoint_url=http://127.0.0.1:9000",
            "anon=false",
            "client_kwargs.region_name=eu-1",
            'config_kwargs.retries={"max_attempts": 3}',
            "max_concurrency=4",
        ]
    )
    assert options == {
        "endpoint_url": "http://127.0.0.1:9000",
        "anon": False,
        "client_kwargs": {"region_name": "eu-1"},
        "config_kwargs": {"retries": {"max_attempts": 3}},
        "max_concurrency": 4,
    }
    with pytest.raises(SpliceError, match="KEY=VALUE"):
        parse_storage_options(["no-equals-sign"])


def test_redaction_hides_credentials_everywhere():
    options = {
        "key": "AKIA123",
        "secret": "s3cr3t",
        "token": "tok-42",
        "endpoint_url": "http://user:pw@host:9000/x",
        "client_kwargs": {"aws_session_token": "sess-77", "region_name": "eu-1"},
    }
    text = json.dumps(redact(options))
    for secret in ("AKIA123", "s3cr3t", "tok-42", "sess-77", "pw@"):
        assert secret not in text
    assert "eu-1" in text and "host:9000" in text
    assert redact_url("s3://bucket/x?X-Amz-Signature=abc&v=1") == "s3://bucket/x?X-Amz-Signature=%2A%2A%2A&v=1"


def test_transient_errors_are_retried_with_backoff_and_permanent_ones_are_not():
    calls, delays = [], []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise ConnectionResetError("connection reset by peer")
        return "ok"

    assert with_retries(flaky, what="reading x", sleep=delays.append) == "ok"
    assert len(calls) == 3 and len(delays) == 2 and delays[1] > delays[0] * 0.5  # exponential, with jitter

    def missing():
        calls.append(1)
        raise FileNotFoundError("nope")

    calls.clear()
    with pytest.raises(FileNotFoundError):
        with_retries(missing, what="reading y", sleep=delays.append)
    assert len(calls) == 1

    def always_down():
        raise TimeoutError("timed out")

    with pytest.raises(TimeoutError):
        with_retries(always_down, what="reading z", attempts=3, sleep=lambda s: None)
    assert is_transient(OSError(5, "I/O error")) and not is_transient(PermissionError("denied"))
    assert not is_transient(ValueError("bad"))


class FlakyMemoryFileSystem(MemoryFileSystem):
    """Fails the first `failures` reads with a connection error, like a throttled object store."""

    failures = 2

    def cat_file(self, path, start=None, end=None, **kwargs):
        if self.failures:
            self.failures -= 1
            raise ConnectionError("503 Slow Down")
        return super().cat_file(path, start, end, **kwargs)


def test_storage_read_survives_transient_errors():
    fs = FlakyMemoryFileSystem(skip_instance_cache=True)
    fs.pipe_file("/bucket/a.bin", b"payload")
    storage = Storage()
    storage._filesystems["memory"] = fs
    assert storage.read_bytes("memory://bucket/a.bin") == b"payload"
    assert fs.failures == 0


def test_local_writes_are_whole_files_and_create_folders(tmp_path):
    storage = Storage()
    target = tmp_path / "deep" / "er" / "results.json"
    storage.write_json(str(target), {"a": 1})
    storage.write_json(f"file://{target}", {"a": 2})
    assert json.loads(target.read_text()) == {"a": 2}
    assert [p.name for p in target.parent.iterdir()] == ["results.json"]  # no temporary files left behind


def test_aws_endpoint_url_reaches_s3_without_options(s3_bucket, monkeypatch):
    s3_bucket.fs().pipe_file(f"{s3_bucket.bucket}/hello.txt", b"hi")
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_bucket.endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3_bucket.options["key"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_bucket.options["secret"])
    storage = Storage()
    storage._options_for("s3")  # the endpoint is taken from the environment ...
    assert storage._options_for("s3")["endpoint_url"] == s3_bucket.endpoint
    assert Storage({"skip_instance_cache": True}).read_bytes(s3_bucket.url("hello.txt")) == b"hi"  # ... and works


def test_run_lock_is_exclusive_and_released(tmp_path):
    run = str(tmp_path / "run")
    with RunLock(Storage(), run):
        with pytest.raises(RunLocked, match="--break-lock") as caught:
            RunLock(Storage(), run).acquire()
        assert "pid" in str(caught.value) and "run" in str(caught.value)
    with RunLock(Storage(), run):  # released: free again
        pass
    assert not (tmp_path / "run" / "_LOCK").exists()


def test_stale_lock_is_named_and_can_be_broken(tmp_path):
    run = tmp_path / "run"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    import socket

    run.mkdir()
    (run / "_LOCK").write_text(
        json.dumps({"token": "old", "host": socket.gethostname(), "pid": dead.pid, "since": "then"})
    )
    with pytest.raises(RunLocked, match="looks stale"):
        RunLock(Storage(), str(run)).acquire()
    lock = RunLock(Storage(), str(run), break_lock=True).acquire()
    assert json.loads((run / "_LOCK").read_text())["token"] == lock.token
    lock.release()


def test_a_live_lock_is_renewed_and_a_silent_one_goes_stale(tmp_path, monkeypatch):
    import pipeline.runs.run_lock as storage_module

    monkeypatch.setattr(storage_module, "LOCK_HEARTBEAT_S", 0.05)
    run = tmp_path / "run"
    lock = RunLock(Storage(), str(run)).acquire()
    first = json.loads((run / "_LOCK").read_text())

    def renewed() -> dict | None:  # the heartbeat is in whole seconds: renewed once it names a later one
        try:
            holder = json.loads((run / "_LOCK").read_text())
        except ValueError:  # caught mid-rewrite: look again
            return None
        return holder if holder["heartbeat"] > first["heartbeat"] else None

    assert wait_for(renewed, timeout=30, what="the lock's heartbeat to be renewed")["token"] == lock.token
    # a live holder is never taken over by --break-stale-lock
    with pytest.raises(RunLocked, match="--break-lock"):
        RunLock(Storage(), str(run), break_stale=True).acquire()
    lock.release()
    assert not (run / "_LOCK").exists()

    # a lock from another host, not renewed for longer than LOCK_STALE_S, is stale
    (run / "_LOCK").write_text(
        json.dumps(
            {
                "token": "old",
                "host": "elsewhere",
                "pid": 1,
                "since": "2026-01-01T00:00:00+00:00",
                "heartbeat": "2026-01-01T00:00:00+00:00",
            }
        )
    )
    with pytest.raises(RunLocked, match="not been renewed for .* --break-stale-lock takes it over"):
        RunLock(Storage(), str(run)).acquire()
    taken = RunLock(Storage(), str(run), break_stale=True).acquire()
    assert json.loads((run / "_LOCK").read_text())["token"] == taken.token
    taken.release()


def test_run_lock_on_s3_uses_a_conditional_put(s3_bucket):
    storage = Storage({**s3_bucket.options, "skip_instance_cache": True})
    run = s3_bucket.url("runs", "r1")
    first = RunLock(storage, run).acquire()
    with pytest.raises(RunLocked):
        RunLock(Storage({**s3_bucket.options, "skip_instance_cache": True}), run).acquire()
    first.release()
    RunLock(storage, run).acquire().release()


def test_check_then_write_fallback_when_exclusive_mode_is_missing(tmp_path, monkeypatch):
    class NoExclusive(MemoryFileSystem):
        def open(self, path, mode="rb", **kwargs):
            if "x" in mode:
                raise ValueError("mode xb not supported")
            return super().open(path, mode, **kwargs)

    storage = Storage()
    storage._filesystems["memory"] = NoExclusive(skip_instance_cache=True)
    lock = RunLock(storage, "memory://runs/r").acquire()
    with pytest.raises(RunLocked):
        RunLock(storage, "memory://runs/r").acquire()
    lock.release()
