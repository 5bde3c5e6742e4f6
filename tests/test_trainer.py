"""The per-pair trainer and `splice train`: what a user relies on."""

import json
import signal
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from conftest import TINY_BACKBONE as TINY
from faults import wait_for
from pipeline.method.backbone import load_backbone
from pipeline.method.config import TrainConfig
from pipeline.method.generator import SkipGenerator
from pipeline.method.trainer import TrainingError, train_pair


def make_pair(seed=0, structure_size=(48, 64), appearance_size=(56, 40)):
    """A structure image with clear shapes and an appearance image with different colours."""
    generator = torch.Generator().manual_seed(seed)
    height, width = structure_size
    structure = torch.full((3, height, width), 30, dtype=torch.uint8)
    structure[:, height // 4 : 3 * height // 4, width // 4 : 3 * width // 4] = 220  # a bright square
    structure[1] += (torch.rand(height, width, generator=generator) * 20).to(torch.uint8)
    appearance = (torch.rand(3, *appearance_size, generator=generator) * 255).to(torch.uint8)
    appearance[0] = appearance[0] // 2 + 120  # reddish
    return structure, appearance


def same_losses(first, second):
    """Loss logs are equal, NaN (a term that was off) included."""
    return pd.DataFrame(first).equals(pd.DataFrame(second))


def save_png(path, image):
    Image.fromarray(image.permute(1, 2, 0).numpy()).save(path)
    return str(path)


@pytest.fixture(scope="module")
def backbone():
    return load_backbone(TINY, "cpu")


def test_generator_is_fully_convolutional_at_any_size():
    generator = SkipGenerator()
    for size in [(33, 47), (64, 64), (17, 100)]:
        assert generator(torch.rand(1, 3, *size)).shape == (1, 3, *size)


@pytest.mark.slow
def test_loss_falls_and_output_has_the_structure_images_size(backbone):
    structure, appearance = make_pair(structure_size=(45, 67))
    config = TrainConfig(backbone=TINY, steps=40, log_every=1)
    result = train_pair(structure, appearance, config, backbone, torch.device("cpu"))
    assert result.output.shape == (3, 45, 67) and result.output.dtype == torch.uint8
    totals = [row["total"] for row in result.losses if 0 < row["step"]]
    assert np.mean(totals[-8:]) < 0.6 * np.mean(totals[:8])
    assert result.meta["random_backbone"] and result.meta["weights_id"] == "random"
    assert result.meta["final_losses"]["step"] == 39


@pytest.mark.slow
def test_seeded_runs_are_reproducible(backbone):
    structure, appearance = make_pair()
    config = TrainConfig(backbone=TINY, steps=6, log_every=1)
    first = train_pair(structure, appearance, config, backbone, torch.device("cpu"))
    second = train_pair(structure, appearance, config, backbone, torch.device("cpu"))
    other = train_pair(structure, appearance, config.replace(seed=1), backbone, torch.device("cpu"))
    assert same_losses(first.losses, second.losses)
    assert torch.equal(first.output, second.output)
    assert not same_losses(first.losses, other.losses)


@pytest.mark.slow
def test_resume_from_checkpoint_reaches_the_uninterrupted_result(backbone):
    structure, appearance = make_pair()
    config = TrainConfig(backbone=TINY, steps=12, log_every=2, checkpoint_every=5, full_image_every=4)
    saved = []
    uninterrupted = train_pair(
        structure, appearance, config, backbone, torch.device("cpu"), save_checkpoint=saved.append
    )
    assert [state["step"] for state in saved] == [5, 10]
    resumed = train_pair(structure, appearance, config, backbone, torch.device("cpu"), checkpoint=saved[0])
    assert resumed.meta["resumed_from_step"] == 5
    assert same_losses(resumed.losses, uninterrupted.losses)
    assert torch.equal(resumed.output, uninterrupted.output)


def test_checkpoint_of_other_inputs_is_not_resumed(backbone):
    structure, appearance = make_pair()
    config = TrainConfig(backbone=TINY, steps=6, checkpoint_every=3)
    saved = []
    train_pair(structure, appearance, config, backbone, torch.device("cpu"), save_checkpoint=saved.append)
    other_structure, _ = make_pair(seed=5)
    result = train_pair(other_structure, appearance, config, backbone, torch.device("cpu"), checkpoint=saved[0])
    assert result.meta["resumed_from_step"] == 0


def test_non_finite_loss_stops_the_pair_with_a_clear_error():
    broken = load_backbone(TINY, "cpu")
    broken.vit.blocks[0].attn.qkv.weight.data.fill_(float("nan"))
    structure, appearance = make_pair()
    with pytest.raises(TrainingError, match="non-finite at step 0"):
        train_pair(structure, appearance, TrainConfig(backbone=TINY, steps=3), broken, torch.device("cpu"))


# ---- the command line --------------------------------------------------------------------------------------------
def splice(*args, **kwargs):
    return subprocess.run(
        [sys.executable, "-m", "pipeline", *args], capture_output=True, text=True, timeout=300, **kwargs
    )


@pytest.fixture
def pair_files(tmp_path):
    structure, appearance = make_pair(structure_size=(50, 70))
    return save_png(tmp_path / "structure.png", structure), save_png(tmp_path / "appearance.png", appearance)


@pytest.mark.slow
def test_splice_train_writes_output_meta_and_losses(tmp_path, pair_files):
    out = tmp_path / "out"
    done = splice(
        "train", *pair_files, "-o", str(out), "--backbone", TINY, "--steps", "6", "--log-every", "2", "--no-progress"
    )
    assert done.returncode == 0, done.stderr
    assert "RANDOM weights" in done.stderr
    with Image.open(out / "output.png") as image:
        assert image.size == (70, 50) and image.mode == "RGB"
    meta = json.loads((out / "meta.json").read_text())
    assert meta["weights_id"] == "random" and meta["backbone"] == TINY and meta["config"]["steps"] == 6
    assert meta["device"] == "cpu" and meta["precision"] == "float32" and meta["seconds"] > 0
    assert set(meta["final_losses"]) >= {"total", "appearance", "structure", "identity"}
    losses = pd.read_parquet(out / "losses.parquet")
    assert losses["step"].tolist() == [0, 2, 4, 5]
    assert (out / "_SUCCESS").exists() and not (out / "checkpoint.pt").exists()
    again = splice("train", *pair_files, "-o", str(out), "--backbone", TINY, "--steps", "6")
    assert again.returncode == 0 and "already holds a finished result" in again.stdout


@pytest.mark.slow
def test_interrupted_splice_train_resumes_and_matches_an_uninterrupted_run(tmp_path, pair_files):
    args = [*pair_files, "--backbone", TINY, "--steps", "60", "--checkpoint-every", "10", "--no-progress"]
    reference = tmp_path / "reference"
    assert splice("train", *args, "-o", str(reference)).returncode == 0
    interrupted = tmp_path / "interrupted"
    process = subprocess.Popen(
        [sys.executable, "-m", "pipeline", "train", *args, "-o", str(interrupted)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(
            lambda: (interrupted / "checkpoint.pt").exists() or process.poll() is not None,
            timeout=120,
            interval=0.05,
            what="the first checkpoint",
        )
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    assert (interrupted / "checkpoint.pt").exists() and not (interrupted / "_SUCCESS").exists()
    resumed = splice("train", *args, "-o", str(interrupted))
    assert resumed.returncode == 0, resumed.stderr
    meta = json.loads((interrupted / "meta.json").read_text())
    assert meta["resumed_from_step"] >= 10
    assert (interrupted / "output.png").read_bytes() == (reference / "output.png").read_bytes()
    assert pd.read_parquet(interrupted / "losses.parquet").equals(pd.read_parquet(reference / "losses.parquet"))


@pytest.mark.parametrize("bad", ["truncated", "empty", "text"])
def test_splice_train_bad_input_is_a_clear_error(tmp_path, pair_files, bad):
    path = tmp_path / f"{bad}.jpg"
    content = open(pair_files[0], "rb").read()
    path.write_bytes({"truncated": content[: len(content) // 3], "empty": b"", "text": b"hello"}[bad])
    done = splice("train", str(path), pair_files[1], "-o", str(tmp_path / "out"), "--backbone", TINY, "--steps", "2")
    assert done.returncode == 2
    assert f"{bad}.jpg" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "out" / "output.png").exists()


def test_splice_train_refuses_images_above_max_pixels(tmp_path, pair_files):
    done = splice("train", *pair_files, "-o", str(tmp_path / "out"), "--backbone", TINY, "--max-pixels", "1000")
    assert done.returncode == 2 and "structure.png" in done.stderr and "--max-pixels" in done.stderr


@pytest.mark.slow
def test_splice_train_non_finite_loss_writes_nothing(tmp_path, pair_files, backbone):
    state = {k: v.clone() for k, v in backbone.vit.state_dict().items()}
    state["blocks.0.attn.qkv.weight"].fill_(float("nan"))
    weights = tmp_path / "nan_weights.pth"
    torch.save(state, weights)
    done = splice("train", *pair_files, "-o", str(tmp_path / "out"), "--backbone", f"file:{weights}", "--steps", "3")
    assert done.returncode == 2 and "non-finite" in done.stderr
    assert not (tmp_path / "out" / "output.png").exists()


def test_splice_train_help_explains_every_option():
    done = splice("train", "--help")
    for option in [
        "--preset",
        "--steps",
        "--backbone",
        "--device",
        "--precision",
        "--seed",
        "--max-pixels",
        "--checkpoint-every",
        "--log-every",
        "preview",
        "random:TIMM_ARCH",
        "file:PATH",
    ]:
        assert option in done.stdout


def test_images_too_small_for_the_generator_are_a_clear_error(backbone):
    structure, appearance = make_pair(structure_size=(24, 32))
    with pytest.raises(TrainingError, match="structure image is 32x24 px, below the 36 px"):
        train_pair(structure, appearance, TrainConfig(backbone=TINY, steps=2), backbone, torch.device("cpu"))
    structure, appearance = make_pair(structure_size=(36, 36), appearance_size=(36, 40))
    assert train_pair(
        structure, appearance, TrainConfig(backbone=TINY, steps=2), backbone, torch.device("cpu")
    ).output.shape == (3, 36, 36)
