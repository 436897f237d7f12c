"""Kafka → sink loop: poll, buffer, flush on size or time, then commit.

Offsets are committed only for what the sink says has landed. A failing flush
pauses every assigned partition (backpressure: memory stays bounded), retries
the identical batch with exponential backoff while still polling (so the
consumer keeps its group membership), and resumes once it lands.

Lag per partition is what has not landed: highwater minus the committed offset,
measured every ``LAG_INTERVAL_S`` (also while paused, when it grows).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaError

from touchstream.settings import Settings
from touchstream.sinks.base import Sink, SinkWriteError
from touchstream.sinks.metrics import SinkMetrics

log = logging.getLogger(__name__)

LAG_INTERVAL_S = 2.0


class _FlushOnRevoke(ConsumerRebalanceListener):
    def __init__(self, runner: SinkRunner) -> None:
        self.runner = runner

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        if revoked:
            await self.runner.flush_and_commit()

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        return None


class SinkRunner:
    def __init__(
        self,
        settings: Settings,
        sink: Sink,
        topics: list[str],
        metrics: SinkMetrics,
    ) -> None:
        self.settings = settings
        self.sink = sink
        self.topics = topics
        self.metrics = metrics
        self._consumer: AIOKafkaConsumer | None = None
        self._stopping = asyncio.Event()
        self._last_flush = time.monotonic()
        self._flushing = False
        self.records_in = 0
        self.flushes = 0
        self.lag_interval_s = LAG_INTERVAL_S
        self._lag_at = 0.0
        self._landed: dict[TopicPartition, int] = {}  # next offset not yet landed
        self._lag_shown: set[TopicPartition] = set()

    def stop(self) -> None:
        self._stopping.set()

    def _new_consumer(self) -> AIOKafkaConsumer:
        kafka = self.settings.kafka
        return AIOKafkaConsumer(
            bootstrap_servers=kafka.bootstrap_servers,
            group_id=self.settings.sink.group_id,
            client_id="touchstream-sink",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            session_timeout_ms=kafka.session_timeout_ms,
            heartbeat_interval_ms=max(100, kafka.session_timeout_ms // 3),
            max_poll_interval_ms=max(60_000, kafka.session_timeout_ms * 6),
            **kafka.consumer_kwargs(),
        )

    async def run(self) -> None:
        consumer = self._consumer = self._new_consumer()
        consumer.subscribe(self.topics, listener=_FlushOnRevoke(self))
        await consumer.start()
        await asyncio.to_thread(self.sink.setup)
        sink = self.settings.sink
        try:
            while not self._stopping.is_set():
                room = max(1, sink.batch_rows - self.sink.buffered)
                self._add(await consumer.getmany(timeout_ms=100, max_records=min(room, 20_000)))
                await self._measure_lag(consumer)
                since = time.monotonic() - self._last_flush
                if sink.flush_due(self.sink.buffered, since):
                    await self.flush_and_commit()
                elif since >= sink.flush_interval_s:
                    self._last_flush = time.monotonic()
            await self.flush_and_commit()
        finally:
            self._consumer = None
            try:
                await consumer.stop()
            finally:
                await asyncio.to_thread(self.sink.close)

    def _add(self, polled: dict[TopicPartition, list[Any]]) -> None:
        for records in polled.values():
            self.sink.add_many(records)  # aiokafka's records as they are (sinks/base.py)
            self.records_in += len(records)

    async def flush_and_commit(self) -> None:
        """Flush until it lands (retrying with backoff, partitions paused), then commit.

        A stop requested while ClickHouse keeps failing gives up without committing:
        the uncommitted records are read again on the next start, nothing is lost.
        """
        consumer = self._consumer
        if consumer is None or self._flushing:
            return
        self._flushing = True
        try:
            offsets = await self._flush_until_landed(consumer)
        finally:
            self._flushing = False
        if offsets:
            committed = {TopicPartition(t, p): o for (t, p), o in offsets.items()}
            try:
                await consumer.commit(committed)
            except (CommitFailedError, IllegalStateError) as exc:
                # The group rebalanced while this flush ran (a revocation does not
                # wait for a flush under way): the rows landed, and whoever holds
                # the partitions now reads them again from the last commit; they
                # collapse in ClickHouse (ReplacingMergeTree), nothing is lost.
                log.info("sink: commit skipped, the group rebalanced (%r)", exc)
            except KafkaError as exc:  # the same holds: landed, read again at worst
                log.warning("sink: commit failed, the rows landed (%r)", exc)
            else:
                self._landed.update(committed)
        self.flushes += 1
        self._last_flush = time.monotonic()

    async def _flush_until_landed(self, consumer: AIOKafkaConsumer) -> dict[tuple[str, int], int]:
        delay = self.settings.sink.retry_initial_s
        paused = False
        while True:
            try:
                offsets = await asyncio.to_thread(self.sink.flush)
            except SinkWriteError as exc:
                if self._stopping.is_set():
                    raise
                if not paused:
                    self.metrics.backpressure_pauses.inc()
                    self.metrics.backpressured.set(1)
                    paused = True
                self.metrics.flush_retries.inc()
                log.warning("sink flush failed, retrying in %.1fs: %s", delay, exc)
                consumer.pause(*consumer.assignment())
                # Polling paused partitions returns nothing but keeps the membership;
                # a partition assigned meanwhile may deliver: it is buffered, not lost.
                self._add(await consumer.getmany(timeout_ms=int(delay * 1000)))
                await self._measure_lag(consumer)
                delay = min(delay * 2, self.settings.sink.retry_max_s)
                continue
            if paused:
                consumer.resume(*consumer.assignment())
                self.metrics.backpressured.set(0)
            return offsets

    async def _measure_lag(self, consumer: AIOKafkaConsumer) -> None:
        """Set the lag gauge of every assigned partition, at most every lag_interval_s.

        The highwater is the larger of the last fetch response's and a ListOffsets
        answer: paused partitions are not fetched, and the local broker under-reports
        the latter (PLATFORM.md), so neither alone is right in both cases."""
        now = time.monotonic()
        if now - self._lag_at < self.lag_interval_s:
            return
        self._lag_at = now
        assigned = set(consumer.assignment())

        async def measure() -> dict[TopicPartition, int]:
            ends = await consumer.end_offsets(list(assigned)) if assigned else {}
            lags = {}
            for tp in assigned:
                if tp not in self._landed:
                    committed = await consumer.committed(tp)
                    if committed is None:
                        committed = (await consumer.beginning_offsets([tp]))[tp]
                    self._landed[tp] = committed
                highwater = max(consumer.highwater(tp) or 0, ends.get(tp) or 0)
                lags[tp] = max(0, highwater - self._landed[tp])
            return lags

        try:  # a metric only: bounded to 5 s, and the next round retries
            lags = await asyncio.wait_for(measure(), 5)
        except (KafkaError, TimeoutError) as exc:
            log.debug("sink lag not measured: %r", exc)
            return
        for tp, lag in lags.items():
            self.metrics.consumer_lag.labels(tp.topic, str(tp.partition)).set(lag)
        for tp in self._lag_shown - assigned:
            self.metrics.consumer_lag.remove(tp.topic, str(tp.partition))
            self._landed.pop(tp, None)
        self._lag_shown = assigned
