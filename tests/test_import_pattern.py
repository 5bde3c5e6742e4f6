"""`splice import --pattern` stays under ROOT and `{pair_id}` stands for each manifest pair_id (issue 19, cases 10
and 11): published output names that run on past the pair_id import, '..' and symbolic links out of ROOT are
refused unless asked for, and the summary names the pairs with no or several outputs. Real files."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import pytest

from conftest import save_image
from pipeline.cli.main import main
from pipeline.runs.importer import ImportRefused, import_outputs

WCT2 = ["0_cat5", "1_dog12", "2_wild3", "3_cat5"]  # Wild-Pairs ids; WCT2 appends its settings to each


@pytest.fixture
def wild(tmp_path) -> tuple[Path, str]:
    """ROOT with wct2/<pair_id>_decoder_encoder_skip..jpg for three of four pairs, and a manifest of the four."""
    root = tmp_path / "wild-pairs"
    rows = []
    for index, pair_id in enumerate(WCT2):
        structure = save_image(root / "structures" / f"{pair_id}.png", 2 * index)
        appearance = save_image(root / "textures" / f"{pair_id}.png", 2 * index + 1)
        rows.append({"pair_id": pair_id, "structure_uri": str(structure), "appearance_uri": str(appearance)})
        if pair_id != "3_cat5":
            save_image(root / "wct2" / f"{pair_id}_decoder_encoder_skip..jpg", 10 + index)
    manifest = tmp_path / "m.parquet"
    pd.DataFrame(rows).to_parquet(manifest, index=False)
    return root, str(manifest)


def test_pair_id_stands_for_each_manifest_pair_id_not_a_greedy_guess(wild, tmp_path):
    root, manifest = wild
    summary = import_outputs("wct2", str(root), manifest, str(tmp_path / "run"), pattern="wct2/{pair_id}_*")
    assert (summary.imported, summary.missing, summary.ambiguous) == (3, 1, 0)
    results = pd.read_parquet(tmp_path / "run" / "results.parquet").set_index("pair_id")
    assert results["status"].to_dict() == {"0_cat5": "done", "1_dog12": "done", "2_wild3": "done", "3_cat5": "missing"}
    assert "missing: 3_cat5" in summary.line()  # the summary names the pairs without an output

    # two outputs for one pair: ambiguous, and named
    save_image(root / "wct2" / "3_cat5_b.jpg", 30)
    save_image(root / "wct2" / "3_cat5_a.jpg", 31)
    summary = import_outputs("wct2b", str(root), manifest, str(tmp_path / "run2"), pattern="wct2/{pair_id}_*")
    assert (summary.imported, summary.ambiguous) == (3, 1) and "ambiguous: 3_cat5" in summary.line()


def test_a_pair_id_is_matched_literally(tmp_path):
    root = tmp_path / "root"
    rows = []
    for index, pair_id in enumerate(["a.1", "ab1"]):
        structure, appearance = save_image(tmp_path / f"s{index}.png", index), save_image(tmp_path / f"a{index}.png", 5)
        rows.append({"pair_id": pair_id, "structure_uri": str(structure), "appearance_uri": str(appearance)})
    pd.DataFrame(rows).to_parquet(tmp_path / "m.parquet", index=False)
    save_image(root / "out" / "ab1.png", 1)
    summary = import_outputs(
        "m", str(root), str(tmp_path / "m.parquet"), str(tmp_path / "run"), pattern="out/{pair_id}.png"
    )
    assert (summary.imported, summary.missing) == (1, 1)  # the '.' of 'a.1' is no wildcard that takes ab1.png


def test_a_pattern_leaving_root_is_refused_in_one_line(wild, tmp_path, capsys):
    root, manifest = wild
    outside = tmp_path / "outside"
    for pair_id in WCT2:
        save_image(outside / f"{pair_id}.png", 1)
    for pattern in ("../outside/{pair_id}.png", "wct2/../../outside/{pair_id}.png", str(outside) + "/{pair_id}.png"):
        with pytest.raises(ImportRefused, match="leaves ROOT"):
            import_outputs("x", str(root), manifest, str(tmp_path / "x"), pattern=pattern)
        code = main(
            ["import", "x", str(root), "--pattern", pattern, "--manifest", manifest, "--out", str(tmp_path / "x")]
        )
        err = capsys.readouterr().err
        assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1 and "leaves ROOT" in err
    assert not (tmp_path / "x" / "pairs").exists()


def test_symbolic_links_out_of_root_are_refused_unless_followed(wild, tmp_path, capsys):
    root, manifest = wild
    secret = save_image(tmp_path / "elsewhere" / "secret.png", 99)
    (root / "wct2" / "3_cat5_decoder_encoder_skip..jpg").symlink_to(secret)
    inner = root / "wct2" / "inner.png"
    save_image(inner, 5)
    os.remove(root / "wct2" / "2_wild3_decoder_encoder_skip..jpg")
    (root / "wct2" / "2_wild3_decoder_encoder_skip..jpg").symlink_to(inner)  # a link within ROOT is fine

    summary = import_outputs("wct2", str(root), manifest, str(tmp_path / "run"), pattern="wct2/{pair_id}_*")
    assert (summary.imported, summary.missing) == (3, 1) and "missing: 3_cat5" in summary.line()
    error = pd.read_parquet(tmp_path / "run" / "results.parquet").set_index("pair_id").at["3_cat5", "error"]
    assert "symbolic link to outside ROOT" in error and "--follow-symlinks" in error
    assert not (tmp_path / "run" / "pairs" / "3_cat5" / "output.png").exists()

    code = main(
        [
            "import",
            "wct2",
            str(root),
            "--pattern",
            "wct2/{pair_id}_*",
            "--manifest",
            manifest,
            "--out",
            str(tmp_path / "followed"),
            "--follow-symlinks",
        ]
    )
    assert code == 0 and "4 matched, 0 missing" in capsys.readouterr().out

    # the flat layout (ROOT of <pair_id>.png) refuses such links too
    flat = tmp_path / "flat"
    save_image(flat / "0_cat5.png", 1)
    (flat / "1_dog12.png").symlink_to(secret)
    summary = import_outputs("flat", str(flat), manifest, str(tmp_path / "flat-run"))
    assert summary.imported == 1 and "missing: 1_dog12, 2_wild3, 3_cat5" in summary.line()
    error = pd.read_parquet(tmp_path / "flat-run" / "results.parquet").set_index("pair_id").at["1_dog12", "error"]
    assert "symbolic link to outside ROOT" in error
