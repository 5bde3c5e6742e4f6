"""The bench's report over everything: OUT/report/index.html, and tables.md, tables.csv and tables.tex that put every
dataset's tables one after the other (tables.csv with a `dataset` column). Each dataset's own report (report.html,
its tables, published.csv) is in OUT/report/<dataset>/, written by `splice report`'s builder."""

from __future__ import annotations

import io
from datetime import datetime, timezone
from html import escape

from pipeline.runs import layout
from pipeline.storage import Storage, redact_url


def write_index(storage: Storage, plan, reports: dict) -> None:
    spec = plan.spec
    markdown = [f"# {spec.name}", "", f"`splice bench` of {spec.path} (sha256 {spec.sha256[:12]}).", ""]
    latex = [f"% {spec.name}: splice bench of {spec.path} (sha256 {spec.sha256[:12]})"]
    frames, sections = [], []
    for dataset, report in reports.items():
        url = report["url"]
        text = _read_text(storage, layout.join(url, "tables.md"))
        body = text.removeprefix("# Benchmark\n").replace("\n## ", "\n### ")
        markdown += [f"# Dataset {dataset}", "", body, ""]
        latex += ["", f"% ===== dataset {dataset} =====", _read_text(storage, layout.join(url, "tables.tex"))]
        csv = _read_text(storage, layout.join(url, "tables.csv"))
        if csv.strip():
            import pandas as pd

            frame = pd.read_csv(io.StringIO(csv))
            frame.insert(0, "dataset", dataset)
            frames.append(frame)
        sections.append(
            f'<h2>{escape(dataset)}</h2><p><a href="{escape(dataset)}/report.html">report.html</a> · '
            f'<a href="{escape(dataset)}/tables.md">tables.md</a> · methods: {escape(", ".join(report["methods"]))}'
            f"</p><pre>{escape(text)}</pre>"
        )
    storage.write_bytes(layout.join(plan.report_url, "tables.md"), "\n".join(markdown).encode())
    storage.write_bytes(layout.join(plan.report_url, "tables.tex"), "\n".join(latex).encode())
    if frames:
        import pandas as pd

        buffer = io.StringIO()
        pd.concat(frames, ignore_index=True).to_csv(buffer, index=False, lineterminator="\r\n")
        storage.write_bytes(layout.join(plan.report_url, "tables.csv"), buffer.getvalue().encode())
    runs = "".join(
        f"<tr><td>{escape(r.dataset)}</td><td>{escape(r.method.name)}</td><td><code>{escape(redact_url(r.url))}"
        f"</code></td></tr>"
        for r in plan.runs
    )
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    page = (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>splice bench</title>'
        "<style>body{font-family:sans-serif;max-width:70em;margin:2em auto}pre{background:#f6f6f6;padding:1em;"
        "overflow:auto}td,th{padding:0 .6em;text-align:left}</style></head><body>"
        f"<h1>{escape(spec.name)}</h1><p>Generated {now} by <code>splice bench</code> from "
        f"<code>{escape(spec.path)}</code> (sha256 {spec.sha256[:12]}); the spec and every run are recorded in "
        f'<a href="../bench.json">bench.json</a>. All datasets\' tables: <a href="tables.md">tables.md</a>, '
        f'<a href="tables.csv">tables.csv</a>, <a href="tables.tex">tables.tex</a>.</p>'
        f"{''.join(sections) or '<p>No dataset has an evaluated run yet.</p>'}"
        f"<h2>Runs</h2><table><tr><th>dataset</th><th>method</th><th>run folder</th></tr>{runs}</table>"
        "</body></html>\n"
    )
    storage.write_bytes(layout.join(plan.report_url, "index.html"), page.encode())


def _read_text(storage: Storage, url: str) -> str:
    try:
        return storage.read_bytes(url).decode()
    except (FileNotFoundError, OSError):
        return ""
