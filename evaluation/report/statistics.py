"""Benchmark tables from per-pair metrics: mean and 95% BCa bootstrap CI per method and metric, counts, cost, win
rates and a paired bootstrap interval of each method's difference to a reference method (`build_tables`). Rendered
as text tables (Markdown, CSV, LaTeX) by tables.py and as HTML by html.py.

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

import math
import warnings
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from evaluation.registry import describe, metric_columns
from pipeline.runs.run_folder import PairStatus, status_words

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
