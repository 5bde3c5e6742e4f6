"""What the commands print and report while they work: timestamped log lines, each warning once, -v scoped to this
project, progress bars only on a terminal, one line per failed pair (its traceback in error.txt), live progress
records of pairs in flight, the run bar that counts their steps, and `splice status --json`."""

from __future__ import annotations

import io
import json
import logging
import re

import pandas as pd
import pytest
import torch

from conftest import TINY_BACKBONE
from manifests.builders import build_pairs_dir
from manifests.schema import validate_frame, write_manifest
from pipeline.cli.console import configure_logging, progress_enabled
from pipeline.cli.main import build_parser, main
from pipeline.method.backbone import load_backbone
from pipeline.method.config import TrainConfig
from pipeline.method.trainer import train_pair
from pipeline.runs import layout
from pipeline.runs.progress import ProgressRecorder, RunProgress, read_progress
from pipeline.storage import Storage


@pytest.fixture
def console():
    """configure_logging into a buffer, as `main` does into stderr; the root logger is restored afterwards."""
    root = logging.getLogger()
    saved = (root.level, list(root.handlers), {n: logging.getLogger(n).level for n in ("pipeline", "evaluation")})
    stream = io.StringIO()
    yield lambda verbosity=0: configure_logging(verbosity, stream) and stream
    root.setLevel(saved[0])
    root.handlers[:] = saved[1]
    for name, level in saved[2].items():
        logging.getLogger(name).setLevel(level)


def test_log_lines_are_timestamped_once_each_and_verbose_is_scoped_to_this_project(console):
    stream = console(0)
    for _ in range(3):
        logging.getLogger("evaluation.models").warning("metric x uses RANDOM weights")
    logging.getLogger("pipeline.runs.fanout").info("4 pair(s) selected")
    logging.getLogger("pipeline.runs.fanout").debug("a detail")
    logging.getLogger("botocore.endpoint").info("sending request")
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2  # the warning once, the info; no debug, no other library's info
    assert re.fullmatch(
        r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d WARNING evaluation\.models: metric x uses RANDOM weights", lines[0]
    )
    assert lines[1].endswith("INFO pipeline.runs.fanout: 4 pair(s) selected")

    stream = console(1)  # -v: this project's debug messages, and still not botocore's
    logging.getLogger("pipeline.runs.fanout").debug("a detail")
    logging.getLogger("botocore.endpoint").debug("sending request")
    logging.getLogger("botocore.endpoint").info("connection pool")
    assert "a detail" in stream.getvalue() and "botocore" not in stream.getvalue()
    stream = console(2)  # -vv: other libraries' info too, never their debug
    logging.getLogger("botocore.endpoint").debug("sending request")
    logging.getLogger("botocore.endpoint").info("connection pool")
    assert "connection pool" in stream.getvalue() and "sending request" not in stream.getvalue()
    assert build_parser().parse_args(["-vv", "status", "x"]).verbose == 2


def test_progress_bars_only_on_a_terminal_unless_forced():
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    assert progress_enabled(None, io.StringIO()) is False and progress_enabled(None, Terminal()) is True
    assert progress_enabled(True, io.StringIO()) is True and progress_enabled(False, Terminal()) is False
    parser = build_parser()
    for command in (["run", "m.parquet", "--out", "o"], ["demo"], ["evaluate", "r"], ["train", "a", "b", "-o", "o"]):
        assert parser.parse_args(command).progress is None
        assert parser.parse_args([*command, "--no-progress"]).progress is False
        assert parser.parse_args([*command, "--progress"]).progress is True


def test_trainer_reports_each_step_and_the_recorder_writes_throttled_records(tmp_path):
    steps_seen = []
    structure = torch.randint(0, 256, (3, 48, 64), dtype=torch.uint8)
    config = TrainConfig(backbone=TINY_BACKBONE, steps=3, log_every=1)
    train_pair(
        structure,
        structure.clone(),
        config,
        load_backbone(TINY_BACKBONE, "cpu"),
        torch.device("cpu"),
        on_step=steps_seen.append,
    )
    assert steps_seen == [1, 2, 3]  # after each step

    now = [1000.0]
    storage = Storage()
    recorder = ProgressRecorder(storage, interval_s=5.0, clock=lambda: now[0])
    pair_dir = str(tmp_path / "run" / "pairs" / "p0")
    recorder.track("p0", pair_dir, 100)
    record = lambda: json.loads((tmp_path / "run" / "pairs" / "p0" / layout.PROGRESS_JSON).read_text())  # noqa: E731
    recorder("p0", 0)
    assert record()["step"] == 0 and record()["steps"] == 100
    now[0] += 1.0
    recorder("p0", 7)
    assert record()["step"] == 0  # throttled: less than 5 s since the last write
    now[0] += 5.0
    recorder("p0", 40)
    assert record()["step"] == 40 and record()["time"] == 1006.0
    recorder("p0", 100)  # the last step is always written
    assert read_progress(storage, str(tmp_path / "run")) == {"p0": record()} and record()["step"] == 100
    recorder.finish("p0")
    assert read_progress(storage, str(tmp_path / "run")) == {}


def test_run_bar_counts_pairs_done_and_steps_of_pairs_in_flight(tmp_path, capsys):
    run, storage = str(tmp_path / "run"), Storage()
    recorder = ProgressRecorder(storage, interval_s=0)
    bar = RunProgress(storage, run, {"a": 100, "b": 100, "c": 100}, enabled=True, poll_s=0)
    for pair_id, step in (("a", 30), ("b", 50)):
        recorder.track(pair_id, layout.pair_dir(run, pair_id), 100)
        recorder(pair_id, step)
    bar.poll(["a", "b"])
    assert bar.bar.n == 80  # 30 + 50 steps of the two pairs in flight: the bar moves before any pair ends
    bar.pair_finished("a", "done")
    recorder.finish("a")
    bar.poll(["b"])
    assert bar.bar.n == 150
    bar.pair_finished("b", "failed")
    bar.close()
    text = capsys.readouterr().err.replace("\r", "\n")
    assert "80/300" in text and "pairs 1/3 done, 0 failed, 2 in flight" in text and "pairs 1/3 done, 1 failed" in text
    quiet = RunProgress(storage, run, {"a": 100}, enabled=False)
    quiet.poll(["a"])
    quiet.close()
    assert capsys.readouterr().err == ""


def test_a_failed_pair_is_one_line_with_its_traceback_in_error_txt(ray_session, tmp_path, make_pairs, capsys):
    frame = validate_frame(build_pairs_dir(make_pairs(["ok0", "bad"], corrupt={"bad"})), "test")
    manifest = str(tmp_path / "m.parquet")
    write_manifest(frame, manifest)
    out = tmp_path / "run"
    assert (
        main(
            [
                "run",
                manifest,
                "--out",
                str(out),
                "--method",
                "splice",
                "--backbone",
                TINY_BACKBONE,
                "--steps",
                "2",
                "--no-progress",
            ]
        )
        == 1
    )
    printed = capsys.readouterr()
    assert printed.out.count("pair 'bad'") == 0 and printed.err.count("pair 'bad'") == 1
    assert "splice status" in printed.out and "--failed" in printed.out
    error = (out / "pairs" / "bad" / layout.ERROR_TXT).read_text()
    assert error.startswith("pair 'bad': structure image") and "Traceback" in error
    assert not list(out.glob("pairs/*/" + layout.PROGRESS_JSON))  # records are removed when pairs end
    assert not (out / "pairs" / "ok0" / layout.ERROR_TXT).exists()
    assert (
        main(
            [
                "-v",
                "run",
                manifest,
                "--out",
                str(out),
                "--method",
                "splice",
                "--backbone",
                TINY_BACKBONE,
                "--steps",
                "2",
                "--no-progress",
            ]
        )
        == 1
    )  # again, verbose: the retried pair's traceback too
    printed = capsys.readouterr()
    assert printed.err.count("failed: pair 'bad'") == 1 and "Traceback" in printed.err

    # `splice status`: counts, and the pairs in flight with their step and the age of their last report
    recorder = ProgressRecorder(Storage(), interval_s=0)
    recorder.track("late", layout.pair_dir(str(out), "late"), 2000)
    recorder("late", 120)
    pd.DataFrame(
        {"pair_id": ["ok0", "bad", "late"], "structure_uri": ["a"] * 3, "appearance_uri": ["b"] * 3}
    ).to_parquet(out / layout.MANIFEST)
    assert main(["status", str(out), "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert (status["total"], status["done"], status["failed"], status["pending"]) == (3, 1, 1, 1)
    assert status["failures"][0]["pair_id"] == "bad" and status["method"] == "splice"
    (flight,) = status["in_flight"]
    assert (flight["pair_id"], flight["step"], flight["steps"]) == ("late", 120, 2000) and 0 <= flight["age_s"] < 60
    assert main(["status", str(out)]) == 0
    text = capsys.readouterr().out
    assert "1 pending (1 in flight)" in text and re.search(r"late: step 120/2000, reported \d+ s ago", text)
