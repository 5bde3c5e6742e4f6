"""`splice status RUN_URL`: how far a run has got, read from its storage alone."""

from __future__ import annotations

from pipeline.cli.options import add_storage_arguments


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "status",
        help="done / failed / pending / damaged pairs of a run folder",
        description="Count a run's done, failed, pending and damaged pairs from its folder "
        "alone, and show the step each pair in flight last reported. A pair is "
        "done when its files match its _SUCCESS marker (sizes; sha256 with "
        "--verify); damaged pairs are redone by `splice run`.",
    )
    parser.add_argument("run", help="run folder (local path or fsspec URL)")
    parser.add_argument("--failed", action="store_true", help="list every failed and damaged pair with its error")
    parser.add_argument("--verify", action="store_true", help="also check every done pair's files by sha256")
    parser.add_argument("--json", action="store_true", help="print the status as one JSON object (for scripts)")
    add_storage_arguments(parser)
    parser.set_defaults(handler=status)


def run_status(run: str, storage, verify: bool = False) -> dict:
    """{'method', 'format', 'total', 'counts': {status word: n}, 'done', 'failed', 'missing', 'pending', 'damaged',
    'failures': [(id, error)], 'damaged_pairs': [(id, what)], 'lock': dict|None,
    'in_flight': [{'pair_id', 'step', 'steps', 'age_s', 'host'}]} (in_flight: pending pairs that reported progress).

    Every count is a word of the run folder's one vocabulary (run_folder.PairStatus): done and damaged from the
    pairs' markers, failed and missing from results.parquet, the rest pending."""
    from pipeline.runs.progress import age_seconds, read_progress
    from pipeline.runs.run_folder import PairStatus, RunFolder

    folder = RunFolder(storage, run)
    pair_ids = folder.pair_ids()  # not a run folder: a clear error naming it
    record = folder.record()
    found = folder.scan(verify=verify)
    results = folder.results()  # unreadable or missing: the markers say all there is
    recorded = (
        {}
        if results is None
        else {r["pair_id"]: (r["status"], r.get("error") or "") for r in results.to_dict("records")}
    )
    statuses, failures, damaged = {}, [], []
    for pair_id in pair_ids:
        word, error = recorded.get(pair_id, (PairStatus.PENDING, ""))
        if pair_id in found.done:
            statuses[pair_id] = PairStatus.DONE
        elif pair_id in found.damaged:
            statuses[pair_id] = PairStatus.DAMAGED
            damaged.append((pair_id, found.damaged[pair_id]))
        elif word in (PairStatus.FAILED, PairStatus.MISSING):
            statuses[pair_id] = PairStatus.of(word)
            failures.append((pair_id, error))
        else:
            statuses[pair_id] = PairStatus.PENDING
    counts = {s.value: 0 for s in PairStatus if s != PairStatus.ERROR}  # 'error' is evaluation's word
    for word in statuses.values():
        counts[word.value] += 1
    finished = {p for p, s in statuses.items() if s in (PairStatus.DONE, PairStatus.FAILED, PairStatus.MISSING)}
    in_flight = [
        {"pair_id": p, "step": r.get("step"), "steps": r.get("steps"), "age_s": age_seconds(r), "host": r.get("host")}
        for p, r in sorted(read_progress(storage, run).items())
        if p not in finished
    ]
    return {
        "method": (record or {}).get("method"),
        "format": (record or {}).get("format", 1),
        "total": len(pair_ids),
        "counts": counts,
        **counts,
        "failures": failures,
        "damaged_pairs": damaged,
        "lock": folder.lock_holder(),
        "in_flight": in_flight,
    }


def status(args) -> int:
    import json

    from pipeline.storage import Storage, parse_storage_options, redact, redact_url

    report = run_status(args.run, Storage(parse_storage_options(args.storage_option)), verify=args.verify)
    if args.json:
        print(
            json.dumps(
                {
                    "run": redact_url(args.run),
                    **report,
                    "lock": redact(report["lock"]),
                    "failures": [{"pair_id": p, "error": e} for p, e in report["failures"]],
                    "damaged_pairs": [{"pair_id": p, "what": w} for p, w in report["damaged_pairs"]],
                },
                indent=2,
                default=str,
            )
        )
        return 0
    in_flight = report["in_flight"]
    print(
        f"run {redact_url(args.run)} (method {report['method']}): {report['total']} pair(s): {report['done']} done, "
        f"{report['failed']} failed, {report['pending']} pending"
        + (f", {report['missing']} missing (no output imported)" if report["missing"] else "")
        + (f", {report['damaged']} damaged (`splice run` redoes them)" if report["damaged"] else "")
        + (f" ({len(in_flight)} in flight)" if in_flight else "")
    )
    for item in in_flight[:20]:
        age = f"{item['age_s']:.0f} s ago" if item["age_s"] is not None else "at an unknown time"
        print(f"  {item['pair_id']}: step {item['step']}/{item['steps']}, reported {age} by {item['host']}")
    if len(in_flight) > 20:
        print(f"  ... and {len(in_flight) - 20} more in flight (--json lists them all)")
    if report["lock"]:
        lock = report["lock"]
        print(
            f"a `{lock.get('command', 'splice run')}` is in progress (lock held by host {lock.get('host')}, "
            f"pid {lock.get('pid')}, since {lock.get('since')})"
        )
    for pair_id, what in report["damaged_pairs"] if args.failed else report["damaged_pairs"][:5]:
        print(f"  pair {pair_id!r} is damaged: {what}")
    shown = report["failures"] if args.failed else report["failures"][:5]
    for _, error in shown:
        print(f"  {error}")
    if len(shown) < len(report["failures"]):
        print(f"  ... and {len(report['failures']) - len(shown)} more (--failed lists them all)")
    return 0
