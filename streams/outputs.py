"""The worker's output producer: every topic the worker writes.

One aiokafka producer with normal batching (``linger_ms``, ``batch_bytes``).
Callers ``flush()`` before they acknowledge what the outputs came from (a stage
checkpoints its batch only after the flush), and a flush raises if any record
sent since the previous one was not delivered: aiokafka's own flush only waits,
so a batch that failed (broker gone past the request timeout, record too large)
would otherwise be checkpointed as done and lost without a word.

Records whose partition the caller knows go out with :meth:`Outputs.send_many`:
one record batch per partition, built directly, without the producer's per-record
bookkeeping (a future, a partitioner call and an accumulator lookup per record).
"""

from __future__ import annotations

import asyncio
import functools
import struct
from collections.abc import AsyncIterator, Iterable

import aiokafka.record._crecords.default_records as _c_records
import aiokafka.record.default_records as _py_records
from aiokafka import AIOKafkaProducer, codec
from aiokafka.errors import KafkaError

from touchstream.settings import Settings

# aiokafka compresses lz4 at level 9 (lz4's high-compression mode) and has no
# setting for it: 57 MB/s here against 860 MB/s at level 1, for a ratio of 5.5
# against 4.75 on the worker's records (2026-11-26), and it was 13 % of the worker's
# time. Level 1 is lz4's fast mode, what kafka-python (our emitters) and librdkafka
# send by default.
LZ4_LEVEL = 1


def fast_lz4() -> None:
    """Make aiokafka's record batches use lz4 at LZ4_LEVEL (process-wide; the C and
    the pure-Python batch builders look the codec up by name at each batch)."""
    encode = functools.partial(codec.lz4_encode, level=LZ4_LEVEL)
    _c_records.lz4_encode = encode
    _py_records.lz4_encode = encode


class DeliveryFailed(RuntimeError):
    """Records sent since the last flush were not delivered: what they came from
    must not be acknowledged."""


_M = 0x5BD1E995  # murmur2's mixing constant


def murmur2(data: bytes) -> int:
    """Kafka's murmur2 (Java's ``Utils.murmur2``, seed 0x9747b28c), unsigned. The
    same results as aiokafka's and kafka-python's in half the time (~6 µs for a
    30-byte key): four bytes at a time unpacked in C, masks folded."""
    length = len(data)
    h = 0x9747B28C ^ length
    whole = length - (length & 3)
    for (k,) in struct.iter_unpack("<I", data[:whole]):
        k = (k * _M) & 0xFFFFFFFF
        k ^= k >> 24
        h = ((h * _M) ^ (k * _M)) & 0xFFFFFFFF
    extra = length & 3
    if extra == 3:
        h ^= data[whole + 2] << 16
    if extra >= 2:
        h ^= data[whole + 1] << 8
    if extra:
        h ^= data[whole]
        h = (h * _M) & 0xFFFFFFFF
    h ^= h >> 13
    h = (h * _M) & 0xFFFFFFFF
    return h ^ (h >> 15)


@functools.lru_cache(maxsize=1 << 17)
def partition_of(key: bytes, partitions: int) -> int:
    """The partition a Kafka client's default partitioner (murmur2, as Java's)
    sends a keyed record to, in a topic of ``partitions`` partitions. Cached:
    entity and KPI keys repeat."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions


Record = tuple[bytes | None, bytes | None, int]  # key, value, partition


async def send_batches(
    producer: AIOKafkaProducer,
    topic: str,
    partition: int,
    items: Iterable[tuple[bytes | None, bytes | None]],
) -> AsyncIterator[asyncio.Future[object]]:
    """Queue (key, value) records to one partition, in order, as record batches of
    at most the producer's batch size (a record larger than that goes in a batch
    of its own, as with ``producer.send``); yields each batch's delivery future as
    soon as it is queued. A batch waits for the partition's previous one to leave
    the producer."""
    batch = producer.create_batch()
    for key, value in items:
        if batch.append(timestamp=None, key=key, value=value) is None:
            yield await producer.send_batch(batch, topic, partition=partition)
            batch = producer.create_batch()
            batch.append(timestamp=None, key=key, value=value)  # first always fits
    yield await producer.send_batch(batch, topic, partition=partition)


class Outputs:
    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._producer: AIOKafkaProducer | None = None
        self._lock = asyncio.Lock()
        # Delivery futures since the last flush, with the topic they went to.
        self._pending: list[tuple[str, asyncio.Future[object]]] = []
        self._failed: DeliveryFailed | None = None

    async def _started(self) -> AIOKafkaProducer:
        if self._producer is None:
            async with self._lock:
                if self._producer is None:
                    kafka = self._settings.kafka
                    fast_lz4()
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
                        # Patient: an outage shorter than this is ridden out
                        # (kafka.delivery_timeout_ms is the emitters' deadline).
                        request_timeout_ms=int(self._settings.streams.output_timeout_s * 1000),
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
        delivered = await producer.send(topic, value, key=key, partition=partition)
        self._pending.append((topic, delivered))

    async def send_many(self, topic: str, records: Iterable[Record]) -> None:
        """Queue records to the partitions they name, in order per partition, as
        record batches of at most ``kafka.batch_bytes`` (a record larger than that
        goes in a batch of its own, as with :meth:`send`)."""
        limit = self._settings.kafka.max_request_bytes
        by_partition: dict[int, list[tuple[bytes | None, bytes | None]]] = {}
        for key, value, partition in records:
            size = len(key or b"") + len(value or b"")
            if size > limit:  # as producer.send refuses it; nothing has gone yet
                raise DeliveryFailed(
                    f"a record of {size} bytes to {topic} is over kafka.max_request_bytes ({limit})"
                )
            by_partition.setdefault(partition, []).append((key, value))
        if not by_partition:
            return
        producer = await self._started()
        for partition, items in by_partition.items():
            # Each batch's delivery is watched from the moment it is queued (a
            # flush by another stage meanwhile checks it too).
            async for delivered in send_batches(producer, topic, partition, items):
                self._pending.append((topic, delivered))

    async def flush(self) -> None:
        """Wait until everything queued so far is acknowledged by the broker;
        :class:`DeliveryFailed` if anything sent through these outputs was not.

        The stages share the producer, so a failure is sticky: whichever stage's
        flush sees it first, every flush raises from then on, and no stage can
        checkpoint past records that were lost (the worker stops, and its
        successor resumes from the checkpoints)."""
        if self._producer is None:
            return
        await self._producer.flush()  # everything sent before this call is done
        self._check()

    def _check(self) -> None:
        if self._failed is None:
            waiting: list[tuple[str, asyncio.Future[object]]] = []
            failed: dict[str, tuple[int, BaseException]] = {}
            for topic, delivered in self._pending:
                if not delivered.done():  # sent by another stage during the flush
                    waiting.append((topic, delivered))
                    continue
                error = (
                    KafkaError("delivery cancelled")
                    if delivered.cancelled()
                    else delivered.exception()
                )
                if error is not None:
                    count, first = failed.get(topic, (0, error))
                    failed[topic] = (count + 1, first)
            self._pending = waiting
            if failed:
                detail = "; ".join(
                    f"{n} batch(es) or record(s) to {topic} ({first!r})"
                    for topic, (n, first) in failed.items()
                )
                self._failed = DeliveryFailed(f"not delivered: {detail}")
        if self._failed is not None:
            raise self._failed

    async def stop(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            await producer.stop()  # flushes first
