"""`splice bench SPEC.toml`: the spec's schema and errors, the read-only plan (dry run), the estimate, and a tiny CPU
spec end to end (generated 48x64 images, the tiny random backbone, 2-3 steps): a re-run that does nothing, an
edited method that re-runs alone, a failing method that leaves the rest of the table, a dry run whose plan matches
what then runs, and a spec whose output is a (moto) S3 bucket."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from conftest import TINY_BACKBONE
from pipeline.bench.spec import SpecError, load_spec, parse_spec, settings_fingerprint

REPO = Path(__file__).resolve().parents[1]

TINY_SPEC = """
name = "tiny"
out = "out"
metrics = ["selfsim"]
reference = "splice-tiny"

[evaluation]
metric_backbone = "{backbone}"
device = "cpu"
batch_size = 4

[run]
concurrency = 4

[datasets.shapes]
builder = "pairs-dir"
root = "pairs"

[methods.splice-tiny]
set = ["steps={steps}", "backbone={backbone}", "log_every=1"]

[methods.colour]
method = "color-transfer"

[methods.copy]
method = "structure-copy"
{extra}
[[published]]
method = "Splice"
metric = "selfsim"
value = 0.030
source = "Ctrl-X (Lin et al. 2024), Table 1"
protocol = "0"
"""

FAILING = """
[methods.boom]
method = "py:boom.py:boom"
"""


def write_spec(folder: Path, steps: int = 2, extra: str = "") -> str:
    path = folder / "spec.toml"
    path.write_text(TINY_SPEC.format(backbone=TINY_BACKBONE, steps=steps, extra=extra))
    return str(path)


@pytest.fixture
def tiny(tmp_path, make_pairs):
    """A folder with two generated pairs and the tiny spec over them; returns the folder."""
    make_pairs(["p0", "p1"])
    (tmp_path / "boom.py").write_text("def boom(structure, appearance, config):\n    raise RuntimeError('boom')\n")
    write_spec(tmp_path)
    return tmp_path


# --- the spec -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            ("[methods.colour]", '[methods.splice-paper]\npreset = "papr"\n[methods.colour]'),
            "spec.toml: methods.splice-paper.preset: unknown preset 'papr' (one of: paper, authors, preview)",
        ),
        (
            ('method = "color-transfer"', 'method = "colour-transfer"'),
            "spec.toml: methods.colour.method: unknown method",
        ),
        (('"log_every=1"', '"lrr=1"'), "spec.toml: methods.splice-tiny.set: lrr=1: unknown setting 'lrr' (did you"),
        (('builder = "pairs-dir"', 'builder = "pairs"'), "spec.toml: datasets.shapes.builder: unknown builder 'pairs'"),
        (('reference = "splice-tiny"', 'reference = "splice"'), "spec.toml: reference: 'splice' is not a method"),
        (('metrics = ["selfsim"]', 'metrics = ["selfsym"]'), "spec.toml: metrics[0]: unknown metric"),
        (('root = "pairs"', 'root = "pairs"\nsplit = "val"'), "spec.toml: datasets.shapes.split: unknown key"),
        (("batch_size = 4", "batch_size = 0"), "spec.toml: evaluation.batch_size: must be at least 1, got 0"),
        (("value = 0.030", 'value = "low"'), "spec.toml: published[0].value: expected an integer or a number"),
        (("concurrency = 4", "concurrenc = 4"), "spec.toml: run.concurrenc: unknown key (did you mean concurrency?)"),
        (
            ('method = "structure-copy"', 'method = "splicenet"'),
            "spec.toml: methods.copy.net: missing: method splicenet",
        ),
        (
            ('method = "structure-copy"', 'method = "structure-copy"\nnet = "n"'),
            "spec.toml: methods.copy.net: applies to",
        ),
    ],
)
def test_a_bad_spec_is_one_line_naming_the_key(tmp_path, change, message):
    text = Path(write_spec(tmp_path)).read_text().replace(*change)
    with pytest.raises(SpecError) as error:
        parse_spec(text.encode(), str(tmp_path / "spec.toml"))
    assert str(error.value).startswith(message), str(error.value)
    assert "\n" not in str(error.value)


def test_settings_resolve_as_splice_run_and_name_the_run_folder(tiny):
    from pipeline.bench.spec import RUN_CHECKPOINT_EVERY as BENCH_CHECKPOINT_EVERY
    from pipeline.cli.run import RUN_CHECKPOINT_EVERY

    assert BENCH_CHECKPOINT_EVERY == RUN_CHECKPOINT_EVERY
    spec = load_spec(write_spec(tiny))
    splice = spec.methods["splice-tiny"]
    assert (splice.config.steps, splice.config.backbone, splice.config.lr) == (2, TINY_BACKBONE, 2e-3)  # paper preset
    assert splice.config.checkpoint_every == RUN_CHECKPOINT_EVERY and "backbone" in splice.explicit
    assert spec.out == str(tiny / "out") and spec.datasets["shapes"].args["root"] == str(tiny / "pairs")
    edited = load_spec(write_spec(tiny, steps=3))
    before = {name: settings_fingerprint(m) for name, m in spec.methods.items()}
    after = {name: settings_fingerprint(m) for name, m in edited.methods.items()}
    assert [name for name in before if before[name] != after[name]] == ["splice-tiny"]  # the edited method only
    net = (
        Path(write_spec(tiny)).read_text().replace('method = "structure-copy"', 'method = "splicenet"\nnet = "nets/a"')
    )
    options = parse_spec(net.encode(), str(tiny / "spec.toml")).methods["copy"].options
    assert options == {"checkpoint": str(tiny / "nets" / "a")}  # as `splice run --net`, relative to the spec
    quieter = Path(write_spec(tiny)).read_text().replace('"log_every=1"', '"log_every=5"')
    assert (
        settings_fingerprint(parse_spec(quieter.encode(), str(tiny / "spec.toml")).methods["splice-tiny"])
        == (before["splice-tiny"])
    )  # a setting a run may change between invocations does not make another run


def test_the_example_specs_parse():
    for name in ("afhq.toml", "wild-pairs.toml"):
        spec = load_spec(str(REPO / "benchmarks" / "specs" / name))
        assert spec.reference in spec.methods and spec.datasets


# --- the plan and the estimate (no Ray, nothing written) ------------------------------------------------------


def test_dry_run_plans_everything_writes_nothing_and_estimates(tiny, capsys):
    from pipeline.cli.main import main

    assert main(["bench", str(tiny / "spec.toml"), "--dry-run"]) == 0
    printed = capsys.readouterr().out
    assert not (tiny / "out").exists()  # no manifest, no folder, no lock
    assert "shapes: 2 pair(s), manifest to write" in printed
    for method in ("splice-tiny", "colour", "copy"):
        assert f"shapes/{method}: run to do: 2 of 2 pair(s) | evaluation to do: 2 pair(s)" in printed
    assert "shapes/splice-tiny: 2 pair(s) in 2 pack(s) of up to 1, 4 pair-steps" in printed
    assert "CPU-hours; wall time" in printed
    # another cluster: the table's GPU rows, marked as estimates
    assert main(["bench", str(tiny / "spec.toml"), "--dry-run", "--gpus", "8", "--device", "h100"]) == 0
    printed = capsys.readouterr().out
    assert "8 GPU(s) (h100)" in printed and "GPU-hours" in printed and "ESTIMATE" in printed


def test_splice_run_dry_run_says_the_same_for_one_run(tiny, capsys):
    from manifests.builders import build_pairs_dir
    from manifests.schema import validate_frame, write_manifest
    from pipeline.cli.main import main

    manifest = str(tiny / "m.parquet")
    write_manifest(validate_frame(build_pairs_dir(str(tiny / "pairs")), "test"), manifest)
    out = tiny / "run"
    args = ["run", manifest, "--out", str(out), "--backbone", TINY_BACKBONE, "--steps", "5", "--dry-run"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "run to do: 2 of 2 pair(s)" in printed and "2 pair(s) in 2 pack(s) of up to 1, 10 pair-steps" in printed
    assert "CPU-hours; wall time" in printed and not out.exists()


def test_cost_table_rows_say_where_they_come_from():
    from pipeline.bench.cost import backbone_family, gpu_kind, load_table, table_rate

    table = load_table()
    assert all(row.get("source") and len(row["s_per_pair_step"]) == 2 for row in table["train"])
    assert all(row["measured"] or row["source"].startswith("ESTIMATE") for row in table["train"])
    assert backbone_family("dino_vitb8") == "vit_base_patch8" and backbone_family(TINY_BACKBONE) == "vit_tiny_patch16"
    assert gpu_kind("NVIDIA H100 80GB HBM3") == "h100" and gpu_kind("H100") == "h100"
    rate = table_rate(table, "cpu", "vit_tiny_patch16", 128, 1)
    assert rate.measured and rate.low < rate.high


def test_published_rows_stay_out_of_our_statistics_and_warn_on_protocol():
    from evaluation.report import published
    from pipeline.bench.spec import Published

    rows = [
        Published("Splice", None, "selfsim", 0.030, "Ctrl-X, Table 1", "0"),
        Published("Splice", None, "dino_i", 0.907, "Ctrl-X, Table 1", "2"),
    ]
    warnings = published.protocol_warnings(rows)
    assert len(warnings) == 1 and "protocol version 0, ours computes version 1" in warnings[0]
    text = published.markdown(rows, ["selfsim", "dino_i"])
    assert "## Published numbers" in text and "| Splice (published) | 0.030 | 0.907 | Ctrl-X, Table 1 |" in text
    assert "published (not measured here)" in published.csv(rows)


# --- end to end (real Ray, slow) ------------------------------------------------------------------------------


def stamps(folder: Path) -> dict[str, int]:
    """mtime of every run table and marker under `folder`: what a run or evaluation would rewrite."""
    names = ("run.json", "results.parquet", "metrics.parquet", "_SUCCESS", "evaluation.json")
    return {str(p): p.stat().st_mtime_ns for p in folder.rglob("*") if p.name in names}


@pytest.mark.slow
def test_bench_end_to_end_rerun_edit_and_a_failing_method(ray_session, tiny, capsys):
    from pipeline.bench.dry_run import bench_dry_run
    from pipeline.bench.execute import run_bench

    # 1. the dry run's plan is what then runs
    spec = load_spec(str(tiny / "spec.toml"))
    plan, _ = bench_dry_run(spec)
    planned = {run.label for run in plan.runs if run.state != "done"}
    summary = run_bench(spec)
    assert summary.exit_code == 0, summary.lines()
    assert {o.label for o in summary.worked("run")} == planned == {"shapes/splice-tiny", "shapes/colour", "shapes/copy"}
    assert {o.label for o in summary.worked("evaluate")} == planned
    report = tiny / "out" / "report"
    tables = (report / "shapes" / "tables.md").read_text()
    assert "| splice-tiny |" in tables and "| colour |" in tables and "| copy |" in tables
    assert "Splice (published)" in tables and "protocol version 0, ours computes version 1" in tables
    record = json.loads((tiny / "out" / "bench.json").read_text())
    assert record["spec"]["sha256"] == spec.sha256 and record["versions"]["torch"] and len(record["runs"]) == 3
    assert (report / "index.html").exists() and "shapes" in (report / "tables.csv").read_text()

    # 2. a re-run does nothing: every step skipped, no run table rewritten
    before = stamps(tiny / "out")
    again = run_bench(load_spec(str(tiny / "spec.toml")))
    assert again.exit_code == 0 and again.worked() == [], [o.line() for o in again.worked()]
    assert stamps(tiny / "out") == before

    # 3. an edited method re-runs alone (its old folder superseded, kept); a failing method leaves the rest
    edited = load_spec(write_spec(tiny, steps=3, extra=FAILING))
    plan, _ = bench_dry_run(edited)
    states = {run.method.name: run.state for run in plan.runs}
    assert states == {"splice-tiny": "to do", "colour": "done", "copy": "done", "boom": "to do"}
    old = Path(summary.runs["shapes/splice-tiny"]).name
    assert next(r for r in plan.runs if r.method.name == "splice-tiny").superseded == [old]
    third = run_bench(edited)
    assert {o.label for o in third.worked("run")} == {"shapes/splice-tiny", "shapes/boom"}
    assert third.exit_code == 1 and [o.label for o in third.missing] == ["shapes/boom"]
    assert "run      shapes/boom: incomplete (0 done (0 before), 2 failed" in "\n".join(third.lines())
    tables = (report / "shapes" / "tables.md").read_text()
    for method in ("splice-tiny", "colour", "copy", "boom"):
        assert f"| {method} |" in tables
    assert (tiny / "out" / "runs" / "shapes" / old / "run.json").exists()

    # 4. a damaged output: the dry run says so, and the bench redoes that pair (the run folder's own rule)
    copy = Path(third.runs["shapes/copy"])
    (copy / "pairs" / "p0" / "output.png").write_bytes(b"cut")
    plan, _ = bench_dry_run(edited)
    damaged = next(run for run in plan.runs if run.method.name == "copy")
    assert (damaged.state, damaged.damaged, damaged.todo_ids) == ("damaged", 1, ["p0"])
    fourth = run_bench(edited)
    assert {o.label for o in fourth.worked("run")} == {"shapes/copy", "shapes/boom"}
    assert "shapes/copy" not in [o.label for o in fourth.missing]


@pytest.mark.slow
def test_bench_on_an_s3_bucket(ray_session, s3_bucket, tmp_path, make_pairs, monkeypatch):
    from pipeline.bench.execute import run_bench

    make_pairs(["s0", "s1"])
    options = "\n".join(f'{k} = "{v}"' for k, v in s3_bucket.options.items())
    text = f"""
out = "{s3_bucket.url("bench")}"
metrics = ["selfsim"]
[storage_options]
{options}
[evaluation]
metric_backbone = "{TINY_BACKBONE}"
device = "cpu"
[datasets.shapes]
builder = "pairs-dir"
root = "pairs"
[methods.copy]
method = "structure-copy"
"""
    (tmp_path / "s3.toml").write_text(text)
    summary = run_bench(load_spec(str(tmp_path / "s3.toml")))
    assert summary.exit_code == 0, summary.lines()
    fs = s3_bucket.fs()
    record = fs.cat_file(f"{s3_bucket.bucket}/bench/bench.json").decode()
    assert s3_bucket.options["secret"] not in record and json.loads(record)["exit_code"] == 0
    assert fs.exists(f"{s3_bucket.bucket}/bench/report/shapes/report.html")
    assert fs.exists(f"{s3_bucket.bucket}/bench/manifests/shapes.parquet")
    again = run_bench(load_spec(str(tmp_path / "s3.toml")))
    assert again.worked() == [], [o.line() for o in again.worked()]
    assert os.environ.get("RAY_ADDRESS") is None  # the bench used the test session's Ray, started nothing


@pytest.mark.slow
def test_bench_break_lock_takes_over_a_dead_commands_lock(ray_session, tmp_path, make_pairs):
    from datetime import datetime, timezone

    from pipeline.bench.dry_run import bench_dry_run
    from pipeline.bench.execute import run_bench
    from pipeline.runs import layout

    make_pairs(["p0"])
    (tmp_path / "copy.toml").write_text(
        'out = "out"\nmetrics = ["selfsim"]\n[evaluation]\n'
        f'metric_backbone = "{TINY_BACKBONE}"\ndevice = "cpu"\n'
        '[datasets.shapes]\nbuilder = "pairs-dir"\nroot = "pairs"\n[methods.copy]\nmethod = "structure-copy"\n'
    )
    spec = load_spec(str(tmp_path / "copy.toml"))
    run = Path(bench_dry_run(spec)[0].runs[0].url)
    run.mkdir(parents=True)
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")  # renewed just now, on another host: not stale
    holder = {"token": "t", "host": "elsewhere", "pid": 1, "command": "splice run", "since": now, "heartbeat": now}
    (run / layout.LOCK).write_text(json.dumps(holder))
    held = run_bench(spec)
    assert held.exit_code == 1 and "shapes/copy" in [o.label for o in held.missing], held.lines()
    assert "run again with --break-lock" in "\n".join(held.lines())
    taken = run_bench(spec, break_lock=True)
    assert taken.exit_code == 0, taken.lines()
    assert (run / "pairs" / "p0" / layout.SUCCESS).exists()
