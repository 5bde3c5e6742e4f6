"""Published numbers beside ours: values a user typed in from elsewhere (a paper's table), each with its source and
the protocol version of its metric. They are shown in their own rows, under their own heading, in tables.md,
tables.tex and report.html, and listed in published.csv; they never enter our means, intervals, win rates or
differences (tables.py never sees them). A value whose protocol version differs from the one our metric computes is
named in a warning: the two are not comparable.

A row is any object with `method, dataset, metric, value, source, protocol, ci, n` (pipeline.bench.spec.Published).
"""

from __future__ import annotations

import io
from html import escape

from evaluation.registry import describe
from evaluation.report import tables as T
from evaluation.weights import MetricUnavailable

HEADING = "Published numbers (typed in from their sources; not measured here, not in our statistics)"


def protocol_warnings(rows) -> list[str]:
    """One line per published value whose metric's protocol version differs from ours (or is unknown here)."""
    found = []
    for row in rows:
        try:
            ours = describe(row.metric).version
        except MetricUnavailable:
            found.append(
                f"published {row.metric} of {row.method} ({row.source}): no metric {row.metric!r} is computed here, "
                f"so nothing of ours compares with it"
            )
            continue
        if row.protocol is None:
            found.append(
                f"published {row.metric} of {row.method} ({row.source}) does not say its protocol version: check it "
                f"follows ours (version {ours}) before comparing"
            )
        elif str(row.protocol) != str(ours):
            found.append(
                f"published {row.metric} of {row.method} ({row.source}) follows protocol version {row.protocol}, "
                f"ours computes version {ours}: not comparable"
            )
    return found


def _grouped(rows, metrics: list[str]) -> tuple[list[str], list[tuple[str, str, dict]]]:
    """The metric columns (ours first, then any only published) and one row per (method, source)."""
    columns = list(metrics) + [m for m in dict.fromkeys(r.metric for r in rows) if m not in metrics]
    grouped: dict[tuple[str, str], dict] = {}
    for row in rows:
        grouped.setdefault((row.method, row.source), {})[row.metric] = row
    return columns, [(method, source, cells) for (method, source), cells in grouped.items()]


def _value(row) -> str:
    if row is None:
        return "–"
    text = T.fmt(row.value)
    if row.ci:
        text += f" [{T.fmt(row.ci[0])}, {T.fmt(row.ci[1])}]"
    if row.n:
        text += f" (n={row.n})"
    return text


def _protocols(cells: dict) -> str:
    return ", ".join(f"{m} v{r.protocol}" if r.protocol is not None else f"{m} v?" for m, r in cells.items())


def _header(metric: str) -> str:
    try:
        return T.header(metric)
    except MetricUnavailable:
        return metric


def markdown(rows, metrics: list[str]) -> str:
    if not rows:
        return ""
    columns, grouped = _grouped(rows, metrics)
    head = ["published method", *map(_header, columns), "source", "protocol"]
    out = ["", f"## {HEADING}", "", T._md_row(head), T._md_row(["---"] * len(head))]
    for method, source, cells in grouped:
        values = [_value(cells.get(m)) for m in columns]
        out.append(T._md_row([f"{method} (published)", *values, source, _protocols(cells)]))
    return "\n".join(out) + "\n"


def latex(rows, metrics: list[str]) -> str:
    if not rows:
        return ""
    columns, grouped = _grouped(rows, metrics)
    out = [
        "",
        f"% {HEADING}",
        "\\begin{tabular}{l" + "c" * len(columns) + "l}",
        "\\toprule",
        " & ".join(["Published", *(T._tex(_header(m)) for m in columns), "Source"]) + " \\\\",
        "\\midrule",
    ]
    for method, source, cells in grouped:
        values = [T._tex(_value(cells.get(m))) for m in columns]
        out.append(" & ".join([T._tex(f"{method} (published)"), *values, T._tex(source)]) + " \\\\")
    out += ["\\bottomrule", "\\end{tabular}"]
    return "\n".join(out) + "\n"


def html(rows, metrics: list[str]) -> str:
    if not rows:
        return ""
    columns, grouped = _grouped(rows, metrics)
    head = ["published method", *map(_header, columns), "source", "protocol"]
    body = "".join(
        '<tr class="published"><td>'
        + escape(f"{method} (published)")
        + "</td>"
        + "".join(f"<td>{escape(_value(cells.get(m)))}</td>" for m in columns)
        + f"<td>{escape(source)}</td><td>{escape(_protocols(cells))}</td></tr>"
        for method, source, cells in grouped
    )
    thead = "".join(f"<th>{escape(h)}</th>" for h in head)
    return (
        f'<h3>{escape(HEADING)}</h3><p class="note">Typed in from the sources named; shown for reference only, '
        f"never part of the means, intervals or win rates above.</p>"
        f"<table><thead><tr>{thead}</tr></thead><tbody>{body}</tbody></table>"
    )


def csv(rows) -> str:
    import pandas as pd

    frame = pd.DataFrame(
        [
            {
                "method": r.method,
                "dataset": r.dataset,
                "metric": r.metric,
                "value": r.value,
                "ci_low": r.ci[0] if r.ci else None,
                "ci_high": r.ci[1] if r.ci else None,
                "n": r.n,
                "protocol": r.protocol,
                "source": r.source,
                "kind": "published (not measured here)",
            }
            for r in rows
        ]
    )
    buffer = io.StringIO()
    frame.map(T._spreadsheet_safe).to_csv(buffer, index=False, lineterminator="\r\n")
    return buffer.getvalue()
