"""Reading checkpoints back: the latest value of every key of some partitions of a
compacted topic, read to the highwater of the fetch responses (PLATFORM.md: the
local broker under-reports ``end_offsets``)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from typing import Protocol

from aiokafka import AIOKafkaConsumer, TopicPartition

from touchstream.settings import Settings


class CheckpointReadError(RuntimeError):
    """The checkpoint topic could not be read to its end in time."""


class Loader(Protocol):
    """Where a partition's checkpoint records go as they are read."""

    def load(self, records: Mapping[str, bytes | None]) -> None: ...


class Records(dict[str, bytes | None]):
    """A partition's checkpoint records in memory: key → latest value (None: a
    tombstone)."""

    def load(self, records: Mapping[str, bytes | None]) -> None:
        self.update(records)


def in_memory(_partition: int) -> Records:
    return Records()


def standalone_consumer(settings: Settings, purpose: str) -> AIOKafkaConsumer:
    """A consumer outside any group (assign, seek, read), for reading a topic's
    partitions directly: client id ``<app_id>-<purpose>``."""
    kafka = settings.kafka
    return AIOKafkaConsumer(
        bootstrap_servers=kafka.bootstrap_servers,
        client_id=f"{settings.streams.app_id}-{purpose}",
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        **kafka.consumer_kwargs(),
    )


async def read_latest(
    settings: Settings,
    topic: str,
    partitions: set[int],
    timeout_s: float = 60.0,
    into: Callable[[int], Loader] = in_memory,
) -> dict[int, Loader]:
    """Partition → its records, loaded as they are read into ``into(partition)``
    (by default :class:`Records`: key → latest value, None for a tombstone).

    Every step is bounded by ``timeout_s`` (CheckpointReadError): a consumer that
    never got a position once held a worker's whole raw intake (seen on the local
    broker after a rebalance), so nothing here waits without a deadline."""
    out = {p: into(p) for p in partitions}
    if not partitions:
        return out
    try:
        async with asyncio.timeout(timeout_s):
            await _read(settings, topic, partitions, out)
    except TimeoutError:
        raise CheckpointReadError(
            f"{topic}: partitions {sorted(partitions)} not read to their end "
            f"within {timeout_s:.0f}s"
        ) from None
    return out


async def _read(
    settings: Settings, topic: str, partitions: set[int], out: dict[int, Loader]
) -> None:
    consumer = standalone_consumer(settings, "checkpoints")
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        consumer.assign(tps)
        for tp in tps:
            # An explicit position (a compacted head out of range resets to the
            # earliest): seek_to_beginning's lazy reset once never completed.
            consumer.seek(tp, 0)
        pending = set(tps)
        while pending:
            fetched = await consumer.getmany(*pending, timeout_ms=200)
            for tp, records in fetched.items():
                out[tp.partition].load(
                    {r.key.decode(): r.value for r in records if r.key is not None}
                )
            for tp in list(pending):
                highwater = consumer.highwater(tp)
                if highwater is not None and await consumer.position(tp) >= highwater:
                    pending.discard(tp)
            await asyncio.sleep(0)
    finally:
        await consumer.stop()
