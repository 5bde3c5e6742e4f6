"""Train SpliceNet on a manifest's domains: Ray Train workers (TorchTrainer, DDP), every file in storage.

The output folder OUT (any fsspec URL: local, s3://, gs://, ...), written by rank 0:
  OUT/train.json                    format, settings, manifest, images per domain, status (running | finished), step
  OUT/images.parquet                the image pool: uri, domain, ok / the reason it is unreadable, curation distance, kept
  OUT/net.pt                        the latest model (`splicenet/1`, see method/splicenet.py): what inference reads
  OUT/checkpoints/step-NNNNNNN.pt   model, Adam state and steps done (the last `keep_checkpoints`)
  OUT/losses.parquet                loss terms every `log_every` steps, averaged over the global batch

Running the same command again resumes from the newest readable checkpoint (a finished training is reported and
left alone; `--steps` may grow to train further). Pairs and augmentation are pure functions of (seed, step,
sample) (method/splicenet_train.py), so a resumed run and one with another number of workers compute the same
steps; a checkpoint needs no RNG state.

Data: every image that a selected domain's rows name (structure or appearance column) joins that domain's pool;
pairs are drawn within a domain. A first pass (shared among the workers) decodes every image once, shrinks it to
the training resolution's short side, drops unreadable ones (listed in images.parquet, the run goes on) and, with
curation, reads its [CLS]. Workers keep pool images in memory up to `cache_mb`, read the rest on demand, and
fetch the next step's images while the current step computes.

Curation (`curate=centre`, the paper keeps "inlier" pairs without saying how): per domain, the cosine distance of
each image's [CLS] to the domain's mean [CLS]; the `curate_keep` nearest fraction is kept.
"""

from __future__ import annotations

import io
import logging
import math
import platform
import shutil
import tempfile
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import pandas as pd
import torch
import torch.distributed as dist
import torch.nn.functional as F

from manifests.schema import Manifest, read_manifest
from pipeline.errors import SpliceError
from pipeline.method.images import decode_image, max_input_bytes
from pipeline.method.objective import conditioned_losses
from pipeline.method.splicenet import SpliceNet, SpliceNetConfig, save_net
from pipeline.method.splicenet_train import (
    NetTrainConfig,
    draw_pairs,
    pool_image,
    sample_crops,
    worker_slice,
)
from pipeline.runs import hooks
from pipeline.runs.layout import join
from pipeline.storage import Storage, redact_text, redact_url

log = logging.getLogger(__name__)

TRAIN_FORMAT = "splicenet-train/1"
CHECKPOINT_FORMAT = "splicenet-checkpoint/1"
NET_FILE = "net.pt"
TRAIN_JSON = "train.json"
IMAGES_FILE = "images.parquet"
LOSSES_FILE = "losses.parquet"
CHECKPOINTS = "checkpoints"
NO_DOMAIN = "all"  # the one pool of a manifest without a domain column
RESUMABLE_CHANGES = ("steps", "log_every", "checkpoint_every", "precision")  # may differ from the stored settings
TERMS = ("appearance", "structure", "identity", "total")


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


def net_url(checkpoint: str) -> str:
    """`--checkpoint OUT` or `--checkpoint OUT/net.pt` (or any .pt file) -> the model file's URL."""
    return checkpoint if checkpoint.rstrip("/").endswith(".pt") else join(checkpoint.rstrip("/"), NET_FILE)


# ------------------------------------------------------------------------------------------------------ the driver


def train_net(job: TrainNetJob) -> dict:
    """Train (or resume) a SpliceNet as `job` says; returns the final train.json."""
    from pipeline.runs.ray_session import connect_ray

    # 1. validate inputs before any worker starts: manifest, domains, output folder, worker count
    storage = Storage(job.storage_options)
    manifest = read_manifest(job.manifest, storage)
    images = plan_images(manifest, job.config.domains)
    if job.workers:
        _check_batch(job.config.batch, job.workers)
    record = prepare_out(storage, job, images)
    if record.get("status") == "finished" and record["step"] >= job.config.steps:
        log.info("%s already holds a finished training (%d steps)", redact_url(job.out), record["step"])
        return record

    # 2. Ray: one worker per GPU by default, else one CPU worker
    started = connect_ray(job.address)
    try:
        workers, gpus = _scaling(job)
        _check_batch(job.config.batch, workers)
        # 3. train
        _fit(job, images, workers, gpus)
    finally:
        if started:
            import ray

            ray.shutdown()
    # 4. the result, as rank 0 wrote it
    return storage.read_json(join(job.out, TRAIN_JSON))


def _check_batch(batch: int, workers: int) -> None:
    if batch < workers:
        raise SpliceError(
            f"--batch {batch} is smaller than --workers {workers}: every worker needs at least one pair "
            f"per step; raise --batch or lower --workers"
        )


def plan_images(manifest: Manifest, domains: tuple[str, ...]) -> list[dict]:
    """The image pool: one {uri, domain} per distinct image of each selected domain, in manifest order."""
    frame = manifest.frame
    has_domain = "domain" in frame.columns
    labels = frame["domain"].fillna("").astype(str) if has_domain else pd.Series([NO_DOMAIN] * len(frame))
    name = redact_url(manifest.url)
    if has_domain and (labels == "").any():
        rows = list(frame.loc[labels == "", "pair_id"][:5])
        raise SpliceError(
            f"manifest {name}: {int((labels == '').sum())} row(s) without a domain (e.g. {rows}): give "
            f"every row a domain, or drop the domain column to train one net on all images"
        )
    available = sorted(set(labels))
    if domains:
        if not has_domain:
            raise SpliceError(
                f"manifest {name} has no 'domain' column, so --domain {','.join(domains)} cannot select "
                f"images: drop --domain (one net for all images) or build the manifest with domains"
            )
        unknown = [d for d in domains if d not in available]
        if unknown:
            raise SpliceError(
                f"manifest {name} has no domain {', '.join(map(repr, unknown))}; its domains: {', '.join(available)}"
            )
    selected = list(domains) or available
    images, seen = [], set()
    for row, domain in zip(frame.to_dict("records"), labels):
        if domain not in selected:
            continue
        for uri in (row["structure_uri"], row["appearance_uri"]):
            if (uri, domain) not in seen:
                seen.add((uri, domain))
                images.append({"uri": uri, "domain": domain})
    counts = {d: sum(1 for image in images if image["domain"] == d) for d in selected}
    small = {d: n for d, n in counts.items() if n < 2}
    if small:
        raise SpliceError(
            f"manifest {name}: domain(s) {small} have fewer than 2 distinct images; SpliceNet pairs "
            f"images within a domain: add images or leave those domains out with --domain"
        )
    return images


def prepare_out(storage: Storage, job: TrainNetJob, images: list[dict]) -> dict:
    """Start OUT/train.json, or check that the training already there is this one (resume)."""
    url = join(job.out, TRAIN_JSON)
    config = job.config.to_dict()
    if storage.exists(url):
        record = storage.read_json(url)
        if record.get("format") != TRAIN_FORMAT:
            raise SpliceError(
                f"{redact_url(job.out)} holds a {TRAIN_JSON} of format {record.get('format')!r}, not "
                f"a SpliceNet training ({TRAIN_FORMAT}): choose another --out"
            )
        before = record.get("config", {})
        changed = {
            k: (before.get(k), v)
            for k, v in _jsonable(config).items()
            if k not in RESUMABLE_CHANGES and before.get(k) != v
        }
        if changed or record.get("manifest") != job.manifest:
            what = ", ".join(f"{k} {old!r} -> {new!r}" for k, (old, new) in changed.items()) or "the manifest"
            raise SpliceError(
                f"{redact_url(job.out)} holds a training with other settings ({what}): run with the "
                f"same settings to resume it, or choose another --out"
            )
        if record.get("status") == "finished" and record.get("step", 0) >= job.config.steps:
            return record
        record.update(config=_jsonable(config), status="running")
    else:
        counts: dict[str, int] = {}
        for image in images:
            counts[image["domain"]] = counts.get(image["domain"], 0) + 1
        record = {
            "format": TRAIN_FORMAT,
            "manifest": job.manifest,
            "config": _jsonable(config),
            "images": counts,
            "domains": sorted(counts),
            "status": "running",
            "step": 0,
            "started": time.time(),
        }
    storage.write_json(url, record)
    return record


def _jsonable(values: dict) -> dict:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in values.items()}


def _scaling(job: TrainNetJob) -> tuple[int, float]:
    import ray

    cluster_gpus = ray.cluster_resources().get("GPU", 0)
    gpus = job.gpus_per_worker if job.gpus_per_worker is not None else (1.0 if cluster_gpus else 0.0)
    if gpus and not cluster_gpus:
        raise SpliceError(
            f"--gpus-per-worker {gpus:g} asked for, but the Ray cluster has no GPUs: use "
            f"--gpus-per-worker 0 (CPU) or point --address / RAY_ADDRESS at a cluster with GPUs"
        )
    workers = job.workers or (max(1, int(cluster_gpus // gpus)) if gpus else 1)
    return workers, gpus


def _fit(job: TrainNetJob, images: list[dict], workers: int, gpus: float) -> None:
    from ray.train import FailureConfig, RunConfig, ScalingConfig, TrainingFailedError
    from ray.train.torch import TorchTrainer

    payload = {"job": job, "images": images}
    scratch = tempfile.mkdtemp(prefix="splice-train-net-")  # Ray Train's own bookkeeping; our files go to OUT
    trainer = TorchTrainer(
        ray_train_loop,
        train_loop_config=payload,
        scaling_config=ScalingConfig(
            num_workers=workers,
            use_gpu=gpus > 0,
            resources_per_worker={"CPU": job.cpus_per_worker, **({"GPU": gpus} if gpus else {})},
        ),
        run_config=RunConfig(
            name="splicenet", storage_path=scratch, failure_config=FailureConfig(max_failures=job.max_failures)
        ),
    )
    log.info(
        "training SpliceNet on %d image(s) with %d Ray Train worker(s)%s -> %s",
        len(images),
        workers,
        f", {gpus:g} GPU each" if gpus else " on CPU",
        redact_url(job.out),
    )
    try:
        trainer.fit()
    except TrainingFailedError as exc:
        raise SpliceError(
            f"SpliceNet training failed: {_worker_reason(exc)}; the newest checkpoint in "
            f"{redact_url(job.out)} is kept: run the same command again to resume"
        ) from exc
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _worker_reason(exc: BaseException) -> str:
    """The first worker's own error, in one line."""
    failures = getattr(exc, "worker_failures", None) or {}
    for failure in failures.values():
        cause = failure
        while cause is not None:
            if isinstance(cause, SpliceError):
                return redact_text(str(cause))
            cause = cause.__cause__ or getattr(cause, "cause", None)
        return redact_text(str(failure).strip().splitlines()[-1][:300])
    return redact_text(str(exc).strip().splitlines()[-1][:300])


# ----------------------------------------------------------------------------------------------------- the workers


def ray_train_loop(payload: dict) -> None:
    """Ray Train's entry on every worker: Ray has set up the process group (gloo on CPU, NCCL on GPU)."""
    import ray.train
    import ray.train.torch

    context = ray.train.get_context()
    job: TrainNetJob = payload["job"]
    device = ray.train.torch.get_device()
    if device.type == "cuda":
        torch.cuda.set_device(device)  # NCCL collectives (all_gather_object) use the current device
    else:
        torch.set_num_threads(max(1, int(job.cpus_per_worker)))
    run_training(job, payload["images"], context.get_world_rank(), context.get_world_size(), device)


def run_training(
    job: TrainNetJob, images: list[dict], rank: int = 0, world: int = 1, device: torch.device | str = "cpu"
) -> None:
    """The training loop of one worker (rank of world); with world 1 it needs neither Ray nor a process group."""
    from pipeline.method.backbone import load_backbone
    from pipeline.method.trainer import resolve_precision

    config, device = job.config, torch.device(device)
    storage = Storage(job.storage_options)
    precision = resolve_precision(config.precision, device)
    backbone = load_backbone(config.backbone, device)
    pool = ImagePool([image["uri"] for image in images], storage, config, job.cache_mb)

    # 1. the image pool: decoded once, unreadable images dropped, curated; stored so a resume reuses it
    table = _pool_table(job, images, pool, backbone, storage, rank, world, device)
    pools = [list(group.index) for _, group in table[table["kept"]].groupby("domain", sort=True)]
    small = [d for d, group in table[table["kept"]].groupby("domain") if len(group) < 2]
    if small:
        raise SpliceError(
            f"domain(s) {small} have fewer than 2 readable images left (see "
            f"{redact_url(join(job.out, IMAGES_FILE))}): fix or add images"
        )

    # 2. the model and Adam; resumed from the newest readable checkpoint
    torch.manual_seed(config.seed)
    net_config = SpliceNetConfig(
        width=config.width, code_dim=int(backbone.vit.cls_token.shape[-1]), demodulate=config.demodulate
    )
    net = SpliceNet(net_config).to(device).train()
    optimizer = torch.optim.Adam(net.parameters(), lr=config.lr, betas=config.betas)
    start = _resume(storage, job.out, net, optimizer, device)
    model = net
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        model = DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None)
    losses = _read_losses(storage, job.out, start) if rank == 0 else []
    meta = {
        "backbone": config.backbone,
        "backbone_weights": backbone.weights_id,
        "resolution": config.resolution,
        "domains": sorted(table["domain"].unique()),
        "manifest": job.manifest,
    }
    weights = config.loss_weights
    samples = worker_slice(config.batch, rank, world)
    # DDP averages gradients over workers; scaling by this worker's share makes that the global batch's mean
    share = len(samples) * world / config.batch

    # 3. the loop: pairs, crops, forward + losses, backward, step, zero_grad, then log and checkpoint
    log.info(
        "rank %d/%d: steps %d..%d, %d pair(s) per step on %s", rank, world, start, config.steps, len(samples), device
    )
    started = logged_time = time.perf_counter()
    logged_at = start
    pairs = draw_pairs(config.seed, start, config.batch, pools) if start < config.steps else []
    for step in range(start, config.steps):
        images_now = pool.get({index for sample in samples for index in pairs[sample]})
        upcoming = draw_pairs(config.seed, step + 1, config.batch, pools)
        pool.prefetch({index for sample in samples for index in upcoming[sample]})
        structure, appearance = sample_crops(config.seed, step, samples, pairs, images_now, config, device)
        terms = conditioned_losses(model, backbone, structure, appearance, weights, precision)
        (terms["total"] * share).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        done = step + 1
        if done % config.log_every == 0 or done == config.steps:
            row = _global_terms(terms, len(samples), world, device)  # one host sync, on log steps only
            if rank == 0:
                now = time.perf_counter()
                row.update(step=done, seconds_per_step=(now - logged_time) / (done - logged_at))
                logged_at, logged_time = done, now
                losses.append(row)
                log.info(
                    "step %d/%d: total %.4g (appearance %.4g, structure %.4g, identity %.4g)",
                    done,
                    config.steps,
                    row["total"],
                    row["appearance"],
                    row["structure"],
                    row["identity"],
                )
        if rank == 0 and (done % config.checkpoint_every == 0 or done == config.steps):
            _write_checkpoint(storage, job, net, optimizer, done, losses, meta)
            hooks.point("train_net.checkpoint", step=done)  # a test may hold or kill the training here
        pairs = upcoming

    # 4. finished: the summary beside the model
    if rank == 0:
        seconds = time.perf_counter() - started
        record = storage.read_json(join(job.out, TRAIN_JSON))
        record.update(
            status="finished",
            step=config.steps,
            finished=time.time(),
            workers=world,
            resumed_from=start,
            device=_device_name(device),
            host=platform.node(),
            steps_per_second=(config.steps - start) / seconds if seconds > 0 and config.steps > start else None,
        )
        storage.write_json(join(job.out, TRAIN_JSON), record)
    pool.close()


def _global_terms(terms: dict, count: int, world: int, device: torch.device) -> dict:
    """Every worker's mean terms -> the global batch's mean (all-reduce of count-weighted sums)."""
    values = torch.stack(
        [terms.get(name, torch.zeros((), device=device)).detach().float() * count for name in TERMS]
        + [torch.tensor(float(count), device=device)]
    )
    if world > 1:
        dist.all_reduce(values)
    values = values.cpu()
    return {name: float(values[i] / values[-1]) for i, name in enumerate(TERMS)}


def _device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({platform.processor() or 'cpu'})"


# --------------------------------------------------------------------------------------------- pool and curation


class ImagePool:
    """Pool images by index: decoded, shrunk to the training resolution, cached up to a byte budget, prefetched."""

    def __init__(self, uris: list[str], storage: Storage, config: NetTrainConfig, cache_mb: int, threads: int = 8):
        self.uris, self.storage, self.config = uris, storage, config
        self.budget = cache_mb * 2**20
        self.cache: dict[int, torch.Tensor] = {}
        self.cached_bytes = 0
        self.pending: dict[int, Future] = {}
        self.executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="splicenet-images")

    def load(self, index: int) -> torch.Tensor:
        uri = self.uris[index]
        limit = max_input_bytes(self.config.max_pixels)
        image = decode_image(self.storage.read_input(uri, max_bytes=limit), redact_url(uri), self.config.max_pixels)
        return pool_image(image, self.config.resolution)

    def keep(self, index: int, image: torch.Tensor) -> None:
        if index not in self.cache and self.cached_bytes + image.numel() <= self.budget:
            self.cache[index] = image
            self.cached_bytes += image.numel()

    def prefetch(self, indices: set[int]) -> None:
        for index in indices:
            if index not in self.cache and index not in self.pending:
                self.pending[index] = self.executor.submit(self.load, index)

    def get(self, indices: set[int]) -> dict[int, torch.Tensor]:
        self.prefetch(indices)
        found = {}
        for index in sorted(indices):
            if index in self.cache:
                found[index] = self.cache[index]
                continue
            try:
                found[index] = self.pending.pop(index).result()
            except SpliceError:
                raise
            except Exception as exc:
                raise SpliceError(
                    f"image {redact_url(self.uris[index])} cannot be read ({type(exc).__name__}: "
                    f"{redact_text(exc)}): check the store; the run resumes from its last checkpoint"
                ) from exc
            self.keep(index, found[index])
        return found

    def close(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)


def _pool_table(
    job: TrainNetJob,
    images: list[dict],
    pool: ImagePool,
    backbone,
    storage: Storage,
    rank: int,
    world: int,
    device: torch.device,
) -> pd.DataFrame:
    """OUT/images.parquet, reused when it lists these images; else made: each worker decodes (and, when curating,
    embeds) every world-th image, the results are gathered, rank 0 writes the table."""
    url = join(job.out, IMAGES_FILE)
    if storage.exists(url):
        table = pd.read_parquet(io.BytesIO(storage.read_bytes(url)))
        if list(table["uri"]) == [image["uri"] for image in images] and list(table["domain"]) == [
            image["domain"] for image in images
        ]:
            return table
    mine = {}
    indices = range(rank, len(images), world)
    for index, future in zip(indices, [pool.executor.submit(pool.load, i) for i in indices]):  # reads in parallel
        try:
            image = future.result()
        except Exception as exc:  # noqa: BLE001 (any failure to read or decode: this image leaves the pool, the training goes on)
            reason = (
                redact_text(str(exc)) if isinstance(exc, SpliceError) else f"{type(exc).__name__}: {redact_text(exc)}"
            )
            mine[index] = {"error": reason, "cls": None}
            continue
        pool.keep(index, image)
        cls = _cls_token(backbone, image, device) if job.config.curate == "centre" else None
        mine[index] = {"error": None, "cls": cls}
    gathered = _all_gather(mine, world)
    results = {index: value for part in gathered for index, value in part.items()}
    table = pd.DataFrame(images)
    table["error"] = [results[i]["error"] for i in range(len(images))]
    table["ok"] = table["error"].isna()
    table["distance"] = float("nan")
    table["kept"] = table["ok"]
    if job.config.curate == "centre":
        _curate(table, results, job.config.curate_keep)
    for row in table[~table["ok"]].itertuples():
        log.warning("image %s left out of the pool: %s", redact_url(row.uri), row.error)
    if rank == 0:
        buffer = io.BytesIO()
        table.to_parquet(buffer, index=False)
        storage.write_bytes(url, buffer.getvalue())
    return table


def _cls_token(backbone, image: torch.Tensor, device: torch.device) -> torch.Tensor:
    """The last block's [CLS] (D,) of a whole pool image, on the CPU."""
    with torch.no_grad():
        pixels = backbone.prepare(image.to(device=device, dtype=torch.float32).div(255)[None])
        return backbone.last_block(pixels).cls_token[0].float().cpu()


def _curate(table: pd.DataFrame, results: dict, keep: float) -> None:
    """Per domain: cosine distance of each image's [CLS] to the domain's mean; keep the `keep` nearest fraction."""
    for _, group in table[table["ok"]].groupby("domain"):
        codes = F.normalize(torch.stack([results[i]["cls"] for i in group.index]), dim=1)  # (n, D)
        centre = F.normalize(codes.mean(dim=0, keepdim=True), dim=1)  # (1, D)
        distance = 1 - (codes @ centre.t())[:, 0]  # (n,)
        table.loc[group.index, "distance"] = distance.tolist()
        count = max(2, math.ceil(keep * len(group)))
        dropped = group.index[distance.argsort(stable=True)[count:].tolist()]
        table.loc[dropped, "kept"] = False


def _all_gather(value, world: int) -> list:
    if world == 1:
        return [value]
    gathered = [None] * world
    dist.all_gather_object(gathered, value)
    return gathered


# ------------------------------------------------------------------------------------------ checkpoints and logs


def checkpoint_url(out: str, step: int) -> str:
    return join(out, CHECKPOINTS, f"step-{step:07d}.pt")


def _write_checkpoint(
    storage: Storage, job: TrainNetJob, net: SpliceNet, optimizer, step: int, losses: list, meta: dict
) -> None:
    """Rank 0: the checkpoint first (what a resume needs), then net.pt and the losses, then old checkpoints go."""
    buffer = io.BytesIO()
    torch.save(
        {
            "format": CHECKPOINT_FORMAT,
            "step": step,
            "config": _jsonable(job.config.to_dict()),
            "model": {k: v.detach().cpu() for k, v in net.state_dict().items()},
            "optimizer": _to_cpu(optimizer.state_dict()),
        },
        buffer,
    )
    storage.write_bytes(checkpoint_url(job.out, step), buffer.getvalue())
    buffer = io.BytesIO()
    save_net(net, buffer, step=step, **meta)
    storage.write_bytes(join(job.out, NET_FILE), buffer.getvalue())
    if losses:
        frame = io.BytesIO()
        pd.DataFrame(losses).to_parquet(frame, index=False)
        storage.write_bytes(join(job.out, LOSSES_FILE), frame.getvalue())
    record = storage.read_json(join(job.out, TRAIN_JSON))
    record["step"] = step
    storage.write_json(join(job.out, TRAIN_JSON), record)
    for old in _checkpoints(storage, job.out)[: -job.keep_checkpoints or None]:
        storage.remove(old)


def _to_cpu(value):
    if torch.is_tensor(value):
        return value.detach().cpu()
    if isinstance(value, dict):
        return {k: _to_cpu(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_to_cpu(v) for v in value]
    return value


def _checkpoints(storage: Storage, out: str) -> list[str]:
    return sorted(storage.glob(join(out, CHECKPOINTS, "step-*.pt")))


def _resume(storage: Storage, out: str, net: SpliceNet, optimizer, device: torch.device) -> int:
    """Load the newest readable checkpoint into net and optimizer; return its step (0: none)."""
    for url in reversed(_checkpoints(storage, out)):
        try:
            state = torch.load(io.BytesIO(storage.read_bytes(url)), map_location=device, weights_only=True)
            if state.get("format") != CHECKPOINT_FORMAT:
                raise ValueError(f"format {state.get('format')!r}")
            net.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
        except Exception as exc:  # noqa: BLE001 (a checkpoint cut short by a kill: the one before it will do)
            log.warning("checkpoint %s cannot be used (%s); trying an older one", redact_url(url), exc)
            continue
        log.info("resuming from %s (step %d)", redact_url(url), state["step"])
        return int(state["step"])
    return 0


def _read_losses(storage: Storage, out: str, start: int) -> list[dict]:
    url = join(out, LOSSES_FILE)
    if not start or not storage.exists(url):
        return []
    frame = pd.read_parquet(io.BytesIO(storage.read_bytes(url)))
    return frame[frame["step"] <= start].to_dict("records")
