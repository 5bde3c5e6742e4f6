"""Tables equal hand-computed values and count failures; the report folder is complete, self-contained and renders
in a real headless browser when one is installed."""

from __future__ import annotations

import base64
import io
import json
import os
import re
import shutil
import subprocess
import xml.etree.ElementTree as ET
from html.parser import HTMLParser

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from conftest import TINY_BACKBONE as TINY
from conftest import save_image
from evaluation.evaluate import evaluate_run
from evaluation.models import EvalSettings
from evaluation.report import tables as T
from evaluation.report.build import build_report
from pipeline.cli.main import main
from pipeline.runs.importer import import_outputs
from pipeline.runs.run_folder import RunFolderError as RunError

NAN = float("nan")


def fixture_frame() -> pd.DataFrame:
    """Two methods on four pairs; method a failed on p3."""
    rows = []
    a = {"selfsim": [0.1, 0.2, 0.3, NAN], "dino_i": [0.9, 0.8, 0.7, NAN]}
    b = {"selfsim": [0.2, 0.1, 0.4, 0.5], "dino_i": [0.5, 0.9, 0.7, 0.6]}
    for method, values in (("a", a), ("b", b)):
        for index in range(4):
            failed = method == "a" and index == 3
            rows.append(
                {
                    "method": method,
                    "pair_id": f"p{index}",
                    "domain": ["cat", "dog"][index % 2],
                    "status": "failed" if failed else "done",
                    "selfsim": values["selfsim"][index],
                    "dino_i": values["dino_i"][index],
                    "selfsim__model": f"{TINY}@random",
                    "dino_i__model": "dino_vits16@sha256:0123",
                    "train_seconds": 10.0 if method == "b" else None,
                }
            )
    return pd.DataFrame(rows)


def test_tables_equal_hand_computed_means_with_a_bootstrap_ci_around_them():
    tables = T.build_tables(fixture_frame(), reference="a", group_by=["domain"], pairs="all")
    assert tables.metrics == ["selfsim", "dino_i"]
    overall = tables.groups[0]
    a, b = overall.rows
    assert (a.n_pairs, a.n_evaluated, a.n_failed) == (4, 3, 1) and (b.n_evaluated, b.n_failed) == (4, 0)
    for row, expected in ((a, {"selfsim": 0.2, "dino_i": 0.8}), (b, {"selfsim": 0.3, "dino_i": 0.675})):
        for metric, mean in expected.items():
            cell = row.cells[metric]
            assert cell.mean == pytest.approx(mean)
            assert cell.low <= mean <= cell.high and cell.low < cell.high
    assert b.train_seconds == 10.0 and a.train_seconds is None
    assert a.random_metrics == ["selfsim"]  # labelled: computed with random weights
    # win rates of b against a: a pair a failed on counts as a win for b; ties count half
    selfsim, dino = overall.win_rates["b"]["selfsim"], overall.win_rates["b"]["dino_i"]
    assert (selfsim.wins, selfsim.losses, selfsim.ties, selfsim.rate) == (2, 2, 0, 0.5)
    assert (dino.wins, dino.losses, dino.ties, dino.rate) == (2, 1, 1, 0.625)
    assert [g.title for g in tables.groups] == ["all pairs", "domain = cat", "domain = dog"]
    assert tables.groups[2].rows[0].cells["selfsim"].mean == pytest.approx(0.2)  # a on p1 (p3 failed)

    markdown = T.to_markdown(tables)
    assert (
        "| a | **0.200 [" in markdown and "| 3 | 1 |" in markdown and "selfsim ↓" in markdown and "dino_i ↑" in markdown
    )
    assert "50% (n=4)" in markdown and " †" in markdown
    csv = pd.read_csv(io.StringIO(T.to_csv(tables)))
    overall_csv = csv[csv["group"] == "all pairs"].set_index("method")
    assert overall_csv.loc["b", "dino_i_mean"] == pytest.approx(0.675) and overall_csv.loc["a", "n_failed"] == 1
    assert overall_csv.loc["b", "dino_i_win_rate"] == pytest.approx(0.625)
    assert overall_csv.loc["a", "dino_i_ci_low"] <= 0.8 <= overall_csv.loc["a", "dino_i_ci_high"]
    assert "dino_i was computed with different models" not in markdown
    mixed = fixture_frame()
    mixed.loc[mixed["method"] == "b", "dino_i__model"] = "dino_vits16@sha256:4567"
    assert "**Warning:** dino_i was computed with different models" in T.to_markdown(T.build_tables(mixed))
    assert "different pairs (3 of 4 in common)" in T.to_markdown(T.build_tables(mixed[mixed.index != 7], pairs="all"))
    latex = T.to_latex(tables)
    assert r"selfsim $\downarrow$" in latex and r"\textbf{0.200}\dag" in latex and r"\textbf{0.800}" in latex


def test_a_partial_run_reads_as_partial_and_methods_are_compared_on_common_pairs():
    """After `splice run --only p0,p1`, 'a' has 2 pairs done and 3 pending; 'b' has all 5, one failed. By default
    means, win rates and differences are over the pairs both have; the pending pairs are neither failures nor losses."""
    rng = np.random.default_rng(0)
    b_values = rng.uniform(0.2, 0.4, 5)
    a_values = b_values[:3] - 0.1 + rng.normal(0, 0.005, 3)  # a is better (lower) by 0.1 on every pair it has
    rows = []
    for index in range(5):
        rows.append(
            {
                "method": "a",
                "pair_id": f"p{index}",
                "status": "done" if index < 3 else "pending",
                "selfsim": a_values[index] if index < 3 else NAN,
            }
        )
        failed = index == 1
        rows.append(
            {
                "method": "b",
                "pair_id": f"p{index}",
                "status": "failed" if failed else "done",
                "selfsim": NAN if failed else b_values[index],
            }
        )
    frame = pd.DataFrame(rows)
    tables = T.build_tables(frame, metrics=["selfsim"], reference="b")
    group = tables.groups[0]
    a, b = group.rows
    assert (a.n_evaluated, a.n_failed, a.n_pending) == (3, 0, 2) and (b.n_evaluated, b.n_failed, b.n_pending) == (
        4,
        1,
        0,
    )
    common = [0, 2]  # a has p0..p2, b failed on p1
    assert group.common == 2 and a.cells["selfsim"].n == 2 and b.cells["selfsim"].n == 2
    assert a.cells["selfsim"].mean == pytest.approx(a_values[common].mean())
    assert b.cells["selfsim"].mean == pytest.approx(b_values[common].mean())
    assert group.lacking == {
        "a": {"pending": 2, "failed": 0, "missing": 0},
        "b": {"pending": 0, "failed": 1, "missing": 0},
    }
    rate = group.win_rates["a"]["selfsim"]
    assert (rate.wins, rate.losses, rate.n) == (2, 0, 2)
    delta = group.differences["a"]["selfsim"]
    assert delta.n == 2 and delta.mean == pytest.approx((a_values[common] - b_values[common]).mean())
    assert delta.low <= delta.mean <= delta.high < 0  # a paired interval: a is better on every pair
    markdown = T.to_markdown(tables)
    assert (
        "over the 2 pair(s) every method has" in markdown and "a lacks 2 (2 pending); b lacks 1 (1 failed)" in markdown
    )
    assert "| 3 | 0 | 2 |" in markdown and "Difference to **b**" in markdown

    # --pairs all: each method on its own pairs; a pair never run is not a loss, a failed one is
    everything = T.build_tables(frame, metrics=["selfsim"], reference="b", pairs="all").groups[0]
    assert everything.rows[0].cells["selfsim"].n == 3 and everything.rows[1].cells["selfsim"].n == 4
    rate = everything.win_rates["a"]["selfsim"]
    assert (rate.wins, rate.losses, rate.n) == (3, 0, 3)  # p0, p2 better; p1: b failed; p3, p4 pending: not counted
    csv = pd.read_csv(io.StringIO(T.to_csv(tables))).set_index("method")
    assert csv.loc["a", "n_pending"] == 2 and csv.loc["a", "selfsim_diff_n"] == 2
    with pytest.raises(ValueError, match="--pairs"):
        T.build_tables(frame, pairs="some")


def test_bootstrap_ci():
    values = np.random.default_rng(0).normal(1.0, 0.5, 200)
    low, high = T.bootstrap_ci(values, seed=1)
    assert low < values.mean() < high and (low, high) == T.bootstrap_ci(values, seed=1)
    assert high - low == pytest.approx(2 * 1.96 * values.std() / np.sqrt(200), rel=0.2)
    assert T.bootstrap_ci(np.array([0.3])) == (0.3, 0.3)


def test_unknown_reference_or_group_is_an_error():
    with pytest.raises(ValueError, match="not one of the methods: a, b"):
        T.build_tables(fixture_frame(), reference="c")
    with pytest.raises(ValueError, match="--group-by split"):
        T.build_tables(fixture_frame(), group_by=["split"])


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    """Three evaluated runs (two imported methods and one 'trained' with losses and cost) and their report."""
    root = tmp_path_factory.mktemp("report")
    rows = []
    for index in range(3):
        save_image(root / "in" / f"p{index}_s.png", 2 * index)
        save_image(root / "in" / f"p{index}_a.png", 2 * index + 1, (36, 44))
        rows.append(
            {
                "pair_id": f"p{index}",
                "structure_uri": f"in/p{index}_s.png",
                "appearance_uri": f"in/p{index}_a.png",
                "domain": ["cat", "dog", "cat"][index],
            }
        )
    pd.DataFrame(rows).to_parquet(root / "m.parquet")
    runs = []
    for method, plan in (
        ("strotss", {"p0": "s", "p1": "a"}),
        ("wct2", {"p0": 9, "p1": "s", "p2": "s"}),
        ("splice", {"p0": "s", "p1": 8, "p2": 7}),
    ):
        outputs = root / f"{method}_out"
        outputs.mkdir()
        for pair_id, what in plan.items():
            if isinstance(what, int):
                save_image(outputs / f"{pair_id}.png", what)
            else:
                shutil.copy(root / "in" / f"{pair_id}_{what}.png", outputs / f"{pair_id}.png")
        import_outputs(method, str(outputs), str(root / "m.parquet"), str(root / method))
        runs.append(str(root / method))
    for pair_id in ("p0", "p1", "p2"):  # make 'splice' look trained: loss curves, and cost in results.parquet
        pair = root / "splice" / "pairs" / pair_id
        steps = np.arange(0, 50, 10)
        pd.DataFrame(
            {
                "step": steps,
                "total": np.exp(-steps / 20) + 0.1,
                "appearance": np.exp(-steps / 10),
                "structure": 0.05 + 0 * steps,
                "identity": 0.02 + 0 * steps,
            }
        ).to_parquet(pair / "losses.parquet")
    results = pd.read_parquet(root / "splice" / "results.parquet")
    results = results.assign(seconds=30.0, device="NVIDIA H100", peak_memory_bytes=float(2 * 2**30))
    results.to_parquet(root / "splice" / "results.parquet", index=False)
    settings = EvalSettings(metrics=("selfsim", "dino_i"), metric_backbone=TINY)
    for run in runs:
        evaluate_run(run, settings, device="cpu", progress=False)
    out = root / "report"
    assert main(["report", *runs, "-o", str(out), "--reference", "splice", "--group-by", "domain"]) == 0
    return out


class Page(HTMLParser):
    """Every tag's attributes, the <img> keys, the links, and the JSON blocks of a report page."""

    def __init__(self, html: str):
        super().__init__()
        self.tags, self.keys, self.links, self.json, self._block = [], [], [], {}, None
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.append((tag, attrs))
        if tag == "img" and "data-key" in attrs:
            self.keys.append(attrs["data-key"])
        if tag == "a" and "href" in attrs:
            self.links.append(attrs["href"])
        if tag == "script" and attrs.get("type") == "application/json":
            self._block = attrs["id"]

    def handle_data(self, data):
        if self._block:
            self.json[self._block] = json.loads(data)
            self._block = None


def decode_data_uri(uri: str) -> Image.Image:
    assert uri.startswith("data:image/jpeg;base64,"), uri[:40]
    image = Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1])))
    image.load()
    return image


def test_report_is_one_self_contained_file(report):
    for name in ("tables.md", "tables.csv", "tables.tex", "report.html"):
        assert (report / name).is_file()
    assert sorted(p.name for p in report.iterdir()) == ["report.html", "tables.csv", "tables.md", "tables.tex"]
    markdown = (report / "tables.md").read_text()
    assert all(f"| {method} |" in markdown for method in ("strotss", "wct2", "splice"))
    csv = pd.read_csv(report / "tables.csv")
    overall = csv[csv["group"] == "all pairs"].set_index("method")
    assert overall.loc["strotss", "n_failed"] == 1 and overall.loc["strotss", "n_evaluated"] == 2
    assert (
        overall.loc["splice", "train_seconds_mean"] == 30.0 and overall.loc["splice", "train_device"] == "NVIDIA H100"
    )
    assert overall.loc["strotss", "selfsim_win_n"] == 2  # against splice, on the 2 pairs every method has
    assert "strotss lacks 1 (1 missing)" in markdown and "| 2 | 1 | 0 |" in markdown

    html = (report / "report.html").read_text()
    page = Page(html)
    # every image is embedded once, as a JPEG data URI of bounded size, and every <img> names one that exists:
    # 3 pairs x (structure + appearance) + the outputs that exist (2 + 3 + 3)
    views, full = page.json["images"], page.json["full"]
    assert len(views) == 14 and set(page.keys) <= set(views)
    assert decode_data_uri(views["p0s"]).size == (56, 40)  # small images: the view is the full resolution ...
    assert full == dict.fromkeys(views, "")  # ... and is not stored twice
    # nothing is fetched: no src at all in the page (the script fills them from the map), links are in-page or the
    # sibling table files
    assert not [a for tag, a in page.tags if "src" in a and tag != "img"] and not [
        a for t, a in page.tags if a.get("src")
    ]
    assert not re.search(r"(src|href)=[\"']?(https?:)?//", html)
    assert set(page.links) - {"tables.md", "tables.csv", "tables.tex"} <= {
        link for link in page.links if link.startswith("#")
    }
    for link in {link for link in page.links if link.startswith("#pair-")}:  # every pair link opens an existing view
        assert f'id="{link[1:]}"' in html

    # warnings at the top, each cause once with the runs it affects
    warnings = html[html.index('<ul class="warnings"') : html.index("</ul>", html.index('<ul class="warnings"'))]
    assert warnings.count("RANDOM weights") == 1 and all(
        f"{m} (selfsim, dino_i)" in warnings for m in ("strotss", "wct2", "splice")
    )
    assert "pairs without a value" in warnings and "strotss (1 missing)" in warnings
    assert html.index('class="warnings"') < html.index('id="tables"')

    # the per-pair table: one row per pair and method, sortable numbers in data-v, the failure's reason
    table = html[html.index('<table id="pairs-table"') : html.index("</table>", html.index('<table id="pairs-table"'))]
    assert table.count("<tr data-method=") == 9 and table.count('data-status="missing"') == 1
    assert "has no output for pair &#x27;p2&#x27;" in table
    # one view per pair with every method's output (or why there is none), its loss curve and cost
    for pair_id in ("p0", "p1", "p2"):
        view = html[html.index(f'<section class="pair" id="pair-{pair_id}">') :]
        view = view[: view.index("</section>")]
        assert view.count("<figure>") == 5 + 1  # structure, appearance, three methods, splice's loss curve
        assert "splice: losses of pair" in view and "NVIDIA H100" in view
    # worst and best per metric and method, and the trade-off figure
    assert html.count("<h3>selfsim ↓</h3>") == 1 and "<th>worst</th><th>best</th>" in html
    svgs = re.findall(r"<svg.*?</svg>", html, flags=re.S)
    assert len(svgs) == 1 + 2 + 1 + 3  # trade-off, two distributions, splice's loss chart, three per-pair loss charts
    for svg in svgs:
        ET.fromstring(svg)  # well-formed
    tradeoff = svgs[0]
    assert "selfsim ↓ (structure kept)" in tradeoff and "dino_i ↑ (appearance taken)" in tradeoff
    assert "splice: loss terms (median of 3 pairs" in html and "random weights" in html
    # loss axes: log ticks at round values, and a legend entry only for the terms that were logged
    chart = next(s for s in svgs if "loss terms" in s)
    ticks = re.findall(r'text-anchor="end">([^<]+)</text>', chart)
    assert ticks and all(re.fullmatch(r"(0\.0*[125]|[125]0*)", t) for t in ticks), ticks
    assert "median full_appearance" not in chart and "median identity" in chart
    # metric descriptions name the model the values were computed with
    assert "vit_tiny_patch16_224 (random weights)" in html and "DINO ViT-B/8" not in html
    assert "layout_miou</b> counts" in html


def test_external_assets_keep_images_beside_the_page(report, tmp_path):
    runs = [str(report.parent / m) for m in ("strotss", "wct2", "splice")]
    out = tmp_path / "external"
    build_report(runs, str(out), assets="external")
    page = Page((out / "report.html").read_text())
    views, full = page.json["images"], page.json["full"]
    assert len(views) == 14 and all((out / src).is_file() and src.startswith("assets/") for src in views.values())
    for link in full.values():  # full resolution: a relative link to the stored image itself
        assert not link.startswith("/") and (out / link).resolve().is_file()
    assert (out / full["p0o2"]).resolve() == (report.parent / "splice" / "pairs" / "p0" / "output.png").resolve()


def test_a_large_run_stays_under_its_size_budget(tmp_path, monkeypatch):
    """The budget mechanism at a small scale: 40 pairs x 4 methods (280 images) against budgets scaled down by
    1000/40 from the defaults; benchmarks/report_size.py measures 1000 x 4 against the full budget."""
    import evaluation.report.images as images
    from synthetic_runs import make_synthetic_runs

    scale = 40 / 1000
    monkeypatch.setattr(images, "VIEW_BUDGET", int(images.VIEW_BUDGET * scale))
    monkeypatch.setattr(images, "FULL_BUDGET", int(images.FULL_BUDGET * scale))
    runs = make_synthetic_runs(tmp_path, pairs=40, methods=4, size=224)
    out = tmp_path / "report"
    build_report(runs, str(out), n_boot=200)
    html = (out / "report.html").read_text()
    assert len(html.encode()) <= 60 * 2**20 * scale  # the stated budget, scaled
    page = Page(html)
    assert len(page.json["images"]) == 40 * 6 - 1  # one pair failed in the last method
    sides = {max(decode_data_uri(u).size) for u in page.json["images"].values()}
    assert max(sides) < 224  # smaller than stored, to fit
    assert 0 < len(page.json["full"]) < len(page.json["images"])  # full size for the first pairs only, and it says so
    assert "embedded for" in html and "--assets external" in html


def browser() -> str | None:
    return next((b for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None)


def headless(page, profile, fragment: str = "", *, console: bool = False) -> subprocess.CompletedProcess:
    """Load `page` in the headless browser, let its scripts run, and return the process: the DOM it ends with on
    stdout, and with `console` the page's console messages on stderr. The flags keep it off the network."""
    command = [
        browser(),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={profile}",
        *(("--enable-logging=stderr", "--v=0") if console else ()),
        "--virtual-time-budget=10000",
        "--dump-dom",
        page.as_uri() + fragment,
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=True)


def dump_dom(page, profile, fragment: str = "") -> str:
    return headless(page, profile, fragment).stdout


# Added to a copy of the page by the browser test: a Content-Security-Policy that lets the page load nothing but
# its own inline parts and data: images (anything else is blocked and counted), and a script that clicks a header
# of the per-pair table and types into its filter the way a reader would, recording what the table shows.
PROBE_HEAD = (
    '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; img-src data:; '
    "style-src 'unsafe-inline'; script-src 'unsafe-inline'\">"
    "<script>var violations = [];document.addEventListener('securitypolicyviolation', function (e) "
    "{ violations.push(e.blockedURI); document.documentElement.setAttribute('data-violations', violations.join(' ')); });"
    "</script>"
)
PROBE_BODY = """<script>
window.addEventListener('load', function () {
  var table = document.getElementById('pairs-table'), headers = table.tHead.rows[0].cells, column = -1;
  for (var i = 0; i < headers.length; i++) if (headers[i].textContent.indexOf('selfsim') === 0) column = i;
  var read = function () {
    return Array.prototype.filter.call(table.tBodies[0].rows, function (r) { return !r.hidden; })
      .map(function (r) { return r.cells[column].getAttribute('data-v'); }).join(',');
  };
  headers[column].click();
  document.body.setAttribute('data-ascending', read());
  headers[column].click();
  document.body.setAttribute('data-descending', read());
  var filter = document.getElementById('pairs-filter');
  filter.value = 'wct2 p1';
  filter.dispatchEvent(new Event('input'));
  document.body.setAttribute('data-filtered', String(Array.prototype.filter.call(table.tBodies[0].rows, function (r) { return !r.hidden; }).length));
});
</script>"""


@pytest.mark.skipif(browser() is None, reason="no headless browser installed (Debian: apt-get install -y chromium)")
def test_report_renders_in_a_headless_browser(report, tmp_path):
    html = (report / "report.html").read_text()
    probed = tmp_path / "report.html"
    probed.write_text(html.replace("<head>", "<head>" + PROBE_HEAD, 1).replace("</body>", PROBE_BODY + "</body>", 1))
    dom = dump_dom(probed, tmp_path / "profile", "#selfcheck")
    # every image of the page decodes, and those on the main page are shown
    assert 'data-selfcheck-decoded="14"' in dom and 'data-selfcheck-broken="0"' in dom
    loaded = int(re.search(r'data-images-loaded="(\d+)"', dom).group(1))
    assert loaded >= 14 and 'data-images-broken="0"' in dom
    assert 'data-violations="' not in dom  # nothing outside the page was requested

    # the per-pair table sorts on a header click (missing values last) and filters as one types
    def values(name):
        return [float(v) if v else None for v in re.search(f'{name}="([^"]*)"', dom).group(1).split(",")]

    ascending, descending = values("data-ascending"), values("data-descending")
    present = [v for v in ascending if v is not None]
    assert (
        len(ascending) == 9 and present == sorted(present) and ascending[len(present) :] == [None] * (9 - len(present))
    )
    assert [v for v in descending if v is not None] == sorted(present, reverse=True)
    assert 'data-filtered="1"' in dom
    assert dom.count("<svg") == 7 and "<table" in dom
    # external assets moved without their folder: the page says so
    external = tmp_path / "external"
    build_report([str(report.parent / m) for m in ("strotss", "wct2", "splice")], str(external), assets="external")
    moved = tmp_path / "moved"
    moved.mkdir()
    shutil.copy(external / "report.html", moved / "report.html")
    dom = dump_dom(moved / "report.html", tmp_path / "profile2")
    assert 'data-images-broken="0"' not in dom and "keep the assets/ folder" in dom


def test_report_of_an_unevaluated_run_says_what_to_do(tmp_path, report):
    run = report.parent / "strotss"
    copy = tmp_path / "copy"
    shutil.copytree(run, copy, ignore=shutil.ignore_patterns("eval"))
    with pytest.raises(RunError, match="has not been evaluated: run `splice evaluate"):
        build_report([str(copy)], str(tmp_path / "r"))
    with pytest.raises(RunError, match="--reference 'nope'"):
        build_report([str(run)], str(tmp_path / "r"), reference="nope")
    assert os.listdir(tmp_path) == ["copy"]  # nothing written on error


def test_worst_and_best_pairs_are_ranked_by_each_metrics_direction():
    from evaluation.report.pairs import Output, PairRecord, extremes

    values = {"p0": (0.1, 0.9), "p1": (0.4, 0.2), "p2": (0.3, 0.5), "p3": (0.2, None), "p4": (None, None)}
    records = []
    for pair_id, (selfsim, dino) in values.items():
        found = {k: v for k, v in (("selfsim", selfsim), ("dino_i", dino)) if v is not None}
        records.append(PairRecord(pair_id, {}, "s", "a", "ks", "ka", [Output("m", "done", None, found, {}, None)]))
    by_metric = {item.metric: item.rows[0] for item in extremes(records, ["m"], ["selfsim", "dino_i"], k=5)}
    method, worst, best = by_metric["selfsim"]  # lower is better; 4 values: 2 worst, 2 best, no pair in both
    assert method == "m" and worst == [("p1", 0.4), ("p2", 0.3)] and best == [("p0", 0.1), ("p3", 0.2)]
    _, worst, best = by_metric["dino_i"]  # higher is better; 3 values: one each
    assert worst == [("p1", 0.2)] and best == [("p0", 0.9)]
