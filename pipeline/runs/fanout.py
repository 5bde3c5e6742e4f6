"""The Ray layer of `splice run`: one task per pack of pairs (a pack of one by default on CPUs), results
collected as they finish.

Driver (`run_manifest`): validate the manifest, lock the run folder, record run.json and manifest.parquet, skip
pairs that have `_SUCCESS`, submit the rest (a bounded window of tasks in flight), collect them with ray.wait, and
keep results.parquet up to date so an interrupted driver loses nothing. What is stored, and where, is the run
folder's business (RunFolder, pipeline/runs/run_folder.py; what a re-run may do: pipeline/runs/rerun.py).

Worker (`run_pair`, a plain function; `_pack_task` is the Ray wrapper of a pack of them): read the two images
through storage, apply the method (the backbone is loaded once per worker process and cached), write the pair
through its PairFolder (pipeline/runs/pair_folder.py) with `_SUCCESS` last. A bad pair returns a 'failed' row
instead of raising, so it fails alone; a worker that dies mid-pair is re-run by Ray (`max_retries`) and the
half-written folder, lacking `_SUCCESS`, is redone.

Packs (`--pack K`, see pipeline/runs/packs.py): the driver groups pairs into packs of up to K (equal image sizes
together) and sends one task per pack (`_pack_task` -> `run_pack`); the task runs `run_pair` for each of its pairs
in a thread of its own, and the pairs that reach training train together. Everything else stays per pair:
`_SUCCESS`, attempts, checkpoints, a failure, the results row; a retried pack skips its pairs already done.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import functools
import logging
import os
import re
import signal
import socket
import threading
import time
import traceback
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, timezone

import ray

from manifests.schema import Manifest, ManifestError, PairSpec, read_manifest
from pipeline import plugins
from pipeline.errors import SpliceError
from pipeline.method.config import TrainConfig
from pipeline.method.devices import best_device
from pipeline.method.images import ImageError, decode_image, max_input_bytes
from pipeline.method.registry import get_method, run_method
from pipeline.runs import hooks, layout, rerun
from pipeline.runs.packs import PackRendezvous, auto_pack_size, image_size, packing_record, plan_packs
from pipeline.runs.progress import ProgressRecorder, RunProgress
from pipeline.runs.run_folder import PairStatus, ResultsTable, RunFolder, row_from_meta
from pipeline.runs.run_lock import LockLost
from pipeline.storage import Storage, StorageError, absolute, is_local, redact, redact_text, redact_url

log = logging.getLogger(__name__)
WAIT_SECONDS = 1.0  # ray.wait timeout: how often the driver wakes to flush results and notice Ctrl-C


@dataclass(frozen=True)
class RunSettings:
    out: str  # the run folder (any fsspec URL)
    method: str = "splice"  # see pipeline.method.registry.METHODS
    config: TrainConfig = field(default_factory=TrainConfig)  # training settings (splice) / max_side (others)
    address: str | None = None  # Ray cluster address; None: RAY_ADDRESS, else an embedded Ray on this machine
    gpus_per_pair: float | None = None  # DEPRECATED: the same as gpus_per_task with pack 1 (one pair per task)
    cpus_per_pair: float = 1.0  # CPUs each task (a pack of pairs) asks for
    max_retries: int = 2  # re-runs of a pair whose worker process died
    limit: int | None = None  # only the first N pairs of the manifest
    only: tuple[str, ...] = ()  # only these pair ids
    force: bool = False  # redo done pairs: those whose inputs/settings changed if any did, else every selected one
    verify: bool = False  # check done pairs' files against the sha256 in their _SUCCESS (not only sizes)
    max_input_bytes: int | None = None  # cap per input file; None: derived from config.max_pixels
    break_lock: bool = False  # remove any lock (its run is known to be dead)
    break_stale_lock: bool = False  # remove the lock only if it is stale (holder gone, or not renewed)
    storage_options: dict = field(default_factory=dict)  # for non-local filesystems; never logged
    progress: bool = True  # show a progress bar
    pack: int | None = None  # pairs trained together per task (None: auto: 1 on CPUs, on GPUs as many as fit)
    gpus_per_task: float | None = (
        None  # GPUs per task (0.5: two tasks per GPU); None: 1 if the cluster has GPUs, else 0
    )
    compile: str = "auto"  # torch.compile the backbone's crop passes: auto (on CUDA) | on | off
    backbone_fallback: str | None = None  # why the default backbone was replaced by random weights (run.json)
    method_options: dict = field(default_factory=dict)  # a batched method's own (splicenet: checkpoint, strength)


@dataclass(frozen=True)
class PairJob:
    """Everything a worker needs for one pair (sent to Ray; holds credentials, so never logged)."""

    pair_id: str
    structure_uri: str
    appearance_uri: str
    pair_dir: str
    run_url: str  # the run folder
    method: str
    config: TrainConfig
    storage_options: dict
    force: bool
    lock_token: str | None = None  # a pair is only written while the run's lock still holds this token
    max_input_bytes: int | None = None  # cap per input file
    method_options: dict = field(default_factory=dict)  # RunSettings.method_options, as resolved by the driver


@dataclass
class RunSummary:
    out: str
    total: int  # pairs in the manifest
    done: int  # done, including skipped
    skipped: int  # done before this invocation
    failed: int
    pending: int  # not run (outside --limit/--only, or interrupted)
    seconds: float
    failures: list[tuple[str, str]]
    damaged: int = 0  # done before, but their files no longer matched _SUCCESS: redone
    storage_error: str | None = None  # results.parquet / run.json could not be written at the end

    @property
    def exit_code(self) -> int:
        return 2 if self.storage_error else 1 if self.failed else 0


# --- driver --------------------------------------------------------------------------------------------------


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
    jobs = [_job(pair, settings) for pair in selected]

    # 2. one writer per run folder
    run_lock = folder.lock("splice run", break_lock=settings.break_lock, break_stale=settings.break_stale_lock)
    with run_lock:
        # 3. compare with what the folder was made from, record the run, find what is left to do
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
        results = ResultsTable(folder, list(plan.manifest_frame["pair_id"]), plan.found)
        jobs = [dataclasses.replace(job, lock_token=run_lock.token) for job in jobs]
        todo = [job for job in jobs if job.pair_id not in plan.found.done]
        skipped = len(jobs) - len(todo)
        log.info(
            "%d pair(s) selected: %d already done, %d to run with method %s -> %s",
            len(jobs),
            skipped,
            len(todo),
            method.name,
            redact_url(settings.out),
        )
        for spec in sorted({job.config.backbone for job in todo if method.uses_backbone}):
            if spec.startswith("random:"):  # said here once, not by every worker that loads it
                log.warning(
                    "backbone %s has RANDOM weights: outputs are for testing only and are labelled 'random'", spec
                )

        # 4. fan out and collect
        storage_error, packing = None, {}
        try:
            if todo:
                _fan_out(todo, settings, results, skipped, run_lock, packing)
        finally:
            if run_lock.lost is None:  # fenced: a run whose lock was taken over writes nothing more
                results.mark_done(folder.scan())  # storage is the truth
                counts = results.counts()
                storage_error = _write_final(folder, {**record, **packing}, results, counts)
        if run_lock.lost is not None:
            run_lock.check()  # raises LockLost
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


def select_pairs(manifest: Manifest, only: tuple[str, ...] = (), limit: int | None = None) -> list[PairSpec]:
    pairs = manifest.pairs()
    if only:
        unknown = sorted(set(only) - set(manifest.pair_ids))
        if unknown:
            raise ManifestError(
                f"--only names pair(s) not in manifest {redact_url(manifest.url)}: {', '.join(unknown[:10])}"
            )
        pairs = [pair for pair in pairs if pair.pair_id in set(only)]
    if limit is not None:
        if limit < 1:
            raise SpliceError(f"--limit must be at least 1, got {limit}")
        pairs = pairs[:limit]
    return pairs


def _job(pair: PairSpec, settings: RunSettings) -> PairJob:
    try:  # per-pair overrides from the manifest's seed / steps / backbone columns
        config = settings.config.replace(seed=pair.seed, steps=pair.steps, backbone=pair.backbone)
    except ValueError as exc:
        raise ManifestError(f"pair {pair.pair_id!r}: {exc}; fix its row in the manifest") from exc
    return PairJob(
        pair_id=pair.pair_id,
        structure_uri=pair.structure_uri,
        appearance_uri=pair.appearance_uri,
        pair_dir=layout.pair_dir(settings.out, pair.pair_id),
        run_url=settings.out,
        method=settings.method,
        config=config,
        storage_options=settings.storage_options,
        force=settings.force,
        method_options=settings.method_options,
        max_input_bytes=settings.max_input_bytes or max_input_bytes(config.max_pixels),
    )


def _fan_out(
    todo: list[PairJob], settings: RunSettings, results: ResultsTable, skipped: int, run_lock, packing: dict
) -> None:
    """Run `todo` as Ray tasks of packs, collecting each pair's row into `results`; `packing` gets how the pairs
    were grouped."""
    # a plug-in method's file or package goes to the workers with the job (Ray's runtime_env py_modules)
    started_ray = _ensure_ray(settings.address, plugins.runtime_env([get_method(settings.method).run]))
    if _address(settings.address) and is_local(settings.out):
        log.warning(
            "--out %s is a local path but pairs run on a Ray cluster: each node writes to its own disk unless "
            "the path is shared storage; prefer s3://, gs://, ...",
            settings.out,
        )
    try:
        gpus = _gpus_per_pair(settings.gpus_per_task, started_embedded=started_ray and not _address(settings.address))
        packs, packing["packing"] = _plan(todo, settings, gpus)
        task = _pack_task.options(
            num_cpus=settings.cpus_per_pair,
            num_gpus=gpus,
            max_retries=settings.max_retries,
            retry_exceptions=False,
            runtime_env=hooks.runtime_env(),
        )
        window = max(8, 2 * _slots(settings.cpus_per_pair, gpus))
        queue, pending = deque(packs), {}
        steps = {job.pair_id: job.config.steps if get_method(job.method).uses_backbone else 0 for job in todo}
        bar = RunProgress(
            Storage(settings.storage_options), settings.out, steps, enabled=settings.progress, skipped=skipped
        )
        try:
            while queue or pending:
                if run_lock.lost is not None:  # taken over (--break-lock elsewhere): stop, write nothing more
                    run_lock.check()
                while queue and len(pending) < window:
                    pack = queue.popleft()
                    pending[task.remote(pack, settings.compile)] = pack
                ready, _ = ray.wait(list(pending), num_returns=1, timeout=WAIT_SECONDS)
                for ref in ready:
                    for row in _collect_pack(ref, pending.pop(ref), settings.max_retries):
                        trace = row.pop("traceback", None)
                        if row.pop("lock_lost", False):
                            run_lock.check()  # a worker found the lock taken over: confirm, and stop
                        results.update(row)
                        bar.pair_finished(row["pair_id"], row["status"])
                        if row["status"] == PairStatus.FAILED:  # one line per failed pair; traceback: -v, error.txt
                            log.warning("failed: %s", row["error"])
                            if trace:
                                log.debug("pair %s: %s", row["pair_id"], trace)
                bar.poll([job.pair_id for pack in pending.values() for job in pack])
                try:
                    results.maybe_write()
                except OSError as exc:  # e.g. disk full: keep the rows in memory and try again later
                    log.warning("could not write %s yet (%s)", layout.RESULTS, _os_reason(exc))
        finally:
            bar.close()
            if pending and (not started_ray or run_lock.lost is not None):  # stop our in-flight pairs
                _cancel(list(pending))
    finally:
        if started_ray:  # ending the driver's job also ends its in-flight tasks
            ray.shutdown()


def _cancel(refs: list) -> None:
    """Stop in-flight pairs (politely, then by killing their workers) so none outlives this driver's lock."""
    for ref in refs:
        ray.cancel(ref)
    _, still = ray.wait(refs, num_returns=len(refs), timeout=5)
    for ref in still:
        ray.cancel(ref, force=True)
    if still:
        ray.wait(still, num_returns=len(still), timeout=10)


def _collect(ref, job: PairJob, max_retries: int) -> dict:
    try:
        return ray.get(ref)
    except ray.exceptions.WorkerCrashedError:
        error = f"pair {job.pair_id!r}: its worker process died {max_retries + 1} time(s) (out of memory?); run again to retry it"
    except ray.exceptions.RayError as exc:
        error = f"pair {job.pair_id!r}: {type(exc).__name__}: {redact_text((str(exc).splitlines() or [''])[0])[:300]}"
    return {
        "pair_id": job.pair_id,
        "status": PairStatus.FAILED.value,
        "error": error,
        "method": get_method(job.method).name,
        "attempts": max_retries + 1,
    }


def _gpus_per_pair(asked: float | None, started_embedded: bool) -> float:
    has_gpus = ray.cluster_resources().get("GPU", 0) > 0
    if asked is None or (started_embedded and not has_gpus):  # auto, or nothing could ever provide a GPU here
        if asked:
            log.warning("no GPU on this machine: pairs run on CPUs (--gpus-per-task %s ignored)", asked)
        return 1.0 if has_gpus else 0.0
    if asked and not has_gpus:
        log.warning("the cluster has no GPU now: pairs wait until GPU nodes join (--gpus-per-task 0 runs them on CPUs)")
    return asked


def _address(address: str | None) -> str | None:
    return address or os.environ.get("RAY_ADDRESS")


def _ensure_ray(address: str | None, runtime_env: dict | None = None) -> bool:
    return connect_ray(address, runtime_env=runtime_env)


def connect_ray(address: str | None, runtime_env: dict | None = None, **options) -> bool:
    """Use an initialised Ray as it is; else connect to address / RAY_ADDRESS, else start one here.

    Returns whether this call initialised Ray. 'local' (or no address) always starts a fresh instance here,
    never a stray cluster that another `ray start` left running. `runtime_env` (e.g. plug-ins' py_modules) goes
    with the job to every worker; a Ray initialised by the caller keeps its own (its workers import plug-ins
    from their own path: a plug-in .py file given by its path is found there on one machine).
    """
    if ray.is_initialized():
        if runtime_env:
            log.info(
                "Ray was initialised before: plug-ins %s are not shipped to its workers (they import them from "
                "their own path)",
                ", ".join(runtime_env.get("py_modules", [])),
            )
        return False
    if runtime_env:
        options["runtime_env"] = runtime_env
    with _keep_sigterm_handler():
        return _connect_ray(address, **options)


@contextlib.contextmanager
def _keep_sigterm_handler():
    """ray.init installs its own SIGTERM handler (abort, no cleanup); keep the caller's (the CLI's releases locks)."""
    main = threading.current_thread() is threading.main_thread()
    previous = signal.getsignal(signal.SIGTERM) if main else None
    try:
        yield
    finally:
        if main and previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _connect_ray(address: str | None, **options) -> bool:
    address = _address(address)
    if not address or address == "local":
        ray.init(address="local", include_dashboard=False, **options)
        return True
    _check_listening(address)
    try:
        ray.init(address=address, **options)
    except (ConnectionError, RuntimeError, TimeoutError) as exc:
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise SpliceError(
            f"cannot connect to the Ray cluster at {address} ({reason}). Check the address (`ray status` on the head "
            f"node); if the cluster uses token authentication, set RAY_AUTH_MODE=token and RAY_AUTH_TOKEN (or "
            f"RAY_AUTH_TOKEN_PATH) here as on the head"
        ) from exc
    return True


def _check_listening(address: str, timeout: float = 5.0) -> None:
    """Fail in seconds, not minutes, when a HOST:PORT (or ray://HOST:PORT) address has nothing listening:
    Ray itself keeps retrying a silent address for minutes."""
    match = re.fullmatch(r"(?:ray://)?\[?([^\]/]+?)\]?:(\d+)/?", address.strip())
    if not match:  # 'auto' and other forms are Ray's to resolve
        return
    host, port = match.group(1), int(match.group(2))
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return
    except OSError as exc:
        raise SpliceError(
            f"no Ray cluster answers at {address} ({exc.strerror or exc}): check the address (the head "
            f"node prints it at `ray start --head`; `ray status` there shows it) and that its port is "
            f"reachable from here"
        ) from exc


def _slots(cpus_per_pair: float, gpus_per_pair: float) -> int:
    resources = ray.cluster_resources()
    if gpus_per_pair:
        return max(1, int(resources.get("GPU", 0) / gpus_per_pair))
    return max(1, int(resources.get("CPU", 1) / max(cpus_per_pair, 1e-3)))


# --- packs ---------------------------------------------------------------------------------------------------


def resolve_task_settings(settings: RunSettings) -> RunSettings:
    """Check --pack / --gpus-per-task and translate the deprecated --gpus-per-pair (a pack of one per task)."""
    if settings.pack is not None and settings.pack < 1:
        raise SpliceError(f"--pack must be at least 1 (or auto), got {settings.pack}")
    for name in ("gpus_per_task", "gpus_per_pair"):
        value = getattr(settings, name)
        if value is not None and value < 0:
            raise SpliceError(f"--{name.replace('_', '-')} must be 0 or more, got {value}")
    if settings.gpus_per_pair is None:
        return settings
    if settings.gpus_per_task is not None or (settings.pack or 1) > 1:
        raise SpliceError(
            "--gpus-per-pair is replaced by --gpus-per-task (GPUs per task, a task training a pack of "
            "--pack pairs): pass --gpus-per-task alone"
        )
    log.warning(
        "--gpus-per-pair %s means --gpus-per-task %s --pack 1 (one pair per task); use --gpus-per-task to "
        "train several pairs per task",
        settings.gpus_per_pair,
        settings.gpus_per_pair,
    )
    return dataclasses.replace(settings, gpus_per_task=settings.gpus_per_pair, pack=1)


def _plan(todo: list[PairJob], settings: RunSettings, gpus: float) -> tuple[list[list[PairJob]], dict]:
    """Packs of pairs: of one backbone each, same-size pairs first; K from --pack or the auto rule. Also returns
    how they were grouped (run.json's `packing`)."""
    method = get_method(settings.method)
    size = settings.pack if method.packs or method.batched is not None else 1
    rule = f"--pack {size}" if size is not None else "auto"
    if size is None and method.batched is not None:  # inference in batches: the method says how many per task
        size = method.batched.pack_size(len(todo), _slots(settings.cpus_per_pair, gpus), gpus)
    if size == 1 or len(todo) == 1 or (size is None and not gpus):
        packs = [[job] for job in todo]
        why = "one pair per task" + ("" if method.packs or method.batched else f" (method {method.name} does not pack)")
        return packs, packing_record(packs, f"{rule}: {why}", 1, lambda job: None)
    sizes = _probe_sizes(todo, Storage(settings.storage_options))
    if size is None:
        size = _auto_pack_size(todo, sizes, settings, gpus)
        rule = "auto: same-size pairs first, K from the GPU's memory (pipeline/runs/packs.py)"
    packs = plan_packs(todo, size, key=lambda job: (job.config.backbone,), size=lambda job: sizes.get(job.pair_id))
    record = packing_record(packs, rule, size, lambda job: sizes.get(job.pair_id))
    log.info(
        "%d pair(s) in %d pack(s) of up to %d (%d of one image size), %s GPU(s) per pack",
        len(todo),
        len(packs),
        size,
        record["same_size_packs"],
        gpus,
    )
    if method.packs and record["mixed_size_packs"] > record["same_size_packs"] and gpus:
        log.info(
            "most packs mix image sizes, whose generators cannot share calls: several packs per GPU overlap their "
            "launches (e.g. --gpus-per-task 0.25, with NVIDIA MPS on the nodes; docs/performance.md)"
        )
    return packs, record


def _probe_sizes(jobs: list[PairJob], storage: Storage) -> dict[str, tuple]:
    """{pair_id: ((structure h, w), (appearance h, w))} from the images' headers, read in parallel."""
    from concurrent.futures import ThreadPoolExecutor

    def read_header(uri: str):
        fs, path = storage.fs(uri)
        return image_size(lambda count: fs.cat_file(path, start=0, end=count))

    def probe(job: PairJob):
        return job.pair_id, (read_header(job.structure_uri), read_header(job.appearance_uri))

    with ThreadPoolExecutor(max_workers=16) as pool:
        return {pair_id: sizes for pair_id, sizes in pool.map(probe, jobs) if all(sizes)}


def _auto_pack_size(todo: list[PairJob], sizes: dict, settings: RunSettings, gpus: float) -> int:
    """--pack auto on GPUs: ask one GPU task for the device's memory and the backbone's patch size, then the rule
    of packs.auto_pack_size over the largest pair."""
    log.info("--pack auto: asking a GPU worker for its memory (--pack K skips this)")
    probe = _device_probe.options(num_cpus=settings.cpus_per_pair, num_gpus=gpus, max_retries=settings.max_retries)
    try:
        device = ray.get(probe.remote(todo[0].config.backbone))
    except ray.exceptions.RayError as exc:
        log.warning("--pack auto: the GPU probe failed (%s): one pair per task", str(exc).splitlines()[0][:200])
        return 1
    memory = int(device["memory_bytes"] * min(1.0, gpus)) if device["memory_bytes"] else None
    scaled = [
        (downscaled(s, todo[0].config.max_side), downscaled(a, todo[0].config.max_side)) for s, a in sizes.values()
    ]
    pack = auto_pack_size(memory, scaled, device.get("patch_size") or 8, fp32=todo[0].config.precision == "fp32")
    log.info(
        "--pack auto: %s with %.1f GiB for each task: %d pair(s) per pack", device["name"], (memory or 0) / 2**30, pack
    )
    return pack


def downscaled(size: tuple[int, int], max_side: int | None) -> tuple[int, int]:
    """The size of an image after --max-side (as images.downscale_to)."""
    if not max_side or max(size) <= max_side:
        return tuple(size)
    scale = max_side / max(size)
    return max(1, round(size[0] * scale)), max(1, round(size[1] * scale))


def _collect_pack(ref, jobs: list[PairJob], max_retries: int) -> list[dict]:
    """The rows of a pack's pairs; where the whole task failed, a failed row for each of them."""
    outcome = _collect(ref, jobs[0], max_retries)
    if isinstance(outcome, list):
        return outcome
    return [outcome] + [_collect(ref, job, max_retries) for job in jobs[1:]]


@ray.remote(max_calls=0)
def _device_probe(backbone_spec: str) -> dict:
    import torch

    device = best_device()
    info = {"name": str(device), "memory_bytes": None, "patch_size": None}
    if device.type == "cuda":
        info["name"] = torch.cuda.get_device_name(device)
        info["memory_bytes"] = int(torch.cuda.mem_get_info(device)[1])
    try:
        info["patch_size"] = cached_backbone(backbone_spec, str(device)).patch_size  # warms this worker's cache too
    except Exception:  # noqa: BLE001  (the pairs themselves report an unusable backbone, with the reason)
        pass
    return info


# --- worker --------------------------------------------------------------------------------------------------


@ray.remote(max_calls=0)  # keep workers (and their cached backbone) alive across packs, GPU tasks included
def _pack_task(jobs: list[PairJob], compile_backbone: str = "auto") -> list[dict]:
    recorder = ProgressRecorder(Storage(jobs[0].storage_options))  # pairs/<id>/progress.json while they train
    for job in jobs:
        if _uses_backbone(job.method):
            recorder.track(job.pair_id, job.pair_dir, job.config.steps)
    try:
        return run_pack(jobs, compile_backbone=compile_backbone, on_step=recorder)
    except Exception as exc:  # what crosses into Ray (its logs, the driver) carries no credentials
        ids = ", ".join(job.pair_id for job in jobs)
        raise RuntimeError(redact_text(f"pairs {ids}: {type(exc).__name__}: {exc}")) from None
    finally:
        for job in jobs:
            recorder.finish(job.pair_id)


def _uses_backbone(method: str) -> bool:
    try:
        return get_method(method).uses_backbone
    except SpliceError:  # e.g. a plug-in this worker cannot import: run_pair fails the pair, saying why
        return False


def run_pack(jobs: list[PairJob], compile_backbone: str = "auto", on_step=None) -> list[dict]:
    """Do a pack of pairs; returns their results rows. Each pair goes through `run_pair` in its own thread; those
    that reach training train together. Never raises for a bad pair. on_step(pair_id, step): per-pair progress."""
    method = get_method(jobs[0].method)
    if not (method.packs or method.batched is not None) or (len(jobs) == 1 and method.batched is None):
        return [run_pair(job, on_step=on_step) for job in jobs]
    from concurrent.futures import ThreadPoolExecutor

    from pipeline.method.trainer import TrainOptions, train_pack

    cached_backbone(jobs[0].config.backbone, str(best_device()))  # load once, before the threads ask for it
    if method.batched is not None:  # the pack's pairs go through the method together (splicenet: batched passes)
        rendezvous = PackRendezvous(
            [job.pair_id for job in jobs],
            method.batched.apply,
            options=jobs[0].method_options,
            read_bytes=Storage(jobs[0].storage_options).read_bytes,
        )
    else:
        rendezvous = PackRendezvous(
            [job.pair_id for job in jobs], train_pack, options=TrainOptions(compile=compile_backbone), on_step=on_step
        )

    def one(job: PairJob) -> dict:
        try:
            return run_pair(job, train=rendezvous.member(job.pair_id))
        finally:
            rendezvous.drop(job.pair_id)

    with ThreadPoolExecutor(max_workers=len(jobs), thread_name_prefix="pair") as pool:
        rows = [pool.submit(one, job) for job in jobs]
        rendezvous.run()
        return [row.result() for row in rows]


def run_pair(job: PairJob, train=None, on_step=None) -> dict:
    """Do one pair end to end; returns its results row. Never raises for a bad pair.

    `train`: what trains a Splice pair (default `trainer.train_pair`; `run_pack` passes its pack's).
    `on_step(pair_id, steps_done)`: progress of a pair trained alone (a pack reports through its own trainer)."""
    started_at, clock = _now(), time.perf_counter()
    storage = Storage(job.storage_options)
    folder = RunFolder(storage, job.run_url)
    pair = folder.pair(job.pair_id)
    row = {"pair_id": job.pair_id, "method": job.method, "started_at": started_at}
    try:
        if job.force:  # forget the old result first, so a crash now cannot leave an old _SUCCESS over new files
            pair.forget()
        elif pair.is_done():  # a retry after the pair was finished
            return row_from_meta(job.pair_id, pair.read_meta())
        method = get_method(job.method)  # a plug-in is imported here, once per worker process
        row["method"] = method.name
        attempt = row["attempts"] = pair.record_attempt(started_at)
        hooks.point("pair.started", pair_id=job.pair_id, attempt=attempt, storage=storage, pair_dir=job.pair_dir)
        # 1. inputs
        structure = _read_image(storage, job, "structure", job.structure_uri)
        appearance = _read_image(storage, job, "appearance", job.appearance_uri)
        hooks.point("pair.inputs_read", pair_id=job.pair_id)
        # 2. method (backbone cached per worker process)
        backbone = device = None
        loaded = False
        if method.uses_backbone:
            device = best_device()
            misses = cached_backbone.cache_info().misses
            backbone = cached_backbone(job.config.backbone, str(device))
            loaded = cached_backbone.cache_info().misses > misses
        checkpoint = pair.load_checkpoint() if method.resumable else None
        save = pair.save_checkpoint if method.resumable else None
        if train is None and on_step is not None and method.uses_backbone:
            from pipeline.method.trainer import train_pair

            train = functools.partial(train_pair, on_step=functools.partial(on_step, job.pair_id))
        result = run_method(
            job.method,
            structure,
            appearance,
            job.config,
            backbone=backbone,
            device=device,
            checkpoint=checkpoint,
            save_checkpoint=save,
            train=train,
        )
        # 3. outputs, _SUCCESS last
        finished_at = _now()
        extra = {
            "pair_id": job.pair_id,
            "method": method.name,
            "attempt": attempt,
            "structure_uri": redact_url(job.structure_uri),
            "appearance_uri": redact_url(job.appearance_uri),
            "started_at": started_at,
            "finished_at": finished_at,
            "worker": {"host": socket.gethostname(), "pid": os.getpid(), "backbone_loaded": loaded},
        }
        meta = result.meta
        done = {
            **row,
            "status": PairStatus.DONE.value,
            "error": None,
            "seconds": float(meta.get("seconds", 0.0)),
            "device": meta.get("device_name") or meta.get("device"),
            "peak_memory_bytes": meta.get("peak_memory_bytes"),
            "weights_id": meta.get("weights_id"),
            "finished_at": finished_at,
        }
        pair.write_result(result, extra, row=done, fence=lambda: folder.fence(job.lock_token))
        pair.clear_error()
        hooks.point("pair.written", pair_id=job.pair_id, attempt=attempt)
        return {**done, "wall_seconds": time.perf_counter() - clock}
    except Exception as exc:  # a bad pair fails alone; the error goes to results.parquet, the traceback to error.txt
        error, trace = _describe(job, exc), redact_text(traceback.format_exc())
        lock_lost = isinstance(exc, LockLost)
        if not lock_lost:  # fenced: a pair whose run lost its lock writes nothing
            pair.write_error(error, trace)
        return {
            **row,
            "status": PairStatus.FAILED.value,
            "error": error,
            "finished_at": _now(),
            "wall_seconds": time.perf_counter() - clock,
            "traceback": trace,
            "lock_lost": lock_lost,
        }
    finally:
        _release_device_memory()


@functools.lru_cache(maxsize=2)
def cached_backbone(spec: str, device: str):
    from pipeline.method.backbone import load_backbone

    backbone_log = logging.getLogger("pipeline.method.backbone")
    level = backbone_log.level
    backbone_log.setLevel(logging.ERROR)  # the driver has said whether it is random: no copy from every worker
    try:
        return load_backbone(spec, device)
    finally:
        backbone_log.setLevel(level)


def _read_image(storage: Storage, job: PairJob, role: str, uri: str):
    limit = job.max_input_bytes or max_input_bytes(job.config.max_pixels)
    try:
        data = storage.read_input(uri, max_bytes=limit)
    except FileNotFoundError:
        raise SpliceError(f"{role} image {redact_url(uri)} does not exist: fix {role}_uri in the manifest") from None
    except SpliceError as exc:
        raise SpliceError(f"{role} image {exc}") from None
    except Exception as exc:  # OSError, HTTP errors: never with the URL's credentials
        reason = redact_text(f"{type(exc).__name__}: {exc}".splitlines()[0])[:300]
        raise SpliceError(
            f"{role} image {redact_url(uri)} cannot be read ({reason}): check it and the storage options"
        ) from None
    try:
        return decode_image(data, redact_url(uri), job.config.max_pixels)
    except ImageError as exc:  # "image X is not ..." -> "structure image X is not ..."
        raise ImageError(f"{role} {exc}") from exc


def _describe(job: PairJob, exc: Exception) -> str:
    if isinstance(exc, SpliceError):
        return redact_text(f"pair {job.pair_id!r}: {exc}")
    if isinstance(exc, OSError):  # storage trouble, not a bug: say what to do
        if exc.errno == errno.ENOSPC:
            return (
                f"pair {job.pair_id!r}: no space left on the device writing {redact_url(job.pair_dir)}: free some "
                f"space (or write elsewhere) and run again"
            )
        return redact_text(
            f"pair {job.pair_id!r}: storage error writing {job.pair_dir} ({type(exc).__name__}: "
            f"{exc}): check the storage and run again"
        )[:600]
    where = redact_url(layout.join(job.pair_dir, layout.ERROR_TXT))
    return redact_text(
        f"pair {job.pair_id!r}: {type(exc).__name__}: {str(exc)[:500]} (a bug? traceback in {where}, and with -v)"
    )


def _release_device_memory() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")
