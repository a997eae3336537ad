"""The charts of each page, titled with their numbers, and a small cache keyed by the evaluation.

A page's charts change only when a new snapshot is published, so they are cached per snapshot
(``created_at``) in a bounded LRU: a second look at a page costs no rendering.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import monitor.charts as charts
from monitor.evaluation.windows import WindowStats
from monitor.web.views import History, SeriesView

__all__ = ["ChartCache", "ece_text", "series_charts"]


class ChartCache:
    """At most ``size`` rendered charts, least recently used out first."""

    def __init__(self, size: int = 256):
        self.size = size
        self._lock = threading.Lock()
        self._items: OrderedDict[tuple[Any, ...], str] = OrderedDict()

    def __contains__(self, key: tuple[Any, ...]) -> bool:
        with self._lock:
            return key in self._items

    def clear(self) -> None:
        with self._lock:
            self._items.clear()

    def get(self, key: tuple[Any, ...], render: Callable[[], str]) -> str:
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        svg = render()
        with self._lock:
            self._items[key] = svg
            while len(self._items) > self.size:
                self._items.popitem(last=False)
        return svg


def ece_text(stats: WindowStats | None) -> str:
    if stats is None or stats.ece is None:
        return "no labels"
    interval = ""
    if stats.ece_ci_lower is not None and stats.ece_ci_upper is not None:
        interval = f" [{stats.ece_ci_lower:.3f}, {stats.ece_ci_upper:.3f}]"
    return f"{stats.ece:.3f}{interval}"


# Reads a series' history while the page's other charts are drawn: the query waits on the database
# (the GIL released), the drawing on the CPU. Two threads: two pages at once; more would only queue.
HISTORY_READERS = ThreadPoolExecutor(max_workers=2, thread_name_prefix="calmon-history")
HISTORY_TIMEOUT_SECONDS = 30.0


def series_charts(
    view: SeriesView, cache: ChartCache, n_bins: int, load_history: Callable[[], History]
) -> dict[str, str]:
    """Reliability diagram, confidence histogram and history of one (model, segment, window). The
    history is read (``load_history``, on its own connection) only when its chart is not cached for
    this evaluation, and in the background while the other two charts are drawn."""
    key = (view.evaluated_at, view.model, view.segment, view.window)
    curves = [
        charts.Curve(name, name, stats.reliability, colour)
        for name, stats, colour in (
            ("raw", view.raw, charts.RAW_COLOUR),
            ("calibrated", view.calibrated, charts.CALIBRATED_COLOUR),
        )
        if stats is not None and stats.reliability
    ]
    labels = view.calibrated.labelled if view.calibrated else 0
    title = (
        f"calibrated ECE {ece_text(view.calibrated)}\nraw ECE {ece_text(view.raw)}\n"
        f"{view.window} window, {labels:,} labels (95% bootstrap intervals)"
    )
    series = [
        (name, stats.histogram, stats.reference_histogram or None, colour)
        for name, stats, colour in (
            ("raw", view.raw, charts.RAW_COLOUR),
            ("calibrated", view.calibrated, charts.CALIBRATED_COLOUR),
        )
        if stats is not None
    ]
    histogram_title = f"Confidence, {view.window} window against its reference period"

    history_key = ("history", *key[:3])
    cached = history_key in cache and ("accuracy", *key[:3]) in cache
    pending = HISTORY_READERS.submit(load_history) if not cached else None

    loaded: list[History] = []

    def history() -> History:
        if not loaded:
            loaded.append(pending.result(HISTORY_TIMEOUT_SECONDS) if pending is not None else load_history())
        return loaded[0]

    def history_chart() -> str:
        found = history()
        title = f"ECE and label coverage by prediction time, per {_duration(found.step)} (sketch buckets)"
        return charts.over_time("history", found.points, found.marks, title)

    def accuracy_chart() -> str:
        found = history()
        title = (
            f"Accuracy by prediction time, per {_duration(found.step)}: estimated (label-free) vs realised"
        )
        return charts.accuracy_over_time("accuracy", found.points, found.marks, title)

    return {
        "reliability": cache.get(
            ("reliability", *key), lambda: charts.reliability("reliability", title, curves, n_bins)
        ),
        "histogram": cache.get(
            ("histogram", *key), lambda: charts.histogram("histogram", histogram_title, series)
        ),
        "history": cache.get(history_key, history_chart),
        "accuracy": cache.get(("accuracy", *key[:3]), accuracy_chart),
        "risk_coverage": cache.get(("risk_coverage", *key), lambda: risk_coverage_chart(view)),
    }


def risk_coverage_chart(view: SeriesView) -> str:
    stats = view.calibrated
    points = stats.risk_coverage if stats is not None else []
    advice = stats.advice if stats is not None else []
    labels = stats.labelled if stats is not None else 0
    title = f"Risk-coverage, {view.window} window, calibrated\n{labels:,} labels; threshold beside each point"
    return charts.risk_coverage("risk-coverage", title, points, advice)


def _duration(seconds: int) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds // size} {unit}"
    return f"{seconds} s"
