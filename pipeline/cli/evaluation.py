"""`splice evaluate`, `splice report` and `splice import`."""
from __future__ import annotations

from pipeline.cli.console import add_progress_argument, progress_enabled
from pipeline.errors import SpliceError

from evaluation.metrics import DEFAULT_METRICS, METRICS
from evaluation.segmenter import DEFAULT_SEGMENTER


def register(subparsers) -> None:
    evaluate = subparsers.add_parser(
        "evaluate", help="compute metrics of a run's stored outputs (incremental)",
        description="Compute metrics from a run's manifest, input images and pairs/*/output.png into "
                    "<run>/eval/metrics.parquet. Only what is missing is computed: new pairs, newly asked metrics, "
                    "outputs whose content changed. Metrics whose pretrained weights cannot be had offline are "
                    "skipped with a message, unless named with --metrics.")
    evaluate.add_argument("run", metavar="RUN_URL", help="run folder (local path or fsspec URL)")
    evaluate.add_argument("--metrics", help=f"comma-separated metrics of {','.join(METRICS)} (default: all available of "
                                            f"{','.join(DEFAULT_METRICS)}; selfsim and dino_i follow the published protocol)")
    evaluate.add_argument("--metric-backbone", metavar="SPEC",
                          help="override the DINO backbones of all metrics (e.g. random:vit_tiny_patch16_224 for an "
                               "offline smoke run; results are labelled), or per role: dino_vitb8=SPEC,dino_vits16=SPEC "
                               "(dino_vits16 serves only dino_i_s16)")
    evaluate.add_argument("--lpips-weights", default="pretrained", metavar="pretrained|random|file:PATH",
                          help="AlexNet trunk of LPIPS (torchvision alexnet-owt-7be5be79.pth; default: from the torch cache)")
    evaluate.add_argument("--segmenter", default=DEFAULT_SEGMENTER, metavar="SPEC",
                          help=f"segmenter of layout_miou: a torchvision segmentation model (default {DEFAULT_SEGMENTER}), "
                               "random:NAME or py:MODULE:FACTORY")
    evaluate.add_argument("--segmenter-weights", metavar="PATH", help="local weights file of the torchvision segmenter")
    evaluate.add_argument("--device", help="cuda, cuda:1, mps or cpu (default: the best available)")
    evaluate.add_argument("--batch-size", type=int, default=8, help="pairs per backbone batch (default 8)")
    evaluate.add_argument("--address", help="Ray cluster address to spread pairs over ('auto', ray://HOST:10001, "
                                            "'local' for a Ray started here); default: RAY_ADDRESS if set, else "
                                            "evaluate in this process")
    evaluate.add_argument("--force", action="store_true", help="recompute every asked metric of every pair")
    _storage_and_progress(evaluate)
    evaluate.set_defaults(handler=run_evaluate)

    report = subparsers.add_parser(
        "report", help="benchmark tables and an HTML report of evaluated runs",
        description="Write tables.md, tables.csv, tables.tex and report.html comparing the methods of the given runs. "
                    "report.html is one file that works offline: images embedded as JPEG within a size budget "
                    "(60 MB at 1000 pairs x 4 methods), or with --assets external as files under assets/ beside it.")
    report.add_argument("runs", nargs="+", metavar="RUN_URL", help="evaluated run folders, one per method")
    report.add_argument("-o", "--output", required=True, metavar="REPORT_DIR", help="folder to write the report into")
    report.add_argument("--reference", metavar="METHOD", help="method to compute every other method's win rate against")
    report.add_argument("--group-by", metavar="COLUMNS", help="comma-separated manifest columns, e.g. dataset,domain")
    report.add_argument("--pairs", default="common", choices=["common", "all"],
                        help="compare methods on the pairs every method has (common, default; each table says how "
                             "many pairs each method lacks) or each method on its own pairs (all)")
    report.add_argument("--thumbnails", type=int, default=12, help="pairs in the examples grid (default 12)")
    report.add_argument("--worst-best", type=int, default=5, metavar="K",
                        help="the K worst and K best pairs shown per metric and method (default 5)")
    report.add_argument("--assets", choices=("inline", "external"), default="inline",
                        help="inline (default): one self-contained report.html; external: images under assets/ and "
                             "full-resolution links to the stored files (for very large runs)")
    report.add_argument("--seed", type=int, default=0, help="seed of the bootstrap and of the samples (default 0)")
    _storage_and_progress(report, progress=False)
    report.set_defaults(handler=run_report)

    importer = subparsers.add_parser(
        "import", help="bring another method's outputs into the run layout",
        description="Import outputs of a method run elsewhere as a run (run.json, manifest.parquet, "
                    "pairs/<id>/output.png, results.parquet) so that `splice evaluate` and `splice report` treat it "
                    "like our own runs. The outputs: ROOT, a folder of <pair_id>.png|jpg; or ROOT --pattern TEMPLATE, "
                    "e.g. '{pair_id}/ours/*' (outputs beside the inputs, the Splice authors' layout) or "
                    "'strotss/{pair_id}.*' (sibling folders, as Wild-Pairs); or --csv FILE of pair_id,output_uri. "
                    "Any image mode or size. Pairs with no output or with several are recorded as missing, with why.")
    importer.add_argument("method", metavar="METHOD_NAME", help="name in the tables, e.g. strotss, wct2, cross-image-attention")
    importer.add_argument("outputs", metavar="ROOT", nargs="?",
                          help="folder of <pair_id>.png|jpg outputs, or the folder --pattern is relative to")
    importer.add_argument("--pattern", metavar="TEMPLATE",
                          help="where each pair's output is under ROOT: {pair_id} and glob wildcards (* ? [..] **); "
                               "exactly one image must match per pair. Quote it")
    importer.add_argument("--csv", metavar="FILE.csv", help="a CSV of pair_id,output_uri instead of ROOT")
    importer.add_argument("--manifest", required=True, metavar="M.parquet", help="the manifest the outputs were made from")
    importer.add_argument("--out", required=True, metavar="RUN_URL", help="run folder to create")
    importer.add_argument("--force", action="store_true",
                          help="write into a folder that already holds outputs (of this or another method), replacing them")
    _storage_and_progress(importer, progress=False)
    importer.set_defaults(handler=run_import)


def _storage_and_progress(parser, progress: bool = True) -> None:
    parser.add_argument("--storage-option", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                        help="fsspec option for non-local storage, e.g. endpoint_url=http://host:9000; never logged")
    if progress:
        add_progress_argument(parser)


def _storage(args):
    from pipeline.storage import Storage, parse_storage_options

    return Storage(parse_storage_options(args.storage_option))


def run_evaluate(args) -> int:
    import torch

    from evaluation.evaluate import evaluate_run
    from evaluation.models import EvalSettings, best_device

    metrics = tuple(m.strip() for m in args.metrics.split(",") if m.strip()) if args.metrics else DEFAULT_METRICS
    try:
        settings = EvalSettings(metrics=metrics, explicit=bool(args.metrics), metric_backbone=args.metric_backbone,
                                lpips_weights=args.lpips_weights, segmenter=args.segmenter,
                                segmenter_weights=args.segmenter_weights, batch_size=args.batch_size)
        device = torch.device(args.device) if args.device else best_device()
    except (ValueError, RuntimeError) as exc:
        raise SpliceError(f"invalid evaluation settings: {exc}") from exc
    summary = evaluate_run(args.run, settings, storage=_storage(args), device=device, address=args.address,
                           force=args.force, progress=progress_enabled(args.progress))
    print(summary.line())
    if not summary.metrics:
        raise SpliceError("no metric could be computed (see the skipped metrics above and how to provide their weights)")
    return 0


def run_report(args) -> int:
    from evaluation.report.build import build_report

    group_by = [c.strip() for c in args.group_by.split(",") if c.strip()] if args.group_by else []
    summary = build_report(args.runs, args.output, reference=args.reference, group_by=group_by,
                           thumbnails=args.thumbnails, storage=_storage(args), seed=args.seed, assets=args.assets,
                           extremes=args.worst_best, pairs=args.pairs)
    print(summary.line())
    return 0


def run_import(args) -> int:
    from evaluation.importer import import_outputs

    if args.csv and args.outputs:
        raise SpliceError("splice import: give ROOT (with or without --pattern) or --csv, not both")
    if args.pattern and not args.outputs:
        raise SpliceError("splice import: --pattern needs ROOT, the folder it is relative to")
    summary = import_outputs(args.method, args.outputs, args.manifest, args.out, storage=_storage(args),
                             pattern=args.pattern, csv=args.csv, force=args.force)
    print(summary.line())
    return 0
