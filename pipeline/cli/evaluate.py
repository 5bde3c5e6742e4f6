"""`splice evaluate RUN_URL`: metrics of a run's stored outputs, incrementally."""

from __future__ import annotations

from pipeline.cli.console import add_progress_argument, progress_enabled
from pipeline.cli.options import add_address_argument, add_break_lock_argument, add_list_argument, add_storage_arguments
from pipeline.errors import SpliceError


def register(subparsers) -> None:
    evaluate = subparsers.add_parser(
        "evaluate",
        help="compute metrics of a run's stored outputs (incremental)",
        description="Compute metrics from a run's manifest, input images and pairs/*/output.png into "
        "<run>/eval/metrics.parquet. Only what is missing is computed: new pairs, newly asked metrics, "
        "outputs whose content changed. Metrics whose pretrained weights cannot be had offline are "
        "skipped with a message, unless named with --metrics.",
    )
    evaluate.add_argument("run", metavar="RUN_URL", help="run folder (local path or fsspec URL)")
    add_list_argument(
        evaluate,
        "--metrics",
        metavar="NAME,...",
        help="metrics to compute, e.g. selfsim,dino_i (default: every default metric whose weights are "
        "available; selfsim and dino_i follow the published protocol; all metrics: docs/metrics.md), "
        "or a plug-in: an installed one's name, or py:MODULE:NAME (MODULE importable or a path to a "
        ".py file)",
    )
    evaluate.add_argument(
        "--metric-backbone",
        action="append",
        default=[],
        metavar="SPEC|ROLE=SPEC",
        help="override the DINO backbones of all metrics (e.g. random:vit_tiny_patch16_224 for an "
        "offline smoke run; results are labelled), or per role, one flag each: "
        "--metric-backbone dino_vitb8=SPEC --metric-backbone dino_vits16=SPEC "
        "(dino_vits16 serves only dino_i_s16)",
    )
    evaluate.add_argument(
        "--lpips-weights",
        default="pretrained",
        metavar="pretrained|random|file:PATH",
        help="AlexNet trunk of LPIPS (torchvision alexnet-owt-7be5be79.pth; default: from the torch cache)",
    )
    evaluate.add_argument(
        "--segmenter",
        metavar="SPEC",
        help="segmenter of layout_miou: a torchvision segmentation model (default "
        "deeplabv3_mobilenet_v3_large), random:NAME or py:MODULE:FACTORY",
    )
    evaluate.add_argument("--segmenter-weights", metavar="PATH", help="local weights file of the torchvision segmenter")
    evaluate.add_argument("--device", help="cuda, cuda:1, mps or cpu (default: the best available)")
    evaluate.add_argument("--batch-size", type=int, default=8, help="pairs per backbone batch (default 8)")
    add_address_argument(
        evaluate,
        help="Ray cluster address to spread pairs over ('auto', ray://HOST:10001, "
        "'local' for a Ray started here); default: RAY_ADDRESS if set, else "
        "evaluate in this process",
    )
    evaluate.add_argument("--force", action="store_true", help="recompute every asked metric of every pair")
    add_break_lock_argument(evaluate)
    add_storage_arguments(evaluate)
    add_progress_argument(evaluate)
    evaluate.set_defaults(handler=run_evaluate)


def run_evaluate(args) -> int:
    import torch

    from evaluation.evaluate import evaluate_run
    from evaluation.metrics import DEFAULT_METRICS
    from evaluation.models import EvalSettings, best_device
    from evaluation.segmenter import DEFAULT_SEGMENTER
    from pipeline.storage import Storage, parse_storage_options

    metrics = tuple(args.metrics) if args.metrics else DEFAULT_METRICS
    try:
        settings = EvalSettings(
            metrics=metrics,
            explicit=bool(args.metrics),
            metric_backbone=",".join(args.metric_backbone) or None,
            lpips_weights=args.lpips_weights,
            segmenter=args.segmenter or DEFAULT_SEGMENTER,
            segmenter_weights=args.segmenter_weights,
            batch_size=args.batch_size,
        )
        device = torch.device(args.device) if args.device else best_device()
    except (ValueError, RuntimeError) as exc:
        raise SpliceError(f"invalid evaluation settings: {exc}") from exc
    storage = Storage(parse_storage_options(args.storage_option))
    summary = evaluate_run(
        args.run,
        settings,
        storage=storage,
        device=device,
        address=args.address,
        force=args.force,
        progress=progress_enabled(args.progress),
        break_lock=args.break_lock,
    )
    print(summary.line())
    if not summary.metrics:
        raise SpliceError(
            "no metric could be computed (see the skipped metrics above and how to provide their weights)"
        )
    return 0
