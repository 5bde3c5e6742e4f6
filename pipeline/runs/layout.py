"""Where a run's files live (see docs/run-layout.md). Paths are fsspec URLs
joined with '/'. Only RunFolder and PairFolder (run_folder.py, pair_folder.py) build paths into a run folder."""

from __future__ import annotations

FORMAT = 3  # the run folder's format, recorded in run.json (formats 1 and 2 still read: see run_folder.py)

RUN_JSON = "run.json"  # resolved config, code version, backbone id and weights hash, start time
MANIFEST = "manifest.parquet"  # the manifest as run
INPUTS = "inputs.parquet"  # one row per pair: its input URIs (masked), their fingerprints, per-pair settings
RESULTS = "results.parquet"  # one row per pair: status, error, seconds, device, attempts
PAIRS = "pairs"
EVAL = "eval"
LOCK = "_LOCK"

OUTPUT_PNG = "output.png"  # the result image
META_JSON = "meta.json"  # config, seed, timings, device, peak memory, final losses, status
LOSSES = "losses.parquet"  # loss terms per logged step
CHECKPOINT = "checkpoint.pt"  # optional, for resuming a pair
SUCCESS = "_SUCCESS"  # written last: a pair with it is done
PROGRESS_JSON = (
    "progress.json"  # while a pair trains: its last reported step (pipeline/runs/progress.py); removed at the end
)
ERROR_TXT = "error.txt"  # a failed pair's error and traceback
ATTEMPTS = "attempts.json"  # one entry per time a worker started the pair

METRICS = "metrics.parquet"  # under eval/: one row per pair, each metric with its provenance
EVALUATION_JSON = "evaluation.json"  # under eval/: what the last evaluation used


def join(base: str, *parts: str) -> str:
    """Join URL/path parts with '/', keeping the scheme of `base` intact."""
    out = base.rstrip("/")
    for part in parts:
        out = f"{out}/{part.strip('/')}"
    return out


def pair_dir(run: str, pair_id: str) -> str:
    return join(run, PAIRS, pair_id)


def pair_file(run: str, pair_id: str, name: str) -> str:
    return join(run, PAIRS, pair_id, name)
