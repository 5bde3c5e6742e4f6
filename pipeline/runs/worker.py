"""The worker side of `splice run`: what one Ray task does with its pack of pairs.

`run_pair` (a plain function) does one pair end to end: read the two images through storage, apply the method (the
backbone is loaded once per worker process and cached), write the pair through its PairFolder
(pipeline/runs/pair_folder.py) with `_SUCCESS` last. A bad pair returns a 'failed' row instead of raising, so it
fails alone. `run_pack` runs `run_pair` for each pair of a pack in a thread of its own, and the pairs that reach
training train together (rendezvous.py). `pack_task` is the Ray task around `run_pack`, `device_probe` the one that
asks a GPU worker for its memory (--pack auto). When a pair is attempted again: retries.py.
"""

from __future__ import annotations

import errno
import functools
import logging
import os
import socket
import time
import traceback
from datetime import datetime, timezone

import ray

from pipeline.errors import SpliceError
from pipeline.method.devices import best_device
from pipeline.method.images import ImageError, decode_image, max_input_bytes
from pipeline.method.registry import get_method, run_method
from pipeline.runs import hooks, layout
from pipeline.runs.jobs import PairJob
from pipeline.runs.progress import ProgressRecorder
from pipeline.runs.rendezvous import PackRendezvous
from pipeline.runs.run_folder import PairStatus, RunFolder, row_from_meta
from pipeline.runs.run_lock import LockLost
from pipeline.storage import Storage, redact_text, redact_url

log = logging.getLogger(__name__)


@ray.remote(max_calls=0)  # keep workers (and their cached backbone) alive across packs, GPU tasks included
def pack_task(jobs: list[PairJob], compile_backbone: str = "auto") -> list[dict]:
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


@ray.remote(max_calls=0)
def device_probe(backbone_spec: str) -> dict:
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
