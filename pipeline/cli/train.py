"""`splice train`: train Splice on one pair of local images and write the result to a local folder."""

from __future__ import annotations

import argparse
import os

from pipeline.cli.console import add_progress_argument, progress_enabled
from pipeline.cli.options import add_out_argument
from pipeline.config_options import ConfigOptions, resolve_config
from pipeline.method.config import PRESETS, TrainConfig


def training_options(
    default_preset: str = "paper", command_defaults: dict | None = None, help_notes: dict | None = None
) -> ConfigOptions:
    """The TrainConfig options shared by every command that trains (train, run, demo): one flag per field.
    `command_defaults`: this command's values over the preset's; `help_notes`: field -> sentence added to its help."""
    return ConfigOptions(
        TrainConfig,
        PRESETS,
        default_preset,
        command_defaults or {},
        title="training options",
        help_notes=help_notes or {},
    )


def preset_help(default: str) -> str:
    """What each preset changes from TrainConfig's defaults, read from the presets themselves."""
    base = TrainConfig().to_dict()
    described = []
    for name, config in PRESETS.items():
        changes = [f"{k}={v}" for k, v in config.to_dict().items() if v != base[k]]
        described.append(f"{name}: {', '.join(changes) or 'the defaults'}")
    return f"starting values (default {default}): " + "; ".join(described)


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train Splice on one (structure, appearance) pair",
        description="Train a Splice generator so the structure image takes on the appearance of the appearance "
        "image. Writes OUT_DIR/output.png, meta.json, losses.parquet (and checkpoint.pt while training); "
        "re-running with the same OUT_DIR resumes from the last checkpoint.",
    )
    parser.add_argument("structure", metavar="STRUCTURE_IMAGE", help="image whose structure (layout, shapes) is kept")
    parser.add_argument(
        "appearance", metavar="APPEARANCE_IMAGE", help="image whose appearance (colours, textures) is transferred"
    )
    add_out_argument(parser, metavar="OUT_DIR", help="folder for the outputs (created)")
    parser.add_argument("--device", default="auto", help="auto (CUDA if available; default) | cpu | cuda | cuda:N")
    parser.add_argument("--force", action="store_true", help="retrain even if OUT_DIR already holds a finished result")
    parser.add_argument(
        "--compile",
        choices=("auto", "on", "off"),
        default="auto",
        help="torch.compile the backbone's 224x224 passes: auto (on CUDA only; falls back to eager "
        "where compiling fails; default) | on | off",
    )
    add_progress_argument(parser)
    notes = {"checkpoint_every": "(splice train: unless set, every steps/4 steps, at most 500, so that it resumes)"}
    training_options(help_notes=notes).add_to(parser, preset_help("paper"))
    parser.set_defaults(handler=run_train)


def run_train(args: argparse.Namespace) -> int:
    # heavy imports here, not at parser build time: `splice --help` stays quick
    from pipeline.method.backbone import load_backbone
    from pipeline.method.images import read_image_file
    from pipeline.method.trainer import TrainOptions, resolve_device, train_pair
    from pipeline.runs import layout
    from pipeline.runs.pair_folder import PairFolder
    from pipeline.storage import Storage, absolute

    # 1. validate inputs
    resolved = resolve_config(args)
    config = resolved.config
    if config.checkpoint_every == 0 and "checkpoint_every" not in resolved.explicit:
        config = config.replace(checkpoint_every=max(1, min(500, config.steps // 4)))  # resumable by default
    out = absolute(args.out)  # a local path made absolute; a URL (s3://...) as it is, never a local folder named so
    pair = PairFolder(Storage(), out)
    if pair.is_done() and not args.force:
        print(f"{out} already holds a finished result ({layout.SUCCESS}); use --force to train again")
        return 0
    if args.force:
        pair.unmark()
        pair.remove_checkpoint()
    structure = read_image_file(args.structure, config.max_pixels)
    appearance = read_image_file(args.appearance, config.max_pixels)

    # 2. load
    device = resolve_device(args.device)
    backbone = load_backbone(config.backbone, device)

    # 3. train (resuming from OUT_DIR/checkpoint.pt when there is one)
    result = train_pair(
        structure,
        appearance,
        config,
        backbone,
        device,
        checkpoint=pair.load_checkpoint(),
        save_checkpoint=pair.save_checkpoint,
        progress=progress_enabled(args.progress),
        options=TrainOptions(compile=args.compile),
    )

    # 4. write
    inputs = {"structure_uri": os.path.abspath(args.structure), "appearance_uri": os.path.abspath(args.appearance)}
    pair.write_result(result, extra_meta=inputs)
    final = result.meta["final_losses"]
    print(
        f"wrote {layout.join(out, layout.OUTPUT_PNG)} ({result.meta['seconds']:.1f} s, "
        f"{result.meta['seconds_per_step']:.3f} s/step on {result.meta['device']}, final loss {final.get('total', float('nan')):.4g})"
    )
    return 0
