"""InOrder: an agent handles each partition's messages once, in offset order,
whatever Faust delivers; the messages of a gap are read from the broker first
(read_range, exercised against the broker by the kill tests)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import pytest
from faust.types import TP

from touchstream.settings import Settings
from touchstream.streams import delivery
from touchstream.streams.delivery import InOrder, Record

TOPIC = "contributions"
P0 = TP(TOPIC, 0)


@dataclass
class Message:
    tp: TP
    offset: int
    key: bytes | None = b"bundle"
    value: bytes | None = b"{}"


@dataclass
class Event:
    message: Message


@dataclass
class FakeLog:
    """The partition as the broker holds it: offsets from ``earliest`` on."""

    earliest: int = 0
    reads: list[tuple[int | None, int]] = field(default_factory=list)

    async def read_range(
        self, settings: Settings, topic: str, partition: int, start: int | None, end: int
    ) -> list[Record]:
        self.reads.append((start, end))
        first = self.earliest if start is None else start
        return [Record(o, b"bundle", b"{}") for o in range(first, end)]


@pytest.fixture
def log(monkeypatch: pytest.MonkeyPatch) -> FakeLog:
    fake = FakeLog()
    monkeypatch.setattr(delivery, "read_range", fake.read_range)
    return fake


def offsets(offset: int, expected: int | None) -> list[int]:
    settings: Any = None  # not used by the fake log
    order = InOrder(settings, "test")
    records = asyncio.run(order.records(Event(Message(P0, offset)), expected))
    return [r.offset for r in records]


def test_the_expected_message_is_handled_alone(log: FakeLog) -> None:
    assert offsets(7, 7) == [7]
    assert log.reads == []


def test_a_replay_is_skipped(log: FakeLog) -> None:
    assert offsets(3, 7) == []
    assert log.reads == []


def test_a_gap_is_read_from_the_broker_and_handled_first(log: FakeLog) -> None:
    # Faust threw 6..8 away in a rebalance and went on at 9.
    assert offsets(9, 6) == [6, 7, 8, 9]
    assert log.reads == [(6, 9)]


def test_before_any_stored_offset_the_partition_starts_at_its_earliest(log: FakeLog) -> None:
    assert offsets(0, None) == [0]
    assert log.reads == []
    log.earliest = 5
    assert offsets(8, None) == [5, 6, 7, 8]
    assert log.reads == [(None, 8)]


def test_handle_keeps_the_next_offset_in_the_table_after_each_record(log: FakeLog) -> None:
    settings: Any = None
    order = InOrder(settings, "test")
    table: dict[str, Any] = {}
    seen: list[tuple[int, Any]] = []

    async def handle(record: Record) -> None:
        seen.append((record.offset, table.get("#next|0")))  # written after, not before

    async def deliver(offset: int) -> int:
        return await order.handle(Event(Message(P0, offset)), table, handle)

    assert asyncio.run(deliver(0)) == 1 and table == {"#next|0": 1}
    assert asyncio.run(deliver(3)) == 3  # 1..2 read from the broker first
    assert seen == [(0, None), (1, 1), (2, 2), (3, 3)] and table == {"#next|0": 4}
    assert asyncio.run(deliver(2)) == 0 and table == {"#next|0": 4}  # a replay
