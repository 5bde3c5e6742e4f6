"""`splice report RUN_URL... -o REPORT_DIR`: benchmark tables and an HTML report of evaluated runs."""

from __future__ import annotations

from pipeline.cli.options import add_break_lock_argument, add_list_argument, add_out_argument, add_storage_arguments


def register(subparsers) -> None:
    report = subparsers.add_parser(
        "report",
        help="benchmark tables and an HTML report of evaluated runs",
        description="Write tables.md, tables.csv, tables.tex and report.html comparing the methods of the given runs. "
        "report.html is one file that works offline: images embedded as JPEG within a size budget "
        "(60 MB at 1000 pairs x 4 methods), or with --assets external as files under assets/ beside it.",
    )
    report.add_argument("runs", nargs="+", metavar="RUN_URL", help="evaluated run folders, one per method")
    add_out_argument(report, metavar="REPORT_DIR", help="folder to write the report into")
    report.add_argument("--reference", metavar="METHOD", help="method to compute every other method's win rate against")
    add_list_argument(
        report,
        "--group-by",
        default=[],
        metavar="COLUMN,...",
        help="manifest columns to repeat every table per group of, e.g. dataset,domain",
    )
    report.add_argument(
        "--pairs",
        default="common",
        choices=["common", "all"],
        help="compare methods on the pairs every method has (common, default; each table says how "
        "many pairs each method lacks) or each method on its own pairs (all)",
    )
    report.add_argument("--thumbnails", type=int, default=12, help="pairs in the examples grid (default 12)")
    report.add_argument(
        "--worst-best",
        type=int,
        default=5,
        metavar="K",
        help="the K worst and K best pairs shown per metric and method (default 5)",
    )
    report.add_argument(
        "--assets",
        choices=("inline", "external"),
        default="inline",
        help="inline (default): one self-contained report.html; external: images under assets/ and "
        "full-resolution links to the stored files (for very large runs)",
    )
    report.add_argument("--seed", type=int, default=0, help="seed of the bootstrap and of the samples (default 0)")
    add_break_lock_argument(report)
    add_storage_arguments(report)
    report.set_defaults(handler=run_report)


def run_report(args) -> int:
    from evaluation.report.build import build_report
    from pipeline.storage import Storage, parse_storage_options

    summary = build_report(
        args.runs,
        args.out,
        reference=args.reference,
        group_by=args.group_by,
        thumbnails=args.thumbnails,
        storage=Storage(parse_storage_options(args.storage_option)),
        seed=args.seed,
        assets=args.assets,
        extremes=args.worst_best,
        pairs=args.pairs,
        break_lock=args.break_lock,
    )
    print(summary.line())
    return 0
