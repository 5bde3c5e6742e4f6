"""A multi-node Ray cluster on one machine that loses the node of an evaluation actor while `splice evaluate`
(pointed at the cluster by RAY_ADDRESS alone) has a chunk of pairs in flight there.

Run by tests/test_fault_tolerance.py in a process (and session) of its own:

    python tests/ray_eval_scenario.py RESULT.json RUN [splice evaluate options...]

A head without CPUs and one 1-CPU worker node (so one evaluation actor, holding every chunk); once the actor is
inside `evaluate` (its process title says so), its node is killed outright and a fresh one added
(tests/ray_node_loss.py). RESULT.json also records actor_pid_lost.
"""

from __future__ import annotations

import os
import sys

from ray_node_loss import lose_a_node, node_running, splice_command

IN_FLIGHT_TIMEOUT = 150  # actors import torch and build their models first: slow on a 2-core machine
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


def in_flight(cluster) -> dict | None:
    for pid in evaluating_pids():
        node = node_running(pid, cluster.worker_nodes)
        if node is not None:
            return {"node": node, "actor_pid_lost": pid}
    return None


def main(result_path: str, run: str, options: list[str]) -> int:
    return lose_a_node(
        result_path,
        lambda address: splice_command("evaluate", run, "--no-progress", *options),
        in_flight,
        env=lambda address: {**os.environ, "RAY_ADDRESS": address},  # told where the cluster is by RAY_ADDRESS only
        workers=1,
        strike_timeout=IN_FLIGHT_TIMEOUT,
        what="an evaluation actor inside a chunk",
        head_config=FAST_NODE_DEATH,
        settle=0.3,
    )


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2], sys.argv[3:]))
