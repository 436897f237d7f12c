"""A stream worker SIGKILLed mid-batch, three times, and restarted: nothing lost,
nothing double counted. Reconciled by event_id against the simulator's truth,
with 10% duplicate deliveries, out-of-order and late events and malformed input
in the stream (tests/integration/test_exact_kpis.py kills once; this kills
while the first half is being handled and again while the second is)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from kafka import KafkaProducer

from tests.conftest import SettingsFactory
from tests.reconcile import kpis_evicted, landed, latest_kpi_version, send, until_reconciled
from tests.reliability.conftest import Simulated
from touchstream.localbroker import LocalBroker
from touchstream.stack import Stack


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
            # (at most a minute after the end: a partition whose events ended early
            # holds the clock until it has been idle STREAMS__IDLE_SOURCE_S)
            await kpis_evicted(stack, timeout_s=120)
            killed_at, deadline = time.time_ns(), time.monotonic() + 60
            stack.kill_worker(restart=True)
            # The successor emits every window it restored that is not final: once
            # they land, ClickHouse must still equal the truth.
            while await asyncio.to_thread(latest_kpi_version, ch, db) < killed_at:
                stack.check()
                assert time.monotonic() < deadline, "no KPI was emitted after the kill"
                await asyncio.sleep(0.5)
            await asyncio.sleep(2)  # the rest of that emission pass lands
            await until_reconciled(stack, ch, db, want, timeout_s=150)
        finally:
            producer.close()
            await stack.stop()

    asyncio.run(scenario())
