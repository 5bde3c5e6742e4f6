"""Real researchers' folders in and out: the Splice authors' AFHQ comparison layout (`<pair>/A/*`, `<pair>/B/*`,
other methods' outputs beside them as `<pair>/<method>/<any name>.png`, some RGBA, some missing) and the Wild-Pairs
layout (parallel `structures/` + `textures/` folders, other methods in sibling folders named by the same stem).
Manifests are built from them as published, and other methods' outputs are imported where they lie; locally and
from a real (moto) S3 store."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from manifests.builders import apply_direction, build_afhq, build_folders, build_pairs_dir
from manifests.schema import ManifestError, read_manifest
from pipeline.cli.main import main
from pipeline.runs.importer import ImportRefused, import_outputs
from pipeline.storage import Storage


def save(path: Path, size=(40, 56), seed=0, mode="RGB", fmt=None) -> Path:
    """A small image file of the given mode: RGB, RGBA (transparent corner) or I;16 (16-bit grey)."""
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    if mode == "I;16":
        Image.fromarray(rng.integers(0, 65535, size, dtype=np.uint16)).save(path)
        return path
    pixels = Image.fromarray(rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)).resize((size[1], size[0]))
    if mode == "RGBA":
        pixels = pixels.convert("RGBA")
        pixels.putpixel((0, 0), (0, 0, 0, 0))
    pixels.save(path, format=fmt)
    return path


@pytest.fixture
def dataroot(tmp_path) -> Path:
    """The Splice authors' AFHQ comparison set: <pair>/A/<img>, <pair>/B/<img>, <pair>/<method>/<any>.png."""
    root = tmp_path / "afhq_comparison"
    for index, pair in enumerate(["cat_to_dog_1", "cat_to_dog_2", "dog_to_wild_3"]):
        save(root / pair / "A" / f"flickr_cat_{index:06d}.jpg", seed=index, fmt="JPEG")
        save(root / pair / "B" / f"pixabay_dog_{index:06d}.jpg", seed=10 + index, fmt="JPEG")
        save(root / pair / "ours" / "out.png", seed=20 + index, size=(64, 80), mode="RGBA" if index == 0 else "RGB")
        if index != 2:  # strotss has no output for the last pair
            save(root / pair / "strotss" / f"result_{pair}.png", seed=30 + index, mode="I;16" if index == 1 else "RGB")
        (root / pair / "A" / ".DS_Store").write_bytes(b"junk")
    save(root / "cat_to_dog_2" / "swap" / "a.png", seed=1)  # one method with two outputs for a pair
    save(root / "cat_to_dog_2" / "swap" / "b.png", seed=2)
    save(root / "cat_to_dog_1" / "swap" / "a.png", seed=3)
    return root


@pytest.fixture
def wild_pairs(tmp_path) -> Path:
    """Wild-Pairs as published: structures/<n>.jpg, textures/<n>.jpg, ours/<n>.png, strotss/<n>.jpg (some missing)."""
    root = tmp_path / "wild-pairs"
    for n in range(1, 5):
        save(root / "structures" / f"{n}.jpg", seed=n, fmt="JPEG")
        save(root / "textures" / f"{n}.jpg", seed=100 + n, fmt="JPEG")
        save(root / "ours" / f"{n}.png", seed=200 + n, size=(72, 64))
        if n != 4:
            save(root / "strotss" / f"{n}.jpg", seed=300 + n, fmt="JPEG")
    save(root / "structures" / "9.jpg", seed=9, fmt="JPEG")  # no texture of that name
    save(root / "textures" / "extra photo.jpg", seed=8, fmt="JPEG")  # no structure of that name
    return root


# --- building manifests ------------------------------------------------------------------------------------------


def test_pairs_dir_reads_the_dataroot_layout_and_says_so(dataroot, tmp_path, capsys):
    frame = build_pairs_dir(str(dataroot))
    assert list(frame["pair_id"]) == ["cat_to_dog_1", "cat_to_dog_2", "dog_to_wild_3"]
    assert frame.loc[0, "structure_uri"] == str(dataroot / "cat_to_dog_1" / "A" / "flickr_cat_000000.jpg")
    assert frame.loc[0, "appearance_uri"] == str(dataroot / "cat_to_dog_1" / "B" / "pixabay_dog_000000.jpg")
    assert "dataroot" in frame.attrs["notes"][0]

    out = str(tmp_path / "m.parquet")
    assert main(["manifest", "build", "pairs-dir", str(dataroot), "-o", out, "--direction", "BtoA"]) == 0
    printed = capsys.readouterr().out
    assert "layout: <pair>/A/* + <pair>/B/*" in printed and "wrote" in printed and "3 pair(s)" in printed
    swapped = read_manifest(out).pairs()[0]
    assert swapped.structure_uri.endswith("B/pixabay_dog_000000.jpg") and swapped.appearance_uri.endswith(
        "A/flickr_cat_000000.jpg"
    )

    save(dataroot / "cat_to_dog_1" / "A" / "second.png")  # two structure images: which one is meant?
    (dataroot / "empty_pair").mkdir()
    with pytest.raises(
        ManifestError,
        match=r"cat_to_dog_1/ has 2 \(flickr_cat_000000.jpg, second.png\) A/\* image.*"
        r"empty_pair/ has neither",
    ):
        build_pairs_dir(str(dataroot))


def test_parallel_folders_match_by_stem_and_list_what_is_left_out(wild_pairs, tmp_path, capsys):
    frame = build_folders(str(wild_pairs / "structures"), str(wild_pairs / "textures"))
    assert list(frame["pair_id"]) == ["1", "2", "3", "4"] and set(frame["dataset"]) == {"wild-pairs"}
    assert frame.loc[2, "structure_uri"] == str(wild_pairs / "structures" / "3.jpg")
    assert frame.loc[2, "appearance_uri"] == str(wild_pairs / "textures" / "3.jpg")
    out = str(tmp_path / "wild.parquet")
    assert (
        main(["manifest", "build", "folders", str(wild_pairs / "structures"), str(wild_pairs / "textures"), "-o", out])
        == 0
    )
    printed = capsys.readouterr().out
    assert "1 structure image(s)" in printed and "9.jpg" in printed and "are left out" in printed
    assert "1 appearance image(s)" in printed and "extra photo.jpg" in printed
    assert read_manifest(out).pair_ids == ["1", "2", "3", "4"]
    assert list(apply_direction(frame, "BtoA")["structure_uri"]) == list(frame["appearance_uri"])
    save(wild_pairs / "textures" / "2.png")
    with pytest.raises(ManifestError, match=r"several images with the same name: 2 \(2.jpg, 2.png\)"):
        build_folders(str(wild_pairs / "structures"), str(wild_pairs / "textures"))
    with pytest.raises(ManifestError, match="no image of .* has a namesake"):
        build_folders(str(wild_pairs / "structures"), str(wild_pairs / "ours" / ".."))


def test_afhq_cross_domain_pairs(tmp_path, capsys):
    for d_index, domain in enumerate(("cat", "dog", "wild")):
        for i in range(3):
            save(tmp_path / "afhq" / "val" / domain / f"{domain}_{i}.jpg", seed=10 * d_index + i, fmt="JPEG")
    root = str(tmp_path / "afhq")
    frame = build_afhq(root, split="val", cross_domain=[("cat", "dog")], pairs=5, seed=1)
    assert len(frame) == 5 and set(frame["domain"]) == {"cat->dog"}
    assert all("/val/cat/" in s and "/val/dog/" in a for s, a in zip(frame.structure_uri, frame.appearance_uri))
    assert len(set(zip(frame.structure_uri, frame.appearance_uri))) == 5
    assert frame["pair_id"].iloc[0] == "afhq-val-cat2dog-00000"
    out = str(tmp_path / "cross.parquet")
    assert (
        main(["manifest", "build", "afhq", root, "--split", "val", "--domain", "cat,dog", "--cross-domain", "-o", out])
        == 0
    )
    assert "(cat->dog: 3, dog->cat: 3)" in capsys.readouterr().out
    assert main(["manifest", "build", "afhq", root, "--split", "val", "--cross-domain", "cat->cat", "-o", out]) == 2
    assert "SOURCE->TARGET" in capsys.readouterr().err


# --- importing other methods' outputs where they lie -------------------------------------------------------------


def test_import_by_pattern_from_the_dataroot_layout(dataroot, tmp_path, caplog):
    manifest = str(tmp_path / "m.parquet")
    assert main(["manifest", "build", "pairs-dir", str(dataroot), "-o", manifest]) == 0
    ours = import_outputs("splice-authors", str(dataroot), manifest, str(tmp_path / "ours"), pattern="{pair_id}/ours/*")
    assert (ours.imported, ours.missing, ours.ambiguous, ours.failed) == (3, 0, 0, 0)
    rgba = np.asarray(Image.open(tmp_path / "ours" / "pairs" / "cat_to_dog_1" / "output.png"))
    assert rgba.shape == (64, 80, 3) and tuple(rgba[0, 0]) == (255, 255, 255)  # RGBA flattened over white

    strotss = import_outputs(
        "strotss", str(dataroot), manifest, str(tmp_path / "strotss"), pattern="{pair_id}/strotss/*.png"
    )
    assert (strotss.imported, strotss.missing) == (2, 1)
    sixteen = np.asarray(Image.open(tmp_path / "strotss" / "pairs" / "cat_to_dog_2" / "output.png"))
    assert (
        sixteen.dtype == np.uint8 and sixteen.shape == (40, 56, 3) and sixteen.std() > 10
    )  # 16-bit scaled, not clipped
    results = pd.read_parquet(tmp_path / "strotss" / "results.parquet").set_index("pair_id")
    assert results.loc["dog_to_wild_3", "status"] == "missing"
    assert "no output of pair 'dog_to_wild_3'" in results.loc["dog_to_wild_3", "error"]

    swap = import_outputs("swap", str(dataroot), manifest, str(tmp_path / "swap"), pattern="{pair_id}/swap/*")
    assert (swap.imported, swap.missing, swap.ambiguous) == (1, 2, 1)
    line = swap.line()
    assert "1 matched, 1 missing, 1 ambiguous, 0 unreadable" in line
    error = pd.read_parquet(tmp_path / "swap" / "results.parquet").set_index("pair_id").loc["cat_to_dog_2", "error"]
    assert "2 outputs of pair 'cat_to_dog_2'" in error and "a.png" in error and "b.png" in error
    assert not (tmp_path / "swap" / "pairs" / "cat_to_dog_2" / "_SUCCESS").exists()

    with pytest.raises(ImportRefused, match=r"must contain \{pair_id\}"):
        import_outputs("x", str(dataroot), manifest, str(tmp_path / "x"), pattern="ours/*")
    with pytest.raises(ImportRefused, match="no output matched any pair"):
        import_outputs("x", str(dataroot), manifest, str(tmp_path / "x"), pattern="{pair_id}/nobody/*")


def test_import_by_pattern_and_csv_from_wild_pairs_on_the_command_line(wild_pairs, tmp_path, capsys):
    manifest = str(tmp_path / "wild.parquet")
    assert (
        main(
            [
                "manifest",
                "build",
                "folders",
                str(wild_pairs / "structures"),
                str(wild_pairs / "textures"),
                "-o",
                manifest,
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "import",
                "strotss",
                str(wild_pairs),
                "--pattern",
                "strotss/{pair_id}.*",
                "--manifest",
                manifest,
                "--out",
                str(tmp_path / "strotss"),
            ]
        )
        == 0
    )
    assert "3 matched, 1 missing, 0 ambiguous, 0 unreadable" in capsys.readouterr().out
    (tmp_path / "ours.csv").write_text(
        "pair_id,output_uri\n1,wild-pairs/ours/1.png\n2,"
        + str(wild_pairs / "ours" / "2.png")
        + "\n3,missing.png\n5,nowhere.png\n"
    )
    assert (
        main(
            [
                "import",
                "ours",
                "--csv",
                str(tmp_path / "ours.csv"),
                "--manifest",
                manifest,
                "--out",
                str(tmp_path / "ours-run"),
            ]
        )
        == 0
    )
    assert "2 matched, 1 missing, 0 ambiguous, 1 unreadable" in capsys.readouterr().out
    results = pd.read_parquet(tmp_path / "ours-run" / "results.parquet").set_index("pair_id")
    assert list(results["status"]) == ["done", "done", "failed", "missing"]
    assert (
        main(
            [
                "import",
                "ours",
                str(wild_pairs),
                "--csv",
                str(tmp_path / "ours.csv"),
                "--manifest",
                manifest,
                "--out",
                str(tmp_path / "x"),
            ]
        )
        == 2
    )


def test_build_and_import_from_s3(s3_bucket, dataroot, wild_pairs):
    fs = s3_bucket.fs()
    fs.put(str(dataroot), f"{s3_bucket.bucket}/afhq_comparison", recursive=True)
    fs.put(str(wild_pairs), f"{s3_bucket.bucket}/wild-pairs", recursive=True)
    storage = Storage({**s3_bucket.options, "skip_instance_cache": True})
    frame = build_pairs_dir(s3_bucket.url("afhq_comparison"), storage=storage)
    assert list(frame["structure_uri"])[0] == s3_bucket.url(
        "afhq_comparison", "cat_to_dog_1", "A", "flickr_cat_000000.jpg"
    )
    assert "dataroot" in frame.attrs["notes"][0]
    folders = build_folders(
        s3_bucket.url("wild-pairs", "structures"), s3_bucket.url("wild-pairs", "textures"), storage=storage
    )
    assert list(folders["pair_id"]) == ["1", "2", "3", "4"]
    assert any("9.jpg" in note for note in folders.attrs["notes"])

    from manifests.schema import write_manifest

    write_manifest(frame, s3_bucket.url("m.parquet"), storage)
    summary = import_outputs(
        "strotss",
        s3_bucket.url("afhq_comparison"),
        s3_bucket.url("m.parquet"),
        s3_bucket.url("runs", "strotss"),
        storage=storage,
        pattern="{pair_id}/strotss/*",
    )
    assert (summary.imported, summary.missing) == (2, 1)
    output = Image.open(io.BytesIO(fs.cat(f"{s3_bucket.bucket}/runs/strotss/pairs/cat_to_dog_1/output.png")))
    assert output.size == (56, 40)
    assert os.path.basename(summary.run) == "strotss"
