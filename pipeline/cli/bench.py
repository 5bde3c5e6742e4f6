"""`splice bench SPEC.toml`: a whole comparison table from one file (docs/bench.md); `--dry-run`: the plan and its
cost, nothing else."""

from __future__ import annotations

from pipeline.cli.options import add_break_lock_argument, add_storage_arguments


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "bench",
        help="run a benchmark spec: manifests, runs, imports, evaluations and one report (resumable)",
        description="Execute a benchmark spec (TOML: datasets, methods, metrics, reference, output URL; "
        "docs/bench.md): build each dataset's manifest, run or import every method on it (one run folder per "
        "dataset, method and settings fingerprint under OUT/runs/), evaluate each run and write one report "
        "(OUT/report/index.html) and OUT/bench.json. What is complete is skipped (the run folders decide), "
        "so running the same spec again does only what is missing; a failing method or dataset never stops "
        "the others (the exit code is 1 and the summary says what is missing).",
    )
    parser.add_argument("spec", metavar="SPEC.toml", help="the benchmark spec (local TOML file)")
    parser.add_argument("-o", "--out", metavar="URL", help="output URL instead of the spec's `out`")
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="print the plan (what is done, to do or damaged; pairs and packs per run) and its cost estimate "
        "(GPU-hours, wall time, as a range) for the cluster it would use; write nothing",
    )
    parser.add_argument(
        "--calibrate",
        action="store_true",
        help="with --dry-run: time a few training steps of the plan's own pack shapes on this machine's device "
        "instead of the measured table (pipeline/bench/step_costs.toml)",
    )
    parser.add_argument(
        "--address", help="Ray cluster address (default: the spec's run.address, RAY_ADDRESS, else an embedded Ray)"
    )
    parser.add_argument(
        "--concurrency", type=int, help="(dataset, method) chains at once (default: the spec's, else 4)"
    )
    estimate = parser.add_argument_group("the cluster to estimate for (--dry-run; default: the one it would use)")
    estimate.add_argument("--gpus", type=float, help="GPUs in the cluster")
    estimate.add_argument("--cpus", type=float, help="CPUs in the cluster")
    estimate.add_argument("--device", help="GPU kind of the table's rows, e.g. h100 (default: as found)")
    add_storage_arguments(parser)
    add_break_lock_argument(parser)
    parser.set_defaults(handler=run_bench_command)


def run_bench_command(args) -> int:
    from pipeline.bench.spec import load_spec
    from pipeline.errors import SpliceError
    from pipeline.storage import parse_storage_options

    spec = load_spec(args.spec, {"out": args.out})
    if args.storage_option:
        spec = _with_storage(spec, parse_storage_options(args.storage_option))
    if args.concurrency is not None and args.concurrency < 1:
        raise SpliceError(f"--concurrency must be at least 1, got {args.concurrency}")
    if args.dry_run:
        from pipeline.bench.cost import estimate_lines
        from pipeline.bench.dry_run import bench_dry_run, plan_lines

        cluster = {"address": args.address, "gpus": args.gpus, "cpus": args.cpus, "device": args.device}
        plan, estimate = bench_dry_run(spec, cluster=cluster, calibrate=args.calibrate)
        print("\n".join(plan_lines(plan) + estimate_lines(estimate)))
        return 0
    if args.calibrate or args.gpus is not None or args.cpus is not None or args.device:
        raise SpliceError("--calibrate, --gpus, --cpus and --device go with --dry-run")
    from pipeline.bench.execute import run_bench

    summary = run_bench(spec, address=args.address, concurrency=args.concurrency, break_lock=args.break_lock)
    print("\n".join(summary.lines()))
    return summary.exit_code


def _with_storage(spec, options: dict):
    import dataclasses

    return dataclasses.replace(spec, storage_options={**spec.storage_options, **options})
