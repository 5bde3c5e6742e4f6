"""`splice status RUN_URL`: how far a run has got, read from its storage alone."""
from __future__ import annotations

from ..errors import SpliceError


def register(subparsers) -> None:
    parser = subparsers.add_parser("status", help="done / failed / pending pairs of a run folder",
                                   description="Count a run's done, failed and pending pairs from its folder alone, "
                                               "and show the step each pair in flight last reported.")
    parser.add_argument("run", help="run folder (local path or fsspec URL)")
    parser.add_argument("--failed", action="store_true", help="list every failed pair with its error")
    parser.add_argument("--json", action="store_true", help="print the status as one JSON object (for scripts)")
    from .run import add_storage_arguments

    add_storage_arguments(parser)
    parser.set_defaults(handler=status)


def run_status(run: str, storage) -> dict:
    """{'method', 'total', 'done', 'failed', 'pending', 'failures': [(id, error)], 'lock': dict|None,
    'in_flight': [{'pair_id', 'step', 'steps', 'age_s', 'host'}]} (in_flight: pending pairs that reported progress)."""
    import io

    import pandas as pd

    from .. import layout
    from ..progress import age_seconds, read_progress
    from ..run_state import done_pair_ids, read_results, read_run_record
    from ..storage import redact_url

    record = read_run_record(storage, run)
    try:
        manifest = pd.read_parquet(io.BytesIO(storage.read_bytes(layout.join(run, layout.MANIFEST))), columns=["pair_id"])
    except FileNotFoundError:
        raise SpliceError(f"{redact_url(run)} is not a run folder (no {layout.MANIFEST}): give the --out of a `splice run`") from None
    pair_ids = list(manifest["pair_id"])
    done = done_pair_ids(storage, run) & set(pair_ids)
    results = read_results(storage, run)
    errors = {} if results is None else {r["pair_id"]: r.get("error") or "" for r in results.to_dict("records")
                                         if r["status"] == "failed"}
    failures = [(p, errors[p]) for p in pair_ids if p in errors and p not in done]
    try:
        lock = storage.read_json(layout.join(run, layout.LOCK))
    except (FileNotFoundError, ValueError):
        lock = None
    finished = done | {p for p, _ in failures}
    in_flight = [{"pair_id": p, "step": r.get("step"), "steps": r.get("steps"), "age_s": age_seconds(r), "host": r.get("host")}
                 for p, r in sorted(read_progress(storage, run).items()) if p not in finished]
    return {"method": (record or {}).get("method"), "total": len(pair_ids), "done": len(done), "failed": len(failures),
            "pending": len(pair_ids) - len(done) - len(failures), "failures": failures, "lock": lock,
            "in_flight": in_flight}


def status(args) -> int:
    import json

    from ..storage import Storage, parse_storage_options, redact, redact_url

    report = run_status(args.run, Storage(parse_storage_options(args.storage_option)))
    if args.json:
        print(json.dumps({"run": redact_url(args.run), **report, "lock": redact(report["lock"]),
                          "failures": [{"pair_id": p, "error": e} for p, e in report["failures"]]}, indent=2, default=str))
        return 0
    in_flight = report["in_flight"]
    print(f"run {redact_url(args.run)} (method {report['method']}): {report['total']} pair(s): {report['done']} done, "
          f"{report['failed']} failed, {report['pending']} pending" + (f" ({len(in_flight)} in flight)" if in_flight else ""))
    for item in in_flight[:20]:
        age = f"{item['age_s']:.0f} s ago" if item["age_s"] is not None else "at an unknown time"
        print(f"  {item['pair_id']}: step {item['step']}/{item['steps']}, reported {age} by {item['host']}")
    if len(in_flight) > 20:
        print(f"  ... and {len(in_flight) - 20} more in flight (--json lists them all)")
    if report["lock"]:
        lock = report["lock"]
        print(f"a run is in progress (lock held by host {lock.get('host')}, pid {lock.get('pid')}, since {lock.get('since')})")
    shown = report["failures"] if args.failed else report["failures"][:5]
    for _, error in shown:
        print(f"  {error}")
    if len(shown) < len(report["failures"]):
        print(f"  ... and {len(report['failures']) - len(shown)} more (--failed lists them all)")
    return 0
