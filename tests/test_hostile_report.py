"""Hostile labels and paths through every file `splice report` writes: each file still parses as its format, no
label becomes LaTeX, a spreadsheet formula, Markdown HTML or a live script, and report.html runs all its own script
in a real headless browser without a console error (issue 19, cases 1, 2 and 5)."""

from __future__ import annotations

import csv
import json
import re
import shutil
from html.parser import HTMLParser
from pathlib import Path

import pandas as pd
import pytest

from evaluation.report.build import build_report
from synthetic_runs import make_synthetic_runs
from test_report import browser, headless

HOSTILE = [
    "cat\n\\input{/etc/hostname}",  # a line break, then a live \input if it ends a % comment
    "=cmd|' /C calc'!A0",  # a spreadsheet formula
    "+1+cmd",
    "-2+cmd",
    "@SUM(1)",
    "\tTAB\r=CR",
    "<!--<script>",  # keeps a <script> block open in HTML's escaped state
    "</script><script>document.title='pwned'</script>",
    '"><img src=x onerror="document.title=\'pwned\'">',
    "\u202egnp.exe\u200f\u200e",  # right-to-left override and marks
    "x" * 5000,
]
BROWSER = browser()
ALLOWED_TEX = {
    "begin",
    "end",
    "toprule",
    "midrule",
    "bottomrule",
    "textbf",
    "scriptsize",
    "dag",
    "downarrow",
    "uparrow",
}
ALLOWED_TEX |= {"textbackslash", "textasciitilde", "textasciicircum"}


@pytest.fixture(scope="module")
def hostile_report(tmp_path_factory):
    """Two evaluated runs whose labels (domain, dataset, split) and method names are hostile, whose input images lie
    under a folder named `in<!--<script>`, and their report (grouped by every label)."""
    root = tmp_path_factory.mktemp("hostile")
    runs = make_synthetic_runs(root, pairs=len(HOSTILE), methods=2, size=32)
    hostile_inputs = root / "in<!--<script>"
    shutil.copytree(root / "inputs", hostile_inputs)
    for number, run in enumerate(runs):
        manifest = pd.read_parquet(Path(run) / "manifest.parquet")
        count = len(manifest)
        manifest["domain"] = HOSTILE
        manifest["dataset"] = [HOSTILE[(i + 3) % count] for i in range(count)]
        manifest["split"] = [HOSTILE[(i + 7) % count] for i in range(count)]
        for column in ("structure_uri", "appearance_uri"):
            manifest[column] = manifest[column].str.replace(str(root / "inputs"), str(hostile_inputs), regex=False)
        manifest.to_parquet(Path(run) / "manifest.parquet", index=False)
        method = f"{HOSTILE[number + 1]}<!--<script>{number}"
        (Path(run) / "run.json").write_text(json.dumps({"method": method}))
        metrics = pd.read_parquet(Path(run) / "eval" / "metrics.parquet").assign(method=method)
        metrics.to_parquet(Path(run) / "eval" / "metrics.parquet", index=False)
    out = root / "report"
    build_report(runs, str(out), group_by=["domain", "dataset", "split"], n_boot=50, thumbnails=4, extremes=2)
    return out


def test_tables_tex_has_no_label_as_latex(hostile_report):
    tex = (hostile_report / "tables.tex").read_text()
    for line in tex.splitlines():
        code = re.split(r"(?<!\\)%", line, maxsplit=1)[0]  # what TeX reads of the line: up to an unescaped %
        commands = set(re.findall(r"\\([A-Za-z]+)", code))
        assert commands <= ALLOWED_TEX, f"a label became LaTeX: {sorted(commands - ALLOWED_TEX)} in {line[:200]!r}"
        if line.startswith("%"):
            continue
        opens, closes = (len(re.findall(r"(?<!\\)" + re.escape(b), code)) for b in "{}")
        assert opens == closes, f"unbalanced braces: {line[:200]!r}"
    assert tex.count(r"\begin{tabular}") == tex.count(r"\end{tabular}") > 1
    assert r"\textbackslash{}input\{/etc/hostname\}" in tex  # the label is there, as text


def test_tables_csv_cells_are_never_formulas(hostile_report):
    with open(hostile_report / "tables.csv", newline="", encoding="utf-8") as file:  # \r in a quoted cell stays
        rows = list(csv.reader(file))
    header, body = rows[0], rows[1:]
    assert body and all(len(row) == len(header) for row in body)
    for cell in (c for row in rows for c in row):
        if cell[:1] in ("=", "+", "-", "@", "\t", "\r"):
            float(cell)  # only a number may start so (e.g. a negative mean)
    domains = {row[header.index("domain")] for row in body}
    assert "'=cmd|' /C calc'!A0" in domains and "'@SUM(1)" in domains and "cat\n\\input{/etc/hostname}" in domains


def test_tables_md_keeps_one_row_per_line_and_no_html(hostile_report):
    markdown = (hostile_report / "tables.md").read_text()
    assert "<" not in markdown.replace("&lt;", "")  # no tag a Markdown viewer would render
    table_lines = [line for line in markdown.splitlines() if line.startswith("|")]
    widths = {len(re.findall(r"(?<!\\)\|", line)) for line in table_lines}
    assert table_lines and all(line.endswith("|") for line in table_lines)
    assert len(widths) <= 3  # the main table, and the win-rate / difference tables (fewer columns): no broken row
    assert not any(line.startswith("\\input") for line in markdown.splitlines())


class Blocks(HTMLParser):
    """The <script> elements of a page as an HTML parser sees them, with their content."""

    def __init__(self, html: str):
        super().__init__(convert_charrefs=True)
        self.scripts, self._open = [], None
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        if tag == "script":
            self._open = dict(attrs)
            self.scripts.append([self._open, ""])

    def handle_data(self, data):
        if self._open is not None:
            self.scripts[-1][1] += data

    def handle_endtag(self, tag):
        if tag == "script":
            self._open = None


def test_report_html_json_blocks_hold_no_markup(hostile_report):
    html = (hostile_report / "report.html").read_text()
    blocks = Blocks(html).scripts
    data = [content for attrs, content in blocks if attrs.get("type") == "application/json"]
    assert data and len(blocks) == len(data) + 1  # the JSON blocks and the page's own script, nothing injected
    for content in data:
        assert not set("<>&") & set(content)  # \u003c etc.: no <!--, no </script>, whatever the data
        json.loads(content)
    assert "onerror" not in "".join(t for t in re.findall(r"<img[^>]*>", html) if 'onerror="' in t)


PROBE = (
    "<script>window.__errors = [];window.addEventListener('error', function (e) { window.__errors.push(String("
    "e.message)); document.documentElement.setAttribute('data-errors', window.__errors.join(' | ')); });</script>"
)


@pytest.mark.skipif(BROWSER is None, reason="no headless browser installed (Debian: apt-get install -y chromium)")
def test_report_html_runs_its_scripts_in_a_headless_browser(hostile_report, tmp_path):
    html = (hostile_report / "report.html").read_text()
    probed = hostile_report / "probed.html"
    probed.write_text(html.replace("<head>", "<head>" + PROBE, 1))
    done = headless(probed, tmp_path / "profile", console=True)
    dom, console = done.stdout, done.stderr
    errors = re.search(r'data-errors="([^"]*)"', dom)
    assert errors is None, errors.group(1)
    assert not re.search(r"Uncaught|SyntaxError|CONSOLE\(\d+\)\].*rror", console), console[-2000:]
    assert re.search(r'data-images-loaded="\d+"', dom)  # the page's own script ran to its end
    assert 'data-images-broken="0"' in dom
    assert "<title>splice report</title>" in dom  # no injected script changed it
