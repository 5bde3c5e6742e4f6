"""Train SpliceNet on a manifest's domains: Ray Train workers (TorchTrainer, DDP), every file in storage.

The driver (`train_net`: checks, Ray, TorchTrainer) and the loop every worker runs (`run_training`). The output
folder OUT and its files are pipeline/runs/net_folder.py's (rank 0 writes them), the image pool and its curation
pipeline/runs/net_images.py's.

Running the same command again resumes from the newest readable checkpoint (a finished training is reported and
left alone; `--steps` may grow to train further). Pairs and augmentation are pure functions of (seed, step,
sample) (method/splicenet_train.py), so a resumed run and one with another number of workers compute the same
steps; a checkpoint needs no RNG state.
"""

from __future__ import annotations

import logging
import platform
import shutil
import tempfile
import time

import torch
import torch.distributed as dist

from manifests.schema import read_manifest
from pipeline.errors import SpliceError
from pipeline.method.objective import conditioned_losses
from pipeline.method.splicenet import SpliceNet, SpliceNetConfig
from pipeline.method.splicenet_train import draw_pairs, sample_crops, worker_slice
from pipeline.runs import hooks, net_folder
from pipeline.runs.jobs import TrainNetJob
from pipeline.runs.net_images import ImagePool, domain_pools, plan_images, pool_table
from pipeline.storage import Storage, redact_text, redact_url

log = logging.getLogger(__name__)

TERMS = ("appearance", "structure", "identity", "total")


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
    record = net_folder.prepare_out(storage, job, images)
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
    return net_folder.read_record(storage, job.out)


def _check_batch(batch: int, workers: int) -> None:
    if batch < workers:
        raise SpliceError(
            f"--batch {batch} is smaller than --workers {workers}: every worker needs at least one pair "
            f"per step; raise --batch or lower --workers"
        )


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
    table = pool_table(job.out, images, pool, backbone, rank, world, device)
    pools = domain_pools(table, job.out)

    # 2. the model and Adam; resumed from the newest readable checkpoint
    torch.manual_seed(config.seed)
    net_config = SpliceNetConfig(
        width=config.width, code_dim=int(backbone.vit.cls_token.shape[-1]), demodulate=config.demodulate
    )
    net = SpliceNet(net_config).to(device).train()
    optimizer = torch.optim.Adam(net.parameters(), lr=config.lr, betas=config.betas)
    start = net_folder.resume(storage, job.out, net, optimizer, device)
    model = net
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        model = DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None)
    losses = net_folder.read_losses(storage, job.out, start) if rank == 0 else []
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
            net_folder.write_checkpoint(storage, job, net, optimizer, done, losses, meta)
            hooks.point("train_net.checkpoint", step=done)  # a test may hold or kill the training here
        pairs = upcoming

    # 4. finished: the summary beside the model
    if rank == 0:
        seconds = time.perf_counter() - started
        net_folder.update_record(
            storage,
            job.out,
            status="finished",
            step=config.steps,
            finished=time.time(),
            workers=world,
            resumed_from=start,
            device=_device_name(device),
            host=platform.node(),
            steps_per_second=(config.steps - start) / seconds if seconds > 0 and config.steps > start else None,
        )
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
