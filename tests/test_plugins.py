"""Plug-ins: a method and a metric from files outside the repository, named `py:MODULE:NAME` or by an entry point,
run by `splice run` on Ray workers, evaluated and reported like built-ins; a bad spec fails in one line naming it.
Tiny images, no backbone training, a model-less metric: seconds."""

from __future__ import annotations

import json
import os
import re
import shutil
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from conftest import TINY_BACKBONE as TINY
from evaluation import registry
from evaluation.engine import PairImages, compute_metrics
from evaluation.evaluate import evaluate_run
from evaluation.models import EvalSettings, MetricModels
from manifests.builders import build_pairs_dir
from manifests.schema import validate_frame, write_manifest
from pipeline.cli.main import main
from pipeline.method import registry as methods
from pipeline.method.config import TrainConfig

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_example(first_line: str) -> str:
    """The README's Python example that starts with `first_line`: the tests run the documented plug-ins as written."""
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.DOTALL)
    return next(block for block in blocks if block.startswith(first_line))


METHOD_FILE = readme_example("# posterize.py")
METRIC_FILE = readme_example("# my_metrics.py")


@pytest.fixture(autouse=True)
def registries():
    """Each test's plug-ins are forgotten after it (two tests define a metric of the same name)."""
    saved = [
        (table, dict(table))
        for table in (registry.METRICS, registry._BY_SPEC, registry._DESCRIBED, methods.METHODS, methods._BY_SPEC)
    ]
    yield
    for table, contents in saved:
        table.clear()
        table.update(contents)


def write(path, text: str) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return str(path)


@pytest.fixture
def manifest(tmp_path, make_pairs) -> str:
    frame = validate_frame(build_pairs_dir(make_pairs(["p0", "p1"])), "test")
    path = str(tmp_path / "manifest.parquet")
    write_manifest(frame, path)
    return path


def test_a_plugin_method_file_runs_on_ray_workers_and_its_outputs_are_evaluated(ray_session, tmp_path, manifest):
    plugin = write(tmp_path / "plugins" / "tiny_posterize.py", METHOD_FILE)
    out = tmp_path / "run"
    assert main(["run", manifest, "--out", str(out), "--method", f"py:{plugin}:posterize", "--no-progress"]) == 0
    results = pd.read_parquet(out / "results.parquet")
    assert list(results["status"]) == ["done", "done"] and set(results["method"]) == {"posterize"}
    for pair_id in ("p0", "p1"):
        meta = json.loads((out / "pairs" / pair_id / "meta.json").read_text())
        assert meta["method"] == "posterize" and meta["method_version"] == "1"
        assert meta["worker"]["pid"] != os.getpid()  # ran in a Ray worker, not here
        pixels = np.asarray(Image.open(out / "pairs" / pair_id / "output.png"))
        assert set(np.unique(pixels)) <= {32, 96, 160, 224}
    record = json.loads((out / "run.json").read_text())
    assert (record["method"], record["method_version"], record["method_source"]) == (
        "posterize",
        "1",
        f"py:{plugin}:posterize",
    )
    assert record["settings"] == {"levels": 4, "max_side": TrainConfig().max_side}

    # its outputs are evaluated like any run's, under the plug-in's name
    metric = write(tmp_path / "metric_plugins" / "my_metrics.py", METRIC_FILE)
    assert main(["evaluate", str(out), "--metrics", f"py:{metric}:pixel_mse", "--no-progress"]) == 0
    frame = pd.read_parquet(out / "eval" / "metrics.parquet")
    assert set(frame["method"]) == {"posterize"} and (frame["pixel_mse"] > 0).all()


@pytest.fixture
def imported_run(tmp_path, make_pairs):
    """A run of outputs: p0's output is its structure image, p1's its appearance image."""
    from pipeline.runs.importer import import_outputs

    pairs = make_pairs(["p0", "p1"])
    frame = validate_frame(build_pairs_dir(pairs), "test")
    write_manifest(frame, str(tmp_path / "manifest.parquet"))
    outputs = tmp_path / "outputs"
    outputs.mkdir()
    (outputs / "p0.png").write_bytes((tmp_path / "pairs" / "p0" / "structure.png").read_bytes())
    (outputs / "p1.png").write_bytes((tmp_path / "pairs" / "p1" / "appearance.png").read_bytes())
    import_outputs("copycat", str(outputs), str(tmp_path / "manifest.parquet"), str(tmp_path / "run"))
    return tmp_path / "run"


def test_a_plugin_metric_is_evaluated_stored_with_its_version_and_reported_without_importing_it(
    imported_run, tmp_path, ray_session, monkeypatch, capsys
):
    plugin = write(tmp_path / "plugins" / "my_metrics.py", METRIC_FILE)
    spec, cosine = f"py:{plugin}:pixel_mse", f"py:{plugin}:cls_cosine"
    assert (
        main(
            [
                "evaluate",
                str(imported_run),
                "--metrics",
                f"cls_mse,{spec},{cosine}",
                "--metric-backbone",
                TINY,
                "--no-progress",
            ]
        )
        == 0
    )
    frame = pd.read_parquet(imported_run / "eval" / "metrics.parquet").set_index("pair_id")
    assert frame.at["p0", "pixel_mse"] == 0.0 and frame.at["p1", "pixel_mse"] > 0.001  # identity, and not
    assert frame.at["p1", "cls_cosine"] == pytest.approx(1.0, abs=1e-5) and frame.at["p0", "cls_cosine"] < 1 - 1e-5
    assert set(frame["pixel_mse__version"]) == {"1"} and set(frame["pixel_mse__model"]) == {"none"}
    assert set(frame["cls_cosine__model"]) == {f"{TINY}@random"} and frame.at["p1", "cls_mse"] == 0.0
    described = json.loads((imported_run / "eval" / "evaluation.json").read_text())["metrics"]["pixel_mse"]
    assert (described["better"], described["source"]) == ("lower", spec)

    # on Ray actors (the file shipped with runtime_env py_modules) the values are the same
    copy = tmp_path / "copy"
    shutil.copytree(imported_run, copy)
    (copy / "eval" / "metrics.parquet").unlink()
    evaluate_run(str(copy), EvalSettings(metrics=(spec,), explicit=True), address=ray_session, progress=False)
    on_ray = pd.read_parquet(copy / "eval" / "metrics.parquet").set_index("pair_id")
    assert on_ray["pixel_mse"].to_dict() == frame["pixel_mse"].to_dict()

    # a report in a process that never imported the plug-in labels it from evaluation.json
    del registry.METRICS["pixel_mse"], registry.METRICS["cls_cosine"]
    registry._BY_SPEC.clear()
    assert main(["report", str(imported_run), "-o", str(tmp_path / "report")]) == 0
    tables = (tmp_path / "report" / "tables.md").read_text()
    assert "pixel_mse ↓" in tables and "cls_cosine ↑" in tables and "copycat" in tables
    assert "MSE of pixel values" in (tmp_path / "report" / "report.html").read_text()


def test_entry_point_plugins_are_found_by_name(tmp_path, monkeypatch):
    site = tmp_path / "site"
    write(
        site / "splice_ep_demo.py",
        '''
        import torch
        from evaluation.registry import Need, register_metric

        @register_metric("mean_brightness", version="1", better="higher", aspect="appearance",
                         needs=(Need("output", "full"),), summary="mean pixel value of the output")
        def mean_brightness(model, output):
            return output.flatten(1).mean(1)

        def invert(structure, appearance, config):
            """the structure image, inverted"""
            return 255 - structure
    ''',
    )
    write(
        site / "splice_ep_demo-0.1.dist-info" / "METADATA",
        "Metadata-Version: 2.1\nName: splice-ep-demo\nVersion: 0.1\n",
    )
    write(
        site / "splice_ep_demo-0.1.dist-info" / "entry_points.txt",
        "[splice.metrics]\nmean_brightness = splice_ep_demo:mean_brightness\n\n"
        "[splice.methods]\ninvert = splice_ep_demo:invert\n",
    )
    monkeypatch.syspath_prepend(str(site))

    assert "mean_brightness" in registry.available() and "invert" in methods.available()
    structure = torch.full((3, 6, 8), 10, dtype=torch.uint8)
    result = methods.run_method("invert", structure, structure, TrainConfig())
    assert torch.equal(result.output, 255 - structure) and result.meta["method"] == "invert"
    white = torch.full((3, 6, 8), 255, dtype=torch.uint8)
    scores = compute_metrics(
        [PairImages("w", structure, structure, white)], ["mean_brightness"], MetricModels(), "cpu"
    )["w"]
    assert scores.values == {"mean_brightness": 1.0}


def test_bad_plugin_specs_fail_in_one_line_naming_them(tmp_path, manifest, imported_run, capsys):
    out = str(tmp_path / "never")
    assert main(["run", manifest, "--out", out, "--method", "nonesuch"]) == 2
    error = capsys.readouterr().err
    assert "unknown method 'nonesuch'" in error and "structure-copy" in error and "py:MODULE:FN" in error
    missing = str(tmp_path / "missing.py")
    assert main(["run", manifest, "--out", out, "--method", f"py:{missing}:fn"]) == 2
    assert f"py:{missing}:fn" in capsys.readouterr().err

    broken = write(tmp_path / "broken.py", "import torch\nraise RuntimeError('this plug-in is broken')\n")
    plain = write(tmp_path / "plain.py", "def score(model, output):\n    return output.mean()\n")
    for spec, expected in [
        (f"py:{broken}:x", "this plug-in is broken"),
        (f"py:{plain}:score", "not a metric"),
        ("py:no_such_module_here:x", "not importable"),
        ("py:justone", "expected py:MODULE:NAME"),
        ("nonesuch", "unknown metric 'nonesuch'"),
    ]:
        assert main(["evaluate", str(imported_run), "--metrics", spec, "--no-progress"]) == 2, spec
        error = capsys.readouterr().err
        assert expected in error and spec in error and len(error.strip().splitlines()) == 1, (spec, error)

    # a plug-in method that returns something else than an image fails the pair, saying what it must return
    wrong = write(tmp_path / "wrong.py", "def halve(structure, appearance, config):\n    return structure / 2\n")
    with pytest.raises(Exception, match=r"halve.*\(3, H, W\) uint8"):
        methods.run_method(
            f"py:{wrong}:halve",
            torch.zeros(3, 4, 4, dtype=torch.uint8),
            torch.zeros(3, 4, 4, dtype=torch.uint8),
            TrainConfig(),
        )
