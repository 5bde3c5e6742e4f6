"""A multi-node Ray cluster on one machine that loses a worker node while `splice run --address` works on it.

Run by tests/test_fault_tolerance.py in a process (and session) of its own, so that its Ray cluster never meets
the Ray session of the pytest process:

    python tests/ray_cluster_scenario.py MANIFEST OUT RESULT.json [splice run options...]

1. start a head without CPUs (so pairs run on workers only) and two 1-CPU worker nodes;
2. start `splice run MANIFEST --out OUT --address <head>` as a separate driver process;
3. once a pair is done and another has just started, kill the node running that one outright (no graceful
   shutdown: a reclaimed spot node) and add a fresh one (the autoscaler's replacement);
4. wait for the driver and write what happened to RESULT.json.
"""
from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import sys
import time

from ray.cluster_utils import Cluster

from faults import free_port, wait_for

FIRST_DONE_TIMEOUT = 120  # worker processes import torch on first use: slow on a 2-core machine
DRIVER_TIMEOUT = 240


def node_args(**extra) -> dict:
    # free ports everywhere a fixed default could meet another Ray instance on this machine
    return {"num_cpus": 1, "object_store_memory": 80 * 1024 * 1024, "dashboard_agent_listen_port": free_port(),
            "metrics_export_port": free_port(), "runtime_env_agent_port": free_port(), **extra}


def main(manifest: str, out: str, result_path: str, run_options: list[str]) -> int:
    # 1. the cluster
    cluster = Cluster(initialize_head=True,
                      head_node_args=node_args(num_cpus=0, include_dashboard=False, gcs_server_port=free_port()))
    for _ in range(2):
        cluster.add_node(**node_args())
    cluster.wait_for_nodes()
    result = {"address": cluster.address}
    try:
        # 2. the driver
        splice = shutil.which("splice", path=os.path.dirname(sys.executable)) or shutil.which("splice")
        driver = subprocess.Popen([splice, "run", manifest, "--out", out, "--address", cluster.address,
                                   "--no-progress", *run_options])
        started = time.monotonic()

        def pairs_with(name: str) -> set[str]:
            return {p.split(os.sep)[-2] for p in glob.glob(os.path.join(out, "pairs", "*", name))}

        def just_started() -> dict | None:
            """A pair started in the last half second (so seconds from done) and the node running it, once some
            pair is done; None before that."""
            done = pairs_with("_SUCCESS")
            if not done:
                return None
            for pair_id in sorted(pairs_with("attempts.json") - done):
                path = os.path.join(out, "pairs", pair_id, "attempts.json")
                try:
                    age = time.time() - os.path.getmtime(path)
                    with open(path) as f:
                        worker_pid = json.load(f)["attempts"][-1]["pid"]
                except (OSError, ValueError, KeyError, IndexError):  # being written: look again
                    continue
                node = node_running(worker_pid, cluster.worker_nodes)
                if age < 0.5 and node is not None:
                    return {"pair_id": pair_id, "node": node, "done": sorted(done)}
            return None

        strike = wait_for(lambda: just_started() or driver.poll() is not None, timeout=FIRST_DONE_TIMEOUT,
                          what="a pair done and another just started")
        # 3. lose the node that has just started a pair, in the middle of the run; get a new one
        result["driver_exited_before_loss"] = driver.poll() is not None
        if not result["driver_exited_before_loss"]:
            cluster.remove_node(strike["node"], allow_graceful=False)
            result["node_lost_at_s"] = time.monotonic() - started
            result["done_before_loss"] = strike["done"]
            result["pair_on_lost_node"] = strike["pair_id"]
        cluster.add_node(**node_args())
        # 4. the driver finishes the run
        result["driver_exit_code"] = driver.wait(timeout=DRIVER_TIMEOUT)
        result["run_s"] = time.monotonic() - started
    finally:
        with open(result_path, "w") as f:
            json.dump(result, f, indent=2)
        cluster.shutdown()
    return 0


def node_running(pid: int, nodes) -> object | None:
    """The cluster node whose raylet is an ancestor of process `pid` (workers are the raylet's children)."""
    raylets = {node.all_processes["raylet"][0].process.pid: node for node in nodes}
    while pid > 1:
        if pid in raylets:
            return raylets[pid]
        try:
            with open(f"/proc/{pid}/stat") as f:
                pid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError):
            return None
    return None


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]))
