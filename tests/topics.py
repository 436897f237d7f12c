"""Reading topics back in tests: an aiokafka consumer with no group, assigned the
partitions asked for, reading from their beginning."""

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
