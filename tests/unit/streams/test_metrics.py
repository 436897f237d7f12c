"""Worker metrics in memory, on fresh registries: the batch histogram agrees with
prometheus_client's own Histogram, KPI gauges show the trailing window (checked
against NPS computed from the events), stale and unbounded series stay out, lag
gauges follow the assignment."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Counter, Histogram

from touchstream.schemas.records import KpiUpdate
from touchstream.streams import metrics as worker_metrics
from touchstream.streams.windows import daily, hopping

T0 = datetime(2026, 11, 2, 12, 0, tzinfo=UTC).timestamp()
SIZE, STEP = 3600, 300


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


@given(st.lists(st.floats(min_value=0, max_value=200_000, allow_nan=False), max_size=300))
def test_batch_histogram_agrees_with_observing_one_by_one(values: list[float]) -> None:
    registry = CollectorRegistry()
    batch = worker_metrics.BatchHistogram(
        "t_batch_seconds", "t", worker_metrics.FRESHNESS_BUCKETS, registry
    )
    reference = Histogram(
        "t_reference_seconds",
        "t",
        registry=registry,
        buckets=worker_metrics.FRESHNESS_BUCKETS,
    )
    half = len(values) // 2
    batch.observe_many(values[:half])
    batch.observe_many(iter(values[half:]))  # any iterable, in several batches
    for value in values:
        reference.observe(value)
    for bound in [*(float(b) for b in worker_metrics.FRESHNESS_BUCKETS), math.inf]:
        le = "+Inf" if bound == math.inf else str(bound)
        assert sample(registry, "t_batch_seconds_bucket", le=le) == sample(
            registry, "t_reference_seconds_bucket", le=le
        )
    assert sample(registry, "t_batch_seconds_count") == len(values)
    assert math.isclose(
        sample(registry, "t_batch_seconds_sum") or 0.0, math.fsum(values), abs_tol=1e-6
    )


def nps(scores: list[int]) -> tuple[float, float | None]:
    n = len(scores)
    value = 100 * (sum(s >= 9 for s in scores) - sum(s <= 6 for s in scores)) / n if n else None
    return float(n), value


def update(window_start: float, size: int, scores: list[int], **labels: str) -> KpiUpdate:
    denominator, value = nps(scores)
    return KpiUpdate(
        kpi=labels.get("kpi", "nps"),
        channel=labels.get("channel", "web"),
        touchpoint=labels.get("touchpoint", "delivery"),
        window_start=datetime.fromtimestamp(window_start, UTC),
        window_end=datetime.fromtimestamp(window_start + size, UTC),
        window_size_s=size,
        numerator=0.0,
        denominator=denominator,
        value=value,
        version=1,
        updated_at=datetime.fromtimestamp(window_start, UTC),
    )


def kpi_gauges(now: list[float]) -> tuple[CollectorRegistry, worker_metrics.KpiGauges]:
    registry = CollectorRegistry()
    skipped = Counter("x_skipped", "t", registry=registry)
    return registry, worker_metrics.KpiGauges("x", registry, skipped, clock=lambda: now[0])


def test_kpi_gauges_show_the_trailing_hour_and_today() -> None:
    """Events arrive; after each, every window containing it is emitted (as the
    worker's emit timer does, oldest first). The gauge must read the NPS of the
    events in the trailing hour window, and of today."""
    now = [T0]
    registry, gauges = kpi_gauges(now)
    events = [(T0 + 7 * 60 * i, (3 * i) % 11) for i in range(30)]  # every 7 min, 3.5 h
    labels = {"kpi": "nps", "channel": "web", "touchpoint": "delivery"}
    for n, (at, _) in enumerate(events):
        now[0] = at + 5
        seen = events[: n + 1]
        for window in [*hopping(at, SIZE, STEP), daily(at)]:
            scores = [s for t, s in seen if window.start <= t < window.end]
            gauges.observe(update(window.start, window.size_s, scores))
        trailing = hopping(at, SIZE, STEP)[0]  # the earliest window holding the newest event
        hour = [s for t, s in seen if trailing.start <= t < trailing.end]
        today = [s for t, s in seen if daily(at).start <= t]
        assert sample(registry, "x_kpi_value", **labels, window_size="3600") == nps(hour)[1]
        assert sample(registry, "x_kpi_denominator", **labels, window_size="3600") == len(hour)
        assert sample(registry, "x_kpi_value", **labels, window_size="86400") == nps(today)[1]
    assert sample(registry, "x_skipped_total") == 0


def test_stale_kpi_series_leave_the_exposition() -> None:
    now = [T0]
    registry, gauges = kpi_gauges(now)
    window = hopping(T0, SIZE, STEP)[0]
    gauges.observe(update(window.start, SIZE, [10, 10, 3]))
    labels = {"kpi": "nps", "channel": "web", "touchpoint": "delivery", "window_size": "3600"}
    now[0] = window.end + SIZE - 1
    assert sample(registry, "x_kpi_value", **labels) == nps([10, 10, 3])[1]
    now[0] = window.end + SIZE + 1  # nobody updated it for a window's length
    assert sample(registry, "x_kpi_value", **labels) is None
    assert sample(registry, "x_kpi_denominator", **labels) is None


def test_labels_outside_the_bounded_sets_are_counted_not_exported() -> None:
    now = [T0]
    registry, gauges = kpi_gauges(now)
    start = hopping(T0, SIZE, STEP)[0].start
    gauges.observe(update(start, SIZE, [9], channel="carrier_pigeon"))
    gauges.observe(update(start, SIZE, [9], touchpoint="c" + "x" * 20))
    gauges.observe(update(start, SIZE, [9], kpi="isn:free_text_attribute"))
    gauges.observe(update(start, SIZE, [9], kpi="isn:delivery", touchpoint="all", channel="all"))
    assert sample(registry, "x_skipped_total") == 3
    exported = [s.labels for m in registry.collect() if m.name == "x_kpi_value" for s in m.samples]
    assert exported == [
        {"kpi": "isn:delivery", "channel": "all", "touchpoint": "all", "window_size": "3600"}
    ]


def test_a_kpi_without_responses_exports_its_denominator_only() -> None:
    now = [T0]
    registry, gauges = kpi_gauges(now)
    gauges.observe(update(hopping(T0, SIZE, STEP)[0].start, SIZE, []))
    labels = {"kpi": "nps", "channel": "web", "touchpoint": "delivery", "window_size": "3600"}
    assert sample(registry, "x_kpi_value", **labels) is None
    assert sample(registry, "x_kpi_denominator", **labels) == 0


def test_partition_lag_follows_the_assignment() -> None:
    registry = CollectorRegistry()
    metrics = worker_metrics.create(registry)
    metrics.consumer_lag.set({("a", 0): 5, ("a", 1): -2, ("b", 0): 7})
    name = "touchstream_worker_consumer_lag"
    assert sample(registry, name, topic="a", partition="0") == 5
    assert sample(registry, name, topic="a", partition="1") == 0  # never negative
    metrics.consumer_lag.set({("a", 1): 3})  # a rebalance took a:0 and b:0 away
    assert sample(registry, name, topic="a", partition="0") is None
    assert sample(registry, name, topic="b", partition="0") is None
    assert sample(registry, name, topic="a", partition="1") == 3


def test_observe_batch_measures_latency_from_kafka_time_and_freshness_from_event_time() -> None:
    registry = CollectorRegistry()
    metrics = worker_metrics.create(registry)
    metrics.prime(["raw.a", "raw.b"])
    received = datetime.now(UTC)
    events = [
        SimpleNamespace(at=(received - timedelta(seconds=s)).timestamp())
        for s in (2, 40, 400, 7200)
    ]
    kafka_time = received.timestamp() - 0.2
    metrics.observe_batch([kafka_time, None, kafka_time], events, received)
    fresh = "touchstream_worker_event_freshness_seconds"
    assert sample(registry, f"{fresh}_count") == 4
    assert sample(registry, f"{fresh}_bucket", le="5.0") == 1
    assert sample(registry, f"{fresh}_bucket", le="300.0") == 2
    assert sample(registry, f"{fresh}_bucket", le="600.0") == 3
    assert math.isclose(sample(registry, f"{fresh}_sum") or 0, 2 + 40 + 400 + 7200)
    latency = "touchstream_worker_processing_latency_seconds"
    assert sample(registry, f"{latency}_count") == 2  # a message without timestamp is skipped
    assert sample(registry, f"{latency}_bucket", le="0.1") == 0
    assert sample(registry, f"{latency}_bucket", le="60.0") == 2
    # primed series exist at zero, so rate() sees a silent topic
    assert sample(registry, "touchstream_worker_messages_total", topic="raw.b") == 0
    assert sample(registry, "touchstream_worker_late_events_total", topic="raw.a") == 0
