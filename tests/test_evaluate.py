"""`splice import` builds runs other methods' outputs can be evaluated from; `splice evaluate` writes one row per
pair with provenance, counts failures, and on re-runs computes only what is missing. Tiny random models only."""

from __future__ import annotations

import json
import logging
import re
import shutil

import pandas as pd
import pytest
import torch
from PIL import Image

import evaluation.backends as backends_module
from conftest import TINY_BACKBONE as TINY
from conftest import ColourSegmenter, save_image
from evaluation.evaluate import evaluate_run
from evaluation.models import EvalSettings
from pipeline.cli.main import main
from pipeline.method.images import read_image_file
from pipeline.runs.importer import ImportRefused, import_outputs
from pipeline.storage import Storage

ALL = EvalSettings(metric_backbone=TINY, lpips_weights="random", segmenter=ColourSegmenter(), explicit=True)
CHEAP = EvalSettings(metrics=("selfsim", "dino_i"), metric_backbone=TINY, explicit=True)


def make_inputs(root, pairs: int = 4):
    """inputs/<id>_{structure,appearance}.png and a manifest with paths relative to its folder."""
    rows = []
    for index in range(pairs):
        structure = save_image(
            root / "inputs" / f"p{index}_structure.png", 2 * index, (40, 56) if index % 2 else (48, 48)
        )
        appearance = save_image(root / "inputs" / f"p{index}_appearance.png", 2 * index + 1, (36, 44))
        rows.append(
            {
                "pair_id": f"p{index}",
                "structure_uri": f"inputs/{structure.name}",
                "appearance_uri": f"inputs/{appearance.name}",
                "dataset": "toy",
                "domain": ["cat", "dog"][index % 2],
            }
        )
    manifest = root / "manifest.parquet"
    pd.DataFrame(rows).to_parquet(manifest)
    return manifest


def make_outputs(root, folder: str, plan: dict):
    """plan: pair_id -> 'structure' | 'appearance' | 'corrupt' | an int seed; copied/saved as <pair_id>.png."""
    out = root / folder
    out.mkdir(parents=True, exist_ok=True)
    for pair_id, what in plan.items():
        if what in ("structure", "appearance"):
            shutil.copy(root / "inputs" / f"{pair_id}_{what}.png", out / f"{pair_id}.png")
        elif what == "corrupt":
            (out / f"{pair_id}.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
        else:
            save_image(out / f"{pair_id}.png", what)
    return out


@pytest.fixture
def run(tmp_path):
    """An imported run: p0 = its structure image, p1 = its appearance image, p2 missing, p3 unreadable."""
    manifest = make_inputs(tmp_path)
    outputs = make_outputs(tmp_path, "strotss_out", {"p0": "structure", "p1": "appearance", "p3": "corrupt"})
    import_outputs("strotss", str(outputs), str(manifest), str(tmp_path / "run"))
    return tmp_path / "run"


def metrics_of(run) -> pd.DataFrame:
    return pd.read_parquet(run / "eval" / "metrics.parquet").set_index("pair_id")


def test_import_builds_the_run_layout(tmp_path, caplog):
    manifest = make_inputs(tmp_path)
    outputs = make_outputs(tmp_path, "wct2_out", {"p0": "structure", "p3": "corrupt"})
    Image.open(tmp_path / "inputs" / "p1_appearance.png").save(outputs / "p1.jpg", quality=95)
    save_image(outputs / "not_a_pair.png", 7)
    with caplog.at_level(logging.WARNING):
        summary = import_outputs("wct2", str(outputs), str(manifest), str(tmp_path / "run"))
    assert (summary.imported, summary.missing, summary.failed) == (2, 1, 1)
    assert "not_a_pair.png" in caplog.text
    run = tmp_path / "run"
    assert json.loads((run / "run.json").read_text())["method"] == "wct2"
    copied = pd.read_parquet(run / "manifest.parquet")
    assert list(copied["pair_id"]) == ["p0", "p1", "p2", "p3"]
    assert copied["structure_uri"][0] == str(tmp_path / "inputs" / "p0_structure.png")  # resolved to absolute
    assert torch.equal(
        read_image_file(str(run / "pairs" / "p0" / "output.png")),
        read_image_file(str(tmp_path / "inputs" / "p0_structure.png")),
    )
    assert (run / "pairs" / "p1" / "_SUCCESS").exists() and json.loads(
        (run / "pairs" / "p1" / "meta.json").read_text()
    )["imported"]
    assert not (run / "pairs" / "p2" / "_SUCCESS").exists() and not (run / "pairs" / "p3" / "_SUCCESS").exists()
    results = pd.read_parquet(run / "results.parquet").set_index("pair_id")
    assert list(results["status"]) == ["done", "done", "missing", "failed"]
    assert "'p2'" in results.loc["p2", "error"] and "p3.png" in results.loc["p3", "error"]
    with pytest.raises(ImportRefused, match="already holds a run of method 'wct2'"):
        import_outputs("strotss", str(outputs), str(manifest), str(run))
    with pytest.raises(ImportRefused, match="outputs folder itself"):
        import_outputs("wct2", str(outputs), str(manifest), str(outputs))


def test_evaluate_writes_one_row_per_pair_with_provenance_and_counts_failures(run):
    summary = evaluate_run(str(run), ALL, device="cpu", progress=False)
    assert summary.statuses == {"done": 2, "missing": 1, "failed": 1} and summary.computed == 2
    frame = metrics_of(run)
    assert list(frame.index) == ["p0", "p1", "p2", "p3"]
    assert list(frame["method"].unique()) == ["strotss"]
    # labels stay in one place, the run's manifest (the report joins them from there), not copied per table
    assert "domain" not in frame.columns and "dataset" not in frame.columns
    assert pd.read_parquet(run / "manifest.parquet").set_index("pair_id").loc["p1", "domain"] == "dog"
    # output == structure image: ideal structure scores; output == appearance image: ideal appearance scores
    assert frame.loc["p0", "selfsim"] == pytest.approx(0, abs=1e-9)
    assert frame.loc["p0", "lpips_structure"] == pytest.approx(0, abs=1e-9)
    assert frame.loc["p0", "layout_miou"] == 1.0
    assert frame.loc["p1", "dino_i"] == pytest.approx(1, abs=1e-5)
    assert frame.loc["p1", "cls_mse"] == pytest.approx(0, abs=1e-9)
    assert frame.loc["p0", "selfsim__model"] == f"{TINY}@random" and frame.loc["p0", "dino_i__version"] == "2"
    assert frame.loc["p0", "layout_miou__model"] == "colour@deterministic"
    # missing and failed pairs are rows too: no values, the reason recorded
    assert frame.loc["p2", "status"] == "missing" and "no output for pair 'p2'" in frame.loc["p2", "error"]
    assert frame.loc["p3", "status"] == "failed" and "p3.png" in frame.loc["p3", "error"]
    assert frame.loc[["p2", "p3"], ["selfsim", "dino_i"]].isna().all().all()
    evaluation = json.loads((run / "eval" / "evaluation.json").read_text())
    assert evaluation["layout_classes"] == ColourSegmenter.class_names
    assert not (run / "pairs" / "p0" / "eval").exists()  # nothing written beside the training outputs


@pytest.mark.slow
def test_re_running_computes_only_what_is_missing(run, monkeypatch):
    calls = []
    real = backends_module.compute_metrics

    def spy(pairs, names, *args, **kwargs):
        calls.append((sorted(p.pair_id for p in pairs), sorted(names)))
        return real(pairs, names, *args, **kwargs)

    monkeypatch.setattr(backends_module, "compute_metrics", spy)
    settings = EvalSettings(metrics=("selfsim",), metric_backbone=TINY)

    def evaluate(**changes):
        calls.clear()
        evaluate_run(str(run), settings.__class__(**{**settings.__dict__, **changes}), device="cpu", progress=False)
        return list(calls)

    assert evaluate() == [(["p0", "p1"], ["selfsim"])]
    assert evaluate() == []  # nothing new
    assert evaluate(metrics=("selfsim", "dino_i")) == [(["p0", "p1"], ["dino_i"])]  # a newly asked metric
    before = metrics_of(run)
    save_image(run / "pairs" / "p1" / "output.png", 99)  # p1's output changed
    (run / "pairs" / "p0" / "output.png").write_bytes(
        (run / "pairs" / "p0" / "output.png").read_bytes()
    )  # rewritten, same content
    assert evaluate(metrics=("selfsim", "dino_i")) == [(["p1"], ["dino_i", "selfsim"])]
    after = metrics_of(run)
    assert after.loc["p0", "selfsim"] == before.loc["p0", "selfsim"]
    assert after.loc["p1", "output_sha256"] != before.loc["p1", "output_sha256"]
    # a missing output arrives: only that pair
    save_image(run / "pairs" / "p2" / "output.png", 5, (36, 44))
    (run / "pairs" / "p2" / "_SUCCESS").write_bytes(b"")
    assert evaluate() == [(["p2"], ["selfsim"])]
    assert metrics_of(run).loc["p2", "status"] == "done"
    # another metric model: its values are stale
    assert evaluate(metric_backbone="random:test_vit") == [(["p0", "p1", "p2"], ["selfsim"])]
    assert metrics_of(run).loc["p0", "dino_i"] == after.loc["p0", "dino_i"]  # values of other metrics are kept
    calls.clear()
    evaluate_run(
        str(run),
        EvalSettings(metrics=("selfsim",), metric_backbone="random:test_vit"),
        device="cpu",
        force=True,
        progress=False,
    )
    assert calls == [(["p0", "p1", "p2"], ["selfsim"])]


def test_cli_offline_skips_unavailable_metrics_unless_asked_for(run, offline, capsys):
    assert main(["evaluate", str(run), "--metric-backbone", TINY, "--no-progress", "--batch-size", "2"]) == 0
    printed = capsys.readouterr()
    assert (
        "metrics selfsim, dino_i, cls_mse ->" in printed.out and "skipped lpips_structure, layout_miou" in printed.out
    )
    # the reason, with how to provide the weights, is said once (a warning), not again in the summary
    assert printed.err.count("alexnet-owt-7be5be79.pth are not in the torch hub cache") == 1
    assert "alexnet" not in printed.out and printed.err.count("RANDOM weights") <= 2  # the backbone's and the metrics'
    assert re.search(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d WARNING evaluation\.models: ", printed.err, re.M)  # timestamped
    assert (
        main(["evaluate", str(run), "--metrics", "selfsim,lpips_structure", "--metric-backbone", TINY, "--no-progress"])
        == 2
    )
    assert "lpips_structure was asked for but cannot be computed" in capsys.readouterr().err
    assert main(["evaluate", str(run), "--metrics", "dino_i", "--no-progress"]) == 2  # default DINO weights: not here
    assert "--metric-backbone dino_vitb8=file:PATH" in capsys.readouterr().err
    assert main(["evaluate", str(run.parent / "nowhere"), "--no-progress"]) == 2
    assert "not a run folder" in capsys.readouterr().err


@pytest.mark.slow
def test_evaluate_on_ray_matches_local(run, tmp_path, ray_session):
    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    evaluate_run(str(run), CHEAP, device="cpu", progress=False)
    summary = evaluate_run(str(copy), CHEAP, address=ray_session, progress=False)
    assert summary.computed == 2
    local, remote = metrics_of(run), metrics_of(copy)
    for metric in CHEAP.metrics:
        assert remote[metric].to_numpy() == pytest.approx(local[metric].to_numpy(), rel=1e-4, abs=1e-7, nan_ok=True)


def test_import_and_evaluate_a_run_in_object_storage(tmp_path, s3_bucket):
    manifest = make_inputs(tmp_path, pairs=2)
    outputs = make_outputs(tmp_path, "out", {"p0": "structure", "p1": 3})
    storage = Storage(s3_bucket.options)
    run_url = s3_bucket.url("runs", "strotss")
    import_outputs("strotss", str(outputs), str(manifest), run_url, storage=storage)
    settings = EvalSettings(metrics=("selfsim",), metric_backbone=TINY)
    assert evaluate_run(run_url, settings, storage=storage, device="cpu", progress=False).computed == 2
    assert evaluate_run(run_url, settings, storage=storage, device="cpu", progress=False).computed == 0
    frame = pd.read_parquet(s3_bucket.fs().open(f"{s3_bucket.bucket}/runs/strotss/eval/metrics.parquet"))
    assert list(frame["status"]) == ["done", "done"] and frame["selfsim"][0] == pytest.approx(0, abs=1e-9)
