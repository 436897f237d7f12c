"""The stream worker: stages over the pure logic in ingest/aggregate/kpis/outcomes,
in a Faust app that runs its lifecycle, timers and web (no Faust agent or table).

- ingest reads the three raw topics in batches through its own consumer
  (streams/intake.py, resuming each partition at its checkpoint) and hands each
  batch to :func:`touchstream.streams.ingest.ingest`: valid events go to the
  internal events topic (for the sink), bad ones to the dead-letter topic, KPI
  contributions to an internal topic keyed by KPI group.
- the KPI stage reads the contributions through its own consumer too and folds
  each batch into per-bucket counts per partition (streams/aggregate.py
  ``KpiPartition``), checkpointed to a compacted topic after each batch; a timer
  emits the latest value of every changed window to the KPI topic.
- the outcome and alert stages likewise (checkouts, carts, customers; alert
  slots), each partition's state checkpointed after each batch.

Outputs are flushed before a batch is checkpointed (at-least-once). A stage that
raises ends the worker process with a non-zero exit, before its batch is
checkpointed: a crash is loud, and a restart re-reads the batch.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Iterator
from datetime import datetime
from typing import Any

import faust
import orjson
from prometheus_client import CollectorRegistry

from touchstream.schemas.events import CaseClosed, utcnow
from touchstream.schemas.pii import Pseudonymiser
from touchstream.schemas.records import Alert, KafkaRecord
from touchstream.settings import KafkaSettings, Settings
from touchstream.streams import metrics as worker_metrics
from touchstream.streams.aggregate import DirtyBucket, KpiPartition
from touchstream.streams.alerts import (
    AlertPartition,
    Closing,
    on_closed,
    on_raised,
    on_tick,
    raise_alert,
    slot_from_json,
    slot_to_json,
)
from touchstream.streams.checkpoints import Records
from touchstream.streams.customers import (
    STOCK_KEY,
    anonymous_touch_of,
    link_of,
    touch_of,
)
from touchstream.streams.eventtime import SourceState
from touchstream.streams.ingest import forwarded, ingest
from touchstream.streams.intake import Batch, Intake, Pacer, Turns, source_of
from touchstream.streams.kpis import Contribution
from touchstream.streams.outcome_stage import OutcomePartition
from touchstream.streams.outcomes import (
    KINDS,
    MARKS_KEY,
    Op,
    apply,
    clock_of,
    decision_contributions,
    ops_of,
)
from touchstream.streams.outputs import Outputs, Record, partition_of
from touchstream.streams.spill import SpillStore

# Messages of an internal stage handled between two checkpoints: bundles from a few
# ingest batches (what one batch held before ingest went first under overload).
STAGE_CHUNK = 32

log = logging.getLogger(__name__)


EXIT_AGENT_CRASHED = 70
BUNDLE_KEY = b"bundle"  # internal messages carrying many items, sent to a partition
# Items per bundle message (~150-300 bytes each): well under a broker's default
# 1 MB message limit whatever a batch holds.
BUNDLE_ITEMS = 1000


BUNDLE_PARTS = ("ops", "customers", "links", "anonymous")
BUNDLE_PARTS_SET = frozenset(BUNDLE_PARTS)


def bundle_chunks(body: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """An outcome partition's share of a batch, in messages of at most
    BUNDLE_ITEMS items each: checkout and cart steps, customers' touches (a
    customer's touches stay together), links of anonymous ids to customers, and
    anonymous ids' touches, in that order, as one message would apply them."""
    for part in BUNDLE_PARTS:
        items = body.get(part) or ([] if part == "ops" else {})
        if isinstance(items, list):
            for start in range(0, len(items), BUNDLE_ITEMS):
                yield {"ops": items[start : start + BUNDLE_ITEMS]}
            continue
        names = list(items)
        for start in range(0, len(names), BUNDLE_ITEMS):
            yield {part: {n: items[n] for n in names[start : start + BUNDLE_ITEMS]}}


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
    """faust.App that starts the worker's stages (streams/intake.py) with it."""

    # Started with the app, not after table recovery as @app.task is: the raw
    # intake needs no table, and waiting delayed the first alert by seconds.
    early_tasks: tuple[Callable[[], Awaitable[None]], ...] = ()
    # The worker's timers by name, each the function one tick runs (see ``every``).
    ticks: dict[str, Callable[[], Awaitable[None]]]

    async def on_start(self) -> None:
        await super().on_start()
        for task in self.early_tasks:
            self.add_future(task())


def contribution_key(group: str) -> str:
    """The key of a KPI group's contributions: the group, or for rates over a stock
    (churn, upsell) the stock, so the worker that holds a window's numerator also
    holds its denominator."""
    return STOCK_KEY.get(group.split("|", 1)[0], group)


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
    app = TouchstreamApp(
        streams.app_id,
        broker=[f"kafka://{server}" for server in kafka.bootstrap_servers.split(",")],
        broker_credentials=_credentials(kafka),
        # Faust runs the worker (lifecycle, signals, timers, web); it has no agent
        # and no table: every topic is read by a stage of our own (streams/intake.py).
        store="memory://",
        # Faust's data directory (empty with the memory store): under ours, not
        # "<app id>-data" in whatever directory the worker was started from.
        datadir=str(settings.data_dir / "faust" / f"{streams.app_id}-data"),
        autodiscover=False,
        topic_partitions=kafka.partitions,
        topic_replication_factor=kafka.replication_factor,
        producer_acks=-1 if kafka.acks == "all" else int(kafka.acks),
        producer_compression_type=None
        if kafka.compression_type == "none"
        else kafka.compression_type,
        producer_linger_ms=kafka.linger_ms,
        consumer_auto_offset_reset="earliest",
        broker_session_timeout=kafka.session_timeout_ms / 1000,
        broker_heartbeat_interval=min(3.0, kafka.session_timeout_ms / 3000),
        web_enabled=streams.web_port > 0,
        web_port=streams.web_port or 6066,
        web_bind="127.0.0.1",
    )

    raw_topics = list(settings.raw_topics().values())
    # Everything goes out through one batching producer.
    outputs = Outputs(settings)
    events_name, dead_letters_name = settings.topic("events"), settings.topic("dead_letters")
    kpis_name, alerts_name = settings.topic("kpis"), settings.topic("alerts")
    contributions_name = settings.topic("kpi_contributions")
    alert_events_name = settings.topic("alert_events")
    outcome_events_name = settings.topic("outcome_events")
    ingest_state_name = settings.topic("ingest_state")
    kpi_state_name = settings.topic("kpi_state")
    outcome_state_name = settings.topic("outcome_state")
    alert_state_name = settings.topic("alert_state")

    stopping = False  # set at shutdown: the timers tick no more

    async def stop_outputs(app: faust.App, **_: Any) -> None:
        nonlocal stopping
        stopping = True
        await intake.stop()  # its batch at hand finishes first
        await kpi_intake.stop()
        await outcome_intake.stop()
        await alert_intake.stop()
        await outputs.stop()

    app.on_before_shutdown.connect(stop_outputs)  # type: ignore[arg-type]

    metrics.prime(raw_topics)

    dirty: set[DirtyBucket] = set()  # buckets whose windows are to be emitted
    # Per contributions partition: the KPI cutoff of the last emission pass whose
    # updates are flushed (with the state it was of: a partition restored since
    # starts afresh); the next pass makes the windows ended before it final.
    final_ready: dict[int, tuple[KpiPartition, float]] = {}

    async def crashed(stage: str, exc: BaseException) -> None:
        # By the stage's name (it counted every crash as "agent" while it looked
        # for a Faust agent's name on a string).
        metrics.agent_crashes.labels(stage).inc()
        metrics.up.set(0)
        log.critical("%s crashed; stopping the worker: %r", stage, exc, exc_info=exc)
        on_crash(EXIT_AGENT_CRASHED)

    def contribution_partition(group: str) -> int:
        """The contributions partition a KPI group's window is counted in."""
        return partition_of(contribution_key(group).encode(), kafka.partitions)

    async def send_contributions(contributions: Iterable[Contribution]) -> None:
        """One message per contributions partition (a bundle the KPI stage folds
        into that partition's buckets). Partitioned by
        the contribution key (rates over a stock, churn and upsell, by the stock,
        so the worker that holds a window's numerator also holds its denominator)."""
        bundles: dict[int, list[dict[str, Any]]] = {}
        for contribution in contributions:
            body = {
                "at": contribution.at,
                "counts": dict(contribution.counts),
                "src": contribution.source,
                "off": contribution.offset,
                "group": contribution.group,
            }
            bundles.setdefault(contribution_partition(contribution.group), []).append(body)
        for partition, items in sorted(bundles.items()):
            for start in range(0, len(items), BUNDLE_ITEMS):
                chunk = items[start : start + BUNDLE_ITEMS]
                value = orjson.dumps({"contributions": chunk})
                await outputs.send(contributions_name, value, key=BUNDLE_KEY, partition=partition)

    async def send_outcome_bundle(partition: int, body: dict[str, Any]) -> None:
        """An outcome partition's items, in messages of at most BUNDLE_ITEMS."""
        for chunk in bundle_chunks(body):
            value = orjson.dumps(chunk)
            await outputs.send(outcome_events_name, value, key=BUNDLE_KEY, partition=partition)

    async def send_checkpoints(
        states: Any, sources: Iterable[str], topic: str, flush: bool = True
    ) -> None:
        """After a batch's outputs are flushed: the checkpoint of each of its
        partitions ("topic:partition") to the same partition of ``topic``, flushed
        unless ``flush`` is false (then the next flush acknowledges it: the stage's
        next batch, or its intake's ``settle`` before the partitions go)."""
        for source in sorted(sources):
            partition = int(source.rsplit(":", 1)[1])
            await outputs.send_many(
                topic,
                ((key.encode(), value, partition) for key, value in states[source].checkpoint()),
            )
        if flush:
            await outputs.flush()

    pii = Pseudonymiser(settings.pii_key_bytes())
    outcome_topics = {settings.topic("clickstream"), settings.topic("orders")}
    raw_sources = [f"{topic}:{p}" for topic in raw_topics for p in range(kafka.partitions)]
    outcome_sources = [s for s in raw_sources if s.rsplit(":", 1)[0] in outcome_topics]
    # Every source of KPI contributions: the raw partitions and the outcome partitions.
    kpi_sources = [*raw_sources, *(f"outcomes:{p}" for p in range(kafka.partitions))]
    idle_since: dict[str, float] = {}  # raw source → when this worker found it fully read

    async def report_progress() -> None:
        """Tell every outcome, contributions and alert partition how far each raw
        source this worker reads has got in event time, or that it is idle (empty
        and fully read): the clocks of the stages after ingest."""
        report: dict[str, dict[str, Any]] = {}
        # Under the intake's lock, the states are those of the last finished batch,
        # whose ops and contributions are flushed: a report never overtakes what
        # it covers.
        async with intake.lock:
            for tp in intake.assignment():
                source = f"{tp.topic}:{tp.partition}"
                state = intake.states.get(source)
                if state is None:
                    continue  # not restored yet: its previous report stands
                highwater = intake.highwater(tp)
                idle = highwater is not None and state.next_offset >= highwater
                at = state.max_event_time if state.max_event_time > float("-inf") else None
                now = time.monotonic()
                since = idle_since.setdefault(source, now) if idle else None
                if not idle:
                    idle_since.pop(source, None)
                expired = since is not None and now - since >= streams.idle_source_s
                report[source] = {"at": at, "idle": idle, "expired": expired}
            for source in [s for s in idle_since if s not in intake.states]:
                del idle_since[source]  # moved away: its next owner times it afresh
        outcome_report = {s: m for s, m in report.items() if s.rsplit(":", 1)[0] in outcome_topics}
        await send_marks(outcome_events_name, outcome_report)
        await send_marks(contributions_name, report)
        await send_marks(alert_events_name, report)

    async def report_decisions() -> None:
        """Tell every contributions partition how far the outcome partitions this
        worker owns have decided (a timer of its own: waiting for the outcome
        stage's lock must not hold the raw sources' reports back)."""
        # Under the stage's lock: the decisions they cover are flushed.
        decided: dict[str, dict[str, Any]] = {}
        async with outcome_intake.lock:
            for tp in outcome_intake.owned:
                part = outcome_intake.states.get(source_of(tp))
                if part is not None and part.watermark is not None:
                    mark = {"at": part.watermark, "idle": False, "expired": False}
                    decided[f"outcomes:{tp.partition}"] = mark
        await send_marks(contributions_name, decided)

    async def send_marks(topic: str, marks: dict[str, dict[str, Any]]) -> None:
        """Progress reports (if any) to every partition of an internal topic, sent
        after what they cover."""
        if not marks:
            return
        body = orjson.dumps({"marks": marks})
        for partition in range(kafka.partitions):
            await outputs.send(topic, body, key=MARKS_KEY.encode(), partition=partition)

    async def handle(batch: Batch) -> None:
        """One batch of raw messages: outputs flushed, then the checkpoint."""
        started = time.perf_counter()
        messages = batch.messages
        for topic, count in Counter(message.topic for message in messages).items():
            metrics.messages_in.labels(topic).inc(count)
        now = utcnow()
        result = ingest(messages, now, streams.max_event_bytes, pii, intake.states)
        forwards: list[Record] = []
        for event, on_time, source in zip(
            result.events, result.on_time, result.sources, strict=True
        ):
            # A late event is stored, flagged; no KPI window counts it. Same key,
            # and the partition it came from: the one murmur2 of its key gives
            # (the raw topics are keyed by identity).
            identity = event.identity.encode()
            raw_partition = int(source.rsplit(":", 1)[1])
            partition = (
                raw_partition
                if raw_partition < kafka.partitions
                else partition_of(identity, kafka.partitions)
            )
            forwards.append((identity, forwarded(event, now, late=not on_time), partition))
        await outputs.send_many(events_name, forwards)
        for event_type, count in Counter(event.event_type for event in result.events).items():
            metrics.events_valid.labels(event_type).inc(count)
        metrics.duplicates.inc(sum(result.duplicates.values()))
        metrics.replayed.inc(result.replayed)
        for topic, count in result.late.items():
            metrics.late_events.labels(topic).inc(count)
        for key, dead_letter in result.dead_letters:
            await outputs.send(dead_letters_name, dead_letter.model_dump_json().encode(), key=key)
            metrics.dead_letters.labels(dead_letter.reason).inc()
        for event, source in zip(result.events, result.sources, strict=True):
            alert = raise_alert(event, now)
            if alert is not None and (
                event.at < intake.states[source].max_event_time - streams.alert_retention_s
            ):
                # Its case is history: had it been raised and closed, its slot may
                # be forgotten, and raising it again would reopen it.
                metrics.stale_feedback.inc()
                alert = None
            if alert is not None:
                # Out at once, with this batch's flush: the alerts agent, one message
                # at a time, only keeps its slot (for closing and the SLA), and
                # emits the alert itself only if its case was closed first. A
                # replay sends the open alert again, same id and version
                # (idempotent downstream; a later status has a higher version).
                await emit_alert(alert)
                raised = {"raised": alert.model_dump(mode="json"), "emitted": True}
                await outputs.send(
                    alert_events_name, json.dumps(raised).encode(), key=alert.alert_id.encode()
                )
            elif event.event_type == "case_closed" and isinstance(event, CaseClosed):
                await outputs.send(
                    alert_events_name,
                    json.dumps({"closed": slot_to_json(Closing.of(event))}).encode(),
                    key=event.properties.alert_id.encode(),
                )
        # One message per outcome partition: its checkouts' and carts' steps, its
        # customers' touches, and its anonymous ids' links and touches
        # (partitioned by entity, as keyed messages were).
        bundles: dict[int, dict[str, Any]] = {}

        def bundle(key: str) -> dict[str, Any]:
            partition = partition_of(key.encode(), kafka.partitions)
            found = bundles.get(partition)
            if found is None:
                found = bundles[partition] = {
                    "ops": [],
                    "customers": {},
                    "links": {},
                    "anonymous": {},
                }
            return found

        for event, on_time in zip(result.events, result.on_time, strict=True):
            if not on_time:
                continue
            for op in ops_of(event):
                bundle(f"{op.kind}|{op.entity_id}")["ops"].append(op.wire())
            touched = touch_of(event)
            if touched is not None:
                customer_id, touch = touched
                customers = bundle(f"customer|{customer_id}")["customers"]
                customers.setdefault(customer_id, []).append(touch)
            linked = link_of(event)
            if linked is not None:  # the latest link of the batch is enough
                anonymous_id, customer_id, at = linked
                links = bundle(f"anonymous|{anonymous_id}")["links"]
                links[anonymous_id] = max(
                    links.get(anonymous_id, [at, customer_id]), [at, customer_id]
                )
            anonymous = anonymous_touch_of(event)
            if anonymous is not None:
                anonymous_id, touch = anonymous
                held = bundle(f"anonymous|{anonymous_id}")["anonymous"]
                held.setdefault(anonymous_id, []).append(touch)
        for partition, body in sorted(bundles.items()):
            await send_outcome_bundle(partition, body)
        await send_contributions(result.contributions)
        await outputs.flush()
        # In flight while the next batch is fetched: ingest's cycle is the latency of
        # every event and alert, and a broker round trip was a quarter of it. A
        # checkpoint lost with the worker only means its batch is read again
        # (replays are skipped downstream by their source offsets).
        await send_checkpoints(
            intake.states,
            {f"{m.topic}:{m.partition}" for m in batch.messages},
            ingest_state_name,
            flush=False,
        )
        metrics.observe_batch(batch.kafka_timestamps, result.events, now)
        metrics.batch_size.observe(len(messages))
        metrics.batch_seconds.observe(time.perf_counter() - started)

    lateness = streams.allowed_lateness_s
    # Ingest first when it falls behind by a fifth of a batch (README "Decisions").
    turns = Turns(streams.ingest_first_wait_s, behind_records=max(1, streams.batch_size // 5))
    intake: Intake[SourceState] = Intake(
        settings,
        "ingest",
        raw_topics,
        handle,
        ingest_state_name,
        lambda tp, records: SourceState.restore(source_of(tp), lateness, records),
        event_time=lambda state: state.max_event_time,
        turns=turns,
        first=True,
        settle=outputs.flush,
    )

    def restore_kpis(tp: Any, records: dict[str, bytes | None]) -> KpiPartition:
        """A contributions partition from its checkpoint; every window with state
        is emitted again (an update pending when the previous owner stopped is not
        lost)."""
        part = KpiPartition(
            streams.window_size_s,
            streams.window_step_s,
            streams.daily_window,
            records,
            retention_s=streams.kpi_retention_s,
            sources=kpi_sources,
        )
        dirty.update(part.aggregator.all_buckets())
        return part

    async def stage_batch(
        stage: Intake[Any],
        state_topic: str,
        batch: Batch,
        handle: Callable[[Any, KafkaRecord], Awaitable[None]],
        replayed: Callable[[], None] | None = None,
    ) -> None:
        """A batch of an internal stage: each message from its partition's next
        offset on handled in order (one read again after a restore is skipped),
        everything sent flushed, then each partition's checkpoint, flushed; in
        parts of STAGE_CHUNK messages (a stage that waited for ingest takes a long
        backlog at once, and one checkpoint of everything it touched held it all
        in memory at once)."""
        parts = stage.states
        messages = batch.messages
        pacer = Pacer()
        for start in range(0, len(messages), STAGE_CHUNK):
            handled: set[str] = set()
            for message in messages[start : start + STAGE_CHUNK]:
                await pacer.pace()
                source = f"{message.topic}:{message.partition}"
                part = parts[source]
                if message.offset < part.next_offset:
                    if replayed is not None:
                        replayed()
                    continue
                await handle(part, message)
                part.next_offset = message.offset + 1
                handled.add(source)
            await outputs.flush()  # everything out before the state says done
            await send_checkpoints(parts, handled, state_topic)

    async def fold_contributions(part: KpiPartition, message: KafkaRecord) -> None:
        """A bundle of contributions folded into its partition's buckets (or the
        sources' progress: the partition's clock)."""
        expired = part.aggregator.expired
        changed, replays = part.fold(message.offset, message.value)
        dirty.update(changed)
        if replays:  # contributions counted before a restart
            metrics.replayed_contributions.inc(replays)
        if part.aggregator.expired > expired:  # older than the KPI retention
            metrics.expired_contributions.inc(part.aggregator.expired - expired)

    async def handle_contributions(batch: Batch) -> None:
        await stage_batch(kpi_intake, kpi_state_name, batch, fold_contributions)

    kpi_intake: Intake[KpiPartition] = Intake(
        settings,
        "kpis",
        [contributions_name],
        handle_contributions,
        kpi_state_name,
        restore_kpis,
        turns=turns,
    )

    def run(name: str, stage: Intake[Any]) -> Callable[[], Awaitable[None]]:
        async def running() -> None:
            try:
                await stage.start()
                await stage.run()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - a crash is loud: the worker exits
                await crashed(name, exc)

        return running

    app.early_tasks = (run("touchstream.ingest", intake), run("touchstream.kpis", kpi_intake))

    def restore_outcomes(tp: Any, records: Records | SpillStore) -> OutcomePartition:
        return OutcomePartition(
            tp.partition, streams.abandonment_timeout_s, streams.churn_horizon_s, records
        )

    def outcome_records(partition: int) -> Records | SpillStore:
        """Where an outcome partition is restored: memory, or a store that keeps
        STREAMS__OUTCOME_CACHE_ENTRIES of it there and the rest in a local file."""
        if not streams.outcome_cache_entries:
            return Records()
        name = f"{streams.app_id}-outcomes-{partition}"
        return SpillStore(settings.data_dir / "state", name, streams.outcome_cache_entries)

    async def handle_outcomes(batch: Batch) -> None:
        await stage_batch(
            outcome_intake,
            outcome_state_name,
            batch,
            lambda part, message: handle_outcome(part, message.offset, message.value or b"{}"),
            metrics.replayed_outcomes.inc,
        )

    async def handle_outcome(part: OutcomePartition, offset: int, value: bytes) -> None:
        body = orjson.loads(value)
        merged: list[Contribution] = []  # late stitched interactions' changes
        stitched: dict[str, list[Any]] = {}  # customer → touches of anonymous ids
        if "marks" in body:
            for source, mark in body["marks"].items():
                part.marks[source] = mark
        elif not BUNDLE_PARTS_SET.isdisjoint(body):  # a bundle (or one part of it)
            for op in body.get("ops", ()):
                apply(part.trackers[op["kind"]], Op(**op))
            for customer_id, touches in body.get("customers", {}).items():
                merged.extend(part.book.add(customer_id, touches))
            anonymous = part.anonymous
            forwards = [
                *(
                    forward
                    for anonymous_id, (at, customer_id) in body.get("links", {}).items()
                    for forward in anonymous.link(anonymous_id, customer_id, float(at))
                ),
                *(
                    forward
                    for anonymous_id, touches in body.get("anonymous", {}).items()
                    for forward in anonymous.add(anonymous_id, touches)
                ),
            ]
            for customer_id, touches in forwards:
                stitched.setdefault(customer_id, []).extend(touches)
        elif "customer" in body:  # one customer (before bundles)
            merged.extend(part.book.add(body["customer"], body["touches"]))
        else:  # one step (before bundles)
            apply(part.trackers[body["kind"]], Op(**body))
        await send_stitched(stitched)
        watermark = clock_of(part.marks, outcome_sources)
        await decide(part, offset, watermark, merged)

    async def send_stitched(stitched: dict[str, list[Any]]) -> None:
        """Anonymous ids' touches to their customers' outcome partitions (sent before
        the anonymous ids' state is applied, with the decisions' flush; a replay
        sends them again, which the customers' books take as replays)."""
        bundles: dict[int, dict[str, Any]] = {}
        for customer_id, touches in stitched.items():
            target = partition_of(f"customer|{customer_id}".encode(), kafka.partitions)
            bundles.setdefault(target, {}).setdefault(customer_id, []).extend(touches)
        for target, customers in sorted(bundles.items()):
            await send_outcome_bundle(target, {"customers": customers})
        metrics.stitched_touches.inc(sum(len(t) for t in stitched.values()))

    async def decide(
        part: OutcomePartition,
        offset: int,
        watermark: float | None,
        merged: list[Contribution],
    ) -> None:
        """What a message changed in an outcome partition (stitched interactions
        merged behind the watermark, then the decisions the watermark settles),
        sent."""
        # Contributions from this message are numbered from its offset, so a
        # replay of it after a restart is recognised by the KPI stage.
        n = offset * 1_000_000
        source = f"outcomes:{part.partition}"
        out: list[Contribution] = []
        for contribution in merged:
            out.append(contribution.numbered(source, n))
            n += 1
        if watermark is not None:
            part.watermark = watermark  # reported to the KPI stage once flushed
            settled = watermark - streams.allowed_lateness_s
            for kind in KINDS:
                for decision in part.trackers[kind].decide(settled):
                    for contribution in decision_contributions(kind, decision):
                        out.append(contribution.numbered(source, n))
                    n += 1
            for contribution in part.book.decide(settled):
                out.append(contribution.numbered(source, n))
                n += 1
            part.anonymous.expire(settled)
        if out:
            await send_contributions(out)

    outcome_intake: Intake[OutcomePartition] = Intake(
        settings,
        "outcomes",
        [outcome_events_name],
        handle_outcomes,
        outcome_state_name,
        restore_outcomes,
        turns=turns,
        records=outcome_records,
    )
    app.early_tasks = (*app.early_tasks, run("touchstream.outcomes", outcome_intake))

    async def emit_alert(alert: Any) -> None:
        await outputs.send(
            alerts_name, alert.model_dump_json().encode(), key=alert.alert_id.encode()
        )
        metrics.alerts.labels(alert.status, alert.kind).inc()
        if alert.status == "closed" and alert.time_to_close_s is not None:
            metrics.alert_time_to_close.observe(max(0.0, alert.time_to_close_s))

    async def handle_alerts(batch: Batch) -> None:
        # The alerts that events lead to are flushed with the batch: an alert is
        # never left in a buffer.
        await stage_batch(alert_intake, alert_state_name, batch, handle_alert_event)

    async def handle_alert_event(part: AlertPartition, message: KafkaRecord) -> None:
        body = orjson.loads(message.value or b"{}")
        if "marks" in body:  # the raw sources' progress: closed cases forgotten
            part.note_marks(body["marks"])
            return
        alert_id = (message.key or b"").decode()
        slot = part.slot(alert_id)
        if "raised" in body:
            raised = Alert.model_validate(body["raised"])
            slot, emitted = on_raised(slot, raised, emitted=body.get("emitted", False))
        elif "closed" in body:
            closing = slot_from_json(body["closed"])
            assert isinstance(closing, Closing)  # noqa: S101 - written by ingest
            slot, emitted = on_closed(slot, closing)
        else:
            tick = datetime.fromisoformat(body["tick"])
            slot, emitted = on_tick(slot, tick, streams.alert_sla_s)
        if emitted is not None:
            # A replay after a restore emits the same alert again (idempotent
            # downstream by alert id and status).
            await emit_alert(emitted)
        part.put(alert_id, slot)

    alert_intake: Intake[AlertPartition] = Intake(
        settings,
        "alerts",
        [alert_events_name],
        handle_alerts,
        alert_state_name,
        lambda tp, records: AlertPartition(streams.alert_retention_s, raw_sources, records),
        turns=turns,
    )
    app.early_tasks = (*app.early_tasks, run("touchstream.alerts", alert_intake))
    app.ticks = {}

    def every(name: str, interval_s: float, tick: Callable[[], Awaitable[None]]) -> None:
        """A timer of our own, started with the stages. Faust starts its timers only
        once its consumer group has settled, 12 s after a restart here (a dead
        member's session to time out) and longer with a production session
        timeout: no KPI went out and no checkout was decided meanwhile. A tick
        that raises ends the worker, as a stage's crash does."""

        async def ticking() -> None:
            while not stopping:
                await asyncio.sleep(interval_s)
                if stopping:
                    return
                try:
                    await tick()
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # noqa: BLE001 - a crash is loud: the worker exits
                    if stopping:  # the outputs went away under it
                        log.info("%s stopped mid-tick: %r", name, exc)
                        return
                    await crashed(name, exc)
                    return

        app.ticks[name] = tick
        app.early_tasks = (*app.early_tasks, ticking)

    every("touchstream.outcome_progress", 1.0, report_progress)
    every("touchstream.decision_progress", 1.0, report_decisions)

    async def check_alert_sla() -> None:
        # Overdue alerts get a tick message through the alerts stage (their slot
        # changes there, in batch order with raises and closings), not a write here.
        if alert_intake.between_assignments:
            # The last figures stand: every worker's gauges at 0 for a scrape
            # would reset the past-SLA alert's `for`.
            return
        now = utcnow()
        open_count = past_sla = 0
        slots = [
            (alert_id, stored)
            for tp in alert_intake.owned
            if (part := alert_intake.states.get(source_of(tp))) is not None
            for alert_id, stored in part.slots()
        ]
        for alert_id, stored in slots:
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

    every("touchstream.alert_sla", streams.alert_check_interval_s, check_alert_sla)

    async def emit_kpis() -> None:
        updates = []
        pacer = Pacer()
        # Under the KPI stage's lock: between batches, so what goes out is
        # checkpointed (a successor never emits a window older than this).
        async with kpi_intake.lock:
            # Only partitions owned now: a revoked partition's windows are its new
            # owner's (who emits every window it restores), never ours, stale.
            parts = {
                tp.partition: kpi_intake.states[source_of(tp)]
                for tp in kpi_intake.owned
                if source_of(tp) in kpi_intake.states
            }
            # Windows the previous pass left final (every pass, changes or not: the
            # clock moves on with the sources' reports alone).
            for partition, part in parts.items():
                ready = final_ready.pop(partition, None)
                if ready is not None and ready[0] is part:
                    part.aggregator.evict(ready[1])
            buckets = list(dirty)
            dirty.clear()
            now = utcnow()
            version = time.time_ns()
            by_partition: dict[int, list[DirtyBucket]] = {}
            for bucket in buckets:
                by_partition.setdefault(contribution_partition(bucket[0]), []).append(bucket)
            for partition, changed in sorted(by_partition.items()):
                owner = parts.get(partition)
                if owner is None:
                    # Kept for the assignment: a partition that stays here is not
                    # restored again (nor its windows emitted). Not ours once it is
                    # assigned elsewhere: dropped at the next pass (its new owner
                    # emits every window it restores).
                    if kpi_intake.between_assignments:
                        dirty.update(changed)
                    continue
                aggregator = owner.aggregator
                with aggregator.reading():  # each bucket and stock level read once per pass
                    for group, window in sorted(aggregator.windows_of(changed)):
                        await pacer.pace()
                        update = aggregator.update(group, window, version, now)
                        if update.counts:
                            updates.append((update, window))
            # Windows ended before this pass's cutoff had their last change in it
            # (a later contribution to one is expired): final once it is flushed.
            cutoffs = {p: (part, part.aggregator.cutoff()) for p, part in parts.items()}
        if updates:
            records: list[Record] = []
            for update, window in updates:
                await pacer.pace()
                key = f"{update.key}|{window.start}".encode()
                records.append(
                    (key, update.model_dump_json().encode(), partition_of(key, kafka.partitions))
                )
                metrics.kpi_updates.labels(update.kpi).inc()
                metrics.kpis.observe(update)
            await outputs.send_many(kpis_name, records)
            await outputs.flush()
        final_ready.update(cutoffs)

    every("touchstream.emit_kpis", streams.kpi_emit_interval_s, emit_kpis)

    async def consumer_lag() -> None:
        lags: dict[tuple[str, int], int] = {}
        for stage, topics in (
            (intake, raw_topics),
            (kpi_intake, [contributions_name]),
            (outcome_intake, [outcome_events_name]),
            (alert_intake, [alert_events_name]),
        ):
            if stage.consumer is not None:
                lags.update(await worker_metrics.measure_lag(stage.consumer, topics))
        metrics.consumer_lag.set(lags)
        held = {
            "ingest": sum(len(state) for state in list(intake.states.values())),
            **{
                name: sum(len(part.store) for part in list(stage.states.values()))
                for name, stage in (
                    ("kpis", kpi_intake),
                    ("outcomes", outcome_intake),
                    ("alerts", alert_intake),
                )
            },
        }
        for name, keys in held.items():
            metrics.state_keys.labels(name).set(keys)
        metrics.state_file_bytes.set(
            sum(
                part.store.file_bytes()
                for part in list(outcome_intake.states.values())
                if isinstance(part.store, SpillStore)
            )
        )

    every("touchstream.consumer_lag", worker_metrics.LAG_INTERVAL_S, consumer_lag)

    @app.task
    async def started() -> None:
        metrics.up.set(1)

    return app
