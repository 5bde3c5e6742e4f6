"""SpliceNet inference: `splice run --method splicenet`, `--appearance-strength`, `splice splicenet modes`.

A randomly initialised SpliceNet (width 1/16) over the tiny random backbone, saved with the model module's own
save_net: no training needed. Tiny images, odd sizes among them; the shared local Ray session.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from conftest import TINY_BACKBONE, tiny_image_bytes
from manifests.schema import validate_frame, write_manifest
from pipeline.cli.main import main
from pipeline.method.appearance_modes import kmeans
from pipeline.method.backbone import load_backbone
from pipeline.method.images import decode_image
from pipeline.method.splicenet import SpliceNet, SpliceNetConfig, save_net
from pipeline.method.splicenet_apply import cls_codes, transfer

CODE_DIM = 192  # vit_tiny's [CLS]
SIZES = {"p0": (48, 64), "p1": (48, 64), "p2": (37, 53), "p3": (33, 33)}  # (h, w) of each structure image


def tiny_net(seed: int = 0) -> SpliceNet:
    torch.manual_seed(seed)
    return SpliceNet(SpliceNetConfig(width=1 / 16, code_dim=CODE_DIM)).eval()


def write_checkpoint(folder: Path, seed: int = 0, backbone: str = TINY_BACKBONE) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    save_net(tiny_net(seed), str(folder / "net.pt"), backbone=backbone, resolution=64, step=0, domains=["cat"])
    return folder


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """(manifest path, checkpoint folder, folder) over four pairs of different sizes."""
    root = tmp_path_factory.mktemp("splicenet")
    rows = []
    for index, (pair_id, size) in enumerate(SIZES.items()):
        structure, appearance = root / "images" / f"{pair_id}_s.png", root / "images" / f"{pair_id}_a.png"
        structure.parent.mkdir(exist_ok=True)
        structure.write_bytes(tiny_image_bytes(size, seed=2 * index))
        appearance.write_bytes(tiny_image_bytes((40, 56), seed=2 * index + 1))
        rows.append(
            {"pair_id": pair_id, "structure_uri": str(structure), "appearance_uri": str(appearance), "domain": "cat"}
        )
    manifest = root / "manifest.parquet"
    write_manifest(validate_frame(pd.DataFrame(rows), "test"), str(manifest))
    return manifest, write_checkpoint(root / "train"), root


@pytest.fixture(scope="module")
def first_run(inputs, ray_session):
    """One `splice run --method splicenet` (pack auto) shared by the tests that read a finished run."""
    manifest, checkpoint, root = inputs
    out = root / "run"
    assert run_splicenet(manifest, out, checkpoint) == 0
    return out


def run_splicenet(manifest, out, checkpoint, *extra: str) -> int:
    """`splice run MANIFEST --out OUT --method splicenet --net CHECKPOINT [extra]` -> its exit code."""
    args = ["run", str(manifest), "--out", str(out), "--method", "splicenet", "--net", str(checkpoint)]
    return main([*args, *extra, "--no-progress"])


def outputs(run: Path) -> dict[str, np.ndarray]:
    return {p: np.asarray(Image.open(run / "pairs" / p / "output.png")) for p in SIZES}


def test_run_writes_the_standard_layout_that_status_and_evaluate_read(first_run, inputs, capsys):
    _, checkpoint, _ = inputs
    results = pd.read_parquet(first_run / "results.parquet").set_index("pair_id")
    assert (results["status"] == "done").all() and len(results) == len(SIZES)
    for pair_id, size in SIZES.items():
        folder = first_run / "pairs" / pair_id
        assert {"output.png", "meta.json", "_SUCCESS"} <= {f.name for f in folder.iterdir()}
        assert Image.open(folder / "output.png").size == (size[1], size[0])  # the structure's size, odd ones too
        meta = json.loads((folder / "meta.json").read_text())
        assert meta["method"] == "splicenet" and meta["device"] == "cpu" and meta["seconds"] > 0
        assert meta["appearance_strength"] == 1.0 and meta["checkpoint_sha256"].startswith("sha256:")
    packs = [json.loads((first_run / "pairs" / p / "meta.json").read_text())["pack_size"] for p in SIZES]
    assert max(packs) == 2  # batched: the two 48x64 pairs went through the net together (pack auto on 2 CPUs)
    record = json.loads((first_run / "run.json").read_text())
    assert record["method"] == "splicenet" and record["backbone"] == TINY_BACKBONE
    assert record["settings"]["checkpoint"] == str(checkpoint / "net.pt")
    assert record["settings"]["checkpoint_sha256"] == meta["checkpoint_sha256"]

    capsys.readouterr()
    assert main(["status", str(first_run), "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert (status["method"], status["done"], status["failed"]) == ("splicenet", len(SIZES), 0)
    assert (
        main(
            [
                "evaluate",
                str(first_run),
                "--metrics",
                "selfsim,dino_i",
                "--metric-backbone",
                TINY_BACKBONE,
                "--no-progress",
            ]
        )
        == 0
    )
    metrics = pd.read_parquet(first_run / "eval" / "metrics.parquet")
    assert sorted(metrics["pair_id"]) == sorted(SIZES) and metrics["selfsim"].notna().all()


def test_outputs_are_deterministic_and_do_not_depend_on_the_batch(first_run, inputs, tmp_path):
    manifest, checkpoint, _ = inputs
    again, alone = tmp_path / "again", tmp_path / "alone"
    assert run_splicenet(manifest, again, checkpoint / "net.pt") == 0
    assert run_splicenet(manifest, alone, checkpoint, "--pack", "1") == 0
    first, second, single = outputs(first_run), outputs(again), outputs(alone)
    for pair_id in SIZES:
        assert np.array_equal(first[pair_id], second[pair_id]), pair_id  # same settings: the same bytes
        difference = np.abs(first[pair_id].astype(int) - single[pair_id].astype(int)).max()
        assert difference <= 1, (pair_id, difference)  # batched or alone: the same up to rounding
    assert json.loads((alone / "pairs" / "p0" / "meta.json").read_text())["pack_size"] == 1


def test_a_rerun_skips_done_pairs_and_another_checkpoint_or_strength_is_another_run(
    first_run, inputs, tmp_path, capsys
):
    manifest, checkpoint, _ = inputs
    capsys.readouterr()
    assert run_splicenet(manifest, first_run, checkpoint) == 0
    assert f"{len(SIZES)} done ({len(SIZES)} skipped as already done)" in capsys.readouterr().out
    other = write_checkpoint(tmp_path / "other", seed=1)
    assert run_splicenet(manifest, first_run, other) == 2
    assert "checkpoint_sha256" in capsys.readouterr().err  # not silently mixed into the finished run
    assert run_splicenet(manifest, first_run, checkpoint, "--appearance-strength", "0.5") == 2
    assert "appearance_strength" in capsys.readouterr().err


def test_a_checkpoint_in_object_storage_is_read_through_the_storage_options(first_run, inputs, s3_bucket, tmp_path):
    manifest, checkpoint, _ = inputs
    s3_bucket.fs().put_file(str(checkpoint / "net.pt"), f"{s3_bucket.bucket}/nets/cat/net.pt")
    options = [flag for key, value in s3_bucket.options.items() for flag in ("--storage-option", f"{key}={value}")]
    out = tmp_path / "from-s3"
    assert run_splicenet(manifest, out, s3_bucket.url("nets", "cat"), *options) == 0
    assert all(np.array_equal(a, b) for a, b in zip(outputs(first_run).values(), outputs(out).values()))
    record = (out / "run.json").read_text()
    assert s3_bucket.url("nets", "cat", "net.pt") in record and s3_bucket.options["secret"] not in record


def test_appearance_strength_zero_feeds_the_structures_own_cls_code():
    backbone = load_backbone(TINY_BACKBONE)
    net = tiny_net()
    fed = []
    net.register_forward_pre_hook(lambda module, args: fed.append(args[1].clone()))
    structures = [
        decode_image(tiny_image_bytes(size, seed=n), "test") for n, size in enumerate([(48, 64), (48, 64), (37, 53)])
    ]
    appearances = [torch.flip(image, dims=[-1]).roll(7, dims=-2) for image in structures]
    own, theirs = (
        cls_codes(backbone, structures, torch.device("cpu")),
        cls_codes(backbone, appearances, torch.device("cpu")),
    )
    assert not torch.allclose(own, theirs)  # the check below can tell the two apart

    def codes_fed(strength: float) -> torch.Tensor:
        fed.clear()
        outputs = transfer(net, backbone, structures, appearances, torch.device("cpu"), strength=strength)
        assert [tuple(o.shape[-2:]) for o in outputs] == [tuple(s.shape[-2:]) for s in structures]
        assert [len(codes) for codes in fed] == [2, 1]  # one forward pass per structure size, in first-seen order
        return torch.cat(fed)

    assert torch.equal(codes_fed(0.0), own)  # exactly the structure's own [CLS]
    assert torch.equal(codes_fed(1.0), theirs)
    assert torch.allclose(codes_fed(0.25), 0.75 * own + 0.25 * theirs, atol=1e-6)


def test_net_resolution_runs_the_net_at_that_scale_and_returns_the_structures_size():
    backbone, net = load_backbone(TINY_BACKBONE), tiny_net()
    shapes = []
    net.register_forward_pre_hook(lambda module, args: shapes.append(tuple(args[0].shape[-2:])))
    structures = [decode_image(tiny_image_bytes(size, seed=n), "test") for n, size in enumerate([(48, 64), (37, 53)])]
    outputs = transfer(net, backbone, structures, structures[::-1], torch.device("cpu"), short_side=32)
    assert shapes == [(32, 43), (32, 46)]  # short side 32, aspect kept
    assert [tuple(o.shape) for o in outputs] == [(3, 48, 64), (3, 37, 53)]  # resized back to each structure


@pytest.mark.parametrize("problem", ["missing", "garbage", "other_format", "backbone", "method", "strength"])
def test_bad_checkpoint_or_options_give_one_clear_error_before_any_work(problem, inputs, tmp_path, capsys):
    manifest, checkpoint, _ = inputs
    target = tmp_path / "ckpt"
    target.mkdir()
    args = ["--method", "splicenet", "--net", str(target)]
    if problem == "missing":
        expected = f"{target / 'net.pt'} does not exist"
    elif problem == "garbage":
        (target / "net.pt").write_bytes(b"not a checkpoint at all")
        expected = f"{target / 'net.pt'}: not a readable SpliceNet checkpoint"
    elif problem == "other_format":
        torch.save({"format": "something/2", "weights": torch.zeros(2)}, target / "net.pt")
        expected = f"{target / 'net.pt'}: format 'something/2' is not a SpliceNet checkpoint"
    elif problem == "backbone":
        args = ["--method", "splicenet", "--net", str(checkpoint), "--backbone", "random:vit_small_patch16_224"]
        expected = f"was trained on [CLS] codes of backbone {TINY_BACKBONE}"
    elif problem == "method":
        args = ["--method", "structure-copy", "--net", str(checkpoint)]
        expected = "--net apply to --method splicenet only"
    else:
        args = ["--method", "splicenet", "--net", str(checkpoint), "--appearance-strength", "1.5"]
        expected = "--appearance-strength must be between 0"
    out = tmp_path / "run"
    capsys.readouterr()
    assert main(["run", str(manifest), "--out", str(out), *args, "--no-progress"]) == 2
    error = capsys.readouterr().err
    assert expected in error and len(error.strip().splitlines()) == 1, error
    assert not out.exists()  # nothing started


def test_kmeans_finds_separated_modes_deterministically():
    generator = torch.Generator().manual_seed(3)
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    points = torch.cat([c + 0.3 * torch.randn(20 + 5 * n, 2, generator=generator) for n, c in enumerate(centres)])
    modes = kmeans(points, 3, seed=0)
    truth = torch.repeat_interleave(torch.arange(3), torch.tensor([20, 25, 30]))
    for n in range(3):  # every blob is one mode, whichever number it got
        assert len(set(modes.labels[truth == n].tolist())) == 1
    assert sorted(modes.counts.tolist()) == [20, 25, 30]
    assert all(modes.labels[modes.nearest[m]] == m for m in range(3))  # each mode's nearest point is its own
    again = kmeans(points, 3, seed=0)
    assert torch.equal(again.centres, modes.centres) and torch.equal(again.labels, modes.labels)
    with pytest.raises(ValueError, match="k must be between 1 and the number of points"):
        kmeans(points[:2], 3)


def test_modes_writes_k_centres_deterministically_and_a_grid(inputs, tmp_path, capsys):
    manifest, checkpoint, root = inputs
    structure = root / "images" / "p2_s.png"
    for name in ("a", "b"):
        assert (
            main(
                [
                    "splicenet",
                    "modes",
                    str(checkpoint),
                    str(manifest),
                    "-k",
                    "3",
                    "-o",
                    str(tmp_path / name),
                    "--structure",
                    str(structure),
                    "--device",
                    "cpu",
                ]
            )
            == 0
        )
    assert "3 appearance modes of 8 image(s)" in capsys.readouterr().out
    first, second = (torch.load(tmp_path / n / "modes.pt", weights_only=True) for n in ("a", "b"))
    assert first["centres"].shape == (3, CODE_DIM) and torch.equal(first["centres"], second["centres"])
    record = json.loads((tmp_path / "a" / "modes.json").read_text())
    assert record == {**json.loads((tmp_path / "b" / "modes.json").read_text()), "created_at": record["created_at"]}
    assert sum(mode["count"] for mode in record["modes"]) == record["images"] == 2 * len(SIZES)
    assert all(Path(mode["nearest_image"]).exists() for mode in record["modes"])
    assert Image.open(tmp_path / "a" / "modes.png").size == (2 * 53, 2 * 37)  # structure + 3 modes, 2 x 2 tiles
    assert (
        main(
            [
                "splicenet",
                "modes",
                str(checkpoint),
                str(manifest),
                "-k",
                "9",
                "-o",
                str(tmp_path / "c"),
                "--device",
                "cpu",
            ]
        )
        == 2
    )
    assert "8 image(s) for k = 9" in capsys.readouterr().err
