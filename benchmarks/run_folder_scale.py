"""The run folder at scale (issue 19, case 13): `splice run --only` two pairs, `splice status` and `splice evaluate`
on a manifest of N pairs (default 100k), each a separate `splice` process, timed wall-clock; and the size of
run.json and of the per-pair input table beside it.

    python benchmarks/run_folder_scale.py --pairs 100000 --work /tmp/scale            # this checkout
    python benchmarks/run_folder_scale.py --pairs 100000 --work /tmp/scale --repo ../baseline   # another one

The inputs (N structure and N appearance images, 8x8 PNGs) and the manifest are made once under --work and reused;
each measurement starts from a fresh run folder. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

TINY = "random:vit_tiny_patch16_224"


def make_inputs(work: Path, pairs: int) -> Path:
    manifest = work / f"manifest-{pairs}.parquet"
    if manifest.exists():
        return manifest
    folder = work / "inputs"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    rows = []
    for index in range(pairs):
        pair_id = f"p{index:06d}"
        paths = []
        for role in ("s", "a"):
            path = folder / f"{pair_id}_{role}.png"
            if not path.exists():
                buffer = io.BytesIO()
                Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(buffer, format="PNG")
                path.write_bytes(buffer.getvalue())
            paths.append(str(path))
        rows.append({"pair_id": pair_id, "structure_uri": paths[0], "appearance_uri": paths[1], "domain": "cat"})
    pd.DataFrame(rows).to_parquet(manifest, index=False)
    return manifest


def timed(repo: Path, *argv: str) -> float:
    env = {**os.environ, "PYTHONPATH": str(repo), "TQDM_DISABLE": "1"}
    env.pop("RAY_ADDRESS", None)
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "pipeline", *argv], cwd=repo, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"splice {' '.join(argv[:2])} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return seconds


def run_only(repo: Path, manifest: Path, run: Path, pairs: str) -> float:
    """Seconds of `splice run MANIFEST --out RUN --only PAIRS` with the cheap structure-copy method."""
    argv = ["run", str(manifest), "--out", str(run), "--method", "structure-copy", "--only", pairs, "--no-progress"]
    return timed(repo, *argv)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=100_000)
    parser.add_argument("--work", type=Path, default=Path("/tmp/splice-scale"))
    parser.add_argument("--repo", type=Path, default=Path(__file__).resolve().parents[1], help="checkout to measure")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    manifest = make_inputs(args.work, args.pairs)
    run = args.work / "run"
    shutil.rmtree(run, ignore_errors=True)
    repo = args.repo.resolve()
    rows = [
        ("run --only 2 pairs (new folder)", run_only(repo, manifest, run, "p000000,p000001")),
        ("run --only 2 more pairs (same folder)", run_only(repo, manifest, run, "p000002,p000003")),
        ("status", timed(repo, "status", str(run))),
        (
            "evaluate (selfsim, tiny random backbone)",
            timed(repo, "evaluate", str(run), "--metrics", "selfsim", "--metric-backbone", TINY, "--no-progress"),
        ),
    ]
    sizes = {name: (run / name).stat().st_size for name in ("run.json", "inputs.parquet") if (run / name).exists()}
    print(f"{args.pairs} pairs, {repo}:\n")
    print("| command | seconds |\n|---|---|")
    for name, seconds in rows:
        print(f"| {name} | {seconds:.1f} |")
    print("\n" + ", ".join(f"{name}: {size / 2**20:.2f} MiB" for name, size in sizes.items()))


if __name__ == "__main__":
    main()
