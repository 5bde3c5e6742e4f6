"""Report size and time: report.html of N pairs x M methods (default 1000 x 4) against its budget (60 MB), with its
parts, and the --assets external layout of the same runs as the baseline, measured in the same run.

The runs are synthetic (tests/synthetic_runs.py): textured images written straight in the run layout, metrics
already evaluated, loss curves for one method, so that only the report is timed.

    .venv/bin/python benchmarks/report_size.py [--pairs 1000] [--methods 4] [--size 256] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from evaluation.report.build import build_report  # noqa: E402
from synthetic_runs import make_synthetic_runs  # noqa: E402

BUDGET_MB = 60.0  # at 1000 pairs x 4 methods, see evaluation/report/images.py


def parts(html: str) -> dict[str, float]:
    """MB of the page's main parts."""
    sizes = {}
    for name in ("images", "full", "originals"):
        found = re.search(f'<script id="{name}" type="application/json">(.*?)</script>', html, re.S)
        sizes[f"{name} (JSON)"] = len(found.group(1)) if found else 0
    table = html.find('<table id="pairs-table"')
    sizes["per-pair table"] = html.find("</table>", table) - table
    first, last = html.find('<section class="pair"'), html.rfind("</section>")
    views = html[first:last] if first >= 0 else ""
    in_views = sum(len(s) for s in re.findall(r"<svg.*?</svg>", views, re.S))
    sizes["pair views (text)"] = len(views) - in_views
    sizes["pair loss curves (svg)"] = in_views
    sizes["other svg plots"] = sum(len(s) for s in re.findall(r"<svg.*?</svg>", html, re.S)) - in_views
    sizes["rest"] = len(html) - sum(sizes.values())
    return {k: v / 2**20 for k, v in sizes.items()}


def folder_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=1000)
    parser.add_argument("--methods", type=int, default=4)
    parser.add_argument("--size", type=int, default=256, help="side of the generated images (px)")
    parser.add_argument("--keep", help="write the runs and reports here (default: a temporary folder, removed)")
    args = parser.parse_args()

    root = Path(args.keep or tempfile.mkdtemp(prefix="report-size-"))
    try:
        started = time.perf_counter()
        runs = make_synthetic_runs(root, args.pairs, args.methods, args.size)
        print(
            f"synthetic runs: {args.pairs} pairs x {args.methods} methods, {args.size} px ({time.perf_counter() - started:.0f} s)"
        )
        rows = []
        for assets in ("external", "inline"):  # external: the baseline layout (page + files)
            out = root / f"report-{assets}"
            started = time.perf_counter()
            build_report(runs, str(out), assets=assets, n_boot=1000)
            seconds = time.perf_counter() - started
            page = (out / "report.html").stat().st_size / 2**20
            rows.append((assets, seconds, page, folder_mb(out)))
            if assets == "inline":
                html = (out / "report.html").read_text()
        print(f"\n{'assets':10} {'seconds':>8} {'report.html MB':>15} {'folder MB':>10}")
        for assets, seconds, page, folder in rows:
            print(f"{assets:10} {seconds:8.1f} {page:15.1f} {folder:10.1f}")
        inline = rows[-1][2]
        scale = args.pairs * args.methods / 4000
        print(
            f"\nbudget: {BUDGET_MB:.0f} MB at 1000 x 4 ({BUDGET_MB * scale:.1f} MB pro rata here): "
            f"{'within' if inline <= BUDGET_MB * max(1.0, scale) else 'OVER'}"
        )
        print("\nparts of the inline report.html (MB):")
        for name, size in parts(html).items():
            print(f"  {name:20} {size:7.2f}")
        note = re.search(r"Images are embedded in this file:[^<]*", html)
        print("\n" + (note.group(0) if note else ""))
        print(
            json.dumps(
                {
                    "pairs": args.pairs,
                    "methods": args.methods,
                    "inline_mb": round(inline, 2),
                    "external_page_mb": round(rows[0][2], 2),
                    "external_folder_mb": round(rows[0][3], 2),
                }
            )
        )
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
