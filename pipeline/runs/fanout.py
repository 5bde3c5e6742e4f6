"""The driver of `splice run`: one Ray task per pack of pairs (a pack of one by default on CPUs), results collected
as they finish.

`run_manifest`: validate the manifest, lock the run folder, record run.json and manifest.parquet, skip pairs that
have `_SUCCESS`, submit the rest (a bounded window of tasks in flight), collect them with ray.wait, and keep
results.parquet up to date so an interrupted driver loses nothing. What is stored, and where, is the run folder's
business (run_folder.py, docs/run-layout.md); what a re-run may do: rerun.py. The rest of a run has a room each:
the settings and job types (jobs.py), the Ray connection (ray_session.py), which pairs form a pack (packs.py), what a
task does with its pack (worker.py, rendezvous.py), and when a pair is attempted again (retries.py).
"""

from __future__ import annotations

import dataclasses
import errno
import logging
import time
from collections import deque

import ray

from manifests.schema import read_manifest
from pipeline import plugins
from pipeline.errors import SpliceError, StorageError
from pipeline.method.registry import get_method
from pipeline.runs import hooks, layout, packs, ray_session, rerun, retries
from pipeline.runs.jobs import PairJob, RunSettings, RunSummary, make_job, resolve_task_settings, select_pairs
from pipeline.runs.progress import RunProgress
from pipeline.runs.run_folder import PairStatus, ResultsTable, RunFolder
from pipeline.runs.worker import pack_task
from pipeline.storage import Storage, absolute, is_local, redact, redact_text, redact_url

__all__ = ["RunSettings", "RunSummary", "resolve_task_settings", "run_manifest"]
log = logging.getLogger(__name__)
WAIT_SECONDS = 1.0  # ray.wait timeout: how often the driver wakes to flush results and notice Ctrl-C


def run_manifest(manifest_url: str, settings: RunSettings) -> RunSummary:
    started = time.perf_counter()
    settings = dataclasses.replace(settings, out=absolute(settings.out))  # workers have other working folders
    # 1. validate everything before any work: method, manifest, selection, per-pair settings, the target
    storage = Storage(settings.storage_options)
    method = get_method(settings.method)
    settings, method = _prepare_method(settings, method, storage)
    settings = dataclasses.replace(settings, method=method.spec)  # how workers name it (a plug-in: its absolute path)
    manifest = read_manifest(manifest_url, storage)
    selected = select_pairs(manifest, settings.only, settings.limit)
    settings = resolve_task_settings(settings)
    folder = RunFolder(storage, settings.out)
    folder.check_target()
    settings = rerun.keep_crop_schedule(folder, method, settings)  # a run made before the shared crop sides
    jobs = [make_job(pair, settings) for pair in selected]

    # 2. one writer per run folder
    run_lock = folder.lock("splice run", break_lock=settings.break_lock, break_stale=settings.break_stale_lock)
    with run_lock:
        # 3. compare with what the folder was made from, record the run, find what is left to do
        plan, record, results = _begin(folder, manifest, method, settings, jobs)
        jobs = [dataclasses.replace(job, lock_token=run_lock.token) for job in jobs]
        todo = [job for job in jobs if job.pair_id not in plan.found.done]
        skipped = len(jobs) - len(todo)
        _say_what_runs(jobs, todo, method, settings)
        # 4. fan out and collect; storage is the truth at the end
        storage_error, packing = None, {}
        try:
            _fan_out(todo, settings, results, skipped, run_lock, packing)
        finally:
            storage_error = _end(folder, run_lock, {**record, **packing}, results)
        if run_lock.lost is not None:  # taken over: LockLost, having written nothing more
            run_lock.check()
    counts = results.counts()
    done, failed = counts[PairStatus.DONE], counts[PairStatus.FAILED]
    return RunSummary(
        out=settings.out,
        total=len(results.rows),
        done=done,
        skipped=skipped,
        failed=failed,
        pending=len(results.rows) - done - failed,
        seconds=time.perf_counter() - started,
        failures=results.failures(),
        damaged=len(plan.found.damaged),
        storage_error=storage_error,
    )


def _begin(folder: RunFolder, manifest, method, settings: RunSettings, jobs: list[PairJob]):
    """Under the lock: check the folder agrees with this run (rerun.plan_rerun), then record the run. Returns the
    plan, run.json as written, and the results table to fill."""
    plan = rerun.plan_rerun(
        folder,
        manifest,
        {job.pair_id for job in jobs},
        force=settings.force,
        verify=settings.verify,
        settings_check=lambda existing: rerun.settings_mismatch(existing, settings.out, method, settings.config),
    )
    try:
        folder.write_inputs(plan.inputs)  # first: a run.json without them then always has them beside it
        record = folder.write_record(rerun.run_record(settings, method, manifest, existing=plan.existing))
        folder.write_manifest(plan.manifest_frame)
        folder.unmark(plan.unmark)  # first, so an interrupted run never leaves them marked done
    except OSError as exc:
        raise StorageError(f"cannot write run folder {redact_url(settings.out)}: {_os_reason(exc)}") from None
    return plan, record, ResultsTable(folder, list(plan.manifest_frame["pair_id"]), plan.found)


def _say_what_runs(jobs: list[PairJob], todo: list[PairJob], method, settings: RunSettings) -> None:
    log.info(
        "%d pair(s) selected: %d already done, %d to run with method %s -> %s",
        len(jobs),
        len(jobs) - len(todo),
        len(todo),
        method.name,
        redact_url(settings.out),
    )
    for spec in sorted({job.config.backbone for job in todo if method.uses_backbone}):
        if spec.startswith("random:"):  # said here once, not by every worker that loads it
            log.warning("backbone %s has RANDOM weights: outputs are for testing only and are labelled 'random'", spec)


def _end(folder: RunFolder, run_lock, record: dict, results: ResultsTable) -> str | None:
    """results.parquet and run.json from what storage holds; nothing when the lock was taken over (fenced)."""
    if run_lock.lost is not None:
        return None
    results.mark_done(folder.scan())
    return _write_final(folder, record, results, results.counts())


def _prepare_method(settings: RunSettings, method, storage: Storage):
    """A batched method reads and checks what it needs before any work (splicenet: its checkpoint, fingerprinted);
    its resolved options become part of the run's settings, so other options make another run."""
    if method.batched is None:
        if settings.method_options:
            raise SpliceError(
                f"method {method.name} takes no options such as {', '.join(sorted(settings.method_options))}"
            )
        return settings, method
    config, options = method.batched.prepare(settings.config, settings.method_options, storage.read_bytes)
    settings = dataclasses.replace(settings, config=config, method_options=options)
    return settings, method.with_options(redact(options))


def _write_final(folder: RunFolder, record: dict, results: ResultsTable, counts: dict) -> str | None:
    """results.parquet and run.json at the end; a storage error (e.g. disk full) is reported, not raised."""
    try:
        results.write()
        folder.write_record(rerun.finished_record(record, counts, results.weights_ids()))
    except OSError as exc:
        reason = (
            f"cannot write {layout.RESULTS} / {layout.RUN_JSON} in {redact_url(folder.url)}: {_os_reason(exc)}; "
            f"`splice status` rebuilds the counts from the pair folders"
        )
        log.error("%s", reason)
        return reason
    return None


def _os_reason(exc: OSError) -> str:
    if exc.errno == errno.ENOSPC:
        return "no space left on the device: free some space (or write elsewhere) and run again"
    return redact_text(exc.strerror or exc).splitlines()[0][:300]


def _fan_out(
    todo: list[PairJob], settings: RunSettings, results: ResultsTable, skipped: int, run_lock, packing: dict
) -> None:
    """Run `todo` as Ray tasks of packs, collecting each pair's row into `results`; `packing` gets how the pairs
    were grouped."""
    if not todo:
        return
    # a plug-in method's file or package goes to the workers with the job (Ray's runtime_env py_modules)
    started_ray = ray_session.connect_ray(settings.address, plugins.runtime_env([get_method(settings.method).run]))
    cluster = ray_session.address(settings.address)
    if cluster and is_local(settings.out):
        log.warning(
            "--out %s is a local path but pairs run on a Ray cluster: each node writes to its own disk unless "
            "the path is shared storage; prefer s3://, gs://, ...",
            settings.out,
        )
    try:
        gpus = ray_session.gpus_per_task(settings.gpus_per_task, started_embedded=started_ray and not cluster)
        planned, packing["packing"] = packs.plan(todo, settings, gpus)
        _drive(_Window(planned, settings, gpus), settings, results, skipped, run_lock, cancel=not started_ray)
    finally:
        if started_ray:  # ending the driver's job also ends its in-flight tasks
            ray.shutdown()


def _drive(window, settings: RunSettings, results: ResultsTable, skipped: int, run_lock, cancel: bool) -> None:
    """Collect the window's packs under a progress bar; stop the pairs still in flight when leaving early on a Ray
    that outlives this driver (`cancel`) or when the lock was taken over."""
    steps = {job.pair_id: job.config.steps if get_method(job.method).uses_backbone else 0 for job in window.jobs()}
    bar = RunProgress(
        Storage(settings.storage_options), settings.out, steps, enabled=settings.progress, skipped=skipped
    )
    try:
        _collect(window, settings, results, bar, run_lock)
    finally:
        bar.close()
        if window.pending and (cancel or run_lock.lost is not None):  # stop our in-flight pairs
            ray_session.cancel(list(window.pending))


class _Window:
    """A bounded window of pack tasks in flight: packs go in as others finish, so the driver holds a few refs."""

    def __init__(self, planned: list[list[PairJob]], settings: RunSettings, gpus: float):
        self.task = pack_task.options(
            num_cpus=settings.cpus_per_task,
            num_gpus=gpus,
            runtime_env=hooks.runtime_env(),
            **retries.task_options(settings.max_retries),
        )
        self.size = max(8, 2 * ray_session.slots(settings.cpus_per_task, gpus))
        self.compile = settings.compile
        self.queue, self.pending = deque(planned), {}

    def __bool__(self) -> bool:
        return bool(self.queue or self.pending)

    def fill(self) -> None:
        while self.queue and len(self.pending) < self.size:
            pack = self.queue.popleft()
            self.pending[self.task.remote(pack, self.compile)] = pack

    def finished(self) -> list[tuple[object, list[PairJob]]]:
        """The packs that finished within WAIT_SECONDS (at most one), with their refs."""
        ready, _ = ray.wait(list(self.pending), num_returns=1, timeout=WAIT_SECONDS)
        return [(ref, self.pending.pop(ref)) for ref in ready]

    def jobs(self) -> list[PairJob]:
        return [job for pack in [*self.queue, *self.pending.values()] for job in pack]

    def in_flight(self) -> list[str]:
        return [job.pair_id for pack in self.pending.values() for job in pack]


def _collect(window: _Window, settings: RunSettings, results: ResultsTable, bar: RunProgress, run_lock) -> None:
    """Until every pack is done: keep the window full, record each finished pair, keep results.parquet current."""
    while window:
        if run_lock.lost is not None:  # taken over (--break-lock elsewhere): stop, write nothing more
            run_lock.check()
        window.fill()
        for ref, pack in window.finished():
            for row in retries.collect_pack(ref, pack, settings.max_retries):
                _record(row, results, bar, run_lock)
        bar.poll(window.in_flight())
        try:
            results.maybe_write()
        except OSError as exc:  # e.g. disk full: keep the rows in memory and try again later
            log.warning("could not write %s yet (%s)", layout.RESULTS, _os_reason(exc))


def _record(row: dict, results: ResultsTable, bar: RunProgress, run_lock) -> None:
    trace = row.pop("traceback", None)
    if row.pop("lock_lost", False):
        run_lock.check()  # a worker found the lock taken over: confirm, and stop
    results.update(row)
    bar.pair_finished(row["pair_id"], row["status"])
    if row["status"] != PairStatus.FAILED:
        return
    log.warning("failed: %s", row["error"])  # one line per failed pair; the traceback: -v, and error.txt
    if trace:
        log.debug("pair %s: %s", row["pair_id"], trace)
