"""How a pair is retried: the one place that says it, and the code of the part that is Ray's.

A pair is attempted again in exactly three cases, and never otherwise:

1. **Its worker process died** (out of memory, a node lost, a preempted machine) while the pair was in flight. Ray
   re-runs the task up to `--max-retries` times (`task_options`: `max_retries`, and `retry_exceptions=False`, so an
   exception is never retried by Ray: a bad pair fails the same way every time). The re-run task goes through the
   ordinary per-pair path (worker.run_pair): pairs of the pack already done (`_SUCCESS`) are skipped, the others
   resume from their last checkpoint (`--checkpoint-every`) or start again. After the last death the pair gets a
   failed row that says so (`collect_pack`).
2. **The command runs again** (`splice run` with the same manifest and --out): pairs with `_SUCCESS` whose files
   still match it are skipped; failed, pending and interrupted pairs are redone, resuming from their checkpoint;
   damaged pairs (files no longer matching `_SUCCESS`) are redone from scratch (rerun.plan_rerun decides, from the
   run folder alone).
3. **`--force`**: done pairs whose inputs or settings changed are redone from scratch (their marker, checkpoint and
   attempts go first: PairFolder.forget).

Every start of a pair is recorded in `pairs/<id>/attempts.json` (PairFolder.record_attempt), so `attempts` in
results.parquet counts the tries of all three kinds. A failed pair's error goes to results.parquet and its traceback
to `pairs/<id>/error.txt`; a later successful attempt clears it.
"""

from __future__ import annotations

import ray

from pipeline.method.registry import get_method
from pipeline.runs.jobs import PairJob
from pipeline.runs.run_folder import PairStatus
from pipeline.storage import redact_text


def task_options(max_retries: int) -> dict:
    """The retry part of a pack task's Ray options: re-run a task whose worker died, never one that raised."""
    return {"max_retries": max_retries, "retry_exceptions": False}


def collect_pack(ref, jobs: list[PairJob], max_retries: int) -> list[dict]:
    """The rows of a pack's pairs; where the whole task failed (its worker died every time), a failed row for each."""
    outcome = _collect(ref, jobs[0], max_retries)
    if isinstance(outcome, list):
        return outcome
    return [outcome] + [_collect(ref, job, max_retries) for job in jobs[1:]]


def _collect(ref, job: PairJob, max_retries: int):
    try:
        return ray.get(ref)
    except ray.exceptions.WorkerCrashedError:
        error = (
            f"pair {job.pair_id!r}: its worker process died {max_retries + 1} time(s) (out of memory?); "
            f"run again to retry it"
        )
    except ray.exceptions.RayError as exc:
        error = f"pair {job.pair_id!r}: {type(exc).__name__}: {redact_text((str(exc).splitlines() or [''])[0])[:300]}"
    return {
        "pair_id": job.pair_id,
        "status": PairStatus.FAILED.value,
        "error": error,
        "method": get_method(job.method).name,
        "attempts": max_retries + 1,
    }
