"""`splice run M.parquet --out URL`: every pair of a manifest, one Ray task each, outputs in storage."""

from __future__ import annotations

import argparse
import sys

from pipeline.cli.console import add_progress_argument, progress_enabled
from pipeline.cli.options import (
    add_address_argument,
    add_argument,
    add_break_lock_argument,
    add_list_argument,
    add_out_argument,
    add_storage_arguments,
)
from pipeline.cli.train import preset_help, training_options
from pipeline.config_options import resolve_config

RUN_CHECKPOINT_EVERY = 100  # splice run's default: a pair whose worker died resumes from its last 100 steps


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "run",
        help="run a method over every pair of a manifest (Ray fan-out, resumable)",
        description="Run a method over every pair of a manifest, one Ray task per pack of pairs, writing "
        "<out>/pairs/<pair_id>/{output.png,meta.json,losses.parquet,_SUCCESS} and <out>/results.parquet. "
        "Pairs already done are skipped, so running the same command again resumes.",
    )
    parser.add_argument("manifest", help="manifest Parquet file (local path or fsspec URL)")
    add_out_argument(parser, metavar="RUN_URL", help="run folder: local path, file://, s3://, gs://, ...")
    parser.add_argument(
        "--method",
        default="splice",
        help="method: splice (default), a reference method (color-transfer, ...) or a plug-in: an "
        "installed one's name, or py:MODULE:FN (MODULE importable or a path to a .py file; README, "
        "Plug-ins)",
    )
    from pipeline.cli.splicenet import add_run_arguments as add_splicenet_arguments

    add_splicenet_arguments(parser)
    add_address_argument(parser)
    parser.add_argument(
        "--pack",
        type=_pack_size,
        default=None,
        metavar="K|auto",
        help="pairs trained together in one task (one backbone pass for all, one optimiser step); "
        "results do not depend on it. auto (default): 1 on CPUs; on GPUs as many as fit the "
        "GPU's memory for the images' sizes, at most 16. --method splicenet: pairs per task, "
        "batched through the net; auto: 32 on GPUs, on CPUs enough to use every CPU, at most 8",
    )
    parser.add_argument(
        "--gpus-per-task",
        type=float,
        help="GPUs per task (one task trains one pack); 0.5 runs two tasks per GPU; 0 runs on CPUs "
        "(default: 1 where the cluster has GPUs, else 0)",
    )
    parser.add_argument(
        "--gpus-per-pair", type=float, help="deprecated: --gpus-per-task G --pack 1 (one pair per task)"
    )
    add_argument(
        parser,
        "--cpus-per-task",
        type=float,
        default=1.0,
        help="CPUs per task (one task trains one pack; default 1)",
        old_spellings=("--cpus-per-pair",),
    )
    parser.add_argument(
        "--compile",
        choices=("auto", "on", "off"),
        default="auto",
        help="torch.compile the backbone's 224x224 passes: auto (on CUDA only; falls back to eager "
        "where compiling fails) | on | off",
    )
    parser.add_argument("--max-retries", type=int, default=2, help="re-runs of a pair whose worker died (default 2)")
    parser.add_argument("--limit", type=int, help="only the first N pairs of the manifest")
    add_list_argument(parser, "--only", default=[], metavar="PAIR_ID,...", help="only these pairs")
    parser.add_argument(
        "--force",
        action="store_true",
        help="redo pairs that are already done: those whose inputs or settings changed, if any did; "
        "otherwise every selected pair",
    )
    parser.add_argument(
        "--verify",
        action="store_true",
        help="check done pairs' files against the sha256 in their _SUCCESS (default: sizes only); "
        "damaged pairs are redone",
    )
    parser.add_argument(
        "--max-input-bytes",
        type=int,
        help="refuse input files larger than this (default: derived from the pixel cap, 8 bytes per "
        "pixel of 40 megapixels)",
    )
    add_break_lock_argument(parser)
    parser.add_argument(
        "--break-stale-lock",
        action="store_true",
        help="take the lock over only if it is stale: its process is gone (same host) or it was not "
        "renewed for 2 minutes; safe for automatic retries such as a RayJob's",
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="print what the run would do (pairs done, to do or damaged; packs) and its cost estimate (GPU-hours, "
        "wall time, as a range; as `splice bench --dry-run`); write nothing",
    )
    add_storage_arguments(parser)
    add_progress_argument(parser)
    add_training_arguments(parser)
    parser.set_defaults(handler=run)


def add_training_arguments(
    parser: argparse.ArgumentParser, default_preset: str = "paper", command_defaults: dict | None = None
) -> None:
    """The TrainConfig options of a command that runs a manifest (run, demo)."""
    notes = {
        "backbone": "(unset, where the preset's weights can be neither found nor downloaded: random weights "
        "of its architecture, said loudly and recorded)",
        "seed": "(a manifest 'seed' column overrides it per pair)",
        "steps": "(a manifest 'steps' column overrides it per pair)",
    }
    defaults = {"checkpoint_every": RUN_CHECKPOINT_EVERY, **(command_defaults or {})}
    training_options(default_preset, defaults, notes).add_to(parser, preset_help(default_preset))


def real_or_random(resolved, method: str):
    """The preset's backbone if its weights are here or can be downloaded, else its random twin, said loudly once;
    a backbone the user set (flag, --set or --config) is never replaced. Returns (config, why it fell back or None)."""
    from pipeline.method.registry import get_method
    from pipeline.method.weights import announce_fallback, resolve_backbone

    config = resolved.config
    spec = get_method(method)
    if not spec.uses_backbone or spec.batched is not None:  # splicenet: the backbone its checkpoint names
        return config, None
    backbone, fallback = resolve_backbone(config.backbone, explicit="backbone" in resolved.explicit)
    if fallback:
        announce_fallback(fallback)
        config = config.replace(backbone=backbone)
    return config, fallback


def run(args) -> int:
    from pipeline.cli.splicenet import run_options
    from pipeline.runs.fanout import run_manifest
    from pipeline.runs.jobs import RunSettings
    from pipeline.storage import parse_storage_options

    resolved = resolve_config(args)
    method_options = run_options(args, resolved)
    config, fallback = real_or_random(resolved, args.method)
    settings = RunSettings(
        out=args.out,
        method=args.method,
        config=config,
        address=args.address,
        backbone_fallback=fallback,
        gpus_per_pair=args.gpus_per_pair,
        cpus_per_task=args.cpus_per_task,
        max_retries=args.max_retries,
        limit=args.limit,
        only=tuple(args.only),
        force=args.force,
        verify=args.verify,
        max_input_bytes=args.max_input_bytes,
        break_lock=args.break_lock,
        break_stale_lock=args.break_stale_lock,
        storage_options=parse_storage_options(args.storage_option),
        progress=progress_enabled(args.progress),
        pack=args.pack,
        gpus_per_task=args.gpus_per_task,
        compile=args.compile,
        method_options=method_options,
    )
    if args.dry_run:  # the plan and its estimate; nothing is written (pipeline/bench/dry_run.py)
        from pipeline.bench.dry_run import run_dry_run

        print("\n".join(run_dry_run(args.manifest, settings)))
        return 0
    summary = run_manifest(args.manifest, settings)
    print_summary(summary)
    return summary.exit_code


def _pack_size(text: str) -> int | None:
    if text == "auto":
        return None
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of pairs or auto, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def print_summary(summary) -> None:
    from pipeline.storage import redact_url

    out = redact_url(summary.out)
    print(
        f"run {out}: {summary.total} pair(s): {summary.done} done ({summary.skipped} skipped as already done), "
        f"{summary.failed} failed, {summary.pending} pending, in {summary.seconds:.1f}s"
        + (f"; {summary.damaged} damaged pair(s) redone" if summary.damaged else "")
    )
    if summary.failures:  # each was printed once as it failed
        print(
            f"failed pairs: `splice status {out} --failed` lists them (tracebacks in pairs/<pair_id>/error.txt); "
            f"fix them and run again to retry"
        )
    print(f"outputs: {out}/pairs/<pair_id>/output.png")
    if summary.storage_error:
        print(f"error: {summary.storage_error}", file=sys.stderr)
