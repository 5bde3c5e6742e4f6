"""What the run layer's commands are asked to do: `splice run`'s settings and what one task is sent (the types shared
by the driver fanout.py, the pack planner packs.py and the worker worker.py), and `splice train-net`'s job.

- `RunSettings`: a run's options, as the command line (or `splice bench`) resolves them; checked by
  `resolve_task_settings` before any work.
- `PairJob`: everything a worker needs for one pair; `make_job` builds it from a manifest row and the settings.
- `RunSummary`: what a run did, for the command's summary line and exit code.
- `TrainNetJob`: what `splice train-net` is asked for (train_net.py runs it, net_folder.py records it).
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field

from manifests.schema import Manifest, ManifestError, PairSpec
from pipeline.errors import SpliceError
from pipeline.method.config import TrainConfig
from pipeline.method.images import max_input_bytes
from pipeline.method.splicenet_config import NetTrainConfig
from pipeline.runs import layout
from pipeline.storage import redact_url

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunSettings:
    out: str  # the run folder (any fsspec URL)
    method: str = "splice"  # see pipeline.method.registry.METHODS
    config: TrainConfig = field(default_factory=TrainConfig)  # training settings (splice) / max_side (others)
    address: str | None = None  # Ray cluster address; None: RAY_ADDRESS, else an embedded Ray on this machine
    gpus_per_pair: float | None = None  # DEPRECATED: the same as gpus_per_task with pack 1 (one pair per task)
    cpus_per_task: float = 1.0  # CPUs each task (a pack of pairs) asks for
    max_retries: int = 2  # re-runs of a pair whose worker process died (retries.py)
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
    gpus_per_task: float | None = None  # GPUs per task (0.5: two tasks per GPU); None: 1 if the cluster has GPUs
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


def resolve_task_settings(settings: RunSettings) -> RunSettings:
    """Check --pack / --gpus-per-task and translate the deprecated --gpus-per-pair (a pack of one per task)."""
    if settings.pack is not None and settings.pack < 1:
        raise SpliceError(f"--pack must be at least 1 (or auto), got {settings.pack}")
    for name in ("gpus_per_task", "gpus_per_pair", "cpus_per_task"):
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


def make_job(pair: PairSpec, settings: RunSettings) -> PairJob:
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


@dataclass(frozen=True)
class TrainNetJob:
    """What `splice train-net` asks for: the training settings plus where and how to run them."""

    manifest: str  # manifest URL
    out: str  # output folder URL
    config: NetTrainConfig = field(default_factory=NetTrainConfig)
    storage_options: dict = field(default_factory=dict)  # fsspec options for non-local storage
    workers: int | None = None  # Ray Train workers (None: one per GPU of the cluster, else 1)
    gpus_per_worker: float | None = None  # None: 1 where the cluster has GPUs, else 0
    cpus_per_worker: float = 1.0
    max_failures: int = 0  # Ray Train restarts of the worker group after a worker dies (each resumes)
    address: str | None = None  # Ray address (None: RAY_ADDRESS, else an embedded Ray)
    keep_checkpoints: int = 2  # newest checkpoints kept in OUT/checkpoints
    cache_mb: int = 4096  # pool images each worker keeps in memory
