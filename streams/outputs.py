"""The worker's output producer: every topic the worker writes except Faust's own
table changelogs.

Faust sends through one producer; on the local broker that producer must put one
record in each batch, or table recovery stops short (PLATFORM.md). Sent through
it, every event, contribution and step became its own produce request, and the
worker spent ~40 % of its time there (py-spy, 2026-11-25). Outputs that no table
recovers from go through this producer instead, with normal batching
(``linger_ms``, ``batch_bytes``) on any broker. Same partitioner (murmur2), so
keys land where Faust would put them. Callers ``flush()`` before they
acknowledge what the outputs came from.
"""

from __future__ import annotations

import asyncio
import functools

from aiokafka import AIOKafkaProducer
from aiokafka.partitioner import murmur2

from touchstream.settings import Settings


@functools.lru_cache(maxsize=1 << 17)
def partition_of(key: bytes, partitions: int) -> int:
    """The partition a Kafka client's default partitioner (murmur2, as Java's)
    sends a keyed record to, in a topic of ``partitions`` partitions. Cached:
    murmur2 in Python costs ~5 µs, and entity and KPI keys repeat."""
    return int((murmur2(key) & 0x7FFFFFFF) % partitions)


class Outputs:
    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._producer: AIOKafkaProducer | None = None
        self._lock = asyncio.Lock()

    async def _started(self) -> AIOKafkaProducer:
        if self._producer is None:
            async with self._lock:
                if self._producer is None:
                    kafka = self._settings.kafka
                    producer = AIOKafkaProducer(
                        bootstrap_servers=kafka.bootstrap_servers,
                        client_id=f"{self._settings.streams.app_id}-outputs",
                        acks="all" if kafka.acks == "all" else int(kafka.acks),
                        compression_type=None
                        if kafka.compression_type == "none"
                        else kafka.compression_type,
                        linger_ms=kafka.linger_ms,
                        max_batch_size=kafka.batch_bytes,
                        max_request_size=kafka.max_request_bytes,
                        request_timeout_ms=max(1000, kafka.delivery_timeout_ms),
                        **kafka.security_kwargs(),
                    )
                    await producer.start()
                    self._producer = producer
        return self._producer

    async def send(
        self,
        topic: str,
        value: bytes | None,
        key: bytes | None = None,
        partition: int | None = None,
    ) -> None:
        """Queue a record (returns once it is in the producer's buffer)."""
        producer = await self._started()
        await producer.send(topic, value, key=key, partition=partition)

    async def flush(self) -> None:
        """Wait until everything queued so far is acknowledged by the broker."""
        if self._producer is not None:
            await self._producer.flush()

    async def stop(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            await producer.stop()  # flushes first
