"""`splice demo`: draw a few pairs, build their manifest and run them; works offline with a random: backbone."""

from __future__ import annotations

from pipeline.cli.console import add_progress_argument, progress_enabled
from pipeline.cli.demo_defaults import DEMO_PAIRS, DEMO_SIZE, DEMO_STEPS
from pipeline.cli.options import add_address_argument, add_out_argument
from pipeline.cli.run import add_training_arguments
from pipeline.config_options import resolve_config
from pipeline.errors import SpliceError


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="run a small demo on generated images (no downloads with --backbone random:...)",
        description="Draw a few (structure, appearance) pairs, build their manifest and run them with the preview "
        "preset, then compare them with two reference methods in a report. The default backbone (DINO "
        "ViT-S/16) and the metrics' weights are used when cached (or in SPLICE_WEIGHTS_DIR) or "
        "downloadable; where they are not, random weights of the same architecture are used instead, "
        "said in large letters and in the report. --backbone random:vit_tiny_patch16_224 is a quick "
        "smoke run.",
    )
    add_out_argument(
        parser, required=False, metavar="DEMO_DIR", help="demo folder (default ./demo-run): inputs/ and run/ go there"
    )
    parser.add_argument("--method", default="splice", help="method (default splice)")
    parser.add_argument("--pairs", type=int, default=DEMO_PAIRS, help=f"pairs to draw (default {DEMO_PAIRS})")
    parser.add_argument("--size", type=int, default=DEMO_SIZE, help=f"image side in pixels (default {DEMO_SIZE})")
    add_address_argument(parser)
    parser.add_argument("--force", action="store_true", help="redo pairs already done in this demo folder")
    add_progress_argument(parser)
    parser.add_argument(
        "--no-report", action="store_true", help="only run the pairs: skip the reference methods, evaluation and report"
    )
    add_training_arguments(parser, "preview", {"steps": DEMO_STEPS, "checkpoint_every": 0})
    parser.set_defaults(handler=demo)


def demo(args) -> int:
    from pipeline.cli.demo_job import default_out, run_demo
    from pipeline.cli.run import print_summary, real_or_random
    from pipeline.runs.jobs import RunSettings
    from pipeline.storage import redact_url

    if args.pairs < 1 or args.size < 32:
        raise SpliceError("splice demo needs --pairs >= 1 and --size >= 32")
    out = args.out or default_out()
    # DINO ViT-S/16 where it can be had, else random (said loudly)
    config, fallback = real_or_random(resolve_config(args), args.method)
    if args.method == "splice":  # fail fast and clearly if a named backbone cannot be had (e.g. offline)
        from pipeline.method.backbone import load_backbone

        load_backbone(config.backbone, "cpu")
    from pipeline.runs.layout import join

    settings = RunSettings(
        out=join(out, "run"),
        method=args.method,
        config=config,
        address=args.address,
        force=args.force,
        progress=progress_enabled(args.progress),
        backbone_fallback=fallback,
    )
    manifest_url, summary = run_demo(out, settings, pairs=args.pairs, size=args.size)
    print_summary(summary)
    print(
        f"demo inputs: {redact_url(join(out, 'inputs'))}/<pair_id>/{{structure,appearance}}.png "
        f"(manifest {redact_url(manifest_url)})"
    )
    print(
        f"demo outputs: {redact_url(settings.out)}/pairs/<pair_id>/output.png; "
        f"progress: splice status {redact_url(settings.out)}"
    )
    if args.no_report:
        return summary.exit_code
    from pipeline.cli.demo_job import compare_and_report

    references, report = compare_and_report(out, settings, manifest_url, progress=settings.progress)
    print(f"report: {redact_url(join(report, 'report.html'))} (tables: {redact_url(join(report, 'tables.md'))})")
    return max([summary.exit_code] + [r.exit_code for r in references])
