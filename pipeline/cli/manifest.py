"""`splice manifest build afhq|pairs-dir|folders|csv ...` and `splice manifest validate M.parquet`."""

from __future__ import annotations

from pipeline.cli.options import add_domain_argument, add_out_argument, add_storage_arguments


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "manifest",
        help="build or validate a pairs manifest",
        description="Build a Parquet manifest of (structure, appearance) pairs, or check one.",
    )
    commands = parser.add_subparsers(dest="manifest_command", metavar="build|validate", required=True)

    build = commands.add_parser("build", help="build a manifest from a dataset layout")
    sources = build.add_subparsers(dest="source", metavar="afhq|pairs-dir|folders|csv", required=True)
    afhq = sources.add_parser(
        "afhq",
        help="AFHQ layout: ROOT/train|val/cat|dog|wild/*.jpg, pairs drawn within a "
        "domain (or across domains with --cross-domain)",
    )
    afhq.add_argument("root")
    afhq.add_argument("--pairs", type=int, help="pairs in all, spread evenly over the domains (default: one per image)")
    add_domain_argument(afhq, default=["cat", "dog", "wild"], help="domains to draw from (default cat,dog,wild)")
    afhq.add_argument("--split", default="train", choices=["train", "val"])
    afhq.add_argument("--seed", type=int, default=0, help="seed of the pair draw (default 0)")
    afhq.add_argument(
        "--cross-domain",
        nargs="?",
        const="all",
        metavar="SRC->DST,...",
        help="structure from one domain, appearance from another: 'cat->dog,dog->cat' (quote it), "
        "or alone: every ordered pair of --domain",
    )
    pairs_dir = sources.add_parser(
        "pairs-dir",
        help="one folder per pair: <pair>/structure.* + <pair>/appearance.*, or the Splice authors' "
        "dataroot layout <pair>/A/* + <pair>/B/* (other sub-folders ignored)",
    )
    pairs_dir.add_argument("root")
    folders = sources.add_parser(
        "folders",
        help="two parallel folders matched by file name: STRUCTURES/<n>.jpg + "
        "APPEARANCES/<n>.jpg (e.g. Wild-Pairs structures/ and textures/)",
    )
    folders.add_argument("root", metavar="STRUCTURES")
    folders.add_argument("appearances", metavar="APPEARANCES")
    csv = sources.add_parser("csv", help="a CSV with pair_id, structure_uri, appearance_uri (+ optional columns)")
    csv.add_argument("root", metavar="FILE.csv")
    for source in (pairs_dir, folders, csv):
        source.add_argument(
            "--direction",
            default="AtoB",
            choices=["AtoB", "BtoA"],
            help="BtoA swaps structure and appearance (A/ or the first folder becomes the appearance)",
        )
    for source in (afhq, pairs_dir, folders, csv):
        add_out_argument(
            source,
            metavar="M.parquet",
            help="manifest to write (.parquet; local or fsspec URL)",
        )
        add_storage_arguments(source)
        source.set_defaults(handler=build_command)

    validate = commands.add_parser("validate", help="check a manifest's schema and rows (and, optionally, its images)")
    validate.add_argument("manifest")
    validate.add_argument("--check-images", action="store_true", help="also read and decode every image")
    add_storage_arguments(validate)
    validate.set_defaults(handler=validate_command)


def build_command(args) -> int:
    from manifests import builders
    from manifests.schema import validate_frame, write_manifest
    from pipeline.storage import Storage, parse_storage_options, redact_url

    storage = Storage(parse_storage_options(args.storage_option))
    frame = builders.build(
        args.source,
        args.root,
        appearances=getattr(args, "appearances", None),
        pairs=getattr(args, "pairs", None),
        domains=getattr(args, "domain", None),
        split=getattr(args, "split", "train"),
        seed=getattr(args, "seed", 0),
        cross_domain=getattr(args, "cross_domain", None),
        direction=getattr(args, "direction", "AtoB"),
        storage=storage,
    )
    notes = list(frame.attrs.get("notes", []))
    frame = validate_frame(frame, f"built from {redact_url(args.root)}")
    frame.attrs = {}  # the notes are for the console, not for the file
    for note in notes:
        print(note)
    write_manifest(frame, args.out, storage)
    print(f"wrote {redact_url(args.out)}: {len(frame)} pair(s)" + _breakdown(frame))
    return 0


def validate_command(args) -> int:
    from manifests.schema import check_images, read_manifest
    from pipeline.errors import SpliceError
    from pipeline.storage import Storage, parse_storage_options, redact_url

    storage = Storage(parse_storage_options(args.storage_option))
    manifest = read_manifest(args.manifest, storage)
    print(f"{redact_url(args.manifest)}: {len(manifest)} pair(s), schema OK" + _breakdown(manifest.frame))
    if args.check_images:
        problems = check_images(manifest, storage)
        if problems:
            shown = "\n  ".join(problems[:20]) + (
                f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
            )
            raise SpliceError(
                f"manifest {redact_url(args.manifest)}: {len(problems)} image(s) cannot be used:\n  {shown}\n"
                f"replace them or drop their rows"
            )
        print(f"all {2 * len(manifest)} images read and decoded")
    return 0


def _breakdown(frame) -> str:
    if "domain" not in frame.columns:
        return ""
    counts = frame["domain"].value_counts()
    return " (" + ", ".join(f"{domain}: {count}" for domain, count in counts.items()) + ")"
