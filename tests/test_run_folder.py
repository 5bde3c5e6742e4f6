"""Issue 9: run folders that survive concurrent, repeated and mistaken commands. One test (or more) per case of the
issue, numbered as the issue numbers them; real files, the shared local Ray, moto S3 on 127.0.0.1, real processes
where two commands must meet. Cheap methods (structure-copy, color-transfer), tiny images, tiny random backbones.
"""

from __future__ import annotations

import contextlib
import glob
import http.server
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from conftest import TINY_BACKBONE as TINY
from conftest import tiny_image_bytes
from evaluation.evaluate import evaluate_run
from evaluation.metrics import METRICS
from evaluation.models import EvalSettings
from evaluation.report.build import build_report
from faults import FaultyS3, Rule, fault_env, finishes_within, wait_for
from pipeline.cli.main import main
from pipeline.errors import StoreUnreachable
from pipeline.runs.importer import ImportRefused, import_outputs
from pipeline.runs.run_folder import RunFolderError as RunError
from pipeline.runs.run_lock import RunLock, RunLocked
from pipeline.storage import Storage, redact_text, redact_url
from pipeline.transient import with_retries

REPO = Path(__file__).resolve().parents[1]
CHEAP_METRICS = [m for m in METRICS if m not in ("lpips_structure", "layout_miou")][:2]  # DINO-only metrics


# --- helpers -------------------------------------------------------------------------------------------------


def write_inputs(folder: Path, ids, size=(24, 32), seed: int = 0) -> dict[str, tuple[Path, Path]]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for index, pair_id in enumerate(ids):
        structure, appearance = folder / f"{pair_id}_s.png", folder / f"{pair_id}_a.png"
        structure.write_bytes(tiny_image_bytes(size, seed + 2 * index))
        appearance.write_bytes(tiny_image_bytes(size, seed + 2 * index + 1))
        paths[pair_id] = (structure, appearance)
    return paths


def write_manifest(path: Path, rows: list[dict]) -> str:
    pd.DataFrame(rows).to_parquet(path, index=False)
    return str(path)


def manifest_of(path: Path, inputs: dict, **extra_columns) -> str:
    rows = [{"pair_id": p, "structure_uri": str(s), "appearance_uri": str(a)} for p, (s, a) in inputs.items()]
    for column, values in extra_columns.items():
        for row in rows:
            row[column] = values.get(row["pair_id"])
    return write_manifest(path, rows)


def cli(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def run_cli(capsys, manifest, out, *extra, method="structure-copy"):
    return cli(capsys, "run", manifest, "--out", out, "--method", method, "--no-progress", *extra)


def one_line_error(code: int, err: str) -> str:
    """A mistake: exit code 2, one line 'error: ...', no traceback."""
    lines = [line for line in err.strip().splitlines() if line.startswith("error:") or "Traceback" in line]
    assert code == 2 and "Traceback" not in err and len(lines) == 1, err
    return lines[0]


def as_format_1(out) -> None:
    """Make `out` a run folder of format 1 (run.json without `format`), whose pairs' markers are empty."""
    record = json.loads((Path(out) / "run.json").read_text())
    record.pop("format", None)
    (Path(out) / "run.json").write_text(json.dumps(record))


def recorded_inputs(out) -> dict:
    """What the run folder records of each pair's inputs (its owner reads them)."""
    from pipeline.runs.run_folder import RunFolder

    return RunFolder(Storage(), str(out)).inputs()


def results(out) -> pd.DataFrame:
    return pd.read_parquet(Path(out) / "results.parquet").set_index("pair_id")


def child_env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_ADDRESS", "SPLICE_TEST_"))}
    env.update(PYTHONUNBUFFERED="1", TQDM_DISABLE="1", **extra)
    return env


def splice_process(args, env, log_path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "pipeline", *map(str, args)],
        env=env,
        cwd=REPO,
        stdout=open(log_path, "wb"),
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )


@contextlib.contextmanager
def slow_run_in_flight(tmp_path, ray_session, ids):
    """`splice run` (structure-copy, every pair held 2 s) as a driver of its own on the test Ray session, over new
    pairs `ids`; yields (run folder, driver) once a pair is in flight, and kills the driver if it is still there at
    the end. Its output goes to tmp_path/driver.log."""
    manifest = manifest_of(tmp_path / "m.parquet", write_inputs(tmp_path / "in", ids))
    out = tmp_path / "run"
    driver = splice_process(
        ["run", manifest, "--out", out, "--method", "structure-copy", "--address", ray_session, "--no-progress"],
        child_env(**fault_env("sleep=2")),
        tmp_path / "driver.log",
    )
    try:
        wait_for(
            lambda: list(out.glob("pairs/*/attempts.json")) or driver.poll() is not None,
            timeout=120,
            what="a pair in flight",
        )
        yield out, driver
    finally:
        if driver.poll() is None:
            driver.kill()


def mount_tmpfs(path: Path, options: str) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    try:
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True, timeout=30
        )
    except (OSError, subprocess.SubprocessError):
        return False
    return done.returncode == 0


def unmount(path: Path) -> None:
    subprocess.run(["umount", "-l", str(path)], capture_output=True, timeout=30)


# --- 1. a manifest whose pairs now point at other inputs -------------------------------------------------------


def test_1_changed_inputs_or_pair_settings_are_refused_and_force_redoes_exactly_those(ray_session, tmp_path, capsys):
    inputs = write_inputs(tmp_path / "in", ["p0", "p1", "p2"])
    first = manifest_of(tmp_path / "m1.parquet", inputs, steps={"p2": 3})
    out = tmp_path / "run"
    assert run_cli(capsys, first, out)[0] == 0
    record = json.loads((out / "run.json").read_text())
    recorded = recorded_inputs(out)  # beside run.json, in inputs.parquet
    assert record["format"] == 3 and "inputs" not in record and set(recorded) == {"p0", "p1", "p2"}
    assert recorded["p0"]["structure"]["size"] > 0 and recorded["p2"]["settings"]["steps"] == 3
    kept_manifest = (out / "manifest.parquet").read_bytes()
    marks = {p: (out / "pairs" / p / "_SUCCESS").stat().st_mtime_ns for p in ("p0", "p1", "p2")}

    # p1 now points at other images (same pair_id); p2's per-pair steps changed
    other = write_inputs(tmp_path / "other", ["p1"], seed=50)
    changed = manifest_of(tmp_path / "m2.parquet", {**inputs, "p1": other["p1"]}, steps={"p2": 4})
    code, _, err = run_cli(capsys, changed, out)
    line = one_line_error(code, err.split("\n  ")[0] + "\n")
    assert "2 pair(s) made from other inputs or settings" in line and "--force" in err
    assert "p1: structure" in err and "p2: steps 3 -> 4" in err and "p0" not in err.split("settings than")[1]
    assert (out / "manifest.parquet").read_bytes() == kept_manifest  # never silently replaced
    assert marks == {p: (out / "pairs" / p / "_SUCCESS").stat().st_mtime_ns for p in marks}

    # the same images, rewritten in place with other content: refused too (content fingerprint)
    inputs["p0"][0].write_bytes(tiny_image_bytes((24, 32), 77))
    code, _, err = run_cli(capsys, first, out)
    assert code == 2 and "p0: structure image" in err and "has changed" in err
    inputs["p0"][0].write_bytes(tiny_image_bytes((24, 32), 0))  # back as it was

    # --force redoes exactly the changed pairs
    code, printed, err = run_cli(capsys, changed, out, "--force")
    assert code == 0, err
    assert "3 done (1 skipped as already done)" in printed
    assert (out / "pairs" / "p0" / "_SUCCESS").stat().st_mtime_ns == marks["p0"]
    assert (out / "pairs" / "p1" / "output.png").read_bytes() == _png_of(other["p1"][0])
    copied = pd.read_parquet(out / "manifest.parquet").set_index("pair_id")
    assert copied.loc["p1", "structure_uri"] == str(other["p1"][0]) and copied.loc["p2", "steps"] == 4
    assert recorded_inputs(out)["p2"]["settings"]["steps"] == 4
    assert run_cli(capsys, changed, out)[0] == 0  # and now it agrees


def _png_of(path: Path) -> bytes:
    """The bytes structure-copy writes for an input image (decoded, then encoded as PNG)."""
    from pipeline.method.images import decode_image, encode_png

    return encode_png(decode_image(path.read_bytes(), "x"))


# --- 2. import into an existing run; import and the lock -------------------------------------------------------


def test_2_import_never_overwrites_a_run_and_takes_the_lock(ray_session, tmp_path, capsys):
    inputs = write_inputs(tmp_path / "in", ["p0", "p1"])
    manifest = manifest_of(tmp_path / "m.parquet", inputs)
    out = tmp_path / "run"
    assert run_cli(capsys, manifest, out, method="color-transfer")[0] == 0
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    outputs = tmp_path / "outputs"
    outputs.mkdir()
    for pair_id in ("p0", "p1"):
        (outputs / f"{pair_id}.png").write_bytes(tiny_image_bytes((24, 32), 90))

    # into a trained run, with the same method name or another: refused, nothing written
    for name in ("color-transfer", "strotss"):
        code, _, err = cli(capsys, "import", name, outputs, "--manifest", manifest, "--out", out)
        line = one_line_error(code, err)
        assert "--force" in line and ("made by `splice run`" in line or "another folder" in line)
    assert before == {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}

    # an imported run: importing again over its outputs needs --force
    imported = tmp_path / "imported"
    import_outputs("strotss", str(outputs), manifest, str(imported))
    with pytest.raises(ImportRefused, match="already holds outputs of 2 pair"):
        import_outputs("strotss", str(outputs), manifest, str(imported))
    assert import_outputs("strotss", str(outputs), manifest, str(imported), force=True).imported == 2

    # import while a run holds the folder's lock (and the reverse): the second writer is refused
    fresh = tmp_path / "fresh"
    held = RunLock(Storage(), str(fresh)).acquire()
    try:
        with pytest.raises(RunLocked, match="locked by another `splice run`"):
            import_outputs("strotss", str(outputs), manifest, str(fresh))
        assert not (fresh / "pairs").exists()
    finally:
        held.release()
    held = RunLock(Storage(), str(fresh), command="splice import").acquire()
    try:
        code, _, err = run_cli(capsys, manifest, fresh, method="color-transfer")
        assert "locked by another `splice import`" in one_line_error(code, err)
    finally:
        held.release()


# --- 3. a run whose lock is taken over stops writing (fencing) ------------------------------------------------
# (--break-lock refusing a live holder on this host: tests/test_run.py::test_a_second_run_into_the_same_out_refuses)


@pytest.mark.slow
def test_3_a_run_whose_lock_was_taken_over_stops_writing(ray_session, tmp_path):
    with slow_run_in_flight(tmp_path, ray_session, [f"f{n}" for n in range(4)]) as (out, driver):
        assert driver.poll() is None and not list(out.glob("pairs/*/_SUCCESS"))
        # another command on another host takes the lock over (what --break-lock does there)
        (out / "_LOCK").write_text(
            json.dumps(
                {
                    "token": "other",
                    "command": "splice run",
                    "host": "elsewhere",
                    "pid": 1,
                    "since": "now",
                    "heartbeat": "2099-01-01T00:00:00+00:00",
                }
            )
        )
        run_json = (out / "run.json").read_bytes()
        code = driver.wait(timeout=120)
    log = (tmp_path / "driver.log").read_text()
    assert code == 2 and "was taken over by another command" in log and "Traceback" not in log, log[-3000:]
    assert not list(out.glob("pairs/*/_SUCCESS")), "the ousted run still marked pairs done"
    assert not list(out.glob("pairs/*/output.png")), "the ousted run still wrote outputs"
    assert (out / "run.json").read_bytes() == run_json
    assert not (out / "results.parquet").exists() or (results(out)["status"] != "done").all()
    assert json.loads((out / "_LOCK").read_text())["token"] == "other"  # the new holder's lock is left alone


# --- 4. two evaluations at once --------------------------------------------------------------------------------


@pytest.mark.slow
def test_4_concurrent_evaluations_with_different_metrics_keep_both(tmp_path):
    inputs = write_inputs(tmp_path / "in", ["p0", "p1"])
    manifest = manifest_of(tmp_path / "m.parquet", inputs)
    outputs = tmp_path / "outputs"
    outputs.mkdir()
    for pair_id, (structure, _) in inputs.items():
        (outputs / f"{pair_id}.png").write_bytes(structure.read_bytes())
    run = tmp_path / "run"
    import_outputs("strotss", str(outputs), manifest, str(run))
    first, second = CHEAP_METRICS
    go = tmp_path / "go"
    # evaluation A plans and computes, then is held just before it saves ...
    a = splice_process(
        ["evaluate", run, "--metrics", first, "--metric-backbone", TINY, "--device", "cpu", "--no-progress"],
        child_env(**fault_env(f"pause=evaluate.before_save:{go}")),
        tmp_path / "a.log",
    )
    try:
        wait_for(lambda: Path(f"{go}.waiting").exists() or a.poll() is not None, timeout=180, what="A before saving")
        assert a.poll() is None, (tmp_path / "a.log").read_text()
        # ... while evaluation B, with another metric, runs from start to end
        evaluate_run(
            str(run), EvalSettings(metrics=(second,), metric_backbone=TINY, explicit=True), device="cpu", progress=False
        )
        go.touch()
        assert a.wait(timeout=120) == 0, (tmp_path / "a.log").read_text()
    finally:
        if a.poll() is None:
            a.kill()
    frame = pd.read_parquet(run / "eval" / "metrics.parquet").set_index("pair_id")
    assert frame[[first, second]].notna().all().all(), frame  # neither column lost
    described = json.loads((run / "eval" / "evaluation.json").read_text())["metrics"]
    assert {first, second} <= set(described) and not (run / "eval" / "_LOCK").exists()


@pytest.mark.slow
def test_4_an_evaluation_saving_late_keeps_the_rows_of_pairs_it_never_saw(tmp_path):
    inputs = write_inputs(tmp_path / "in", ["p0", "p1", "p2"])
    outputs = tmp_path / "outputs"
    outputs.mkdir()
    for pair_id, (structure, _) in inputs.items():
        (outputs / f"{pair_id}.png").write_bytes(structure.read_bytes())
    run = tmp_path / "run"
    import_outputs(
        "strotss", str(outputs), manifest_of(tmp_path / "m2.parquet", dict(list(inputs.items())[:2])), str(run)
    )
    first, second = CHEAP_METRICS
    go = tmp_path / "go"
    # evaluation A knows pairs p0, p1 and is held just before it saves ...
    a = splice_process(
        ["evaluate", run, "--metrics", first, "--metric-backbone", TINY, "--device", "cpu", "--no-progress"],
        child_env(**fault_env(f"pause=evaluate.before_save:{go}")),
        tmp_path / "a.log",
    )
    try:
        wait_for(lambda: Path(f"{go}.waiting").exists() or a.poll() is not None, timeout=180, what="A before saving")
        assert a.poll() is None, (tmp_path / "a.log").read_text()
        # ... while p2 joins the run and evaluation B evaluates all three
        import_outputs("strotss", str(outputs), manifest_of(tmp_path / "m3.parquet", inputs), str(run), force=True)
        evaluate_run(
            str(run), EvalSettings(metrics=(second,), metric_backbone=TINY, explicit=True), device="cpu", progress=False
        )
        go.touch()
        assert a.wait(timeout=120) == 0, (tmp_path / "a.log").read_text()
    finally:
        if a.poll() is None:
            a.kill()
    frame = pd.read_parquet(run / "eval" / "metrics.parquet").set_index("pair_id")
    assert sorted(frame.index) == ["p0", "p1", "p2"] and (frame["status"] == "done").all(), frame
    assert frame.loc[["p0", "p1"], [first, second]].notna().all().all() and pd.notna(frame.loc["p2", second])


# --- 5. reports: killed mid-way, inputs that differ, the same run twice ---------------------------------------


def _evaluated_import(tmp_path, name, manifest, inputs, seed) -> str:
    outputs = tmp_path / f"{name}_outputs"
    outputs.mkdir()
    for pair_id in inputs:
        (outputs / f"{pair_id}.png").write_bytes(tiny_image_bytes((24, 32), seed))
    run = str(tmp_path / name)
    import_outputs(name, str(outputs), manifest, run)
    evaluate_run(
        run,
        EvalSettings(metrics=(CHEAP_METRICS[0],), metric_backbone=TINY, explicit=True),
        device="cpu",
        progress=False,
    )
    return run


@pytest.mark.slow
def test_5_reports_are_atomic_and_compare_like_with_like(tmp_path, caplog):
    inputs = write_inputs(tmp_path / "in", ["p0", "p1"])
    manifest = manifest_of(tmp_path / "m.parquet", inputs)
    a = _evaluated_import(tmp_path, "strotss", manifest, inputs, 11)
    b = _evaluated_import(tmp_path, "wct2", manifest, inputs, 12)
    out = tmp_path / "report"
    build_report([a, b], str(out), thumbnails=2, n_boot=50)
    old = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert Path("report.html") in old and Path("tables.md") in old

    # a report killed after writing its new files, before they are in place: the old report is intact
    go = tmp_path / "go"
    killed = splice_process(
        ["report", a, b, "-o", out, "--thumbnails", "1", "--seed", "5"],
        child_env(**fault_env(f"pause=report.before_publish:{go}")),
        tmp_path / "report.log",
    )
    try:
        wait_for(
            lambda: Path(f"{go}.waiting").exists() or killed.poll() is not None,
            timeout=180,
            what="the report before publishing",
        )
        assert killed.poll() is None, (tmp_path / "report.log").read_text()
        killed.send_signal(signal.SIGKILL)
        killed.wait(timeout=30)
    finally:
        if killed.poll() is None:
            killed.kill()
    assert old == {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    # the next report replaces it whole and cleans what the killed one left
    build_report([a, b], str(out), thumbnails=1, seed=5, n_boot=50)
    assert (out / "report.html").read_bytes() != old[Path("report.html")]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".report.") and not p.name.endswith(".lock")], list(
        tmp_path.iterdir()
    )

    # the same run given twice is refused; runs whose p0 had other inputs are named in a warning
    with pytest.raises(RunError, match="given more than once"):
        build_report([a, b, a + "/"], str(tmp_path / "twice"))
    other = write_inputs(tmp_path / "other", ["p0"], seed=40)
    c = _evaluated_import(
        tmp_path, "wct2b", manifest_of(tmp_path / "m2.parquet", {**inputs, "p0": other["p0"]}), inputs, 13
    )
    with caplog.at_level(logging.WARNING):
        summary = build_report([a, c], str(tmp_path / "mixed"), thumbnails=0, n_boot=50)
    assert summary.warnings and "1 pair(s) have the same pair_id but other inputs" in summary.warnings[0]
    assert "p0 (strotss vs wct2b)" in caplog.text and "p1" not in summary.warnings[0]


def test_5_a_report_in_object_storage_is_published_whole(tmp_path, s3_bucket):
    inputs = write_inputs(tmp_path / "in", ["p0", "p1"])
    manifest = manifest_of(tmp_path / "m.parquet", inputs)
    run = _evaluated_import(tmp_path, "strotss", manifest, inputs, 11)
    storage = Storage({**s3_bucket.options, "skip_instance_cache": True})
    out = s3_bucket.url("reports", "r")
    build_report([run], out, thumbnails=2, n_boot=50, storage=storage, assets="external")
    fs = s3_bucket.fs()
    first = set(fs.find(f"{s3_bucket.bucket}/reports"))
    assert f"{s3_bucket.bucket}/reports/r/report.html" in first and len([k for k in first if "/assets/" in k]) == 6
    build_report([run], out, thumbnails=1, n_boot=50, storage=storage)  # images inline now: the asset files go
    fs.invalidate_cache()
    second = set(fs.find(f"{s3_bucket.bucket}/reports"))
    assert f"{s3_bucket.bucket}/reports/r/report.html" in second and not [k for k in second if "/assets/" in k]
    assert all(k.startswith(f"{s3_bucket.bucket}/reports/r/") for k in second), second  # no staging, no lock left


# --- 6. credentials inside image URLs --------------------------------------------------------------------------


class _Images(http.server.BaseHTTPRequestHandler):
    """/ok/*: an image; /denied/*: 403; /broken/*: 500 (always)."""

    image = tiny_image_bytes((24, 32), 3)

    def do_GET(self):
        code = 200 if self.path.startswith("/ok/") else 403 if self.path.startswith("/denied/") else 500
        body = self.image if code == 200 else b"<Error>nope</Error>"
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_HEAD = do_GET

    def log_message(self, *args):
        pass


def test_6_credentials_in_image_urls_appear_nowhere(ray_session, tmp_path, capsys, caplog):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Images)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    secrets = [f"S3CRET{n}{uuid.uuid4().hex[:6]}" for n in range(6)]
    rows = [
        {
            "pair_id": "denied",
            "structure_uri": f"{base}/denied/s.png?token={secrets[0]}",
            "appearance_uri": f"{base}/ok/a.png?X-Amz-Signature={secrets[1]}&X-Amz-Credential={secrets[2]}",
        },
        {
            "pair_id": "broken",
            "structure_uri": f"http://user:{secrets[3]}@127.0.0.1:{server.server_address[1]}/broken/s.png",
            "appearance_uri": f"{base}/ok/a.png?sig={secrets[4]}&X-Goog-Signature={secrets[5]}",
        },
        {
            "pair_id": "fine",
            "structure_uri": f"{base}/ok/s.png?token={secrets[0]}",
            "appearance_uri": f"{base}/ok/a.png?sig={secrets[4]}",
        },
    ]
    manifest = write_manifest(tmp_path / "m.parquet", rows)
    out = tmp_path / "run"
    try:
        with caplog.at_level(logging.INFO):
            code, printed, err = run_cli(capsys, manifest, out, method="color-transfer")
            validated = cli(capsys, "manifest", "validate", manifest, "--check-images")
            status = cli(capsys, "status", out, "--failed")
    finally:
        server.shutdown()
    assert code == 1 and validated[0] == 2
    table = results(out)
    assert (
        table.loc[["denied", "broken"], "status"].tolist() == ["failed", "failed"]
        and table.at["fine", "status"] == "done"
    )
    assert "403" in table.at["denied", "error"] and "500" in table.at["broken", "error"]
    texts = {
        "stdout": printed,
        "stderr": err,
        "log": caplog.text,
        "validate": "".join(validated[1:]),
        "status": "".join(status[1:]),
        "results": table.to_csv(),
    }
    texts.update({str(p.relative_to(out)): p.read_text(errors="replace") for p in out.rglob("*.json")})
    import ray

    logs = Path(ray._private.worker._global_node.get_session_dir_path()) / "logs"
    texts.update({p.name: p.read_text(errors="replace") for p in logs.glob("*worker*") if p.is_file()})
    for name, text in texts.items():
        for secret in secrets:
            assert secret not in text, f"{secret} in {name}"
    assert "***" in table.at["denied", "error"] or "%2A%2A%2A" in table.at["denied", "error"]


def test_6_redaction_masks_signing_parameters_and_urls_inside_text():
    url = "https://h/x.png?X-Amz-Date=1&X-Amz-Signature=abc&sig=def&sv=2021&token=ghi&width=3"
    masked = redact_url(url)
    for secret in ("abc", "def", "ghi"):
        assert secret not in masked
    assert "width=3" in masked and "sv=2021" in masked
    text = redact_text(f"403, message='Forbidden', url=URL('{url}') and http://u:pw@h/y")
    assert "abc" not in text and "pw@" not in text and "Forbidden" in text


# --- 7. reads without limits -----------------------------------------------------------------------------------


def test_7_fifos_devices_and_oversized_inputs_are_refused_before_reading(ray_session, tmp_path, capsys):
    inputs = write_inputs(tmp_path / "in", ["ok", "fifo", "zero"])
    fifo = tmp_path / "in" / "pipe.png"
    os.mkfifo(fifo)
    inputs["fifo"] = (fifo, inputs["fifo"][1])
    inputs["zero"] = (Path("/dev/zero"), inputs["zero"][1])
    manifest = manifest_of(tmp_path / "m.parquet", inputs)
    # a FIFO with no writer blocks whoever opens it: a deadline, so that a regression fails instead of hanging
    code, _, err = finishes_within(
        60, lambda: cli(capsys, "manifest", "validate", manifest, "--check-images"), what="validating a FIFO"
    )
    assert code == 2 and "pipe.png is a FIFO (named pipe), not a regular file" in err and "/dev/zero is a device" in err
    code, _, err = finishes_within(
        60, lambda: run_cli(capsys, manifest, tmp_path / "run", method="color-transfer"), what="running over a FIFO"
    )
    assert code == 1
    table = results(tmp_path / "run")
    assert table.at["ok", "status"] == "done"
    assert "FIFO" in table.at["fifo", "error"] and "device" in table.at["zero", "error"]
    # the byte cap, derived from --max-pixels by default, overridable
    code, _, _ = run_cli(capsys, manifest, tmp_path / "capped", "--max-input-bytes", "100", method="color-transfer")
    assert code == 1 and "above the cap of 100 bytes" in results(tmp_path / "capped").at["ok", "error"]


def test_7_the_cap_holds_while_reading_and_slow_reads_time_out(tmp_path):
    from fsspec.implementations.memory import MemoryFileSystem

    class Lying(MemoryFileSystem):  # reports a small size, serves a large file
        def info(self, path, **kwargs):
            return {**super().info(path, **kwargs), "size": 10}

    storage = Storage()
    storage._filesystems["memory"] = fs = Lying(skip_instance_cache=True)
    fs.pipe_file("/b/big.png", b"x" * 5000)
    with pytest.raises(OSError, match="larger than the cap of 1000 bytes"):
        storage.read_input("memory://b/big.png", max_bytes=1000)

    answer, tries = threading.Event(), []

    class Hung(MemoryFileSystem):  # a read that does not answer until the test is over
        def cat_file(self, path, *args, **kwargs):
            tries.append(path)
            answer.wait(60)
            return super().cat_file(path, *args, **kwargs)

    storage._filesystems["memory"] = hung = Hung(skip_instance_cache=True)
    hung.pipe_file("/b/slow.png", b"x")
    try:  # each try is cut off at 0.2 s: a read that waited for the answer would return b"x", not raise
        with pytest.raises(TimeoutError, match="took longer than"):
            finishes_within(
                45, lambda: storage.read_input("memory://b/slow.png", max_bytes=100, timeout=0.2), what="a hung read"
            )
    finally:
        answer.set()
    assert len(tries) >= 2  # retried (with backoff) before giving up


@pytest.mark.slow
def test_7_sigterm_releases_the_lock_and_records_results(ray_session, tmp_path):
    with slow_run_in_flight(tmp_path, ray_session, ["t0", "t1", "t2"]) as (out, driver):
        driver.send_signal(signal.SIGTERM)
        code = driver.wait(timeout=60)
    log = (tmp_path / "driver.log").read_text()
    assert code == 143 and "terminated: run the same command again to resume" in log, log[-2000:]
    assert not (out / "_LOCK").exists() and (out / "results.parquet").exists()


# --- 8. a bucket is never created ------------------------------------------------------------------------------


def test_8_a_missing_bucket_is_an_error_and_is_never_created(ray_session, tmp_path, s3_bucket, capsys):
    import boto3

    manifest = manifest_of(tmp_path / "m.parquet", write_inputs(tmp_path / "in", ["b0"]))
    typo = f"typo-{uuid.uuid4().hex[:8]}"
    options = [flag for k, v in s3_bucket.options.items() for flag in ("--storage-option", f"{k}={v}")]
    code, _, err = run_cli(capsys, manifest, f"s3://{typo}/runs/r1", *options)
    line = one_line_error(code, err)
    assert f"bucket '{typo}'" in line and "does not exist" in line and "never creates buckets" in line
    client = boto3.client(
        "s3",
        endpoint_url=s3_bucket.endpoint,
        aws_access_key_id=s3_bucket.options["key"],
        aws_secret_access_key=s3_bucket.options["secret"],
        region_name="us-east-1",
    )
    assert typo not in {b["Name"] for b in client.list_buckets()["Buckets"]}
    code, _, err = cli(
        capsys, "import", "x", tmp_path / "in", "--manifest", manifest, "--out", f"s3://{typo}/imp", *options
    )
    assert "does not exist" in one_line_error(code, err)
    assert typo not in {b["Name"] for b in client.list_buckets()["Buckets"]}


# --- 9. markers that mean something ----------------------------------------------------------------------------


def test_9_damaged_pairs_are_reported_and_redone(ray_session, tmp_path, capsys):
    inputs = write_inputs(tmp_path / "in", ["d0", "d1", "d2", "d3"])
    manifest = manifest_of(tmp_path / "m.parquet", inputs)
    out = tmp_path / "run"
    assert run_cli(capsys, manifest, out)[0] == 0
    marker = json.loads((out / "pairs" / "d0" / "_SUCCESS").read_text())
    assert marker["files"]["output.png"]["size"] == (out / "pairs" / "d0" / "output.png").stat().st_size
    assert len(marker["files"]["output.png"]["sha256"]) == 64 and marker["row"]["method"] == "structure-copy"

    (out / "pairs" / "d0" / "output.png").unlink()  # deleted
    data = (out / "pairs" / "d1" / "output.png").read_bytes()
    (out / "pairs" / "d1" / "output.png").write_bytes(data[: len(data) // 2])  # truncated
    flipped = bytearray((out / "pairs" / "d2" / "output.png").read_bytes())
    flipped[-20] ^= 0xFF  # same size, other content: only --verify sees it
    (out / "pairs" / "d2" / "output.png").write_bytes(bytes(flipped))
    code, printed, _ = cli(capsys, "status", out)
    assert code == 0 and "2 done, 0 failed, 0 pending, 2 damaged" in printed
    assert "'d0' is damaged: output.png is missing" in printed and "'d1' is damaged: output.png has" in printed
    assert "1 done, 0 failed, 0 pending, 3 damaged" in cli(capsys, "status", out, "--verify")[1]

    summary = evaluate_run(
        str(out),
        EvalSettings(metrics=(CHEAP_METRICS[0],), metric_backbone=TINY, explicit=True),
        device="cpu",
        progress=False,
    )
    frame = pd.read_parquet(out / "eval" / "metrics.parquet").set_index("pair_id")
    assert "damaged" in frame.at["d0", "error"] and "not run or not finished" not in frame.at["d0", "error"]
    assert summary.statuses == {"done": 1, "error": 2, "damaged": 1}  # d1, d2 do not decode; d0 is gone

    code, printed, _ = run_cli(capsys, manifest, out, "--verify")
    assert code == 0 and "4 done (1 skipped as already done)" in printed and "3 damaged pair(s) redone" in printed
    for pair_id in ("d0", "d1", "d2"):
        assert (out / "pairs" / pair_id / "output.png").read_bytes() == _png_of(inputs[pair_id][0])
    assert "4 done, 0 failed, 0 pending" in cli(capsys, "status", out, "--verify")[1]

    # an older run's empty marker still reads: done if its output exists, damaged if not
    as_format_1(out)
    (out / "pairs" / "d3" / "_SUCCESS").write_bytes(b"")
    assert "4 done" in cli(capsys, "status", out)[1]
    (out / "pairs" / "d3" / "output.png").unlink()
    assert "3 done, 0 failed, 0 pending, 1 damaged" in cli(capsys, "status", out)[1]


# --- 10. disk full ---------------------------------------------------------------------------------------------


def test_10_disk_full_is_recorded_per_pair_and_the_driver_exits_cleanly(ray_session, tmp_path, capsys):
    disk = tmp_path / "disk"
    if not mount_tmpfs(disk, "size=1m"):
        pytest.skip("cannot mount a small tmpfs here (needs root and mount permission)")
    try:
        inputs = write_inputs(tmp_path / "in", ["s0", "s1", "s2"])
        noise = np.random.default_rng(0).integers(0, 256, (700, 700, 3), dtype=np.uint8)
        big = tmp_path / "in" / "big_s.png"
        Image.fromarray(noise).save(big)  # ~1.5 MB as PNG: larger than the whole disk
        inputs["big"] = (big, inputs["s0"][1])
        manifest = manifest_of(tmp_path / "m.parquet", inputs)
        out = disk / "run"
        code, printed, err = run_cli(capsys, manifest, out, "--max-retries", "0")
        assert code == 1 and "Traceback" not in err, err
        assert "3 done (0 skipped as already done), 1 failed" in printed
        table = results(out)  # current: every pair's outcome, none left pending
        assert table["status"].to_dict() == {"s0": "done", "s1": "done", "s2": "done", "big": "failed"}
        assert "no space left on the device" in table.at["big", "error"] and "a bug?" not in table.at["big", "error"]
        assert not glob.glob(f"{disk}/**/*.tmp", recursive=True), "temporary files left behind"
        assert not (out / "pairs" / "big" / "output.png").exists() and not (out / "_LOCK").exists()

        # a disk with no room at all: the driver says so in one line, leaves nothing behind
        with open(disk / "filler", "wb") as filler:
            try:
                while True:
                    filler.write(b"\0" * 65536)
                    filler.flush()
            except OSError:
                pass
        (out / "run.json").unlink()  # what it must rewrite first
        code, _, err = run_cli(capsys, manifest, out)
        assert "no space left on the device" in one_line_error(code, err)
        assert not glob.glob(f"{disk}/**/*.tmp", recursive=True) and not (out / "_LOCK").exists()
    finally:
        unmount(disk)


# --- 11. mistakes get one line, garbage is rebuilt, permanent errors are not retried ---------------------------


def test_11_out_on_a_file_or_a_read_only_filesystem_is_one_line(ray_session, tmp_path, capsys):
    manifest = manifest_of(tmp_path / "m.parquet", write_inputs(tmp_path / "in", ["r0"]))
    a_file = tmp_path / "afile"
    a_file.write_text("not a folder")
    assert "is a file, not a run folder" in one_line_error(*run_cli(capsys, manifest, a_file)[::2])
    assert "is a file" in one_line_error(*run_cli(capsys, manifest, a_file / "run")[::2])
    read_only = tmp_path / "ro"
    if not mount_tmpfs(read_only, "ro,size=64k"):
        pytest.skip("cannot mount a read-only tmpfs here (needs root and mount permission)")
    try:
        line = one_line_error(*run_cli(capsys, manifest, read_only / "run")[::2])
        assert str(read_only / "run") in line and "read-only" in line
    finally:
        unmount(read_only)


def test_11_bad_s3_credentials_are_one_line(tmp_path, s3_bucket, capsys, monkeypatch):
    store = FaultyS3(s3_bucket.endpoint, s3_bucket.bucket, "wrong-key", "wrong-secret")
    store.proxy.rules = [Rule(method, ".*", "error", 403, times=None) for method in ("GET", "HEAD", "PUT", "POST")]
    try:
        for name, value in store.client_env().items():
            monkeypatch.setenv(name, value)
        manifest = manifest_of(tmp_path / "m.parquet", write_inputs(tmp_path / "in", ["c0"]))
        line = one_line_error(*run_cli(capsys, manifest, f"s3://{s3_bucket.bucket}/runs/r")[::2])
        assert f"s3://{s3_bucket.bucket}/runs/r" in line and "refused these credentials" in line
        assert not any(e.method == "PUT" and e.key == "" for e in store.proxy.log)  # no CreateBucket tried
    finally:
        store.close()


def test_11_garbage_meta_and_truncated_results_are_rebuilt_from_markers(ray_session, tmp_path, capsys, caplog):
    inputs = write_inputs(tmp_path / "in", ["g0", "g1"])
    manifest = manifest_of(tmp_path / "m.parquet", inputs)
    out = tmp_path / "run"
    assert run_cli(capsys, manifest, out)[0] == 0
    (out / "pairs" / "g0" / "meta.json").write_text("[1, 2]")
    (out / "results.parquet").unlink()
    code, printed, err = run_cli(capsys, manifest, out)
    assert code == 0 and "Traceback" not in err and "1 damaged pair(s) redone" in printed
    assert results(out)["status"].tolist() == ["done", "done"]
    assert json.loads((out / "pairs" / "g0" / "meta.json").read_text())["status"] == "done"
    # an older run (empty markers) with garbage meta.json: still read, the row rebuilt from what is there
    as_format_1(out)
    for pair_id in ("g0", "g1"):
        (out / "pairs" / pair_id / "_SUCCESS").write_bytes(b"")
    (out / "pairs" / "g1" / "meta.json").write_text("[1, 2]")
    (out / "results.parquet").unlink()
    assert run_cli(capsys, manifest, out)[0] == 0 and results(out)["status"].tolist() == ["done", "done"]

    # a truncated results.parquet: evaluate and status rebuild it from the markers
    data = (out / "results.parquet").read_bytes()
    (out / "results.parquet").write_bytes(data[: len(data) // 3])
    with caplog.at_level(logging.WARNING):
        summary = evaluate_run(
            str(out),
            EvalSettings(metrics=(CHEAP_METRICS[0],), metric_backbone=TINY, explicit=True),
            device="cpu",
            progress=False,
        )
    assert summary.statuses == {"done": 2} and "using the pair folders' _SUCCESS markers" in caplog.text
    assert "2 done, 0 failed, 0 pending" in cli(capsys, "status", out)[1]


def test_11_symlink_loops_and_refused_connections_are_not_retried(tmp_path, caplog):
    loop_a, loop_b = tmp_path / "a.png", tmp_path / "b.png"
    loop_a.symlink_to(loop_b)
    loop_b.symlink_to(loop_a)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    storage = Storage(
        {
            "key": "k",
            "secret": "s",
            "endpoint_url": f"http://127.0.0.1:{port}",
            "config_kwargs": {"retries": {"max_attempts": 1}},
        }
    )
    with caplog.at_level(logging.WARNING):
        with pytest.raises(OSError) as loop:
            storage.read_input(str(loop_a), max_bytes=1000)
        assert "symbolic links" in str(loop.value) or loop.value.errno == 40
        with pytest.raises(StoreUnreachable):
            finishes_within(20, lambda: storage.read_input("s3://bucket/x.png", max_bytes=1000), what="a refused read")
        with pytest.raises(StoreUnreachable):
            connect = lambda: socket.create_connection(("127.0.0.1", port), timeout=2)  # noqa: E731
            finishes_within(20, lambda: with_retries(connect, what="connecting"), what="a refused connection")
    assert "retrying" not in caplog.text
