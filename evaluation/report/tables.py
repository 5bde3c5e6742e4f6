"""The benchmark tables as text: Markdown (tables.md), CSV (tables.csv) and LaTeX (tables.tex), and the cell texts
the HTML report shares (html.py). The numbers are statistics.py's (`build_tables`: means, BCa intervals, counts,
win rates, differences); `build_tables` and `bootstrap_ci` are importable from here too.

Labels are written safely: on one line (control characters and line breaks become spaces), without HTML in
Markdown, with LaTeX's specials escaped, and a CSV cell that a spreadsheet would run as a formula starts with '.
"""

from __future__ import annotations

import io
import math
import re

import pandas as pd

from evaluation.registry import describe
from evaluation.report.statistics import Cell, GroupTable, MethodRow, Tables, WinRate, bootstrap_ci, build_tables

__all__ = [  # the text tables, the texts html.py shares, and statistics.py's entry points (tables.build_tables)
    "ARROWS",
    "COST_HEADERS",
    "DIFFERENCE_NOTE",
    "bootstrap_ci",
    "build_tables",
    "best_methods",
    "cell_text",
    "cost_texts",
    "counts_text",
    "coverage_text",
    "difference_text",
    "fmt",
    "header",
    "rate_text",
    "to_csv",
    "to_latex",
    "to_markdown",
    "win_rate_note",
]

ARROWS = {"lower": "↓", "higher": "↑"}
TEX_ARROWS = {"lower": r"$\downarrow$", "higher": r"$\uparrow$"}
WIN_RATE_NOTE = (
    "win rate: share of the pairs where the method is better than the reference; ties count half; a pair "
    "that one of the two failed on counts as a loss for it"
)
WIN_RATE_NOTE_COMMON = (
    "win rate: share of the pairs where the method is better than the reference, over the pairs every "
    "method has; ties count half"
)
DIFFERENCE_NOTE = (
    "difference: mean of (method - reference) over the pairs both have, with a 95% paired BCa bootstrap "
    "interval; an interval that excludes 0 is a difference the pairs support"
)


def fmt(value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.3f}" if 1e-3 <= abs(value) < 1e4 or value == 0 else f"{value:.3g}"


def best_methods(group: GroupTable, metric: str) -> set[str]:
    cells = {r.method: r.cells[metric] for r in group.rows if r.cells.get(metric) is not None}
    if len(cells) < 2:
        return set()
    pick = min if describe(metric).better == "lower" else max
    best = pick(c.mean for c in cells.values())
    return {m for m, c in cells.items() if c.mean == best}


def cell_text(row: MethodRow, metric: str) -> str:
    cell = row.cells.get(metric)
    counts = counts_text(row, metric)
    if cell is None:
        return "–" + (f" ({counts})" if counts else "")
    text = f"{fmt(cell.mean)} [{fmt(cell.low)}, {fmt(cell.high)}]"
    if counts:
        text += f" ({counts})"
    return text + (" †" if metric in row.random_metrics else "")


def counts_text(row: MethodRow, metric: str) -> str:
    """This metric's own n / failed / pending where they differ from the pairs' (e.g. another metric failed on pairs
    where this one has values), or ''."""
    cell, counts = row.cells.get(metric), row.counts.get(metric)
    n = cell.n if cell else 0
    parts = [f"n={n}"] if n != row.n_evaluated and cell else []
    if counts and (counts.failed, counts.pending) != (row.n_failed, row.n_pending):
        parts += [f"{counts.failed} failed", f"{counts.pending} pending"]
    return ", ".join(parts)


def coverage_text(tables: Tables, group: GroupTable) -> str | None:
    """'Means ... over the 2 pairs every method has; splice lacks 48 (48 pending), ...' ('common' mode only)."""
    if group.common is None:
        return None
    lacks = [
        f"{method} lacks {sum(n.values())} ({', '.join(f'{v} {k}' for k, v in n.items() if v)})"
        for method, n in group.lacking.items()
        if sum(n.values())
    ]
    text = (
        f"Means, intervals and win rates are over the {group.common} pair(s) every method has (--pairs common; "
        f"--pairs all uses each method's own pairs)"
    )
    return text + ("; " + "; ".join(lacks) if lacks else "; no method lacks a pair") + "."


def difference_text(cell: Cell | None) -> str:
    if cell is None:
        return "–"
    return f"{cell.mean:+.3g} [{cell.low:+.3g}, {cell.high:+.3g}] (n={cell.n})"


def win_rate_note(tables: Tables) -> str:
    return WIN_RATE_NOTE_COMMON if tables.pairs == "common" else WIN_RATE_NOTE


def cost_texts(row: MethodRow) -> list[str]:
    memory = f"{row.train_peak_memory_bytes / 2**30:.1f}" if row.train_peak_memory_bytes is not None else "–"
    seconds = f"{row.train_seconds:.0f}" if row.train_seconds is not None else "–"
    return [seconds, row.train_device or "–", memory]


COST_HEADERS = ["train s/pair", "device", "peak GiB"]


def header(metric: str) -> str:
    return f"{metric} {ARROWS[describe(metric).better]}"


def to_markdown(tables: Tables) -> str:
    over = "the pairs every method has" if tables.pairs == "common" else "each method's evaluated pairs"
    out = [
        "# Benchmark",
        "",
        f"Cells: mean [95% BCa bootstrap CI] over {over} (the metric's own n, failed and pending shown where they "
        "differ from the pairs'); ↓ lower is better, ↑ higher is better; best mean in bold; † computed with random weights (smoke "
        "test, not comparable). n pending: never run or not evaluated yet; n failed: failed, missing, damaged or error.",
        "",
    ]
    out += [f"**Warning:** {_md(text)}" for text in tables.warnings()] + ([""] if tables.warnings() else [])
    for group in tables.groups:
        out += [f"## {_md(group.title)}", ""]
        coverage = coverage_text(tables, group)
        out += [_md(coverage), ""] if coverage else []
        head = ["method", *map(header, tables.metrics), "n evaluated", "n failed", "n pending", *COST_HEADERS]
        out += [_md_row(head), _md_row(["---"] * len(head))]
        for row in group.rows:
            cells = [
                f"**{cell_text(row, m)}**" if row.method in best_methods(group, m) else cell_text(row, m)
                for m in tables.metrics
            ]
            out.append(
                _md_row(
                    [row.method, *cells, str(row.n_evaluated), str(row.n_failed), str(row.n_pending), *cost_texts(row)]
                )
            )
        if group.win_rates:
            out += ["", f"Win rate against **{_md(tables.reference)}** ({win_rate_note(tables)}):", ""]
            out += [_md_row(["method", *map(header, tables.metrics)]), _md_row(["---"] * (1 + len(tables.metrics)))]
            for method, rates in group.win_rates.items():
                out.append(_md_row([method, *(rate_text(rates[m]) for m in tables.metrics)]))
            out += ["", f"Difference to **{_md(tables.reference)}** ({DIFFERENCE_NOTE}):", ""]
            out += [_md_row(["method", *map(header, tables.metrics)]), _md_row(["---"] * (1 + len(tables.metrics)))]
            for method, deltas in group.differences.items():
                out.append(_md_row([method, *(difference_text(deltas.get(m)) for m in tables.metrics)]))
        out.append("")
    return "\n".join(out)


def rate_text(rate: WinRate) -> str:
    return f"{rate.rate:.0%} (n={rate.n})" if rate.n else "–"


def _md_row(cells: list[str]) -> str:
    return "| " + " | ".join(_md(c).replace("|", "\\|") for c in cells) + " |"


def _md(text: str) -> str:
    """`text` for Markdown: on one line, and no HTML (a Markdown viewer would render a label's tags)."""
    return _one_line(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def to_csv(tables: Tables) -> str:
    records = []
    for group in tables.groups:
        for row in group.rows:
            record = {
                "group": group.title,
                **{c: group.key.get(c, "(all)") for c in tables.group_by},
                "method": row.method,
                "n_pairs": row.n_pairs,
                "n_evaluated": row.n_evaluated,
                "n_failed": row.n_failed,
                "n_pending": row.n_pending,
                "pairs": tables.pairs,
                "n_common": group.common,
            }
            for metric in tables.metrics:
                cell = row.cells.get(metric)
                record.update(
                    {
                        f"{metric}_mean": cell and cell.mean,
                        f"{metric}_ci_low": cell and cell.low,
                        f"{metric}_ci_high": cell and cell.high,
                        f"{metric}_n": cell.n if cell else 0,
                        f"{metric}_n_failed": row.counts[metric].failed if metric in row.counts else None,
                        f"{metric}_n_pending": row.counts[metric].pending if metric in row.counts else None,
                        f"{metric}_better": describe(metric).better,
                    }
                )
                rate = group.win_rates.get(row.method, {}).get(metric)
                record.update(
                    {
                        f"{metric}_win_rate": rate.rate if rate and rate.n else None,
                        f"{metric}_win_n": rate.n if rate else None,
                    }
                )
                delta = group.differences.get(row.method, {}).get(metric)
                record.update(
                    {
                        f"{metric}_diff": delta and delta.mean,
                        f"{metric}_diff_ci_low": delta and delta.low,
                        f"{metric}_diff_ci_high": delta and delta.high,
                        f"{metric}_diff_n": delta.n if delta else None,
                    }
                )
            record.update(
                train_seconds_mean=row.train_seconds,
                train_device=row.train_device,
                train_peak_memory_bytes_max=row.train_peak_memory_bytes,
                random_weights=",".join(row.random_metrics),
            )
            records.append(record)
    buffer = io.StringIO()
    frame = pd.DataFrame(records)
    frame.columns = [_spreadsheet_safe(c) for c in frame.columns]
    safe = pd.DataFrame({c: frame[c].map(_spreadsheet_safe) for c in frame.columns})
    safe.to_csv(buffer, index=False, lineterminator="\r\n")  # RFC 4180: a cell holding a lone CR is quoted too
    return buffer.getvalue()


def to_latex(tables: Tables) -> str:
    out = [
        "% Benchmark tables (needs \\usepackage{booktabs}). Cells: mean [95% BCa bootstrap CI];",
        "% best mean in bold; \\dag: random weights (smoke test).",
        *(f"% WARNING: {_tex(t)}" for t in tables.warnings()),
    ]
    for group in tables.groups:
        columns = len(tables.metrics)
        coverage = coverage_text(tables, group)
        out += [
            "",
            f"% {_tex(group.title)}",
            *([f"% {_tex(coverage)}"] if coverage else []),
            "\\begin{tabular}{l" + "c" * columns + "rr}",
            "\\toprule",
            " & ".join(
                ["Method", *(f"{_tex(m)} {TEX_ARROWS[describe(m).better]}" for m in tables.metrics), "$n$", "failed"]
            )
            + " \\\\",
            "\\midrule",
        ]
        for row in group.rows:
            cells = []
            for metric in tables.metrics:
                cell = row.cells.get(metric)
                if cell is None:
                    cells.append("--")
                    continue
                mean = fmt(cell.mean)
                mean = f"\\textbf{{{mean}}}" if row.method in best_methods(group, metric) else mean
                dagger = "\\dag" if metric in row.random_metrics else ""
                cells.append(f"{mean}{dagger} {{\\scriptsize [{fmt(cell.low)}, {fmt(cell.high)}]}}")
            out.append(" & ".join([_tex(row.method), *cells, str(row.n_evaluated), str(row.n_failed)]) + " \\\\")
        out += ["\\bottomrule", "\\end{tabular}"]
        if group.win_rates:
            out += [
                f"% win rate against {_tex(str(tables.reference))} ({win_rate_note(tables)})",
                "\\begin{tabular}{l" + "c" * columns + "}",
                "\\toprule",
                " & ".join(["Method", *(f"{_tex(m)} {TEX_ARROWS[describe(m).better]}" for m in tables.metrics)])
                + " \\\\",
                "\\midrule",
            ]
            for method, rates in group.win_rates.items():
                out.append(" & ".join([_tex(method), *(_tex(rate_text(rates[m])) for m in tables.metrics)]) + " \\\\")
            out += ["\\bottomrule", "\\end{tabular}"]
    return "\n".join(out) + "\n"


TEX_ESCAPES = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
    "–": "--",
}


def _tex(text: str) -> str:
    """`text` as LaTeX source that prints it: special characters escaped, on one line."""
    return "".join(TEX_ESCAPES.get(char, char) for char in _one_line(text))


LINE_BREAKS = re.compile(r"[\x00-\x1f\x7f\x85\u2028\u2029]+")  # control characters, and every line break


def _one_line(text: str) -> str:
    """`text` without line breaks or control characters: a label can neither end a `%` comment of tables.tex nor
    start a new row of tables.md."""
    return LINE_BREAKS.sub(" ", str(text))


FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")  # what a spreadsheet reads as the start of a formula


def _spreadsheet_safe(value):
    """A text cell that a spreadsheet shows as text, never runs as a formula (OWASP "CSV injection": a leading
    ' on cells starting with = + - @ tab or CR); numbers stay numbers."""
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value
