"""run.json stays small whatever the number of pairs (issue 19, case 13): each pair's input record lives in
inputs.parquet beside it, run.json is the same size for 10 pairs as for 1000, and an older folder that kept the
records inside run.json still reads (a changed input is still refused) and is moved to the new place."""

from __future__ import annotations

import json

import pandas as pd

from conftest import tiny_image_bytes
from test_run_folder import cli, manifest_of, recorded_inputs, run_cli, write_inputs


def test_run_json_does_not_grow_with_the_pairs(ray_session, tmp_path, capsys):
    sizes = {}
    for count in (10, 1000):
        inputs = write_inputs(tmp_path / f"in{count}", [f"p{i:04d}" for i in range(count)], size=(8, 8))
        manifest = manifest_of(tmp_path / f"m{count}.parquet", inputs)
        out = tmp_path / f"run{count}"
        code, _, err = run_cli(capsys, manifest, out, "--only", "p0000,p0001")
        assert code == 0, err
        record = json.loads((out / "run.json").read_text())
        assert "inputs" not in record
        sizes[count] = len((out / "run.json").read_bytes())
        recorded = set(pd.read_parquet(out / "inputs.parquet")["pair_id"])
        assert recorded == {"p0000", "p0001"}  # the pairs run: the others are fingerprinted when they run
        assert "2 done" in cli(capsys, "status", out)[1]
    assert abs(sizes[1000] - sizes[10]) < 64 and sizes[1000] < 4096, sizes  # a count's digits, not the pairs


def test_an_older_folder_with_inputs_inside_run_json_still_reads(ray_session, tmp_path, capsys):
    inputs = write_inputs(tmp_path / "in", ["o0", "o1"])
    manifest = manifest_of(tmp_path / "m.parquet", inputs)
    out = tmp_path / "run"
    assert run_cli(capsys, manifest, out)[0] == 0
    # as a run made before inputs.parquet: the records inside run.json
    record = json.loads((out / "run.json").read_text())
    record["inputs"] = recorded_inputs(out)
    (out / "run.json").write_text(json.dumps(record))
    (out / "inputs.parquet").unlink()
    assert recorded_inputs(out)["o0"]["structure"]["size"] > 0
    inputs["o0"][0].write_bytes(tiny_image_bytes((24, 32), 77))  # rewritten in place: still compared, refused
    code, _, err = run_cli(capsys, manifest, out)
    assert code == 2 and "o0: structure image" in err and "has changed" in err
    inputs["o0"][0].write_bytes(tiny_image_bytes((24, 32), 0))  # as it was
    code, printed, err = run_cli(capsys, manifest, out)
    assert code == 0 and "2 done (2 skipped as already done)" in printed, err
    assert "inputs" not in json.loads((out / "run.json").read_text())  # moved beside it
    assert set(pd.read_parquet(out / "inputs.parquet")["pair_id"]) == {"o0", "o1"}
