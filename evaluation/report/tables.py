"""Benchmark tables from per-pair metrics: mean and 95% BCa bootstrap CI per method and metric, counts, cost, win
rates and a paired bootstrap interval of each method's difference to a reference method; rendered as Markdown, CSV
and LaTeX.

Input is one frame of metrics.parquet rows from several runs (columns method, pair_id, status, dataset, domain (joined
from the runs' manifests), one column per metric, `<metric>__model`, train_seconds, train_device,
train_peak_memory_bytes). Statuses are the run folder's one vocabulary (run_folder.PairStatus; older words are
mapped). Every row is counted, never silently dropped: 'done' in "n evaluated"; 'pending' (never run, not finished or
not evaluated yet) in "n pending"; anything else (failed, missing, damaged, error) in "n failed". A partial run
therefore reads as partial, not as broken.

Which pairs a comparison is over (`pairs`):
- 'common' (default): per metric, the pairs every method has a value for, so all methods are compared on the same
  pairs; each group says how many pairs each method lacks (pending / failed);
- 'all': each method's mean over its own pairs; in win rates a pair one method failed on (not a pending one)
  counts as a loss for it.
"""

from __future__ import annotations

import io
import math
import re
import warnings
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from evaluation.registry import describe, metric_columns
from pipeline.runs.run_folder import PairStatus, status_words

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
PAIRS_MODES = ("common", "all")
DONE = PairStatus.DONE.value  # evaluated: its metrics are computed
PENDING_STATUSES = (PairStatus.PENDING.value,)  # never run, not finished or not evaluated yet: not a failure


def metric_done(frame: pd.DataFrame, metric: str) -> pd.Series:
    """Which pairs have a value of `metric` that counts: its own status done (metrics.parquet records one per metric),
    or, in an older metrics.parquet without it, the pair's status done. A pair where another metric failed keeps
    this one's value."""
    if metric not in frame:
        return pd.Series(False, index=frame.index)
    own = frame.get(f"{metric}__status")
    done = frame["status"] == DONE
    if own is not None:
        done = own.eq(DONE).where(own.notna(), done)
    return done.astype(bool) & frame[metric].notna()


def metric_counts(frame: pd.DataFrame, metric: str) -> Counts:
    """n evaluated / failed / pending of one metric: pending where the pair is, or where this metric was never
    computed on an evaluated pair; failed where the pair failed or this metric failed on it."""
    done = metric_done(frame, metric)
    own = frame.get(f"{metric}__status")
    never = pd.Series(False, index=frame.index) if own is None else own.isna() & frame["status"].eq(DONE)
    if metric not in frame:
        never = frame["status"].eq(DONE)
    pending = frame["status"].isin(PENDING_STATUSES) | (never & ~done)
    return Counts(int(done.sum()), int((~done & ~pending).sum()), int(pending.sum()))


@dataclass(frozen=True)
class Cell:
    mean: float
    low: float  # 95% BCa bootstrap interval of the mean
    high: float
    n: int


@dataclass(frozen=True)
class WinRate:
    wins: int
    losses: int
    ties: int

    @property
    def n(self) -> int:
        return self.wins + self.losses + self.ties

    @property
    def rate(self) -> float:
        return (self.wins + 0.5 * self.ties) / self.n if self.n else math.nan


@dataclass
class MethodRow:
    method: str
    cells: dict[str, Cell | None]
    n_pairs: int
    n_evaluated: int  # status ok
    n_failed: int  # failed, missing or error
    train_seconds: float | None  # mean over pairs that recorded it
    train_device: str | None  # the most common
    train_peak_memory_bytes: float | None  # the largest
    random_metrics: list[str] = field(default_factory=list)  # metrics computed with random weights (smoke tests)
    n_pending: int = 0  # never run ('pending') or not evaluated yet
    counts: dict[str, Counts] = field(default_factory=dict)  # metric -> its own n evaluated / failed / pending


@dataclass(frozen=True)
class Counts:
    """One metric's count over a method's pairs: with a value, failed (the pair, or this metric on it), pending."""

    evaluated: int
    failed: int
    pending: int


@dataclass
class GroupTable:
    key: dict[str, str]  # e.g. {"domain": "cat"}; {} for all pairs
    rows: list[MethodRow]
    win_rates: dict[str, dict[str, WinRate]]  # method -> metric -> against the reference
    differences: dict[str, dict[str, Cell | None]] = field(default_factory=dict)  # method -> metric -> vs reference
    common: int | None = None  # pairs every method has (status ok); None in 'all' mode
    lacking: dict[str, dict[str, int]] = field(
        default_factory=dict
    )  # method -> {'pending': n, 'failed': n, 'missing': n}

    @property
    def title(self) -> str:
        return ", ".join(f"{k} = {v}" for k, v in self.key.items()) or "all pairs"


@dataclass
class Tables:
    metrics: list[str]
    groups: list[GroupTable]
    reference: str | None
    group_by: list[str]
    mixed_models: dict[str, list[str]] = field(default_factory=dict)  # metric -> the different models behind it
    pairs_differ: tuple[int, int] | None = None  # (pairs common to all methods, pairs in all) where they differ
    pairs: str = "all"  # 'common' or 'all': which pairs means and win rates are over
    notes: list[str] = field(default_factory=list)  # warnings about the runs themselves (e.g. random weights)

    def warnings(self) -> list[str]:
        texts = list(self.notes)
        if self.pairs_differ:
            texts.append(
                f"the methods were run on different pairs ({self.pairs_differ[0]} of {self.pairs_differ[1]} in "
                f"common): their means are over different pairs"
            )
        return texts + [
            f"{metric} was computed with different models across the runs ({', '.join(ids)}): its values are not "
            f"comparable; re-run `splice evaluate` with the same --metric-backbone"
            for metric, ids in self.mixed_models.items()
        ]


def build_tables(
    frame: pd.DataFrame,
    metrics: list[str] | None = None,
    group_by: list[str] | None = None,
    reference: str | None = None,
    n_boot: int = 2000,
    seed: int = 0,
    pairs: str = "common",
) -> Tables:
    if pairs not in PAIRS_MODES:
        raise ValueError(f"--pairs {pairs!r}: use common (the pairs every method has) or all")
    frame = frame.assign(status=status_words(frame["status"]))
    methods = list(dict.fromkeys(frame["method"]))
    metrics = [m for m in metrics if m in frame.columns] if metrics else metric_columns(frame.columns)
    group_by = list(group_by or [])
    for column in group_by:
        if column not in frame.columns:
            raise ValueError(f"--group-by {column}: no such column; use dataset, domain or split")
    if reference is not None and reference not in methods:
        raise ValueError(f"--reference {reference!r} is not one of the methods: {', '.join(methods)}")
    groups = [_group({}, frame, methods, metrics, reference, n_boot, seed, pairs)]
    if group_by:
        keyed = frame.assign(**{c: frame[c].fillna("(none)").astype(str) for c in group_by})
        for values, part in keyed.groupby(group_by, sort=True):
            values = values if isinstance(values, tuple) else (values,)
            groups.append(_group(dict(zip(group_by, values)), part, methods, metrics, reference, n_boot, seed, pairs))
    mixed = {}
    for metric in metrics:
        column = f"{metric}__model"
        ids = sorted(frame[column].dropna().astype(str).unique()) if column in frame.columns else []
        if len(ids) > 1:
            mixed[metric] = ids
    pair_sets = [set(frame.loc[frame["method"] == m, "pair_id"]) for m in methods]
    common, union = set.intersection(*pair_sets), set.union(*pair_sets)
    differ = None if common == union or pairs == "common" else (len(common), len(union))
    return Tables(metrics, groups, reference, group_by, mixed, differ, pairs)


def bootstrap_ci(values: np.ndarray, n_boot: int = 2000, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """BCa bootstrap interval of the mean (scipy.stats.bootstrap); a paired interval when `values` are per-pair
    differences. Falls back to the percentile interval where BCa is undefined (e.g. very few distinct values)."""
    from scipy import stats

    values = np.asarray(values, dtype=np.float64)
    if len(values) < 2 or np.ptp(values) == 0:
        return (float(values.mean()),) * 2 if len(values) else (math.nan, math.nan)
    interval = None
    for method in ("BCa", "percentile"):
        with warnings.catch_warnings():  # scipy warns (and returns nan) where BCa is undefined: fall back quietly
            warnings.simplefilter("ignore")
            result = stats.bootstrap(
                (values,),
                np.mean,
                n_resamples=n_boot,
                confidence_level=level,
                method=method,
                vectorized=True,
                batch=256,
                random_state=np.random.default_rng(seed),
            )
        interval = result.confidence_interval
        if np.isfinite(interval.low) and np.isfinite(interval.high):
            break
    return float(interval.low), float(interval.high)


def _group(key, frame, methods, metrics, reference, n_boot, seed, pairs) -> GroupTable:
    by_method = {
        method: frame[frame["method"] == method].drop_duplicates("pair_id").set_index("pair_id") for method in methods
    }
    # per metric, the pairs every method has a value for (only these count in 'common' mode)
    shared: dict[str, set | None] = {m: None for m in metrics}
    lacking, common = {}, None
    if pairs == "common":
        universe = set(frame["pair_id"])
        ok = {method: set(part.index[part["status"] == DONE]) for method, part in by_method.items()}
        common = len(set.intersection(*ok.values())) if ok else 0
        for method, part in by_method.items():
            missing = universe - ok[method]
            statuses = part["status"].reindex(sorted(missing)).fillna(PairStatus.PENDING.value)
            pending = int(statuses.isin(PENDING_STATUSES).sum())
            absent = int((statuses == PairStatus.MISSING.value).sum())
            lacking[method] = {"pending": pending, "failed": len(missing) - pending - absent, "missing": absent}
        for metric in metrics:
            have = [set(part.index[metric_done(part, metric)]) for part in by_method.values()]
            shared[metric] = set.intersection(*have) if have else set()
    rows = [_method_row(method, by_method[method], metrics, n_boot, seed, shared) for method in methods]
    win_rates, differences = {}, {}
    if reference is not None:
        ref = by_method[reference]
        for method in methods:
            if method != reference:
                other = by_method[method]
                win_rates[method] = {m: _win_rate(other, ref, m, shared[m]) for m in metrics}
                differences[method] = {m: _difference(other, ref, m, shared[m], n_boot, seed) for m in metrics}
    return GroupTable(key, rows, win_rates, differences, common, lacking)


def _difference(
    other: pd.DataFrame, ref: pd.DataFrame, metric: str, shared: set | None, n_boot: int, seed: int
) -> Cell | None:
    """Mean of (method - reference) per pair over the pairs both have, with a paired bootstrap interval."""
    if metric not in other or metric not in ref:
        return None
    both = [p for p in other.index.intersection(ref.index) if shared is None or p in shared]
    a = other.loc[both]
    b = ref.loc[both]
    usable = metric_done(a, metric) & metric_done(b, metric)
    deltas = (a.loc[usable, metric].astype(float) - b.loc[usable, metric].astype(float)).to_numpy()
    if not len(deltas):
        return None
    low, high = bootstrap_ci(deltas, n_boot, seed)
    return Cell(float(deltas.mean()), low, high, len(deltas))


def _method_row(method, part, metrics, n_boot, seed, shared=None) -> MethodRow:
    ok = part["status"] == DONE
    pending = part["status"].isin(PENDING_STATUSES)
    cells, random = {}, []
    counts = {}
    for metric in metrics:
        counts[metric] = metric_counts(part, metric)
        values = part.loc[metric_done(part, metric), metric] if metric in part else pd.Series([], dtype=float)
        if shared is not None and shared.get(metric) is not None:
            values = values[values.index.isin(shared[metric])]
        values = values.to_numpy(dtype=np.float64)
        if len(values):
            low, high = bootstrap_ci(values, n_boot, seed)
            cells[metric] = Cell(float(values.mean()), low, high, len(values))
        else:
            cells[metric] = None
        models = part.get(f"{metric}__model")
        if models is not None and models.dropna().astype(str).str.endswith("@random").any():
            random.append(metric)
    seconds = _column(part, "train_seconds").dropna()
    devices = _column(part, "train_device").dropna()
    memory = _column(part, "train_peak_memory_bytes").dropna()
    return MethodRow(
        method,
        cells,
        len(part),
        int(ok.sum()),
        int((~ok & ~pending).sum()),
        float(seconds.astype(float).mean()) if len(seconds) else None,
        str(devices.mode().iloc[0]) if len(devices) else None,
        float(memory.astype(float).max()) if len(memory) else None,
        random,
        int(pending.sum()),
        counts,
    )


def _win_rate(other: pd.DataFrame, ref: pd.DataFrame, metric: str, shared: set | None = None) -> WinRate:
    if metric not in other or metric not in ref or other[metric].isna().all() or ref[metric].isna().all():
        return WinRate(0, 0, 0)  # a metric one of the two was not evaluated on at all: no win rate
    sign = -1.0 if describe(metric).better == "lower" else 1.0
    wins = losses = ties = 0
    for pair_id in other.index.union(ref.index):
        if shared is not None and pair_id not in shared:
            continue
        if _pending(other, pair_id) or _pending(ref, pair_id):  # never run: neither a win nor a loss
            continue
        a, a_failed = _outcome(other, pair_id, metric)
        b, b_failed = _outcome(ref, pair_id, metric)
        if a is not None and b is not None:
            difference = sign * (a - b)
            wins += difference > 1e-12
            losses += difference < -1e-12
            ties += abs(difference) <= 1e-12
        elif a is not None and b_failed:
            wins += 1
        elif b is not None and a_failed:
            losses += 1
    return WinRate(int(wins), int(losses), int(ties))


def _pending(frame: pd.DataFrame, pair_id: str) -> bool:
    return pair_id not in frame.index or frame.at[pair_id, "status"] in PENDING_STATUSES


def _outcome(frame: pd.DataFrame, pair_id: str, metric: str) -> tuple[float | None, bool]:
    """(value, failed) of one pair: failed means the method has no usable output for it."""
    if pair_id not in frame.index:
        return None, True
    row = frame.loc[pair_id]
    if metric_done(frame.loc[[pair_id]], metric).iloc[0]:
        return float(row[metric]), False
    own = row.get(f"{metric}__status")
    failed = row["status"] != DONE if own is None or pd.isna(own) else own != DONE
    return None, bool(failed)


def _column(frame: pd.DataFrame, name: str) -> pd.Series:
    return frame[name] if name in frame.columns else pd.Series([], dtype=object)


# --- rendering -----------------------------------------------------------------------------------------------


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
