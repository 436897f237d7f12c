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

import asyncio
import json
import logging
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, replace
from datetime import datetime
from typing import Any

import faust
from faust.types import TP
from prometheus_client import CollectorRegistry

from touchstream.schemas.events import CaseClosed, utcnow
from touchstream.schemas.pii import Pseudonymiser
from touchstream.schemas.records import Alert
from touchstream.settings import KafkaSettings, Settings
from touchstream.streams import metrics as worker_metrics
from touchstream.streams.aggregate import Dirty, KpiAggregator
from touchstream.streams.alerts import (
    Closing,
    on_closed,
    on_raised,
    on_tick,
    raise_alert,
    slot_from_json,
    slot_to_json,
)
from touchstream.streams.checkpoints import read_latest
from touchstream.streams.customers import STOCK_KEY, CustomerBook, Touch, touch_of
from touchstream.streams.eventtime import SourceState
from touchstream.streams.ingest import RawMessage, Sequencer, forwarded, ingest
from touchstream.streams.kpis import Contribution
from touchstream.streams.outcomes import (
    KINDS,
    Op,
    OutcomeTracker,
    PartitionStore,
    apply,
    combined_watermark,
    decision_contributions,
    ops_of,
)
from touchstream.streams.outputs import Outputs

log = logging.getLogger(__name__)

EXIT_AGENT_CRASHED = 70
REWIND_RETRY_S = 5.0  # a seek back to a checkpoint is asked again this often
STALL_S = 10.0  # a source behind its highwater with no message for this long is re-read


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
    contributions_topic = raw_topic(settings.topic("kpi_contributions"))
    alert_events = raw_topic(settings.topic("alert_events"))
    outcome_events = raw_topic(settings.topic("outcome_events"))
    # Everything but table changelogs goes out through the batching producer.
    outputs = Outputs(settings)
    events_name, dead_letters_name = settings.topic("events"), settings.topic("dead_letters")
    kpis_name, alerts_name = settings.topic("kpis"), settings.topic("alerts")
    contributions_name = settings.topic("kpi_contributions")
    alert_events_name = settings.topic("alert_events")
    outcome_events_name = settings.topic("outcome_events")
    ingest_state_name = settings.topic("ingest_state")

    async def stop_outputs(app: faust.App, **_: Any) -> None:
        await outputs.stop()

    app.on_before_shutdown.connect(stop_outputs)  # type: ignore[arg-type]

    metrics.prime(raw_in.topics)

    buckets = app.Table(
        "kpi-buckets",
        default=None,
        partitions=kafka.partitions,
        key_type=str,
        # no value_type: values are plain JSON (value_type=dict breaks recovery)
    )
    alert_slots = app.Table(
        "alert-slots",
        default=None,
        partitions=kafka.partitions,
        key_type=str,
        # no value_type: values are plain JSON (value_type=dict breaks recovery)
    )
    outcome_tables = {
        kind: app.Table(
            f"outcome-{kind}",
            default=None,
            partitions=kafka.partitions,
            key_type=str,
            # no value_type: values are plain JSON (value_type=dict breaks recovery)
        )
        for kind in KINDS
    }
    outcome_marks = app.Table(
        "outcome-marks",
        default=None,
        partitions=kafka.partitions,
        key_type=str,
        # no value_type: values are plain JSON (value_type=dict breaks recovery)
    )
    trackers: dict[tuple[str, int], OutcomeTracker] = {}
    customer_table = app.Table("customers", default=None, partitions=kafka.partitions, key_type=str)
    books: dict[int, CustomerBook] = {}

    def book(partition: int) -> CustomerBook:
        found = books.get(partition)
        if found is None:
            store = PartitionStore(customer_table, partition)
            found = books[partition] = CustomerBook(store, streams.churn_horizon_s)
            found.rebuild()
        return found

    def tracker(kind: str, partition: int) -> OutcomeTracker:
        found = trackers.get((kind, partition))
        if found is None:
            store = PartitionStore(outcome_tables[kind], partition)
            found = trackers[(kind, partition)] = OutcomeTracker(
                streams.abandonment_timeout_s, store=store
            )
            found.rebuild()
        return found

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

    async def send_contribution(contribution: Contribution) -> None:
        body = {
            "at": contribution.at,
            "counts": dict(contribution.counts),
            "src": contribution.source,
            "off": contribution.offset,
            "group": contribution.group,
        }
        # Rates over a stock (churn, upsell) are keyed by the stock, so the
        # worker that holds a window's numerator also holds its denominator.
        key = STOCK_KEY.get(contribution.kpi, contribution.group)
        await outputs.send(contributions_name, json.dumps(body).encode(), key=key.encode())

    raw_topics = set(raw_in.topics)
    states: dict[str, SourceState] = {}  # raw "topic:partition" → ingest state

    sequencer = Sequencer(REWIND_RETRY_S)

    last_seen: dict[str, float] = {}  # source → when its latest message arrived

    loading = asyncio.Lock()

    async def load_states(partitions: set[int], forget: bool) -> None:
        """Restore the checkpointed state of partitions new to this worker; with
        ``forget`` (the ingest agent, between batches), drop those it no longer
        owns (their next owner restores them)."""
        async with loading:
            if forget:
                owned = {tp.partition for tp in app.consumer.assignment() if tp.topic in raw_topics}
                for source in [s for s in states if int(s.rsplit(":", 1)[1]) not in owned]:
                    del states[source]
                    sequencer.forget(source)
            missing = {p for p in partitions if any(f"{t}:{p}" not in states for t in raw_topics)}
            if not missing:
                return
            found = await read_latest(settings, settings.topic("ingest_state"), missing)
            for partition, records in found.items():
                for topic in raw_topics:
                    source = f"{topic}:{partition}"
                    if source not in states:
                        states[source] = SourceState.restore(
                            source, streams.allowed_lateness_s, records
                        )

    @app.timer(1.0, name="touchstream.ingest_sequence")
    async def keep_sources_in_sequence() -> None:
        """Sources with no messages coming also need their checkpoint: a partition
        whose last messages a killed worker fetched but never handled (Faust
        committed past them) gets nothing more to reveal the gap. Such a partition,
        behind its highwater and quiet for a while, is sent back to its checkpoint;
        held sources are asked again."""
        owned = [tp for tp in app.consumer.assignment() if tp.topic in raw_topics]
        await load_states({tp.partition for tp in owned}, forget=False)
        now = time.monotonic()
        seeks = sequencer.due(now)
        for tp in owned:
            source = f"{tp.topic}:{tp.partition}"
            state, highwater = states.get(source), app.consumer.highwater(tp)
            if (
                state is None
                or not state.next_offset
                or highwater is None
                or state.next_offset >= highwater
            ):
                continue
            if sequencer.held(source) or now - last_seen.get(source, now) < STALL_S:
                last_seen.setdefault(source, now)
                continue
            last_seen[source] = now
            seeks.append((tp.topic, tp.partition, state.next_offset))
        for topic, partition, offset in seeks:
            log.warning("%s:%d: resuming at its checkpoint %d", topic, partition, offset)
            try:
                await app.consumer.seek(TP(topic, partition), offset)
            except Exception as exc:  # noqa: BLE001 - a rebalance moved it: asked again
                log.warning("seek %s:%d failed (%r); asked again", topic, partition, exc)
            metrics.rewinds.inc()

    async def admit(messages: list[RawMessage]) -> list[RawMessage]:
        """The messages to handle now, in sequence per source partition.

        Restores the checkpointed state of partitions new to this worker and forgets
        those it no longer owns (their next owner restores them). Faust may have
        committed offsets of messages a killed worker had fetched but never handled;
        a message after such a gap sends its partition back to the checkpoint
        (seek) and waits for it. A gap that remains after the seek is a hole in the
        log (retention, transaction markers), not a loss, and is accepted.
        """
        await load_states({m.partition for m in messages}, forget=True)
        now = time.monotonic()
        for message in messages:
            last_seen[f"{message.topic}:{message.partition}"] = now
        admitted, seeks = sequencer.admit(
            messages,
            {source: state.next_offset for source, state in states.items()},
            time.monotonic(),
        )
        for topic, partition, offset in seeks:
            log.warning("%s:%d: resuming at its checkpoint %d", topic, partition, offset)
            await app.consumer.seek(TP(topic, partition), offset)
            metrics.rewinds.inc()
        return admitted

    async def checkpoint(messages: list[RawMessage]) -> None:
        """After the batch's outputs are flushed: its state, per source partition."""
        for source in sorted({f"{m.topic}:{m.partition}" for m in messages}):
            partition = int(source.rsplit(":", 1)[1])
            for key, value in states[source].checkpoint():
                await outputs.send(ingest_state_name, value, key=key.encode(), partition=partition)
        await outputs.flush()

    pii = Pseudonymiser(settings.pii_key_bytes())
    progress: dict[str, float] = {}  # raw source → latest event time read from it
    positions: dict[str, int] = {}  # raw source → next offset to read
    outcome_topics = {settings.topic("clickstream"), settings.topic("orders")}

    async def report_progress() -> None:
        """Tell every outcome partition how far each raw source this worker reads has
        got in event time, or that it is idle (empty and fully read)."""
        report: dict[str, dict[str, Any]] = {}
        for tp in app.consumer.assignment():
            if tp.topic not in outcome_topics:
                continue
            source = f"{tp.topic}:{tp.partition}"
            highwater = app.consumer.highwater(tp)
            state = states.get(source)
            position = max(positions.get(source, 0), state.next_offset if state else 0)
            idle = highwater is not None and position >= highwater
            if idle or source in progress:
                report[source] = {"at": progress.get(source), "idle": idle}
        if report:
            body = json.dumps({"marks": report}).encode()
            for partition in range(kafka.partitions):
                await outputs.send(outcome_events_name, body, partition=partition)

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
            now = utcnow()
            messages = await admit(messages)
            result = ingest(messages, now, streams.max_event_bytes, pii, states)
            for event, on_time in zip(result.events, result.on_time, strict=True):
                # A late event is stored, flagged; no KPI window counts it.
                value = forwarded(event, now, late=not on_time)
                await outputs.send(events_name, value, key=event.identity.encode())
                metrics.events_valid.labels(event.event_type).inc()
            metrics.duplicates.inc(sum(result.duplicates.values()))
            metrics.replayed.inc(result.replayed)
            for topic, count in result.late.items():
                metrics.late_events.labels(topic).inc(count)
            for key, dead_letter in result.dead_letters:
                await outputs.send(
                    dead_letters_name, dead_letter.model_dump_json().encode(), key=key
                )
                metrics.dead_letters.labels(dead_letter.reason).inc()
            for event in result.events:
                alert = raise_alert(event, now)
                if alert is not None:
                    await outputs.send(
                        alert_events_name,
                        json.dumps({"raised": alert.model_dump(mode="json")}).encode(),
                        key=alert.alert_id.encode(),
                    )
                elif isinstance(event, CaseClosed):
                    await outputs.send(
                        alert_events_name,
                        json.dumps({"closed": slot_to_json(Closing.of(event))}).encode(),
                        key=event.properties.alert_id.encode(),
                    )
            touches: dict[str, list[Touch]] = {}
            for event, on_time in zip(result.events, result.on_time, strict=True):
                if not on_time:
                    continue
                for op in ops_of(event):
                    await outputs.send(
                        outcome_events_name,
                        json.dumps(asdict(op)).encode(),
                        key=f"{op.kind}|{op.entity_id}".encode(),
                    )
                touched = touch_of(event)
                if touched is not None:
                    touches.setdefault(touched[0], []).append(touched[1])
            for customer_id, customer_touches in touches.items():  # one message a customer
                await outputs.send(
                    outcome_events_name,
                    json.dumps({"customer": customer_id, "touches": customer_touches}).encode(),
                    key=f"customer|{customer_id}".encode(),
                )
            for contribution in result.contributions:
                await send_contribution(contribution)
            await outputs.flush()
            await checkpoint(messages)
            metrics.observe_batch([e.message.timestamp for e in batch], result.events, now)
            # Progress is reported only for what has been handed over above, so a
            # report never overtakes the ops of its own batch.
            for message in messages:
                positions[f"{message.topic}:{message.partition}"] = message.offset + 1
            for event, source in zip(result.events, result.sources, strict=True):
                if source.split(":")[0] in outcome_topics:
                    at = event.occurred_at.timestamp()
                    progress[source] = max(progress.get(source, at), at)
            metrics.batch_size.observe(len(messages))
            metrics.batch_seconds.observe(time.perf_counter() - started)

    @app.agent(contributions_topic, name="touchstream.kpis")
    async def kpi_agent(stream: faust.StreamT) -> None:
        # One message at a time: a table write is logged to the partition of the
        # message being processed, which take() batches would blur.
        async for event in stream.events():
            body = json.loads(event.value)
            kpi, channel, touchpoint = body.get("group", event.key.decode()).split("|")
            contribution = Contribution(
                kpi,
                channel,
                touchpoint,
                float(body["at"]),
                tuple(body["counts"].items()),
                body.get("src", ""),
                int(body.get("off", -1)),
            )
            changed = aggregator.add(contribution)
            if not changed:
                metrics.replayed_contributions.inc()  # a replay after a restart
            dirty.update(changed)

    outcome_sources = [
        f"{topic}:{partition}"
        for topic in (settings.topic("clickstream"), settings.topic("orders"))
        for partition in range(kafka.partitions)
    ]

    @app.agent(outcome_events, name="touchstream.outcomes")
    async def outcome_agent(stream: faust.StreamT) -> None:
        # One at a time: decisions write the tables for the partition at hand.
        async for event in stream.events():
            partition = event.message.partition
            body = json.loads(event.value)
            if "marks" in body:
                for source, mark in body["marks"].items():
                    outcome_marks[f"{partition}|{source}"] = mark
            elif "customer" in body:
                book(partition).add(body["customer"], body["touches"])
            else:
                apply(tracker(body["kind"], partition), Op(**body))
            watermark = combined_watermark(
                [outcome_marks.get(f"{partition}|{source}") for source in outcome_sources]
            )
            if watermark is None:
                continue
            # Decisions taken at this message are numbered from its offset, so a
            # replay of it after a restart is recognised by the KPI agent.
            n = event.message.offset * 1_000_000
            for kind in KINDS:
                decisions = tracker(kind, partition).decide(watermark - streams.allowed_lateness_s)
                for decision in decisions:
                    for contribution in decision_contributions(kind, decision):
                        await send_contribution(
                            replace(contribution, source=f"outcomes:{partition}", offset=n)
                        )
                    n += 1
            for contribution in book(partition).decide(watermark - streams.allowed_lateness_s):
                await send_contribution(
                    replace(contribution, source=f"outcomes:{partition}", offset=n)
                )
                n += 1
            if n != event.message.offset * 1_000_000:
                await outputs.flush()  # decisions out before this message is acknowledged

    @customer_table.on_recover
    async def customers_recovered() -> None:
        for found in books.values():
            found.rebuild()

    for kind, table in outcome_tables.items():

        @table.on_recover
        async def outcomes_recovered(kind: str = kind) -> None:
            for (tracked_kind, _), found in trackers.items():
                if tracked_kind == kind:
                    found.rebuild()

    async def emit_alert(alert: Any) -> None:
        await outputs.send(
            alerts_name, alert.model_dump_json().encode(), key=alert.alert_id.encode()
        )
        metrics.alerts.labels(alert.status, alert.kind).inc()
        if alert.status == "closed" and alert.time_to_close_s is not None:
            metrics.alert_time_to_close.observe(max(0.0, alert.time_to_close_s))

    @app.agent(alert_events, name="touchstream.alerts")
    async def alert_agent(stream: faust.StreamT) -> None:
        # One at a time, for the same reason as the KPI agent; alerts are few.
        async for event in stream.events():
            alert_id = event.key.decode()
            body = json.loads(event.value)
            slot = slot_from_json(alert_slots.get(alert_id))
            if "raised" in body:
                slot, emitted = on_raised(slot, Alert.model_validate(body["raised"]))
            elif "closed" in body:
                closing = slot_from_json(body["closed"])
                assert isinstance(closing, Closing)  # noqa: S101 - written by ingest
                slot, emitted = on_closed(slot, closing)
            else:
                tick = datetime.fromisoformat(body["tick"])
                slot, emitted = on_tick(slot, tick, streams.alert_sla_s)
            alert_slots[alert_id] = slot_to_json(slot)
            if emitted is not None:
                await emit_alert(emitted)
                await outputs.flush()  # an alert is never left in a buffer

    @app.timer(1.0, name="touchstream.outcome_progress")
    async def outcome_progress() -> None:
        await report_progress()

    @app.timer(streams.alert_check_interval_s, name="touchstream.alert_sla")
    async def check_alert_sla() -> None:
        # A table is written only while its stream iterates (Faust logs the write to
        # the partition of the message at hand), so overdue alerts get a tick
        # message through the alerts agent rather than a write from here.
        now = utcnow()
        open_count = past_sla = 0
        for alert_id, stored in list(alert_slots.items()):
            slot = slot_from_json(stored)
            if not isinstance(slot, Alert) or slot.status == "closed":
                continue
            open_count += 1
            past_sla += slot.status == "overdue"
            if on_tick(slot, now, streams.alert_sla_s)[1] is not None:
                await outputs.send(
                    alert_events_name,
                    json.dumps({"tick": now.isoformat()}).encode(),
                    key=alert_id.encode(),
                )
        metrics.alerts_open.set(open_count)
        metrics.alerts_past_sla.set(past_sla)

    @buckets.on_recover
    async def recovered() -> None:
        # Windows restored from the changelog are emitted again: an update that was
        # pending when the previous worker stopped is not lost.
        aggregator.reindex()
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
            if not update.counts:
                continue  # not ours (partition moved away): its owner emits it
            await outputs.send(
                kpis_name,
                update.model_dump_json().encode(),
                key=f"{update.key}|{window.start}".encode(),
            )
            metrics.kpi_updates.labels(update.kpi).inc()
            metrics.kpis.observe(update)
        await outputs.flush()

    lag_topics = {
        t
        for topic in (raw_in, contributions_topic, outcome_events, alert_events)
        for t in topic.topics
    }

    @app.timer(worker_metrics.LAG_INTERVAL_S, name="touchstream.consumer_lag")
    async def consumer_lag() -> None:
        metrics.consumer_lag.set(await worker_metrics.measure_lag(app.consumer, lag_topics))

    @app.task
    async def started() -> None:
        metrics.up.set(1)

    return app
