"""Charts as inline SVG, drawn by matplotlib on the server: no script and no asset from anywhere else.

Figures are built with the object API (``matplotlib.figure.Figure``), never pyplot, so no global
figure state is shared between requests; one lock still serialises rendering because matplotlib's
text layout caches are not documented as thread-safe, and a chart takes ~25 ms.

Honesty rules for reliability diagrams: a bin with no labelled rows is not drawn (its empty weight bar
says so); a bin with fewer than ``TINY_BIN`` labels is drawn as a hollow marker, left out of the line,
and every bin carries a 95% Wilson interval, so one or two rows never read as a confident point.
"""

from __future__ import annotations

import html
import io
import math
import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import matplotlib

matplotlib.use("svg")  # no display, no Agg raster: every chart is vector text
matplotlib.rcParams["svg.fonttype"] = "none"  # <text> elements: smaller, selectable, searchable
matplotlib.rcParams["svg.hashsalt"] = "calmon"  # stable ids: the same numbers draw the same bytes
matplotlib.rcParams["text.parse_math"] = False  # a model named "a$b$" is text, never mathtext
from matplotlib import dates as mdates  # noqa: E402  (after the backend is chosen)
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

__all__ = [
    "CALIBRATED_COLOUR",
    "RAW_COLOUR",
    "TINY_BIN",
    "Curve",
    "EventMark",
    "TimePoint",
    "histogram",
    "over_time",
    "reliability",
    "risk_coverage",
    "warm",
    "wilson",
]

TINY_BIN = 10  # labels below which a bin's accuracy is shown hollow and kept out of the line
RAW_COLOUR = "#d62728"
CALIBRATED_COLOUR = "#1f77b4"
_LOCK = threading.Lock()
_PREAMBLE = re.compile(r"\A.*?(?=<svg)", re.S)  # XML declaration and DOCTYPE: not valid inside HTML
_METADATA = re.compile(r"<metadata>.*?</metadata>\s*", re.S)


@dataclass(frozen=True)
class Curve:
    """One line of a reliability diagram: the rows of ``ReliabilityTable.rows()``."""

    name: str  # element ids and the legend: "raw", "calibrated", "before", "after"
    label: str
    rows: Sequence[dict[str, Any]]
    colour: str


@dataclass(frozen=True)
class TimePoint:
    start: float
    predictions: int
    labelled: int
    ece: dict[str, float | None] = field(default_factory=dict)  # per score
    # "estimated" (label-free, calibrated score), its "lower"/"upper", and "realised" (labelled)
    accuracy: dict[str, float | None] = field(default_factory=dict)


@dataclass(frozen=True)
class EventMark:
    ts: float
    label: str
    colour: str


def wilson(correct: float, n: float, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval of a proportion: sane at 0/1 successes and n = 1, unlike Wald's."""
    if n <= 0:
        return 0.0, 1.0
    p = correct / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def _svg(fig: Figure, chart_id: str, description: str) -> str:
    buffer = io.StringIO()
    fig.savefig(buffer, format="svg", metadata={"Date": None, "Creator": None, "Format": None, "Type": None})
    body = _METADATA.sub("", _PREAMBLE.sub("", buffer.getvalue(), count=1), count=1)
    title = html.escape(description, quote=True)
    return body.replace(
        "<svg ", f'<svg id="{chart_id}" class="chart" role="img" aria-label="{title}" ', 1
    ).strip()


def _figure(width: float, height: float, title_lines: int = 0, bottom: float = 0.55) -> Figure:
    """A figure with fixed margins (in inches): a layout engine would cost a third of the render."""
    fig = Figure(figsize=(width, height))
    fig.subplots_adjust(left=0.75 / width, right=1 - 0.2 / width, bottom=bottom / height,
                        top=1 - (0.15 + 0.22 * title_lines) / height)  # fmt: skip
    return fig


TICKS = [i / 5 for i in range(6)]


WEIGHT_HEIGHT = 0.18  # the tallest bin-weight bar, as a share of the accuracy axis


def reliability(chart_id: str, title: str, curves: Sequence[Curve], n_bins: int) -> str:
    """Accuracy against mean confidence per bin over the diagonal; each bin's labelled weight as a
    bar along the bottom (tallest = the fullest bin, its count written on the chart).

    One axes, not two: an axes costs ~19 ms to draw, and pages draw three charts. Each curve's bins
    are two marker groups, ``{chart_id}-{curve}-bins`` (bins with at least ``TINY_BIN`` labels) and
    ``{chart_id}-{curve}-tiny`` (hollow), so a drawing can be checked against its table.
    """
    with _LOCK:
        fig = _figure(5.6, 5.2, title_lines=title.count("\n") + 1, bottom=0.62)
        ax = fig.subplots()
        ax.plot([0, 1], [0, 1], linestyle="--", color="#999999", linewidth=1, label="perfect calibration")
        width = 1.0 / n_bins / max(1, len(curves))
        tallest = max((r["count"] for c in curves for r in c.rows), default=0)
        for k, curve in enumerate(curves):
            _reliability_curve(ax, chart_id, curve)
            if tallest:
                heights = [WEIGHT_HEIGHT * r["count"] / tallest for r in curve.rows]
                ax.bar([r["lower"] + k * width for r in curve.rows], heights, width=width, align="edge",
                       color=curve.colour, alpha=0.25, zorder=1)  # fmt: skip
        if tallest:
            ax.text(0.99, WEIGHT_HEIGHT + 0.01, f"bars: labels per bin (tallest {tallest:,})", ha="right",
                    fontsize="x-small", color="#555555")  # fmt: skip
        ax.set(xlim=(0, 1), ylim=(0, 1), ylabel="accuracy (fraction correct)", xticks=TICKS, yticks=TICKS)
        note = f"hollow: fewer than {TINY_BIN} labels; whiskers: 95% Wilson interval"
        ax.set_xlabel(f"mean confidence in bin  ({note})", fontsize="small")
        ax.set_title(title, fontsize="medium")
        ax.grid(True, color="#eeeeee")
        ax.legend(loc="upper left", fontsize="small")
        return _svg(fig, chart_id, title)


def _reliability_curve(ax: Any, chart_id: str, curve: Curve) -> None:
    drawn = [r for r in curve.rows if r["count"] and r["accuracy"] is not None]
    solid = [r for r in drawn if r["count"] >= TINY_BIN]
    tiny = [r for r in drawn if r["count"] < TINY_BIN]
    ax.plot([r["mean_confidence"] for r in solid], [r["accuracy"] for r in solid], color=curve.colour,
            linewidth=1.5, label=curve.label, zorder=2)  # fmt: skip
    intervals = [wilson(r["accuracy"] * r["count"], r["count"]) for r in drawn]
    ax.vlines([r["mean_confidence"] for r in drawn], [lo for lo, _ in intervals], [hi for _, hi in intervals],
              color=curve.colour, alpha=0.45, linewidth=1, zorder=2)  # fmt: skip
    for name, rows, face in (("bins", solid, curve.colour), ("tiny", tiny, "white")):
        points = ax.scatter([r["mean_confidence"] for r in rows], [r["accuracy"] for r in rows], s=30,
                            facecolors=face, edgecolors=curve.colour, zorder=3)  # fmt: skip
        points.set_gid(f"{chart_id}-{curve.name}-{name}")


def histogram(
    chart_id: str, title: str, series: Sequence[tuple[str, list[float], list[float] | None, str]]
) -> str:
    """Share of predictions per confidence bin, each score's current period (filled) against its
    reference period (dashed outline): (name, current counts, reference counts or None, colour)."""
    with _LOCK:
        fig = _figure(5.6, 3.6, title_lines=title.count("\n") + 1)
        ax = fig.subplots()
        for name, current, reference, colour in series:
            edges = [i / len(current) for i in range(len(current) + 1)]
            for values, label, fill in (
                (current, f"{name}: current", True),
                (reference, f"{name}: reference", False),
            ):
                total = sum(values or [])
                if not values or not total:
                    continue
                shares = [v / total for v in values]
                ax.stairs(shares, edges, label=label, color=colour, fill=fill, linewidth=1.5,
                          alpha=0.3 if fill else 1.0, linestyle="-" if fill else "--")  # fmt: skip
        ax.set(xlim=(0, 1), ylabel="share of predictions", xlabel="confidence", xticks=TICKS)
        ax.set_title(title, fontsize="medium")
        ax.legend(loc="upper left", fontsize="small")
        return _svg(fig, chart_id, title)


def _time_axis(ax: Any) -> None:
    """Prediction time on x: 3 to 7 concise UTC date ticks."""
    locator = mdates.AutoDateLocator(minticks=3, maxticks=7)  # type: ignore[no-untyped-call]
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))  # type: ignore[no-untyped-call]


COVERAGE_STRIP = 0.3  # the label-coverage strip below the ECE axis, as a share of the ECE range


def over_time(chart_id: str, points: Sequence[TimePoint], marks: Sequence[EventMark], title: str) -> str:
    """ECE per score per period of prediction time, decisions marked, and label coverage as a strip
    under the ECE axis (its own 0-100% scale, written on it): one axes, not two, for ~20 ms less."""
    with _LOCK:
        fig = _figure(12.5, 4.4, title_lines=1)
        ax: Any = fig.subplots()  # datetimes on x: matplotlib's stubs type its data as floats
        times = [datetime.fromtimestamp(p.start, UTC) for p in points]
        top = max([v for p in points for v in p.ece.values() if v is not None] + [0.01]) * 1.15
        floor = -COVERAGE_STRIP * top
        for score, colour, width in (("raw", RAW_COLOUR, 3.0), ("calibrated", CALIBRATED_COLOUR, 1.5)):
            xs = [t for t, p in zip(times, points, strict=True) if p.ece.get(score) is not None]
            ys = [p.ece[score] for p in points if p.ece.get(score) is not None]
            line = ax.plot(xs, ys, marker="o", markersize=width + 1, color=colour, linewidth=width,
                           alpha=0.55 if score == "raw" else 1.0, label=f"{score} ECE")  # fmt: skip
            line[0].set_gid(f"{chart_id}-{score}-ece")
        strip = [
            floor + 0.9 * -floor * (p.labelled / p.predictions if p.predictions else 0.0) for p in points
        ]
        ax.fill_between(times, floor, strip, step="post", color="#2ca02c", alpha=0.3,
                        label="label coverage")  # fmt: skip
        ax.axhline(0, color="#777777", linewidth=0.8)
        ax.text(0.002, 0.02, "label coverage: strip height 0-100%", transform=ax.transAxes,
                fontsize="x-small", color="#2a6b2a")  # fmt: skip
        for mark in marks:
            when = datetime.fromtimestamp(mark.ts, UTC)
            ax.axvline(when, color=mark.colour, linewidth=1, linestyle=":")
            ax.annotate(mark.label, (when, 1), xycoords=("data", "axes fraction"), rotation=90,
                        fontsize="x-small", color=mark.colour, va="top", ha="right")  # fmt: skip
        ax.set_title(title, fontsize="medium")
        ax.set(ylabel="ECE", ylim=(floor, top), xlabel="prediction time (UTC)")
        ax.set_yticks([t for t in MaxNLocator(4).tick_values(0, top) if 0 <= t <= top])
        ax.grid(True, color="#eeeeee")
        ax.legend(loc="upper left", fontsize="small")
        _time_axis(ax)
        return _svg(fig, chart_id, title)


def accuracy_over_time(
    chart_id: str, points: Sequence[TimePoint], marks: Sequence[EventMark], title: str
) -> str:
    """Label-free estimated accuracy with its 95% band against the realised accuracy of the labelled
    predictions, per period of prediction time: where they part, the calibrator stopped fitting;
    where only the estimate is drawn, the labels have not arrived yet."""
    with _LOCK:
        fig = _figure(12.5, 3.6, title_lines=1)
        ax: Any = fig.subplots()
        times = [datetime.fromtimestamp(p.start, UTC) for p in points]
        banded = [
            (t, p.accuracy) for t, p in zip(times, points, strict=True) if p.accuracy.get("lower") is not None
        ]
        if banded:
            when = [t for t, _ in banded]
            lower, upper = [a["lower"] for _, a in banded], [a["upper"] for _, a in banded]
            ax.fill_between(
                when, lower, upper, color=CALIBRATED_COLOUR, alpha=0.15, label="estimate, 95% interval"
            )
        for key, colour, style, label in (
            ("estimated", CALIBRATED_COLOUR, "-", "estimated (every prediction, no labels needed)"),
            ("realised", "#333333", "--", "realised (labelled predictions)"),
        ):
            xs = [t for t, p in zip(times, points, strict=True) if p.accuracy.get(key) is not None]
            ys = [p.accuracy[key] for p in points if p.accuracy.get(key) is not None]
            line = ax.plot(
                xs, ys, marker="o", markersize=3, color=colour, linestyle=style, linewidth=1.5, label=label
            )
            line[0].set_gid(f"{chart_id}-{key}")
        for mark in marks:
            ax.axvline(datetime.fromtimestamp(mark.ts, UTC), color=mark.colour, linewidth=1, linestyle=":")
        ax.set_title(title, fontsize="medium")
        ax.set(ylabel="accuracy", ylim=(0, 1.02), xlabel="prediction time (UTC)")
        ax.grid(True, color="#eeeeee")
        ax.legend(loc="lower left", fontsize="small")
        _time_axis(ax)
        return _svg(fig, chart_id, title)


def risk_coverage(
    chart_id: str, title: str, points: Sequence[dict[str, Any]], advice: Sequence[dict[str, Any]]
) -> str:
    """Precision of the accepted answers against the share of traffic accepted, one marker per
    threshold (written beside it), the exact lower bound dashed under it, and each advised threshold
    starred on its target line: the whole trade-off the advice picks a point of."""
    with _LOCK:
        fig = _figure(5.6, 3.6, title_lines=title.count("\n") + 1)
        ax: Any = fig.subplots()
        known = sorted((p for p in points if p.get("precision") is not None), key=lambda p: p["coverage"])
        xs = [p["coverage"] for p in known]
        line = ax.plot(xs, [p["precision"] for p in known], marker="o", markersize=4, color=CALIBRATED_COLOUR,
                       linewidth=1.5, label="precision of accepted (labelled)")  # fmt: skip
        line[0].set_gid(f"{chart_id}-precision")
        ax.plot(xs, [p["precision_lower"] for p in known], color=CALIBRATED_COLOUR, linestyle="--",
                linewidth=1, alpha=0.7, label="its lower bound")  # fmt: skip
        for p in known:
            ax.annotate(f"{p['threshold']:.3g}", (p["coverage"], p["precision"]), textcoords="offset points",
                        xytext=(3, 4), fontsize="xx-small", color="#555555")  # fmt: skip
        advised = [a for a in advice if a.get("threshold") is not None]
        for a in advice:
            ax.axhline(a["target"], color="#2ca02c", linewidth=0.8, linestyle=":")
        stars = ax.plot([a["coverage"] for a in advised], [a["precision"] for a in advised],
                        linestyle="none", marker="*", markersize=11, color="#2ca02c",
                        label="advised threshold per target")  # fmt: skip
        stars[0].set_gid(f"{chart_id}-advised")
        for a in advised:
            ax.annotate(f"{a['target']:g}: accept ≥ {a['threshold']:.4g}", (a["coverage"], a["precision"]),
                        textcoords="offset points", xytext=(-4, -11), ha="right", fontsize="x-small",
                        color="#2a6b2a")  # fmt: skip
        low = min([p["precision_lower"] for p in known] + [a["target"] for a in advice] + [1.0])
        if not known:
            ax.text(0.5, 0.5, "no labelled predictions yet", transform=ax.transAxes, ha="center")
        ax.set(xlim=(0, 1.02), ylim=(max(0.0, low - 0.05), 1.005), xlabel="share of traffic accepted",
               ylabel="precision", xticks=TICKS)  # fmt: skip
        ax.set_title(title, fontsize="medium")
        ax.grid(True, color="#eeeeee")
        ax.legend(loc="lower left", fontsize="x-small")
        return _svg(fig, chart_id, title)


def warm() -> None:
    """Load the fonts and the SVG backend now (a small chart), not on the first page a person opens."""
    reliability("warm", "warm", [Curve("raw", "raw", [], RAW_COLOUR)], 1)
