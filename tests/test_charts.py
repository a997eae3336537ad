"""Charts are well-formed SVG whatever names they carry, and draw what their tables hold."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import numpy as np
import pytest

import monitor.charts as charts
from monitor.calibration.metrics import reliability_table

SVG = "{http://www.w3.org/2000/svg}"
HOSTILE = 'qa "bot" <script>alert(1)</script> & $\\frac{a}{b}$ $x'


def parse(svg: str) -> ET.Element:
    return ET.fromstring(svg)  # noqa: S314  (our own output)


def test_a_hostile_name_stays_text_in_a_well_formed_svg() -> None:
    rows = reliability_table(np.array([0.9, 0.8, 0.7] * 20), np.array([1, 0, 1] * 20), 10).rows()
    root = parse(
        charts.reliability("c", HOSTILE, [charts.Curve("raw", HOSTILE, rows, charts.RAW_COLOUR)], 10)
    )
    assert root.attrib["aria-label"] == HOSTILE  # escaped on the way in, intact on the way out
    texts = ["".join(t.itertext()) for t in root.iter(f"{SVG}text")]
    assert HOSTILE in texts  # the title, as typed: no mathtext, no markup
    assert not list(root.iter(f"{SVG}script"))


def test_wilson_interval_reference_values() -> None:
    # Wilson 95% for 0/1, 1/1 and 8/10 (Newcombe 1998, Table I: 0.0-0.7935, 0.2065-1.0, 0.4902-0.9433)
    assert charts.wilson(0, 1) == pytest.approx((0.0, 0.7935), abs=1e-4)
    assert charts.wilson(1, 1) == pytest.approx((0.2065, 1.0), abs=1e-4)
    assert charts.wilson(8, 10) == pytest.approx((0.4902, 0.9433), abs=1e-4)


def test_history_draws_one_point_per_labelled_period() -> None:
    ece = {"raw": 0.1, "calibrated": 0.02}
    points = [charts.TimePoint(1.8e9 + 3600 * k, 100, 50 * (k % 2), ece if k % 2 else {}) for k in range(12)]
    root = parse(charts.over_time("h", points, [charts.EventMark(1.8e9 + 7200, "promoted", "#2ca02c")], "t"))
    for score in ("raw", "calibrated"):
        (group,) = [g for g in root.iter(f"{SVG}g") if g.attrib.get("id") == f"h-{score}-ece"]
        assert len(list(group.iter(f"{SVG}use"))) == 6  # markers at the six labelled periods
