"""Reading checkpoints back: the latest value of every key of some partitions of a
compacted topic, read to the highwater of the fetch responses (PLATFORM.md: the
local broker under-reports ``end_offsets``)."""

from __future__ import annotations

import asyncio
import time

from aiokafka import AIOKafkaConsumer, TopicPartition

from touchstream.settings import Settings


class CheckpointReadError(RuntimeError):
    """The checkpoint topic could not be read to its end in time."""


async def read_latest(
    settings: Settings, topic: str, partitions: set[int], timeout_s: float = 60.0
) -> dict[int, dict[str, bytes | None]]:
    """Partition → key → latest value (None for a tombstone)."""
    out: dict[int, dict[str, bytes | None]] = {p: {} for p in partitions}
    if not partitions:
        return out
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka.bootstrap_servers,
        client_id=f"{settings.streams.app_id}-checkpoints",
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        **settings.kafka.security_kwargs(),
    )
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        pending = set(tps)
        deadline = time.monotonic() + timeout_s
        while pending:
            if time.monotonic() > deadline:
                raise CheckpointReadError(
                    f"{topic}: partitions {sorted(tp.partition for tp in pending)} not read "
                    f"to their end within {timeout_s:.0f}s"
                )
            fetched = await consumer.getmany(*pending, timeout_ms=200)
            for tp, records in fetched.items():
                for record in records:
                    if record.key is not None:
                        out[tp.partition][record.key.decode()] = record.value
            for tp in list(pending):
                highwater = consumer.highwater(tp)
                if highwater is not None and await consumer.position(tp) >= highwater:
                    pending.discard(tp)
            await asyncio.sleep(0)
    finally:
        await consumer.stop()
    return out
