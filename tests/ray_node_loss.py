"""A multi-node Ray cluster on one machine that loses a worker node while a command works on it: the skeleton of
tests/ray_cluster_scenario.py (`splice run`) and tests/ray_eval_scenario.py (`splice evaluate`).

1. start a head without CPUs (so the work runs on worker nodes only) and `workers` 1-CPU worker nodes;
2. start the command as a separate driver process;
3. once `strike(cluster)` names a node (the scenario's moment: a pair just started, a chunk in flight), kill that
   node outright (no graceful shutdown: a reclaimed spot node) and add a fresh one (the autoscaler's replacement);
4. wait for the driver and write what happened to RESULT.json.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable

from ray.cluster_utils import Cluster

from faults import free_port, wait_for

DRIVER_TIMEOUT = 240


def node_args(**extra) -> dict:
    # free ports everywhere a fixed default could meet another Ray instance on this machine
    return {
        "num_cpus": 1,
        "object_store_memory": 80 * 1024 * 1024,
        "dashboard_agent_listen_port": free_port(),
        "metrics_export_port": free_port(),
        "runtime_env_agent_port": free_port(),
        **extra,
    }


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


def splice_command(*args: str) -> list[str]:
    """`splice ARGS...` from the environment under test."""
    return [shutil.which("splice", path=os.path.dirname(sys.executable)) or shutil.which("splice"), *args]


def lose_a_node(
    result_path: str,
    command: Callable[[str], list[str]],
    strike: Callable[[Cluster], dict | None],
    *,
    workers: int,
    strike_timeout: float,
    what: str,
    env: Callable[[str], dict] | None = None,
    head_config: dict | None = None,
    settle: float = 0.0,
) -> int:
    """Run the scenario (see the module docstring). `command(address)` and `env(address)` give the driver's command
    line and environment; `strike(cluster)` returns None until the moment comes, then {"node": node, ...}: the
    node to lose and what to record about it. RESULT.json holds driver_exited_before_loss, node_lost_at_s, the
    strike's record, driver_exit_code and driver_s."""
    # 1. the cluster
    head = node_args(
        num_cpus=0,
        include_dashboard=False,
        gcs_server_port=free_port(),
        **({"_system_config": head_config} if head_config else {}),
    )
    cluster = Cluster(initialize_head=True, head_node_args=head)
    for _ in range(workers):
        cluster.add_node(**node_args())
    cluster.wait_for_nodes()
    result = {"address": cluster.address}
    try:
        # 2. the driver
        driver = subprocess.Popen(command(cluster.address), env=env(cluster.address) if env else None)
        started = time.monotonic()
        # 3. lose the struck node in the middle of the work; get a new one
        found = wait_for(lambda: strike(cluster) or driver.poll() is not None, timeout=strike_timeout, what=what)
        result["driver_exited_before_loss"] = driver.poll() is not None
        if not result["driver_exited_before_loss"]:
            time.sleep(settle)
            cluster.remove_node(found.pop("node"), allow_graceful=False)
            result["node_lost_at_s"] = time.monotonic() - started
            result.update(found)
        cluster.add_node(**node_args())
        # 4. the driver finishes
        result["driver_exit_code"] = driver.wait(timeout=DRIVER_TIMEOUT)
        result["driver_s"] = time.monotonic() - started
    finally:
        with open(result_path, "w") as f:
            json.dump(result, f, indent=2)
        cluster.shutdown()
    return 0
