"""Start-up time of the command line: `splice --help` and `splice run --help`, wall time of a fresh process, median of
N runs, against the old way measured in the same run: the same parser built after importing what the command
modules imported at parser-build time before the CLI went lazy (torch, torchvision via the metrics and the
segmenter, the method registry, fsspec via storage).

    .venv/bin/python benchmarks/cli_startup.py [--runs 15] [--baseline-src DIR]

--baseline-src DIR also times an older revision's own code (e.g. `git archive da3f268 | tar -x -C DIR`, the commit
before the CLI went lazy) in the same run.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

# what building the parser imported before (evaluation/metrics.py and segmenter.py: torch and torchvision;
# pipeline/method/registry.py: torch, numpy; pipeline/storage.py: fsspec; pipeline/cli/demo_job.py: numpy, PIL)
OLD_IMPORTS = [
    "evaluation.metrics",
    "evaluation.segmenter",
    "pipeline.method.registry",
    "pipeline.storage",
    "pipeline.cli.demo_job",
]
PYTHON_IMPORT_TIME = "pass"  # the interpreter alone, for reference


def command(argv: list[str], old: bool, src: str | None = None) -> list[str]:
    path = f"sys.path.insert(0, {src!r}); " if src else ""
    preload = "".join(f"import {module}; " for module in OLD_IMPORTS) if old else ""
    code = f"import sys; {path}{preload}from pipeline.cli.main import main; sys.exit(main({argv!r}))"
    return [sys.executable, "-c", code]


def median_seconds(cmd: list[str], runs: int) -> float:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        done = subprocess.run(cmd, check=False, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        times.append(time.perf_counter() - started)
        if done.returncode != 0:
            raise SystemExit(f"{' '.join(cmd)} failed: {done.stderr.decode()[-400:]}")
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15, help="processes per measurement (default 15)")
    parser.add_argument("--baseline-src", metavar="DIR", help="a source tree of an older revision to time as well")
    args = parser.parse_args()
    median_seconds(command(["--help"], old=True), 1)  # warm the file cache for both
    interpreter = median_seconds([sys.executable, "-c", PYTHON_IMPORT_TIME], args.runs)
    extra = f" {'baseline src':>13}" if args.baseline_src else ""
    print(
        f"{'command':<22} {'lazy (now)':>11} {'old (eager)':>12} {'speed-up':>9}{extra}   (median of {args.runs}; "
        f"python alone {interpreter:.3f} s)"
    )
    for argv in (["--help"], ["run", "--help"]):
        now = median_seconds(command(argv, old=False), args.runs)
        old = median_seconds(command(argv, old=True), args.runs)
        line = f"{'splice ' + ' '.join(argv):<22} {now:>9.3f} s {old:>10.3f} s {old / now:>8.1f}x"
        if args.baseline_src:
            line += f" {median_seconds(command(argv, False, args.baseline_src), args.runs):>11.3f} s"
        print(line)


if __name__ == "__main__":
    main()
