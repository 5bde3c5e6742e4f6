"""Credentials never leave the process (issue 19, cases 3 and 4): input URLs with user:password or signing
parameters are read, yet appear in no file a run, an evaluation or a report writes (report pages inline and with
external assets, the run's manifest copy, results.parquet, JSON) nor in anything printed or logged; and every command
given an object-store URL with KEY:SECRET@ inside refuses it in one line, never with a traceback holding the secret.
Real local HTTP server, real moto S3 server, the shared local Ray."""

from __future__ import annotations

import base64
import http.server
import logging
import threading
import urllib.parse
import uuid
from pathlib import Path

import pandas as pd
import pytest

from conftest import tiny_image_bytes
from test_run_folder import CHEAP_METRICS, TINY, cli, write_manifest

USER, PASSWORD = "reader", f"PW{uuid.uuid4().hex[:10]}"
SIGNATURE, CREDENTIAL, SESSION, ACCESS = (f"{name}{uuid.uuid4().hex[:10]}" for name in ("SIG", "CRED", "TOK", "AT"))
SECRETS = (PASSWORD, SIGNATURE, CREDENTIAL, SESSION, ACCESS)


class _Guarded(http.server.BaseHTTPRequestHandler):
    """Images served only to a request that carries the credentials: basic auth, or the signing parameters."""

    def do_GET(self):
        query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(self.path).query))
        basic = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
        allowed = self.headers.get("Authorization") == basic or query.get("X-Amz-Signature") == SIGNATURE
        allowed = allowed or query.get("access_token") == ACCESS
        seed = sum(map(ord, urllib.parse.urlsplit(self.path).path))
        body = tiny_image_bytes((24, 32), seed) if allowed else b"<Error>denied</Error>"
        self.send_response(200 if allowed else 403)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command == "GET":
            self.wfile.write(body)

    do_HEAD = do_GET

    def log_message(self, *args):
        pass


@pytest.fixture
def guarded_server():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Guarded)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1]
    server.shutdown()


def everything_under(*folders: Path) -> dict[str, bytes]:
    return {str(p): p.read_bytes() for folder in folders for p in Path(folder).rglob("*") if p.is_file()}


def test_input_credentials_are_used_and_reach_no_output(ray_session, tmp_path, guarded_server, capsys, caplog):
    port = guarded_server
    signed = f"X-Amz-Signature={SIGNATURE}&X-Amz-Credential={CREDENTIAL}&X-Amz-Security-Token={SESSION}"
    rows = [
        {
            "pair_id": f"p{i}",
            "structure_uri": f"http://{USER}:{PASSWORD}@127.0.0.1:{port}/s{i}.png",
            "appearance_uri": f"http://127.0.0.1:{port}/a{i}.png?{signed}"
            if i == 0
            else f"http://127.0.0.1:{port}/a{i}.png?access_token={ACCESS}&width=3",
            "domain": "cat",
        }
        for i in range(2)
    ]
    manifest = write_manifest(tmp_path / "m.parquet", rows)
    run = tmp_path / "run"
    printed = []
    with caplog.at_level(logging.INFO):
        code, out, err = cli(capsys, "run", manifest, "--out", run, "--method", "color-transfer", "--no-progress")
        printed += [out, err]
        assert code == 0, err
        code, out, err = cli(
            capsys, "evaluate", run, "--metrics", CHEAP_METRICS[0], "--metric-backbone", TINY, "--no-progress"
        )
        printed += [out, err]
        assert code == 0, err
        for assets in ("inline", "external"):
            code, out, err = cli(capsys, "report", run, "-o", tmp_path / f"report-{assets}", "--assets", assets)
            printed += [out, err]
            assert code == 0, err
        printed += ["".join(cli(capsys, "status", run, "--json")[1:])]

    # the credentials were used: every input was read, and evaluated from the stored outputs
    metrics = pd.read_parquet(run / "eval" / "metrics.parquet")
    assert list(metrics["status"]) == ["done", "done"] and metrics[CHEAP_METRICS[0]].notna().all()
    page = (tmp_path / "report-inline" / "report.html").read_text()
    assert "structure image of pair p0" not in page  # no image error: its thumbnail was read
    # ... and are nowhere: not in the run's manifest copy, results, JSON, report pages, assets, logs or output
    stored = pd.read_parquet(run / "manifest.parquet").set_index("pair_id")
    assert stored.at["p0", "structure_uri"] == f"http://***@127.0.0.1:{port}/s0.png"
    assert "width=3" in stored.at["p1", "appearance_uri"]  # what is not a credential stays
    import ray

    logs = Path(ray._private.worker._global_node.get_session_dir_path()) / "logs"
    written = everything_under(run, tmp_path / "report-inline", tmp_path / "report-external")
    written.update({p.name: p.read_bytes() for p in logs.glob("*worker*") if p.is_file()})
    written.update(printed=("".join(printed) + caplog.text).encode())
    for name, data in written.items():
        for secret in SECRETS:
            assert secret.encode() not in data, f"{secret} in {name}"


def test_every_command_refuses_credentials_inside_an_object_store_url(
    ray_session, tmp_path, s3_bucket, make_pairs, capsys, caplog
):
    key, secret = s3_bucket.options["key"], s3_bucket.options["secret"]
    inside = f"s3://{key}:{secret}@{s3_bucket.bucket}"
    pairs = make_pairs(["p0"])
    (tmp_path / "pairs.csv").write_text(
        f"pair_id,structure_uri,appearance_uri\np0,{pairs}/p0/structure.png,{pairs}/p0/appearance.png\n"
    )
    manifest = str(tmp_path / "m.parquet")
    assert cli(capsys, "manifest", "build", "csv", tmp_path / "pairs.csv", "-o", manifest)[0] == 0
    run = tmp_path / "run"
    assert cli(capsys, "run", manifest, "--out", run, "--method", "structure-copy", "--no-progress")[0] == 0
    evaluated = cli(capsys, "evaluate", run, "--metrics", CHEAP_METRICS[0], "--metric-backbone", TINY, "--no-progress")
    assert evaluated[0] == 0
    outputs = tmp_path / "outputs"
    outputs.mkdir()
    (outputs / "p0.png").write_bytes((Path(pairs) / "p0" / "structure.png").read_bytes())
    commands = [
        ["status", f"{inside}/runs/r"],
        ["evaluate", f"{inside}/runs/r", "--no-progress"],
        ["report", f"{inside}/runs/r", "-o", tmp_path / "rep1"],
        ["report", run, "-o", f"{inside}/reports/r"],
        ["manifest", "validate", f"{inside}/m.parquet"],
        ["manifest", "build", "csv", tmp_path / "pairs.csv", "-o", f"{inside}/m.parquet"],
        ["manifest", "build", "pairs-dir", f"{inside}/pairs", "-o", tmp_path / "m2.parquet"],
        ["run", f"{inside}/m.parquet", "--out", tmp_path / "run2", "--method", "structure-copy", "--no-progress"],
        ["run", manifest, "--out", f"{inside}/runs/r", "--method", "structure-copy", "--no-progress"],
        ["import", "x", outputs, "--manifest", manifest, "--out", f"{inside}/runs/i"],
        ["import", "x", f"{inside}/outputs", "--manifest", manifest, "--out", tmp_path / "imp"],
        ["import", "x", outputs, "--manifest", f"{inside}/m.parquet", "--out", tmp_path / "imp2"],
        ["train", Path(pairs) / "p0" / "structure.png", Path(pairs) / "p0" / "appearance.png", "-o", f"{inside}/t"]
        + ["--backbone", TINY, "--steps", "1"],
    ]
    printed = []
    with caplog.at_level(logging.DEBUG):
        for argv in commands:
            code, out, err = cli(capsys, *argv)
            printed += [out, err]
            lines = [line for line in err.strip().splitlines() if line.startswith("error:")]
            assert code == 2 and "Traceback" not in err and len(lines) == 1, (argv[:2], err)
            assert "credentials inside the URL" in lines[0] and f"s3://***@{s3_bucket.bucket}" in lines[0], lines[0]
    for text in printed + [caplog.text]:
        assert secret not in text
    for name, data in everything_under(tmp_path).items():
        assert secret.encode() not in data, name
    fs = s3_bucket.fs()
    assert not fs.find(s3_bucket.bucket)  # nothing was written to the store either
    assert not list(Path.cwd().glob("s3:*"))  # nor to a local folder named after the URL
