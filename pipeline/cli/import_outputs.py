"""`splice import METHOD ROOT --manifest M.parquet -o RUN_URL`: another method's outputs as a run."""

from __future__ import annotations

from pipeline.cli.options import add_break_lock_argument, add_out_argument, add_storage_arguments
from pipeline.errors import SpliceError


def register(subparsers) -> None:
    importer = subparsers.add_parser(
        "import",
        help="bring another method's outputs into the run layout",
        description="Import outputs of a method run elsewhere as a run (run.json, manifest.parquet, "
        "pairs/<id>/output.png, results.parquet) so that `splice evaluate` and `splice report` treat it "
        "like our own runs. The outputs: ROOT, a folder of <pair_id>.png|jpg; or ROOT --pattern TEMPLATE, "
        "e.g. '{pair_id}/ours/*' (outputs beside the inputs, the Splice authors' layout) or "
        "'strotss/{pair_id}.*' (sibling folders, as Wild-Pairs); or --csv FILE of pair_id,output_uri. "
        "Any image mode or size. Pairs with no output or with several are recorded as missing, with why.",
    )
    importer.add_argument(
        "method", metavar="METHOD_NAME", help="name in the tables, e.g. strotss, wct2, cross-image-attention"
    )
    importer.add_argument(
        "outputs",
        metavar="ROOT",
        nargs="?",
        help="folder of <pair_id>.png|jpg outputs, or the folder --pattern is relative to",
    )
    importer.add_argument(
        "--pattern",
        metavar="TEMPLATE",
        help="where each pair's output is under ROOT: {pair_id} (each manifest pair_id in turn) and glob "
        "wildcards (* ? [..] **); exactly one image must match per pair; no '..'. Quote it",
    )
    importer.add_argument(
        "--follow-symlinks",
        action="store_true",
        help="read outputs that are symbolic links to files outside ROOT (by default they are refused)",
    )
    importer.add_argument("--csv", metavar="FILE.csv", help="a CSV of pair_id,output_uri instead of ROOT")
    importer.add_argument(
        "--manifest", required=True, metavar="M.parquet", help="the manifest the outputs were made from"
    )
    add_out_argument(importer, metavar="RUN_URL", help="run folder to create")
    importer.add_argument(
        "--force",
        action="store_true",
        help="write into a folder that already holds outputs (of this or another method), replacing them",
    )
    add_break_lock_argument(importer)
    add_storage_arguments(importer)
    importer.set_defaults(handler=run_import)


def run_import(args) -> int:
    from pipeline.runs.importer import import_outputs
    from pipeline.storage import Storage, parse_storage_options

    if args.csv and args.outputs:
        raise SpliceError("splice import: give ROOT (with or without --pattern) or --csv, not both")
    if args.pattern and not args.outputs:
        raise SpliceError("splice import: --pattern needs ROOT, the folder it is relative to")
    summary = import_outputs(
        args.method,
        args.outputs,
        args.manifest,
        args.out,
        storage=Storage(parse_storage_options(args.storage_option)),
        pattern=args.pattern,
        csv=args.csv,
        force=args.force,
        follow_symlinks=args.follow_symlinks,
        break_lock=args.break_lock,
    )
    print(summary.line())
    return 0
