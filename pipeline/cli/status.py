"""`splice status RUN_URL`: how far a run has got, read from its storage alone."""
from __future__ import annotations

from pipeline.cli.options import add_storage_arguments
from pipeline.errors import SpliceError


def register(subparsers) -> None:
    parser = subparsers.add_parser("status", help="done / failed / pending / damaged pairs of a run folder",
                                   description="Count a run's done, failed, pending and damaged pairs from its folder "
                                               "alone, and show the step each pair in flight last reported. A pair is "
                                               "done when its files match its _SUCCESS marker (sizes; sha256 with "
                                               "--verify); damaged pairs are redone by `splice run`.")
    parser.add_argument("run", help="run folder (local path or fsspec URL)")
    parser.add_argument("--failed", action="store_true", help="list every failed and damaged pair with its error")
    parser.add_argument("--verify", action="store_true", help="also check every done pair's files by sha256")
    parser.add_argument("--json", action="store_true", help="print the status as one JSON object (for scripts)")
    add_storage_arguments(parser)
    parser.set_defaults(handler=status)


def run_status(run: str, storage, verify: bool = False) -> dict:
    """{'method', 'format', 'total', 'done', 'failed', 'pending', 'damaged', 'failures': [(id, error)],
    'damaged_pairs': [(id, what)], 'lock': dict|None,
    'in_flight': [{'pair_id', 'step', 'steps', 'age_s', 'host'}]} (in_flight: pending pairs that reported progress)."""
    import io

    import pandas as pd

    from pipeline.runs import layout, run_folder
    from pipeline.runs.progress import age_seconds, read_progress
    from pipeline.runs.run_state import read_results
    from pipeline.storage import redact_url

    record = run_folder.read_record(storage, run)
    try:
        manifest = pd.read_parquet(io.BytesIO(storage.read_bytes(layout.join(run, layout.MANIFEST))), columns=["pair_id"])
    except FileNotFoundError:
        raise SpliceError(f"{redact_url(run)} is not a run folder (no {layout.MANIFEST}): give the --out of a `splice run`") from None
    pair_ids = list(manifest["pair_id"])
    found = run_folder.scan(storage, run, verify=verify)
    done = found.done & set(pair_ids)
    damaged = [(p, found.damaged[p]) for p in pair_ids if p in found.damaged]
    results = read_results(storage, run)  # unreadable or missing: the markers say all there is
    errors = {} if results is None else {r["pair_id"]: r.get("error") or "" for r in results.to_dict("records")
                                         if r["status"] == "failed"}
    failures = [(p, errors[p]) for p in pair_ids if p in errors and p not in done and p not in found.damaged]
    try:
        lock = storage.read_json(layout.join(run, layout.LOCK))
    except (FileNotFoundError, ValueError):
        lock = None
    finished = done | {p for p, _ in failures}
    in_flight = [{"pair_id": p, "step": r.get("step"), "steps": r.get("steps"), "age_s": age_seconds(r), "host": r.get("host")}
                 for p, r in sorted(read_progress(storage, run).items()) if p not in finished]
    return {"method": (record or {}).get("method"), "format": (record or {}).get("format", 1),
            "total": len(pair_ids), "done": len(done), "failed": len(failures), "damaged": len(damaged),
            "pending": len(pair_ids) - len(done) - len(failures) - len(damaged), "failures": failures,
            "damaged_pairs": damaged, "lock": lock if isinstance(lock, dict) else None, "in_flight": in_flight}


def status(args) -> int:
    import json

    from pipeline.storage import Storage, parse_storage_options, redact, redact_url

    report = run_status(args.run, Storage(parse_storage_options(args.storage_option)), verify=args.verify)
    if args.json:
        print(json.dumps({"run": redact_url(args.run), **report, "lock": redact(report["lock"]),
                          "failures": [{"pair_id": p, "error": e} for p, e in report["failures"]],
                          "damaged_pairs": [{"pair_id": p, "what": w} for p, w in report["damaged_pairs"]]},
                         indent=2, default=str))
        return 0
    in_flight = report["in_flight"]
    print(f"run {redact_url(args.run)} (method {report['method']}): {report['total']} pair(s): {report['done']} done, "
          f"{report['failed']} failed, {report['pending']} pending"
          + (f", {report['damaged']} damaged (`splice run` redoes them)" if report["damaged"] else "")
          + (f" ({len(in_flight)} in flight)" if in_flight else ""))
    for item in in_flight[:20]:
        age = f"{item['age_s']:.0f} s ago" if item["age_s"] is not None else "at an unknown time"
        print(f"  {item['pair_id']}: step {item['step']}/{item['steps']}, reported {age} by {item['host']}")
    if len(in_flight) > 20:
        print(f"  ... and {len(in_flight) - 20} more in flight (--json lists them all)")
    if report["lock"]:
        lock = report["lock"]
        print(f"a `{lock.get('command', 'splice run')}` is in progress (lock held by host {lock.get('host')}, "
              f"pid {lock.get('pid')}, since {lock.get('since')})")
    for pair_id, what in (report["damaged_pairs"] if args.failed else report["damaged_pairs"][:5]):
        print(f"  pair {pair_id!r} is damaged: {what}")
    shown = report["failures"] if args.failed else report["failures"][:5]
    for _, error in shown:
        print(f"  {error}")
    if len(shown) < len(report["failures"]):
        print(f"  ... and {len(report['failures']) - len(shown)} more (--failed lists them all)")
    return 0
