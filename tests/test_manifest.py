"""Manifests: schema validation with clear errors, URI resolution, and the AFHQ / pairs-dir / CSV builders."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pandas as pd
import pytest

from manifests.builders import build_afhq, build_pairs_dir
from manifests.schema import ManifestError, read_manifest, resolve_uri, validate_frame, write_manifest
from pipeline.cli.main import main

REPO = Path(__file__).resolve().parents[1]


def _frame(**columns) -> pd.DataFrame:
    base = {"pair_id": ["a", "b"], "structure_uri": ["s/a.png", "s/b.png"], "appearance_uri": ["x.png", "y.png"]}
    base.update(columns)
    return pd.DataFrame({k: v for k, v in base.items() if v is not None})


def _write(tmp_path, frame: pd.DataFrame, name: str = "m.parquet") -> str:
    path = str(tmp_path / name)
    frame.to_parquet(path, index=False)
    return path


# --- validation ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "frame, expected",
    [
        (_frame(appearance_uri=None), r"lacks required column\(s\) appearance_uri"),
        (_frame(structure_uri=[6, 7]), r"'structure_uri' must hold text, found int in row 0 \(pair_id 'a'\), row 1"),
        (_frame(steps=["many", "3"]), r"'steps' must hold integers, found str in row 0 \(pair_id 'a'\), row 1"),
        (_frame(seed=[1.5, 2.0]), r"'seed' must hold integers, found fractions in row 0"),
        (_frame(structure_uri=["s.png", None]), r"'structure_uri' is empty in row 1"),
        (_frame(pair_id=["a", "a"]), r"pair_id must be unique: 1 id\(s\) repeat \('a'\) in row 0 .*row 1"),
        (_frame(pair_id=["../../etc", "ok"]), r"pair_id must match .* row 0 \(pair_id '../../etc'\)"),
        (_frame(pair_id=["a/b", "ok"]), r"pair_id must match .* row 0 \(pair_id 'a/b'\)"),
        (_frame(pair_id=["..", "ok"]), r"pair_id must match .* row 0 \(pair_id '..'\)"),
        (_frame(pair_id=["x" * 129, "ok"]), r"pair_id must match"),
        (_frame(steps=[0, 3]), r"steps must be >= 1 in row 0"),
        (_frame().iloc[:0], r"is empty \(no pairs\)"),
    ],
)
def test_validation_errors_name_the_manifest_and_rows(tmp_path, frame, expected):
    path = _write(tmp_path, frame)
    with pytest.raises(ManifestError, match=expected) as caught:
        read_manifest(path)
    assert path in str(caught.value)


def test_all_problems_are_reported_at_once():
    frame = _frame(pair_id=["a", "a/b"], structure_uri=["s.png", None], steps=[1.5, 2])
    with pytest.raises(ManifestError) as caught:
        validate_frame(frame, "m.parquet")
    message = str(caught.value)
    assert "3 problem(s)" in message and "'structure_uri' is empty" in message and "fractions" in message


def test_not_a_parquet_file_and_missing_manifest(tmp_path):
    (tmp_path / "m.csv").write_text("pair_id,structure_uri,appearance_uri\n")
    with pytest.raises(ManifestError, match="not a Parquet file.*manifest build csv"):
        read_manifest(str(tmp_path / "m.csv"))
    with pytest.raises(ManifestError, match="does not exist"):
        read_manifest(str(tmp_path / "nope.parquet"))


def test_valid_manifest_resolves_relative_uris_and_keeps_overrides(tmp_path):
    frame = _frame(
        structure_uri=["imgs/a.png", "/abs/b.png"],
        appearance_uri=["../c.png", "s3://bucket/d.png"],
        steps=[None, 5],
        domain=["cat", "dog"],
        extra=["kept", "kept"],
    )
    (tmp_path / "sub").mkdir()
    path = _write(tmp_path / "sub", frame)
    manifest = read_manifest(path)
    pairs = manifest.pairs()
    assert pairs[0].structure_uri == str(tmp_path / "sub" / "imgs" / "a.png")
    assert pairs[0].appearance_uri == str(tmp_path / "c.png")
    assert pairs[1].structure_uri == "/abs/b.png" and pairs[1].appearance_uri == "s3://bucket/d.png"
    assert (pairs[0].steps, pairs[1].steps) == (None, 5)
    assert pairs[1].labels == {"domain": "dog"}
    assert list(manifest.frame["extra"]) == ["kept", "kept"]


def test_remote_relative_uris_stay_inside_the_bucket():
    assert resolve_uri("imgs/a.png", "s3://b/data/manifests") == "s3://b/data/manifests/imgs/a.png"
    assert resolve_uri("../imgs/a.png", "s3://b/data/manifests") == "s3://b/data/imgs/a.png"
    assert resolve_uri("file:///x/y.png", "/tmp") == "/x/y.png"


def test_validate_command_reports_errors_and_checks_images(tmp_path, make_image, capsys):
    good, bad = make_image("img/good.png"), make_image("img/bad.png", corrupt=True)
    path = _write(
        tmp_path, _frame(structure_uri=["img/good.png", "img/bad.png"], appearance_uri=[good, "img/gone.png"])
    )
    assert main(["manifest", "validate", path]) == 0
    assert "2 pair(s), schema OK" in capsys.readouterr().out
    assert main(["manifest", "validate", path, "--check-images"]) == 2
    err = capsys.readouterr().err
    assert "2 image(s) cannot be used" in err and "'b'" in err and bad in err and "gone.png does not exist" in err
    duplicate = _write(tmp_path, _frame(pair_id=["a", "a"]), "dup.parquet")
    assert main(["manifest", "validate", duplicate]) == 2
    assert "pair_id must be unique" in capsys.readouterr().err


# --- builders ------------------------------------------------------------------------------------------------


@pytest.fixture
def afhq_root(tmp_path, make_image) -> str:
    for split, count in (("train", 5), ("val", 3)):
        for d_index, domain in enumerate(("cat", "dog", "wild")):
            for i in range(count):
                make_image(f"afhq/{split}/{domain}/flickr_{domain}_{i:06d}.jpg", seed=100 * d_index + i)
    (tmp_path / "afhq" / "train" / "cat" / "notes.txt").write_text("not an image")
    return str(tmp_path / "afhq")


def test_afhq_builder_pairs_within_domains_reproducibly(afhq_root, tmp_path):
    frame = build_afhq(afhq_root, pairs=7, seed=3)
    assert len(frame) == 7 and frame["domain"].value_counts().to_dict() == {"cat": 3, "dog": 2, "wild": 2}
    for row in frame.itertuples():
        assert f"/train/{row.domain}/" in row.structure_uri and f"/train/{row.domain}/" in row.appearance_uri
        assert row.structure_uri != row.appearance_uri
    assert frame.equals(build_afhq(afhq_root, pairs=7, seed=3))
    assert not frame.equals(build_afhq(afhq_root, pairs=7, seed=4))
    assert len(set(zip(frame.structure_uri, frame.appearance_uri))) == 7
    every = build_afhq(afhq_root, domains=["dog"], split="val")
    assert (
        len(every) == 3
        and set(every["split"]) == {"val"}
        and sorted(every["structure_uri"]) == sorted(set(every["structure_uri"]))
    )
    with pytest.raises(ManifestError, match="too few in bird"):
        build_afhq(afhq_root, domains=["cat", "bird"])
    with pytest.raises(ManifestError, match="distinct pairs"):
        build_afhq(afhq_root, pairs=100, domains=["cat"])


def test_afhq_cli_writes_a_valid_manifest(afhq_root, tmp_path, capsys):
    out = str(tmp_path / "afhq.parquet")
    assert main(["manifest", "build", "afhq", afhq_root, "-o", out, "--pairs", "6", "--domain", "cat,wild"]) == 0
    assert "6 pair(s) (cat: 3, wild: 3)" in capsys.readouterr().out
    manifest = read_manifest(out)
    assert set(manifest.frame["dataset"]) == {"afhq"} and manifest.pair_ids[0] == "afhq-train-cat-00000"


def test_pairs_dir_builder(tmp_path, make_pairs, make_image):
    root = make_pairs(["p1", "p2"])
    (Path(root) / ".ipynb_checkpoints").mkdir()
    frame = build_pairs_dir(root)
    assert list(frame["pair_id"]) == ["p1", "p2"]
    assert frame.loc[0, "structure_uri"] == os.path.join(root, "p1", "structure.png")
    make_image("pairs/p3/structure.png")
    make_image("pairs/p4/structure.png")
    make_image("pairs/p4/structure.jpg")
    make_image("pairs/p4/appearance.png")
    with pytest.raises(ManifestError, match=r"p3/ has no appearance.*p4/ has 2 \(structure.jpg, structure.png\)"):
        build_pairs_dir(root)
    with pytest.raises(ManifestError, match="does not exist"):
        build_pairs_dir(str(tmp_path / "nowhere"))


def test_csv_builder_resolves_paths_against_the_csv(tmp_path, make_image, capsys):
    make_image("data/imgs/a.png")
    (tmp_path / "data" / "pairs.csv").write_text(
        "pair_id,structure_uri,appearance_uri,domain,steps\n"
        "007,imgs/a.png,imgs/a.png,cat,3\n"
        "008, imgs/a.png ,s3://bucket/b.png,dog,\n"
    )
    out = str(tmp_path / "elsewhere" / "m.parquet")
    assert main(["manifest", "build", "csv", str(tmp_path / "data" / "pairs.csv"), "-o", out]) == 0
    manifest = read_manifest(out)
    assert manifest.pair_ids == ["007", "008"]  # ids stay text
    assert manifest.pairs()[1].structure_uri == str(tmp_path / "data" / "imgs" / "a.png")
    assert manifest.pairs()[1].appearance_uri == "s3://bucket/b.png"
    assert [p.steps for p in manifest.pairs()] == [3, None]
    (tmp_path / "bad.csv").write_text("pair_id,structure\nx,y\n")
    assert main(["manifest", "build", "csv", str(tmp_path / "bad.csv"), "-o", out]) == 2
    assert "lacks required column(s) structure_uri, appearance_uri" in capsys.readouterr().err


def test_example_csv_builds_and_its_images_decode(tmp_path, capsys):
    example = REPO / "manifests" / "examples" / "pairs.csv"
    copy = tmp_path / "examples"
    shutil.copytree(example.parent, copy)
    out = str(tmp_path / "example.parquet")
    assert main(["manifest", "build", "csv", str(copy / "pairs.csv"), "-o", out]) == 0
    assert main(["manifest", "validate", out, "--check-images"]) == 0
    assert "images read and decoded" in capsys.readouterr().out


def test_builders_read_from_s3(s3_bucket, make_pairs):
    root = make_pairs(["q1", "q2"])
    fs = s3_bucket.fs()
    fs.put(root, f"{s3_bucket.bucket}/pairs", recursive=True)
    from pipeline.storage import Storage

    storage = Storage({**s3_bucket.options, "skip_instance_cache": True})
    frame = build_pairs_dir(s3_bucket.url("pairs"), storage=storage)
    assert list(frame["structure_uri"]) == [s3_bucket.url("pairs", p, "structure.png") for p in ("q1", "q2")]
    write_manifest(frame, s3_bucket.url("m.parquet"), storage)
    assert read_manifest(s3_bucket.url("m.parquet"), storage).pair_ids == ["q1", "q2"]
