"""A multi-node Ray cluster on one machine that loses the node of an evaluation actor while `splice evaluate`
(pointed at the cluster by RAY_ADDRESS alone) has a chunk of pairs in flight there.

Run by tests/test_fault_tolerance.py in a process (and session) of its own:

    python tests/ray_eval_scenario.py RUN RESULT.json [splice evaluate options...]

1. start a head without CPUs and one 1-CPU worker node (so one evaluation actor, holding every chunk);
2. start `splice evaluate RUN` with RAY_ADDRESS set to the cluster, as a separate driver process;
3. once an actor is inside `evaluate` (its process title says so), kill its node outright and add a fresh one;
4. wait for the driver and write what happened to RESULT.json.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

from ray.cluster_utils import Cluster

from faults import free_port, wait_for
from ray_cluster_scenario import node_args, node_running

IN_FLIGHT_TIMEOUT = 150  # actors import torch and build their models first: slow on a 2-core machine
DRIVER_TIMEOUT = 240
FAST_NODE_DEATH = {"health_check_period_ms": 1000, "health_check_failure_threshold": 2}  # a lost node is seen in ~2 s


def evaluating_pids() -> list[int]:
    """Processes whose title says they are running `_Worker.evaluate` (Ray titles workers by their current task)."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    if b"_Worker.evaluate" in f.read():
                        pids.append(int(entry))
            except OSError:
                continue
    return pids


def main(run: str, result_path: str, options: list[str]) -> int:
    # 1. the cluster
    cluster = Cluster(initialize_head=True,
                      head_node_args=node_args(num_cpus=0, include_dashboard=False, gcs_server_port=free_port(),
                                               _system_config=FAST_NODE_DEATH))
    cluster.add_node(**node_args())
    cluster.wait_for_nodes()
    result = {"address": cluster.address}
    try:
        # 2. the driver, told where the cluster is by RAY_ADDRESS only
        splice = shutil.which("splice", path=os.path.dirname(sys.executable)) or shutil.which("splice")
        driver = subprocess.Popen([splice, "evaluate", run, "--no-progress", *options],
                                  env={**os.environ, "RAY_ADDRESS": cluster.address})
        started = time.monotonic()

        def in_flight():
            for pid in evaluating_pids():
                node = node_running(pid, cluster.worker_nodes)
                if node is not None:
                    return {"pid": pid, "node": node}
            return None

        # 3. lose the node of an actor in the middle of a chunk; get a new one
        strike = wait_for(lambda: in_flight() or driver.poll() is not None, timeout=IN_FLIGHT_TIMEOUT,
                          what="an evaluation actor inside a chunk")
        result["driver_exited_before_loss"] = driver.poll() is not None
        if not result["driver_exited_before_loss"]:
            time.sleep(0.3)
            cluster.remove_node(strike["node"], allow_graceful=False)
            result["node_lost_at_s"] = time.monotonic() - started
            result["actor_pid_lost"] = strike["pid"]
        cluster.add_node(**node_args())
        # 4. the driver finishes the evaluation
        result["driver_exit_code"] = driver.wait(timeout=DRIVER_TIMEOUT)
        result["evaluate_s"] = time.monotonic() - started
    finally:
        with open(result_path, "w") as f:
            json.dump(result, f, indent=2)
        cluster.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2], sys.argv[3:]))
