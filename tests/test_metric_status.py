"""Evaluation keeps each metric's value and status on its own (issue 19, cases 7 and 8): a metric that fails on
every pair never hides another metric's values, its failure stays until it succeeds, the tables count n / failed /
pending per metric, and a metric whose values are all NaN keeps its column. Real runs, plug-in metrics from files,
a tiny random backbone."""

from __future__ import annotations

import json
import textwrap

import pandas as pd
import pytest

from evaluation import registry
from pipeline.cli.main import main
from test_run_folder import CHEAP_METRICS, TINY, cli, manifest_of, run_cli, write_inputs

PLUGIN = """
import torch

from evaluation.registry import Need, register_metric


@register_metric(
    "brittle",
    version="{version}",
    better="lower",
    aspect="structure",
    needs=(Need("structure", "structure_size"), Need("output", "structure_size")),
    summary="fails while its version is 1",
)
def brittle(model, structure, output):
    if "{version}" == "1":
        raise RuntimeError("brittle broke on this batch")
    return (structure - output).abs().flatten(1).mean(1)


@register_metric(
    "undefined",
    version="1",
    better="lower",
    aspect="structure",
    needs=(Need("output", "structure_size"),),
    summary="NaN on every pair",
)
def undefined(model, output):
    return torch.full((output.shape[0],), float("nan"))
"""


@pytest.fixture(autouse=True)
def forget_plugins():
    saved = [(t, dict(t)) for t in (registry.METRICS, registry._BY_SPEC, registry._DESCRIBED)]
    yield
    for table, contents in saved:
        table.clear()
        table.update(contents)


def plugin(tmp_path, version: str) -> str:
    path = tmp_path / f"brittle_v{version}.py"
    path.write_text(textwrap.dedent(PLUGIN.replace("{version}", version)))
    return str(path)


@pytest.fixture
def run(ray_session, tmp_path, capsys):
    inputs = write_inputs(tmp_path / "in", ["m0", "m1", "m2"])
    out = tmp_path / "run"
    assert run_cli(capsys, manifest_of(tmp_path / "m.parquet", inputs), out)[0] == 0
    return out


def evaluate(capsys, run, metrics: str) -> int:
    code, _, err = cli(capsys, "evaluate", run, "--metrics", metrics, "--metric-backbone", TINY, "--no-progress")
    print(err)  # shown if the test fails
    return code


def test_a_failing_metric_never_hides_another_and_its_failure_stays_until_it_succeeds(run, tmp_path, capsys):
    selfsim = CHEAP_METRICS[0]
    assert evaluate(capsys, run, selfsim) == 0
    broken = plugin(tmp_path, "1")
    evaluate(capsys, run, f"py:{broken}:brittle")
    frame = pd.read_parquet(run / "eval" / "metrics.parquet").set_index("pair_id")
    assert frame[selfsim].notna().all() and set(frame[f"{selfsim}__status"]) == {"done"}
    assert set(frame["brittle__status"]) == {"error"} and frame["brittle__error"].str.contains("brittle broke").all()
    assert set(frame["status"]) == {"error"} and frame["error"].str.startswith("brittle: ").all()

    # the report counts per metric: selfsim has its three values, brittle three failures
    assert main(["report", str(run), "-o", str(tmp_path / "report")]) == 0
    csv = pd.read_csv(tmp_path / "report" / "tables.csv").set_index("group").loc["all pairs"]
    assert (csv[f"{selfsim}_n"], csv[f"{selfsim}_n_failed"], csv[f"{selfsim}_n_pending"]) == (3, 0, 0)
    assert (csv["brittle_n"], csv["brittle_n_failed"]) == (0, 3) and pd.notna(csv[f"{selfsim}_mean"])
    markdown = (tmp_path / "report" / "tables.md").read_text()
    assert "(n=3, 0 failed, 0 pending)" in markdown  # selfsim's own counts, beside the pairs' (0 evaluated, 3 failed)

    # evaluating selfsim again (forced) does not erase brittle's failure
    code = cli(capsys, "evaluate", run, "--metrics", selfsim, "--metric-backbone", TINY, "--no-progress", "--force")[0]
    assert code == 0
    frame = pd.read_parquet(run / "eval" / "metrics.parquet").set_index("pair_id")
    assert set(frame["brittle__status"]) == {"error"} and set(frame["status"]) == {"error"}
    assert frame[selfsim].notna().all()

    # once brittle succeeds (fixed: version 2, evaluated by a later command), the pairs are done, with both metrics
    for name in ("brittle", "undefined"):  # a later command is a new process: the fixed plug-in registers anew
        del registry.METRICS[name]
    assert evaluate(capsys, run, f"py:{plugin(tmp_path, '2')}:brittle") == 0
    frame = pd.read_parquet(run / "eval" / "metrics.parquet").set_index("pair_id")
    assert set(frame["status"]) == {"done"} and frame["error"].isna().all()
    assert frame["brittle"].notna().all() and frame[selfsim].notna().all()


def test_a_metric_column_of_nan_only_stays_when_another_metric_is_evaluated(run, tmp_path, capsys):
    nan_plugin = plugin(tmp_path, "2")
    assert evaluate(capsys, run, f"py:{nan_plugin}:undefined") == 0
    frame = pd.read_parquet(run / "eval" / "metrics.parquet")
    assert "undefined" in frame.columns and frame["undefined"].isna().all()
    assert evaluate(capsys, run, CHEAP_METRICS[0]) == 0
    frame = pd.read_parquet(run / "eval" / "metrics.parquet")
    assert "undefined" in frame.columns and frame["undefined"].isna().all() and frame[CHEAP_METRICS[0]].notna().all()
    assert set(frame["undefined__version"]) == {"1"}
    described = json.loads((run / "eval" / "evaluation.json").read_text())["metrics"]
    assert "undefined" in described and CHEAP_METRICS[0] in described
