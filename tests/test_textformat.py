"""``textformat.render`` writes exactly what ``prometheus_client.generate_latest`` writes, for every
family kind the exporter uses and for label values that need escaping."""

from __future__ import annotations

import math
from collections.abc import Iterator

from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeHistogramMetricFamily,
    GaugeMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from monitor.textformat import render

values = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.0, -0.0, 1e6, 12345678.9, 1e-7, math.inf, -math.inf, 3]),
)
texts = st.one_of(st.text(max_size=12), st.sampled_from(['a"b', "c\\d", "e\nf", "naïve", "", "*"]))


class Fixed(Collector):
    def __init__(self, families: list[Metric]):
        self.families = families

    def collect(self) -> Iterator[Metric]:
        yield from self.families


@st.composite
def families(draw: st.DrawFn) -> list[Metric]:
    out: list[Metric] = []
    for k in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["gauge", "counter", "histogram", "info"]))
        doc = draw(st.sampled_from(["plain help", "with \\ backslash", "two\nlines"]))
        rows = draw(st.lists(st.tuples(texts, texts, values), min_size=0, max_size=6))
        if kind == "gauge":
            family: Metric = GaugeMetricFamily(f"calmon_g{k}", doc, labels=["model", "segment"])
            for a, b, v in rows:
                family.add_metric([a, b], v, timestamp=draw(st.one_of(st.none(), st.floats(0, 2e9))))
        elif kind == "counter":
            family = CounterMetricFamily(f"calmon_c{k}", doc, labels=["model", "le"])
            for a, b, v in rows:
                family.add_metric(
                    [a, b],
                    abs(v) if not math.isnan(v) else 0.0,
                    created=draw(st.one_of(st.none(), st.floats(0, 2e9))),
                )
        elif kind == "histogram":
            family = GaugeHistogramMetricFamily(f"calmon_h{k}", doc, labels=["model"])
            for a, _, v in rows[:2]:
                family.add_metric([a], [("0.5", 1.0), ("+Inf", 2.0)], gsum_value=v)
        else:
            family = InfoMetricFamily(f"calmon_i{k}", doc, labels=["model"])
            for a, b, _ in rows:
                family.add_metric([a], {"version": b})
        out.append(family)
    return out


@settings(max_examples=200, deadline=None)
@given(families())
def test_render_writes_the_bytes_generate_latest_writes(found: list[Metric]) -> None:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(Fixed(found))
    assert render(registry) == generate_latest(registry)
