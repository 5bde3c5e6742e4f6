"""`splice demo`: generated inputs, their manifest and a run, offline with a random backbone."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from conftest import TINY_BACKBONE
from manifests.schema import read_manifest
from pipeline.cli.demo_job import write_demo_inputs
from pipeline.cli.main import main


def _saturation(path) -> float:
    return float(np.asarray(Image.open(path).convert("HSV"))[..., 1].mean())


def test_demo_inputs_are_reproducible_and_distinct(tmp_path):
    ids = write_demo_inputs(str(tmp_path / "a"), pairs=4, size=64)
    write_demo_inputs(str(tmp_path / "b"), pairs=4, size=64)
    assert len(set(ids)) == 4
    structures, appearances = [], []
    for pair_id in ids:
        for role, found in (("structure", structures), ("appearance", appearances)):
            data = (tmp_path / "a" / pair_id / f"{role}.png").read_bytes()
            assert data == (tmp_path / "b" / pair_id / f"{role}.png").read_bytes()  # same seed, same pixels
            found.append(data)
    assert len(set(structures)) == 4 and len(set(appearances)) == 4
    for pair_id in ids:  # neutral layouts, colourful appearances
        assert (
            _saturation(tmp_path / "a" / pair_id / "structure.png")
            < 30
            < _saturation(tmp_path / "a" / pair_id / "appearance.png")
        )


@pytest.mark.slow
def test_demo_runs_offline_and_says_where_the_outputs_are(ray_session, tmp_path, capsys):
    out = tmp_path / "demo"
    argv = [
        "demo",
        "--out",
        str(out),
        "--backbone",
        TINY_BACKBONE,
        "--steps",
        "2",
        "--pairs",
        "2",
        "--size",
        "48",
        "--no-progress",
    ]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert f"demo outputs: {out / 'run'}/pairs/<pair_id>/output.png" in printed
    manifest = read_manifest(str(out / "inputs" / "manifest.parquet"))
    assert len(manifest) == 2 and set(manifest.frame["dataset"]) == {"splice-demo"}
    for pair_id in manifest.pair_ids:
        assert Image.open(out / "run" / "pairs" / pair_id / "output.png").size == (48, 48)
        meta = json.loads((out / "run" / "pairs" / pair_id / "meta.json").read_text())
        assert meta["random_backbone"] and meta["config"]["steps"] == 2 and meta["config"]["max_side"] == 512
    record = json.loads((out / "run" / "run.json").read_text())
    assert record["method"] == "splice" and record["backbone"] == TINY_BACKBONE
    # the demo ends with the reference methods, their evaluation and a report comparing them
    assert f"report: {out / 'report' / 'report.html'}" in printed
    tables = (out / "report" / "tables.md").read_text()
    for method in ("splice", "structure-copy", "color-transfer"):
        assert method in tables
        assert (out / ("run" if method == "splice" else method) / "eval" / "metrics.parquet").exists()
    assert main(argv) == 0  # again: nothing to redo
    assert "2 done (2 skipped as already done)" in capsys.readouterr().out


@pytest.mark.slow
def test_demo_starts_an_embedded_ray_when_given_no_address(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    command = [
        sys.executable,
        "-m",
        "pipeline",
        "demo",
        "--out",
        str(tmp_path / "demo"),
        "--method",
        "color-transfer",
        "--pairs",
        "2",
        "--size",
        "48",
        "--no-progress",
        "--no-report",
    ]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Started a local Ray instance" in done.stderr
    assert "2 pair(s): 2 done" in done.stdout
    assert len(list((tmp_path / "demo" / "run" / "pairs").glob("*/_SUCCESS"))) == 2
