"""Real weights by default where they can be had, random ones (said loudly, recorded) only where they cannot, and
`splice weights fetch|status|export` for air-gapped clusters. Offline only: "cached" weights are random tensors
saved in the real files' layout, so every lookup path (SPLICE_WEIGHTS_DIR, caches) is the one users hit."""

from __future__ import annotations

import json
import os

import pytest
import torch

from conftest import TINY_BACKBONE
from faults import finishes_within
from pipeline.cli.main import main
from pipeline.method.backbone import load_backbone
from pipeline.method.weights import WEIGHTS_DIR_ENV, announce_fallback, resolve_backbone

DINO_S16 = "hf/timm/vit_small_patch16_224.dino/model.safetensors"
ALEXNET = "torch/alexnet-owt-7be5be79.pth"


@pytest.fixture
def weights_dir(offline, monkeypatch):
    """A folder as `splice weights export` makes it, holding random DINO ViT-S/16 and AlexNet trunk weights."""
    import timm
    from safetensors.torch import save_file
    from torchvision.models import alexnet

    root = offline / "weights"
    vit = timm.create_model("vit_small_patch16_224", pretrained=False, num_classes=0)
    (root / DINO_S16).parent.mkdir(parents=True)
    save_file({k: v.half().contiguous() for k, v in vit.state_dict().items()}, str(root / DINO_S16))
    trunk = {f"features.{k}": v for k, v in alexnet(weights=None).features.state_dict().items()}
    (root / ALEXNET).parent.mkdir(parents=True)
    torch.save(trunk, root / ALEXNET)
    monkeypatch.setenv(WEIGHTS_DIR_ENV, str(root))
    return root


def test_weights_dir_is_used_offline_by_training_and_metrics(weights_dir):
    backbone = load_backbone("dino_vits16")
    assert not backbone.is_random and backbone.weights_id.startswith("sha256:")
    assert resolve_backbone("dino_vits16", explicit=False) == ("dino_vits16", None)  # found: no fallback

    from evaluation.models import load_lpips

    _, lpips_id = load_lpips("pretrained", "cpu")
    assert lpips_id.endswith("@alexnet-owt-7be5be79.pth")


def test_status_and_export_list_and_copy_what_is_cached(weights_dir, tmp_path, capsys):
    assert main(["weights", "status", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["dino_vits16"]["found"] == WEIGHTS_DIR_ENV and rows["lpips-alexnet"]["found"] == WEIGHTS_DIR_ENV
    assert rows["dino_vitb8"]["found"] == "missing" and rows["dino_vitb8"]["path"] is None
    out = tmp_path / "export"
    assert main(["weights", "export", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "exported 2 weight file(s)" in printed and "dino_vitb8" in printed and f"{WEIGHTS_DIR_ENV}=" in printed
    assert (out / DINO_S16).read_bytes() == (weights_dir / DINO_S16).read_bytes()
    listing = json.loads((out / "weights.json").read_text())
    assert {f["file"] for f in listing["files"]} == {DINO_S16, ALEXNET} and "dino_vitb8" in listing["missing"]
    os.environ[WEIGHTS_DIR_ENV] = str(out)  # the exported folder is a weights folder in its own right
    assert not load_backbone("dino_vits16").is_random


def test_fetch_offline_fails_fast_and_says_what_to_do(offline, monkeypatch, capsys):
    assert finishes_within(10, lambda: main(["weights", "fetch"]), what="fetching weights offline") == 2
    error = capsys.readouterr().err
    assert (
        "could not fetch 6 weight file(s)" in error
        and "splice weights export DIR" in error
        and WEIGHTS_DIR_ENV in error
    )
    # no offline switch, but nothing answers at the weights host
    monkeypatch.delenv("SPLICE_OFFLINE")
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    fetch = lambda: main(["weights", "fetch", "dino_vits16"])  # noqa: E731
    assert finishes_within(10, fetch, what="fetching weights from a host that refuses") == 2
    assert "http://127.0.0.1:9 cannot be reached" in capsys.readouterr().err
    assert main(["weights", "fetch", "dino_vitz9"]) == 2
    assert "unknown weights dino_vitz9" in capsys.readouterr().err


def test_a_default_backbone_that_cannot_be_had_falls_back_to_random_loudly_and_on_record(
    offline, ray_session, tmp_path, capsys, make_pairs
):
    spec, why = resolve_backbone("dino_vitb8", explicit=False)
    assert spec == "random:vit_base_patch8_224" and "cannot be reached" in why and "splice weights fetch" in why
    assert resolve_backbone("dino_vitb8", explicit=True) == ("dino_vitb8", None)  # named: never replaced

    manifest = tmp_path / "m.parquet"
    assert main(["manifest", "build", "pairs-dir", make_pairs(["a"], size=(48, 48)), "-o", str(manifest)]) == 0
    run = tmp_path / "run"
    argv = [
        "run",
        str(manifest),
        "--out",
        str(run),
        "--preset",
        "preview",
        "--steps",
        "1",
        "--no-progress",
        "--checkpoint-every",
        "0",
    ]
    assert main(argv) == 0
    error = capsys.readouterr().err
    assert error.count("R A N D O M   W E I G H T S") == 1 and "random:vit_small_patch16_224" in error
    record = json.loads((run / "run.json").read_text())
    assert record["backbone"] == "random:vit_small_patch16_224" and "dino_vits16" in record["backbone_fallback"]
    assert json.loads((run / "pairs" / "a" / "meta.json").read_text())["random_backbone"]
    # the report says so too
    from evaluation.evaluate import evaluate_run
    from evaluation.models import EvalSettings
    from evaluation.report.build import build_report

    evaluate_run(str(run), EvalSettings(metrics=("selfsim",), metric_backbone=TINY_BACKBONE), progress=False)
    build_report([str(run)], str(tmp_path / "report"), thumbnails=0)
    assert "splice was run with RANDOM backbone weights" in (tmp_path / "report" / "tables.md").read_text()
    assert "RANDOM backbone weights" in (tmp_path / "report" / "report.html").read_text()
    # a named backbone that cannot be had is an error, not a fallback
    assert main([*argv, "--backbone", "dino_vitb8", "--out", str(tmp_path / "named")]) == 1
    captured = capsys.readouterr()
    assert "dino_vitb8" in captured.err and "R A N D O M" not in captured.err  # the pair's one failure line
    named = json.loads((tmp_path / "named" / "run.json").read_text())
    assert named["backbone"] == "dino_vitb8" and named["backbone_fallback"] is None


def test_demo_metrics_fall_back_to_random_where_weights_cannot_be_had(offline, capsys):
    from pipeline.cli.demo_job import demo_eval_settings

    settings = demo_eval_settings("dino_vits16")
    assert settings.backbone_specs()["vitb8"] == "random:vit_base_patch8_224"  # what the default metrics use
    assert settings.lpips_weights == "random" and settings.segmenter == "random:deeplabv3_mobilenet_v3_large"
    error = capsys.readouterr().err
    assert "lpips_structure" in error and "layout_miou" in error
    announce_fallback(
        "metric lpips_structure: the AlexNet weights are not in SPLICE_WEIGHTS_DIR nor the torch cache "
        "and cannot be downloaded: using RANDOM weights (labelled in the tables)"
    )
    assert capsys.readouterr().err == ""  # once per process
    assert demo_eval_settings(TINY_BACKBONE).backbone_specs()["vitb8"] == TINY_BACKBONE
