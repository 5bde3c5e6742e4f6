"""SpliceNet inference options of `splice run --method splicenet`, and `splice splicenet modes CKPT MANIFEST -k 9`."""

from __future__ import annotations

import argparse

from pipeline.cli.options import add_domain_argument, add_net_argument, add_out_argument, add_storage_arguments
from pipeline.errors import SpliceError


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "splicenet",
        help="SpliceNet tools: appearance modes of a trained net",
        description="Tools for a SpliceNet trained with `splice train-net`; apply one to a manifest with "
        "`splice run M --method splicenet --net URL`.",
    )
    commands = parser.add_subparsers(dest="splicenet_command", metavar="COMMAND", required=True)
    modes = commands.add_parser(
        "modes",
        help="k-means of a domain's [CLS] codes: appearance codes for the net",
        description="Cluster the [CLS] codes (of the checkpoint's backbone) of a manifest's images with k-means "
        "(seeded k-means++, deterministic) and write OUT/modes.pt (the k centres), OUT/modes.json (images "
        "per mode, the image nearest each centre) and, with --structure, OUT/modes.png (that image "
        "rendered with every mode).",
    )
    modes.add_argument(
        "net", metavar="NET", help="a `splice train-net` output folder or its net.pt (local path or fsspec URL)"
    )
    modes.add_argument("manifest", help="manifest whose images are clustered (e.g. the training manifest)")
    modes.add_argument("-k", type=int, default=9, help="number of modes (default 9)")
    add_out_argument(modes, metavar="MODES_URL", help="output folder (local path or fsspec URL)")
    modes.add_argument(
        "--images",
        choices=("both", "structure", "appearance"),
        default="both",
        help="which manifest column's images (default both, each image once)",
    )
    add_domain_argument(modes, default=[], help="only rows of these manifest domains (default: every row)")
    modes.add_argument("--limit", type=int, help="at most this many images (first in manifest order)")
    modes.add_argument("--seed", type=int, default=0, help="k-means++ seed (default 0)")
    modes.add_argument("--restarts", type=int, default=4, help="k-means seedings, the best kept (default 4)")
    modes.add_argument("--structure", metavar="IMAGE", help="also render this image with every mode: OUT/modes.png")
    modes.add_argument(
        "--max-side", type=int, default=512, help="downscale images so the long side is at most this (default 512)"
    )
    modes.add_argument("--backbone", help="must be the checkpoint's backbone if given (default: the checkpoint's)")
    modes.add_argument("--device", default="auto", help="auto | cpu | cuda (default auto)")
    add_storage_arguments(modes)
    modes.set_defaults(handler=write_modes)


def write_modes(args) -> int:
    from pipeline.runs.splicenet_modes import ModesSettings
    from pipeline.runs.splicenet_modes import write_modes as compute
    from pipeline.storage import parse_storage_options, redact_url

    if args.k < 1:
        raise SpliceError(f"-k must be at least 1, got {args.k}")
    settings = ModesSettings(
        checkpoint=args.net,
        manifest=args.manifest,
        out=args.out,
        k=args.k,
        seed=args.seed,
        restarts=args.restarts,
        images=args.images,
        domains=tuple(args.domain),
        limit=args.limit,
        structure=args.structure,
        max_side=args.max_side,
        backbone=args.backbone,
        device=args.device,
        storage_options=parse_storage_options(args.storage_option),
    )
    record = compute(settings)
    counts = ", ".join(str(mode["count"]) for mode in record["modes"])
    print(
        f"{record['k']} appearance modes of {record['images']} image(s) ({counts} per mode) -> "
        f"{redact_url(args.out)}/modes.pt, modes.json" + (", modes.png" if "grid" in record else "")
    )
    return 0


# --- the options `splice run` takes for --method splicenet ------------------------------------------------------


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("--method splicenet")
    add_net_argument(
        group, help="the SpliceNet to apply: a `splice train-net` output folder (its net.pt) or the .pt file"
    )
    group.add_argument(
        "--appearance-strength",
        type=float,
        default=None,
        metavar="T",
        help="feed the net (1-T)*cls(structure) + T*cls(appearance): 1 (default) full transfer, 0 the "
        "structure's own appearance",
    )
    group.add_argument(
        "--net-resolution",
        default=None,
        metavar="native|training|S",
        help="where the net runs: native (default: the structure image's size after --max-side), "
        "training (short side at the checkpoint's training resolution, output resized back), or "
        "a short side S in pixels",
    )


FLAGS = {"checkpoint": "--net"}  # SpliceNetOptions field -> its flag, where not the field's name


def run_options(args, resolved) -> dict:
    """The method options of `splice run` (RunSettings.method_options): splicenet's, or none. `resolved`: the run's
    TrainConfig as resolved from flags, --set and --config (a backbone set there must be the checkpoint's)."""
    given = {
        "checkpoint": args.net,
        "appearance_strength": args.appearance_strength,
        "net_resolution": args.net_resolution,
    }
    if args.method != "splicenet":
        named = [FLAGS.get(name, f"--{name.replace('_', '-')}") for name, value in given.items() if value is not None]
        if named:
            raise SpliceError(f"{', '.join(named)} apply to --method splicenet only, not {args.method}")
        return {}
    if not args.net:
        raise SpliceError("--method splicenet needs --net URL: a `splice train-net` output folder or its net.pt")
    backbone = resolved.config.backbone if "backbone" in resolved.explicit else None
    return {**{name: value for name, value in given.items() if value is not None}, "backbone": backbone}
