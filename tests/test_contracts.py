"""Contracts a user's input is held to, each with one clear line (issue 19, cases 9 and 12): a plug-in method's output
must be at the structure image's size (else its pair fails, saying so); a `py:` plug-in file without `.py` loads (or
gives one line); every training setting is validated, naming the key and its valid range."""

from __future__ import annotations

import pandas as pd
import pytest

import test_plugins
from pipeline.cli.main import main
from test_plugins import METRIC_FILE, write

# test_plugins' fixtures: a manifest of two pairs, a run imported from outputs, plug-in registries reset after each test
manifest, imported_run, registries = test_plugins.manifest, test_plugins.imported_run, test_plugins.registries

SHRINK = """
import torch

def shrink(structure, appearance, config):
    return torch.zeros(3, 10, 10, dtype=torch.uint8)  # whatever the structure's size
"""


def test_a_method_output_of_another_size_than_the_structure_fails_its_pair(ray_session, tmp_path, manifest, capsys):
    plugin = write(tmp_path / "shrink.py", SHRINK)
    out = tmp_path / "run"
    code = main(["run", manifest, "--out", str(out), "--method", f"py:{plugin}:shrink", "--no-progress"])
    assert code != 0
    results = pd.read_parquet(out / "results.parquet").set_index("pair_id")
    assert list(results["status"]) == ["failed", "failed"]
    error = results.at["p0", "error"]
    assert "10x10 output for a 48x64 structure image" in error and "structure image's size" in error
    assert not list(out.glob("pairs/*/_SUCCESS")) and not list(out.glob("pairs/*/output.png"))
    assert "Traceback" not in capsys.readouterr().err


def test_a_plugin_file_without_the_py_extension_loads_or_gives_one_line(
    ray_session, tmp_path, manifest, imported_run, capsys
):
    plugin = write(tmp_path / "plugins" / "shrink_like", SHRINK.replace("10, 10", "48, 64"))  # no .py
    out = tmp_path / "sized"
    code = main(["run", manifest, "--out", str(out), "--method", f"py:{plugin}:shrink", "--no-progress"])
    assert code == 0 and list(pd.read_parquet(out / "results.parquet")["status"]) == ["done", "done"]

    metric = write(tmp_path / "plugins" / "my_metrics", METRIC_FILE)  # no .py
    assert main(["evaluate", str(imported_run), "--metrics", f"py:{metric}:pixel_mse", "--no-progress"]) == 0
    assert pd.read_parquet(imported_run / "eval" / "metrics.parquet")["pixel_mse"].notna().all()
    capsys.readouterr()

    not_python = tmp_path / "plugins" / "picture"
    not_python.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00binary")
    for argv in (
        ["run", manifest, "--out", str(tmp_path / "never"), "--method", f"py:{not_python}:fn"],
        ["evaluate", str(imported_run), "--metrics", f"py:{not_python}:fn", "--no-progress"],
    ):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert "Traceback" not in err and len(err.strip().splitlines()) == 1 and f"py:{not_python}:fn" in err


@pytest.mark.parametrize(
    "assignment, expected",
    [
        ("betas=2,3", "betas must be two numbers in [0, 1)"),
        ("betas=0.9,1", "betas must be two numbers in [0, 1)"),
        ("jitter=-1,0.4,0.2,0.1", "jitter must be four strengths >= 0"),
        ("jitter=0.4,0.4,0.2,0.9", "hue at most 0.5"),
        ("lr=inf", "lr must be a finite number"),
        ("structure_weight=nan", "structure_weight must be a finite number"),
        ("seed=-1", "seed must be >= 0"),
    ],
)
def test_every_training_setting_is_validated_in_one_line(tmp_path, make_image, capsys, assignment, expected):
    structure, appearance = make_image("s.png"), make_image("a.png", seed=1)
    code = main(["train", structure, appearance, "-o", str(tmp_path / "out"), "--set", assignment])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert expected in err
    assert not (tmp_path / "out" / "output.png").exists()
