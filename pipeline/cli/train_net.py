"""`splice train-net MANIFEST -o OUT`: train a SpliceNet (one feed-forward Splice per domain) with Ray Train."""

from __future__ import annotations

import argparse

from pipeline.cli.options import add_list_argument, add_out_argument, add_storage_arguments
from pipeline.errors import SpliceError


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "train-net",
        help="train a SpliceNet on a manifest's domains (Ray Train, resumable)",
        description="Train SpliceNet, a network that applies Splice in one forward pass, on random same-domain "
        "pairs of a manifest's images, data-parallel over Ray Train workers (one per GPU; one CPU "
        "worker on a laptop). Writes OUT/net.pt (the model `splice run --method splicenet` reads), "
        "OUT/checkpoints/, OUT/losses.parquet, OUT/images.parquet and OUT/train.json; running the same "
        "command again resumes from the newest checkpoint. See docs/splicenet.md.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("manifest", metavar="MANIFEST", help="manifest Parquet file (local path or fsspec URL)")
    add_out_argument(
        parser, metavar="URL", help="output folder: local path, s3://, gs://, ... (resumes when it holds this training)"
    )
    add_list_argument(
        parser,
        "--domain",
        metavar="NAME",
        default=[],
        help="train on these manifest domains only, pooled (default: every domain)",
    )
    parser.add_argument("--steps", type=int, default=20000, help="optimisation steps (may grow on a resume)")
    parser.add_argument("--batch", type=int, default=16, help="pairs per step over all workers (the global batch)")
    parser.add_argument("--resolution", type=int, default=256, help="side of the square training crops")
    parser.add_argument(
        "--backbone",
        default="dino_vitb8",
        help="DINO backbone: dino_vitb8 (the paper) | dino_vits8 | dino_vitb16 | dino_vits16 | "
        "file:PATH | random:TIMM_ARCH (tests only)",
    )
    parser.add_argument("--lr", type=float, default=2e-3, help="Adam learning rate, constant (betas 0, 0.99)")
    parser.add_argument("--width", type=float, default=1.0, help="channel multiplier (1: the paper's 64..1024)")
    parser.add_argument("--no-demodulate", action="store_true", help="modulate without StyleGAN2's demodulation")
    parser.add_argument(
        "--curate",
        choices=("none", "centre"),
        default="none",
        help="centre: per domain, drop the images whose DINO [CLS] is farthest from the domain's mean "
        "(keeping --curate-keep of them)",
    )
    parser.add_argument(
        "--curate-keep", type=float, default=0.9, help="fraction of each domain kept by --curate centre"
    )
    parser.add_argument("--seed", type=int, default=0, help="seeds initialisation, pairs and augmentation")
    parser.add_argument(
        "--precision", choices=("auto", "fp32", "bf16"), default="auto", help="auto: bf16 backbone on CUDA, fp32 on CPU"
    )
    parser.add_argument(
        "--checkpoint-every", type=int, default=1000, help="checkpoint (and update net.pt) every N steps"
    )
    parser.add_argument("--keep-checkpoints", type=int, default=2, help="newest checkpoints kept")
    parser.add_argument("--log-every", type=int, default=50, help="record losses every N steps")
    parser.add_argument("--workers", type=int, help="Ray Train workers (default: one per GPU of the cluster, else 1)")
    parser.add_argument(
        "--gpus-per-worker", type=float, help="GPUs per worker (default: 1 where the cluster has GPUs, else 0: CPU)"
    )
    parser.add_argument("--cpus-per-worker", type=float, default=1.0, help="CPUs per worker")
    parser.add_argument(
        "--max-failures",
        type=int,
        default=0,
        help="restart the workers this many times after one dies (each restart resumes)",
    )
    parser.add_argument("--cache-mb", type=int, default=4096, help="pool images each worker keeps in memory (MiB)")
    parser.add_argument("--max-pixels", type=int, default=40_000_000, help="refuse images above this many pixels")
    parser.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, else an embedded Ray here)")
    add_storage_arguments(parser)
    parser.set_defaults(handler=run_train_net)


def job_from_args(args: argparse.Namespace):
    from pipeline.method.splicenet_train import NetTrainConfig
    from pipeline.runs.jobs import TrainNetJob
    from pipeline.storage import parse_storage_options

    domains = tuple(args.domain)
    try:
        config = NetTrainConfig(
            backbone=args.backbone,
            resolution=args.resolution,
            batch=args.batch,
            steps=args.steps,
            lr=args.lr,
            width=args.width,
            demodulate=not args.no_demodulate,
            domains=domains,
            curate=args.curate,
            curate_keep=args.curate_keep,
            seed=args.seed,
            precision=args.precision,
            log_every=args.log_every,
            checkpoint_every=args.checkpoint_every,
            max_pixels=args.max_pixels,
        )
    except ValueError as exc:
        raise SpliceError(f"train-net: {exc}") from exc
    for name in ("workers", "keep_checkpoints", "cache_mb"):
        value = getattr(args, name)
        if value is not None and value < (0 if name == "cache_mb" else 1):
            raise SpliceError(
                f"train-net: --{name.replace('_', '-')} must be >= {0 if name == 'cache_mb' else 1}, got {value}"
            )
    if args.gpus_per_worker is not None and args.gpus_per_worker < 0 or args.max_failures < 0:
        raise SpliceError("train-net: --gpus-per-worker and --max-failures must be >= 0")
    return TrainNetJob(
        manifest=args.manifest,
        out=args.out,
        config=config,
        storage_options=parse_storage_options(args.storage_option),
        workers=args.workers,
        gpus_per_worker=args.gpus_per_worker,
        cpus_per_worker=args.cpus_per_worker,
        max_failures=args.max_failures,
        address=args.address,
        keep_checkpoints=args.keep_checkpoints,
        cache_mb=args.cache_mb,
    )


def run_train_net(args: argparse.Namespace) -> int:
    from pipeline.runs.layout import join
    from pipeline.runs.net_folder import NET_FILE
    from pipeline.runs.train_net import train_net
    from pipeline.storage import redact_url

    record = train_net(job_from_args(args))
    rate = record.get("steps_per_second")
    print(
        f"{redact_url(join(args.out, NET_FILE))}: SpliceNet after {record['step']} steps on "
        f"{', '.join(f'{d} ({n} images)' for d, n in record.get('images', {}).items())}"
        + (f", {rate:.3g} steps/s on {record.get('device')} x{record.get('workers')}" if rate else "")
    )
    return 0
