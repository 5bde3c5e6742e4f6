"""`splice run`: the Ray fan-out end to end on a real local Ray, local folders and a local S3 server.

Tiny images (48x64), the tiny random backbone, 2-3 steps; the structure-copy method wherever the trainer itself
is not what is being tested.
"""

from __future__ import annotations

import io
import json
import logging
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from conftest import TINY_BACKBONE
from faults import FAULTS_ENV, fault_env, recorded, wait_for
from manifests.builders import build_pairs_dir
from manifests.schema import ManifestError, validate_frame, write_manifest
from pipeline.cli.main import main
from pipeline.method.config import TrainConfig
from pipeline.method.images import decode_image
from pipeline.method.registry import color_transfer, lab_to_srgb, run_method, srgb_to_lab
from pipeline.runs.fanout import RunSettings, run_manifest
from pipeline.runs.layout import ATTEMPTS
from pipeline.runs.rerun import RunMismatch
from pipeline.runs.run_lock import RunLock, RunLocked
from pipeline.storage import Storage

SPLICE = TrainConfig(backbone=TINY_BACKBONE, steps=2, log_every=1)


@pytest.fixture
def manifest(tmp_path, make_pairs):
    """manifest(ids, corrupt=()) -> path of a manifest over freshly drawn pairs."""

    def make(ids, corrupt=()) -> str:
        frame = validate_frame(build_pairs_dir(make_pairs(ids, corrupt)), "test")
        path = str(tmp_path / "manifest.parquet")
        write_manifest(frame, path)
        return path

    return make


def settings(out, method="structure-copy", **changes) -> RunSettings:
    return RunSettings(out=str(out), method=method, config=changes.pop("config", SPLICE), progress=False, **changes)


def pair_file(out, pair_id, name) -> Path:
    return Path(out) / "pairs" / pair_id / name


def results(out) -> pd.DataFrame:
    return pd.read_parquet(Path(out) / "results.parquet").set_index("pair_id")


def meta(out, pair_id) -> dict:
    return json.loads(pair_file(out, pair_id, "meta.json").read_text())


# --- end to end ----------------------------------------------------------------------------------------------


def test_splice_run_with_a_corrupt_pair_then_a_rerun_that_skips(ray_session, tmp_path, manifest, capsys):
    path = manifest(["p0", "p1", "p2", "bad"], corrupt={"bad"})
    out = tmp_path / "run"
    summary = run_manifest(path, settings(out, method="splice"))
    assert (summary.done, summary.failed, summary.pending, summary.exit_code) == (3, 1, 0, 1)

    for pair_id in ("p0", "p1", "p2"):  # every output complete, in the layout
        for name in ("output.png", "meta.json", "losses.parquet", "_SUCCESS"):
            assert pair_file(out, pair_id, name).exists(), (pair_id, name)
        assert Image.open(pair_file(out, pair_id, "output.png")).size == (64, 48)
        assert list(pd.read_parquet(pair_file(out, pair_id, "losses.parquet"))["step"]) == [0, 1]
        info = meta(out, pair_id)
        assert (info["status"], info["method"], info["attempt"], info["random_backbone"]) == ("done", "splice", 1, True)
    assert not pair_file(out, "bad", "_SUCCESS").exists()

    table = results(out)
    assert table["status"].to_dict() == {"bad": "failed", "p0": "done", "p1": "done", "p2": "done"}
    assert (
        "pair 'bad': structure image" in table.at["bad", "error"] and "not a readable image" in table.at["bad", "error"]
    )
    assert (table.loc[["p0", "p1", "p2"], "attempts"] == 1).all() and table.loc[["p0"], "seconds"].notna().all()

    record = json.loads((out / "run.json").read_text())
    assert record["method"] == "splice" and record["settings"]["steps"] == 2 and record["backbone"] == TINY_BACKBONE
    assert record["backbone_weights_ids"] == ["random"] and record["counts"] == {"done": 3, "failed": 1, "pending": 0}
    assert pd.read_parquet(out / "manifest.parquet")["structure_uri"].map(os.path.isabs).all()

    # the backbone is loaded at most once per worker process (workers outlive a test in the shared Ray session,
    # so a worker may have loaded it for an earlier test)
    workers = [meta(out, p)["worker"] for p in ("p0", "p1", "p2")]
    for pid in {w["pid"] for w in workers}:
        assert sum(w["backbone_loaded"] for w in workers if w["pid"] == pid) <= 1

    # a re-run skips what is done and retries only the failure
    marks = {p: pair_file(out, p, "_SUCCESS").stat().st_mtime_ns for p in ("p0", "p1", "p2")}
    again = run_manifest(path, settings(out, method="splice"))
    assert (again.skipped, again.done, again.failed) == (3, 3, 1)
    assert marks == {p: pair_file(out, p, "_SUCCESS").stat().st_mtime_ns for p in marks}
    assert results(out)["status"].to_dict() == {"bad": "failed", "p0": "done", "p1": "done", "p2": "done"}

    assert main(["status", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "4 pair(s): 3 done, 1 failed, 0 pending" in printed and "pair 'bad'" in printed


def test_rerun_of_a_finished_run_starts_no_pair(ray_session, tmp_path, manifest, capsys, monkeypatch, inject_faults):
    """A re-run of a finished run is near instant because it sends no pair to a worker: checked at the workers' hook
    points (every point a command reaches is recorded), not with a clock."""
    path = manifest(["a", "b", "c"])
    monkeypatch.chdir(tmp_path)
    argv = ["run", path, "--out", "run", "--method", "structure-copy", "--no-progress"]  # relative: this folder
    inject_faults(f"record={tmp_path / 'first.points'}")
    assert main(argv) == 0
    assert len(list(tmp_path.glob("run/pairs/*/_SUCCESS"))) == 3
    assert {p for point, p in recorded(tmp_path / "first.points") if point == "pair.started"} == {"a", "b", "c"}
    inject_faults(f"record={tmp_path / 'again.points'}")
    assert main(argv) == 0
    assert recorded(tmp_path / "again.points") == []  # no pair started, read or written
    assert "3 done (3 skipped as already done), 0 failed" in capsys.readouterr().out


def test_manifest_errors_stop_the_run_before_any_work(tmp_path, capsys):
    frame = pd.DataFrame(
        {"pair_id": ["a", "a"], "structure_uri": ["x.png", "y.png"], "appearance_uri": ["x.png", "y.png"]}
    )
    path = tmp_path / "dup.parquet"
    frame.to_parquet(path)
    with pytest.raises(ManifestError, match="pair_id must be unique"):
        run_manifest(str(path), settings(tmp_path / "run"))
    assert not (tmp_path / "run").exists()
    assert main(["run", str(path), "--out", str(tmp_path / "run"), "--only", "zz"]) == 2
    assert "dup.parquet" in capsys.readouterr().err


# --- reliability ---------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_worker_killed_mid_pair_is_retried_and_done_exactly_once(ray_session, tmp_path, manifest, inject_faults):
    path = manifest(["k0", "k1", "k2"])
    # k1's first attempt writes half an output.png and dies; k2's dies just after finishing its pair
    inject_faults("kill-once=k1;kill-after-write=k2")
    out = tmp_path / "run"
    summary = run_manifest(path, settings(out, max_retries=2))
    assert (summary.done, summary.failed) == (3, 0)
    table = results(out)
    assert table.at["k1", "attempts"] == 2 and table.at["k0", "attempts"] == 1
    assert table.at["k2", "attempts"] == 1 and meta(out, "k2")["attempt"] == 1  # Ray's retry found it done
    assert len(json.loads(pair_file(out, "k2", ATTEMPTS).read_text())["attempts"]) == 1
    assert len(json.loads(pair_file(out, "k1", ATTEMPTS).read_text())["attempts"]) == 2
    assert meta(out, "k1")["attempt"] == 2
    output = decode_image(pair_file(out, "k1", "output.png").read_bytes(), "k1")
    structure = decode_image((Path(path).parent / "pairs" / "k1" / "structure.png").read_bytes(), "s")
    assert torch.equal(output, structure)  # the complete output of the retry, not the half-written one


def test_worker_killed_without_retries_fails_cleanly_and_is_redone_next_time(
    ray_session, tmp_path, manifest, inject_faults
):
    path = manifest(["z0", "z1"])
    inject_faults("kill-once=z1")
    out = tmp_path / "run"
    summary = run_manifest(path, settings(out, max_retries=0))
    assert (summary.done, summary.failed) == (1, 1)
    assert "worker process died" in results(out).at["z1", "error"]
    assert pair_file(out, "z1", "output.png").exists() and not pair_file(out, "z1", "_SUCCESS").exists()
    again = run_manifest(path, settings(out, max_retries=0))
    assert (again.done, again.failed, again.skipped) == (2, 0, 1)
    assert Image.open(pair_file(out, "z1", "output.png")).size == (64, 48)


@pytest.mark.slow
def test_interrupted_driver_resumes_with_nothing_lost_or_done_twice(ray_session, tmp_path, manifest):
    ids = [f"i{n}" for n in range(8)]
    path = manifest(ids)
    out = tmp_path / "run"
    command = [
        sys.executable,
        "-m",
        "pipeline",
        "run",
        path,
        "--out",
        str(out),
        "--method",
        "structure-copy",
        "--address",
        ray_session,
        "--no-progress",
    ]
    release = tmp_path / "release"  # i2..i7 are held until the driver has been interrupted
    held = {**os.environ, **fault_env(f"hold={','.join(ids[2:])}:{release}")}
    driver = subprocess.Popen(command, env=held, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_for(
            lambda: len(list(out.glob("pairs/*/_SUCCESS"))) >= 2 or driver.poll() is not None,
            timeout=90,
            what="two pairs done",
        )
    finally:
        if driver.poll() is None and len(list(out.glob("pairs/*/_SUCCESS"))) < 2:
            driver.kill()
    assert driver.poll() is None, driver.communicate()[0]
    driver.send_signal(signal.SIGINT)
    output = driver.communicate(timeout=60)[0]
    assert driver.returncode == 130, output
    assert "run the same command again to resume" in output
    assert not (out / "_LOCK").exists()

    done_before = {p.parent.name: p.parent.joinpath("meta.json").read_text() for p in out.glob("pairs/*/_SUCCESS")}
    assert 2 <= len(done_before) < len(ids)
    table = results(out)  # written on the way out: the finished pairs are recorded
    assert 2 <= sum(table["status"] == "done") and set(table.index[table["status"] == "done"]) <= set(done_before)

    release.touch()  # (the interrupted job's tasks end with its driver; this only frees any that did not)
    quick = {k: v for k, v in os.environ.items() if k != FAULTS_ENV}
    rerun = subprocess.run(command, env=quick, capture_output=True, text=True, timeout=120)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert f"({len(done_before)} skipped as already done)" in rerun.stdout
    assert sorted(p.parent.name for p in out.glob("pairs/*/_SUCCESS")) == sorted(ids)
    for pair_id, text in done_before.items():  # not done again
        assert pair_file(out, pair_id, "meta.json").read_text() == text
        assert len(json.loads(pair_file(out, pair_id, ATTEMPTS).read_text())["attempts"]) == 1
    table = results(out)
    assert sorted(table.index) == sorted(ids) and (table["status"] == "done").all()


def test_a_second_run_into_the_same_out_refuses(ray_session, tmp_path, manifest, capsys):
    path = manifest(["l0"])
    out = tmp_path / "run"
    held = RunLock(Storage(), str(out)).acquire()  # as if another `splice run` were writing there
    with pytest.raises(RunLocked, match="locked by another `splice run`.*--break-lock"):
        run_manifest(path, settings(out))
    assert main(["run", path, "--out", str(out), "--method", "structure-copy"]) == 2
    assert "--break-lock" in capsys.readouterr().err
    # issue 9, case 3: --break-lock never takes the lock of a holder still alive on this host
    assert main(["run", path, "--out", str(out), "--method", "structure-copy", "--break-lock"]) == 2
    assert "still running on this host" in capsys.readouterr().err
    assert json.loads((out / "_LOCK").read_text())["token"] == held.token
    assert not pair_file(out, "l0", "_SUCCESS").exists()
    # the holder died: the lock is broken explicitly
    held.release()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (out / "_LOCK").write_text(
        json.dumps(
            {"token": "old", "host": socket.gethostname(), "pid": dead.pid, "since": "2026-01-01T00:00:00+00:00"}
        )
    )
    summary = run_manifest(path, settings(out, break_lock=True))
    assert summary.done == 1 and not (out / "_LOCK").exists()


def test_selection_force_and_settings_guard(ray_session, tmp_path, manifest):
    path = manifest(["s0", "s1", "s2", "s3"])
    out = tmp_path / "run"
    first = run_manifest(path, settings(out, limit=2))
    assert (first.done, first.pending) == (2, 2)
    assert list(results(out)["status"]) == ["done", "done", "pending", "pending"]
    only = run_manifest(path, settings(out, only=("s3",)))
    assert (only.done, only.pending) == (3, 1)
    with pytest.raises(RunMismatch, match="method 'structure-copy', not 'color-transfer'"):
        run_manifest(path, settings(out, method="color-transfer"))
    before = meta(out, "s0")["finished_at"]
    forced = run_manifest(path, settings(out, method="color-transfer", force=True))
    assert (forced.done, forced.skipped) == (4, 0)
    assert meta(out, "s0")["finished_at"] != before and meta(out, "s0")["method"] == "color-transfer"


def test_splice_pair_resumes_from_its_checkpoint(ray_session, tmp_path, manifest):
    from pipeline.method.backbone import load_backbone
    from pipeline.method.trainer import train_pair
    from pipeline.runs.run_folder import RunFolder

    path = manifest(["c0"])
    config = TrainConfig(backbone=TINY_BACKBONE, steps=2, log_every=1, checkpoint_every=1)
    pairs = Path(path).parent / "pairs" / "c0"
    structure = decode_image((pairs / "structure.png").read_bytes(), "s")
    appearance = decode_image((pairs / "appearance.png").read_bytes(), "a")
    states = []  # an earlier attempt that got one step in before it died (its checkpoint after step 0)
    train_pair(
        structure, appearance, config, load_backbone(TINY_BACKBONE), torch.device("cpu"), save_checkpoint=states.append
    )
    out = tmp_path / "run"
    RunFolder(Storage(), str(out)).pair("c0").save_checkpoint(states[0])
    summary = run_manifest(path, settings(out, method="splice", config=config))
    assert summary.done == 1
    assert meta(out, "c0")["resumed_from_step"] == states[0]["step"] == 1
    assert list(pd.read_parquet(pair_file(out, "c0", "losses.parquet"))["step"]) == [0, 1]
    assert not pair_file(out, "c0", "checkpoint.pt").exists()


def test_a_run_made_before_the_shared_crop_schedule_goes_on_with_its_own(ray_session, tmp_path, manifest):
    """A run folder whose run.json predates `crop_schedule` is continued (not refused as other settings) with the
    per-pair crop sides its pairs were made with (crop_schedule 1); run.json and the new pair's meta say so."""
    path = manifest(["o0", "o1"])
    out = tmp_path / "run"
    config = TrainConfig(backbone=TINY_BACKBONE, steps=1, log_every=1)
    assert run_manifest(path, settings(out, method="splice", config=config, only=("o0",))).done == 1
    record_path = out / "run.json"
    record = json.loads(record_path.read_text())
    assert record["settings"]["crop_schedule"] == 2 and meta(out, "o0")["config"]["crop_schedule"] == 2
    for name in ("crop_schedule", "crop_schedule_seed"):  # as a run made before them recorded its settings
        del record["settings"][name]
    record_path.write_text(json.dumps(record))
    summary = run_manifest(path, settings(out, method="splice", config=config, only=("o1",)))
    assert summary.done == 2 and summary.failed == 0
    assert meta(out, "o1")["config"]["crop_schedule"] == 1
    assert json.loads(record_path.read_text())["settings"]["crop_schedule"] == 1


# --- object storage ------------------------------------------------------------------------------------------


def test_run_from_and_to_s3(ray_session, s3_bucket, make_pairs, caplog, capsys):
    caplog.set_level(logging.INFO)
    fs = s3_bucket.fs()
    fs.put(make_pairs(["s3a", "s3b", "s3bad"], corrupt={"s3bad"}), f"{s3_bucket.bucket}/data/pairs", recursive=True)
    frame = pd.DataFrame(
        {
            "pair_id": ["s3a", "s3b", "s3bad"],
            "structure_uri": [f"pairs/{p}/structure.png" for p in ("s3a", "s3b", "s3bad")],
            "appearance_uri": [f"pairs/{p}/appearance.png" for p in ("s3a", "s3b", "s3bad")],
        }
    )
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    fs.pipe_file(f"{s3_bucket.bucket}/data/manifest.parquet", buffer.getvalue())
    out = s3_bucket.url("runs", "r1")
    options = [flag for k, v in s3_bucket.options.items() for flag in ("--storage-option", f"{k}={v}")]
    argv = [
        "run",
        s3_bucket.url("data", "manifest.parquet"),
        "--out",
        out,
        "--method",
        "color-transfer",
        "--no-progress",
        *options,
    ]
    assert main(argv) == 1  # one corrupt pair
    run = f"{s3_bucket.bucket}/runs/r1"
    for pair_id in ("s3a", "s3b"):
        assert fs.exists(f"{run}/pairs/{pair_id}/_SUCCESS")
        assert Image.open(io.BytesIO(fs.cat_file(f"{run}/pairs/{pair_id}/output.png"))).size == (64, 48)
    assert not fs.exists(f"{run}/pairs/s3bad/_SUCCESS") and not fs.exists(f"{run}/_LOCK")
    table = pd.read_parquet(io.BytesIO(fs.cat_file(f"{run}/results.parquet"))).set_index("pair_id")
    assert list(table["status"]) == ["done", "done", "failed"]
    record = fs.cat_file(f"{run}/run.json").decode()
    assert json.loads(record)["storage_options"]["secret"] == "***"

    assert main(argv) == 1  # re-run: skips the done pairs
    assert main(["status", out, *options]) == 0
    printed = capsys.readouterr()
    assert (
        "2 done (2 skipped as already done)" in printed.out and "3 pair(s): 2 done, 1 failed, 0 pending" in printed.out
    )
    secret = s3_bucket.options["secret"]  # credentials appear nowhere
    texts = [record, printed.out, printed.err, caplog.text] + [
        fs.cat_file(f"{run}/pairs/s3a/{n}").decode() for n in ("meta.json", ATTEMPTS)
    ]
    assert not any(secret in text for text in texts)
    assert s3_bucket.options["key"] not in record


# --- reference methods (no Ray) ------------------------------------------------------------------------------


def _image(seed, size=(40, 56)) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    array = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
    resized = Image.fromarray(array).resize((size[1], size[0]), Image.BILINEAR)
    return torch.from_numpy(np.asarray(resized).copy()).permute(2, 0, 1).contiguous()


def test_reference_methods_keep_the_layout_contract():
    structure, appearance = _image(1), _image(2, (30, 90))
    config = TrainConfig()
    copy = run_method("structure-copy", structure, appearance, config)
    assert torch.equal(copy.output, structure) and copy.losses == [] and copy.meta["method"] == "structure-copy"
    swapped = run_method("appearance-copy", structure, appearance, config)
    assert swapped.output.shape == structure.shape and swapped.output.dtype == torch.uint8


def test_color_transfer_moves_lab_statistics_and_keeps_structure():
    structure, appearance = _image(3), _image(4) // 2 + torch.tensor([120, 0, 60], dtype=torch.uint8).view(3, 1, 1)
    output = color_transfer(structure, appearance, TrainConfig()).output
    lab = lambda image: srgb_to_lab(image.permute(1, 2, 0).numpy())  # noqa: E731
    assert np.allclose(lab(output).mean(axis=(0, 1)), lab(appearance).mean(axis=(0, 1)), atol=2.5)
    correlation = np.corrcoef(lab(output)[..., 0].ravel(), lab(structure)[..., 0].ravel())[0, 1]
    assert correlation > 0.95  # lightness pattern of the structure image kept
    colours = np.random.default_rng(0).integers(0, 256, (500, 3), dtype=np.uint8)
    assert np.abs(lab_to_srgb(srgb_to_lab(colours)).astype(int) - colours).max() <= 1


@pytest.mark.slow
def test_an_address_with_no_cluster_fails_in_seconds_with_what_to_check(tmp_path):
    import socket

    with socket.socket() as probe:  # a loopback port that nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    csv = tmp_path / "pairs.csv"
    csv.write_text("pair_id,structure_uri,appearance_uri\np0,a.png,b.png\n")
    splice = [sys.executable, "-m", "pipeline"]
    assert (
        subprocess.run([*splice, "manifest", "build", "csv", str(csv), "-o", str(tmp_path / "m.parquet")]).returncode
        == 0
    )
    done = subprocess.run(
        [
            *splice,
            "run",
            str(tmp_path / "m.parquet"),
            "--out",
            str(tmp_path / "run"),
            "--address",
            f"127.0.0.1:{port}",
            "--method",
            "structure-copy",
        ],
        capture_output=True,
        text=True,
        timeout=60,  # the deadline: "in seconds", not after Ray's own minutes of retries
    )
    assert done.returncode == 2 and f"no Ray cluster answers at 127.0.0.1:{port}" in done.stderr
    assert "Traceback" not in done.stderr


# --- packs (--pack K: several pairs trained together per task) ------------------------------------------------


@pytest.mark.slow
def test_splice_run_in_packs_matches_pairs_trained_alone(ray_session, tmp_path, manifest, inject_faults, capsys):
    from pipeline.method.backbone import load_backbone
    from pipeline.method.trainer import train_pair

    path = manifest(["q0", "q1", "q2", "qbad"], corrupt={"qbad"})
    # q1's worker dies right after writing q1: Ray retries its pack, which skips q1 and finishes q0
    inject_faults("kill-after-write=q1")
    out = tmp_path / "run"
    argv = [
        "run",
        path,
        "--out",
        str(out),
        "--method",
        "splice",
        "--backbone",
        TINY_BACKBONE,
        "--steps",
        "2",
        "--pack",
        "2",
        "--no-progress",
    ]
    assert main(argv) == 1  # one corrupt pair
    assert "4 pair(s): 3 done (0 skipped as already done), 1 failed" in capsys.readouterr().out
    table = results(out)
    assert table["status"].to_dict() == {"q0": "done", "q1": "done", "q2": "done", "qbad": "failed"}
    assert "pair 'qbad': structure image" in table.at["qbad", "error"]  # it failed alone; q2, its pack-mate, is done
    assert table.at["q1", "attempts"] == 1 and meta(out, "q1")["attempt"] == 1  # done once, skipped by the retry
    for pair_id in ("q0", "q1", "q2"):
        for name in ("output.png", "meta.json", "losses.parquet", "_SUCCESS"):
            assert pair_file(out, pair_id, name).exists(), (pair_id, name)
    assert meta(out, "q2")["pack_size"] == 1  # qbad never reached training
    assert meta(out, "q1")["pack_size"] == 2 and json.loads((out / "run.json").read_text())["resources"]["pack"] == 2

    # each pair's output is the one it gets trained alone (with one thread, as a worker asking for one CPU has)
    pairs = Path(path).parent / "pairs"
    backbone = load_backbone(TINY_BACKBONE)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for pair_id in ("q0", "q1", "q2"):
            structure = decode_image((pairs / pair_id / "structure.png").read_bytes(), "s")
            appearance = decode_image((pairs / pair_id / "appearance.png").read_bytes(), "a")
            config = TrainConfig(backbone=TINY_BACKBONE, steps=2, checkpoint_every=100)
            alone = train_pair(structure, appearance, config, backbone, torch.device("cpu"))
            stored = decode_image(pair_file(out, pair_id, "output.png").read_bytes(), pair_id)
            assert (stored.int() - alone.output.int()).abs().max() <= 1, pair_id
    finally:
        torch.set_num_threads(threads)


def test_gpus_per_pair_is_pack_one_and_conflicts_with_its_replacement(tmp_path, manifest, capsys, caplog):
    from pipeline.runs.fanout import resolve_task_settings

    legacy = resolve_task_settings(settings(tmp_path / "run", gpus_per_pair=0.5))
    assert (legacy.gpus_per_task, legacy.pack) == (0.5, 1)
    assert "--gpus-per-task 0.5 --pack 1" in caplog.text
    path = manifest(["g0"])
    for extra in (["--pack", "2"], ["--gpus-per-task", "1"]):
        assert main(["run", path, "--out", str(tmp_path / "run"), "--gpus-per-pair", "1", *extra]) == 2
        assert "--gpus-per-pair is replaced by --gpus-per-task" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()  # refused before any work
    with pytest.raises(SystemExit):
        main(["run", path, "--out", str(tmp_path / "run"), "--pack", "0"])
