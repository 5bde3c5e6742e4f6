"""A `_SUCCESS` marker is proof or it is nothing (issue 19, case 6): one that does not parse, lists no files, or lists
files that are missing or of another size makes its pair `damaged`, which `splice run` redoes, in every format the
run folder still reads; `--verify` checks the hashes too. Real files, the shared local Ray, a cheap method."""

from __future__ import annotations

import json

from test_run_folder import as_format_1, cli, manifest_of, run_cli, write_inputs


def test_a_truncated_marker_over_a_truncated_output_is_damaged_and_redone(ray_session, tmp_path, capsys):
    inputs = write_inputs(tmp_path / "in", ["t0", "t1"])
    manifest = manifest_of(tmp_path / "m.parquet", inputs)
    out = tmp_path / "run"
    assert run_cli(capsys, manifest, out)[0] == 0
    pair = out / "pairs" / "t0"
    good = (pair / "output.png").read_bytes()
    (pair / "_SUCCESS").write_bytes((pair / "_SUCCESS").read_bytes()[:40])  # a marker cut off mid-write
    (pair / "output.png").write_bytes(good[: len(good) // 2])
    code, printed, _ = cli(capsys, "status", out)
    assert code == 0 and "1 done, 0 failed, 0 pending, 1 damaged" in printed
    assert "'t0' is damaged: its _SUCCESS does not parse" in printed

    code, printed, _ = run_cli(capsys, manifest, out)
    assert code == 0 and "1 damaged pair(s) redone" in printed
    assert (pair / "output.png").read_bytes() == good and "2 done, 0 failed" in cli(capsys, "status", out)[1]

    (pair / "_SUCCESS").write_bytes(b"")  # cut off before its first byte: in a current-format folder, no proof
    assert "1 done, 0 failed, 0 pending, 1 damaged" in cli(capsys, "status", out)[1]


def test_a_marker_listing_no_files_proves_nothing_even_with_verify(ray_session, tmp_path, capsys):
    inputs = write_inputs(tmp_path / "in", ["e0", "e1"])
    manifest = manifest_of(tmp_path / "m.parquet", inputs)
    out = tmp_path / "run"
    assert run_cli(capsys, manifest, out)[0] == 0
    pair = out / "pairs" / "e0"
    (pair / "_SUCCESS").write_text(json.dumps({"files": {}}))
    (pair / "output.png").unlink()
    for extra in ((), ("--verify",)):
        code, printed, _ = cli(capsys, "status", out, *extra)
        assert code == 0 and "1 done, 0 failed, 0 pending, 1 damaged" in printed
        assert "'e0' is damaged: its _SUCCESS lists no output.png" in printed
    # a marker that lists only meta.json: no proof of the output either
    (pair / "_SUCCESS").write_text(json.dumps({"files": {"meta.json": {"size": 2, "sha256": "0" * 64}}}))
    assert "1 damaged" in cli(capsys, "status", out, "--verify")[1]
    code, printed, _ = run_cli(capsys, manifest, out, "--verify")
    assert code == 0 and "1 damaged pair(s) redone" in printed and (pair / "output.png").exists()
    assert "2 done, 0 failed, 0 pending" in cli(capsys, "status", out, "--verify")[1]


def test_format_1_folders_read_their_empty_markers_and_damaged_ones_are_still_damaged(ray_session, tmp_path, capsys):
    inputs = write_inputs(tmp_path / "in", ["o0", "o1", "o2"])
    manifest = manifest_of(tmp_path / "m.parquet", inputs)
    out = tmp_path / "run"
    assert run_cli(capsys, manifest, out)[0] == 0
    as_format_1(out)
    for pair_id in ("o0", "o1", "o2"):
        (out / "pairs" / pair_id / "_SUCCESS").write_bytes(b"")  # format 1 wrote empty markers
    (out / "pairs" / "o1" / "_SUCCESS").write_text('{"files": ')  # not empty, not JSON: damaged in any format
    (out / "pairs" / "o2" / "output.png").unlink()
    code, printed, _ = cli(capsys, "status", out)
    assert code == 0 and "1 done, 0 failed, 0 pending, 2 damaged" in printed
    # a run rewrites run.json in the current format: the untouched older pair is still done, not redone
    code, printed, _ = run_cli(capsys, manifest, out)
    assert code == 0 and "2 damaged pair(s) redone" in printed
    assert json.loads((out / "run.json").read_text())["format"] == 3
    assert "3 done, 0 failed, 0 pending" in cli(capsys, "status", out)[1]
    assert (out / "pairs" / "o0" / "_SUCCESS").read_bytes() == b""  # kept as it was: never redone
