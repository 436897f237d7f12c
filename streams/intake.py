"""Topics read by the worker itself rather than through a Faust agent: the raw
topics (ingest) and the KPI contributions (the KPI stage).

The state kept per partition (for ingest, streams/eventtime.py ``SourceState``:
next offset, watermark, recent event ids; for the KPI stage, the partition's
buckets) is the authority on where each partition resumes. Read through a Faust
agent, the consumer position was Faust's: it commits offsets of messages it has
buffered for ``take_events`` but the agent never handled, so a worker killed
mid-batch left a gap that its successor had to seek back over, and a seek racing
Faust's fetch loop could be undone (Faust drops re-fetched messages below the
read offset it has already passed). Decisions downstream then waited on, or ran
ahead of, a source that was not where it claimed.

Here a plain aiokafka consumer in its own group (``<app_id>.<purpose>``) owns the
partitions: on assignment it restores the checkpoints of its new partitions (the
latest value of each key of that partition of a compacted topic) and seeks each to
its checkpointed next offset; a batch is handled, its outputs flushed and its
checkpoint written under a lock that a revocation waits for; the group offset is
committed after the checkpoint (for lag tools), never ahead of it. Nothing seeks
while a fetch is in flight, so there is no race to lose. It also takes the hot
path off Faust's per-message hand-off (``getmany`` batches) and, for the KPI
stage, off Faust's changelogs: one checkpoint record per changed bucket per
batch, batched like any output, instead of one changelog record per table write
(one produce request each on the local broker).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaError

from touchstream.schemas.records import KafkaRecord
from touchstream.settings import Settings
from touchstream.streams.checkpoints import CheckpointReadError, Loader, in_memory, read_latest

log = logging.getLogger(__name__)

RESTORE_TIMEOUT_S = 20.0  # one attempt at reading the checkpoints of new partitions
RESTORE_ATTEMPTS = 3  # then the worker stops, loudly (exit 70)
COMMIT_TIMEOUT_S = 10.0  # the group offset is for lag tools; the checkpoint rules


@dataclass(frozen=True, slots=True)
class Batch:
    messages: Sequence[KafkaRecord]
    kafka_timestamps: list[float]  # seconds


Handler = Callable[[Batch], Awaitable[None]]


class Turns:
    """Ingest first. The worker's stages share one event loop, and a batch, once
    begun, runs to its end. When ingest falls behind (more than ``behind_records``
    raw records not handled after a batch), the stages after it (outcomes, KPIs,
    alerts) wait for it to catch up before their next batch, each at most
    ``max_wait_s``, so they never starve: under more load than the process
    handles, events reach ClickHouse and alerts go out at ingest's pace, and the
    KPIs and decisions catch up, with bigger batches, once the load eases.
    ``max_wait_s`` 0: no order (each stage in turn, as the event loop runs them)."""

    def __init__(self, max_wait_s: float, behind_records: int) -> None:
        self.max_wait_s = max_wait_s
        self.behind_records = behind_records
        self._caught_up = asyncio.Event()
        self._caught_up.set()

    def first_behind(self, records: int) -> None:
        """The first stage's backlog after its latest batch (0: none fetched)."""
        if records > self.behind_records:
            self._caught_up.clear()
        else:
            self._caught_up.set()

    @property
    def first_caught_up(self) -> bool:
        return self._caught_up.is_set()

    async def wait(self, stopping: asyncio.Event) -> None:
        """A later stage's turn: the first one has caught up, max_wait_s passed, or
        the stage is ``stopping`` (a shutdown does not wait for turns)."""
        if self.max_wait_s <= 0 or self._caught_up.is_set() or stopping.is_set():
            return
        waits = {
            asyncio.ensure_future(self._caught_up.wait()),
            asyncio.ensure_future(stopping.wait()),
        }
        try:
            await asyncio.wait(waits, timeout=self.max_wait_s, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiting in waits:
                waiting.cancel()


class Pacer:
    """Hands the event loop round once a stretch of synchronous work has run
    ``slice_s``: the stages share one loop, and a stage's batch (an outcome stage
    taking bundles of many ingest batches at once, a KPI emission pass over
    thousands of windows) ran for up to ~0.5 s without a suspension point, every
    raw record fetched meanwhile waiting for it. Between two of its messages or
    windows a stage lets ingest run (its lock still held: nothing else touches its
    state)."""

    def __init__(self, slice_s: float = 0.02) -> None:
        self.slice_s = slice_s
        self._since = time.perf_counter()

    async def pace(self) -> None:
        if time.perf_counter() - self._since >= self.slice_s:
            await asyncio.sleep(0)
            self._since = time.perf_counter()


def ahead(
    progress: dict[TopicPartition, tuple[float, bool]], max_skew_s: float
) -> set[TopicPartition]:
    """Partitions to pause: those whose latest event time is more than
    ``max_skew_s`` ahead of the slowest partition that still has records to read.
    ``progress``: partition -> (latest event time read, fully read?). A backlog of
    several topics is read at the pace of bytes, not of event time (a small topic
    is read to its end first): its events then wait behind the combined watermark
    that the big one holds back, and customers' pending histories grow. Never
    pauses the slowest, so reading always goes on."""
    reading = [at for at, done in progress.values() if not done]
    if not reading:
        return set()
    slowest = min(reading)
    return {tp for tp, (at, _) in progress.items() if at > slowest + max_skew_s}


class PartitionState(Protocol):
    """What the intake needs of a partition's state: where it resumes."""

    @property
    def next_offset(self) -> int: ...


State = TypeVar("State", bound=PartitionState)
# A partition's state from its checkpoint records, as loaded (by default Records:
# key -> latest value, None for a tombstone; empty for a partition never
# checkpointed).
Restore = Callable[[TopicPartition, Any], State]


def group_consumer_kwargs(settings: Settings) -> dict[str, Any]:
    """A stage's consumer in its group, but for its group and client ids: offsets
    committed by the stage after its checkpoint, from the earliest on a fresh group,
    the group's session, fetches big enough for the largest event accepted, and
    what every consumer of the pipeline shares (``KafkaSettings.consumer_kwargs``).
    aiokafka's default assignor (range) puts partition i of every subscribed topic
    in one consumer: one customer's clickstream, orders and feedback meet."""
    kafka = settings.kafka
    return {
        "bootstrap_servers": kafka.bootstrap_servers,
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest",
        "session_timeout_ms": kafka.session_timeout_ms,
        "heartbeat_interval_ms": min(3000, kafka.session_timeout_ms // 3),
        "max_partition_fetch_bytes": max(1_048_576, settings.streams.max_event_bytes * 2),
        **kafka.consumer_kwargs(),
    }


def source_of(tp: TopicPartition) -> str:
    return f"{tp.topic}:{tp.partition}"


class Intake(ConsumerRebalanceListener, Generic[State]):
    """Batches of messages, in offset order per partition, each handed to
    ``handler`` (which flushes its outputs and checkpoints ``states``) under the
    lock that a rebalance waits for. A handler that leaves its checkpoint in
    flight (ingest: the next batch's flush or ``settle`` acknowledges it) passes
    ``settle``, awaited before partitions are given away and at stop.

    ``states`` is keyed by ``topic:partition``; a partition's checkpoint records are
    in the same partition of ``state_topic``."""

    def __init__(
        self,
        settings: Settings,
        purpose: str,
        topics: Collection[str],
        handler: Handler,
        state_topic: str,
        restore: Restore[State],
        event_time: Callable[[State], float] | None = None,
        turns: Turns | None = None,
        first: bool = False,
        settle: Callable[[], Awaitable[None]] | None = None,
        records: Callable[[int], Loader] = in_memory,
    ) -> None:
        """``event_time``: a partition's latest event time, to keep partitions
        within ``streams.max_source_skew_s`` of each other (:func:`ahead`).
        ``turns``: shared with the worker's other stages, this one ``first`` or
        waiting for the first (:class:`Turns`). ``records``: what a partition's
        checkpoint records are read into for ``restore``."""
        # The turns this intake reports its backlog to (ingest), or waits on (the rest).
        self._leads = turns if first else None
        self._waits = None if first else turns
        self._settings = settings
        self._event_time = event_time
        self._purpose = purpose
        self._topics = sorted(topics)
        self._handler = handler
        self._settle = settle
        self._state_topic = state_topic
        self._restore_state = restore
        self._records = records
        self.states: dict[str, State] = {}
        self.lock = asyncio.Lock()
        self._consumer: AIOKafkaConsumer | None = None
        self._stopping = asyncio.Event()
        self._committing: asyncio.Future[None] | None = None  # the last batch's commit
        # Partitions assigned and not revoked since: what this worker may act on.
        self.owned: set[TopicPartition] = set()

    @property
    def group_id(self) -> str:
        return f"{self._settings.streams.app_id}.{self._purpose}"

    @property
    def consumer(self) -> AIOKafkaConsumer | None:
        return self._consumer

    @property
    def between_assignments(self) -> bool:
        """Revoked and not assigned yet: the groups rebalance eagerly (every
        partition revoked, then the new assignment), and for that round nothing
        is owned while the states are still held (dropped, for the partitions
        gone elsewhere, when the assignment comes). What a timer would do for the
        partitions it held waits for then."""
        return not self.owned and bool(self.states)

    def assignment(self) -> set[TopicPartition]:
        return set(self._consumer.assignment()) if self._consumer is not None else set()

    def highwater(self, tp: TopicPartition) -> int | None:
        return self._consumer.highwater(tp) if self._consumer is not None else None

    async def start(self) -> None:
        consumer = AIOKafkaConsumer(
            group_id=self.group_id,
            client_id=f"{self._settings.streams.app_id}-{self._purpose}",
            **group_consumer_kwargs(self._settings),
        )
        await consumer.start()
        consumer.subscribe(self._topics, listener=self)
        self._consumer = consumer

    async def stop(self) -> None:
        self._stopping.set()
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            async with self.lock:  # the batch at hand finishes and is checkpointed
                try:
                    if self._committing is not None:
                        await self._committing
                    if self._settle is not None:
                        await self._settle()
                finally:
                    await consumer.stop()  # leaves the group: the others take over at once

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        # The batch at hand is finished (outputs flushed, checkpointed) before the
        # partitions go to another worker.
        async with self.lock:
            self.owned.difference_update(revoked)
            if self._settle is not None and revoked:
                try:
                    await self._settle()
                except Exception:  # noqa: BLE001 - the next batch's flush raises it again
                    log.exception("%s: settling before the rebalance failed", self._purpose)

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        async with self.lock:
            self.owned = set(assigned)
            try:
                await self._restore(set(assigned))
            except Exception:  # noqa: BLE001 - restored again before its first batch
                log.exception(
                    "restoring %s checkpoints failed; retried on the first batch", self._purpose
                )
                return
            consumer = self._consumer
            for tp in assigned:
                state = self.states.get(source_of(tp))
                if consumer is not None and state is not None and state.next_offset:
                    consumer.seek(tp, state.next_offset)

    async def _restore(self, owned: set[TopicPartition]) -> None:
        """States for the partitions owned now: kept for those already here, read
        from the checkpoints for new ones; the others are dropped (their next owner
        restores them)."""
        sources = {source_of(tp) for tp in owned}
        for source in [s for s in self.states if s not in sources]:
            del self.states[source]
        missing = {tp.partition for tp in owned if source_of(tp) not in self.states}
        if not missing:
            return
        topic = self._state_topic
        found: dict[int, Loader] = {}
        for attempt in range(1, RESTORE_ATTEMPTS + 1):
            try:
                found = await read_latest(
                    self._settings, topic, missing, RESTORE_TIMEOUT_S, self._records
                )
                break
            except CheckpointReadError:
                if attempt == RESTORE_ATTEMPTS:
                    raise
                log.warning("reading checkpoints of %s: attempt %d timed out", topic, attempt)
        for tp in owned:
            source = source_of(tp)
            if source not in self.states:
                self.states[source] = self._restore_state(tp, found[tp.partition])

    def _behind(self, consumer: AIOKafkaConsumer) -> int:
        """Records of the owned partitions not handled yet (the consumer's latest
        highwater marks, from its fetches), but for those paused for being ahead
        in event time (:meth:`_align`: read once the others catch up)."""
        behind = 0
        paused = consumer.paused()
        for tp in self.owned - paused:
            state = self.states.get(source_of(tp))
            highwater = consumer.highwater(tp)
            if state is not None and highwater is not None:
                behind += max(0, highwater - state.next_offset)
        return behind

    def _align(self, consumer: AIOKafkaConsumer) -> None:
        """Pause the partitions too far ahead in event time; resume the others."""
        event_time = self._event_time
        assert event_time is not None  # noqa: S101 - called only with one
        progress: dict[TopicPartition, tuple[float, bool]] = {}
        for tp in self.owned:
            state = self.states.get(source_of(tp))
            if state is not None:
                highwater = consumer.highwater(tp)
                done = highwater is not None and state.next_offset >= highwater
                progress[tp] = (event_time(state), done)
        assigned = set(consumer.assignment())
        wanted = ahead(progress, self._settings.streams.max_source_skew_s) & assigned
        paused = set(consumer.paused())
        if wanted - paused:
            consumer.pause(*(wanted - paused))
        if paused - wanted:
            consumer.resume(*(paused - wanted))

    async def run(self) -> None:
        """Until :meth:`stop`; raises what the handler raises."""
        streams = self._settings.streams
        timeout_ms = int(streams.batch_interval_s * 1000)
        while not self._stopping.is_set():
            consumer = self._consumer
            if consumer is None:
                return
            try:
                fetched = await consumer.getmany(
                    timeout_ms=timeout_ms, max_records=streams.batch_size
                )
            except KafkaError as exc:  # the consumer retries; say so and go on
                log.warning("%s intake: %r", self._purpose, exc)
                await asyncio.sleep(0.5)
                continue
            if not fetched:
                if self._leads is not None:
                    self._leads.first_behind(0)
                continue
            if self._waits is not None:
                await self._waits.wait(self._stopping)
            async with self.lock:
                if self._stopping.is_set():
                    return
                owned = self.assignment()
                # Records fetched before a rebalance for partitions no longer ours are
                # left to their new owner.
                fetched = {tp: records for tp, records in fetched.items() if tp in owned}
                if not fetched:
                    continue
                if any(source_of(tp) not in self.states for tp in fetched):
                    await self._restore(owned)
                # aiokafka's records as fetched (a RawMessage copy each cost ~1 µs).
                batch = Batch(
                    [r for records in fetched.values() for r in records],
                    [r.timestamp / 1000 for records in fetched.values() for r in records],
                )
                if self._leads is not None:  # this batch included
                    self._leads.first_behind(self._behind(consumer))
                await self._handler(batch)
                if self._leads is not None:
                    self._leads.first_behind(self._behind(consumer))
                if self._event_time is not None:
                    self._align(consumer)
                offsets = {
                    tp: self.states[source_of(tp)].next_offset
                    for tp in fetched
                    if self.states[source_of(tp)].next_offset
                }
            # Outside the lock: a commit can wait on a rebalance, and the rebalance
            # waits on this lock (on_partitions_revoked). Not awaited before the next
            # fetch either (a broker round trip of every batch's cycle); one at a time.
            if self._committing is not None:
                await self._committing
            self._committing = asyncio.ensure_future(self._commit(consumer, offsets))

    async def _commit(self, consumer: AIOKafkaConsumer, offsets: dict[TopicPartition, int]) -> None:
        try:
            await asyncio.wait_for(consumer.commit(offsets), COMMIT_TIMEOUT_S)
        except (KafkaError, TimeoutError) as exc:  # a rebalance: the checkpoints rule
            log.info("%s intake: commit skipped (%r)", self._purpose, exc)
