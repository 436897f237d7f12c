"""The Faust application: thin agents over the pure logic in ingest/aggregate/kpis.

- ``ingest`` takes raw messages in batches from the three raw topics, and hands
  each batch to :func:`touchstream.streams.ingest.ingest`: valid events go to the
  internal events topic (for the sink), bad ones to the dead-letter topic, KPI
  contributions to an internal topic keyed by KPI group.
- ``kpis`` folds contributions into a changelogged table of per-bucket counts;
  a timer emits the latest value of every changed window to the KPI topic.

Outputs are flushed before a batch is acknowledged (at-least-once). An agent
that raises ends the worker process with a non-zero exit, before its batch is
acknowledged: a crash is loud, and a restart re-reads the batch.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any

import faust
from prometheus_client import CollectorRegistry

from touchstream.schemas.events import utcnow
from touchstream.settings import KafkaSettings, Settings
from touchstream.streams import metrics as worker_metrics
from touchstream.streams.aggregate import Dirty, KpiAggregator
from touchstream.streams.ingest import RawMessage, ingest
from touchstream.streams.kpis import Contribution

log = logging.getLogger(__name__)

EXIT_AGENT_CRASHED = 70


def _credentials(kafka: KafkaSettings) -> Any:
    if kafka.security_protocol.startswith("SASL_"):
        assert kafka.sasl_password is not None  # noqa: S101 - validated by settings
        return faust.SASLCredentials(
            username=kafka.sasl_username,
            password=kafka.sasl_password.get_secret_value(),
            mechanism=kafka.sasl_mechanism,
            ssl_context=kafka.ssl_context(),
        )
    if kafka.security_protocol == "SSL":
        return faust.SSLCredentials(kafka.ssl_context())
    return None


class TouchstreamApp(faust.App):
    """faust.App whose agent errors go to ``crash_handler`` (Faust keeps the worker
    running with the agent dead otherwise, counting nothing)."""

    crash_handler: Callable[[Any, BaseException], Awaitable[None]] | None = None

    async def _on_agent_error(self, agent: Any, exc: BaseException) -> None:
        if self.crash_handler is not None:
            await self.crash_handler(agent, exc)
        await super()._on_agent_error(agent, exc)


def _hard_exit(code: int) -> None:
    logging.shutdown()
    os._exit(code)


def create_app(
    settings: Settings,
    registry: CollectorRegistry | None = None,
    on_crash: Callable[[int], None] = _hard_exit,
) -> faust.App:
    """Build the Faust app for these settings. Nothing connects until it runs."""
    kafka = settings.kafka
    if not kafka.bootstrap_servers:
        raise ValueError("the stream worker needs kafka.bootstrap_servers")
    streams = settings.streams
    metrics = worker_metrics.create(registry or CollectorRegistry(), settings.metrics.namespace)
    one_record_batches = streams.one_record_batches
    if one_record_batches is None:
        one_record_batches = kafka.bootstrap_servers.startswith("127.0.0.1:")
    app = TouchstreamApp(
        streams.app_id,
        broker=[f"kafka://{server}" for server in kafka.bootstrap_servers.split(",")],
        broker_credentials=_credentials(kafka),
        store="memory://",
        autodiscover=False,
        topic_partitions=kafka.partitions,
        topic_replication_factor=kafka.replication_factor,
        producer_acks=-1 if kafka.acks == "all" else int(kafka.acks),
        producer_compression_type=None
        if kafka.compression_type == "none"
        else kafka.compression_type,
        producer_linger_ms=kafka.linger_ms,
        # Local broker (Tansu) under-reports highwaters of multi-record batches, and
        # table recovery stops there: one record per batch there (PLATFORM.md).
        producer_max_batch_size=1 if one_record_batches else 16_384,
        consumer_auto_offset_reset="earliest",
        broker_session_timeout=kafka.session_timeout_ms / 1000,
        broker_heartbeat_interval=min(3.0, kafka.session_timeout_ms / 3000),
        web_enabled=streams.web_port > 0,
        web_port=streams.web_port or 6066,
        web_bind="127.0.0.1",
    )

    def raw_topic(*names: str) -> faust.TopicT:
        return app.topic(*names, key_serializer="raw", value_serializer="raw")

    raw_in = raw_topic(
        settings.topic("clickstream"), settings.topic("orders"), settings.topic("feedback")
    )
    events_out = raw_topic(settings.topic("events"))
    dead_letters_out = raw_topic(settings.topic("dead_letters"))
    kpis_out = raw_topic(settings.topic("kpis"))
    contributions_topic = raw_topic(settings.topic("kpi_contributions"))

    buckets = app.Table(
        "kpi-buckets",
        default=None,
        partitions=kafka.partitions,
        key_type=str,
        value_type=dict,
    )
    aggregator = KpiAggregator(
        buckets, streams.window_size_s, streams.window_step_s, streams.daily_window
    )
    dirty: set[Dirty] = set()

    async def crashed(agent: Any, exc: BaseException) -> None:
        metrics.agent_crashes.labels(getattr(agent, "name", "agent")).inc()
        metrics.up.set(0)
        log.critical("agent %s crashed; stopping the worker: %r", agent, exc, exc_info=exc)
        on_crash(EXIT_AGENT_CRASHED)

    app.crash_handler = crashed

    @app.agent(raw_in, name="touchstream.ingest")
    async def ingest_agent(stream: faust.StreamT) -> None:
        # StreamT's annotations lack take_events (faust-streaming 0.15); Stream has it.
        batches = stream.take_events(  # type: ignore[attr-defined]
            streams.batch_size, within=streams.batch_interval_s
        )
        async for batch in batches:
            started = time.perf_counter()
            messages = [
                RawMessage(e.message.topic, e.message.partition, e.message.offset, e.key, e.value)
                for e in batch
            ]
            for message in messages:
                metrics.messages_in.labels(message.topic).inc()
            result = ingest(messages, utcnow(), streams.max_event_bytes)
            for event in result.events:
                await events_out.send(
                    key=event.identity.encode(),
                    value=event.model_dump_json(exclude_none=True).encode(),
                )
                metrics.events_valid.labels(event.event_type).inc()
            for key, dead_letter in result.dead_letters:
                await dead_letters_out.send(key=key, value=dead_letter.model_dump_json().encode())
                metrics.dead_letters.labels(dead_letter.reason).inc()
            for contribution in result.contributions:
                await contributions_topic.send(
                    key=contribution.group.encode(),
                    value=json.dumps(
                        {"at": contribution.at, "counts": dict(contribution.counts)}
                    ).encode(),
                )
            await app.producer.flush()
            metrics.batch_size.observe(len(messages))
            metrics.batch_seconds.observe(time.perf_counter() - started)

    @app.agent(contributions_topic, name="touchstream.kpis")
    async def kpi_agent(stream: faust.StreamT) -> None:
        # One message at a time: a table write is logged to the partition of the
        # message being processed, which take() batches would blur.
        async for event in stream.events():
            kpi, channel, touchpoint = event.key.decode().split("|")
            body = json.loads(event.value)
            contribution = Contribution(
                kpi, channel, touchpoint, float(body["at"]), tuple(body["counts"].items())
            )
            dirty.update(aggregator.add(contribution))

    @buckets.on_recover
    async def recovered() -> None:
        # Windows restored from the changelog are emitted again: an update that was
        # pending when the previous worker stopped is not lost.
        dirty.update(aggregator.all_windows())

    @app.timer(streams.kpi_emit_interval_s, name="touchstream.emit_kpis")
    async def emit_kpis() -> None:
        if not dirty:
            return
        pending = sorted(dirty)
        dirty.clear()
        now = utcnow()
        version = time.time_ns()
        for group, window in pending:
            update = aggregator.update(group, window, version, now)
            if not update.denominator:
                continue  # not ours (partition moved away): its owner emits it
            await kpis_out.send(
                key=f"{update.key}|{window.start}".encode(), value=update.model_dump_json().encode()
            )
            metrics.kpi_updates.labels(update.kpi).inc()

    @app.task
    async def started() -> None:
        metrics.up.set(1)

    return app
