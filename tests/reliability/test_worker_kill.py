"""A stream worker SIGKILLed mid-batch, three times, and restarted: nothing lost,
nothing double counted. Reconciled by event_id against the simulator's truth,
with 10% duplicate deliveries, out-of-order and late events and malformed input
in the stream (tests/integration/test_exact_kpis.py kills once; this kills
while the first half is being handled and again while the second is)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from aiokafka import TopicPartition
from kafka import KafkaProducer

from tests.conftest import SettingsFactory
from tests.reconcile import landed, send, until_reconciled
from tests.reliability.conftest import Simulated
from tests.topics import assigned
from touchstream.localbroker import LocalBroker
from touchstream.settings import Settings
from touchstream.stack import Stack


async def kpi_checkpoints(settings: Settings) -> list[tuple[bytes | None, bytes | None]]:
    """Every record of the KPI stage's checkpoint topic, (key, value)."""
    topic = settings.topic("kpi_state")
    partitions = [TopicPartition(topic, p) for p in range(settings.kafka.partitions)]
    records: list[tuple[bytes | None, bytes | None]] = []
    async with assigned(settings.kafka.bootstrap_servers, partitions) as consumer:
        ends = await consumer.end_offsets(partitions)
        while [tp for tp in partitions if await consumer.position(tp) < ends[tp]]:
            for batch in (await consumer.getmany(timeout_ms=500)).values():
                records.extend((r.key, r.value) for r in batch)
    return records


def latest_version(ch: Any, db: str) -> int:
    """The newest KPI version in ClickHouse (nanoseconds of its emission)."""
    return int(ch.query(f"SELECT max(version) FROM {db}.kpi_touchpoint").result_rows[0][0])


async def evicted(settings: Settings) -> bool:
    """Whether the KPI stage has made windows final and dropped buckets."""
    records = await kpi_checkpoints(settings)
    return any(key == b"#evicted" for key, _ in records) and any(v is None for _, v in records)


def test_worker_kills_lose_nothing_and_count_nothing_twice(
    broker: LocalBroker, make_settings: SettingsFactory, ch: Any, simulate: Simulated
) -> None:
    # A KPI retention of 1 h: windows become final and their buckets go while
    # the 3 h simulation is handled, between and across the kills.
    streams = {"kpi_emit_interval_s": 0.5, "kpi_retention_s": 3600}
    settings = make_settings(broker.bootstrap_servers, streams=streams)
    db = settings.clickhouse.database
    messages, want = simulate(
        settings, duplicates=0.1, out_of_order=0.1, late=0.03, malformed=0.01, seed=23
    )
    assert want.truth.duplicates and want.truth.late and want.dead_letters

    async def kill_when_landed(stack: Stack, events: int) -> None:
        deadline = time.monotonic() + 60
        while (await asyncio.to_thread(landed, ch, db))[0] < events:
            stack.check()
            assert time.monotonic() < deadline, f"fewer than {events} events ever landed"
            await asyncio.sleep(0.1)
        stack.kill_worker(restart=True)

    async def scenario() -> None:
        stack = Stack(settings)
        await stack.start()
        producer = KafkaProducer(bootstrap_servers=broker.bootstrap_servers, linger_ms=5)
        try:
            half = len(messages) // 2
            await asyncio.to_thread(send, producer, stack.settings, messages[:half])
            await kill_when_landed(stack, len(want.event_ids) // 5)
            await asyncio.to_thread(send, producer, stack.settings, messages[half:])
            await kill_when_landed(stack, len(want.event_ids) * 3 // 5)
            await until_reconciled(stack, ch, db, want, timeout_s=150)
            # The retention acts (windows made final, their buckets dropped) once the
            # outcome partitions report their decisions' progress; a third kill
            # then restores partitions with final windows: still exact.
            deadline = time.monotonic() + 60
            while not await evicted(stack.settings):
                stack.check()
                assert time.monotonic() < deadline, "no KPI window was ever made final"
                await asyncio.sleep(0.5)
            killed_at = time.time_ns()
            stack.kill_worker(restart=True)
            # The successor emits every window it restored that is not final: once
            # they land, ClickHouse must still equal the truth.
            while await asyncio.to_thread(latest_version, ch, db) < killed_at:
                stack.check()
                assert time.monotonic() < deadline + 60, "no KPI was emitted after the kill"
                await asyncio.sleep(0.5)
            await asyncio.sleep(2)  # the rest of that emission pass lands
            await until_reconciled(stack, ch, db, want, timeout_s=150)
        finally:
            producer.close()
            await stack.stop()

    asyncio.run(scenario())
