"""`splice train`: train Splice on one pair of local images and write the result to a local folder."""
from __future__ import annotations

import argparse
import os

from pipeline.method.config import PRESETS, preset
from pipeline.cli.console import add_progress_argument, progress_enabled
from pipeline.errors import SpliceError

BACKBONE_HELP = ("DINO backbone: dino_vitb8 | dino_vits8 | dino_vitb16 | dino_vits16 (timm weights, cached on first "
                 "use), file:PATH (local weights), or random:TIMM_ARCH (random weights, tests only)")


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "train", help="train Splice on one (structure, appearance) pair",
        description="Train a Splice generator so the structure image takes on the appearance of the appearance "
                    "image. Writes OUT_DIR/output.png, meta.json, losses.parquet (and checkpoint.pt while training); "
                    "re-running with the same OUT_DIR resumes from the last checkpoint.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("structure", metavar="STRUCTURE_IMAGE", help="image whose structure (layout, shapes) is kept")
    parser.add_argument("appearance", metavar="APPEARANCE_IMAGE", help="image whose appearance (colours, textures) is transferred")
    parser.add_argument("-o", "--out", required=True, metavar="OUT_DIR", help="folder for the outputs (created)")
    add_training_options(parser)
    parser.add_argument("--device", default="auto", help="auto (CUDA if available) | cpu | cuda | cuda:N")
    parser.add_argument("--force", action="store_true", help="retrain even if OUT_DIR already holds a finished result")
    parser.add_argument("--compile", choices=("auto", "on", "off"), default="auto",
                        help="torch.compile the backbone's 224x224 passes: auto (on CUDA only; falls back to eager "
                             "where compiling fails) | on | off")
    add_progress_argument(parser)
    parser.set_defaults(handler=run_train)


def add_training_options(parser: argparse.ArgumentParser) -> None:
    """Options shared by every command that trains (train, run, demo)."""
    parser.add_argument("--preset", default="paper", choices=sorted(PRESETS),
                        help="paper: ViT-B/8, 2000 steps; authors: 10000 steps; preview: ViT-S/16, 300 steps, inputs capped at 512 px")
    parser.add_argument("--steps", type=int, help="optimisation steps (overrides the preset)")
    parser.add_argument("--backbone", help=BACKBONE_HELP + " (overrides the preset)")
    parser.add_argument("--precision", choices=("auto", "fp32", "bf16"), help="auto: bf16 backbone on CUDA, fp32 on CPU")
    parser.add_argument("--seed", type=int, help="seed for generator initialisation and augmentation (default 0)")
    parser.add_argument("--max-pixels", type=int, help="refuse images above this many pixels (default 40000000)")
    parser.add_argument("--max-side", type=int, help="downscale inputs so their long side is at most this many pixels")
    parser.add_argument("--checkpoint-every", type=int, help="write a resumable checkpoint every N steps (0: never)")
    parser.add_argument("--log-every", type=int, help="record loss terms every N steps (default 10)")
    parser.add_argument("--no-antialias", action="store_true",
                        help="resize to the backbone's input without antialiasing, as the authors' pinned torchvision 0.10 "
                             "did (default: antialiased, as modern torchvision and the authors' code today)")


def config_from_args(args: argparse.Namespace):
    try:
        return preset(
            args.preset, steps=args.steps, backbone=args.backbone, precision=args.precision, seed=args.seed,
            max_pixels=args.max_pixels, max_side=args.max_side, checkpoint_every=args.checkpoint_every,
            log_every=args.log_every, antialias=False if getattr(args, "no_antialias", False) else None,
        )
    except ValueError as exc:
        raise SpliceError(str(exc)) from exc


def run_train(args: argparse.Namespace) -> int:
    import fsspec  # heavy imports here, not at parser build time: `splice --help` stays quick

    from pipeline.runs import layout, pair_io
    from pipeline.method.backbone import load_backbone
    from pipeline.method.images import read_image_file
    from pipeline.method.trainer import TrainOptions, resolve_device, train_pair

    # 1. validate inputs
    config = config_from_args(args)
    if config.checkpoint_every == 0 and args.checkpoint_every is None:
        config = config.replace(checkpoint_every=max(1, min(500, config.steps // 4)))  # resumable by default
    fs = fsspec.filesystem("file")
    out = os.path.abspath(args.out)
    if pair_io.is_done(fs, out) and not args.force:
        print(f"{out} already holds a finished result ({layout.SUCCESS}); use --force to train again")
        return 0
    if args.force:
        for name in (layout.SUCCESS, layout.CHECKPOINT):
            if fs.exists(layout.join(out, name)):
                fs.rm(layout.join(out, name))
    structure = read_image_file(args.structure, config.max_pixels)
    appearance = read_image_file(args.appearance, config.max_pixels)

    # 2. load
    device = resolve_device(args.device)
    backbone = load_backbone(config.backbone, device)

    # 3. train (resuming from OUT_DIR/checkpoint.pt when there is one)
    checkpoint = pair_io.load_checkpoint(fs, out)
    result = train_pair(
        structure, appearance, config, backbone, device, checkpoint=checkpoint,
        save_checkpoint=lambda state: pair_io.save_checkpoint(fs, out, state), progress=progress_enabled(args.progress),
        options=TrainOptions(compile=args.compile),
    )

    # 4. write
    inputs = {"structure_uri": os.path.abspath(args.structure), "appearance_uri": os.path.abspath(args.appearance)}
    pair_io.write_pair_result(fs, out, result, extra_meta=inputs)
    final = result.meta["final_losses"]
    print(f"wrote {layout.join(out, layout.OUTPUT_PNG)} ({result.meta['seconds']:.1f} s, "
          f"{result.meta['seconds_per_step']:.3f} s/step on {result.meta['device']}, final loss {final.get('total', float('nan')):.4g})")
    return 0
