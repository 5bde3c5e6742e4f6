"""`splice train-net MANIFEST -o OUT`: train a SpliceNet (one feed-forward Splice per domain) with Ray Train."""

from __future__ import annotations

import argparse

from pipeline.cli.options import add_address_argument, add_out_argument, add_storage_arguments
from pipeline.config_options import ConfigOptions, resolve_config
from pipeline.errors import SpliceError
from pipeline.method.splicenet_config import NetTrainConfig


def net_training_options() -> ConfigOptions:
    """`splice train-net`'s NetTrainConfig options: one flag per field, --config FILE and --set KEY=VALUE."""
    return ConfigOptions(NetTrainConfig, title="SpliceNet training options")


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "train-net",
        help="train a SpliceNet on a manifest's domains (Ray Train, resumable)",
        description="Train SpliceNet, a network that applies Splice in one forward pass, on random same-domain "
        "pairs of a manifest's images, data-parallel over Ray Train workers (one per GPU; one CPU "
        "worker on a laptop). Writes OUT/net.pt (the model `splice run --method splicenet --net OUT` reads), "
        "OUT/checkpoints/, OUT/losses.parquet, OUT/images.parquet and OUT/train.json; running the same "
        "command again resumes from the newest checkpoint. See docs/splicenet.md.",
    )
    parser.add_argument("manifest", metavar="MANIFEST", help="manifest Parquet file (local path or fsspec URL)")
    add_out_argument(
        parser, metavar="URL", help="output folder: local path, s3://, gs://, ... (resumes when it holds this training)"
    )
    parser.add_argument(
        "--keep-checkpoints", type=int, metavar="N", default=2, help="newest checkpoints kept (default 2)"
    )
    parser.add_argument(
        "--workers", type=int, metavar="N", help="Ray Train workers (default: one per GPU of the cluster, else 1)"
    )
    parser.add_argument(
        "--gpus-per-worker",
        type=float,
        metavar="G",
        help="GPUs per worker (default: 1 where the cluster has GPUs, else 0: CPU)",
    )
    parser.add_argument("--cpus-per-worker", type=float, default=1.0, metavar="C", help="CPUs per worker (default 1)")
    parser.add_argument(
        "--max-failures",
        type=int,
        default=0,
        metavar="N",
        help="restart the workers this many times after one dies (each restart resumes; default 0)",
    )
    parser.add_argument(
        "--cache-mb",
        type=int,
        default=4096,
        metavar="MIB",
        help="pool images each worker keeps in memory, in MiB (default 4096)",
    )
    add_address_argument(parser)
    add_storage_arguments(parser)
    net_training_options().add_to(parser)
    parser.set_defaults(handler=run_train_net)


def job_from_args(args: argparse.Namespace):
    from pipeline.runs.jobs import TrainNetJob
    from pipeline.storage import parse_storage_options

    config = resolve_config(args).config
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
