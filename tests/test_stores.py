"""Every store a researcher uses, through our storage layer: S3 against a real (moto) server; gs:// (gcsfs) and
az:// / abfs:// (adlfs) built, addressed and redacted without any network. Each storage library is set to a single
attempt so that only our retry loop retries, and a store that is dead (nothing listening, or a server that accepts
and never answers) is reported in well under 30 s, with the URL redacted and what to check."""

from __future__ import annotations

import json
import socket
import threading
import time

import pytest

from faults import finishes_within, free_port
from pipeline.cli.main import main
from pipeline.errors import StoreUnreachable
from pipeline.filesystems import open_filesystem
from pipeline.storage import Storage, redact, redact_text
from pipeline.transient import NO_ANSWER_WINDOW_S, with_retries

AZURITE_KEY = (
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="  # public dev key
)
DEADLINE_S = 30.0  # a dead store is reported within this, or the test fails at it (finishes_within)


def round_trip(storage: Storage, base: str) -> None:
    """Write, list, read, check and remove through Storage: what a run does with a store."""
    storage.write_bytes(f"{base}/pairs/p1/output.png", b"\x89PNG fake")
    storage.write_json(f"{base}/run.json", {"method": "splice"})
    assert storage.read_bytes(f"{base}/pairs/p1/output.png") == b"\x89PNG fake"
    assert storage.read_json(f"{base}/run.json") == {"method": "splice"}
    assert storage.glob(f"{base}/pairs/*/output.png") == [f"{base}/pairs/p1/output.png"]
    assert storage.exists(f"{base}/run.json")
    storage.remove(f"{base}/run.json")
    assert not storage.exists(f"{base}/run.json")
    with pytest.raises(FileNotFoundError):
        storage.read_bytes(f"{base}/nothing-here")


def test_s3_round_trip_with_one_attempt_per_library(s3_bucket):
    storage = Storage({**s3_bucket.options, "skip_instance_cache": True})
    round_trip(storage, s3_bucket.url("runs", "r1"))
    fs, _ = storage.fs(s3_bucket.url())
    assert fs.retries == 1  # s3fs's loop
    assert fs.config_kwargs["retries"]["total_max_attempts"] == 1  # botocore's
    custom = Storage({**s3_bucket.options, "config_kwargs": {"read_timeout": 99}, "skip_instance_cache": True})
    assert custom.fs(s3_bucket.url())[0].config_kwargs["read_timeout"] == 99  # the user's settings win


def test_gcs_is_built_addressed_and_redacted_offline():
    secret = "-----BEGIN PRIVATE KEY-----\nMIIEvQ-not-real\n-----END PRIVATE KEY-----\n"
    storage = Storage({"token": "anon", "project": "my-project", "endpoint_url": "http://127.0.0.1:1"})
    fs, path = storage.fs("gs://bucket/runs/r1/pairs/p1/output.png")
    assert path == "bucket/runs/r1/pairs/p1/output.png"
    assert storage.url(fs, path) == "gs://bucket/runs/r1/pairs/p1/output.png"
    assert "gcs" in type(fs).__mro__[1].__module__ and fs is storage.fs("gs://other/x")[0]
    assert type(fs)._request.__wrapped__ is not None  # gcsfs's own retry loop reduced to one attempt
    text = json.dumps(
        redact(
            {
                "token": {"type": "service_account", "private_key": secret, "client_email": "a@b"},
                "project": "my-project",
            }
        )
    )
    assert "MIIEvQ" not in text and "my-project" in text


@pytest.mark.parametrize("scheme", ["az", "abfs"])
def test_azure_is_built_addressed_and_redacted_offline(scheme):
    connection = (
        f"DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey={AZURITE_KEY};"
        f"BlobEndpoint=http://127.0.0.1:1/devstoreaccount1;"
    )
    storage = Storage({"connection_string": connection})
    fs, path = storage.fs(f"{scheme}://container/runs/r1/run.json")
    assert path == "container/runs/r1/run.json"
    assert storage.url(fs, path) == f"{scheme}://container/runs/r1/run.json"
    policy = fs.service_client._config.retry_policy
    assert (policy.total_retries, policy.connect_retries) == (0, 0)  # the SDK's own 15 s / 45 s / ... waits are off
    text = json.dumps(
        redact(
            {
                "connection_string": connection,
                "account_name": "devstoreaccount1",
                "account_key": AZURITE_KEY,
                "sas_token": "sv=2024&sig=abc",
            }
        )
    )
    assert AZURITE_KEY not in text and "sig=abc" not in text and "devstoreaccount1" in text


class SilentServer:
    """Accepts TCP connections and never answers: a hung store, a proxy that swallows requests."""

    def __init__(self):
        self.socket = socket.create_server(("127.0.0.1", 0))
        self.port = self.socket.getsockname()[1]
        self.held: list[socket.socket] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self):
        self.socket.settimeout(0.2)
        while not self.stop.is_set():
            try:
                self.held.append(self.socket.accept()[0])
            except OSError:
                continue

    def close(self):
        self.stop.set()
        self.thread.join(timeout=5)
        for connection in self.held:
            connection.close()
        self.socket.close()


def report_time(capsys, endpoint: str) -> tuple[float, str]:
    """Run `splice manifest validate` against a dead S3 endpoint, within DEADLINE_S; (seconds, stderr)."""
    started = time.monotonic()
    argv = [
        "manifest",
        "validate",
        "s3://bucket/m.parquet",
        "--storage-option",
        f"endpoint_url={endpoint}",
        "--storage-option",
        "key=AKIAEXAMPLEKEY",
        "--storage-option",
        "secret=do-not-print-me",
    ]
    code = finishes_within(DEADLINE_S, lambda: main(argv), what=f"reporting the dead store at {endpoint}")
    seconds = time.monotonic() - started
    error = capsys.readouterr().err
    assert code == 2
    return seconds, error


@pytest.mark.slow
def test_a_dead_store_is_reported_in_seconds_with_what_to_check(capsys, monkeypatch):
    for name in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_PROFILE", "AWS_MAX_ATTEMPTS", "AWS_RETRY_MODE"):
        monkeypatch.delenv(name, raising=False)
    # 1. nothing listens on the port (connection refused)
    closed = free_port()
    refused_s, error = report_time(capsys, f"http://127.0.0.1:{closed}")
    assert "the store did not answer while reading s3://bucket/m.parquet" in error and f"127.0.0.1:{closed}" in error
    assert "endpoint_url" in error and "reachable" in error
    assert "do-not-print-me" not in error and "AKIAEXAMPLEKEY" not in error

    # 2. a server that accepts the connection and never answers
    silent = SilentServer()
    try:
        hung_s, error = report_time(capsys, f"http://127.0.0.1:{silent.port}")
    finally:
        silent.close()
    print(f"\ndead store reported in: {refused_s:.1f} s (nothing listening), {hung_s:.1f} s (accepts, never answers)")
    assert "the store did not answer" in error and "timeout" in error.lower() and "do-not-print-me" not in error


def test_a_dead_azure_store_is_reported_in_seconds():
    connection = (
        f"DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey={AZURITE_KEY};"
        f"BlobEndpoint=http://127.0.0.1:{free_port()}/devstoreaccount1;"
    )
    storage = Storage({"connection_string": connection})
    started = time.monotonic()
    with pytest.raises(StoreUnreachable, match="did not answer while reading az://container/m.parquet") as caught:
        finishes_within(DEADLINE_S, lambda: storage.read_bytes("az://container/m.parquet"), what="a dead Azure store")
    print(f"\ndead Azure store, nothing listening: reported in {time.monotonic() - started:.1f} s")
    assert AZURITE_KEY not in str(caught.value)


def test_no_answer_is_given_up_on_after_the_window_and_not_retried_again(monkeypatch):
    clock = {"t": 0.0}
    calls = []

    def hung():
        calls.append(1)
        clock["t"] += 20.0  # each attempt times out after 20 s
        raise TimeoutError("Read timeout on endpoint URL: http://store:9000/b/x?X-Amz-Signature=abc")

    import pipeline.transient

    monkeypatch.setattr(pipeline.transient.time, "monotonic", lambda: clock["t"])
    with pytest.raises(StoreUnreachable, match=r"1 attempt\(s\) in 20.0 s") as caught:
        with_retries(hung, what="reading s3://b/x", sleep=lambda s: None)
    monkeypatch.undo()
    assert len(calls) == 1 and NO_ANSWER_WINDOW_S < 20
    assert "abc" not in str(caught.value) and "X-Amz-Signature=%2A%2A%2A" in str(caught.value)
    # an outer retry loop does not retry what an inner one already gave up on
    inner = []
    with pytest.raises(StoreUnreachable):
        with_retries(lambda: inner.append(1) or (_ for _ in ()).throw(caught.value), what="outer", sleep=lambda s: None)
    assert len(inner) == 1
    assert redact_text("see https://h/x?token=t0k and s3://b/k") == "see https://h/x?token=%2A%2A%2A and s3://b/k"
    assert open_filesystem("memory", {}).protocol in ("memory", ("memory",))
