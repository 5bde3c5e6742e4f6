"""The command line's options: TrainConfig's fields as flags on train/run/demo (NetTrainConfig's on train-net),
--config and --set in a stated precedence, clear errors for unknown keys and bad values, one spelling per concept
on every command (old spellings hidden, with a warning), lists one way, --break-lock wherever a lock is taken,
--version, `python -m pipeline`, and a parser that imports no heavy library."""

from __future__ import annotations

import argparse
import dataclasses
import importlib.metadata
import json
import re
import shlex
import subprocess
import sys

import pytest

from conftest import TINY_BACKBONE
from manifests.builders import build_pairs_dir
from manifests.schema import validate_frame, write_manifest
from pipeline import __version__
from pipeline.cli.main import build_parser, main
from pipeline.config_options import PRECEDENCE, ConfigError, field_kinds, resolve_config
from pipeline.errors import SpliceError
from pipeline.method.config import PRESETS, TrainConfig
from pipeline.method.splicenet_config import NetTrainConfig

TRAINING_COMMANDS = {
    "train": ["train", "s.png", "a.png", "-o", "out"],
    "run": ["run", "m.parquet", "-o", "out"],
    "demo": ["demo"],
    "train-net": ["train-net", "m.parquet", "-o", "out"],
}
CONFIG_OF = {"train": TrainConfig, "run": TrainConfig, "demo": TrainConfig, "train-net": NetTrainConfig}
WRITING_COMMANDS = [
    ["train", "s.png", "a.png"],
    ["run", "m.parquet"],
    ["demo"],
    ["report", "RUN"],
    ["import", "x", "ROOT", "--manifest", "m.parquet"],
    ["manifest", "build", "csv", "f.csv"],
]


def parse(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(list(argv))


def other_value(kind, default):
    """A command-line string for a value unlike `default`, and that value."""
    if kind.choices:
        value = next(c for c in kind.choices if c != default)
        return str(value), value
    if kind.many:
        return "cat,dog", ("cat", "dog")
    if kind.length is not None:
        value = tuple(round(0.5 * x + 0.01, 4) for x in default)
        return ",".join(map(str, value)), value
    if kind.base is int:
        value = (default or 0) + 3
        return str(value), value
    if kind.base is float:
        value = round(default * 0.5 + 0.01, 4)
        return str(value), value
    return "random:vit_tiny_patch16_224", "random:vit_tiny_patch16_224"


# --- every field is an option -------------------------------------------------------------------------------------


@pytest.mark.parametrize("command", sorted(TRAINING_COMMANDS))
def test_every_trainconfig_field_is_settable_by_flag_and_by_set(command):
    base = TRAINING_COMMANDS[command]
    defaults = resolve_config(parse(*base)).config
    assert type(defaults) is CONFIG_OF[command]
    for name, kind in field_kinds(CONFIG_OF[command]).items():
        default = getattr(defaults, name)
        if kind.base is bool:
            flag_argv, expected = [kind.flag if not default else "--no-" + kind.flag[2:]], not default
            set_text = str(expected).lower()
        else:
            set_text, expected = other_value(kind, default)
            flag_argv = [kind.flag, set_text]
        by_flag = resolve_config(parse(*base, *flag_argv))
        by_set = resolve_config(parse(*base, "--set", f"{name}={set_text}"))
        assert getattr(by_flag.config, name) == expected == getattr(by_set.config, name), name
        assert by_flag.explicit == {name} == by_set.explicit
        # nothing else moved
        assert dataclasses.replace(by_flag.config, **{name: default}) == defaults


def test_help_lists_every_field_with_its_description_and_default(capsys):
    for command in ("run", "demo", "train", "train-net"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        text = " ".join(capsys.readouterr().out.split())
        for name, kind in field_kinds(CONFIG_OF[command]).items():
            assert kind.flag in text, (command, name)
            assert kind.help.split()[0] in text
        assert PRECEDENCE.split(" < ", 1)[1] in text and ("--preset" in text) == (command != "train-net")
    # the demo's own defaults are those its help states
    with pytest.raises(SystemExit):
        main(["demo", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    demo = resolve_config(parse("demo")).config
    assert demo.backbone == PRESETS["preview"].backbone and f"(default {demo.steps})" in text


# --- precedence -------------------------------------------------------------------------------------------------


def test_precedence_preset_then_command_then_file_then_set_then_flags(tmp_path):
    config = tmp_path / "settings.json"
    config.write_text(json.dumps({"steps": 7, "lr": 0.1, "seed": 3, "checkpoint_every": 5, "betas": [0.5, 0.9]}))
    argv = [
        "run",
        "m.parquet",
        "-o",
        "o",
        "--preset",
        "preview",
        "--config",
        str(config),
        "--set",
        "steps=8",
        "--set",
        "lr=0.2",
        "--steps",
        "9",
    ]
    resolved = resolve_config(parse(*argv))
    got = resolved.config
    assert got.steps == 9  # flag > --set > file
    assert got.lr == 0.2  # --set > file
    assert got.seed == 3 and got.betas == (0.5, 0.9)  # file > preset
    assert got.checkpoint_every == 5  # file > the command's default (run: 100)
    assert got.backbone == "dino_vits16" and got.max_side == 512  # the preset, where nothing else spoke
    assert resolved.explicit == {"steps", "lr", "seed", "checkpoint_every", "betas"}
    # without the file, run's own default beats the preset's; the demo's steps beat its preset's
    assert resolve_config(parse("run", "m", "-o", "o")).config.checkpoint_every == 100
    assert PRESETS["preview"].steps != resolve_config(parse("demo")).config.steps
    # the file may name the preset; a --preset flag still wins
    config.write_text(json.dumps({"preset": "authors"}))
    assert resolve_config(parse("run", "m", "-o", "o", "--config", str(config))).config.steps == 10000
    assert (
        resolve_config(parse("run", "m", "-o", "o", "--config", str(config), "--preset", "paper")).config.steps == 2000
    )


def test_train_net_precedence_and_a_recorded_train_json_as_config(tmp_path):
    config = tmp_path / "net.json"
    config.write_text(json.dumps({"steps": 7, "lr": 0.1, "domains": ["cat"], "betas": [0.5, 0.9], "demodulate": False}))
    argv = ["train-net", "m", "-o", "o", "--config", str(config), "--set", "steps=8", "--set", "lr=0.2", "--steps", "9"]
    resolved = resolve_config(parse(*argv, "--domain", "dog", "--domain", "wild"))
    got = resolved.config
    assert (got.steps, got.lr, got.betas, got.demodulate) == (9, 0.2, (0.5, 0.9), False)
    assert got.domains == ("dog", "wild")  # the flags' domains replace the file's
    assert resolve_config(parse(*argv)).config.domains == ("cat",)
    assert got.resolution == NetTrainConfig().resolution and resolved.preset is None
    # a train-net output's train.json (its "config") is a config file: the same training again
    record = {"format": "splicenet-train/1", "config": {**NetTrainConfig(steps=5).to_dict(), "domains": ["cat"]}}
    (tmp_path / "train.json").write_text(json.dumps(record))
    again = resolve_config(parse("train-net", "m", "-o", "o", "--config", str(tmp_path / "train.json"))).config
    assert again == NetTrainConfig(steps=5, domains=("cat",))
    with pytest.raises(ConfigError, match="unknown setting 'full_image_every'"):
        resolve_config(parse("train-net", "m", "-o", "o", "--set", "full_image_every=3"))


def test_one_strict_from_dict_for_every_settings_dataclass():
    from pipeline.method.splicenet import SpliceNetConfig
    from pipeline.method.splicenet_batched import SpliceNetOptions

    assert NetTrainConfig.from_dict({"betas": [0, 0.9], "domains": ["cat"], "lr": 1}) == NetTrainConfig(
        betas=(0.0, 0.9), domains=("cat",), lr=1.0
    )
    assert SpliceNetConfig.from_dict({"channels": [1, 2, 3, 4, 5]}).channels == (1, 2, 3, 4, 5)
    assert TrainConfig.from_dict(TrainConfig().to_dict()) == TrainConfig()
    for cls, error in [
        (TrainConfig, ValueError),
        (NetTrainConfig, ValueError),
        (SpliceNetConfig, ValueError),
        (SpliceNetOptions, SpliceError),
    ]:
        with pytest.raises(error, match=r"unknown .*option\(s\) \['stepz'\]"):
            cls.from_dict({"checkpoint": "x", "stepz": 1} if cls is SpliceNetOptions else {"stepz": 1})
    with pytest.raises(SpliceError, match="needs --net URL"):
        SpliceNetOptions.from_dict({})


def test_toml_config_file(tmp_path):
    pytest.importorskip("tomllib")
    config = tmp_path / "ablation.toml"
    config.write_text(
        'steps = 50\nfull_image_every = 10\nappearance_weight = 5\nmax_side = "none"\njitter = [0, 0, 0, 0]\n'
    )
    got = resolve_config(parse("train", "s", "a", "-o", "o", "--config", str(config), "--preset", "preview")).config
    assert (got.steps, got.full_image_every, got.appearance_weight, got.max_side) == (50, 10, 5.0, None)
    assert got.jitter == (0.0, 0.0, 0.0, 0.0)


def test_the_resolved_config_is_what_run_json_and_meta_json_record_and_they_run_again(
    ray_session, tmp_path, make_pairs
):
    manifest = str(tmp_path / "m.parquet")
    write_manifest(validate_frame(build_pairs_dir(make_pairs(["p0"], size=(40, 40))), "test"), manifest)
    config = tmp_path / "c.json"
    config.write_text(json.dumps({"full_image_every": 1, "structure_weight": 2.5, "lr": 0.01}))
    argv = [
        "run",
        manifest,
        "-o",
        str(tmp_path / "run"),
        "--method",
        "splice",
        "--backbone",
        TINY_BACKBONE,
        "--config",
        str(config),
        "--set",
        "steps=2",
        "--log-every",
        "1",
        "--no-progress",
    ]
    expected = resolve_config(parse(*argv)).config
    assert (expected.full_image_every, expected.structure_weight, expected.lr, expected.steps) == (1, 2.5, 0.01, 2)
    assert main(argv) == 0
    record = json.loads((tmp_path / "run" / "run.json").read_text())
    assert TrainConfig.from_dict(record["settings"]) == expected
    meta = json.loads((tmp_path / "run" / "pairs" / "p0" / "meta.json").read_text())
    assert TrainConfig.from_dict(meta["config"]) == expected
    for recorded in ("run.json", "pairs/p0/meta.json"):  # a recorded configuration is a config file
        again = resolve_config(parse("train", "s", "a", "-o", "o", "--config", str(tmp_path / "run" / recorded)))
        assert again.config == expected


# --- errors -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "extra, says",
    [
        (
            ["--set", "lrr=1"],
            ["--set lrr=1", "unknown setting 'lrr'", "did you mean lr?", "valid: backbone, steps, lr"],
        ),
        (["--set", "precision=fp16"], ["--set precision=fp16", "precision", "one of auto, fp32, bf16", "'fp16'"]),
        (["--set", "steps=many"], ["--set steps=many", "steps", "an integer", "'many'"]),
        (["--set", "betas=0.1"], ["--set betas=0.1", "betas", "2 comma-separated numbers"]),
        (["--set", "steps"], ["--set steps", "expected KEY=VALUE"]),
        (["--set", "full_image_every=0"], ["full_image_every must be >= 1, got 0"]),
        (["--flip-p", "2"], ["flip_p must be a probability in [0, 1], got 2.0"]),
    ],
)
def test_bad_settings_are_one_line_errors_naming_the_key(tmp_path, capsys, extra, says):
    code = main(["train", str(tmp_path / "s.png"), str(tmp_path / "a.png"), "-o", str(tmp_path / "o"), *extra])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    for fragment in says:
        assert fragment in err, (fragment, err)


def test_bad_config_files_name_the_file_and_the_key(tmp_path, capsys):
    cases = {
        "unknown.json": ({"setps": 3}, ["unknown setting 'setps'", "did you mean steps?"]),
        "type.json": ({"steps": 2.5}, ["steps", "an integer", "2.5"]),
        "choice.json": ({"precision": "fp8"}, ["precision", "one of auto, fp32, bf16"]),
        "preset.json": ({"preset": "fast"}, ["unknown preset 'fast'", "paper, authors, preview"]),
        "list.json": ([1, 2], ["expected a mapping"]),
    }
    for name, (content, says) in cases.items():
        (tmp_path / name).write_text(json.dumps(content))
        code = main(["run", "m.parquet", "-o", str(tmp_path / "o"), "--config", str(tmp_path / name)])
        err = capsys.readouterr().err
        assert code == 2 and err.count("\n") == 1, err
        assert all(fragment in err for fragment in [name, *says]), err
    (tmp_path / "broken.json").write_text("{steps: 3")
    assert main(["run", "m.parquet", "-o", "o", "--config", str(tmp_path / "broken.json")]) == 2
    assert "not valid JSON" in capsys.readouterr().err
    assert main(["run", "m.parquet", "-o", "o", "--config", str(tmp_path / "absent.json")]) == 2
    assert "absent.json: cannot be read" in capsys.readouterr().err


def test_a_bad_flag_value_is_refused_by_the_parser_with_the_valid_choices(capsys):
    with pytest.raises(SystemExit) as exit_:
        parse("run", "m", "-o", "o", "--precision", "fp16")
    assert exit_.value.code == 2
    assert "--precision: expected one of auto, fp32, bf16, got 'fp16'" in capsys.readouterr().err


# --- one spelling for output, lists one way -------------------------------------------------------------------------


def test_every_writing_command_takes_o_and_out(capsys):
    for argv in WRITING_COMMANDS:
        assert parse(*argv, "-o", "x").out == "x" == parse(*argv, "--out", "x").out, argv
    with pytest.raises(SystemExit):  # required: the error names -o/--out
        parse("report", "RUN")
    assert "required: -o/--out" in capsys.readouterr().err


# one spelling per concept on every command: concept -> (the flag, visible spellings of it that must not be)
CONCEPTS = {
    "where a command writes": ("--out", ["--output", "--output-dir", "--out-dir", "--dest"]),
    "manifest domains": ("--domain", ["--domains"]),
    "a trained SpliceNet": ("--net", ["--checkpoint", "--net-checkpoint", "--splicenet"]),
    "CPUs of a task": ("--cpus-per-task", ["--cpus-per-pair"]),
    "GPUs of a task": ("--gpus-per-task", ["--gpus-per-pack"]),
    "the Ray cluster": ("--address", ["--ray-address", "--cluster"]),
    "storage options": ("--storage-option", ["--storage-options", "--storage"]),
    "metrics": ("--metrics", ["--metric"]),
    "pairs by id": ("--only", ["--pair-ids", "--pair-id"]),
    "taking over a dead command's lock": ("--break-lock", ["--force-lock", "--unlock"]),
    "training settings": ("--set", ["--override", "--setting"]),
}
LOCKING_COMMANDS = [["run", "m", "-o", "o"], ["import", "x", "R", "--manifest", "m", "-o", "o"], ["evaluate", "R"]]
LOCKING_COMMANDS += [["report", "R", "-o", "o"], ["bench", "spec.toml"]]
DEPRECATED = {  # old spelling -> (a command line using it, the attribute, the value, the new spelling)
    "--domains": (["manifest", "build", "afhq", "R", "-o", "m", "--domains", "cat"], "domain", ["cat"], "--domain"),
    "--checkpoint": (["run", "m", "-o", "o", "--checkpoint", "n.pt"], "net", "n.pt", "--net"),
    "--cpus-per-pair": (["run", "m", "-o", "o", "--cpus-per-pair", "2"], "cpus_per_task", 2.0, "--cpus-per-task"),
}


def walk_parsers(parser, path=("splice",)):
    """(command path, its parser) for the program and every command and sub-command."""
    yield " ".join(path), parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from walk_parsers(sub, (*path, name))


def test_every_command_spells_each_concept_one_way():
    seen = {concept: set() for concept in CONCEPTS}
    for path, parser in walk_parsers(build_parser()):
        visible = {flag for action in parser._actions for flag in action.option_strings}
        text = parser.format_help()
        for concept, (flag, others) in CONCEPTS.items():
            seen[concept].update([path] if flag in visible else [])
            for other in others:
                assert other not in visible, f"{path}: {other} is spelled {flag} on every command ({concept})"
                assert not re.search(rf"{re.escape(other)}(?![\w-])", text), f"{path}'s help shows {other}"
    assert all(seen.values()), seen  # each concept's flag exists somewhere
    assert "splice manifest build afhq" in seen["manifest domains"] and "splice train-net" in seen["manifest domains"]
    assert {"splice run", "splice import", "splice evaluate", "splice report"} <= seen[
        "taking over a dead command's lock"
    ]


def test_no_help_shows_default_none(capsys):
    for path, parser in walk_parsers(build_parser()):
        text = parser.format_help()
        assert "default: None" not in text and "(default None)" not in text, path


def test_break_lock_is_one_option_on_every_command_that_locks_and_reaches_the_lock(
    monkeypatch, tmp_path, make_pairs, capsys
):
    from pipeline.cli.options import BREAK_LOCK_HELP

    helps = set()
    for argv in LOCKING_COMMANDS:
        parser = build_parser()
        assert parse(*argv).break_lock is False and parse(*argv, "--break-lock").break_lock is True, argv
        sub = dict(walk_parsers(parser))[f"splice {argv[0]}"]
        helps.update(a.help for a in sub._actions if "--break-lock" in a.option_strings)
    assert helps == {BREAK_LOCK_HELP}
    # it reaches the lock: the lock of a command on another host, renewed just now (so not stale), is taken over
    from datetime import datetime, timezone

    from pipeline.runs import layout

    run = tmp_path / "run"
    run.mkdir()
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    holder = {"token": "t", "host": "elsewhere", "pid": 1, "command": "splice run", "since": now, "heartbeat": now}
    (run / layout.LOCK).write_text(json.dumps(holder))

    def past_the_lock(*args):
        raise SpliceError("past the lock")

    monkeypatch.setattr("pipeline.runs.importer._check_existing", past_the_lock)
    manifest = str(tmp_path / "m.parquet")
    write_manifest(validate_frame(build_pairs_dir(make_pairs(["p0"], size=(40, 40))), "test"), manifest)
    argv = ["import", "x", str(tmp_path / "outputs"), "--manifest", manifest, "-o", str(run)]
    (tmp_path / "outputs").mkdir()
    assert main(argv) == 2
    assert "is locked by another `splice run`" in capsys.readouterr().err
    assert main([*argv, "--break-lock"]) == 2
    assert "past the lock" in capsys.readouterr().err


def test_old_spellings_work_with_a_warning_and_are_not_shown(capsys):
    for old, (argv, attribute, value, new) in DEPRECATED.items():
        assert getattr(parse(*argv), attribute) == value, old
        assert capsys.readouterr().err.strip() == f"warning: {old} is deprecated; use {new}"
        assert getattr(parse(*[new if a == old else a for a in argv]), attribute) == value
        assert capsys.readouterr().err == ""
    assert parse("run", "m", "-o", "o").cpus_per_task == 1.0
    with pytest.raises(SystemExit):  # --output, announced as going, is gone
        parse("report", "RUN", "-o", "r", "--output", "r")
    assert "unrecognized arguments: --output" in capsys.readouterr().err


def test_lists_are_comma_separated_and_key_values_repeat_and_neither_swallows_positionals():
    args = parse("report", "--storage-option", "anon=true", "RUN", "-o", "r", "--group-by", "dataset,domain")
    assert args.runs == ["RUN"] and args.storage_option == ["anon=true"] and args.group_by == ["dataset", "domain"]
    args = parse(
        "run",
        "--only",
        "p1,p2",
        "m.parquet",
        "--only",
        "p3",
        "-o",
        "o",
        "--storage-option",
        "a=1",
        "--storage-option",
        "b=2",
    )
    assert args.manifest == "m.parquet" and args.only == ["p1", "p2", "p3"] and args.storage_option == ["a=1", "b=2"]
    assert parse("evaluate", "--metrics", "selfsim,dino_i", "RUN").metrics == ["selfsim", "dino_i"]
    assert parse("manifest", "build", "afhq", "R", "-o", "m").domain == ["cat", "dog", "wild"]
    assert parse("manifest", "build", "afhq", "R", "-o", "m", "--domain", "cat").domain == ["cat"]  # replaces
    assert parse("train-net", "M", "-o", "o", "--domain", "a,b", "--domain", "c").domains == ("a", "b", "c")


def test_no_option_takes_a_variable_number_of_values():
    def walk(parser, path):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    yield from walk(sub, [*path, name])
            elif action.option_strings:
                yield path, action

    found = list(walk(build_parser(), ["splice"]))
    assert len(found) > 100
    for path, action in found:
        assert action.nargs not in ("+", "*", argparse.REMAINDER), (" ".join(path), action.option_strings)


def test_report_with_a_storage_option_before_the_runs(tmp_path, capsys):
    from synthetic_runs import make_synthetic_runs

    runs = make_synthetic_runs(tmp_path, pairs=2, methods=2, size=32)
    assert main(["report", "--storage-option", "anon=true", *runs, "-o", str(tmp_path / "r"), "--thumbnails", "1"]) == 0
    assert (tmp_path / "r" / "report.html").is_file()


# --- --version, python -m, start-up ---------------------------------------------------------------------------------


def test_version_and_python_dash_m():
    done = subprocess.run(
        [sys.executable, "-m", "pipeline", "--version"], check=False, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0 and done.stdout.strip() == f"splice {__version__}"
    assert __version__ == importlib.metadata.version("splice-pipeline")  # the package's version, not a second copy
    done = subprocess.run(
        [sys.executable, "-m", "pipeline", "run", "--help"], check=False, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0 and "usage: splice run" in done.stdout and "--full-image-every" in done.stdout


def test_building_the_parser_imports_no_heavy_library():
    heavy = ["torch", "torchvision", "timm", "ray", "pandas", "pyarrow", "fsspec", "numpy", "PIL"]
    code = (
        "import sys; from pipeline.cli.main import build_parser; build_parser(); "
        f"print([m for m in {heavy!r} if m in sys.modules])"
    )
    done = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_every_command_in_the_documentation_parses(capsys):
    """The README's and docs' `splice ...` examples use today's spellings, no deprecated one (synopsis lines with [optional] parts
    are not commands and are left out)."""
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    documents = [
        repo / "README.md",
        repo / "manifests" / "README.md",
        repo / "infra" / "README.md",
        *sorted((repo / "docs").glob("*.md")),
    ]
    parser = build_parser()
    commands = []
    for document in documents:
        for language, block in re.findall(r"```([\w-]*)\n(.*?)```", document.read_text(), re.DOTALL):
            if language not in ("", "bash", "sh", "console"):  # e.g. a yaml block: no commands
                continue
            for line in block.replace("\\\n", " ").splitlines():
                found = re.search(r"(?:^|&&\s*|\$\s*)splice\s+(.*)", line.strip())
                if found and "[" not in found.group(1):
                    commands.append((document.name, shlex.split(found.group(1), comments=True)))
    assert len(commands) > 30
    for name, argv in commands:
        try:
            parser.parse_args(argv)
        except SystemExit as exit_:
            assert not exit_.code, f"{name}: splice {' '.join(argv)}: {capsys.readouterr().err.strip()}"
        assert "deprecated" not in capsys.readouterr().err, f"{name}: splice {' '.join(argv)} uses an old spelling"
