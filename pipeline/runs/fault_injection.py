"""TEST-ONLY fault injection for `splice run`: crashed workers and slow pairs, on demand.

SPLICE_FAULT_INJECTION="kill-once=ID1,ID2;kill-after-write=ID3;sleep=1.5;eval-sleep=2", read by the driver,
carried in jobs (and to `splice evaluate`'s Ray actors):
  kill-once:        on the pair's first attempt the worker writes a partial output.png and exits hard (os._exit);
  kill-after-write: on the first attempt the worker exits hard just after writing the complete pair;
  sleep:            every pair sleeps that many seconds after reading its images;
  eval-sleep:       every chunk of `splice evaluate` on Ray sleeps that many seconds before it starts.
  pause=NAME:PATH:  a command reaching the point NAME (see `pause_at`) creates PATH.waiting, then waits until PATH
                    exists, so that a test can act (run a second command, kill this one) at a known point.
Used by tests/test_run.py, tests/test_fault_tolerance.py and tests/test_run_folder.py to simulate crashed workers, slow pairs and concurrent
commands. Never set it in production.
"""
from __future__ import annotations

import os
import time

from pipeline.runs import layout

FAULT_ENV = "SPLICE_FAULT_INJECTION"


def fault_plan(pair_id: str) -> dict | None:
    text = os.environ.get(FAULT_ENV)
    if not text:
        return None
    plan = {}
    for part in filter(None, (p.strip() for p in text.split(";"))):
        name, _, value = part.partition("=")
        if name in ("kill-once", "kill-after-write") and pair_id in value.split(","):
            plan[name.replace("-", "_")] = True
        elif name == "sleep":
            plan["sleep"] = float(value)
    return plan or None


def inject_fault(job, attempt: int, storage, after_write: bool = False) -> None:
    """Exit the worker hard at the planned point of a pair's first attempt."""
    if not job.fault or attempt != 1:
        return
    if job.fault.get("kill_after_write") and after_write:
        os._exit(1)
    if job.fault.get("kill_once") and not after_write:
        storage.write_bytes(layout.join(job.pair_dir, layout.OUTPUT_PNG), b"\x89PNG half-written")
        os._exit(1)


def inject_delay(job) -> None:
    """Sleep as planned, so that tests can interrupt a run while pairs are in flight."""
    if job.fault and job.fault.get("sleep"):
        time.sleep(float(job.fault["sleep"]))


def chunk_delay() -> float:
    """Seconds each evaluation chunk sleeps (eval-sleep=S), so that tests can lose a node while one is in flight."""
    for part in filter(None, (p.strip() for p in os.environ.get(FAULT_ENV, "").split(";"))):
        name, _, value = part.partition("=")
        if name == "eval-sleep":
            return float(value)
    return 0.0


def pause_at(point: str, timeout: float = 300.0) -> None:
    """Wait at `point` while a test holds this command there (pause=POINT:PATH in the environment)."""
    text = os.environ.get(FAULT_ENV) or ""
    for part in filter(None, (p.strip() for p in text.split(";"))):
        name, _, value = part.partition("=")
        where, _, path = value.partition(":")
        if name == "pause" and where == point and path and not os.path.exists(path):
            open(f"{path}.waiting", "w").close()
            deadline = time.monotonic() + timeout
            while not os.path.exists(path) and time.monotonic() < deadline:
                time.sleep(0.05)
