"""Emitter metrics, created against a registry the caller owns."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Histogram

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


@dataclass(frozen=True)
class EmitterMetrics:
    sent: Counter
    failed: Counter
    invalid: Counter
    bytes: Counter
    latency: Histogram


def create(registry: CollectorRegistry, namespace: str = "touchstream") -> EmitterMetrics:
    return EmitterMetrics(
        sent=Counter(
            "emitter_events_sent",
            "Events acknowledged by the broker",
            ["topic"],
            namespace=namespace,
            registry=registry,
        ),
        failed=Counter(
            "emitter_events_failed",
            "Events the broker did not acknowledge (after the client's retries)",
            ["topic"],
            namespace=namespace,
            registry=registry,
        ),
        invalid=Counter(
            "emitter_events_invalid",
            "Events refused before sending (validation or size)",
            ["reason"],
            namespace=namespace,
            registry=registry,
        ),
        bytes=Counter(
            "emitter_bytes_sent",
            "Serialized event bytes acknowledged by the broker",
            ["topic"],
            namespace=namespace,
            registry=registry,
        ),
        latency=Histogram(
            "emitter_delivery_seconds",
            "From emit() to the broker's acknowledgement",
            ["topic"],
            namespace=namespace,
            registry=registry,
            buckets=LATENCY_BUCKETS,
        ),
    )
