"""What a cluster does to a run, done on purpose on this machine, and what the run's storage looks like after.

Each scenario runs `splice run` (and its Ray) in processes of their own, in a session of their own, so it never
meets the Ray session of this pytest process and can be killed whole:

- a worker node of a multi-node Ray cluster dies mid-run (tests/ray_cluster_scenario.py);
- the driver (with its embedded Ray) is killed mid-run and started again;
- the object store fails reads and writes (moto's S3 behind tests/faults.py's fault-injecting proxy);
- `ray job submit` and `splice run --address` against a `ray start --head` cluster with token authentication.

Pairs are tiny generated images; most scenarios use the cheap `structure-copy` method (its output must equal the
structure image, which makes "outputs intact" exact) and the test hook's `sleep=S` (tests/faults.py, at the fan-out's
hook point pair.inputs_read) to keep pairs in flight long enough to be hit. The job-submission test runs the real
Splice trainer (random tiny backbone, 2 steps).
"""

from __future__ import annotations

import io
import json
import os
import secrets
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from conftest import TINY_BACKBONE
from faults import FaultyS3, Rule, fault_env, free_port, kill_session, start_session, wait_for

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent  # the environment under test: its `splice` and `ray`, wherever pip put them
SPLICE = str(BIN / "splice") if (BIN / "splice").exists() else shutil.which("splice")
RAY = str(BIN / "ray") if (BIN / "ray").exists() else shutil.which("ray")
PAIR_FILES = ("output.png", "losses.parquet", "meta.json")
pytestmark = pytest.mark.slow  # Ray clusters, killed drivers, a faulty store: 15-80 s each


# --- helpers -------------------------------------------------------------------------------------------------


def write_pairs(folder: Path, count: int, size=(24, 32)) -> tuple[Path, dict[str, np.ndarray]]:
    """`count` pairs of random images and a manifest beside them (relative URIs); returns the structure images."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(7)
    rows, structures = [], {}
    for i in range(count):
        pair_id = f"pair-{i:02d}"
        for role in ("structure", "appearance"):
            pixels = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / f"{pair_id}_{role}.png")
            if role == "structure":
                structures[pair_id] = pixels
        rows.append(
            {
                "pair_id": pair_id,
                "structure_uri": f"{pair_id}_structure.png",
                "appearance_uri": f"{pair_id}_appearance.png",
            }
        )
    manifest = folder / "manifest.parquet"
    pd.DataFrame(rows).to_parquet(manifest, index=False)
    return manifest, structures


def child_env(**extra) -> dict:
    """This environment, less anything that would point Ray at another cluster or token, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_ADDRESS", "RAY_AUTH_", "SPLICE_TEST_"))}
    env.update(
        PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}",
        PYTHONUNBUFFERED="1",
        RAY_AUTH_MODE="disabled",
        RAY_DISABLE_USAGE_STATS="1",
        TQDM_DISABLE="1",
    )
    env.update(extra)
    return env


def run_cli(args: list[str], *, env: dict, timeout: float = 240, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        args, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
    )


def done_ids(run: Path) -> set[str]:
    return {p.parent.name for p in run.glob("pairs/*/_SUCCESS")}


def attempts(run: Path, pair_id: str) -> int:
    return len(json.loads((run / "pairs" / pair_id / "attempts.json").read_text())["attempts"])


def read_results(data: bytes) -> pd.DataFrame:
    return pd.read_parquet(io.BytesIO(data))


def assert_pair_intact(files: dict[str, bytes], structure: np.ndarray | None, pair_id: str) -> None:
    """A done pair: every file there and readable; for structure-copy, the output is the structure image itself."""
    assert set(PAIR_FILES) <= set(files), f"{pair_id}: _SUCCESS without {set(PAIR_FILES) - set(files)}"
    output = np.asarray(Image.open(io.BytesIO(files["output.png"])).convert("RGB"))
    if structure is not None:
        np.testing.assert_array_equal(output, structure, err_msg=f"{pair_id}: output is not the structure image")
    assert json.loads(files["meta.json"])["status"] == "done"
    pd.read_parquet(io.BytesIO(files["losses.parquet"]))


def assert_local_run_complete(run: Path, structures: dict[str, np.ndarray], *, copies: bool = True) -> pd.DataFrame:
    """Every pair done exactly once: one results row each, all done, all files intact, nothing half-written left."""
    results = read_results((run / "results.parquet").read_bytes())
    assert sorted(results["pair_id"]) == sorted(structures), "results.parquet does not have one row per pair"
    assert results["pair_id"].is_unique
    assert (results["status"] == "done").all(), results[["pair_id", "status", "error"]]
    assert results["error"].isna().all()
    assert done_ids(run) == set(structures)
    for pair_id, structure in structures.items():
        folder = run / "pairs" / pair_id
        files = {p.name: p.read_bytes() for p in folder.iterdir()}
        assert_pair_intact(files, structure if copies else None, pair_id)
        assert not [name for name in files if name.endswith(".tmp")], f"{pair_id}: temporary files left behind"
        # the result on disk is the one of the pair's last attempt
        assert json.loads(files["meta.json"])["attempt"] == attempts(run, pair_id)
    return results


def run_scenario(tmp_path: Path, script: str, args: list, env: dict) -> dict:
    """Run `tests/SCRIPT RESULT.json ARGS...` (a node-loss scenario, tests/ray_node_loss.py) in a session of its
    own; it must succeed and so must the driver it ran. Returns RESULT.json."""
    result = tmp_path / "scenario.json"
    scenario = start_session(
        [sys.executable, str(REPO / "tests" / script), str(result), *map(str, args)],
        env=env,
        log_path=tmp_path / "scenario.log",
        cwd=REPO,
    )
    try:
        code = scenario.wait(timeout=420)
    finally:
        kill_session(scenario)
    log = (tmp_path / "scenario.log").read_text(errors="replace")
    assert code == 0, log[-4000:]
    outcome = json.loads(result.read_text())
    assert outcome["driver_exit_code"] == 0, log[-4000:]
    return outcome


def status_counts(run: str, env: dict) -> str:
    status = run_cli([SPLICE, "status", run], env=env, timeout=60)
    assert status.returncode == 0, status.stderr
    return status.stdout


# --- a worker node dies --------------------------------------------------------------------------------------


def test_losing_a_worker_node_mid_run_redoes_its_pairs_and_loses_none(tmp_path):
    manifest, structures = write_pairs(tmp_path / "data", 6)
    run = tmp_path / "run"
    outcome = run_scenario(
        tmp_path,
        "ray_cluster_scenario.py",
        [manifest, run, "--method", "structure-copy"],
        child_env(**fault_env("sleep=2")),
    )

    # the node was lost in the middle of the run, with a pair on it
    assert not outcome["driver_exited_before_loss"]
    assert 0 < len(outcome["done_before_loss"]) < len(structures)
    assert_local_run_complete(run, structures)
    redone = {p for p in structures if attempts(run, p) > 1}
    assert outcome["pair_on_lost_node"] in redone, "the pair on the lost node was not run again"
    assert not redone & set(outcome["done_before_loss"]), "a pair done before the loss was run again"
    assert "6 done, 0 failed, 0 pending" in status_counts(str(run), child_env())


def test_losing_a_node_mid_evaluation_redoes_its_chunk_and_evaluate_honours_ray_address(tmp_path):
    import time

    from pipeline.runs.importer import import_outputs

    manifest, structures = write_pairs(tmp_path / "data", 8)
    outputs = tmp_path / "outputs"
    outputs.mkdir()
    for pair_id in structures:  # outputs of some method: here the structure images themselves
        shutil.copy(tmp_path / "data" / f"{pair_id}_structure.png", outputs / f"{pair_id}.png")
    run = tmp_path / "run"
    import_outputs("copy", str(outputs), str(manifest), str(run))
    started = time.monotonic()
    outcome = run_scenario(
        tmp_path,
        "ray_eval_scenario.py",
        [run, "--metrics", "selfsim", "--metric-backbone", TINY_BACKBONE, "--batch-size", "1"],
        child_env(**fault_env("eval-sleep=1.5")),
    )
    print(
        f"\nevaluation node-loss scenario: node lost at {outcome.get('node_lost_at_s', 0):.1f} s, evaluate finished "
        f"in {outcome.get('driver_s', 0):.1f} s, test {time.monotonic() - started:.1f} s"
    )
    assert not outcome["driver_exited_before_loss"], "the evaluation finished before a node could be lost"
    # every pair evaluated, the chunk that was on the lost node included: nothing lost, nothing marked failed
    metrics = pd.read_parquet(run / "eval" / "metrics.parquet")
    assert sorted(metrics["pair_id"]) == sorted(structures)
    assert (metrics["status"] == "done").all(), metrics[["pair_id", "status", "error"]]
    assert metrics["selfsim"].notna().all()
    assert np.allclose(metrics["selfsim"], 0.0, atol=1e-6)  # output == structure image: identical structure


# --- the driver dies -----------------------------------------------------------------------------------------


def snapshot(run: Path, pair_ids) -> dict:
    return {
        (p, name): ((run / "pairs" / p / name).stat().st_mtime_ns, (run / "pairs" / p / name).read_bytes())
        for p in pair_ids
        for name in (*PAIR_FILES, "_SUCCESS", "attempts.json")
    }


def test_killed_driver_resumes_and_recomputes_nothing_that_had_success(tmp_path):
    manifest, structures = write_pairs(tmp_path / "data", 8)
    run = tmp_path / "run"
    command = [SPLICE, "run", str(manifest), "--out", str(run), "--method", "structure-copy", "--no-progress"]
    env = child_env(**fault_env("sleep=1.5"))

    # 1. kill the driver, its embedded Ray and every worker outright once some pairs are done
    def started_not_done() -> set[str]:
        return {p.parent.name for p in run.glob("pairs/*/attempts.json")} - done_ids(run)

    driver = start_session(command, env=env, log_path=tmp_path / "first.log")
    try:
        wait_for(
            lambda: (len(done_ids(run)) >= 2 and started_not_done()) or driver.poll() is not None,
            timeout=180,
            what="two pairs done and more in flight",
        )
    finally:
        kill_session(driver)
    assert driver.returncode != 0, "the driver finished before it could be killed"
    done_before, in_flight = done_ids(run), started_not_done()
    assert 2 <= len(done_before) < len(structures) and in_flight
    before = snapshot(run, done_before)

    # 2. the dead driver's lock stops a plain re-run, with a message that says what to do
    locked = run_cli(command, env=env, timeout=120)
    assert locked.returncode == 2
    assert "--break-lock" in locked.stderr and "stale" in locked.stderr

    # 3. start again: the run completes and pairs that had _SUCCESS were not touched
    resumed = run_cli([*command, "--break-lock"], env=env)
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-4000:]
    assert f"({len(done_before)} skipped as already done)" in resumed.stdout
    assert_local_run_complete(run, structures)
    assert snapshot(run, done_before) == before, "a pair that had _SUCCESS was written again"
    assert all(attempts(run, p) == 1 for p in done_before)
    assert all(attempts(run, p) == 2 for p in in_flight), "pairs cut off by the kill were not redone"
    assert not (run / "_LOCK").exists()


# --- the store fails ----------------------------------------------------------------------------------------


@pytest.fixture
def faulty_s3(s3_bucket):
    """conftest's moto bucket, behind the fault-injecting proxy."""
    store = FaultyS3(s3_bucket.endpoint, s3_bucket.bucket, s3_bucket.options["key"], s3_bucket.options["secret"])
    yield store
    store.close()


def test_store_failures_are_retried_and_never_leave_success_without_output(tmp_path, faulty_s3):
    manifest, structures = write_pairs(tmp_path / "data", 6)
    for path in (tmp_path / "data").iterdir():
        faulty_s3.put(f"data/{path.name}", path.read_bytes())
    run = f"s3://{faulty_s3.bucket}/runs/faulty"
    broken = "pair-03"
    faulty_s3.proxy.rules = [
        # every pair's output fails 3 times: more than botocore's own retries (AWS_MAX_ATTEMPTS=2) absorb
        Rule("PUT", r"/output\.png$", "error", 500, times=3),
        # _SUCCESS lands but the client is told it failed; losses time out once (connection dropped)
        Rule("PUT", r"/_SUCCESS$", "error-after", 503, times=1),
        Rule("PUT", r"/losses\.parquet$", "reset", times=1),
        # reads fail too, and the store is slow
        Rule("GET", r"_structure\.png$", "reset", times=1),
        Rule("PUT", r"/meta\.json$", "delay", seconds=0.3, times=None),
    ]
    faulty_s3.proxy.rules.insert(0, Rule("PUT", rf"pairs/{broken}/output\.png$", "error", 500, times=None))
    env = child_env(**faulty_s3.client_env())
    command = [
        SPLICE,
        "run",
        f"s3://{faulty_s3.bucket}/data/manifest.parquet",
        "--out",
        run,
        "--method",
        "structure-copy",
        "--no-progress",
    ]

    # 1. with the faults: every pair but the always-failing one finishes; that one fails alone, recorded
    first = run_cli(command, env=env)
    assert first.returncode == 1, first.stdout[-2000:] + first.stderr[-4000:]
    results = read_results(faulty_s3.get("runs/faulty/results.parquet")).set_index("pair_id")
    assert results.loc[broken, "status"] == "failed" and broken in results.loc[broken, "error"]
    assert (results.drop(index=broken)["status"] == "done").all()
    for fault in ("error", "error-after", "reset", "delay"):  # the faults really happened
        assert any(e.fault == fault for e in faulty_s3.proxy.log), f"no {fault!r} fault was injected"

    # 2. no _SUCCESS ever landed before its pair's files had landed; none for the broken pair
    landed = set()
    for entry in faulty_s3.proxy.log:
        if entry.method == "PUT" and entry.landed:
            if entry.key.endswith("/_SUCCESS"):
                folder = entry.key.rsplit("/", 1)[0]
                assert {f"{folder}/{name}" for name in PAIR_FILES} <= landed, f"{entry.key} before its files"
            landed.add(entry.key)
    keys = faulty_s3.keys("runs/faulty/pairs/")
    assert f"runs/faulty/pairs/{broken}/_SUCCESS" not in keys
    for pair_id in set(structures) - {broken}:
        files = {name: faulty_s3.get(f"runs/faulty/pairs/{pair_id}/{name}") for name in PAIR_FILES}
        assert_pair_intact(files, structures[pair_id], pair_id)

    # 3. `splice status` from storage alone, straight at the store (no proxy, no Ray): where the run stands
    direct = child_env(**faulty_s3.client_env(through_proxy=False))
    assert "5 done, 1 failed, 0 pending" in status_counts(run, direct)

    # 4. the store recovers; running again retries the failed pair only
    faulty_s3.proxy.rules = []
    seen = len(faulty_s3.proxy.log)
    second = run_cli(command, env=env)
    assert second.returncode == 0, second.stdout[-2000:] + second.stderr[-4000:]
    rewritten = {
        e.key.split("/")[3]
        for e in faulty_s3.proxy.log[seen:]
        if e.method == "PUT" and e.key.startswith("runs/faulty/pairs/")
    }
    assert rewritten == {broken}, f"pairs done before were written again: {sorted(rewritten - {broken})}"
    results = read_results(faulty_s3.get("runs/faulty/results.parquet"))
    assert sorted(results["pair_id"]) == sorted(structures) and (results["status"] == "done").all()
    assert_pair_intact(
        {name: faulty_s3.get(f"runs/faulty/pairs/{broken}/{name}") for name in PAIR_FILES}, structures[broken], broken
    )
    assert "6 done, 0 failed, 0 pending" in status_counts(run, direct)


# --- a `ray start --head` cluster with token authentication ---------------------------------------------------


@pytest.fixture(scope="module")
def token_cluster(tmp_path_factory):
    """A one-node cluster started as users start a head (`ray start --head`), token authentication on, every port
    free-picked; ended by its session id."""
    folder = tmp_path_factory.mktemp("cluster")
    token = folder / "auth_token"
    token.write_text(secrets.token_hex(32))
    auth = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token)}
    ports = {
        name: free_port()
        for name in (
            "port",
            "dashboard-port",
            "dashboard-agent-listen-port",
            "dashboard-agent-grpc-port",
            "runtime-env-agent-port",
            "metrics-export-port",
            "node-manager-port",
            "object-manager-port",
            "ray-client-server-port",
        )
    }
    temp_dir = Path(f"/tmp/rt{secrets.token_hex(3)}")  # short: Ray's socket paths must fit in 107 characters
    head = start_session(
        [
            RAY,
            "start",
            "--head",
            "--block",
            "--num-cpus=2",
            "--num-gpus=0",
            "--object-store-memory=100000000",
            "--dashboard-host=127.0.0.1",
            f"--temp-dir={temp_dir}",
            "--disable-usage-stats",
            *[f"--{name}={port}" for name, port in ports.items()],
        ],
        env=child_env(**auth),
        log_path=folder / "head.log",
    )
    dashboard = f"http://127.0.0.1:{ports['dashboard-port']}"

    def dashboard_up():
        try:
            urllib.request.urlopen(f"{dashboard}/api/version", timeout=2)
        except urllib.error.HTTPError:
            return True  # it answers (401: the token is required)
        except OSError:
            return head.poll() is not None
        return True

    try:
        wait_for(dashboard_up, timeout=120, interval=0.5, what="the Ray head's dashboard")
        assert head.poll() is None, (folder / "head.log").read_text()[-3000:]
        yield {"address": f"127.0.0.1:{ports['port']}", "dashboard": dashboard, "auth": auth}
    finally:
        kill_session(head, term_first=20)
        subprocess.run(["rm", "-rf", str(temp_dir)], check=False)


def test_ray_job_submit_runs_a_tiny_run_into_the_store(tmp_path, token_cluster):
    manifest, structures = write_pairs(tmp_path / "data", 2, size=(64, 80))
    run = tmp_path / "run"
    submit = run_cli(
        [
            RAY,
            "job",
            "submit",
            "--address",
            token_cluster["dashboard"],
            "--working-dir",
            ".",
            "--",
            "splice",
            "run",
            str(manifest),
            "--out",
            str(run),
            "--method",
            "splice",
            "--backbone",
            TINY_BACKBONE,
            "--steps",
            "2",
            "--no-progress",
        ],
        env=child_env(**token_cluster["auth"]),
        cwd=REPO,
        timeout=300,
    )
    assert submit.returncode == 0, submit.stdout[-4000:] + submit.stderr[-2000:]
    assert_local_run_complete(run, structures, copies=False)
    for pair_id, structure in structures.items():
        output = Image.open(run / "pairs" / pair_id / "output.png")
        assert output.size == (structure.shape[1], structure.shape[0])
        meta = json.loads((run / "pairs" / pair_id / "meta.json").read_text())
        assert meta["weights_id"] == "random"
    assert "2 done, 0 failed, 0 pending" in status_counts(str(run), child_env())


def test_splice_run_address_works_against_a_token_cluster(tmp_path, token_cluster):
    manifest, structures = write_pairs(tmp_path / "data", 3)
    run = tmp_path / "run"
    result = run_cli(
        [
            SPLICE,
            "run",
            str(manifest),
            "--out",
            str(run),
            "--address",
            token_cluster["address"],
            "--method",
            "structure-copy",
            "--no-progress",
        ],
        env=child_env(**token_cluster["auth"]),
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    assert_local_run_complete(run, structures)
    record = json.loads((run / "run.json").read_text())
    assert record["ray_address"] == token_cluster["address"]


def test_the_cluster_refuses_a_client_without_the_token(tmp_path, token_cluster):
    refused = run_cli(
        [RAY, "job", "submit", "--address", token_cluster["dashboard"], "--", "echo", "hi"],
        env=child_env(),
        timeout=120,
    )
    assert refused.returncode != 0
    assert "Authentication" in refused.stdout + refused.stderr
    wrong = {**token_cluster["auth"], "RAY_AUTH_TOKEN": "not-the-token"}
    refused = run_cli(
        [RAY, "job", "submit", "--address", token_cluster["dashboard"], "--", "echo", "hi"],
        env=child_env(**wrong),
        timeout=120,
    )
    assert refused.returncode != 0
