"""Kafka → sink loop: poll, buffer, flush on size or time, then commit.

Offsets are committed only for what the sink says has landed. A failing flush
pauses every assigned partition (backpressure: memory stays bounded), retries
the identical batch with exponential backoff while still polling (so the
consumer keeps its group membership), and resumes once it lands.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition

from touchstream.settings import Settings
from touchstream.sinks.base import Sink, SinkWriteError, SourceRecord
from touchstream.sinks.metrics import SinkMetrics

log = logging.getLogger(__name__)


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
            **kafka.security_kwargs(),
        )

    async def run(self) -> None:
        consumer = self._consumer = self._new_consumer()
        consumer.subscribe(self.topics, listener=_FlushOnRevoke(self))
        await consumer.start()
        await asyncio.to_thread(self.sink.setup)
        batch_rows = self.settings.sink.batch_rows
        interval = self.settings.sink.flush_interval_s
        try:
            while not self._stopping.is_set():
                room = max(1, batch_rows - self.sink.buffered)
                self._add(await consumer.getmany(timeout_ms=100, max_records=min(room, 20_000)))
                due = time.monotonic() - self._last_flush >= interval
                if self.sink.buffered >= batch_rows or (due and self.sink.buffered):
                    await self.flush_and_commit()
                elif due:
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
            for r in records:
                self.sink.add(SourceRecord(r.topic, r.partition, r.offset, r.key, r.value))
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
            await consumer.commit({TopicPartition(t, p): o for (t, p), o in offsets.items()})
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
                    paused = True
                log.warning("sink flush failed, retrying in %.1fs: %s", delay, exc)
                consumer.pause(*consumer.assignment())
                # Polling paused partitions returns nothing but keeps the membership;
                # a partition assigned meanwhile may deliver: it is buffered, not lost.
                self._add(await consumer.getmany(timeout_ms=int(delay * 1000)))
                delay = min(delay * 2, self.settings.sink.retry_max_s)
                continue
            if paused:
                consumer.resume(*consumer.assignment())
            return offsets
