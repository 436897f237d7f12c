"""What the worker's agents need from Faust's delivery, and Faust does not give.

Faust promises at-least-once: a message is handled, or read again after a
rebalance from the committed offset. The kill tests found two ways it is not,
each silently losing KPI contributions (every event landed, windows short):

1. **Messages handled out of order, or never.** While its flow is stopped (a
   rebalance, table recovery) Faust's consumer throws fetched records away and
   relies on a seek back to the committed offset to read them again. aiokafka's
   ``seek_to_committed`` only seeks partitions with a committed offset above 0:
   on a partition nobody had committed yet (a new owner before the first
   commit, ~3 s) the thrown-away records were never read again and the next
   commit went past them. And a seek back while records are in flight can let a
   later record through before an earlier one: the KPI agent, which skips a
   contribution at or below the highest source offset its bucket has counted,
   then dropped the earlier one as a replay (daily windows short).
   :class:`InOrder` makes an agent handle its partitions' messages strictly in
   offset order from the offset its own table says comes next: a replay is
   skipped, and the messages of a gap are read from the broker and handled
   before the message that revealed it.

2. **Changelog records behind a revoke.** A table write waits in Faust's producer
   buffer, and ``ProducerBuffer.flush`` returns as soon as no record left it for
   100 ms (with one record per batch on the local broker, each changelog record
   is a round trip), so partitions were given away with changelog records still
   unsent; landing after the next owner's own writes, they would overwrite them
   in the changelog. :class:`Table` keeps its changelog records until the broker
   acknowledges them, and the app waits for them (:func:`changelogs_written`)
   before it gives partitions away or stops.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any

import faust
from aiokafka import TopicPartition

from touchstream.settings import Settings
from touchstream.streams.aggregate import META_PREFIX
from touchstream.streams.checkpoints import standalone_consumer

log = logging.getLogger(__name__)

# A table's key for an agent's next offset per partition (META_PREFIX: not a
# bucket or an alert id, which the table's readers skip).
NEXT_PREFIX = f"{META_PREFIX}next|"
GAP_READ_TIMEOUT_S = 30.0  # then the agent crashes the worker (loud, read again on restart)


class ChangelogWriteError(RuntimeError):
    """A table's changelog record was not acknowledged by the broker."""


class Table(faust.Table):
    """A Faust table whose changelog records can be awaited (:meth:`written`)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._unacknowledged: set[asyncio.Future[Any]] = set()
        self._failure: BaseException | None = None

    def send_changelog(
        self,
        partition: int | None,
        key: Any,
        value: Any,
        key_serializer: Any = None,
        value_serializer: Any = None,
    ) -> Any:
        future = super().send_changelog(partition, key, value, key_serializer, value_serializer)
        self._unacknowledged.add(future)
        future.add_done_callback(self._acknowledged)
        return future

    def _acknowledged(self, future: asyncio.Future[Any]) -> None:
        self._unacknowledged.discard(future)
        if not future.cancelled() and future.exception() is not None and self._failure is None:
            self._failure = future.exception()

    async def written(self) -> None:
        """Return once every changelog record sent so far is acknowledged; raise
        if one of them failed (its write is lost: the worker must not go on)."""
        pending = list(self._unacknowledged)
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
        if self._failure is not None:
            raise ChangelogWriteError(f"table {self.name}: changelog write failed") from (
                self._failure
            )


async def changelogs_written(app: faust.App) -> None:
    """Every changelog record of the app's tables acknowledged by the broker."""
    for table in list(app.tables.values()):
        if isinstance(table, Table):
            await table.written()


@dataclass(frozen=True, slots=True)
class Record:
    """One message of a partition, as an agent handles it."""

    offset: int
    key: bytes | None
    value: bytes | None


class GapReadError(RuntimeError):
    """The messages of a gap could not be read from the broker in time."""


class InOrder:
    """An agent's guard: each partition's messages handled once, in offset order.

    The agent keeps, in its own table and written after a message's effects, the
    offset of the next message it expects per partition (one changelog partition
    is an ordered log, so after a restart the table holds the effects of exactly
    the messages before it). :meth:`records` turns the message Faust delivers
    into what to handle now: nothing for a replay, the message itself when it is
    the expected one, and after a gap the gap's messages first, read from the
    broker by a consumer of its own (seeking Faust's consumer back does not work:
    records already in flight move its read offset past the seek, and it drops
    the records read again). Before the table has an offset for a partition, the
    partition's earliest offset is expected."""

    def __init__(self, settings: Settings, name: str) -> None:
        self._settings = settings
        self._name = name

    async def handle(
        self,
        event: Any,
        table: MutableMapping[str, Any],
        handle: Callable[[Record], Awaitable[None]],
    ) -> int:
        """Hand what :meth:`records` yields to ``handle``, keeping the next offset
        expected under ``#next|<partition>`` in ``table``, written after each
        record's effects. How many records were handled (0: a replay)."""
        next_key = f"{NEXT_PREFIX}{event.message.tp.partition}"
        stored = table.get(next_key)
        records = await self.records(event, None if stored is None else int(stored))
        for record in records:
            await handle(record)
            table[next_key] = record.offset + 1  # last: after its effects
        return len(records)

    async def records(self, event: Any, expected: int | None) -> list[Record]:
        message = event.message
        tp, offset = message.tp, message.offset
        current = Record(offset, message.key, message.value)
        if expected is not None and offset == expected:
            return [current]
        if expected is not None and offset < expected:
            return []  # a replay: the table holds its effects
        if expected is None and offset == 0:
            return [current]  # the start of the partition
        missed = await read_range(self._settings, tp.topic, tp.partition, expected, offset)
        if missed:
            log.warning(
                "%s: %s[%d] delivered %d, expected %s: read %d..%d from the broker first",
                self._name,
                tp.topic,
                tp.partition,
                offset,
                expected,
                missed[0].offset,
                missed[-1].offset,
            )
        return [*missed, current]


async def read_range(
    settings: Settings,
    topic: str,
    partition: int,
    start: int | None,
    end: int,
    timeout_s: float = GAP_READ_TIMEOUT_S,
) -> list[Record]:
    """The records of ``topic[partition]`` at offsets from ``start`` (None: the
    earliest) up to ``end`` excluded, read by a consumer outside any group."""
    consumer = standalone_consumer(settings, "gaps")
    tp = TopicPartition(topic, partition)
    out: list[Record] = []
    try:
        async with asyncio.timeout(timeout_s):
            await consumer.start()
            consumer.assign([tp])
            if start is None:
                start = int((await consumer.beginning_offsets([tp])).get(tp) or 0)
            if start >= end:
                return []
            consumer.seek(tp, start)
            while await consumer.position(tp) < end:
                fetched = await consumer.getmany(tp, timeout_ms=200)
                out += [
                    Record(r.offset, r.key, r.value)
                    for r in fetched.get(tp, [])
                    if start <= r.offset < end
                ]
    except TimeoutError:
        raise GapReadError(
            f"{topic}[{partition}]: offsets {start}..{end - 1} not read within {timeout_s:.0f}s"
        ) from None
    finally:
        await consumer.stop()
    return out
