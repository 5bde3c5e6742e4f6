"""A multi-node Ray cluster on one machine that loses a worker node while `splice run --address` works on it.

Run by tests/test_fault_tolerance.py in a process (and session) of its own, so that its Ray cluster never meets
the Ray session of the pytest process:

    python tests/ray_cluster_scenario.py MANIFEST OUT RESULT.json [splice run options...]

1. start a head without CPUs (so pairs run on workers only) and two 1-CPU worker nodes;
2. start `splice run MANIFEST --out OUT --address <head>` as a separate driver process;
3. once a pair is done and each node has started another, kill one worker node outright
   (no graceful shutdown: a reclaimed spot node) and add a fresh one (the autoscaler's replacement);
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
    workers = [cluster.add_node(**node_args()) for _ in range(2)]
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

        def both_nodes_busy() -> bool:  # a pair done, and two started but not done: one in flight on each node
            done = pairs_with("_SUCCESS")
            return driver.poll() is not None or (done and len(pairs_with("attempts.json") - done) >= 2)

        wait_for(both_nodes_busy, timeout=FIRST_DONE_TIMEOUT, what="a first pair done and both nodes busy")
        # 3. lose a node in the middle of the run, get a new one
        result["done_before_loss"] = sorted(pairs_with("_SUCCESS"))
        result["in_flight_at_loss"] = sorted(pairs_with("attempts.json") - pairs_with("_SUCCESS"))
        result["driver_exited_before_loss"] = driver.poll() is not None
        cluster.remove_node(workers[0], allow_graceful=False)
        result["node_lost_at_s"] = time.monotonic() - started
        cluster.add_node(**node_args())
        # 4. the driver finishes the run
        result["driver_exit_code"] = driver.wait(timeout=DRIVER_TIMEOUT)
        result["run_s"] = time.monotonic() - started
    finally:
        with open(result_path, "w") as f:
            json.dump(result, f, indent=2)
        cluster.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]))
