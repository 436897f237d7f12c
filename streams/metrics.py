"""Stream worker metrics, created against a registry the caller owns.

Besides plain counters and gauges: two histograms observed a batch at a time
(:class:`BatchHistogram`: per-message processing latency and per-event freshness
cost one sort per batch, not a locked ``observe()`` per message), the KPI values
as gauges with bounded labels (:class:`KpiGauges`), and consumer lag per
partition (:class:`PartitionLag`, filled by :func:`measure_lag`).
"""

from __future__ import annotations

import math
import threading
import time
from bisect import bisect_right
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from aiokafka.errors import IllegalStateError
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from touchstream.schemas.records import KpiUpdate

BATCH_BUCKETS = (1, 10, 50, 100, 500, 1000, 2500, 5000, 10_000, 50_000)
SECONDS_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# From the record's Kafka timestamp to the batch's outputs flushed.
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
# received_at - occurred_at: 300 s is the freshness SLO's bound (deploy/prometheus).
FRESHNESS_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 3 * 3600, 6 * 3600, 86_400)
LAG_INTERVAL_S = 2.0

# Label values a KPI gauge may carry (PRODUCT.md's channels and touchpoints, and
# "all" for the overall rows). Anything else stays out of Prometheus (it is in
# ClickHouse) and is counted, so a new channel cannot blow up the series count.
CHANNELS = frozenset(
    ("web", "mobile_app", "whatsapp", "call_center", "email", "store", "marketplace", "all")
)
TOUCHPOINTS = frozenset(
    (
        "home",
        "search",
        "catalog",
        "product_page",
        "cart",
        "checkout",
        "payment",
        "order_confirmation",
        "delivery",
        "invoice",
        "support_chat",
        "ivr",
        "account",  # subscriptions (the simulator's, and PRODUCT.md's "...")
        "all",
    )
)
KPIS = frozenset(
    (
        "nps",
        "csat",
        "ces",
        "ces_easy_share",
        "comments_positive_share",
        "retention",
        "churn",
        "upsell",
        "cross_sell",
        "checkout_abandonment",
        "cart_abandonment",
        "isn:attention",
        "isn:product_found",
        "isn:price_quality",
        "isn:delivery",
    )
)
KPI_LABELS = ("kpi", "channel", "touchpoint", "window_size")


class BatchHistogram(Collector):
    """A label-less histogram fed a batch of values at once: the batch is sorted
    once and each bucket's count is a bisection, so observing every message of a
    5,000-message batch costs well under a millisecond."""

    def __init__(
        self, name: str, documentation: str, buckets: Sequence[float], registry: CollectorRegistry
    ) -> None:
        self.name, self.documentation = name, documentation
        self._bounds = tuple(sorted(float(b) for b in buckets))
        self._cumulative = [0] * (len(self._bounds) + 1)  # ≤ each bound, then all
        self._sum = 0.0
        self._lock = threading.Lock()
        registry.register(self)

    def observe_many(self, values: Iterable[float]) -> None:
        ordered = sorted(values)
        if not ordered:
            return
        counts = [bisect_right(ordered, bound) for bound in self._bounds]
        counts.append(len(ordered))
        total = math.fsum(ordered)
        with self._lock:
            for i, count in enumerate(counts):
                self._cumulative[i] += count
            self._sum += total

    def _family(self) -> HistogramMetricFamily:
        return HistogramMetricFamily(self.name, self.documentation)

    def describe(self) -> Iterable[Metric]:
        return [self._family()]

    def collect(self) -> Iterable[Metric]:
        with self._lock:
            cumulative, total = list(self._cumulative), self._sum
        les = [floatToGoString(bound) for bound in self._bounds] + ["+Inf"]
        family = self._family()
        family.add_metric([], list(zip(les, map(float, cumulative), strict=True)), total)
        return [family]


@dataclass
class _Window:
    end: float
    value: float | None
    denominator: float


class KpiGauges(Collector):
    """The latest KPI values as gauges ``<ns>_kpi_value`` and ``<ns>_kpi_denominator``
    per (kpi, channel, touchpoint, window_size).

    Per series the value shown is the *trailing* window: of the windows that
    contain the newest window start seen, the earliest, i.e. the one covering the
    most recent full ``window_size`` of event time (for 1 h windows every 5 min,
    the hour up to the newest event; for days, today). A series whose trailing
    window ended more than one window size ago (wall clock) is no longer exported,
    so an alert never fires on a value nobody updates."""

    def __init__(
        self,
        namespace: str,
        registry: CollectorRegistry,
        skipped: Counter,
        clock: Any = time.time,
    ) -> None:
        self._value_name = f"{namespace}_kpi_value"
        self._denominator_name = f"{namespace}_kpi_denominator"
        self._skipped = skipped
        self._clock = clock
        self._windows: dict[tuple[str, str, str, int], dict[float, _Window]] = {}
        self._lock = threading.Lock()
        registry.register(self)

    @staticmethod
    def bounded(update: KpiUpdate) -> bool:
        return (
            update.kpi in KPIS and update.channel in CHANNELS and update.touchpoint in TOUCHPOINTS
        )

    def observe(self, update: KpiUpdate) -> None:
        if not self.bounded(update):
            self._skipped.inc()
            return
        size = update.window_size_s
        key = (update.kpi, update.channel, update.touchpoint, size)
        start = update.window_start.timestamp()
        window = _Window(update.window_end.timestamp(), update.value, update.denominator)
        with self._lock:
            windows = self._windows.setdefault(key, {})
            windows[start] = window
            newest = max(windows)
            for old in [s for s in windows if s <= newest - size]:
                del windows[old]

    def _families(self) -> tuple[GaugeMetricFamily, GaugeMetricFamily]:
        return (
            GaugeMetricFamily(
                self._value_name,
                "Latest KPI value of the trailing window (NPS/ISN -100..100, CES 1..7, "
                "shares and rates 0..1)",
                labels=KPI_LABELS,
            ),
            GaugeMetricFamily(
                self._denominator_name,
                "Responses/decisions behind the KPI value of the trailing window",
                labels=KPI_LABELS,
            ),
        )

    def describe(self) -> Iterable[Metric]:
        return self._families()

    def collect(self) -> Iterable[Metric]:
        now = self._clock()
        value, denominator = self._families()
        with self._lock:
            trailing = [(key, windows[min(windows)]) for key, windows in self._windows.items()]
        for (kpi, channel, touchpoint, size), window in trailing:
            if window.end < now - size:
                continue
            labels = [kpi, channel, touchpoint, str(size)]
            if window.value is not None:
                value.add_metric(labels, window.value)
            denominator.add_metric(labels, window.denominator)
        return [value, denominator]


class PartitionLag:
    """A gauge per assigned topic-partition; partitions no longer assigned (after a
    rebalance) are removed, so a revoked partition never shows a frozen lag."""

    def __init__(self, gauge: Gauge) -> None:
        self.gauge = gauge
        self._shown: set[tuple[str, int]] = set()

    def set(self, lags: Mapping[tuple[str, int], int]) -> None:
        for (topic, partition), lag in lags.items():
            self.gauge.labels(topic, str(partition)).set(max(0, lag))
        for topic, partition in self._shown - set(lags):
            self.gauge.remove(topic, str(partition))
        self._shown = set(lags)


class _Consumer(Protocol):
    def assignment(self) -> Collection[Any]: ...

    def highwater(self, tp: Any) -> int | None: ...

    async def position(self, tp: Any) -> int | None: ...


async def measure_lag(consumer: _Consumer, topics: Collection[str]) -> dict[tuple[str, int], int]:
    """highwater (from fetch responses, right on the local broker too) minus the next
    offset to fetch, per assigned partition of ``topics`` that has both."""
    lags: dict[tuple[str, int], int] = {}
    for tp in list(consumer.assignment()):
        # A rebalance can take a partition away during an await below; aiokafka
        # then fails an assertion (highwater) or raises (position), and this
        # timer's error ended the worker (seen in tests/integration/test_scale_out.py).
        if tp.topic not in topics or tp not in consumer.assignment():
            continue
        highwater = consumer.highwater(tp)
        try:
            position = await consumer.position(tp)
        except IllegalStateError:
            continue
        if highwater is not None and position is not None:
            lags[(tp.topic, tp.partition)] = highwater - position
    return lags


class _Timed(Protocol):
    @property
    def at(self) -> float: ...  # occurred_at in epoch seconds


@dataclass(frozen=True)
class WorkerMetrics:
    messages_in: Counter
    events_valid: Counter
    dead_letters: Counter
    batch_size: Histogram
    batch_seconds: Histogram
    kpi_updates: Counter
    agent_crashes: Counter
    up: Gauge
    alerts: Counter
    alerts_open: Gauge
    alerts_past_sla: Gauge
    alert_time_to_close: Histogram
    duplicates: Counter
    late_events: Counter
    replayed: Counter
    replayed_contributions: Counter
    expired_contributions: Counter
    state_keys: Gauge
    state_file_bytes: Gauge
    stale_feedback: Counter
    replayed_outcomes: Counter
    stitched_touches: Counter
    consumer_lag: PartitionLag
    processing_latency: BatchHistogram
    freshness: BatchHistogram
    kpis: KpiGauges

    def prime(self, raw_topics: Iterable[str]) -> None:
        """Create the per-topic series at 0, so rate() sees a topic that never got a message."""
        for topic in raw_topics:
            self.messages_in.labels(topic)
            self.late_events.labels(topic)

    def observe_batch(
        self, kafka_timestamps: Iterable[float | None], events: Iterable[_Timed], received: datetime
    ) -> None:
        """After a batch's outputs are flushed: processing latency per message (from its
        Kafka timestamp) and freshness per valid event (received - occurred)."""
        done = time.time()
        self.processing_latency.observe_many(max(0.0, done - t) for t in kafka_timestamps if t)
        at = received.timestamp()
        self.freshness.observe_many(max(0.0, at - e.at) for e in events)


def create(registry: CollectorRegistry, namespace: str = "touchstream") -> WorkerMetrics:
    def counter(name: str, doc: str, labels: list[str]) -> Counter:
        return Counter(name, doc, labels, namespace=namespace, registry=registry)

    return WorkerMetrics(
        messages_in=counter("worker_messages", "Raw messages consumed", ["topic"]),
        events_valid=counter("worker_events_valid", "Messages that validated", ["event_type"]),
        dead_letters=counter("worker_dead_letters", "Messages sent to the DLQ", ["reason"]),
        batch_size=Histogram(
            "worker_batch_messages",
            "Messages per ingest batch",
            namespace=namespace,
            registry=registry,
            buckets=BATCH_BUCKETS,
        ),
        batch_seconds=Histogram(
            "worker_batch_seconds",
            "Time to process and hand over one ingest batch",
            namespace=namespace,
            registry=registry,
            buckets=SECONDS_BUCKETS,
        ),
        kpi_updates=counter("worker_kpi_updates", "KPI window updates emitted", ["kpi"]),
        agent_crashes=counter("worker_agent_crashes", "Agents that stopped on an error", ["agent"]),
        up=Gauge("worker_up", "1 while every agent runs", namespace=namespace, registry=registry),
        alerts=counter("alerts", "Closed-loop alert records emitted", ["status", "kind"]),
        alerts_open=Gauge(
            "alerts_open",
            "Alerts open (incl. overdue) in this worker's partitions",
            namespace=namespace,
            registry=registry,
        ),
        alerts_past_sla=Gauge(
            "alerts_past_sla",
            "Alerts open past the SLA in this worker's partitions",
            namespace=namespace,
            registry=registry,
        ),
        alert_time_to_close=Histogram(
            "alert_time_to_close_seconds",
            "From the feedback to its case_closed (event time)",
            namespace=namespace,
            registry=registry,
            buckets=(300, 900, 1800, 3600, 3 * 3600, 6 * 3600, 12 * 3600, 86_400, 172_800),
        ),
        duplicates=Counter(
            "worker_duplicates",
            "Events dropped as duplicates of an event_id already seen",
            namespace=namespace,
            registry=registry,
        ),
        late_events=counter(
            "worker_late_events",
            "Events beyond the allowed lateness (stored, not counted)",
            ["topic"],
        ),
        replayed=Counter(
            "worker_replayed",
            "Raw messages re-read after a restart that a checkpoint already covered",
            namespace=namespace,
            registry=registry,
        ),
        replayed_contributions=Counter(
            "worker_replayed_contributions",
            "KPI contributions skipped as replays of ones already counted",
            namespace=namespace,
            registry=registry,
        ),
        expired_contributions=Counter(
            "worker_expired_contributions",
            "KPI contributions dropped: older than STREAMS__KPI_RETENTION_S behind the clock",
            namespace=namespace,
            registry=registry,
        ),
        state_keys=Gauge(
            "worker_state_keys",
            "Keys each stage holds in this worker's partitions: ingest dedup ids, KPI"
            " buckets, outcome entities, alert slots (bounded in event time)",
            ["stage"],
            namespace=namespace,
            registry=registry,
        ),
        state_file_bytes=Gauge(
            "worker_state_file_bytes",
            "Bytes of the local files holding the outcome entities beyond"
            " STREAMS__OUTCOME_CACHE_ENTRIES per partition (a cache of the checkpoints)",
            namespace=namespace,
            registry=registry,
        ),
        stale_feedback=Counter(
            "worker_stale_feedback",
            "Detractor feedback older than STREAMS__ALERT_RETENTION_S behind its partition:"
            " stored, no alert raised",
            namespace=namespace,
            registry=registry,
        ),
        replayed_outcomes=Counter(
            "worker_replayed_outcomes",
            "Outcome steps re-read after a restart whose effects the state already held",
            namespace=namespace,
            registry=registry,
        ),
        stitched_touches=Counter(
            "worker_stitched_touches",
            "Interactions of anonymous ids handed to the customer they are linked to",
            namespace=namespace,
            registry=registry,
        ),
        consumer_lag=PartitionLag(
            Gauge(
                "worker_consumer_lag",
                "Messages between a partition's highwater and the worker's position",
                ["topic", "partition"],
                namespace=namespace,
                registry=registry,
            )
        ),
        processing_latency=BatchHistogram(
            f"{namespace}_worker_processing_latency_seconds",
            "From a raw message's Kafka timestamp to its outputs flushed",
            LATENCY_BUCKETS,
            registry,
        ),
        freshness=BatchHistogram(
            f"{namespace}_worker_event_freshness_seconds",
            "Event-time freshness at ingest: received_at - occurred_at of valid events",
            FRESHNESS_BUCKETS,
            registry,
        ),
        kpis=KpiGauges(
            namespace,
            registry,
            counter(
                "worker_kpi_gauges_skipped",
                "KPI updates not exported as gauges: a label outside the bounded sets",
                [],
            ),
        ),
    )
