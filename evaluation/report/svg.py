"""Small inline SVG charts for the HTML report: no plotting library, nothing to load, valid standalone XML."""

from __future__ import annotations

import math
from html import escape

import numpy as np

PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#17becf", "#bcbd22"]
FONT = 'font-family="sans-serif" font-size="11"'


def color(index: int) -> str:
    return PALETTE[index % len(PALETTE)]


def nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    if not math.isfinite(low) or not math.isfinite(high):
        return []
    if high <= low:
        return [low]
    step = 10 ** math.floor(math.log10((high - low) / count))
    for multiple in (1, 2, 2.5, 5, 10):
        if (high - low) / (step * multiple) <= count:
            step *= multiple
            break
    first = math.ceil(low / step) * step
    return [round(first + i * step, 12) for i in range(int((high - first) / step + 1e-9) + 1)]


def log_ticks(low: float, high: float) -> list[float]:
    """Ticks of a log10 axis spanning [low, high] (in log10 units): the powers of ten inside it, with 2 and 5 times
    them when fewer than three powers fit; returned in log10 units."""
    if not math.isfinite(low) or not math.isfinite(high) or high <= low:
        return []
    for multiples in ((1,), (1, 2, 5), (1, 2, 3, 4, 5, 6, 7, 8, 9)):
        ticks = [math.log10(m) + e for e in range(math.floor(low) - 1, math.ceil(high) + 1) for m in multiples]
        ticks = [t for t in ticks if low - 1e-9 <= t <= high + 1e-9]
        if len(ticks) >= 3:
            return ticks
    return [math.log10(v) for v in nice_ticks(10**low, 10**high, 4) if v > 0]  # less than a decade: linear steps


def tick_label(value: float) -> str:
    """0.001, 0.01, 0.5, 20, 1e-05, 2e+06: short and exact for the values ticks take."""
    if value == 0:
        return "0"
    return f"{value:g}" if 1e-4 <= abs(value) < 1e5 else f"{value:.0e}".replace("e-0", "e-").replace("e+0", "e+")


def strip_plot(title: str, series: dict[str, np.ndarray], note: str = "", seed: int = 0, x_label: str = "") -> str:
    """One row per label: jittered points, the interquartile box, the median line and the mean (diamond)."""
    width, left, right, row_h, top = 640, 150, 20, 34, 28
    values = [np.asarray(v, dtype=float)[np.isfinite(v)] for v in series.values()]
    everything = np.concatenate([v for v in values if len(v)] or [np.zeros(1)])
    low, high = float(everything.min()), float(everything.max())
    if high - low < 1e-12:
        low, high = low - 0.5 * (abs(low) or 1), high + 0.5 * (abs(high) or 1)
    pad = 0.04 * (high - low)
    low, high = low - pad, high + pad
    height = top + row_h * len(series) + 46

    def x(v):
        return left + (v - low) / (high - low) * (width - left - right)

    parts = [_open(width, height, title), f'<text x="{left}" y="16" {FONT} font-weight="bold">{escape(title)}</text>']
    if note:
        parts.append(f'<text x="{width - right}" y="16" {FONT} text-anchor="end" fill="#555">{escape(note)}</text>')
    rng = np.random.default_rng(seed)
    for index, (label, data) in enumerate(zip(series, values)):
        y = top + row_h * index + row_h / 2
        parts.append(
            f'<text x="{left - 8}" y="{y + 4:.1f}" {FONT} text-anchor="end">{escape(label)} (n={len(data)})</text>'
        )
        if not len(data):
            continue
        shown = data if len(data) <= 400 else rng.choice(data, 400, replace=False)
        for v, jitter in zip(shown, rng.uniform(-0.3, 0.3, len(shown))):
            parts.append(
                f'<circle cx="{x(v):.1f}" cy="{y + jitter * row_h:.1f}" r="3" fill="{color(index)}" fill-opacity="0.5"/>'
            )
        q1, median, q3 = np.percentile(data, [25, 50, 75])
        parts.append(
            f'<rect x="{x(q1):.1f}" y="{y - row_h * 0.3:.1f}" width="{max(1.0, x(q3) - x(q1)):.1f}" '
            f'height="{row_h * 0.6:.1f}" fill="none" stroke="#222"/>'
        )
        parts.append(
            f'<line x1="{x(median):.1f}" x2="{x(median):.1f}" y1="{y - row_h * 0.3:.1f}" y2="{y + row_h * 0.3:.1f}" stroke="#222" stroke-width="2"/>'
        )
        mean = float(data.mean())
        parts.append(
            f'<path d="M{x(mean):.1f},{y - 6:.1f} l5,6 l-5,6 l-5,-6 z" fill="#000"><title>mean {mean:.4g}</title></path>'
        )
    parts += _x_axis(low, high, x, top + row_h * len(series), left, width - right, label=x_label)
    return "".join(parts) + "</svg>"


def line_plot(
    title: str,
    lines: list[dict],
    log_y: bool = True,
    x_label: str = "step",
    y_label: str = "",
    width: int = 720,
    height: int = 300,
    legend_width: int = 170,
) -> str:
    """lines: dicts with label, x, y, and optionally color, width, opacity, legend (bool). A line with one point
    draws a dot; a line with none draws nothing and has no legend entry."""
    left, right, top, bottom = 64, legend_width, 28, 40
    points = [(np.asarray(line["x"], float), np.asarray(line["y"], float)) for line in lines]
    xs = np.concatenate([p[0] for p in points] or [np.zeros(1)])
    xs = xs[np.isfinite(xs)] if np.isfinite(xs).any() else np.zeros(1)
    ys = np.concatenate([p[1] for p in points] or [np.ones(1)])
    ys = ys[np.isfinite(ys) & ((ys > 0) if log_y else True)]
    if not len(ys):
        ys, log_y = np.zeros(1), False
    transform = (lambda v: np.log10(np.maximum(v, 1e-30))) if log_y else (lambda v: v)
    y_low, y_high = float(transform(ys).min()), float(transform(ys).max())
    if y_high - y_low < 1e-12:
        y_low, y_high = y_low - 1, y_high + 1
    x_low, x_high = float(xs.min()), float(max(xs.max(), xs.min() + 1))

    def px(v):
        return left + (v - x_low) / (x_high - x_low) * (width - left - right)

    def py(v):
        return top + (1 - (transform(v) - y_low) / (y_high - y_low)) * (height - top - bottom)

    parts = [_open(width, height, title), f'<text x="{left}" y="16" {FONT} font-weight="bold">{escape(title)}</text>']
    legend = 0
    for index, (line, (x, y)) in enumerate(zip(lines, points)):
        keep = np.isfinite(y) & ((y > 0) if log_y else True)
        if keep.sum() < 1:
            continue
        stroke = line.get("color", color(index))
        if keep.sum() == 1:
            parts.append(
                f'<circle cx="{px(x[keep][0]):.1f}" cy="{py(y[keep][0]):.1f}" r="3" fill="{stroke}" '
                f'fill-opacity="{line.get("opacity", 1)}"><title>{escape(line["label"])}</title></circle>'
            )
        else:
            path = " ".join(
                f"{'M' if i == 0 else 'L'}{px(a):.1f},{py(b):.1f}" for i, (a, b) in enumerate(zip(x[keep], y[keep]))
            )
            parts.append(
                f'<path d="{path}" fill="none" stroke="{stroke}" stroke-width="{line.get("width", 1.5)}" '
                f'stroke-opacity="{line.get("opacity", 1)}"><title>{escape(line["label"])}</title></path>'
            )
        if line.get("legend", True):
            ly = top + 14 * legend + 6
            parts.append(
                f'<line x1="{width - right + 8}" x2="{width - right + 26}" y1="{ly}" y2="{ly}" stroke="{stroke}" stroke-width="2"/>'
                f'<text x="{width - right + 30}" y="{ly + 4}" {FONT}>{escape(line["label"])}</text>'
            )
            legend += 1
    parts += _x_axis(x_low, x_high, px, height - bottom, left, width - right, label=x_label)
    for tick in log_ticks(y_low, y_high) if log_y else nice_ticks(y_low, y_high, 5):
        value = 10**tick if log_y else tick
        y = top + (1 - (tick - y_low) / (y_high - y_low)) * (height - top - bottom)
        parts.append(
            f'<line x1="{left - 4}" x2="{width - right}" y1="{y:.1f}" y2="{y:.1f}" stroke="#ddd"/>'
            f'<text x="{left - 6}" y="{y + 4:.1f}" {FONT} text-anchor="end">{tick_label(round(value, 12))}</text>'
        )
    label = y_label or ("log scale" if log_y else "")
    if label:
        middle = (top + height - bottom) / 2
        parts.append(
            f'<text x="12" y="{middle:.1f}" {FONT} text-anchor="middle" transform="rotate(-90 12 {middle:.1f})">'
            f"{escape(label)}</text>"
        )
    return "".join(parts) + "</svg>"


def _open(width: int, height: int, title: str) -> str:
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
        f'role="img" aria-label="{escape(title)}">'
    )


def _x_axis(low, high, x, y, left, right, label: str = "") -> list[str]:
    parts = [f'<line x1="{left}" x2="{right}" y1="{y:.1f}" y2="{y:.1f}" stroke="#222"/>']
    for tick in nice_ticks(low, high, 6):
        parts.append(
            f'<line x1="{x(tick):.1f}" x2="{x(tick):.1f}" y1="{y:.1f}" y2="{y + 4:.1f}" stroke="#222"/>'
            f'<text x="{x(tick):.1f}" y="{y + 16:.1f}" {FONT} text-anchor="middle">{tick_label(tick)}</text>'
        )
    if label:
        parts.append(
            f'<text x="{(left + right) / 2:.1f}" y="{y + 32:.1f}" {FONT} text-anchor="middle">{escape(label)}</text>'
        )
    return parts


def scatter_plot(
    title: str, methods: list[dict], x_label: str, y_label: str, note: str = "", max_points: int = 1500, seed: int = 0
) -> str:
    """The trade-off figure: per method, faint per-pair points and its mean with interval bars on both axes.

    methods: dicts with label, x and y (per-pair values, same order), mean_x, mean_y, and x_ci, y_ci ((low, high)).
    """
    width, height, left, right, top, bottom = 720, 440, 70, 180, 28, 48
    rng = np.random.default_rng(seed)
    xs = np.concatenate([np.asarray(m["x"], float) for m in methods] + [np.asarray(m["x_ci"], float) for m in methods])
    ys = np.concatenate([np.asarray(m["y"], float) for m in methods] + [np.asarray(m["y_ci"], float) for m in methods])
    xs, ys = xs[np.isfinite(xs)], ys[np.isfinite(ys)]
    if not len(xs) or not len(ys):
        return ""
    (x_low, x_high), (y_low, y_high) = _padded(xs), _padded(ys)

    def px(v):
        return left + (v - x_low) / (x_high - x_low) * (width - left - right)

    def py(v):
        return top + (1 - (v - y_low) / (y_high - y_low)) * (height - top - bottom)

    parts = [_open(width, height, title), f'<text x="{left}" y="16" {FONT} font-weight="bold">{escape(title)}</text>']
    if note:
        parts.append(f'<text x="{width - right}" y="16" {FONT} text-anchor="end" fill="#555">{escape(note)}</text>')
    for tick in nice_ticks(y_low, y_high, 6):
        parts.append(
            f'<line x1="{left - 4}" x2="{width - right}" y1="{py(tick):.1f}" y2="{py(tick):.1f}" stroke="#eee"/>'
            f'<text x="{left - 6}" y="{py(tick) + 4:.1f}" {FONT} text-anchor="end">{tick_label(tick)}</text>'
        )
    for index, method in enumerate(methods):  # faint per-pair points first, under every mean
        x, y = np.asarray(method["x"], float), np.asarray(method["y"], float)
        keep = np.flatnonzero(np.isfinite(x) & np.isfinite(y))
        if len(keep) > max_points:
            keep = np.sort(rng.choice(keep, max_points, replace=False))
        parts += [
            f'<circle cx="{px(x[i]):.1f}" cy="{py(y[i]):.1f}" r="3" fill="{color(index)}" fill-opacity="0.3"/>'
            for i in keep
        ]
    for index, method in enumerate(methods):
        mx, my = method["mean_x"], method["mean_y"]
        if not (math.isfinite(mx) and math.isfinite(my)):
            continue
        (xl, xh), (yl, yh) = method["x_ci"], method["y_ci"]
        stroke = color(index)
        parts.append(
            f'<g stroke="{stroke}" stroke-width="2"><title>{escape(method["label"])}: {mx:.4g}, {my:.4g}</title>'
            f'<line x1="{px(xl):.1f}" x2="{px(xh):.1f}" y1="{py(my):.1f}" y2="{py(my):.1f}"/>'
            f'<line x1="{px(mx):.1f}" x2="{px(mx):.1f}" y1="{py(yl):.1f}" y2="{py(yh):.1f}"/></g>'
            f'<circle cx="{px(mx):.1f}" cy="{py(my):.1f}" r="6" fill="{stroke}" stroke="#fff" stroke-width="1.5"/>'
        )
        ly = top + 16 * index + 8
        parts.append(
            f'<circle cx="{width - right + 16}" cy="{ly}" r="5" fill="{stroke}"/>'
            f'<text x="{width - right + 26}" y="{ly + 4}" {FONT}>{escape(method["label"])}</text>'
        )
    parts += _x_axis(x_low, x_high, px, height - bottom, left, width - right, label=x_label)
    middle = (top + height - bottom) / 2
    parts.append(
        f'<text x="14" y="{middle:.1f}" {FONT} text-anchor="middle" transform="rotate(-90 14 {middle:.1f})">'
        f"{escape(y_label)}</text>"
    )
    return "".join(parts) + "</svg>"


def _padded(values: np.ndarray) -> tuple[float, float]:
    low, high = float(values.min()), float(values.max())
    if high - low < 1e-12:
        low, high = low - 0.5 * (abs(low) or 1), high + 0.5 * (abs(high) or 1)
    pad = 0.05 * (high - low)
    return low - pad, high + pad
