"""Sink metrics, created against a registry the caller owns."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

ROWS_BUCKETS = (1, 10, 100, 1000, 5000, 10_000, 25_000, 50_000, 100_000, 250_000)
SECONDS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


@dataclass(frozen=True)
class SinkMetrics:
    rows_written: Counter
    rows_rejected: Counter
    raw_batches_mapped: Counter
    batch_rows: Histogram
    flush_seconds: Histogram
    insert_failures: Counter
    backpressure_pauses: Counter
    buffered_rows: Gauge
    flush_retries: Counter
    backpressured: Gauge
    consumer_lag: Gauge


def create(registry: CollectorRegistry, namespace: str = "touchstream") -> SinkMetrics:
    return SinkMetrics(
        rows_written=Counter(
            "sink_rows_written",
            "Rows ClickHouse acknowledged",
            ["table"],
            namespace=namespace,
            registry=registry,
        ),
        rows_rejected=Counter(
            "sink_rows_rejected",
            "Records that could not be mapped to a row (kept as dead letters)",
            ["topic"],
            namespace=namespace,
            registry=registry,
        ),
        raw_batches_mapped=Counter(
            "sink_raw_batches_mapped",
            "Batches of records inserted as they came (JSONEachRow) that failed and "
            "were mapped row by row instead",
            ["table"],
            namespace=namespace,
            registry=registry,
        ),
        batch_rows=Histogram(
            "sink_batch_rows",
            "Rows per flush",
            namespace=namespace,
            registry=registry,
            buckets=ROWS_BUCKETS,
        ),
        flush_seconds=Histogram(
            "sink_flush_seconds",
            "Duration of a successful flush",
            namespace=namespace,
            registry=registry,
            buckets=SECONDS_BUCKETS,
        ),
        insert_failures=Counter(
            "sink_insert_failures",
            "Flushes that failed and will be retried",
            namespace=namespace,
            registry=registry,
        ),
        backpressure_pauses=Counter(
            "sink_backpressure_pauses",
            "Times consumption was paused for a failing flush",
            namespace=namespace,
            registry=registry,
        ),
        buffered_rows=Gauge(
            "sink_buffered_rows",
            "Rows waiting for the next flush",
            namespace=namespace,
            registry=registry,
        ),
        flush_retries=Counter(
            "sink_flush_retries",
            "Retries of a failed flush (the identical batch, after a backoff)",
            namespace=namespace,
            registry=registry,
        ),
        backpressured=Gauge(
            "sink_backpressured",
            "1 while consumption is paused because a flush keeps failing",
            namespace=namespace,
            registry=registry,
        ),
        consumer_lag=Gauge(
            "sink_consumer_lag",
            "Records of a partition not yet landed in ClickHouse (highwater - committed)",
            ["topic", "partition"],
            namespace=namespace,
            registry=registry,
        ),
    )
