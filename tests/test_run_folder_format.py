"""Issue 8, item 1: a run folder with one owner and a versioned format.

Folders written before format 3 (tests/fixtures/format-2, made by the code of that time: a `splice run` with a failed
pair, an import with missing outputs, an older import without `format`) still read through RunFolder, their words
mapped to the one vocabulary; a newer format fails with a clear message naming it; and run, import, evaluate, status
and report all speak the same status words.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pandas as pd
import pytest

from conftest import TINY_BACKBONE as TINY
from conftest import tiny_image_bytes
from evaluation.evaluate import evaluate_run
from evaluation.models import EvalSettings
from evaluation.report.build import build_report
from pipeline.cli.main import main
from pipeline.runs.importer import import_outputs
from pipeline.runs.run_folder import FORMAT, PairStatus, RunFolder, RunFolderError
from pipeline.storage import Storage

FIXTURES = Path(__file__).parent / "fixtures" / "format-2"
FIXTURE_METRICS = EvalSettings(metrics=("selfsim", "dino_i"), metric_backbone=TINY, explicit=True)  # as they were made
WORDS = {s.value for s in PairStatus}


@pytest.fixture
def old(tmp_path) -> Path:
    """A copy of the format-2 fixtures (run/, import/, import-format-1/, inputs/), never the originals."""
    shutil.copytree(FIXTURES, tmp_path / "old")
    return tmp_path / "old"


def status_json(capsys, run) -> dict:
    assert main(["status", str(run), "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_the_vocabulary_maps_older_words_and_refuses_unknown_ones():
    assert [PairStatus.of(w) for w in ("ok", "not evaluated", "done", None, float("nan"), "MISSING")] == [
        PairStatus.DONE,
        PairStatus.PENDING,
        PairStatus.DONE,
        PairStatus.PENDING,
        PairStatus.PENDING,
        PairStatus.MISSING,
    ]
    with pytest.raises(RunFolderError, match="unknown pair status 'finished'"):
        PairStatus.of("finished")


def test_a_format_2_run_reads_and_is_evaluated_again_in_the_one_vocabulary(old, capsys):
    run = RunFolder(Storage(), str(old / "run"))
    assert run.record()["format"] == 2 < FORMAT
    read = run.read()
    assert list(read.results["status"]) == ["done", "done", "failed"]
    # results.parquet of format 2 lacks peak memory: taken from the done pairs' meta.json, once
    assert read.results["peak_memory_bytes"].notna().tolist() == [True, True, False]
    assert (old / "run" / "manifest.parquet").exists() and read.manifest["structure_uri"][0].endswith("inputs/p0_s.png")
    stored = run.metrics()
    assert list(stored["status"]) == ["done", "done", "failed"]  # written as ok / ok / failed
    counts = status_json(capsys, old / "run")
    assert (counts["format"], counts["done"], counts["failed"], counts["pending"]) == (2, 2, 1, 0)

    # evaluating again with what it was evaluated with keeps its values and rewrites the table in format 3
    summary = evaluate_run(str(old / "run"), FIXTURE_METRICS, device="cpu", progress=False)
    assert summary.statuses == {"done": 2, "failed": 1}
    frame = pd.read_parquet(old / "run" / "eval" / "metrics.parquet").set_index("pair_id")
    assert list(frame["status"]) == ["done", "done", "failed"] and not {"dataset", "domain"} & set(frame.columns)
    assert frame.loc[["p0", "p1"], "train_peak_memory_bytes"].notna().all()  # cost from results.parquet
    assert frame.loc["p0", "selfsim"] == stored.set_index("pair_id").loc["p0", "selfsim"]  # the values stay


def test_imported_folders_from_before_read_with_their_missing_pairs(old, capsys, tmp_path):
    for name, version in (("import", 2), ("import-format-1", 1)):
        counts = status_json(capsys, old / name)
        assert (counts["format"], counts["done"], counts["missing"], counts["pending"]) == (version, 1, 2, 0), name
        assert {p["pair_id"] for p in counts["failures"]} == {"p1", "p2"}
    # a report over folders of both old formats: labels joined from the runs' manifests, old words mapped
    summary = build_report(
        [str(old / "run"), str(old / "import-format-1")],
        str(tmp_path / "report"),
        n_boot=50,
        thumbnails=2,
        group_by=["domain"],
    )
    assert summary.methods == ["structure-copy", "strotss"]
    tables = (tmp_path / "report" / "tables.md").read_text()
    assert "domain = cat" in tables and "domain = dog" in tables
    page = (tmp_path / "report" / "report.html").read_text()
    assert set(re.findall(r'data-status="([^"]+)"', page)) <= WORDS


@pytest.mark.parametrize("version", [FORMAT + 1, "3", 0])
def test_a_run_json_format_this_code_does_not_read_is_one_clear_line(old, capsys, tmp_path, version):
    record = json.loads((old / "run" / "run.json").read_text())
    (old / "run" / "run.json").write_text(json.dumps({**record, "format": version}))
    expected = f"run.json format {version!r}, which this splice-pipeline does not read"
    for argv in (
        ["status", old / "run"],
        [
            "evaluate",
            old / "run",
            "--metrics",
            "selfsim",
            "--metric-backbone",
            TINY,
            "--device",
            "cpu",
            "--no-progress",
        ],
        ["report", old / "run", "-o", tmp_path / "report"],
        ["run", old / "run" / "manifest.parquet", "--out", old / "run", "--method", "structure-copy", "--no-progress"],
    ):
        assert main([str(a) for a in argv]) == 2, argv
        err = capsys.readouterr().err
        assert expected in err and "upgrade splice-pipeline" in err and "Traceback" not in err, (argv, err)
    assert not (tmp_path / "report").exists()


def test_run_import_evaluate_status_and_report_speak_one_vocabulary(ray_session, tmp_path, capsys):
    inputs = tmp_path / "in"
    inputs.mkdir()
    rows = []
    for index, pair_id in enumerate(["v0", "v1", "v2"]):
        (inputs / f"{pair_id}_s.png").write_bytes(tiny_image_bytes((24, 32), 2 * index))
        (inputs / f"{pair_id}_a.png").write_bytes(tiny_image_bytes((24, 32), 2 * index + 1) if index < 2 else b"junk")
        rows.append(
            {
                "pair_id": pair_id,
                "structure_uri": str(inputs / f"{pair_id}_s.png"),
                "appearance_uri": str(inputs / f"{pair_id}_a.png"),
                "domain": ["cat", "dog", "cat"][index],
            }
        )
    manifest = tmp_path / "m.parquet"
    pd.DataFrame(rows).to_parquet(manifest, index=False)
    run, imported = tmp_path / "run", tmp_path / "imported"
    assert (
        main(["run", str(manifest), "--out", str(run), "--method", "structure-copy", "--no-progress"]) == 1
    )  # v2 fails
    outputs = tmp_path / "outputs"
    outputs.mkdir()
    (outputs / "v0.png").write_bytes(tiny_image_bytes((24, 32), 9))
    (outputs / "v1.png").write_bytes(b"not a png")
    import_outputs("wct2", str(outputs), str(manifest), str(imported))
    for folder in (run, imported):
        assert json.loads((folder / "run.json").read_text())["format"] == FORMAT  # import records its format too
        evaluate_run(str(folder), FIXTURE_METRICS, device="cpu", progress=False)
    assert main(["report", str(run), str(imported), "-o", str(tmp_path / "report"), "--group-by", "domain"]) == 0
    capsys.readouterr()

    seen = {
        "run results": dict(pd.read_parquet(run / "results.parquet")[["pair_id", "status"]].values),
        "import results": dict(pd.read_parquet(imported / "results.parquet")[["pair_id", "status"]].values),
        "run metrics": dict(pd.read_parquet(run / "eval" / "metrics.parquet")[["pair_id", "status"]].values),
        "import metrics": dict(pd.read_parquet(imported / "eval" / "metrics.parquet")[["pair_id", "status"]].values),
    }
    assert seen == {
        "run results": {"v0": "done", "v1": "done", "v2": "failed"},
        "import results": {"v0": "done", "v1": "failed", "v2": "missing"},
        "run metrics": {"v0": "done", "v1": "done", "v2": "failed"},
        "import metrics": {"v0": "done", "v1": "failed", "v2": "missing"},
    }
    for folder in (run, imported):
        counts = status_json(capsys, folder)
        assert set(counts["counts"]) <= WORDS and sum(counts["counts"].values()) == 3
    assert status_json(capsys, imported)["counts"] == {"pending": 0, "done": 1, "failed": 1, "missing": 1, "damaged": 0}
    page = (tmp_path / "report" / "report.html").read_text()
    assert set(re.findall(r'data-status="([^"]+)"', page)) == {"done", "failed", "missing"}
    # labels live in the run's manifest only: not in meta.json, not in metrics.parquet; the report groups by them
    assert "labels" not in json.loads((run / "pairs" / "v0" / "meta.json").read_text())
    assert "domain = dog" in (tmp_path / "report" / "tables.md").read_text()
    # cost is read from results.parquet (seconds, device, peak memory), the place the run wrote it
    results = pd.read_parquet(run / "results.parquet").set_index("pair_id")
    metrics = pd.read_parquet(run / "eval" / "metrics.parquet").set_index("pair_id")
    assert results.loc["v0", "peak_memory_bytes"] > 0
    assert metrics.loc["v0", "train_peak_memory_bytes"] == results.loc["v0", "peak_memory_bytes"]
    assert metrics.loc["v0", "train_device"] == results.loc["v0", "device"]
