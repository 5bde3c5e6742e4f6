"""A multi-node Ray cluster on one machine that loses a worker node while `splice run --address` works on it.

Run by tests/test_fault_tolerance.py in a process (and session) of its own, so that its Ray cluster never meets
the Ray session of the pytest process:

    python tests/ray_cluster_scenario.py RESULT.json MANIFEST OUT [splice run options...]

A head without CPUs and two 1-CPU worker nodes; once a pair is done and another has just started, the node running
that one is killed outright and a fresh one added (tests/ray_node_loss.py). RESULT.json also records
done_before_loss and pair_on_lost_node.
"""

from __future__ import annotations

import glob
import json
import os
import sys
import time

from ray_node_loss import lose_a_node, node_running, splice_command

FIRST_DONE_TIMEOUT = 120  # worker processes import torch on first use: slow on a 2-core machine


def main(result_path: str, manifest: str, out: str, run_options: list[str]) -> int:
    def pairs_with(name: str) -> set[str]:
        return {p.split(os.sep)[-2] for p in glob.glob(os.path.join(out, "pairs", "*", name))}

    def just_started(cluster) -> dict | None:
        """A pair started in the last half second (so seconds from done) and the node running it, once some pair
        is done; None before that."""
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
                return {"node": node, "pair_on_lost_node": pair_id, "done_before_loss": sorted(done)}
        return None

    return lose_a_node(
        result_path,
        lambda address: splice_command(
            "run", manifest, "--out", out, "--address", address, "--no-progress", *run_options
        ),
        just_started,
        workers=2,
        strike_timeout=FIRST_DONE_TIMEOUT,
        what="a pair done and another just started",
    )


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]))
