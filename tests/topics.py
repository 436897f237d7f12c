"""Reading topics back in tests: an aiokafka consumer with no group, assigned the
partitions asked for, reading from their beginning (and everything up to the end
of a topic's partitions: :func:`read_all`)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterable
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition


@contextlib.asynccontextmanager
async def assigned(
    bootstrap_servers: str | None, partitions: Iterable[TopicPartition], **options: Any
) -> AsyncIterator[AIOKafkaConsumer]:
    """A started consumer assigned ``partitions`` (from the earliest offset),
    stopped on the way out; ``options`` go to AIOKafkaConsumer."""
    if not bootstrap_servers:
        raise ValueError("reading a topic back needs the broker's bootstrap servers")
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap_servers, auto_offset_reset="earliest", **options
    )
    await consumer.start()
    try:
        consumer.assign(list(partitions))
        yield consumer
    finally:
        await consumer.stop()


async def read_all(
    bootstrap_servers: str | None, topic: str, partitions: int
) -> list[tuple[bytes | None, bytes | None]]:
    """Every record of ``topic`` (its first ``partitions`` partitions) up to their
    current end, as (key, value)."""
    assigned_to = [TopicPartition(topic, p) for p in range(partitions)]
    records: list[tuple[bytes | None, bytes | None]] = []
    async with assigned(bootstrap_servers, assigned_to) as consumer:
        ends = await consumer.end_offsets(assigned_to)
        while [tp for tp in assigned_to if await consumer.position(tp) < ends[tp]]:
            for batch in (await consumer.getmany(timeout_ms=500)).values():
                records.extend((r.key, r.value) for r in batch)
    return records
