"""The per-pair parts of report.html: the sortable, filterable per-pair table, the worst and best pairs per metric
and method, the examples grid, and one view per pair (shown as an overlay when its #pair-<id> link is followed)."""

from __future__ import annotations

import math
from html import escape

from evaluation.report import tables as T
from evaluation.report.pairs import Extremes, PairRecord
from pipeline.runs.run_folder import PairStatus
from pipeline.storage import redact_url


def pair_link(pair_id: str, text: str | None = None) -> str:
    return f'<a href="#pair-{escape(pair_id)}">{escape(text or pair_id)}</a>'


def image(key: str | None, alt: str, error: str | None = None) -> str:
    """An <img> filled from the page's image map by the script, or a grey box saying why there is none."""
    if key:
        return f'<img data-key="{key}" alt="{escape(alt)}" loading="lazy">'
    text = error or "no image"
    return f'<div class="missing" title="{escape(text)}">{escape(text[:80])}</div>'


def pairs_table(records: list[PairRecord], methods: list[str], metrics: list[str]) -> str:
    """One row per (pair, method): labels, status, every metric, cost and error; sorted and filtered by the script."""
    labels = [c for c in ("dataset", "domain", "split") if any(c in r.labels for r in records)]
    head = [
        "pair",
        *labels,
        "method",
        "status",
        *(T.header(m) for m in metrics),
        "train s",
        "device",
        "peak GiB",
        "error",
    ]
    rows = []
    for record in records:
        for output in record.outputs:
            cells = [
                f"<td>{pair_link(record.pair_id)}</td>",
                *(f"<td>{escape(record.labels.get(c, ''))}</td>" for c in labels),
                f"<td>{escape(output.method)}</td>",
                f"<td>{escape(output.status)}</td>",
            ]
            cells += [_number(output.values.get(m)) for m in metrics]
            seconds = output.cost.get("train_seconds")
            memory = output.cost.get("train_peak_memory_bytes")
            cells += [
                _number(seconds, "{:.1f}"),
                f"<td>{escape(str(output.cost.get('train_device', '')))}</td>",
                _number(memory / 2**30 if memory is not None else None, "{:.2f}"),
            ]
            error = output.error if output.status != PairStatus.DONE else ""
            cells.append(f'<td class="err" title="{escape(error or "")}">{escape(error or "")}</td>')
            rows.append(
                f'<tr data-method="{escape(output.method)}" data-status="{escape(output.status)}" '
                f'class="status-{escape(output.status.replace(" ", "-"))}">{"".join(cells)}</tr>'
            )
    statuses = sorted({o.status for r in records for o in r.outputs})
    options = lambda values: "".join(f'<option value="{escape(v)}">{escape(v)}</option>' for v in values)  # noqa: E731
    filters = (
        '<div class="filters"><input id="pairs-filter" type="search" placeholder="filter: words that must all '
        'appear in a row (pair id, domain, error ...)">'
        f'<select id="pairs-method"><option value="">all methods</option>{options(methods)}</select>'
        f'<select id="pairs-status"><option value="">any status</option>{options(statuses)}</select>'
        '<span id="pairs-count" class="note"></span></div>'
    )
    table = (
        f'<table id="pairs-table"><thead><tr>{"".join(f"<th>{escape(h)}</th>" for h in head)}</tr></thead>'
        f'<tbody>{"".join(rows)}</tbody></table><button id="pairs-more" type="button" hidden>show all rows</button>'
    )
    return (
        f'<p class="note">One row per pair and method; click a header to sort (again to reverse), a pair to open '
        f"its view. Values are per pair; {len(records)} pairs.</p>{filters}{table}"
    )


def extremes_section(found: list[Extremes], records: list[PairRecord], methods: list[str], k: int) -> str:
    if not found:
        return '<p class="note">No metric values to rank.</p>'
    keys = {(r.pair_id, o.method): o.key for r in records for o in r.outputs}
    html = [
        f'<p class="note">Per metric and method, the {k} worst and the {k} best pairs (at most half the pairs '
        f"each; outputs shown; click one to open its pair's view).</p>"
    ]
    for item in found:
        rows = []
        for method, worst, best in item.rows:
            rows.append(
                f"<tr><td>{escape(method)}</td><td>{_strip(worst, method, keys)}</td>"
                f"<td>{_strip(best, method, keys)}</td></tr>"
            )
        html.append(
            f'<h3>{escape(T.header(item.metric))}</h3><table class="extremes"><thead><tr><th>method</th>'
            f"<th>worst</th><th>best</th></tr></thead><tbody>{''.join(rows)}</tbody></table>"
        )
    return "".join(html)


def examples_grid(records: list[PairRecord], sample: list[str], methods: list[str]) -> str:
    if not sample:
        return '<p class="note">No pairs to show.</p>'
    by_id = {r.pair_id: r for r in records}
    head = ["pair", "structure", "appearance", *methods]
    rows = []
    for pair_id in sample:
        record = by_id[pair_id]
        cells = [
            image(record.structure_key, f"structure of {pair_id}"),
            image(record.appearance_key, f"appearance of {pair_id}"),
        ]
        for output in record.outputs:
            values = "<br>".join(f"{escape(m)} {T.fmt(v)}" for m, v in output.values.items())
            cells.append(
                image(output.key, f"{output.method} on {pair_id}", _why_none(output))
                + (f"<div>{values}</div>" if values else "")
            )
        rows.append(f"<tr><td>{pair_link(pair_id)}</td>{''.join(f'<td>{c}</td>' for c in cells)}</tr>")
    return (
        f'<table class="grid"><thead><tr>{"".join(f"<th>{escape(h)}</th>" for h in head)}</tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table>"
    )


def pair_views(records: list[PairRecord], metrics: list[str], store) -> str:
    """One hidden section per pair, shown (as an overlay) when the address is #pair-<id>."""
    views = []
    for index, record in enumerate(records):
        previous = records[index - 1].pair_id if index else None
        following = records[index + 1].pair_id if index + 1 < len(records) else None
        bar = ['<a href="#pairs">× close (Esc)</a>']
        if previous:
            bar.append(pair_link(previous, f"← {previous}"))
        if following:
            bar.append(pair_link(following, f"{following} →"))
        labels = ", ".join(f"{k} {v}" for k, v in record.labels.items())
        figures = [
            _figure(record.structure_key, "structure", f"structure of {record.pair_id}", store),
            _figure(record.appearance_key, "appearance", f"appearance of {record.pair_id}", store),
        ]
        for output in record.outputs:
            values = "<br>".join(
                f"{escape(T.header(m))} {T.fmt(output.values[m])}" for m in metrics if m in output.values
            )
            caption = f"<b>{escape(output.method)}</b> ({escape(output.status)})" + (f"<br>{values}" if values else "")
            figures.append(
                _figure(output.key, caption, f"{output.method} on {record.pair_id}", store, _why_none(output))
            )
        full = any(k in store.full for k in (record.structure_key, record.appearance_key))
        note = (
            "click an image for full resolution"
            if full
            else "click an image to enlarge (full resolution is not embedded for this pair: see the stored files below)"
        )
        curves = "".join(f"<figure>{o.losses_svg}</figure>" for o in record.outputs if o.losses_svg)
        views.append(
            f'<section class="pair" id="pair-{escape(record.pair_id)}"><div class="bar">{"".join(bar)}</div>'
            f'<h2>pair {escape(record.pair_id)}</h2><p class="note">{escape(labels)}{" · " if labels else ""}{note}</p>'
            f'<div class="images">{"".join(figures)}</div>{curves}{_meta_table(record, metrics)}</section>'
        )
    return "".join(views)


def _figure(key, caption: str, alt: str, store, error: str | None = None) -> str:
    error = error or (store.errors.get(key) if key else None)
    shown = image(key if key and key in store.view else None, alt, error)
    return f"<figure>{shown}<figcaption>{caption}</figcaption></figure>"


def _meta_table(record: PairRecord, metrics: list[str]) -> str:
    rows = [
        f'<tr><td>structure image</td><td colspan="6"><code>{escape(redact_url(record.structure_uri))}</code></td></tr>',
        f'<tr><td>appearance image</td><td colspan="6"><code>{escape(redact_url(record.appearance_uri))}</code></td></tr>',
    ]
    for output in record.outputs:
        memory = output.cost.get("train_peak_memory_bytes")
        seconds = output.cost.get("train_seconds")
        facts = [
            output.status,
            f"{seconds:.1f} s" if seconds is not None else "–",
            str(output.cost.get("train_device", "–")),
            f"{memory / 2**30:.2f} GiB" if memory is not None else "–",
        ]
        rows.append(
            f"<tr><td>{escape(output.method)}</td>{''.join(f'<td>{escape(f)}</td>' for f in facts)}"
            f"<td>{escape(output.error or '')}</td></tr>"
        )
    return (
        '<table class="meta"><thead><tr><th></th><th>status</th><th>train time</th><th>device</th><th>peak memory</th>'
        f"<th>error</th></tr></thead><tbody>{''.join(rows)}</tbody></table>"
    )


def _strip(items: list[tuple[str, float]], method: str, keys: dict) -> str:
    cells = [
        f'<a href="#pair-{escape(pair_id)}">{image(keys.get((pair_id, method)), f"{method} on {pair_id}")}'
        f"{escape(pair_id)}<br>{T.fmt(value)}</a>"
        for pair_id, value in items
    ]
    return f'<div class="strip">{"".join(cells)}</div>'


def _number(value, pattern: str = "{:.4g}") -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return '<td data-v="">–</td>'
    return f'<td data-v="{float(value):.6g}">{pattern.format(float(value))}</td>'


def _why_none(output) -> str | None:
    if output.key:
        return None
    return f"{output.status}: {output.error}" if output.error else output.status
