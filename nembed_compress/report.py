"""Rendering results: Markdown tables, JSON files and line plots as PNG.

Plots are drawn with Pillow alone, so reports need no plotting library. Everything is
drawn at twice the final size and shrunk at the end, because Pillow draws lines without
anti-aliasing; the shrink smooths the edges. Every file is written atomically.
"""

from __future__ import annotations

import json
import math
import numbers
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageFont

from .atomic import atomic_path

Series = tuple[str, Sequence[float], Sequence[float]]

# ---------------------------------------------------------------------------
# Tables and JSON


def format_number(value: Any) -> str:
    """A short, readable text for one table cell: 61,706 / 98.23 / 0.0412 / 3.10e-05."""
    if hasattr(value, "item") and getattr(value, "ndim", None) == 0:
        value = value.item()  # numpy or torch scalar
    if value is None:
        return ""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return str(value)
    if isinstance(value, numbers.Integral):
        return f"{value:,}" if abs(value) >= 10_000 else str(value)
    value = float(value)
    if not math.isfinite(value) or value == 0:
        return "0" if value == 0 else str(value)
    if abs(value) >= 10_000:
        return f"{value:,.0f}"
    if abs(value) >= 1:
        return f"{value:.2f}"
    if abs(value) >= 1e-3:
        return f"{value:.4f}"
    return f"{value:.2e}"


def _is_numeric(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def markdown_table(headers: list[str], rows: list[list]) -> str:
    """A Markdown table with aligned columns; numeric columns are right-aligned."""
    for i, row in enumerate(rows):
        if len(row) != len(headers):
            raise ValueError(
                f"markdown_table: row {i} has {len(row)} cells; expected {len(headers)}, "
                f"one per header {headers}"
            )
    cells = [[format_number(v).replace("|", "\\|") for v in row] for row in rows]
    head = [str(h).replace("|", "\\|") for h in headers]
    widths = [max([len(h)] + [len(r[j]) for r in cells] + [3]) for j, h in enumerate(head)]
    numeric = [
        bool(rows) and all(_is_numeric(r[j]) or r[j] is None for r in rows)
        for j in range(len(head))
    ]

    def line(values: list[str]) -> str:
        padded = [
            v.rjust(w) if right else v.ljust(w)
            for v, w, right in zip(values, widths, numeric, strict=True)
        ]
        return "| " + " | ".join(padded) + " |"

    rule = [
        "-" * (w - 1) + ":" if right else "-" * w for w, right in zip(widths, numeric, strict=True)
    ]
    return "\n".join([line(head), line(rule), *(line(r) for r in cells)]) + "\n"


def _json_default(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "tolist"):  # numpy arrays and scalars, torch tensors
        return value.tolist()
    if hasattr(value, "__dataclass_fields__"):
        return {name: getattr(value, name) for name in value.__dataclass_fields__}
    raise TypeError(f"write_json: cannot store a {type(value).__name__} as JSON: {value!r}")


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as JSON with indent 2 and a trailing newline, atomically."""
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, default=_json_default)
        f.write("\n")


# ---------------------------------------------------------------------------
# Axes

_TARGET_TICKS = 6


@dataclass
class _Axis:
    lo: float
    hi: float
    ticks: list[float]
    labels: list[str]

    def fraction(self, value: float) -> float:
        return (value - self.lo) / (self.hi - self.lo)


def _nice_step(raw: float) -> float:
    """The step among 1, 2, 2.5, 5 times a power of ten closest above ``raw``."""
    power = 10 ** math.floor(math.log10(raw))
    for factor in (1, 2, 2.5, 5, 10):
        if factor * power >= raw * 0.999:
            return factor * power
    return 10 * power


def _tick_label(value: float, step: float) -> str:
    """Compact labels: 250k and 1.5M for parameter counts, just enough decimals otherwise."""
    scale, suffix = (1, "")
    if abs(value) >= 1e6:
        scale, suffix = (1e6, "M")
    elif abs(value) >= 1e4:
        scale, suffix = (1e3, "k")
    if step < 1e-3 * scale:
        return f"{value:.3g}"
    scaled_step = step / scale
    decimals = 0  # the fewest that write the step exactly: 0.25 needs 2, 0.5 needs 1
    while decimals < 6 and abs(round(scaled_step, decimals) - scaled_step) > 1e-9 * scaled_step:
        decimals += 1
    return f"{value / scale:.{decimals}f}{suffix}"


def _linear_axis(values: list[float], headroom: float = 0.0) -> _Axis:
    """An axis over ``values`` padded by 6 % each side (plus ``headroom`` on top)."""
    lo, hi = min(values), max(values)
    if hi - lo < 1e-12 * max(1.0, abs(hi)):
        pad = abs(hi) * 0.1 or 1.0
        lo, hi = lo - pad, hi + pad
    span = hi - lo
    lo, hi = lo - 0.06 * span, hi + (0.06 + headroom) * span
    step = _nice_step((hi - lo) / (_TARGET_TICKS - 1))
    first = math.ceil(lo / step - 1e-9)
    ticks = [k * step for k in range(first, math.floor(hi / step + 1e-9) + 1)]
    return _Axis(lo, hi, ticks, [_tick_label(t, step) for t in ticks])


def _log2_axis(exponents: list[float]) -> _Axis:
    """An axis over log2 values with a tick, labelled by its value, at every power of two."""
    lo, hi = min(exponents), max(exponents)
    pad = max(hi - lo, 1.0) * 0.06
    lo, hi = lo - pad, hi + pad
    ticks = [float(e) for e in range(math.ceil(lo), math.floor(hi) + 1)]
    labels = [format_number(2 ** int(e)) if e >= 0 else f"1/{2 ** -int(e)}" for e in ticks]
    return _Axis(lo, hi, ticks, labels)


# ---------------------------------------------------------------------------
# Canvas

_WIDTH, _HEIGHT = 900, 560
_SCALE = 2
_COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2")
_SECONDARY_COLOR = "#7f7f7f"
_REFERENCE_COLOR = "#222222"
_GRID_COLOR = "#e4e4e4"
_TEXT_COLOR = "#111111"


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size * _SCALE)
    except (TypeError, ImportError, OSError):  # Pillow < 10.1 or built without FreeType
        return ImageFont.load_default()


@dataclass
class _Entry:
    """One legend entry and the points (in pixels) it covers on the plot."""

    label: str
    color: str
    marker: str | None  # "circle", "square" or None
    dashed: bool
    points: list[tuple[float, float]]


class _Canvas:
    """A plot being drawn at ``_SCALE`` times its final size; sizes are given at final size."""

    def __init__(self, has_secondary: bool):
        self.image = Image.new("RGB", (_WIDTH * _SCALE, _HEIGHT * _SCALE), "white")
        self.draw = ImageDraw.Draw(self.image)
        right = 92 if has_secondary else 30
        s = _SCALE
        self.left, self.top = 84 * s, 50 * s
        self.right, self.bottom = (_WIDTH - right) * s, (_HEIGHT - 64) * s
        self.fonts = {
            "title": _font(18),
            "label": _font(14),
            "tick": _font(12),
            "legend": _font(13),
        }

    def px(self, x_axis: _Axis, y_axis: _Axis, x: float, y: float) -> tuple[float, float]:
        return (
            self.left + x_axis.fraction(x) * (self.right - self.left),
            self.bottom - y_axis.fraction(y) * (self.bottom - self.top),
        )

    def text(self, xy: tuple[float, float], text: str, font: str, anchor: str, color=_TEXT_COLOR):
        """Draw ``text`` with its (horizontal l/m/r, vertical t/m/b) ``anchor`` at ``xy``."""
        f = self.fonts[font]
        left, top, right, bottom = self.draw.textbbox((0, 0), text, font=f)
        width, height = right - left, bottom - top
        x = xy[0] - left - {"l": 0, "m": width / 2, "r": width}[anchor[0]]
        y = xy[1] - top - {"t": 0, "m": height / 2, "b": height}[anchor[1]]
        self.draw.text((x, y), text, font=f, fill=color)

    def vertical_text(self, center: tuple[float, float], text: str, color=_TEXT_COLOR, turn=90):
        f = self.fonts["label"]
        left, top, right, bottom = self.draw.textbbox((0, 0), text, font=f)
        patch = Image.new("L", (right - left + 4, bottom - top + 4), 0)
        ImageDraw.Draw(patch).text((2 - left, 2 - top), text, font=f, fill=255)
        patch = patch.rotate(turn, expand=True)
        corner = (int(center[0] - patch.width / 2), int(center[1] - patch.height / 2))
        self.image.paste(Image.new("RGB", patch.size, color), corner, patch)

    def text_width(self, text: str, font: str) -> float:
        left, _, right, _ = self.draw.textbbox((0, 0), text, font=self.fonts[font])
        return (right - left) / _SCALE

    def finish(self) -> Image.Image:
        return self.image.resize((_WIDTH, _HEIGHT), Image.Resampling.LANCZOS)


# ---------------------------------------------------------------------------
# Drawing


def _draw_axes(c: _Canvas, x_axis: _Axis, y_axis: _Axis, y2_axis: _Axis | None) -> None:
    s, tick = _SCALE, 5 * _SCALE
    for value, label in zip(x_axis.ticks, x_axis.labels, strict=True):
        x, _ = c.px(x_axis, y_axis, value, y_axis.lo)
        c.draw.line([(x, c.top), (x, c.bottom)], fill=_GRID_COLOR, width=s)
        c.draw.line([(x, c.bottom), (x, c.bottom + tick)], fill=_TEXT_COLOR, width=s)
        c.text((x, c.bottom + tick + 3 * s), label, "tick", "mt")
    for value, label in zip(y_axis.ticks, y_axis.labels, strict=True):
        _, y = c.px(x_axis, y_axis, x_axis.lo, value)
        c.draw.line([(c.left, y), (c.right, y)], fill=_GRID_COLOR, width=s)
        c.draw.line([(c.left - tick, y), (c.left, y)], fill=_TEXT_COLOR, width=s)
        c.text((c.left - tick - 3 * s, y), label, "tick", "rm")
    if y2_axis is not None:
        for value, label in zip(y2_axis.ticks, y2_axis.labels, strict=True):
            _, y = c.px(x_axis, y2_axis, x_axis.lo, value)
            c.draw.line([(c.right, y), (c.right + tick, y)], fill=_SECONDARY_COLOR, width=s)
            c.text((c.right + tick + 3 * s, y), label, "tick", "lm", _SECONDARY_COLOR)
    c.draw.rectangle([c.left, c.top, c.right, c.bottom], outline=_TEXT_COLOR, width=s)


def _draw_labels(c: _Canvas, titles: tuple[str, str, str, str | None], axes) -> None:
    """Title on top, x label below the ticks, y labels turned upright beside their ticks."""
    title, x_label, y_label, y2_label = titles
    s = _SCALE
    middle_x, middle_y = (c.left + c.right) / 2, (c.top + c.bottom) / 2
    c.text((_WIDTH * s / 2, 16 * s), title, "title", "mt")
    c.text((middle_x, _HEIGHT * s - 12 * s), x_label, "label", "mb")

    # Beside the widest tick label: tick 5 px, gap 3 px, then 14 px to the label's middle.
    widest = max((c.text_width(t, "tick") for t in axes[1].labels), default=0)
    c.vertical_text((max(14 * s, c.left - (22 + widest) * s), middle_y), y_label)
    if y2_label is not None:
        widest = max((c.text_width(t, "tick") for t in axes[2].labels), default=0)
        x = min((_WIDTH - 14) * s, c.right + (22 + widest) * s)
        c.vertical_text((x, middle_y), y2_label, _SECONDARY_COLOR, turn=-90)


def _dashed(c: _Canvas, start: tuple[float, float], end: tuple[float, float], color: str):
    (x0, y), (x1, _) = start, end
    dash, gap = 10 * _SCALE, 6 * _SCALE
    while x0 < x1:
        c.draw.line([(x0, y), (min(x0 + dash, x1), y)], fill=color, width=2 * _SCALE)
        x0 += dash + gap


def _marker(c: _Canvas, xy: tuple[float, float], kind: str, color: str) -> None:
    r = 4.5 * _SCALE
    box = [xy[0] - r, xy[1] - r, xy[0] + r, xy[1] + r]
    if kind == "square":
        c.draw.rectangle(box, fill="white", outline=color, width=2 * _SCALE)
    else:
        c.draw.ellipse(box, fill=color, outline="white", width=_SCALE)


def _draw_line(c: _Canvas, entry: _Entry, width: float = 2.5) -> None:
    """A polyline with markers; a None point (a missing value) breaks the line."""
    runs: list[list[tuple[float, float]]] = [[]]
    for point in entry.points:
        if point is None:
            runs.append([])
        else:
            runs[-1].append(point)
    for run in runs:
        if len(run) > 1:
            c.draw.line(run, fill=entry.color, width=round(width * _SCALE), joint="curve")
    for run in runs:
        for point in run:
            _marker(c, point, entry.marker or "circle", entry.color)


# ---------------------------------------------------------------------------
# Legend placement


def _legend_size(c: _Canvas, entries: list[_Entry]) -> tuple[float, float]:
    width = 12 + 30 + 8 + max(c.text_width(e.label, "legend") for e in entries) + 12
    return width * _SCALE, (12 + 21 * len(entries)) * _SCALE


def _samples(entries: list[_Entry]) -> list[tuple[float, float]]:
    """Points along every drawn line, so a legend can be placed where it hides least."""
    out: list[tuple[float, float]] = []
    for entry in entries:
        points = [p for p in entry.points if p is not None]
        out += points
        for (x0, y0), (x1, y1) in zip(points, points[1:], strict=False):
            steps = max(1, int(math.hypot(x1 - x0, y1 - y0) / (3 * _SCALE)))  # every 3 px
            out += [(x0 + (x1 - x0) * k / steps, y0 + (y1 - y0) * k / steps) for k in range(steps)]
    return out


def _legend_spots(c: _Canvas, size: tuple[float, float]) -> list[tuple[float, float]]:
    w, h, inset = size[0], size[1], 10 * _SCALE
    xs = (c.right - inset - w, c.left + inset, (c.left + c.right - w) / 2)
    ys = (c.top + inset, c.bottom - inset - h, (c.top + c.bottom - h) / 2)
    order = [(0, 0), (1, 0), (0, 1), (1, 1), (0, 2), (1, 2), (2, 0), (2, 1)]
    return [(xs[i], ys[j]) for i, j in order]


def _best_legend_spot(c: _Canvas, entries, size) -> tuple[tuple[float, float], int]:
    """The corner (or edge middle) of the plot whose legend box covers the fewest line points."""
    samples, margin = _samples(entries), 8 * _SCALE

    def covered(spot: tuple[float, float]) -> int:
        x0, y0 = spot[0] - margin, spot[1] - margin
        x1, y1 = spot[0] + size[0] + margin, spot[1] + size[1] + margin
        return sum(x0 <= x <= x1 and y0 <= y <= y1 for x, y in samples)

    spots = _legend_spots(c, size)
    scores = [covered(spot) for spot in spots]
    best = min(range(len(spots)), key=lambda i: scores[i])
    return spots[best], scores[best]


def _draw_legend(c: _Canvas, entries: list[_Entry], spot: tuple[float, float], size) -> None:
    s = _SCALE
    x, y = spot
    c.draw.rectangle([x, y, x + size[0], y + size[1]], fill="white", outline="#999999", width=s)
    for i, entry in enumerate(entries):
        cy = y + (6 + 21 * i + 10.5) * s
        start, end = (x + 12 * s, cy), (x + 42 * s, cy)
        if entry.dashed:
            _dashed(c, start, end, entry.color)
        else:
            c.draw.line([start, end], fill=entry.color, width=round(2.5 * s))
        if entry.marker:
            _marker(c, (x + 27 * s, cy), entry.marker, entry.color)
        c.text((x + 50 * s, cy), entry.label, "legend", "lm")


# ---------------------------------------------------------------------------
# Line plots


def _points(series: Series, x_log2: bool, what: str) -> tuple[str, list, list]:
    """Check one (label, xs, ys) triple; missing y values (None or NaN) become None."""
    label, xs, ys = series
    xs, ys = list(xs), list(ys)
    if len(xs) != len(ys):
        raise ValueError(f"line_plot: {what} {label!r} has {len(xs)} x values but {len(ys)} y")
    if x_log2 and any(x <= 0 for x in xs):
        raise ValueError(f"line_plot: {what} {label!r} has x <= 0, which a log2 axis cannot show")
    xs = [math.log2(x) if x_log2 else float(x) for x in xs]
    ys = [None if y is None or not math.isfinite(y) else float(y) for y in ys]
    return label, xs, ys


def _build_axes(lines, sec, reference, x_log2: bool, headroom: float):
    x_values = [x for _, xs, _ in lines + ([sec] if sec else []) for x in xs]
    y_values = [y for _, _, ys in lines for y in ys if y is not None]
    if reference is not None:
        y_values.append(float(reference[1]))
    if not x_values or not y_values:
        raise ValueError("line_plot: nothing to draw; every series is empty")
    x_axis = _log2_axis(x_values) if x_log2 else _linear_axis(x_values)
    y_axis = _linear_axis(y_values, headroom)
    y2_values = [y for y in sec[2] if y is not None] if sec else []
    y2_axis = _linear_axis(y2_values, headroom) if y2_values else None
    return x_axis, y_axis, y2_axis


def _entries(c: _Canvas, axes, lines, sec, reference) -> list[_Entry]:
    x_axis, y_axis, y2_axis = axes

    def pixels(xs, ys, axis):
        return [
            None if y is None else c.px(x_axis, axis, x, y) for x, y in zip(xs, ys, strict=True)
        ]

    entries = [
        _Entry(label, _COLORS[i % len(_COLORS)], "circle", False, pixels(xs, ys, y_axis))
        for i, (label, xs, ys) in enumerate(lines)
    ]
    if sec is not None and y2_axis is not None:
        points = pixels(sec[1], sec[2], y2_axis)
        entries.append(_Entry(f"{sec[0]} (right axis)", _SECONDARY_COLOR, "square", False, points))
    if reference is not None:
        _, y = c.px(x_axis, y_axis, x_axis.lo, float(reference[1]))
        ends = [(float(c.left), y), (float(c.right), y)]
        entries.append(_Entry(reference[0], _REFERENCE_COLOR, None, True, ends))
    return entries


def _render(lines, sec, reference, labels, x_log2: bool) -> Image.Image:
    title, x_label, y_label = labels
    attempts = []
    for headroom in (0.0, 0.3):  # the second try leaves room above the data for the legend
        c = _Canvas(has_secondary=sec is not None)
        axes = _build_axes(lines, sec, reference, x_log2, headroom)
        entries = _entries(c, axes, lines, sec, reference)
        size = _legend_size(c, entries)
        spot, covered = _best_legend_spot(c, entries, size)
        attempts.append((covered, c, axes, entries, size, spot))
        if covered == 0:
            break
    _, c, axes, entries, size, spot = min(attempts, key=lambda attempt: attempt[0])

    _draw_axes(c, *axes)
    _draw_labels(c, (title, x_label, y_label, sec[0] if sec and axes[2] else None), axes)
    for entry in entries:
        if entry.dashed:
            _dashed(c, entry.points[0], entry.points[1], entry.color)
    for entry in reversed(entries):  # the first series ends up on top
        if not entry.dashed:
            _draw_line(c, entry, width=2 if entry.marker == "square" else 2.5)
    _draw_legend(c, entries, spot, size)
    return c.finish()


def line_plot(
    path: str | os.PathLike,
    series: Sequence[Series],
    *,
    x_label: str,
    y_label: str,
    title: str,
    reference: tuple[str, float] | None = None,
    secondary: Series | None = None,
    x_log2: bool = False,
) -> None:
    """Draw lines with markers and write them as a PNG of 900 x 560 pixels, atomically.

    Args:
        series: ``(label, xs, ys)`` for each line on the left axis; a y of None or NaN
            leaves a gap.
        reference: ``(label, y)`` drawn as a dashed horizontal line, e.g. the original model.
        secondary: ``(label, xs, ys)`` drawn in grey against its own axis on the right,
            e.g. parameter counts.
        x_log2: place x on a log2 scale with ticks at powers of two (for d = 4, 8, ..., 64).

    The legend goes to the corner of the plot where it hides the fewest line points; when
    every corner would hide some, room is made for it above the data.
    """
    lines = [_points(s, x_log2, "series") for s in series]
    sec = _points(secondary, x_log2, "secondary series") if secondary is not None else None
    image = _render(lines, sec, reference, (title, x_label, y_label), x_log2)
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG", optimize=True)


def plot_accuracy_vs_dim(
    path: str | os.PathLike,
    dims: Sequence[int],
    accuracies: Sequence[float] | Mapping[str, Sequence[float]],
    *,
    reference_accuracy: float,
    params: Sequence[int] | None = None,
    title: str = "Test accuracy against embedding dimension",
) -> None:
    """Plot accuracy (in percent, left axis) against the embedding dimension ``d``.

    ``accuracies`` is one sequence, or a mapping from a label to a sequence for several
    curves. Accuracies may be given as fractions or in percent: when every value,
    the reference included, is at most 1 they are taken as fractions. ``params`` (the
    parameter count at each ``d``) is drawn against a right axis. The x axis is log2 when
    the dims are positive and span a factor of 4 or more.
    """
    if not dims:
        raise ValueError("plot_accuracy_vs_dim: no embedding dimensions to plot")
    curves = dict(accuracies) if isinstance(accuracies, Mapping) else {"compressed": accuracies}
    values = [a for acc in curves.values() for a in acc if a is not None] + [reference_accuracy]
    factor = 100.0 if all(v <= 1.0 for v in values) else 1.0

    def percent(acc):
        return [None if a is None else a * factor for a in acc]

    ref = reference_accuracy * factor
    line_plot(
        path,
        [(label, dims, percent(acc)) for label, acc in curves.items()],
        x_label="embedding dimension d",
        y_label="test accuracy (%)",
        title=title,
        reference=(f"reference model ({ref:.2f}%)", ref),
        secondary=("parameters", dims, params) if params is not None else None,
        x_log2=min(dims) > 0 and max(dims) >= 4 * min(dims),
    )


__all__ = [
    "format_number",
    "line_plot",
    "markdown_table",
    "plot_accuracy_vs_dim",
    "write_json",
]
