"""The HTML page of `splice report`: one file with inline CSS, SVG and script, and the images embedded (or, with
`--assets external`, under assets/ beside it).

What a reader sees first: the title, the warnings (each distinct cause once, with the runs it affects), the
benchmark tables and the structure/appearance trade-off figure; then examples, the worst and best pairs per metric
and method, the sortable per-pair table, distributions, loss curves, the runs and the metric definitions. Every
pair has its own view (all images, values, cost, loss curves), opened from any pair id.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from html import escape

from evaluation.report import html_pairs
from evaluation.report import statistics as S
from evaluation.report import tables as T
from evaluation.report.assets import SCRIPT, STYLE
from pipeline.storage import redact_url

SECTIONS = [
    ("tables", "Tables"),
    ("tradeoff", "Trade-off"),
    ("examples", "Examples"),
    ("extremes", "Worst & best"),
    ("pairs", "All pairs"),
    ("distributions", "Distributions"),
    ("losses", "Loss curves"),
    ("runs", "Runs"),
    ("metrics", "Metrics"),
]


def render(
    table: S.Tables,
    *,
    runs,
    warnings,
    descriptions,
    distributions: list[dict],
    losses: list[dict],
    tradeoff: str,
    records,
    sample: list[str],
    extremes,
    k: int,
    store,
    layout_classes=None,
    published: str = "",
) -> str:
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    methods = [r.label for r in runs]
    main = [
        "<h1>Semantic appearance transfer: benchmark</h1>",
        f'<p class="note">{len(records)} pairs, {len(methods)} method(s): {escape(", ".join(methods))}. Generated {now} by '
        f'<code>splice report</code>. Files beside this page: <a href="tables.md">tables.md</a>, '
        f'<a href="tables.csv">tables.csv</a>, <a href="tables.tex">tables.tex</a>.</p>',
        _warnings(warnings),
        '<div id="broken" class="warn" hidden></div>',
        '<nav class="toc">' + "".join(f'<a href="#{key}">{text}</a>' for key, text in SECTIONS) + "</nav>",
        '<h2 id="tables">Tables</h2>',
        '<p class="note">Cells: mean [95% bootstrap CI] over the evaluated pairs (n where it differs); ↓ lower is better, '
        "↑ higher is better; best mean in bold. <em>n failed</em> counts pairs that failed, have no output or could not "
        'be evaluated: they are in no mean. <span class="random">†</span> computed with random weights: a smoke test, '
        "not a result.</p>",
        *(_group_html(table, group) for group in table.groups),
        published,
        '<h2 id="tradeoff">Structure against appearance</h2>',
        f"<figure>{tradeoff}</figure>"
        if tradeoff
        else '<p class="note">Needs a structure and an appearance metric.</p>',
        '<h2 id="examples">Examples</h2>',
        f'<p class="note">A seeded sample of pairs; click an image to enlarge it, a pair id for its view. {escape(store.note())}</p>',
        html_pairs.examples_grid(records, sample, methods),
        '<h2 id="extremes">Worst and best pairs</h2>',
        html_pairs.extremes_section(extremes, records, methods, k),
        '<h2 id="pairs">All pairs</h2>',
        html_pairs.pairs_table(records, methods, table.metrics),
        '<h2 id="distributions">Distributions</h2>',
        *(f"<figure>{d['svg']}</figure>" for d in distributions),
        '<h2 id="losses">Loss curves</h2>',
        *(f"<figure>{c['svg']}</figure>" for c in losses),
        "" if losses else '<p class="note">No run here stored loss curves (imported methods have none).</p>',
        _runs_section(runs),
        _definitions(descriptions, layout_classes),
    ]
    data = "".join(
        f'<script id="{name}" type="application/json">{_json(value)}</script>'
        for name, value in (("images", store.view), ("full", store.full), ("originals", store.original))
    )
    lightbox = '<div id="lightbox" hidden><img alt="full resolution"><p></p></div>'
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1"><title>splice report</title>'
        f'<style>{STYLE}</style></head><body data-assets="{escape(store.mode)}"><div id="main">{"".join(main)}</div>'
        f"{html_pairs.pair_views(records, table.metrics, store)}{lightbox}{data}<script>{SCRIPT}</script></body></html>\n"
    )


JSON_IN_SCRIPT = str.maketrans(
    {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028", "\u2029": "\\u2029"}
)


def _json(value) -> str:
    """JSON safe inside <script>: no <, > or & at all, so neither '</script>' nor '<!--' (which makes the HTML
    parser look for a '-->' and so swallow the page's own script) can appear; the same JSON to JSON.parse."""
    return json.dumps(value, separators=(",", ":")).translate(JSON_IN_SCRIPT)


def _warnings(warnings) -> str:
    if not len(warnings):
        return ""
    items = []
    for item in warnings:
        runs = f' <span class="runs">({escape(", ".join(item.runs))})</span>' if item.runs else ""
        detail = f" <details><summary>details</summary>{escape(item.detail)}</details>" if item.detail else ""
        items.append(f"<li>{escape(item.cause)}{runs}{detail}</li>")
    return f'<ul class="warnings" id="warnings">{"".join(items)}</ul>'


def _runs_section(runs) -> str:
    rows = []
    for run in runs:
        counts = run.metrics["status"].value_counts().to_dict()
        states = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
        backbone = run.run.info.get("backbone") or "–"
        rows.append(
            f"<tr><td>{escape(run.label)}</td><td><code>{escape(redact_url(run.run.url))}</code></td>"
            f"<td>{len(run.metrics)} ({escape(states)})</td><td>{escape(str(backbone))}</td></tr>"
        )
    return (
        '<h2 id="runs">Runs</h2><table class="runs"><thead><tr><th>method</th><th>run</th><th>pairs</th>'
        f"<th>training backbone</th></tr></thead><tbody>{''.join(rows)}</tbody></table>"
    )


def _group_html(table: S.Tables, group: S.GroupTable) -> str:
    head = ["method", *(T.header(m) for m in table.metrics), "n evaluated", "n failed", "n pending", *T.COST_HEADERS]
    rows = []
    for row in group.rows:
        cells = []
        for metric in table.metrics:
            css = ' class="best"' if row.method in T.best_methods(group, metric) else ""
            cells.append(f"<td{css}>{_cell(row, metric)}</td>")
        rest = [str(row.n_evaluated), str(row.n_failed), str(row.n_pending), *T.cost_texts(row)]
        rows.append(
            f"<tr><td>{escape(row.method)}</td>{''.join(cells)}{''.join(f'<td>{escape(c)}</td>' for c in rest)}</tr>"
        )
    coverage = T.coverage_text(table, group)
    html = [
        f"<h3>{escape(group.title)}</h3>",
        *([f'<p class="note">{escape(coverage)}</p>'] if coverage else []),
        _table(head, rows),
    ]
    if group.win_rates:
        rate_rows = [
            f"<tr><td>{escape(method)}</td>"
            + "".join(f"<td>{escape(T.rate_text(rates[m]))}</td>" for m in table.metrics)
            + "</tr>"
            for method, rates in group.win_rates.items()
        ]
        html += [
            f'<p class="note">Win rate against <b>{escape(table.reference)}</b>: {escape(T.win_rate_note(table))}.</p>',
            _table(["method", *(T.header(m) for m in table.metrics)], rate_rows),
        ]
        delta_rows = [
            f"<tr><td>{escape(method)}</td>"
            + "".join(f"<td>{escape(T.difference_text(deltas.get(m)))}</td>" for m in table.metrics)
            + "</tr>"
            for method, deltas in group.differences.items()
        ]
        html += [
            f'<p class="note">Difference to <b>{escape(table.reference)}</b>: {escape(T.DIFFERENCE_NOTE)}.</p>',
            _table(["method", *(T.header(m) for m in table.metrics)], delta_rows),
        ]
    return "".join(html)


def _cell(row: S.MethodRow, metric: str) -> str:
    """Mean on the first line, the 95% CI (and n where it differs) below it."""
    cell = row.cells.get(metric)
    if cell is None:
        counts = T.counts_text(row, metric)
        return "–" + (f"<br><small>{escape(counts)}</small>" if counts else "")
    dagger = ' <span class="random">†</span>' if metric in row.random_metrics else ""
    counts = T.counts_text(row, metric)
    n = f" {escape(counts)}" if counts else ""
    return f"{T.fmt(cell.mean)}{dagger}<br><small>[{T.fmt(cell.low)}, {T.fmt(cell.high)}]{n}</small>"


def _table(head: list[str], rows: list[str]) -> str:
    return (
        f"<table><thead><tr>{''.join(f'<th>{escape(h)}</th>' for h in head)}</tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table>"
    )


def _definitions(descriptions, classes) -> str:
    items = "".join(
        f'<li><b>{escape(metric)}</b>: {escape(text)}. <span class="note">Computed with: {escape(models)}</span></li>'
        for metric, text, models in descriptions
    )
    layout = (
        "<p><b>layout_miou</b> counts, per pair, every class present in the segmentation of the structure image or "
        "of the output (background included), IoU averaged over them; a pair where both are all background "
        "scores 1, so the metric is most telling on images with segmentable objects. "
    )
    layout += f"Segmenter classes: {escape(', '.join(classes))}.</p>" if classes else "</p>"
    return (
        f'<h2 id="metrics">Metrics</h2><ul>{items}</ul>{layout}<p class="note">An output whose size differs from its '
        "structure image's is resized to the structure image's size before comparison. Cost columns are copied from "
        "the run's results.parquet (training seconds, device, peak memory per pair).</p>"
    )
