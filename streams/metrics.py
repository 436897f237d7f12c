"""Stream worker metrics, created against a registry the caller owns."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

BATCH_BUCKETS = (1, 10, 50, 100, 500, 1000, 2500, 5000, 10_000, 50_000)
SECONDS_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


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
    )
