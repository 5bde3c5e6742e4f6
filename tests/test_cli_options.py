"""The command line's options: TrainConfig's fields as flags on train/run/demo, --config and --set in a stated
precedence, clear errors for unknown keys and bad values, one spelling of -o/--out, lists one way, --version,
`python -m pipeline`, and a parser that imports no heavy library."""

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
from pipeline.cli.config_options import PRECEDENCE, field_kinds, resolve_config
from pipeline.cli.main import build_parser, main
from pipeline.method.config import PRESETS, TrainConfig

TRAINING_COMMANDS = {
    "train": ["train", "s.png", "a.png", "-o", "out"],
    "run": ["run", "m.parquet", "-o", "out"],
    "demo": ["demo"],
}
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
    for name, kind in field_kinds(TrainConfig).items():
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
    for command in ("run", "demo", "train"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        text = " ".join(capsys.readouterr().out.split())
        for name, kind in field_kinds(TrainConfig).items():
            assert kind.flag in text, (command, name)
            assert kind.help.split()[0] in text
        assert PRECEDENCE in text
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


def test_the_old_output_spelling_still_works_with_a_warning_and_is_not_shown(capsys):
    assert parse("report", "RUN", "--output", "r").out == "r"
    assert parse("manifest", "build", "csv", "f.csv", "--output=m.parquet").out == "m.parquet"
    assert capsys.readouterr().err.count("warning: --output is deprecated; use -o/--out") == 2
    with pytest.raises(SystemExit):
        main(["report", "--help"])
    assert "--output" not in capsys.readouterr().out


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
    assert parse("manifest", "build", "afhq", "R", "-o", "m").domains == ["cat", "dog", "wild"]
    assert parse("manifest", "build", "afhq", "R", "-o", "m", "--domains", "cat").domains == ["cat"]  # replaces


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
    """The README's and docs' `splice ...` examples use today's spellings (synopsis lines with [optional] parts
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
