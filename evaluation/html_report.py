"""The HTML page of `splice report`: one self-contained file (inline CSS and SVG) plus relative thumbnail links.

A small script marks the page once every image has loaded (body data-images-loaded / data-images-broken) and
shows a warning when a thumbnail is missing, e.g. when report.html was copied without its thumbs/ folder.
"""
from __future__ import annotations

from datetime import datetime, timezone
from html import escape

from pipeline.storage import redact_url

from . import tables as T
from .metrics import METRICS

STYLE = """
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1200px;color:#222;padding:0 1em}
table{border-collapse:collapse;margin:.5em 0 1.5em}th,td{border:1px solid #ccc;padding:.3em .6em;text-align:right}
th:first-child,td:first-child{text-align:left}thead th{background:#f3f3f3}td.best{font-weight:bold}small{color:#555;white-space:nowrap}
table.runs td{text-align:left;white-space:normal}
.note{color:#555;font-size:.9em}.random{color:#b00}.warn{background:#fee;border:1px solid #c00;padding:.5em}
.grid td,.grid th{vertical-align:top;text-align:center;font-size:.8em}
.grid img{width:160px;height:160px;object-fit:contain;display:block;margin:auto}
.missing{width:160px;height:120px;display:flex;align-items:center;justify-content:center;background:#eee;color:#900;margin:auto}
figure{display:inline-block;margin:0 1em 1em 0}code{background:#f3f3f3;padding:0 .2em}
"""
SCRIPT = """
window.addEventListener('load', function () {
  var images = Array.prototype.slice.call(document.images);
  var broken = images.filter(function (i) { return !(i.complete && i.naturalWidth > 0); });
  document.body.setAttribute('data-images-loaded', String(images.length - broken.length));
  document.body.setAttribute('data-images-broken', String(broken.length));
  if (broken.length) {
    var box = document.getElementById('broken');
    box.hidden = false;
    box.textContent = broken.length + ' image(s) could not be loaded: keep the thumbs/ folder next to report.html.';
  }
});
"""


def render(table: T.Tables, *, runs, distributions: list[dict], losses: list[dict], grid: list[dict]) -> str:
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    body = [
        "<h1>Semantic appearance transfer: benchmark</h1>",
        f'<p class="note">Generated {now} by <code>splice report</code>. Files: <a href="tables.md">tables.md</a>, '
        f'<a href="tables.csv">tables.csv</a>, <a href="tables.tex">tables.tex</a>.</p>',
        '<div id="broken" class="warn" hidden></div>',
        _runs_section(runs),
        "<h2>Tables</h2>",
        *(f'<p class="warn">{escape(text)}</p>' for text in table.warnings()),
        '<p class="note">Cells: mean [95% bootstrap CI] over the evaluated pairs (n where it differs); ↓ lower is better, '
        "↑ higher is better; best mean in bold. <em>n failed</em> counts pairs that failed, have no output or could not "
        'be evaluated: they are in no mean. <span class="random">†</span> computed with random weights: a smoke test, '
        "not a result.</p>",
        *(_group_html(table, group) for group in table.groups),
        _definitions(runs),
        "<h2>Distributions</h2>",
        *(f"<figure>{d['svg']}</figure>" for d in distributions),
        "<h2>Loss curves</h2>",
        *(f"<figure>{c['svg']}</figure>" for c in losses),
        "" if losses else '<p class="note">No run here stored loss curves (imported methods have none).</p>',
        "<h2>Examples</h2>",
        _grid(grid, [r.label for r in runs]),
    ]
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>splice report</title>"
            f"<style>{STYLE}</style></head><body>{''.join(body)}<script>{SCRIPT}</script></body></html>\n")


def _runs_section(runs) -> str:
    rows = []
    for run in runs:
        models = run.evaluation.get("metrics", {})
        used = "; ".join(f"{m}: {escape(str(v.get('model')))}" for m, v in models.items()) or "–"
        skipped = run.evaluation.get("skipped") or {}
        # the full reason (with how to provide the weights) is in the hover text and in eval/evaluation.json
        skipped_text = "".join(f"<br><span class='random' title='{escape(why, quote=True)}'>skipped {escape(m)}: "
                               f"{escape(_first_clause(why))}</span>" for m, why in skipped.items())
        random = " <span class='random'>(random weights: smoke test)</span>" if "@random" in used else ""
        rows.append(f"<tr><td>{escape(run.label)}</td><td>{escape(redact_url(run.run.url))}</td><td>{len(run.metrics)}</td>"
                    f"<td>{used}{random}{skipped_text}</td></tr>")
    return ("<h2>Runs</h2><table class=\"runs\"><thead><tr><th>method</th><th>run</th><th>pairs</th><th>metric models (spec@weights)</th>"
            f"</tr></thead><tbody>{''.join(rows)}</tbody></table>")


def _group_html(table: T.Tables, group: T.GroupTable) -> str:
    head = ["method", *(T.header(m) for m in table.metrics), "n evaluated", "n failed", "n pending", *T.COST_HEADERS]
    rows = []
    for row in group.rows:
        cells = []
        for metric in table.metrics:
            css = ' class="best"' if row.method in T.best_methods(group, metric) else ""
            cells.append(f"<td{css}>{_cell(row, metric)}</td>")
        rest = [str(row.n_evaluated), str(row.n_failed), str(row.n_pending), *T.cost_texts(row)]
        rows.append(f"<tr><td>{escape(row.method)}</td>{''.join(cells)}{''.join(f'<td>{escape(c)}</td>' for c in rest)}</tr>")
    coverage = T.coverage_text(table, group)
    html = [f"<h3>{escape(group.title)}</h3>", *([f'<p class="note">{escape(coverage)}</p>'] if coverage else []),
            _table(head, rows)]
    if group.win_rates:
        rate_rows = [f"<tr><td>{escape(method)}</td>" + "".join(f"<td>{escape(T.rate_text(rates[m]))}</td>" for m in table.metrics)
                     + "</tr>" for method, rates in group.win_rates.items()]
        html += [f'<p class="note">Win rate against <b>{escape(table.reference)}</b>: {escape(T.win_rate_note(table))}.</p>',
                 _table(["method", *(T.header(m) for m in table.metrics)], rate_rows)]
        delta_rows = [f"<tr><td>{escape(method)}</td>" + "".join(f"<td>{escape(T.difference_text(deltas.get(m)))}</td>"
                                                                for m in table.metrics) + "</tr>"
                      for method, deltas in group.differences.items()]
        html += [f'<p class="note">Difference to <b>{escape(table.reference)}</b>: {escape(T.DIFFERENCE_NOTE)}.</p>',
                 _table(["method", *(T.header(m) for m in table.metrics)], delta_rows)]
    return "".join(html)


def _cell(row: T.MethodRow, metric: str) -> str:
    """Mean on the first line, the 95% CI (and n where it differs) below it."""
    cell = row.cells.get(metric)
    if cell is None:
        return "–"
    dagger = ' <span class="random">†</span>' if metric in row.random_metrics else ""
    n = f" n={cell.n}" if cell.n != row.n_evaluated else ""
    return f"{T.fmt(cell.mean)}{dagger}<br><small>[{T.fmt(cell.low)}, {T.fmt(cell.high)}]{n}</small>"


def _table(head: list[str], rows: list[str]) -> str:
    return (f"<table><thead><tr>{''.join(f'<th>{escape(h)}</th>' for h in head)}</tr></thead>"
            f"<tbody>{''.join(rows)}</tbody></table>")


def _definitions(runs) -> str:
    items = "".join(f"<li><b>{escape(m.name)}</b> ({m.aspect}, {m.better} is better, version {m.version}): {escape(m.summary)}</li>"
                    for m in METRICS.values())
    classes = next((r.evaluation.get("layout_classes") for r in runs if r.evaluation.get("layout_classes")), None)
    layout = ("<p><b>layout_miou</b> counts, per pair, every class present in the segmentation of the structure image or "
              "of the output (background included), IoU averaged over them; a pair where both are all background "
              "scores 1, so the metric is most telling on images with segmentable objects. ")
    layout += (f"Segmenter classes: {escape(', '.join(classes))}.</p>" if classes else "</p>")
    return (f"<h2>Metrics</h2><ul>{items}</ul>{layout}<p class='note'>An output whose size differs from its structure "
            "image's is resized to the structure image's size before comparison. Cost columns are copied from each "
            "pair's meta.json (training seconds, device, peak memory).</p>")


def _grid(grid: list[dict], labels: list[str]) -> str:
    if not grid:
        return '<p class="note">No pairs to show.</p>'
    head = ["pair", "structure", "appearance", *labels]
    rows = []
    for item in grid:
        cells = [_image(item["structure"], "structure"), _image(item["appearance"], "appearance")]
        for label, output in zip(labels, item["outputs"]):
            values = "<br>".join(f"{escape(m)} {T.fmt(float(v))}" for m, v in output.get("values", {}).items())
            cells.append(_image(output, label) + (f"<div>{values}</div>" if values else ""))
        rows.append(f"<tr><td>{escape(item['pair_id'])}</td>{''.join(f'<td>{c}</td>' for c in cells)}</tr>")
    return ('<table class="grid">'
            f"<thead><tr>{''.join(f'<th>{escape(h)}</th>' for h in head)}</tr></thead><tbody>{''.join(rows)}</tbody></table>")


def _image(cell: dict, alt: str) -> str:
    if cell.get("src"):
        return f'<img src="{escape(cell["src"])}" alt="{escape(alt)}" loading="eager">'
    return f'<div class="missing" title="{escape(str(cell.get("error") or ""))}">{escape(str(cell.get("error") or "missing"))[:60]}</div>'


def _first_clause(reason: str) -> str:
    """The cause without the instructions: 'pretrained weights ... are not in the torch hub cache ...'."""
    cause = reason.split(". ")[0]
    return cause.split(": ", 1)[-1] if ": " in cause else cause
